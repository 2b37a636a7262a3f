//! Batching: shapes, order, shuffling, drop_last, limit and worker-count independence.

use datasets::{Dataset, InMemory, Loader, LoaderConfig, Transform};
use std::sync::Arc;

/// `n` 3x8x8 images whose pixels all equal the sample index; label = index % 10.
fn dataset(n: usize) -> Arc<dyn Dataset> {
    let images: Vec<u8> = (0..n).flat_map(|i| vec![i as u8; 3 * 64]).collect();
    let labels: Vec<usize> = (0..n).map(|i| i % 10).collect();
    let classes = (0..10).map(|i| i.to_string()).collect();
    Arc::new(InMemory::new(images, labels, (3, 8, 8), classes).unwrap())
}

fn all_batches(loader: &Loader, epoch: usize) -> Vec<datasets::Batch> {
    loader
        .epoch(epoch)
        .collect::<anyhow::Result<Vec<_>>>()
        .unwrap()
}

#[test]
fn eval_batches_are_in_order_with_a_partial_last_batch() {
    let loader = Loader::new(dataset(10), Transform::to_tensor(), LoaderConfig::eval(4)).unwrap();
    assert_eq!((loader.num_batches(), loader.num_samples()), (3, 10));
    let batches = all_batches(&loader, 0);
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[0].images.dims(), [4, 3, 8, 8]);
    assert_eq!(batches[2].images.dims(), [2, 3, 8, 8]);
    assert_eq!(batches[2].indices, [8, 9]);
    assert_eq!(batches[1].labels.to_vec1::<u32>().unwrap(), [4, 5, 6, 7]);
    let px: Vec<f32> = batches[2].images.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(px[0], 8.0 / 255.0);
    assert_eq!(px[3 * 64], 9.0 / 255.0);
}

#[test]
fn shuffle_is_a_seeded_permutation_per_epoch() {
    let cfg = LoaderConfig::train(7, 42);
    let loader = Loader::new(dataset(30), Transform::to_tensor(), cfg.clone()).unwrap();
    let order0 = loader.order(0);
    let mut sorted = order0.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..30).collect::<Vec<_>>());
    assert_ne!(order0, (0..30).collect::<Vec<_>>());
    assert_ne!(order0, loader.order(1), "each epoch reshuffles");
    let again = Loader::new(dataset(30), Transform::to_tensor(), cfg).unwrap();
    assert_eq!(again.order(0), order0, "same seed, same order");
    let seen: Vec<usize> = all_batches(&loader, 0)
        .into_iter()
        .flat_map(|b| b.indices)
        .collect();
    assert_eq!(seen, order0);
}

#[test]
fn drop_last_and_limit() {
    let cfg = LoaderConfig {
        drop_last: true,
        ..LoaderConfig::train(4, 1)
    };
    let loader = Loader::new(dataset(10), Transform::to_tensor(), cfg.clone()).unwrap();
    assert_eq!((loader.num_batches(), loader.num_samples()), (2, 8));
    let batches = all_batches(&loader, 3);
    assert!(batches.iter().all(|b| b.indices.len() == 4));
    let limited = LoaderConfig {
        limit: Some(6),
        drop_last: false,
        ..cfg
    };
    let loader = Loader::new(dataset(10), Transform::to_tensor(), limited).unwrap();
    assert_eq!((loader.num_batches(), loader.num_samples()), (2, 6));
    let mut seen: Vec<usize> = all_batches(&loader, 0)
        .into_iter()
        .flat_map(|b| b.indices)
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2, 3, 4, 5], "limit keeps the first samples");
}

#[test]
fn same_seed_same_batches_whatever_the_worker_count() {
    let transform = Transform::to_tensor()
        .random_crop(8, 3)
        .random_horizontal_flip(0.5);
    let run = |workers: usize| -> Vec<Vec<f32>> {
        let cfg = LoaderConfig {
            workers,
            ..LoaderConfig::train(5, 9)
        };
        let loader = Loader::new(dataset(23), transform.clone(), cfg).unwrap();
        all_batches(&loader, 2)
            .iter()
            .map(|b| b.images.flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(4));
    // Augmentation happened: some zero padding shows up.
    assert!(one.iter().flatten().filter(|&&v| v == 0.0).count() > 100);
}

#[test]
fn dropping_an_epoch_early_stops_cleanly() {
    let loader = Loader::new(
        dataset(50),
        Transform::cifar10_test(),
        LoaderConfig::eval(2),
    )
    .unwrap();
    let mut epoch = loader.epoch(0);
    assert!(epoch.next().unwrap().is_ok());
    drop(epoch);
    assert_eq!(loader.epoch(1).count(), 25);
}

#[test]
fn mixed_sizes_error_and_bad_config() {
    struct Mixed;
    impl Dataset for Mixed {
        fn len(&self) -> usize {
            2
        }
        fn classes(&self) -> &[String] {
            &[]
        }
        fn label(&self, _: usize) -> usize {
            0
        }
        fn image(&self, index: usize) -> anyhow::Result<datasets::U8Image> {
            Ok(datasets::U8Image::zeros(3, 4, 4 + index))
        }
        fn sample_name(&self, index: usize) -> Option<String> {
            Some(format!("photos/{index}.png"))
        }
    }
    let loader = Loader::new(
        Arc::new(Mixed),
        Transform::to_tensor(),
        LoaderConfig::eval(2),
    )
    .unwrap();
    let results: Vec<_> = loader.epoch(0).collect();
    assert_eq!(results.len(), 1);
    let msg = format!("{:#}", results[0].as_ref().unwrap_err());
    assert!(
        msg.contains("sample 1 (photos/1.png) is (3, 4, 5)")
            && msg.contains("sample 0 (photos/0.png) is (3, 4, 4)")
            && msg.contains("one size"),
        "{msg}"
    );
    let fixed = Loader::new(
        Arc::new(Mixed),
        Transform::to_tensor().center_crop(4),
        LoaderConfig::eval(2),
    )
    .unwrap();
    assert_eq!(
        fixed.epoch(0).next().unwrap().unwrap().images.dims(),
        [2, 3, 4, 4]
    );
    assert!(Loader::new(dataset(3), Transform::to_tensor(), LoaderConfig::eval(0)).is_err());
}

/// A data set whose sample 5 panics when read (a bug some image brings out).
struct PanicsAtFive;

impl Dataset for PanicsAtFive {
    fn len(&self) -> usize {
        10
    }
    fn classes(&self) -> &[String] {
        static CLASSES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        CLASSES.get_or_init(|| vec!["a".into(), "b".into()])
    }
    fn label(&self, index: usize) -> usize {
        index % 2
    }
    fn image(&self, index: usize) -> anyhow::Result<datasets::U8Image> {
        assert!(index != 5, "sample five breaks");
        Ok(datasets::U8Image::zeros(1, 4, 4))
    }
}

/// A panic while a batch is built is an error of the epoch naming the sample, not an epoch
/// that ends early (which trained and tested on the batches before it, as if complete).
#[test]
fn a_panic_in_a_sample_is_an_error_not_a_short_epoch() {
    let loader = Loader::new(
        Arc::new(PanicsAtFive),
        Transform::to_tensor(),
        LoaderConfig::eval(2),
    )
    .unwrap();
    let results: Vec<_> = loader.epoch(0).collect();
    assert_eq!(results.len(), 3, "two batches, then the error");
    assert!(results[0].is_ok() && results[1].is_ok());
    let err = format!("{:#}", results[2].as_ref().unwrap_err());
    assert!(
        err.contains("sample 5") && err.contains("sample five breaks"),
        "{err}"
    );
    // The same through `batch`.
    let err = format!("{:#}", loader.batch(0, &[4, 5]).unwrap_err());
    assert!(err.contains("sample 5"), "{err}");
}
