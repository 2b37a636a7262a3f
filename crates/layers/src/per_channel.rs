//! Per-channel passes over contiguous f32 (N, C, L) activations on the CPU: batch-norm
//! statistics, its training-mode output and backward, and a per-channel bias with its
//! gradient.
//!
//! Built from Candle's tensor operations, a training-mode batch norm costs about fifteen passes
//! over the activation (two-axis sums, broadcasts, the ReLU mask, each into a fresh buffer) and
//! a bias add's gradient is Candle's generic strided sum. Here each is one or two passes,
//! parallel over channels (sums) or images (element-wise), in a fixed order: the result is the
//! same bit for bit whatever the number of threads. Sums run in 16 f32 lanes per row and are
//! added up in f64.

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use std::ops::Range;

use rayon::prelude::*;

use crate::fill::par_filled;
use crate::profile::{time, Part, Timer};

/// The contiguous f32 values of a CPU tensor, or `None`.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Some(f(&v[a..b])),
        _ => None,
    }
}

/// The contiguous f32 values of a CPU custom op's argument; else an error naming the op and
/// the argument (`what`).
pub(crate) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{op}: the {what} must be a contiguous f32 tensor"),
    }
}

/// `Σ_i f(a[i], b[i], c[i])` for `N` functions at once (the slices of equal length), each in
/// 16 f32 lanes, the lanes added in f64. Pass the same slice twice where `f` needs fewer.
#[inline]
fn lane_sums<const N: usize>(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> [f32; N],
) -> [f64; N] {
    crate::wide::run(
        #[inline(always)]
        || lane_sums_any(a, b, c, f),
    )
}

/// [`lane_sums`] as compiled for any CPU (inlined into its AVX-512 copy).
#[inline(always)]
fn lane_sums_any<const N: usize>(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> [f32; N],
) -> [f64; N] {
    // Rows shorter than a vector (the 1x1 and 2x2 maps of a ResNet's last stages): the
    // remainder loop alone, with the same sums as below (the lanes would all add zero).
    if a.len() < 16 {
        let mut total = [0f64; N];
        for ((x, y), z) in a.iter().zip(b).zip(c) {
            for (t, v) in total.iter_mut().zip(f(*x, *y, *z)) {
                *t += f64::from(v);
            }
        }
        return total;
    }
    let mut acc = [[0f32; 16]; N];
    let (a16, b16, c16) = (a.chunks_exact(16), b.chunks_exact(16), c.chunks_exact(16));
    let (ra, rb, rc) = (a16.remainder(), b16.remainder(), c16.remainder());
    for ((x, y), z) in a16.zip(b16).zip(c16) {
        for j in 0..16 {
            let v = f(x[j], y[j], z[j]);
            for (acc, v) in acc.iter_mut().zip(v) {
                acc[j] += v;
            }
        }
    }
    let mut total = acc.map(|lanes| lanes.iter().map(|&v| f64::from(v)).sum::<f64>());
    for ((x, y), z) in ra.iter().zip(rb).zip(rc) {
        for (t, v) in total.iter_mut().zip(f(*x, *y, *z)) {
            *t += f64::from(v);
        }
    }
    total
}

/// For every channel `ch` of an (N, C, L) tensor, `Σ_n f(ch, r)` where `r` is the range of
/// (n, ch, ·), added in the order of the images.
fn per_channel_sums<const K: usize>(
    (n, c, l): (usize, usize, usize),
    f: impl Fn(usize, Range<usize>) -> [f64; K] + Sync,
) -> Vec<[f64; K]> {
    fold_rows(
        (n, c, l),
        || [0f64; K],
        |acc, ch, r| {
            for (a, v) in acc.iter_mut().zip(f(ch, r)) {
                *a += v;
            }
        },
    )
}

/// Channels per task of [`fold_rows`]: 16 rows of 4 KB (32x32 maps) side by side. Measured
/// inside a `resnet18-cifar` bf16 step at batch 128 (the batch norm's statistics and
/// gradients of one layer of each width, summed; medians of several interleaved runs): channel
/// by channel 18.0-19.5 ms, runs of 4 channels 16.4-18.0, of 8 15.8-19.7, of 16 15.2-16.4, of
/// 32 15.2-17.0.
const CHANNEL_RUN: usize = 16;

/// For every channel `ch` of an (N, C, L) tensor, `step(acc, ch, r)` on an accumulator made by
/// `init` for each row `r` (the range of (i, ch, ·)) in the order of the images `i`: the
/// channels' accumulators, in order. Runs of [`CHANNEL_RUN`] channels (fewer where that leaves
/// a pool thread without one: LeNet-5's 6 and 16 channels) go in parallel, each
/// image by image through its channels' rows, which lie side by side in memory: going channel by
/// channel instead jumped from one row to the next a whole image apart, and with rows of a page
/// (32x32 maps) each began with misses the hardware's prefetchers, which stop at page
/// boundaries, did not cover. The same order of steps per channel either way, so the same
/// results whatever the runs.
fn fold_rows<A: Send>(
    (n, c, l): (usize, usize, usize),
    init: impl Fn() -> A + Sync,
    step: impl Fn(&mut A, usize, Range<usize>) + Sync,
) -> Vec<A> {
    let run = CHANNEL_RUN
        .min(c.div_ceil(rayon::current_num_threads().max(1)))
        .max(1);
    let runs: Vec<Range<usize>> = (0..c).step_by(run).map(|s| s..(s + run).min(c)).collect();
    let parts: Vec<Vec<A>> = runs
        .into_par_iter()
        .map(|chs| {
            // (The steps' passes are widened where they run: `lane_sums`, and the callers'.)
            let mut accs: Vec<A> = chs.clone().map(|_| init()).collect();
            for i in 0..n {
                for (acc, ch) in accs.iter_mut().zip(chs.clone()) {
                    let r = (i * c + ch) * l;
                    step(acc, ch, r..r + l);
                }
            }
            accs
        })
        .collect();
    parts.into_iter().flatten().collect()
}

/// Rows (values of one image and channel) shorter than this: the 4x4, 2x2 and 1x1 maps of a
/// ResNet's last stages. There, a channel's rows are a few values each, a stride apart, and a
/// sum channel by channel costs per row; the sums go image by image through the contiguous
/// values of a run of channels instead (in f64 per value position, then per channel). At
/// batch 128 (statistics, output, gradients): (128, 128, 16) 0.51 -> 0.29 ms, (128, 192, 4)
/// 0.30 -> 0.20, (128, 256, 1) 0.32 -> 0.10; (128, 64, 64) would be slower.
const SHORT_ROW: usize = 32;

/// Rows shorter than this go through the element-wise passes image by image (measured at batch
/// 128: faster for rows of 1 and 4 values, slower for 16).
const SHORT_ELEMENTWISE: usize = 16;

/// The runs of channels that the short-row sums split between tasks: about 64K values each
/// (by the tensor's shape alone, so the sums are the same whatever the number of threads).
fn channel_runs((n, c, l): (usize, usize, usize)) -> Vec<Range<usize>> {
    let tasks = (n * c * l / (64 << 10)).clamp(1, c.max(1));
    let run = c.div_ceil(tasks).max(1);
    (0..c).step_by(run).map(|s| s..(s + run).min(c)).collect()
}

/// Each channel's total of `acc` (its `l` value positions in a row).
fn channel_totals(acc: &[f64], l: usize) -> impl Iterator<Item = f64> + '_ {
    acc.chunks(l.max(1)).map(|e| e.iter().sum::<f64>())
}

/// `v` with each channel's value repeated for its `l` positions.
fn expand(v: &[f32], l: usize) -> Vec<f32> {
    v.iter().flat_map(|&x| std::iter::repeat_n(x, l)).collect()
}

/// The biased batch mean and variance of each channel of a contiguous (N, C, L) tensor.
pub(crate) fn batch_stats(x: &[f32], shape: (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
    time(Part::BatchNorm, || batch_stats_inner(x, shape))
}

fn batch_stats_inner(x: &[f32], (n, c, l): (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
    let count = (n * l) as f64;
    if l < SHORT_ROW {
        let parts: Vec<(Vec<f32>, Vec<f32>)> = channel_runs((n, c, l))
            .into_par_iter()
            .map(|chs| {
                crate::wide::run(
                    #[inline(always)]
                    || {
                        let len = chs.len() * l;
                        let block = |i: usize| &x[(i * c + chs.start) * l..][..len];
                        let mut acc = vec![0f64; len];
                        for i in 0..n {
                            acc.iter_mut()
                                .zip(block(i))
                                .for_each(|(a, &v)| *a += f64::from(v));
                        }
                        let mean: Vec<f32> = channel_totals(&acc, l)
                            .map(|s| (s / count) as f32)
                            .collect();
                        let m = expand(&mean, l);
                        acc.fill(0.0);
                        for i in 0..n {
                            for ((a, &v), &m) in acc.iter_mut().zip(block(i)).zip(&m) {
                                *a += f64::from((v - m) * (v - m));
                            }
                        }
                        let var = channel_totals(&acc, l)
                            .map(|s| (s / count) as f32)
                            .collect();
                        (mean, var)
                    },
                )
            })
            .collect();
        let (mean, var): (Vec<Vec<f32>>, Vec<Vec<f32>>) = parts.into_iter().unzip();
        return (mean.concat(), var.concat());
    }
    // One read of the tensor: each row's sum, then (the row still in L1) its squared deviations
    // from its own mean; the rows' deviations are moved to the channel's mean afterwards, in f64
    // (Chan, Golub & LeVeque's pairwise update). The mean has the bits of summing the rows. The
    // cross term takes Σ (v - c) from the row's sum, whose float32 lanes round; the sum is taken
    // from the row's first value (Σ (v - x₀), then l·x₀ added in f64), so that this rounding
    // scales with the row's spread, not with its distance from zero (summed from zero it grew
    // without bound with |mean| / spread: 3.8e-2 of the variance at mean 1000 and spread 0.01,
    // PyTorch's double sums 2e-6; tested). Summing Σ (v - c) in the second pass instead, exact to
    // ~1e-10, moved `resnet18-seed`'s three-step SGD parity with PyTorch from inside its
    // tolerance to outside it: that test amplifies rounding-level differences about a
    // thousandfold (with the shifted sums it passes).
    let rows = fold_rows(
        (n, c, l),
        || Vec::with_capacity(n),
        |rows: &mut Vec<(f64, f64, f64)>, _, r| {
            let x = &x[r];
            // Summed from the mean of the row's first values, so that the lanes' rounding
            // scales with the row's spread, not with its distance from zero (from zero where
            // those hold infinity or NaN: the sums then stay as they were, inf where PyTorch's).
            let first = &x[..x.len().min(16)];
            let k = first.iter().sum::<f32>() / first.len() as f32;
            let k = if k.is_finite() { k } else { 0.0 };
            let [d] = lane_sums(x, x, x, |v, _, _| [v - k]);
            let s = l as f64 * f64::from(k) + d;
            let centre = (s / l as f64) as f32;
            let [q] = lane_sums(x, x, x, |v, _, _| [(v - centre) * (v - centre)]);
            rows.push((s, f64::from(centre), q));
        },
    );
    let stats = rows.into_iter().map(|rows| {
        let total = rows.iter().fold(0f64, |acc, r| acc + r.0);
        let mean = total / count;
        let lf = l as f64;
        // Σ (v - m)² = Σ (v - c)² + 2 (c - m) Σ (v - c) + l (c - m)² for each row.
        let m2 = rows.iter().fold(0f64, |acc, &(s, centre, q)| {
            let d = centre - mean;
            acc + q + 2.0 * d * (s - lf * centre) + lf * d * d
        });
        // Rounding may leave a sum of squares a hair below zero; NaN (an infinite value in the
        // channel) stays NaN, as PyTorch's (`f64::max` would make it 0).
        let var = m2 / count;
        (mean as f32, if var < 0.0 { 0.0 } else { var as f32 })
    });
    stats.into_iter().unzip()
}

/// Training-mode batch norm of a contiguous f32 (N, C, L) input with its batch statistics
/// taken: `relu?((x - mean) * (weight * invstd) + bias)`, arguments (x, weight, bias). Its
/// backward is PyTorch's closed form, in two passes.
pub(crate) struct BatchNormTrain {
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
    pub relu: bool,
}

/// `relu((x - mean) * (weight * invstd) + bias + residual)`: a residual block's last batch norm
/// with the join after it (torchvision's `out = bn(out); out += identity; out = relu(out)`),
/// arguments (x, residual, weight and bias concatenated). The same bits as [`BatchNormTrain`]
/// followed by `add_relu`, in one pass each way and one autograd node fewer.
pub(crate) struct BatchNormAddRelu {
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
}

/// `y = relu?((x - mean) * (weight * invstd) + bias (+ residual))` for (N, C, L) slices.
#[allow(clippy::too_many_arguments)]
pub(crate) fn normalize(
    x: &[f32],
    residual: Option<&[f32]>,
    (w, b): (&[f32], &[f32]),
    (mean, invstd): (&[f32], &[f32]),
    relu: bool,
    (c, l): (usize, usize),
) -> Vec<f32> {
    let scale: Vec<f32> = w.iter().zip(invstd).map(|(w, s)| w * s).collect();
    let _t = Timer::start(Part::BatchNorm);
    let per = (c * l).max(1);
    if l < SHORT_ELEMENTWISE {
        // Each image's values at once, with the coefficients laid out per value.
        let (m, s, b) = (expand(mean, l), expand(&scale, l), expand(b, l));
        // SAFETY: each image's chunk is written whole.
        return unsafe {
            par_filled(x.len(), per, |i, yi| {
                crate::wide::run(
                    #[inline(always)]
                    || {
                        let xi = &x[i * per..][..yi.len()];
                        let coefs = m.iter().zip(&s).zip(&b);
                        match residual {
                            None => {
                                for ((y, &x), ((&m, &s), &b)) in yi.iter_mut().zip(xi).zip(coefs) {
                                    let v = (x - m) * s + b;
                                    // NaN stays NaN, as torch.relu.
                                    y.write(if relu && v <= 0.0 { 0.0 } else { v });
                                }
                            }
                            Some(r) => {
                                let ri = &r[i * per..][..yi.len()];
                                for (((y, &x), &r), ((&m, &s), &b)) in
                                    yi.iter_mut().zip(xi).zip(ri).zip(coefs)
                                {
                                    let v = ((x - m) * s + b) + r;
                                    y.write(if v <= 0.0 { 0.0 } else { v });
                                }
                            }
                        }
                    },
                )
            })
        };
    }
    // SAFETY: each image's chunk is written whole, channel by channel.
    unsafe {
        par_filled(x.len(), per, |i, yi| {
            crate::wide::run(
                #[inline(always)]
                || {
                    let xi = &x[i * per..][..yi.len()];
                    for ch in 0..c {
                        let (m, s, b) = (mean[ch], scale[ch], b[ch]);
                        let (yr, xr) = (&mut yi[ch * l..][..l], &xi[ch * l..][..l]);
                        match residual {
                            None => {
                                for (y, &x) in yr.iter_mut().zip(xr) {
                                    let v = (x - m) * s + b;
                                    // NaN stays NaN, as torch.relu.
                                    y.write(if relu && v <= 0.0 { 0.0 } else { v });
                                }
                            }
                            Some(r) => {
                                let rr = &r[i * per + ch * l..][..l];
                                for ((y, &x), &r) in yr.iter_mut().zip(xr).zip(rr) {
                                    let v = ((x - m) * s + b) + r;
                                    // NaN stays NaN, as torch.relu.
                                    y.write(if v <= 0.0 { 0.0 } else { v });
                                }
                            }
                        }
                    }
                },
            )
        })
    }
}

/// `[Σ g', Σ g'·(x - mean)]` of each channel for rows shorter than [`SHORT_ROW`] (`g'` the
/// upstream gradient through the ReLU, `masked(g, y)`): image by image over runs of channels.
fn short_grad_sums(
    (x, y, g): (&[f32], &[f32], &[f32]),
    mean: &[f32],
    masked: impl Fn(f32, f32) -> f32 + Sync,
    (n, c, l): (usize, usize, usize),
) -> Vec<[f64; 2]> {
    let parts: Vec<Vec<[f64; 2]>> = channel_runs((n, c, l))
        .into_par_iter()
        .map(|chs| {
            crate::wide::run(
                #[inline(always)]
                || {
                    let len = chs.len() * l;
                    let m = expand(&mean[chs.clone()], l);
                    let (mut sg, mut sd) = (vec![0f64; len], vec![0f64; len]);
                    for i in 0..n {
                        let r = (i * c + chs.start) * l..(i * c + chs.start) * l + len;
                        let values = g[r.clone()].iter().zip(&y[r.clone()]).zip(&x[r]).zip(&m);
                        for ((sg, sd), (((&g, &y), &x), &m)) in
                            sg.iter_mut().zip(&mut sd).zip(values)
                        {
                            let g = masked(g, y);
                            *sg += f64::from(g);
                            *sd += f64::from(g * (x - m));
                        }
                    }
                    channel_totals(&sg, l)
                        .zip(channel_totals(&sd, l))
                        .map(|(a, b)| [a, b])
                        .collect()
                },
            )
        })
        .collect();
    parts.concat()
}

/// The gradients of [`normalize`] from its output `ys` and the output's gradient `grad`: the
/// input's (if wanted), the weight's, the bias's, and the residual's (if wanted: the gradient
/// through the ReLU).
pub(crate) type Grads = (Option<Vec<f32>>, Vec<f32>, Vec<f32>, Option<Vec<f32>>);

/// Rows from which a residual's gradient is written by the backward's sums (channel by
/// channel) rather than a pass of its own (image by image): measured in `resnet18-cifar`'s
/// step at batch 128, the residual joins' backward on (128, 64, 1024) 11.4 -> 9.4 ms, (128,
/// 128, 256) 5.6 -> 5.2 ms, but (128, 256, 64) 2.4 -> 3.3 ms (rows of 256 bytes written a
/// channel's stride apart).
const EARLY_RESIDUAL_ROW: usize = 256;

/// Rows of an output that channel-parallel tasks write, each its own (disjoint) rows.
struct RowsOut(*mut std::mem::MaybeUninit<f32>);

// SAFETY: the tasks sharing it write disjoint rows (see its uses).
unsafe impl Sync for RowsOut {}

/// [`normalize`]'s gradients; `bias`, for a ReLU right after the batch norm (no residual):
/// the ReLU's mask is then `(x - mean)·(w·invstd) + bias > 0` recomputed from the input as
/// [`normalize`] computed it (the same bits, so the same mask; NaN passed, as from the output's
/// NaN: PyTorch's `threshold_backward`),
/// and the output `ys` is not read over rows of [`SHORT_ROW`] values and more (unless the
/// residual's gradient is wanted): two passes over a tensor fewer. Never with a residual, whose
/// value the mask would miss.
pub(crate) fn normalize_grads(
    (x, w, ys, grad): (&Tensor, &Tensor, &Tensor, &Tensor),
    (mean, invstd): (&[f32], &[f32]),
    relu: bool,
    (want_x, want_r): (bool, bool),
    bias: Option<&Tensor>,
) -> Result<Grads> {
    let (n, c, l) = x.dims3()?;
    if bias.is_some() && want_r {
        candle_core::bail!("batch-norm backward: a ReLU mask from the input cannot have a residual")
    }
    let (x, w, grad) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
    let bias: Option<Vec<f32>> = match (relu, bias) {
        (true, Some(b)) if l >= SHORT_ROW.max(SHORT_ELEMENTWISE) => {
            Some(b.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
        }
        _ => None,
    };
    if bias.as_ref().is_some_and(|b| b.len() != c) {
        candle_core::bail!(
            "batch-norm backward: a bias of {} values for {c} channels",
            bias.map_or(0, |b| b.len())
        )
    }
    let count = (n * l) as f32;
    let _t = Timer::start(Part::BatchNorm);
    let result = with_f32(&x, |xv| {
        with_f32(ys, |yv| {
            with_f32(&grad, |gv| {
                with_f32(&w, |wv| {
                    // g' = g where the output is positive (ReLU), else g.
                    let masked = move |g: f32, y: f32| if relu && y <= 0.0 { 0.0 } else { g };
                    // With a residual (rows of EARLY_RESIDUAL_ROW and more, the mask from the
                    // output): the residual's gradient g' is written by the sums' pass, each
                    // row while it is in cache, and the input's gradient reads it instead of
                    // (g, y): three reads of a tensor fewer, the same bits.
                    let mut early_gr: Option<Vec<f32>> = None;
                    let sums = if l < SHORT_ROW {
                        short_grad_sums((xv, yv, gv), mean, masked, (n, c, l))
                    } else if want_r && bias.is_none() && l >= EARLY_RESIDUAL_ROW {
                        let mut gr: Vec<f32> = Vec::with_capacity(xv.len());
                        let rows = RowsOut(gr.spare_capacity_mut().as_mut_ptr());
                        let rows = &rows;
                        let sums = per_channel_sums((n, c, l), |ch, r| {
                            crate::wide::run(
                                #[inline(always)]
                                || {
                                    let m = mean[ch];
                                    // SAFETY: only channel `ch`'s task writes its rows (i, ch), which
                                    // are disjoint and inside `gr`'s capacity of `xv.len()` values.
                                    let out = unsafe {
                                        std::slice::from_raw_parts_mut(rows.0.add(r.start), r.len())
                                    };
                                    let (g, y) = (&gv[r.clone()], &yv[r.clone()]);
                                    for (o, (&g, &y)) in out.iter_mut().zip(g.iter().zip(y)) {
                                        o.write(masked(g, y));
                                    }
                                    // SAFETY: every value of `out` was just written.
                                    let out: &[f32] = unsafe {
                                        std::slice::from_raw_parts(out.as_ptr().cast(), r.len())
                                    };
                                    lane_sums(out, out, &xv[r], |g, _, x| [g, g * (x - m)])
                                },
                            )
                        });
                        // SAFETY: the channels' rows cover all `xv.len()` values.
                        unsafe { gr.set_len(xv.len()) };
                        early_gr = Some(gr);
                        sums
                    } else {
                        per_channel_sums((n, c, l), |ch, r| {
                            crate::wide::run(
                                #[inline(always)]
                                || {
                                    let m = mean[ch];
                                    if let Some(bias) = &bias {
                                        // The ReLU's mask from the input, as `normalize` made it.
                                        let (s, b) = (wv[ch] * invstd[ch], bias[ch]);
                                        return lane_sums(
                                            &gv[r.clone()],
                                            &xv[r.clone()],
                                            &xv[r],
                                            |g, x, _| {
                                                let g =
                                                    if (x - m) * s + b <= 0.0 { 0.0 } else { g };
                                                [g, g * (x - m)]
                                            },
                                        );
                                    }
                                    lane_sums(&gv[r.clone()], &yv[r.clone()], &xv[r], |g, y, x| {
                                        let g = masked(g, y);
                                        [g, g * (x - m)]
                                    })
                                },
                            )
                        })
                    };
                    let gsum: Vec<f32> = sums.iter().map(|s| s[0] as f32).collect();
                    let gdot: Vec<f32> = sums.iter().map(|s| s[1] as f32).collect();
                    let gw: Vec<f32> = gdot.iter().zip(invstd).map(|(d, s)| d * s).collect();
                    // dx = a g' + k (x - mean) + shift, a = w invstd,
                    // k = -a invstd² Σ g'(x - mean) / M, shift = -a Σ g' / M.
                    let a: Vec<f32> = wv.iter().zip(invstd).map(|(w, s)| w * s).collect();
                    let kk: Vec<f32> = (0..c)
                        .map(|ch| a[ch] * (invstd[ch] * invstd[ch]) * gdot[ch] * (-1.0 / count))
                        .collect();
                    let shift: Vec<f32> =
                        (0..c).map(|ch| a[ch] * gsum[ch] * (-1.0 / count)).collect();
                    let per = (c * l).max(1);
                    let short = (l < SHORT_ELEMENTWISE)
                        .then(|| [mean, &a, &kk, &shift].map(|v| expand(v, l)));
                    // SAFETY: each image's chunk is written whole (at once, or channel by
                    // channel).
                    let gx = want_x.then(|| unsafe {
                        par_filled(xv.len(), per, |i, o| {
                            crate::wide::run(
                                #[inline(always)]
                                || {
                                    if let Some([m, a, k, b]) = &short {
                                        let r = i * per..i * per + o.len();
                                        let rows =
                                            gv[r.clone()].iter().zip(&yv[r.clone()]).zip(&xv[r]);
                                        let coefs = m.iter().zip(a).zip(k).zip(b);
                                        for ((o, ((&g, &y), &x)), (((&m, &a), &k), &b)) in
                                            o.iter_mut().zip(rows).zip(coefs)
                                        {
                                            o.write(masked(g, y) * a + (x - m) * k + b);
                                        }
                                        return;
                                    }
                                    for ch in 0..c {
                                        let r = (i * c + ch) * l..(i * c + ch + 1) * l;
                                        let (m, a, k, b) = (mean[ch], a[ch], kk[ch], shift[ch]);
                                        if let Some(bias) = &bias {
                                            // The ReLU's mask from the input (a = w·invstd, as
                                            // `normalize`'s scale).
                                            let beta = bias[ch];
                                            let rows = gv[r.clone()].iter().zip(&xv[r]);
                                            for (o, (&g, &x)) in
                                                o[ch * l..][..l].iter_mut().zip(rows)
                                            {
                                                let g =
                                                    if (x - m) * a + beta <= 0.0 { 0.0 } else { g };
                                                o.write(g * a + (x - m) * k + b);
                                            }
                                            continue;
                                        }
                                        if let Some(gr) = &early_gr {
                                            let rows = gr[r.clone()].iter().zip(&xv[r]);
                                            for (o, (&g, &x)) in
                                                o[ch * l..][..l].iter_mut().zip(rows)
                                            {
                                                o.write(g * a + (x - m) * k + b);
                                            }
                                            continue;
                                        }
                                        let rows =
                                            gv[r.clone()].iter().zip(&yv[r.clone()]).zip(&xv[r]);
                                        for (o, ((&g, &y), &x)) in
                                            o[ch * l..][..l].iter_mut().zip(rows)
                                        {
                                            o.write(masked(g, y) * a + (x - m) * k + b);
                                        }
                                    }
                                },
                            )
                        })
                    });
                    // The residual's: the gradient through the ReLU.
                    // SAFETY: every chunk is written whole.
                    let gr = early_gr.or_else(|| {
                        want_r.then(|| unsafe {
                            par_filled(xv.len(), per, |i, o| {
                                crate::wide::run(
                                    #[inline(always)]
                                    || {
                                        let r = i * per..i * per + o.len();
                                        for (o, (&g, &y)) in
                                            o.iter_mut().zip(gv[r.clone()].iter().zip(&yv[r]))
                                        {
                                            o.write(masked(g, y));
                                        }
                                    },
                                )
                            })
                        })
                    });
                    (gx, gw, gsum, gr)
                })
            })
        })
    });
    let Some(Some(Some(Some(grads)))) = result else {
        candle_core::bail!("batch-norm-cpu: expected contiguous f32 CPU tensors")
    };
    Ok(grads)
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batch-norm-cpu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let x = f32_slice(xs, xl, op, "input")?;
        let (w, b) = (
            f32_slice(ws, wl, op, "weight")?,
            f32_slice(bs, bl, op, "bias")?,
        );
        let (_, c, l) = xl.shape().dims3()?;
        let stats = (&self.mean[..], &self.invstd[..]);
        let y = normalize(x, None, (w, b), stats, self.relu, (c, l));
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        ys: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, l) = x.dims3()?;
        let stats = (&self.mean[..], &self.invstd[..]);
        let want = (x.track_op(), false);
        let (gx, gw, gsum, _) = normalize_grads((x, w, ys, grad), stats, self.relu, want, Some(b))?;
        let dev = x.device();
        let gx = gx
            .map(|v| Tensor::from_vec(v, (n, c, l), dev))
            .transpose()?;
        // A frozen weight or bias gets no gradient (PyTorch leaves its `.grad` None).
        let keep = |t: &Tensor, v: Vec<f32>| {
            t.track_op()
                .then(|| Tensor::from_vec(v, c, dev))
                .transpose()
        };
        Ok((gx, keep(w, gw)?, keep(b, gsum)?))
    }
}

impl CustomOp3 for BatchNormAddRelu {
    fn name(&self) -> &'static str {
        "batch-norm-add-relu-cpu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
        wbs: &CpuStorage,
        wbl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let x = f32_slice(xs, xl, op, "input")?;
        let r = f32_slice(rs, rl, op, "residual")?;
        let wb = f32_slice(wbs, wbl, op, "weight and bias")?;
        let (_, c, l) = xl.shape().dims3()?;
        if rl.shape() != xl.shape() || wb.len() != 2 * c {
            candle_core::bail!(
                "{op}: operands of shapes {:?}, {:?}, {:?}",
                xl.dims(),
                rl.dims(),
                wbl.dims()
            )
        }
        let stats = (&self.mean[..], &self.invstd[..]);
        let y = normalize(x, Some(r), wb.split_at(c), stats, true, (c, l));
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        r: &Tensor,
        wb: &Tensor,
        ys: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, l) = x.dims3()?;
        let stats = (&self.mean[..], &self.invstd[..]);
        let w = wb.narrow(0, 0, c)?;
        let want = (x.track_op(), r.track_op());
        let (gx, gw, gsum, gr) = normalize_grads((x, &w, ys, grad), stats, true, want, None)?;
        let dev = x.device();
        let tensor = |v: Vec<f32>| Tensor::from_vec(v, (n, c, l), dev);
        let mut gwb = gw;
        gwb.extend(gsum);
        // Frozen weight and bias get no gradient (PyTorch leaves their `.grad` None).
        let gwb = wb
            .track_op()
            .then(|| Tensor::from_vec(gwb, 2 * c, dev))
            .transpose()?;
        Ok((
            gx.map(tensor).transpose()?,
            gr.map(tensor).transpose()?,
            gwb,
        ))
    }
}

/// `x + bias` for a contiguous f32 CPU (N, C, ...) input and a (C) bias, as
/// `x + bias.reshape(1, C, 1, ...)`; the bias gradient is a per-channel sum in one pass.
pub(crate) fn add_channel_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&bias.contiguous()?, ChannelBias)
}

struct ChannelBias;

fn ncl(shape: &Shape) -> Result<(usize, usize, usize)> {
    let d = shape.dims();
    if d.len() < 2 {
        candle_core::bail!("channel bias: input of shape {d:?} has no channel dimension")
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "channel-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (x, b) = (
            f32_slice(xs, xl, op, "input")?,
            f32_slice(bs, bl, op, "bias")?,
        );
        let (_, c, l) = ncl(xl.shape())?;
        if b.len() != c {
            candle_core::bail!("channel bias: {} values for {c} channels", b.len())
        }
        let per = (c * l).max(1);
        // SAFETY: each image's chunk is written whole, channel by channel.
        let y = unsafe {
            par_filled(x.len(), per, |i, yi| {
                crate::wide::run(
                    #[inline(always)]
                    || {
                        let xi = &x[i * per..][..yi.len()];
                        for ch in 0..c {
                            let bias = b[ch];
                            for (y, &x) in yi[ch * l..][..l].iter_mut().zip(&xi[ch * l..][..l]) {
                                y.write(x + bias);
                            }
                        }
                    },
                )
            })
        };
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(bias_grad(grad, bias.dtype())?)))
    }
}

/// The gradient of a (C) bias added to every (N, C, ...) element of a channel: the output
/// gradient summed over all but the channel dimension (in 16 lanes and f64 for contiguous f32
/// CPU gradients), as `dtype`.
pub(crate) fn bias_grad(grad: &Tensor, dtype: DType) -> Result<Tensor> {
    let (n, c, l) = ncl(grad.shape())?;
    let grad_c = grad.contiguous()?;
    let sums = with_f32(&grad_c, |g| {
        per_channel_sums((n, c, l), |_, r| {
            let g = &g[r];
            lane_sums(g, g, g, |v, _, _| [v])
        })
    });
    let gb = match sums {
        Some(s) => Tensor::from_vec(
            s.into_iter().map(|[v]| v as f32).collect::<Vec<_>>(),
            c,
            grad.device(),
        )?,
        None => grad.reshape((n, c, l))?.sum(2)?.sum(0)?,
    };
    gb.to_dtype(dtype)
}

/// `y[n, c, ...] += bias[c]` over a contiguous (N, C, ...) buffer of `shape`, images in parallel:
/// the same sums as [`add_channel_bias`] without a second buffer.
pub(crate) fn add_bias_in_place(y: &mut [f32], shape: &Shape, bias: &[f32]) -> Result<()> {
    let (_, c, l) = ncl(shape)?;
    if bias.len() != c || y.len() != shape.elem_count() {
        candle_core::bail!(
            "channel bias: {} values for {c} channels, {} values for shape {:?}",
            bias.len(),
            y.len(),
            shape.dims()
        )
    }
    if y.is_empty() {
        return Ok(());
    }
    let per = (c * l).max(1);
    let add = |yi: &mut [f32]| {
        crate::wide::run(
            #[inline(always)]
            || {
                for (ch, &b) in bias.iter().enumerate() {
                    yi[ch * l..][..l].iter_mut().for_each(|y| *y += b);
                }
            },
        )
    };
    if y.len() <= per {
        add(y);
    } else {
        y.par_chunks_mut(per).for_each(add);
    }
    Ok(())
}

/// `y = relu?(y · scale[c] + shift[c] (+ r))` in place over a contiguous (N, C, L) `y` (and
/// `r` of its length), `(c, l)` its channels and positions: the product and the sums rounded
/// one by one (as separate tensor operations would), and the ReLU as [`crate::relu`]'s (NaN
/// stays NaN, `-0.0` becomes `0.0`). Rows of channels run side by side on the thread pool.
///
/// # Errors
/// `y`'s length is not a multiple of `c · l`, or `r`'s differs from it.
pub(crate) fn scale_shift_in_place(
    y: &mut [f32],
    r: Option<&[f32]>,
    (c, l): (usize, usize),
    (scale, shift): (&[f32], &[f32]),
    relu: bool,
) -> Result<()> {
    if c == 0 || l == 0 || !y.len().is_multiple_of(c * l) || r.is_some_and(|r| r.len() != y.len()) {
        candle_core::bail!(
            "batch-norm-eval: {} values are not (N, {c}, {l}), or the residual has another length",
            y.len()
        )
    }
    if scale.len() != c || shift.len() != c {
        candle_core::bail!("batch-norm-eval: {c} channels and {} scales", scale.len())
    }
    // Whole rows of L values per task, about 16K values each.
    let rows = (16 * 1024 / l).max(1);
    let one = |(task, y): (usize, &mut [f32])| {
        let first = task * rows;
        for (i, y) in y.chunks_mut(l).enumerate() {
            let row = first + i;
            let at = row * l;
            scale_shift_row(
                y,
                r.map(|r| &r[at..at + l]),
                scale[row % c],
                shift[row % c],
                relu,
            );
        }
    };
    y.par_chunks_mut(rows * l).enumerate().for_each(one);
    Ok(())
}

/// `y = relu?(y · s + t (+ r))` in place over one channel's values `y` (and the residual's `r`
/// of the same length): [`scale_shift_in_place`]'s arithmetic, which a convolution also runs on
/// each block of its output while it is in cache (`conv::cpu`).
#[inline]
pub(crate) fn scale_shift_row(y: &mut [f32], r: Option<&[f32]>, s: f32, t: f32, relu: bool) {
    crate::wide::run(
        #[inline(always)]
        || scale_shift_row_any(y, r, s, t, relu),
    )
}

/// [`scale_shift_row`] as compiled for any CPU (inlined into its AVX-512 copy).
#[inline(always)]
fn scale_shift_row_any(y: &mut [f32], r: Option<&[f32]>, s: f32, t: f32, relu: bool) {
    match r {
        None => {
            for v in y.iter_mut() {
                let z = *v * s + t;
                *v = if relu && z <= 0.0 { 0.0 } else { z };
            }
        }
        Some(r) => {
            for (v, &r) in y.iter_mut().zip(r) {
                let z = (*v * s + t) + r;
                *v = if relu && z <= 0.0 { 0.0 } else { z };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    #[test]
    fn channel_bias_matches_broadcast_add_forward_and_backward() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // Seeded: the same values every run.
        let mut rng = rng::Rng::new(11);
        let mut normals = |shape: &[usize]| {
            let n = shape.iter().product();
            Tensor::from_vec(rng.normals(n, 0.0, 1.0), shape, &dev)
        };
        let x = Var::from_tensor(&normals(&[3, 5, 7, 6])?)?;
        let b = Var::from_tensor(&normals(&[5])?)?;
        let up = normals(&[3, 5, 7, 6])?;
        let ours = super::add_channel_bias(&x, &b)?;
        let theirs = x.broadcast_add(&b.reshape((1, 5, 1, 1))?)?;
        let diff = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        let g1 = (&ours * &up)?.sum_all()?.backward()?;
        let g2 = (&theirs * &up)?.sum_all()?.backward()?;
        // The bias gradient sums 126 products per channel in f64 where Candle sums them in f32
        // (about 1e-5 apart at this size): within float32 rounding of the sums' scale.
        for v in [&x, &b] {
            let (a, c) = (g1.get(v).unwrap(), g2.get(v).unwrap());
            let diff = (a - c)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = c.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
            assert!(
                diff <= 4e-6 * scale,
                "gradient differs by {diff} (scale {scale})"
            );
        }
        Ok(())
    }

    /// [`fold_rows`] steps each channel's accumulator through its rows in the order of the
    /// images, whatever the runs of channels: the bits of a channel-by-channel fold, with a
    /// step whose result depends on the order.
    #[test]
    fn rows_fold_image_by_image_in_order() {
        let mut rng = rng::Rng::new(7);
        for (n, c, l) in [(5, 37, 40), (3, 16, 1024), (1, 1, 33), (4, 33, 64)] {
            let x = rng.normals(n * c * l, 0.0, 1.0);
            let step = |acc: &mut f32, _: usize, r: std::ops::Range<usize>| {
                *acc = *acc * 0.75 + x[r].iter().sum::<f32>();
            };
            let folded = super::fold_rows((n, c, l), || 0.5f32, step);
            for (ch, got) in folded.iter().enumerate() {
                let mut want = 0.5f32;
                for i in 0..n {
                    let r = (i * c + ch) * l;
                    step(&mut want, ch, r..r + l);
                }
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "({n}, {c}, {l}) channel {ch}"
                );
            }
        }
    }

    #[test]
    fn long_row_statistics_match_f64_two_pass_sums() {
        // Rows of 32, 40, 64 and 100 values (the one-read path), with an offset a thousand times
        // the spread: the rows' squared deviations are taken from their own means, so the
        // variance keeps its digits where summing squares would not (within 1e-6). The last
        // two: rows whose means differ and whose values hardly do, so that the rows' spread
        // (the l·(c - m)² terms) makes nearly all of the variance; the rows' sums, taken from
        // each row's first value, round with the rows' spread, not with their mean (summed
        // from zero, the last case's variance was 3.8e-2 off, PyTorch's 2e-6: a reviewer's
        // case, values 1000 with images 0.01 and values 1e-4 apart).
        let cases = [
            (3usize, 2usize, 32usize, 0),
            (3, 2, 40, 0),
            (5, 3, 100, 0),
            (4, 2, 64, 1),
            (8, 1, 1024, 2),
        ];
        for (n, c, l, case) in cases {
            let x: Vec<f32> = (0..n * c * l)
                .map(|i| {
                    let (img, ch, j) = (i / (c * l), (i / l) % c, i % l);
                    let offset = [1000.0, -3.0, 0.0][ch];
                    let wobble = |k: usize| (k * 7919 % 101) as f64 / 50.0 - 1.0;
                    match case {
                        1 => (f64::from(offset) + img as f64 * 0.29 + j as f64 * 1e-3) as f32,
                        2 => (1000.0 + 0.01 * wobble(img * 31 + 7) + 1e-4 * wobble(i)) as f32,
                        _ => offset + ((i * 7919 % 101) as f32 / 50.0 - 1.0) * (1.0 + img as f32),
                    }
                })
                .collect();
            let (mean, var) = super::batch_stats(&x, (n, c, l));
            for ch in 0..c {
                let vals: Vec<f64> = (0..n)
                    .flat_map(|i| x[(i * c + ch) * l..][..l].iter().map(|&v| f64::from(v)))
                    .collect();
                let m = vals.iter().sum::<f64>() / vals.len() as f64;
                let v = vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / vals.len() as f64;
                assert!(
                    (f64::from(mean[ch]) - m).abs() <= 1e-6 * m.abs().max(1.0),
                    "{n} {c} {l} {ch}"
                );
                assert!(
                    (f64::from(var[ch]) - v).abs() <= 1e-6 * v,
                    "{n} {c} {l} {ch}: {} vs {v}",
                    var[ch]
                );
            }
        }
    }

    #[test]
    fn an_infinite_value_leaves_the_long_row_mean_infinite() {
        // As PyTorch's double sums: +inf in a channel makes its mean +inf (not NaN, which a
        // row summed from its infinite first value would give), its variance NaN (not 0, which
        // `f64::max(NaN, 0.0)` gave).
        for at in [0usize, 5, 40] {
            let mut x: Vec<f32> = (0..2 * 2 * 48).map(|i| (i % 7) as f32).collect();
            x[at] = f32::INFINITY;
            let (mean, var) = super::batch_stats(&x, (2, 2, 48));
            assert_eq!(mean[0], f32::INFINITY, "{at}");
            assert!(var[0].is_nan(), "{at}");
            assert!(mean[1].is_finite() && var[1].is_finite(), "{at}");
        }
    }

    #[test]
    fn batch_statistics_are_the_biased_mean_and_variance() {
        // Two images, two channels, three values each.
        let x = [
            1.0, 2.0, 3.0, 10.0, 10.0, 10.0, 5.0, 6.0, 7.0, 10.0, 10.0, 16.0,
        ];
        let (mean, var) = super::batch_stats(&x, (2, 2, 3));
        assert_eq!(mean, [4.0, 11.0]);
        assert!((var[0] - 14.0 / 3.0).abs() < 1e-6 && (var[1] - 5.0).abs() < 1e-6);
    }

    /// Rows shorter than `SHORT_ROW`, in tensors large enough to split the channels into
    /// several runs (and runs of unequal length): statistics, output and gradients against
    /// sums in f64 channel by channel.
    #[test]
    fn short_rows_split_into_channel_runs_match_f64_sums() -> candle_core::Result<()> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for (n, c, l) in [(64, 515, 4), (300, 701, 1), (40, 210, 16), (9, 470, 31)] {
            assert!(super::channel_runs((n, c, l)).len() >= 2, "({n}, {c}, {l})");
            let x: Vec<f32> = (0..n * c * l).map(|_| uniform() * 3.0 + 0.5).collect();
            let g: Vec<f32> = (0..n * c * l).map(|_| uniform()).collect();
            let w: Vec<f32> = (0..c).map(|_| uniform() + 1.5).collect();
            let b: Vec<f32> = (0..c).map(|_| uniform()).collect();
            let at = |i: usize, ch: usize, p: usize| (i * c + ch) * l + p;
            let count = (n * l) as f64;
            let (mean, var) = super::batch_stats(&x, (n, c, l));
            let mut m64 = vec![0f64; c];
            for ch in 0..c {
                let vals = || (0..n).flat_map(move |i| (0..l).map(move |p| at(i, ch, p)));
                m64[ch] = vals().map(|k| f64::from(x[k])).sum::<f64>() / count;
                let v64 = vals()
                    .map(|k| (f64::from(x[k]) - m64[ch]).powi(2))
                    .sum::<f64>()
                    / count;
                assert!(
                    (f64::from(mean[ch]) - m64[ch]).abs() < 1e-6,
                    "mean ({n}, {c}, {l}) {ch}"
                );
                assert!(
                    (f64::from(var[ch]) - v64).abs() < 1e-5 * v64,
                    "var ({n}, {c}, {l}) {ch}"
                );
            }
            let invstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
            let y = super::normalize(&x, None, (&w, &b), (&mean, &invstd), true, (c, l));
            let dev = Device::Cpu;
            let t = |v: &[f32], d: (usize, usize, usize)| Tensor::from_slice(v, d, &dev);
            let (gx, gw, gb, _) = super::normalize_grads(
                (
                    &t(&x, (n, c, l))?,
                    &Tensor::from_slice(&w, c, &dev)?,
                    &t(&y, (n, c, l))?,
                    &t(&g, (n, c, l))?,
                ),
                (&mean, &invstd),
                true,
                (true, false),
                None,
            )?;
            let gx = gx.expect("input gradient");
            for ch in 0..c {
                let (m, s) = (f64::from(mean[ch]), f64::from(invstd[ch]));
                let (wc, bc) = (f64::from(w[ch]), f64::from(b[ch]));
                let (mut gsum, mut gdot) = (0f64, 0f64);
                for i in 0..n {
                    for p in 0..l {
                        let k = at(i, ch, p);
                        let v = (f64::from(x[k]) - m) * s * wc + bc;
                        assert!(
                            (f64::from(y[k]) - v.max(0.0)).abs() < 1e-5,
                            "y ({n}, {c}, {l})"
                        );
                        let gm = if y[k] <= 0.0 { 0.0 } else { f64::from(g[k]) };
                        gsum += gm;
                        gdot += gm * (f64::from(x[k]) - m);
                    }
                }
                let tol = |r: f64| 1e-4 * (1.0 + r.abs());
                assert!(
                    (f64::from(gb[ch]) - gsum).abs() < tol(gsum),
                    "bias grad ({n}, {c}, {l})"
                );
                let gw64 = gdot * s;
                assert!(
                    (f64::from(gw[ch]) - gw64).abs() < tol(gw64),
                    "weight grad ({n}, {c}, {l})"
                );
                let a = wc * s;
                for i in 0..n {
                    for p in 0..l {
                        let k = at(i, ch, p);
                        let gm = if y[k] <= 0.0 { 0.0 } else { f64::from(g[k]) };
                        let dx = a * gm
                            - a * s * s * gdot / count * (f64::from(x[k]) - m)
                            - a * gsum / count;
                        assert!(
                            (f64::from(gx[k]) - dx).abs() < 1e-4,
                            "input grad ({n}, {c}, {l})"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// With the bias given, the ReLU's mask comes from the input: the same bits as from the
    /// output, and the output is not read (a wrong one changes nothing).
    #[test]
    fn relu_mask_from_the_input_gives_the_same_bits() -> candle_core::Result<()> {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut uniform = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let dev = Device::Cpu;
        for (n, c, l) in [(4, 5, 64), (3, 7, 1024), (2, 3, 40), (5, 2, 32)] {
            let mut x: Vec<f32> = (0..n * c * l).map(|_| uniform() * 3.0).collect();
            // A channel with a NaN (its statistics and mask NaN), and exact zeros.
            x[l + 3] = f32::NAN;
            x[2 * l..2 * l + 4].fill(0.0);
            let g: Vec<f32> = (0..n * c * l).map(|_| uniform()).collect();
            let w: Vec<f32> = (0..c).map(|_| uniform() + 1.0).collect();
            // Some biases zero (the ReLU's edge at the mean).
            let b: Vec<f32> = (0..c)
                .map(|ch| if ch % 2 == 0 { 0.0 } else { uniform() })
                .collect();
            let (mean, var) = super::batch_stats(&x, (n, c, l));
            let invstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
            let y = super::normalize(&x, None, (&w, &b), (&mean, &invstd), true, (c, l));
            let t = |v: &[f32]| Tensor::from_slice(v, (n, c, l), &dev);
            let (wt, bt) = (
                Tensor::from_slice(&w, c, &dev)?,
                Tensor::from_slice(&b, c, &dev)?,
            );
            let grads =
                |ys: &Tensor, bias: Option<&Tensor>| -> candle_core::Result<Vec<Vec<u32>>> {
                    let (gx, gw, gb, _) = super::normalize_grads(
                        (&t(&x)?, &wt, ys, &t(&g)?),
                        (&mean, &invstd),
                        true,
                        (true, false),
                        bias,
                    )?;
                    let bits = |v: Vec<f32>| v.iter().map(|v| v.to_bits()).collect();
                    Ok(vec![bits(gx.expect("input gradient")), bits(gw), bits(gb)])
                };
            let from_output = grads(&t(&y)?, None)?;
            let from_input = grads(&t(&vec![1f32; y.len()])?, Some(&bt))?;
            assert_eq!(from_output, from_input, "({n}, {c}, {l})");
        }
        Ok(())
    }

    /// The batch norm's passes compiled for AVX-512 (`crate::wide`) give the bits of the
    /// default target's: statistics, output (with a residual), and the gradients (with the
    /// residual's, the ReLU's mask from the output and from the input), the evaluation-mode
    /// pass and the channel bias's, over short rows, rows of a vector or less, and long rows
    /// with a remainder; NaN and zeros included.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx512_copies_give_the_default_targets_bits() -> candle_core::Result<()> {
        if !crate::avx512::available() {
            eprintln!("skipped: this CPU has no AVX-512F");
            return Ok(());
        }
        let dev = Device::Cpu;
        let mut rng = rng::Rng::new(23);
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        for (n, c, l) in [
            (3, 5, 1),
            (4, 6, 9),
            (2, 3, 16),
            (3, 4, 49),
            (2, 5, 300),
            (2, 3, 1024),
        ] {
            let mut x = rng.normals(n * c * l, 0.5, 2.0);
            x[l / 2] = f32::NAN;
            x[l..l + l.min(3)].fill(0.0);
            let r = rng.normals(n * c * l, 0.0, 1.0);
            let g = rng.normals(n * c * l, 0.0, 1.0);
            let w = rng.normals(c, 1.0, 0.3);
            let b = rng.normals(c, 0.0, 0.3);
            let t = |v: &[f32]| Tensor::from_slice(v, (n, c, l), &dev);
            let (wt, bt) = (
                Tensor::from_slice(&w, c, &dev)?,
                Tensor::from_slice(&b, c, &dev)?,
            );
            let all = || -> candle_core::Result<Vec<Vec<u32>>> {
                let (mean, var) = super::batch_stats(&x, (n, c, l));
                let invstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
                let stats = (&mean[..], &invstd[..]);
                let y = super::normalize(&x, None, (&w, &b), stats, true, (c, l));
                let yr = super::normalize(&x, Some(&r), (&w, &b), stats, true, (c, l));
                let mut out = vec![bits(&mean), bits(&var), bits(&y), bits(&yr)];
                let (xt, gt) = (t(&x)?, t(&g)?);
                for (ys, relu, want, bias) in [
                    (t(&y)?, true, (true, false), None),
                    (t(&y)?, true, (true, false), Some(&bt)),
                    (t(&yr)?, true, (true, true), None),
                    (t(&y)?, false, (true, false), None),
                ] {
                    let (gx, gw, gb, gr) =
                        super::normalize_grads((&xt, &wt, &ys, &gt), stats, relu, want, bias)?;
                    out.extend(
                        [gx.unwrap_or_default(), gw, gb, gr.unwrap_or_default()].map(|v| bits(&v)),
                    );
                }
                let mut shifted = x.clone();
                super::scale_shift_in_place(&mut shifted, Some(&r), (c, l), (&w, &b), true)?;
                out.push(bits(&shifted));
                let gb = super::bias_grad(&gt, candle_core::DType::F32)?.to_vec1::<f32>()?;
                out.push(bits(&gb));
                let biased = super::add_channel_bias(&xt, &bt)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                out.push(bits(&biased));
                let mut in_place = x.clone();
                super::add_bias_in_place(&mut in_place, xt.shape(), &b)?;
                out.push(bits(&in_place));
                Ok(out)
            };
            let wide = all()?;
            let plain = {
                let _baseline = crate::wide::baseline_only();
                all()?
            };
            assert!(wide == plain, "({n}, {c}, {l})");
        }
        Ok(())
    }
}
