//! `bench-inference`: the median evaluation-mode forward pass of zoo models (a training
//! program's test pass, `evaluate`, `predict`, a frozen backbone's features), in images/s.
//!
//! Each round times the pass under [`layers::no_grad`] (what the programs run, PyTorch's
//! `with torch.no_grad():`), and with `--graph` also with the autograd graph recorded (the
//! parameters as variables, as before `no_grad`), one after the other. PyTorch's side, in the
//! same sitting: `tools/pytorch_inference.py` with the same models, batch, size and precision.
//!
//! ```text
//! cargo run -p train --bin bench-inference -- --models resnet18-cifar,resnet18-seed --batch 256 --graph
//! cargo run -p train --bin bench-inference -- --models resnet50 --batch 96 --image-size 224 --precision bf16
//! ```

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, ModuleT, Tensor};
use clap::Parser;
use train::config::Precision;

/// Median evaluation-mode forward pass of zoo models, images/s.
#[derive(Debug, Parser)]
#[command(name = "bench-inference")]
struct Args {
    /// Zoo models, comma separated (their native input, or --image-size)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cnn-mnist,resnet18-seed,resnet18-cifar"
    )]
    models: Vec<String>,
    /// Images per forward pass (a training program's --test-batch-size is 256, 1000 for MNIST)
    #[arg(long, default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    batch: usize,
    /// Side of the square input instead of the model's native one (not for lenet5 and
    /// cnn-mnist)
    #[arg(long)]
    image_size: Option<usize>,
    /// f32 or bf16 (autocast)
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    /// Timed passes per model and mode, after one untimed
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    passes: usize,
    /// Rounds over the models (this machine's speed moves from run to run)
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100))]
    rounds: usize,
    /// Also time the pass recording the autograd graph (without no_grad)
    #[arg(long)]
    graph: bool,
}

/// Running out of memory ends in an error saying what to do, not in an abort.
#[global_allocator]
static ALLOCATOR: train::memory::ReportOutOfMemory = train::memory::ReportOutOfMemory;

fn main() -> Result<()> {
    train::cli::set_up_process();
    train::progress::stdout_written(bench())
}

/// Median milliseconds of `passes` timed passes of `net` over `x`, after one untimed.
fn time(net: &dyn ModuleT, x: &Tensor, passes: usize, no_grad: bool) -> Result<f64> {
    let mut ms = Vec::with_capacity(passes);
    for pass in 0..=passes {
        let start = Instant::now();
        {
            let _no_grad = no_grad.then(layers::no_grad);
            let logits = net.forward_t(x, false)?;
            // Read, so that the pass has finished (on a GPU too).
            logits
                .sum_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_scalar::<f32>()?;
        }
        if pass > 0 {
            ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(train::metrics::median(&mut ms))
}

fn bench() -> Result<()> {
    let args = Args::try_parse().unwrap_or_else(|e| train::cli::exit_for_clap(e));
    let _precision = args.precision.enter();
    let device = Device::Cpu;
    let mut cases = Vec::new();
    for name in &args.models {
        let spec = zoo::spec(name).with_context(|| format!("--models {name}"))?;
        let (c, h, w) = spec.input;
        let (h, w) = args.image_size.map_or((h, w), |s| (s, s));
        // Seeded weights: the speed does not depend on the values.
        let store = layers::ParamStore::new(0, &device);
        let net = zoo::build(name, spec.default_classes, store.vb())
            .with_context(|| format!("--models {name}"))?;
        let x = Tensor::randn(0f32, 1.0, (args.batch, c, h, w), &device)?;
        cases.push((name.clone(), h, store, net, x, Vec::new(), Vec::new()));
    }
    train::say!(
        "median evaluation-mode forward pass, batch {}, {:?}, {} passes a round",
        args.batch,
        args.precision,
        args.passes
    );
    for round in 1..=args.rounds {
        for (name, h, _, net, x, no_grad, graph) in &mut cases {
            let ms = time(net.as_ref(), x, args.passes, true)?;
            no_grad.push(ms);
            let mut line = format!(
                "round {round}: {name} {h}px no_grad {ms:.1} ms ({:.0} img/s)",
                args.batch as f64 * 1e3 / ms
            );
            if args.graph {
                let ms = time(net.as_ref(), x, args.passes, false)?;
                graph.push(ms);
                line += &format!(
                    ", with the graph {ms:.1} ms ({:.0} img/s)",
                    args.batch as f64 * 1e3 / ms
                );
            }
            train::say!("{line}");
        }
    }
    if args.rounds > 1 {
        for (name, _, _, _, _, no_grad, graph) in &mut cases {
            let a = train::metrics::median(no_grad);
            let mut line = format!(
                "{name} over {} rounds, medians: no_grad {a:.1} ms ({:.0} img/s)",
                args.rounds,
                args.batch as f64 * 1e3 / a
            );
            if args.graph {
                let b = train::metrics::median(graph);
                line += &format!(", with the graph {b:.1} ms ({:.2}x)", b / a);
            }
            train::say!("{line}");
        }
    }
    Ok(())
}
