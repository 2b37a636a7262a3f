//! `OneCycleLR` with PyTorch's defaults.

use std::f64::consts::PI;

use super::LrSchedule;

/// `torch.optim.lr_scheduler.OneCycleLR`, stepped per batch.
///
/// The rate rises from `max_lr / div_factor` to `max_lr` over the first `pct_start` of the
/// steps, then falls to `max_lr / div_factor / final_div_factor`; the momentum (or Adam's beta1)
/// moves the opposite way between `max_momentum` and `base_momentum` when `cycle_momentum` is set.
/// With `three_phase` (PyTorch's `three_phase=True`, fast.ai's schedule) the rate falls back to
/// `max_lr / div_factor` over as many steps as it rose, then to the minimum, the momentum staying
/// at `max_momentum` in the last phase. Each phase follows a half cosine or, with
/// [`AnnealStrategy::Linear`], a straight line, computed as PyTorch computes it (the same bits).
/// [`LrSchedule::check`] refuses what PyTorch refuses. Past `total_steps` the rate follows the
/// last phase on (PyTorch raises on a step past `total_steps`).
///
/// ```
/// use optim::lr_scheduler::{AnnealStrategy, LrSchedule, OneCycleLr};
/// // OneCycleLR(opt, max_lr=0.1, total_steps=100, anneal_strategy="linear", three_phase=True)
/// let s = OneCycleLr {
///     anneal_strategy: AnnealStrategy::Linear,
///     three_phase: true,
///     ..OneCycleLr::new(0.1, 100)
/// };
/// assert_eq!(s.lr(29), 0.1); // the peak, at step pct_start * total_steps - 1
/// assert!((s.lr(58) - 0.004).abs() < 1e-12); // back to max_lr / div_factor
/// ```
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
    /// How each phase goes from its start to its end (PyTorch's `anneal_strategy`).
    pub anneal_strategy: AnnealStrategy,
    /// Three phases (up, down to the initial rate, down to the minimum) instead of two.
    pub three_phase: bool,
}

/// How [`OneCycleLr`] moves within a phase: PyTorch's `anneal_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnnealStrategy {
    /// `"cos"` (the default): `end + (start - end) / 2 * (cos(pi * pct) + 1)`.
    #[default]
    Cos,
    /// `"linear"`: `(end - start) * pct + start`.
    Linear,
}

impl AnnealStrategy {
    fn anneal(self, start: f64, end: f64, pct: f64) -> f64 {
        match self {
            AnnealStrategy::Cos => annealing_cos(start, end, pct),
            AnnealStrategy::Linear => (end - start) * pct + start,
        }
    }
}

/// Where a phase of the cycle ends, and what it goes between.
#[derive(Debug, Clone, Copy)]
struct Phase {
    end_step: f64,
    lrs: (f64, f64),
    momenta: (f64, f64),
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
            anneal_strategy: AnnealStrategy::Cos,
            three_phase: false,
        }
    }

    /// PyTorch's `_schedule_phases`: each phase's last step, rates and momenta.
    fn phases(&self) -> Vec<Phase> {
        let initial = self.max_lr / self.div_factor;
        let min = initial / self.final_div_factor;
        let (peak, (low_m, high_m)) = (self.max_lr, (self.base_momentum, self.max_momentum));
        let total = self.total_steps as f64;
        // The rise, from the initial rate to the peak, is the first phase of either.
        let rise = Phase {
            end_step: self.pct_start * total - 1.0,
            lrs: (initial, peak),
            momenta: (high_m, low_m),
        };
        if self.three_phase {
            vec![
                rise,
                Phase {
                    end_step: 2.0 * self.pct_start * total - 2.0,
                    lrs: (peak, initial),
                    momenta: (low_m, high_m),
                },
                Phase {
                    end_step: total - 1.0,
                    lrs: (initial, min),
                    momenta: (high_m, high_m),
                },
            ]
        } else {
            vec![
                rise,
                Phase {
                    end_step: total - 1.0,
                    lrs: (peak, min),
                    momenta: (low_m, high_m),
                },
            ]
        }
    }

    /// Locates step `t` as PyTorch's `get_lr` does: its phase and the fraction of it done.
    fn phase(&self, t: usize) -> (Phase, f64) {
        let phases = self.phases();
        let t = t as f64;
        let mut start_step = 0.0;
        for (i, phase) in phases.iter().enumerate() {
            if t <= phase.end_step || i == phases.len() - 1 {
                return (*phase, (t - start_step) / (phase.end_step - start_step));
            }
            start_step = phase.end_step;
        }
        unreachable!("the last phase is always chosen")
    }
}

fn annealing_cos(start: f64, end: f64, pct: f64) -> f64 {
    let cos_out = (PI * pct).cos() + 1.0;
    end + (start - end) / 2.0 * cos_out
}

impl LrSchedule for OneCycleLr {
    fn lr(&self, t: usize) -> f64 {
        let (phase, pct) = self.phase(t);
        self.anneal_strategy.anneal(phase.lrs.0, phase.lrs.1, pct)
    }

    fn momentum(&self, t: usize) -> Option<f64> {
        if !self.cycle_momentum {
            return None;
        }
        let (phase, pct) = self.phase(t);
        Some(
            self.anneal_strategy
                .anneal(phase.momenta.0, phase.momenta.1, pct),
        )
    }

    /// PyTorch's checks (`total_steps` positive, `pct_start` in [0, 1]) and no phase of no
    /// length: the rising phase ends at step `pct_start * total_steps - 1`, and PyTorch divides
    /// by each phase's length (a ZeroDivisionError where one is 0, where this gave NaN);
    /// positive, finite divisors.
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
        let ends: Vec<f64> = self.phases().iter().map(|p| p.end_step).collect();
        let starts = std::iter::once(0.0).chain(ends.iter().copied());
        anyhow::ensure!(
            starts.zip(&ends).all(|(start, end)| start != *end),
            "OneCycleLR: pct_start {} of {} total steps makes a phase of no length (its phases \
             end at steps {ends:?}, from step 0; the rise ends at pct_start * total_steps - 1): \
             PyTorch divides by a phase's length; choose other values",
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
