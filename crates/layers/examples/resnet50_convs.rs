//! Times each convolution shape of torchvision's ResNet-50 at 224x224 (batch 16): the forward
//! alone and the forward with both gradients, the minimum of seven runs, and each shape's
//! total over the network (times the count of that shape), to set beside PyTorch's
//! (`tools/pytorch_resnet50_convs.py`, the same shapes and columns) on the same machine.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p layers --example resnet50_convs [-- FILTER
//! [f32|bf16]]` (the Python script runs PyTorch on 2 threads): `FILTER` keeps the shapes whose
//! line contains it (for example `k3 s2`); the precision is bf16 autocast by default. The
//! backward is timed as `(y * g).sum_all().backward()` less the same on a variable of the
//! output's shape (Candle has no `y.backward(g)`). Freed memory is kept for reuse, as the
//! training programs keep it; PyTorch's CPU allocator keeps glibc's defaults.

use candle_core::{DType, Device, Module, Result, Tensor};
use layers::autocast;

#[path = "common/mod.rs"]
mod common;

/// (count in the network, in, out, input size, kernel, stride, padding).
const SHAPES: [(usize, usize, usize, usize, usize, usize, usize); 23] = [
    (1, 3, 64, 224, 7, 2, 3),
    (1, 64, 64, 56, 1, 1, 0),
    (3, 64, 64, 56, 3, 1, 1),
    (4, 64, 256, 56, 1, 1, 0),
    (2, 256, 64, 56, 1, 1, 0),
    (1, 256, 128, 56, 1, 1, 0),
    (1, 128, 128, 56, 3, 2, 1),
    (4, 128, 512, 28, 1, 1, 0),
    (1, 256, 512, 56, 1, 2, 0),
    (3, 512, 128, 28, 1, 1, 0),
    (3, 128, 128, 28, 3, 1, 1),
    (1, 512, 256, 28, 1, 1, 0),
    (1, 256, 256, 28, 3, 2, 1),
    (6, 256, 1024, 14, 1, 1, 0),
    (1, 512, 1024, 28, 1, 2, 0),
    (5, 1024, 256, 14, 1, 1, 0),
    (5, 256, 256, 14, 3, 1, 1),
    (1, 1024, 512, 14, 1, 1, 0),
    (1, 512, 512, 14, 3, 2, 1),
    (3, 512, 2048, 7, 1, 1, 0),
    (1, 1024, 2048, 14, 1, 2, 0),
    (2, 2048, 512, 7, 1, 1, 0),
    (2, 512, 512, 7, 3, 1, 1),
];

const HELP: &str = "
resnet50_convs [FILTER [f32|bf16]]: each of ResNet-50's convolution shapes at 224x224, batch 16:
the forward and the forward with both gradients (ms, minimum of seven runs), and times its count
in the network. FILTER keeps the shapes whose line contains it (\"k3 s2\", \"14x14\"); bf16
autocast by default. PyTorch's side: tools/pytorch_resnet50_convs.py [FILTER] [f32|bf16]
(2 threads: run this with RAYON_NUM_THREADS=2 to compare).
";

const BATCH: usize = 16;
const RUNS: usize = 7;

fn main() -> Result<()> {
    common::keep_freed_memory();
    let dev = Device::Cpu;
    let filter = std::env::args().nth(1).unwrap_or_default();
    if filter == "--help" || filter == "-h" {
        println!("{}", HELP.trim());
        return Ok(());
    }
    let dtype = match std::env::args().nth(2).as_deref() {
        None | Some("bf16") => Some(DType::BF16),
        Some("f32") => None,
        Some(other) => candle_core::bail!("precision {other:?}: f32 or bf16"),
    };
    let _autocast = autocast::set(dtype);
    let line = |(count, cin, cout, size, k, stride, _): (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
    )| { format!("{count} {cin:>4}->{cout:<4} {size:>3}x{size:<3} k{k} s{stride}") };
    if !SHAPES.iter().any(|&s| line(s).contains(&filter)) {
        let all: Vec<String> = SHAPES.iter().map(|&s| line(s)).collect();
        candle_core::bail!(
            "no shape's line contains {filter:?}; the lines:\n{}",
            all.join("\n")
        )
    }
    let mut total = 0.0;
    for shape in SHAPES {
        let (count, cin, cout, size, k, stride, padding) = shape;
        let line = line(shape);
        if !line.contains(&filter) {
            continue;
        }
        let (x, conv) = common::conv_case((BATCH, cin, cout, size, k, stride, padding), &dev)?;
        let out = (size + 2 * padding - k) / stride + 1;
        let g = Tensor::randn(0f32, 1., (BATCH, cout, out, out), &dev)?;
        let (fwd, both) = common::forward_and_gradients(RUNS, &g, || conv.forward(&x))?;
        total += count as f64 * both;
        println!(
            "{line}  forward {fwd:6.2} ms  with both gradients {both:6.2} ms  x{count} = {:6.1} ms",
            count as f64 * both
        );
    }
    println!("total {total:.1} ms");
    Ok(())
}
