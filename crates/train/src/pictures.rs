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
/// captioned tiles of their `test` images: what [`save_predictions`] draws. When those are all
/// of one class (a test set in class order, as an image folder's), the tiles are spread
/// evenly over the predictions instead, so that the picture shows more than one class.
///
/// # Errors
/// An image cannot be read from `test`.
pub fn prediction_tiles(
    test: &dyn Dataset,
    predictions: &[(usize, usize)],
) -> Result<Vec<viz::Tile>> {
    let classes = test.classes();
    let name = |c: usize| classes.get(c).cloned().unwrap_or_else(|| c.to_string());
    let first = &predictions[..predictions.len().min(PREDICTION_TILES)];
    let one_class = first.len() > 1
        && first
            .iter()
            .all(|p| test.label(p.0) == test.label(first[0].0));
    let shown: Vec<(usize, usize)> = if one_class {
        (0..first.len())
            .map(|i| predictions[i * predictions.len() / first.len()])
            .collect()
    } else {
        first.to_vec()
    };
    let mut tiles = Vec::with_capacity(PREDICTION_TILES);
    for &(index, predicted) in &shown {
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

/// Writes `confusion.png` for counts by true class (rows) and predicted class (columns), headed
/// by `title`.
///
/// # Errors
/// The matrix is not square or does not match `classes`, or the picture cannot be written.
pub fn save_confusion(
    dir: &Path,
    title: &str,
    confusion: &[Vec<u64>],
    classes: &[String],
) -> Result<()> {
    save_confusion_as(&dir.join(CONFUSION), title, confusion, classes)
}

/// The confusion matrix as the PNG file `path`, headed by `title`.
///
/// # Errors
/// The matrix is not square or does not match `classes`, or the picture cannot be written.
pub fn save_confusion_as(
    path: &Path,
    title: &str,
    confusion: &[Vec<u64>],
    classes: &[String],
) -> Result<()> {
    atomic::write_with(path, |tmp| {
        viz::save_confusion(tmp, title, confusion, classes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test set in class order shows tiles spread over it; a mixed one its first ten.
    #[test]
    fn predictions_show_more_than_one_class() -> Result<()> {
        let classes: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let captions = |labels: Vec<usize>| -> Result<Vec<String>> {
            let n = labels.len();
            let data =
                datasets::InMemory::new(vec![0; n], labels.clone(), (1, 1, 1), classes.clone())?;
            let predictions: Vec<(usize, usize)> = (0..n).map(|i| (i, labels[i])).collect();
            Ok(prediction_tiles(&data, &predictions)?
                .into_iter()
                .map(|t| t.caption)
                .collect())
        };
        let sorted = captions([vec![0; 20], vec![1; 20]].concat())?;
        assert_eq!(sorted.len(), PREDICTION_TILES);
        assert_eq!(
            sorted.iter().filter(|c| c.starts_with("true: b")).count(),
            5
        );
        let mixed = captions((0..40).map(|i| i % 2).collect())?;
        assert!(mixed[0].starts_with("true: a") && mixed[1].starts_with("true: b"));
        Ok(())
    }
}
