//! Grids of captioned images: dataset samples, predictions, filters and feature maps.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor};
use plotters::element::BitMapElement;
use plotters::style::text_anchor::{HPos, VPos};
use plotters::style::{FontTransform, RGBColor};

use crate::canvas::{drawing, frame, px, render_png, Area};
use crate::text;

const MARGIN: usize = 12;
const TITLE_BAND: usize = 40;
const GAP: usize = 10;
const MIN_SLOT: usize = 96;
const TARGET_SIDE: usize = 96;
const CAPTION_LINE: usize = 18;
const CAPTION_PAD: usize = 4;
/// matplotlib's `tab:red`, for highlighted (wrong) predictions.
const HIGHLIGHT: RGBColor = RGBColor(214, 39, 40);

/// One labelled image for grids: CHW `u8` pixels (1 or 3 channels) plus a caption.
#[derive(Debug, Clone, PartialEq)]
pub struct Tile {
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// `channels * height * width` bytes, channel-major (CHW).
    pub data: Vec<u8>,
    /// Drawn under the image; `\n` starts a new line.
    pub caption: String,
    /// Draws the caption and a frame around the image in red (e.g. a wrong prediction).
    pub highlight: bool,
}

impl Tile {
    /// A tile from an image tensor `(C, H, W)` or `(H, W)` with 1 or 3 channels. `u8` values are
    /// used as they are; float values are taken as `0..=1` and converted like torchvision's
    /// `save_image` (`x * 255 + 0.5`, clamped to `0..=255`, truncated).
    ///
    /// # Errors
    /// Another shape than `(C, H, W)` or `(H, W)`, other than 1 or 3 channels, an empty side, or
    /// values that cannot be read.
    pub fn from_tensor(t: &Tensor, caption: &str) -> Result<Tile> {
        let (channels, height, width) = match *t.dims() {
            [c, h, w] => (c, h, w),
            [h, w] => (1, h, w),
            ref dims => {
                anyhow::bail!("tile {caption:?}: expected (C, H, W) or (H, W), got {dims:?}")
            }
        };
        let bytes = if t.dtype() == DType::U8 {
            t.clone()
        } else {
            t.to_dtype(DType::F32)
                .and_then(|t| t.affine(255.0, 0.5))
                .and_then(|t| t.clamp(0f32, 255f32))
                .and_then(|t| t.to_dtype(DType::U8))
                .with_context(|| format!("tile {caption:?}: cannot convert to bytes"))?
        };
        let data = bytes
            .flatten_all()
            .and_then(|t| t.to_vec1::<u8>())
            .with_context(|| format!("tile {caption:?}: cannot read tensor values"))?;
        let tile = Tile {
            channels,
            height,
            width,
            data,
            caption: caption.to_string(),
            highlight: false,
        };
        tile.check().map(|()| tile)
    }

    fn check(&self) -> Result<()> {
        ensure!(
            self.channels == 1 || self.channels == 3,
            "tile {:?} has {} channels; expected 1 or 3",
            self.caption,
            self.channels
        );
        ensure!(
            self.height > 0 && self.width > 0,
            "tile {:?} is {}x{}; both sides must be at least 1",
            self.caption,
            self.height,
            self.width
        );
        let expected = self.channels * self.height * self.width;
        ensure!(
            self.data.len() == expected,
            "tile {:?} is {}x{}x{} but has {} bytes (expected {expected})",
            self.caption,
            self.channels,
            self.height,
            self.width,
            self.data.len()
        );
        Ok(())
    }

    /// The image as packed RGB bytes, each pixel repeated `scale` times in both directions.
    fn upscaled_rgb(&self, scale: usize) -> Vec<u8> {
        let (h, w) = (self.height * scale, self.width * scale);
        let plane = self.height * self.width;
        let mut out = Vec::with_capacity(h * w * 3);
        for y in 0..h {
            for x in 0..w {
                let i = (y / scale) * self.width + x / scale;
                if self.channels == 3 {
                    out.extend([self.data[i], self.data[plane + i], self.data[2 * plane + i]]);
                } else {
                    out.extend([self.data[i]; 3]);
                }
            }
        }
        out
    }
}

struct Layout {
    scale: usize,
    cols: usize,
    slot_w: usize,
    slot_h: usize,
    caption_band: usize,
    title_band: usize,
    width: usize,
    height: usize,
}

fn layout(title: &str, tiles: &[Tile], cols: usize) -> Result<Layout> {
    ensure!(!tiles.is_empty(), "no tiles to draw");
    ensure!(cols > 0, "a grid needs at least one column");
    for tile in tiles {
        tile.check()?;
    }
    let max_w = tiles.iter().map(|t| t.width).max().unwrap_or(1);
    let max_h = tiles.iter().map(|t| t.height).max().unwrap_or(1);
    let scale = TARGET_SIDE.div_ceil(max_w.max(max_h)).max(1);
    let lines = tiles
        .iter()
        .map(|t| {
            if t.caption.is_empty() {
                0
            } else {
                t.caption.lines().count()
            }
        })
        .max()
        .unwrap_or(0);
    let caption_band = if lines == 0 {
        0
    } else {
        lines * CAPTION_LINE + CAPTION_PAD
    };
    let title_band = if title.is_empty() { 0 } else { TITLE_BAND };
    let cols = cols.min(tiles.len());
    let rows = tiles.len().div_ceil(cols);
    let slot_w = (max_w * scale).max(MIN_SLOT);
    let slot_h = max_h * scale;
    Ok(Layout {
        scale,
        cols,
        slot_w,
        slot_h,
        caption_band,
        title_band,
        width: 2 * MARGIN + cols * slot_w + (cols - 1) * GAP,
        height: 2 * MARGIN + title_band + rows * (slot_h + caption_band) + (rows - 1) * GAP,
    })
}

/// Columns of a near-square grid of `n` tiles: the least `c` with `c * c >= n` (1 for none).
///
/// ```
/// assert_eq!(viz::grid_columns(10), 4);
/// ```
pub fn grid_columns(n: usize) -> usize {
    (1..=n.max(1)).find(|c| c * c >= n).unwrap_or(1)
}

/// [`save_image_grid`] with [`grid_columns`]: filters and feature maps, as near-square grids.
///
/// Errors as [`save_image_grid`].
pub fn save_square_grid(path: &Path, title: &str, tiles: &[Tile]) -> Result<()> {
    save_image_grid(path, title, tiles, grid_columns(tiles.len()))
}

/// A grid of captioned images (the tutorial's sample grids and "true/pred" prediction grids),
/// written to `path` as PNG. Tiles fill rows of `cols` (fewer when there are fewer tiles).
///
/// Layout: every image is upscaled (nearest) by `s = max(1, ceil(96 / m))`, `m` the largest
/// side of any tile, so 28x28 becomes 112x112 and 32x32 becomes 96x96. Slots are
/// `W = max(s * max width, 96)` by `H = s * max height`, 10 pixels apart, with a caption band of
/// `18 * L + 4` pixels under each (L = most caption lines, 0 when no tile has a caption), a
/// 40-pixel title band when `title` is not empty, and a 12-pixel margin: the PNG is
/// `24 + c * W + 10 * (c - 1)` by `24 + title band + r * (H + band) + 10 * (r - 1)` for `c`
/// columns and `r` rows. Highlighted tiles get a red frame and a red caption.
/// Errors on no tiles, `cols == 0`, or a tile whose data does not match its shape.
pub fn save_image_grid(path: &Path, title: &str, tiles: &[Tile], cols: usize) -> Result<()> {
    let layout =
        layout(title, tiles, cols).with_context(|| format!("cannot draw {}", path.display()))?;
    let size = (px(layout.width)?, px(layout.height)?);
    render_png(path, size, |area| {
        if !title.is_empty() {
            let (title, size) = text::fit(title, px(layout.width - 2 * MARGIN)?, 20.0, 9.0, true)?;
            let title = title.as_ref();
            let style = text::style(
                size,
                true,
                RGBColor(0, 0, 0),
                (HPos::Center, VPos::Center),
                FontTransform::None,
            );
            let at = ((layout.width / 2) as i32, (MARGIN + TITLE_BAND / 2) as i32);
            area.draw_text(title, &style, at).map_err(drawing)?;
        }
        for (i, tile) in tiles.iter().enumerate() {
            let (row, col) = (i / layout.cols, i % layout.cols);
            let x = MARGIN + col * (layout.slot_w + GAP);
            let y = MARGIN + layout.title_band + row * (layout.slot_h + layout.caption_band + GAP);
            draw_tile(area, tile, &layout, (x, y))?;
        }
        Ok(())
    })
}

fn draw_tile(area: &Area, tile: &Tile, layout: &Layout, (x, y): (usize, usize)) -> Result<()> {
    let (w, h) = (tile.width * layout.scale, tile.height * layout.scale);
    let left = x + (layout.slot_w - w) / 2;
    let top = y + (layout.slot_h - h) / 2;
    let pos = (left as i32, top as i32);
    let bitmap =
        BitMapElement::with_owned_buffer(pos, (px(w)?, px(h)?), tile.upscaled_rgb(layout.scale))
            .with_context(|| {
                format!(
                    "tile {:?}: pixel buffer does not match its size",
                    tile.caption
                )
            })?;
    area.draw(&bitmap).map_err(drawing)?;
    let color = if tile.highlight {
        frame(area, pos, (w as i32, h as i32), 3, HIGHLIGHT)?;
        HIGHLIGHT
    } else {
        RGBColor(0, 0, 0)
    };
    for (k, line) in tile.caption.lines().enumerate() {
        let (line, size) = text::fit(line, px(layout.slot_w)?, 14.0, 7.0, false)?;
        let line = line.as_ref();
        let style = text::style(
            size,
            false,
            color,
            (HPos::Center, VPos::Center),
            FontTransform::None,
        );
        let cy = y + layout.slot_h + CAPTION_PAD + k * CAPTION_LINE + CAPTION_LINE / 2;
        let at = ((x + layout.slot_w / 2) as i32, cy as i32);
        area.draw_text(line, &style, at).map_err(drawing)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::grid_columns;

    #[test]
    fn grids_are_near_square() {
        let cols: Vec<usize> = [0, 1, 2, 4, 5, 6, 9, 10, 32, 64, 96]
            .map(grid_columns)
            .to_vec();
        assert_eq!(cols, [1, 1, 2, 2, 3, 3, 3, 4, 6, 8, 10]);
    }
}
