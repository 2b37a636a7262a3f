//! Every layer of ours gives the same numbers on CUDA as on the CPU, forward and backward.
//! Runs where the build has the `cuda` feature and a GPU is present; says so otherwise.

use candle_core::{Device, Module, ModuleT, Result, Tensor, Var};
use layers::{adaptive_avg_pool2d, BatchNorm, Conv2d, Pool2d, PoolKind};

fn gpu() -> Option<Device> {
    match Device::cuda_if_available(0) {
        Ok(d) if d.is_cuda() => Some(d),
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
    let Some(gpu) = gpu() else { return Ok(()) };
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
    let Some(gpu) = gpu() else { return Ok(()) };
    let x = Tensor::randn(0f32, 1.0, (8, 16, 16, 16), &Device::Cpu)?;
    let w = Tensor::randn(0f32, 0.1, (32, 16, 3, 3), &Device::Cpu)?;
    let run = |dev: &Device, bf16: bool| -> Result<(Tensor, Tensor)> {
        let _cast = layers::autocast::set(bf16.then_some(candle_core::DType::BF16));
        let wv = Var::from_tensor(&w.to_device(dev)?)?;
        let conv = Conv2d::new(wv.as_tensor().clone(), None, layers::conv_cfg(2, 1));
        let y = conv.forward(&x.to_device(dev)?)?;
        let grads = y.sqr()?.sum_all()?.backward()?;
        let gw = grads.get(&wv).expect("weight gradient").clone();
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
