//! Pooling against PyTorch's numbers, and the composite path against the CPU kernel.

use super::*;
use candle_core::{Device, Var};

use super::composite::forward;

#[test]
fn output_sizes_follow_pytorch() -> Result<()> {
    let p = Pool2d::max(3, 2);
    assert_eq!(p.output_size(13, 13)?, (6, 6));
    assert_eq!(p.ceil_mode(true).output_size(14, 14)?, (7, 7));
    assert_eq!(p.ceil_mode(true).output_size(13, 13)?, (6, 6));
    assert_eq!(p.padding(1).output_size(16, 16)?, (8, 8));
    assert_eq!(Pool2d::max(2, 2).ceil_mode(true).output_size(5, 5)?, (3, 3));
    assert!(p.padding(2).output_size(16, 16).is_err());
    assert!(p.output_size(2, 2).is_err());
    // Sides 1 to 7, as PyTorch 2.15's `F.max_pool2d` gives them (0: refused).
    let ceil = |k, s, pad| Pool2d::max(k, s).padding(pad).ceil_mode(true);
    for (pool, sides) in [
        (ceil(3, 2, 0), [0, 1, 1, 2, 2, 3, 3]),
        (Pool2d::max(3, 2), [0, 0, 1, 1, 2, 2, 3]),
        (ceil(3, 2, 1), [1, 2, 2, 3, 3, 4, 4]),
        (ceil(3, 1, 1), [1, 2, 3, 4, 5, 6, 7]),
        (ceil(2, 2, 0), [1, 1, 2, 2, 3, 3, 4]),
        (ceil(5, 3, 0), [0, 0, 1, 1, 1, 2, 2]),
        (ceil(5, 3, 2), [1, 2, 2, 2, 3, 3, 3]),
    ] {
        for (size, want) in (1..).zip(sides) {
            match pool.output_size(size, size) {
                Ok(got) => assert_eq!(got, (want, want), "{pool:?} on {size}"),
                Err(e) => assert_eq!(want, 0, "{pool:?} on {size}: {e}"),
            }
        }
    }
    Ok(())
}

/// In ceil mode a map smaller than the kernel gives one window (PyTorch 2.15's values).
#[test]
fn a_map_smaller_than_the_kernel_pools_in_ceil_mode() -> Result<()> {
    let x = Tensor::arange(0f32, 6., &Device::Cpu)?.reshape((1, 1, 2, 3))?;
    let values = |pool: Pool2d| -> Result<Vec<f32>> { pool.forward(&x)?.flatten_all()?.to_vec1() };
    assert_eq!(values(Pool2d::max(3, 2).ceil_mode(true))?, [5.0]);
    // The divisor counts the window up to the padded input's end: 2 x 3.
    assert_eq!(values(Pool2d::avg(3, 2).ceil_mode(true))?, [2.5]);
    Ok(())
}

#[test]
fn tutorial_pooling_example() -> Result<()> {
    let x = Tensor::arange(1f32, 17., &Device::Cpu)?.reshape((1, 1, 4, 4))?;
    let max = Pool2d::max(2, 2)
        .forward(&x)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let avg = Pool2d::avg(2, 2)
        .forward(&x)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert_eq!(max, [6., 8., 14., 16.]);
    assert_eq!(avg, [3.5, 5.5, 11.5, 13.5]);
    Ok(())
}

#[test]
fn max_backward_routes_to_first_maximum_and_accumulates_overlaps() -> Result<()> {
    let x = Var::from_vec(
        vec![1f32, 5., 2., 5., 0., 3., 4., 1., 9.],
        (1, 1, 3, 3),
        &Device::Cpu,
    )?;
    let y = max_pool2d(x.as_tensor(), 2, 1, 0, false)?;
    assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [5., 5., 5., 9.]);
    let grads = y.sum_all()?.backward()?;
    let g = grads
        .get(&x)
        .expect("gradient")
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert_eq!(g, [0., 2., 0., 1., 0., 0., 0., 0., 1.]);
    Ok(())
}

#[test]
fn avg_with_padding_counts_padding_by_default() -> Result<()> {
    let x = Tensor::ones((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu)?;
    let y = avg_pool2d(&x, 2, 2, 1, false)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert_eq!(y, [0.25, 0.25, 0.25, 0.25]);
    let p = Pool2d {
        kind: PoolKind::Avg {
            count_include_pad: false,
        },
        ..Pool2d::avg(2, 2).padding(1)
    };
    assert_eq!(
        p.forward(&x)?.flatten_all()?.to_vec1::<f32>()?,
        [1., 1., 1., 1.]
    );
    Ok(())
}

#[test]
fn nan_propagates_through_max() -> Result<()> {
    let x = Tensor::new(&[[[[1f32, f32::NAN], [3., 2.]]]], &Device::Cpu)?;
    let y = Pool2d::max(2, 2)
        .forward(&x)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert!(y[0].is_nan());
    Ok(())
}

fn check(pool: Pool2d, h: usize, w: usize) -> Result<()> {
    check_values(pool, (2, 3, h, w), 1013)?;
    // Few distinct values: most max windows hold ties.
    check_values(pool, (2, 3, h, w), 3)
}

/// [`check_values_once`] with the CPU's max pooling kernels, then, where it has AVX-512, with
/// AVX2's across planes instead; the AVX2 kernel must have run where it applies.
fn check_values(pool: Pool2d, dims: (usize, usize, usize, usize), distinct: usize) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        use super::cpu::{takes_avx2_across, ACROSS_RUNS, AVX2_ONLY};
        let (b, c, h, w) = dims;
        let settings: &[bool] = match crate::avx512::available() {
            true => &[false, true],
            false => &[false],
        };
        for &avx2_only in settings {
            let before = AVX2_ONLY.with(|a| a.replace(avx2_only));
            let runs = ACROSS_RUNS.with(|r| r.get());
            let across = takes_avx2_across(pool, &[b, c, h, w]);
            let checked = check_values_once(pool, dims, distinct);
            AVX2_ONLY.with(|a| a.set(before));
            checked?;
            let ran = ACROSS_RUNS.with(|r| r.get()) - runs;
            assert_eq!(
                ran,
                usize::from(across),
                "{pool:?} {dims:?} AVX2 {avx2_only}"
            );
        }
        Ok(())
    }
    #[cfg(not(target_arch = "x86_64"))]
    check_values_once(pool, dims, distinct)
}

fn check_values_once(
    pool: Pool2d,
    (b, c, h, w): (usize, usize, usize, usize),
    distinct: usize,
) -> Result<()> {
    let n = b * c * h * w;
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % distinct) as f32 / 97.0)
        .collect();
    let x = Var::from_vec(v, (b, c, h, w), &Device::Cpu)?;
    let g: Vec<f32> = {
        let (oh, ow) = pool.output_size(h, w)?;
        (0..b * c * oh * ow).map(|i| (i % 5) as f32 - 2.0).collect()
    };
    let y_op = pool.forward(x.as_tensor())?;
    let y_ref = forward(&pool, x.as_tensor())?;
    let diff = (&y_op - &y_ref)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-5, "{pool:?} forward differs by {diff}");
    let g = Tensor::from_vec(g, y_op.shape(), &Device::Cpu)?;
    let gx_op = (y_op * &g)?.sum_all()?.backward()?;
    let gx_ref = (y_ref * &g)?.sum_all()?.backward()?;
    let a = gx_op.get(&x).expect("grad");
    let b = gx_ref.get(&x).expect("grad");
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-5, "{pool:?} backward differs by {diff}");
    Ok(())
}

/// Small maps, as the composite reference pools them, 21 planes: several planes to a vector
/// where a plane has at most 16 outputs and 64 inputs (GoogLeNet's 1x1, 2x2 and 4x3 maps: 16,
/// 4 and 1 planes a vector, the last vector short; 7x7 and 8x8 maps pooled with stride 2, in
/// four registers), 16 planes at a time, one a lane, where it has fewer than 16 outputs and
/// more inputs (a 9x9 map pooled 3x3 with stride 3: one whole group and one of 5).
#[test]
fn small_maps_pooled_across_planes_match_the_composite() -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    let runs = super::cpu::ACROSS_RUNS.with(|r| r.get());
    let googlenet = Pool2d::max(3, 1).padding(1).ceil_mode(true);
    for (pool, h, w) in [
        (googlenet, 1, 1),
        (googlenet, 2, 2),
        (googlenet, 4, 3),
        (Pool2d::max(3, 2).padding(1), 3, 3),
        (Pool2d::max(3, 2), 7, 7),
        (Pool2d::max(3, 2).ceil_mode(true), 8, 8),
        (Pool2d::max(3, 3), 9, 9),
        (Pool2d::max(3, 2).ceil_mode(true), 2, 2),
        (Pool2d::max(3, 2).ceil_mode(true), 2, 5),
        (Pool2d::max(5, 3).ceil_mode(true), 3, 4),
    ] {
        for distinct in [1013, 3] {
            check_values(pool, (3, 7, h, w), distinct)?;
        }
    }
    // Each of them (max poolings, not of whole 2x2 blocks) also by AVX2's kernel across planes
    // where the CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        assert!(super::cpu::ACROSS_RUNS.with(|r| r.get()) - runs >= 20);
    }
    Ok(())
}

#[test]
fn nan_is_the_maximum_in_both() -> Result<()> {
    let x = Tensor::new(&[[[[1f32, f32::NAN], [f32::NAN, 3.0]]]], &Device::Cpu)?;
    let pool = Pool2d::max(2, 2);
    let y_ref = forward(&pool, &x)?.flatten_all()?.to_vec1::<f32>()?;
    let y_op = pool.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
    assert!(y_ref[0].is_nan() && y_op[0].is_nan());
    Ok(())
}

#[test]
fn composite_matches_the_cpu_kernel() -> Result<()> {
    check(Pool2d::max(3, 2).padding(1), 16, 16)?;
    // Rows of 12 outputs and more: row by row.
    check(Pool2d::max(3, 2).padding(1), 40, 37)?;
    check(Pool2d::max(3, 1).padding(1).ceil_mode(true), 14, 28)?;
    check(Pool2d::max(3, 2).ceil_mode(true), 14, 14)?;
    check(Pool2d::max(3, 2), 13, 13)?;
    check(Pool2d::max(2, 2), 7, 9)?;
    check(Pool2d::avg(3, 2).padding(1).ceil_mode(true), 10, 11)?;
    check(Pool2d::avg(2, 2), 8, 8)?;
    // Maps smaller than the kernel, in ceil mode.
    check(Pool2d::max(3, 2).ceil_mode(true), 2, 2)?;
    check(Pool2d::max(3, 2).ceil_mode(true), 2, 40)?;
    check(Pool2d::avg(3, 2).ceil_mode(true), 2, 3)?;
    check(Pool2d::avg(5, 3).padding(1).ceil_mode(true), 2, 1)?;
    check(
        Pool2d {
            kind: PoolKind::Avg {
                count_include_pad: false,
            },
            ..Pool2d::avg(3, 1).padding(1)
        },
        5,
        6,
    )
}

#[test]
fn pooling_with_its_relu_in_one_op_gives_the_same_bits() -> Result<()> {
    let dev = candle_core::Device::Cpu;
    // Whole 2x2 blocks (AVX-512 where present), overlapping windows (gathered; small maps
    // several or 16 planes a vector), odd sides (window loops), averages; negative values,
    // zeros of both signs, NaN.
    let pools = [
        (Pool2d::max(2, 2), 8),
        (Pool2d::max(3, 2).padding(1), 16),
        (Pool2d::max(3, 1).padding(1).ceil_mode(true), 2),
        (Pool2d::max(3, 2), 7),
        (Pool2d::max(2, 2).ceil_mode(true), 7),
        (Pool2d::avg(2, 2), 8),
    ];
    for (pool, size) in pools {
        let values: Vec<f32> = (0..2 * 3 * size * size)
            .map(|i| match i % 19 {
                4 => f32::NAN,
                7 => -0.0,
                8 => 0.0,
                k => ((i * 7) % 5) as f32 - k as f32 / 4.0,
            })
            .collect();
        let x = candle_core::Var::from_vec(values, (2, 3, size, size), &dev)?;
        // The CPU's kernels, then, where it has AVX-512, AVX2's across planes instead.
        #[cfg(target_arch = "x86_64")]
        let settings: &[bool] = match crate::avx512::available() {
            true => &[false, true],
            false => &[false],
        };
        #[cfg(not(target_arch = "x86_64"))]
        let settings: &[bool] = &[false];
        for &avx2_only in settings {
            #[cfg(target_arch = "x86_64")]
            let before = super::cpu::AVX2_ONLY.with(|a| a.replace(avx2_only));
            let same = relu_bits(pool, size, &x, avx2_only);
            #[cfg(target_arch = "x86_64")]
            super::cpu::AVX2_ONLY.with(|a| a.set(before));
            same?;
        }
    }
    Ok(())
}

/// [`pooling_with_its_relu_in_one_op_gives_the_same_bits`] for one pooling of `x`.
fn relu_bits(pool: Pool2d, size: usize, x: &Var, avx2_only: bool) -> Result<()> {
    let dev = Device::Cpu;
    let bits = crate::test_values::bits;
    let fused = pool.forward_relu(x.as_tensor())?;
    let apart = crate::relu(&pool.forward(x.as_tensor())?)?;
    assert_eq!(
        bits(&fused)?,
        bits(&apart)?,
        "{pool:?} {size} {avx2_only}: output"
    );
    let g = Tensor::randn(0f32, 1., fused.shape(), &dev)?;
    let ga = (&fused * &g)?.sum_all()?.backward()?;
    let gb = (&apart * &g)?.sum_all()?.backward()?;
    let (a, b) = (ga.get(x).expect("grad"), gb.get(x).expect("grad"));
    assert_eq!(bits(a)?, bits(b)?, "{pool:?} {size} {avx2_only}: gradient");
    Ok(())
}

/// bf16 (and f16) maps are pooled as PyTorch pools them on the CPU: in float32, rounded back
/// (they were refused, "pooling supports f32 and f64 tensors"), gradients included; maps with
/// no channels or positions are refused as PyTorch refuses them, and one image (C, H, W) is
/// named with the way to a batch.
#[test]
fn bf16_maps_pool_in_float32_and_empty_maps_are_refused() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::arange(0f32, 2. * 3. * 5. * 5., &dev)?
        .sin()?
        .reshape((2, 3, 5, 5))?
        .to_dtype(DType::BF16)?;
    for pool in [
        Pool2d::max(3, 2).padding(1),
        Pool2d::avg(2, 2).ceil_mode(true),
    ] {
        let want = pool
            .forward(&x.to_dtype(DType::F32)?)?
            .to_dtype(DType::BF16)?;
        let got = pool.forward(&x)?;
        assert_eq!(got.dtype(), DType::BF16);
        assert_eq!(
            got.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            want.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?
        );
        let v = candle_core::Var::from_tensor(&x)?;
        let grads = pool.forward(v.as_tensor())?.sum_all()?.backward()?;
        assert_eq!(
            grads.get(v.as_tensor()).map(|g| g.dtype()),
            Some(DType::BF16)
        );
        // A channels-last map stays channels-last (a cast alone gives a contiguous one).
        let last = pool.forward(&crate::memory_format::to_channels_last(&x)?)?;
        assert!(crate::memory_format::is_channels_last(&last));
        assert_eq!(
            last.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            got.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?
        );
    }
    for dims in [[2, 0, 4, 4], [1, 2, 0, 4]] {
        let empty = Tensor::zeros(&dims, DType::F32, &dev)?;
        let err = Pool2d::max(2, 2).forward(&empty).unwrap_err().to_string();
        assert!(err.contains("C, H and W at least 1"), "{err}");
    }
    // One image's error names its own shape (not the batch of one's).
    let flat = Tensor::zeros((3, 0, 4), DType::F32, &dev)?;
    let err = Pool2d::max(2, 2).forward(&flat).unwrap_err().to_string();
    assert!(
        err.contains("the input of shape [3, 0, 4] taken as one image"),
        "{err}"
    );
    let line = Tensor::zeros((3, 4), DType::F32, &dev)?;
    let err = Pool2d::avg(2, 2).forward(&line).unwrap_err().to_string();
    assert!(err.contains("got [3, 4]"), "{err}");
    Ok(())
}

/// One image's maps `(C, H, W)` are pooled as PyTorch pools them unbatched: the batch of one's
/// output without its batch dimension, and the same gradient (max and average, with the fused
/// ReLU, in bf16 too).
#[test]
fn an_unbatched_image_is_pooled_as_a_batch_of_one() -> Result<()> {
    let dev = Device::Cpu;
    let image = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7, 6), &dev)?)?;
    for pool in [
        Pool2d::max(3, 2).padding(1),
        Pool2d::avg(2, 2).ceil_mode(true),
    ] {
        for relu in [false, true] {
            let run = |xs: &Tensor| match relu {
                true => pool.forward_relu(xs),
                false => pool.forward(xs),
            };
            let one = run(image.as_tensor())?;
            let batch = run(&image.as_tensor().unsqueeze(0)?)?;
            assert_eq!(one.dims(), &batch.dims()[1..]);
            assert_eq!(one.to_vec3::<f32>()?, batch.squeeze(0)?.to_vec3::<f32>()?);
            let g_one = one.sum_all()?.backward()?;
            let g_batch = batch.sum_all()?.backward()?;
            let g = |g: &candle_core::backprop::GradStore| match g.get(image.as_tensor()) {
                Some(g) => g.to_vec3::<f32>(),
                None => candle_core::bail!("no gradient"),
            };
            assert_eq!(g(&g_one)?, g(&g_batch)?);
        }
        let half = image.as_tensor().to_dtype(DType::BF16)?;
        let one = pool.forward(&half)?;
        let batch = pool.forward(&half.unsqueeze(0)?)?.squeeze(0)?;
        assert_eq!(one.dtype(), DType::BF16);
        let f32s = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec3::<f32>();
        assert_eq!(f32s(&one)?, f32s(&batch)?);
    }
    Ok(())
}
