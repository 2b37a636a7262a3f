//! `save_image_grid`, `Tile` and `tensor_tiles`: layout size, upscaling, highlights, errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use common::{assert_figure, load, pixel, region};
use viz::{save_image_grid, tensor_tiles, Tile};

fn digit(k: usize) -> Tile {
    let data = (0..28 * 28).map(|i| ((i * (k + 1)) % 256) as u8).collect();
    Tile {
        channels: 1,
        height: 28,
        width: 28,
        data,
        caption: k.to_string(),
        highlight: false,
    }
}

#[test]
fn mnist_grid_has_documented_size() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("digits.png");
    let tiles: Vec<Tile> = (0..10).map(digit).collect();
    save_image_grid(&path, "MNIST samples", &tiles, 5)?;
    // scale 4: slots 112x112, caption band 18 + 4, title band 40, margin 12, gap 10.
    let img = load(&path);
    assert_figure(&img, (24 + 5 * 112 + 4 * 10, 24 + 40 + 2 * (112 + 22) + 10));
    // Tile 0 is drawn at (12, 52), each source pixel 4x4.
    let expected = |i: u32| {
        let v = tiles[0].data[i as usize];
        [v, v, v]
    };
    assert_eq!(pixel(&img, 12, 52), expected(0));
    assert_eq!(
        pixel(&img, 12 + 4 * 5 + 3, 52 + 4 * 2 + 1),
        expected(2 * 28 + 5)
    );
    Ok(())
}

#[test]
fn nearest_upscaling_keeps_blocks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("blocks.png");
    // A 2x2 RGB image: red, green / blue, white, in CHW order.
    let tile = Tile {
        channels: 3,
        height: 2,
        width: 2,
        data: vec![255, 0, 0, 255, 0, 255, 0, 255, 0, 0, 255, 255],
        caption: String::new(),
        highlight: false,
    };
    save_image_grid(&path, "", &[tile], 3)?;
    // scale ceil(96 / 2) = 48; no title, no captions: 24 + 96 square.
    let img = load(&path);
    assert_figure(&img, (120, 120));
    let quadrant = |x: u32, y: u32| region(&img, (12 + 48 * x, 12 + 48 * y), (48, 48));
    assert!(quadrant(0, 0).iter().all(|&p| p == [255, 0, 0]));
    assert!(quadrant(1, 0).iter().all(|&p| p == [0, 255, 0]));
    assert!(quadrant(0, 1).iter().all(|&p| p == [0, 0, 255]));
    assert!(quadrant(1, 1).iter().all(|&p| p == [255, 255, 255]));
    Ok(())
}

#[test]
fn highlighted_predictions_are_framed_red() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("preds.png");
    let device = Device::Cpu;
    let mut tiles = Vec::new();
    for k in 0..4 {
        let image = (Tensor::rand(0f32, 1f32, (3, 32, 32), &device)? * 0.5)?;
        let mut tile = Tile::from_tensor(&image, &format!("true: cat\npred: {k}"))?;
        tile.highlight = k == 1;
        tiles.push(tile);
    }
    save_image_grid(&path, "predictions", &tiles, 4)?;
    // scale 3: slots 96x96, two caption lines: band 18 * 2 + 4.
    let img = load(&path);
    assert_figure(&img, (24 + 4 * 96 + 3 * 10, 24 + 40 + 96 + 40));
    // Tile 1 starts at x = 12 + 106; its frame is 3 pixels outside.
    let red = [214, 39, 40];
    assert_eq!(pixel(&img, 118 - 2, 52 + 40), red);
    assert_ne!(pixel(&img, 12 - 2, 52 + 40), red);
    let caption = |x: u32| region(&img, (x, 52 + 96 + 4), (96, 36));
    assert!(caption(118).contains(&red));
    assert!(!caption(12).contains(&red));
    Ok(())
}

#[test]
fn filters_as_tiles() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("filters.png");
    let weights = Tensor::randn(0f32, 1f32, (6, 1, 5, 5), &Device::Cpu)?;
    let tiles = tensor_tiles(&weights, false)?;
    assert_eq!(tiles.len(), 6);
    save_image_grid(&path, "conv1 filters", &tiles, 6)?;
    // scale ceil(96 / 5) = 20: 100x100 slots.
    assert_figure(&load(&path), (24 + 6 * 100 + 5 * 10, 24 + 40 + 100 + 22));
    Ok(())
}

#[test]
fn float_tiles_convert_like_torchvision() -> Result<()> {
    let t = Tensor::new(&[[0f32, 0.5], [1.0, 2.0]], &Device::Cpu)?;
    let tile = Tile::from_tensor(&t, "x")?;
    assert_eq!((tile.channels, tile.height, tile.width), (1, 2, 2));
    assert_eq!(tile.data, vec![0, 128, 255, 255]);
    let bytes = Tensor::new(&[[[7u8]]], &Device::Cpu)?;
    assert_eq!(Tile::from_tensor(&bytes, "b")?.data, vec![7]);
    let four = Tensor::zeros((4, 2, 2), DType::F32, &Device::Cpu)?;
    assert!(Tile::from_tensor(&four, "4 channels").is_err());
    Ok(())
}

#[test]
fn bad_grids_are_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.png");
    assert!(save_image_grid(&path, "t", &[], 3).is_err());
    assert!(save_image_grid(&path, "t", &[digit(1)], 0).is_err());
    let mut short = digit(2);
    short.data.pop();
    assert!(save_image_grid(&path, "t", &[short], 3).is_err());
    let mut two_channels = digit(3);
    two_channels.channels = 2;
    assert!(save_image_grid(&path, "t", &[two_channels], 3).is_err());
    assert!(!path.exists());
    Ok(())
}
