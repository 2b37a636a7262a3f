//! A run whose loss turns non-finite stops with a clear message and keeps the last good
//! checkpoint and resume state.

use anyhow::Result;
use train::cli::load_data;
use train::config::{DatasetKind, OptimizerKind, RunConfig, ScheduleKind};

fn config(data: &std::path::Path) -> RunConfig {
    RunConfig {
        program: "test".into(),
        dataset: DatasetKind::Mnist,
        data_dir: Some(data.to_path_buf()),
        model: "cnn-mnist".into(),
        epochs: 1,
        batch_size: 16,
        test_batch_size: 20,
        optimizer: OptimizerKind::Sgd,
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 0.0,
        nesterov: false,
        schedule: ScheduleKind::Constant,
        milestones: vec![],
        step_size: 1,
        gamma: 0.1,
        warmup_epochs: 0,
        label_smoothing: 0.0,
        train_transform: "mnist-train".into(),
        test_transform: "mnist-test".into(),
        seed: 3,
        device: "cpu".into(),
        limit_train: None,
        limit_test: None,
        workers: 1,
        precision: Default::default(),
        data_placement: Default::default(),
    }
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_epoch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("mnist");
    train::synthetic::write_mnist(&data, 64, 20)?;
    let out = dir.path().join("run");
    let good = config(&data);
    let outcome = train::run::run(&good, load_data(&good)?, &out, None)?;
    assert_eq!(outcome.history.len(), 1);
    let last = std::fs::read(out.join("last.safetensors"))?;

    let (mut saved, tensors) = train::state::load(&out)?;
    let mut exploding = good.clone();
    exploding.epochs = 2;
    exploding.lr = 1e38;
    saved.lr = exploding.lr;
    let err = train::run::run(
        &exploding,
        load_data(&exploding)?,
        &out,
        Some((saved, tensors)),
    )
    .err()
    .map(|e| format!("{e:#}"))
    .unwrap_or_default();
    assert!(
        err.contains("training loss became") && err.contains("epoch 2"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("last.safetensors"))?, last);
    assert_eq!(train::state::load(&out)?.0.epochs_done, 1);
    let csv = std::fs::read_to_string(out.join("metrics.csv"))?;
    assert_eq!(csv.lines().count(), 2);
    Ok(())
}
