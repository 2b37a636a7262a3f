//! A training loop of your own over the crates' pieces: the tutorial's LeNet-5 on MNIST with
//! SGD, the loop PyTorch users write by hand (`for x, y in loader: loss = F.cross_entropy(
//! model(x), y); opt.zero_grad(); loss.backward(); opt.step()`), then the test accuracy and a
//! checkpoint PyTorch loads with `load_state_dict`.
//!
//! ```sh
//! cargo run --release -p optim --example training_loop -- DIR   # the four MNIST IDX files
//! ```
//!
//! (`train-mnist` does all this and more: schedules, resume, metrics, pictures.)

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, ModuleT, D};
use datasets::{Loader, LoaderConfig, Transform};
use optim::{Optimizer, Sgd, SgdConfig};

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: training_loop MNIST_DIR (train-images-idx3-ubyte[.gz] ... t10k-labels-idx1-ubyte[.gz])")?;
    let device = Device::Cpu;
    let split = datasets::mnist(Some(&dir))?;
    let store = layers::ParamStore::new(1, &device); // seeded: the same run every time
    let net = lenet::LeNet::lenet5(10, store.vb())?;
    let mut opt = Sgd::new(
        store.trainable(),
        SgdConfig {
            momentum: 0.9,
            ..SgdConfig::new(0.01)
        },
    )?;
    // Shuffled each epoch (seed 1), decoded and transformed on worker threads.
    let train = Loader::new(
        split.train,
        Transform::mnist_train(),
        LoaderConfig::train(64, 1),
    )?;
    let test = Loader::new(
        split.test,
        Transform::mnist_test(),
        LoaderConfig::eval(1000),
    )?;
    for epoch in 0..2 {
        let (mut sum, mut batches) = (0.0, 0);
        for batch in train.epoch(epoch) {
            let batch = batch?; // images (64, 1, 28, 28) f32, labels (64,) u32
            let logits = net.forward_t(&batch.images.to_device(&device)?, true)?;
            let loss =
                layers::loss::cross_entropy(&logits, &batch.labels.to_device(&device)?, 0.0)?;
            // backward() gives fresh gradients: nothing to zero.
            opt.step(&loss.backward()?)?;
            sum += loss.to_scalar::<f32>()?;
            batches += 1;
        }
        let (mut correct, mut seen) = (0u32, 0usize);
        let no_grad = layers::no_grad(); // as `with torch.no_grad():`, no autograd graph
        for batch in test.epoch(0) {
            let batch = batch?;
            let predicted = net.forward_t(&batch.images, false)?.argmax(D::Minus1)?;
            correct += predicted
                .eq(&batch.labels)?
                .to_dtype(candle_core::DType::U32)?
                .sum_all()?
                .to_scalar::<u32>()?;
            seen += batch.labels.dims1()?;
        }
        drop(no_grad); // training records its graph again
        println!(
            "epoch {}: train loss {:.4}, test accuracy {:.2}%",
            epoch + 1,
            sum / batches as f32,
            100.0 * f64::from(correct) / seen as f64
        );
    }
    let path = Path::new("lenet5.safetensors");
    layers::checkpoint::save(store.varmap(), path)?;
    println!("wrote {}", path.display());
    Ok(())
}
