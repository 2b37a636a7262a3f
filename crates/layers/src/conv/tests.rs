//! The convolution paths against each other and against Candle's `conv2d`.

use super::*;
use candle_core::{Device, Var};

use crate::test_values::bits;

#[allow(clippy::too_many_arguments)]
fn check(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    cout: usize,
    k: usize,
    s: usize,
    p: usize,
) -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, h, w), &dev)?)?;
    let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (cout, c, k, k), &dev)?)?;
    let b = Var::from_tensor(&Tensor::randn(0f32, 1., cout, &dev)?)?;
    let ours = conv2d_gemm(x.as_tensor(), wt.as_tensor(), Some(b.as_tensor()), s, p)?;
    let reference = x
        .as_tensor()
        .conv2d(wt.as_tensor(), p, s, 1, 1)?
        .broadcast_add(&b.as_tensor().reshape((1, cout, 1, 1))?)?;
    same_with_grads(
        ours,
        reference,
        &[("input", &x), ("weight", &wt), ("bias", &b)],
        &format!("k{k} s{s} p{p}"),
    )
}

/// Asserts that `ours` equals `reference` (1e-4) and so do the gradients of `vars` (1e-3)
/// for one random output gradient.
fn same_with_grads(
    ours: Tensor,
    reference: Tensor,
    vars: &[(&str, &Var)],
    what: &str,
) -> Result<()> {
    assert_eq!(ours.dims(), reference.dims(), "{what}");
    let max_diff =
        |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.max_all()?.to_scalar::<f32>() };
    let d = max_diff(&ours, &reference)?;
    assert!(d < 1e-4, "{what}: output differs by {d}");
    let g = Tensor::randn(0f32, 1., ours.shape(), ours.device())?;
    let ga = (ours * &g)?.sum_all()?.backward()?;
    let gb = (reference * &g)?.sum_all()?.backward()?;
    for (name, v) in vars {
        let (a, b) = (ga.get(v).expect("grad"), gb.get(v).expect("grad"));
        assert_eq!(a.dims(), b.dims(), "{what}: {name} gradient");
        let d = max_diff(a, b)?;
        assert!(d < 1e-3, "{what}: {name} gradient differs by {d}");
    }
    Ok(())
}

#[test]
fn matches_candle_conv_forward_and_backward() -> Result<()> {
    check(2, 3, 9, 7, 4, 3, 1, 1)?;
    check(2, 3, 11, 11, 5, 7, 2, 3)?;
    check(3, 4, 8, 8, 6, 1, 2, 0)?;
    check(1, 2, 6, 6, 3, 5, 1, 0)?;
    check(2, 2, 5, 5, 2, 3, 2, 1)
}

#[test]
fn pointwise_kernels_transpose_instead_of_copying_tap_by_tap() -> Result<()> {
    // 1x1 stride-1 kernels on 1x1, 2x2 and 3x5 maps (GoogLeNet's on 32x32 images), one image
    // and several, more channels than a tile of the transposition and fewer.
    for (n, c, h, w, cout) in [
        (3, 20, 1, 1, 7),
        (2, 33, 2, 2, 5),
        (1, 17, 3, 5, 19),
        (4, 3, 2, 2, 40),
        (1, 16, 2, 2, 16),
    ] {
        check(n, c, h, w, cout, 1, 1, 0)?;
        // The columns and their gradient are those of the tap-by-tap copy, bit for bit.
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, h, w), &dev)?)?;
        let geo = geometry::Geometry::new(c, h, w, 1, 1, 1, 0)?;
        let ours = im2col::columns(x.as_tensor(), geo)?;
        let copied = x.as_tensor().apply_op1(im2col::Im2Col(geo))?;
        assert_eq!(bits(&ours)?, bits(&copied)?, "{n}x{c}x{h}x{w} columns");
        let up = Tensor::randn(0f32, 1., ours.shape(), &dev)?;
        let g_ours = (ours * &up)?.sum_all()?.backward()?;
        let g_copied = (copied * &up)?.sum_all()?.backward()?;
        let (a, b) = (
            g_ours.get(&x).expect("grad"),
            g_copied.get(&x).expect("grad"),
        );
        assert_eq!(bits(a)?, bits(b)?, "{n}x{c}x{h}x{w} input gradient");
        // The product's rows as planes: Candle's transposition, bit for bit.
        let rows = Tensor::randn(0f32, 1., (n * h * w, cout), &dev)?;
        let planes = im2col::to_planes(&rows, n, geo, cout)?;
        let candle = rows
            .reshape((n, h * w, cout))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n, cout, h, w))?;
        assert_eq!(bits(&planes)?, bits(&candle)?, "{n}x{c}x{h}x{w} planes");
    }
    Ok(())
}

#[test]
fn the_batched_transposition_equals_candles() -> Result<()> {
    let dev = Device::Cpu;
    // Four values a row and four rows (the vector kernels: whole groups of 16 and a rest),
    // other sides (the tiles), an empty one; float32 and bf16.
    for (n, a, b) in [
        (2, 37, 4),
        (2, 4, 37),
        (1, 16, 4),
        (3, 4, 16),
        (2, 5, 7),
        (1, 40, 33),
        (1, 0, 4),
        (2, 480, 4),
        (2, 4, 480),
        (2, 192, 16),
        (1, 9, 13),
        (2, 6, 19),
    ] {
        for dtype in [DType::F32, DType::BF16] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, a, b), &dev)?.to_dtype(dtype)?)?;
            let ours = x.as_tensor().apply_op1(im2col::SwapLast2)?;
            let candle = x.as_tensor().transpose(1, 2)?.contiguous()?;
            assert_eq!(ours.dims(), candle.dims());
            let (ours_f, candle_f) = (ours.to_dtype(DType::F32)?, candle.to_dtype(DType::F32)?);
            assert_eq!(
                bits(&ours_f)?,
                bits(&candle_f)?,
                "({n}, {a}, {b}) {dtype:?}"
            );
            // The gradient is the transposition back.
            let up = Tensor::randn(0f32, 1., (n, b, a), &dev)?.to_dtype(dtype)?;
            let g = (ours * &up)?.sum_all()?.backward()?;
            let g = g.get(&x).expect("grad").to_dtype(DType::F32)?;
            let want = up.transpose(1, 2)?.contiguous()?.to_dtype(DType::F32)?;
            assert_eq!(
                bits(&g)?,
                bits(&want)?,
                "({n}, {a}, {b}) {dtype:?} gradient"
            );
        }
    }
    Ok(())
}

/// The AVX2 transposition's blocks (8 rows by 4 columns, or 4 by 8) write exactly the
/// transposed values of the rows and columns they say they did and nothing else, and with the
/// tiles for the rest (`im2col::swap_avx2`, what `SwapLast2` runs without AVX-512) every
/// value: rows and columns of 1 to 37.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_avx2_transposition_blocks_equal_candles() {
    if !crate::avx2::available() {
        return;
    }
    for a in [1, 3, 4, 5, 8, 9, 16, 37] {
        for b in [1, 2, 4, 7, 8, 12, 33] {
            let x: Vec<f32> = (0..a * b).map(|v| v as f32 * 0.5 - 3.0).collect();
            let mut out = vec![std::mem::MaybeUninit::new(f32::NAN); a * b];
            // SAFETY: the CPU has AVX2.
            let (rows, columns) = unsafe { crate::avx2::transpose_blocks(&x, (a, b), &mut out) };
            match (a >= 8 && b >= 4, a >= 4 && b >= 8) {
                (true, _) => assert_eq!((rows, columns), (a / 8 * 8, b / 4 * 4)),
                (false, true) => assert_eq!((rows, columns), (a / 4 * 4, b / 8 * 8)),
                _ => assert_eq!((rows, columns), (0, 0)),
            }
            for j in 0..b {
                for i in 0..a {
                    // SAFETY: every value was initialised above.
                    let got = unsafe { out[j * a + i].assume_init() };
                    match i < rows && j < columns {
                        true => assert_eq!(got.to_bits(), x[i * b + j].to_bits(), "({a}, {b})"),
                        false => assert!(got.is_nan(), "({a}, {b}): ({i}, {j}) written"),
                    }
                }
            }
            let mut whole = vec![std::mem::MaybeUninit::new(f32::NAN); a * b];
            // SAFETY: the CPU has AVX2.
            unsafe { im2col::swap_avx2(&x, (a, b), &mut whole) };
            for j in 0..b {
                for i in 0..a {
                    // SAFETY: every value was initialised above.
                    let got = unsafe { whole[j * a + i].assume_init() };
                    assert_eq!(got.to_bits(), x[i * b + j].to_bits(), "({a}, {b}) all");
                }
            }
        }
    }
}

/// `conv` against the im2col path (whose backward is checked against Candle's above),
/// output and both gradients.
pub(super) fn against_im2col(
    (n, c, h, w): (usize, usize, usize, usize),
    (cout, kh, kw): (usize, usize, usize),
    s: usize,
    p: usize,
    conv: impl Fn(&Tensor, &Tensor, usize, usize) -> Result<Tensor>,
) -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, h, w), &dev)?)?;
    let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (cout, c, kh, kw), &dev)?)?;
    let ours = conv(x.as_tensor(), wt.as_tensor(), s, p)?;
    let reference = conv2d_gemm(x.as_tensor(), wt.as_tensor(), None, s, p)?;
    same_with_grads(
        ours,
        reference,
        &[("input", &x), ("weight", &wt)],
        &format!("n{n} {h}x{w} k{kh}x{kw} s{s} p{p}"),
    )
}

/// `conv2d_conv_grads` against the im2col path (Candle's own backward fails on non-square
/// inputs with stride 2).
fn check_conv_grads(
    shape: (usize, usize, usize, usize),
    kernel: (usize, usize, usize),
    s: usize,
    p: usize,
) -> Result<()> {
    against_im2col(shape, kernel, s, p, conv2d_conv_grads)
}

#[test]
fn conv_grads_match_candle_for_every_stride_and_padding() -> Result<()> {
    check_conv_grads((2, 3, 9, 7), (4, 3, 3), 1, 1)?;
    check_conv_grads((2, 3, 8, 8), (4, 3, 3), 2, 1)?;
    check_conv_grads((2, 3, 9, 9), (4, 3, 3), 2, 1)?;
    check_conv_grads((2, 4, 8, 7), (5, 1, 1), 2, 0)?;
    check_conv_grads((1, 3, 15, 14), (4, 7, 7), 2, 3)?;
    check_conv_grads((2, 2, 11, 10), (3, 5, 3), 3, 0)?;
    check_conv_grads((2, 2, 6, 6), (3, 3, 3), 1, 0)?;
    // Padding wider than the kernel falls back to Candle's op.
    check_conv_grads((1, 2, 5, 5), (2, 1, 1), 1, 1)
}

/// The small outputs' whole-batch product as one op (`linear_cpu`, the kernel's gradient
/// written untransposed) against Candle's product with the transposed kernel: output and
/// both gradients, strided, padded and pointwise, outputs of 1x1 to 4x4.
#[test]
fn the_batch_product_op_matches_candles_product() -> Result<()> {
    let op = |x: &Tensor, w: &Tensor, s, p| im2col::conv2d_gemm_f32(x, w, s, p, false);
    against_im2col((4, 8, 4, 4), (16, 3, 3), 1, 1, op)?;
    against_im2col((2, 6, 5, 4), (5, 3, 3), 2, 1, op)?;
    against_im2col((3, 7, 2, 2), (9, 1, 1), 1, 0, op)?;
    against_im2col((2, 5, 3, 3), (4, 3, 3), 1, 0, op)
}

#[test]
fn conv_grads_skip_the_gradient_of_an_input_that_needs_none() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (2, 3, 8, 8), &dev)?;
    let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (4, 3, 3, 3), &dev)?)?;
    let ours = conv2d_conv_grads(&x, wt.as_tensor(), 2, 1)?
        .sum_all()?
        .backward()?;
    let reference = conv2d_gemm(&x, wt.as_tensor(), None, 2, 1)?
        .sum_all()?
        .backward()?;
    assert!(ours.get(&x).is_none());
    let (a, b) = (
        ours.get(&wt).expect("grad"),
        reference.get(&wt).expect("grad"),
    );
    assert!((a - b)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-4);
    // Nothing to differentiate: no custom op at all.
    let plain = conv2d_conv_grads(&x, &wt.as_tensor().detach(), 1, 1)?;
    assert!(!plain.track_op());
    Ok(())
}

#[test]
fn autocast_runs_the_product_in_bf16_and_returns_f32() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (2, 8, 10, 10), &dev)?;
    let wt = Var::from_tensor(&Tensor::randn(0f32, 0.1, (16, 8, 3, 3), &dev)?)?;
    let b = Var::from_tensor(&Tensor::randn(0f32, 1., 16, &dev)?)?;
    let conv = Conv2d::new(
        wt.as_tensor().clone(),
        Some(b.as_tensor().clone()),
        Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        },
    );
    let full = conv.forward(&x)?;
    let half = {
        let _bf16 = crate::autocast::enable(candle_core::DType::BF16)?;
        conv.forward(&x)?
    };
    assert_eq!(half.dtype(), candle_core::DType::F32);
    assert_eq!(half.dims(), full.dims());
    let err = (&half - &full)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = full.abs()?.max_all()?.to_scalar::<f32>()?;
    if crate::autocast::cpu_bf16_kernel_active() {
        // bf16 keeps 8 bits of mantissa: about 0.4% per operand, less after summation.
        assert!(err > 0.0 && err < 0.02 * scale, "err {err} scale {scale}");
    } else {
        // A CPU without AVX512-BF16 runs bf16 autocast's products in float32
        // (`autocast::cpu_bf16_kernel`): float32's output, up to the order of its sums.
        assert!(
            err <= 1e-5 * scale,
            "err {err} scale {scale}: float32 products expected"
        );
    }
    let grads = {
        let _bf16 = crate::autocast::enable(candle_core::DType::BF16)?;
        conv.forward(&x)?.sqr()?.sum_all()?.backward()?
    };
    let gw = grads.get(&wt).expect("weight grad");
    assert_eq!(gw.dtype(), candle_core::DType::F32);
    let exact = full.sqr()?.sum_all()?.backward()?;
    let gw_exact = exact.get(&wt).expect("weight grad");
    let rel = ((gw - gw_exact)?.abs()?.max_all()?.to_scalar::<f32>()?)
        / gw_exact.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(rel < 0.03, "bf16 weight gradient off by {rel} relative");
    Ok(())
}

/// bf16 autocast on the CPU, in the AVX512-BF16 kernel, against float32 products of rounded
/// operands: with an output gradient that is exact in bf16 the outputs differ only in the order
/// of the float32 sums, the gradients by one rounding to bf16, for every product layout
/// (stride 1, strided, 1x1 strided and not, batches above and below the thread count).
#[test]
fn the_bf16_kernel_matches_float32_products_of_rounded_operands() -> Result<()> {
    if !crate::bf16_gemm::available() {
        eprintln!("skipped: this CPU lacks AVX512-BF16");
        return Ok(());
    }
    // The built-in kernel (oneDNN's also rounds the output to bf16; tested on its own).
    #[cfg(feature = "onednn")]
    onednn::set_enabled(false);
    let dev = Device::Cpu;
    for n in [1, 5] {
        for (cin, cout, k, stride, padding, h, w) in [
            (8, 16, 3, 1, 1, 12, 13),
            (5, 17, 3, 2, 1, 12, 13),
            (7, 16, 1, 2, 0, 12, 13),
            (24, 16, 1, 1, 0, 12, 13),
            (3, 16, 7, 2, 3, 12, 13),
            // Stride 1 without padding: the input gradient by `col2im` (LeNet-5's second).
            (6, 16, 5, 1, 0, 14, 14),
            // Outputs under 4x4: one product over the batch's columns.
            (16, 32, 3, 1, 1, 2, 2),
            (16, 24, 3, 2, 1, 4, 3),
            (16, 20, 1, 1, 0, 3, 2),
            (8, 16, 3, 1, 1, 1, 1),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, cin, h, w), &dev)?)?;
            let wt = Var::from_tensor(&Tensor::randn(0f32, 0.2, (cout, cin, k, k), &dev)?)?;
            let cfg = Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            let conv = Conv2d::new(wt.as_tensor().clone(), None, cfg);
            let up = Tensor::randn(0f32, 1., conv.forward(x.as_tensor())?.dims(), &dev)?;
            let up = up
                .to_dtype(candle_core::DType::BF16)?
                .to_dtype(candle_core::DType::F32)?;
            let kernel = {
                let _bf16 = crate::autocast::enable(candle_core::DType::BF16)?;
                output_and_grads(&x, &wt, &up, || conv.forward(x.as_tensor()))?
            };
            // Float32 products of the rounded input and kernel; their gradients come back
            // rounded to bf16 (the cast's backward), the kernel's in float32: one bf16
            // rounding apart.
            let round = |t: &Tensor| {
                t.to_dtype(candle_core::DType::BF16)?
                    .to_dtype(candle_core::DType::F32)
            };
            let rounded = output_and_grads(&x, &wt, &up, || {
                conv2d_gemm(
                    &round(x.as_tensor())?,
                    &round(wt.as_tensor())?,
                    None,
                    stride,
                    padding,
                )
            })?;
            let what = format!("n {n} k {k} s {stride} {h}x{w}");
            assert_close(&kernel, &rounded, [2e-5, 4e-3, 4e-3], &what)?;
        }
    }
    Ok(())
}

/// The output of `conv` and the gradients of `sum(output * up)` for `x` and `wt`.
fn output_and_grads(
    x: &Var,
    wt: &Var,
    up: &Tensor,
    conv: impl Fn() -> Result<Tensor>,
) -> Result<[Tensor; 3]> {
    let y = conv()?;
    let g = (&y * up)?.sum_all()?.backward()?;
    let gx = g.get(x).expect("input grad").clone();
    let gw = g.get(wt).expect("weight grad").clone();
    Ok([y, gx, gw])
}

/// Asserts that output, input gradient and weight gradient of `ours` are each within `tol`
/// (relative to the largest magnitude) of `theirs`.
fn assert_close(ours: &[Tensor; 3], theirs: &[Tensor; 3], tol: [f32; 3], what: &str) -> Result<()> {
    for (((a, b), tol), name) in
        ours.iter()
            .zip(theirs)
            .zip(tol)
            .zip(["output", "input grad", "weight grad"])
    {
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            diff <= tol * scale,
            "{what}: {name} differs by {diff} (scale {scale})"
        );
    }
    Ok(())
}

/// Under bf16 autocast on a CPU with AVX512-BF16, a convolution with fewer than 16 output
/// channels runs in float32: the same values as without autocast.
#[test]
fn narrow_convolutions_stay_float32_under_bf16() -> Result<()> {
    if !crate::autocast::cpu_bf16_kernel_active() {
        eprintln!("skipped: this CPU lacks AVX512-BF16");
        return Ok(());
    }
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (2, 3, 12, 12), &dev)?;
    let conv = Conv2d::new(
        Tensor::randn(0f32, 0.1, (6, 3, 5, 5), &dev)?,
        None,
        Conv2dConfig::default(),
    );
    // The direct first-layer convolution and the image-by-image path.
    for direct in [true, false] {
        let previous = super::set_direct_first_layer(direct);
        let full = conv.forward(&x)?;
        let half = {
            let _bf16 = crate::autocast::enable(candle_core::DType::BF16)?;
            conv.forward(&x)?
        };
        super::set_direct_first_layer(previous);
        let diff = (&half - &full)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "direct {direct}");
    }
    Ok(())
}

/// Without the AVX512-BF16 kernel (switched off here, as on a CPU without it), bf16 autocast
/// runs convolutions and linear layers in float32: the same values as without autocast.
#[test]
fn without_the_bf16_kernel_autocast_runs_in_float32() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (2, 16, 8, 8), &dev)?;
    let conv = Conv2d::new(
        Tensor::randn(0f32, 0.1, (16, 16, 3, 3), &dev)?,
        Some(Tensor::randn(0f32, 0.1, 16, &dev)?),
        Conv2dConfig {
            padding: 1,
            ..Default::default()
        },
    );
    let linear = crate::Linear::new(
        Tensor::randn(0f32, 0.1, (10, 1024), &dev)?,
        Some(Tensor::randn(0f32, 0.1, 10, &dev)?),
    );
    let run = || -> Result<(Tensor, Tensor)> {
        let y = conv.forward(&x)?;
        let z = linear.forward(&y.flatten_from(1)?)?;
        Ok((y, z))
    };
    let full = run()?;
    let previous = crate::autocast::cpu_bf16_kernel(false);
    let half = {
        let _bf16 = crate::autocast::enable(candle_core::DType::BF16)?;
        run()
    };
    crate::autocast::cpu_bf16_kernel(previous);
    let half = half?;
    for (a, b) in [(&half.0, &full.0), (&half.1, &full.1)] {
        assert_eq!(
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?
        );
    }
    Ok(())
}

#[test]
fn kernel_larger_than_padded_input_is_an_error() {
    let x = Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((1, 1, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(conv2d_gemm(&x, &w, None, 1, 0).is_err());
}

#[test]
fn row_blocks_cover_the_rows_in_even_blocks_of_enough_positions() -> Result<()> {
    for (oh, ow) in [
        (1, 1),
        (7, 7),
        (14, 14),
        (20, 20),
        (28, 28),
        (32, 32),
        (56, 56),
        (9, 300),
    ] {
        for k in [1, 27, 144, 576, 1152, 4608, 100_000] {
            let geo = geometry::Geometry::new(1, oh, ow, 1, 1, 1, 0)?;
            let blocks: Vec<_> = cpu::row_blocks(&geo, k).collect();
            let case = format!("{oh}x{ow} k {k}: {blocks:?}");
            // Contiguous, from 0 to oh, none empty.
            assert_eq!(blocks.first().map(|b| b.start), Some(0), "{case}");
            assert_eq!(blocks.last().map(|b| b.end), Some(oh), "{case}");
            assert!(blocks.windows(2).all(|b| b[0].end == b[1].start), "{case}");
            let (short, long) = blocks.iter().fold((usize::MAX, 0), |(s, l), b| {
                (s.min(b.len()), l.max(b.len()))
            });
            assert!(short >= 1 && long - short <= 1, "{case}");
            // At least MIN_BLOCK_POSITIONS positions, or the whole image in one block.
            assert!(
                short * ow >= cpu::MIN_BLOCK_POSITIONS || blocks.len() == 1,
                "{case}"
            );
            // The scratch sized for the longest.
            assert_eq!(cpu::block_len(&geo, k), long * ow, "{case}");
        }
    }
    Ok(())
}

/// [`conv2d_cpu_f32`]: output and both gradients against the whole-batch im2col path.
fn check_per_image(
    shape: (usize, usize, usize, usize),
    kernel: (usize, usize, usize),
    s: usize,
    p: usize,
) -> Result<()> {
    against_im2col(shape, kernel, s, p, conv2d_cpu_f32)
}

#[test]
fn matches_the_im2col_path_forward_and_backward() -> Result<()> {
    // Batches above and below the thread count, strides 1 to 3, paddings 0 to 3, square
    // and non-square kernels and inputs, padding as wide as the kernel.
    for n in [1, 5] {
        check_per_image((n, 3, 9, 7), (4, 3, 3), 1, 1)?;
        check_per_image((n, 3, 8, 8), (4, 3, 3), 2, 1)?;
        check_per_image((n, 2, 11, 10), (3, 5, 3), 3, 0)?;
        check_per_image((n, 3, 15, 14), (4, 7, 7), 2, 3)?;
        check_per_image((n, 4, 8, 7), (5, 1, 1), 2, 0)?;
        // 1x1, stride 1, no padding: the image is read as its own columns, in one block of
        // rows and (256 channels of 24 columns) in two.
        check_per_image((n, 4, 8, 7), (5, 1, 1), 1, 0)?;
        check_per_image((n, 256, 24, 24), (6, 1, 1), 1, 0)?;
        check_per_image((n, 2, 6, 6), (3, 3, 3), 1, 0)?;
        check_per_image((n, 2, 5, 5), (2, 1, 1), 1, 1)?;
        check_per_image((n, 2, 6, 5), (3, 3, 2), 1, 1)?;
        check_per_image((n, 2, 4, 4), (3, 3, 3), 1, 2)?;
        // Stride 1 with padding under "same": the input gradient by `col2im` (LeNet-5's 6->16
        // 5x5 on 14x14, and a 5x5 with padding 1).
        check_per_image((n, 6, 14, 14), (16, 5, 5), 1, 0)?;
        check_per_image((n, 3, 9, 8), (4, 5, 5), 1, 1)?;
        // Several blocks of rows through `im2col` (32x32 outputs, 144 and 200 values a
        // position): strided, its input gradient by `col2im`; and 5x5 "same", its input
        // gradient the full convolution with the flipped kernel, in blocks too.
        for ((c, size, kernel, stride, padding), k) in
            [((16, 64, 3, 2, 1), 144), ((8, 32, 5, 1, 2), 200)]
        {
            let geo = geometry::Geometry::new(c, size, size, kernel, kernel, stride, padding)?;
            assert!(cpu::row_blocks(&geo, k).count() > 1);
            check_per_image((n, c, size, size), (8, kernel, kernel), stride, padding)?;
        }
    }
    Ok(())
}

#[test]
fn the_weight_gradient_repeats_bit_for_bit() -> Result<()> {
    let dev = Device::Cpu;
    // im2col's shares (3 channels), then Winograd's (16 channels), under f32 and bf16.
    for (c, o) in [(3, 4), (16, 16)] {
        for bf16 in [false, true] {
            let x = Tensor::randn(0f32, 1., (37, c, 8, 8), &dev)?;
            let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (o, c, 3, 3), &dev)?)?;
            let g = Tensor::randn(0f32, 1., (37, o, 8, 8), &dev)?;
            let run = || -> Result<Vec<f32>> {
                let grads =
                    (cpu::conv2d_cpu(&x, wt.as_tensor(), bias::After::Nothing, 1, 1, bf16)? * &g)?
                        .sum_all()?
                        .backward()?;
                grads
                    .get(&wt)
                    .expect("weight gradient")
                    .flatten_all()?
                    .to_vec1()
            };
            let first = run()?;
            for _ in 0..8 {
                assert_eq!(run()?, first, "c{c} bf16 {bf16}");
            }
        }
    }
    Ok(())
}

/// The threads keep their buffers (columns, packed operands) from one convolution to the
/// next: a convolution run after others of other shapes, whose values are left in those
/// buffers, gives the same bits as before them (output and both gradients; strided, padded,
/// pointwise, the batch-of-images weight gradient, one image at a time on two threads, in
/// float32 and bf16), on a pool of 1 and of 2 threads.
#[test]
fn kept_buffers_leave_no_trace_between_convolutions() -> Result<()> {
    let dev = Device::Cpu;
    // (n, c, size, cout, k, stride, padding): 3x3 "same", strided with the input gradient by
    // col2im, 1x1, small outputs whose kernel gradient gathers images side by side.
    let shapes = [
        (5, 8, 20, 12, 3, 1, 1),
        (6, 12, 17, 20, 3, 2, 1),
        (4, 32, 9, 16, 1, 1, 0),
        (9, 16, 6, 24, 3, 1, 0),
        (3, 6, 33, 8, 5, 2, 2),
        (1, 8, 20, 12, 3, 2, 1),
    ];
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        for bf16 in [false, true] {
            let cases: Vec<(Var, Var, Tensor, usize, usize)> = shapes
                .iter()
                .map(|&(n, c, size, cout, k, s, p)| {
                    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, size, size), &dev)?)?;
                    let wt = Var::from_tensor(&Tensor::randn(0f32, 0.2, (cout, c, k, k), &dev)?)?;
                    let oh = (size + 2 * p - k) / s + 1;
                    let up = Tensor::randn(0f32, 1., (n, cout, oh, oh), &dev)?;
                    Ok((x, wt, up, s, p))
                })
                .collect::<Result<_>>()?;
            let run = |(x, wt, up, s, p): &(Var, Var, Tensor, usize, usize)| {
                pool.install(|| {
                    let conv = || {
                        cpu::conv2d_cpu(
                            x.as_tensor(),
                            wt.as_tensor(),
                            bias::After::Nothing,
                            *s,
                            *p,
                            bf16,
                        )
                    };
                    let got = output_and_grads(x, wt, up, conv)?;
                    got.iter().map(bits).collect::<Result<Vec<_>>>()
                })
            };
            let first: Vec<_> = cases.iter().map(run).collect::<Result<_>>()?;
            // Again in the reverse order: each after the others left their values.
            for (i, case) in cases.iter().enumerate().rev() {
                assert_eq!(
                    run(case)?,
                    first[i],
                    "shape {:?} bf16 {bf16} threads {threads}",
                    shapes[i]
                );
            }
        }
    }
    Ok(())
}

/// Winograd's forward and input gradient split the batch over the pool's threads, and each
/// image's output is the same whatever share it is in: pools of 1 to 3 threads (shares of 37,
/// 19 and 13 images; blocks of tiles across images and within one) give the same bits, in
/// float32 and bf16.
#[test]
fn winograd_gives_the_same_bits_on_any_pool() -> Result<()> {
    let dev = Device::Cpu;
    for (n, c, size, cout) in [(37, 16, 8, 16), (37, 32, 12, 24), (37, 64, 4, 64)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, size, size), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 0.1, (cout, c, 3, 3), &dev)?)?;
        let up = Tensor::randn(0f32, 1., (n, cout, size, size), &dev)?;
        let geo = geometry::Geometry::new(c, size, size, 3, 3, 1, 1)?;
        assert!(winograd::applies(&geo, cout));
        for bf16 in [false, true] {
            let run = |threads: usize| -> Result<Vec<Vec<u32>>> {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("a pool");
                pool.install(|| {
                    let (xs, ws) = (x.as_tensor(), wt.as_tensor());
                    let got = output_and_grads(&x, &wt, &up, || {
                        cpu::conv2d_cpu(xs, ws, bias::After::Nothing, 1, 1, bf16)
                    })?;
                    // The output and the input gradient (the kernel gradient's shares follow
                    // the pool: `the_weight_gradient_repeats_bit_for_bit`).
                    got[..2].iter().map(bits).collect()
                })
            };
            let one = run(1)?;
            for threads in [2, 3] {
                assert!(
                    run(threads)? == one,
                    "n{n} c{c} {size}x{size} bf16 {bf16}: {threads} threads"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn an_untracked_input_gets_no_gradient() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (2, 3, 8, 8), &dev)?;
    let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (4, 3, 3, 3), &dev)?)?;
    let grads = conv2d_cpu_f32(&x, wt.as_tensor(), 1, 1)?
        .sum_all()?
        .backward()?;
    assert!(grads.get(&x).is_none());
    assert!(grads.get(wt.as_tensor()).is_some());
    Ok(())
}

#[test]
fn wrong_channels_and_dtype_are_errors() -> Result<()> {
    let dev = Device::Cpu;
    let wt = Tensor::zeros((4, 3, 3, 3), candle_core::DType::F32, &dev)?;
    let x = Tensor::zeros((1, 2, 8, 8), candle_core::DType::F32, &dev)?;
    let err = conv2d_cpu_f32(&x, &wt, 1, 1).unwrap_err().to_string();
    assert!(err.contains("2 channels"), "{err}");
    let x = Tensor::zeros((1, 3, 8, 8), candle_core::DType::F64, &dev)?;
    let err = conv2d_cpu_f32(&x, &wt.to_dtype(candle_core::DType::F64)?, 1, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("f32"), "{err}");
    Ok(())
}

/// F(2x2, 3x3) (stride-1 3x3 convolutions with 16 channels and more, forward and input
/// gradient) against the im2col path: odd and even sizes, paddings 0 to 2, an image smaller
/// than a tile, batches above and below the thread count. The error is float32 rounding of the
/// transforms' sums: below 1e-5 of the scale (about 1e-6 measured).
#[test]
fn winograd_matches_the_direct_convolution() -> Result<()> {
    let dev = Device::Cpu;
    for (n, c, h, w, cout, p) in [
        (1, 16, 9, 7, 16, 1),
        (5, 16, 8, 8, 24, 1),
        (2, 32, 5, 6, 16, 0),
        (3, 16, 7, 9, 17, 2),
        (2, 16, 1, 1, 16, 1),
        (3, 20, 4, 4, 16, 1),
    ] {
        let geo = geometry::Geometry::new(c, h, w, 3, 3, 1, p)?;
        assert!(winograd::applies(&geo, cout));
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, h, w), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 0.1, (cout, c, 3, 3), &dev)?)?;
        let (xs, ws) = (x.as_tensor(), wt.as_tensor());
        let up = Tensor::randn(0f32, 1., conv2d_cpu_f32(xs, ws, 1, p)?.shape(), &dev)?;
        let ours = output_and_grads(&x, &wt, &up, || conv2d_cpu_f32(xs, ws, 1, p))?;
        let theirs = output_and_grads(&x, &wt, &up, || conv2d_gemm(xs, ws, None, 1, p))?;
        let what = format!("n{n} c{c} {h}x{w} o{cout} p{p}");
        assert_close(&ours, &theirs, [1e-5; 3], &what)?;
    }
    Ok(())
}

/// bf16 autocast on a CPU with AVX512-BF16 runs F(2x2, 3x3) with bf16 products of the
/// transformed operands: output and gradients stay within bf16's precision of the float32
/// convolution (measured 3e-3 to 6e-3 of the scale, as the direct bf16 products).
#[test]
fn winograd_in_bf16_stays_within_bf16_precision() -> Result<()> {
    if !crate::autocast::cpu_bf16_kernel_active() {
        eprintln!("skipped: this CPU lacks AVX512-BF16");
        return Ok(());
    }
    let dev = Device::Cpu;
    for (n, c, h, w, cout) in [(1, 16, 9, 7, 16), (4, 32, 8, 8, 24)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, h, w), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 0.1, (cout, c, 3, 3), &dev)?)?;
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = Conv2d::new(wt.as_tensor().clone(), None, cfg);
        let up = Tensor::randn(0f32, 1., (n, cout, h, w), &dev)?;
        let half = {
            let _bf16 = crate::autocast::enable(candle_core::DType::BF16)?;
            output_and_grads(&x, &wt, &up, || conv.forward(x.as_tensor()))?
        };
        let full = output_and_grads(&x, &wt, &up, || {
            conv2d_gemm(x.as_tensor(), wt.as_tensor(), None, 1, 1)
        })?;
        assert_close(&half, &full, [2e-2; 3], &format!("bf16 n{n} c{c}"))?;
        // bf16, not float32, was used.
        assert!(
            (&half[0] - &full[0])?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?
                > 0.0
        );
    }
    Ok(())
}

/// oneDNN's convolutions (feature `onednn`), whatever the routing, against the built-in
/// im2col convolution: float32 within 1e-5 of the scale for its direct convolution, 2e-5 for
/// its Winograd F(4x4, 3x3) when turned on (3x3, stride 1, 16 or more channels; measured 0.7e-6
/// to 1.7e-6); bf16 within bf16's precision; the same bits when repeated.
#[cfg(feature = "onednn")]
#[test]
fn onednn_matches_the_built_in_convolution() -> Result<()> {
    let dev = Device::Cpu;
    for (n, c, h, w, cout, k, s, p) in [
        (2, 16, 8, 8, 16, 3, 1, 1),
        (3, 32, 9, 7, 48, 3, 1, 1),
        (2, 64, 4, 4, 64, 3, 1, 1),
        (2, 16, 1, 1, 32, 3, 1, 1),
        (2, 16, 8, 8, 32, 3, 2, 1),
        (2, 16, 8, 8, 32, 1, 2, 0),
        (1, 8, 7, 9, 16, 1, 2, 0),
        (2, 5, 10, 6, 16, 1, 3, 0),
        (1, 4, 9, 9, 16, 2, 2, 0),
        (3, 6, 14, 14, 16, 5, 1, 0),
        (2, 4, 11, 10, 5, 3, 1, 2),
        (1, 1, 8, 8, 6, 5, 1, 2),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, h, w), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 0.1, (cout, c, k, k), &dev)?)?;
        let (xs, ws) = (x.as_tensor(), wt.as_tensor());
        let what = format!("n{n} c{c} {h}x{w} o{cout} k{k} s{s} p{p}");
        let up = Tensor::randn(0f32, 1., conv2d_gemm(xs, ws, None, s, p)?.shape(), &dev)?;
        let built_in = output_and_grads(&x, &wt, &up, || conv2d_gemm(xs, ws, None, s, p))?;
        let dnnl = |bf16: bool| {
            output_and_grads(&x, &wt, &up, || {
                Ok(onednn::conv2d_any_shape(xs, ws, s, p, bf16)?.expect("a oneDNN kernel"))
            })
        };
        let direct = dnnl(false)?;
        assert_close(&direct, &built_in, [1e-5; 3], &format!("direct {what}"))?;
        onednn::set_winograd(true);
        let winograd = dnnl(false)?;
        let again = dnnl(false)?;
        onednn::set_winograd(false);
        if std::env::var_os("CNN_ONEDNN_ERRORS").is_some() {
            for (a, b) in winograd.iter().zip(&built_in) {
                let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
                eprint!(" {:.1e}", d / scale);
            }
            eprintln!("  {what}");
        }
        assert_close(&winograd, &built_in, [2e-5; 3], &format!("winograd {what}"))?;
        for (a, b) in winograd.iter().zip(&again) {
            let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(d, 0.0, "{what}: repeat differs");
        }
        if crate::autocast::cpu_bf16_kernel_active() {
            assert_close(&dnnl(true)?, &built_in, [2e-2; 3], &format!("bf16 {what}"))?;
        }
    }
    Ok(())
}

/// In bf16, 3x3 convolutions to outputs of 4x4 and smaller from 192 channels and more (in
/// float32, from 128 with stride 1 and 256 with a stride) run forward and input gradient on oneDNN and the kernel gradient
/// on the built-in products (Winograd's for stride 1): the kernel gradient has the bits of the
/// built-in one, with or without an input gradient wanted, and the input gradient is oneDNN's
/// (within bf16's precision of float32; float32 within 1e-5).
#[cfg(feature = "onednn")]
#[test]
fn onednn_leaves_the_kernel_gradient_of_deep_small_outputs_to_the_built_in() -> Result<()> {
    let dev = Device::Cpu;
    let bf16_cases = [(true, 256, 4, 1), (true, 256, 8, 2), (true, 192, 2, 1)];
    let f32_cases = [(false, 128, 4, 1), (false, 192, 2, 1), (false, 256, 8, 2)];
    for (bf16, c, size, stride) in bf16_cases.into_iter().chain(f32_cases) {
        if bf16 && !crate::autocast::cpu_bf16_kernel_active() {
            eprintln!("bf16 cases skipped: this CPU lacks AVX512-BF16");
            continue;
        }
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, c, size, size), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 0.05, (32, c, 3, 3), &dev)?)?;
        let (xs, ws) = (x.as_tensor(), wt.as_tensor());
        let (geo, cout) = geometry::Geometry::of_conv(xs, ws, stride, 1)?;
        assert!(onednn::builtin_weight_grad(&geo, bf16));
        let up = Tensor::randn(0f32, 1., (3, 32, geo.oh, geo.ow), &dev)?;
        let [_, gx, gw] = output_and_grads(&x, &wt, &up, || {
            Ok(onednn::conv2d_any_shape(xs, ws, stride, 1, bf16)?.expect("a oneDNN kernel"))
        })?;
        let what = format!("{size}x{size} stride {stride} bf16 {bf16}");
        let built_in = bits(&cpu::grad((geo, cout, bf16), false, xs, &up)?)?;
        assert!(bits(&gw)? == built_in, "{what}: not the built-in's");
        // The input untracked (a frozen network's input): the same kernel gradient alone.
        let y = onednn::conv2d_any_shape(&xs.detach(), ws, stride, 1, bf16)?.expect("kernel");
        let g = (&y * &up)?.sum_all()?.backward()?;
        let alone = bits(g.get(ws).expect("kernel gradient"))?;
        assert!(alone == built_in, "{what}: alone");
        let exact = output_and_grads(&x, &wt, &up, || conv2d_gemm(xs, ws, None, stride, 1))?;
        let tolerance = if bf16 { 2e-2 } else { 1e-5 };
        for (got, want, which) in [(&gx, &exact[1], "input"), (&gw, &exact[2], "kernel")] {
            let d = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                d <= tolerance * scale,
                "{what}: {which} gradient {d} (scale {scale})"
            );
        }
    }
    // From fewer channels, or to larger outputs (in float32, also with a stride), oneDNN's
    // kernel gradient stays.
    for (bf16, c, size, stride) in [(true, 256, 8, 1), (true, 128, 4, 1), (false, 64, 4, 1)]
        .into_iter()
        .chain([(false, 256, 8, 1), (false, 128, 8, 2)])
    {
        let geo = geometry::Geometry::new(c, size, size, 3, 3, stride, 1)?;
        assert!(
            !onednn::builtin_weight_grad(&geo, bf16),
            "{c} {size}x{size} stride {stride} bf16 {bf16}"
        );
    }
    Ok(())
}

/// With one argument not tracked (a frozen kernel, or the input of a first layer), oneDNN's
/// backward gives only the other gradient, equal to the one computed with both.
#[cfg(feature = "onednn")]
#[test]
fn onednn_gives_one_gradient_when_one_is_wanted() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 8, 8, 8), &dev)?)?;
    let wt = Var::from_tensor(&Tensor::randn(0f32, 0.1, (16, 8, 1, 1), &dev)?)?;
    let up = Tensor::randn(0f32, 1., (2, 16, 4, 4), &dev)?;
    let both = output_and_grads(&x, &wt, &up, || {
        Ok(onednn::conv2d_any_shape(x.as_tensor(), wt.as_tensor(), 2, 0, false)?.expect("kernel"))
    })?;
    let frozen = wt.as_tensor().detach();
    let y = onednn::conv2d_any_shape(x.as_tensor(), &frozen, 2, 0, false)?.expect("kernel");
    let g = (&y * &up)?.sum_all()?.backward()?;
    assert!(g.get(&frozen).is_none());
    let d = (g.get(&x).expect("input grad") - &both[1])?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert_eq!(d, 0.0);
    let input = x.as_tensor().detach();
    let y = onednn::conv2d_any_shape(&input, wt.as_tensor(), 2, 0, false)?.expect("kernel");
    let g = (&y * &up)?.sum_all()?.backward()?;
    assert!(g.get(&input).is_none());
    let d = (g.get(&wt).expect("kernel grad") - &both[2])?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert_eq!(d, 0.0);
    Ok(())
}

/// A batch split over rayon pools of 1 to 5 threads (parts of 7 images: 7, 4+3, 3+2+2, 2+2+2+1,
/// 2+2+1+1+1; and one image on all the pool's OpenMP threads): the output and both gradients
/// agree with the built-in convolution, and a pool's run repeats bit for bit. An empty batch
/// gives an empty output and gradients.
#[cfg(feature = "onednn")]
#[test]
fn onednn_splits_the_batch_over_the_pool() -> Result<()> {
    let dev = Device::Cpu;
    for n in [7, 1] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, 16, 6, 6), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 0.1, (32, 16, 3, 3), &dev)?)?;
        let (xs, ws) = (x.as_tensor(), wt.as_tensor());
        let up = Tensor::randn(0f32, 1., (n, 32, 3, 3), &dev)?;
        let built_in = output_and_grads(&x, &wt, &up, || conv2d_gemm(xs, ws, None, 2, 1))?;
        for threads in 1..=5 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a pool");
            let run = || {
                pool.install(|| {
                    output_and_grads(&x, &wt, &up, || {
                        Ok(onednn::conv2d_any_shape(xs, ws, 2, 1, false)?.expect("a kernel"))
                    })
                })
            };
            let (first, again) = (run()?, run()?);
            let what = format!("n{n}, {threads} threads");
            let empty = Var::from_tensor(&Tensor::zeros((0, 16, 6, 6), DType::F32, &dev)?)?;
            let y =
                pool.install(|| onednn::conv2d_any_shape(empty.as_tensor(), ws, 2, 1, false))?;
            let y = y.expect("oneDNN takes an empty batch");
            assert_eq!(y.dims(), [0, 32, 3, 3], "{what}");
            let g = y.sum_all()?.backward()?;
            assert_eq!(g.get(&empty).expect("a gradient").dims(), [0, 16, 6, 6]);
            assert_close(&first, &built_in, [1e-5; 3], &what)?;
            for (a, b) in first.iter().zip(&again) {
                let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert_eq!(d, 0.0, "{what}: repeat differs");
            }
        }
    }
    Ok(())
}

/// A kernel reordered once for all parts of a batch (each pool thread a range of its output
/// channels) gives the bits of each part reordering it itself: the output and both gradients,
/// float32 and bf16, in the layouts of 3x3, 1x1 and strided kernels (of 2^19 values or more),
/// on pools of 2 and 4 threads (equal parts: shared, once for the forward and once for the
/// input gradient) and 3 (unequal parts: each part its own). Input channels that the layout
/// pads to its blocks (200 in AVX-512's blocks of 16) are not shared, and run.
#[cfg(feature = "onednn")]
#[test]
fn onednn_shares_a_kernel_reordered_once() -> Result<()> {
    let dev = Device::Cpu;
    for (c, size, cout, k, s, p) in [
        (256, 4, 512, 3, 1, 1),
        (256, 6, 512, 3, 2, 1),
        (512, 2, 1024, 1, 1, 0),
        (200, 4, 512, 3, 1, 1),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (8, c, size, size), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 0.1, (cout, c, k, k), &dev)?)?;
        let (xs, ws) = (x.as_tensor(), wt.as_tensor());
        let up = Tensor::randn(0f32, 1., conv2d_gemm(xs, ws, None, s, p)?.shape(), &dev)?;
        for (threads, bf16) in [(2, false), (2, true), (3, true), (4, false)] {
            if bf16 && !crate::autocast::cpu_bf16_kernel_active() {
                continue;
            }
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a pool");
            // The outputs and gradients, and the kernels shared on the way.
            let run = |share: bool| {
                pool.install(|| {
                    let was = onednn::share_kernels(share);
                    let before = onednn::SHARED_KERNELS_MADE.with(std::cell::Cell::get);
                    let out = output_and_grads(&x, &wt, &up, || {
                        Ok(onednn::conv2d_any_shape(xs, ws, s, p, bf16)?.expect("a kernel"))
                    });
                    onednn::share_kernels(was);
                    out.map(|o| {
                        (
                            o,
                            onednn::SHARED_KERNELS_MADE.with(std::cell::Cell::get) - before,
                        )
                    })
                })
            };
            let what = format!("c{c} {size}x{size} o{cout} k{k} {threads} threads bf16 {bf16}");
            let ((shared, made), (own, none)) = (run(true)?, run(false)?);
            // The layout's channel blocks: 16 with AVX-512 (200 channels then padded), 8 with
            // AVX2 alone (200 not).
            #[cfg(target_arch = "x86_64")]
            let block = if crate::avx512::available() { 16 } else { 8 };
            #[cfg(not(target_arch = "x86_64"))]
            let block = 8;
            let want = if threads == 3 || c % block != 0 { 0 } else { 2 };
            assert_eq!((made, none), (want, 0), "{what}: kernels shared");
            for (a, b) in shared.iter().zip(&own) {
                assert!(bits(a)? == bits(b)?, "{what}");
            }
        }
    }
    Ok(())
}

/// Through [`Conv2d`], the routing: the built-in Winograd keeps 3x3 stride-1 convolutions on
/// 8x8 outputs (same bits as without oneDNN); a strided one goes to oneDNN (within 1e-5).
#[cfg(feature = "onednn")]
#[test]
fn conv2d_routes_to_onednn_where_it_is_faster() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (2, 16, 8, 8), &dev)?;
    let w = Tensor::randn(0f32, 0.1, (16, 16, 3, 3), &dev)?;
    for (stride, routed) in [(1, false), (2, true)] {
        let cfg = Conv2dConfig {
            padding: 1,
            stride,
            ..Default::default()
        };
        let conv = Conv2d::new(w.clone(), None, cfg);
        let with = conv.forward(&x)?;
        onednn::set_enabled(false);
        let without = conv.forward(&x)?;
        onednn::set_enabled(true);
        let d = (&with - &without)?.abs()?.max_all()?.to_scalar::<f32>()?;
        match routed {
            false => assert_eq!(d, 0.0, "stride {stride}"),
            true => assert!(d < 1e-5, "stride {stride}: {d}"),
        }
    }
    Ok(())
}

/// The kernels oneDNN picks here: direct by default, Winograd with `set_winograd` (oneDNN 2.6
/// has float32 Winograd on AVX-512 only).
#[cfg(feature = "onednn")]
#[test]
fn onednn_names_its_kernels() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 64, 8, 8), DType::F32, &dev)?;
    let w = Tensor::zeros((64, 64, 3, 3), DType::F32, &dev)?;
    let direct = onednn::implementation(&x, &w, 1, 1, false)?;
    onednn::set_winograd(true);
    let winograd = onednn::implementation(&x, &w, 1, 1, false)?;
    onednn::set_winograd(false);
    eprintln!("oneDNN float32 3x3: {direct}; with set_winograd: {winograd}");
    assert!(!direct.contains("wino"), "{direct}");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        assert!(winograd.contains("wino"), "{winograd}");
    }
    Ok(())
}

/// Grouped, dilated and strided convolutions (Candle's `conv2d` and its backward) on
/// non-square inputs whose rows and columns past the last window differ: the gradients exist
/// and are the adjoints of the convolution, <conv(v), up> = <v, dL/dx> for the input and
/// likewise for the kernel.
#[test]
fn grouped_dilated_strided_convolutions_of_non_square_inputs_have_gradients() -> Result<()> {
    let dev = Device::Cpu;
    let dot = |a: &Tensor, b: &Tensor| -> Result<f32> { (a * b)?.sum_all()?.to_scalar::<f32>() };
    for (h, w, stride, dilation, groups) in [
        (14, 13, 2, 2, 2),
        (13, 14, 2, 2, 2),
        (15, 12, 3, 2, 1),
        (9, 10, 2, 1, 4),
        (10, 9, 2, 3, 1),
    ] {
        let cfg = Conv2dConfig {
            padding: 1,
            stride,
            dilation,
            groups,
            ..Default::default()
        };
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 4, h, w), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (8, 4 / groups, 3, 3), &dev)?)?;
        let conv = Conv2d::new(wt.as_tensor().clone(), None, cfg);
        let y = conv.forward(x.as_tensor())?;
        let up = Tensor::randn(0f32, 1., y.shape(), &dev)?;
        let grads = (&y * &up)?.sum_all()?.backward()?;
        let what = format!("{h}x{w} stride {stride} dilation {dilation} groups {groups}");
        let gx = grads.get(&x).expect("input grad");
        let gw = grads.get(&wt).expect("kernel grad");
        assert_eq!(gx.dims(), x.dims(), "{what}");
        assert_eq!(gw.dims(), wt.dims(), "{what}");
        let v = Tensor::randn(0f32, 1., x.shape(), &dev)?;
        let (a, b) = (dot(&conv.forward(&v)?, &up)?, dot(&v, gx)?);
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1.0),
            "{what}: input {a} vs {b}"
        );
        let vw = Tensor::randn(0f32, 1., wt.shape(), &dev)?;
        let other = Conv2d::new(vw.clone(), None, cfg);
        let (a, b) = (dot(&other.forward(x.as_tensor())?, &up)?, dot(&vw, gw)?);
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1.0),
            "{what}: kernel {a} vs {b}"
        );
    }
    Ok(())
}

/// Kernel taps that only meet the zero padding are dropped on the CPU (ResNet-18's last stage
/// on 1x1 maps): the output and the three gradients equal Candle's full-kernel convolution,
/// the dropped taps' gradient is zero, and shapes where no narrower symmetric kernel fits keep
/// the full one.
#[test]
fn taps_that_only_meet_padding_are_skipped_with_the_same_results() -> Result<()> {
    let dev = Device::Cpu;
    // (n, c, h, w, cout, k, stride, padding, expected kernel after trimming)
    for (n, c, h, w, cout, k, s, p, trimmed) in [
        (3, 5, 1, 1, 4, 3, 1, 1, Some((1, 1, 0))),
        (2, 4, 2, 2, 3, 3, 2, 1, Some((2, 2, 0))),
        (2, 3, 1, 1, 2, 5, 1, 2, Some((1, 1, 0))),
        (2, 3, 2, 2, 2, 5, 1, 2, Some((3, 3, 1))),
        (2, 3, 2, 2, 4, 3, 1, 1, None),
        (2, 3, 1, 2, 2, 3, 1, 1, None),
        (2, 3, 8, 8, 2, 3, 1, 1, None),
        // Every output in the padding: no tap reaches the input.
        (2, 3, 1, 1, 2, 1, 3, 1, None),
        (2, 3, 1, 1, 2, 3, 8, 3, None),
    ] {
        let what = format!("{h}x{w} k{k} s{s} p{p}");
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, h, w), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (cout, c, k, k), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 1., cout, &dev)?)?;
        let conv = Conv2d::new(
            wt.as_tensor().clone(),
            Some(b.as_tensor().clone()),
            crate::conv_cfg(s, p),
        );
        let found = conv
            .without_padding_taps(x.as_tensor())?
            .map(|t| -> Result<_> {
                let (_, _, kh, kw) = t.weight().dims4()?;
                Ok((kh, kw, t.config().padding))
            })
            .transpose()?;
        assert_eq!(found, trimmed, "{what}");
        let reference = x
            .as_tensor()
            .conv2d(wt.as_tensor(), p, s, 1, 1)?
            .broadcast_add(&b.as_tensor().reshape((1, cout, 1, 1))?)?;
        same_with_grads(
            conv.forward(x.as_tensor())?,
            reference,
            &[("input", &x), ("weight", &wt), ("bias", &b)],
            &what,
        )?;
        if trimmed.is_some() {
            let g = conv.forward(x.as_tensor())?.sum_all()?.backward()?;
            let gw = g
                .get(&wt)
                .expect("weight gradient")
                .flatten_all()?
                .to_vec1::<f32>()?;
            let (r, _) = super::reaching_taps(h, k, s, p).unwrap_or((0, k - 1));
            assert!(gw.len() == cout * c * k * k, "{what}");
            // Tap (0, 0) never meets the input in these cases: its gradient is exactly zero.
            assert!(r > 0, "{what}");
            for oc in 0..cout * c {
                assert_eq!(gw[oc * k * k], 0.0, "{what}: the dropped tap's gradient");
            }
        }
    }
    Ok(())
}

/// Under bf16 autocast with oneDNN, a convolution with a 2x2 output (too small for the
/// image-by-image path, 16 or more output channels) runs in oneDNN's bf16 kernel: the same
/// values as oneDNN's bf16 call, not its float32 one.
#[cfg(feature = "onednn")]
#[test]
fn onednn_runs_small_outputs_in_bf16_under_autocast() -> Result<()> {
    if !crate::autocast::cpu_bf16_kernel_active() {
        eprintln!("skipped: this CPU lacks AVX512-BF16");
        return Ok(());
    }
    let was = onednn::set_enabled(true);
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (4, 32, 2, 2), &dev)?;
    let w = Tensor::randn(0f32, 0.1, (48, 32, 3, 3), &dev)?;
    let conv = Conv2d::new(w.clone(), None, crate::conv_cfg(1, 1));
    let ours = {
        let _bf16 = crate::autocast::enable(candle_core::DType::BF16)?;
        conv.forward(&x)?
    };
    let bf16 = onednn::conv2d(&x, &w, bias::After::Nothing, 1, 1, true)?
        .expect("oneDNN runs a 2x2 output");
    let f32 = onednn::conv2d(&x, &w, bias::After::Nothing, 1, 1, false)?
        .expect("oneDNN runs a 2x2 output");
    onednn::set_enabled(was);
    let diff =
        |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.max_all()?.to_scalar::<f32>() };
    assert_eq!(diff(&ours, &bf16)?, 0.0, "the bf16 kernel's values");
    assert!(diff(&ours, &f32)? > 0.0, "not the float32 kernel's");
    Ok(())
}

#[test]
fn a_bias_added_inside_the_convolution_gives_the_same_bits() -> Result<()> {
    let dev = Device::Cpu;
    // (batch, channels in, size, channels out, stride): image by image (Winograd and not),
    // outputs under 4x4 (the bias added after), a first layer of one channel.
    for (n, c, size, cout, s) in [
        (3, 8, 8, 16, 1),
        (2, 4, 9, 16, 2),
        (2, 16, 3, 16, 2),
        (4, 1, 12, 32, 1),
    ] {
        for bf16 in [false, true] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, size, size), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (cout, c, 3, 3), &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 1., cout, &dev)?)?;
            let cfg = crate::conv_cfg(s, 1);
            let _autocast = match bf16 {
                true => Some(autocast::enable(DType::BF16)?),
                false => None,
            };
            let runs = bias::RUNS.with(|r| r.get());
            let fused = Conv2d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), cfg)
                .forward(x.as_tensor())?;
            // Image by image (the first, second and fourth shapes), the bias is inside the op.
            if size >= 8 {
                assert_eq!(
                    bias::RUNS.with(|r| r.get()),
                    runs + 1,
                    "n{n} c{c} {size}x{size}"
                );
            }
            let plain = Conv2d::new(w.as_tensor().clone(), None, cfg).forward(x.as_tensor())?;
            let apart = per_channel::add_channel_bias(&plain, b.as_tensor())?;
            let what = format!("n{n} c{c} {size}x{size} cout{cout} s{s} bf16 {bf16}");
            assert_eq!(bits(&fused)?, bits(&apart)?, "{what}: output");
            let g = Tensor::randn(0f32, 1., fused.shape(), &dev)?;
            let ga = (&fused * &g)?.sum_all()?.backward()?;
            let gb = (&apart * &g)?.sum_all()?.backward()?;
            for (name, v) in [("input", &x), ("weight", &w), ("bias", &b)] {
                let (a, r) = (ga.get(v).expect("grad"), gb.get(v).expect("grad"));
                assert_eq!(bits(a)?, bits(r)?, "{what}: {name} gradient");
            }
        }
    }
    Ok(())
}

#[test]
fn a_batch_norm_run_inside_the_convolution_gives_the_same_bits() -> Result<()> {
    let dev = Device::Cpu;
    let bn_of = |c: usize| -> Result<(crate::BatchNorm, Var, Var)> {
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.2, c, &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.2, c, &dev)?)?;
        let bn = crate::BatchNorm::new(
            Tensor::zeros(c, DType::F32, &dev)?,
            Tensor::ones(c, DType::F32, &dev)?,
            w.as_tensor().clone(),
            b.as_tensor().clone(),
            1e-5,
            0.1,
        )?;
        Ok((bn, w, b))
    };
    // (batch, channels in, size, channels out, stride): image by image (Winograd and not, and
    // through oneDNN in that build), outputs under 4x4 (apart), taps trimmed on 1x1 maps.
    // With a residual, outputs of 4x the kernel's values or more run in one op (the first and
    // fourth cases).
    let cases = [
        (8, 8, 8, 16, 1),
        (2, 4, 9, 16, 2),
        (2, 16, 3, 16, 2),
        (4, 3, 12, 32, 1),
        (2, 8, 1, 16, 1),
    ];
    // (bf16, relu, residual, frozen kernel, ResNet's max pooling after)
    let modes = [
        (false, true, false, false, false),
        (true, true, false, false, false),
        (false, false, false, false, false),
        (false, true, true, false, false),
        (true, true, true, false, false),
        (false, true, false, true, false),
        (false, true, true, true, false),
        (false, true, false, false, true),
        (true, true, false, false, true),
        (false, true, false, true, true),
    ];
    let max_pool = crate::Pool2d::max(3, 2).padding(1);
    for (case, (n, c, size, cout, s)) in cases.into_iter().enumerate() {
        for (bf16, relu, residual, frozen, pool) in modes {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, size, size), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (cout, c, 3, 3), &dev)?)?;
            let kernel = match frozen {
                true => w.as_tensor().detach(),
                false => w.as_tensor().clone(),
            };
            let conv = Conv2d::new(kernel, None, crate::conv_cfg(s, 1));
            let ((bn1, bw1, bb1), (bn2, bw2, bb2)) = (bn_of(cout)?, bn_of(cout)?);
            bw2.set(bw1.as_tensor())?;
            bb2.set(bb1.as_tensor())?;
            let _autocast = match bf16 {
                true => Some(autocast::enable(DType::BF16)?),
                false => None,
            };
            let ys = conv.forward(x.as_tensor())?;
            let r = Var::from_tensor(&Tensor::randn(0f32, 1., ys.shape(), &dev)?)?;
            let runs = batch_norm::RUNS.with(|r| r.get());
            let (fused, apart) = match (residual, relu) {
                _ if pool => (
                    conv.forward_batch_norm_relu_pool(x.as_tensor(), &bn1, &max_pool, true)?,
                    candle_core::Module::forward(&max_pool, &bn2.forward_relu(&ys, true)?)?,
                ),
                (true, _) => (
                    conv.forward_batch_norm_add_relu(x.as_tensor(), &bn1, r.as_tensor(), true)?,
                    bn2.forward_add_relu(&ys, r.as_tensor(), true)?,
                ),
                (false, true) => (
                    conv.forward_batch_norm(x.as_tensor(), &bn1, true, true)?,
                    bn2.forward_relu(&ys, true)?,
                ),
                (false, false) => (
                    conv.forward_batch_norm(x.as_tensor(), &bn1, false, true)?,
                    candle_core::ModuleT::forward_t(&bn2, &ys, true)?,
                ),
            };
            let what = format!(
                "n{n} c{c} {size}x{size} cout{cout} s{s} bf16 {bf16} relu {relu} residual {residual} frozen {frozen} pool {pool}"
            );
            // The first shape runs in one op (but a frozen kernel with a residual); outputs
            // under 4x4 (the third and fifth) apart, unless oneDNN runs them.
            let ran = batch_norm::RUNS.with(|r| r.get()) - runs;
            match case {
                0 => assert_eq!(ran, usize::from(!(frozen && residual)), "{what}"),
                2 | 4 if !cfg!(feature = "onednn") => assert_eq!(ran, 0, "{what}"),
                _ => {}
            }
            assert_eq!(bits(&fused)?, bits(&apart)?, "{what}: output");
            assert_eq!(
                bits(bn1.running_mean().expect("running statistics"))?,
                bits(bn2.running_mean().expect("running statistics"))?,
                "{what}: mean"
            );
            assert_eq!(
                bits(bn1.running_var().expect("running statistics"))?,
                bits(bn2.running_var().expect("running statistics"))?,
                "{what}: var"
            );
            let g = Tensor::randn(0f32, 1., fused.shape(), &dev)?;
            let ga = (&fused * &g)?.sum_all()?.backward()?;
            let gb = (&apart * &g)?.sum_all()?.backward()?;
            for (name, a, b) in [
                ("input", &x, &x),
                ("kernel", &w, &w),
                ("bn weight", &bw1, &bw2),
                ("bn bias", &bb1, &bb2),
                ("residual", &r, &r),
            ] {
                if (name == "residual" && !residual) || (name == "kernel" && frozen) {
                    continue;
                }
                let (a, r) = (ga.get(a).expect("grad"), gb.get(b).expect("grad"));
                assert_eq!(bits(a)?, bits(r)?, "{what}: {name} gradient");
            }
        }
    }
    Ok(())
}

#[cfg(feature = "onednn")]
#[test]
fn convolutions_go_to_onednn_where_it_measured_faster() -> Result<()> {
    let dev = Device::Cpu;
    let geo = |c: usize, cout: usize, size: usize| -> Result<(geometry::Geometry, usize)> {
        let x = Tensor::zeros((2, c, size, size), DType::F32, &dev)?;
        let w = Tensor::zeros((cout, c, 3, 3), DType::F32, &dev)?;
        geometry::Geometry::of_conv(&x, &w, 1, 1)
    };
    // (oneDNN's own Winograd, if the environment asked for it, would take the f32 ones.)
    let winograd = onednn::set_winograd(false);
    // The MNIST CNN's second convolution: oneDNN in bf16, the built-in Winograd in f32.
    let (g, cout) = geo(32, 64, 14)?;
    assert!(onednn::routes(&g, cout, true));
    assert!(!onednn::routes(&g, cout, false));
    // 64 input channels on 8x8: the built-in Winograd in both; in bf16 oneDNN where it runs
    // on AMX's tiles (every bf16 convolution there).
    let (g, cout) = geo(64, 64, 8)?;
    assert_eq!(onednn::routes(&g, cout, true), onednn::amx_bf16());
    assert!(!onednn::routes(&g, cout, false));
    // 512 channels on 4x4: oneDNN in both (the kernel gradient the built-in one's), and on 8x8
    // the built-in Winograd in f32.
    let (g, cout) = geo(512, 512, 4)?;
    assert!(onednn::routes(&g, cout, true));
    assert!(onednn::routes(&g, cout, false));
    assert!(onednn::builtin_weight_grad(&g, true) && onednn::builtin_weight_grad(&g, false));
    let (g, cout) = geo(512, 512, 8)?;
    assert!(!onednn::routes(&g, cout, false));
    // In f32, 64 channels on 4x4 and 512 on 4x5 (20 positions) stay on the built-in Winograd.
    let (g, cout) = geo(64, 64, 4)?;
    assert!(!onednn::routes(&g, cout, false));
    let x = Tensor::zeros((2, 512, 4, 5), DType::F32, &dev)?;
    let w = Tensor::zeros((512, 512, 3, 3), DType::F32, &dev)?;
    let (g, cout) = geometry::Geometry::of_conv(&x, &w, 1, 1)?;
    assert!(!onednn::routes(&g, cout, false));
    // 128 channels on 4x4: the built-in kernel gradient in f32 only.
    let (g, _) = geo(128, 128, 4)?;
    assert!(onednn::builtin_weight_grad(&g, false) && !onednn::builtin_weight_grad(&g, true));
    // A 1x1 stride-2 projection to 16x16: built-in in both.
    let x = Tensor::zeros((2, 128, 32, 32), DType::F32, &dev)?;
    let w = Tensor::zeros((256, 128, 1, 1), DType::F32, &dev)?;
    let (g, cout) = geometry::Geometry::of_conv(&x, &w, 2, 0)?;
    assert_eq!(onednn::routes(&g, cout, true), onednn::amx_bf16());
    assert!(!onednn::routes(&g, cout, false));
    // oneDNN dispatches to AMX only on a CPU that has it (and, where the operating system
    // grants the tiles, does so there).
    assert!(!onednn::amx_bf16() || crate::autocast::cpu_has_amx_bf16());
    onednn::set_winograd(winograd);
    Ok(())
}

/// Images of integers (u8 pixels not yet converted) or float64 ones for a float32 kernel are
/// refused naming both types and shapes, where Candle's own message named its im2col or matmul.
#[test]
fn an_input_of_another_type_than_the_kernel_is_named() -> Result<()> {
    let dev = Device::Cpu;
    let conv = Conv2d::new(
        Tensor::zeros((4, 3, 3, 3), DType::F32, &dev)?,
        None,
        Default::default(),
    );
    // bf16 and f16 images too (a new user's: Candle said "dtype mismatch in matmul"), with
    // autocast on or off.
    for autocast in [false, true] {
        let _bf16 = autocast
            .then(|| crate::autocast::enable(DType::BF16))
            .transpose()?;
        for (dtype, name) in [
            (DType::U8, "U8"),
            (DType::F64, "F64"),
            (DType::U32, "U32"),
            (DType::BF16, "BF16"),
            (DType::F16, "F16"),
        ] {
            let xs = Tensor::zeros((2, 3, 8, 8), dtype, &dev)?;
            let err = conv.forward(&xs).unwrap_err().to_string();
            assert!(
                err.contains(&format!(
                    "input of dtype {name} [2, 3, 8, 8] for a F32 kernel"
                )) && err.contains("xs.to_dtype(DType::F32)"),
                "{autocast}: {err}"
            );
        }
    }
    // A bf16 kernel (a network cast whole) takes float32 images as before: the kernel cast.
    let half = Conv2d::new(
        Tensor::zeros((4, 3, 3, 3), DType::BF16, &dev)?,
        None,
        Default::default(),
    );
    let images = Tensor::zeros((2, 3, 8, 8), DType::F32, &dev)?;
    assert_eq!(half.forward(&images)?.dims(), [2, 4, 6, 6]);
    let fine = Tensor::zeros((2, 3, 8, 8), DType::F32, &dev)?;
    assert_eq!(conv.forward(&fine)?.dims(), [2, 4, 6, 6]);
    Ok(())
}

/// One image `(C, H, W)` is convolved as PyTorch's `Conv2d` convolves it unbatched: the batch
/// of one's output without its batch dimension, and the same gradients; where the fused
/// batch norm would meet it (which PyTorch's `BatchNorm2d` refuses, and so torchvision's
/// models), it is named with the way to a batch. Images `(N, H, W, C)`, as PIL and NumPy lay
/// them out, get the way to `(N, C, H, W)`.
#[test]
fn an_unbatched_image_is_convolved_and_channels_last_shapes_are_named() -> Result<()> {
    let dev = Device::Cpu;
    let weight = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev)?)?;
    let bias = Tensor::new(&[0.5f32, -1.0, 0.0, 2.0], &dev)?;
    let config = Conv2dConfig {
        padding: 1,
        stride: 2,
        ..Default::default()
    };
    let conv = Conv2d::new(weight.as_tensor().clone(), Some(bias), config);
    let image = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 9, 8), &dev)?)?;
    let one = conv.forward(image.as_tensor())?;
    assert_eq!(one.dims(), [4, 5, 4]);
    let batch = conv.forward(&image.as_tensor().unsqueeze(0)?)?;
    assert_eq!(one.to_vec3::<f32>()?, batch.squeeze(0)?.to_vec3::<f32>()?);
    let (g_one, g_batch) = (
        one.sqr()?.sum_all()?.backward()?,
        batch.sqr()?.sum_all()?.backward()?,
    );
    for v in [&weight, &image] {
        let (a, b) = (g_one.get(v.as_tensor()), g_batch.get(v.as_tensor()));
        let (a, b) = (a.expect("a gradient"), b.expect("a gradient"));
        assert_eq!(a.dims(), v.dims());
        let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        assert_eq!(flat(a)?, flat(b)?);
    }
    let bn = crate::BatchNorm::new(
        Tensor::zeros(4, DType::F32, &dev)?,
        Tensor::ones(4, DType::F32, &dev)?,
        Tensor::ones(4, DType::F32, &dev)?,
        Tensor::zeros(4, DType::F32, &dev)?,
        1e-5,
        0.1,
    )?;
    let err = conv
        .forward_batch_norm(image.as_tensor(), &bn, true, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conv2d: input of shape [3, 9, 8]")
            && err.contains("xs.unsqueeze(0) makes it a batch of one"),
        "{err}"
    );
    let conv = Conv2d::new(
        Tensor::zeros((4, 3, 3, 3), DType::F32, &dev)?,
        None,
        Default::default(),
    );
    // One image laid out (H, W, C), as PIL and NumPy lay it out.
    let err = conv
        .forward(&Tensor::zeros((8, 8, 3), DType::F32, &dev)?)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("one image of shape [8, 8, 3]") && err.contains("xs.permute((2, 0, 1))"),
        "{err}"
    );
    let err = conv
        .forward(&Tensor::zeros((2, 8, 8, 3), DType::F32, &dev)?)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conv2d: input has 8 channels, the kernel [4, 3, 3, 3] expects 3")
            && err.contains("xs.permute((0, 3, 1, 2))"),
        "{err}"
    );
    Ok(())
}

/// An empty batch gives PyTorch's empty output (N = 0) with groups and dilation too, where
/// Candle's grouped and dilated convolution panicked (a reviewer's finding).
#[test]
fn an_empty_batch_gives_an_empty_output() -> Result<()> {
    let dev = Device::Cpu;
    for (groups, dilation, want) in [
        (1, 1, [0, 8, 3, 3]),
        (2, 1, [0, 8, 3, 3]),
        (1, 2, [0, 8, 1, 1]),
        (4, 2, [0, 8, 1, 1]),
    ] {
        let config = Conv2dConfig {
            groups,
            dilation,
            ..Default::default()
        };
        let weight = Var::zeros((8, 4 / groups, 3, 3), DType::F32, &dev)?;
        let bias = Var::zeros(8, DType::F32, &dev)?;
        let conv = Conv2d::new(
            weight.as_tensor().clone(),
            Some(bias.as_tensor().clone()),
            config,
        );
        let out = conv.forward(&Tensor::zeros((0, 4, 5, 5), DType::F32, &dev)?)?;
        assert_eq!(out.dims(), want, "groups {groups}, dilation {dilation}");
        // The kernel's and the bias's gradients are zeros, as PyTorch's.
        let grads = out.sum_all()?.backward()?;
        for v in [&weight, &bias] {
            let g = grads.get(v.as_tensor()).expect("a gradient");
            assert_eq!(g.dims(), v.dims());
            assert_eq!(g.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        }
    }
    Ok(())
}

/// `F.conv2d`'s argument checks, which Candle's grouped and dilated convolution lacked: a
/// dilated kernel wider than the padded input (an output of 2^64 - 1 rows), groups that do not
/// divide the output channels (a kernel dropped), dilation 0 (every tap on one pixel), a kernel
/// of zero size (a panic in the product), a bias of another length (blamed on the bias's
/// addition). Each is refused before any path runs, naming what is wrong. Zero input channels
/// panicked too: refused here, where PyTorch 2.15 returns an empty (N, 0, H', W') output.
#[test]
fn arguments_pytorch_refuses_are_refused() -> Result<()> {
    let dev = Device::Cpu;
    let zeros = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &dev);
    let config = |padding, stride, dilation, groups| Conv2dConfig {
        padding,
        stride,
        dilation,
        groups,
        cudnn_fwd_algo: None,
    };
    // (input dims, kernel dims, bias length, configuration, the error's words)
    type Case<'a> = (
        &'a [usize],
        &'a [usize],
        Option<usize>,
        Conv2dConfig,
        &'a str,
    );
    let cases: [Case; 9] = [
        (
            &[1, 3, 5, 5],
            &[2, 3, 3, 3],
            None,
            config(0, 1, 3, 1),
            "(dilation 3: it spans 7x7) does not fit the 5x5 input padded by 0",
        ),
        (
            &[1, 4, 5, 5],
            &[3, 2, 3, 3],
            None,
            config(0, 1, 1, 2),
            "2 groups do not divide the kernel [3, 2, 3, 3]'s 3 output channels",
        ),
        (
            &[1, 3, 5, 5],
            &[2, 3, 3, 3],
            None,
            config(0, 1, 0, 1),
            "dilation 0: the dilation must be positive",
        ),
        (
            &[1, 3, 5, 5],
            &[2, 3, 3, 3],
            None,
            config(0, 0, 1, 1),
            "stride 0: the stride must be positive",
        ),
        (
            &[1, 3, 5, 5],
            &[2, 3, 3, 3],
            None,
            config(0, 1, 1, 0),
            "groups 0: the groups must be positive",
        ),
        (
            &[2, 3, 4, 4],
            &[4, 3, 0, 0],
            None,
            config(0, 1, 1, 1),
            "kernel of shape [4, 3, 0, 0]",
        ),
        (
            &[2, 0, 8, 8],
            &[4, 0, 3, 3],
            Some(4),
            config(0, 1, 1, 1),
            "kernel of shape [4, 0, 3, 3]",
        ),
        (
            &[1, 3, 5, 5],
            &[2, 3, 3, 3],
            Some(3),
            config(0, 1, 1, 1),
            "bias of shape [3] for the kernel [2, 3, 3, 3]: the bias is (2)",
        ),
        (
            &[1, 6, 5, 5],
            &[4, 2, 3, 3],
            None,
            config(1, 1, 1, 2),
            "input has 6 channels, the kernel [4, 2, 3, 3] in 2 groups expects 4",
        ),
    ];
    for (x, w, bias, config, want) in cases {
        let bias = bias.map(|b| zeros(&[b])).transpose()?;
        let conv = Conv2d::new(zeros(w)?, bias, config);
        let err = match conv.forward(&zeros(x)?) {
            Ok(ys) => panic!("{x:?} * {w:?} ({config:?}) gave {:?}", ys.dims()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{x:?} * {w:?}: {err}");
    }
    // What PyTorch takes still runs: a dilated kernel that just fits, four groups.
    let conv = Conv2d::new(zeros(&[4, 3, 3, 3])?, None, config(1, 1, 3, 1));
    assert_eq!(conv.forward(&zeros(&[1, 3, 5, 5])?)?.dims(), [1, 4, 1, 1]);
    let conv = Conv2d::new(zeros(&[8, 2, 3, 3])?, None, config(1, 2, 1, 4));
    assert_eq!(conv.forward(&zeros(&[1, 8, 5, 5])?)?.dims(), [1, 8, 3, 3]);
    Ok(())
}
