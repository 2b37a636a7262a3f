//! Drawing a figure into an in-memory RGB buffer and writing it as PNG.

use std::fmt::Display;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use image::{ImageFormat, RgbImage};
use plotters::coord::Shift;
use plotters::prelude::{BitMapBackend, DrawingArea, IntoDrawingArea, Rectangle, WHITE};
use plotters::style::{RGBColor, ShapeStyle};

/// The drawing surface every figure is drawn on.
pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Figures larger than this many pixels are refused rather than allocated.
pub(crate) const MAX_PIXELS: u64 = 100_000_000;

/// Turns a plotters error into an `anyhow` error.
pub(crate) fn drawing<E: Display>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

/// Converts a computed layout length to pixels, refusing lengths that do not fit.
pub(crate) fn px(len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| anyhow!("figure dimension {len} is too large"))
}

/// Fills the `w` x `h` pixels whose top-left pixel is `(x, y)`.
pub(crate) fn fill_rect(
    area: &Area,
    (x, y): (i32, i32),
    (w, h): (i32, i32),
    color: RGBColor,
) -> Result<()> {
    // The bitmap backend fills opaque rectangles up to, not including, the second corner.
    let style = ShapeStyle::from(color).filled();
    area.draw(&Rectangle::new([(x, y), (x + w, y + h)], style))
        .map_err(drawing)
}

/// Draws a frame `thickness` pixels wide just outside the `w` x `h` box at `(x, y)`.
pub(crate) fn frame(
    area: &Area,
    (x, y): (i32, i32),
    (w, h): (i32, i32),
    thickness: i32,
    color: RGBColor,
) -> Result<()> {
    let t = thickness;
    fill_rect(area, (x - t, y - t), (w + 2 * t, t), color)?;
    fill_rect(area, (x - t, y + h), (w + 2 * t, t), color)?;
    fill_rect(area, (x - t, y), (t, h), color)?;
    fill_rect(area, (x + w, y), (t, h), color)
}

/// Draws a white `(width, height)` figure with `draw` and writes it to `path` as PNG
/// (whatever the extension), creating missing parent directories.
pub(crate) fn render_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Area) -> Result<()>,
) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 || pixels > MAX_PIXELS {
        bail!(
            "cannot write {}: figure size {width}x{height} is outside 1..={MAX_PIXELS} pixels",
            path.display()
        );
    }
    crate::text::ensure_fonts()?;
    let mut buffer = vec![255u8; pixels as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        draw(&root).with_context(|| format!("cannot draw {}", path.display()))?;
        root.present().map_err(drawing)?;
    }
    let image = RgbImage::from_raw(width, height, buffer)
        .ok_or_else(|| anyhow!("pixel buffer does not match {width}x{height}"))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
    }
    image
        .save_with_format(path, ImageFormat::Png)
        .with_context(|| format!("cannot write PNG {}", path.display()))
}
