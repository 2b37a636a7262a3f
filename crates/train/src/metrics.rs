//! Running classification metrics: mean loss, top-1 and top-5 accuracy, per-class accuracy and
//! the confusion matrix.

use anyhow::{bail, Result};

/// The median of `values` (sorted in place), the mean of the two middle ones for an even
/// count (as `numpy.median`), 0 for none: what the benchmarks report of their timings.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let h = values.len() / 2;
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[h],
        _ => (values[h - 1] + values[h]) / 2.0,
    }
}

/// Accumulates the metrics of one pass over a data set.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    loss_sum: f64,
    samples: usize,
    correct1: usize,
    correct5: usize,
    confusion: Vec<Vec<u64>>,
}

impl Metrics {
    /// Empty metrics for `num_classes` classes.
    pub fn new(num_classes: usize) -> Self {
        Self {
            loss_sum: 0.0,
            samples: 0,
            correct1: 0,
            correct5: 0,
            confusion: vec![vec![0; num_classes]; num_classes],
        }
    }

    /// Adds a batch: its mean loss, each sample's logits (`logits[i]` has one value per class)
    /// and labels. Returns each sample's predicted class (the first maximal logit, as `argmax`).
    ///
    /// # Errors
    /// `logits` and `labels` differ in length, a row has another number of classes, or a label is
    /// not a class.
    pub fn update(
        &mut self,
        mean_loss: f64,
        logits: &[Vec<f32>],
        labels: &[u32],
    ) -> Result<Vec<usize>> {
        let k = self.confusion.len();
        if logits.len() != labels.len() {
            bail!(
                "{} rows of logits for {} labels",
                logits.len(),
                labels.len()
            );
        }
        let mut predictions = Vec::with_capacity(labels.len());
        for (row, &label) in logits.iter().zip(labels) {
            let label = label as usize;
            if row.len() != k || label >= k {
                bail!(
                    "a sample with {} logits and label {label} in a {k}-class task",
                    row.len()
                );
            }
            let predicted = argmax(row);
            let above = ranked_above(row, label);
            self.correct1 += usize::from(predicted == label);
            self.correct5 += usize::from(above < 5);
            self.confusion[label][predicted] += 1;
            predictions.push(predicted);
        }
        self.add_loss(mean_loss, labels.len());
        Ok(predictions)
    }

    /// Adds the loss of a batch of `samples` samples whose mean loss was `mean_loss` (the sum
    /// grows by `mean_loss * samples`, in f64, in the order the batches are added), and counts
    /// its samples. [`Metrics::update`] does this with the batch's logits; a pass counting on
    /// the device (`crate::tally`) adds the counts apart with [`Metrics::add_counts`].
    pub fn add_loss(&mut self, mean_loss: f64, samples: usize) {
        self.loss_sum += mean_loss * samples as f64;
        self.samples += samples;
    }

    /// Adds counted predictions: `confusion`, `k * k` counts by true class (rows) and predicted
    /// class (columns), row by row, and `top5` samples whose label was among the five largest
    /// logits. Top-1 hits are the diagonal.
    ///
    /// # Errors
    /// `confusion` does not hold `k * k` counts.
    pub fn add_counts(&mut self, confusion: &[u32], top5: u64) -> Result<()> {
        let k = self.confusion.len();
        if confusion.len() != k * k {
            bail!(
                "{} confusion counts for the metrics of {k} classes, expected {}",
                confusion.len(),
                k * k
            );
        }
        for (c, (row, counts)) in self
            .confusion
            .iter_mut()
            .zip(confusion.chunks(k.max(1)))
            .enumerate()
        {
            for (cell, &count) in row.iter_mut().zip(counts) {
                *cell += u64::from(count);
            }
            self.correct1 += counts[c] as usize;
        }
        self.correct5 += top5 as usize;
        Ok(())
    }

    /// Samples seen.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The mean loss per sample.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.samples.max(1) as f64
    }

    /// Top-1 accuracy in percent.
    pub fn accuracy(&self) -> f64 {
        percent(self.correct1, self.samples)
    }

    /// Top-5 accuracy in percent (100 when there are at most five classes): the label among
    /// the five first classes of its row sorted by logit, largest first, ties in class order
    /// (`torch.topk(5)`'s five; PyTorch orders ties in no documented way, so a row of equal
    /// logits has five hits out of its classes here as there, not one for every label). NaN
    /// is above no logit.
    pub fn top5(&self) -> f64 {
        percent(self.correct5, self.samples)
    }

    /// Accuracy in percent for each true class; `None` for a class with no samples.
    pub fn per_class_accuracy(&self) -> Vec<Option<f64>> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let total: u64 = row.iter().sum();
                (total > 0).then(|| 100.0 * row[c] as f64 / total as f64)
            })
            .collect()
    }

    /// Counts by true class (rows) and predicted class (columns).
    pub fn confusion(&self) -> &[Vec<u64>] {
        &self.confusion
    }

    /// The sums behind the metrics, flat: loss sum, samples, top-1 and top-5 hits, then the
    /// confusion matrix row by row (`3 + k + 1 ... ` = `4 + k * k` values for `k` classes):
    /// what data-parallel ranks add up. Counts are exact in f64 below 2^53.
    pub fn sums(&self) -> Vec<f64> {
        let mut sums = vec![
            self.loss_sum,
            self.samples as f64,
            self.correct1 as f64,
            self.correct5 as f64,
        ];
        sums.extend(self.confusion.iter().flatten().map(|&c| c as f64));
        sums
    }

    /// The metrics whose [`Metrics::sums`] are `sums` (of `num_classes` classes), such as the
    /// element-wise sum of several passes' sums.
    ///
    /// Errors: `sums` does not hold `4 + num_classes^2` values.
    pub fn from_sums(num_classes: usize, sums: &[f64]) -> Result<Self> {
        let k = num_classes;
        if sums.len() != 4 + k * k {
            bail!(
                "{} sums for the metrics of {k} classes, expected {}",
                sums.len(),
                4 + k * k
            );
        }
        Ok(Self {
            loss_sum: sums[0],
            samples: sums[1] as usize,
            correct1: sums[2] as usize,
            correct5: sums[3] as usize,
            confusion: sums[4..]
                .chunks(k.max(1))
                .map(|row| row.iter().map(|&c| c as u64).collect())
                .collect(),
        })
    }
}

fn percent(hits: usize, total: usize) -> f64 {
    100.0 * hits as f64 / total.max(1) as f64
}

/// The logits of `row` ranked before class `label`'s: those larger, and those equal of a class
/// before it (ties in class order, as the first maximal logit is the prediction).
pub(crate) fn ranked_above(row: &[f32], label: usize) -> usize {
    let mark = row[label];
    row.iter()
        .enumerate()
        .filter(|&(j, &v)| v > mark || (j < label && v == mark))
        .count()
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best
}

/// The top-5 accuracy `top5` (percent) as printed between `before` and `after`, or nothing
/// for `classes` of at most five: every prediction is then in the top five, so the figure says
/// nothing (PyTorch's `topk(5)` refuses fewer than five classes). The saved metrics keep it.
///
/// ```
/// assert_eq!(train::metrics::top5_text(99.5, 10, ", top-5 ", "%"), ", top-5 99.50%");
/// assert_eq!(train::metrics::top5_text(100.0, 3, ", top-5 ", "%"), "");
/// ```
pub fn top5_text(top5: f64, classes: usize, before: &str, after: &str) -> String {
    if classes > 5 {
        format!("{before}{top5:.2}{after}")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_is_the_middle_or_the_mean_of_the_two() {
        assert_eq!(super::median(&mut [54.9, 55.4, 54.3, 54.6]), 54.75);
        assert_eq!(super::median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&mut [7.5]), 7.5);
        assert_eq!(super::median(&mut []), 0.0);
    }

    use super::*;

    #[test]
    fn counts_top1_top5_and_confusion() -> Result<()> {
        let mut m = Metrics::new(6);
        let logits = vec![
            vec![9.0, 1.0, 2.0, 3.0, 4.0, 5.0], // label 0: top-1 hit
            vec![9.0, 1.0, 2.0, 3.0, 4.0, 5.0], // label 2: 4th place, top-5 hit
            vec![9.0, 0.0, 2.0, 3.0, 4.0, 5.0], // label 1: last, miss
            vec![1.0, 7.0, 7.0, 0.0, 0.0, 0.0], // label 2: tie, argmax takes the first
        ];
        let predictions = m.update(0.5, &logits, &[0, 2, 1, 2])?;
        assert_eq!(predictions, [0, 0, 0, 1]);
        m.update(1.5, &logits[..1], &[0])?;
        assert_eq!(m.samples(), 5);
        assert!((m.loss() - (0.5 * 4.0 + 1.5) / 5.0).abs() < 1e-12);
        assert!((m.accuracy() - 40.0).abs() < 1e-12);
        assert!((m.top5() - 80.0).abs() < 1e-12);
        assert_eq!(m.confusion()[2], vec![1, 1, 0, 0, 0, 0]);
        let per_class = m.per_class_accuracy();
        assert_eq!(per_class[0], Some(100.0));
        assert_eq!(per_class[2], Some(0.0));
        assert_eq!(per_class[3], None);
        assert!(m.update(0.0, &logits[..1], &[7]).is_err());
        assert_eq!(Metrics::from_sums(6, &m.sums())?, m);

        // A row of equal logits (a network whose outputs collapsed) ranks its classes in
        // order: top-5 hits for labels 0-4 only, as torch.topk(5) gives five classes, and the
        // top-1 hit (class 0, the first maximal logit) is among them.
        let mut flat = Metrics::new(10);
        let rows = vec![vec![0.25f32; 10]; 10];
        let labels: Vec<u32> = (0..10).collect();
        assert_eq!(flat.update(0.0, &rows, &labels)?, [0; 10]);
        assert!((flat.top5() - 50.0).abs() < 1e-12, "{}", flat.top5());
        assert!((flat.accuracy() - 10.0).abs() < 1e-12);
        for label in 0..10 {
            assert_eq!(ranked_above(&rows[0], label), label);
        }
        // Equal to the fifth largest: in only where its class comes first.
        let row = [5.0, 4.0, 3.0, 2.0, 1.0, 1.0, 0.0];
        assert_eq!((ranked_above(&row, 4), ranked_above(&row, 5)), (4, 5));
        assert!(Metrics::from_sums(5, &m.sums()).is_err());
        Ok(())
    }
}
