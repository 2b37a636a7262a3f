//! Optimizer steps checked against PyTorch's update formulas evaluated in f64 on tiny tensors.

use anyhow::Result;
use candle_core::{Device, Tensor, Var};

use super::*;

const P0: [f64; 4] = [1.0, -2.0, 0.5, 3.0];
const K: [f64; 4] = [0.5, 1.5, -1.0, 0.25];

/// loss = sum(k * p^2), so grad = 2 k p.
fn grad(p: &[f64]) -> Vec<f64> {
    p.iter().zip(K).map(|(p, k)| 2.0 * k * p).collect()
}

fn make_var() -> Result<Var> {
    let v: Vec<f32> = P0.iter().map(|&x| x as f32).collect();
    Ok(Var::from_tensor(&Tensor::new(v.as_slice(), &Device::Cpu)?)?)
}

fn run_steps(opt: &mut dyn Optimizer, var: &Var, steps: usize) -> Result<Vec<f32>> {
    let k: Vec<f32> = K.iter().map(|&x| x as f32).collect();
    let k = Tensor::new(k.as_slice(), &Device::Cpu)?;
    for _ in 0..steps {
        let loss = (var.as_tensor().sqr()? * &k)?.sum_all()?;
        opt.step(&loss.backward()?)?;
    }
    Ok(var.to_vec1::<f32>()?)
}

fn assert_close(got: &[f32], want: &[f64]) {
    for (g, w) in got.iter().zip(want) {
        let tol = 1e-5 * w.abs().max(1.0);
        assert!((*g as f64 - w).abs() < tol, "got {got:?}, want {want:?}");
    }
}

fn sgd_reference(c: SgdConfig, steps: usize) -> Vec<f64> {
    let mut p = P0.to_vec();
    let mut buf: Option<Vec<f64>> = None;
    for _ in 0..steps {
        let mut d: Vec<f64> = grad(&p)
            .iter()
            .zip(&p)
            .map(|(g, p)| g + c.weight_decay * p)
            .collect();
        if c.momentum != 0.0 {
            let b: Vec<f64> = match &buf {
                None => d.clone(),
                Some(b) => b
                    .iter()
                    .zip(&d)
                    .map(|(b, d)| c.momentum * b + (1.0 - c.dampening) * d)
                    .collect(),
            };
            d = if c.nesterov {
                d.iter().zip(&b).map(|(d, b)| d + c.momentum * b).collect()
            } else {
                b.clone()
            };
            buf = Some(b);
        }
        p = p.iter().zip(&d).map(|(p, d)| p - c.lr * d).collect();
    }
    p
}

fn adam_reference(c: AdamConfig, steps: usize) -> Vec<f64> {
    let mut p = P0.to_vec();
    let mut m = [0.0; 4];
    let mut v = [0.0; 4];
    for t in 1..=steps {
        let mut g = grad(&p);
        if c.weight_decay != 0.0 {
            if c.decoupled {
                p.iter_mut().for_each(|p| *p *= 1.0 - c.lr * c.weight_decay);
            } else {
                g.iter_mut()
                    .zip(&p)
                    .for_each(|(g, p)| *g += c.weight_decay * p);
            }
        }
        let bc1 = 1.0 - c.beta1.powi(t as i32);
        let bc2 = 1.0 - c.beta2.powi(t as i32);
        for i in 0..4 {
            m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
            v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
            let denom = v[i].sqrt() / bc2.sqrt() + c.eps;
            p[i] -= c.lr / bc1 * m[i] / denom;
        }
    }
    p
}

#[test]
fn sgd_variants_follow_pytorch() -> Result<()> {
    let configs = [
        SgdConfig::new(0.1),
        SgdConfig {
            momentum: 0.9,
            weight_decay: 5e-4,
            ..SgdConfig::new(0.05)
        },
        SgdConfig {
            momentum: 0.8,
            dampening: 0.3,
            weight_decay: 0.01,
            ..SgdConfig::new(0.1)
        },
        SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
            ..SgdConfig::new(0.1)
        },
    ];
    for c in configs {
        let var = make_var()?;
        let mut opt = Sgd::new(vec![("w".into(), var.clone())], c)?;
        let got = run_steps(&mut opt, &var, 4)?;
        assert_close(&got, &sgd_reference(c, 4));
    }
    let bad = SgdConfig {
        nesterov: true,
        ..SgdConfig::new(0.1)
    };
    assert!(Sgd::new(vec![], bad).is_err());
    Ok(())
}

#[test]
fn adam_and_adamw_follow_pytorch() -> Result<()> {
    let configs = [
        AdamConfig::adam(0.1),
        AdamConfig {
            weight_decay: 0.1,
            ..AdamConfig::adam(0.05)
        },
        AdamConfig::adamw(0.1),
        AdamConfig {
            weight_decay: 0.5,
            eps: 0.1,
            ..AdamConfig::adamw(0.05)
        },
    ];
    for c in configs {
        let var = make_var()?;
        let mut opt = Adam::new(vec![("w".into(), var.clone())], c)?;
        let got = run_steps(&mut opt, &var, 5)?;
        assert_close(&got, &adam_reference(c, 5));
    }
    Ok(())
}

/// Float64 parameters follow PyTorch's float64 Adam to float64 precision: `lerp`'s weight
/// `1 - beta1` stays a double (it was rounded to float32 as for float32 tensors: 1e-10 apart
/// after 60 steps, a reviewer's finding).
#[test]
fn float64_adam_keeps_its_weights_in_float64() -> Result<()> {
    for c in [AdamConfig::adam(0.1), AdamConfig::adamw(0.05)] {
        let var = Var::from_tensor(&Tensor::new(&P0, &Device::Cpu)?)?;
        let k = Tensor::new(&K, &Device::Cpu)?;
        let mut opt = Adam::new(vec![("w".into(), var.clone())], c)?;
        for _ in 0..30 {
            let loss = (var.as_tensor().sqr()? * &k)?.sum_all()?;
            opt.step(&loss.backward()?)?;
        }
        let want = adam_reference(c, 30);
        for (g, w) in var.to_vec1::<f64>()?.iter().zip(&want) {
            assert!((g - w).abs() < 1e-13 * w.abs().max(1.0), "{g} vs {w}");
        }
    }
    Ok(())
}

#[test]
fn params_without_gradients_are_skipped() -> Result<()> {
    let used = make_var()?;
    let unused = make_var()?;
    let named = vec![
        ("a".to_string(), used.clone()),
        ("b".to_string(), unused.clone()),
    ];
    let mut sgd = Sgd::new(
        named.clone(),
        SgdConfig {
            momentum: 0.9,
            weight_decay: 0.1,
            ..SgdConfig::new(0.1)
        },
    )?;
    run_steps(&mut sgd, &used, 2)?;
    let mut adam = Adam::new(named, AdamConfig::adamw(0.1))?;
    run_steps(&mut adam, &used, 2)?;
    assert_eq!(unused.to_vec1::<f32>()?, P0.map(|x| x as f32));
    let mut keys: Vec<String> = adam.state()?.into_keys().collect();
    keys.sort();
    assert_eq!(keys, ["a.exp_avg", "a.exp_avg_sq", "a.step"]);
    assert_eq!(sgd.state()?.len(), 1);
    Ok(())
}

type Maker = fn(Vec<NamedVar>) -> Result<Box<dyn Optimizer>>;

#[test]
fn saved_state_resumes_the_same_trajectory() -> Result<()> {
    let makers: [Maker; 3] = [
        |p| {
            Ok(Box::new(Sgd::new(
                p,
                SgdConfig {
                    momentum: 0.9,
                    ..SgdConfig::new(0.05)
                },
            )?))
        },
        |p| Ok(Box::new(Adam::new(p, AdamConfig::adam(0.05))?)),
        |p| Ok(Box::new(Adam::new(p, amsgrad(0.05))?)),
    ];
    for make in makers {
        let straight = make_var()?;
        let mut opt = make(vec![("w".into(), straight.clone())])?;
        let want = run_steps(opt.as_mut(), &straight, 5)?;

        let first = make_var()?;
        let mut opt = make(vec![("w".into(), first.clone())])?;
        run_steps(opt.as_mut(), &first, 2)?;
        let resumed = Var::from_tensor(&first.as_tensor().copy()?)?;
        let mut opt2 = make(vec![("w".into(), resumed.clone())])?;
        opt2.load_state(&opt.state()?)?;
        let got = run_steps(opt2.as_mut(), &resumed, 3)?;
        assert_eq!(got, want);

        let mut wrong = std::collections::HashMap::new();
        wrong.insert(
            "nope.exp_avg".to_string(),
            Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu)?,
        );
        assert!(opt2.load_state(&wrong).is_err());
    }
    Ok(())
}

fn amsgrad(lr: f64) -> AdamConfig {
    AdamConfig {
        amsgrad: true,
        ..AdamConfig::adam(lr)
    }
}

/// AMSGrad's state keeps the largest second moments under PyTorch's key, `max_exp_avg_sq`; a
/// state saved without AMSGrad does not resume with it (nor the other way round), saying why.
#[test]
fn amsgrad_state_is_pytorchs_and_is_not_mixed_with_adams() -> Result<()> {
    let (var, plain_var) = (make_var()?, make_var()?);
    let mut opt = Adam::new(vec![("w".into(), var.clone())], amsgrad(0.05))?;
    let mut plain = Adam::new(
        vec![("w".into(), plain_var.clone())],
        AdamConfig::adam(0.05),
    )?;
    run_steps(&mut opt, &var, 3)?;
    run_steps(&mut plain, &plain_var, 3)?;
    let state = opt.state()?;
    let mut keys: Vec<&str> = state.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["w.exp_avg", "w.exp_avg_sq", "w.max_exp_avg_sq", "w.step"]
    );
    // The largest second moments are at least the last ones, element by element.
    let (max, last) = (&state["w.max_exp_avg_sq"], &state["w.exp_avg_sq"]);
    assert!(max.ge(last)?.flatten_all()?.min(0)?.to_scalar::<u8>()? == 1);
    let err = opt.load_state(&plain.state()?).unwrap_err().to_string();
    assert!(err.contains("lacks w.max_exp_avg_sq"), "{err}");
    assert!(err.contains("saved without amsgrad"), "{err}");
    let err = plain.load_state(&state).unwrap_err().to_string();
    assert!(err.contains("it was saved with amsgrad"), "{err}");
    // A damaged maximum is named as such (not as a state saved without AMSGrad).
    let mut damaged = state.clone();
    let negative = Tensor::new(&[1e-4f32, -1.0, 0.0, 2.0], &Device::Cpu)?;
    damaged.insert("w.max_exp_avg_sq".into(), negative);
    let err = opt.load_state(&damaged).unwrap_err().to_string();
    assert!(err.contains("w.max_exp_avg_sq holds -1"), "{err}");
    Ok(())
}

/// A NaN gradient makes AMSGrad's largest second moment NaN, as `torch.maximum` does, in the
/// fused f32 step and in the whole-tensor one (f64 here), where Candle's `maximum` passed over
/// a NaN (a reviewer's finding).
#[test]
fn amsgrad_keeps_a_nan_as_torch_maximum_does() -> Result<()> {
    for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
        let var = Var::from_tensor(&Tensor::new(&[1.0f32, 2.0], &Device::Cpu)?.to_dtype(dtype)?)?;
        let mut opt = Adam::new(vec![("w".into(), var.clone())], amsgrad(0.1))?;
        let g = Tensor::new(&[f32::NAN, 1.0], &Device::Cpu)?.to_dtype(dtype)?;
        let loss = (var.as_tensor() * g)?.sum_all()?;
        opt.step(&loss.backward()?)?;
        let max = opt.state()?["w.max_exp_avg_sq"].to_dtype(candle_core::DType::F64)?;
        let max = max.to_vec1::<f64>()?;
        assert!(max[0].is_nan() && max[1] > 0.0, "{dtype:?}: {max:?}");
    }
    Ok(())
}

/// An Adam state no step writes (an edited state: a negative second moment, a step count of 0
/// or 2.5) is refused on loading, naming the buffer, where it would train to NaN.
#[test]
fn an_impossible_adam_state_is_refused() -> Result<()> {
    let var = make_var()?;
    let mut opt = Adam::new(vec![("w".into(), var.clone())], AdamConfig::adam(0.05))?;
    run_steps(&mut opt, &var, 2)?;
    let good = opt.state()?;
    opt.load_state(&good)?;
    let edited = |key: &str, value: Tensor| {
        let mut state = good.clone();
        state.insert(key.to_string(), value);
        state
    };
    let negative = Tensor::new(&[1e-4f32, -1.0, 0.0, 2.0], &Device::Cpu)?;
    for (state, says) in [
        (
            edited("w.exp_avg_sq", negative),
            "w.exp_avg_sq holds -1: a running mean of squared gradients is never negative",
        ),
        (
            edited("w.step", Tensor::new(0f64, &Device::Cpu)?),
            "w.step is 0",
        ),
        (
            edited("w.step", Tensor::new(2.5f64, &Device::Cpu)?),
            "w.step is 2.5",
        ),
    ] {
        let err = opt.load_state(&state).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
    Ok(())
}

#[test]
fn invalid_hyper_parameters_are_named_in_pytorchs_wording() {
    let message = |r: Result<()>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let sgd = |c: SgdConfig| message(Sgd::new(vec![], c).map(|_| ()));
    let adam = |c: AdamConfig| message(Adam::new(vec![], c).map(|_| ()));
    let cases = [
        (
            sgd(SgdConfig::new(-0.1)),
            "SGD: Invalid learning rate: -0.1 (`lr`",
        ),
        (
            sgd(SgdConfig::new(f64::NAN)),
            "SGD: Invalid learning rate: NaN",
        ),
        (
            sgd(SgdConfig {
                momentum: -0.9,
                ..SgdConfig::new(0.1)
            }),
            "SGD: Invalid momentum value: -0.9 (`momentum`",
        ),
        (
            sgd(SgdConfig {
                weight_decay: f64::INFINITY,
                ..SgdConfig::new(0.1)
            }),
            "SGD: Invalid weight_decay value: inf (`weight_decay` must be a finite number >= 0)",
        ),
        (
            adam(AdamConfig {
                beta2: 1.5,
                ..AdamConfig::adam(1e-3)
            }),
            "Adam: Invalid beta parameter at index 1: 1.5 (`beta2` must be a number in [0, 1))",
        ),
        (
            adam(AdamConfig {
                beta1: -0.1,
                ..AdamConfig::adamw(1e-3)
            }),
            "AdamW: Invalid beta parameter at index 0: -0.1 (`beta1`",
        ),
        (
            adam(AdamConfig {
                eps: -1e-8,
                ..AdamConfig::adam(1e-3)
            }),
            "Adam: Invalid epsilon value: -0.00000001 (`eps`",
        ),
        (
            adam(AdamConfig::adam(f64::NAN)),
            "Adam: Invalid learning rate: NaN",
        ),
    ];
    for (got, want) in cases {
        assert!(
            got.starts_with(want),
            "{got:?} does not start with {want:?}"
        );
    }
    // The edges PyTorch accepts.
    assert!(Sgd::new(vec![], SgdConfig::new(0.0)).is_ok());
    let zero_betas = AdamConfig {
        beta1: 0.0,
        beta2: 0.0,
        ..AdamConfig::adam(0.0)
    };
    assert!(Adam::new(vec![], zero_betas).is_ok());
}

/// PyTorch 2.15's steps on the CPU (`tools/pytorch_optimizer_steps.py`, `foreach=False` as on
/// the CPU): SGD (plain; momentum and weight decay; dampening; Nesterov; maximizing), Adam
/// (plain; beta1 0.4 with weight decay; AMSGrad with weight decay), AdamW (plain; AMSGrad
/// maximizing), six steps of 37 values with zeros, subnormals and a large value
/// among them, give the parameters PyTorch's did bit for bit after every step, rounding once
/// as its AVX2 and AVX-512 kernels do and twice as its portable ones
/// (`ATEN_CPU_CAPABILITY=default`).
#[test]
fn steps_equal_pytorchs_bit_for_bit() -> Result<()> {
    use super::rounding::Rounding;
    let dev = Device::Cpu;
    let bytes = include_bytes!("../tests/data/pytorch_optimizer_steps.safetensors");
    let t = candle_core::safetensors::load_buffer(bytes, &dev)?;
    let (p0, grads) = (&t["p0"], &t["grads"]);
    let sgd = |lr, momentum, dampening, nesterov, weight_decay| SgdConfig {
        momentum,
        dampening,
        nesterov,
        weight_decay,
        ..SgdConfig::new(lr)
    };
    let sgd_cases = [
        ("sgd", sgd(0.1, 0.0, 0.0, false, 0.0)),
        ("sgd_momentum_wd", sgd(0.1, 0.9, 0.0, false, 5e-4)),
        ("sgd_dampening", sgd(0.05, 0.8, 0.3, false, 0.01)),
        ("sgd_nesterov", sgd(0.1, 0.9, 0.0, true, 1e-3)),
        (
            "sgd_maximize",
            SgdConfig {
                maximize: true,
                ..sgd(0.1, 0.9, 0.0, false, 5e-4)
            },
        ),
    ];
    let adam_cases = [
        ("adam", AdamConfig::adam(1e-2)),
        (
            "adam_beta1_04_wd",
            AdamConfig {
                beta1: 0.4,
                weight_decay: 0.1,
                ..AdamConfig::adam(1e-2)
            },
        ),
        (
            "adamw",
            AdamConfig {
                weight_decay: 0.05,
                ..AdamConfig::adamw(1e-2)
            },
        ),
        (
            "adam_amsgrad_wd",
            AdamConfig {
                weight_decay: 0.1,
                amsgrad: true,
                ..AdamConfig::adam(1e-2)
            },
        ),
        (
            "adamw_amsgrad_maximize",
            AdamConfig {
                weight_decay: 0.05,
                amsgrad: true,
                maximize: true,
                ..AdamConfig::adamw(1e-2)
            },
        ),
    ];
    let bits = |t: &Tensor| -> Result<Vec<u32>> {
        Ok(t.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect())
    };
    let mut checked = 0;
    for (kernels, rounding) in [("once", Rounding::Once), ("twice", Rounding::Twice)] {
        let mut cases: Vec<(&str, Var, Box<dyn Optimizer>)> = Vec::new();
        for (name, c) in sgd_cases {
            let var = Var::from_tensor(&p0.copy()?)?;
            let opt = Sgd::new(vec![("w".into(), var.clone())], c)?.with_rounding(rounding);
            cases.push((name, var, Box::new(opt)));
        }
        for (name, c) in adam_cases {
            let var = Var::from_tensor(&p0.copy()?)?;
            let opt = Adam::new(vec![("w".into(), var.clone())], c)?.with_rounding(rounding);
            cases.push((name, var, Box::new(opt)));
        }
        for (name, var, mut opt) in cases {
            let want = &t[&format!("{name}.{kernels}")];
            for step in 0..grads.dim(0)? {
                // loss = sum(w * g): the gradient is g, bit for bit.
                let loss = (var.as_tensor() * grads.get(step)?)?.sum_all()?;
                opt.step(&loss.backward()?)?;
                assert_eq!(
                    bits(var.as_tensor())?,
                    bits(&want.get(step)?)?,
                    "{name}, PyTorch's {kernels}-rounding kernels, step {}",
                    step + 1
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 10 * 6);
    Ok(())
}

/// A step from a loss computed without autograd (its parameters detached, as inside
/// `layers::no_grad()`) is refused, saying why, and changes nothing; one parameter of two without
/// a gradient (unused) is passed over, the other updated, as PyTorch's.
#[test]
fn a_step_without_any_gradient_is_refused() -> Result<()> {
    let k = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &Device::Cpu)?;
    for adam in [false, true] {
        let (var, unused) = (make_var()?, make_var()?);
        let params = vec![
            ("w".to_string(), var.clone()),
            ("u".to_string(), unused.clone()),
        ];
        let mut opt: Box<dyn Optimizer> = match adam {
            true => Box::new(Adam::new(params, AdamConfig::adam(0.1))?),
            false => Box::new(Sgd::new(params, SgdConfig::new(0.1))?),
        };
        let detached = (var.as_tensor().detach().sqr()? * &k)?.sum_all()?;
        let err = opt.step(&detached.backward()?).unwrap_err().to_string();
        assert!(err.contains("no parameter has a gradient"), "{err}");
        assert_eq!(var.to_vec1::<f32>()?, make_var()?.to_vec1::<f32>()?);
        let loss = (var.as_tensor().sqr()? * &k)?.sum_all()?;
        opt.step(&loss.backward()?)?;
        assert_ne!(var.to_vec1::<f32>()?, make_var()?.to_vec1::<f32>()?);
        assert_eq!(unused.to_vec1::<f32>()?, make_var()?.to_vec1::<f32>()?);
    }
    Ok(())
}
