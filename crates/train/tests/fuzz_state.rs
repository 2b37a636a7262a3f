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
