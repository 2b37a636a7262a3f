//! Every layer of ours gives the same numbers on CUDA as on the CPU, forward and backward.
//! Runs where the build has the `cuda` feature and a GPU is present; says so otherwise.

use candle_core::{Device, Module, ModuleT, Result, Tensor, Var};
use layers::memory_format::is_channels_last;
use layers::{adaptive_avg_pool2d, BatchNorm, Conv2d, MemoryFormat, Pool2d, PoolKind};

/// Held by every test here: one turns TF32 on (a process-wide flag), which the others' float32
/// convolutions must not see.
static TF32_FLAG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The GPU, with [`TF32_FLAG`] held for the test's length.
fn gpu() -> Option<(Device, std::sync::MutexGuard<'static, ()>)> {
    match Device::cuda_if_available(0) {
        Ok(d) if d.is_cuda() => Some((d, TF32_FLAG.lock().unwrap_or_else(|e| e.into_inner()))),
        _ => {
            eprintln!(
                "skipped: no CUDA device (build with --features cuda on a machine with a GPU)"
            );
            None
        }
    }
}

/// Runs `f` on the same input on both devices; compares outputs and input gradients.
fn same_on_both(
    gpu: &Device,
    shape: (usize, usize, usize, usize),
    what: &str,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<()> {
    let x = Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?;
    let run = |dev: &Device| -> Result<(Vec<f32>, Vec<f32>)> {
        let v = Var::from_tensor(&x.to_device(dev)?)?;
        let y = f(v.as_tensor())?;
        let g = Tensor::from_vec(
            (0..y.elem_count())
                .map(|i| ((i * 31) % 7) as f32 - 3.0)
                .collect::<Vec<f32>>(),
            y.shape(),
            &Device::Cpu,
        )?
        .to_device(dev)?;
        let grads = (&y * g)?.sum_all()?.backward()?;
        Ok((
            y.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?,
            grads
                .get(&v)
                .expect("input gradient")
                .flatten_all()?
                .to_device(&Device::Cpu)?
                .to_vec1()?,
        ))
    };
    let (y_cpu, g_cpu) = run(&Device::Cpu)?;
    let (y_gpu, g_gpu) = run(gpu)?;
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    let (dy, dg) = (max_diff(&y_cpu, &y_gpu), max_diff(&g_cpu, &g_gpu));
    println!("{what}: output differs by {dy:.2e}, input gradient by {dg:.2e}");
    assert!(
        dy < 1e-4 && dg < 1e-3,
        "{what} differs between CUDA and CPU"
    );
    Ok(())
}

#[test]
fn pooling_conv_batch_norm_and_adaptive_pooling_agree_with_the_cpu() -> Result<()> {
    let Some((gpu, _serial)) = gpu() else {
        return Ok(());
    };
    for (name, pool) in [
        ("maxpool k3 s2 p1", Pool2d::max(3, 2).padding(1)),
        ("maxpool k3 s2 ceil", Pool2d::max(3, 2).ceil_mode(true)),
        ("maxpool k2 s2", Pool2d::max(2, 2)),
        (
            "avgpool k3 s1 p1 ceil",
            Pool2d::avg(3, 1).padding(1).ceil_mode(true),
        ),
        (
            "avgpool k3 s2 p1 no-pad-count",
            Pool2d {
                kind: PoolKind::Avg {
                    count_include_pad: false,
                },
                ..Pool2d::avg(3, 2).padding(1)
            },
        ),
    ] {
        same_on_both(&gpu, (4, 8, 15, 15), name, |x| pool.forward(x))?;
    }
    for out in [(1, 1), (6, 6), (7, 7)] {
        same_on_both(
            &gpu,
            (2, 4, 13, 13),
            &format!("adaptive avg to {out:?}"),
            |x| adaptive_avg_pool2d(x, out),
        )?;
    }
    for (k, s, p, hw) in [
        (3, 2, 1, (12, 12)),
        (3, 1, 1, (9, 9)),
        (3, 2, 1, (12, 11)),
        (1, 2, 0, (9, 8)),
        (7, 2, 3, (15, 15)),
    ] {
        let w = Tensor::randn(0f32, 0.2, (6, 8, k, k), &Device::Cpu)?;
        same_on_both(
            &gpu,
            (4, 8, hw.0, hw.1),
            &format!("conv {k}x{k} s{s} p{p} on {hw:?}"),
            |x| Conv2d::new(w.to_device(x.device())?, None, layers::conv_cfg(s, p)).forward(x),
        )?;
    }
    for (relu, train) in [(false, true), (true, true), (true, false)] {
        same_on_both(
            &gpu,
            (8, 6, 7, 5),
            &format!("batch norm relu={relu} train={train}"),
            |x| {
                let dev = x.device();
                let bn = BatchNorm::new(
                    Tensor::new(&[0.1f32, -0.2, 0.0, 0.3, 0.5, -1.0], dev)?,
                    Tensor::new(&[1.0f32, 0.5, 2.0, 1.5, 0.9, 1.1], dev)?,
                    Tensor::new(&[1.0f32, 0.8, 1.2, -0.5, 2.0, 1.0], dev)?,
                    Tensor::new(&[0.0f32, 0.1, -0.3, 0.2, 0.0, 1.0], dev)?,
                    1e-5,
                    0.1,
                )?;
                match relu {
                    true => bn.forward_relu(x, train),
                    false => bn.forward_t(x, train),
                }
            },
        )?;
    }
    Ok(())
}

/// The convolution's weight gradient, in f32 and under bf16 autocast, on both devices.
#[test]
fn conv_weight_gradients_agree_in_f32_and_bf16() -> Result<()> {
    let Some((gpu, _serial)) = gpu() else {
        return Ok(());
    };
    let x = Tensor::randn(0f32, 1.0, (8, 16, 16, 16), &Device::Cpu)?;
    let w = Tensor::randn(0f32, 0.1, (32, 16, 3, 3), &Device::Cpu)?;
    let run = |dev: &Device, bf16: bool| -> Result<(Tensor, Tensor)> {
        let _cast = layers::autocast::set(bf16.then_some(candle_core::DType::BF16));
        let wv = Var::from_tensor(&w.to_device(dev)?)?;
        let conv = Conv2d::new(wv.as_tensor().clone(), None, layers::conv_cfg(2, 1));
        let y = conv.forward(&x.to_device(dev)?)?;
        let grads = y.sqr()?.sum_all()?.backward()?;
        let gw = grads.get(&wv).expect("weight gradient").clone();
        // Under bf16 autocast CUDA's output is bf16 (the CPU's float32): compared in float32.
        let y = y.to_dtype(candle_core::DType::F32)?;
        Ok((y.to_device(&Device::Cpu)?, gw.to_device(&Device::Cpu)?))
    };
    for bf16 in [false, true] {
        let (y_cpu, g_cpu) = run(&Device::Cpu, bf16)?;
        let (y_gpu, g_gpu) = run(&gpu, bf16)?;
        let rel = |a: &Tensor, b: &Tensor| -> Result<f32> {
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?
                / b.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        let (dy, dg) = (rel(&y_gpu, &y_cpu)?, rel(&g_gpu, &g_cpu)?);
        println!(
            "conv bf16={bf16}: output differs by {dy:.2e}, weight gradient by {dg:.2e} (relative)"
        );
        let tol = if bf16 { 2e-2 } else { 1e-4 };
        assert!(dy < tol && dg < tol, "bf16={bf16}: {dy} {dg}");
    }
    Ok(())
}

/// Which convolution the build runs on CUDA, for the printed lines.
const CUDA_CONV: &str = if cfg!(feature = "cudnn") {
    "cuDNN"
} else {
    "Candle's conv2d"
};

/// One convolution case: input (N, C, H, W), output channels, kernel, stride, padding,
/// dilation, groups.
#[derive(Debug, Clone, Copy)]
struct ConvCase {
    x: [usize; 4],
    out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
}

impl ConvCase {
    fn w(&self) -> [usize; 4] {
        [self.out, self.x[1] / self.groups, self.k, self.k]
    }

    fn out_hw(&self) -> (usize, usize) {
        let span = self.dilation * (self.k - 1) + 1;
        let o = |i: usize| (i + 2 * self.padding - span) / self.stride + 1;
        (o(self.x[2]), o(self.x[3]))
    }

    fn y(&self) -> [usize; 4] {
        let (oh, ow) = self.out_hw();
        [self.x[0], self.out, oh, ow]
    }

    fn config(&self) -> candle_nn::Conv2dConfig {
        candle_nn::Conv2dConfig {
            padding: self.padding,
            stride: self.stride,
            dilation: self.dilation,
            groups: self.groups,
            cudnn_fwd_algo: None,
        }
    }

    /// Every (output index, input index, kernel index) of the convolution, the padding left
    /// out: the one loop the f64 reference's forward and both gradients share.
    fn taps(&self, mut each: impl FnMut(usize, usize, usize)) {
        let [n, c, h, w] = self.x;
        let [o, cg, k, _] = self.w();
        let (oh, ow) = self.out_hw();
        let og = o / self.groups;
        for b in 0..n {
            for oc in 0..o {
                let g = oc / og;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let yi = ((b * o + oc) * oh + oy) * ow + ox;
                        for ic in 0..cg {
                            let ch = g * cg + ic;
                            for ky in 0..k {
                                let iy = (oy * self.stride + ky * self.dilation) as isize
                                    - self.padding as isize;
                                if iy < 0 || iy >= h as isize {
                                    continue;
                                }
                                for kx in 0..k {
                                    let ix = (ox * self.stride + kx * self.dilation) as isize
                                        - self.padding as isize;
                                    if ix < 0 || ix >= w as isize {
                                        continue;
                                    }
                                    let xi = ((b * c + ch) * h + iy as usize) * w + ix as usize;
                                    let wi = ((oc * cg + ic) * k + ky) * k + kx;
                                    each(yi, xi, wi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// y, dL/dx and dL/dw for L = sum(y * g), in f64 by the definition.
    fn reference(&self, x: &[f32], w: &[f32], g: &[f32]) -> [Vec<f64>; 3] {
        let mut y = vec![0f64; g.len()];
        let mut gx = vec![0f64; x.len()];
        let mut gw = vec![0f64; w.len()];
        self.taps(|yi, xi, wi| {
            y[yi] += x[xi] as f64 * w[wi] as f64;
            gx[xi] += g[yi] as f64 * w[wi] as f64;
            gw[wi] += g[yi] as f64 * x[xi] as f64;
        });
        [y, gx, gw]
    }
}

/// max |a - r| / max |r|.
fn relative(a: &[f32], r: &[f64]) -> f64 {
    let diff = a
        .iter()
        .zip(r)
        .map(|(a, r)| (*a as f64 - r).abs())
        .fold(0f64, f64::max);
    diff / r.iter().map(|r| r.abs()).fold(f64::MIN_POSITIVE, f64::max)
}

/// The size of the terms batch norm's input gradient is the difference of:
/// `max over channels of |weight| / sqrt(batch variance + eps)`, times `max |upstream|`.
fn input_gradient_terms(x: &Tensor, weight: &Tensor, upstream: &Tensor, eps: f64) -> Result<f64> {
    let var = x
        .transpose(0, 1)?
        .flatten_from(1)?
        .to_dtype(candle_core::DType::F64)?;
    let mean = var.mean_keepdim(1)?;
    let var = var.broadcast_sub(&mean)?.sqr()?.mean(1)?.to_vec1::<f64>()?;
    let weight = weight.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    let g = host(upstream)?
        .iter()
        .fold(0f64, |m, v| m.max((*v as f64).abs()));
    let w_over_sigma = weight
        .iter()
        .zip(&var)
        .fold(0f64, |m, (w, v)| m.max(w.abs() / (v + eps).sqrt()));
    Ok((w_over_sigma * g).max(f64::MIN_POSITIVE))
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1()
}

/// Values a bf16 holds exactly, so that the bf16 runs and the reference see the same numbers.
fn bf16_exact(t: Tensor) -> Result<Tensor> {
    t.to_dtype(candle_core::DType::BF16)?
        .to_dtype(candle_core::DType::F32)
}

/// A convolution of `x` to `out` channels with a `k`x`k` kernel and `padding`, stride 1, no
/// dilation, one group.
const fn conv(x: [usize; 4], out: usize, k: usize, padding: usize) -> ConvCase {
    ConvCase {
        x,
        out,
        k,
        stride: 1,
        padding,
        dilation: 1,
        groups: 1,
    }
}

impl ConvCase {
    const fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }

    const fn dilation(self, dilation: usize) -> Self {
        Self { dilation, ..self }
    }

    const fn groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }
}

const CONV_CASES: [ConvCase; 10] = [
    // ResNet's 3x3, stride 1 and 2, its 1x1 projection with stride 2, a 1x1, the 7x7 stem.
    conv([8, 16, 12, 12], 32, 3, 1),
    // The MNIST CNN's first layer: one input channel.
    conv([4, 1, 12, 12], 8, 3, 0),
    conv([4, 8, 15, 15], 16, 3, 1).stride(2),
    conv([4, 16, 9, 8], 32, 1, 0).stride(2),
    conv([4, 32, 8, 8], 16, 1, 0),
    conv([2, 3, 32, 32], 16, 7, 3).stride(2),
    // Grouped, depthwise, dilated, and all three with a stride.
    conv([4, 16, 10, 10], 32, 3, 1).groups(4),
    conv([4, 16, 10, 10], 16, 3, 1).groups(16),
    conv([4, 8, 13, 13], 8, 3, 2).dilation(2),
    conv([4, 8, 14, 13], 12, 3, 1)
        .stride(2)
        .dilation(2)
        .groups(2),
];

/// The convolution forward and both gradients on CUDA (cuDNN with the `cudnn` feature)
/// against an f64 reference: float32 with TF32 off within 1e-5 of the scale, TF32 and bf16
/// autocast (inputs that bf16 holds exactly) within 1e-2; with the input contiguous and
/// channels-last (cuDNN's NHWC kernels, the output channels-last too), and channels-last with
/// the NHWC kernels off (`cudnn` builds: NCHW kernels on copies, what a convolution cuDNN has
/// no NHWC algorithm for runs).
#[test]
fn conv_forward_and_both_gradients_match_an_f64_reference() -> Result<()> {
    let Some((gpu, _serial)) = gpu() else {
        return Ok(());
    };
    for case in CONV_CASES {
        let x = bf16_exact(Tensor::randn(0f32, 1.0, case.x.to_vec(), &Device::Cpu)?)?;
        let w = bf16_exact(Tensor::randn(0f32, 0.2, case.w().to_vec(), &Device::Cpu)?)?;
        let g: Vec<f32> = (0..case.y().iter().product::<usize>())
            .map(|i| ((i * 31) % 7) as f32 - 3.0)
            .collect();
        let [y_ref, gx_ref, gw_ref] = case.reference(&host(&x)?, &host(&w)?, &g);
        let modes = [("f32", 1e-5), ("tf32", 1e-2), ("bf16", 1e-2)];
        let formats = [
            (MemoryFormat::Contiguous, true),
            (MemoryFormat::ChannelsLast, true),
            (MemoryFormat::ChannelsLast, false),
        ];
        for ((precision, tol), (format, nhwc_kernels)) in
            modes.iter().flat_map(|m| formats.map(|f| (*m, f)))
        {
            #[cfg(feature = "cudnn")]
            let _kernels = layers::cudnn_nhwc_kernels(nhwc_kernels);
            #[cfg(not(feature = "cudnn"))]
            if !nhwc_kernels {
                continue;
            }
            let format_name = match nhwc_kernels {
                true => format.to_string(),
                false => format!("{format} (NCHW kernels)"),
            };
            let _tf32 = layers::autocast::tf32(precision == "tf32");
            let _preferred = layers::memory_format::prefer(format);
            let _cast =
                layers::autocast::set((precision == "bf16").then_some(candle_core::DType::BF16));
            let xv = Var::from_tensor(&x.to_device(&gpu)?)?;
            let wv = Var::from_tensor(&w.to_device(&gpu)?)?;
            let conv = Conv2d::new(wv.as_tensor().clone(), None, case.config());
            let y = conv.forward(&format.apply(xv.as_tensor())?)?;
            let [_, o, oh, ow] = case.y();
            if format == MemoryFormat::ChannelsLast && o > 1 && oh * ow > 1 {
                assert!(
                    is_channels_last(&y),
                    "{case:?}: output strides {:?}",
                    y.stride()
                );
            }
            // In the output's dtype: bf16 under autocast on CUDA (the values are exact there).
            let upstream = Tensor::from_slice(&g, y.shape(), &Device::Cpu)?
                .to_device(&gpu)?
                .to_dtype(y.dtype())?;
            let grads = (&y * upstream)?.sum_all()?.backward()?;
            let gx = grads.get(&xv).expect("input gradient");
            let gw = grads.get(&wv).expect("weight gradient");
            check_conv(
                &format!("{precision} {format_name} {case:?}"),
                [&y, gx, gw],
                [&y_ref, &gx_ref, &gw_ref],
                tol,
            )?;
        }
    }
    Ok(())
}

/// A convolution's output and two gradients against the f64 reference `refs`: the relative
/// errors printed for `what` and each asserted under `tol`.
fn check_conv(what: &str, got: [&Tensor; 3], refs: [&[f64]; 3], tol: f64) -> Result<()> {
    let mut errors = [0f64; 3];
    for ((e, t), r) in errors.iter_mut().zip(got).zip(refs) {
        *e = relative(&host(t)?, r);
    }
    println!(
        "{CUDA_CONV} conv {what}: output {:.1e}, input gradient {:.1e}, weight gradient {:.1e} (relative)",
        errors[0], errors[1], errors[2]
    );
    assert!(
        errors.iter().all(|e| *e < tol),
        "{what}: {errors:?} over {tol}"
    );
    Ok(())
}

/// A convolution whose input starts off a 16-byte boundary (a contiguous view 1, 2 or 4 values
/// into its buffer: 4, 8 or 16 bytes in float32, 2, 4 or 8 in bf16), run after and before the
/// same convolution on an aligned input, in float32 and bf16:
/// the forward and both gradients match the f64 reference as the aligned run's do. (cuDNN's
/// algorithms chosen on aligned operands are not reused for misaligned ones: the choice is
/// keyed by the operands' alignment, as PyTorch's.)
#[test]
fn a_misaligned_input_matches_the_reference_after_an_aligned_one() -> Result<()> {
    use candle_core::DType;
    let Some((gpu, _serial)) = gpu() else {
        return Ok(());
    };
    let case = CONV_CASES[0];
    let x = bf16_exact(Tensor::randn(0f32, 1.0, case.x.to_vec(), &Device::Cpu)?)?;
    let w = bf16_exact(Tensor::randn(0f32, 0.2, case.w().to_vec(), &Device::Cpu)?)?;
    let g: Vec<f32> = (0..case.y().iter().product::<usize>())
        .map(|i| ((i * 31) % 7) as f32 - 3.0)
        .collect();
    let [y_ref, gx_ref, gw_ref] = case.reference(&host(&x)?, &host(&w)?, &g);
    let len = x.elem_count();
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
        for offset in [0, 1, 2, 4, 0] {
            let _cast = layers::autocast::set((dtype == DType::BF16).then_some(dtype));
            let padded = Tensor::cat(
                &[
                    Tensor::zeros(offset, DType::F32, &Device::Cpu)?,
                    x.flatten_all()?,
                ],
                0,
            )?;
            let xv = Var::from_tensor(&padded.to_device(&gpu)?.to_dtype(dtype)?)?;
            let xs = xv
                .as_tensor()
                .narrow(0, offset, len)?
                .reshape(case.x.to_vec())?;
            assert_eq!(
                (xs.layout().start_offset(), xs.is_contiguous()),
                (offset, true),
                "the input is a contiguous view {offset} values into its buffer"
            );
            let wv = Var::from_tensor(&w.to_device(&gpu)?.to_dtype(dtype)?)?;
            let y = Conv2d::new(wv.as_tensor().clone(), None, case.config()).forward(&xs)?;
            let upstream = Tensor::from_slice(&g, y.shape(), &Device::Cpu)?
                .to_device(&gpu)?
                .to_dtype(y.dtype())?;
            let grads = (&y * upstream)?.sum_all()?.backward()?;
            let gx = grads
                .get(&xv)
                .expect("input gradient")
                .narrow(0, offset, len)?;
            let gw = grads.get(&wv).expect("weight gradient");
            let bytes = offset * dtype.size_in_bytes();
            check_conv(
                &format!("{dtype:?}, input {bytes} bytes into its buffer"),
                [&y, &gx, gw],
                [&y_ref, &gx_ref, &gw_ref],
                tol,
            )?;
        }
    }
    Ok(())
}

/// Training-mode batch norm (with and without its ReLU) on CUDA, cuDNN's with the `cudnn`
/// feature, against the CPU's: output, the three gradients, the running statistics and the
/// batch count, within 1e-5 of their scale.
#[test]
fn batch_norm_training_step_matches_the_cpu() -> Result<()> {
    let Some((gpu, _serial)) = gpu() else {
        return Ok(());
    };
    let path = if cfg!(feature = "cudnn") {
        "cuDNN"
    } else {
        "portable"
    };
    let cases = [
        ((8, 6, 7, 5), false),
        ((8, 6, 7, 5), true),
        ((16, 32, 8, 8), true),
        ((64, 10, 1, 1), false),
        ((2, 3, 1, 1), true),
    ];
    let formats = [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast];
    for ((shape, relu), format) in cases.iter().flat_map(|c| formats.map(|f| (*c, f))) {
        let c = shape.1;
        let x = (Tensor::randn(0f32, 2.0, shape, &Device::Cpu)? + 1.5)?;
        let weight = Tensor::randn(1f32, 0.3, c, &Device::Cpu)?;
        let bias = Tensor::randn(0f32, 0.5, c, &Device::Cpu)?;
        let mean = Tensor::randn(0f32, 0.1, c, &Device::Cpu)?;
        let var = Tensor::rand(0.5f32, 1.5, c, &Device::Cpu)?;
        let upstream = Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?;
        let run = |dev: &Device| -> Result<Vec<Vec<f32>>> {
            let xv = Var::from_tensor(&x.to_device(dev)?)?;
            let wv = Var::from_tensor(&weight.to_device(dev)?)?;
            let bv = Var::from_tensor(&bias.to_device(dev)?)?;
            let bn = BatchNorm::new(
                mean.to_device(dev)?,
                var.to_device(dev)?,
                wv.as_tensor().clone(),
                bv.as_tensor().clone(),
                1e-5,
                0.1,
            )?
            .with_batches_tracked(Tensor::new(3i64, dev)?)?;
            let input = format.apply(xv.as_tensor())?;
            let y = match relu {
                true => bn.forward_relu(&input, true)?,
                false => bn.forward_t(&input, true)?,
            };
            assert_eq!(is_channels_last(&y), is_channels_last(&input), "{shape:?}");
            let grads = (&y * upstream.to_device(dev)?)?.sum_all()?.backward()?;
            let count = bn
                .num_batches_tracked()
                .expect("counted")
                .to_device(&Device::Cpu)?;
            Ok(vec![
                host(&y)?,
                host(grads.get(&xv).expect("input gradient"))?,
                host(grads.get(&wv).expect("weight gradient"))?,
                host(grads.get(&bv).expect("bias gradient"))?,
                host(bn.running_mean().expect("running statistics"))?,
                host(bn.running_var().expect("running statistics"))?,
                vec![count.to_scalar::<i64>()? as f32],
            ])
        };
        let (cpu, cuda) = (run(&Device::Cpu)?, run(&gpu)?);
        let names = [
            "output",
            "input grad",
            "weight grad",
            "bias grad",
            "running mean",
            "running var",
            "count",
        ];
        // The input gradient `w / sigma * (g - mean(g) - x_hat * mean(g * x_hat))` is a
        // difference of terms of size `|w| / sigma * |g|`, which cancel to nearly nothing when a
        // channel has few values (two values per channel leave only what `eps` adds: an H200
        // run failed on 5e-3 of such a remainder). Its error is measured against those terms.
        let terms = input_gradient_terms(&x, &weight, &upstream, 1e-5)?;
        let errors: Vec<f64> = cpu
            .iter()
            .zip(&cuda)
            .enumerate()
            .map(|(i, (r, a))| {
                let r: Vec<f64> = r.iter().map(|v| *v as f64).collect();
                let e = relative(a, &r);
                match i {
                    1 => {
                        let size = r.iter().fold(f64::MIN_POSITIVE, |m, v| m.max(v.abs()));
                        e * size / terms.max(size)
                    }
                    _ => e,
                }
            })
            .collect();
        let report: Vec<String> = names
            .iter()
            .zip(&errors)
            .map(|(n, e)| format!("{n} {e:.1e}"))
            .collect();
        println!(
            "{path} batch norm {shape:?} {format} relu={relu}: {}",
            report.join(", ")
        );
        assert!(
            errors.iter().all(|e| *e < 1e-5),
            "{shape:?} {format} relu={relu}: {}",
            report.join(", ")
        );
    }
    Ok(())
}

/// Under bf16 autocast on CUDA, as PyTorch's: a convolution hands on bf16 (its bias added in
/// bf16), batch norm takes and gives bf16 (cuDNN's mixed-precision batch norm: statistics,
/// parameters and their gradients float32) and equals the float32 batch norm of the same
/// values within bf16's rounding, and a linear layer hands back float32 logits.
#[test]
fn autocast_on_cuda_keeps_bf16_activations_and_float32_statistics() -> Result<()> {
    use candle_core::DType;
    let Some((gpu, _serial)) = gpu() else {
        return Ok(());
    };
    let _bf16 = layers::autocast::enable(DType::BF16)?;
    let x = Tensor::randn(0f32, 1.0, (8, 3, 12, 12), &Device::Cpu)?.to_device(&gpu)?;
    let w = Tensor::randn(0f32, 0.3, (16, 3, 3, 3), &Device::Cpu)?.to_device(&gpu)?;
    let b = Tensor::randn(0f32, 0.3, 16, &Device::Cpu)?.to_device(&gpu)?;
    let conv = Conv2d::new(
        w,
        Some(b),
        candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        },
    );
    let y = conv.forward(&x)?;
    assert_eq!(
        y.dtype(),
        DType::BF16,
        "convolution output under autocast on CUDA"
    );

    let c = 16;
    let make = || -> Result<(BatchNorm, Var, Var)> {
        let wv = Var::from_tensor(&Tensor::rand(0.5f32, 1.5, c, &Device::Cpu)?.to_device(&gpu)?)?;
        let bv = Var::from_tensor(&Tensor::rand(-0.5f32, 0.5, c, &Device::Cpu)?.to_device(&gpu)?)?;
        let bn = BatchNorm::new(
            Tensor::zeros(c, DType::F32, &gpu)?,
            Tensor::ones(c, DType::F32, &gpu)?,
            wv.as_tensor().clone(),
            bv.as_tensor().clone(),
            1e-5,
            0.1,
        )?;
        Ok((bn, wv, bv))
    };
    let (bn16, w16, b16) = make()?;
    let (bn32, w32, b32) = make()?;
    let (w_init, b_init) = (w16.as_tensor().copy()?, b16.as_tensor().copy()?);
    w32.set(&w_init)?;
    b32.set(&b_init)?;
    let x16 = Var::from_tensor(&y.detach())?;
    let x32 = Var::from_tensor(&y.detach().to_dtype(DType::F32)?)?;
    let up = Tensor::randn(0f32, 1.0, y.shape(), &Device::Cpu)?.to_device(&gpu)?;
    let y16 = bn16.forward_relu(x16.as_tensor(), true)?;
    assert_eq!(
        y16.dtype(),
        DType::BF16,
        "batch norm output for a bf16 input"
    );
    let y32 = {
        let _off = layers::autocast::set(None);
        bn32.forward_relu(x32.as_tensor(), true)?
    };
    let g16 = (y16.to_dtype(DType::F32)? * &up)?.sum_all()?.backward()?;
    let g32 = (&y32 * &up)?.sum_all()?.backward()?;
    let pairs = [
        ("output", host(&y16)?, host(&y32)?, 1e-2),
        (
            "input gradient",
            host(g16.get(&x16).expect("dx"))?,
            host(g32.get(&x32).expect("dx"))?,
            2e-2,
        ),
        (
            "weight gradient",
            host(g16.get(&w16).expect("dw"))?,
            host(g32.get(&w32).expect("dw"))?,
            1e-2,
        ),
        (
            "bias gradient",
            host(g16.get(&b16).expect("db"))?,
            host(g32.get(&b32).expect("db"))?,
            1e-2,
        ),
        (
            "running mean",
            host(bn16.running_mean().expect("running statistics"))?,
            host(bn32.running_mean().expect("running statistics"))?,
            1e-5,
        ),
        (
            "running var",
            host(bn16.running_var().expect("running statistics"))?,
            host(bn32.running_var().expect("running statistics"))?,
            1e-5,
        ),
    ];
    for (what, a, r, tol) in pairs {
        let e = relative(&a, &r.iter().map(|v| *v as f64).collect::<Vec<_>>());
        println!("bf16 batch norm against float32: {what} {e:.1e}");
        assert!(e < tol, "{what}: {e} over {tol}");
    }
    assert_eq!(g16.get(&w16).expect("dw").dtype(), DType::F32);

    let lin = layers::Linear::new(
        Tensor::randn(0f32, 0.1, (10, 16 * 12 * 12), &Device::Cpu)?.to_device(&gpu)?,
        Some(Tensor::zeros(10, DType::F32, &gpu)?),
    );
    let logits = lin.forward(&layers::flatten(&y16)?)?;
    assert_eq!(logits.dtype(), DType::F32, "linear output under autocast");
    Ok(())
}

/// Dropout on CUDA: the mask is drawn on the device from a seed of `layers::rng`, so the same
/// seed gives the same mask; about `1 - p` of the elements are kept, each scaled by
/// `1 / (1 - p)`, and the gradient is the mask.
#[test]
fn dropout_on_cuda_repeats_with_the_seed_and_keeps_the_rate() -> Result<()> {
    let Some((gpu, _serial)) = gpu() else {
        return Ok(());
    };
    let n = 1 << 20;
    let x = Var::from_tensor(&Tensor::ones(n, candle_core::DType::F32, &gpu)?)?;
    let drop = layers::Dropout::new(0.3)?;
    let mut masks = Vec::new();
    for seed in [7, 7, 8] {
        layers::rng::set_seed(seed);
        let y = drop.forward_t(x.as_tensor(), true)?;
        let g = y.sum_all()?.backward()?;
        let (y, g) = (host(&y)?, host(g.get(&x).expect("gradient"))?);
        let scale = (1.0 / 0.7f64) as f32;
        assert!(
            y.iter().all(|v| *v == 0.0 || *v == scale),
            "values other than 0 and 1/keep"
        );
        assert_eq!(y, g, "the gradient of a sum through dropout is its mask");
        let kept = y.iter().filter(|v| **v != 0.0).count() as f64 / n as f64;
        println!("dropout p=0.3 on CUDA, seed {seed}: kept {kept:.4}");
        assert!((kept - 0.7).abs() < 0.005, "kept {kept}");
        masks.push(y);
    }
    assert_eq!(masks[0], masks[1], "the same seed draws the same mask");
    assert_ne!(masks[0], masks[2], "another seed draws another mask");
    Ok(())
}

/// A residual block (a convolution with a bias, batch norm and ReLU; a convolution, batch norm,
/// the join and its ReLU; a 2x2 max pooling, then adaptive pooling) trained one step on CUDA
/// with a channels-last input equals the same step with a contiguous one: in float32 within
/// 1e-4 of the scale (cuDNN's NHWC and NCHW kernels sum in other orders), in bf16 autocast
/// within 2e-2; the block's output is channels-last, and the running statistics and the
/// evaluation-mode output after the step agree.
#[test]
fn channels_last_block_matches_the_contiguous_one() -> Result<()> {
    use candle_core::DType;
    let Some((gpu, _serial)) = gpu() else {
        return Ok(());
    };
    let (n, c, h) = (8, 16, 10);
    let x = Tensor::randn(0f32, 1.0, (n, c, h, h), &Device::Cpu)?;
    let w1 = Tensor::randn(0f32, 0.2, (c, c, 3, 3), &Device::Cpu)?;
    let b1 = Tensor::randn(0f32, 0.2, c, &Device::Cpu)?;
    let w2 = Tensor::randn(0f32, 0.2, (c, c, 3, 3), &Device::Cpu)?;
    let bn_w = Tensor::rand(0.5f32, 1.5, c, &Device::Cpu)?;
    let bn_b = Tensor::rand(-0.5f32, 0.5, c, &Device::Cpu)?;
    let run = |format: MemoryFormat, bf16: bool| -> Result<Vec<Vec<f32>>> {
        let _cast = layers::autocast::set(bf16.then_some(DType::BF16));
        let _preferred = layers::memory_format::prefer(format);
        let vars = [&x, &w1, &b1, &w2, &bn_w, &bn_b]
            .map(|t| t.to_device(&gpu).and_then(|t| Var::from_tensor(&t)));
        let [xv, w1v, b1v, w2v, bwv, bbv] = vars;
        let (xv, w1v, b1v, w2v, bwv, bbv) = (xv?, w1v?, b1v?, w2v?, bwv?, bbv?);
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let bn = || {
            BatchNorm::new(
                Tensor::zeros(c, DType::F32, &gpu)?,
                Tensor::ones(c, DType::F32, &gpu)?,
                bwv.as_tensor().clone(),
                bbv.as_tensor().clone(),
                1e-5,
                0.1,
            )
        };
        let (bn1, bn2) = (bn()?, bn()?);
        let conv1 = Conv2d::new(w1v.as_tensor().clone(), Some(b1v.as_tensor().clone()), cfg);
        let conv2 = Conv2d::new(w2v.as_tensor().clone(), None, cfg);
        let block = |input: &Tensor, train: bool| -> Result<Tensor> {
            let a = conv1.forward_batch_norm(input, &bn1, true, train)?;
            let shortcut = match layers::autocast::dtype() {
                Some(d) => format.apply(&input.to_dtype(d)?)?,
                None => input.clone(),
            };
            conv2.forward_batch_norm_add_relu(&a, &bn2, &shortcut, train)
        };
        let input = format.apply(xv.as_tensor())?;
        let y = block(&input, true)?;
        assert_eq!(
            is_channels_last(&y),
            format == MemoryFormat::ChannelsLast,
            "block output strides {:?}",
            y.stride()
        );
        let pooled = Pool2d::max(2, 2).forward(&y)?;
        assert_eq!(is_channels_last(&pooled), is_channels_last(&y));
        let pooled = adaptive_avg_pool2d(&pooled, (1, 1))?.to_dtype(DType::F32)?;
        let up = Tensor::from_vec(
            (0..n * c)
                .map(|i| ((i * 31) % 7) as f32 - 3.0)
                .collect::<Vec<f32>>(),
            (n, c, 1, 1),
            &gpu,
        )?;
        let grads = (pooled.broadcast_mul(&up)?).sum_all()?.backward()?;
        let mut out = vec![host(&y)?];
        for v in [&xv, &w1v, &b1v, &w2v, &bwv, &bbv] {
            out.push(host(grads.get(v.as_tensor()).expect("a gradient"))?);
        }
        for bn in [&bn1, &bn2] {
            out.push(host(bn.running_mean().expect("running statistics"))?);
            out.push(host(bn.running_var().expect("running statistics"))?);
        }
        let evaluated = block(&input, false)?;
        assert_eq!(is_channels_last(&evaluated), is_channels_last(&y));
        out.push(host(&evaluated)?);
        Ok(out)
    };
    let names = [
        "output",
        "input grad",
        "conv1 weight grad",
        "conv1 bias grad",
        "conv2 weight grad",
        "bn weight grad",
        "bn bias grad",
        "bn1 running mean",
        "bn1 running var",
        "bn2 running mean",
        "bn2 running var",
        "evaluation output",
    ];
    for (bf16, tol) in [(false, 1e-4), (true, 2e-2)] {
        let plain = run(MemoryFormat::Contiguous, bf16)?;
        let last = run(MemoryFormat::ChannelsLast, bf16)?;
        assert_eq!((plain.len(), last.len()), (names.len(), names.len()));
        for ((name, a), r) in names.iter().zip(&last).zip(&plain) {
            let e = relative(a, &r.iter().map(|v| *v as f64).collect::<Vec<_>>());
            println!(
                "{CUDA_CONV} block, channels_last against contiguous, bf16={bf16}: {name} {e:.1e}"
            );
            assert!(e < tol, "bf16={bf16} {name}: {e} over {tol}");
        }
    }
    Ok(())
}

/// ReLU, Tanh and the residual join `relu(a + b)` on CUDA (one kernel each way with the `cuda`
/// feature) against the CPU's, forward and backward: ReLU and the join bit for bit in float32
/// and in bf16 (the CPU's float32 result of the bf16 values, rounded to bf16), Tanh within
/// 1e-5 of the scale in float32 (both within 2 ulp of tanh) and 7e-2 in bf16 (its gradient
/// reads the output rounded to bf16, the CPU's the float32 one); PyTorch's rules at the edges (the gradient is zero
/// where the output is 0, passed where it is NaN; NaN stays NaN); channels-last inputs give
/// channels-last outputs with the same values.
#[test]
fn activations_match_the_cpu() -> Result<()> {
    use candle_core::DType;
    let Some((gpu, _serial)) = gpu() else {
        return Ok(());
    };
    let shape = (4, 6, 5, 7);
    let len = 4 * 6 * 5 * 7;
    // Values with exact zeros, a join whose sum is exactly zero (i = 5), a NaN and both
    // infinities.
    let special = |i: usize| match i % 61 {
        0 => 0.0,
        1 => f32::NAN,
        2 => f32::INFINITY,
        3 => f32::NEG_INFINITY,
        4 => -0.0,
        _ => ((i * 37) % 101) as f32 / 17.0 - 3.0,
    };
    let a = Tensor::from_vec(
        (0..len).map(special).collect::<Vec<f32>>(),
        shape,
        &Device::Cpu,
    )?;
    let b = Tensor::from_vec(
        (0..len)
            .map(|i| match i % 61 {
                // a + b = 0 exactly.
                5 => -special(5),
                _ => ((i * 53) % 89) as f32 / 13.0 - 3.5,
            })
            .collect::<Vec<f32>>(),
        shape,
        &Device::Cpu,
    )?;
    let up = Tensor::from_vec(
        (0..len)
            .map(|i| ((i * 29) % 11) as f32 - 5.0)
            .collect::<Vec<f32>>(),
        shape,
        &Device::Cpu,
    )?;
    type Op = fn(&Tensor, &Tensor) -> Result<Tensor>;
    let ops: [(&str, Op, f64); 3] = [
        ("relu", |a, _| layers::relu(a), 0.0),
        ("add_relu", |a, b| layers::add_relu(a, b), 0.0),
        ("tanh", |a, _| layers::tanh(a), 1e-5),
    ];
    let bits = |t: &Tensor| -> Result<Vec<u32>> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| v.to_bits())
            .collect())
    };
    for (name, op, tol) in ops {
        for dtype in [DType::F32, DType::BF16] {
            for format in [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast] {
                let run = |dev: &Device| -> Result<[Tensor; 4]> {
                    let plain = |t: &Tensor| t.to_dtype(dtype)?.to_device(dev);
                    // (A variable is a contiguous copy: the format is applied to its tensor.)
                    let (va, vb) = (
                        Var::from_tensor(&plain(&a)?)?,
                        Var::from_tensor(&plain(&b)?)?,
                    );
                    let (la, lb) = (format.apply(va.as_tensor())?, format.apply(vb.as_tensor())?);
                    // The CPU computes bf16 values in float32 (its kernels are float32's).
                    let (xa, xb) = match dev.is_cpu() {
                        true => (la.to_dtype(DType::F32)?, lb.to_dtype(DType::F32)?),
                        false => (la, lb),
                    };
                    let y = op(&xa, &xb)?;
                    let g = format.apply(&plain(&up)?)?.to_dtype(y.dtype())?;
                    let grads = (&y * &g)?.sum_all()?.backward()?;
                    let gb = match grads.get(&vb) {
                        Some(gb) => gb.clone(),
                        None => vb.zeros_like()?,
                    };
                    let ga = grads.get(&va).expect("a gradient").clone();
                    let yd = y.to_dtype(dtype)?;
                    Ok([yd, ga.to_dtype(dtype)?, gb.to_dtype(dtype)?, y])
                };
                let cpu = run(&Device::Cpu)?;
                let cuda = run(&gpu)?;
                if format == MemoryFormat::ChannelsLast {
                    assert!(
                        is_channels_last(&cuda[3]),
                        "{name} {dtype:?}: {:?}",
                        cuda[3].stride()
                    );
                }
                assert_eq!(cuda[3].dtype(), dtype, "{name}: output dtype");
                for (what, (c, g)) in ["output", "gradient of a", "gradient of b"]
                    .iter()
                    .zip(cpu.iter().zip(&cuda))
                {
                    let (c, g) = (bits(c)?, bits(g)?);
                    let step = match dtype {
                        DType::BF16 => 7e-2,
                        _ => tol,
                    };
                    let mut worst = 0f64;
                    for (i, (&c, &g)) in c.iter().zip(&g).enumerate() {
                        let (cf, gf) = (f32::from_bits(c), f32::from_bits(g));
                        if cf.is_nan() || gf.is_nan() {
                            assert!(
                                cf.is_nan() && gf.is_nan(),
                                "{name} {dtype:?} {format} {what} [{i}]: {cf} against {gf}"
                            );
                            continue;
                        }
                        if name != "tanh" {
                            assert_eq!(
                                c, g,
                                "{name} {dtype:?} {format} {what} [{i}]: {cf} against {gf}"
                            );
                            continue;
                        }
                        let e = ((cf - gf).abs() / cf.abs().max(1.0)) as f64;
                        worst = worst.max(e);
                        assert!(
                            e <= step,
                            "{name} {dtype:?} {format} {what} [{i}]: {cf} against {gf}"
                        );
                    }
                    println!("activation {name} {dtype:?} {format}: {what} within {worst:.1e} of the CPU");
                }
            }
        }
    }
    // PyTorch's rules, read from the CUDA results: zero gradient where relu's output is 0.
    let x = Tensor::new(&[-1f32, 0.0, 2.0, f32::NAN], &gpu)?;
    let v = Var::from_tensor(&x)?;
    let y = layers::relu(v.as_tensor())?;
    let grads = (y.clone() * Tensor::new(&[3f32, 3.0, 3.0, 3.0], &gpu)?)?
        .sum_all()?
        .backward()?;
    let g = grads.get(&v).expect("gradient").to_vec1::<f32>()?;
    let y = y.to_vec1::<f32>()?;
    assert_eq!(&y[..3], &[0.0, 0.0, 2.0]);
    assert!(y[3].is_nan(), "relu keeps NaN");
    assert_eq!(
        g,
        [0.0, 0.0, 3.0, 3.0],
        "threshold_backward: passed where the output is NaN"
    );
    Ok(())
}
