//! One epoch of training, one pass of testing.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::ModuleT;

use crate::loss::cross_entropy;
use crate::metrics::Metrics;
use crate::optim::Optimizer;
use crate::progress::Progress;
use crate::schedule::Scheduled;
use crate::source::BatchSource;

/// What a training epoch needs besides the model and the data.
pub struct TrainStep<'a> {
    /// The optimizer.
    pub optimizer: &'a mut dyn Optimizer,
    /// The learning-rate schedule.
    pub schedule: &'a Scheduled,
    /// Label smoothing of the loss.
    pub label_smoothing: f64,
}

/// The result of a pass over a data set.
pub struct Pass {
    /// Loss, accuracies, confusion matrix.
    pub metrics: Metrics,
    /// `(dataset index, predicted class)` for every sample, in loader order.
    pub predictions: Vec<(usize, usize)>,
    /// The learning rate of the last batch (training passes only).
    pub last_lr: Option<f64>,
    /// Each batch's loss, in order (training passes only).
    pub batch_losses: Vec<f64>,
}

/// Trains `model` in train mode for epoch `epoch` (from 0) over `loader`, on `device`.
///
/// A non-finite loss stops the epoch before its update is applied, with an error naming the
/// batch: the caller keeps the checkpoints of the last finished epoch.
pub fn train_epoch<M: ModuleT + ?Sized>(
    model: &M,
    loader: &dyn BatchSource,
    device: &Device,
    epoch: usize,
    step: TrainStep<'_>,
    num_classes: usize,
    label: String,
) -> Result<Pass> {
    let batches = loader.num_batches();
    let mut metrics = Metrics::new(num_classes);
    let mut predictions = Vec::new();
    let mut progress = Progress::start(label, batches);
    let mut last_lr = step.optimizer.learning_rate();
    let mut batch_losses = Vec::with_capacity(batches);
    for (b, batch) in loader.batches(epoch).enumerate() {
        let batch = batch?;
        step.schedule.apply(step.optimizer, epoch, b, batches);
        last_lr = step.optimizer.learning_rate();
        let (images, labels) = to_device(&batch.images, &batch.labels, device)?;
        let logits = model.forward_t(&images, true)?;
        let loss = cross_entropy(&logits, &labels, step.label_smoothing)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            bail!(
                "the training loss became {value} in epoch {} at batch {}/{batches}: training \
                 stopped (try a lower --lr); the checkpoints of the last finished epoch are kept",
                epoch + 1,
                b + 1
            );
        }
        let grads = loss.backward()?;
        step.optimizer.step(&grads)?;
        batch_losses.push(value);
        let n = batch.indices.len();
        record(&mut metrics, &mut predictions, value, &logits, &batch)?;
        progress.batch(n, metrics.loss(), metrics.accuracy());
    }
    progress.finish();
    Ok(Pass {
        metrics,
        predictions,
        last_lr: Some(last_lr),
        batch_losses,
    })
}

/// Tests `model` in eval mode over `loader` (in its order), on `device`. The loss is the
/// training criterion, cross-entropy with `label_smoothing`, as torchvision's reference
/// scripts evaluate; accuracy does not depend on it.
///
/// # Errors
/// A batch cannot be read or moved to `device`, or the forward pass or the loss fails (for example
/// logits that are not `(N, num_classes)`).
pub fn evaluate<M: ModuleT + ?Sized>(
    model: &M,
    loader: &dyn BatchSource,
    device: &Device,
    num_classes: usize,
    label_smoothing: f64,
    label: String,
) -> Result<Pass> {
    let mut metrics = Metrics::new(num_classes);
    let mut predictions = Vec::new();
    let mut progress = Progress::start(label, loader.num_batches());
    for batch in loader.batches(0) {
        let batch = batch?;
        let (images, labels) = to_device(&batch.images, &batch.labels, device)?;
        let logits = model.forward_t(&images, false)?;
        let value = cross_entropy(&logits, &labels, label_smoothing)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let n = batch.indices.len();
        record(&mut metrics, &mut predictions, value, &logits, &batch)?;
        progress.batch(n, metrics.loss(), metrics.accuracy());
    }
    progress.finish();
    Ok(Pass {
        metrics,
        predictions,
        last_lr: None,
        batch_losses: Vec::new(),
    })
}

fn to_device(images: &Tensor, labels: &Tensor, device: &Device) -> Result<(Tensor, Tensor)> {
    Ok((images.to_device(device)?, labels.to_device(device)?))
}

pub(crate) fn record(
    metrics: &mut Metrics,
    predictions: &mut Vec<(usize, usize)>,
    loss: f64,
    logits: &Tensor,
    batch: &datasets::Batch,
) -> Result<()> {
    let (labels, indices) = (&batch.labels, &batch.indices);
    let rows = logits
        .detach()
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f32>()?;
    let labels = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let predicted = metrics.update(loss, &rows, &labels)?;
    predictions.extend(indices.iter().copied().zip(predicted));
    Ok(())
}
