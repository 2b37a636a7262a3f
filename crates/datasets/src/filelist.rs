//! A dataset of encoded images decoded lazily, one sample at a time (big ImageFolder images).

use crate::decode::{decode_named, ColorMode};
use crate::{Dataset, U8Image};
use anyhow::{ensure, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// Where one sample's encoded bytes live.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file on disk, read at each access.
    Path(PathBuf),
    /// Bytes already in memory (an entry of an archive), shared cheaply.
    Bytes(Arc<Vec<u8>>),
}

/// One encoded sample: a display name for errors and where its bytes are.
#[derive(Debug, Clone)]
pub struct EncodedSample {
    /// The file path, or `archive:entry`, quoted in errors.
    pub name: String,
    /// Where the bytes are.
    pub source: Source,
}

impl EncodedSample {
    /// A sample read from the file at `path`.
    pub fn file(path: PathBuf) -> Self {
        Self {
            name: path.display().to_string(),
            source: Source::Path(path),
        }
    }

    /// Reads the encoded bytes and decodes them as RGB (torchvision's default loader).
    ///
    /// # Errors
    /// The file cannot be read, or its bytes are no image the decoder knows (the sample is named).
    pub fn decode(&self) -> Result<U8Image> {
        match &self.source {
            Source::Path(path) => {
                // Its errors name the file.
                let bytes = crate::io::read_image_file(path)?;
                decode_named(&bytes, ColorMode::Rgb, &self.name)
            }
            Source::Bytes(bytes) => decode_named(bytes, ColorMode::Rgb, &self.name),
        }
    }

    /// The encoded bytes' [`fingerprint`](crate::fingerprint), read without decoding them.
    ///
    /// # Errors
    /// The file cannot be read (named).
    pub fn fingerprint(&self) -> Result<u64> {
        match &self.source {
            Source::Path(path) => Ok(crate::fingerprint(&crate::io::read_image_file(path)?)),
            Source::Bytes(bytes) => Ok(crate::fingerprint(bytes)),
        }
    }

    /// [`EncodedSample::decode`] and [`EncodedSample::fingerprint`] from one read of the file.
    ///
    /// # Errors
    /// As [`EncodedSample::decode`].
    pub fn decode_with_fingerprint(&self) -> Result<(U8Image, u64)> {
        match &self.source {
            Source::Path(path) => {
                let bytes = crate::io::read_image_file(path)?;
                let image = decode_named(&bytes, ColorMode::Rgb, &self.name)?;
                Ok((image, crate::fingerprint(&bytes)))
            }
            Source::Bytes(bytes) => Ok((
                decode_named(bytes, ColorMode::Rgb, &self.name)?,
                crate::fingerprint(bytes),
            )),
        }
    }
}

/// Encoded images, decoded to RGB on every access: memory stays small whatever the image size.
#[derive(Debug, Clone)]
pub struct FileList {
    samples: Vec<EncodedSample>,
    labels: Vec<usize>,
    classes: Vec<String>,
}

impl FileList {
    /// Validates and wraps samples, one label each (`< classes.len()`).
    ///
    /// # Errors
    /// Samples and labels differ in number, or a label is not below `classes.len()`.
    pub fn new(
        samples: Vec<EncodedSample>,
        labels: Vec<usize>,
        classes: Vec<String>,
    ) -> Result<Self> {
        ensure!(
            samples.len() == labels.len(),
            "image/label count mismatch: {} files but {} labels",
            samples.len(),
            labels.len()
        );
        if let Some(i) = labels.iter().position(|&l| l >= classes.len()) {
            anyhow::bail!(
                "{}: label {} is out of range for {} classes",
                samples[i].name,
                labels[i],
                classes.len()
            );
        }
        Ok(Self {
            samples,
            labels,
            classes,
        })
    }

    /// The files from `paths` with their labels.
    ///
    /// # Errors
    /// As [`FileList::new`].
    pub fn from_paths(
        paths: Vec<PathBuf>,
        labels: Vec<usize>,
        classes: Vec<String>,
    ) -> Result<Self> {
        Self::new(
            paths.into_iter().map(EncodedSample::file).collect(),
            labels,
            classes,
        )
    }

    /// The samples, in dataset order.
    pub fn samples(&self) -> &[EncodedSample] {
        &self.samples
    }
}

impl Dataset for FileList {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn label(&self, index: usize) -> usize {
        self.labels[index]
    }

    fn image(&self, index: usize) -> Result<U8Image> {
        self.samples
            .get(index)
            .with_context(|| format!("sample {index} is out of range for {} samples", self.len()))?
            .decode()
    }

    fn sample_name(&self, index: usize) -> Option<String> {
        self.samples.get(index).map(|s| s.name.clone())
    }

    fn fingerprint(&self, index: usize) -> Result<Option<u64>> {
        self.samples
            .get(index)
            .with_context(|| format!("sample {index} is out of range for {} samples", self.len()))?
            .fingerprint()
            .map(Some)
    }
}
