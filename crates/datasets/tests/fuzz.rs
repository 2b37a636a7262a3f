//! Fuzz targets, one per parser: IDX files, CIFAR-10 binary batches, tar / tar.gz archives (and
//! the ImageFolder and CIFAR-10 readers on top of them), image decoding. Each mutates small
//! valid seed files built here (see `mutate`) and asserts that no input panics, aborts or hangs;
//! errors are the expected outcome. Under `cargo test` each target runs 2 seconds. A long run of
//! one target (here 10 minutes; the name filter picks the target):
//!
//! ```text
//! FUZZ_SECONDS=600 cargo test -p datasets --test fuzz -- --nocapture --exact archive
//! ```
//!
//! The same targets run coverage-guided under `cargo bolero test -p datasets --test fuzz archive`.

mod common;
mod mutate;

use common::*;
use datasets::{
    cifar10, cifar10_test_bin, decode_image, image_folder, read_archive, read_idx_pair,
};
use datasets::{ColorMode, Dataset, FolderOptions, Storage};
use mutate::fuzz;
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use tempfile::tempdir;

/// How long one input may run before it counts as a hang.
const HANG: Duration = Duration::from_secs(20);

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Reads every sample of `ds`, so lazy decoding runs too.
fn touch_all(ds: &dyn Dataset) {
    for i in 0..ds.len() {
        let _ = ds.image(i);
        let _ = ds.label(i);
    }
}

/// The files of `dir` as seeds.
fn files_in(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn idx() {
    let seeds_dir = tempdir().unwrap();
    let at = |name: &str| seeds_dir.path().join(name);
    write_idx_images(&at("images"), 0x803, 3, 4, 3, false);
    write_idx_labels(&at("labels"), 0x801, &[1, 2, 3], false);
    write_idx_images(&at("images.gz"), 0x803, 3, 4, 3, true);
    write_idx_labels(&at("labels.gz"), 0x801, &[1, 2, 3], true);
    let seeds = files_in(seeds_dir.path());
    let work = tempdir().unwrap();
    let (images, labels) = (work.path().join("images"), work.path().join("labels"));
    fuzz("idx", &seeds, HANG, |bytes, flags, seed| {
        let bytes = if flags & 1 == 0 {
            bytes.to_vec()
        } else {
            gzip(bytes)
        };
        // Seeds 0 and 1 are image files, 2 and 3 label files; the other file stays valid.
        let (mutated, other, other_seed) = if seed < 2 {
            (&images, &labels, &seeds[2])
        } else {
            (&labels, &images, &seeds[0])
        };
        std::fs::write(mutated, &bytes).unwrap();
        std::fs::write(other, other_seed).unwrap();
        read_idx_pair(&images, &labels)
            .map(|ds| touch_all(&ds))
            .is_ok()
    });
}

#[test]
fn cifar_batch() {
    let meta = CIFAR10_NAMES.join("\n").into_bytes();
    let seeds = vec![cifar_records(1), cifar_records(3), meta.clone()];
    let work = tempdir().unwrap();
    let batch = work.path().join("test_batch.bin");
    let meta_path = work.path().join("batches.meta.txt");
    fuzz("cifar_batch", &seeds, HANG, |bytes, _, seed| {
        // Seeds 0 and 1 are batches, seed 2 is batches.meta.txt beside a valid batch.
        if seed < 2 {
            std::fs::write(&batch, bytes).unwrap();
            let _ = std::fs::remove_file(&meta_path);
        } else {
            std::fs::write(&batch, &seeds[1]).unwrap();
            std::fs::write(&meta_path, bytes).unwrap();
        }
        cifar10_test_bin(&batch).map(|ds| touch_all(&ds)).is_ok()
    });
}

const CIFAR10_NAMES: [&str; 10] = datasets::CIFAR10_CLASSES;

/// Seeds for the archive target: a tar and a tar.gz of a tiny ImageFolder (PNG and JPEG), and a
/// tar of CIFAR-10 binary batches.
fn archive_seeds() -> Vec<Vec<u8>> {
    let dir = tempdir().unwrap();
    let tree = write_folder(
        &dir.path().join("tree"),
        &["train", "test"],
        &["a", "b"],
        1,
        3,
        2,
    );
    let mut jpeg = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 75);
    pattern_rgb(3, 2, 9).write_with_encoder(encoder).unwrap();
    std::fs::write(tree.join("train").join("a").join("j.jpg"), jpeg).unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all("set", &tree).unwrap();
    let folder_tar = builder.into_inner().unwrap();

    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for i in 1..=5 {
        std::fs::write(bin.join(format!("data_batch_{i}.bin")), cifar_records(1)).unwrap();
    }
    std::fs::write(bin.join("test_batch.bin"), cifar_records(1)).unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_dir_all("cifar-10-batches-bin", &bin)
        .unwrap();
    let cifar_tar = builder.into_inner().unwrap();
    let folder_gz = gzip(&folder_tar);
    vec![folder_tar, cifar_tar, folder_gz]
}

#[test]
fn archive() {
    let seeds = archive_seeds();
    let work = tempdir().unwrap();
    let (tar_path, gz_path) = (work.path().join("set.tar"), work.path().join("set.tar.gz"));
    let memory = FolderOptions {
        storage: Storage::Memory,
        ..FolderOptions::default()
    };
    fuzz("archive", &seeds, HANG, |bytes, flags, _| {
        // Flag bit 0: gzip the mutated bytes (a valid gzip around a damaged tar); bit 1: read
        // them as .tar.gz (a damaged gzip, or a tar misnamed); bits 2-3: which reader.
        let path = if flags & 3 == 0 { &tar_path } else { &gz_path };
        let bytes = if flags & 1 == 1 {
            gzip(bytes)
        } else {
            bytes.to_vec()
        };
        std::fs::write(path, &bytes).unwrap();
        match (flags >> 2) & 3 {
            0 => read_archive(path).is_ok(),
            1 => image_folder(path, &FolderOptions::default())
                .map(|split| {
                    touch_all(split.train.as_ref());
                    touch_all(split.test.as_ref());
                })
                .is_ok(),
            2 => image_folder(path, &memory).is_ok(),
            _ => cifar10(Some(path)).is_ok(),
        }
    });
}

#[test]
fn image_decode() {
    let mut seeds = Vec::new();
    let rgb = pattern_rgb(5, 4, 3);
    let mut png = Vec::new();
    rgb.write_with_encoder(image::codecs::png::PngEncoder::new(&mut png))
        .unwrap();
    seeds.push(png);
    let mut gray = Vec::new();
    image::DynamicImage::ImageRgb8(rgb.clone())
        .into_luma8()
        .write_with_encoder(image::codecs::png::PngEncoder::new(&mut gray))
        .unwrap();
    seeds.push(gray);
    for quality in [30, 90] {
        let mut jpeg = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, quality);
        pattern_rgb(17, 9, 40).write_with_encoder(encoder).unwrap();
        seeds.push(jpeg);
    }
    // torchvision's other image types, which the decoder reads too.
    for format in [
        image::ImageFormat::Bmp,
        image::ImageFormat::Pnm,
        image::ImageFormat::Tiff,
        image::ImageFormat::WebP,
    ] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        pattern_rgb(6, 5, 90).write_to(&mut bytes, format).unwrap();
        seeds.push(bytes.into_inner());
    }
    fuzz("image_decode", &seeds, HANG, |bytes, flags, _| {
        let mode = if flags & 1 == 0 {
            ColorMode::Rgb
        } else {
            ColorMode::Gray
        };
        decode_image(bytes, mode)
            .map(|img| assert_eq!(img.data.len(), img.channels * img.height * img.width))
            .is_ok()
    });
}
