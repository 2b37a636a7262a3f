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
    /// In a data-parallel job, each rank computes a share of `images`' batches (of
    /// `loader_batch` images each, the batches `images` serves: batch b on rank b mod the world
    /// size), and the features are then gathered on every rank (each value summed with the
    /// other ranks' zeros, so exactly its rank's): the same features as one process computes,
    /// in a world size's fraction of the time.
    ///
    /// # Errors
    /// `backbone` fails on a batch, a batch cannot be read from `images` or moved to `device`, or
    /// the batches' features differ in shape; in a data-parallel job, the gathering failed.
    #[allow(clippy::too_many_arguments)]
    pub fn compute(
        backbone: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
        images: &dyn BatchSource,
        loader_batch: usize,
        device: &Device,
        batch_size: usize,
        shuffle: Option<u64>,
        precision: Precision,
        label: String,
    ) -> Result<Self> {
        let _precision = precision.enter();
        let _no_grad = layers::no_grad();
        if let Some(rank) = crate::distributed::rank().filter(|r| r.size > 1) {
            if images.num_samples() > 0 {
                let share = Share {
                    images,
                    loader_batch,
                    rank: (rank.rank, rank.size),
                };
                let (features, labels, indices) =
                    share.compute(backbone, device, label, &crate::distributed::sum_over_ranks)?;
                return Ok(Self {
                    features,
                    labels,
                    indices,
                    batch_size,
                    shuffle,
                    drop_last: false,
                });
            }
        }
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

/// One data-parallel rank's share of a feature pass: the batches of `loader_batch` images of
/// `images`' order whose number is `rank.0` modulo the world size `rank.1`.
struct Share<'a> {
    images: &'a dyn BatchSource,
    loader_batch: usize,
    rank: (usize, usize),
}

impl Share<'_> {
    /// This rank's batches through `backbone`, placed among zeros where the other ranks'
    /// batches go, then summed over the ranks by `sum` (the features, and the labels as f32:
    /// exact below 2^24): every rank's features, labels and sample keys, in `images`' order.
    fn compute(
        &self,
        backbone: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
        device: &Device,
        label: String,
        sum: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, Vec<u32>, Vec<usize>)> {
        let (rank, size) = self.rank;
        let order = self.images.order(0);
        let groups: Vec<Vec<usize>> = order
            .chunks(self.loader_batch.max(1))
            .map(<[usize]>::to_vec)
            .collect();
        let mine: Vec<Vec<usize>> = groups.iter().skip(rank).step_by(size).cloned().collect();
        // One sample's features' shape, from one image on every rank (a rank without a batch
        // needs it too).
        let first = vec![vec![order[0]]];
        let probe = match self.images.batches_of(0, first).next() {
            Some(batch) => batch?,
            None => anyhow::bail!("the data set's first image could not be read"),
        };
        let per_sample = backbone(&probe.images.to_device(device)?)?.dims()[1..].to_vec();
        let mut progress = Progress::start(label, mine.len());
        let mut computed = Vec::with_capacity(mine.len());
        for batch in self.images.batches_of(0, mine) {
            let batch = batch?;
            let x = batch.images.to_device(device)?;
            let features = backbone(&x)?.to_dtype(DType::F32)?.detach();
            computed.push((features, batch.labels.to_vec1::<u32>()?));
            progress.batch(batch.indices.len());
        }
        progress.finish();
        let mut computed = computed.into_iter();
        let (mut pieces, mut labels) = (Vec::with_capacity(groups.len()), Vec::new());
        for (b, group) in groups.iter().enumerate() {
            if b % size == rank {
                let Some((features, batch_labels)) = computed.next() else {
                    anyhow::bail!("a batch of the rank's share was not served")
                };
                let mut dims = vec![group.len()];
                dims.extend(&per_sample);
                if features.dims() != dims.as_slice() {
                    anyhow::bail!(
                        "the backbone's features of batch {} are {:?}, not {dims:?}",
                        b + 1,
                        features.dims()
                    )
                }
                pieces.push(features);
                labels.extend(batch_labels.iter().map(|&l| l as f32));
            } else {
                let mut dims = vec![group.len()];
                dims.extend(&per_sample);
                pieces.push(Tensor::zeros(dims, DType::F32, device)?);
                labels.extend(std::iter::repeat_n(0f32, group.len()));
            }
        }
        // One copy of the features at a time besides the sum's.
        let local = Tensor::cat(&pieces, 0)?;
        drop(pieces);
        let features = sum(&local)?;
        drop(local);
        let n = labels.len();
        let labels = sum(&Tensor::from_vec(labels, n, device)?)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|l| l as u32)
            .collect();
        Ok((features, labels, order))
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

    /// Two ranks' shares (batches 1 and 3 on rank 0, batch 2 on rank 1, of 10 samples in
    /// batches of 4), each among zeros, summed: the features, labels and keys one process
    /// computes, bit for bit; each rank ran the backbone on its own batches and one image.
    #[test]
    fn shares_summed_over_ranks_are_one_process_features() -> Result<()> {
        let source = images()?;
        let backbone = |x: &Tensor| (x * 3.0)?.sqr();
        let whole = CachedFeatures::compute(
            &backbone,
            &source,
            4,
            &Device::Cpu,
            4,
            None,
            Precision::F32,
            "features".into(),
        )?;
        let mut parts = Vec::new();
        for rank in 0..2 {
            let runs = RefCell::new(Vec::new());
            let counted = |x: &Tensor| {
                runs.borrow_mut().push(x.dim(0)?);
                backbone(x)
            };
            let share = Share {
                images: &source,
                loader_batch: 4,
                rank: (rank, 2),
            };
            parts.push(share.compute(&counted, &Device::Cpu, "share".into(), &|t| Ok(t.clone()))?);
            let expected: &[usize] = if rank == 0 { &[1, 4, 2] } else { &[1, 4] };
            assert_eq!(*runs.borrow(), expected, "rank {rank}");
        }
        let features = (&parts[0].0 + &parts[1].0)?;
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|v| v.to_bits())
                .collect())
        };
        assert_eq!(bits(&features)?, bits(&whole.features)?);
        let labels: Vec<u32> = parts[0]
            .1
            .iter()
            .zip(&parts[1].1)
            .map(|(a, b)| a + b)
            .collect();
        assert_eq!(labels, whole.labels);
        assert_eq!(parts[0].2, whole.indices);
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
                4,
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
