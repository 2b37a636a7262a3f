//! Folder walks end on any tree and never block: link cycles are entered once, FIFOs and other
//! special files are never opened (refused when named as images, else passed over).

#![cfg(unix)]

mod common;

use common::*;
use datasets::{image_folder, FolderOptions, Split};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;
use tempfile::tempdir;

/// Loads the ImageFolder at `root` on a thread; fails if that takes more than 10 seconds.
fn load_within_seconds(root: &Path) -> anyhow::Result<Split> {
    let (send, receive) = std::sync::mpsc::channel();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        let _ = send.send(image_folder(&root, &FolderOptions::default()));
    });
    receive
        .recv_timeout(Duration::from_secs(10))
        .expect("the folder walk did not finish within 10 s")
}

#[test]
fn two_links_to_parents_in_a_class_folder_end_the_walk() {
    let dir = tempdir().unwrap();
    let root = write_folder(dir.path(), &["train", "test"], &["a", "b"], 2, 4, 4);
    let class = root.join("train").join("a");
    symlink("..", class.join("up")).unwrap();
    symlink("../..", class.join("top")).unwrap();
    symlink(".", class.join("self")).unwrap();
    let split = load_within_seconds(&root).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (4, 4));
    assert_eq!(split.train.classes(), ["a", "b"]);
}

#[test]
fn a_linked_folder_counts_once_at_its_real_place() {
    let dir = tempdir().unwrap();
    let root = write_folder(dir.path(), &["train", "test"], &["a", "b"], 2, 4, 4);
    symlink(
        root.join("train").join("b"),
        root.join("train").join("a").join("b-again"),
    )
    .unwrap();
    let split = load_within_seconds(&root).unwrap();
    assert_eq!(
        split.train.len(),
        4,
        "b's images are not also counted under a"
    );
    let labels: Vec<usize> = (0..4).map(|i| split.train.label(i)).collect();
    assert_eq!(labels, [0, 0, 1, 1]);
}

/// A class folder that links to another class's folder (torchvision's ImageFolder reads the
/// images again as the second class): it holds none here, and the refusal says it is a link to
/// a folder already read, not that it is empty.
#[test]
fn a_class_linked_to_another_class_is_named_as_a_link() {
    let dir = tempdir().unwrap();
    let root = write_folder(dir.path(), &[""], &["a", "b"], 3, 4, 4);
    symlink("a", root.join("c")).unwrap();
    let msg = chain(&load_within_seconds(&root).unwrap_err());
    let real_a = root.join("a").canonicalize().unwrap();
    assert!(
        msg.contains(&format!(
            "{}: a link to the folder {}, already read as {}",
            root.join("c").display(),
            real_a.display(),
            root.join("a").display()
        )),
        "{msg}"
    );
    // A link to an empty folder is an empty class folder, as before.
    std::fs::remove_file(root.join("c")).unwrap();
    std::fs::create_dir(dir.path().join("nothing")).unwrap();
    symlink(dir.path().join("nothing"), root.join("c")).unwrap();
    let msg = chain(&load_within_seconds(&root).unwrap_err());
    assert!(
        msg.contains(&format!("{}: empty class folder", root.join("c").display())),
        "{msg}"
    );
}

/// `test/` a link to `train/`: its class folders are the training ones, read once, and the
/// refusal says so (not that a full folder is empty).
#[test]
fn a_test_split_linked_to_the_training_split_is_named_as_a_link() {
    let dir = tempdir().unwrap();
    let root = write_folder(dir.path(), &["train"], &["a", "b"], 2, 4, 4);
    symlink("train", root.join("test")).unwrap();
    let msg = chain(&load_within_seconds(&root).unwrap_err());
    let real_a = root.join("train").join("a").canonicalize().unwrap();
    assert!(
        msg.contains(&format!(
            "{}: through a link to a folder above it, the folder {}, already read as {}, whose \
             images count once",
            root.join("test").join("a").display(),
            real_a.display(),
            root.join("train").join("a").display()
        )),
        "{msg}"
    );
}

#[test]
fn a_folder_outside_the_tree_linked_twice_is_entered_once() {
    let dir = tempdir().unwrap();
    let root = write_folder(&dir.path().join("set"), &["train", "test"], &["a"], 2, 4, 4);
    let elsewhere = write_folder(&dir.path().join("elsewhere"), &[""], &["b"], 3, 4, 4);
    symlink(elsewhere.join("b"), root.join("train").join("b")).unwrap();
    symlink(elsewhere.join("b"), root.join("test").join("b")).unwrap();
    // The one real folder is entered once, through the link met first in name order (test/b),
    // so train/b holds no images.
    let msg = chain(&load_within_seconds(&root).unwrap_err());
    let train_b = root.join("train").join("b").display().to_string();
    let real_b = elsewhere.join("b").canonicalize().unwrap();
    assert!(
        msg.contains(&format!(
            "{train_b}: a link to the folder {}, already read as {}, whose images count once",
            real_b.display(),
            root.join("test").join("b").display()
        )),
        "{msg}"
    );
    std::fs::remove_file(root.join("train").join("b")).unwrap();
    write_folder(&root, &["train"], &["b"], 1, 4, 4);
    let split = load_within_seconds(&root).unwrap();
    assert_eq!(
        (split.train.len(), split.test.len()),
        (3, 5),
        "test/b is followed"
    );
}

/// A FIFO or a socket named as an image is refused, named, without being opened (which would
/// block); under another name it is not data and is passed over.
#[test]
fn fifos_and_sockets_named_as_images_are_refused_unopened() {
    let dir = tempdir().unwrap();
    let root = write_folder(dir.path(), &["train", "test"], &["a", "b"], 1, 4, 4);
    let fifo = root.join("train").join("a").join("pipe.jpg");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let err = format!("{:#}", load_within_seconds(&root).unwrap_err());
    assert!(
        err.contains("pipe.jpg") && err.contains("not a regular file"),
        "{err}"
    );
    std::fs::remove_file(&fifo).unwrap();
    let socket = root.join("test").join("b").join("sock.png");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let err = format!("{:#}", load_within_seconds(&root).unwrap_err());
    assert!(err.contains("sock.png"), "{err}");
    std::fs::remove_file(&socket).unwrap();
    let other = root.join("train").join("a").join("notes");
    let status = std::process::Command::new("mkfifo")
        .arg(&other)
        .status()
        .unwrap();
    assert!(status.success());
    let split = load_within_seconds(&root).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (2, 2));
}
