//! Float tensors (conv filters, feature maps) to grey or colour tiles.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor};

use crate::grid::Tile;

/// A tensor `(N, C, H, W)` or `(C, H, W)` of any float dtype to tiles, each normalised on its
/// own to `0..=255` (minimum black, maximum white). A constant tile (a 1x1 map, or a channel
/// that is one value) is drawn at its value on the whole tensor's scale, so a row of 1x1 maps
/// reads as a strip of values and a channel of ReLU zeros is black; a constant tensor is black.
///
/// When `C` is 1, or 3 and `per_channel` is false, every image is one tile (RGB for 3,
/// normalised over its three channels together, so AlexNet's first filters show in colour).
/// Otherwise every channel of every image is its own grey tile, image-major. Captions number
/// the tiles: `"n"` for whole images, `"c"` for channels of a `(C, H, W)` tensor or of a
/// single image, `"n.c"` for channels when `N > 1`.
/// Errors on other ranks, empty dimensions and non-finite values.
pub fn tensor_tiles(t: &Tensor, per_channel: bool) -> Result<Vec<Tile>> {
    let (n, c, h, w) = match *t.dims() {
        [n, c, h, w] => (n, c, h, w),
        [c, h, w] => (1, c, h, w),
        ref dims => bail!("tensor_tiles: expected (N, C, H, W) or (C, H, W), got shape {dims:?}"),
    };
    ensure!(
        n > 0 && c > 0 && h > 0 && w > 0,
        "tensor_tiles: shape {:?} has an empty dimension",
        t.dims()
    );
    let values = t
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .context("tensor_tiles: cannot read tensor values")?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "tensor_tiles: value {} at flat index {i} is not finite",
            values[i]
        );
    }
    let plane = h * w;
    let whole = range(&values);
    let whole_images = c == 1 || (c == 3 && !per_channel);
    let mut tiles = Vec::new();
    for (image, chunk) in values.chunks(c * plane).enumerate() {
        if whole_images {
            tiles.push(tile(c, h, w, chunk, whole, image.to_string()));
        } else {
            for (channel, plane_values) in chunk.chunks(plane).enumerate() {
                let caption = if n > 1 {
                    format!("{image}.{channel}")
                } else {
                    channel.to_string()
                };
                tiles.push(tile(1, h, w, plane_values, whole, caption));
            }
        }
    }
    Ok(tiles)
}

/// The smallest and largest of `values`.
fn range(values: &[f32]) -> (f32, f32) {
    let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (lo, hi)
}

/// `values` as a tile scaled to its own range, or to the whole tensor's (`whole`) when its own
/// is empty.
fn tile(
    channels: usize,
    height: usize,
    width: usize,
    values: &[f32],
    whole: (f32, f32),
    caption: String,
) -> Tile {
    let (mut lo, mut hi) = range(values);
    if hi <= lo {
        (lo, hi) = whole;
    }
    let span = hi - lo;
    let data = values
        .iter()
        .map(|&v| {
            if span > 0.0 {
                ((v - lo) / span * 255.0).round() as u8
            } else {
                0
            }
        })
        .collect();
    Tile {
        channels,
        height,
        width,
        data,
        caption,
        highlight: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn channels_become_grey_tiles_normalised_each() -> Result<()> {
        let values: Vec<f32> = (0..2 * 4 * 3 * 3).map(|v| v as f32).collect();
        let t = Tensor::from_vec(values, (2, 4, 3, 3), &Device::Cpu)?;
        let tiles = tensor_tiles(&t, false)?;
        assert_eq!(tiles.len(), 8);
        assert_eq!(tiles[0].caption, "0.0");
        assert_eq!(tiles[7].caption, "1.3");
        for tile in &tiles {
            assert_eq!((tile.channels, tile.height, tile.width), (1, 3, 3));
            assert_eq!(tile.data[0], 0);
            assert_eq!(tile.data[8], 255);
        }
        Ok(())
    }

    #[test]
    fn three_channels_stay_rgb_unless_per_channel() -> Result<()> {
        let t = Tensor::arange(0f32, 2.0 * 3.0 * 4.0, &Device::Cpu)?.reshape((2, 3, 2, 2))?;
        let rgb = tensor_tiles(&t, false)?;
        assert_eq!(rgb.len(), 2);
        assert_eq!(rgb[1].caption, "1");
        assert_eq!((rgb[0].channels, rgb[0].data.len()), (3, 12));
        assert_eq!((rgb[0].data[0], rgb[0].data[11]), (0, 255));
        let split = tensor_tiles(&t.get(0)?, true)?;
        assert_eq!(split.len(), 3);
        assert_eq!(split[2].caption, "2");
        Ok(())
    }

    #[test]
    fn constant_tile_is_black_and_bad_input_errors() -> Result<()> {
        let flat = Tensor::ones((1, 1, 2, 2), DType::F32, &Device::Cpu)?;
        assert_eq!(tensor_tiles(&flat, false)?[0].data, vec![0; 4]);
        // 1x1 maps (and constant channels) on the tensor's scale: a strip of values.
        let maps = Tensor::new(&[[[-2f32]], [[0.0]], [[2.0]], [[1.0]]], &Device::Cpu)?;
        let strip: Vec<u8> = tensor_tiles(&maps, true)?
            .iter()
            .map(|t| t.data[0])
            .collect();
        assert_eq!(strip, [0, 128, 255, 191]);
        let dead = Tensor::new(&[[[0f32, 0.0]], [[0.0, 3.0]]], &Device::Cpu)?;
        assert_eq!(tensor_tiles(&dead, true)?[0].data, [0, 0]);
        let rank2 = Tensor::ones((2, 2), DType::F32, &Device::Cpu)?;
        assert!(tensor_tiles(&rank2, false).is_err());
        let empty = Tensor::ones((0, 1, 2, 2), DType::F32, &Device::Cpu)?;
        assert!(tensor_tiles(&empty, false).is_err());
        let nan = Tensor::new(&[[[f32::NAN]]], &Device::Cpu)?;
        assert!(tensor_tiles(&nan, false).is_err());
        Ok(())
    }
}
