//! What the timing examples share: one convolution case to time, the training programs' way
//! of keeping freed memory, and the timing of a forward with its gradients.

// Not every example uses every item.
#![allow(dead_code)]

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};
use candle_nn::Conv2dConfig;
use layers::Conv2d;

/// Random images `(n, cin, size, size)` (a variable, so that the input gradient is timed too,
/// except for a network's first layer of one to three channels, which needs none) and a
/// convolution `cin -> cout` with a `k` x `k` kernel, `stride` and `padding`, without bias.
pub fn conv_case(
    (n, cin, cout, size, k, stride, padding): (usize, usize, usize, usize, usize, usize, usize),
    dev: &Device,
) -> Result<(Tensor, Conv2d)> {
    let x = Tensor::randn(0f32, 1., (n, cin, size, size), dev)?;
    let x = match cin > 3 {
        true => Var::from_tensor(&x)?.as_tensor().clone(),
        false => x,
    };
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (cout, cin, k, k), dev)?)?;
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    Ok((x, Conv2d::new(w.as_tensor().clone(), None, cfg)))
}

/// Keeps freed memory in the process, as the training programs do
/// (`train::memory::keep_freed_memory`): without it every output of tens of MB is fresh zeroed
/// pages from the kernel.
pub fn keep_freed_memory() {
    // SAFETY: mallopt only changes malloc's thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

/// Milliseconds since `start`.
pub fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// The minimum over `runs` runs of `forward()`'s time and of the time of the gradients it
/// records, in ms: the backward is timed as `(y * g).sum_all().backward()` less the same on a
/// variable of `g`'s shape (Candle has no `y.backward(g)`).
pub fn forward_and_gradients(
    runs: usize,
    g: &Tensor,
    forward: impl Fn() -> Result<Tensor>,
) -> Result<(f64, f64)> {
    let plain = Var::from_tensor(&g.ones_like()?)?;
    let (mut fwd, mut all, mut overhead) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..runs {
        let start = Instant::now();
        let y = forward()?;
        fwd = fwd.min(ms(start));
        std::hint::black_box((y * g)?.sum_all()?.backward()?);
        all = all.min(ms(start));
        let start = Instant::now();
        std::hint::black_box((plain.as_tensor() * g)?.sum_all()?.backward()?);
        overhead = overhead.min(ms(start));
    }
    Ok((fwd, all - overhead))
}
