//! Helpers shared by the figure tests: decoding PNGs and comparing regions.
// Each test binary uses only some of these helpers.
#![allow(dead_code)]

use std::path::Path;

use image::RgbImage;

/// Decodes the PNG at `path` (it must exist and be a valid image).
pub fn load(path: &Path) -> RgbImage {
    assert!(path.exists(), "{} was not written", path.display());
    image::open(path)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
        .to_rgb8()
}

/// Variance of all channel values; 0 for a blank image.
pub fn variance(img: &RgbImage) -> f64 {
    let values: Vec<f64> = img.as_raw().iter().map(|&v| f64::from(v)).collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64
}

/// The pixels of the `w` x `h` region whose top-left corner is `(x, y)`.
pub fn region(img: &RgbImage, (x, y): (u32, u32), (w, h): (u32, u32)) -> Vec<[u8; 3]> {
    let mut out = Vec::with_capacity((w * h) as usize);
    for yy in y..y + h {
        for xx in x..x + w {
            out.push(img.get_pixel(xx, yy).0);
        }
    }
    out
}

/// The colour at `(x, y)`.
pub fn pixel(img: &RgbImage, x: u32, y: u32) -> [u8; 3] {
    img.get_pixel(x, y).0
}

/// Asserts a figure is as large as its documented layout and not blank.
pub fn assert_figure(img: &RgbImage, size: (u32, u32)) {
    assert_eq!(img.dimensions(), size, "figure size");
    assert!(variance(img) > 100.0, "figure looks blank");
}
