//! `CosineAnnealingLR` and `CosineAnnealingWarmRestarts`.

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

/// `torch.optim.lr_scheduler.CosineAnnealingWarmRestarts` (SGDR, Loshchilov & Hutter, 2017):
/// a half cosine from `base_lr` down towards `eta_min` over `t_0` steps, then restarted at
/// `base_lr` with each period `t_mult` times the one before.
///
/// [`LrSchedule::lr`]`(t)` is the rate after `t` calls to `scheduler.step()`, as PyTorch
/// computes it: `eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2`, the same bits.
/// PyTorch's other way to step it, `scheduler.step(epoch + i / iters)` from inside an epoch
/// (fractional epochs), is [`CosineAnnealingWarmRestarts::lr_at_epoch`].
///
/// ```
/// use optim::lr_scheduler::{CosineAnnealingWarmRestarts, LrSchedule};
/// // CosineAnnealingWarmRestarts(opt, T_0=10, T_mult=2): periods of 10, 20, 40, ... steps
/// let s = CosineAnnealingWarmRestarts { base_lr: 0.1, t_0: 10, t_mult: 2, eta_min: 0.0 };
/// assert_eq!(s.lr(0), 0.1);
/// assert!((s.lr(5) - 0.05).abs() < 1e-12); // half-way down the first period
/// assert_eq!(s.lr(10), 0.1); // the first restart
/// assert_eq!(s.lr(30), 0.1); // the second, after a period of 20
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineAnnealingWarmRestarts {
    /// The optimizer's initial learning rate, where each period starts.
    pub base_lr: f64,
    /// Steps of the first period (PyTorch's `T_0`).
    pub t_0: usize,
    /// Each period's length is the previous one's times this (PyTorch's `T_mult`, 1: equal).
    pub t_mult: usize,
    /// The rate the cosine falls towards.
    pub eta_min: f64,
}

impl CosineAnnealingWarmRestarts {
    /// PyTorch's `eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * T_cur / T_i)) / 2`.
    fn at(&self, t_cur: f64, t_i: f64) -> f64 {
        self.eta_min + (self.base_lr - self.eta_min) * (1.0 + (PI * t_cur / t_i).cos()) / 2.0
    }

    /// The rate after `scheduler.step(epoch)`, PyTorch's way to step it with a fractional epoch
    /// (`scheduler.step(epoch + i / iters)` for batch `i` of `iters`), computed as PyTorch
    /// computes `T_cur` and `T_i` from it.
    ///
    /// # Errors
    /// A negative or non-finite `epoch` (PyTorch refuses a negative one), one so large that
    /// the periods overflow, or settings [`LrSchedule::check`] refuses.
    pub fn lr_at_epoch(&self, epoch: f64) -> anyhow::Result<f64> {
        self.check()?;
        anyhow::ensure!(
            epoch.is_finite() && epoch >= 0.0,
            "CosineAnnealingWarmRestarts: epoch {epoch} must be a non-negative number"
        );
        let t_0 = self.t_0 as f64;
        let lr = if epoch < t_0 {
            self.at(epoch, t_0)
        } else if self.t_mult == 1 {
            self.at(epoch % t_0, t_0)
        } else {
            let t_mult = self.t_mult as f64;
            // n = int(math.log((epoch / T_0 * (T_mult - 1) + 1), T_mult)): CPython's
            // two-argument log is log(x) / log(base).
            let n = ((epoch / t_0 * (t_mult - 1.0) + 1.0).ln() / t_mult.ln()) as i32;
            let grown = t_mult.powi(n);
            let t_cur = epoch - t_0 * (grown - 1.0) / (t_mult - 1.0);
            self.at(t_cur, t_0 * grown)
        };
        // Epochs so large that the periods overflow a float (PyTorch: OverflowError).
        anyhow::ensure!(
            lr.is_finite(),
            "CosineAnnealingWarmRestarts: epoch {epoch} is too large for T_0 {} and T_mult {}: \
             the period overflows",
            self.t_0,
            self.t_mult
        );
        Ok(lr)
    }
}

impl LrSchedule for CosineAnnealingWarmRestarts {
    fn lr(&self, t: usize) -> f64 {
        // PyTorch's step(): T_cur += 1, and where it reaches T_i it restarts (T_cur -= T_i) and
        // T_i grows by T_mult; whole periods are passed over at once here.
        let (mut t_cur, mut t_i) = (t, self.t_0.max(1));
        if self.t_mult <= 1 {
            t_cur %= t_i;
        }
        while t_cur >= t_i {
            t_cur -= t_i;
            t_i = t_i.saturating_mul(self.t_mult.max(1));
        }
        self.at(t_cur as f64, t_i as f64)
    }

    /// PyTorch's checks: `t_0` at least 1, `t_mult` at least 1.
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.t_0 >= 1,
            "CosineAnnealingWarmRestarts: t_0 {} (the first period's steps) must be at least 1",
            self.t_0
        );
        anyhow::ensure!(
            self.t_mult >= 1,
            "CosineAnnealingWarmRestarts: t_mult {} must be at least 1",
            self.t_mult
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
