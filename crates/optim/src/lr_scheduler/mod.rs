//! Learning-rate schedules as PyTorch's `torch.optim.lr_scheduler` computes them.
//!
//! A schedule here is a pure function of the scheduler's step count `t` (PyTorch's
//! `last_epoch`): the value PyTorch's scheduler holds after `t` calls to `scheduler.step()`.
//! Being pure makes resuming trivial: the epoch or batch counter is the whole state.

mod cosine;
mod onecycle;
mod step;
mod warmup;

pub use cosine::CosineAnnealingLr;
pub use onecycle::OneCycleLr;
pub use step::{MultiStepLr, StepLr};
pub use warmup::LinearWarmup;

/// A learning-rate schedule.
pub trait LrSchedule: Send + Sync {
    /// The learning rate after `t` scheduler steps.
    fn lr(&self, t: usize) -> f64;

    /// The momentum (SGD) or beta1 (Adam) after `t` steps, for schedules that cycle it.
    fn momentum(&self, _t: usize) -> Option<f64> {
        None
    }
}

/// A boxed schedule is one too (so [`LinearWarmup`] wraps any schedule chosen at run time).
impl LrSchedule for Box<dyn LrSchedule> {
    fn lr(&self, t: usize) -> f64 {
        self.as_ref().lr(t)
    }

    fn momentum(&self, t: usize) -> Option<f64> {
        self.as_ref().momentum(t)
    }
}

/// When the scheduler steps: after every epoch (most schedules) or after every batch (OneCycleLR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stepping {
    /// `scheduler.step()` once per epoch: epoch `e` (from 0) trains with `lr(e)`.
    PerEpoch,
    /// `scheduler.step()` once per batch: global batch `b` (from 0) trains with `lr(b)`.
    PerStep,
}

/// A constant learning rate (no scheduler).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Constant(pub f64);

impl LrSchedule for Constant {
    fn lr(&self, _t: usize) -> f64 {
        self.0
    }
}

/// A schedule together with how often it steps.
pub struct Scheduled {
    /// The schedule.
    pub schedule: Box<dyn LrSchedule>,
    /// How often it steps.
    pub stepping: Stepping,
}

impl Scheduled {
    /// The scheduler step count for batch `batch` of epoch `epoch` (both from 0).
    pub fn t(&self, epoch: usize, batch: usize, batches_per_epoch: usize) -> usize {
        match self.stepping {
            Stepping::PerEpoch => epoch,
            Stepping::PerStep => epoch * batches_per_epoch + batch,
        }
    }

    /// Sets the optimizer's learning rate (and momentum, when the schedule cycles it) for that batch.
    pub fn apply(
        &self,
        optimizer: &mut dyn crate::Optimizer,
        epoch: usize,
        batch: usize,
        batches_per_epoch: usize,
    ) {
        let t = self.t(epoch, batch, batches_per_epoch);
        optimizer.set_learning_rate(self.schedule.lr(t));
        if let Some(m) = self.schedule.momentum(t) {
            optimizer.set_momentum(m);
        }
    }
}
