//! Training a head on backbone features computed once: with a frozen backbone and no
//! augmentation each epoch then costs one pass of the head.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use datasets::{Batch, Rng};

use crate::config::Precision;
use crate::progress::Progress;
use crate::source::BatchSource;

/// Pooled backbone features of a whole data set, held on the training device, served in
/// batches like images (shuffled per epoch from the seed, or in order; the last partial batch
/// dropped with [`CachedFeatures::drop_last`], as `DataLoader(drop_last=True)`).
pub struct CachedFeatures {
    features: Tensor,
    labels: Vec<u32>,
    indices: Vec<usize>,
    batch_size: usize,
    shuffle: Option<u64>,
    drop_last: bool,
}

impl CachedFeatures {
    /// Runs `backbone` (images `(N, C, H, W)` to features `(N, F)`, typically a frozen network
    /// in evaluation mode) over every batch of `images`, on `device`; serves the features in
    /// batches of `batch_size`, shuffled per epoch from `shuffle` (a seed) or in order.
    /// `backbone` runs in `precision` (bf16: under autocast, as the training step would run
    /// it; PyTorch: the features computed inside `torch.autocast`); the features are kept in
    /// float32, whatever dtype the backbone hands back.
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
        precision: Precision,
        label: String,
    ) -> Result<Self> {
        let _precision = precision.enter();
        let _no_grad = layers::no_grad();
        let mut progress = Progress::start(label, images.num_batches());
        let mut features = Vec::with_capacity(images.num_batches());
        let mut labels = Vec::with_capacity(images.num_samples());
        let mut indices = Vec::with_capacity(images.num_samples());
        for batch in images.batches(0) {
            let batch = batch?;
            let x = batch.images.to_device(device)?;
            features.push(backbone(&x)?.to_dtype(DType::F32)?.detach());
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
            drop_last: false,
        })
    }

    /// The same features, served without the last partial batch of each epoch when `drop`
    /// (PyTorch's `DataLoader(drop_last=True)`; a data-parallel job drops the last global batch
    /// instead, in `distributed::shard`).
    pub fn drop_last(self, drop: bool) -> Self {
        Self {
            drop_last: drop,
            ..self
        }
    }
}

impl BatchSource for CachedFeatures {
    fn num_batches(&self) -> usize {
        match self.drop_last {
            true => self.indices.len() / self.batch_size,
            false => self.indices.len().div_ceil(self.batch_size),
        }
    }

    fn num_samples(&self) -> usize {
        match self.drop_last {
            true => self.num_batches() * self.batch_size,
            false => self.indices.len(),
        }
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
        order.truncate(self.num_samples());
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Ten two-value "images" in batches of four, as a source.
    fn images() -> Result<CachedFeatures> {
        let x: Vec<f32> = (0..20).map(|i| i as f32 / 3.0).collect();
        Ok(CachedFeatures {
            features: Tensor::from_vec(x, (10, 2), &Device::Cpu)?,
            labels: (0..10).map(|i| i % 3).collect(),
            indices: (0..10).collect(),
            batch_size: 4,
            shuffle: None,
            drop_last: false,
        })
    }

    /// With `drop_last` the last partial batch of each epoch is left out, as the image
    /// loader's `drop_last` and PyTorch's `DataLoader(drop_last=True)` do: 10 rows in batches
    /// of 4 give two batches of 4, every epoch's other rows.
    #[test]
    fn drop_last_leaves_out_the_partial_batch() -> Result<()> {
        let kept = images()?;
        assert_eq!((kept.num_batches(), kept.num_samples()), (3, 10));
        let dropped = CachedFeatures {
            shuffle: Some(5),
            ..images()?
        }
        .drop_last(true);
        assert_eq!((dropped.num_batches(), dropped.num_samples()), (2, 8));
        let mut seen = std::collections::BTreeSet::new();
        for epoch in 0..3 {
            let sizes: Vec<usize> = dropped
                .batches(epoch)
                .map(|b| b.map(|b| b.indices.len()))
                .collect::<Result<_>>()?;
            assert_eq!(sizes, [4, 4]);
            let order = dropped.order(epoch);
            assert_eq!(order.len(), 8);
            seen.extend(order);
        }
        // Shuffled per epoch: other rows left out in other epochs.
        assert!(seen.len() > 8, "{seen:?}");
        Ok(())
    }

    /// The backbone runs in the run's precision (autocast on for bf16, as in the training
    /// step), and the features are kept in float32 even where it hands back bf16 (a CUDA
    /// convolution under autocast does); autocast ends with the pass.
    #[test]
    fn the_backbone_runs_in_the_runs_precision() -> Result<()> {
        let source = images()?;
        for (precision, expected) in [(Precision::F32, None), (Precision::Bf16, Some(DType::BF16))]
        {
            let seen = RefCell::new(Vec::new());
            let backbone = |x: &Tensor| {
                seen.borrow_mut().push(layers::autocast::dtype());
                match layers::autocast::dtype() {
                    Some(dtype) => (x * 2.0)?.to_dtype(dtype),
                    None => x * 2.0,
                }
            };
            let cached = CachedFeatures::compute(
                &backbone,
                &source,
                &Device::Cpu,
                5,
                None,
                precision,
                "features".into(),
            )?;
            assert_eq!(*seen.borrow(), vec![expected; 3], "{precision:?}");
            assert_eq!(layers::autocast::dtype(), None);
            assert_eq!(cached.features.dtype(), DType::F32);
            assert_eq!(cached.features.dims(), [10, 2]);
            assert_eq!(cached.labels, source.labels);
            let doubled = (&source.features * 2.0)?;
            let diff = (cached.features - doubled)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            // bf16 keeps 8 bits of the values (up to 13.3 here).
            let tolerance = if expected.is_some() { 0.06 } else { 0.0 };
            assert!(diff <= tolerance, "{precision:?}: {diff}");
        }
        Ok(())
    }
}
