//! `save_confusion`: layout size, colours, class names, validation.

mod common;

use anyhow::Result;
use common::{assert_figure, load, pixel};
use viz::save_confusion;

const CIFAR: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

fn matrix(n: usize) -> Vec<Vec<u64>> {
    (0..n)
        .map(|r| {
            (0..n)
                .map(|c| {
                    if r == c {
                        900
                    } else {
                        ((r * 7 + c * 3) % 20) as u64
                    }
                })
                .collect()
        })
        .collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn ten_cifar_classes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("cifar.png");
    save_confusion(&path, "Confusion matrix", &matrix(10), &names(&CIFAR))?;
    // cell 64; long names are rotated: label band 110 below.
    let img = load(&path);
    assert_figure(
        &img,
        (16 + 28 + 110 + 640 + 16, 16 + 40 + 640 + 110 + 28 + 16),
    );
    // Cells start at (154, 56); the diagonal is the maximum (viridis yellow).
    let (left, top) = (154, 56);
    assert_eq!(pixel(&img, left + 2, top + 2), [253, 231, 37]);
    assert_eq!(
        pixel(&img, left + 64 * 9 + 2, top + 64 * 9 + 2),
        [253, 231, 37]
    );
    let off_diagonal = pixel(&img, left + 64 + 2, top + 2);
    assert!(
        off_diagonal[0] < 100 && off_diagonal[2] > 60,
        "{off_diagonal:?}"
    );
    Ok(())
}

#[test]
fn short_names_stay_horizontal() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("digits.png");
    let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    save_confusion(&path, "Confusion matrix", &matrix(10), &digits)?;
    assert_figure(&load(&path), (810, 16 + 40 + 640 + 30 + 28 + 16));
    Ok(())
}

/// A class name too long for its band even at the smallest size is cut with "…": it stays
/// out of the axis title's band and inside the picture (it ran off the left edge before).
#[test]
fn long_names_are_cut_to_their_band() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("long.png");
    let mut classes = names(&CIFAR);
    classes[0] = "Airplane_with_a_really_long_descriptive_name_and_more".to_string();
    save_confusion(
        &path,
        "A title far too long to fit over the matrix of this confusion picture, which is cut",
        &matrix(10),
        &classes,
    )?;
    let img = load(&path);
    // Row 0's band (y 56..120), left of the label band (x < 16 + 28 = 44): white.
    for x in 0..44 {
        for y in 56..120 {
            assert_eq!(pixel(&img, x, y), [255; 3], "ink at ({x}, {y})");
        }
    }
    // Row 0's label is drawn (ink in its band, x 46..148).
    assert!((46..148).any(|x| (56..120).any(|y| pixel(&img, x, y) != [255; 3])));
    // The title stays inside the picture: no ink in the outer margins' columns.
    for y in 16..56 {
        for x in (0..8).chain(img.width() - 8..img.width()) {
            assert_eq!(pixel(&img, x, y), [255; 3], "title ink at ({x}, {y})");
        }
    }
    Ok(())
}

#[test]
fn bad_matrices_are_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.png");
    assert!(save_confusion(&path, "Confusion matrix", &[], &[]).is_err());
    assert!(save_confusion(&path, "Confusion matrix", &matrix(3), &names(&CIFAR[..2])).is_err());
    let ragged = vec![vec![1, 2], vec![3]];
    assert!(save_confusion(&path, "Confusion matrix", &ragged, &names(&CIFAR[..2])).is_err());
    assert!(!path.exists());
    Ok(())
}
