//! Text on figures: the embedded DejaVu Sans font, measuring and fitting labels.

use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontDesc, FontFamily, FontStyle, FontTransform, RGBColor, TextStyle};

/// Registers DejaVu Sans (regular and bold) as plotters' `sans-serif` family, once per process.
/// Must run before any `FontDesc` is created, because a `FontDesc` looks its font up when built.
pub(crate) fn ensure_fonts() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        let regular = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let bold =
            plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
        regular.is_ok() && bold.is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded DejaVu Sans font could not be loaded"))
    }
}

/// A font of the sans-serif family at `size` pixels.
pub(crate) fn font(size: f64, bold: bool) -> FontDesc<'static> {
    let style = if bold {
        FontStyle::Bold
    } else {
        FontStyle::Normal
    };
    FontDesc::new(FontFamily::SansSerif, size, style)
}

/// A text style anchored at `(h, v)`, optionally rotated.
pub(crate) fn style(
    size: f64,
    bold: bool,
    color: RGBColor,
    (h, v): (HPos, VPos),
    rotate: FontTransform,
) -> TextStyle<'static> {
    font(size, bold)
        .transform(rotate)
        .color(&color)
        .pos(Pos::new(h, v))
}

/// The width in pixels of `text` drawn horizontally at `size`.
pub(crate) fn width(text: &str, size: f64, bold: bool) -> Result<u32> {
    ensure_fonts()?;
    font(size, bold)
        .box_size(text)
        .map(|(w, _)| w)
        .map_err(|e| anyhow!("cannot measure text {text:?}: {e}"))
}

/// The largest size from `preferred` down to `min` (whole pixels) at which `text` fits in
/// `max_width` pixels; `min` when even that is too wide.
pub(crate) fn fit_size(
    text: &str,
    max_width: u32,
    preferred: f64,
    min: f64,
    bold: bool,
) -> Result<f64> {
    let mut size = preferred;
    while size > min {
        if width(text, size, bold)? <= max_width {
            return Ok(size);
        }
        size -= 1.0;
    }
    Ok(min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fonts_register_and_measure() -> Result<()> {
        ensure_fonts()?;
        let short = width("ab", 20.0, false)?;
        let long = width("abcdef", 20.0, false)?;
        assert!(short > 5 && long > 2 * short, "{short} {long}");
        assert!(width("abcdef", 10.0, false)? < long);
        Ok(())
    }

    #[test]
    fn fitting_shrinks_long_text() -> Result<()> {
        ensure_fonts()?;
        let text = "a rather long caption";
        assert_eq!(fit_size(text, 10_000, 18.0, 8.0, false)?, 18.0);
        let fitted = fit_size(text, 100, 18.0, 8.0, false)?;
        assert!(fitted < 18.0);
        assert!(fitted == 8.0 || width(text, fitted, false)? <= 100);
        Ok(())
    }
}
