//! Train and test halves that cannot be trained and evaluated together are refused at load
//! time, naming the file or directory: an empty half, differing image sizes or channels,
//! differing or repeated class names.

mod common;

use common::*;
use datasets::{cifar10, image_folder, mnist, FolderOptions, InMemory, Split, Storage};
use std::sync::Arc;
use tempfile::tempdir;

#[test]
fn mnist_with_an_empty_half_names_its_file() {
    let dir = tempdir().unwrap();
    write_mnist(dir.path(), 0, 4, false);
    let msg = chain(&mnist(Some(dir.path())).unwrap_err());
    assert!(
        msg.contains("train-images-idx3-ubyte") && msg.contains("training split has no images"),
        "{msg}"
    );
    write_mnist(dir.path(), 4, 0, false);
    let msg = chain(&mnist(Some(dir.path())).unwrap_err());
    assert!(
        msg.contains("t10k-images-idx3-ubyte") && msg.contains("test split has no images"),
        "{msg}"
    );
}

#[test]
fn mnist_test_images_of_another_size_name_the_file() {
    let dir = tempdir().unwrap();
    write_mnist(dir.path(), 4, 2, false);
    write_idx_images(
        &dir.path().join("t10k-images-idx3-ubyte"),
        0x803,
        2,
        5,
        5,
        false,
    );
    let msg = chain(&mnist(Some(dir.path())).unwrap_err());
    assert!(
        msg.contains("t10k-images-idx3-ubyte")
            && msg.contains("(1, 5, 5)")
            && msg.contains("(1, 4, 3)"),
        "{msg}"
    );
}

#[test]
fn cifar_meta_naming_a_class_twice_is_refused() {
    let dir = tempdir().unwrap();
    let bin = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&bin).unwrap();
    for i in 1..=5 {
        std::fs::write(bin.join(format!("data_batch_{i}.bin")), cifar_records(2)).unwrap();
    }
    std::fs::write(bin.join("test_batch.bin"), cifar_records(2)).unwrap();
    let mut names = datasets::CIFAR10_CLASSES.map(String::from);
    std::fs::write(bin.join("batches.meta.txt"), names.join("\n")).unwrap();
    cifar10(Some(dir.path())).unwrap();
    names[9] = "cat".into();
    std::fs::write(bin.join("batches.meta.txt"), names.join("\n")).unwrap();
    let msg = chain(&cifar10(Some(dir.path())).unwrap_err());
    assert!(
        msg.contains("batches.meta.txt") && msg.contains("\"cat\" is named twice"),
        "{msg}"
    );
    let msg = chain(&datasets::cifar10_test_bin(&bin.join("test_batch.bin")).unwrap_err());
    assert!(msg.contains("batches.meta.txt"), "{msg}");
}

/// A `batches.meta.txt` saved with a byte-order mark names its first class without it; binary
/// batches without `test_batch.bin` are said to lack it, in a folder or an archive.
#[test]
fn cifar_meta_with_a_bom_and_a_missing_test_batch() {
    let dir = tempdir().unwrap();
    let bin = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&bin).unwrap();
    for i in 1..=5 {
        std::fs::write(bin.join(format!("data_batch_{i}.bin")), cifar_records(2)).unwrap();
    }
    let names = datasets::CIFAR10_CLASSES.join("\n");
    std::fs::write(bin.join("batches.meta.txt"), format!("\u{feff}{names}")).unwrap();
    let msg = chain(&cifar10(Some(dir.path())).unwrap_err());
    assert!(msg.contains("missing test_batch.bin"), "{msg}");
    let archive = dir.path().join("cifar-10-binary.tar.gz");
    tar_gz(&bin, &archive, "cifar-10-batches-bin");
    let only = tempdir().unwrap();
    std::fs::copy(&archive, only.path().join("cifar-10-binary.tar.gz")).unwrap();
    let msg = chain(&cifar10(Some(only.path())).unwrap_err());
    assert!(msg.contains("no test_batch.bin"), "{msg}");
    std::fs::write(bin.join("test_batch.bin"), cifar_records(2)).unwrap();
    let split = cifar10(Some(dir.path())).unwrap();
    assert_eq!(split.train.classes()[0], "airplane");
}

#[test]
fn image_folder_with_an_empty_test_split_names_it() {
    let dir = tempdir().unwrap();
    write_folder(dir.path(), &["train"], &["a", "b"], 2, 4, 4);
    for class in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join("test").join(class)).unwrap();
    }
    let msg = chain(&image_folder(dir.path(), &FolderOptions::default()).unwrap_err());
    assert!(
        msg.contains("test") && msg.contains("empty class folder"),
        "{msg}"
    );

    let flat = tempdir().unwrap();
    write_folder(flat.path(), &[""], &["a", "b"], 2, 4, 4);
    let none_held = FolderOptions {
        test_fraction: 0.0,
        ..FolderOptions::default()
    };
    let msg = chain(&image_folder(flat.path(), &none_held).unwrap_err());
    assert!(
        msg.contains("a test fraction of 0 holds out no image"),
        "{msg}"
    );
    // Two images a class: 20% of each rounds to none; the message says how many would do.
    let msg = chain(&image_folder(flat.path(), &FolderOptions::default()).unwrap_err());
    assert!(
        msg.contains("holding out 20% of each class (rounded)")
            && msg.contains("give a class 3 or more images"),
        "{msg}"
    );
}

#[test]
fn image_folder_train_emptied_by_the_fraction_is_refused() {
    let dir = tempdir().unwrap();
    write_folder(dir.path(), &[""], &["a", "b"], 1, 4, 4);
    let most = FolderOptions {
        test_fraction: 0.9,
        storage: Storage::Memory,
        ..FolderOptions::default()
    };
    let msg = chain(&image_folder(dir.path(), &most).unwrap_err());
    assert!(
        msg.contains(
            "holding out 90% of each class (rounded) as the test split leaves no training image"
        ) && msg.contains("hold out less"),
        "{msg}"
    );
}

#[test]
fn image_folder_test_images_of_another_size_name_the_test_folder() {
    let dir = tempdir().unwrap();
    write_folder(dir.path(), &["train"], &["a", "b"], 2, 4, 4);
    write_folder(dir.path(), &["test"], &["a", "b"], 1, 6, 4);
    let memory = FolderOptions {
        storage: Storage::Memory,
        ..FolderOptions::default()
    };
    let msg = chain(&image_folder(dir.path(), &memory).unwrap_err());
    let test_dir = dir.path().join("test").display().to_string();
    assert!(
        msg.contains(&format!("{test_dir}: test images are (3, 4, 6)")),
        "{msg}"
    );
}

#[test]
fn image_folder_class_sets_must_match() {
    let dir = tempdir().unwrap();
    write_folder(dir.path(), &["train"], &["a", "b", "c"], 1, 4, 4);
    write_folder(dir.path(), &["test"], &["a", "c"], 1, 4, 4);
    let msg = chain(&image_folder(dir.path(), &FolderOptions::default()).unwrap_err());
    let missing = dir.path().join("test").join("b").display().to_string();
    assert!(
        msg.contains(&format!("{missing}: missing or empty class folder")),
        "{msg}"
    );
    write_folder(dir.path(), &["test"], &["b", "d"], 1, 4, 4);
    let msg = chain(&image_folder(dir.path(), &FolderOptions::default()).unwrap_err());
    assert!(
        msg.contains("d: class folder not among the training classes"),
        "{msg}"
    );
    // An empty one too (it was ignored).
    std::fs::remove_dir_all(dir.path().join("test").join("d")).unwrap();
    std::fs::create_dir(dir.path().join("test").join("zebra")).unwrap();
    let msg = chain(&image_folder(dir.path(), &FolderOptions::default()).unwrap_err());
    assert!(
        msg.contains("zebra: class folder not among the training classes")
            && msg.contains("an empty folder"),
        "{msg}"
    );
}

fn gray(n: usize, shape: (usize, usize, usize), classes: &[&str]) -> Arc<InMemory> {
    let (c, h, w) = shape;
    let names = classes.iter().map(|s| s.to_string()).collect();
    Arc::new(InMemory::new(vec![0; n * c * h * w], vec![0u8; n], shape, names).unwrap())
}

#[test]
fn split_check_compares_channels_and_classes() {
    let check = |train, test| {
        let split = Split { train, test };
        chain(&split.check("TRAIN", "TEST").unwrap_err())
    };
    let msg = check(
        gray(2, (1, 4, 4), &["x", "y"]),
        gray(2, (3, 4, 4), &["x", "y"]),
    );
    assert!(
        msg.starts_with("TEST: test images are (3, 4, 4)") && msg.contains("TRAIN"),
        "{msg}"
    );
    let msg = check(
        gray(2, (1, 4, 4), &["x", "y"]),
        gray(2, (1, 4, 4), &["x", "z"]),
    );
    assert!(msg.starts_with("TEST: the test classes"), "{msg}");
    let msg = check(
        gray(2, (1, 4, 4), &["x", "x"]),
        gray(2, (1, 4, 4), &["x", "x"]),
    );
    assert!(
        msg.starts_with("TRAIN: class name \"x\" appears twice"),
        "{msg}"
    );
    let split = Split {
        train: gray(2, (1, 4, 4), &["x", "y"]),
        test: gray(1, (1, 4, 4), &["x", "y"]),
    };
    split.check("TRAIN", "TEST").unwrap();
}
