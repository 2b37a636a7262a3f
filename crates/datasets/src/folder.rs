//! torchvision's ImageFolder: `root/<class>/**/*.{jpg,jpeg,png,ppm,bmp,pgm,tif,tiff,webp}`,
//! classes sorted by name, from a directory or a `.tar.gz`, split by `train/` + `test/` (or
//! `val/`) folders or by a seeded fraction. Unlike torchvision's, hidden files and folders
//! (names starting with a dot) are skipped: torchvision makes a `.ipynb_checkpoints/` a class.

use crate::archive::read_archive;
use crate::filelist::{EncodedSample, FileList};
use crate::io::{ensure_exists, is_archive};
use crate::listing::{join, Listing, IMAGE_EXTENSIONS};
use crate::{Dataset, InMemory, Rng, Split};
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How an ImageFolder keeps its images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// Keep the encoded files (paths on disk; bytes in memory for an archive) and decode each
    /// sample when it is read: for big images.
    #[default]
    Files,
    /// Decode everything now, in parallel, into one u8 buffer ([`InMemory`]): for small images of
    /// one size (CIFAR-10). Errors if the sizes differ.
    Memory,
}

/// Options of [`image_folder`].
#[derive(Debug, Clone, PartialEq)]
pub struct FolderOptions {
    /// Lazy files or decoded memory.
    pub storage: Storage,
    /// Without `train/` + `test/` (or `val/`) folders: the fraction of each class held out as
    /// the test split (stratified, rounded per class), in `[0, 1)`; it must hold out at least one
    /// image and leave at least one for training.
    pub test_fraction: f64,
    /// Seed of that held-out draw.
    pub split_seed: u64,
}

impl Default for FolderOptions {
    fn default() -> Self {
        Self {
            storage: Storage::Files,
            test_fraction: 0.2,
            split_seed: 0,
        }
    }
}

/// Loads an ImageFolder tree from a directory or a `.tar.gz`/`.tgz`/`.tar` of one.
///
/// With `train/` and `test/` (or `val/`) subfolders each is a split of class folders (both must
/// hold the same classes, each with at least one image). With only class folders,
/// `options.test_fraction` of each class (drawn with `options.split_seed`) becomes the test split.
/// Classes are the class folder names sorted (torchvision's rule); files are searched recursively
/// and ordered like torchvision's `sorted(os.walk(...))`. Hidden files and folders are skipped.
/// Images are decoded to RGB (torchvision's `pil_loader`: `convert("RGB")`), each at its own
/// size: give the loader's transform a `Resize` / `CenterCrop` (or `RandomResizedCrop`) when
/// the sizes differ, since a batch needs one size.
///
/// # Errors
/// `root` cannot be read or unpacked, has no class folder, a class without images, `train/` and
/// `test/` with different classes, only split folders without `train/` (`test/` alone, say,
/// which would be taken as a class), a folder of images beside `train/` and `test/` (it would
/// not be read), a folder named as a split in another case or spelling (`Train/`, `validation/`) that
/// holds folders where class folders stand, a pipe, socket or device named as an image, or an
/// unusable `options.test_fraction`.
pub fn image_folder(root: &Path, options: &FolderOptions) -> Result<Split> {
    image_folder_listing(listing_of(root)?, options)
}

/// The listing of an ImageFolder tree in a directory or an archive.
fn listing_of(root: &Path) -> Result<Listing> {
    ensure_exists(root)?;
    if root.is_file() {
        ensure!(
            is_archive(root),
            "{} is neither a directory nor a .tar.gz/.tgz/.tar archive",
            root.display()
        );
        Listing::from_entries(root, read_archive(root)?)
    } else {
        Listing::from_dir(root)
    }
}

/// Refuses a listing without images.
fn ensure_images(listing: &Listing) -> Result<()> {
    if listing.files.is_empty() {
        // A folder that holds the tree as an archive (CIFAR-10's cifar10-jpeg.tar.gz beside
        // its batches, say): name it, since the archive itself is what to give.
        let mut archives: Vec<String> = std::fs::read_dir(&listing.origin)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && is_archive(p))
            .map(|p| p.display().to_string())
            .collect();
        archives.sort();
        let hint = match archives.len() {
            0 => String::new(),
            1 => format!("; it holds {}: give that archive instead", archives[0]),
            _ => format!(
                "; it holds {}: give one of them instead",
                archives.join(", ")
            ),
        };
        bail!(
            "{}: no images found (extensions {}){hint}",
            listing.origin.display(),
            IMAGE_EXTENSIONS.join(", ")
        );
    }
    Ok(())
}

/// The training images of an ImageFolder ([`image_folder`]) in `root` (a directory or an
/// archive), none held out: `train/`'s class folders in a `train/` + `test/` layout, else every
/// image of the class folders (torchvision's `ImageFolder(root)`). For showing samples of a
/// folder too small to split.
///
/// # Errors
/// As [`image_folder`], less those of the split.
pub fn image_folder_training(root: &Path, storage: Storage) -> Result<Arc<dyn Dataset>> {
    let listing = listing_of(root)?;
    ensure_images(&listing)?;
    let part = match children(&listing, "").iter().any(|d| d == "train") {
        true => "train",
        false => "",
    };
    let classes = children(&listing, part);
    let picks = samples_of(&listing, part, &classes, false)?;
    let mut files: Vec<Option<EncodedSample>> =
        listing.files.into_iter().map(|(_, s)| Some(s)).collect();
    build(picks.take(&mut files), storage)
}

/// Applies the ImageFolder rules of [`image_folder`] to an already built listing.
///
/// # Errors
/// As [`image_folder`], for the listing.
pub fn image_folder_listing(listing: Listing, options: &FolderOptions) -> Result<Split> {
    ensure_images(&listing)?;
    let top = children(&listing, "");
    let test_dir = ["test", "val"]
        .into_iter()
        .find(|d| top.contains(&d.to_string()));
    let (train, test) = match test_dir {
        Some(test_dir) if top.iter().any(|d| d == "train") => {
            // A folder of images beside the splits would not be read: said, not passed over.
            // One without images (notes), a run's folder (its `--out`, whose pictures are no
            // class's) and a third split (val/ beside test/) are left alone.
            let holds_images = |d: &str| {
                let prefix = format!("{d}/");
                listing
                    .files
                    .iter()
                    .any(|(name, _)| name.starts_with(&prefix) && !in_a_run(&listing, name))
            };
            let beside: Vec<String> = top
                .iter()
                .filter(|d| !split_like(d) && holds_images(d))
                .map(|d| format!("{d}/"))
                .collect();
            if !beside.is_empty() {
                bail!(
                    "{}: {} beside train/ and {test_dir}/, which hold the split, would not be \
                     read; move its images into the class folders of train/ and {test_dir}/, or \
                     move it out",
                    listing.origin.display(),
                    beside.join(", ")
                );
            }
            let classes = children(&listing, "train");
            let train = samples_of(&listing, "train", &classes, false)?;
            let test = samples_of(&listing, test_dir, &classes, true)?;
            (train, test)
        }
        _ => unsplit(&listing)?.split_fraction(options.test_fraction, options.split_seed)?,
    };
    let (train_origin, test_origin) = (train.origin.clone(), test.origin.clone());
    let mut files: Vec<Option<EncodedSample>> =
        listing.files.into_iter().map(|(_, s)| Some(s)).collect();
    let split = Split {
        train: build(train.take(&mut files), options.storage)?,
        test: build(test.take(&mut files), options.storage)?,
    };
    split.checked(&train_origin, &test_origin)
}

/// The samples of a folder without `train/` + `test/`: every image of its class folders.
/// Refuses split folders standing where the class folders stand (`test/` alone, `Train/`),
/// which would be read as classes.
fn unsplit(listing: &Listing) -> Result<Picks> {
    let top = children(listing, "");
    // Only split folders, without train/: they would be taken as classes.
    let splits = ["train", "test", "val"];
    if !top.is_empty() && top.iter().all(|d| splits.contains(&d.as_str())) {
        let found: Vec<String> = top.iter().map(|d| format!("{d}/")).collect();
        let found = match found.as_slice() {
            [one] => format!("the one folder there is {one}, taken as a class"),
            _ => format!(
                "the folders there are {}, taken as classes",
                found.join(" and ")
            ),
        };
        bail!(
            "{}: {found}; a split \
             needs train/ and test/ (or val/) together, each with the class folders, or \
             the class folders directly inside it (a fraction of each class, 0.2 by \
             default, is then held out for testing: the programs' --test-fraction, the \
             library's FolderOptions::test_fraction)",
            listing.origin.display()
        );
    }
    // Named as a split (in another case or spelling) and holding folders, as a split
    // holds its class folders: a misnamed split, which would be read as one class.
    let names: Vec<&String> = top
        .iter()
        .filter(|d| split_like(d) && !children(listing, d).is_empty())
        .collect();
    let misnamed: Vec<String> = names.iter().map(|d| format!("{d}/")).collect();
    if !misnamed.is_empty() {
        let (these, are, hold, stand, each) = match misnamed.len() {
            1 => (misnamed[0].clone(), "is", "holds", "stands", "it"),
            _ => (misnamed.join(" and "), "are", "hold", "stand", "each"),
        };
        // The names to give them, where they are not already so named.
        let renames: Vec<String> = names
            .iter()
            .filter_map(|d| {
                let to = match d.to_lowercase().as_str() {
                    "train" | "training" => "train",
                    "test" | "testing" => "test",
                    _ => "val",
                };
                (d.as_str() != to).then(|| format!("{d}/ to {to}/"))
            })
            .collect();
        let rename = match renames.is_empty() {
            true => String::new(),
            false => format!(" (rename {})", renames.join(" and ")),
        };
        bail!(
            "{}: {these} {are} named as a split and {hold} folders, as a split holds its \
             class folders, but {stand} where the class folders stand, so {each} would \
             be read as one class; a split needs train/ and test/ (or val/), named so, \
             each with the class folders{rename}",
            listing.origin.display()
        );
    }
    let classes = children(listing, "");
    samples_of(listing, "", &classes, false)
}

/// A fraction as a percentage for messages: `20` for 0.2, `1.0e-7` for 1e-9 (no float
/// noise such as `0.00000010000000000000001`).
pub fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    let fixed = format!("{p:.6}");
    let fixed = fixed.trim_end_matches('0').trim_end_matches('.');
    match fixed {
        "0" if p != 0.0 => format!("{p:.1e}"),
        _ => fixed.to_string(),
    }
}

/// Whether the image `name` of a folder's listing lies in a training run's folder (one that
/// holds the run's `config.json` or `state.safetensors`, as the `train` crate writes them):
/// its `curves.png` and other pictures, no class's images. Archives hold no runs.
fn in_a_run(listing: &Listing, name: &str) -> bool {
    if listing.origin.is_file() {
        return false;
    }
    let mut dir = Path::new(name).parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
        let at = listing.origin.join(d);
        if ["config.json", "state.safetensors"]
            .iter()
            .any(|f| at.join(f).is_file())
        {
            return true;
        }
        dir = d.parent();
    }
    false
}

/// Whether a folder name names a split rather than a class, in any case: `train`, `test` and
/// `val` (the names [`image_folder`] reads as splits) and their usual other spellings.
fn split_like(name: &str) -> bool {
    const SPLITS: [&str; 7] = [
        "train",
        "training",
        "test",
        "testing",
        "val",
        "valid",
        "validation",
    ];
    SPLITS.contains(&name.to_lowercase().as_str())
}

/// The test split alone of an ImageFolder ([`image_folder`]) in `root`, for evaluating: when
/// its only folders are `test/` and `val/` (the `train/` + `test/` layout with `train/` gone),
/// the one the whole layout would take as its test split is read alone; any other layout (a
/// directory or archive) is read whole and its test half kept.
///
/// # Errors
/// As [`image_folder`].
pub fn image_folder_test(root: &Path, options: &FolderOptions) -> Result<Arc<dyn Dataset>> {
    ensure_exists(root)?;
    if let Some(dir) = test_folder_alone(root) {
        return test_folder(&root.join(dir), options.storage);
    }
    Ok(image_folder(root, options)?.test)
}

/// The images to score a model on that did not train on `root`'s: the test split of a
/// `train/` + `test/` (or `val/`) layout (or that `test/` alone, as [`image_folder_test`]
/// reads it), else every image of the class folders, none held out (torchvision's
/// `ImageFolder(root)`), where [`image_folder_test`] would keep `test_fraction` of them.
///
/// # Errors
/// As [`image_folder`], less those of the held-out share.
pub fn image_folder_for_evaluation(
    root: &Path,
    options: &FolderOptions,
) -> Result<Arc<dyn Dataset>> {
    ensure_exists(root)?;
    if test_folder_alone(root).is_some() {
        return image_folder_test(root, options);
    }
    let listing = listing_of(root)?;
    ensure_images(&listing)?;
    let top = children(&listing, "");
    if top.iter().any(|d| d == "train") && top.iter().any(|d| d == "test" || d == "val") {
        return Ok(image_folder_listing(listing, options)?.test);
    }
    let all = unsplit(&listing)?;
    let mut files: Vec<Option<EncodedSample>> =
        listing.files.into_iter().map(|(_, s)| Some(s)).collect();
    build(all.take(&mut files), options.storage)
}

/// `test` (else `val`) when the directory `root`'s visible folders are among `test` and `val`:
/// the `train/` + `test/` layout without its `train/`. Looks at `root` alone, without walking
/// it.
pub(crate) fn test_folder_alone(root: &Path) -> Option<&'static str> {
    let names: Vec<String> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    if names.is_empty() || !names.iter().all(|n| n == "test" || n == "val") {
        return None;
    }
    ["test", "val"]
        .into_iter()
        .find(|d| names.iter().any(|n| n == d))
}

/// The class folders in `dir` as one dataset, read as [`image_folder_listing`] reads the test
/// half of a `train/` + `test/` layout, with the classes of `dir`'s own folders.
pub(crate) fn test_folder(dir: &Path, storage: Storage) -> Result<Arc<dyn Dataset>> {
    let listing = Listing::from_dir(dir)?;
    let classes = children(&listing, "");
    let picks = samples_of(&listing, "", &classes, false)?;
    let mut files: Vec<Option<EncodedSample>> =
        listing.files.into_iter().map(|(_, s)| Some(s)).collect();
    build(picks.take(&mut files), storage)
}

/// The sorted, visible child folders of `dir`.
fn children(listing: &Listing, dir: &str) -> Vec<String> {
    let depth = if dir.is_empty() {
        0
    } else {
        dir.split('/').count()
    };
    listing
        .dirs
        .iter()
        .filter(|d| {
            d.split('/').count() == depth + 1
                && (dir.is_empty() || d.starts_with(&format!("{dir}/")))
        })
        .map(|d| d.rsplit('/').next().unwrap_or(d).to_string())
        .collect()
}

/// One split's samples as indices into the listing's files.
struct Picks {
    classes: Vec<String>,
    files: Vec<usize>,
    labels: Vec<usize>,
    origin: String,
}

/// Where the class folder `rel` of a directory's `listing` leads, the folder of the listing
/// whose images were read from there, and whether `rel` itself is the link (else a folder
/// above it is, `test/` a link to `train/` say), when `rel` is reached through a link to a
/// folder the walk read under another name (each real folder is entered once); else `None`
/// (an archive's members are no paths here).
fn read_elsewhere(listing: &Listing, rel: &str) -> Option<(PathBuf, String, bool)> {
    let path = listing.origin.join(rel);
    let is_link = path.symlink_metadata().ok()?.file_type().is_symlink();
    if !path.is_dir() {
        return None;
    }
    let target = std::fs::canonicalize(&path).ok()?;
    // Not through a link: the folder is where its name says.
    if !is_link && std::fs::canonicalize(&listing.origin).ok()?.join(rel) == target {
        return None;
    }
    let read = listing.dirs.iter().find(|other| {
        *other != rel
            && std::fs::canonicalize(listing.origin.join(other))
                .ok()
                .as_ref()
                == Some(&target)
            && listing
                .files
                .iter()
                .any(|(file, _)| file.starts_with(&format!("{other}/")))
    })?;
    Some((target, listing.place(read), is_link))
}

/// Lists the samples under `dir/<class>/` for every class in `classes`: every class folder must
/// exist and hold an image, and a folder of another class is an error. `of_training`: the
/// classes are the training split's (the test half of a `train/` + `test/` layout), not
/// `dir`'s own folders.
fn samples_of(
    listing: &Listing,
    dir: &str,
    classes: &[String],
    of_training: bool,
) -> Result<Picks> {
    let origin = listing.place(dir);
    ensure!(!classes.is_empty(), "{origin}: no class folders found");
    let index: HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    // A test class folder of no training class, empty or not (torchvision's ImageFolder of
    // test/ would have another class list).
    if of_training {
        if let Some(class) = children(listing, dir)
            .into_iter()
            .find(|c| !index.contains_key(c.as_str()))
        {
            let inside = format!("{prefix}{class}/");
            let empty = !listing
                .files
                .iter()
                .any(|(rel, _)| rel.starts_with(&inside));
            bail!(
                "{}: class folder not among the training classes {classes:?}{}",
                listing.place(&join(dir, &class)),
                if empty {
                    " (an empty folder, which torchvision's ImageFolder of this split would \
                     count as a class too: remove it)"
                } else {
                    ""
                }
            );
        }
    }
    let mut keyed: Vec<(usize, &str, &str, usize)> = Vec::new();
    for (i, (rel, _)) in listing.files.iter().enumerate() {
        let Some(rest) = rel.strip_prefix(&prefix) else {
            continue;
        };
        let Some((class, _)) = rest.split_once('/') else {
            continue;
        };
        let Some(&label) = index.get(class) else {
            bail!(
                "{}: class folder not among the training classes {classes:?}",
                listing.place(&join(dir, class))
            );
        };
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        keyed.push((label, parent, name, i));
    }
    for (label, class) in classes.iter().enumerate() {
        let place = listing.place(&join(dir, class));
        ensure!(
            keyed.iter().any(|k| k.0 == label),
            "{place}: {} (no {} images, hidden files such as .x.jpg not counted; {})",
            match (read_elsewhere(listing, &join(dir, class)), of_training) {
                (Some((target, read, is_link)), _) => format!(
                    "{} {}, already read as {read}, whose images count once (where \
                     torchvision's ImageFolder reads them again for this class), so this class \
                     has none",
                    if is_link {
                        "a link to the folder"
                    } else {
                        "through a link to a folder above it, the folder"
                    },
                    target.display()
                ),
                (None, true) => "missing or empty class folder".into(),
                (None, false) => "empty class folder".into(),
            },
            IMAGE_EXTENSIONS.join("/"),
            if of_training {
                "every class of the training split needs images here"
            } else {
                "every class folder needs at least one image"
            }
        );
    }
    keyed.sort_unstable();
    Ok(Picks {
        classes: classes.to_vec(),
        files: keyed.iter().map(|k| k.3).collect(),
        labels: keyed.iter().map(|k| k.0).collect(),
        origin,
    })
}

impl Picks {
    /// Holds out `fraction` of each class (rounded), drawn with `seed`; both parts keep order.
    fn split_fraction(self, fraction: f64, seed: u64) -> Result<(Picks, Picks)> {
        ensure!(
            (0.0..1.0).contains(&fraction),
            "{}: test fraction {fraction} is not in [0, 1)",
            self.origin
        );
        let mut is_test = vec![false; self.files.len()];
        for label in 0..self.classes.len() {
            let mut members: Vec<usize> = (0..self.files.len())
                .filter(|&i| self.labels[i] == label)
                .collect();
            let held = (members.len() as f64 * fraction).round() as usize;
            Rng::for_sample(seed, 0, label as u64).shuffle(&mut members);
            for &i in &members[..held] {
                is_test[i] = true;
            }
        }
        let part = |want: bool| Picks {
            classes: self.classes.clone(),
            files: (0..self.files.len())
                .filter(|&i| is_test[i] == want)
                .map(|i| self.files[i])
                .collect(),
            labels: (0..self.files.len())
                .filter(|&i| is_test[i] == want)
                .map(|i| self.labels[i])
                .collect(),
            origin: self.origin.clone(),
        };
        let test = part(true);
        ensure!(
            fraction > 0.0 || !test.files.is_empty(),
            "{}: a test fraction of 0 holds out no image: make train/ and test/ (or val/) folders, \
             or hold out more (the programs' --test-fraction, the library's FolderOptions::test_fraction)",
            self.origin
        );
        ensure!(
            !test.files.is_empty(),
            "{}: holding out {}% of each class (rounded) as the test split leaves no test image \
             among the {}: give a class {} or more images, hold out more (the programs' \
             --test-fraction, the library's FolderOptions::test_fraction), or make train/ and test/ (or val/) folders",
            self.origin,
            percent(fraction),
            self.files.len(),
            (0.5 / fraction).ceil()
        );
        let train = part(false);
        ensure!(
            !train.files.is_empty(),
            "{}: holding out {}% of each class (rounded) as the test split leaves no training \
             image among the {}: hold out less (the programs' --test-fraction, the library's FolderOptions::test_fraction)",
            self.origin,
            percent(fraction),
            self.files.len()
        );
        Ok((train, test))
    }

    /// Moves this split's samples out of the listing's files.
    fn take(self, files: &mut [Option<EncodedSample>]) -> Chosen {
        let samples = self.files.iter().filter_map(|&i| files[i].take()).collect();
        Chosen {
            samples,
            labels: self.labels,
            classes: self.classes,
            origin: self.origin,
        }
    }
}

/// The samples of one split, ready to become a dataset.
struct Chosen {
    samples: Vec<EncodedSample>,
    labels: Vec<usize>,
    classes: Vec<String>,
    origin: String,
}

fn build(chosen: Chosen, storage: Storage) -> Result<Arc<dyn Dataset>> {
    match storage {
        Storage::Files => Ok(Arc::new(FileList::new(
            chosen.samples,
            chosen.labels,
            chosen.classes,
        )?)),
        Storage::Memory => Ok(Arc::new(decode_all(chosen)?)),
    }
}

/// Decodes every sample in parallel into one buffer; all must share the first one's size.
fn decode_all(chosen: Chosen) -> Result<InMemory> {
    let Some(first) = chosen.samples.first() else {
        return InMemory::new(Vec::new(), Vec::<usize>::new(), (3, 1, 1), chosen.classes)
            .with_context(|| chosen.origin.clone());
    };
    let head = first.decode()?;
    let shape = head.shape();
    let size = head.data.len();
    let total = size.checked_mul(chosen.samples.len()).with_context(|| {
        format!(
            "{}: {} images of {shape:?} are more bytes than memory can address",
            chosen.origin,
            chosen.samples.len()
        )
    })?;
    let mut pixels = vec![0u8; total];
    let mut fingerprints = vec![0u64; chosen.samples.len()];
    pixels
        .par_chunks_mut(size)
        .zip(fingerprints.par_iter_mut())
        .zip(chosen.samples.par_iter())
        .with_min_len(64)
        .try_for_each(|((out, fingerprint), sample)| -> Result<()> {
            let (img, sum) = sample.decode_with_fingerprint()?;
            *fingerprint = sum;
            ensure!(
                img.shape() == shape,
                "{}: image is {:?} (CxHxW) but {} is {shape:?}; images held decoded in memory \
                 (as CIFAR-10's folders are) must all have one size as stored, whatever transform \
                 follows: make them one size, or read the folder as a plain image folder \
                 (finetune-resnet50 --folder), which decodes each image as its batch is loaded \
                 and resizes it then",
                sample.name,
                img.shape(),
                first.name
            );
            out.copy_from_slice(&img.data);
            Ok(())
        })?;
    let names = chosen.samples.iter().map(|s| s.name.clone()).collect();
    InMemory::new(pixels, chosen.labels, shape, chosen.classes)
        .and_then(|data| data.with_names(names))
        .and_then(|data| data.with_fingerprints(fingerprints))
        .with_context(|| chosen.origin)
}
