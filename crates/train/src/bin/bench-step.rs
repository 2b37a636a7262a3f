//! Median time of one training step (forward, backward, optimizer) for the tutorial's
//! networks, with images/s, and how fast the CIFAR-10 training batches are made:
//! `cargo run -p train --bin bench-step [-- --steps N] [--only MODEL] [--device cuda]
//! [--batches 128,512] [--precision f32,bf16] [--memory-format contiguous_format,channels_last]
//! [--pipeline] [--split]`.
//!
//! `--precision bf16` runs the step under bf16 autocast (products in bf16, weights in f32);
//! `tf32` lets CUDA's f32 GEMMs use TF32 tensor cores.
//! `--pipeline` also times the CIFAR-10 training transform (crop 32 pad 4, flip, normalize) on
//! 10,000 images at batch 512, from the host loader and from the data held on the device
//! (`$CNN_SHARED_DIR`'s test batch when set, else synthetic images).
//! `--compare-pytorch PYTHON` runs PyTorch's step for each model right after ours
//! (`$CNN_SHARED_DIR/tools/pytorch-anchors/cpu_step_modes.py`: f32, f32 channels_last and bf16
//! autocast + channels_last, with as many threads as ours) and prints the ratios;
//! `--pytorch-results FILE` reads that script's saved output instead. `--rounds N` times each
//! model N times in turn (ours, then PyTorch's) and ends with the medians over the rounds and
//! PyTorch's time over ours round by round.
//! `--memory-format contiguous_format,channels_last` times the step with the images (and so
//! the activations) in each of PyTorch's memory formats (`-cl` after the precision in the
//! output: cuDNN's NHWC kernels on CUDA).
//! `--optimizer-update per-tensor|flat` picks how the optimizer updates (by default flat on a
//! GPU, per tensor on the CPU; the results are the same bits).
//! `--only NAME` also takes any other zoo model (`vgg11-bn`, `googlenet`, `resnet50`, ...) at
//! batch 128 with SGD, on random `(N, 3, S, S)` images (`--image-size S`, default 32: CIFAR-10's,
//! as `train-cifar --model NAME` trains it); its `--compare-pytorch` runs torchvision's model of
//! that name (`tools/pytorch_zoo_step.py`, built into this program) at that batch or the one
//! `--batches` given, and refuses a zoo model torchvision does not have before timing ours.
//! `--split` also prints the forward, backward and optimizer parts of the step, timed apart
//! (each part's share of the timed steps, times the median step), and on the CPU the share of the thread time spent in GEMM, im2col/layout, batch norm,
//! pooling, the optimizer and the rest (element-wise operations, Candle's own operations,
//! allocation), with the GEMM's GFLOP/s per thread.

#[path = "../../../datasets/src/bin/common/bench_input.rs"]
mod bench_input;

use std::time::Instant;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use datasets::{Loader, LoaderConfig, ResidentLoader, Transform};
use optim::Update;
use train::config::{DatasetKind, MemoryFormat, OptimizerKind, Precision, RunConfig};
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
    /// Steps to time per case [default: 10, or 3 on the CPU for batches of more than 200,000
    /// input values (batch x channels x height x width: from 66 CIFAR-10 images, or 2 at 224x224)]
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    steps: Option<usize>,
    /// Only this model: cnn-mnist, lenet5, resnet18-seed, resnet18-cifar, or any other zoo model
    /// taking 3-channel images (vgg11-bn, googlenet, resnet50, ...: batch 128, SGD, random
    /// images of --image-size)
    #[arg(long)]
    only: Option<String>,
    /// The side of the square images for a zoo model other than the four (--only) [default:
    /// 32, CIFAR-10's, as train-cifar trains it]
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    image_size: Option<usize>,
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Batch sizes, comma separated [default: each model's training batch]
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    batches: Option<Vec<usize>>,
    /// Precisions, comma separated: f32, tf32, bf16
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32")]
    precision: Vec<Precision>,
    /// Memory formats of the images and activations, comma separated: contiguous_format,
    /// channels_last (PyTorch's torch.channels_last)
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "contiguous_format"
    )]
    memory_format: Vec<MemoryFormat>,
    /// Also time the CIFAR-10 training transform, host loader against device-resident data
    #[arg(long)]
    pipeline: bool,
    /// Also time forward, backward and optimizer apart
    #[arg(long)]
    split: bool,
    /// How the optimizer updates: per-tensor or flat [default: flat on a GPU, per-tensor on
    /// the CPU] (the same results; this compares the times)
    #[arg(long, value_enum)]
    optimizer_update: Option<UpdateArg>,
    /// Also run PyTorch's step with this Python (which has torch installed) right after each
    /// of our models, through `cpu_step_modes.py` from `--anchors` for the tutorial's four and
    /// the repository's `tools/pytorch_zoo_step.py` (torchvision's model of that name) for
    /// another zoo model, and print the ratios
    #[arg(long, value_name = "PYTHON", conflicts_with = "pytorch_results")]
    compare_pytorch: Option<PathBuf>,
    /// Compare with the output of `cpu_step_modes.py` saved in this file (made in the same
    /// sitting, on this machine)
    #[arg(long, value_name = "FILE")]
    pytorch_results: Option<PathBuf>,
    /// Time each model this many times in turn (with `--compare-pytorch`, ours then PyTorch's
    /// each round) and end with the medians over the rounds and each round's ratio: this
    /// machine's speed moves from run to run, so one round proves little
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100))]
    rounds: usize,
    /// The PyTorch anchor scripts [default: $CNN_SHARED_DIR/tools/pytorch-anchors]
    #[arg(long, value_name = "DIR")]
    anchors: Option<PathBuf>,
}

/// `--optimizer-update`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum UpdateArg {
    PerTensor,
    Flat,
}

impl From<UpdateArg> for Update {
    fn from(u: UpdateArg) -> Self {
        match u {
            UpdateArg::PerTensor => Update::PerTensor,
            UpdateArg::Flat => Update::Flat,
        }
    }
}

/// Running out of memory ends in an error saying what to do, not in an abort.
#[global_allocator]
static ALLOCATOR: train::memory::ReportOutOfMemory = train::memory::ReportOutOfMemory;

fn main() -> Result<()> {
    train::cli::user_errors_without_backtraces();
    train::cli::write_errors_not_signals();
    train::progress::stdout_written(bench())
}

/// The benchmark: the table (and `--split`'s parts) on stdout.
fn bench() -> Result<()> {
    if std::env::var_os("BENCH_MMAP").is_none() {
        train::memory::keep_freed_memory();
    }
    // As the training programs (`CANDLE_NUM_THREADS=2` keeps Candle's pool).
    train::threads::candle_ops_on_the_calling_thread();
    train::threads::calling_thread_joins_the_pool();
    let args = BenchArgs::try_parse().unwrap_or_else(|e| train::cli::exit_for_clap(e));
    let (steps, only, split) = (args.steps, args.only.as_deref(), args.split);
    let cases = cases(only, args.image_size)?;
    let update = args.optimizer_update.map(Update::from);
    let device = train::device::parse_device(&args.device)?;
    let batches = args.batches;
    train::memory::on_out_of_memory(
        "A batch's activations take most of a step's memory: smaller --batches need less."
            .to_string(),
    );
    let precisions = args.precision;
    if args.pipeline {
        pipeline(&device)?;
    }
    let of_the_tutorial = cases.iter().any(|c| CASES.contains(c));
    let mut pytorch = match (&args.compare_pytorch, &args.pytorch_results) {
        (Some(python), _) => Some(Reference::Run {
            python: python.clone(),
            // The tutorial's four from the anchors; the zoo's others from our own script.
            script: match of_the_tutorial {
                true => Some(anchors(args.anchors.as_deref())?.join("cpu_step_modes.py")),
                false => None,
            },
        }),
        (None, Some(file)) => {
            // A file or a pipe (`<(cmd)`), as images are read.
            let text = String::from_utf8(datasets::read_input_file(file, "results")?)
                .with_context(|| format!("--pytorch-results {}: not UTF-8 text", file.display()))?;
            anyhow::ensure!(
                !pytorch_lines(&text).is_empty(),
                "--pytorch-results {}: no step figures in it (lines of cpu_step_modes.py's \
                 output, `<model> <mode> batch <N> step <ms> ms ...`): give its saved output",
                file.display()
            );
            Some(Reference::Saved(text))
        }
        (None, None) => None,
    };
    // The zoo's models PyTorch's script times (torchvision's), asked before ours are timed.
    if let Some(Reference::Run { python, .. }) = &pytorch {
        let others: Vec<&str> = cases
            .iter()
            .map(|c| c.0)
            .filter(|m| !CASES.iter().any(|c| c.0 == *m))
            .collect();
        if !others.is_empty() {
            let known = torchvision_models(python)?;
            for model in others {
                anyhow::ensure!(
                    known.iter().any(|k| k == model),
                    "--compare-pytorch: torchvision has no model {model} (it is the zoo's own); \
                     PyTorch's step is timed for {}",
                    known.join(", ")
                );
            }
        }
    }
    if pytorch.is_some() && !device.is_cpu() {
        anyhow::bail!(
            "--compare-pytorch and --pytorch-results compare CPU steps; leave out --device"
        );
    }
    train::say!(
        "median training step on {} (forward + backward + optimizer step)",
        train::device::device_name(&device)
    );
    for (model, default_batch, shape, optimizer) in cases {
        let mut rounds = Rounds::default();
        // PyTorch's step is run (or was saved) at one batch: the tutorial's four at their
        // training batch (the anchors' script), the zoo's others at the one `--batches` given
        // (the script takes any), else at theirs.
        let tutorial = CASES.iter().any(|c| c.0 == model);
        let compared = match &batches {
            Some(b) if b.len() == 1 && !tutorial => b[0],
            _ => default_batch,
        };
        let mut said_uncompared = false;
        for round in 0..args.rounds {
            if args.rounds > 1 {
                train::say!("{model:>15} round {}/{}", round + 1, args.rounds);
            }
            let formats = args.memory_format.iter();
            for (&precision, &format) in precisions
                .iter()
                .flat_map(|p| formats.clone().map(move |f| (p, f)))
            {
                let _precision = precision.enter();
                for batch in batches.clone().unwrap_or_else(|| vec![default_batch]) {
                    let big = batch * shape.0 * shape.1 * shape.2 > 200_000 && device.is_cpu();
                    let n = steps.unwrap_or(if big { 3 } else { 10 });
                    let ([ms, fwd, bwd, opt], shares) = median_step_ms(
                        &device,
                        model,
                        batch,
                        shape,
                        (optimizer, update),
                        (n, format),
                        split,
                    )
                    .with_context(|| match of_the_tutorial {
                        true => format!("{model} at batch {batch}"),
                        // A size the model's layers cannot reduce (AlexNet's need 63 or more).
                        false => format!(
                            "--only {model} on {}x{} images: give a larger --image-size if the \
                             model's layers need one",
                            shape.1, shape.2
                        ),
                    })?;
                    let phases = match split {
                        true => format!(
                            "  forward {fwd:.1} ms, backward {bwd:.1} ms, optimizer {opt:.1} ms{shares}"
                        ),
                        false => String::new(),
                    };
                    let name = match format {
                        MemoryFormat::Contiguous => format!("{precision:?}").to_lowercase(),
                        MemoryFormat::ChannelsLast => format!("{precision:?}-cl").to_lowercase(),
                    };
                    train::say!(
                        "{model:>15} b{batch:<4} {name:<7} {ms:>10.1} ms  {:>9.0} images/s  (median of {n}){phases}",
                        batch as f64 * 1e3 / ms
                    );
                    rounds.ours(round, &format!("b{batch} {name}"), ms);
                    if let Some(reference) = &mut pytorch {
                        if batch == compared && format == MemoryFormat::Contiguous {
                            let case = (precision, batch, shape.1);
                            for (mode, ms) in compare(reference, model, case, ms)? {
                                rounds.pytorch(round, &name, &mode, ms);
                            }
                        } else if batch != compared && !said_uncompared {
                            said_uncompared = true;
                            let why = match tutorial {
                                true => "the anchors' script times the tutorial's batch",
                                false => "give one --batches to compare at another",
                            };
                            train::say!(
                                "{:>15}      PyTorch: compared at batch {compared} only ({why}): \
                                 no ratio at batch {batch}",
                                ""
                            );
                        }
                    }
                }
            }
        }
        if args.rounds > 1 {
            for line in rounds.summary(compared) {
                train::say!("{model:>15} {line}");
            }
        }
    }
    Ok(())
}

/// One model's times over `--rounds`: ours per case (`b128 bf16`) and PyTorch's per mode
/// (`bf16-cl`, from the run right after our step of that precision), each a list of
/// (round, ms).
#[derive(Default)]
struct Rounds {
    ours: Vec<(String, Vec<(usize, f64)>)>,
    pytorch: Vec<(String, Vec<(usize, f64)>)>,
}

impl Rounds {
    fn ours(&mut self, round: usize, case: &str, ms: f64) {
        Self::push(&mut self.ours, round, case, ms)
    }

    /// PyTorch's `mode` timed right after our step in `precision`: kept for the modes of that
    /// precision (`f32` and `f32-cl` after our f32, `bf16-cl` after bf16), so that each round
    /// compares runs made side by side.
    fn pytorch(&mut self, round: usize, precision: &str, mode: &str, ms: f64) {
        if mode.split('-').next() == Some(precision) {
            Self::push(&mut self.pytorch, round, mode, ms)
        }
    }

    fn push(list: &mut Vec<(String, Vec<(usize, f64)>)>, round: usize, key: &str, ms: f64) {
        match list.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => v.push((round, ms)),
            None => list.push((key.to_string(), vec![(round, ms)])),
        }
    }

    /// The summary lines: medians over the rounds, then for each of our precisions at the
    /// models' batch and each PyTorch mode of that precision (`f32`: `f32`, `f32-cl`; `bf16`:
    /// `bf16-cl`), PyTorch's time over ours round by round (`round:ratio`, rounds without a
    /// PyTorch figure left out), and the median of those ratios.
    fn summary(&self, default_batch: usize) -> Vec<String> {
        let medians = |list: &[(String, Vec<(usize, f64)>)]| -> String {
            list.iter()
                .map(|(k, v)| {
                    let mut ms: Vec<f64> = v.iter().map(|&(_, ms)| ms).collect();
                    format!("{k} {:.1} ms", train::metrics::median(&mut ms))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let rounds = self
            .ours
            .iter()
            .flat_map(|(_, v)| v.iter().map(|&(r, _)| r + 1))
            .max()
            .unwrap_or(0);
        let mut lines = vec![format!(
            "over {rounds} rounds, medians: ours {}",
            medians(&self.ours)
        )];
        if !self.pytorch.is_empty() {
            lines.push(format!("PyTorch {}", medians(&self.pytorch)));
        }
        let prefix = format!("b{default_batch} ");
        for (case, ours) in &self.ours {
            let Some(precision) = case.strip_prefix(&prefix) else {
                continue;
            };
            for (mode, theirs) in &self.pytorch {
                if mode.split('-').next() != Some(precision) {
                    continue;
                }
                let by_round: Vec<(usize, f64)> = ours
                    .iter()
                    .filter_map(|&(round, ms)| {
                        let mut t: Vec<f64> = theirs
                            .iter()
                            .filter(|&&(r, _)| r == round)
                            .map(|&(_, ms)| ms)
                            .collect();
                        (!t.is_empty()).then(|| (round, train::metrics::median(&mut t) / ms))
                    })
                    .collect();
                if by_round.is_empty() {
                    continue;
                }
                let shown: Vec<String> = by_round
                    .iter()
                    .map(|(round, r)| format!("{}:{r:.2}", round + 1))
                    .collect();
                let mut ratios: Vec<f64> = by_round.iter().map(|&(_, r)| r).collect();
                let ahead = ratios.iter().filter(|&&r| r > 1.0).count();
                lines.push(format!(
                    "PyTorch {mode} / our {precision}, round by round: {} (median {:.2}x; ours faster in {ahead} of {})",
                    shown.join(" "),
                    train::metrics::median(&mut ratios),
                    ratios.len()
                ));
            }
        }
        lines
    }
}

/// Where PyTorch's step times come from: a run of the anchor script per model, right after
/// ours (`script`: `cpu_step_modes.py` for the tutorial's four; `None`: our
/// [`ZOO_SCRIPT`] for the zoo's others), or the script's saved output.
enum Reference {
    Run {
        python: PathBuf,
        script: Option<PathBuf>,
    },
    Saved(String),
}

/// `tools/pytorch_zoo_step.py`: PyTorch's step for torchvision's models, run through the
/// Python given (`python - MODEL --batch N --image-size S`, the script on standard input).
const ZOO_SCRIPT: &str = include_str!("../../../../tools/pytorch_zoo_step.py");

/// The cases `--only` selects: all four of [`CASES`] without it, one of them, or another zoo
/// model taking 3-channel images, at batch 128 with SGD on `size`-sided images (32: CIFAR-10's).
///
/// # Errors
/// A name the zoo does not know (with the closest it does), or a model of 1-channel images.
fn cases(only: Option<&str>, size: Option<usize>) -> Result<Vec<Case>> {
    let Some(name) = only else {
        anyhow::ensure!(
            size.is_none(),
            "--image-size is for a zoo model other than the four (--only NAME)"
        );
        return Ok(CASES.to_vec());
    };
    if let Some(case) = CASES.iter().find(|c| c.0 == name) {
        anyhow::ensure!(
            size.is_none(),
            "--image-size: {name} is timed at its training images' size, {}x{}",
            case.2 .1,
            case.2 .2
        );
        return Ok(vec![*case]);
    }
    let names = zoo::names();
    let Ok(spec) = zoo::spec(name) else {
        anyhow::bail!(
            "--only {name}: no such model{} (the zoo's: {})",
            zoo::did_you_mean(name, &names)
                .map(|k| format!("; did you mean {k}?"))
                .unwrap_or_default(),
            names.join(", ")
        );
    };
    anyhow::ensure!(
        spec.input.0 == 3,
        "--only {name}: it takes {}-channel images; the zoo's 1-channel models timed here are \
         cnn-mnist and lenet5",
        spec.input.0
    );
    let size = size.unwrap_or(32);
    Ok(vec![(spec.name, 128, (3, size, size), OptimizerKind::Sgd)])
}

/// The anchor scripts' folder: `dir`, else `$CNN_SHARED_DIR/tools/pytorch-anchors`.
fn anchors(dir: Option<&Path>) -> Result<PathBuf> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::var_os("CNN_SHARED_DIR")
            .map(|d| PathBuf::from(d).join("tools/pytorch-anchors"))
            .context("--compare-pytorch needs --anchors DIR or CNN_SHARED_DIR")?,
    };
    if !dir.join("cpu_step_modes.py").is_file() {
        anyhow::bail!("--anchors {}: no cpu_step_modes.py there", dir.display());
    }
    Ok(dir)
}

/// PyTorch's median step in ms for `model` (the script's name, `resnet18_cifar`) per mode
/// (`f32`, `f32-cl`, `bf16-cl`), read from the script's output lines
/// `resnet18_cifar   f32      batch  128  step    2648.7 ms     48.3 img/s`.
fn parse_pytorch(output: &str, model: &str) -> Vec<(String, usize, f64)> {
    pytorch_lines(output)
        .into_iter()
        .filter(|(name, ..)| name == model)
        .map(|(_, mode, batch, ms)| (mode, batch, ms))
        .collect()
}

/// Every `<model> <mode> batch <N> step <ms> ms ...` line of `cpu_step_modes.py`'s output, as
/// (model, mode, batch, ms).
fn pytorch_lines(output: &str) -> Vec<(String, String, usize, f64)> {
    output
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                [name, mode, "batch", batch, "step", ms, "ms", ..] => Some((
                    name.to_string(),
                    mode.to_string(),
                    batch.parse().ok()?,
                    ms.parse()
                        .ok()
                        .filter(|ms: &f64| ms.is_finite() && *ms > 0.0)?,
                )),
                _ => None,
            }
        })
        .collect()
}

/// The zoo's names of the models `tools/pytorch_zoo_step.py` times (torchvision's), from its
/// `--list` run by `python`.
fn torchvision_models(python: &Path) -> Result<Vec<String>> {
    let mut command = std::process::Command::new(python);
    command.args(["-", "--list"]);
    let out = run_python(
        python,
        command,
        "tools/pytorch_zoo_step.py --list",
        Some(ZOO_SCRIPT),
    )?;
    Ok(out
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Runs `command` (a PyTorch script, `shown` in errors, given `script` on standard input
/// when there is one) with `python` and returns what it printed; an error naming
/// `--compare-pytorch` and the script if it cannot run or fails.
fn run_python(
    python: &Path,
    mut command: std::process::Command,
    shown: &str,
    script: Option<&str>,
) -> Result<String> {
    use std::io::Write;
    if script.is_some() {
        command.stdin(std::process::Stdio::piped());
    }
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("--compare-pytorch {}: cannot run it", python.display()))?;
    if let (Some(text), Some(mut stdin)) = (script, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).with_context(|| {
            format!(
                "--compare-pytorch {}: cannot give it {shown}",
                python.display()
            )
        })?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("--compare-pytorch {}: cannot run it", python.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "--compare-pytorch {}: {shown} failed: {}",
        python.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prints PyTorch's step for `model` next to ours (`ours_ms`) and the ratios: above 1, PyTorch
/// takes longer. Returns PyTorch's (mode, ms).
fn compare(
    reference: &mut Reference,
    model: &str,
    (precision, batch, size): (Precision, usize, usize),
    ours_ms: f64,
) -> Result<Vec<(String, f64)>> {
    let name = model.replace('-', "_");
    let output = match reference {
        Reference::Saved(text) => text.clone(),
        Reference::Run { python, script } => {
            let threads = rayon::current_num_threads().to_string();
            let mut command = std::process::Command::new(&*python);
            command.env("OMP_NUM_THREADS", threads);
            let (shown, script_text) = match script
                .as_deref()
                .filter(|_| CASES.iter().any(|c| c.0 == model))
            {
                Some(script) => {
                    command.arg(script).arg(&name);
                    (script.display().to_string(), None)
                }
                None => {
                    command.arg("-").arg(model);
                    command.args(["--batch", &batch.to_string()]);
                    command.args(["--image-size", &size.to_string()]);
                    ("tools/pytorch_zoo_step.py".to_string(), Some(ZOO_SCRIPT))
                }
            };
            run_python(python, command, &shown, script_text)?
        }
    };
    let found = parse_pytorch(&output, &name);
    let modes: Vec<(String, f64)> = found
        .iter()
        .filter(|(_, b, _)| *b == batch)
        .map(|(mode, _, ms)| (mode.clone(), *ms))
        .collect();
    if modes.is_empty() {
        let mut batches: Vec<usize> = found.iter().map(|(_, b, _)| *b).collect();
        batches.sort_unstable();
        batches.dedup();
        let batches: Vec<String> = batches.iter().map(usize::to_string).collect();
        match batches.is_empty() {
            true => train::say!("{:>15}      PyTorch: no figures for {name}", ""),
            false => train::say!(
                "{:>15}      PyTorch: figures for {name} at batch {} only, not {batch}: no ratio",
                "",
                batches.join(", ")
            ),
        }
        return Ok(modes);
    }
    let shown: Vec<String> = modes
        .iter()
        .map(|(mode, ms)| format!("{mode} {ms:.1} ms ({:.2}x)", ms / ours_ms))
        .collect();
    train::say!(
        "{:>15}      PyTorch {}: {}  (x: PyTorch's time / our {} time)",
        "",
        torch_version(&output),
        shown.join(", "),
        format!("{precision:?}").to_lowercase()
    );
    Ok(modes)
}

/// `2.15.0, threads 2, AVX512` from the script's first line `torch 2.15.0 threads 2 isa
/// AVX512`, or `(version not given)` without one.
fn torch_version(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix("torch "))
        .map(|rest| {
            rest.replace(" isa ", ", ")
                .replace(" threads ", ", threads ")
        })
        .unwrap_or_else(|| "(version not given)".into())
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

/// The median over `steps` steps, in ms, of the whole step, then its forward (with the loss),
/// backward and optimizer parts ([`parts_of_the_median`]), which are timed apart (synchronising
/// the device between them) when `split`;
/// and on the CPU with `split`, the shares of each part of the work ([`layers::profile`]). The
/// images are in `format` (converted once, as PyTorch's `x.to(memory_format=...)`).
fn median_step_ms(
    device: &Device,
    model_name: &str,
    batch: usize,
    (c, h, w): (usize, usize, usize),
    (optimizer, update): (OptimizerKind, Option<Update>),
    (steps, format): (usize, MemoryFormat),
    split: bool,
) -> Result<([f64; 4], String)> {
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
    let mut opt = config.optimizer_updating(store.trainable(), update)?;
    let _preferred = layers::memory_format::prefer(format.layers());
    let x = format
        .layers()
        .apply(&Tensor::randn(0f32, 1.0, (batch, c, h, w), device)?)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
    let y = Tensor::from_vec(labels, batch, device)?;
    // Per step: the whole step, then (with `split`) forward with the loss, backward, optimizer.
    let mut times: [Vec<f64>; 4] = Default::default();
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let profile = split && device.is_cpu();
    layers::profile::enable(profile);
    for i in 0..=steps {
        if i == 1 {
            layers::profile::take();
        }
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
        let loss = layers::loss::cross_entropy(&logits, &y, 0.0)?;
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
    layers::profile::enable(false);
    let shares = match profile {
        true => shares(&layers::profile::take(), &times[0], &times[3]),
        false => String::new(),
    };
    Ok((parts_of_the_median(&times), shares))
}

/// The median step, and the forward, backward and optimizer parts of it: each part's share of
/// the time summed over the steps, times the median step. So the parts add up to the step (less
/// the time between them), where the parts' own medians, taken each on its own, need not: a
/// stall that falls into the forward in some steps and into the backward in others raises both
/// medians, and on a busy machine their sum went past the median step.
fn parts_of_the_median(times: &[Vec<f64>; 4]) -> [f64; 4] {
    let median = train::metrics::median(&mut times[0].clone());
    let total: f64 = times[0].iter().sum();
    let part = |k: usize| match total > 0.0 {
        true => median * times[k].iter().sum::<f64>() / total,
        false => 0.0,
    };
    [median, part(1), part(2), part(3)]
}

/// The shares of the timed steps' thread time (wall time x threads) spent in each part, with
/// the GEMM's rate per thread, as `; GEMM 61% (95 GFLOP/s per thread), ...`.
fn shares(report: &layers::profile::Report, steps_ms: &[f64], optimizer_ms: &[f64]) -> String {
    use layers::profile::Part;
    let threads = rayon::current_num_threads() as f64;
    let total = steps_ms.iter().sum::<f64>() * 1e-3 * threads;
    let mut parts = Vec::new();
    let mut counted = 0.0;
    for part in Part::ALL {
        let s = report.seconds(part);
        counted += s;
        let rate = match part {
            Part::Gemm if s > 0.0 => format!(
                " ({:.0} GFLOP/s per thread)",
                report.gemm_flops as f64 / s * 1e-9
            ),
            _ => String::new(),
        };
        parts.push(format!("{} {:.0}%{rate}", part.name(), 100.0 * s / total));
    }
    let opt = optimizer_ms.iter().sum::<f64>() * 1e-3 * threads;
    parts.push(format!("optimizer {:.0}%", 100.0 * opt / total));
    parts.push(format!(
        "other (element-wise, Candle ops, allocation) {:.0}%",
        100.0 * (total - counted - opt).max(0.0) / total
    ));
    format!("; {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_parts_add_up_to_the_median_step() {
        // A 2 ms stall in the forward of three steps and in the backward of three (one step
        // has both): each part's own median is 3 ms, 6.1 in all against a 4.1 ms median step.
        let times = [
            vec![4.1, 4.1, 6.1, 4.1, 4.1],
            vec![3.0, 3.0, 3.0, 1.0, 1.0],
            vec![1.0, 1.0, 3.0, 3.0, 3.0],
            vec![0.1, 0.1, 0.1, 0.1, 0.1],
        ];
        let [step, forward, backward, optimizer] = super::parts_of_the_median(&times);
        assert_eq!(step, 4.1);
        assert!((forward + backward + optimizer - step).abs() < 1e-9);
        assert!((forward - backward).abs() < 1e-9 && forward > 1.9 && forward < 2.1);
    }

    #[test]
    fn rounds_pair_each_mode_with_the_run_after_our_step_of_its_precision() {
        let mut r = super::Rounds::default();
        for (round, (f32_ms, bf16_ms)) in [(10.0, 4.0), (20.0, 5.0)].into_iter().enumerate() {
            r.ours(round, "b128 f32", f32_ms);
            // After our f32 step: PyTorch's f32 modes count, its bf16-cl does not.
            r.pytorch(round, "f32", "f32", 30.0);
            r.pytorch(round, "f32", "bf16-cl", 99.0);
            r.ours(round, "b128 bf16", bf16_ms);
            r.pytorch(round, "bf16", "f32", 99.0);
            r.pytorch(round, "bf16", "bf16-cl", 8.0);
        }
        let lines = r.summary(128);
        assert_eq!(
            lines,
            [
                "over 2 rounds, medians: ours b128 f32 15.0 ms, b128 bf16 4.5 ms",
                "PyTorch f32 30.0 ms, bf16-cl 8.0 ms",
                "PyTorch f32 / our f32, round by round: 1:3.00 2:1.50 (median 2.25x; ours faster in 2 of 2)",
                "PyTorch bf16-cl / our bf16, round by round: 1:2.00 2:1.60 (median 1.80x; ours faster in 2 of 2)",
            ]
        );
    }

    #[test]
    fn pytorch_lines_are_read_per_model_and_mode() {
        let out = "torch 2.15.0 threads 2 isa AVX512\n\
                   lenet5           f32      batch   64  step       6.1 ms  10491.8 img/s\n\
                   resnet18_cifar   f32      batch  128  step    2648.7 ms     48.3 img/s\n\
                   resnet18_cifar   bf16-cl  batch  128  step    1107.7 ms    115.6 img/s\n";
        let modes = super::parse_pytorch(out, "resnet18_cifar");
        assert_eq!(
            modes,
            [
                ("f32".to_string(), 128, 2648.7),
                ("bf16-cl".to_string(), 128, 1107.7)
            ]
        );
        assert!(super::parse_pytorch(out, "vgg").is_empty());
        assert_eq!(super::pytorch_lines(out).len(), 3);
        assert!(super::pytorch_lines("localhost\nlenet5 f32 batch x step 1 ms\n").is_empty());
        assert_eq!(super::torch_version(out), "2.15.0, threads 2, AVX512");
    }
}
