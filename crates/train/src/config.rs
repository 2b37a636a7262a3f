//! A run's whole configuration (written to `config.json`), and the optimizer and schedule it names.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

pub use datasets::DatasetKind;

use optim::lr_scheduler::{
    Constant, CosineAnnealingLr, CosineAnnealingWarmRestarts, ExponentialLr, LinearWarmup,
    LrSchedule, MultiStepLr, OneCycleLr, PlateauConfig, ReduceLrOnPlateau, Scheduled, StepLr,
    Stepping,
};
use optim::{Adam, AdamConfig, NamedVar, Optimizer, Sgd, SgdConfig, Update};

use crate::history::EpochRecord;

/// The largest epoch count, batch size and step size a run accepts (schedules count steps as
/// epochs times batches, which must not overflow).
pub const MAX_COUNT: usize = 1_000_000;
/// PyTorch's default `betas` of Adam and AdamW.
pub const ADAM_BETAS: (f64, f64) = (0.9, ADAM_BETA2);
const ADAM_BETA2: f64 = 0.999;
/// The most data-loading threads a run starts.
pub const MAX_WORKERS: usize = datasets::MAX_WORKERS;

/// `torch.optim` algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// `torch.optim.SGD`.
    Sgd,
    /// `torch.optim.Adam` (`--betas`).
    Adam,
    /// `torch.optim.AdamW` (`--betas`).
    Adamw,
}

/// Learning-rate schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// A constant rate.
    Constant,
    /// `MultiStepLR(milestones, gamma)`, per epoch.
    Multistep,
    /// `StepLR(step_size, gamma)`, per epoch.
    Step,
    /// `CosineAnnealingLR(T_max=epochs)`, per epoch.
    Cosine,
    /// `ExponentialLR(gamma)`, per epoch.
    Exponential,
    /// `OneCycleLR(max_lr=lr, total_steps=epochs*batches)`, per batch.
    Onecycle,
    /// `ReduceLROnPlateau(factor=gamma, patience)` on each epoch's test loss, per epoch (as
    /// `scheduler.step(val_loss)` after the test pass).
    Plateau,
    /// `CosineAnnealingWarmRestarts(T_0=t_0, T_mult=t_mult)` (SGDR), per epoch: a half cosine
    /// from the rate towards 0 over `t_0` epochs, then restarted at the rate, each period
    /// `t_mult` times the one before.
    CosineWarmRestarts,
}

/// The dtype of convolutions and matrix products (weights, optimizer, batch norm and loss stay
/// float32), as `torch.autocast`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything in float32.
    #[default]
    F32,
    /// Float32 tensors, CUDA matrix products on TF32 tensor cores (the CPU ignores it).
    Tf32,
    /// Convolutions and matrix products in bfloat16 (autocast).
    Bf16,
}

impl Precision {
    /// The autocast dtype, if any.
    pub fn autocast(self) -> Option<candle_core::DType> {
        match self {
            Precision::F32 | Precision::Tf32 => None,
            Precision::Bf16 => Some(candle_core::DType::BF16),
        }
    }

    /// Sets this precision for the current thread's products (TF32: process-wide) until the
    /// guards are dropped.
    pub fn enter(self) -> (layers::autocast::Guard, layers::autocast::Tf32Guard) {
        (
            layers::autocast::set(self.autocast()),
            layers::autocast::tf32(self == Precision::Tf32),
        )
    }
}

/// The order of the activations in memory, PyTorch's `torch.memory_format`: what
/// `model.to(memory_format=...)` and `images.to(memory_format=...)` choose in a PyTorch loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
pub enum MemoryFormat {
    /// (N, C, H, W) in memory, PyTorch's torch.contiguous_format.
    #[default]
    #[serde(rename = "contiguous_format")]
    #[value(name = "contiguous_format", alias = "contiguous")]
    Contiguous,
    /// (N, H, W, C) in memory, PyTorch's torch.channels_last: cuDNN's NHWC convolutions and
    /// batch norms on CUDA (with the cudnn feature); elsewhere the same results with a copy
    /// around each layer.
    #[serde(rename = "channels_last")]
    #[value(name = "channels_last", alias = "channels-last")]
    ChannelsLast,
}

impl MemoryFormat {
    /// The same format as `layers` names it ([`layers::MemoryFormat`]), which the layers and
    /// [`crate::engine::InMemoryFormat`] take.
    pub fn layers(self) -> layers::MemoryFormat {
        match self {
            MemoryFormat::Contiguous => layers::MemoryFormat::Contiguous,
            MemoryFormat::ChannelsLast => layers::MemoryFormat::ChannelsLast,
        }
    }
}

/// Where the images wait between epochs and get augmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DataPlacement {
    /// On the device when training on a GPU and the transforms can run there, else the host.
    #[default]
    Auto,
    /// Decoded and augmented on the host by the loader's worker threads.
    Host,
    /// Held on the device as u8; crops, flips and normalisation run there.
    Device,
}

/// Everything that determines a run (the output directory aside).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The program that made the run (`train-mnist`, ...), for the record.
    pub program: String,
    /// The data set.
    pub dataset: DatasetKind,
    /// Where the data set lives (`None`: the Hugging Face Hub cache).
    pub data_dir: Option<PathBuf>,
    /// A `zoo` model name.
    pub model: String,
    /// Epochs to train in total.
    pub epochs: usize,
    /// Training batch size.
    pub batch_size: usize,
    /// Test batch size.
    pub test_batch_size: usize,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// The (initial, or for OneCycle maximal) learning rate.
    pub lr: f64,
    /// SGD momentum (unused by Adam, which takes `betas`).
    pub momentum: f64,
    /// Adam's `(beta1, beta2)`, as `torch.optim.Adam(betas=...)`; runs saved before this field
    /// existed used `momentum` as beta1, which [`RunConfig::adam_betas`] keeps.
    #[serde(default)]
    pub betas: Option<(f64, f64)>,
    /// Weight decay.
    pub weight_decay: f64,
    /// Nesterov momentum (SGD).
    pub nesterov: bool,
    /// The learning-rate schedule.
    pub schedule: ScheduleKind,
    /// Epochs at which MultiStepLR decays.
    pub milestones: Vec<usize>,
    /// StepLR's period in epochs.
    pub step_size: usize,
    /// Decay factor of StepLR, MultiStepLR and ExponentialLR.
    pub gamma: f64,
    /// Epochs of linear warm-up (from a third of the rate, as PyTorch's LinearLR), multiplied into
    /// the schedule (`ChainedScheduler([LinearLR, schedule])`).
    pub warmup_epochs: usize,
    /// ReduceLROnPlateau's patience: epochs without a better test loss before the rate falls
    /// (PyTorch's default 10, that of runs saved before it was kept).
    #[serde(default = "default_patience")]
    pub patience: usize,
    /// CosineAnnealingWarmRestarts' `T_0`: epochs of its first period (1 in runs saved before
    /// it was kept, which do not use it).
    #[serde(default = "one")]
    pub t_0: usize,
    /// CosineAnnealingWarmRestarts' `T_mult`: each period's length over the one before.
    #[serde(default = "one")]
    pub t_mult: usize,
    /// Label smoothing of the cross-entropy.
    pub label_smoothing: f64,
    /// Training transform preset (a `datasets` preset name).
    pub train_transform: String,
    /// Test transform preset.
    pub test_transform: String,
    /// Seed of initialisation, data order, augmentation and dropout.
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Train on this many training images (a seeded stratified subset).
    pub limit_train: Option<usize>,
    /// Test on this many test images (a seeded stratified subset).
    pub limit_test: Option<usize>,
    /// An image folder without `train/` and `test/`: the share of each class held out for
    /// testing (`datasets::FolderOptions::test_fraction`; runs saved before it had 0.2).
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Data-loading threads.
    pub workers: usize,
    /// The dtype of convolutions and matrix products.
    #[serde(default)]
    pub precision: Precision,
    /// Where the data is held and augmented (the batches are the same either way).
    #[serde(default)]
    pub data_placement: DataPlacement,
    /// The order of the activations in memory (the images are converted as they enter).
    #[serde(default)]
    pub memory_format: MemoryFormat,
    /// `--sync-bn` and `--drop-last` (saved as `sync_bn`, `drop_last`).
    #[serde(flatten, default)]
    pub parallel: crate::distributed::DataParallel,
    /// A program's own settings beyond these flags, as it also saves them beside the run
    /// (`finetune-resnet50`'s `finetune.json`): kept with the state, so that `--resume` can
    /// tell an edited or foreign copy. `None` for the other programs, and in runs saved before
    /// it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_settings: Option<serde_json::Value>,
}

impl RunConfig {
    /// Checks values that no run could use, naming the flag and the value.
    ///
    /// # Errors
    /// The first unusable value: counts outside `[least, MAX_COUNT]` (`MAX_WORKERS` for
    /// `--workers`), a `--milestones` epoch above `MAX_COUNT`, negative or non-finite rates,
    /// Adam betas outside `[0, 1)`, a `--gamma` not above 0, label smoothing outside `[0, 1]`,
    /// a `--test-fraction` outside `(0, 1)`, a limit of 0, a `--t-0` or `--t-mult` of 0, or
    /// `--schedule plateau` with a `--gamma` of 1 or more.
    pub fn validate(&self) -> Result<()> {
        if let Some(dir) = self.data_dir.as_deref().filter(|d| d.to_str().is_none()) {
            bail!(
                "--data-dir {}: the path is not valid UTF-8, and the run keeps it as text \
                 (config.json, the resume state); give a path of UTF-8 names (a link to the \
                 folder, say)",
                dir.display()
            );
        }
        let counts = [
            ("--epochs", self.epochs, 1),
            ("--batch-size", self.batch_size, 1),
            ("--test-batch-size", self.test_batch_size, 1),
            ("--step-size", self.step_size, 1),
            ("--warmup-epochs", self.warmup_epochs, 0),
            ("--patience", self.patience, 0),
            ("--t-0", self.t_0, 1),
            ("--t-mult", self.t_mult, 1),
            ("--workers", self.workers, 1),
        ];
        for (flag, value, least) in counts {
            let most = if flag == "--workers" {
                MAX_WORKERS
            } else {
                MAX_COUNT
            };
            if flag == "--workers" && value == 0 {
                bail!(
                    "--workers must lie in [1, {most}], got 0: these are the threads that \
                     decode and augment the batches beside training; PyTorch's num_workers=0 \
                     (loading in the training process) is closest to --workers 1"
                );
            }
            if !(least..=most).contains(&value) {
                bail!("{flag} must lie in [{least}, {most}], got {value}");
            }
        }
        if let Some(m) = self.milestones.iter().find(|m| **m > MAX_COUNT) {
            bail!("--milestones must be epochs up to {MAX_COUNT}, got {m}");
        }
        let adam = self.optimizer != OptimizerKind::Sgd;
        // Finite in float32 too: the optimizer's update is computed in float32, where 1e39 is
        // infinite.
        let finite_in_f32_at_least_0 = |v: f64| (0.0..=f64::from(f32::MAX)).contains(&v);
        let rule = "a finite number >= 0 (at most 3.4028235e38, float32's largest: the update \
                    is computed in float32)";
        let reals = [
            ("--lr", self.lr, finite_in_f32_at_least_0(self.lr), rule),
            (
                "--weight-decay",
                self.weight_decay,
                finite_in_f32_at_least_0(self.weight_decay),
                rule,
            ),
            (
                "--momentum",
                self.momentum,
                finite_in_f32_at_least_0(self.momentum),
                rule,
            ),
            (
                "--betas (the first)",
                self.adam_betas().0,
                !adam || (0.0..1.0).contains(&self.adam_betas().0),
                "in [0, 1)",
            ),
            (
                "--betas (the second)",
                self.adam_betas().1,
                !adam || (0.0..1.0).contains(&self.adam_betas().1),
                "in [0, 1)",
            ),
            (
                "--gamma",
                self.gamma,
                self.gamma.is_finite() && self.gamma > 0.0,
                "a finite number > 0",
            ),
            (
                "--label-smoothing",
                self.label_smoothing,
                (0.0..=1.0).contains(&self.label_smoothing),
                "in [0, 1]",
            ),
            (
                "--test-fraction",
                self.test_fraction,
                self.test_fraction > 0.0 && self.test_fraction < 1.0,
                "in (0, 1)",
            ),
        ];
        for (flag, value, ok, rule) in reals {
            if !ok {
                bail!("{flag} must be {rule}, got {value}");
            }
        }
        if self.limit_train == Some(0) || self.limit_test == Some(0) {
            bail!("--limit-train and --limit-test must be at least 1");
        }
        // Before any data is read (a large image folder, say): a transform that does not parse.
        for (flag, text) in [
            ("--train-transform", &self.train_transform),
            ("--test-transform", &self.test_transform),
        ] {
            datasets::Transform::parse(text).with_context(|| format!("{flag} {text:?}"))?;
        }
        // --schedule plateau's factor below 1.
        self.plateau()?;
        Ok(())
    }

    /// Adam's `(beta1, beta2)`: `betas`, else (a run saved before `--betas`) `momentum` as
    /// beta1 with PyTorch's 0.999.
    pub fn adam_betas(&self) -> (f64, f64) {
        self.betas.unwrap_or((self.momentum, ADAM_BETA2))
    }

    /// The configured optimizer over `params`.
    ///
    /// # Errors
    /// The optimizer refuses its configuration, as PyTorch does (see `Sgd::new` and `Adam::new`).
    pub fn optimizer(&self, params: Vec<NamedVar>) -> Result<Box<dyn Optimizer>> {
        self.optimizer_updating(params, None)
    }

    /// [`RunConfig::optimizer`], updating as `update` says (`None`: [`Update::for_device`] of
    /// the parameters' device). The results are the same either way; `bench-step` compares
    /// the times.
    ///
    /// # Errors
    /// As [`RunConfig::optimizer`].
    pub fn optimizer_updating(
        &self,
        params: Vec<NamedVar>,
        update: Option<Update>,
    ) -> Result<Box<dyn Optimizer>> {
        let device = params.first().map(|p| p.1.device().clone());
        let update =
            update.unwrap_or_else(|| device.map_or(Update::PerTensor, |d| Update::for_device(&d)));
        let optimizer: Box<dyn Optimizer> = match self.optimizer {
            OptimizerKind::Sgd => Box::new(
                Sgd::new(
                    params,
                    SgdConfig {
                        momentum: self.momentum,
                        weight_decay: self.weight_decay,
                        nesterov: self.nesterov,
                        ..SgdConfig::new(self.lr)
                    },
                )?
                .with_update(update),
            ),
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let base = if self.optimizer == OptimizerKind::Adam {
                    AdamConfig::adam(self.lr)
                } else {
                    AdamConfig::adamw(self.lr)
                };
                Box::new(
                    Adam::new(
                        params,
                        AdamConfig {
                            beta1: self.adam_betas().0,
                            beta2: self.adam_betas().1,
                            weight_decay: self.weight_decay,
                            ..base
                        },
                    )?
                    .with_update(update),
                )
            }
        };
        Ok(optimizer)
    }

    /// The configured schedule, for `batches_per_epoch` training batches per epoch.
    pub fn schedule(&self, batches_per_epoch: usize) -> Scheduled {
        let lr = self.lr;
        let (schedule, stepping): (Box<dyn LrSchedule>, Stepping) = match self.schedule {
            ScheduleKind::Constant => (Box::new(Constant(lr)), Stepping::PerEpoch),
            ScheduleKind::Multistep => (
                Box::new(MultiStepLr {
                    base_lr: lr,
                    milestones: self.milestones.clone(),
                    gamma: self.gamma,
                }),
                Stepping::PerEpoch,
            ),
            ScheduleKind::Step => (
                Box::new(StepLr {
                    base_lr: lr,
                    step_size: self.step_size,
                    gamma: self.gamma,
                }),
                Stepping::PerEpoch,
            ),
            ScheduleKind::Exponential => (
                Box::new(ExponentialLr {
                    base_lr: lr,
                    gamma: self.gamma,
                }),
                Stepping::PerEpoch,
            ),
            ScheduleKind::Cosine => (
                Box::new(CosineAnnealingLr {
                    base_lr: lr,
                    t_max: self.epochs,
                    eta_min: 0.0,
                }),
                Stepping::PerEpoch,
            ),
            ScheduleKind::Onecycle => (
                Box::new(OneCycleLr::new(lr, self.epochs * batches_per_epoch)),
                Stepping::PerStep,
            ),
            // The rate before the first test loss: [`RunConfig::schedule_after`] replays the
            // epochs' losses.
            ScheduleKind::Plateau => (Box::new(Constant(lr)), Stepping::PerEpoch),
            ScheduleKind::CosineWarmRestarts => (
                Box::new(CosineAnnealingWarmRestarts {
                    base_lr: lr,
                    t_0: self.t_0,
                    t_mult: self.t_mult,
                    eta_min: 0.0,
                }),
                Stepping::PerEpoch,
            ),
        };
        if self.warmup_epochs == 0 {
            return Scheduled { schedule, stepping };
        }
        let warmup = match stepping {
            Stepping::PerEpoch => self.warmup_epochs,
            Stepping::PerStep => self.warmup_epochs * batches_per_epoch,
        };
        Scheduled {
            schedule: Box::new(LinearWarmup {
                inner: schedule,
                warmup,
                start_factor: 1.0 / 3.0,
            }),
            stepping,
        }
    }
}

impl RunConfig {
    /// `--schedule plateau`'s `ReduceLROnPlateau(factor=gamma, patience)` (PyTorch's other
    /// defaults: mode "min", threshold 1e-4 relative, no cool-down), before its first step.
    ///
    /// # Errors
    /// A `--gamma` of 1 or more, or another setting [`ReduceLrOnPlateau::new`] refuses.
    pub fn plateau(&self) -> Result<Option<ReduceLrOnPlateau>> {
        if self.schedule != ScheduleKind::Plateau {
            return Ok(None);
        }
        if self.gamma >= 1.0 {
            bail!(
                "--schedule plateau with --gamma {}: ReduceLROnPlateau's factor must be below 1 \
                 (the rate is multiplied by it at a plateau; PyTorch's default is 0.1)",
                self.gamma
            );
        }
        let config = PlateauConfig {
            factor: self.gamma,
            patience: self.patience,
            ..Default::default()
        };
        // Its other settings are PyTorch's defaults, and --lr and --gamma were checked by
        // `validate`: what remains to refuse is named as ReduceLROnPlateau names it.
        ReduceLrOnPlateau::new(self.lr, config)
            .map(Some)
            .context("--schedule plateau")
    }

    /// The schedule of the epoch after those in `history`: [`RunConfig::schedule`], except
    /// for `--schedule plateau`, whose rate is its `ReduceLROnPlateau` stepped with each of
    /// those epochs' test losses (the state PyTorch's scheduler would hold; a resumed run
    /// replays its saved history, so its state needs no file of its own).
    ///
    /// # Errors
    /// As [`RunConfig::plateau`]'s.
    pub fn schedule_after(
        &self,
        batches_per_epoch: usize,
        history: &[EpochRecord],
    ) -> Result<Scheduled> {
        let Some(mut plateau) = self.plateau()? else {
            return Ok(self.schedule(batches_per_epoch));
        };
        for record in history {
            plateau.step(record.test_loss);
        }
        Ok(Scheduled {
            schedule: Box::new(Constant(plateau.lr())),
            stepping: Stepping::PerEpoch,
        })
    }
}

/// 1: the saved value of a count a run saved before it was kept does not use.
fn one() -> usize {
    1
}

/// ReduceLROnPlateau's default patience (PyTorch's), also that of runs saved before
/// `--patience` existed.
pub fn default_patience() -> usize {
    10
}

/// The image-folder hold-out of runs saved before `--test-fraction` existed.
fn default_test_fraction() -> f64 {
    datasets::FolderOptions::default().test_fraction
}
