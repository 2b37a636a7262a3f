//! Batching: seeded shuffling, parallel decoding and augmentation on a `workers`-thread pool,
//! and the next batches prepared on a background thread while the current one is used.

use crate::{Dataset, Rng, Transform, U8Image};
use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// How many finished batches may wait ahead of the consumer.
const PREFETCH: usize = 2;

/// The most data-loading threads a loader is asked for (the training programs' `--workers`,
/// `bench-pipeline`'s `WORKERS`).
pub const MAX_WORKERS: usize = 256;

/// Batching options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Samples per batch (> 0).
    pub batch_size: usize,
    /// Shuffle the order every epoch (a permutation seeded by `seed` and the epoch).
    pub shuffle: bool,
    /// Seed of the shuffle and of every sample's augmentation.
    pub seed: u64,
    /// Drop the last batch when it is smaller than `batch_size`.
    pub drop_last: bool,
    /// Threads decoding and augmenting samples; 0 means one per CPU core.
    pub workers: usize,
    /// Use only the first `limit` samples of the dataset (a fixed subset; shuffled within).
    /// A split stored class by class (CIFAR-10 or an image folder read from files, sorted by
    /// class as torchvision's `ImageFolder` sorts it) then holds its first classes only: for a
    /// subset keeping each class's share, as the training programs' `--limit-train` takes it,
    /// wrap the dataset in a [`crate::Subset`] of [`crate::stratified_indices`].
    pub limit: Option<usize>,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            shuffle: false,
            seed: 0,
            drop_last: false,
            workers: 0,
            limit: None,
        }
    }
}

impl LoaderConfig {
    /// Training defaults: shuffled with `seed`, last partial batch kept.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        Self {
            batch_size,
            shuffle: true,
            seed,
            ..Self::default()
        }
    }

    /// Evaluation defaults: in order, no augmentation randomness needed.
    pub fn eval(batch_size: usize) -> Self {
        Self {
            batch_size,
            ..Self::default()
        }
    }
}

/// One batch: on the CPU from a [`Loader`], on the device from a
/// [`ResidentLoader`](crate::ResidentLoader).
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(N, C, H, W)` f32 images after the transform.
    pub images: Tensor,
    /// `(N,)` u32 labels.
    pub labels: Tensor,
    /// The dataset index of every sample.
    pub indices: Vec<usize>,
}

/// Turns a dataset and a transform into batches of tensors, epoch after epoch.
///
/// Sample `i`'s augmentation in epoch `e` uses `Rng::for_sample(seed, e, i)`, so batches are
/// identical whatever `workers` is.
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    transform: Arc<Transform>,
    cfg: LoaderConfig,
    pool: Arc<rayon::ThreadPool>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("samples", &self.num_samples())
            .field("transform", &self.transform.to_string())
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl Loader {
    /// Checks the configuration and the transform, and starts the worker pool.
    ///
    /// # Errors
    /// A batch size of 0, a transform that [`Transform::validate`] refuses, or worker threads that
    /// cannot start.
    pub fn new(dataset: Arc<dyn Dataset>, transform: Transform, cfg: LoaderConfig) -> Result<Self> {
        ensure!(cfg.batch_size > 0, "batch size must be positive");
        transform.validate()?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.workers)
            .thread_name(|i| format!("datasets-worker-{i}"))
            .build()
            .context("cannot start the loader's worker threads")?;
        Ok(Self {
            dataset,
            transform: Arc::new(transform),
            cfg,
            pool: Arc::new(pool),
        })
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// The transform.
    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// Samples used per epoch before `drop_last`: the dataset length, capped by `limit`.
    /// They are the dataset's first ones, `0..used()`.
    pub fn used(&self) -> usize {
        self.cfg
            .limit
            .map_or(self.dataset.len(), |l| l.min(self.dataset.len()))
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.used();
        if self.cfg.drop_last {
            n / self.cfg.batch_size
        } else {
            n.div_ceil(self.cfg.batch_size)
        }
    }

    /// Samples yielded per epoch (after `limit` and `drop_last`).
    pub fn num_samples(&self) -> usize {
        if self.cfg.drop_last {
            self.num_batches() * self.cfg.batch_size
        } else {
            self.used()
        }
    }

    /// The dataset indices of `epoch` in order (shuffled when configured).
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.used()).collect();
        if self.cfg.shuffle {
            Rng::for_shuffle(self.cfg.seed, epoch as u64).shuffle(&mut order);
        }
        order.truncate(self.num_samples());
        order
    }

    /// Builds the batch of `indices` for `epoch` now, on the worker pool.
    ///
    /// # Errors
    /// An index out of range, a sample that cannot be read or decoded, or a transform that does not
    /// fit it (the sample is named).
    pub fn batch(&self, epoch: usize, indices: &[usize]) -> Result<Batch> {
        Job {
            dataset: self.dataset.clone(),
            transform: self.transform.clone(),
            pool: self.pool.clone(),
            seed: self.cfg.seed,
            epoch: epoch as u64,
        }
        .batch(indices)
    }

    /// The batches of `epoch`, prepared up to two ahead on a background thread. Iteration stops
    /// after the first error, which it yields.
    pub fn epoch(&self, epoch: usize) -> Epoch {
        let order = self.order(epoch);
        let batches: Vec<Vec<usize>> = order
            .chunks(self.cfg.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        self.epoch_of(epoch, batches)
    }

    /// The batches of the given dataset indices for `epoch` (each sample augmented as in
    /// [`Loader::epoch`]), prepared like it: how a data-parallel rank loads only its share of
    /// each global batch. Iteration stops after the first error, which it yields.
    pub fn epoch_of(&self, epoch: usize, batches: Vec<Vec<usize>>) -> Epoch {
        let remaining = batches.len();
        let job = Job {
            dataset: self.dataset.clone(),
            transform: self.transform.clone(),
            pool: self.pool.clone(),
            seed: self.cfg.seed,
            epoch: epoch as u64,
        };
        let (tx, rx) = sync_channel(PREFETCH);
        let handle = std::thread::Builder::new()
            .name("datasets-prefetch".into())
            .spawn(move || {
                for indices in batches {
                    let batch = job.batch(&indices);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                }
            });
        match handle {
            Ok(handle) => Epoch {
                rx: Some(rx),
                handle: Some(handle),
                remaining,
                spawn_error: None,
            },
            Err(e) => Epoch {
                rx: None,
                handle: None,
                remaining: 1,
                spawn_error: Some(
                    anyhow::Error::new(e).context("cannot start the prefetch thread"),
                ),
            },
        }
    }
}

/// Everything the background thread needs to build batches.
struct Job {
    dataset: Arc<dyn Dataset>,
    transform: Arc<Transform>,
    pool: Arc<rayon::ThreadPool>,
    seed: u64,
    epoch: u64,
}

impl Job {
    /// Decodes and augments sample `index` with its own random stream. A panic there (a bug
    /// that some image brings out) is this sample's error, so that the epoch stops on it rather
    /// than ending early.
    fn sample(&self, index: usize) -> Result<U8Image> {
        let work = || -> Result<U8Image> {
            let img = self.dataset.image(index)?;
            let mut rng = Rng::for_sample(self.seed, self.epoch, index as u64);
            self.transform
                .augment(img, &mut rng)
                .with_context(|| format!("transforming sample {index}"))
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|panic| {
            anyhow::bail!(
                "reading or transforming sample {index} failed: {} (a bug; please report it \
                 with the image)",
                panic_text(panic.as_ref())
            )
        })
    }

    /// ` (its file)` for a sample that has a name, for messages.
    fn named(&self, index: usize) -> String {
        self.dataset
            .sample_name(index)
            .map(|name| format!(" ({name})"))
            .unwrap_or_default()
    }

    fn batch(&self, indices: &[usize]) -> Result<Batch> {
        let Some((&head, rest)) = indices.split_first() else {
            anyhow::bail!("empty batch");
        };
        let first = self.sample(head)?;
        let shape = first.shape();
        let size = first.data.len();
        let norm = self.transform.normalization();
        let mut pixels = vec![0f32; size * indices.len()];
        let (head_out, rest_out) = pixels.split_at_mut(size);
        norm.write(&first, head_out)?;
        self.pool.install(|| {
            rest_out
                .par_chunks_mut(size)
                .zip(rest.par_iter())
                .with_min_len(4)
                .try_for_each(|(out, &index)| -> Result<()> {
                    let img = self.sample(index)?;
                    ensure!(
                        img.shape() == shape,
                        "sample {index}{} is {:?} (CxHxW) after the transform but sample \
                         {head}{} is {shape:?}; add a resize/crop so that every sample has one \
                         size",
                        self.named(index),
                        img.shape(),
                        self.named(head)
                    );
                    norm.write(&img, out)
                })
        })?;
        let (c, h, w) = shape;
        let n = indices.len();
        let images = Tensor::from_vec(pixels, (n, c, h, w), &Device::Cpu)?;
        let labels: Vec<u32> = indices
            .iter()
            .map(|&i| self.dataset.label(i) as u32)
            .collect();
        let labels = Tensor::from_vec(labels, n, &Device::Cpu)?;
        Ok(Batch {
            images,
            labels,
            indices: indices.to_vec(),
        })
    }
}

/// The batches of one epoch; dropping it stops the background thread.
pub struct Epoch {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
    spawn_error: Option<anyhow::Error>,
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if let Some(e) = self.spawn_error.take() {
            self.remaining = 0;
            return Some(Err(e));
        }
        let batch = match self.rx.as_ref()?.recv() {
            Ok(batch) => Some(batch),
            // The thread ended before the epoch's last batch: it panicked. The epoch fails
            // rather than ending short.
            Err(_) if self.remaining > 0 => {
                self.rx = None;
                let why = match self.handle.take().map(JoinHandle::join) {
                    Some(Err(panic)) => panic_text(panic.as_ref()),
                    _ => "it stopped".to_string(),
                };
                Some(Err(anyhow::anyhow!(
                    "the data-loading thread failed with {} batches of the epoch left: {why}",
                    self.remaining
                )))
            }
            Err(_) => None,
        };
        match &batch {
            Some(Ok(_)) => self.remaining = self.remaining.saturating_sub(1),
            _ => self.remaining = 0,
        }
        batch
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        // Closing the channel makes a blocked producer's send fail, so the join is quick.
        self.rx.take();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// What a panic said (its `&str` or `String` message).
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_string(),
        (_, Some(text)) => text.clone(),
        _ => "a panic".to_string(),
    }
}
