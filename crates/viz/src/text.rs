//! Text on figures: the embedded DejaVu Sans font, measuring and fitting labels.

use std::borrow::Cow;
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

/// The characters of `text` the pictures' font (DejaVu Sans) has no glyph for, each once, in
/// order of appearance (white space and control characters aside): they draw as boxes, as
/// matplotlib's default font draws them (CJK scripts and emoji, for example).
pub fn missing_glyphs(text: &str) -> Vec<char> {
    use ab_glyph::Font;
    static FONT: OnceLock<Option<ab_glyph::FontRef<'static>>> = OnceLock::new();
    let Some(font) =
        FONT.get_or_init(|| ab_glyph::FontRef::try_from_slice(dejavu::sans::regular()).ok())
    else {
        return Vec::new();
    };
    let mut missing = Vec::new();
    for c in text.chars() {
        if !c.is_whitespace() && !c.is_control() && font.glyph_id(c).0 == 0 && !missing.contains(&c)
        {
            missing.push(c);
        }
    }
    missing
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

/// `text` fitted into `max_width` pixels as [`fit_size`] fits it (but not below 9 pixels,
/// or `preferred` when that is smaller), and when it is too wide even then, cut at the end with
/// "…" (as a plot elides a long label): the text to draw and its size. For names and titles; numbers are shrunk, never cut.
pub(crate) fn fit(
    text: &str,
    max_width: u32,
    preferred: f64,
    min: f64,
    bold: bool,
) -> Result<(Cow<'_, str>, f64)> {
    // Cut rather than shrunk below a readable size (9 pixels, or `preferred` when smaller).
    let min = min.max(preferred.min(9.0));
    let size = fit_size(text, max_width, preferred, min, bold)?;
    if width(text, size, bold)? <= max_width {
        return Ok((Cow::Borrowed(text), size));
    }
    let chars: Vec<char> = text.chars().collect();
    let cut = |n: usize| format!("{}…", chars[..n].iter().collect::<String>().trim_end());
    // The longest start that fits with the ellipsis (none at all when nothing does).
    let (mut lo, mut hi) = (0, chars.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if width(&cut(mid), size, bold)? <= max_width {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok((Cow::Owned(cut(lo)), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_the_font_lacks_are_named_once() {
        assert_eq!(
            missing_glyphs("cat, Ünïcödé Ελληνικά кошка\tà"),
            Vec::<char>::new()
        );
        assert_eq!(missing_glyphs("猫 cat 猫 犬"), ['猫', '犬']);
        assert_eq!(missing_glyphs("ねこ 고"), ['ね', 'こ', '고']);
    }

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

    #[test]
    fn names_too_long_even_when_shrunk_are_cut_with_an_ellipsis() -> Result<()> {
        ensure_fonts()?;
        let (whole, size) = fit("airplane", 10_000, 16.0, 6.0, false)?;
        assert_eq!((whole.as_ref(), size), ("airplane", 16.0));
        let long = "Airplane_with_a_really_long_descriptive_name";
        let (cut, size) = fit(long, 80, 16.0, 9.0, false)?;
        assert_eq!(size, 9.0);
        assert!(cut.starts_with("Airpl") && cut.ends_with('…'), "{cut}");
        assert!(width(&cut, size, false)? <= 80);
        // One more character would not fit.
        let n = cut.chars().count() - 1;
        let longer: String = long.chars().take(n + 1).chain(['…']).collect();
        assert!(width(&longer, size, false)? > 80);
        Ok(())
    }
}
