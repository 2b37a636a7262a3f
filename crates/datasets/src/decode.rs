//! Encoded image bytes (JPEG, PNG) to CHW u8 images.

use crate::U8Image;
use anyhow::{Context, Result};

/// The colour layout a decoded image is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorMode {
    /// Three channels, as torchvision's default loader (`PIL.Image.convert("RGB")`).
    Rgb,
    /// One channel (MNIST-style grey).
    Gray,
}

/// Decodes a JPEG or PNG held in `bytes` into a CHW image in `mode`.
pub fn decode_image(bytes: &[u8], mode: ColorMode) -> Result<U8Image> {
    let img = image::load_from_memory(bytes).context("corrupt or unsupported image data")?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    match mode {
        ColorMode::Rgb => U8Image::from_hwc(3, height, width, img.into_rgb8().as_raw()),
        ColorMode::Gray => U8Image::from_hwc(1, height, width, img.into_luma8().as_raw()),
    }
}

/// Decodes the image in `bytes`, naming `name` (a file) in any error.
pub fn decode_named(bytes: &[u8], mode: ColorMode, name: &str) -> Result<U8Image> {
    decode_image(bytes, mode).with_context(|| format!("cannot decode image {name}"))
}
