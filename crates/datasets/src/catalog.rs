//! The one home of what each data set is: name, classes, image shape, normalisation,
//! transform presets, Hub location and how its local files look. Programs read these entries
//! instead of hard-coding names or guessing from shapes; [`load`] reads any of them from a
//! directory or the Hub. Adding a data set is one [`DatasetSpec`] here (built in, or
//! [`register`]ed at run time) and, if its file format is new, one reader.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let spec = datasets::catalog::spec("cifar10")?;
//! assert_eq!(spec.classes.len(), 10);
//! let split = datasets::catalog::load(spec, Some(std::path::Path::new("data/cifar10")))?;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::{Arc, LazyLock, RwLock};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::{cifar, folder, idx, Dataset, FolderOptions, Split, Transform};

/// The data sets the training programs take (a run's `config.json` names one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// MNIST digits, 1x28x28.
    Mnist,
    /// CIFAR-10, 3x32x32.
    Cifar10,
    /// An ImageFolder of the user's own classes (`--data-dir`).
    Folder,
}

impl DatasetKind {
    /// The catalog entry.
    pub fn spec(self) -> &'static DatasetSpec {
        match self {
            DatasetKind::Mnist => &MNIST,
            DatasetKind::Cifar10 => &CIFAR10,
            DatasetKind::Folder => &FOLDER,
        }
    }
}

/// Where a data set's parquet conversion lives on the Hugging Face Hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubLocation {
    /// The dataset repository (`ylecun/mnist`).
    pub repo: &'static str,
    /// Its revision (`refs/convert/parquet`).
    pub revision: &'static str,
    /// The training split's file.
    pub train: &'static str,
    /// The test split's file.
    pub test: &'static str,
}

/// Everything the workspace knows about one data set.
#[derive(Debug, Clone, Copy)]
pub struct DatasetSpec {
    /// The catalog key (`"mnist"`); `zoo::ModelSpec::data` names the same keys.
    pub name: &'static str,
    /// The name in logs and pictures (`"MNIST"`).
    pub title: &'static str,
    /// Class names in label order; empty when they come from the files (ImageFolder).
    pub classes: &'static [&'static str],
    /// Every image's (channels, height, width); `None` when images vary.
    pub shape: Option<(usize, usize, usize)>,
    /// Per-channel mean and standard deviation of `Normalize`.
    pub mean_std: (&'static [f32], &'static [f32]),
    /// The training transform preset (see [`crate::parse`]).
    pub train_transform: &'static str,
    /// The test transform preset.
    pub test_transform: &'static str,
    /// The Hub copy, read when no directory is given.
    pub hub: Option<HubLocation>,
    /// What a local directory holds, for messages (`"the four MNIST IDX files"`).
    pub local_files: &'static str,
    /// The official training and test split sizes (MNIST's 60,000 and 10,000), which the
    /// training programs compare with what they read (a file cut at a record's end is
    /// otherwise whole); `None` where there are none.
    pub sizes: Option<[usize; 2]>,
    /// Reads the data set from a local path (`None`: it cannot be loaded, only named).
    pub read: Option<Reader>,
    /// The evaluation transform for a model input of `side` x `side`.
    pub eval: fn(usize) -> Transform,
}

/// How a data set's local files are read.
#[derive(Debug, Clone, Copy)]
pub struct Reader {
    /// Both splits, from a local path ([`load`]).
    pub split: fn(&Path) -> Result<Split>,
    /// The test split alone ([`load_test`]), without reading the training files where the
    /// layout allows; `None`: the whole split is read and its test half kept. It must give
    /// what `split` gives as the test half, from the same files (a spec that takes another
    /// spec's fields with `..` sets `read` whole, with [`Reader::split`] for a reader of its
    /// own).
    pub test: Option<ReadTest>,
}

/// A reader of the test split alone ([`Reader::test`]).
pub type ReadTest = fn(&Path) -> Result<Arc<dyn Dataset>>;

impl Reader {
    /// A reader of both splits at once (the test split alone is their test half).
    pub const fn split(split: fn(&Path) -> Result<Split>) -> Self {
        Self { split, test: None }
    }
}

/// MNIST (LeCun et al.): IDX files, or the Hub's `ylecun/mnist`.
pub const MNIST: DatasetSpec = DatasetSpec {
    name: "mnist",
    title: "MNIST",
    classes: &idx::MNIST_CLASSES,
    shape: Some((1, 28, 28)),
    mean_std: (&crate::MNIST_MEAN_STD.0, &crate::MNIST_MEAN_STD.1),
    train_transform: "mnist-train",
    test_transform: "mnist-test",
    hub: Some(HubLocation {
        repo: "ylecun/mnist",
        revision: "refs/convert/parquet",
        train: "mnist/train/0000.parquet",
        test: "mnist/test/0000.parquet",
    }),
    local_files: "the four MNIST IDX files",
    sizes: Some([60_000, 10_000]),
    read: Some(Reader {
        split: idx::mnist_dir,
        test: Some(idx::mnist_test_dir),
    }),
    eval: |side| Transform::mnist_test().resize(side).center_crop(side),
};

/// CIFAR-10 (Krizhevsky, 2009): the binary or Python batches, their archives, an ImageFolder,
/// or the Hub's `uoft-cs/cifar10`.
pub const CIFAR10: DatasetSpec = DatasetSpec {
    name: "cifar10",
    title: "CIFAR-10",
    classes: &cifar::CIFAR10_CLASSES,
    shape: Some((3, 32, 32)),
    mean_std: (&crate::CIFAR10_MEAN_STD.0, &crate::CIFAR10_MEAN_STD.1),
    train_transform: "cifar10-train",
    test_transform: "cifar10-test",
    hub: Some(HubLocation {
        repo: "uoft-cs/cifar10",
        revision: "refs/convert/parquet",
        train: "plain_text/train/0000.parquet",
        test: "plain_text/test/0000.parquet",
    }),
    local_files: "cifar-10-batches-bin, cifar-10-batches-py, an ImageFolder of CIFAR-10 or a \
                  *cifar*.tar.gz archive (cifar-10-binary.tar.gz as downloaded)",
    sizes: Some([50_000, 10_000]),
    read: Some(Reader {
        split: cifar::cifar10_path,
        test: Some(cifar::cifar10_test_path),
    }),
    eval: |side| Transform::cifar10_test().resize(side).center_crop(side),
};

/// ImageNet-1k's 1000 class names in label order (torchvision's `IMAGENET1K_V1` weights' and
/// Keras' index, `_` written as a space): what a 1000-class ImageNet head predicts.
pub fn imagenet_classes() -> Vec<String> {
    include_str!("../assets/imagenet_classes.txt")
        .lines()
        .map(|l| l.replace('_', " "))
        .collect()
}

/// ImageNet-1k: not loadable here, but the normalisation, input and classes of every
/// ImageNet-pretrained model.
pub const IMAGENET: DatasetSpec = DatasetSpec {
    name: "imagenet",
    title: "ImageNet",
    classes: &[],
    shape: Some((3, 224, 224)),
    mean_std: (&crate::IMAGENET_MEAN_STD.0, &crate::IMAGENET_MEAN_STD.1),
    train_transform: "imagenet-train",
    test_transform: "imagenet-eval",
    hub: None,
    local_files: "its ImageFolder as `--dataset folder --data-dir ROOT` (ROOT/<class>/*.JPEG)",
    sizes: Some([1_281_167, 50_000]),
    read: None,
    eval: Transform::imagenet_eval,
};

/// The user's own ImageFolder (`ROOT/<class>/*.jpg`, or `ROOT/train` and `ROOT/test`),
/// prepared as ImageNet's.
pub const FOLDER: DatasetSpec = DatasetSpec {
    name: "folder",
    title: "an image folder",
    classes: &[],
    shape: None,
    read: Some(Reader {
        split: |root| folder::image_folder(root, &FolderOptions::default()),
        test: Some(|root| folder::image_folder_test(root, &FolderOptions::default())),
    }),
    local_files: "ROOT/<class>/*.jpg, or ROOT/train and ROOT/test",
    sizes: None,
    ..IMAGENET
};

static TABLE: LazyLock<RwLock<Vec<&'static DatasetSpec>>> =
    LazyLock::new(|| RwLock::new(vec![&MNIST, &CIFAR10, &IMAGENET, &FOLDER]));

/// Every entry, built-in first.
pub fn specs() -> Vec<&'static DatasetSpec> {
    TABLE.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The entry named `name`; an unknown name is an error listing the known ones.
pub fn spec(name: &str) -> Result<&'static DatasetSpec> {
    let table = specs();
    match table.iter().find(|s| s.name == name) {
        Some(spec) => Ok(spec),
        None => {
            let known: Vec<&str> = table.iter().map(|s| s.name).collect();
            bail!("unknown data set {name:?}; known: {}", known.join(", "))
        }
    }
}

/// Adds a data set to the catalog (its `read` gives [`load`] its files).
///
/// Errors: a data set of that name is already there.
pub fn register(spec: DatasetSpec) -> Result<()> {
    let mut table = TABLE.write().unwrap_or_else(|p| p.into_inner());
    if table.iter().any(|s| s.name == spec.name) {
        bail!("data set {:?} is already in the catalog", spec.name);
    }
    table.push(Box::leak(Box::new(spec)));
    Ok(())
}

/// An error, saying what to give instead, for a data set that is only named (ImageNet).
fn readable(spec: &DatasetSpec) -> Result<()> {
    match spec.read {
        Some(_) => Ok(()),
        None => bail!(
            "{} is not read by name: give {}",
            spec.title,
            spec.local_files
        ),
    }
}

/// The error of a Hub load in a build without the `hub` feature.
#[cfg(not(feature = "hub"))]
fn no_hub(spec: &DatasetSpec) -> anyhow::Error {
    anyhow::anyhow!(
        "{} from the Hugging Face Hub needs the datasets crate's `hub` feature (built without \
         it): give the folder with {}",
        spec.title,
        spec.local_files
    )
}

/// Loads `spec` from `dir`, or with `None` from its Hub copy in the Hugging Face cache
/// (downloaded unless `HF_HUB_OFFLINE` is set). The split is checked ([`Split::check`]).
///
/// Errors: the reader's (file named, what is wrong); no `dir` for a data set without a Hub copy,
/// or in a build without the default `hub` feature; a data set that cannot be loaded.
pub fn load(spec: &DatasetSpec, dir: Option<&Path>) -> Result<Split> {
    readable(spec)?;
    let Some(dir) = dir else {
        return match spec.hub {
            #[cfg(feature = "hub")]
            Some(_) => crate::hub::load(spec),
            #[cfg(not(feature = "hub"))]
            Some(_) => Err(no_hub(spec)),
            None => bail!("{} needs --data-dir with {}", spec.title, spec.local_files),
        };
    };
    missing_dir(spec, dir)?;
    match spec.read {
        Some(read) => (read.split)(dir),
        None => bail!(
            "{} is not read by name (from {}): give {}",
            spec.title,
            dir.display(),
            spec.local_files
        ),
    }
}

/// A data folder (or archive) that is not there, named with what it should hold.
fn missing_dir(spec: &DatasetSpec, dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{}: {} does not exist (give {})",
            spec.title,
            dir.display(),
            spec.local_files
        ),
        _ => Ok(()),
    }
}

/// The test split of `spec` alone, from `dir` or with `None` from its Hub copy: what
/// evaluating a trained network needs. MNIST's `t10k` files, CIFAR-10's `test_batch.bin`, an
/// image folder's `test/` (or `val/`) when `train/` is gone and the Hub's test file are read
/// without the training files; other layouts (archives, a folder split by a held-out
/// fraction) are read as [`load`] reads them, keeping the test half.
///
/// Errors: as [`load`], for the files read.
pub fn load_test(spec: &DatasetSpec, dir: Option<&Path>) -> Result<Arc<dyn Dataset>> {
    readable(spec)?;
    let Some(dir) = dir else {
        return match spec.hub {
            #[cfg(feature = "hub")]
            Some(_) => crate::hub::load_test(spec),
            #[cfg(not(feature = "hub"))]
            Some(_) => Err(no_hub(spec)),
            None => bail!("{} needs --data-dir with {}", spec.title, spec.local_files),
        };
    };
    missing_dir(spec, dir)?;
    match spec.read.and_then(|read| read.test) {
        Some(read_test) => read_test(dir),
        None => Ok(load(spec, Some(dir))?.test),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the `hub` feature, a data set asked for without a folder says to give one.
    #[cfg(not(feature = "hub"))]
    #[test]
    fn without_the_hub_feature_a_folder_is_asked_for() {
        let mnist = spec("mnist").unwrap();
        for err in [
            load(mnist, None).map(|_| ()).unwrap_err(),
            load_test(mnist, None).map(|_| ()).unwrap_err(),
        ] {
            let err = err.to_string();
            assert!(
                err.contains("needs the datasets crate's `hub` feature") && err.contains("IDX"),
                "{err}"
            );
        }
    }

    /// A data set that is only named says what to give instead, with or without a folder.
    #[test]
    fn imagenet_by_name_points_to_the_folder_reader() {
        let dir = Path::new("/nonexistent/imagenet");
        let errors = [
            load(&IMAGENET, None).err(),
            load(&IMAGENET, Some(dir)).err(),
            load_test(&IMAGENET, None).err(),
            load_test(&IMAGENET, Some(dir)).err(),
        ];
        for err in errors {
            let err = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(
                err.starts_with("ImageNet is not read by name")
                    && err.contains("--dataset folder --data-dir ROOT"),
                "{err}"
            );
        }
    }

    #[test]
    fn every_entry_is_consistent() -> Result<()> {
        for spec in specs() {
            Transform::parse(spec.train_transform)?;
            Transform::parse(spec.test_transform)?;
            let channels = spec.mean_std.0.len();
            assert_eq!(channels, spec.mean_std.1.len(), "{}", spec.name);
            if let Some((c, _, side)) = spec.shape {
                assert_eq!(c, channels, "{}", spec.name);
                (spec.eval)(side).validate()?;
            }
            assert!(spec.hub.is_none() || spec.shape.is_some(), "{}", spec.name);
        }
        for kind in [
            DatasetKind::Mnist,
            DatasetKind::Cifar10,
            DatasetKind::Folder,
        ] {
            assert_eq!(spec(kind.spec().name)?.name, kind.spec().name);
        }
        assert!(spec("fashion").unwrap_err().to_string().contains("cifar10"));
        Ok(())
    }
}
