//! Median time of one training step (forward, backward, optimizer) for the tutorial's
//! networks, with images/s, and how fast the CIFAR-10 training batches are made:
//! `cargo run -p train --bin bench-step [-- --steps N] [--only MODEL] [--device cuda]
//! [--batches 128,512] [--precision f32,bf16] [--pipeline] [--split]`.
//!
//! `--precision bf16` runs the step under bf16 autocast (products in bf16, weights in f32);
//! `tf32` lets CUDA's f32 GEMMs use TF32 tensor cores.
//! `--pipeline` also times the CIFAR-10 training transform (crop 32 pad 4, flip, normalize) on
//! 10,000 images at batch 512, from the host loader and from the data held on the device
//! (`$CNN_SHARED_DIR`'s test batch when set, else synthetic images).
//! `--split` also prints the forward, backward and optimizer parts of the step, timed apart.

#[path = "../../../datasets/src/bin/common/bench_input.rs"]
mod bench_input;

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Parser;
use datasets::{Loader, LoaderConfig, ResidentLoader, Transform};
use train::config::{DatasetKind, OptimizerKind, Precision, RunConfig};
use train::source::BatchSource;

/// A benchmarked case: model, batch size, input shape (C, H, W), and the optimizer its
/// training program uses.
type Case = (&'static str, usize, (usize, usize, usize), OptimizerKind);

const CASES: [Case; 4] = [
    ("cnn-mnist", 64, (1, 28, 28), OptimizerKind::Adam),
    ("lenet5", 64, (1, 28, 28), OptimizerKind::Adam),
    ("resnet18-seed", 128, (3, 32, 32), OptimizerKind::Sgd),
    ("resnet18-cifar", 128, (3, 32, 32), OptimizerKind::Sgd),
];

/// Median time of one training step of the tutorial's networks, with images/s.
#[derive(Debug, Parser)]
#[command(name = "bench-step")]
struct BenchArgs {
    /// Steps to time per case [default: 10, or 3 for large CPU batches]
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    steps: Option<usize>,
    /// Only this model (cnn-mnist, lenet5, resnet18-seed, resnet18-cifar)
    #[arg(long)]
    only: Option<String>,
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Batch sizes, comma separated [default: each model's training batch]
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    batches: Option<Vec<usize>>,
    /// Precisions, comma separated: f32, tf32, bf16
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32")]
    precision: Vec<Precision>,
    /// Also time the CIFAR-10 training transform, host loader against device-resident data
    #[arg(long)]
    pipeline: bool,
    /// Also time forward, backward and optimizer apart
    #[arg(long)]
    split: bool,
}

fn main() -> Result<()> {
    if std::env::var_os("BENCH_MMAP").is_none() {
        train::memory::keep_freed_memory();
    }
    let args = BenchArgs::parse();
    let (steps, only, split) = (args.steps, args.only.as_deref(), args.split);
    let device = train::device::parse_device(&args.device)?;
    let batches = args.batches;
    let precisions = args.precision;
    if args.pipeline {
        pipeline(&device)?;
    }
    train::say!(
        "median training step on {} (forward + backward + optimizer step)",
        train::device::device_name(&device)
    );
    for (model, default_batch, shape, optimizer) in CASES {
        if only.is_some_and(|o| o != model) {
            continue;
        }
        for &precision in &precisions {
            let _precision = precision.enter();
            for batch in batches.clone().unwrap_or_else(|| vec![default_batch]) {
                let big = batch * shape.0 * shape.1 * shape.2 > 200_000 && device.is_cpu();
                let n = steps.unwrap_or(if big { 3 } else { 10 });
                let [ms, fwd, bwd, opt] =
                    median_step_ms(&device, model, batch, shape, optimizer, n, split)?;
                let phases = match split {
                    true => format!(
                        "  forward {fwd:.1} ms, backward {bwd:.1} ms, optimizer {opt:.1} ms"
                    ),
                    false => String::new(),
                };
                train::say!(
                    "{model:>15} b{batch:<4} {:<4} {ms:>10.1} ms  {:>9.0} images/s  (median of {n}){phases}",
                    format!("{precision:?}").to_lowercase(),
                    batch as f64 * 1e3 / ms
                );
            }
        }
    }
    Ok(())
}

/// Images/s of the CIFAR-10 training transform at batch 512: host loader against the data
/// held on `device`, on the same images.
fn pipeline(device: &Device) -> Result<()> {
    let shared = std::env::var_os("CNN_SHARED_DIR").map(std::path::PathBuf::from);
    let (data, what) = bench_input::cifar10_images(shared.as_deref())?;
    let make = || {
        Loader::new(
            data.clone(),
            Transform::cifar10_train(),
            LoaderConfig::train(512, 0),
        )
    };
    let time = |source: &dyn BatchSource| -> Result<f64> {
        let start = Instant::now();
        let mut n = 0;
        for batch in source.batches(1) {
            let batch = batch?;
            let images = batch.images.to_device(device)?;
            n += images.dim(0)?;
        }
        device.synchronize()?;
        Ok(n as f64 / start.elapsed().as_secs_f64())
    };
    let host = make()?;
    time(&host)?;
    let host_rate = time(&host)?;
    let resident = ResidentLoader::new(make()?, device)?;
    time(&resident)?;
    let resident_rate = time(&resident)?;
    let name = train::device::device_name(device);
    train::say!(
        "CIFAR-10 training batches (b512, crop+flip+normalize, {what}): host loader to {name} \
         {host_rate:.0} images/s, held on {name} {resident_rate:.0} images/s ({:.1}x)",
        resident_rate / host_rate
    );
    Ok(())
}

/// Medians over `steps` steps, in ms: the whole step, then forward (with the loss), backward and
/// optimizer step, which are timed apart (synchronising the device between them) when `split`.
fn median_step_ms(
    device: &Device,
    model_name: &str,
    batch: usize,
    (c, h, w): (usize, usize, usize),
    optimizer: OptimizerKind,
    steps: usize,
    split: bool,
) -> Result<[f64; 4]> {
    let store = layers::ParamStore::new(0, device);
    let model = zoo::build(model_name, 10, store.vb())?;
    let sgd = optimizer == OptimizerKind::Sgd;
    let config = RunConfig {
        batch_size: batch,
        test_batch_size: batch,
        optimizer,
        lr: if sgd { 0.1 } else { 1e-3 },
        weight_decay: if sgd { 5e-4 } else { 0.0 },
        seed: 0,
        ..RunConfig::new("bench-step", DatasetKind::Cifar10, model_name)
    };
    let mut opt = config.optimizer(store.trainable())?;
    let x = Tensor::randn(0f32, 1.0, (batch, c, h, w), device)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
    let y = Tensor::from_vec(labels, batch, device)?;
    // Per step: the whole step, then (with `split`) forward with the loss, backward, optimizer.
    let mut times: [Vec<f64>; 4] = Default::default();
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for i in 0..=steps {
        let start = Instant::now();
        let mut phases = [0.0; 3];
        let mut mark = Instant::now();
        let mut phase = |k: usize| -> Result<()> {
            if split {
                device.synchronize()?;
                phases[k] = ms(mark);
                mark = Instant::now();
            }
            Ok(())
        };
        let logits = model.forward_t(&x, true)?;
        let loss = train::loss::cross_entropy(&logits, &y, 0.0)?;
        phase(0)?;
        let grads = loss.backward()?;
        phase(1)?;
        opt.step(&grads)?;
        phase(2)?;
        device.synchronize()?;
        if i > 0 {
            times[0].push(ms(start));
            for (k, t) in phases.into_iter().enumerate() {
                times[k + 1].push(t);
            }
        }
    }
    Ok(times.map(|mut t| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    }))
}
