//! Fuzz target of the resume-state reader [`train::state::load`]: mutations of real resume
//! states (tensors and the JSON in the safetensors header, see the shared `mutate` module in
//! `crates/datasets/tests`) must give a state or an error naming the file, never a panic, an
//! abort or a hang. Under `cargo test` it runs 2 seconds; a 10-minute run:
//!
//! ```text
//! FUZZ_SECONDS=600 cargo test -p train --test fuzz_state -- --nocapture
//! ```

#[path = "../../datasets/tests/mutate/mod.rs"]
mod mutate;

use std::time::Duration;

use train::cli::load_data;
use train::config::{DatasetKind, OptimizerKind, RunConfig};

/// The resume states of two one-epoch runs (SGD with momentum, Adam) on synthetic MNIST.
fn seeds(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let data = dir.join("mnist");
    train::synthetic::write_mnist(&data, 16, 10).unwrap();
    [OptimizerKind::Sgd, OptimizerKind::Adam]
        .into_iter()
        .enumerate()
        .map(|(i, optimizer)| {
            let config = RunConfig {
                data_dir: Some(data.clone()),
                batch_size: 8,
                test_batch_size: 10,
                optimizer,
                ..RunConfig::new("fuzz", DatasetKind::Mnist, "lenet5")
            };
            let out = dir.join(format!("run{i}"));
            train::run::run(&config, load_data(&config).unwrap(), &out, None).unwrap();
            std::fs::read(out.join(train::rundir::STATE)).unwrap()
        })
        .collect()
}

#[test]
fn resume_state_load() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = seeds(dir.path());
    let run = dir.path().join("fuzzed");
    std::fs::create_dir_all(&run).unwrap();
    let path = run.join(train::rundir::STATE);
    mutate::fuzz(
        "resume_state",
        &seeds,
        Duration::from_secs(20),
        |bytes, _, _| {
            std::fs::write(&path, bytes).unwrap();
            match train::state::load(&run) {
                Ok(_) => true,
                Err(e) => {
                    let text = format!("{e:#}");
                    assert!(text.contains(train::rundir::STATE), "{text}");
                    false
                }
            }
        },
    );
}

/// A state edited so that it no longer holds together (a history without the epochs done, a
/// best epoch past them, an all-zero dropout generator) is refused, naming the file and what
/// is wrong: a resume from it would rewrite the metrics without the epochs trained.
#[test]
fn edited_states_that_do_not_hold_together_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    seeds(dir.path());
    let run = dir.path().join("run0");
    let path = run.join(train::rundir::STATE);
    let (tensors, metadata) = layers::checkpoint::read_with_metadata(&path).unwrap();
    let original: serde_json::Value = serde_json::from_str(&metadata["resume_state"]).unwrap();
    assert!(train::state::load(&run).is_ok());
    for (field, value, says) in [
        (
            "history",
            serde_json::json!([]),
            "1 epoch done, but the history holds epochs []",
        ),
        (
            "best_epoch",
            serde_json::json!(7),
            "its best epoch 7 is past the epochs done (1)",
        ),
        (
            "rng_state",
            serde_json::json!([0, 0, 0, 0]),
            "dropout generator state is all zero",
        ),
    ] {
        let mut edited = original.clone();
        edited[field] = value;
        let metadata =
            std::collections::HashMap::from([("resume_state".to_string(), edited.to_string())]);
        layers::checkpoint::save_with_metadata(&tensors, Some(metadata), &path).unwrap();
        let err = format!("{:#}", train::state::load(&run).err().unwrap());
        assert!(
            err.contains("the resume state does not hold together") && err.contains(says),
            "{field}: {err}"
        );
    }
}
