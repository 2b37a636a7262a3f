//! Tiny learnable data sets written in the standard on-disk formats (MNIST IDX files, CIFAR-10
//! binary batches), for smoke tests of the programs without the real data. Behind the
//! `test-support` feature: tests enable it through their dev-dependency on `train`.
//!
//! Each image of class `c` is dark noise with a bright square at a place that depends on `c`,
//! so a network learns it within an epoch or two.

use std::path::Path;

use anyhow::{Context, Result};

/// Writes the four raw MNIST IDX files (`train-images-idx3-ubyte`, ...) into `dir`:
/// `train` training and `test` test images of 1x28x28, labels cycling through the ten classes.
///
/// # Errors
/// `dir` cannot be created or a file cannot be written.
pub fn write_mnist(dir: &Path, train: usize, test: usize) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (prefix, n, seed) in [("train", train, 1), ("t10k", test, 2)] {
        let mut images = idx_header(0x0803, &[n as u32, 28, 28]);
        let mut labels = idx_header(0x0801, &[n as u32]);
        for i in 0..n {
            let label = i % 10;
            images.extend(image(1, 28, label, seed * 1_000_003 + i as u64));
            labels.push(label as u8);
        }
        write(&dir.join(format!("{prefix}-images-idx3-ubyte")), &images)?;
        write(&dir.join(format!("{prefix}-labels-idx1-ubyte")), &labels)?;
    }
    Ok(())
}

/// Writes CIFAR-10 binary batches into `dir`: `data_batch_1.bin` .. `data_batch_5.bin` with
/// `per_batch` records each and `test_batch.bin` with `test` records, 3x32x32.
///
/// # Errors
/// `dir` cannot be created or a file cannot be written.
pub fn write_cifar10(dir: &Path, per_batch: usize, test: usize) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = (1..=5)
        .map(|b| (format!("data_batch_{b}.bin"), per_batch, b as u64))
        .chain([("test_batch.bin".to_string(), test, 9)]);
    for (name, n, seed) in files {
        let mut bytes = Vec::with_capacity(n * 3073);
        for i in 0..n {
            let label = i % 10;
            bytes.push(label as u8);
            bytes.extend(image(3, 32, label, seed * 1_000_003 + i as u64));
        }
        write(&dir.join(name), &bytes)?;
    }
    Ok(())
}

fn idx_header(magic: u32, dims: &[u32]) -> Vec<u8> {
    std::iter::once(magic)
        .chain(dims.iter().copied())
        .flat_map(u32::to_be_bytes)
        .collect()
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// A `channels x size x size` CHW image of class `label`.
fn image(channels: usize, size: usize, label: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let side = size / 4;
    let (top, left) = ((label / 5) * size / 2 + 2, (label % 5) * (size - side) / 4);
    let mut out = Vec::with_capacity(channels * size * size);
    for c in 0..channels {
        for y in 0..size {
            for x in 0..size {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let inside = (top..top + side).contains(&y) && (left..left + side).contains(&x);
                let base = if inside {
                    200 + 15 * (c as u64 % 3)
                } else {
                    10
                };
                out.push((base + state % 40).min(255) as u8);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_have_the_standard_sizes() -> Result<()> {
        let dir = tempfile::tempdir()?;
        write_mnist(dir.path(), 12, 5)?;
        let images = std::fs::read(dir.path().join("train-images-idx3-ubyte"))?;
        assert_eq!(images.len(), 16 + 12 * 784);
        assert_eq!(&images[..4], &[0, 0, 8, 3]);
        let labels = std::fs::read(dir.path().join("t10k-labels-idx1-ubyte"))?;
        assert_eq!(labels.len(), 8 + 5);
        write_cifar10(dir.path(), 3, 4)?;
        let test = std::fs::read(dir.path().join("test_batch.bin"))?;
        assert_eq!(test.len(), 4 * 3073);
        assert_eq!(test[3073], 1);
        Ok(())
    }
}
