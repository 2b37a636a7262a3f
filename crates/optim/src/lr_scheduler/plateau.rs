//! `ReduceLROnPlateau`.

use serde::{Deserialize, Serialize};

/// Whether a smaller or a larger metric is better (PyTorch's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlateauMode {
    /// `"min"` (the default): a loss.
    #[default]
    Min,
    /// `"max"`: an accuracy.
    Max,
}

/// How much better a metric must be to count as better (PyTorch's `threshold_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThresholdMode {
    /// `"rel"` (the default): better than `best * (1 - threshold)` (`"min"`) or
    /// `best * (1 + threshold)` (`"max"`).
    #[default]
    Rel,
    /// `"abs"`: better than `best - threshold` (`"min"`) or `best + threshold` (`"max"`).
    Abs,
}

/// `ReduceLROnPlateau`'s settings, with PyTorch's names and defaults ([`Default`]:
/// `mode="min"`, `factor=0.1`, `patience=10`, `threshold=1e-4`, `threshold_mode="rel"`,
/// `cooldown=0`, `min_lr=0`, `eps=1e-8`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlateauConfig {
    /// Whether the metric is to be made small (a loss) or large (an accuracy).
    pub mode: PlateauMode,
    /// The rate's multiplier at a plateau (below 1).
    pub factor: f64,
    /// Steps without improvement tolerated; the rate falls at the next one.
    pub patience: usize,
    /// The improvement that counts, relative or absolute as `threshold_mode` says.
    pub threshold: f64,
    /// How `threshold` applies.
    pub threshold_mode: ThresholdMode,
    /// Steps after a reduction during which bad steps are not counted.
    pub cooldown: usize,
    /// The rate never falls below this.
    pub min_lr: f64,
    /// A reduction smaller than this is not made.
    pub eps: f64,
}

impl Default for PlateauConfig {
    fn default() -> Self {
        Self {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: 0.0,
            eps: 1e-8,
        }
    }
}

/// `torch.optim.lr_scheduler.ReduceLROnPlateau`: multiplies the learning rate by `factor` when
/// a metric (a validation loss, an accuracy) has not improved for more than `patience` steps.
///
/// Unlike the other schedules it is not a function of the step count: it keeps state (the
/// rate, the best metric, the bad steps counted, the cool-down left), which is the whole of
/// its state in PyTorch's `state_dict()` too; the struct is `serde`-serialisable to save it with
/// a checkpoint (to read back the same bits with `serde_json`, enable its `float_roundtrip`
/// feature, as this workspace does: without it a number may come back one ulp off). Each
/// [`ReduceLrOnPlateau::step`] is PyTorch's `scheduler.step(metric)` and returns the rate to
/// train with next, computed as PyTorch computes it (the same bits). One rate (one parameter
/// group): `min_lr` is a single value.
///
/// ```
/// use optim::lr_scheduler::{PlateauConfig, ReduceLrOnPlateau};
/// // ReduceLROnPlateau(opt, factor=0.5, patience=1) on an optimizer at lr=0.1
/// let config = PlateauConfig { factor: 0.5, patience: 1, ..Default::default() };
/// let mut plateau = ReduceLrOnPlateau::new(0.1, config)?;
/// assert_eq!(plateau.step(1.0), 0.1); // the first loss is the best so far
/// assert_eq!(plateau.step(1.0), 0.1); // one step without improvement: patience 1 waits
/// assert_eq!(plateau.step(1.0), 0.05); // a second: the rate is halved
/// assert_eq!(plateau.step(0.5), 0.05); // better again
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReduceLrOnPlateau {
    /// The settings.
    config: PlateauConfig,
    /// The rate now (the optimizer's `param_group["lr"]`).
    lr: f64,
    /// The best metric so far (`None`: PyTorch's `mode_worse`, an infinity; saved as a
    /// string where it is not finite, which JSON numbers cannot be).
    #[serde(with = "float_or_name")]
    best: Option<f64>,
    /// Steps since the best, not counting cool-down ones.
    num_bad_epochs: usize,
    /// Cool-down steps left.
    cooldown_counter: usize,
    /// Steps taken (PyTorch's `last_epoch`).
    last_epoch: usize,
}

impl ReduceLrOnPlateau {
    /// The scheduler on an optimizer at rate `lr`, before its first step.
    ///
    /// # Errors
    /// What PyTorch refuses (`factor` of 1 or more) and what would make the rate negative or
    /// not a number: a negative or non-finite `lr`, factor, threshold, `min_lr` or `eps`,
    /// each named with its value.
    pub fn new(lr: f64, config: PlateauConfig) -> anyhow::Result<Self> {
        let plateau = Self {
            config,
            lr,
            best: None,
            num_bad_epochs: 0,
            cooldown_counter: 0,
            last_epoch: 0,
        };
        plateau.check()?;
        Ok(plateau)
    }

    /// Checks the settings and the rate as [`ReduceLrOnPlateau::new`] does: for a state read
    /// back from a file, which may have been edited.
    ///
    /// # Errors
    /// As [`ReduceLrOnPlateau::new`]'s.
    pub fn check(&self) -> anyhow::Result<()> {
        let c = &self.config;
        anyhow::ensure!(
            c.factor < 1.0 && c.factor >= 0.0,
            "ReduceLROnPlateau: factor {} must be below 1 (and not negative)",
            c.factor
        );
        for (name, value) in [
            ("threshold", c.threshold),
            ("min_lr", c.min_lr),
            ("eps", c.eps),
            ("lr", self.lr),
        ] {
            anyhow::ensure!(
                value.is_finite() && value >= 0.0,
                "ReduceLROnPlateau: {name} {value} must be a non-negative number"
            );
        }
        Ok(())
    }

    /// The settings.
    pub fn config(&self) -> &PlateauConfig {
        &self.config
    }

    /// The learning rate to train with now.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// The best metric seen (`None` before the first step, or while every metric was NaN).
    pub fn best(&self) -> Option<f64> {
        self.best
    }

    /// Steps since the best metric, as PyTorch's `num_bad_epochs`.
    pub fn num_bad_epochs(&self) -> usize {
        self.num_bad_epochs
    }

    /// Steps taken, as PyTorch's `last_epoch`.
    pub fn steps(&self) -> usize {
        self.last_epoch
    }

    /// PyTorch's `is_better(a, best)`; a NaN metric is never better.
    fn is_better(&self, a: f64) -> bool {
        // Before the first better metric PyTorch's best is `mode_worse`, an infinity, and the
        // same comparisons are made with it (with a relative threshold of 1 or more in "min"
        // mode, `inf * (1 - threshold)` is NaN or -inf: nothing is ever better).
        let c = &self.config;
        let best = self.best.unwrap_or(match c.mode {
            PlateauMode::Min => f64::INFINITY,
            PlateauMode::Max => f64::NEG_INFINITY,
        });
        match (c.mode, c.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < best * (1.0 - c.threshold),
            (PlateauMode::Min, ThresholdMode::Abs) => a < best - c.threshold,
            (PlateauMode::Max, ThresholdMode::Rel) => a > best * (c.threshold + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => a > best + c.threshold,
        }
    }

    /// PyTorch's `scheduler.step(metric)`, after an epoch's validation: counts the step good
    /// or bad, reduces the rate after more than `patience` bad ones (outside a cool-down), and
    /// returns the rate to train with next. A NaN metric counts as a bad step, as in PyTorch.
    pub fn step(&mut self, metric: f64) -> f64 {
        self.last_epoch += 1;
        if self.is_better(metric) {
            self.best = Some(metric);
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0; // bad steps in a cool-down are not counted
        }
        let c = self.config;
        if self.num_bad_epochs > c.patience {
            let new_lr = (self.lr * c.factor).max(c.min_lr);
            if self.lr - new_lr > c.eps {
                self.lr = new_lr;
            }
            self.cooldown_counter = c.cooldown;
            self.num_bad_epochs = 0;
        }
        self.lr
    }
}

/// An `Option<f64>` whose infinities and NaN are saved as strings ("inf", "-inf", "NaN"):
/// `serde_json` would write them as `null`, read back as another value.
mod float_or_name {
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Name(String),
    }

    pub fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_none(),
            Some(x) if x.is_finite() => s.serialize_some(x),
            Some(x) => s.serialize_some(&x.to_string()),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Option::<Repr>::deserialize(d)? {
            None => Ok(None),
            Some(Repr::Number(x)) => Ok(Some(x)),
            Some(Repr::Name(name)) => name
                .parse::<f64>()
                .map(Some)
                .map_err(|_| D::Error::custom(format!("best {name:?} is not a number"))),
        }
    }
}
