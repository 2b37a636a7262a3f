//! Throughput of the input pipeline, in images per second:
//! (a) the CIFAR-10 train transform (RandomCrop(32, 4), flip, Normalize) from in-memory u8
//!     images into batches of 128;
//! (b) decoding the CIFAR-10 JPEG ImageFolder (extracted to a temporary directory, one file per
//!     sample, decoded every epoch like torchvision's ImageFolder) plus the same transform.
//!
//! `cargo run -p datasets --bin bench-pipeline [-- WORKERS]` (default 2 workers, like the
//! torchvision reference). (a) uses `$CNN_SHARED_DIR/data/cifar10/cifar-10-batches-bin/test_batch.bin`
//! when set, else synthetic images; (b) needs `$CNN_SHARED_DIR`.

#[path = "common/bench_input.rs"]
mod bench_input;

use anyhow::{Context, Result};
use datasets::{image_folder, Dataset, FolderOptions, Loader, LoaderConfig, Storage, Transform};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// torchvision DataLoader, 2 workers, on the same data: (a) and (b).
const TORCH_IMAGES_PER_S: (f64, f64) = (3406.0, 2988.0);
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
    if let Some(extra) = std::env::args().nth(2) {
        anyhow::bail!("bench-pipeline takes one argument, WORKERS; {extra:?} is one too many");
    }
    let workers = match std::env::args().nth(1).as_deref() {
        Some("-h" | "--help") => {
            say!("usage: bench-pipeline [WORKERS]  (default 2; CNN_SHARED_DIR for the real data)");
            return Ok(());
        }
        Some(w) => w
            .parse()
            .ok()
            .filter(|n| (1..=datasets::MAX_WORKERS).contains(n))
            .with_context(|| {
                format!(
                    "WORKERS must be a whole number from 1 to {}, not {w:?}",
                    datasets::MAX_WORKERS
                )
            })?,
        None => 2,
    };
    let shared = std::env::var_os("CNN_SHARED_DIR").map(PathBuf::from);
    say!("bench-pipeline: {workers} workers, batch {BATCH}");

    let (data, what) = bench_input::cifar10_images(shared.as_deref())?;
    let rate = throughput(data, workers, 3)?;
    report(
        "(a) in-memory u8 + crop/flip/normalize",
        &what,
        rate,
        TORCH_IMAGES_PER_S.0,
    );

    let Some(shared) = shared else {
        say!("(b) skipped: CNN_SHARED_DIR not set");
        return Ok(());
    };
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
    report(
        "(b) JPEG files decoded per epoch + same transform",
        "50,000 train JPEGs",
        rate,
        TORCH_IMAGES_PER_S.1,
    );

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
    Ok(())
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

fn report(name: &str, data: &str, rate: f64, torch: f64) {
    say!(
        "{name} [{data}]: {rate:.0} images/s ({:.1}x torchvision's {torch:.0})",
        rate / torch
    );
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
