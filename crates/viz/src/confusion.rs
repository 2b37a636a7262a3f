//! Confusion matrix heat map: counts in cells, class names on both axes.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use plotters::style::text_anchor::{HPos, VPos};
use plotters::style::{FontTransform, RGBColor};

use crate::canvas::{drawing, fill_rect, frame, px, render_png, Area};
use crate::colormap::{contrast_text, ColorMap};
use crate::text;

const MARGIN: usize = 16;
const TITLE_BAND: usize = 40;
const AXIS_TITLE_BAND: usize = 28;
const LABEL_BAND: usize = 110;
const FLAT_LABEL_BAND: usize = 30;
const LABEL_FONT: f64 = 16.0;
const BLACK: RGBColor = RGBColor(0, 0, 0);

struct Layout {
    n: usize,
    cell: usize,
    /// Class names under the columns are rotated when one does not fit in a cell.
    rotate_columns: bool,
    left: usize,
    top: usize,
    width: usize,
    height: usize,
}

fn layout(matrix: &[Vec<u64>], classes: &[String]) -> Result<Layout> {
    let n = matrix.len();
    ensure!(n > 0, "the confusion matrix is empty");
    ensure!(
        classes.len() == n,
        "{} class names for a {n}x{n} confusion matrix",
        classes.len()
    );
    for (i, row) in matrix.iter().enumerate() {
        ensure!(
            row.len() == n,
            "row {i} of the confusion matrix has {} entries, expected {n}",
            row.len()
        );
    }
    let cell = (640 / n).clamp(4, 64);
    let mut rotate_columns = false;
    for name in classes {
        rotate_columns |= text::width(name, LABEL_FONT, false)? + 4 > px(cell)?;
    }
    let bottom_band = if rotate_columns {
        LABEL_BAND
    } else {
        FLAT_LABEL_BAND
    };
    let left = MARGIN + AXIS_TITLE_BAND + LABEL_BAND;
    let top = MARGIN + TITLE_BAND;
    Ok(Layout {
        n,
        cell,
        rotate_columns,
        left,
        top,
        width: left + n * cell + MARGIN,
        height: top + n * cell + bottom_band + AXIS_TITLE_BAND + MARGIN,
    })
}

/// Confusion matrix heat map (rows true class, columns predicted class) written to `path` as
/// PNG: viridis cells over the matrix's minimum..maximum count, each count printed in black or
/// white for contrast (when cells are at least 20 pixels), class names on both axes, the
/// titles "true label" and "predicted label" as in scikit-learn's `ConfusionMatrixDisplay`.
///
/// Layout for `n` classes: cells are `cell = clamp(640 / n, 4, 64)` pixels; the PNG is
/// `16 + 28 + 110 + n * cell + 16` wide and `16 + 40 + n * cell + B + 28 + 16` high, where the
/// column label band `B` is 30 when every class name fits in a cell at 16 pixels and 110 when
/// the names are rotated to read upwards.
/// `title` heads the picture (what was tested: "epoch 4, test top-1 90.10%"); it is shrunk,
/// then cut with "…", to fit, as are class names longer than their band.
/// Errors on an empty matrix, a non-square matrix, or a class count other than `n`.
pub fn save_confusion(
    path: &Path,
    title: &str,
    matrix: &[Vec<u64>],
    classes: &[String],
) -> Result<()> {
    let layout =
        layout(matrix, classes).with_context(|| format!("cannot draw {}", path.display()))?;
    let size = (px(layout.width)?, px(layout.height)?);
    render_png(path, size, |area| {
        draw_titles(area, &layout, title)?;
        draw_cells(area, &layout, matrix)?;
        draw_class_names(area, &layout, classes)
    })
}

fn draw_titles(area: &Area, l: &Layout, title: &str) -> Result<()> {
    let center = (HPos::Center, VPos::Center);
    let side = (l.n * l.cell) as i32;
    let (title, size) = text::fit(title, px(l.width - 2 * MARGIN)?, 20.0, 10.0, true)?;
    let style = text::style(size, true, BLACK, center, FontTransform::None);
    // Over the matrix, or over the whole picture when it is wider than the matrix.
    let half = text::width(&title, size, true)? as i32 / 2;
    let x = (l.left as i32 + side / 2).min(l.width as i32 - MARGIN as i32 - half);
    let at = (x, (MARGIN + TITLE_BAND / 2) as i32);
    area.draw_text(&title, &style, at).map_err(drawing)?;
    let axis = text::style(17.0, false, BLACK, center, FontTransform::None);
    let bottom = l.height - MARGIN - AXIS_TITLE_BAND / 2;
    let at = (l.left as i32 + side / 2, bottom as i32);
    area.draw_text("predicted label", &axis, at)
        .map_err(drawing)?;
    let upward = text::style(17.0, false, BLACK, center, FontTransform::Rotate270);
    let at = (
        (MARGIN + AXIS_TITLE_BAND / 2) as i32,
        l.top as i32 + side / 2,
    );
    area.draw_text("true label", &upward, at).map_err(drawing)
}

fn draw_cells(area: &Area, l: &Layout, matrix: &[Vec<u64>]) -> Result<()> {
    let counts = matrix.iter().flatten().copied();
    let lo = counts.clone().min().unwrap_or(0) as f32;
    let hi = counts.max().unwrap_or(0) as f32;
    let c = l.cell as i32;
    for (r, row) in matrix.iter().enumerate() {
        for (col, &count) in row.iter().enumerate() {
            let at = ((l.left + col * l.cell) as i32, (l.top + r * l.cell) as i32);
            let rgb = ColorMap::Viridis.scaled(count as f32, lo, hi);
            fill_rect(area, at, (c, c), RGBColor(rgb[0], rgb[1], rgb[2]))?;
            if l.cell >= 20 {
                let label = count.to_string();
                let preferred = (l.cell as f64 * 0.28).round();
                let size = text::fit_size(&label, px(l.cell - 4)?, preferred, 6.0, false)?;
                let style = text::style(
                    size,
                    false,
                    contrast_text(rgb),
                    (HPos::Center, VPos::Center),
                    FontTransform::None,
                );
                area.draw_text(&label, &style, (at.0 + c / 2, at.1 + c / 2))
                    .map_err(drawing)?;
            }
        }
    }
    let side = (l.n * l.cell) as i32;
    frame(area, (l.left as i32, l.top as i32), (side, side), 1, BLACK)
}

fn draw_class_names(area: &Area, l: &Layout, classes: &[String]) -> Result<()> {
    let max_size = LABEL_FONT.min(l.cell as f64 * 0.8);
    if max_size < 6.0 {
        return Ok(());
    }
    let room = px(LABEL_BAND - 8)?;
    let matrix_bottom = (l.top + l.n * l.cell) as i32;
    for (i, name) in classes.iter().enumerate() {
        let (name, size) = text::fit(name, room, max_size, 6.0, false)?;
        let name = name.as_ref();
        let middle = (i * l.cell + l.cell / 2) as i32;
        let row_style = text::style(
            size,
            false,
            BLACK,
            (HPos::Right, VPos::Center),
            FontTransform::None,
        );
        let at = (l.left as i32 - 6, l.top as i32 + middle);
        area.draw_text(name, &row_style, at).map_err(drawing)?;
        let (col_style, at) = if l.rotate_columns {
            let style = text::style(
                size,
                false,
                BLACK,
                (HPos::Right, VPos::Center),
                FontTransform::Rotate270,
            );
            (style, (l.left as i32 + middle, matrix_bottom + 6))
        } else {
            let style = text::style(
                size,
                false,
                BLACK,
                (HPos::Center, VPos::Top),
                FontTransform::None,
            );
            (style, (l.left as i32 + middle, matrix_bottom + 6))
        };
        area.draw_text(name, &col_style, at).map_err(drawing)?;
    }
    Ok(())
}
