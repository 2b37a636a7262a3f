//! Times training-mode batch norm + ReLU (forward, and forward with the input's, weight's and
//! bias's gradients) on ResNet-50's activation shapes at 224x224, batch 16, minimum of seven
//! runs, to set beside PyTorch's (`tools/pytorch_bn_shapes.py`) on the same machine.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p layers --example bn_shapes [-- FILTER]`

use candle_core::{DType, Device, Result, Tensor, Var};

#[path = "common/mod.rs"]
mod common;

/// (channels, map side, count in the network): torchvision's ResNet-50 at 224x224 (its
/// residual joins' batch norms counted with the others).
const SHAPES: [(usize, usize, usize); 12] = [
    (64, 112, 1),
    (64, 56, 6),
    (256, 56, 4),
    (128, 56, 1),
    (128, 28, 7),
    (512, 28, 5),
    (256, 28, 1),
    (256, 14, 11),
    (1024, 14, 7),
    (512, 14, 1),
    (512, 7, 5),
    (2048, 7, 4),
];

const BATCH: usize = 16;
const RUNS: usize = 7;

fn main() -> Result<()> {
    common::keep_freed_memory();
    let dev = Device::Cpu;
    let filter = std::env::args().nth(1).unwrap_or_default();
    let mut total = 0.0;
    for (c, size, count) in SHAPES {
        let line = format!("{c:>4} {size:>3}x{size:<3}");
        if !line.contains(&filter) {
            continue;
        }
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (BATCH, c, size, size), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.1, c, &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.1, c, &dev)?)?;
        let bn = layers::BatchNorm::new(
            Tensor::zeros(c, DType::F32, &dev)?,
            Tensor::ones(c, DType::F32, &dev)?,
            w.as_tensor().clone(),
            b.as_tensor().clone(),
            1e-5,
            0.1,
        )?;
        let g = Tensor::randn(0f32, 1., (BATCH, c, size, size), &dev)?;
        let forward = || bn.forward_relu(x.as_tensor(), true);
        let (fwd, both) = common::forward_and_gradients(RUNS, &g, forward)?;
        total += count as f64 * both;
        println!(
            "{line}  forward {fwd:6.2} ms  with gradients {both:6.2} ms  x{count} = {:6.1} ms",
            count as f64 * both
        );
    }
    println!("total {total:.1} ms");
    Ok(())
}
