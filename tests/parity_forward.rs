//! PyTorch parity of the forward pass: eval-mode logits of the fixture networks, and pooling
//! outputs and input gradients, against ../shared/fixtures/pytorch (see its README).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Module, Tensor, Var};
use layers::{adaptive_avg_pool2d, checkpoint, ParamStore, Pool2d};

/// The fixture directory, or `None` (with a note on stderr) when `CNN_SHARED_DIR` is unset.
fn fixtures() -> Option<PathBuf> {
    match std::env::var_os("CNN_SHARED_DIR") {
        Some(dir) => Some(Path::new(&dir).join("fixtures").join("pytorch")),
        None => {
            eprintln!("skipped: CNN_SHARED_DIR not set");
            None
        }
    }
}

fn get<'a>(tensors: &'a HashMap<String, Tensor>, key: &str, file: &Path) -> Result<&'a Tensor> {
    tensors
        .get(key)
        .with_context(|| format!("{} has no tensor {key}", file.display()))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    ensure!(
        a.dims() == b.dims(),
        "shapes differ: {:?} vs {:?}",
        a.dims(),
        b.dims()
    );
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

/// Builds zoo model `name`, loads `<fixture>.safetensors` strictly and compares its eval logits
/// on `<fixture>.io.safetensors`'s input with PyTorch's.
fn check_logits(name: &str, fixture: &str, num_classes: usize) -> Result<()> {
    let Some(dir) = fixtures() else {
        return Ok(());
    };
    let store = ParamStore::new(0, &Device::Cpu);
    let net = zoo::build(name, num_classes, store.vb())?;
    checkpoint::load_strict(store.varmap(), &dir.join(format!("{fixture}.safetensors")))?;
    let io_path = dir.join(format!("{fixture}.io.safetensors"));
    let io = checkpoint::read(&io_path)?;
    let input = get(&io, "input", &io_path)?;
    let expected = get(&io, "logits", &io_path)?;
    let logits = net.forward_t(input, false)?;
    let diff = max_abs_diff(&logits, expected)?;
    let scale = expected.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
    eprintln!("{name}: max |logits - pytorch| = {diff:e} (scale {scale})");
    ensure!(
        diff <= 1e-4 * scale,
        "{name}: logits differ from PyTorch by {diff} (scale {scale})"
    );
    Ok(())
}

#[test]
fn lenet5_logits_match_pytorch() -> Result<()> {
    check_logits("lenet5", "lenet5", 10)
}

#[test]
fn cnn_mnist_logits_match_pytorch() -> Result<()> {
    check_logits("cnn-mnist", "cnn_mnist", 10)
}

#[test]
fn resnet18_seed_logits_match_pytorch() -> Result<()> {
    check_logits("resnet18-seed", "resnet18_seed", 10)
}

#[test]
fn googlenet_logits_match_pytorch() -> Result<()> {
    check_logits("googlenet", "googlenet", 1000)
}

/// Runs `op` on case `case` of ops.safetensors: output against `y`, and the gradient of
/// `sum(y * g_y)` with respect to the input against `g_x`, both within 1e-5.
fn check_op(case: &str, op: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<()> {
    let Some(dir) = fixtures() else {
        return Ok(());
    };
    let path = dir.join("ops.safetensors");
    let tensors = checkpoint::read(&path)?;
    let tensor = |suffix: &str| get(&tensors, &format!("{case}.{suffix}"), &path);
    let x = Var::from_tensor(tensor("x")?)?;
    let y = op(x.as_tensor())?;
    let y_diff = max_abs_diff(&y, tensor("y")?)?;
    let grads = (&y * tensor("g_y")?)?.sum_all()?.backward()?;
    let g_x = grads
        .get(x.as_tensor())
        .with_context(|| format!("{case}: no gradient reached the input"))?;
    let g_diff = max_abs_diff(g_x, tensor("g_x")?)?;
    eprintln!("{case}: max |y - pytorch| = {y_diff:e}, max |g_x - pytorch| = {g_diff:e}");
    ensure!(
        y_diff <= 1e-5,
        "{case}: output differs from PyTorch by {y_diff}"
    );
    ensure!(
        g_diff <= 1e-5,
        "{case}: input gradient differs from PyTorch by {g_diff}"
    );
    Ok(())
}

#[test]
fn maxpool_k3s2p1_matches_pytorch() -> Result<()> {
    check_op("maxpool_k3s2p1", |x| {
        Pool2d::max(3, 2).padding(1).forward(x)
    })
}

#[test]
fn maxpool_k3s2_ceil_matches_pytorch() -> Result<()> {
    check_op("maxpool_k3s2_ceil", |x| {
        Pool2d::max(3, 2).ceil_mode(true).forward(x)
    })
}

#[test]
fn maxpool_k3s2_matches_pytorch() -> Result<()> {
    check_op("maxpool_k3s2", |x| Pool2d::max(3, 2).forward(x))
}

#[test]
fn adaptive_avg_13_to_6_matches_pytorch() -> Result<()> {
    check_op("adaptive_avg_13_to_6", |x| adaptive_avg_pool2d(x, (6, 6)))
}

#[test]
fn adaptive_avg_10_to_7_matches_pytorch() -> Result<()> {
    check_op("adaptive_avg_10_to_7", |x| adaptive_avg_pool2d(x, (7, 7)))
}

#[test]
fn adaptive_avg_7_to_1_matches_pytorch() -> Result<()> {
    check_op("adaptive_avg_7_to_1", |x| adaptive_avg_pool2d(x, (1, 1)))
}
