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
use train::config::{DatasetKind, OptimizerKind, RunConfig, ScheduleKind};

/// The resume states of two one-epoch runs (SGD with momentum, Adam) on synthetic MNIST.
fn seeds(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let data = dir.join("mnist");
    train::synthetic::write_mnist(&data, 16, 10).unwrap();
    [OptimizerKind::Sgd, OptimizerKind::Adam]
        .into_iter()
        .enumerate()
        .map(|(i, optimizer)| {
            let config = RunConfig {
                program: "fuzz".into(),
                dataset: DatasetKind::Mnist,
                data_dir: Some(data.clone()),
                model: "lenet5".into(),
                epochs: 1,
                batch_size: 8,
                test_batch_size: 10,
                optimizer,
                lr: 0.01,
                momentum: 0.9,
                betas: None,
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
                seed: 1,
                device: "cpu".into(),
                limit_train: None,
                limit_test: None,
                workers: 1,
                precision: Default::default(),
                data_placement: Default::default(),
            };
            let out = dir.join(format!("run{i}"));
            train::run::run(&config, load_data(&config).unwrap(), &out, None).unwrap();
            std::fs::read(out.join(train::state::STATE)).unwrap()
        })
        .collect()
}

#[test]
fn resume_state_load() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = seeds(dir.path());
    let run = dir.path().join("fuzzed");
    std::fs::create_dir_all(&run).unwrap();
    let path = run.join(train::state::STATE);
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
                    assert!(text.contains("state.safetensors"), "{text}");
                    false
                }
            }
        },
    );
}
