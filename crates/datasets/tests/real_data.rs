//! Checks on the real data in `$CNN_SHARED_DIR/data` (skipped when the variable is unset).

mod common;

use common::shared_dir;
use datasets::{
    cifar10_test_bin, image_folder, mnist, Dataset, FolderOptions, Storage, CIFAR10_CLASSES,
};

fn histogram(ds: &dyn Dataset) -> Vec<usize> {
    let mut counts = vec![0; ds.classes().len()];
    for i in 0..ds.len() {
        counts[ds.label(i)] += 1;
    }
    counts
}

/// Mean pixel value of each channel over the whole dataset, in [0, 255].
fn channel_means(ds: &dyn Dataset) -> [f64; 3] {
    let mut sums = [0u64; 3];
    let mut pixels = 0u64;
    for i in 0..ds.len() {
        let img = ds.image(i).unwrap();
        for (c, sum) in sums.iter_mut().enumerate() {
            *sum += img.plane(c).iter().map(|&p| u64::from(p)).sum::<u64>();
        }
        pixels += img.plane_len() as u64;
    }
    sums.map(|s| s as f64 / pixels as f64)
}

#[test]
fn mnist_subset_counts_and_histogram() {
    let Some(shared) = shared_dir() else { return };
    let split = mnist(Some(&shared.join("data/mnist"))).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (6000, 2000));
    for (ds, n) in [(&split.train, 6000), (&split.test, 2000)] {
        let counts = histogram(ds.as_ref());
        assert_eq!(counts.len(), 10);
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
        assert_eq!(counts.iter().sum::<usize>(), n);
        eprintln!("MNIST {n}: label histogram {counts:?}");
    }
    let img = split.train.image(0).unwrap();
    assert_eq!(img.shape(), (1, 28, 28));
    assert!(img.data.iter().any(|&p| p > 200), "a digit has ink");
}

#[test]
fn cifar_test_batch_and_jpeg_archive_agree() {
    let Some(shared) = shared_dir() else { return };
    let cifar = shared.join("data/cifar10");
    let bin = cifar10_test_bin(&cifar.join("cifar-10-batches-bin/test_batch.bin")).unwrap();
    assert_eq!(bin.len(), 10_000);
    assert_eq!(bin.classes(), CIFAR10_CLASSES);
    let bin_counts = histogram(&bin);
    assert_eq!(bin_counts, vec![1000; 10]);

    let options = FolderOptions {
        storage: Storage::Memory,
        ..FolderOptions::default()
    };
    let start = std::time::Instant::now();
    let split = image_folder(&cifar.join("cifar10-jpeg.tar.gz"), &options).unwrap();
    eprintln!(
        "decoded the 60,000-JPEG archive into memory in {:.2?}",
        start.elapsed()
    );
    assert_eq!((split.train.len(), split.test.len()), (50_000, 10_000));
    assert_eq!(split.train.classes(), CIFAR10_CLASSES);
    assert_eq!(histogram(split.train.as_ref()), vec![5000; 10]);
    assert_eq!(histogram(split.test.as_ref()), bin_counts);
    assert_eq!(split.test.image(0).unwrap().shape(), (3, 32, 32));

    let jpeg = channel_means(split.test.as_ref());
    let raw = channel_means(&bin);
    eprintln!("per-channel means: JPEG test split {jpeg:.3?}, test_batch.bin {raw:.3?}");
    for c in 0..3 {
        assert!(
            (jpeg[c] - raw[c]).abs() < 0.5,
            "channel {c}: {jpeg:?} vs {raw:?}"
        );
    }
    // test_batch.bin holds the test JPEGs decoded (the data's README), in another order than
    // the archive's; they match Pillow 13's pixels, and libjpeg here decodes each JPEG to one
    // of its records of the same label, to the bit (a set of records: the order differs).
    let records: std::collections::HashSet<(usize, Vec<u8>)> = (0..bin.len())
        .map(|r| (bin.label(r), bin.image(r).unwrap().data))
        .collect();
    let differing: Vec<usize> = (0..split.test.len())
        .filter(|&i| !records.contains(&(split.test.label(i), split.test.image(i).unwrap().data)))
        .collect();
    assert!(
        differing.is_empty(),
        "{} of 10,000 test JPEGs decode to pixels of no record of their class (test images {:?}...)",
        differing.len(),
        &differing[..differing.len().min(3)]
    );
}

/// The CIFAR-10 training transform on the real test batch: the data held "on the device" (the
/// CPU here, the same ops as on a GPU) gives the host loader's batches bit for bit.
#[test]
fn resident_loader_matches_the_host_loader_on_real_cifar() {
    let Some(shared) = shared_dir() else { return };
    let path = shared.join("data/cifar10/cifar-10-batches-bin/test_batch.bin");
    let data: std::sync::Arc<dyn Dataset> = std::sync::Arc::new(cifar10_test_bin(&path).unwrap());
    let make = || {
        datasets::Loader::new(
            data.clone(),
            datasets::Transform::cifar10_train(),
            datasets::LoaderConfig {
                limit: Some(3000),
                ..datasets::LoaderConfig::train(500, 7)
            },
        )
        .unwrap()
    };
    let host = make();
    let resident = datasets::ResidentLoader::new(make(), &candle_core::Device::Cpu).unwrap();
    assert_eq!(resident.resident_bytes(), 3000 * 3 * 40 * 40);
    let mut batches = 0;
    for (a, b) in host.epoch(3).zip(resident.epoch(3)) {
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.indices, b.indices);
        let (a, b) = (
            a.images.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(a == b, "batch {batches} differs");
        batches += 1;
    }
    assert_eq!(batches, 6);
}
