//! `visualize samples`: grids of the first training images on tiny data sets written here,
//! and on the real MNIST and CIFAR-10 when `CNN_SHARED_DIR` is set.

mod common;

use std::path::Path;

use common::{assert_not_blank, open_png, shared_dir, visualize, Grid};

/// Grey level of MNIST image `i` (all its pixels but a black top-left corner).
fn grey(i: u32) -> u8 {
    (20 + 19 * i) as u8
}

fn write_idx(dir: &Path, prefix: &str, n: u32) {
    let mut images = vec![0, 0, 8, 3];
    for d in [n, 28, 28] {
        images.extend(d.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend(n.to_be_bytes());
    for i in 0..n {
        let mut pixels = vec![grey(i); 28 * 28];
        pixels[0] = 0;
        images.extend(pixels);
        labels.push(((i * 3) % 10) as u8);
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

/// `--per-class` shows one image of each class, sorted by label, and says when `--count`
/// asks for more than there are classes.
#[test]
fn per_class_shows_each_class_once_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    write_idx(dir.path(), "train", 12);
    write_idx(dir.path(), "t10k", 2);
    let out = dir.path().join("out");
    let args = |count: &'static str| {
        visualize(&[
            "samples",
            "--dataset",
            "mnist",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--per-class",
            "--count",
            count,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let stdout = args("20");
    assert!(
        stdout.contains("--per-class: one image for each class, 10 images (--count 20 is more)"),
        "{stdout}"
    );
    // Labels (3 i) mod 10: image 7 is the first 1, image 4 the first 2.
    let first = stdout.find("sample 0: label 0").expect("label 0");
    let one = stdout.find("sample 7: label 1").expect("label 1");
    let two = stdout.find("sample 4: label 2").expect("label 2");
    assert!(first < one && one < two, "{stdout}");
    assert_eq!(stdout.matches("sample ").count(), 10, "{stdout}");
    let stdout = args("3");
    assert!(!stdout.contains("--count 3 is more"), "{stdout}");
    assert_eq!(stdout.matches("sample ").count(), 3, "{stdout}");
}

#[test]
fn mnist_grid_shows_the_first_ten_images_with_labels() {
    let dir = tempfile::tempdir().unwrap();
    write_idx(dir.path(), "train", 12);
    write_idx(dir.path(), "t10k", 2);
    let out = dir.path().join("out");
    let stdout = visualize(&[
        "samples",
        "--dataset",
        "mnist",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(stdout.contains("sample 0: label 0 (0 - zero)"), "{stdout}");
    assert!(stdout.contains("sample 9: label 7 (7 - seven)"), "{stdout}");
    assert!(!stdout.contains("sample 10"), "{stdout}");

    let img = open_png(&out.join("samples-mnist.png"));
    let grid = Grid::new(28, 28, 10, 5);
    assert_eq!(grid.scale, 4);
    assert_eq!(img.dimensions(), grid.size);
    assert_not_blank(&img, "samples-mnist.png");
    for i in 0..10 {
        assert_eq!(grid.pixel(&img, i, (0, 0)), [0; 3], "tile {i} corner");
        let g = grey(i as u32);
        assert_eq!(grid.pixel(&img, i, (27, 27)), [g; 3], "tile {i}");
    }
}

/// Writes the six official CIFAR-10 binary batch files, two records each (one for the test),
/// record `k` (in file order) with label `(7 * k) % 10` and colour `colour(k)`.
fn write_cifar(dir: &Path) {
    let files = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    for (f, name) in files.iter().enumerate() {
        let mut bytes = Vec::new();
        for j in 0..2 {
            let k = (2 * f + j) as u32;
            bytes.push(((7 * k) % 10) as u8);
            for value in colour(k) {
                bytes.extend([value; 1024]);
            }
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn colour(k: u32) -> [u8; 3] {
    [
        (25 * k) as u8,
        (250 - 20 * k) as u8,
        if k.is_multiple_of(2) { 30 } else { 220 },
    ]
}

#[test]
fn cifar10_grid_shows_colour_images_with_class_names() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar(dir.path());
    let stdout = visualize(&[
        "samples",
        "--dataset",
        "cifar10",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(stdout.contains("sample 0: label 0 (airplane)"), "{stdout}");
    assert!(stdout.contains("sample 1: label 7 (horse)"), "{stdout}");
    assert!(stdout.contains("sample 9: label 3 (cat)"), "{stdout}");

    let img = open_png(&dir.path().join("samples-cifar10.png"));
    let grid = Grid::new(32, 32, 10, 5);
    assert_eq!(img.dimensions(), grid.size);
    assert_not_blank(&img, "samples-cifar10.png");
    for i in 0..10 {
        assert_eq!(grid.pixel(&img, i, (16, 16)), colour(i as u32), "tile {i}");
    }
}

#[test]
fn real_mnist_and_cifar10() {
    let Some(shared) = shared_dir() else {
        return;
    };
    let data = shared.join("data");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();

    let mnist_dir = data.join("mnist");
    let stdout = visualize(&[
        "samples",
        "--dataset",
        "mnist",
        "--data-dir",
        mnist_dir.to_str().unwrap(),
        "--out",
        out,
    ]);
    let train = datasets::mnist(Some(&mnist_dir)).unwrap().train;
    for i in 0..10 {
        let label = train.label(i);
        let line = format!("sample {i}: label {label} ({})", train.classes()[label]);
        assert!(stdout.contains(&line), "missing {line:?} in:\n{stdout}");
    }
    let img = open_png(&dir.path().join("samples-mnist.png"));
    let grid = Grid::new(28, 28, 10, 5);
    assert_eq!(img.dimensions(), grid.size);
    assert_not_blank(&img, "real samples-mnist.png");
    let first = train.image(0).unwrap();
    assert_eq!(grid.pixel(&img, 0, (14, 14))[0], first.data[14 * 28 + 14]);

    // The JPEG copy is an ImageFolder sorted by class: one image per class shows all ten.
    let stdout = visualize(&[
        "samples",
        "--dataset",
        "cifar10",
        "--data-dir",
        data.join("cifar10").to_str().unwrap(),
        "--per-class",
        "--out",
        out,
    ]);
    for (label, class) in datasets::CIFAR10_CLASSES.iter().enumerate() {
        let line = format!("label {label} ({class})");
        assert!(stdout.contains(&line), "missing {line:?} in:\n{stdout}");
    }
    let img = open_png(&dir.path().join("samples-cifar10.png"));
    assert_eq!(img.dimensions(), Grid::new(32, 32, 10, 5).size);
    assert_not_blank(&img, "real samples-cifar10.png");
}
