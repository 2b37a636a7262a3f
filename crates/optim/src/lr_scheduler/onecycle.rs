//! `OneCycleLR` with PyTorch's defaults.

use std::f64::consts::PI;

use super::LrSchedule;

/// `torch.optim.lr_scheduler.OneCycleLR` (cosine annealing, two phases), stepped per batch.
///
/// The rate rises from `max_lr / div_factor` to `max_lr` over the first `pct_start` of the
/// steps, then falls to `max_lr / div_factor / final_div_factor`; the momentum (or Adam's beta1)
/// moves the opposite way between `max_momentum` and `base_momentum` when `cycle_momentum` is set.
/// [`LrSchedule::check`] refuses what PyTorch refuses. Past `total_steps` the rate follows the
/// cosine on (PyTorch raises on a step past `total_steps`); only cosine annealing in two phases
/// is offered (no `anneal_strategy="linear"`, no `three_phase`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneCycleLr {
    /// The peak learning rate.
    pub max_lr: f64,
    /// Total number of scheduler steps (epochs times batches per epoch).
    pub total_steps: usize,
    /// Fraction of the steps spent rising.
    pub pct_start: f64,
    /// `initial_lr = max_lr / div_factor`.
    pub div_factor: f64,
    /// `min_lr = initial_lr / final_div_factor`.
    pub final_div_factor: f64,
    /// Whether momentum cycles inversely to the rate.
    pub cycle_momentum: bool,
    /// The lowest momentum (at the peak rate).
    pub base_momentum: f64,
    /// The highest momentum (at the ends).
    pub max_momentum: f64,
}

impl OneCycleLr {
    /// PyTorch's defaults: `pct_start=0.3`, `div_factor=25`, `final_div_factor=1e4`,
    /// momentum cycled between 0.85 and 0.95.
    pub fn new(max_lr: f64, total_steps: usize) -> Self {
        Self {
            max_lr,
            total_steps,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
        }
    }

    /// Locates step `t` in its phase: (phase index, fraction of the phase done).
    fn phase(&self, t: usize) -> (usize, f64) {
        let end_up = self.pct_start * self.total_steps as f64 - 1.0;
        let end_down = self.total_steps as f64 - 1.0;
        let t = t as f64;
        if t <= end_up {
            (0, t / end_up)
        } else {
            (1, (t - end_up) / (end_down - end_up))
        }
    }
}

fn annealing_cos(start: f64, end: f64, pct: f64) -> f64 {
    let cos_out = (PI * pct).cos() + 1.0;
    end + (start - end) / 2.0 * cos_out
}

impl LrSchedule for OneCycleLr {
    fn lr(&self, t: usize) -> f64 {
        let initial = self.max_lr / self.div_factor;
        let min = initial / self.final_div_factor;
        match self.phase(t) {
            (0, pct) => annealing_cos(initial, self.max_lr, pct),
            (_, pct) => annealing_cos(self.max_lr, min, pct),
        }
    }

    fn momentum(&self, t: usize) -> Option<f64> {
        if !self.cycle_momentum {
            return None;
        }
        Some(match self.phase(t) {
            (0, pct) => annealing_cos(self.max_momentum, self.base_momentum, pct),
            (_, pct) => annealing_cos(self.base_momentum, self.max_momentum, pct),
        })
    }

    /// PyTorch's checks (`total_steps` positive, `pct_start` in [0, 1]) and its phases' lengths
    /// positive: the rising phase ends at step `pct_start * total_steps - 1`, which PyTorch
    /// divides by (a ZeroDivisionError where it is 0, where this gave NaN), and the falling one
    /// must end after it; positive, finite divisors.
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.total_steps >= 1,
            "OneCycleLR: total_steps {} must be at least 1",
            self.total_steps
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.pct_start),
            "OneCycleLR: pct_start {} must lie in [0, 1]",
            self.pct_start
        );
        let end_up = self.pct_start * self.total_steps as f64 - 1.0;
        let end_down = self.total_steps as f64 - 1.0;
        anyhow::ensure!(
            end_up != 0.0 && end_down != end_up,
            "OneCycleLR: pct_start {} of {} total steps makes a phase of no length (the rise \
             ends at step pct_start * total_steps - 1 = {end_up}, the fall at {end_down}): \
             PyTorch divides by it; choose other values",
            self.pct_start,
            self.total_steps
        );
        for (name, value) in [
            ("div_factor", self.div_factor),
            ("final_div_factor", self.final_div_factor),
        ] {
            anyhow::ensure!(
                value.is_finite() && value > 0.0,
                "OneCycleLR: {name} {value} must be positive and finite"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_peak_match_pytorch() {
        let s = OneCycleLr::new(0.1, 100);
        // Phase one ends at step 0.3 * 100 - 1 = 29.
        assert!((s.lr(0) - 0.004).abs() < 1e-15);
        assert!((s.lr(29) - 0.1).abs() < 1e-15);
        assert!((s.lr(99) - 0.004 / 1e4).abs() < 1e-15);
        assert_eq!(s.momentum(0), Some(0.95));
        assert!((s.momentum(29).unwrap_or(0.0) - 0.85).abs() < 1e-15);
        assert!((s.momentum(99).unwrap_or(0.0) - 0.95).abs() < 1e-15);
    }

    #[test]
    fn midpoints_follow_the_cosine() {
        let s = OneCycleLr::new(1.0, 1000);
        // Step 149 is half-way through phase one (0 .. 299), in which lr goes 0.04 -> 1.
        let mid_up = 0.04 + (1.0 - 0.04) / 2.0;
        assert!((s.lr(149) - annealing_cos(0.04, 1.0, 149.0 / 299.0)).abs() < 1e-15);
        assert!((s.lr(149) - mid_up).abs() < 0.01);
        // Phase two runs 299 .. 999.
        let pct = (649.0 - 299.0) / 700.0;
        let want = 4e-6 + (1.0 - 4e-6) / 2.0 * ((PI * pct).cos() + 1.0);
        assert!((s.lr(649) - want).abs() < 1e-15);
    }
}
