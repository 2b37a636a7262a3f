//! Throughput of the input pipeline, in images per second:
//! (a) the CIFAR-10 train transform (RandomCrop(32, 4), flip, Normalize) from in-memory u8
//!     images into batches of 128;
//! (b) decoding the CIFAR-10 JPEG ImageFolder (extracted to a temporary directory, one file per
//!     sample, decoded every epoch like torchvision's ImageFolder) plus the same transform;
//! (c) the whole archive read and decoded into memory once (all cores).
//!
//! `cargo run --release -p datasets --bin bench-pipeline [-- [WORKERS] [--rounds N]
//! [--compare-pytorch PYTHON] [--anchors DIR]]` (default 2 workers, like the torchvision
//! reference). (a) uses `$CNN_SHARED_DIR/data/cifar10/cifar-10-batches-bin/test_batch.bin` when
//! set, else synthetic images; (b) and (c) need `$CNN_SHARED_DIR`. `--compare-pytorch PYTHON`
//! runs torchvision's DataLoader on the same archive right after ours in each round
//! (`cpu_pipeline.py` of `--anchors DIR`, default `$CNN_SHARED_DIR/tools/pytorch-anchors`: (a)
//! and (b) with 2 workers), and prints the medians and the ratios round by round: the reference
//! is always measured in the same sitting, never a figure from another day.

#[path = "common/bench_input.rs"]
mod bench_input;

use anyhow::{Context, Result};
use datasets::{image_folder, Dataset, FolderOptions, Loader, LoaderConfig, Storage, Transform};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const BATCH: usize = 128;

/// The first error writing to stdout other than a closed pipe, for `main` to report.
static STDOUT_FAILED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// `println!` that ends the printing, not the program, once stdout is closed (`| head`); another
/// write error (a full disk) is kept, and ends the program with an error after the work, as
/// the training programs' `train::progress::stdout_written` does.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                let _ = STDOUT_FAILED.set(e.to_string());
            }
        }
    }};
}

fn main() -> Result<()> {
    bench()?;
    match STDOUT_FAILED.get() {
        Some(why) => anyhow::bail!(
            "standard output could not be written ({why}): lines printed there are missing"
        ),
        None => Ok(()),
    }
}

/// The benchmark, its lines on stdout.
fn bench() -> Result<()> {
    // As the training programs: an error is printed with its causes, without a backtrace
    // (RUST_BACKTRACE=1 stays for panics; RUST_LIB_BACKTRACE=1 asks for one).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let args = Args::parse(std::env::args().skip(1))?;
    let Some(args) = args else {
        say!("{USAGE}");
        return Ok(());
    };
    let shared = std::env::var_os("CNN_SHARED_DIR").map(PathBuf::from);
    let torch = match &args.compare_pytorch {
        None => None,
        Some(python) => {
            let anchors = match (&args.anchors, &shared) {
                (Some(dir), _) => dir.clone(),
                (None, Some(shared)) => shared.join("tools/pytorch-anchors"),
                (None, None) => {
                    anyhow::bail!("--compare-pytorch needs --anchors DIR or CNN_SHARED_DIR")
                }
            };
            let script = anchors.join("cpu_pipeline.py");
            anyhow::ensure!(
                script.is_file(),
                "--compare-pytorch: {} is not there (--anchors DIR names the folder of \
                 cpu_pipeline.py)",
                script.display()
            );
            anyhow::ensure!(
                shared.is_some(),
                "--compare-pytorch runs PyTorch on the CIFAR-10 JPEG archive of CNN_SHARED_DIR, \
                 which is not set"
            );
            // PyTorch there, before minutes of our rows.
            let found = std::process::Command::new(python)
                .args(["-c", "import torch, torchvision, PIL"])
                .output()
                .with_context(|| format!("--compare-pytorch: cannot run {}", python.display()))?;
            anyhow::ensure!(
                found.status.success(),
                "--compare-pytorch: {} cannot import torch, torchvision and PIL: {}",
                python.display(),
                String::from_utf8_lossy(&found.stderr).trim()
            );
            Some((python.clone(), script))
        }
    };
    let workers = args.workers;
    say!(
        "bench-pipeline: {workers} workers, batch {BATCH}, {} round{}",
        args.rounds,
        if args.rounds == 1 { "" } else { "s" }
    );
    let (data, what) = bench_input::cifar10_images(shared.as_deref())?;
    // Rows (a) and (b) by round, ours and torchvision's.
    let mut ours: Vec<[Option<f64>; 2]> = Vec::new();
    let mut theirs: Vec<[Option<f64>; 2]> = Vec::new();
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            say!("round {round}:");
        }
        let a = throughput(data.clone(), workers, 3)?;
        say!("(a) in-memory u8 + crop/flip/normalize [{what}]: {a:.0} images/s");
        let b = match &shared {
            None => {
                say!("(b) and (c) skipped: CNN_SHARED_DIR not set");
                None
            }
            Some(shared) => Some(jpeg_rows(shared, workers)?),
        };
        ours.push([Some(a), b]);
        if let (Some((python, script)), Some(shared)) = (&torch, &shared) {
            let archive = shared.join("data/cifar10/cifar10-jpeg.tar.gz");
            let rates = torchvision(python, script, &archive)?;
            say!(
                "    torchvision DataLoader ({} workers): (a) {:.0} images/s, (b) {:.0} images/s",
                2,
                rates[0],
                rates[1]
            );
            theirs.push(rates.map(Some));
        }
    }
    if args.rounds > 1 || torch.is_some() {
        summary(&ours, &theirs, workers);
    }
    Ok(())
}

const USAGE: &str = "usage: bench-pipeline [WORKERS] [--rounds N] [--compare-pytorch PYTHON] \
                     [--anchors DIR]  (WORKERS default 2; CNN_SHARED_DIR for the real data)";

/// The command line.
struct Args {
    workers: usize,
    rounds: usize,
    compare_pytorch: Option<PathBuf>,
    anchors: Option<PathBuf>,
}

impl Args {
    /// `None` for `--help`.
    ///
    /// # Errors
    /// A value out of range or missing, an unknown flag, or a second `WORKERS`.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Self>> {
        let mut parsed = Args {
            workers: 2,
            rounds: 1,
            compare_pytorch: None,
            anchors: None,
        };
        let mut workers_given = false;
        while let Some(arg) = args.next() {
            let mut value = |flag: &str| match args.next() {
                Some(v) if !v.starts_with("--") => Ok(v),
                _ => Err(anyhow::anyhow!("{flag} needs a value ({USAGE})")),
            };
            match arg.as_str() {
                "-h" | "--help" => return Ok(None),
                "--rounds" => {
                    let n = value("--rounds")?;
                    parsed.rounds = n
                        .parse()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .with_context(|| {
                            format!("--rounds must be a whole number from 1 to 100, not {n:?}")
                        })?;
                }
                "--compare-pytorch" => {
                    parsed.compare_pytorch = Some(PathBuf::from(value("--compare-pytorch")?))
                }
                "--anchors" => parsed.anchors = Some(PathBuf::from(value("--anchors")?)),
                flag if flag.starts_with('-') && flag.parse::<i64>().is_err() => {
                    anyhow::bail!("unknown flag {flag:?} ({USAGE})")
                }
                w if workers_given => anyhow::bail!(
                    "bench-pipeline takes one WORKERS argument; {w:?} is one too many ({USAGE})"
                ),
                w => {
                    workers_given = true;
                    parsed.workers = w
                        .parse()
                        .ok()
                        .filter(|n| (1..=datasets::MAX_WORKERS).contains(n))
                        .with_context(|| {
                            format!(
                                "WORKERS must be a whole number from 1 to {}, not {w:?}",
                                datasets::MAX_WORKERS
                            )
                        })?;
                }
            }
        }
        anyhow::ensure!(
            parsed.anchors.is_none() || parsed.compare_pytorch.is_some(),
            "--anchors names the folder of cpu_pipeline.py for --compare-pytorch, which is not \
             given ({USAGE})"
        );
        Ok(Some(parsed))
    }
}

/// Rows (b) and (c) on the shared CIFAR-10 JPEG archive; (b)'s images per second.
fn jpeg_rows(shared: &Path, workers: usize) -> Result<f64> {
    let archive = shared.join("data/cifar10/cifar10-jpeg.tar.gz");
    let tmp = tempfile::tempdir()?;
    let start = Instant::now();
    extract(&archive, tmp.path())?;
    say!(
        "    extracted {} in {:.2?}",
        archive.display(),
        start.elapsed()
    );
    let root = find_split_root(tmp.path())?;
    let split = image_folder(&root, &FolderOptions::default())?;
    let rate = throughput(split.train.clone(), workers, 1)?;
    say!("(b) JPEG files decoded per epoch + same transform [50,000 train JPEGs]: {rate:.0} images/s");

    let start = Instant::now();
    let memory = FolderOptions {
        storage: Storage::Memory,
        ..FolderOptions::default()
    };
    let split = image_folder(&archive, &memory)?;
    let secs = start.elapsed().as_secs_f64();
    let n = split.train.len() + split.test.len();
    say!(
        "(c) whole archive read from the .tar.gz and decoded into memory once: {n} images in \
         {secs:.2} s = {:.0} images/s (all cores)",
        n as f64 / secs
    );
    Ok(rate)
}

/// torchvision's (a) and (b) images per second: `cpu_pipeline.py`'s two lines.
///
/// # Errors
/// The script cannot be started, fails, or prints no such lines.
fn torchvision(python: &Path, script: &Path, archive: &Path) -> Result<[f64; 2]> {
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(archive)
        .output()
        .with_context(|| format!("--compare-pytorch: cannot run {}", python.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "--compare-pytorch: {} {} failed ({}): {}",
        python.display(),
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let rate = |what: &str| {
        text.lines()
            .find(|l| l.starts_with(what))
            .and_then(|l| l.rsplit(':').next())
            .and_then(|v| {
                v.trim()
                    .trim_end_matches("img/s")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .with_context(|| {
                format!("--compare-pytorch: no {what:?} line in cpu_pipeline.py's output: {text}")
            })
    };
    Ok([
        rate("torchvision in-memory")?,
        rate("torchvision JPEG decode")?,
    ])
}

/// Medians over the rounds, and torchvision's images per second over ours, round by round.
fn summary(ours: &[[Option<f64>; 2]], theirs: &[[Option<f64>; 2]], workers: usize) {
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    };
    for (row, name) in ["(a) in-memory", "(b) JPEG decode"].iter().enumerate() {
        let mut mine: Vec<f64> = ours.iter().filter_map(|r| r[row]).collect();
        let Some(m) = median(&mut mine) else { continue };
        let mut line = format!(
            "{name}: ours {m:.0} images/s ({workers} workers, median of {})",
            mine.len()
        );
        let mut torch: Vec<f64> = theirs.iter().filter_map(|r| r[row]).collect();
        if let Some(t) = median(&mut torch) {
            let ratios: Vec<String> = ours
                .iter()
                .zip(theirs)
                .filter_map(|(o, t)| Some(format!("{:.1}x", o[row]? / t[row]?)))
                .collect();
            line.push_str(&format!(
                ", torchvision {t:.0} images/s (2 workers): ours / torchvision {:.1}x, round by \
                 round {}",
                m / t,
                ratios.join(" ")
            ));
        }
        say!("{line}");
    }
}

/// Images per second over `epochs` shuffled epochs of the CIFAR-10 train transform.
fn throughput(data: Arc<dyn Dataset>, workers: usize, epochs: usize) -> Result<f64> {
    let cfg = LoaderConfig {
        workers,
        ..LoaderConfig::train(BATCH, 0)
    };
    let loader = Loader::new(data, Transform::cifar10_train(), cfg)?;
    let start = Instant::now();
    let mut images = 0;
    for epoch in 0..epochs {
        for batch in loader.epoch(epoch) {
            images += batch?.indices.len();
        }
    }
    Ok(images as f64 / start.elapsed().as_secs_f64())
}

fn extract(archive: &Path, into: &Path) -> Result<()> {
    let file = std::fs::File::open(archive)
        .with_context(|| format!("cannot open {}", archive.display()))?;
    tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
        .unpack(into)
        .with_context(|| format!("cannot extract {}", archive.display()))
}

/// The folder holding `train/` (the archive may wrap it in a top folder).
fn find_split_root(dir: &Path) -> Result<PathBuf> {
    if dir.join("train").is_dir() {
        return Ok(dir.to_path_buf());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.join("train").is_dir() {
            return Ok(path);
        }
    }
    anyhow::bail!("no train/ folder in {}", dir.display())
}
