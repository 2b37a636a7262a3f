//! `StepLR` and `MultiStepLR`: decay by `gamma` at fixed epochs.

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
}

/// `torch.optim.lr_scheduler.MultiStepLR`: multiply by `gamma` at each milestone reached
/// (a milestone listed twice decays twice, as in PyTorch).
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
        let passed = self.milestones.iter().filter(|&&m| m <= t).count();
        decayed(self.base_lr, self.gamma, passed)
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
}
