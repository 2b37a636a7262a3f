//! The flat update against the per-tensor one: bit for bit, step after step, in parameters
//! and optimizer state, with mixed shapes, parameters that get no gradient (always, or only in
//! some steps), schedules changing the learning rate and momentum, and a saved state resumed
//! either way.

use anyhow::Result;
use candle_core::{Device, Tensor, Var};

use super::super::rounding::Rounding;
use super::super::{Adam, AdamConfig, NamedVar, Optimizer, Sgd, SgdConfig};
use super::*;

const SHAPES: [&[usize]; 6] = [&[3, 4, 2, 2], &[5], &[7, 3], &[1], &[2, 2, 2], &[300]];

/// The CPU, and the first GPU when the build has CUDA and the machine one.
fn devices() -> Result<Vec<Device>> {
    let gpu = Device::cuda_if_available(0)?;
    Ok(if gpu.is_cpu() {
        vec![gpu]
    } else {
        vec![Device::Cpu, gpu]
    })
}

/// The parameters on `dev`: deterministic values of every shape in [`SHAPES`].
fn params(dev: &Device) -> Result<Vec<NamedVar>> {
    let mut state = 7u64;
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
                })
                .collect();
            let t = Tensor::from_vec(values, *shape, dev)?;
            Ok((format!("p{i}"), Var::from_tensor(&t)?))
        })
        .collect()
}

/// A loss whose gradient differs per element and step: `sum(p^2 * k + sin(p))` over the
/// parameters used in step `step`. `p4` never is (a frozen parameter), `p1` only in even
/// steps, `p3` only from step 3 on.
fn step_loss(params: &[NamedVar], step: usize) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for (i, (_, v)) in params.iter().enumerate() {
        let used = match i {
            4 => false,
            1 => step.is_multiple_of(2),
            3 => step >= 3,
            _ => true,
        };
        if !used {
            continue;
        }
        let p = v.as_tensor();
        let term = ((p.sqr()? * (0.3 + i as f64 * 0.2))? + p.sin()?)?.sum_all()?;
        total = Some(match total {
            Some(t) => (t + term)?,
            None => term,
        });
    }
    Ok(total.expect("some parameter is used"))
}

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f32::to_bits)
        .collect())
}

/// Each buffer of the optimizer's state by name, with its shape and dtype, as bytes.
fn state_bits(opt: &dyn Optimizer) -> Result<Vec<(String, String, Vec<u8>)>> {
    let mut out = Vec::new();
    for (k, t) in opt.state()? {
        let bytes = match t.dtype() {
            candle_core::DType::F32 => bits(&t)?.iter().flat_map(|b| b.to_le_bytes()).collect(),
            _ => t
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?
                .to_le_bytes()
                .to_vec(),
        };
        out.push((k, format!("{:?} {:?}", t.dims(), t.dtype()), bytes));
    }
    out.sort();
    Ok(out)
}

type Make = fn(Vec<NamedVar>, Update, Rounding) -> Result<Box<dyn Optimizer>>;

/// Where the flat step runs the CUDA kernel (on a CUDA device in a `cuda` build, on the CPU
/// with `cuda-emulation`).
fn kernel_runs(d: &Device) -> bool {
    (d.is_cuda() && cfg!(feature = "cuda")) || (d.is_cpu() && cfg!(feature = "cuda-emulation"))
}

/// The roundings to compare the updates in on `dev`: the CUDA kernel's and Candle's (twice)
/// where the flat step runs the kernel, else both of the fused CPU step's.
fn roundings(dev: &Device) -> Vec<Rounding> {
    match kernel_runs(dev) {
        true => vec![Rounding::Twice],
        false => vec![Rounding::Once, Rounding::Twice],
    }
}

/// On a CUDA device (in a `cuda` build), and on the CPU with `cuda-emulation`, the flat step of
/// `params` with these gradients runs as the one-launch kernel (`multi_tensor.rs`), so
/// the comparisons above test it.
fn assert_one_launch(params: &[NamedVar], grads: &candle_core::backprop::GradStore) {
    let (vars, grads): (Vec<&Var>, Vec<&Tensor>) = params
        .iter()
        .filter_map(|(_, v)| grads.get(v.as_tensor()).map(|g| (v, g)))
        .unzip();
    if vars.first().is_some_and(|v| kernel_runs(v.device())) {
        assert!(
            one_launch(&vars, &grads),
            "the one-launch kernel does not take these"
        );
    }
}

/// Runs `steps` steps of `make` per tensor and flat, from the same parameters, and checks that
/// parameters and state agree bit for bit after every step; the schedule moves the learning
/// rate and momentum every step (momentum 0 in step 4). Then both states resume both ways.
fn same_both_ways(make: Make, steps: usize) -> Result<()> {
    for dev in devices()? {
        for r in roundings(&dev) {
            same_both_ways_on(make, steps, &dev, r)?;
        }
    }
    Ok(())
}

fn same_both_ways_on(make: Make, steps: usize, dev: &Device, r: Rounding) -> Result<()> {
    let (a, b) = (params(dev)?, params(dev)?);
    let mut per_tensor = make(a.clone(), Update::PerTensor, r)?;
    let mut flat = make(b.clone(), Update::Flat, r)?;
    let lr = per_tensor.learning_rate();
    let momentum = per_tensor.momentum();
    for step in 1..=steps {
        for opt in [&mut per_tensor, &mut flat] {
            opt.set_learning_rate(lr * (1.0 + 0.25 * step as f64));
            opt.set_momentum(if step == 4 {
                0.0
            } else {
                momentum * (1.0 - 0.05 * step as f64)
            });
        }
        per_tensor.step(&step_loss(&a, step)?.backward()?)?;
        let grads = step_loss(&b, step)?.backward()?;
        assert_one_launch(&b, &grads);
        flat.step(&grads)?;
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert_eq!(
                bits(x.as_tensor())?,
                bits(y.as_tensor())?,
                "{name} after step {step}"
            );
        }
        assert_eq!(
            state_bits(per_tensor.as_ref())?,
            state_bits(flat.as_ref())?,
            "step {step}"
        );
    }
    assert_eq!(
        bits(a[4].1.as_tensor())?,
        bits(params(dev)?[4].1.as_tensor())?,
        "frozen p4 moved"
    );
    assert!(flat.state()?.keys().all(|k| !k.starts_with("p4.")));
    // The optimizer state files (as `state.safetensors` holds them) are the same bytes.
    let dir = tempfile::tempdir()?;
    let mut files = Vec::new();
    for (name, opt) in [("per-tensor", &per_tensor), ("flat", &flat)] {
        let path = dir.path().join(format!("{name}.safetensors"));
        layers::checkpoint::save_with_metadata(&opt.state()?, None, &path)?;
        files.push(std::fs::read(&path)?);
    }
    assert_eq!(files[0], files[1]);
    // A saved state resumes the same way per tensor and flat.
    let saved = flat.state()?;
    let mut finals = Vec::new();
    for update in [Update::PerTensor, Update::Flat] {
        let resumed: Vec<NamedVar> = b
            .iter()
            .map(|(n, v)| Ok((n.clone(), Var::from_tensor(&v.as_tensor().copy()?)?)))
            .collect::<Result<_>>()?;
        let mut opt = make(resumed.clone(), update, r)?;
        opt.load_state(&saved)?;
        opt.set_learning_rate(lr);
        opt.set_momentum(momentum);
        for step in steps + 1..steps + 3 {
            opt.step(&step_loss(&resumed, step)?.backward()?)?;
        }
        let values: Vec<Vec<u32>> = resumed
            .iter()
            .map(|(_, v)| bits(v.as_tensor()))
            .collect::<Result<_>>()?;
        finals.push((values, state_bits(opt.as_ref())?));
    }
    assert_eq!(finals[0], finals[1]);
    Ok(())
}

#[test]
fn flat_sgd_equals_the_per_tensor_update_bit_for_bit() -> Result<()> {
    let makes: [Make; 4] = [
        |p, u, r| {
            Ok(Box::new(
                Sgd::new(p, SgdConfig::new(0.1))?
                    .with_update(u)
                    .with_rounding(r),
            ))
        },
        |p, u, r| {
            let c = SgdConfig {
                momentum: 0.9,
                weight_decay: 5e-4,
                ..SgdConfig::new(0.05)
            };
            Ok(Box::new(Sgd::new(p, c)?.with_update(u).with_rounding(r)))
        },
        |p, u, r| {
            let c = SgdConfig {
                momentum: 0.8,
                dampening: 0.3,
                weight_decay: 0.01,
                ..SgdConfig::new(0.1)
            };
            Ok(Box::new(Sgd::new(p, c)?.with_update(u).with_rounding(r)))
        },
        |p, u, r| {
            let c = SgdConfig {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 0.01,
                ..SgdConfig::new(0.1)
            };
            Ok(Box::new(Sgd::new(p, c)?.with_update(u).with_rounding(r)))
        },
    ];
    for make in makes {
        same_both_ways(make, 6)?;
    }
    Ok(())
}

/// More tensors than one launch of the CUDA step takes (64): 70 small parameters, some with
/// exact zeros, updated flat and per tensor by SGD with weight decay and Nesterov momentum, by
/// AdamW and by Adam with (coupled) weight decay, bit for bit after every step (on every device [`devices`] finds).
#[test]
fn flat_updates_of_more_tensors_than_one_launch_takes_equal_the_per_tensor_ones() -> Result<()> {
    let makes: [Make; 3] = [
        |p, u, r| {
            let c = SgdConfig {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 5e-4,
                ..SgdConfig::new(0.05)
            };
            Ok(Box::new(Sgd::new(p, c)?.with_update(u).with_rounding(r)))
        },
        |p, u, r| {
            let c = AdamConfig {
                weight_decay: 0.02,
                ..AdamConfig::adamw(0.01)
            };
            Ok(Box::new(Adam::new(p, c)?.with_update(u).with_rounding(r)))
        },
        |p, u, r| {
            let c = AdamConfig {
                weight_decay: 0.1,
                ..AdamConfig::adam(0.05)
            };
            Ok(Box::new(Adam::new(p, c)?.with_update(u).with_rounding(r)))
        },
    ];
    let runs = devices()?.into_iter().flat_map(|d| {
        let rs = roundings(&d);
        rs.into_iter()
            .flat_map(move |r| makes.map(|m| (d.clone(), m, r)))
    });
    for (dev, make, r) in runs {
        let tensors = |dev: &Device| -> Result<Vec<NamedVar>> {
            (0..70)
                .map(|i| {
                    let n = 1 + (i * 7) % 13;
                    let values: Vec<f32> = (0..n)
                        .map(|j| match (i + j) % 5 {
                            0 => 0.0,
                            k => (k as f32 - 2.5) * (1.0 + i as f32 / 50.0),
                        })
                        .collect();
                    let t = Tensor::from_vec(values, n, dev)?;
                    Ok((format!("q{i}"), Var::from_tensor(&t)?))
                })
                .collect()
        };
        let (a, b) = (tensors(&dev)?, tensors(&dev)?);
        let mut per_tensor = make(a.clone(), Update::PerTensor, r)?;
        let mut flat = make(b.clone(), Update::Flat, r)?;
        let loss = |params: &[NamedVar], step: usize| -> Result<Tensor> {
            let mut total = Tensor::zeros((), candle_core::DType::F32, &dev)?;
            for (i, (_, v)) in params.iter().enumerate() {
                let k = 0.1 + ((i + step) % 4) as f64 * 0.3;
                total = (total + (v.as_tensor().sqr()? * k)?.sum_all()?)?;
            }
            Ok(total)
        };
        for step in 1..=3 {
            per_tensor.step(&loss(&a, step)?.backward()?)?;
            let grads = loss(&b, step)?.backward()?;
            assert_one_launch(&b, &grads);
            flat.step(&grads)?;
            for ((name, x), (_, y)) in a.iter().zip(&b) {
                assert_eq!(
                    bits(x.as_tensor())?,
                    bits(y.as_tensor())?,
                    "{name} after step {step} on {:?}, rounding {r:?}",
                    dev.location()
                );
            }
            assert_eq!(
                state_bits(per_tensor.as_ref())?,
                state_bits(flat.as_ref())?,
                "step {step}"
            );
        }
    }
    Ok(())
}

#[test]
fn flat_adam_and_adamw_equal_the_per_tensor_update_bit_for_bit() -> Result<()> {
    let makes: [Make; 5] = [
        |p, u, r| {
            Ok(Box::new(
                Adam::new(p, AdamConfig::adam(0.01))?
                    .with_update(u)
                    .with_rounding(r),
            ))
        },
        // A lerp weight 1 - beta1 of at least 0.5: PyTorch's `lerp` from the gradient's end.
        |p, u, r| {
            let c = AdamConfig {
                beta1: 0.3,
                ..AdamConfig::adam(0.01)
            };
            Ok(Box::new(Adam::new(p, c)?.with_update(u).with_rounding(r)))
        },
        |p, u, r| {
            let c = AdamConfig {
                weight_decay: 0.1,
                ..AdamConfig::adam(0.05)
            };
            Ok(Box::new(Adam::new(p, c)?.with_update(u).with_rounding(r)))
        },
        |p, u, r| {
            Ok(Box::new(
                Adam::new(p, AdamConfig::adamw(0.1))?
                    .with_update(u)
                    .with_rounding(r),
            ))
        },
        |p, u, r| {
            let c = AdamConfig {
                weight_decay: 0.5,
                eps: 0.1,
                beta2: 0.99,
                ..AdamConfig::adamw(0.05)
            };
            Ok(Box::new(Adam::new(p, c)?.with_update(u).with_rounding(r)))
        },
    ];
    for make in makes {
        same_both_ways(make, 6)?;
    }
    Ok(())
}

#[test]
fn groups_follow_dtype_and_state() -> Result<()> {
    let keyed = vec![(0, 'a'), (1, 'b'), (2, 'a'), (4, 'c'), (5, 'b')];
    assert_eq!(
        partition(keyed),
        vec![('a', vec![0, 2]), ('b', vec![1, 5]), ('c', vec![4])]
    );
    let dev = Device::Cpu;
    assert_eq!(Update::for_device(&dev), Update::PerTensor);
    let flat = gather([
        &Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev)?,
        &Tensor::new(&[5f32], &dev)?,
    ])?;
    assert_eq!(flat.to_vec1::<f32>()?, [1.0, 2.0, 3.0, 4.0, 5.0]);
    Ok(())
}
