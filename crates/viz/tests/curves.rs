//! `save_curves`: fixed size, one or many epochs, validation.

mod common;

use anyhow::Result;
use common::{assert_figure, load};
use viz::{save_curves, EpochPoint, CURVES_HEIGHT, CURVES_WIDTH};

fn point(epoch: usize) -> EpochPoint {
    let e = epoch as f64;
    EpochPoint {
        epoch,
        train_loss: 2.3 / (1.0 + e),
        train_acc: 1.0 - 0.9 / (1.0 + e),
        test_loss: 2.4 / (1.0 + 0.8 * e),
        test_acc: 1.0 - 0.92 / (1.0 + 0.8 * e),
    }
}

#[test]
fn one_epoch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("one.png");
    save_curves(&path, "LeNet on MNIST", &[point(1)])?;
    assert_figure(&load(&path), (CURVES_WIDTH, CURVES_HEIGHT));
    assert_eq!((CURVES_WIDTH, CURVES_HEIGHT), (1200, 480));
    Ok(())
}

#[test]
fn many_epochs_and_data_changes_the_picture() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    let points: Vec<EpochPoint> = (1..=60).map(point).collect();
    save_curves(&a, "ResNet-18 on CIFAR-10", &points)?;
    let img_a = load(&a);
    assert_figure(&img_a, (CURVES_WIDTH, CURVES_HEIGHT));
    let mut changed = points.clone();
    changed[30].test_acc = 0.2;
    save_curves(&b, "ResNet-18 on CIFAR-10", &changed)?;
    assert_ne!(img_a, load(&b));
    Ok(())
}

#[test]
fn bad_points_are_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.png");
    assert!(save_curves(&path, "t", &[]).is_err());
    let mut percent = point(1);
    percent.test_acc = 98.5;
    let err = save_curves(&path, "t", &[percent]).expect_err("percent instead of fraction");
    assert!(format!("{err:#}").contains("test_acc"), "{err:#}");
    let mut nan = point(2);
    nan.train_loss = f64::NAN;
    assert!(save_curves(&path, "t", &[point(1), nan]).is_err());
    assert!(!path.exists());
    Ok(())
}
