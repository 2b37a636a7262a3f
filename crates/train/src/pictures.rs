//! The pictures of a run: learning curves, a grid of test predictions, the confusion matrix.

use std::path::Path;

use anyhow::Result;
use datasets::Dataset;

use crate::atomic;
use crate::history::EpochRecord;
use crate::rundir::{CONFUSION, CURVES, PREDICTIONS};

/// How many test images `predictions.png` shows (the tutorial's ten).
pub const PREDICTION_TILES: usize = 10;

/// Writes `curves.png`: loss and accuracy per epoch, train and test (viz takes accuracy as a
/// fraction; the history holds percent).
///
/// # Errors
/// The picture cannot be drawn or written.
pub fn save_curves(dir: &Path, title: &str, history: &[EpochRecord]) -> Result<()> {
    let points: Vec<viz::EpochPoint> = history
        .iter()
        .map(|r| viz::EpochPoint {
            epoch: r.epoch,
            train_loss: r.train_loss,
            train_acc: r.train_acc / 100.0,
            test_loss: r.test_loss,
            test_acc: r.test_acc / 100.0,
        })
        .collect();
    atomic::write_with(&dir.join(CURVES), |tmp| {
        viz::save_curves(tmp, title, &points)
    })
}

/// Writes `predictions.png`: the raw (un-normalised) test images `predictions[i].0` with their
/// true and predicted classes; wrong predictions are highlighted.
///
/// # Errors
/// A test image cannot be read, or the picture cannot be drawn or written.
pub fn save_predictions(
    dir: &Path,
    title: &str,
    test: &dyn Dataset,
    predictions: &[(usize, usize)],
) -> Result<()> {
    save_prediction_tiles(dir, title, &prediction_tiles(test, predictions)?)
}

/// The first [`PREDICTION_TILES`] of `predictions` (dataset index, predicted class) as
/// captioned tiles of their `test` images: what [`save_predictions`] draws.
///
/// # Errors
/// An image cannot be read from `test`.
pub fn prediction_tiles(
    test: &dyn Dataset,
    predictions: &[(usize, usize)],
) -> Result<Vec<viz::Tile>> {
    let classes = test.classes();
    let name = |c: usize| classes.get(c).cloned().unwrap_or_else(|| c.to_string());
    let mut tiles = Vec::with_capacity(PREDICTION_TILES);
    for &(index, predicted) in predictions.iter().take(PREDICTION_TILES) {
        let image = test.image(index)?;
        let label = test.label(index);
        tiles.push(viz::Tile {
            channels: image.channels,
            height: image.height,
            width: image.width,
            data: image.data,
            caption: format!("true: {}\npred: {}", name(label), name(predicted)),
            highlight: label != predicted,
        });
    }
    Ok(tiles)
}

/// Writes `predictions.png` from tiles made by [`prediction_tiles`].
///
/// # Errors
/// The picture cannot be written.
pub fn save_prediction_tiles(dir: &Path, title: &str, tiles: &[viz::Tile]) -> Result<()> {
    atomic::write_with(&dir.join(PREDICTIONS), |tmp| {
        viz::save_image_grid(tmp, title, tiles, 5)
    })
}

/// Writes `confusion.png` for counts by true class (rows) and predicted class (columns).
///
/// # Errors
/// The matrix is not square or does not match `classes`, or the picture cannot be written.
pub fn save_confusion(dir: &Path, confusion: &[Vec<u64>], classes: &[String]) -> Result<()> {
    save_confusion_as(&dir.join(CONFUSION), confusion, classes)
}

/// The confusion matrix as the PNG file `path`.
///
/// # Errors
/// The matrix is not square or does not match `classes`, or the picture cannot be written.
pub fn save_confusion_as(path: &Path, confusion: &[Vec<u64>], classes: &[String]) -> Result<()> {
    atomic::write_with(path, |tmp| viz::save_confusion(tmp, confusion, classes))
}
