//! Helpers shared by the integration tests: small files in the real formats.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes an IDX3 image file (`count` images of `rows` x `cols`, pixel = index + offset).
pub fn write_idx_images(path: &Path, magic: u32, count: u32, rows: u32, cols: u32, gz: bool) {
    let mut bytes = Vec::new();
    for v in [magic, count, rows, cols] {
        bytes.extend_from_slice(&v.to_be_bytes());
    }
    let n = (count * rows * cols) as usize;
    bytes.extend((0..n).map(|i| (i % 256) as u8));
    write_maybe_gz(path, &bytes, gz);
}

/// Writes an IDX1 label file.
pub fn write_idx_labels(path: &Path, magic: u32, labels: &[u8], gz: bool) {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&magic.to_be_bytes());
    bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    bytes.extend_from_slice(labels);
    write_maybe_gz(path, &bytes, gz);
}

fn write_maybe_gz(path: &Path, bytes: &[u8], gz: bool) {
    if gz {
        let file = std::fs::File::create(path).unwrap();
        let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap();
    } else {
        std::fs::write(path, bytes).unwrap();
    }
}

/// A valid MNIST directory with `train` and `test` images of 4x3 pixels.
pub fn write_mnist(dir: &Path, train: u32, test: u32, gz: bool) {
    let ext = if gz { ".gz" } else { "" };
    let labels = |n: u32| (0..n).map(|i| (i % 10) as u8).collect::<Vec<_>>();
    write_idx_images(
        &dir.join(format!("train-images-idx3-ubyte{ext}")),
        0x803,
        train,
        4,
        3,
        gz,
    );
    write_idx_labels(
        &dir.join(format!("train-labels-idx1-ubyte{ext}")),
        0x801,
        &labels(train),
        gz,
    );
    write_idx_images(
        &dir.join(format!("t10k-images-idx3-ubyte{ext}")),
        0x803,
        test,
        4,
        3,
        gz,
    );
    write_idx_labels(
        &dir.join(format!("t10k-labels-idx1-ubyte{ext}")),
        0x801,
        &labels(test),
        gz,
    );
}

/// CIFAR binary records: label `i % 10`, pixel bytes `(i + c * 7 + p) % 256`.
pub fn cifar_records(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 3073);
    for i in 0..n {
        out.push((i % 10) as u8);
        for c in 0..3 {
            out.extend((0..1024).map(|p| ((i + c * 7 + p) % 256) as u8));
        }
    }
    out
}

/// An RGB image whose pixel (x, y) is `(base + x, base + 10 * y, base + 100)`.
pub fn pattern_rgb(w: u32, h: u32, base: u8) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (x as u8, y as u8);
        image::Rgb([
            base.wrapping_add(x),
            base.wrapping_add(y.wrapping_mul(10)),
            base.wrapping_add(100),
        ])
    })
}

/// Saves `img` as PNG (lossless) at `path`, creating parent folders.
pub fn save_png(img: &image::RgbImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

/// Builds `root/<split>/<class>/<k>.png` for the given splits and classes, `per_class` images
/// each of size `w` x `h`; returns the root.
pub fn write_folder(
    root: &Path,
    splits: &[&str],
    classes: &[&str],
    per_class: usize,
    w: u32,
    h: u32,
) -> PathBuf {
    for split in splits {
        for (label, class) in classes.iter().enumerate() {
            for k in 0..per_class {
                let img = pattern_rgb(w, h, (label * 20 + k) as u8);
                save_png(
                    &img,
                    &root.join(split).join(class).join(format!("{k:03}.png")),
                );
            }
        }
    }
    root.to_path_buf()
}

/// Packs the directory `src` as `dst` (`.tar.gz`) under the top folder `top`.
pub fn tar_gz(src: &Path, dst: &Path, top: &str) {
    let file = std::fs::File::create(dst).unwrap();
    let enc = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut builder = tar::Builder::new(enc);
    builder.append_dir_all(top, src).unwrap();
    builder.into_inner().unwrap().finish().unwrap();
}

/// The shared data directory, or `None` (after saying so) when `CNN_SHARED_DIR` is unset.
pub fn shared_dir() -> Option<PathBuf> {
    match std::env::var_os("CNN_SHARED_DIR") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            eprintln!("skipped: CNN_SHARED_DIR not set");
            None
        }
    }
}

/// `format!("{err:#}")`: the whole context chain.
pub fn chain(err: &anyhow::Error) -> String {
    format!("{err:#}")
}
