//! Training curves: accuracy and loss per epoch, train and test.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use plotters::prelude::{ChartBuilder, Circle, LineSeries, PathElement, SeriesLabelPosition};
use plotters::style::text_anchor::{HPos, VPos};
use plotters::style::{Color, FontTransform, RGBColor, ShapeStyle};

use crate::canvas::{drawing, render_png, Area};
use crate::text;

/// Width of the curves figure in pixels.
pub const CURVES_WIDTH: u32 = 1200;
/// Height of the curves figure in pixels.
pub const CURVES_HEIGHT: u32 = 480;
const TITLE_BAND: u32 = 40;
/// matplotlib's first two default colours (`tab:blue`, `tab:orange`).
const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const TEST_COLOR: RGBColor = RGBColor(255, 127, 14);

/// Per-epoch values for training curves. Accuracies are fractions in `0..=1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochPoint {
    /// Epoch number (the x axis).
    pub epoch: usize,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Training accuracy, a fraction in `0..=1`.
    pub train_acc: f64,
    /// Test loss after the epoch.
    pub test_loss: f64,
    /// Test accuracy, a fraction in `0..=1`.
    pub test_acc: f64,
}

/// One panel: which values, how to label them.
struct Metric {
    caption: &'static str,
    y_desc: &'static str,
    legend_at: SeriesLabelPosition,
    train: Vec<(f64, f64)>,
    test: Vec<(f64, f64)>,
    y_range: (f64, f64),
}

/// The tutorial's plot, written to `path` as a 1200x480 PNG: a title band over two panels,
/// accuracy in percent (left) and loss (right), each with train and test lines plus markers,
/// a legend and axis labels. Points are drawn in epoch order.
/// Errors on no points, non-finite values, or an accuracy outside `0..=1` (percent passed by
/// mistake).
pub fn save_curves(path: &Path, title: &str, points: &[EpochPoint]) -> Result<()> {
    let metrics = metrics(points).with_context(|| format!("cannot draw {}", path.display()))?;
    let epochs = points.iter().map(|p| p.epoch as f64);
    let first = epochs.clone().fold(f64::INFINITY, f64::min);
    let last = epochs.fold(f64::NEG_INFINITY, f64::max);
    let pad = ((last - first) * 0.03).max(0.5);
    let x_range = (first - pad, last + pad);
    let x_labels = ((last - first) as usize + 1).min(10);
    render_png(path, (CURVES_WIDTH, CURVES_HEIGHT), |root| {
        let (top, body) = root.split_vertically(TITLE_BAND);
        let (title, size) = text::fit(title, CURVES_WIDTH - 20, 22.0, 10.0, true)?;
        let title = title.as_ref();
        let style = text::style(
            size,
            true,
            RGBColor(0, 0, 0),
            (HPos::Center, VPos::Center),
            FontTransform::None,
        );
        let at = ((CURVES_WIDTH / 2) as i32, (TITLE_BAND / 2) as i32);
        top.draw_text(title, &style, at).map_err(drawing)?;
        for (area, metric) in body.split_evenly((1, 2)).iter().zip(&metrics) {
            draw_metric(area, metric, x_range, x_labels)?;
        }
        Ok(())
    })
}

fn metrics(points: &[EpochPoint]) -> Result<[Metric; 2]> {
    ensure!(!points.is_empty(), "no epochs to plot");
    for p in points {
        let values = [
            ("train_loss", p.train_loss),
            ("train_acc", p.train_acc),
            ("test_loss", p.test_loss),
            ("test_acc", p.test_acc),
        ];
        for (name, v) in values {
            ensure!(v.is_finite(), "{name} at epoch {} is {v}", p.epoch);
        }
        for (name, v) in [("train_acc", p.train_acc), ("test_acc", p.test_acc)] {
            if !(0.0..=1.0).contains(&v) {
                bail!(
                    "{name} {v} at epoch {} is outside 0..=1 (pass fractions, not percent)",
                    p.epoch
                );
            }
        }
    }
    let mut sorted = points.to_vec();
    sorted.sort_by_key(|p| p.epoch);
    let series = |f: fn(&EpochPoint) -> f64| -> Vec<(f64, f64)> {
        sorted.iter().map(|p| (p.epoch as f64, f(p))).collect()
    };
    let train_acc = series(|p| p.train_acc * 100.0);
    let test_acc = series(|p| p.test_acc * 100.0);
    let train_loss = series(|p| p.train_loss);
    let test_loss = series(|p| p.test_loss);
    let (acc_lo, acc_hi) = extent(train_acc.iter().chain(&test_acc));
    let acc_range = (
        (((acc_lo - 2.0) / 5.0).floor() * 5.0).max(0.0),
        (((acc_hi + 2.0) / 5.0).ceil() * 5.0).min(100.0),
    );
    let (loss_lo, loss_hi) = extent(train_loss.iter().chain(&test_loss));
    let loss_range = (
        loss_lo.min(0.0) * 1.1,
        if loss_hi > 0.0 { loss_hi * 1.1 } else { 1.0 },
    );
    Ok([
        Metric {
            caption: "Accuracy",
            y_desc: "accuracy (%)",
            legend_at: SeriesLabelPosition::LowerRight,
            train: train_acc,
            test: test_acc,
            y_range: acc_range,
        },
        Metric {
            caption: "Loss",
            y_desc: "loss",
            legend_at: SeriesLabelPosition::UpperRight,
            train: train_loss,
            test: test_loss,
            y_range: loss_range,
        },
    ])
}

/// Whole numbers without decimals, others with as few as show the tick (at most three).
fn tick_label(y: &f64) -> String {
    (0..3)
        .map(|decimals| format!("{y:.decimals$}"))
        .find(|s| s.parse::<f64>().is_ok_and(|v| (v - y).abs() < 1e-9))
        .unwrap_or_else(|| format!("{y:.3}"))
}

fn extent<'a>(values: impl Iterator<Item = &'a (f64, f64)>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, y)| {
        (lo.min(y), hi.max(y))
    })
}

fn draw_metric(area: &Area, metric: &Metric, x_range: (f64, f64), x_labels: usize) -> Result<()> {
    let mut chart = ChartBuilder::on(area)
        .caption(metric.caption, text::font(18.0, true))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range.0..x_range.1, metric.y_range.0..metric.y_range.1)
        .map_err(drawing)?;
    let epoch_label = |x: &f64| {
        if x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_labels(x_labels)
        .x_label_formatter(&epoch_label)
        .x_desc("epoch")
        .y_desc(metric.y_desc)
        .label_style(text::font(14.0, false))
        .axis_desc_style(text::font(16.0, false))
        .y_label_formatter(&tick_label)
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(RGBColor(255, 255, 255))
        .draw()
        .map_err(drawing)?;
    for (name, values, color) in [
        ("train", &metric.train, TRAIN_COLOR),
        ("test", &metric.test, TEST_COLOR),
    ] {
        let line = ShapeStyle::from(color).stroke_width(2);
        chart
            .draw_series(LineSeries::new(values.iter().copied(), line))
            .map_err(drawing)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], line));
        chart
            .draw_series(values.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(drawing)?;
    }
    chart
        .configure_series_labels()
        .position(metric.legend_at.clone())
        .label_font(text::font(14.0, false))
        .background_style(RGBColor(255, 255, 255).mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .draw()
        .map_err(drawing)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::tick_label;

    #[test]
    fn ticks_drop_needless_decimals() {
        assert_eq!(tick_label(&100.0), "100");
        assert_eq!(tick_label(&(0.1 + 0.2)), "0.3");
        assert_eq!(tick_label(&1.25), "1.25");
        assert_eq!(tick_label(&0.0625), "0.062");
    }
}
