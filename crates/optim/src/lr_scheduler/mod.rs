//! Learning-rate schedules as PyTorch's `torch.optim.lr_scheduler` computes them.
//!
//! A schedule here is a pure function of the scheduler's step count `t` (PyTorch's
//! `last_epoch`): the value PyTorch's scheduler holds after `t` calls to `scheduler.step()`.
//! Being pure makes resuming trivial: the epoch or batch counter is the whole state. The one
//! exception is [`ReduceLrOnPlateau`], driven by a metric, whose state is saved with it.

mod cosine;
mod onecycle;
mod plateau;
mod step;
mod warmup;

pub use cosine::{CosineAnnealingLr, CosineAnnealingWarmRestarts};
pub use onecycle::{AnnealStrategy, OneCycleLr};
pub use plateau::{PlateauConfig, PlateauMode, ReduceLrOnPlateau, ThresholdMode};
pub use step::{ExponentialLr, MultiStepLr, StepLr};
pub use warmup::LinearWarmup;

#[cfg(test)]
mod pytorch_values;

/// A learning-rate schedule.
pub trait LrSchedule: Send + Sync {
    /// The learning rate after `t` scheduler steps.
    fn lr(&self, t: usize) -> f64;

    /// The momentum (SGD) or beta1 (Adam) after `t` steps, for schedules that cycle it.
    fn momentum(&self, _t: usize) -> Option<f64> {
        None
    }

    /// Refuses settings PyTorch's scheduler refuses (where `lr` would give NaN, infinity, or
    /// another schedule's rates): the fields are public, so a schedule is checked here rather
    /// than at construction. The training programs check theirs before the first step.
    ///
    /// # Errors
    /// A setting out of range, named with its value.
    fn check(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A boxed schedule is one too (so [`LinearWarmup`] wraps a schedule chosen at run time).
impl LrSchedule for Box<dyn LrSchedule> {
    fn lr(&self, t: usize) -> f64 {
        self.as_ref().lr(t)
    }

    fn momentum(&self, t: usize) -> Option<f64> {
        self.as_ref().momentum(t)
    }

    fn check(&self) -> anyhow::Result<()> {
        self.as_ref().check()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What PyTorch's schedulers refuse (each gave NaN, infinite or another schedule's rates
    /// here: a reviewer's findings) is refused by `check`, naming the setting; PyTorch's
    /// defaults pass.
    #[test]
    fn settings_pytorch_refuses_are_refused() {
        let cosine = |t_max| CosineAnnealingLr {
            base_lr: 0.1,
            t_max,
            eta_min: 0.0,
        };
        let step = |step_size| StepLr {
            base_lr: 0.1,
            step_size,
            gamma: 0.5,
        };
        let one_cycle = |total, pct_start| OneCycleLr {
            pct_start,
            ..OneCycleLr::new(0.1, total)
        };
        let warm = |start_factor| LinearWarmup {
            inner: Box::new(cosine(10)) as Box<dyn LrSchedule>,
            warmup: 3,
            start_factor,
        };
        let refused: [(Box<dyn LrSchedule>, &str); 7] = [
            (Box::new(cosine(0)), "t_max 0"),
            (Box::new(step(0)), "step_size 0"),
            (Box::new(one_cycle(10, 0.1)), "a phase of no length"),
            (
                Box::new(one_cycle(10, 1.5)),
                "pct_start 1.5 must lie in [0, 1]",
            ),
            (Box::new(one_cycle(0, 0.3)), "total_steps 0"),
            (Box::new(warm(0.0)), "start_factor 0"),
            (
                Box::new(LinearWarmup {
                    inner: cosine(0),
                    warmup: 3,
                    start_factor: 0.5,
                }),
                "t_max 0",
            ),
        ];
        for (schedule, words) in refused {
            let err = schedule
                .check()
                .map(|()| schedule.lr(1))
                .unwrap_err()
                .to_string();
            assert!(err.contains(words), "{err}");
        }
        let fine: [Box<dyn LrSchedule>; 5] = [
            Box::new(cosine(1)),
            Box::new(step(1)),
            Box::new(one_cycle(10, 0.3)),
            Box::new(warm(1.0 / 3.0)),
            Box::new(Constant(0.1)),
        ];
        for schedule in fine {
            schedule.check().expect("PyTorch takes these");
        }
    }

    /// The new schedules' settings PyTorch refuses (or divides by zero with) are refused,
    /// naming them.
    #[test]
    fn restarts_three_phases_and_plateaus_refuse_what_pytorch_refuses() {
        let restarts = |t_0, t_mult| CosineAnnealingWarmRestarts {
            base_lr: 0.1,
            t_0,
            t_mult,
            eta_min: 0.0,
        };
        // Three phases of 5 steps with pct_start 0.6: the second ends at step
        // 2 * 0.6 * 5 - 2 = 4, where the third ends too.
        let three = OneCycleLr {
            pct_start: 0.6,
            three_phase: true,
            ..OneCycleLr::new(0.1, 5)
        };
        let refused: [(Box<dyn LrSchedule>, &str); 3] = [
            (Box::new(restarts(0, 1)), "t_0 0"),
            (Box::new(restarts(5, 0)), "t_mult 0"),
            (Box::new(three), "a phase of no length"),
        ];
        for (schedule, words) in refused {
            let err = schedule.check().unwrap_err().to_string();
            assert!(err.contains(words), "{err}");
        }
        OneCycleLr {
            three_phase: false,
            ..three
        }
        .check()
        .expect("two phases of 3 and 2 steps");
        for epoch in [-1.0, f64::NAN, f64::INFINITY] {
            let err = restarts(5, 2).lr_at_epoch(epoch).unwrap_err().to_string();
            assert!(err.contains(&format!("epoch {epoch}")), "{err}");
        }
        // PyTorch: OverflowError, or a math domain error (a reviewer's finding: NaN here).
        for t_0 in [1, 10] {
            let err = restarts(t_0, 2)
                .lr_at_epoch(f64::MAX)
                .unwrap_err()
                .to_string();
            assert!(err.contains("the period overflows"), "{err}");
        }
        // Equal periods: PyTorch takes the epoch modulo T_0.
        assert_eq!(restarts(1, 1).lr_at_epoch(f64::MAX).ok(), Some(0.1));
        let plateau = PlateauConfig::default();
        for (lr, bad, words) in [
            (
                0.1,
                PlateauConfig {
                    factor: 1.0,
                    ..plateau
                },
                "factor 1 must be below 1",
            ),
            (
                0.1,
                PlateauConfig {
                    factor: -0.5,
                    ..plateau
                },
                "factor -0.5",
            ),
            (
                0.1,
                PlateauConfig {
                    eps: f64::NAN,
                    ..plateau
                },
                "eps NaN",
            ),
            (
                0.1,
                PlateauConfig {
                    min_lr: -1.0,
                    ..plateau
                },
                "min_lr -1",
            ),
            (f64::INFINITY, plateau, "lr inf"),
        ] {
            let err = ReduceLrOnPlateau::new(lr, bad).unwrap_err().to_string();
            assert!(err.contains(words), "{err}");
        }
        // A state read back with settings edited is refused by check.
        let saved = serde_json::to_string(&ReduceLrOnPlateau::new(0.1, plateau).expect("fine"))
            .expect("serialisable")
            .replace("\"factor\":0.1", "\"factor\":2.0");
        let edited: ReduceLrOnPlateau = serde_json::from_str(&saved).expect("reads back");
        let err = edited.check().unwrap_err().to_string();
        assert!(err.contains("factor 2 must be below 1"), "{err}: {saved}");
    }

    /// A relative threshold of 1 in "min" mode: PyTorch's first comparison is with
    /// `inf * (1 - 1)`, NaN, so no loss is ever better and the rate falls every `patience + 1`
    /// steps (PyTorch 2.15's rates: 0.1, 0.010000000000000002, the same, 0.0010000000000000002;
    /// a reviewer found the first loss taken as the best here).
    #[test]
    fn plateau_with_a_relative_threshold_of_one_never_improves_as_in_pytorch() {
        let config = PlateauConfig {
            factor: 0.1,
            patience: 1,
            threshold: 1.0,
            ..Default::default()
        };
        let mut plateau = ReduceLrOnPlateau::new(0.1, config).expect("PyTorch takes these");
        let rates = [1.0, 1.0, 0.5, 0.2].map(|loss| plateau.step(loss));
        assert_eq!(
            rates,
            [
                0.1,
                0.010000000000000002,
                0.010000000000000002,
                0.0010000000000000002
            ]
        );
        assert_eq!(plateau.best(), None);
    }
}
