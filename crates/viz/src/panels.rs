//! Side-by-side titled matrix panels with each value printed in its cell.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor};
use plotters::style::text_anchor::{HPos, VPos};
use plotters::style::{FontTransform, RGBColor};

use crate::canvas::{fill_rect, frame, px, render_png, Area};
use crate::colormap::{contrast_text, ColorMap};
use crate::number::format_value;
use crate::text;

/// Outer margin of the figure, in pixels.
const PANEL_MARGIN: usize = 16;
/// Height of the band holding the panel titles.
const PANEL_TITLE_BAND: usize = 32;
/// Horizontal gap between two panel slots.
const PANEL_GAP: usize = 32;
/// Narrowest slot a panel gets, so that its title has room.
const PANEL_MIN_SLOT: usize = 120;
/// Titles are drawn at 18 pixels, shrunk to fit the slot down to this size; slots widen to
/// fit a title at this size.
const PANEL_MIN_TITLE: f64 = 14.0;
/// Largest cell side; used while the largest matrix side is at most 12.
const PANEL_MAX_CELL: usize = 56;
/// Values are printed only when cells are at least this many pixels wide.
const PANEL_MIN_TEXT_CELL: usize = 28;

/// A titled 2-D matrix panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Title drawn above the matrix.
    pub title: String,
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// The values, row-major, `rows * cols` of them.
    pub values: Vec<f32>,
}

impl Panel {
    /// A panel from a tensor whose dimensions are all 1 except the last two
    /// (`(H, W)`, `(1, H, W)`, `(1, 1, H, W)`, ...), in any float or integer dtype.
    ///
    /// # Errors
    /// Dimensions other than the last two that are not 1, or values that cannot be read as f32.
    pub fn from_tensor(title: &str, t: &Tensor) -> Result<Panel> {
        let dims = t.dims();
        ensure!(
            dims.len() >= 2 && dims[..dims.len() - 2].iter().all(|&d| d == 1),
            "panel {title:?}: expected a 2-D matrix (leading dimensions of size 1), got shape {dims:?}"
        );
        let (rows, cols) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let values = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .with_context(|| format!("panel {title:?}: cannot read tensor values"))?;
        Ok(Panel {
            title: title.to_string(),
            rows,
            cols,
            values,
        })
    }
}

/// Where everything goes; computed before drawing so that the size is known.
struct Layout {
    cell: usize,
    slots: Vec<usize>,
    width: usize,
    height: usize,
}

/// The figure size for `panels`. With `cell = clamp(720 / s, 6, 56)` where `s` is the
/// largest `rows` or `cols` of any panel, and `slot_i = max(cols_i * cell, 120, t_i + 8)`
/// (`t_i` the width of the title in 14-pixel bold):
/// width = `2 * 16 + sum(slot_i) + 32 * (n - 1)`, height = `2 * 16 + 32 + max(rows_i) * cell`.
fn layout(panels: &[Panel]) -> Result<Layout> {
    ensure!(!panels.is_empty(), "no panels to draw");
    for (i, p) in panels.iter().enumerate() {
        ensure!(
            p.rows > 0 && p.cols > 0,
            "panel {i} ({:?}) has shape {}x{}: both sides must be at least 1",
            p.title,
            p.rows,
            p.cols
        );
        let expected = p.rows.checked_mul(p.cols);
        if expected != Some(p.values.len()) {
            bail!(
                "panel {i} ({:?}) is {}x{} but has {} values",
                p.title,
                p.rows,
                p.cols,
                p.values.len()
            );
        }
    }
    let longest = panels.iter().map(|p| p.rows.max(p.cols)).max().unwrap_or(1);
    let cell = (720 / longest).clamp(6, PANEL_MAX_CELL);
    let mut slots = Vec::with_capacity(panels.len());
    for p in panels {
        let title = text::width(&p.title, PANEL_MIN_TITLE, true)? as usize + 8;
        slots.push((p.cols * cell).max(PANEL_MIN_SLOT).max(title));
    }
    let tallest = panels.iter().map(|p| p.rows).max().unwrap_or(1);
    let width = 2 * PANEL_MARGIN + slots.iter().sum::<usize>() + PANEL_GAP * (panels.len() - 1);
    let height = 2 * PANEL_MARGIN + PANEL_TITLE_BAND + tallest * cell;
    Ok(Layout {
        cell,
        slots,
        width,
        height,
    })
}

/// Whether [`save_panels`] can draw `panels`: the figure's size within the pixels a PNG here
/// may have. For a caller that would otherwise print the matrices first and fail after.
///
/// # Errors
/// As [`save_panels`]'s, before drawing: a figure of more than 100,000,000 pixels (cells are
/// at least 6 pixels wide), named with the figure's size and the largest side of a matrix.
pub fn check_panels(panels: &[Panel]) -> Result<()> {
    let layout = layout(panels)?;
    let pixels = layout.width as u64 * layout.height as u64;
    let longest = panels.iter().map(|p| p.rows.max(p.cols)).max().unwrap_or(1);
    ensure!(
        pixels <= crate::canvas::MAX_PIXELS,
        "the picture would be {}x{} pixels (matrices of up to {longest} rows or columns, at 6 \
         pixels a cell), more than the {} drawn here: give smaller matrices",
        layout.width,
        layout.height,
        crate::canvas::MAX_PIXELS
    );
    Ok(())
}

/// Side-by-side titled panels with the value printed in each cell (like the tutorial's
/// matplotlib figures: input / kernel / result), written to `path` as PNG.
///
/// Each panel is coloured by `cmap` over its own minimum..maximum. Cells are square:
/// `clamp(720 / s, 6, 56)` pixels where `s` is the largest side of any panel, and values are
/// printed (see [`format_value`]) in black or white for contrast when cells are at least 28
/// pixels. Every panel sits in a slot `max(cols * cell, 120)` wide (wider when its title
/// needs it: titles are 18-pixel bold, shrunk to no less than 14 to fit the slot), slots 32 pixels apart
/// under a 32-pixel title band, inside a 16-pixel margin; so the PNG is
/// `32 + sum(slot) + 32 * (n - 1)` by `32 + 32 + max(rows) * cell` pixels.
/// Errors on no panels, a zero side, or a value count other than `rows * cols`.
pub fn save_panels(path: &Path, panels: &[Panel], cmap: ColorMap) -> Result<()> {
    save(path, panels, cmap, false)
}

/// [`save_panels`], every panel coloured over the minimum..maximum of all of them together, so
/// that one value has one colour in every panel: for panels of one quantity, such as pooling's
/// input and outputs (each output an input value, or an average of them).
///
/// # Errors
/// As [`save_panels`]'s.
pub fn save_panels_shared(path: &Path, panels: &[Panel], cmap: ColorMap) -> Result<()> {
    save(path, panels, cmap, true)
}

fn save(path: &Path, panels: &[Panel], cmap: ColorMap, shared: bool) -> Result<()> {
    let layout = layout(panels).with_context(|| format!("cannot draw {}", path.display()))?;
    let size = (px(layout.width)?, px(layout.height)?);
    let all = range(panels.iter().flat_map(|p| &p.values));
    render_png(path, size, |area| {
        let mut x0 = PANEL_MARGIN;
        for (panel, &slot) in panels.iter().zip(&layout.slots) {
            let scale = if shared { all } else { range(&panel.values) };
            draw_panel(area, panel, (cmap, scale), layout.cell, x0, slot)?;
            x0 += slot + PANEL_GAP;
        }
        Ok(())
    })
}

/// The finite values' minimum and maximum (infinities when there are none).
fn range<'a>(values: impl IntoIterator<Item = &'a f32>) -> (f32, f32) {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

fn draw_panel(
    area: &Area,
    panel: &Panel,
    (cmap, (lo, hi)): (ColorMap, (f32, f32)),
    cell: usize,
    x0: usize,
    slot: usize,
) -> Result<()> {
    let (title, title_size) = text::fit(&panel.title, px(slot)?, 18.0, PANEL_MIN_TITLE, true)?;
    let title_style = text::style(
        title_size,
        true,
        RGBColor(0, 0, 0),
        (HPos::Center, VPos::Center),
        FontTransform::None,
    );
    let title_at = (
        (x0 + slot / 2) as i32,
        (PANEL_MARGIN + PANEL_TITLE_BAND / 2) as i32,
    );
    area.draw_text(title.as_ref(), &title_style, title_at)
        .map_err(crate::canvas::drawing)?;

    let left = x0 + (slot - panel.cols * cell) / 2;
    let top = PANEL_MARGIN + PANEL_TITLE_BAND;
    let c = cell as i32;
    for (index, &value) in panel.values.iter().enumerate() {
        let (r, col) = (index / panel.cols, index % panel.cols);
        let at = ((left + col * cell) as i32, (top + r * cell) as i32);
        let rgb = cmap.scaled(value, lo, hi);
        fill_rect(area, at, (c, c), RGBColor(rgb[0], rgb[1], rgb[2]))?;
        if cell >= PANEL_MIN_TEXT_CELL {
            let label = format_value(value);
            let size = text::fit_size(
                &label,
                px(cell - 6)?,
                (cell as f64 * 0.32).round(),
                8.0,
                false,
            )?;
            let style = text::style(
                size,
                false,
                contrast_text(rgb),
                (HPos::Center, VPos::Center),
                FontTransform::None,
            );
            area.draw_text(&label, &style, (at.0 + c / 2, at.1 + c / 2))
                .map_err(crate::canvas::drawing)?;
        }
    }
    let (w, h) = ((panel.cols * cell) as i32, (panel.rows * cell) as i32);
    frame(
        area,
        (left as i32, top as i32),
        (w, h),
        1,
        RGBColor(60, 60, 60),
    )
}
