//! Linear warm-up in front of another schedule.

use super::LrSchedule;

/// Scales another schedule by PyTorch's `LinearLR` factor, which rises linearly from
/// `start_factor` to 1 over `warmup` steps: the rate of
/// `ChainedScheduler([LinearLR(opt, start_factor, total_iters=warmup), inner])` for a
/// multiplicative inner schedule (StepLR, MultiStepLR, constant) and for cosine annealing to 0
/// (`eta_min = 0`, the training programs' cosine), within a few units in the last place (this
/// multiplies two closed forms where PyTorch chains step by step). Not for cosine annealing
/// with `eta_min > 0`, whose chained rates PyTorch computes from the warmed-up rate of the step
/// before (3.8e-3 apart at the first steps).
pub struct LinearWarmup<S> {
    /// The schedule being warmed up.
    pub inner: S,
    /// Steps of warm-up.
    pub warmup: usize,
    /// The factor at step 0 (PyTorch's default is 1/3).
    pub start_factor: f64,
}

impl<S: LrSchedule> LrSchedule for LinearWarmup<S> {
    fn lr(&self, t: usize) -> f64 {
        let factor = if self.warmup == 0 {
            1.0
        } else {
            let done = t.min(self.warmup) as f64 / self.warmup as f64;
            self.start_factor + (1.0 - self.start_factor) * done
        };
        self.inner.lr(t) * factor
    }

    fn momentum(&self, t: usize) -> Option<f64> {
        self.inner.momentum(t)
    }

    /// The inner schedule's checks, and `start_factor` in (0, 1] (PyTorch's `LinearLR`).
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.start_factor > 0.0 && self.start_factor <= 1.0,
            "LinearLR: start_factor {} must lie in (0, 1]",
            self.start_factor
        );
        self.inner.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lr_scheduler::{Constant, MultiStepLr};

    #[test]
    fn rises_linearly_then_hands_over() {
        let s = LinearWarmup {
            inner: Constant(0.3),
            warmup: 5,
            start_factor: 0.2,
        };
        let want = [0.06, 0.108, 0.156, 0.204, 0.252, 0.3, 0.3];
        for (t, w) in want.iter().enumerate() {
            assert!((s.lr(t) - w).abs() < 1e-12, "t={t}: {}", s.lr(t));
        }
        let chained = LinearWarmup {
            inner: MultiStepLr {
                base_lr: 0.1,
                milestones: vec![2],
                gamma: 0.1,
            },
            warmup: 4,
            start_factor: 0.5,
        };
        assert!((chained.lr(3) - 0.01 * 0.875).abs() < 1e-15);
    }
}
