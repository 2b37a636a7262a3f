//! Times training-mode batch norm + ReLU (forward, and forward with the input's, weight's and
//! bias's gradients) on ResNet-50's activation shapes at 224x224, batch 16, minimum of seven
//! runs, to set beside PyTorch's (`tools/pytorch_bn_shapes.py`) on the same machine.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p layers --example bn_shapes [-- FILTER]`

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};

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

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    // SAFETY: mallopt only changes malloc's thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
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
        let plain = Var::from_tensor(&g.ones_like()?)?;
        let (mut fwd, mut all, mut overhead) = (f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..RUNS {
            let start = Instant::now();
            let y = bn.forward_relu(x.as_tensor(), true)?;
            fwd = fwd.min(ms(start));
            std::hint::black_box((y * &g)?.sum_all()?.backward()?);
            all = all.min(ms(start));
            let start = Instant::now();
            std::hint::black_box((plain.as_tensor() * &g)?.sum_all()?.backward()?);
            overhead = overhead.min(ms(start));
        }
        let both = all - overhead;
        total += count as f64 * both;
        println!(
            "{line}  forward {fwd:6.2} ms  with gradients {both:6.2} ms  x{count} = {:6.1} ms",
            count as f64 * both
        );
    }
    println!("total {total:.1} ms");
    Ok(())
}
