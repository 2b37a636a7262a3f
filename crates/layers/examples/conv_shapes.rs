//! Times one convolution's forward and backward (both gradients) at the shapes of
//! `resnet18-cifar` at batch 128 (and a few of the other models'), built-in against oneDNN
//! (feature `onednn`, every shape sent to it), in f32 and bf16: the measurements behind
//! `layers::onednn`'s routing.
//!
//! `cargo run --release -p layers --features onednn --example conv_shapes [-- FILTER [RUN
//! [forward]]]`: with `FILTER` (for example `4x4` or `k1`), only the shapes whose line contains
//! it; with `RUN` (for example `bf16`, or `all`), only that column (for a profiler); with
//! `forward`, the forward alone (as PyTorch's `conv(x)` under autograd).

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use layers::{autocast, Conv2d};

#[path = "common/mod.rs"]
mod common;

fn median_ms(conv: &Conv2d, x: &Tensor, forward_only: bool) -> candle_core::Result<f64> {
    let mut t = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let y = conv.forward(x)?;
        if forward_only {
            std::hint::black_box(y);
        } else {
            std::hint::black_box(y.sum_all()?.backward()?);
        }
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[2])
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let filter = std::env::args().nth(1).unwrap_or_default();
    let only = std::env::args().nth(2).filter(|o| o != "all");
    let forward_only = std::env::args().nth(3).is_some_and(|a| a == "forward");
    // (batch, in, out, size, kernel, stride, padding)
    let shapes = [
        (128, 3, 64, 32, 3, 1, 1),
        (128, 3, 64, 32, 7, 2, 3),
        (64, 1, 32, 28, 3, 1, 1),
        (128, 64, 64, 32, 3, 1, 1),
        (128, 64, 128, 32, 3, 2, 1),
        (128, 64, 128, 32, 1, 2, 0),
        (128, 128, 256, 16, 3, 2, 1),
        (128, 256, 512, 8, 3, 2, 1),
        (128, 128, 256, 16, 1, 2, 0),
        (128, 256, 512, 8, 1, 2, 0),
        (128, 64, 128, 8, 1, 2, 0),
        (128, 128, 128, 4, 3, 1, 1),
        (128, 128, 128, 16, 3, 1, 1),
        (128, 256, 256, 8, 3, 1, 1),
        (128, 512, 512, 4, 3, 1, 1),
        (128, 128, 128, 8, 3, 1, 1),
        (128, 256, 256, 4, 3, 1, 1),
        (128, 512, 512, 2, 3, 1, 1),
        (64, 1, 6, 28, 5, 1, 2),
        (64, 6, 16, 14, 5, 1, 0),
        (64, 32, 64, 28, 3, 1, 1),
        // resnet18-seed's (widths 64-128-192-256 after a 7x7 stem and max pooling).
        (128, 64, 64, 8, 3, 1, 1),
        (128, 64, 128, 8, 3, 2, 1),
        (128, 128, 192, 4, 3, 2, 1),
        (128, 128, 192, 4, 1, 2, 0),
        (128, 192, 192, 2, 3, 1, 1),
        (128, 192, 256, 2, 3, 2, 1),
        (128, 192, 256, 2, 1, 2, 0),
        (128, 256, 256, 1, 3, 1, 1),
    ];
    for (n, cin, cout, size, k, stride, padding) in shapes {
        let mut line = format!("n{n} {cin:>3}->{cout:<3} {size:>2}x{size:<2} k{k} s{stride}");
        if !line.contains(&filter) {
            continue;
        }
        let (x, conv) = common::conv_case((n, cin, cout, size, k, stride, padding), &dev)?;
        for (name, dtype, onednn, winograd) in [
            ("f32", None, false, false),
            ("f32-dnnl", None, true, false),
            ("f32-dnnl-wino", None, true, true),
            ("bf16", Some(DType::BF16), false, false),
            ("bf16-dnnl", Some(DType::BF16), true, false),
        ] {
            if only.as_ref().is_some_and(|o| o != name) {
                continue;
            }
            let _guard = autocast::set(dtype);
            layers::onednn::set_enabled(onednn);
            layers::onednn::set_everywhere(onednn);
            layers::onednn::set_winograd(winograd);
            // oneDNN's columns run oneDNN everywhere, first layers too.
            layers::set_direct_first_layer(!onednn);
            let ms = median_ms(&conv, &x, forward_only)?;
            line += &format!("  {name} {ms:7.2}");
        }
        println!("{line}");
    }
    Ok(())
}
