//! A pass's metrics counted on the device the model runs on.
//!
//! Each batch adds its mean loss, its predicted classes, its confusion-matrix counts and its
//! top-5 hits with device operations only: nothing is copied to the host, so on a GPU the
//! host never waits for the device inside a pass. [`Tally::read`] brings what was counted to
//! the host when asked (the training loop asks when the progress line refreshes, at most a few
//! times a second, and at the end of the pass); [`Tally::finish`] adds the predictions.
//!
//! The numbers are those [`Metrics::update`] computes from the logits on the host, exactly:
//! the predicted class is the first maximal logit, NaN logits ignored (class 0 when a whole
//! row is NaN); a top-5 hit is a sample with fewer than five logits ranked above its
//! label's (larger, or equal of a class before it: [`Metrics::top5`]); counts are integers;
//! and each batch's mean loss travels to the host as the f64 value of the loss tensor, where
//! the loss sum is formed in the order of the batches.
//!
//! On CUDA (`cuda` feature, float32 logits) the predictions, confusion cells and top-5 hits of
//! a batch are one kernel launch (`tally/cuda.rs`, adding to the counts in place) instead of
//! about 25 small operations; the tests compare both paths with the host computation. With
//! `cuda-emulation` the same kernel, compiled for the CPU, counts CPU batches too
//! (`tally/host.rs`), so that the tests check it on machines without a GPU.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use crate::metrics::Metrics;

/// Device-side counts of one pass (training or testing) over `k` classes.
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// use candle_core::{Device, Tensor};
/// use train::tally::Tally;
/// let dev = Device::Cpu;
/// let mut tally = Tally::new(3, &dev, 1, 2)?;
/// let logits = Tensor::new(&[[0.0f32, 2.0, 1.0], [5.0, 5.0, 0.0]], &dev)?;
/// let labels = Tensor::new(&[1u32, 1], &dev)?;
/// let loss = Tensor::new(0.25f32, &dev)?;
/// tally.add(&loss, &logits, &labels, &[7, 8])?;
/// let counted = tally.finish()?;
/// assert_eq!(counted.predictions, [(7, 1), (8, 0)]); // ties go to the first class
/// assert_eq!(counted.metrics.accuracy(), 50.0);
/// assert_eq!(counted.losses, [0.25]);
/// # Ok(()) }
/// ```
pub struct Tally {
    k: usize,
    device: Device,
    constants: Constants,
    /// `(k * k + 2,)` u32, since the last read: confusion counts (true class major), then
    /// the labels that are no class, then the top-5 hits.
    counts: Tensor,
    /// Each batch's mean loss, f64, in order.
    losses: Log,
    /// Each sample's predicted class, u32, in order.
    predicted: Log,
    /// Samples per batch and every sample's dataset index, in order (known on the host).
    sizes: Vec<usize>,
    indices: Vec<usize>,
    /// What the reads so far brought to the host.
    metrics: Metrics,
    read_losses: Vec<f64>,
}

/// What a finished pass counted.
pub struct Counted {
    /// Loss, accuracies, confusion matrix.
    pub metrics: Metrics,
    /// `(dataset index, predicted class)` for every sample, in the order added.
    pub predictions: Vec<(usize, usize)>,
    /// Each batch's mean loss, in the order added.
    pub losses: Vec<f64>,
}

/// Device tensors every batch uses, made once per pass.
struct Constants {
    /// `()` f32 minus infinity, which stands in for NaN logits when looking for the maximum.
    minus_infinity: Tensor,
    /// `(1, k)` f32 `k, k - 1, ..., 1`: a maximal logit's score, largest for the first.
    first: Tensor,
    /// `(1, k)` f32 `0.5, 0, ..., 0`: the score of the others, so that a row without any
    /// maximal logit (all NaN) picks class 0 and every row's highest score is unique.
    fallback: Tensor,
    /// `(1,)` u32 constants: `k` (a label that is no class counts as this), `k * k` (the
    /// slot of such labels), `k - 1` (the last class) and 5.
    k: Tensor,
    overflow: Tensor,
    last_class: Tensor,
    five: Tensor,
    /// `(1, k)` u32 `0, 1, ..., k - 1`: each logit's class, to rank ties in class order.
    classes: Tensor,
    /// `(n,)` u32 ones, as many as the largest batch so far (at least one: CUDA refuses to
    /// allocate zero bytes, `cuMemAllocAsync` answers `CUDA_ERROR_INVALID_VALUE`).
    ones: Tensor,
}

impl Constants {
    fn new(k: usize, device: &Device) -> Result<Self> {
        let first: Vec<f32> = (0..k).map(|i| (k - i) as f32).collect();
        let mut fallback = vec![0f32; k];
        fallback[0] = 0.5;
        let u32_of = |v: usize| -> Result<Tensor> {
            let v = u32::try_from(v).map_err(|_| anyhow::anyhow!("{k} classes are too many"))?;
            Ok(Tensor::new(&[v], device)?)
        };
        Ok(Self {
            minus_infinity: Tensor::new(f32::NEG_INFINITY, device)?,
            first: Tensor::from_vec(first, (1, k), device)?,
            fallback: Tensor::from_vec(fallback, (1, k), device)?,
            k: u32_of(k)?,
            overflow: u32_of(k * k)?,
            last_class: u32_of(k - 1)?,
            five: u32_of(5)?,
            // `k` fits a u32: `u32_of(k)` above said so.
            classes: Tensor::arange(0u32, k as u32, device)?.reshape((1, k))?,
            ones: Tensor::ones(1, DType::U32, device)?,
        })
    }

    fn ones(&mut self, n: usize) -> Result<Tensor> {
        if self.ones.elem_count() < n {
            self.ones = Tensor::ones(n, DType::U32, self.ones.device())?;
        }
        Ok(self.ones.narrow(0, 0, n)?)
    }
}

/// A growing 1-D device tensor that values are appended to in place (one copy each, no new
/// allocation until the capacity is reached).
struct Log {
    data: Tensor,
    len: usize,
}

impl Log {
    fn new(capacity: usize, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self {
            data: Tensor::zeros(capacity.max(1), dtype, device)?,
            len: 0,
        })
    }

    /// Appends the values of the 1-D contiguous tensor `values`.
    fn push(&mut self, values: &Tensor) -> Result<()> {
        let n = values.elem_count();
        let capacity = self.data.elem_count();
        if self.len + n > capacity {
            let grown = Tensor::zeros(
                (2 * capacity).max(self.len + n),
                self.data.dtype(),
                self.data.device(),
            )?;
            if self.len > 0 {
                grown.slice_set(&self.data.narrow(0, 0, self.len)?, 0, 0)?;
            }
            self.data = grown;
        }
        self.data.slice_set(values, 0, self.len)?;
        self.len += n;
        Ok(())
    }

    /// Values `from..self.len`.
    fn since(&self, from: usize) -> Result<Tensor> {
        Ok(self.data.narrow(0, from, self.len - from)?)
    }
}

impl Tally {
    /// Empty counts for `k` classes on `device`; `batches` and `samples` are what the pass
    /// will probably add, to size the logs (more is allowed).
    ///
    /// # Errors
    /// `k` is 0 or larger than 65,535 (its square would not fit the u32 counts' indices), or
    /// the device fails.
    pub fn new(k: usize, device: &Device, batches: usize, samples: usize) -> Result<Self> {
        if k == 0 || k > usize::from(u16::MAX) {
            bail!("cannot count the metrics of {k} classes (1 to 65535)");
        }
        Ok(Self {
            k,
            device: device.clone(),
            constants: Constants::new(k, device)?,
            counts: Tensor::zeros(k * k + 2, DType::U32, device)?,
            losses: Log::new(batches, DType::F64, device)?,
            predicted: Log::new(samples, DType::U32, device)?,
            sizes: Vec::with_capacity(batches),
            indices: Vec::with_capacity(samples),
            metrics: Metrics::new(k),
            read_losses: Vec::with_capacity(batches),
        })
    }

    /// Adds a batch on the device: its mean `loss` (a scalar tensor), its `logits` `(N, k)` and
    /// `labels` `(N,)` (any integer dtype), on the tally's device, and the dataset `indices` of
    /// its `N` samples. Queues device operations only; nothing waits for the device.
    ///
    /// # Errors
    /// Shapes that do not fit `N` samples of `k` classes, or the device fails. A label that is
    /// no class is found by the next [`Tally::read`]. A batch of no samples adds nothing.
    pub fn add(
        &mut self,
        loss: &Tensor,
        logits: &Tensor,
        labels: &Tensor,
        indices: &[usize],
    ) -> Result<()> {
        let (n, k) = (indices.len(), self.k);
        if logits.dims() != [n, k] || labels.dims() != [n] || loss.elem_count() != 1 {
            bail!(
                "a batch of {n} samples with logits {:?}, labels {:?} and a loss of {} values \
                 in a {k}-class task",
                logits.dims(),
                labels.dims(),
                loss.elem_count()
            );
        }
        if n == 0 {
            return Ok(());
        }
        self.losses
            .push(&loss.detach().to_dtype(DType::F64)?.reshape(1)?)?;
        self.sizes.push(n);
        self.indices.extend_from_slice(indices);
        let x = logits.detach().to_dtype(DType::F32)?;
        let labels = labels.to_dtype(DType::U32)?;
        #[cfg(feature = "cuda")]
        if cuda::takes(&x) {
            let predicted = cuda::add(&x, &labels, &self.counts)?;
            self.predicted.push(&predicted)?;
            return Ok(());
        }
        #[cfg(feature = "cuda-emulation")]
        if host::takes(&x) {
            let predicted = host::add(&x, &labels, &self.counts)?;
            self.predicted.push(&predicted)?;
            return Ok(());
        }
        let c = &mut self.constants;
        // The first maximal logit, NaN ignored: every maximal position scores `k - i`, every
        // other 0 (0.5 at class 0, which wins a row of NaN), so each row's top score is unique
        // and any device's argmax finds it.
        let real = x.eq(&x)?;
        let clean = real.where_cond(&x, &c.minus_infinity.broadcast_as((n, k))?)?;
        let top = clean.max_keepdim(1)?;
        let at_top = (clean.broadcast_eq(&top)? * &real)?;
        let scores = at_top.where_cond(
            &c.first.broadcast_as((n, k))?,
            &c.fallback.broadcast_as((n, k))?,
        )?;
        let predicted = scores.argmax_keepdim(1)?.flatten_all()?;
        // Top 5: fewer than five logits ranked above the label's, larger or equal of a class
        // before it (`metrics::ranked_above`; NaN is above nothing).
        let at = labels.broadcast_minimum(&c.last_class)?.unsqueeze(1)?;
        let label_logit = x.gather(&at, 1)?;
        let before = c.classes.broadcast_lt(&at)?;
        let tied_before = (x.broadcast_eq(&label_logit)? * before)?;
        let above = (x.broadcast_gt(&label_logit)?.to_dtype(DType::U32)?
            + tied_before.to_dtype(DType::U32)?)?
        .sum_keepdim(1)?;
        let hits = above.broadcast_lt(&c.five.unsqueeze(0)?)?;
        // The confusion cell `label * k + predicted`; a label that is no class counts in the
        // extra slot `k * k`; the hits count in the slot after it.
        let cells = labels
            .broadcast_minimum(&c.k)?
            .affine(k as f64, 0.0)?
            .add(&predicted)?
            .broadcast_minimum(&c.overflow)?;
        let ones = c.ones(n)?;
        let hit_slots = ones.affine(0.0, (k * k + 1) as f64)?;
        self.counts = self.counts.index_add(
            &Tensor::cat(&[&cells, &hit_slots], 0)?,
            &Tensor::cat(&[&ones, &hits.flatten_all()?.to_dtype(DType::U32)?], 0)?,
            0,
        )?;
        self.predicted.push(&predicted)?;
        Ok(())
    }

    /// Brings what was counted since the last read to the host (this waits for the device).
    /// Returns the first of the batches read now whose loss is not finite, as its position
    /// among the batches added (from 0) and its loss.
    ///
    /// # Errors
    /// A label was no class, or the device fails.
    pub fn read(&mut self) -> Result<Option<(usize, f64)>> {
        let from = self.read_losses.len();
        let losses = self.losses.since(from)?.to_vec1::<f64>()?;
        let counts = std::mem::replace(
            &mut self.counts,
            Tensor::zeros(self.k * self.k + 2, DType::U32, &self.device)?,
        )
        .to_vec1::<u32>()?;
        let (confusion, stray) = counts.split_at(self.k * self.k);
        let top5 = stray[1];
        if stray[0] > 0 {
            bail!(
                "{} samples with a label that is no class of a {}-class task",
                stray[0],
                self.k
            );
        }
        for (&loss, &n) in losses.iter().zip(&self.sizes[from..]) {
            self.metrics.add_loss(loss, n);
        }
        self.metrics.add_counts(confusion, u64::from(top5))?;
        let first = losses
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (from + i, losses[i]));
        self.read_losses.extend(losses);
        Ok(first)
    }

    /// The metrics as of the last [`Tally::read`].
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Reads what is left, then every sample's predicted class.
    ///
    /// # Errors
    /// As [`Tally::read`].
    pub fn finish(mut self) -> Result<Counted> {
        self.read()?;
        let predicted = self.predicted.since(0)?.to_vec1::<u32>()?;
        Ok(Counted {
            metrics: self.metrics,
            predictions: self
                .indices
                .into_iter()
                .zip(predicted.into_iter().map(|p| p as usize))
                .collect(),
            losses: self.read_losses,
        })
    }
}

/// The tally kernel's operands (`tally/cuda.rs`, `tally/host.rs`).
#[cfg(any(feature = "cuda", feature = "cuda-emulation"))]
struct KernelOperands {
    /// `(N, k)` f32, contiguous.
    logits: Tensor,
    /// `(N,)` u32, contiguous.
    labels: Tensor,
    n: usize,
    k: usize,
    /// `N` and `k` as the kernel takes them.
    n32: u32,
    k32: u32,
}

/// `logits` and `labels` made contiguous and checked against `counts` `(k * k + 2,)`.
#[cfg(any(feature = "cuda", feature = "cuda-emulation"))]
fn kernel_operands(
    logits: &Tensor,
    labels: &Tensor,
    counts: &Tensor,
) -> candle_core::Result<KernelOperands> {
    let (n, k) = logits.dims2()?;
    let slots = k * k + 2;
    if labels.dims() != [n] || labels.dtype() != DType::U32 || counts.dims() != [slots] {
        candle_core::bail!(
            "tally-batch: labels {:?} {:?} and counts {:?} for {n} samples of {k} classes",
            labels.dims(),
            labels.dtype(),
            counts.dims()
        )
    }
    let (Ok(n32), Ok(k32), Ok(_)) = (u32::try_from(n), u32::try_from(k), u32::try_from(slots))
    else {
        candle_core::bail!("tally-batch: {n} samples of {k} classes are too many")
    };
    Ok(KernelOperands {
        logits: logits.contiguous()?,
        labels: labels.contiguous()?,
        n,
        k,
        n32,
        k32,
    })
}

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda-emulation")]
mod host;
#[cfg(test)]
mod tests;
