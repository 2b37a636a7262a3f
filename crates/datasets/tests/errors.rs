//! Bad input gives an error naming the file and the problem, never a panic.

mod common;

use common::*;
use datasets::{cifar10, cifar10_test_bin, image_folder, mnist, Dataset, FolderOptions, Storage};
use std::path::Path;
use tempfile::tempdir;

fn mnist_err(dir: &Path) -> String {
    chain(&mnist(Some(dir)).unwrap_err())
}

#[test]
fn mnist_valid_raw_and_gz() {
    for gz in [false, true] {
        let dir = tempdir().unwrap();
        write_mnist(dir.path(), 30, 12, gz);
        let split = mnist(Some(dir.path())).unwrap();
        assert_eq!((split.train.len(), split.test.len()), (30, 12));
        assert_eq!(split.train.label(13), 3);
        let img = split.test.image(1).unwrap();
        assert_eq!(img.shape(), (1, 4, 3));
        assert_eq!(img.data, (12..24).map(|v| v as u8).collect::<Vec<_>>());
    }
}

/// A pair of IDX files is read in one form: the raw pair where both raw files are there
/// (torchvision's choice; it keeps the `.gz` downloads beside them), else the `.gz` pair, so a
/// stray raw label file beside four `.gz` files is not paired with the `.gz` images.
#[test]
fn mnist_pairs_are_read_in_one_form() {
    let dir = tempdir().unwrap();
    write_mnist(dir.path(), 30, 12, true);
    // Labels all 9 in a raw training label file beside the .gz ones (labels i % 10).
    let stray = dir.path().join("train-labels-idx1-ubyte");
    write_idx_labels(&stray, 0x801, &[9; 30], false);
    let split = mnist(Some(dir.path())).unwrap();
    assert_eq!(
        split.train.label(13),
        3,
        "the stray raw label file was read"
    );
    // With the raw images too, the raw pair is read.
    write_idx_images(
        &dir.path().join("train-images-idx3-ubyte"),
        0x803,
        30,
        4,
        3,
        false,
    );
    let split = mnist(Some(dir.path())).unwrap();
    assert_eq!(split.train.label(13), 9, "the raw pair was not read");
}

#[test]
fn mnist_wrong_magic() {
    let dir = tempdir().unwrap();
    write_mnist(dir.path(), 5, 5, false);
    let bad = dir.path().join("train-images-idx3-ubyte");
    write_idx_images(&bad, 0x801, 5, 4, 3, false);
    let msg = mnist_err(dir.path());
    assert!(
        msg.contains("train-images-idx3-ubyte") && msg.contains("magic"),
        "{msg}"
    );
}

#[test]
fn mnist_truncated() {
    let dir = tempdir().unwrap();
    write_mnist(dir.path(), 5, 5, false);
    let path = dir.path().join("t10k-images-idx3-ubyte");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
    let msg = mnist_err(dir.path());
    assert!(
        msg.contains("t10k-images-idx3-ubyte") && msg.contains("truncated"),
        "{msg}"
    );
    std::fs::write(&path, &bytes[..10]).unwrap();
    let msg = mnist_err(dir.path());
    assert!(msg.contains("truncated IDX header"), "{msg}");
}

#[test]
fn mnist_truncated_gzip() {
    let dir = tempdir().unwrap();
    write_mnist(dir.path(), 50, 5, true);
    let path = dir.path().join("train-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = mnist_err(dir.path());
    assert!(
        msg.contains("train-images-idx3-ubyte.gz") && msg.contains("gzip"),
        "{msg}"
    );
}

#[test]
fn mnist_count_mismatch() {
    let dir = tempdir().unwrap();
    write_mnist(dir.path(), 5, 5, false);
    write_idx_labels(
        &dir.path().join("train-labels-idx1-ubyte"),
        0x801,
        &[1, 2, 3],
        false,
    );
    let msg = mnist_err(dir.path());
    assert!(
        msg.contains("mismatch") && msg.contains("train-labels-idx1-ubyte"),
        "{msg}"
    );
}

#[test]
fn mnist_label_out_of_range() {
    let dir = tempdir().unwrap();
    write_mnist(dir.path(), 5, 5, false);
    write_idx_labels(
        &dir.path().join("t10k-labels-idx1-ubyte"),
        0x801,
        &[1, 2, 10, 3, 4],
        false,
    );
    let msg = mnist_err(dir.path());
    assert!(
        msg.contains("t10k-labels-idx1-ubyte") && msg.contains("label 10"),
        "{msg}"
    );
}

#[test]
fn mnist_missing_file_and_missing_dir() {
    let dir = tempdir().unwrap();
    write_mnist(dir.path(), 5, 5, false);
    std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte")).unwrap();
    let msg = mnist_err(dir.path());
    assert!(
        msg.contains("t10k-labels-idx1-ubyte") && msg.contains("not found"),
        "{msg}"
    );
    let gone = dir.path().join("nope");
    let msg = mnist_err(&gone);
    assert!(
        msg.contains("nope")
            && msg.contains("does not exist")
            && msg.contains("the four MNIST IDX files"),
        "{msg}"
    );
    // A folder by the file's name is there, not missing.
    std::fs::create_dir(dir.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let msg = mnist_err(dir.path());
    assert!(
        msg.contains("t10k-labels-idx1-ubyte.gz is a directory, not MNIST's IDX file"),
        "{msg}"
    );
    // Kaggle's layout: each file in a folder of its name.
    std::fs::write(
        dir.path()
            .join("t10k-labels-idx1-ubyte.gz/t10k-labels-idx1-ubyte"),
        b"x",
    )
    .unwrap();
    let msg = mnist_err(dir.path());
    assert!(
        msg.contains("is a directory holding MNIST's t10k-labels-idx1-ubyte"),
        "{msg}"
    );
}

/// A pipe given as the data set's root (an archive's name, say) is named as what it is, for
/// every data set, and never opened.
#[test]
fn a_pipe_as_the_data_root_is_named() {
    let dir = tempdir().unwrap();
    let fifo = dir.path().join("cifar-10-binary.tar.gz");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    for msg in [
        chain(&cifar10(Some(&fifo)).unwrap_err()),
        mnist_err(&fifo),
        chain(&image_folder(&fifo, &FolderOptions::default()).expect_err("an error")),
    ] {
        assert!(
            msg.contains("cifar-10-binary.tar.gz is a pipe, not a data set's folder or file"),
            "{msg}"
        );
    }
}

#[test]
fn cifar_wrong_size_and_bad_label() {
    let dir = tempdir().unwrap();
    let path = dir.path().join("test_batch.bin");
    let mut records = cifar_records(3);
    records.pop();
    std::fs::write(&path, &records).unwrap();
    let msg = chain(&cifar10_test_bin(&path).unwrap_err());
    assert!(
        msg.contains("test_batch.bin") && msg.contains("3073"),
        "{msg}"
    );
    let mut records = cifar_records(3);
    records[3073] = 11;
    std::fs::write(&path, &records).unwrap();
    let msg = chain(&cifar10_test_bin(&path).unwrap_err());
    assert!(
        msg.contains("test_batch.bin") && msg.contains("label 11"),
        "{msg}"
    );
    std::fs::write(&path, []).unwrap();
    let msg = chain(&cifar10_test_bin(&path).unwrap_err());
    assert!(msg.contains("empty"), "{msg}");
}

/// A batch file that is a pipe (or a folder) is there, not missing: named as what it is, and
/// never opened (a pipe without a writer would block the read).
#[test]
fn cifar_batch_that_is_a_pipe_or_folder_is_named() {
    let dir = tempdir().unwrap();
    let bin = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&bin).unwrap();
    for n in 1..=4 {
        std::fs::write(bin.join(format!("data_batch_{n}.bin")), cifar_records(3)).unwrap();
    }
    let status = std::process::Command::new("mkfifo")
        .arg(bin.join("data_batch_5.bin"))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::create_dir(bin.join("test_batch.bin")).unwrap();
    for msg in [
        chain(&cifar10(Some(dir.path())).unwrap_err()),
        chain(
            &datasets::catalog::load_test(&datasets::catalog::CIFAR10, Some(dir.path()))
                .err()
                .expect("an error"),
        ),
    ] {
        assert!(
            msg.contains("data_batch_5.bin, test_batch.bin not a regular file")
                && !msg.contains("missing"),
            "{msg}"
        );
    }
}

#[test]
fn cifar_only_test_batch_names_missing_batches() {
    let dir = tempdir().unwrap();
    let bin = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("test_batch.bin"), cifar_records(4)).unwrap();
    let msg = chain(&cifar10(Some(dir.path())).unwrap_err());
    assert!(
        msg.contains("data_batch_1.bin")
            && msg.contains("data_batch_5.bin")
            && msg.contains("--data-dir")
            && !msg.contains("cifar10_test_bin"),
        "{msg}"
    );
    let test = cifar10_test_bin(&bin.join("test_batch.bin")).unwrap();
    assert_eq!(test.len(), 4);
}

/// The test split alone (`catalog::load_test`, what `evaluate` reads) is the whole split's test
/// half, and MNIST's `t10k` files or CIFAR-10's `test_batch.bin` suffice for it; without
/// them the error names the missing file.
#[test]
fn the_test_split_alone_needs_only_the_test_files() {
    use datasets::catalog::{load_test, CIFAR10, MNIST};
    let same = |a: &dyn Dataset, b: &dyn Dataset| {
        assert_eq!(a.len(), b.len());
        assert_eq!(a.classes(), b.classes());
        for i in 0..a.len() {
            assert_eq!(a.label(i), b.label(i));
            assert_eq!(a.image(i).unwrap().data, b.image(i).unwrap().data);
        }
    };
    let dir = tempdir().unwrap();
    let raw = dir.path().join("MNIST").join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    write_mnist(&raw, 30, 12, true);
    let whole = mnist(Some(dir.path())).unwrap();
    same(
        whole.test.as_ref(),
        load_test(&MNIST, Some(dir.path())).unwrap().as_ref(),
    );
    for file in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"] {
        std::fs::remove_file(raw.join(file)).unwrap();
    }
    same(
        whole.test.as_ref(),
        load_test(&MNIST, Some(dir.path())).unwrap().as_ref(),
    );
    // Stray test files in the directory itself, the four files in MNIST/raw: the test files
    // beside the training files are read, as the whole split reads them.
    write_mnist(&raw, 30, 12, true);
    write_mnist(dir.path(), 5, 5, false);
    for file in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"] {
        std::fs::remove_file(dir.path().join(file)).unwrap();
    }
    same(
        mnist(Some(dir.path())).unwrap().test.as_ref(),
        whole.test.as_ref(),
    );
    same(
        whole.test.as_ref(),
        load_test(&MNIST, Some(dir.path())).unwrap().as_ref(),
    );
    for file in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        std::fs::remove_file(dir.path().join(file)).unwrap();
    }
    for file in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"] {
        std::fs::remove_file(raw.join(file)).unwrap();
    }
    std::fs::remove_file(raw.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let msg = chain(&load_test(&MNIST, Some(dir.path())).err().expect("an error"));
    assert!(msg.contains("t10k-labels-idx1-ubyte"), "{msg}");

    let dir = tempdir().unwrap();
    let bin = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&bin).unwrap();
    for n in 1..=5 {
        std::fs::write(bin.join(format!("data_batch_{n}.bin")), cifar_records(3)).unwrap();
    }
    std::fs::write(bin.join("test_batch.bin"), cifar_records(7)).unwrap();
    let whole = cifar10(Some(dir.path())).unwrap();
    same(
        whole.test.as_ref(),
        load_test(&CIFAR10, Some(dir.path())).unwrap().as_ref(),
    );
    for n in 1..=5 {
        std::fs::remove_file(bin.join(format!("data_batch_{n}.bin"))).unwrap();
    }
    same(
        whole.test.as_ref(),
        load_test(&CIFAR10, Some(dir.path())).unwrap().as_ref(),
    );
    std::fs::remove_file(bin.join("test_batch.bin")).unwrap();
    let msg = chain(
        &load_test(&CIFAR10, Some(dir.path()))
            .err()
            .expect("an error"),
    );
    assert!(msg.contains("no CIFAR-10 data found"), "{msg}");

    // An ImageFolder (CIFAR-10's, or one's own with val/): its test folder alone once train/
    // is gone.
    use datasets::catalog::FOLDER;
    for (spec, classes, test_dir) in [
        (&CIFAR10, datasets::CIFAR10_CLASSES.to_vec(), "test"),
        (&FOLDER, vec!["cat", "dog"], "val"),
    ] {
        let dir = tempdir().unwrap();
        for (split, n) in [("train", 2u8), (test_dir, 3)] {
            for (c, class) in classes.iter().enumerate() {
                let folder = dir.path().join(split).join(class);
                std::fs::create_dir_all(&folder).unwrap();
                for i in 0..n {
                    pattern_rgb(32, 32, 20 * c as u8 + i)
                        .save(folder.join(format!("{i}.png")))
                        .unwrap();
                }
            }
        }
        let whole = datasets::catalog::load(spec, Some(dir.path())).unwrap();
        same(
            whole.test.as_ref(),
            load_test(spec, Some(dir.path())).unwrap().as_ref(),
        );
        std::fs::remove_dir_all(dir.path().join("train")).unwrap();
        let test = load_test(spec, Some(dir.path())).unwrap();
        same(whole.test.as_ref(), test.as_ref());
        assert_eq!(test.len(), 3 * classes.len());
        // An empty class folder there is named as such, with no training split to speak of.
        let emptied = dir.path().join(test_dir).join(classes[1]);
        let aside = tempdir().unwrap();
        let kept = aside.path().join("kept");
        std::fs::rename(&emptied, &kept).unwrap();
        std::fs::create_dir(&emptied).unwrap();
        let msg = chain(&load_test(spec, Some(dir.path())).err().expect("an error"));
        assert!(
            msg.contains(&format!("{}: empty class folder", emptied.display()))
                && msg.contains("every class folder needs at least one image")
                && !msg.contains("training"),
            "{msg}"
        );
        std::fs::remove_dir(&emptied).unwrap();
        std::fs::rename(&kept, &emptied).unwrap();
        if spec.name == "cifar10" {
            // Beside a CIFAR-10 archive, which the whole read takes first, the folder is not
            // read alone: the archive's error shows it was the one read.
            std::fs::write(dir.path().join("cifar-10.tar.gz"), b"not gzip").unwrap();
            let msg = chain(&load_test(spec, Some(dir.path())).err().expect("an error"));
            assert!(msg.contains("cifar-10.tar.gz"), "{msg}");
        }
    }
}

#[test]
fn cifar_nothing_found() {
    let dir = tempdir().unwrap();
    let msg = chain(&cifar10(Some(dir.path())).unwrap_err());
    assert!(msg.contains("no CIFAR-10 data found"), "{msg}");
}

#[test]
fn corrupt_jpeg_names_the_file() {
    let dir = tempdir().unwrap();
    write_folder(dir.path(), &["train", "test"], &["a", "b"], 2, 4, 4);
    let bad = dir.path().join("train").join("b").join("zz.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap();
    let split = image_folder(dir.path(), &FolderOptions::default()).unwrap();
    let last = split.train.len() - 1;
    let msg = chain(&split.train.image(last).unwrap_err());
    assert!(msg.contains("zz.jpg") && msg.contains("decode"), "{msg}");
    let memory = FolderOptions {
        storage: Storage::Memory,
        ..FolderOptions::default()
    };
    let msg = chain(&image_folder(dir.path(), &memory).unwrap_err());
    assert!(msg.contains("zz.jpg"), "{msg}");
}

#[test]
fn empty_class_folder() {
    let dir = tempdir().unwrap();
    write_folder(dir.path(), &[""], &["cat", "dog"], 2, 4, 4);
    std::fs::create_dir(dir.path().join("emu")).unwrap();
    let msg = chain(&image_folder(dir.path(), &FolderOptions::default()).unwrap_err());
    assert!(
        msg.contains("emu") && msg.contains("empty class folder"),
        "{msg}"
    );
}

#[test]
fn no_images_found() {
    let dir = tempdir().unwrap();
    std::fs::create_dir(dir.path().join("cat")).unwrap();
    std::fs::write(dir.path().join("cat").join("notes.txt"), "hi").unwrap();
    let msg = chain(&image_folder(dir.path(), &FolderOptions::default()).unwrap_err());
    assert!(msg.contains("no images found"), "{msg}");
    assert!(!msg.contains("holds"), "{msg}");
    // A folder with the tree as an archive beside it (CIFAR-10's folder): the archive named.
    let archive = dir.path().join("images.tar.gz");
    std::fs::write(&archive, "not read").unwrap();
    let msg = chain(&image_folder(dir.path(), &FolderOptions::default()).unwrap_err());
    assert!(
        msg.contains("no images found")
            && msg.contains(&format!(
                "it holds {}: give that archive",
                archive.display()
            )),
        "{msg}"
    );
}

#[test]
fn folder_path_does_not_exist() {
    let dir = tempdir().unwrap();
    let gone = dir.path().join("missing.tar.gz");
    let msg = chain(&image_folder(&gone, &FolderOptions::default()).unwrap_err());
    assert!(
        msg.contains("missing.tar.gz") && msg.contains("does not exist"),
        "{msg}"
    );
}

#[test]
fn memory_storage_needs_one_size() {
    let dir = tempdir().unwrap();
    write_folder(dir.path(), &[""], &["a", "b"], 3, 4, 4);
    save_png(
        &pattern_rgb(5, 4, 0),
        &dir.path().join("b").join("wide.png"),
    );
    let memory = FolderOptions {
        storage: Storage::Memory,
        ..FolderOptions::default()
    };
    let msg = chain(&image_folder(dir.path(), &memory).unwrap_err());
    assert!(
        msg.contains("wide.png") && msg.contains("one size"),
        "{msg}"
    );
}

#[test]
fn corrupt_archive() {
    let dir = tempdir().unwrap();
    let path = dir.path().join("data.tar.gz");
    std::fs::write(&path, b"\x1f\x8b\x08\x00garbage").unwrap();
    let msg = chain(&image_folder(&path, &FolderOptions::default()).unwrap_err());
    assert!(
        msg.contains("data.tar.gz") && msg.contains("archive"),
        "{msg}"
    );
}

#[test]
fn cifar_folder_with_only_train_says_the_splits_go_together() {
    let dir = tempdir().unwrap();
    write_folder(
        dir.path(),
        &["train"],
        &datasets::CIFAR10_CLASSES,
        1,
        32,
        32,
    );
    let msg = chain(&cifar10(Some(dir.path())).unwrap_err());
    assert!(
        msg.contains("the one folder there is train/, taken as a class")
            && msg.contains("train/ and test/ (or val/) together"),
        "{msg}"
    );
}

#[test]
fn image_folder_with_only_one_split_folder_says_the_splits_go_together() {
    for only in ["train", "test", "val"] {
        let dir = tempdir().unwrap();
        write_folder(dir.path(), &[only], &["cat", "dog"], 5, 8, 8);
        let msg = chain(&image_folder(dir.path(), &FolderOptions::default()).unwrap_err());
        assert!(
            msg.contains(&format!(
                "the one folder there is {only}/, taken as a class"
            )) && msg.contains("train/ and test/ (or val/) together")
                && msg.contains(&dir.path().display().to_string()),
            "{msg}"
        );
    }
    let dir = tempdir().unwrap();
    write_folder(dir.path(), &["test", "val"], &["cat", "dog"], 5, 8, 8);
    let msg = chain(&image_folder(dir.path(), &FolderOptions::default()).unwrap_err());
    assert!(
        msg.contains("the folders there are test/ and val/, taken as classes"),
        "{msg}"
    );
    // A folder named like a split beside a class folder is a class like any other.
    let dir = tempdir().unwrap();
    write_folder(dir.path(), &[""], &["test", "dog"], 5, 8, 8);
    let split = image_folder(dir.path(), &FolderOptions::default()).unwrap();
    assert_eq!(split.train.classes(), ["dog", "test"]);
}

/// Splits named otherwise than `train/` and `test/` (or `val/`), holding class folders, would
/// be read as classes (a "train against test" classifier): refused, naming them. A folder
/// beside `train/` and `test/` would not be read: refused, naming it.
#[test]
fn misnamed_splits_and_folders_beside_the_splits_are_refused() {
    for (splits, named, rename) in [
        (
            ["Train", "Test"],
            "Test/ and Train/ are named as a split",
            "(rename Test/ to test/ and Train/ to train/)",
        ),
        (
            ["train", "validation"],
            "train/ and validation/ are named",
            "(rename validation/ to val/)",
        ),
        (
            ["TRAINING", "Val"],
            "TRAINING/ and Val/ are named",
            "(rename TRAINING/ to train/ and Val/ to val/)",
        ),
    ] {
        let dir = tempdir().unwrap();
        write_folder(dir.path(), &splits, &["cat", "dog"], 3, 8, 8);
        let msg = chain(&image_folder(dir.path(), &FolderOptions::default()).unwrap_err());
        assert!(
            msg.contains(named)
                && msg.contains(rename)
                && msg.contains("would be read as one class")
                && msg.contains(&dir.path().display().to_string()),
            "{msg}"
        );
    }
    // A test/ of class folders beside the class folders: one misnamed split.
    let dir = tempdir().unwrap();
    write_folder(dir.path(), &[""], &["cat", "dog"], 3, 8, 8);
    write_folder(dir.path(), &["test"], &["cat", "dog"], 2, 8, 8);
    let msg = chain(&image_folder(dir.path(), &FolderOptions::default()).unwrap_err());
    assert!(
        msg.contains("test/ is named as a split and holds folders"),
        "{msg}"
    );
    // A folder beside train/ and test/.
    let dir = tempdir().unwrap();
    write_folder(dir.path(), &["train", "test"], &["cat", "dog"], 3, 8, 8);
    write_folder(dir.path(), &[""], &["extra"], 2, 8, 8);
    let msg = chain(&image_folder(dir.path(), &FolderOptions::default()).unwrap_err());
    assert!(
        msg.contains("extra/ beside train/ and test/, which hold the split, would not be read"),
        "{msg}"
    );
    // ... but not a folder without images (a run's --out, notes), nor a third split
    // (train/, val/ and test/: test/ is read).
    std::fs::remove_dir_all(dir.path().join("extra")).unwrap();
    std::fs::create_dir_all(dir.path().join("runs").join("a-run")).unwrap();
    std::fs::write(
        dir.path().join("runs").join("a-run").join("config.json"),
        "{}",
    )
    .unwrap();
    // A run beside the splits holds its pictures (curves.png, ...): no class's images. So
    // does one given as --out ROOT/NAME (its state, once the config is gone).
    for png in ["curves.png", "confusion.png"] {
        std::fs::copy(
            dir.path().join("train").join("cat").join("000.png"),
            dir.path().join("runs").join("a-run").join(png),
        )
        .unwrap();
    }
    std::fs::create_dir_all(dir.path().join("other-run")).unwrap();
    std::fs::write(dir.path().join("other-run").join("state.safetensors"), "").unwrap();
    std::fs::copy(
        dir.path().join("train").join("cat").join("000.png"),
        dir.path().join("other-run").join("curves.png"),
    )
    .unwrap();
    let split = image_folder(dir.path(), &FolderOptions::default()).unwrap();
    assert_eq!(split.train.classes(), ["cat", "dog"]);
    let dir = tempdir().unwrap();
    write_folder(
        dir.path(),
        &["train", "val", "test"],
        &["cat", "dog"],
        3,
        8,
        8,
    );
    let split = image_folder(dir.path(), &FolderOptions::default()).unwrap();
    assert_eq!(split.test.len(), 6);
}

#[test]
fn bench_pipeline_refuses_a_worker_count_out_of_range() {
    for workers in ["0", "100000", "two"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bench-pipeline"))
            .arg(workers)
            .env_remove("CNN_SHARED_DIR")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("WORKERS must be a whole number from 1 to 256"),
            "{workers}: {err}"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bench-pipeline"))
        .args(["1", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("\"2\" is one too many"),
        "{err}"
    );
    // The flags: each bad one named, before any benchmark runs.
    let anchors = tempfile::tempdir().unwrap();
    let missing = anchors.path().display().to_string();
    for (args, says) in [
        (
            vec!["--rounds", "0"],
            "--rounds must be a whole number from 1 to 100, not \"0\"",
        ),
        (vec!["--rounds"], "--rounds needs a value"),
        (vec!["--bogus"], "unknown flag \"--bogus\""),
        (
            vec!["--anchors", "--rounds", "3"],
            "--anchors needs a value",
        ),
        (
            vec!["--anchors", "dir"],
            "--anchors names the folder of cpu_pipeline.py",
        ),
        (
            vec!["--compare-pytorch", "python3", "--anchors", &missing],
            "cpu_pipeline.py is not there",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bench-pipeline"))
            .args(&args)
            .env_remove("CNN_SHARED_DIR")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says) && out.stdout.is_empty(),
            "{args:?}: {err}"
        );
    }
}

/// A small gzipped IDX file that unpacks to far more than its header says is stopped at the
/// header's size, not unpacked whole into memory.
#[test]
fn mnist_gzip_bomb_is_stopped_at_the_header_size() {
    use std::io::Write;
    let dir = tempdir().unwrap();
    write_mnist(dir.path(), 30, 12, true);
    let path = dir.path().join("train-images-idx3-ubyte.gz");
    let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 30, 0, 0, 0, 4, 0, 0, 0, 3];
    bytes.resize((64 << 20) + 16, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&bytes).unwrap();
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
    let msg = mnist_err(dir.path());
    assert!(
        msg.contains("train-images-idx3-ubyte.gz")
            && msg.contains("unpacks to more than the 376 bytes its header says"),
        "{msg}"
    );
}

/// The training images of a folder, none held out: a flat folder too small to split (one image
/// a class) gives them all; a train/ + test/ layout gives train/'s.
#[test]
fn image_folder_training_holds_nothing_out() {
    let flat = tempdir().unwrap();
    write_folder(flat.path(), &[""], &["cat", "dog"], 1, 8, 8);
    assert!(image_folder(flat.path(), &FolderOptions::default()).is_err());
    let all = datasets::image_folder_training(flat.path(), Storage::Files).unwrap();
    assert_eq!(
        (all.len(), all.classes()),
        (2, &["cat".to_string(), "dog".into()][..])
    );
    let split = tempdir().unwrap();
    write_folder(split.path(), &["train", "test"], &["cat", "dog"], 3, 8, 8);
    let train = datasets::image_folder_training(split.path(), Storage::Files).unwrap();
    assert_eq!(train.len(), 6);
    let alone = tempdir().unwrap();
    write_folder(alone.path(), &["train"], &["cat", "dog", "emu"], 1, 8, 8);
    let train = datasets::image_folder_training(alone.path(), Storage::Files).unwrap();
    assert_eq!((train.len(), train.classes().len()), (3, 3));
}

/// Files far larger than what they hold can be (sparse here: 200 GB that take no disk) are
/// refused naming the file, before they are read whole, where reading them took the memory and
/// ended the process with an out-of-memory message that named no file.
#[test]
fn files_larger_than_their_kind_can_be_are_refused_unread() {
    const HUGE: u64 = 200 << 30;
    let grow = |path: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(HUGE)
            .unwrap();
    };
    let dir = tempdir().unwrap();
    write_mnist(dir.path(), 4, 2, false);
    let labels = dir.path().join("train-labels-idx1-ubyte");
    grow(&labels);
    let msg = mnist_err(dir.path());
    assert!(
        msg.contains("train-labels-idx1-ubyte") && msg.contains("unexpected trailing bytes"),
        "{msg}"
    );

    let batch = dir.path().join("test_batch.bin");
    std::fs::write(&batch, cifar_records(2)).unwrap();
    grow(&batch);
    let msg = chain(&cifar10_test_bin(&batch).unwrap_err());
    assert!(
        msg.contains("test_batch.bin") && msg.contains("more than a CIFAR-10 binary batch can be"),
        "{msg}"
    );

    let tree = dir.path().join("tree");
    write_folder(&tree, &["train", "test"], &["a", "b"], 2, 4, 4);
    let big = tree.join("train").join("b").join("001.png");
    grow(&big);
    let lazy = image_folder(&tree, &FolderOptions::default()).unwrap();
    let msg = chain(&lazy.train.image(lazy.train.len() - 1).unwrap_err());
    assert!(
        msg.contains("001.png") && msg.contains("too large for an image"),
        "{msg}"
    );
    let msg = chain(&datasets::read_image_file(&big).unwrap_err());
    assert!(msg.contains("001.png") && msg.contains("GiB"), "{msg}");
}

/// torchvision's download of CIFAR-10 (the Python version, `cifar-10-batches-py/`) with batches
/// missing names them, not "no CIFAR-10 data found"; a batch that is no CIFAR-10 pickle is named.
#[test]
fn cifar_python_version_with_missing_or_wrong_batches_is_named() {
    let dir = tempdir().unwrap();
    let py = dir.path().join("cifar-10-batches-py");
    std::fs::create_dir(&py).unwrap();
    for name in ["data_batch_1", "batches.meta", "test_batch"] {
        std::fs::write(py.join(name), b"\x80\x02}q\x00.").unwrap();
    }
    for given in [dir.path(), py.as_path()] {
        let msg = format!("{:#}", cifar10(Some(given)).expect_err("an error"));
        assert!(
            msg.contains("incomplete CIFAR-10 Python batches")
                && msg.contains("missing data_batch_2, data_batch_3, data_batch_4, data_batch_5"),
            "{msg}"
        );
    }
    for n in 2..=5 {
        std::fs::write(py.join(format!("data_batch_{n}")), b"\x80\x02}q\x00.").unwrap();
    }
    let msg = format!("{:#}", cifar10(Some(dir.path())).expect_err("an error"));
    assert!(
        msg.contains("batches.meta") && msg.contains("no list `label_names`"),
        "{msg}"
    );
    std::fs::remove_file(py.join("batches.meta")).unwrap();
    let msg = format!("{:#}", cifar10(Some(dir.path())).expect_err("an error"));
    assert!(
        msg.contains("data_batch_1")
            && msg.contains("has no keys, not CIFAR-10's `data` and `labels`"),
        "{msg}"
    );
}

/// The held-out share is said as a percentage without float noise when it holds out no image.
#[test]
fn a_tiny_held_out_share_is_said_without_float_noise() {
    let dir = tempdir().unwrap();
    write_folder(dir.path(), &[""], &["b", "c"], 4, 8, 8);
    let tiny = FolderOptions {
        test_fraction: 1e-9,
        ..FolderOptions::default()
    };
    let msg = chain(&image_folder(dir.path(), &tiny).unwrap_err());
    assert!(msg.contains("holding out 1.0e-7% of each class"), "{msg}");
}

/// A class folder whose only images are hidden (`.x.png`, macOS's `._x.png`) is empty to the
/// reader, and the message says hidden files are not counted.
#[test]
fn a_class_folder_of_hidden_images_is_empty_and_says_why() {
    let dir = tempdir().unwrap();
    write_folder(dir.path(), &["train", "test"], &["a", "b"], 2, 8, 8);
    let hidden = dir.path().join("train").join("a");
    for k in 0..2 {
        let name = format!("{k:03}.png");
        std::fs::rename(hidden.join(&name), hidden.join(format!(".{name}"))).unwrap();
    }
    let msg = chain(&image_folder(dir.path(), &FolderOptions::default()).unwrap_err());
    assert!(
        msg.contains(&format!("{}: empty class folder", hidden.display()))
            && msg.contains("hidden files such as .x.jpg not counted"),
        "{msg}"
    );
}

/// A `--data-dir` one folder above the data (the folder holding `mnist/` or `cifar10/`, as a
/// torchvision user passes `root`) is refused naming the folder to give instead.
#[test]
fn a_data_set_one_folder_down_is_named() {
    let dir = tempdir().unwrap();
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let mnist_dir = dir.path().join("mnist");
    std::fs::create_dir(&mnist_dir).unwrap();
    write_mnist(&mnist_dir, 10, 4, true);
    let msg = mnist_err(dir.path());
    assert!(
        msg.contains(&format!(
            "not found in {}; it is in {}: give --data-dir that folder",
            dir.path().display(),
            mnist_dir.display()
        )),
        "{msg}"
    );
    assert_eq!(mnist(Some(&mnist_dir)).unwrap().test.len(), 4);

    let bin = dir.path().join("cifar10").join("cifar-10-batches-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for n in 1..=5 {
        std::fs::write(bin.join(format!("data_batch_{n}.bin")), cifar_records(3)).unwrap();
    }
    std::fs::write(bin.join("test_batch.bin"), cifar_records(2)).unwrap();
    let Err(err) = cifar10(Some(dir.path())) else {
        panic!("read CIFAR-10 from the folder above it");
    };
    let msg = chain(&err);
    assert!(
        msg.contains(&format!(
            "no CIFAR-10 data found (expected data_batch_1..5.bin + test_batch.bin, \
             cifar-10-batches-bin/, the Python version's data_batch_1..5 + test_batch or \
             cifar-10-batches-py/, train/ + test/ class folders, or a *cifar*.tar.gz archive); \
             {} holds CIFAR-10: give --data-dir that folder",
            dir.path().join("cifar10").display()
        )),
        "{msg}"
    );
    assert_eq!(
        cifar10(Some(&dir.path().join("cifar10")))
            .unwrap()
            .test
            .len(),
        2
    );
}
