//! `StepLR`, `MultiStepLR` and `ExponentialLR`: decay by `gamma` at fixed epochs.

use super::LrSchedule;

/// `torch.optim.lr_scheduler.StepLR`: `base_lr * gamma^(t / step_size)` (integer division).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLr {
    /// The optimizer's initial learning rate.
    pub base_lr: f64,
    /// Steps between decays.
    pub step_size: usize,
    /// Decay factor.
    pub gamma: f64,
}

impl LrSchedule for StepLr {
    fn lr(&self, t: usize) -> f64 {
        decayed(self.base_lr, self.gamma, t / self.step_size.max(1))
    }

    /// `step_size` at least 1 (PyTorch divides by it).
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.step_size >= 1,
            "StepLR: step_size {} (the steps between decays) must be at least 1",
            self.step_size
        );
        Ok(())
    }
}

/// `torch.optim.lr_scheduler.MultiStepLR`: multiply by `gamma` at each milestone reached
/// (a milestone listed twice decays twice, by `gamma ** 2` in one product, as in PyTorch).
#[derive(Debug, Clone, PartialEq)]
pub struct MultiStepLr {
    /// The optimizer's initial learning rate.
    pub base_lr: f64,
    /// Steps at which the rate decays.
    pub milestones: Vec<usize>,
    /// Decay factor.
    pub gamma: f64,
}

impl LrSchedule for MultiStepLr {
    fn lr(&self, t: usize) -> f64 {
        // PyTorch keeps the milestones as a Counter and, at each one reached, multiplies the
        // group's rate by `gamma ** count` (Python's `**`, the C library's `pow`).
        let mut reached: Vec<usize> = self
            .milestones
            .iter()
            .copied()
            .filter(|&m| m <= t)
            .collect();
        reached.sort_unstable();
        let mut lr = self.base_lr;
        for run in reached.chunk_by(|a, b| a == b) {
            // `pow(g, 1)` is `g` exactly.
            lr *= self.gamma.powf(run.len() as f64);
        }
        lr
    }
}

/// `torch.optim.lr_scheduler.ExponentialLR`: `base_lr * gamma^t`, as PyTorch's scheduler
/// computes it, one product by `gamma` per step (its closed form, `base_lr * gamma ** t`,
/// differs in the last bits: 0.01352759542790559 against 0.013527595427905593 for 0.1 and
/// 0.95 after 39 steps).
///
/// ```
/// use optim::lr_scheduler::{ExponentialLr, LrSchedule};
/// let s = ExponentialLr { base_lr: 0.1, gamma: 0.5 };
/// assert_eq!(s.lr(3), 0.0125);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialLr {
    /// The optimizer's initial learning rate.
    pub base_lr: f64,
    /// Decay factor per step.
    pub gamma: f64,
}

impl LrSchedule for ExponentialLr {
    fn lr(&self, t: usize) -> f64 {
        decayed(self.base_lr, self.gamma, t)
    }
}

/// PyTorch multiplies the group's rate by gamma once per decay, so repeated products (not `powi`)
/// reproduce its floating-point value.
fn decayed(base: f64, gamma: f64, times: usize) -> f64 {
    (0..times).fold(base, |lr, _| lr * gamma)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lr_matches_pytorch() {
        let s = StepLr {
            base_lr: 0.1,
            step_size: 30,
            gamma: 0.1,
        };
        assert_eq!(s.lr(0), 0.1);
        assert_eq!(s.lr(29), 0.1);
        assert_eq!(s.lr(30), 0.1 * 0.1);
        assert_eq!(s.lr(60), 0.1 * 0.1 * 0.1);
    }

    /// PyTorch 2.15's rates (`ExponentialLR(SGD(lr=0.1), gamma=0.95)`, the group's `lr` after
    /// 0, 13, 26 and 39 steps), bit for bit.
    #[test]
    fn exponential_matches_pytorchs_chained_products() {
        let s = ExponentialLr {
            base_lr: 0.1,
            gamma: 0.95,
        };
        let pytorch = [
            (0, 0.1),
            (13, 0.05133420832795048),
            (26, 0.026352009446574207),
            (39, 0.01352759542790559),
        ];
        for (t, want) in pytorch {
            assert_eq!(s.lr(t), want, "step {t}");
        }
    }

    #[test]
    fn multistep_matches_the_tutorial_recipe() {
        let s = MultiStepLr {
            base_lr: 0.1,
            milestones: vec![100, 150],
            gamma: 0.1,
        };
        assert_eq!(s.lr(0), 0.1);
        assert_eq!(s.lr(99), 0.1);
        assert_eq!(s.lr(100), 0.1 * 0.1);
        assert_eq!(s.lr(149), 0.1 * 0.1);
        assert_eq!(s.lr(150), 0.1 * 0.1 * 0.1);
        assert_eq!(s.lr(179), 0.1 * 0.1 * 0.1);
    }

    /// PyTorch 2.15's rates with a milestone listed twice (`MultiStepLR(SGD(lr=b), [3, 3],
    /// gamma=g)` after 3 steps): one product by `g ** 2`, which differs from two products by
    /// `g` in the last bit for these.
    #[test]
    fn a_milestone_listed_twice_decays_by_the_square_at_once() {
        for (base, gamma, pytorch) in [
            (0.01, 0.1, 0.00010000000000000002),
            (0.01, 0.2, 0.0004000000000000001),
            (0.01, 0.7, 0.0049),
            (0.1, 0.33, 0.010890000000000002),
        ] {
            let s = MultiStepLr {
                base_lr: base,
                milestones: vec![3, 3],
                gamma,
            };
            assert_eq!(s.lr(2), base);
            assert_eq!(s.lr(3), pytorch, "base {base}, gamma {gamma}");
            assert_eq!(s.lr(9), pytorch);
        }
    }
}
