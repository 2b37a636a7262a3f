//! The `Dataset` trait, the in-memory dataset and the train/test pair.

use crate::U8Image;
use anyhow::{bail, ensure, Context, Result};
use std::sync::Arc;

/// A labelled image source.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class names; labels index into this list.
    fn classes(&self) -> &[String];
    /// Label of sample `index` (`< classes().len()`); `index` must be `< len()`.
    fn label(&self, index: usize) -> usize;
    /// Decodes sample `index` (errors name the file for file-backed data).
    fn image(&self, index: usize) -> Result<U8Image>;
    /// The `(c, h, w)` shape every image has, when the dataset fixes one (in-memory data);
    /// `None` when sizes may vary from file to file.
    fn fixed_shape(&self) -> Option<(usize, usize, usize)> {
        None
    }
    /// Where sample `index` comes from, for messages: the file (or `archive:entry`) of
    /// file-backed data; `None` when samples have no name of their own (decoded batches).
    fn sample_name(&self, _index: usize) -> Option<String> {
        None
    }
    /// Sample `index`'s position in the data set this one was drawn from (through a
    /// [`Subset`](crate::Subset)'s indices, as `torch.utils.data.Subset` maps them): the index
    /// torchvision's data set of the same files gives it (`CIFAR10(root, train=False)[i]`).
    /// `index` itself for a data set of its own.
    fn source_index(&self, index: usize) -> usize {
        index
    }
    /// Where the samples were read from, for messages: the files, folder or archive a
    /// reader ([`mnist`](crate::mnist), [`cifar10`](crate::cifar10),
    /// [`image_folder`](crate::image_folder), the Hub's copy) took them from; `None` when not
    /// recorded.
    fn origin(&self) -> Option<String> {
        None
    }
    /// Sample `index`'s [`fingerprint`](crate::fingerprint): the XXH3-64 of the bytes of the
    /// file (or archive entry) it is read from, which a copy, a move, a renaming or an archive
    /// of the file keeps; what tells that an image of one data set is one of another's
    /// (the training images a run's state remembers). `None` for samples that come from no
    /// file of their own (MNIST's and CIFAR-10's batches).
    ///
    /// # Errors
    /// The file cannot be read (named).
    fn fingerprint(&self, _index: usize) -> Result<Option<u64>> {
        Ok(None)
    }
}

/// The fingerprint of an image file's bytes ([`Dataset::fingerprint`]): their XXH3-64
/// (`xxhash.xxh3_64_intdigest` in Python's `xxhash`).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(bytes)
}

/// A data set with the place it was read from ([`Dataset::origin`]); the samples are `inner`'s.
struct Read {
    inner: Arc<dyn Dataset>,
    origin: String,
}

impl Dataset for Read {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn label(&self, index: usize) -> usize {
        self.inner.label(index)
    }
    fn image(&self, index: usize) -> Result<U8Image> {
        self.inner.image(index)
    }
    fn fixed_shape(&self) -> Option<(usize, usize, usize)> {
        self.inner.fixed_shape()
    }
    fn sample_name(&self, index: usize) -> Option<String> {
        self.inner.sample_name(index)
    }
    fn source_index(&self, index: usize) -> usize {
        self.inner.source_index(index)
    }
    fn origin(&self) -> Option<String> {
        Some(self.origin.clone())
    }
    fn fingerprint(&self, index: usize) -> Result<Option<u64>> {
        self.inner.fingerprint(index)
    }
}

/// Train and test halves.
#[derive(Clone)]
pub struct Split {
    /// The training samples.
    pub train: Arc<dyn Dataset>,
    /// The held-out samples.
    pub test: Arc<dyn Dataset>,
}

impl Split {
    /// Checks, before any training, that the two halves fit together: neither is empty, class
    /// names are unique and the same in both, and fixed image shapes agree. `train_origin` and
    /// `test_origin` (the files or directories each half came from) are named in the errors.
    /// [`mnist`](crate::mnist), [`cifar10`](crate::cifar10) and
    /// [`image_folder`](crate::image_folder) run it on what they load.
    pub fn check(&self, train_origin: &str, test_origin: &str) -> Result<()> {
        ensure!(
            !self.train.is_empty(),
            "{train_origin}: the training split has no images"
        );
        ensure!(
            !self.test.is_empty(),
            "{test_origin}: the test split has no images"
        );
        let classes = self.train.classes();
        for (i, name) in classes.iter().enumerate() {
            ensure!(
                !classes[..i].contains(name),
                "{train_origin}: class name {name:?} appears twice in {classes:?}"
            );
        }
        ensure!(
            self.test.classes() == classes,
            "{test_origin}: the test classes {:?} differ from the training classes {classes:?} \
             of {train_origin}",
            self.test.classes()
        );
        if let (Some(train), Some(test)) = (self.train.fixed_shape(), self.test.fixed_shape()) {
            ensure!(
                train == test,
                "{test_origin}: test images are {test:?} (CxHxW) but the training images of \
                 {train_origin} are {train:?}"
            );
        }
        Ok(())
    }
}

impl Split {
    /// [`Split::check`], then each half with its origin ([`Dataset::origin`]): what the readers
    /// give.
    ///
    /// # Errors
    /// As [`Split::check`].
    pub fn checked(self, train_origin: &str, test_origin: &str) -> Result<Split> {
        self.check(train_origin, test_origin)?;
        Ok(Split {
            train: Arc::new(Read {
                inner: self.train,
                origin: train_origin.to_string(),
            }),
            test: Arc::new(Read {
                inner: self.test,
                origin: test_origin.to_string(),
            }),
        })
    }
}

impl std::fmt::Debug for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Split")
            .field("train", &self.train.len())
            .field("test", &self.test.len())
            .field("classes", &self.train.classes())
            .finish()
    }
}

/// Fixed-size u8 images held in memory (MNIST, CIFAR-10): `N*C*H*W` bytes, labels, class names.
#[derive(Debug, Clone)]
pub struct InMemory {
    images: Vec<u8>,
    labels: Vec<usize>,
    shape: (usize, usize, usize),
    classes: Vec<String>,
    /// Each sample's file, for images decoded from files ([`InMemory::with_names`]).
    names: Option<Vec<String>>,
    /// Each sample's file's [`fingerprint`] ([`InMemory::with_fingerprints`]).
    fingerprints: Option<Vec<u64>>,
}

impl InMemory {
    /// Validates and wraps `images` (`N*C*H*W` bytes, sample-major CHW), one label per image
    /// (each `< classes.len()`), the per-image `(c, h, w)` shape and the class names.
    ///
    /// # Errors
    /// The number of bytes is not `N*C*H*W` for one label per image, or a label is not below
    /// `classes.len()`.
    pub fn new<L: Into<usize>>(
        images: Vec<u8>,
        labels: Vec<L>,
        shape: (usize, usize, usize),
        classes: Vec<String>,
    ) -> Result<Self> {
        let (c, h, w) = shape;
        let sample = c
            .checked_mul(h)
            .and_then(|ch| ch.checked_mul(w))
            .with_context(|| format!("image shape {c}x{h}x{w} is too large to address"))?;
        ensure!(sample > 0, "image shape {c}x{h}x{w} is empty");
        ensure!(
            images.len().is_multiple_of(sample),
            "{} image bytes are not a whole number of {c}x{h}x{w} images",
            images.len()
        );
        let n = images.len() / sample;
        ensure!(
            n == labels.len(),
            "image/label count mismatch: {n} images but {} labels",
            labels.len()
        );
        let labels: Vec<usize> = labels.into_iter().map(Into::into).collect();
        if let Some((i, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= classes.len()) {
            bail!(
                "label {label} of sample {i} is out of range for {} classes",
                classes.len()
            );
        }
        Ok(Self {
            images,
            labels,
            shape,
            classes,
            names: None,
            fingerprints: None,
        })
    }

    /// The same samples, each named by the file it was decoded from
    /// ([`Dataset::sample_name`]: an image folder's files held decoded, as CIFAR-10's).
    ///
    /// # Errors
    /// Not one name per sample.
    pub fn with_names(mut self, names: Vec<String>) -> Result<Self> {
        ensure!(
            names.len() == self.labels.len(),
            "{} names for {} samples",
            names.len(),
            self.labels.len()
        );
        self.names = Some(names);
        Ok(self)
    }

    /// The same samples, each with its file's [`fingerprint`] ([`Dataset::fingerprint`]), for
    /// images decoded from files.
    ///
    /// # Errors
    /// Not one fingerprint per sample.
    pub fn with_fingerprints(mut self, fingerprints: Vec<u64>) -> Result<Self> {
        ensure!(
            fingerprints.len() == self.labels.len(),
            "{} fingerprints for {} samples",
            fingerprints.len(),
            self.labels.len()
        );
        self.fingerprints = Some(fingerprints);
        Ok(self)
    }

    /// The per-image `(c, h, w)` shape.
    pub fn shape(&self) -> (usize, usize, usize) {
        self.shape
    }

    /// All labels, in sample order.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// The CHW bytes of sample `index`, without copying.
    ///
    /// # Errors
    /// `index` is out of range.
    pub fn pixels(&self, index: usize) -> Result<&[u8]> {
        let (c, h, w) = self.shape;
        // `new` checked that this product fits.
        let sample = c * h * w;
        let start = index.saturating_mul(sample);
        self.images
            .get(start..start.saturating_add(sample))
            .with_context(|| format!("sample {index} is out of range for {} samples", self.len()))
    }

    /// Concatenates datasets of the same shape and classes (e.g. CIFAR-10's five train batches).
    ///
    /// # Errors
    /// No parts, or parts of different shapes or classes.
    pub fn concat(parts: Vec<InMemory>) -> Result<Self> {
        let mut parts = parts.into_iter();
        let Some(mut all) = parts.next() else {
            bail!("nothing to concatenate");
        };
        for part in parts {
            ensure!(
                part.shape == all.shape && part.classes == all.classes,
                "cannot concatenate images of shape {:?} to images of shape {:?}",
                part.shape,
                all.shape
            );
            all.images.extend_from_slice(&part.images);
            all.labels.extend_from_slice(&part.labels);
            // Named only where every part is.
            all.names = match (all.names.take(), part.names) {
                (Some(mut names), Some(more)) => {
                    names.extend(more);
                    Some(names)
                }
                _ => None,
            };
            all.fingerprints = match (all.fingerprints.take(), part.fingerprints) {
                (Some(mut sums), Some(more)) => {
                    sums.extend(more);
                    Some(sums)
                }
                _ => None,
            };
        }
        Ok(all)
    }
}

impl Dataset for InMemory {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn label(&self, index: usize) -> usize {
        self.labels[index]
    }

    fn image(&self, index: usize) -> Result<U8Image> {
        let (c, h, w) = self.shape;
        U8Image::new(c, h, w, self.pixels(index)?.to_vec())
    }

    fn fixed_shape(&self) -> Option<(usize, usize, usize)> {
        Some(self.shape)
    }

    fn sample_name(&self, index: usize) -> Option<String> {
        self.names.as_ref()?.get(index).cloned()
    }

    fn fingerprint(&self, index: usize) -> Result<Option<u64>> {
        Ok(self
            .fingerprints
            .as_ref()
            .and_then(|sums| sums.get(index).copied()))
    }
}

/// Turns `&str` class names into owned strings.
pub fn class_names(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_classes() -> Vec<String> {
        class_names(&["a", "b"])
    }

    #[test]
    fn valid_dataset_yields_images_and_labels() {
        let data: Vec<u8> = (0..12).collect();
        let ds = InMemory::new(data, vec![1u8, 0, 1], (1, 2, 2), two_classes()).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.label(2), 1);
        assert_eq!(ds.image(1).unwrap().data, vec![4, 5, 6, 7]);
        assert!(ds.image(3).is_err());
    }

    #[test]
    fn count_mismatch_and_bad_labels_are_errors() {
        let err = InMemory::new(vec![0; 8], vec![0usize], (1, 2, 2), two_classes()).unwrap_err();
        assert!(err.to_string().contains("mismatch"), "{err}");
        let err = InMemory::new(vec![0; 8], vec![0u8, 2], (1, 2, 2), two_classes()).unwrap_err();
        assert!(err.to_string().contains("label 2"), "{err}");
        let err = InMemory::new(vec![0; 7], vec![0u8, 1], (1, 2, 2), two_classes()).unwrap_err();
        assert!(err.to_string().contains("whole number"), "{err}");
    }

    #[test]
    fn concat_joins_parts() {
        let a = InMemory::new(vec![1; 4], vec![0u8], (1, 2, 2), two_classes()).unwrap();
        let b = InMemory::new(vec![2; 4], vec![1u8], (1, 2, 2), two_classes()).unwrap();
        let ab = InMemory::concat(vec![a, b]).unwrap();
        assert_eq!(ab.len(), 2);
        assert_eq!(ab.image(1).unwrap().data, vec![2; 4]);
        assert_eq!(ab.labels(), &[0, 1]);
    }
}
