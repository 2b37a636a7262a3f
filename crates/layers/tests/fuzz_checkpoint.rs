//! Fuzz target of the safetensors checkpoint reader [`layers::checkpoint::read`]: mutations of
//! small valid checkpoints (see the shared `mutate` module in `crates/datasets/tests`) must give
//! tensors or an error, never a panic, an abort or a hang. Under `cargo test` it runs 2 seconds;
//! a 10-minute run:
//!
//! ```text
//! FUZZ_SECONDS=600 cargo test -p layers --test fuzz_checkpoint -- --nocapture
//! ```

#[path = "../../datasets/tests/mutate/mod.rs"]
mod mutate;

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::time::Duration;

/// Checkpoints of a few dtypes and ranks, as `save_tensors` writes them.
fn seeds(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let cpu = Device::Cpu;
    let sets: Vec<Vec<(&str, Tensor)>> = vec![
        vec![
            (
                "fc.weight",
                Tensor::arange(0f32, 6., &cpu)
                    .unwrap()
                    .reshape((2, 3))
                    .unwrap(),
            ),
            ("fc.bias", Tensor::new(&[0.5f32, -1.], &cpu).unwrap()),
        ],
        vec![
            ("bn.num_batches_tracked", Tensor::new(3i64, &cpu).unwrap()),
            (
                "bn.running_mean",
                Tensor::zeros(4, DType::F32, &cpu).unwrap(),
            ),
            ("half", Tensor::ones((2, 2), DType::F16, &cpu).unwrap()),
            ("bytes", Tensor::new(&[1u8, 2, 3], &cpu).unwrap()),
        ],
    ];
    sets.into_iter()
        .enumerate()
        .map(|(i, set)| {
            let path = dir.join(format!("seed{i}.safetensors"));
            let tensors: HashMap<String, Tensor> =
                set.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            layers::checkpoint::save_tensors(&tensors, &path).unwrap();
            std::fs::read(&path).unwrap()
        })
        .collect()
}

#[test]
fn checkpoint_read() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = seeds(dir.path());
    let path = dir.path().join("fuzz.safetensors");
    mutate::fuzz(
        "checkpoint",
        &seeds,
        Duration::from_secs(20),
        |bytes, _, _| {
            std::fs::write(&path, bytes).unwrap();
            layers::checkpoint::read(&path)
                .map(|tensors| {
                    for t in tensors.values() {
                        let _ = t.to_dtype(DType::F32).and_then(|t| t.sum_all());
                    }
                })
                .is_ok()
        },
    );
}
