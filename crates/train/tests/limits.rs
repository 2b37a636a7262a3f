//! `--limit-train` / `--limit-test` keep every class's share of a class-sorted data set (the
//! README's CIFAR-10 example used to train and test on airplanes only), the same for a seed.

use anyhow::Result;
use train::cli::load_data;
use train::config::{DatasetKind, RunConfig};

#[test]
fn limits_are_stratified_and_seeded() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("cifar");
    for (split, per_class) in [("train", 6), ("test", 3)] {
        for (k, class) in datasets::CIFAR10_CLASSES.iter().enumerate() {
            let folder = root.join(split).join(class);
            std::fs::create_dir_all(&folder)?;
            for i in 0..per_class {
                image::RgbImage::from_pixel(32, 32, image::Rgb([k as u8 * 20, i as u8, 0]))
                    .save(folder.join(format!("{i}.png")))?;
            }
        }
    }
    let config = |seed: u64| RunConfig {
        data_dir: Some(root.clone()),
        limit_train: Some(20),
        limit_test: Some(10),
        seed,
        ..RunConfig::new("test", DatasetKind::Cifar10, "resnet18-seed")
    };
    let labels = |data: &dyn datasets::Dataset| -> Vec<usize> {
        (0..data.len()).map(|i| data.label(i)).collect()
    };
    let a = load_data(&config(1))?;
    let mut per_class = [0usize; 10];
    labels(a.train.as_ref())
        .iter()
        .for_each(|&l| per_class[l] += 1);
    assert_eq!(per_class, [2; 10]);
    let mut tested = labels(a.test.as_ref());
    tested.sort_unstable();
    assert_eq!(tested, (0..10).collect::<Vec<_>>());
    let pixels = |split: &datasets::Split| -> Result<Vec<Vec<u8>>> {
        (0..split.train.len())
            .map(|i| Ok(split.train.image(i)?.data))
            .collect()
    };
    assert_eq!(pixels(&a)?, pixels(&load_data(&config(1))?)?);
    assert_ne!(pixels(&a)?, pixels(&load_data(&config(2))?)?);
    Ok(())
}
