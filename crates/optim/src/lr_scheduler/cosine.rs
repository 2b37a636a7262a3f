//! `CosineAnnealingLR`.

use std::f64::consts::PI;

use super::LrSchedule;

/// `torch.optim.lr_scheduler.CosineAnnealingLR`, computed with PyTorch's own recursive
/// (chainable) formula so that the floating-point values agree; it equals
/// `eta_min + (base_lr - eta_min) * (1 + cos(pi * t / t_max)) / 2` up to rounding, and
/// continues as PyTorch's does past `t_max` (the rate rises again).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineAnnealingLr {
    /// The optimizer's initial learning rate.
    pub base_lr: f64,
    /// Steps of a half cosine period.
    pub t_max: usize,
    /// The minimum learning rate.
    pub eta_min: f64,
}

impl LrSchedule for CosineAnnealingLr {
    fn lr(&self, t: usize) -> f64 {
        let t_max = self.t_max.max(1) as f64;
        let period = 2 * self.t_max.max(1) as i64;
        let mut lr = self.base_lr;
        for step in 1..=t {
            let s = step as f64;
            lr = if (step as i64 - 1 - self.t_max as i64).rem_euclid(period) == 0 {
                lr + (self.base_lr - self.eta_min) * (1.0 - (PI / t_max).cos()) / 2.0
            } else {
                (1.0 + (PI * s / t_max).cos()) / (1.0 + (PI * (s - 1.0) / t_max).cos())
                    * (lr - self.eta_min)
                    + self.eta_min
            };
        }
        lr
    }

    /// `t_max` at least 1 (PyTorch divides by it).
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.t_max >= 1,
            "CosineAnnealingLR: t_max {} (the steps of a half period) must be at least 1",
            self.t_max
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed_form(s: &CosineAnnealingLr, t: usize) -> f64 {
        s.eta_min + (s.base_lr - s.eta_min) * (1.0 + (PI * t as f64 / s.t_max as f64).cos()) / 2.0
    }

    #[test]
    fn follows_the_closed_form_within_and_beyond_t_max() {
        let s = CosineAnnealingLr {
            base_lr: 0.1,
            t_max: 30,
            eta_min: 0.001,
        };
        assert_eq!(s.lr(0), 0.1);
        for t in 0..=90 {
            let (got, want) = (s.lr(t), closed_form(&s, t));
            assert!((got - want).abs() < 1e-12, "t={t}: {got} vs {want}");
        }
        assert!((s.lr(15) - (0.001 + 0.099 / 2.0)).abs() < 1e-12);
        assert!((s.lr(30) - 0.001).abs() < 1e-15);
        assert!((s.lr(60) - 0.1).abs() < 1e-12);
    }
}
