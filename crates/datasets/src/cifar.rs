//! CIFAR-10: the official binary batches (a directory or `cifar-10-binary.tar.gz` read in place),
//! the official Python version (torchvision's download: `cifar-10-batches-py/` or
//! `cifar-10-python.tar.gz`), an ImageFolder tree or archive of it, or the Hugging Face Hub.

use crate::archive::{read_archive_keeping, ArchiveEntry};
use crate::cifar_python as py;
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

/// One of the two official versions of CIFAR-10's batches: where its files are and how they read.
struct Version {
    /// "binary" or "Python", for messages.
    name: &'static str,
    /// The folder its official archive unpacks to.
    dir: &'static str,
    /// The five train batch files.
    train: [&'static str; 5],
    /// The train batch files as one name, for messages.
    all_train: &'static str,
    /// The test batch file.
    test: &'static str,
    /// The class names' file (optional: without it, [`CIFAR10_CLASSES`]).
    meta: &'static str,
    /// Bytes beyond which a file is no batch of this version (refused unread).
    max_batch: u64,
    /// Reads one batch's bytes; the `&str` names the file in errors.
    parse_batch: fn(&[u8], &str, Vec<String>) -> Result<InMemory>,
    /// Reads the class names' file.
    parse_meta: fn(&[u8], &str) -> Result<Vec<String>>,
}

/// The binary version (`cifar-10-binary.tar.gz`).
const BINARY: Version = Version {
    name: "binary",
    dir: BIN_DIR,
    train: TRAIN_BATCHES,
    all_train: "data_batch_1..5.bin",
    test: TEST_BATCH,
    meta: META,
    max_batch: MAX_BATCH_BYTES,
    parse_batch,
    parse_meta,
};

/// The Python version (`cifar-10-python.tar.gz`, torchvision's download).
const PYTHON: Version = Version {
    name: "Python",
    dir: py::DIR,
    train: py::TRAIN_BATCHES,
    all_train: "data_batch_1..5",
    test: py::TEST_BATCH,
    meta: py::META,
    max_batch: py::MAX_BATCH_BYTES,
    parse_batch: py::parse_batch,
    parse_meta: py::parse_meta,
};

impl Version {
    /// Where in `path` this version's files may be: `path` itself, or its official folder.
    fn dirs(&self, path: &Path) -> [PathBuf; 2] {
        [path.to_path_buf(), path.join(self.dir)]
    }

    /// The train batches, then the test batch.
    fn files(&self) -> impl Iterator<Item = &'static str> {
        self.train.into_iter().chain([self.test])
    }

    /// The folder of `path` holding all of this version's batches as regular files.
    fn complete_dir(&self, path: &Path) -> Option<PathBuf> {
        let dirs = self.dirs(path);
        dirs.into_iter()
            .find(|dir| self.files().all(|b| dir.join(b).is_file()))
    }

    /// Whether `path` (or its official folder) holds any batch of this version.
    fn any_batch(&self, path: &Path) -> bool {
        self.dirs(path)
            .iter()
            .any(|dir| self.files().any(|b| dir.join(b).is_file()))
    }

    /// Class names from the names' file in `dir`, else the standard ones.
    fn classes(&self, dir: &Path) -> Result<Vec<String>> {
        let meta = dir.join(self.meta);
        if !meta.is_file() {
            return Ok(class_names(&CIFAR10_CLASSES));
        }
        let bytes = crate::io::read_at_most(&meta, 1 << 20, "a list of ten class names")?;
        (self.parse_meta)(&bytes, &meta.display().to_string())
    }

    /// The batch file `path`, with labels among `classes`.
    fn read(&self, path: &Path, classes: Vec<String>) -> Result<InMemory> {
        let what = format!("a CIFAR-10 {} batch", self.name);
        let bytes = crate::io::read_at_most(path, self.max_batch, &what)?;
        (self.parse_batch)(&bytes, &path.display().to_string(), classes)
    }

    /// The test batch in `dir`.
    fn test_split(&self, dir: &Path) -> Result<InMemory> {
        self.read(&dir.join(self.test), self.classes(dir)?)
    }

    /// Both splits from the complete folder `dir`.
    fn split(&self, dir: &Path) -> Result<Split> {
        let classes = self.classes(dir)?;
        let train = self
            .train
            .iter()
            .map(|b| self.read(&dir.join(b), classes.clone()))
            .collect::<Result<Vec<_>>>()?;
        let split = Split {
            train: Arc::new(InMemory::concat(train)?),
            test: Arc::new(self.read(&dir.join(self.test), classes)?),
        };
        split.checked(
            &dir.join(self.all_train).display().to_string(),
            &dir.join(self.test).display().to_string(),
        )
    }

    /// Both splits from an archive's `entries` holding this version's test batch (`None` when
    /// it holds none); `path` is the archive, for errors.
    fn split_of_archive(&self, path: &Path, entries: &[ArchiveEntry]) -> Option<Result<Split>> {
        let tests: Vec<&ArchiveEntry> = entries
            .iter()
            .filter(|e| !e.is_dir && folder_and_file(&e.name).1 == self.test)
            .collect();
        // The batches are read from the test batch's folder, as torchvision reads them from
        // one folder: the official one when several folders hold a test batch.
        let test = match tests[..] {
            [] => return None,
            [one] => one,
            ref many => match many.iter().find(|e| folder_and_file(&e.name).0 == self.dir) {
                Some(official) => official,
                None => {
                    let names: Vec<&str> = many.iter().map(|e| e.name.as_str()).collect();
                    return Some(Err(anyhow::anyhow!(
                        "{}: the archive holds {} in several folders ({}); keep one copy of the \
                         CIFAR-10 {} batches, in {}/",
                        path.display(),
                        self.test,
                        names.join(", "),
                        self.name,
                        self.dir
                    )));
                }
            },
        };
        let folder = folder_and_file(&test.name).0;
        let batch = |file: &str| -> Option<&ArchiveEntry> {
            entries
                .iter()
                .find(|e| !e.is_dir && folder_and_file(&e.name) == (folder, file))
        };
        let name = |e: &ArchiveEntry| format!("{}:{}", path.display(), e.name);
        let read = || -> Result<Split> {
            let classes = match batch(self.meta) {
                Some(meta) => (self.parse_meta)(&meta.bytes, &name(meta))?,
                None => class_names(&CIFAR10_CLASSES),
            };
            let mut train = Vec::new();
            for file in self.train {
                let entry = batch(file).with_context(|| {
                    format!(
                        "{}: the archive has no {file} beside {}",
                        path.display(),
                        test.name
                    )
                })?;
                train.push((self.parse_batch)(
                    &entry.bytes,
                    &name(entry),
                    classes.clone(),
                )?);
            }
            let split = Split {
                train: Arc::new(InMemory::concat(train)?),
                test: Arc::new((self.parse_batch)(&test.bytes, &name(test), classes)?),
            };
            split.checked(
                &format!("{}:{}", path.display(), self.all_train),
                &name(test),
            )
        };
        Some(read())
    }

    /// Refuses `path` when it holds some of this version's batches but not all, or holds one
    /// that is no regular file.
    fn refuse_incomplete(&self, path: &Path) -> Result<()> {
        for dir in self.dirs(path) {
            // A batch that is there but no regular file (a pipe, a device, a folder) is not
            // missing.
            let odd: Vec<&str> = self
                .files()
                .filter(|b| dir.join(b).exists() && !dir.join(b).is_file())
                .collect();
            ensure!(
                odd.is_empty(),
                "{}: {} not a regular file (a pipe, a device or a folder): the CIFAR-10 batches \
                 are read whole from regular files; copy them into files",
                dir.display(),
                odd.join(", ")
            );
            let missing: Vec<&str> = self.files().filter(|b| !dir.join(b).is_file()).collect();
            ensure!(
                missing.len() > self.train.len(),
                "{}: incomplete CIFAR-10 {} batches, missing {}: training needs all of {} and {} \
                 in the --data-dir directory",
                dir.display(),
                self.name,
                missing.join(", "),
                self.all_train,
                self.test
            );
        }
        Ok(())
    }
}

/// Loads CIFAR-10 from `path` or, with `None`, from the Hugging Face Hub cache.
///
/// `path` may be: a directory with the official binary batches (`data_batch_1..5.bin`,
/// `test_batch.bin`), or one containing `cifar-10-batches-bin/`; the official
/// `cifar-10-binary.tar.gz`, read without extracting; the official Python version, as
/// torchvision's `CIFAR10(root, download=True)` leaves it (`root`, its `cifar-10-batches-py/`
/// with the pickled `data_batch_1..5`, `test_batch` and `batches.meta`, or
/// `cifar-10-python.tar.gz`), decoded without running any of the pickles' code; an ImageFolder
/// tree (`train/<class>/*.jpg`, `test/<class>/*.jpg`) or a `.tar.gz` of one; or a directory
/// holding one such `*cifar*.tar.gz`. Images are decoded into memory as 3x32x32 u8, labels
/// follow [`CIFAR10_CLASSES`].
///
/// # Errors
/// `path` holds none of these layouts (or only some of a version's batches), a file is
/// truncated or malformed (named), the classes are not CIFAR-10's, or the Hub copy cannot be
/// downloaded or read (or, built without the default `hub` feature, `None` was given).
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
             holds data_batch_1..5.bin and test_batch.bin (or cifar-10-batches-bin/ or \
             cifar-10-batches-py/), an ImageFolder, cifar-10-binary.tar.gz or \
             cifar-10-python.tar.gz",
            path.display()
        );
        return from_archive(path);
    }
    for version in [&BINARY, &PYTHON] {
        if let Some(dir) = version.complete_dir(path) {
            return version.split(&dir);
        }
    }
    if path.join("train").is_dir() {
        return from_folder(Listing::from_dir(path)?, path);
    }
    if let Some(archive) = cifar_archive_in(path)? {
        return from_archive(&archive);
    }
    for version in [&BINARY, &PYTHON] {
        version.refuse_incomplete(path)?;
    }
    let below = crate::idx::subfolder_with(path, |sub| {
        [&BINARY, &PYTHON]
            .iter()
            .find_map(|version| version.complete_dir(sub))
            .map(|_| sub.to_path_buf())
    })
    .map_or(String::new(), |sub| {
        format!(
            "; {} holds CIFAR-10: give --data-dir that folder",
            sub.display()
        )
    });
    bail!(
        "{}: no CIFAR-10 data found (expected data_batch_1..5.bin + test_batch.bin, \
         cifar-10-batches-bin/, the Python version's data_batch_1..5 + test_batch or \
         cifar-10-batches-py/, train/ + test/ class folders, or a *cifar*.tar.gz archive){below}",
        path.display()
    )
}

/// CIFAR-10's test split alone from a local `path`: the test batch that [`cifar10`] would read
/// (`test_batch.bin`, or the Python version's `test_batch`, in `path` or the version's
/// official folder), also when training batches are missing, or an ImageFolder's `test/` (or
/// `val/`) once its `train/` is gone; any other layout is read whole and its test half kept.
pub(crate) fn cifar10_test_path(path: &Path) -> Result<Arc<dyn Dataset>> {
    ensure_exists(path)?;
    if path.is_dir() {
        // The order of `cifar10_path`: complete batches first, then the other layouts.
        for version in [&BINARY, &PYTHON] {
            if let Some(dir) = version.complete_dir(path) {
                return Ok(Arc::new(version.test_split(&dir)?));
            }
        }
        // Without the other layouts (train/ folders, an archive), which the whole read takes
        // next: a test batch whose training batches are gone, or an ImageFolder whose train/ is
        // gone (its test/ or val/ alone).
        if !path.join("train").is_dir() && cifar_archive_in(path)?.is_none() {
            for version in [&BINARY, &PYTHON] {
                let dirs = version.dirs(path);
                if let Some(dir) = dirs.iter().find(|d| d.join(version.test).is_file()) {
                    return Ok(Arc::new(version.test_split(dir)?));
                }
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

/// The batch folders in `path` that [`cifar10`] passes over as incomplete (some of a
/// version's batches there, not all), each said with what it lacks; none when a complete one
/// is there (it is what is read) or `path` is no directory. For a note beside what was read
/// instead (an ImageFolder, an archive).
pub fn cifar10_incomplete_batches(path: &Path) -> Vec<String> {
    let versions = [&BINARY, &PYTHON];
    if !path.is_dir() || versions.iter().any(|v| v.complete_dir(path).is_some()) {
        return Vec::new();
    }
    let mut found = Vec::new();
    for version in versions {
        for dir in version.dirs(path) {
            let missing: Vec<&str> = version.files().filter(|b| !dir.join(b).is_file()).collect();
            if !missing.is_empty() && missing.len() < version.files().count() {
                found.push(format!(
                    "{} (CIFAR-10 {} batches without {})",
                    dir.display(),
                    version.name,
                    missing.join(", ")
                ));
            }
        }
    }
    found
}

/// Whether `path` holds CIFAR-10 as [`cifar10`] reads it (without reading the images): the
/// binary or Python batches (or some of them), a `*cifar*` archive, or an ImageFolder whose
/// `train/` classes are exactly CIFAR-10's. A folder of other classes is somebody's own data,
/// and so is one of CIFAR-10's ten class folders without `train/` and `test/`, which
/// [`cifar10`] does not read (torchvision's `ImageFolder(path)` of it).
pub fn is_cifar10(path: &Path) -> bool {
    if path.is_file() {
        return is_archive(path)
            && path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().to_lowercase().contains("cifar"));
    }
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
    BINARY.any_batch(path)
        || PYTHON.any_batch(path)
        || !cifar_archives(path).is_empty()
        || folders(&path.join("train")) == cifar
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
    BINARY.read(
        path,
        BINARY.classes(path.parent().unwrap_or(Path::new(".")))?,
    )
}

/// The class-name file of the official distribution.
const META: &str = "batches.meta.txt";

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
    check_class_names(names, name)
}

/// `names` as CIFAR-10's class names: ten, distinct; `name` identifies their file in errors.
pub(crate) fn check_class_names(names: Vec<String>, name: &str) -> Result<Vec<String>> {
    ensure!(
        names.len() == CIFAR10_CLASSES.len(),
        "{name}: {} class names, CIFAR-10 has {}",
        names.len(),
        CIFAR10_CLASSES.len()
    );
    for (i, class) in names.iter().enumerate() {
        ensure!(
            !class.trim().is_empty(),
            "{name}: class {} has an empty name",
            i + 1
        );
        ensure!(
            !names[..i].contains(class),
            "{name}: class {class:?} is named twice (names {} and {} of the list)",
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

/// The `*cifar*.tar.gz` in `dir`: the official binary archive, else the official Python one,
/// else the only one.
///
/// # Errors
/// `dir` cannot be listed; it holds several other such archives (which one is meant is not
/// guessed).
fn cifar_archive_in(dir: &Path) -> Result<Option<PathBuf>> {
    std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut found = cifar_archives(dir);
    let official = ["cifar-10-binary.tar.gz", "cifar-10-python.tar.gz"];
    let rank = |p: &PathBuf| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        official
            .iter()
            .position(|o| name.as_deref() == Some(*o))
            .unwrap_or(official.len())
    };
    found.sort_by_key(|p| (rank(p), p.clone()));
    if found.len() > 1 && rank(&found[0]) == official.len() {
        let names: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "{}: several CIFAR-10 archives ({}); give --data-dir the one to read",
            dir.display(),
            names.join(", ")
        );
    }
    Ok(found.into_iter().next())
}

/// An archive member's folder (empty at the top) and file name.
fn folder_and_file(name: &str) -> (&str, &str) {
    name.rsplit_once('/').unwrap_or(("", name))
}

/// The `*cifar*` archives in `dir` (none when it cannot be listed).
fn cifar_archives(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && is_archive(p)
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().to_lowercase().contains("cifar"))
        })
        .collect()
}

fn from_archive(path: &Path) -> Result<Split> {
    let entries = read_archive_keeping(path, &|name| {
        let file = folder_and_file(name).1;
        [&BINARY, &PYTHON].into_iter().find_map(|v| {
            if v.files().any(|b| b == file) {
                Some((v.max_batch, "a CIFAR-10 batch"))
            } else {
                (v.meta == file).then_some((1 << 20, "a list of ten class names"))
            }
        })
    })?;
    for version in [&BINARY, &PYTHON] {
        if let Some(split) = version.split_of_archive(path, &entries) {
            return split;
        }
    }
    // Batches without their test batch: not an image tree to look for images in.
    let batch = |file: &str| entries.iter().any(|e| folder_and_file(&e.name).1 == file);
    if [&BINARY, &PYTHON].iter().flat_map(|v| v.train).any(batch) {
        bail!(
            "{}: the archive holds CIFAR-10 batches but no {TEST_BATCH} (binary version) or \
             {} (Python version): the test split needs it beside the training batches",
            path.display(),
            py::TEST_BATCH
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

/// A split of a CIFAR-10 ImageFolder from `origin`: CIFAR-10's ten classes, by name (so that
/// the labels are CIFAR-10's), of 3x32x32 images.
fn check_folder_part(part: &dyn Dataset, origin: &Path) -> Result<()> {
    let classes = part.classes();
    let missing: Vec<&str> = (CIFAR10_CLASSES.iter().copied())
        .filter(|c| !classes.iter().any(|k| k == c))
        .collect();
    let others: Vec<&String> = (classes.iter())
        .filter(|k| !CIFAR10_CLASSES.contains(&k.as_str()))
        .collect();
    ensure!(
        classes.len() != CIFAR10_CLASSES.len() || missing.is_empty(),
        "{}: CIFAR-10 needs its 10 class folders ({}); {:?} are missing and {:?} are no \
         CIFAR-10 class (the labels follow the folders' names in order, so they would not be \
         CIFAR-10's); a folder of other classes is your own data set, which finetune-resnet50 \
         --data-dir trains on",
        origin.display(),
        CIFAR10_CLASSES.join(", "),
        missing,
        others
    );
    ensure!(
        part.classes().len() == CIFAR10_CLASSES.len(),
        "{}: CIFAR-10 needs its 10 class folders ({}), found {}: {:?}; a folder of other \
         classes is your own data set, which finetune-resnet50 --data-dir trains on",
        origin.display(),
        CIFAR10_CLASSES.join(", "),
        part.classes().len(),
        part.classes()
    );
    let shape = part.image(0)?.shape();
    ensure!(
        shape == (3, 32, 32),
        "{}: wrong image size {shape:?} (CxHxW), CIFAR-10 images are 3x32x32; a folder of \
         your own images under CIFAR-10's class names is read as an image folder with \
         finetune-resnet50 --folder",
        origin.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cifar_python::tests::{python2_batch, python2_meta};
    use crate::Dataset;

    /// Writes the same `n` images a batch as the binary version into `bin` and as the Python
    /// version into `py`; `skip` names Python files left out.
    fn write_both(bin: &Path, py: &Path, n: usize, skip: &[&str]) -> Result<()> {
        std::fs::create_dir_all(bin)?;
        std::fs::create_dir_all(py)?;
        let files = TRAIN_BATCHES
            .iter()
            .zip(py::TRAIN_BATCHES)
            .chain([(&TEST_BATCH, py::TEST_BATCH)]);
        for (b, (bin_name, py_name)) in files.enumerate() {
            let images: Vec<u8> = (0..n * IMAGE_BYTES)
                .map(|i| ((i * 13 + b * 101) % 256) as u8)
                .collect();
            let labels: Vec<u8> = (0..n).map(|i| ((i + b) % 10) as u8).collect();
            let records: Vec<u8> = labels
                .iter()
                .enumerate()
                .flat_map(|(i, &l)| {
                    std::iter::once(l)
                        .chain(images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES].to_vec())
                })
                .collect();
            std::fs::write(bin.join(bin_name), records)?;
            if !skip.contains(&py_name) {
                std::fs::write(py.join(py_name), python2_batch(&images, &labels, b == 2))?;
            }
        }
        std::fs::write(py.join(py::META), python2_meta(&CIFAR10_CLASSES))?;
        Ok(())
    }

    /// Writes a `.tar.gz` at `archive` holding each folder `from` as `at`.
    fn pack(archive: &Path, members: &[(&str, &Path)]) -> Result<PathBuf> {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            std::fs::File::create(archive)?,
            flate2::Compression::fast(),
        ));
        for (at, from) in members {
            tar.append_dir_all(at, from)?;
        }
        tar.into_inner()?.finish()?;
        Ok(archive.to_path_buf())
    }

    fn same(a: &dyn Dataset, b: &dyn Dataset) -> Result<()> {
        assert_eq!(a.len(), b.len());
        assert_eq!(a.classes(), b.classes());
        for i in 0..a.len() {
            assert_eq!(a.label(i), b.label(i), "label {i}");
            assert_eq!(a.image(i)?, b.image(i)?, "image {i}");
        }
        Ok(())
    }

    #[test]
    fn the_python_version_reads_as_the_binary_version() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (bin, root) = (dir.path().join("bin"), dir.path().join("torchvision"));
        write_both(&bin, &root.join(py::DIR), 4, &[])?;
        let binary = cifar10_path(&bin)?;
        // torchvision's root, its cifar-10-batches-py/, and cifar-10-python.tar.gz.
        let archive = pack(
            &dir.path().join("cifar-10-python.tar.gz"),
            &[(py::DIR, &root.join(py::DIR))],
        )?;
        for path in [root.clone(), root.join(py::DIR), archive.clone()] {
            let python = cifar10_path(&path)?;
            assert_eq!(python.train.len(), 20);
            same(binary.train.as_ref(), python.train.as_ref())?;
            same(binary.test.as_ref(), python.test.as_ref())?;
            same(binary.test.as_ref(), cifar10_test_path(&path)?.as_ref())?;
            assert!(is_cifar10(&path), "{}", path.display());
        }
        // Evaluation needs the test batch alone.
        std::fs::remove_file(root.join(py::DIR).join("data_batch_3"))?;
        same(binary.test.as_ref(), cifar10_test_path(&root)?.as_ref())?;
        Ok(())
    }

    /// An archive's batches are read from one folder: the test batch's, the official one when
    /// several hold one; files it does not need are not kept in memory.
    #[test]
    fn an_archive_is_read_from_one_folder() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (bin, good, other) = (
            dir.path().join("bin"),
            dir.path().join("good"),
            dir.path().join("other"),
        );
        write_both(&bin, &good, 2, &[])?;
        write_both(&dir.path().join("bin2"), &other, 3, &[])?;
        let pack = |name: &str, members: &[(&str, &Path)]| pack(&dir.path().join(name), members);
        let both = pack(
            "both.tar.gz",
            &[("copy/cifar-10-batches-py", &other), (py::DIR, &good)],
        )?;
        let split = cifar10_path(&both)?;
        same(cifar10_path(&bin)?.test.as_ref(), split.test.as_ref())?;
        assert_eq!(split.train.len(), 10);
        let neither = pack("neither.tar.gz", &[("a", &other), ("b", &good)])?;
        let err = format!("{:#}", cifar10_path(&neither).unwrap_err());
        assert!(
            err.contains("test_batch in several folders (a/test_batch, b/test_batch)"),
            "{err}"
        );
        // A train batch only in another folder is missing, not taken from there.
        std::fs::remove_file(good.join("data_batch_2"))?;
        let mixed = pack(
            "mixed.tar.gz",
            &[(py::DIR, &good), ("other/cifar-10-batches-py", &other)],
        )?;
        let err = format!("{:#}", cifar10_path(&mixed).unwrap_err());
        assert!(
            err.contains("has no data_batch_2 beside cifar-10-batches-py/test_batch"),
            "{err}"
        );
        // Other files are listed, not kept.
        std::fs::write(good.join("readme.html"), vec![b'x'; 1 << 16])?;
        let entries = read_archive_keeping(&pack("junk.tar.gz", &[(py::DIR, &good)])?, &|_| None)?;
        let readme = entries.iter().find(|e| e.name.ends_with("readme.html"));
        assert_eq!(readme.map(|e| e.bytes.len()), Some(0));
        Ok(())
    }

    #[test]
    fn an_incomplete_python_version_names_what_is_missing() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let py_dir = dir.path().join(py::DIR);
        write_both(
            &dir.path().join("bin"),
            &py_dir,
            1,
            &["data_batch_4", "test_batch"],
        )?;
        let err = format!("{:#}", cifar10_path(dir.path()).unwrap_err());
        assert!(
            err.contains("incomplete CIFAR-10 Python batches")
                && err.contains("data_batch_4, test_batch")
                && err.contains(py::DIR),
            "{err}"
        );
        // Passed over, when an archive or a folder is read instead: said with what it lacks.
        let passed = cifar10_incomplete_batches(dir.path());
        assert_eq!(passed.len(), 1, "{passed:?}");
        assert!(
            passed[0].contains(py::DIR)
                && passed[0]
                    .ends_with("(CIFAR-10 Python batches without data_batch_4, test_batch)"),
            "{passed:?}"
        );
        // A corrupt batch is named.
        write_both(&dir.path().join("bin"), &py_dir, 1, &[])?;
        // Complete: nothing is passed over.
        assert!(cifar10_incomplete_batches(dir.path()).is_empty());
        std::fs::write(py_dir.join("data_batch_2"), b"\x80\x02}q\x01(U\x04data")?;
        let err = format!("{:#}", cifar10_path(dir.path()).unwrap_err());
        assert!(
            err.contains("data_batch_2") && err.contains("pickle"),
            "{err}"
        );
        Ok(())
    }
}
