//! One epoch of training, one pass of testing.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::ModuleT;

use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::source::BatchSource;
use crate::tally::Tally;
use layers::loss::cross_entropy;
use optim::lr_scheduler::Scheduled;
use optim::Optimizer;

/// A model fed its images in a memory format: PyTorch's `images.to(memory_format=...)` before
/// each forward (with `torch.channels_last`, the layers hand on channels-last activations),
/// with that format [preferred](layers::memory_format::prefer) during the forward (so that
/// MNIST's one-channel images count as channels-last). Inputs that are not 4-D pass as they
/// are. The weights are not converted: checkpoints are the same in either format.
pub struct InMemoryFormat<'a> {
    /// The model.
    pub model: &'a dyn ModuleT,
    /// The images' format.
    pub format: layers::MemoryFormat,
}

impl ModuleT for InMemoryFormat<'_> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let _preferred = layers::memory_format::prefer(self.format);
        self.model.forward_t(&self.format.apply(xs)?, train)
    }
}

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
    /// When each batch's step was taken (queued, on a GPU), in seconds since the Unix epoch:
    /// the wall time of its TensorBoard point, as `SummaryWriter.add_scalar` stamps it when
    /// called (training passes only).
    pub batch_times: Vec<f64>,
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Trains `model` in train mode for epoch `epoch` (from 0) over `loader`, on `device`.
///
/// The loss, accuracy, confusion matrix, batch losses and predictions are counted on `device`
/// ([`Tally`]) and read when the progress line refreshes (at most every
/// [`crate::progress::REFRESH`]) and at the end of the epoch, so a GPU is never waited for
/// inside the epoch.
///
/// # Errors
/// A batch cannot be read, the model, loss or optimizer fails, or a batch's loss is not
/// finite. That is found at the next read: the error names the epoch and the first batch whose
/// loss was not finite. Its update and those up to the read have been applied, so the model
/// must not be saved; the caller keeps the checkpoints of the last finished epoch.
pub fn train_epoch<M: ModuleT + ?Sized>(
    model: &M,
    loader: &dyn BatchSource,
    device: &Device,
    epoch: usize,
    step: TrainStep<'_>,
    num_classes: usize,
    label: String,
) -> Result<Pass> {
    refuse_no_grad(epoch)?;
    let batches = loader.num_batches();
    let mut tally = Tally::new(num_classes, device, batches, loader.num_samples())?;
    let mut progress = Progress::start(label, batches);
    let mut last_lr = step.optimizer.learning_rate();
    let mut batch_times = Vec::with_capacity(batches);
    let stop_if_non_finite = |found: Option<(usize, f64)>| match found {
        Some((b, value)) => Err(non_finite_loss(value, epoch, b, batches)),
        None => Ok(()),
    };
    for (b, batch) in loader.batches(epoch).enumerate() {
        crate::interrupt::check()?;
        let batch = batch?;
        step.schedule.apply(step.optimizer, epoch, b, batches);
        last_lr = step.optimizer.learning_rate();
        let (images, labels) = to_device(&batch.images, &batch.labels, device)?;
        let logits = model.forward_t(&images, true).with_context(|| {
            let n = batch.indices.len();
            let hint = match n {
                // torch.nn.BatchNorm2d refuses one value per channel in training too.
                1 => {
                    " (a batch of one image: choose a --batch-size of 2 or more that does not \
                      leave one image over, or add --drop-last)"
                }
                _ => "",
            };
            let images = if n == 1 { "image" } else { "images" };
            format!(
                "the forward pass of training batch {}/{batches} ({n} {images}){hint}",
                b + 1
            )
        })?;
        let loss = cross_entropy(&logits, &labels, step.label_smoothing)?;
        let grads = loss.backward()?;
        step.optimizer.step(&grads)?;
        batch_times.push(unix_seconds());
        tally.add(&loss, &logits, &labels, &batch.indices)?;
        progress.batch(batch.indices.len());
        if progress.due() {
            stop_if_non_finite(tally.read()?)?;
            progress.show(tally.metrics().loss(), tally.metrics().accuracy());
        }
    }
    stop_if_non_finite(tally.read()?)?;
    progress.finish();
    let counted = tally.finish()?;
    Ok(Pass {
        metrics: counted.metrics,
        predictions: counted.predictions,
        last_lr: Some(last_lr),
        batch_losses: counted.losses,
        batch_times,
    })
}

/// An error for a training epoch (from 0) run under [`layers::no_grad`]: PyTorch's backward
/// under `torch.no_grad()` raises ("element 0 of tensors does not require grad"); here the loss
/// would have no graph and no weight would move.
pub(crate) fn refuse_no_grad(epoch: usize) -> Result<()> {
    if !layers::is_grad_enabled() {
        anyhow::bail!(
            "training epoch {} under layers::no_grad: no gradient would be recorded (drop the \
             no_grad guard before training)",
            epoch + 1
        )
    }
    Ok(())
}

/// The error of a run whose loss stopped being finite: its message says what is kept and that
/// a new run (not `--resume`, which would repeat it) is the way on, so the run adds nothing.
/// In a data-parallel job it comes from values every rank holds alike (the all-reduced loss,
/// the reduced metrics, the broadcast weights), so every rank meets it at the same step: the
/// ranks then stop together instead of aborting the job ([`crate::distributed::launch_job`]).
/// Keep it to such values.
#[derive(Debug)]
pub struct Diverged(pub String);

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Diverged {}

/// The error of a training loss that became `value` in epoch `epoch` (from 0) at batch `b`
/// (from 0) of `batches`.
pub(crate) fn non_finite_loss(value: f64, epoch: usize, b: usize, batches: usize) -> anyhow::Error {
    let kept = match epoch {
        0 => "no epoch had finished, so no checkpoint was saved".to_string(),
        e => format!("the checkpoints of epoch {e}, the last finished, are kept"),
    };
    anyhow::Error::new(Diverged(format!(
        "the training loss became {value} in epoch {} at batch {}/{batches}: training stopped \
         (a lower --lr may help, in a new run: --resume keeps the run's); {kept}",
        epoch + 1,
        b + 1
    )))
}

/// Tests `model` in eval mode over `loader` (in its order), on `device`. The loss is the
/// training criterion, cross-entropy with `label_smoothing`, as torchvision's reference
/// scripts evaluate; accuracy does not depend on it. Counted on `device` as in [`train_epoch`];
/// a non-finite loss is no error here (the caller judges [`Pass::metrics`]). It runs under
/// [`layers::no_grad`], as PyTorch's test loops run under `torch.no_grad()`. A Ctrl-C or
/// SIGTERM during it stops nothing here: the training run stops at its next training batch,
/// once this epoch is saved ([`crate::interrupt::testing`]).
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
    // As the tutorial's `with torch.no_grad():` test loop: no graph, activations freed early.
    let _no_grad = layers::no_grad();
    let batches = loader.num_batches();
    let mut tally = Tally::new(num_classes, device, batches, loader.num_samples())?;
    let mut progress = Progress::start(label, batches);
    // A Ctrl-C or SIGTERM lets the test pass end, so that its epoch is saved (the stop comes
    // at the next batch that trains).
    let _testing = crate::interrupt::testing();
    for batch in loader.batches(0) {
        crate::interrupt::check_writes()?;
        let batch = batch?;
        let (images, labels) = to_device(&batch.images, &batch.labels, device)?;
        let logits = model.forward_t(&images, false)?;
        let loss = cross_entropy(&logits, &labels, label_smoothing)?;
        tally.add(&loss, &logits, &labels, &batch.indices)?;
        progress.batch(batch.indices.len());
        if progress.due() {
            tally.read()?;
            progress.show(tally.metrics().loss(), tally.metrics().accuracy());
        }
    }
    progress.finish();
    let counted = tally.finish()?;
    Ok(Pass {
        metrics: counted.metrics,
        predictions: counted.predictions,
        last_lr: None,
        batch_losses: Vec::new(),
        batch_times: Vec::new(),
    })
}

fn to_device(images: &Tensor, labels: &Tensor, device: &Device) -> Result<(Tensor, Tensor)> {
    Ok((images.to_device(device)?, labels.to_device(device)?))
}

#[cfg(test)]
mod tests;
