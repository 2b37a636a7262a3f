//! MNIST in its IDX files (raw or `.gz`): `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`.

use crate::dataset::class_names;
use crate::io::{ensure_exists, read_maybe_gz};
use crate::{Dataset, InMemory, Split};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Magic number of an IDX file of unsigned bytes with 3 dimensions (images).
const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with 1 dimension (labels).
const LABELS_MAGIC: u32 = 0x0000_0801;

/// MNIST's class names, as torchvision's `MNIST.classes` has them.
pub const MNIST_CLASSES: [&str; 10] = [
    "0 - zero",
    "1 - one",
    "2 - two",
    "3 - three",
    "4 - four",
    "5 - five",
    "6 - six",
    "7 - seven",
    "8 - eight",
    "9 - nine",
];

/// Loads MNIST, as `torchvision.datasets.MNIST` does: from `dir` (holding the four IDX files, raw
/// or `.gz`, directly or in torchvision's `MNIST/raw/` layout) or, with `None`, from the Hugging
/// Face Hub cache (downloading if needed). Images are 1x28x28 u8 (60,000 train, 10,000 test in
/// the full set), labels 0-9 with torchvision's class names ([`MNIST_CLASSES`]).
///
/// # Errors
/// `dir` lacks one of the four files, a file is not IDX (wrong magic number, truncated, images and
/// labels of different counts), or the Hub copy cannot be downloaded or read (or, built
/// without the default `hub` feature, `None` was given).
pub fn mnist(dir: Option<&Path>) -> Result<Split> {
    crate::catalog::load(&crate::catalog::MNIST, dir)
}

/// MNIST's four IDX files in `dir` (see [`mnist`]).
pub(crate) fn mnist_dir(dir: &Path) -> Result<Split> {
    let dir = files_dir(dir, "train-images-idx3-ubyte")?;
    let (train, train_origin) = part(&dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?;
    let (test, test_origin) = part(&dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?;
    let split = Split {
        train: Arc::new(train),
        test: Arc::new(test),
    };
    split.checked(&train_origin, &test_origin)
}

/// MNIST's test split alone: the two `t10k` IDX files in `dir` (or its `raw/`,
/// `MNIST/raw/`), without the training files.
pub(crate) fn mnist_test_dir(dir: &Path) -> Result<Arc<dyn Dataset>> {
    // Where `mnist_dir` reads them when the training files are there too.
    let with_train = files_dir(dir, "train-images-idx3-ubyte")?;
    let dir = match find_idx(&with_train, "t10k-images-idx3-ubyte") {
        Some(_) => with_train,
        None => files_dir(dir, "t10k-images-idx3-ubyte")?,
    };
    let (test, origin) = part(&dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?;
    ensure!(!test.is_empty(), "{origin}: the test split has no images");
    Ok(Arc::new(test))
}

/// Where in `dir` MNIST's files are: `dir`, its `raw/` or its `MNIST/raw/` (torchvision's
/// layout), whichever holds `stem`; `dir` itself when none does (its errors name the file).
fn files_dir(dir: &Path, stem: &str) -> Result<PathBuf> {
    ensure_exists(dir)?;
    ensure!(
        dir.is_dir(),
        "{} is a file: MNIST's --data-dir is the directory holding its IDX files",
        dir.display()
    );
    Ok([
        dir.to_path_buf(),
        dir.join("raw"),
        dir.join("MNIST").join("raw"),
    ]
    .into_iter()
    .find(|d| find_idx(d, stem).is_some())
    .unwrap_or_else(|| dir.to_path_buf()))
}

/// The IDX pair `images` + `labels` in `dir`, with the images' path for messages. Both files
/// come in one form where one form has both: raw first (torchvision reads the raw files and
/// keeps the `.gz` downloads beside them), else gzipped; so a raw file left beside a pair of
/// `.gz` files is not paired with the other's `.gz`.
fn part(dir: &Path, images: &str, labels: &str) -> Result<(InMemory, String)> {
    let both = |suffix: &str| {
        let pair = [images, labels].map(|stem| dir.join(format!("{stem}{suffix}")));
        pair.iter().all(|p| p.is_file()).then_some(pair)
    };
    let [images, labels] = match both("").or_else(|| both(".gz")) {
        Some(pair) => pair,
        None => [
            find_idx(dir, images).with_context(|| missing(dir, images))?,
            find_idx(dir, labels).with_context(|| missing(dir, labels))?,
        ],
    };
    let data = read_idx_pair(&images, &labels)?;
    Ok((data, images.display().to_string()))
}

fn missing(dir: &Path, stem: &str) -> String {
    let folders = [dir.join(stem), dir.join(format!("{stem}.gz"))];
    match folders.iter().find(|p| p.is_dir()) {
        // Some downloads (Kaggle's) unpack each file into a folder of its name.
        Some(folder) if find_idx(folder, stem).is_some() => format!(
            "{} is a directory holding MNIST's {stem}: give --data-dir a folder with the four \
             IDX files themselves (move them out of their folders)",
            folder.display()
        ),
        Some(folder) => format!(
            "{} is a directory, not MNIST's IDX file (raw or gzipped)",
            folder.display()
        ),
        None => {
            let here = format!(
                "MNIST file {stem} (or {stem}.gz) not found in {}",
                dir.display()
            );
            // The folder below, which `files_dir` takes with torchvision's `MNIST/raw/` in it.
            match subfolder_with(dir, |sub| {
                files_dir(sub, stem)
                    .ok()
                    .filter(|d| find_idx(d, stem).is_some())
                    .map(|_| sub.to_path_buf())
            }) {
                Some(found) => format!(
                    "{here}; it is in {}: give --data-dir that folder",
                    found.display()
                ),
                None => here,
            }
        }
    }
}

/// The first folder directly in `dir` (by name) for which `holds` gives a path: a data set one
/// folder below the one given (`data/` for `data/mnist/`), for the error's hint.
pub(crate) fn subfolder_with(
    dir: &Path,
    holds: impl Fn(&Path) -> Option<PathBuf>,
) -> Option<PathBuf> {
    let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .take(256)
        .collect();
    subs.sort();
    subs.iter().find_map(|sub| holds(sub))
}

/// The path of `stem` or `stem.gz` in `dir`, if either is there (a path that is there but is
/// no regular file is given too: the reader names what it is).
fn find_idx(dir: &Path, stem: &str) -> Option<PathBuf> {
    let paths = [dir.join(stem), dir.join(format!("{stem}.gz"))];
    let found = paths.iter().find(|p| p.is_file());
    found
        .or_else(|| paths.iter().find(|p| p.exists() && !p.is_dir()))
        .cloned()
}

/// Reads an IDX image file and its IDX label file into a 10-class dataset.
///
/// # Errors
/// A file cannot be read or is not IDX (wrong magic number, dimensions or length), the two hold
/// different counts, or a label is above 9.
pub fn read_idx_pair(images: &Path, labels: &Path) -> Result<InMemory> {
    let (n_images, rows, cols, pixels) = read_images(images)?;
    let label_bytes = read_labels(labels)?;
    ensure!(
        n_images == label_bytes.len(),
        "image/label count mismatch: {} has {n_images} images but {} has {} labels",
        images.display(),
        labels.display(),
        label_bytes.len()
    );
    if let Some(i) = label_bytes.iter().position(|&l| l >= 10) {
        bail!(
            "{}: label {} of sample {i} is not a digit 0-9",
            labels.display(),
            label_bytes[i]
        );
    }
    InMemory::new(
        pixels,
        label_bytes,
        (1, rows, cols),
        class_names(&MNIST_CLASSES),
    )
    .with_context(|| format!("{} + {}", images.display(), labels.display()))
}

/// The bytes an IDX file of `dims` dimensions should have by its `head`er; `None` when the
/// header is short, not `magic`'s or impossible (the reader then says what is wrong).
fn declared_size(head: &[u8], magic: u32, dims: usize) -> Option<usize> {
    let header_len = 4 + 4 * dims;
    if head.len() < header_len || be_u32(head, 0) != magic {
        return None;
    }
    (0..dims)
        .map(|d| be_u32(head, 4 + 4 * d) as usize)
        .try_fold(1usize, |acc, d| acc.checked_mul(d))
        .and_then(|data| data.checked_add(header_len))
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Checks the magic number and that the header's dimensions fit; returns the dimensions.
fn header(path: &Path, bytes: &[u8], magic: u32, dims: usize) -> Result<Vec<usize>> {
    let header_len = 4 + 4 * dims;
    ensure!(
        bytes.len() >= header_len,
        "{}: truncated IDX header ({} bytes, need {header_len})",
        path.display(),
        bytes.len()
    );
    let found = be_u32(bytes, 0);
    ensure!(
        found == magic,
        "{}: wrong magic number {found:#010x}, expected {magic:#010x}",
        path.display()
    );
    let shape: Vec<usize> = (0..dims)
        .map(|d| be_u32(bytes, 4 + 4 * d) as usize)
        .collect();
    let expected = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|data| data.checked_add(header_len))
        .with_context(|| {
            format!(
                "{}: impossible IDX header: dimensions {shape:?} hold more bytes than memory can address",
                path.display()
            )
        })?;
    ensure!(
        bytes.len() >= expected,
        "{}: truncated file: header says {shape:?} ({expected} bytes) but the file has {} bytes",
        path.display(),
        bytes.len()
    );
    ensure!(
        bytes.len() == expected,
        "{}: {} unexpected trailing bytes after the {shape:?} data",
        path.display(),
        bytes.len() - expected
    );
    Ok(shape)
}

/// Returns `(count, rows, cols, pixels)` of an IDX3 image file.
fn read_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let mut bytes = read_maybe_gz(path, 16, |head| declared_size(head, IMAGES_MAGIC, 3))?;
    let shape = header(path, &bytes, IMAGES_MAGIC, 3)?;
    bytes.drain(..16);
    Ok((shape[0], shape[1], shape[2], bytes))
}

/// Returns the label bytes of an IDX1 label file.
fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = read_maybe_gz(path, 8, |head| declared_size(head, LABELS_MAGIC, 1))?;
    header(path, &bytes, LABELS_MAGIC, 1)?;
    bytes.drain(..8);
    Ok(bytes)
}
