//! A run whose loss turns non-finite stops with a clear message and keeps the last good
//! checkpoint and resume state.

use anyhow::Result;
use train::cli::load_data;
use train::config::{DatasetKind, OptimizerKind, RunConfig};

fn config(data: &std::path::Path) -> RunConfig {
    RunConfig {
        data_dir: Some(data.to_path_buf()),
        batch_size: 16,
        test_batch_size: 20,
        seed: 3,
        ..RunConfig::new("test", DatasetKind::Mnist, "cnn-mnist")
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
    let last = std::fs::read(out.join(train::rundir::LAST))?;

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
    assert_eq!(std::fs::read(out.join(train::rundir::LAST))?, last);
    assert_eq!(train::state::load(&out)?.0.epochs_done, 1);
    let csv = std::fs::read_to_string(out.join(train::rundir::METRICS_CSV))?;
    assert_eq!(csv.lines().count(), 2);
    Ok(())
}

/// Every safetensors file in `out` reads back (reading refuses NaN and infinity) and
/// `metrics.csv`, if written, holds only finite numbers.
fn everything_saved_is_finite(out: &std::path::Path) -> Result<()> {
    for entry in std::fs::read_dir(out)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            layers::checkpoint::read(&path)?;
        }
    }
    if let Ok(csv) = std::fs::read_to_string(out.join(train::rundir::METRICS_CSV)) {
        let lower = csv.to_lowercase();
        assert!(!lower.contains("nan") && !lower.contains("inf"), "{csv}");
    }
    Ok(())
}

/// Runs `cases` (model, optimizer, lr, momentum, images, batch size, epochs, must stop) on the
/// MNIST files in `data`: each run that stops names what became non-finite and when; every run,
/// stopped or not, leaves only finite files, and no NaN epoch is ranked or resumable.
type Case = (
    &'static str,
    OptimizerKind,
    f64,
    f64,
    usize,
    usize,
    usize,
    bool,
);

fn explode(data: &std::path::Path, seed: u64, cases: &[Case]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (i, &(model, optimizer, lr, momentum, limit, batch, epochs, must_stop)) in
        cases.iter().enumerate()
    {
        let mut c = config(data);
        c.model = model.into();
        c.optimizer = optimizer;
        c.lr = lr;
        c.momentum = momentum;
        c.limit_train = Some(limit);
        c.batch_size = batch;
        c.epochs = epochs;
        c.seed = seed;
        c.test_batch_size = 1000;
        let out = dir.path().join(format!("run{i}"));
        match train::run::run(&c, load_data(&c)?, &out, None) {
            Ok(_) => assert!(!must_stop, "case {i} ({model}, lr {lr}) finished"),
            Err(e) => {
                let err = format!("{e:#}");
                assert!(
                    err.contains("epoch ") && (err.contains("holds") || err.contains(" is ")),
                    "case {i}: {err}"
                );
            }
        }
        everything_saved_is_finite(&out)?;
        if out.join(train::rundir::STATE).exists() {
            let (saved, _) = train::state::load(&out)?;
            assert!(saved.history.iter().all(|r| r.test_loss.is_finite()));
        }
    }
    Ok(())
}

/// Exploding learning rates on synthetic MNIST: SGD on the first step and with one batch per
/// epoch, Adam (whose squared-gradient buffer overflows), and SGD with momentum (a NaN test
/// loss while the training loss is still finite).
#[test]
fn exploding_runs_stop_and_save_nothing_non_finite() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("mnist");
    train::synthetic::write_mnist(&data, 256, 20)?;
    explode(
        &data,
        3,
        &[
            ("cnn-mnist", OptimizerKind::Sgd, 1e38, 0.0, 32, 32, 1, false),
            ("cnn-mnist", OptimizerKind::Sgd, 1e6, 0.0, 16, 16, 2, false),
            ("cnn-mnist", OptimizerKind::Adam, 1e6, 0.9, 16, 16, 3, true),
            (
                "cnn-mnist",
                OptimizerKind::Sgd,
                30.0,
                0.9,
                256,
                256,
                6,
                true,
            ),
        ],
    )
}

/// The issue's own commands on the real MNIST subset, each of which used to save NaN or
/// infinite weights (or rank a NaN epoch best): now each stops with an error.
#[test]
fn the_reported_runs_stop_on_real_mnist() -> Result<()> {
    let Ok(shared) = std::env::var("CNN_SHARED_DIR") else {
        eprintln!("skipped: CNN_SHARED_DIR not set");
        return Ok(());
    };
    let data = std::path::Path::new(&shared).join("data").join("mnist");
    explode(
        &data,
        1,
        &[
            ("lenet5", OptimizerKind::Sgd, 1e38, 0.0, 32, 32, 1, true),
            ("cnn-mnist", OptimizerKind::Sgd, 1e6, 0.0, 32, 32, 3, true),
            ("cnn-mnist", OptimizerKind::Adam, 1e6, 0.9, 32, 32, 2, true),
            (
                "cnn-mnist",
                OptimizerKind::Adam,
                30.0,
                0.9,
                256,
                256,
                6,
                false,
            ),
        ],
    )
}

/// A resume state holding NaN, written by something else than this crate, is refused with the
/// file and the tensor named.
#[test]
fn a_resume_state_holding_nan_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("mnist");
    train::synthetic::write_mnist(&data, 32, 20)?;
    let out = dir.path().join("run");
    let good = config(&data);
    train::run::run(&good, load_data(&good)?, &out, None)?;
    let path = out.join(train::rundir::STATE);
    let (mut tensors, mut metadata) = layers::checkpoint::read_with_metadata(&path)?;
    // Another writer keeps the resume state, not this crate's checksum (which would say the
    // file is damaged, before its values are read).
    metadata.remove(layers::checkpoint::CHECKSUM_KEY);
    let name = "model.fc2.bias".to_string();
    let bias = tensors[&name].clone();
    let poisoned = bias.ones_like()?.affine(0.0, f64::NAN)?;
    tensors.insert(name, poisoned);
    // Written past layers::checkpoint, which would refuse what the test plants.
    safetensors::serialize_to_file(&tensors, Some(metadata), &path)?;
    let err = format!("{:#}", train::state::load(&out).err().expect("refused"));
    assert!(
        err.contains("model.fc2.bias") && err.contains(train::rundir::STATE),
        "{err}"
    );
    Ok(())
}
