//! Inputs shared by the benchmark programs (`bench-pipeline`, `bench-step --pipeline`), which
//! include this file as a module of their own (`#[path]`): it is no part of `datasets`' API.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;

use datasets::{cifar10_test_bin, Dataset, InMemory, Rng, CIFAR10_CLASSES};

/// 10,000 CIFAR-10 images in memory: the real `test_batch.bin` under `shared`
/// (`$CNN_SHARED_DIR`) when given, else seeded random pixels; with a description for the log.
///
/// # Errors
/// As [`datasets::cifar10_test_bin`] for the real file.
pub fn cifar10_images(shared: Option<&Path>) -> Result<(Arc<dyn Dataset>, String)> {
    if let Some(shared) = shared {
        let path = shared.join("data/cifar10/cifar-10-batches-bin/test_batch.bin");
        return Ok((
            Arc::new(cifar10_test_bin(&path)?),
            "real test_batch.bin".into(),
        ));
    }
    let n = 10_000;
    let mut rng = Rng::new(0);
    let images: Vec<u8> = (0..n * 3072).map(|_| rng.next_u64() as u8).collect();
    let labels: Vec<usize> = (0..n).map(|i| i % 10).collect();
    let classes = CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect();
    let data = InMemory::new(images, labels, (3, 32, 32), classes)?;
    Ok((Arc::new(data), "10,000 synthetic images".into()))
}
