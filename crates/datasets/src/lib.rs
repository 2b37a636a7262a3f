//! Everything between image files (or the Hugging Face Hub) and a batch tensor, with
//! torchvision's semantics:
//!
//! - sources: [`mnist`] (IDX files, raw or `.gz`), [`cifar10`] (binary or Python batches, their
//!   archives, an ImageFolder tree or archive), [`image_folder`] (a directory or `.tar.gz`), each giving a
//!   [`Split`] of [`Dataset`]s; for [`mnist`] and [`cifar10`], `None` as the directory
//!   downloads from the Hub into the HF cache ([`image_folder`] always reads a `root`; the
//!   `hub` feature, on by default, brings the download: without it `None` is an error saying to
//!   give the files, and the crate builds with half the dependencies);
//! - [`Transform`]: `RandomCrop`, `RandomHorizontalFlip`, `Resize`, `CenterCrop`,
//!   `RandomResizedCrop` on u8 images, then `ToTensor` + `Normalize`, with presets and a
//!   command-line grammar (see [`parse`]);
//! - [`Loader`]: seeded shuffling, parallel decoding and augmentation, background prefetch,
//!   yielding [`Batch`]es of `(N, C, H, W)` f32 and `(N,)` u32 tensors;
//! - [`ResidentLoader`]: the same batches with the data held on the device as u8 and the
//!   crops, flips and normalisation run there.
//!
//! ```no_run
//! use datasets::{cifar10, Loader, LoaderConfig, Transform};
//! # fn main() -> anyhow::Result<()> {
//! let split = cifar10(Some(std::path::Path::new("data/cifar10")))?;
//! let loader = Loader::new(split.train, Transform::cifar10_train(), LoaderConfig::train(128, 0))?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?;
//!     assert_eq!(batch.images.dims()[1..], [3, 32, 32]);
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod archive;
pub mod catalog;
mod cifar;
mod cifar_python;
mod dataset;
mod decode;
mod filelist;
mod folder;
mod geometry;
#[cfg(feature = "hub")]
pub mod hub;
mod idx;
mod io;
mod listing;
mod loader;
pub mod parse;
mod resident;
mod resize;
mod subset;
mod transform;
mod u8image;

pub use archive::{read_archive, ArchiveEntry};
pub use catalog::{DatasetKind, DatasetSpec};
pub use cifar::{
    cifar10, cifar10_incomplete_batches, cifar10_test_bin, is_cifar10, CIFAR10_CLASSES,
};
pub use dataset::{fingerprint, Dataset, InMemory, Split};
pub use decode::{decode_image, ColorMode};
pub use filelist::{EncodedSample, FileList, Source};
pub use folder::{
    image_folder, image_folder_for_evaluation, image_folder_test, image_folder_training, percent,
    FolderOptions, Storage,
};
pub use idx::{mnist, read_idx_pair, MNIST_CLASSES};
pub use io::{read_image_file, read_input_file};
pub use listing::{image_files_below, is_image, IMAGE_EXTENSIONS};
pub use loader::{Batch, Epoch, Loader, LoaderConfig, MAX_WORKERS};
pub use resident::ResidentLoader;
pub use resize::resize_bilinear;
pub use rng::Rng;
pub use subset::{stratified_indices, Subset};
pub use transform::{
    Normalize, Op, Transform, CIFAR10_MEAN_STD, IMAGENET_MEAN_STD, MAX_SIDE, MNIST_MEAN_STD,
};
pub use u8image::U8Image;
