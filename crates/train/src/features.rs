//! Training a head on backbone features computed once: with a frozen backbone and no
//! augmentation each epoch then costs one pass of the head.

use anyhow::Result;
use candle_core::{Device, Tensor};
use datasets::{Batch, Rng};

use crate::progress::Progress;
use crate::source::BatchSource;

/// Pooled backbone features of a whole data set, held on the training device, served in
/// batches like images (shuffled per epoch from the seed, or in order).
pub struct CachedFeatures {
    features: Tensor,
    labels: Vec<u32>,
    indices: Vec<usize>,
    batch_size: usize,
    shuffle: Option<u64>,
}

impl CachedFeatures {
    /// Runs `backbone` (images `(N, C, H, W)` to features `(N, F)`, typically a frozen network
    /// in evaluation mode) over every batch of `images`, on `device`; serves the features in
    /// batches of `batch_size`, shuffled per epoch from `shuffle` (a seed) or in order.
    ///
    /// # Errors
    /// `backbone` fails on a batch, a batch cannot be read from `images` or moved to `device`, or
    /// the batches' features differ in shape.
    pub fn compute(
        backbone: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
        images: &dyn BatchSource,
        device: &Device,
        batch_size: usize,
        shuffle: Option<u64>,
        label: String,
    ) -> Result<Self> {
        let mut progress = Progress::start(label, images.num_batches());
        let mut features = Vec::with_capacity(images.num_batches());
        let mut labels = Vec::with_capacity(images.num_samples());
        let mut indices = Vec::with_capacity(images.num_samples());
        for batch in images.batches(0) {
            let batch = batch?;
            let x = batch.images.to_device(device)?;
            features.push(backbone(&x)?.detach());
            labels.extend(batch.labels.to_vec1::<u32>()?);
            indices.extend(&batch.indices);
            progress.batch(batch.indices.len());
        }
        progress.finish();
        Ok(Self {
            features: Tensor::cat(&features, 0)?,
            labels,
            indices,
            batch_size,
            shuffle,
        })
    }
}

impl BatchSource for CachedFeatures {
    fn num_batches(&self) -> usize {
        self.indices.len().div_ceil(self.batch_size)
    }

    fn num_samples(&self) -> usize {
        self.indices.len()
    }

    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
        let chunks: Vec<Vec<usize>> = self
            .order(epoch)
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        self.batches_of(epoch, chunks)
    }

    /// Rows of the feature matrix, shuffled per epoch from the seed or in order.
    fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.indices.len()).collect();
        if let Some(seed) = self.shuffle {
            Rng::for_shuffle(seed, epoch as u64).shuffle(&mut order);
        }
        order
    }

    fn batches_of(
        &self,
        _epoch: usize,
        chunks: Vec<Vec<usize>>,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
        Box::new(chunks.into_iter().map(move |rows| {
            let at = Tensor::new(
                rows.iter().map(|&r| r as u32).collect::<Vec<u32>>(),
                self.features.device(),
            )?;
            Ok(Batch {
                images: self.features.index_select(&at, 0)?,
                labels: Tensor::new(
                    rows.iter().map(|&r| self.labels[r]).collect::<Vec<u32>>(),
                    &Device::Cpu,
                )?,
                indices: rows.iter().map(|&r| self.indices[r]).collect(),
            })
        }))
    }
}
