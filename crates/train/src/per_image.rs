//! `evaluate`'s answer for each test image, as a CSV table: which images the network got
//! wrong, by file, for a look at them (or the same rows from a PyTorch test loop).

use std::path::Path;

use anyhow::{Context, Result};

/// The table's columns, in order: the image's index in the test split as read, also under
/// `--limit-test` (for MNIST's and CIFAR-10's official files torchvision's index,
/// `CIFAR10(root, train=False)[index]`; for an image folder, CIFAR-10's JPEG folders too, its
/// place among the folder's files as `ImageFolder` sorts them, or in the held-out share), its
/// file where it has one (an image folder's or archive's; empty for MNIST's and CIFAR-10's
/// batch files), its label and the predicted class, each as its index and its name.
pub const COLUMNS: [&str; 6] = [
    "index",
    "file",
    "label",
    "label_name",
    "predicted",
    "predicted_name",
];

/// Writes `predictions`, `(sample, predicted class)` with `sample` an index into `test`, as
/// CSV (RFC 4180, through the `csv` crate: names with commas or quotes are quoted) to `path`,
/// atomically, one row an image in the order of their index. Read it in pandas with
/// `pd.read_csv(path, keep_default_na=False)`; `df[df.label != df.predicted]` are the errors.
///
/// # Errors
/// A prediction or label that is no class of `classes`, or the file cannot be written.
pub fn write_predictions(
    path: &Path,
    test: &dyn datasets::Dataset,
    predictions: &[(usize, usize)],
    classes: &[String],
) -> Result<()> {
    let mut rows: Vec<(usize, usize, usize)> = predictions
        .iter()
        .map(|&(sample, predicted)| (test.source_index(sample), sample, predicted))
        .collect();
    rows.sort_unstable();
    let name = |class: usize, what: &str| {
        classes
            .get(class)
            .with_context(|| format!("{what} {class} is no class of the {}", classes.len()))
    };
    let mut table = csv::Writer::from_writer(Vec::new());
    table.write_record(COLUMNS)?;
    for (index, sample, predicted) in rows {
        let label = test.label(sample);
        table.write_record([
            index.to_string(),
            test.sample_name(sample).unwrap_or_default(),
            label.to_string(),
            name(label, "label")?.clone(),
            predicted.to_string(),
            name(predicted, "predicted class")?.clone(),
        ])?;
    }
    let bytes = table
        .into_inner()
        .context("cannot form the predictions' table")?;
    crate::atomic::write_bytes(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Rows in index order, a `--limit-test` subset's rows under the whole split's indices,
    /// names with a comma and a quote quoted, read back by a CSV reader as written.
    #[test]
    fn rows_name_each_image_and_read_back() -> Result<()> {
        let classes = vec!["cat, big".to_string(), "dog \"rex\"".to_string()];
        let whole: Arc<dyn datasets::Dataset> = Arc::new(datasets::InMemory::new(
            vec![0u8; 4],
            vec![0usize, 1, 1, 0],
            (1, 1, 1),
            classes.clone(),
        )?);
        let test = datasets::Subset::new(whole, vec![1, 3])?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("predictions-best.csv");
        write_predictions(&path, &test, &[(1, 1), (0, 0)], &classes)?;
        let mut read = csv::Reader::from_path(&path)?;
        assert_eq!(read.headers()?.iter().collect::<Vec<_>>(), COLUMNS);
        let rows: Vec<Vec<String>> = read
            .records()
            .map(|r| r.map(|r| r.iter().map(String::from).collect()))
            .collect::<Result<_, _>>()?;
        assert_eq!(
            rows,
            [
                ["1", "", "1", "dog \"rex\"", "0", "cat, big"],
                ["3", "", "0", "cat, big", "1", "dog \"rex\""],
            ]
        );
        let err = write_predictions(&path, &test, &[(0, 2)], &classes).unwrap_err();
        assert!(format!("{err:#}").contains("predicted class 2 is no class of the 2"));
        Ok(())
    }
}
