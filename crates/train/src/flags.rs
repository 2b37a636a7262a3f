//! Every training flag, declared once: the `hyperparameters!` table below is the one place
//! that names a flag, its help text, its default (typed, from the program's [`Recipe`] or a
//! constant) and whether `--resume` may change it. From it come the [`Args`] fields, the
//! `[default: ...]` annotations of `--help`, the flags' values in a [`RunConfig`], and the checks
//! of a resumed run.
//!
//! Adding a flag: one row here, and its field in [`RunConfig`] (the generated code names every
//! field, so a missing one is a compile error).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::ValueEnum;

use crate::config::{
    DataPlacement, DatasetKind, MemoryFormat, OptimizerKind, Precision, RunConfig, ScheduleKind,
    ADAM_BETAS,
};

/// A program's defaults: the tutorial's recipe for its section.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// Program name (`train-mnist`).
    pub program: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// The data set.
    pub dataset: DatasetKind,
    /// The models `--model` accepts; empty: any zoo model that fits the data.
    pub models: &'static [&'static str],
    /// Default model.
    pub model: &'static str,
    /// Default optimizer.
    pub optimizer: OptimizerKind,
    /// Default learning rate.
    pub lr: f64,
    /// Default SGD momentum.
    pub momentum: f64,
    /// Default weight decay.
    pub weight_decay: f64,
    /// Default schedule.
    pub schedule: ScheduleKind,
    /// Default MultiStepLR milestones.
    pub milestones: &'static [usize],
    /// Default StepLR period in epochs ([`DEFAULT_STEP_SIZE`] unless the recipe's tutorial
    /// has its own).
    pub step_size: usize,
    /// Default decay factor.
    pub gamma: f64,
    /// Default epochs.
    pub epochs: usize,
    /// Default training batch size.
    pub batch_size: usize,
    /// Default test batch size.
    pub test_batch_size: usize,
    /// Default training transform preset.
    pub train_transform: &'static str,
    /// Default test transform preset.
    pub test_transform: &'static str,
}

/// The seed of every program.
pub const DEFAULT_SEED: u64 = 1;
/// StepLR's period of every program.
pub const DEFAULT_STEP_SIZE: usize = 30;

/// One hyperparameter's rules: the [`RunConfig`] value a given flag sets (`F` is the [`Args`]
/// field, `C` the [`RunConfig`] field), the default, and what `--resume` does with it.
pub struct Flag<F, C> {
    given: fn(&F) -> Result<Option<C>>,
    default: fn(&Recipe) -> C,
    default_in_help: bool,
    changeable: bool,
}

impl<F, C> Flag<F, C> {
    /// `--resume` applies this flag (else a value other than the saved one is refused).
    pub fn changeable(self) -> Self {
        Self {
            changeable: true,
            ..self
        }
    }

    /// The help text says the default itself (`--help` adds no `[default: ...]`).
    pub fn default_in_help_text(self) -> Self {
        Self {
            default_in_help: false,
            ..self
        }
    }
}

/// A flag taking one value, the recipe's `default` when left out.
pub fn value<C: Clone>(default: fn(&Recipe) -> C) -> Flag<Option<C>, C> {
    Flag {
        given: |f| Ok(f.clone()),
        default,
        default_in_help: true,
        changeable: false,
    }
}

/// A flag whose absence is a value of its own (`None` in the [`RunConfig`]).
pub fn optional<T: Clone>() -> Flag<Option<T>, Option<T>> {
    Flag {
        given: |f| Ok(f.clone().map(Some)),
        default: |_| None,
        default_in_help: false,
        changeable: false,
    }
}

/// A flag without a value: given means true.
pub fn switch() -> Flag<bool, bool> {
    Flag {
        given: |f| Ok(f.then_some(true)),
        default: |_| false,
        default_in_help: false,
        changeable: false,
    }
}

/// `--betas`: two numbers, PyTorch's `(0.9, 0.999)` by default ([`Recipe::config`] drops them
/// for SGD).
fn betas() -> Flag<Option<Vec<f64>>, Option<(f64, f64)>> {
    Flag {
        given: |f| match f.as_deref() {
            None => Ok(None),
            Some(&[b1, b2]) => Ok(Some(Some((b1, b2)))),
            Some(other) => bail!("--betas takes two numbers (beta1,beta2), got {other:?}"),
        },
        default: |_| Some(ADAM_BETAS),
        default_in_help: true,
        changeable: false,
    }
}

/// How a value reads on the command line: in `--help`'s defaults and `--resume`'s refusals.
pub trait FlagText {
    /// The value as a flag would take it.
    fn flag_text(&self) -> String;
}

macro_rules! flag_text_by_display {
    ($($t:ty),*) => {$(
        impl FlagText for $t {
            fn flag_text(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
flag_text_by_display!(usize, u64, f64, bool, String);

macro_rules! flag_text_by_value_name {
    ($($t:ty),*) => {$(
        impl FlagText for $t {
            fn flag_text(&self) -> String {
                self.to_possible_value()
                    .map_or_else(String::new, |v| v.get_name().to_string())
            }
        }
    )*};
}
flag_text_by_value_name!(
    OptimizerKind,
    ScheduleKind,
    Precision,
    DataPlacement,
    MemoryFormat
);

impl FlagText for PathBuf {
    fn flag_text(&self) -> String {
        self.display().to_string()
    }
}

impl<T: FlagText> FlagText for Vec<T> {
    fn flag_text(&self) -> String {
        let items: Vec<String> = self.iter().map(FlagText::flag_text).collect();
        items.join(",")
    }
}

impl FlagText for (f64, f64) {
    fn flag_text(&self) -> String {
        format!("{},{}", self.0, self.1)
    }
}

impl<T: FlagText> FlagText for Option<T> {
    fn flag_text(&self) -> String {
        self.as_ref()
            .map_or_else(|| "none".into(), FlagText::flag_text)
    }
}

/// The flags `--resume` may change (those the table marks changeable, and `--distributed`),
/// as `--resume`'s refusals list them.
pub fn changeable_on_resume() -> Vec<String> {
    table()
        .iter()
        .filter(|f| f.changeable)
        .map(|f| f.flag())
        .chain(["--distributed".to_string()])
        .collect()
}

/// What the table says about one flag, for code that goes over all of them.
#[derive(Debug, Clone, Copy)]
pub struct FlagInfo {
    /// The [`Args`] field (`batch_size`).
    pub field: &'static str,
    /// Whether `--resume` may change it.
    pub changeable: bool,
    /// Whether `--help` shows its default.
    pub default_in_help: bool,
    /// Its value in a configuration, as the flag would take it.
    pub value: fn(&RunConfig) -> String,
}

impl FlagInfo {
    /// The flag itself (`--batch-size`).
    pub fn flag(&self) -> String {
        format!("--{}", self.field.replace('_', "-"))
    }
}

/// Rows `/// help, #[arg(...)], field: ArgsType = rule;` make a hyperparameter: an [`Args`]
/// field, a [`RunConfig`] field of the same name and the rule ([`value`], [`optional`],
/// [`switch`], ...) that connects them. Rows without `= rule` are flags of the program only
/// (`--out`, `--resume`).
macro_rules! hyperparameters {
    ($(
        $(#[$attr:meta])*
        $field:ident : $ty:ty $(= $rule:expr)?;
    )*) => {
        /// The flags of every training program. Unset flags take the program's [`Recipe`]
        /// defaults (shown in `--help`); on `--resume`, the saved run's configuration.
        // The fields' doc comments are `--help`'s text (`<stem>`, `[:SIZE]`), not Markdown.
        #[allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]
        #[derive(clap::Args, Debug, Clone, Default)]
        pub struct Args {
            $( $(#[$attr])* pub $field: $ty, )*
        }

        /// The hyperparameters, in `--help`'s order.
        pub fn table() -> Vec<FlagInfo> {
            let mut rows = Vec::new();
            $( $(
                let rule: Flag<$ty, _> = $rule;
                rows.push(FlagInfo {
                    field: stringify!($field),
                    changeable: rule.changeable,
                    default_in_help: rule.default_in_help,
                    value: |c| c.$field.flag_text(),
                });
            )? )*
            rows
        }

        impl Recipe {
            /// The defaults `--help` shows: `(field, value)`.
            pub(crate) fn help_defaults(&self) -> Vec<(&'static str, String)> {
                let mut shown = Vec::new();
                $( $(
                    let rule: Flag<$ty, _> = $rule;
                    if rule.default_in_help {
                        shown.push((stringify!($field), (rule.default)(self).flag_text()));
                    }
                )? )*
                shown
            }

            /// The flags given in `args`, this recipe's defaults for the rest (unchecked).
            ///
            /// # Errors
            /// A flag's value cannot be used at all (`--betas` with other than two numbers).
            pub(crate) fn resolve(&self, args: &Args) -> Result<RunConfig> {
                Ok(RunConfig {
                    program: self.program.to_string(),
                    dataset: self.dataset,
                    parallel: args.distributed.config(),
                    program_settings: None,
                    $( $(
                        $field: {
                            let rule: Flag<$ty, _> = $rule;
                            match (rule.given)(&args.$field)? {
                                Some(v) => v,
                                None => (rule.default)(self),
                            }
                        },
                    )? )*
                })
            }

            /// Every flag at this recipe's default.
            pub(crate) fn defaults(&self) -> RunConfig {
                RunConfig {
                    program: self.program.to_string(),
                    dataset: self.dataset,
                    parallel: Default::default(),
                    program_settings: None,
                    $( $( $field: {
                        let rule: Flag<$ty, _> = $rule;
                        (rule.default)(self)
                    }, )? )*
                }
            }
        }

        /// `saved` with the changeable flags of `args` applied, and the fixed ones given with
        /// another value than the saved one, each as `--flag given (the run has saved)`.
        ///
        /// # Errors
        /// A flag's value cannot be used at all (`--betas` with other than two numbers).
        pub(crate) fn apply_on_resume(
            saved: &RunConfig,
            args: &Args,
        ) -> Result<(RunConfig, Vec<String>)> {
            let mut config = saved.clone();
            let mut refused = Vec::new();
            $( $(
                let rule: Flag<$ty, _> = $rule;
                if let Some(given) = (rule.given)(&args.$field)? {
                    if rule.changeable {
                        config.$field = given;
                    } else if given != saved.$field {
                        refused.push(format!(
                            "--{} {} (the run has {})",
                            stringify!($field).replace('_', "-"),
                            given.flag_text(),
                            saved.$field.flag_text()
                        ));
                    }
                }
            )? )*
            args.distributed.check_resumed(&saved.parallel, &mut |flag, given, saved| {
                if let Some(given) = given.filter(|g| *g != saved) {
                    refused.push(format!("{flag} {given} (the run has {saved})"));
                }
            });
            Ok((config, refused))
        }
    };
}

hyperparameters! {
    /// Directory holding the data set (else it is downloaded from the Hugging Face Hub)
    #[arg(long)]
    data_dir: Option<PathBuf> = optional().changeable();
    /// Output directory [default: runs/<program>-<timestamp>, -2, -3... after it if taken; with --resume, that directory]
    #[arg(long)]
    out: Option<PathBuf>;
    /// Model name
    #[arg(long)]
    model: Option<String> = value(|r| r.model.to_string());
    /// Epochs to train in total
    #[arg(long)]
    epochs: Option<usize> = value(|r| r.epochs).changeable();
    /// Training batch size
    #[arg(long)]
    batch_size: Option<usize> = value(|r| r.batch_size);
    /// Test batch size (may change on --resume: the test pass in eval mode gives each image's
    /// output alone, so the weights and accuracies do not depend on it, the test loss only in its
    /// last digits; not in a fine-tuning run that computes its backbone's features once, in test
    /// batches, nor under --schedule plateau, whose rates follow the test loss)
    #[arg(long)]
    test_batch_size: Option<usize> = value(|r| r.test_batch_size).changeable();
    /// Optimizer
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerKind> = value(|r| r.optimizer);
    /// Learning rate (OneCycle: the peak rate)
    #[arg(long)]
    lr: Option<f64> = value(|r| r.lr);
    /// SGD momentum (the recipe's; torch.optim.SGD's own default is 0); --schedule onecycle
    /// cycles it between 0.85 and 0.95, as OneCycleLR(cycle_momentum=True) does
    #[arg(long)]
    momentum: Option<f64> = value(|r| r.momentum);
    /// Adam's and AdamW's (beta1, beta2), as torch.optim.Adam(betas=...); --schedule onecycle
    /// cycles beta1 between 0.85 and 0.95, as OneCycleLR(cycle_momentum=True) does
    #[arg(long, value_delimiter = ',', num_args = 1)]
    betas: Option<Vec<f64>> = betas();
    /// Weight decay (L2 for SGD and Adam, decoupled for AdamW); the default is the recipe's for
    /// every optimizer (torch.optim.AdamW's own default is 0.01: give --weight-decay 0.01 for it);
    /// also --wd
    #[arg(long, alias = "wd")]
    weight_decay: Option<f64> = value(|r| r.weight_decay);
    /// Nesterov momentum (SGD)
    #[arg(long)]
    nesterov: bool = switch();
    /// Learning-rate schedule
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind> = value(|r| r.schedule);
    /// MultiStepLR milestones in epochs, comma separated (--schedule multistep)
    #[arg(long, value_delimiter = ',')]
    milestones: Option<Vec<usize>> = value(|r| r.milestones.to_vec());
    /// StepLR period in epochs (--schedule step)
    #[arg(long)]
    step_size: Option<usize> = value(|r| r.step_size);
    /// StepLR / MultiStepLR decay factor; ExponentialLR's factor per epoch; ReduceLROnPlateau's
    /// factor (below 1)
    #[arg(long)]
    gamma: Option<f64> = value(|r| r.gamma);
    /// ReduceLROnPlateau's patience (--schedule plateau): epochs without a better test loss
    /// after which the rate is multiplied by --gamma
    #[arg(long)]
    patience: Option<usize> = value(|_| crate::config::default_patience());
    /// CosineAnnealingWarmRestarts' T_0 (--schedule cosine-warm-restarts, which needs it):
    /// epochs of the first period, from the rate down towards 0 before the rate restarts
    #[arg(long = "t-0")]
    t_0: Option<usize> = value(|_| 1).default_in_help_text();
    /// CosineAnnealingWarmRestarts' T_mult: each period is this many times as long as the one
    /// before (1: periods of --t-0 epochs throughout)
    #[arg(long)]
    t_mult: Option<usize> = value(|_| 1);
    /// Epochs of linear warm-up, from a third of the rate, multiplied into the schedule as
    /// PyTorch's ChainedScheduler([LinearLR, schedule]) (not SequentialLR: the schedule runs
    /// from the first epoch); not with onecycle, which warms up by itself, nor with plateau
    /// (ReduceLROnPlateau cannot be chained), nor with cosine-warm-restarts (whose rates
    /// overwrite a chained warm-up's)
    #[arg(long)]
    warmup_epochs: Option<usize> = value(|_| 0);
    /// Cross-entropy label smoothing
    #[arg(long)]
    label_smoothing: Option<f64> = value(|_| 0.0);
    /// Training transform (torchvision's transforms.Compose): a preset (mnist-train,
    /// mnist-test, cifar10-train, cifar10-test, imagenet-train[:SIZE], imagenet-eval[:SIZE])
    /// or comma-separated steps among random-crop:SIZE[:PAD], flip[:P], resize:SIZE,
    /// center-crop:SIZE, random-resized-crop:SIZE[:S0:S1[:R0:R1]], then to-tensor or
    /// normalize:mnist|cifar10|imagenet|M1/M2/..:S1/S2/.. last; cifar10-train is
    /// `random-crop:32:4,flip,normalize:cifar10`
    #[arg(long)]
    train_transform: Option<String> = value(|r| r.train_transform.to_string());
    /// Test transform: a preset or steps, as --train-transform; cifar10-test is
    /// `normalize:cifar10`
    #[arg(long)]
    test_transform: Option<String> = value(|r| r.test_transform.to_string());
    /// Random seed (initialisation, data order, augmentation, dropout)
    #[arg(long)]
    seed: Option<u64> = value(|_| DEFAULT_SEED);
    /// auto, cpu, cuda or cuda:N
    #[arg(long)]
    device: Option<String> = value(|_| "auto".to_string()).changeable();
    /// Continue the run saved in this directory
    #[arg(long)]
    resume: Option<PathBuf>;
    /// Start afresh in an --out that already holds a run, replacing its checkpoints and state
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool;
    /// Train on N training images: a seeded subset keeping each class's share
    #[arg(long)]
    limit_train: Option<usize> = optional();
    /// Test on N test images: a seeded subset keeping each class's share
    #[arg(long)]
    limit_test: Option<usize> = optional();
    /// Image folders with the class folders directly in --data-dir (no train/ and test/):
    /// the share of each class held out as the test split (rounded, drawn with a fixed seed)
    #[arg(long)]
    test_fraction: Option<f64> = value(|_| datasets::FolderOptions::default().test_fraction);
    /// Data-loading threads [default: the number of CPUs] (also --num-workers, DataLoader's
    /// name; at least 1)
    #[arg(long, alias = "num-workers")]
    workers: Option<usize> = value(|_| default_workers()).default_in_help_text().changeable();
    /// f32; tf32: CUDA's f32 matrix products on TF32 tensor cores; bf16: convolutions and
    /// matrix products in bfloat16, weights and optimizer in f32
    #[arg(long, value_enum)]
    precision: Option<Precision> = value(|_| Precision::default());
    /// auto, host or device: hold the images on the GPU as u8 and crop, flip and normalise
    /// there (auto: on a GPU when the transforms allow)
    #[arg(long, value_enum)]
    data_placement: Option<DataPlacement> = value(|_| DataPlacement::default()).changeable();
    /// contiguous_format or channels_last (PyTorch's torch.channels_last: NHWC activations,
    /// cuDNN's NHWC kernels on CUDA with the cudnn feature; the same results elsewhere, slower)
    #[arg(long, value_enum)]
    memory_format: Option<MemoryFormat> = value(|_| MemoryFormat::default()).changeable();
    /// Data-parallel training: --distributed, --sync-bn, --drop-last
    #[command(flatten)]
    distributed: crate::distributed::DistributedArgs;
}

/// One worker per CPU, up to the loader's [`datasets::MAX_WORKERS`] (a machine of more CPUs
/// would otherwise have its default refused).
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(datasets::MAX_WORKERS)
}

impl RunConfig {
    /// A one-epoch run of `model` on `dataset` with PyTorch's defaults elsewhere: SGD at 0.01
    /// with momentum 0.9, a constant rate, batches of 64 (1000 for testing), the data set's
    /// transform presets, seed 1, the CPU, one worker. Programs start from their [`Recipe`];
    /// this is for code that builds a run by hand:
    ///
    /// ```
    /// use train::config::{DatasetKind, RunConfig};
    /// let config = RunConfig { epochs: 3, ..RunConfig::new("mine", DatasetKind::Mnist, "lenet5") };
    /// assert_eq!(config.train_transform, "mnist-train");
    /// ```
    pub fn new(program: &str, dataset: DatasetKind, model: &str) -> Self {
        let spec = dataset.spec();
        let by_hand = Recipe {
            program: "",
            about: "",
            dataset,
            models: &[],
            model: "",
            optimizer: OptimizerKind::Sgd,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
            schedule: ScheduleKind::Constant,
            milestones: &[],
            step_size: DEFAULT_STEP_SIZE,
            gamma: 0.1,
            epochs: 1,
            batch_size: 64,
            test_batch_size: 1000,
            train_transform: spec.train_transform,
            test_transform: spec.test_transform,
        };
        Self {
            program: program.into(),
            model: model.into(),
            betas: None,
            step_size: 1,
            device: "cpu".into(),
            workers: 1,
            ..by_hand.defaults()
        }
    }
}

/// clap's parser of a `--weights`-like flag: a non-empty text, as clap's
/// `NonEmptyStringValueParser` takes it, but a value that is not UTF-8 (a Latin-1 file name,
/// say) is refused naming the flag and what to do, where clap's parser says only "invalid
/// UTF-8 was detected in one or more arguments".
#[derive(Debug, Clone, Copy, Default)]
pub struct Utf8Text;

impl clap::builder::TypedValueParser for Utf8Text {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> std::result::Result<String, clap::Error> {
        if value.to_str().is_some() {
            return clap::builder::NonEmptyStringValueParser::new().parse_ref(cmd, arg, value);
        }
        let flag = arg
            .and_then(clap::Arg::get_long)
            .map_or_else(|| "the value".to_string(), |l| format!("--{l}"));
        let why = format!(
            "{flag} {}: the path is not valid UTF-8 (shown with U+FFFD for what is not), and it \
             is kept and reported as text; give a path of UTF-8 names (a link to the file, say)\n",
            value.to_string_lossy()
        );
        Err(clap::Error::raw(clap::error::ErrorKind::ValueValidation, why).with_cmd(cmd))
    }
}
