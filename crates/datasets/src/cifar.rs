//! CIFAR-10: the official binary batches (a directory or `cifar-10-binary.tar.gz` read in place),
//! an ImageFolder tree or archive of it, or the Hugging Face Hub.

use crate::archive::{read_archive, ArchiveEntry};
use crate::dataset::class_names;
use crate::folder::{image_folder_listing, test_folder, test_folder_alone, FolderOptions, Storage};
use crate::io::{ensure_exists, is_archive};
use crate::listing::Listing;
use crate::{Dataset, InMemory, Split};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// CIFAR-10's class names in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Bytes per image: 32x32 pixels, 3 channels.
const IMAGE_BYTES: usize = 3 * 32 * 32;
/// Bytes per record: one label byte, then the image as 1024 R, 1024 G, 1024 B bytes.
const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// The official train batch files.
const TRAIN_BATCHES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The official test batch file.
const TEST_BATCH: &str = "test_batch.bin";
/// The directory the official archive unpacks to.
const BIN_DIR: &str = "cifar-10-batches-bin";

/// Loads CIFAR-10 from `path` or, with `None`, from the Hugging Face Hub cache.
///
/// `path` may be: a directory with the official binary batches (`data_batch_1..5.bin`,
/// `test_batch.bin`), or one containing `cifar-10-batches-bin/`; the official
/// `cifar-10-binary.tar.gz`, read without extracting; an ImageFolder tree (`train/<class>/*.jpg`,
/// `test/<class>/*.jpg`) or a `.tar.gz` of one; or a directory holding one such `*cifar*.tar.gz`.
/// Images are decoded into memory as 3x32x32 u8, labels follow [`CIFAR10_CLASSES`].
///
/// # Errors
/// `path` holds none of these layouts, a file is truncated or malformed (named), the classes are
/// not CIFAR-10's, or the Hub copy cannot be downloaded or read.
pub fn cifar10(path: Option<&Path>) -> Result<Split> {
    crate::catalog::load(&crate::catalog::CIFAR10, path)
}

/// CIFAR-10 from a local `path` (see [`cifar10`]).
pub(crate) fn cifar10_path(path: &Path) -> Result<Split> {
    ensure_exists(path)?;
    if path.is_file() {
        ensure!(
            is_archive(path),
            "{} is neither a directory nor a .tar.gz archive: give --data-dir the directory that \
             holds data_batch_1..5.bin and test_batch.bin (or cifar-10-batches-bin/), an \
             ImageFolder, or cifar-10-binary.tar.gz",
            path.display()
        );
        return from_archive(path);
    }
    for dir in [path.to_path_buf(), path.join(BIN_DIR)] {
        if TRAIN_BATCHES.iter().all(|b| dir.join(b).is_file()) && dir.join(TEST_BATCH).is_file() {
            return from_bin_dir(&dir);
        }
    }
    if path.join("train").is_dir() {
        return from_folder(Listing::from_dir(path)?, path);
    }
    if let Some(archive) = cifar_archive_in(path)? {
        return from_archive(&archive);
    }
    for dir in [path.to_path_buf(), path.join(BIN_DIR)] {
        // A batch that is there but no regular file (a pipe, a device, a folder) is not missing.
        let odd: Vec<&str> = TRAIN_BATCHES
            .iter()
            .chain([&TEST_BATCH])
            .copied()
            .filter(|b| dir.join(b).exists() && !dir.join(b).is_file())
            .collect();
        ensure!(
            odd.is_empty(),
            "{}: {} not a regular file (a pipe, a device or a folder): the CIFAR-10 batches are \
             read whole from regular files; copy them into files",
            dir.display(),
            odd.join(", ")
        );
        let missing: Vec<&str> = TRAIN_BATCHES
            .iter()
            .chain([&TEST_BATCH])
            .copied()
            .filter(|b| !dir.join(b).is_file())
            .collect();
        if missing.len() <= TRAIN_BATCHES.len() {
            bail!(
                "{}: incomplete CIFAR-10 binary batches, missing {}: training needs all five \
                 data_batch_N.bin and test_batch.bin in the --data-dir directory",
                dir.display(),
                missing.join(", ")
            );
        }
    }
    // torchvision's download (`CIFAR10(root, download=True)`) is the Python version: pickled
    // NumPy arrays, which this reader does not take.
    let python = [path.join("cifar-10-batches-py"), path.to_path_buf()]
        .into_iter()
        .find(|d| d.join("data_batch_1").is_file() && d.join("batches.meta").is_file());
    if let Some(python) = python {
        bail!(
            "{}: CIFAR-10's Python version (pickled NumPy arrays, what torchvision's \
             CIFAR10(download=True) fetches), which is not read here: give the binary version, \
             cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html (the \
             archive itself, or its cifar-10-batches-bin/ folder), or leave out --data-dir to \
             download it from the Hugging Face Hub",
            python.display()
        );
    }
    bail!(
        "{}: no CIFAR-10 data found (expected data_batch_1..5.bin + test_batch.bin, \
         cifar-10-batches-bin/, train/ + test/ class folders, or a *cifar*.tar.gz archive)",
        path.display()
    )
}

/// CIFAR-10's test split alone from a local `path`: the `test_batch.bin` that [`cifar10`]
/// would read (in `path` or its `cifar-10-batches-bin/`), also when training batches are
/// missing, or an ImageFolder's `test/` (or `val/`) once its `train/` is gone; any other
/// layout is read whole and its test half kept.
pub(crate) fn cifar10_test_path(path: &Path) -> Result<Arc<dyn Dataset>> {
    ensure_exists(path)?;
    if path.is_dir() {
        let bin_dirs = [path.to_path_buf(), path.join(BIN_DIR)];
        // The order of `cifar10_path`: complete batches first, then the other layouts.
        let complete = bin_dirs.iter().find(|dir| {
            TRAIN_BATCHES.iter().all(|b| dir.join(b).is_file()) && dir.join(TEST_BATCH).is_file()
        });
        let test_bin = |dir: &Path| -> Result<Arc<dyn Dataset>> {
            Ok(Arc::new(cifar10_test_bin(&dir.join(TEST_BATCH))?))
        };
        if let Some(dir) = complete {
            return test_bin(dir);
        }
        // Without the other layouts (train/ folders, an archive), which the whole read takes
        // next: a test_batch.bin whose training batches are gone, or an ImageFolder whose
        // train/ is gone (its test/ or val/ alone).
        if !path.join("train").is_dir() && cifar_archive_in(path)?.is_none() {
            if let Some(dir) = bin_dirs.iter().find(|d| d.join(TEST_BATCH).is_file()) {
                return test_bin(dir);
            }
            if let Some(dir) = test_folder_alone(path) {
                let test = test_folder(&path.join(dir), Storage::Memory)?;
                check_folder_part(test.as_ref(), &path.join(dir))?;
                return Ok(test);
            }
        }
    }
    Ok(cifar10_path(path)?.test)
}

/// Whether `path` holds CIFAR-10 as [`cifar10`] reads it (without reading the images): the
/// binary batches (or some of them), a `*cifar*` archive, or an ImageFolder whose training
/// classes are exactly CIFAR-10's. A folder of other classes is somebody's own data.
pub fn is_cifar10(path: &Path) -> bool {
    if path.is_file() {
        return is_archive(path)
            && path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().to_lowercase().contains("cifar"));
    }
    let binary = [path.to_path_buf(), path.join(BIN_DIR)].iter().any(|dir| {
        dir.join(TEST_BATCH).is_file() || TRAIN_BATCHES.iter().any(|b| dir.join(b).is_file())
    });
    let folders = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let mut cifar: Vec<String> = CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect();
    cifar.sort();
    binary
        || matches!(cifar_archive_in(path), Ok(Some(_)))
        || folders(&path.join("train")) == cifar
        || folders(path) == cifar
}

/// Records beyond which a file is no CIFAR-10 batch (each official one holds 10,000); the
/// file is refused before it is read.
const MAX_BATCH_BYTES: u64 = 100_000 * RECORD_BYTES as u64;

/// Reads one official binary batch file (e.g. `test_batch.bin`): 10,000 records of 3073 bytes.
///
/// # Errors
/// The file (or a `batches.meta.txt` beside it) cannot be read, is empty or not a whole number
/// of 3073-byte records, or holds a label out of range.
pub fn cifar10_test_bin(path: &Path) -> Result<InMemory> {
    let bytes = crate::io::read_at_most(path, MAX_BATCH_BYTES, "a CIFAR-10 batch")?;
    parse_batch(&bytes, &path.display().to_string(), classes_near(path)?)
}

/// The class-name file of the official distribution.
const META: &str = "batches.meta.txt";

/// Class names from `batches.meta.txt` beside `batch`, else the standard ones.
fn classes_near(batch: &Path) -> Result<Vec<String>> {
    let meta = batch.with_file_name(META);
    if !meta.is_file() {
        return Ok(class_names(&CIFAR10_CLASSES));
    }
    let bytes = crate::io::read_at_most(&meta, 1 << 20, "a list of ten class names")?;
    parse_meta(&bytes, &meta.display().to_string())
}

/// The class names of a `batches.meta.txt` (one a line, blank lines ignored): ten distinct
/// names; `name` identifies the file in errors.
fn parse_meta(bytes: &[u8], name: &str) -> Result<Vec<String>> {
    let text = std::str::from_utf8(bytes).with_context(|| format!("{name}: not UTF-8 text"))?;
    // A byte-order mark (as some Windows editors save) is no part of the first name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    ensure!(
        names.len() == CIFAR10_CLASSES.len(),
        "{name}: {} class names, CIFAR-10 has {}",
        names.len(),
        CIFAR10_CLASSES.len()
    );
    for (i, class) in names.iter().enumerate() {
        ensure!(
            !names[..i].contains(class),
            "{name}: class {class:?} is named twice (lines {} and {})",
            names[..i].iter().position(|n| n == class).unwrap_or(0) + 1,
            i + 1
        );
    }
    Ok(names)
}

/// Parses the records of one binary batch; `name` identifies the file in errors.
fn parse_batch(bytes: &[u8], name: &str, classes: Vec<String>) -> Result<InMemory> {
    ensure!(!bytes.is_empty(), "{name}: empty CIFAR-10 batch file");
    ensure!(
        bytes.len().is_multiple_of(RECORD_BYTES),
        "{name}: truncated or wrong image size: {} bytes is not a whole number of {RECORD_BYTES}-byte \
         records (1 label + 3x32x32 pixels)",
        bytes.len()
    );
    let n = bytes.len() / RECORD_BYTES;
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        ensure!(
            usize::from(record[0]) < classes.len(),
            "{name}: label {} of record {i} is out of range for {} classes",
            record[0],
            classes.len()
        );
        labels.push(record[0]);
        images.extend_from_slice(&record[1..]);
    }
    InMemory::new(images, labels, (3, 32, 32), classes).with_context(|| name.to_string())
}

fn from_bin_dir(dir: &Path) -> Result<Split> {
    let classes = classes_near(&dir.join(TEST_BATCH))?;
    let read = |file: &str| -> Result<InMemory> {
        let path = dir.join(file);
        let bytes = crate::io::read_at_most(&path, MAX_BATCH_BYTES, "a CIFAR-10 batch")?;
        parse_batch(&bytes, &path.display().to_string(), classes.clone())
    };
    let train = TRAIN_BATCHES
        .iter()
        .map(|b| read(b))
        .collect::<Result<Vec<_>>>()?;
    let split = Split {
        train: Arc::new(InMemory::concat(train)?),
        test: Arc::new(read(TEST_BATCH)?),
    };
    split.check(
        &dir.join("data_batch_1..5.bin").display().to_string(),
        &dir.join(TEST_BATCH).display().to_string(),
    )?;
    Ok(split)
}

/// A `*cifar*.tar.gz` in `dir`, preferring the official binary archive.
fn cifar_archive_in(dir: &Path) -> Result<Option<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && is_archive(p)
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().to_lowercase().contains("cifar"))
        })
        .collect();
    found.sort_by_key(|p| !p.to_string_lossy().contains("binary"));
    Ok(found.into_iter().next())
}

fn from_archive(path: &Path) -> Result<Split> {
    let entries = read_archive(path)?;
    let batch = |file: &str| -> Option<&ArchiveEntry> {
        entries
            .iter()
            .find(|e| e.name.rsplit('/').next() == Some(file))
    };
    if let Some(test) = batch(TEST_BATCH) {
        let name = |e: &ArchiveEntry| format!("{}:{}", path.display(), e.name);
        let classes = match batch(META) {
            Some(meta) => parse_meta(&meta.bytes, &name(meta))?,
            None => class_names(&CIFAR10_CLASSES),
        };
        let mut train = Vec::new();
        for file in TRAIN_BATCHES {
            let entry = batch(file)
                .with_context(|| format!("{}: archive has no {file}", path.display()))?;
            train.push(parse_batch(&entry.bytes, &name(entry), classes.clone())?);
        }
        let split = Split {
            train: Arc::new(InMemory::concat(train)?),
            test: Arc::new(parse_batch(&test.bytes, &name(test), classes)?),
        };
        split.check(
            &format!("{}:data_batch_1..5.bin", path.display()),
            &name(test),
        )?;
        return Ok(split);
    }
    // Binary batches without their test batch: not an image tree to look for images in.
    if TRAIN_BATCHES.iter().any(|file| batch(file).is_some()) {
        bail!(
            "{}: the archive holds CIFAR-10 binary batches but no {TEST_BATCH}: the test split \
             needs it beside data_batch_1..5.bin",
            path.display()
        );
    }
    from_folder(Listing::from_entries(path, entries)?, path)
}

fn from_folder(listing: Listing, origin: &Path) -> Result<Split> {
    let options = FolderOptions {
        storage: Storage::Memory,
        ..FolderOptions::default()
    };
    let split = image_folder_listing(listing, &options)?;
    for part in [&split.train, &split.test] {
        check_folder_part(part.as_ref(), origin)?;
    }
    Ok(split)
}

/// A split of a CIFAR-10 ImageFolder from `origin`: ten classes of 3x32x32 images.
fn check_folder_part(part: &dyn Dataset, origin: &Path) -> Result<()> {
    ensure!(
        part.classes().len() == CIFAR10_CLASSES.len(),
        "{}: CIFAR-10 needs 10 class folders, found {}: {:?}",
        origin.display(),
        part.classes().len(),
        part.classes()
    );
    let shape = part.image(0)?.shape();
    ensure!(
        shape == (3, 32, 32),
        "{}: wrong image size {shape:?} (CxHxW), CIFAR-10 images are 3x32x32",
        origin.display()
    );
    Ok(())
}
