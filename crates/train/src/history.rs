//! The per-epoch record of a run: `metrics.csv` and `metrics.json`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::rundir::{METRICS_CSV, METRICS_JSON};

/// The header of `metrics.csv`.
pub const CSV_HEADER: &str = "epoch,train_loss,train_acc,test_loss,test_acc,test_top5,lr,seconds";

/// One epoch's numbers. Accuracies are in percent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Mean training loss per sample (train mode, before each step's update).
    pub train_loss: f64,
    /// Training top-1 accuracy.
    pub train_acc: f64,
    /// Mean test loss per sample (eval mode).
    pub test_loss: f64,
    /// Test top-1 accuracy.
    pub test_acc: f64,
    /// Test top-5 accuracy.
    pub test_top5: f64,
    /// Test accuracy of each class (`None` for a class absent from the test set).
    pub test_per_class_acc: Vec<Option<f64>>,
    /// The learning rate of the epoch's last batch.
    pub lr: f64,
    /// Wall-clock seconds for the epoch (training and testing).
    pub seconds: f64,
}

/// Rounds to seven significant digits so that `0.1 * 0.1` prints as `0.01`.
fn tidy(x: f64) -> f64 {
    format!("{x:.6e}").parse().unwrap_or(x)
}

/// The CSV text for `records`, header first.
pub fn to_csv(records: &[EpochRecord]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for r in records {
        let _ = writeln!(
            out,
            "{},{:.6},{:.4},{:.6},{:.4},{:.4},{},{:.2}",
            r.epoch,
            r.train_loss,
            r.train_acc,
            r.test_loss,
            r.test_acc,
            r.test_top5,
            tidy(r.lr),
            r.seconds
        );
    }
    out
}

/// Writes `metrics.csv` and `metrics.json` into `dir`, each atomically.
///
/// # Errors
/// A file cannot be written (named in the error).
pub fn save(dir: &Path, records: &[EpochRecord]) -> Result<()> {
    atomic::write_bytes(&dir.join(METRICS_CSV), to_csv(records).as_bytes())?;
    let json = serde_json::to_vec_pretty(records)?;
    atomic::write_bytes(&dir.join(METRICS_JSON), &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_the_documented_header_and_tidy_numbers() {
        let r = EpochRecord {
            epoch: 1,
            train_loss: 0.5,
            train_acc: 90.0,
            test_loss: 0.25,
            test_acc: 95.5,
            test_top5: 100.0,
            test_per_class_acc: vec![Some(100.0), None],
            lr: 0.1 * 0.1,
            seconds: 12.3456,
        };
        let csv = to_csv(&[r]);
        assert_eq!(
            csv,
            "epoch,train_loss,train_acc,test_loss,test_acc,test_top5,lr,seconds\n\
             1,0.500000,90.0000,0.250000,95.5000,100.0000,0.01,12.35\n"
        );
    }
}
