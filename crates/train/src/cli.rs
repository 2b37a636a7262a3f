//! The command line shared by the training programs: flags in the style of PyTorch's examples,
//! program defaults from a [`Recipe`], resuming, and the run itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{ArgMatches, Args as _, Command, FromArgMatches as _};
use datasets::Dataset;

use crate::config::{
    DataPlacement, DatasetKind, OptimizerKind, Precision, RunConfig, ScheduleKind, ADAM_BETAS,
};
use crate::inference::{evaluate, predict, EvaluateArgs, PredictArgs};
use crate::run::{run, Outcome};
use crate::rundir::RunDir;
use crate::state;

/// The flags of every training program. Unset flags take the program's [`Recipe`] defaults
/// (shown in `--help`); on `--resume`, the saved run's configuration.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Directory holding the data set (else it is downloaded from the Hugging Face Hub)
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output directory [default: runs/<program>-<timestamp>; with --resume, that directory]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Model name (see the zoo)
    #[arg(long)]
    pub model: Option<String>,
    /// Epochs to train in total
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Training batch size
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Test batch size
    #[arg(long)]
    pub test_batch_size: Option<usize>,
    /// Optimizer
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// Learning rate (OneCycle: the peak rate)
    #[arg(long)]
    pub lr: Option<f64>,
    /// SGD momentum
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Adam's and AdamW's (beta1, beta2), as torch.optim.Adam(betas=...)
    #[arg(long, value_delimiter = ',', num_args = 1)]
    pub betas: Option<Vec<f64>>,
    /// Weight decay (L2 for SGD and Adam, decoupled for AdamW)
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Nesterov momentum (SGD)
    #[arg(long)]
    pub nesterov: bool,
    /// Learning-rate schedule
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// MultiStepLR milestones in epochs, comma separated
    #[arg(long, value_delimiter = ',')]
    pub milestones: Option<Vec<usize>>,
    /// StepLR period in epochs
    #[arg(long)]
    pub step_size: Option<usize>,
    /// StepLR / MultiStepLR decay factor
    #[arg(long)]
    pub gamma: Option<f64>,
    /// Epochs of linear warm-up before the schedule
    #[arg(long)]
    pub warmup_epochs: Option<usize>,
    /// Cross-entropy label smoothing
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Training transform: a preset (mnist-train, cifar10-train, ...) or steps such as
    /// `random-crop:32:4,flip,normalize:cifar10`
    #[arg(long)]
    pub train_transform: Option<String>,
    /// Test transform: a preset (mnist-test, cifar10-test, ...) or steps
    #[arg(long)]
    pub test_transform: Option<String>,
    /// Random seed (initialisation, data order, augmentation, dropout)
    #[arg(long)]
    pub seed: Option<u64>,
    /// auto, cpu, cuda or cuda:N
    #[arg(long)]
    pub device: Option<String>,
    /// Continue the run saved in this directory
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start afresh in an --out that already holds a run, replacing its checkpoints and state
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Train on N training images: a seeded subset keeping each class's share
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Test on N test images: a seeded subset keeping each class's share
    #[arg(long)]
    pub limit_test: Option<usize>,
    /// Data-loading threads [default: the number of CPUs]
    #[arg(long)]
    pub workers: Option<usize>,
    /// f32; tf32: CUDA's f32 matrix products on TF32 tensor cores; bf16: convolutions and
    /// matrix products in bfloat16, weights and optimizer in f32
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// auto, host or device: hold the images on the GPU as u8 and crop, flip and normalise
    /// there (auto: on a GPU when the transforms allow)
    #[arg(long, value_enum)]
    pub data_placement: Option<DataPlacement>,
    #[command(flatten)]
    pub distributed: crate::distributed::DistributedArgs,
}

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

const DEFAULT_SEED: u64 = 1;
const DEFAULT_STEP_SIZE: usize = 30;

impl Recipe {
    /// The clap command: [`Args`] with this recipe's defaults in the help text.
    pub fn command(&self) -> Command {
        let milestones: Vec<String> = self.milestones.iter().map(|m| m.to_string()).collect();
        let defaults = [
            ("model", self.model.to_string()),
            ("epochs", self.epochs.to_string()),
            ("batch_size", self.batch_size.to_string()),
            ("test_batch_size", self.test_batch_size.to_string()),
            ("optimizer", format!("{:?}", self.optimizer).to_lowercase()),
            ("lr", self.lr.to_string()),
            ("momentum", self.momentum.to_string()),
            ("betas", format!("{},{}", ADAM_BETAS.0, ADAM_BETAS.1)),
            ("weight_decay", self.weight_decay.to_string()),
            ("schedule", format!("{:?}", self.schedule).to_lowercase()),
            ("milestones", milestones.join(",")),
            ("step_size", DEFAULT_STEP_SIZE.to_string()),
            ("gamma", self.gamma.to_string()),
            ("warmup_epochs", "0".to_string()),
            ("label_smoothing", "0".to_string()),
            ("train_transform", self.train_transform.to_string()),
            ("test_transform", self.test_transform.to_string()),
            ("seed", DEFAULT_SEED.to_string()),
            ("device", "auto".to_string()),
            ("precision", "f32".to_string()),
            ("data_placement", "auto".to_string()),
        ];
        // After the flags: their struct's doc comment would otherwise become the description.
        let mut cmd = Args::augment_args(Command::new(self.program)).about(self.about);
        for (id, value) in defaults {
            cmd = cmd.mut_arg(id, |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                a.help(format!("{help} [default: {value}]"))
            });
        }
        if !self.models.is_empty() {
            let models = self.models.join("|");
            cmd = cmd.mut_arg("model", |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                a.help(format!("{help}: {models}"))
            });
        }
        cmd.args_conflicts_with_subcommands(true)
            .subcommand(EvaluateArgs::augment_args(Command::new("evaluate").about(
                "Evaluate a run's checkpoint on its test split: loss, top-1, top-5, per-class \
                 accuracy, confusion matrix",
            )))
            .subcommand(PredictArgs::augment_args(Command::new("predict").about(
                "Print the top-5 classes of images under a run's checkpoint",
            )))
    }

    /// Parses `argv` (program name first) into [`Args`].
    pub fn parse<I, T>(&self, argv: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches: ArgMatches = self.command().try_get_matches_from(argv)?;
        Args::from_arg_matches(&matches)
    }

    /// The configuration of a fresh run: the flags given, this recipe's defaults for the rest.
    pub fn config(&self, args: &Args) -> Result<RunConfig> {
        let model = args.model.clone().unwrap_or_else(|| self.model.to_string());
        if !self.models.is_empty() && !self.models.contains(&model.as_str()) {
            bail!(
                "{} trains {}; --model {model} is not one of them",
                self.program,
                self.models.join(" or ")
            );
        }
        let optimizer = args.optimizer.unwrap_or(self.optimizer);
        let adam = optimizer != OptimizerKind::Sgd;
        if adam && args.momentum.is_some() {
            bail!("--momentum is SGD's; Adam's beta1 is the first of --betas (default 0.9,0.999)");
        }
        if !adam && args.betas.is_some() {
            bail!("--betas are Adam's and AdamW's; SGD takes --momentum");
        }
        let betas = match args.betas.as_deref() {
            None => adam.then_some(ADAM_BETAS),
            Some(&[b1, b2]) => Some((b1, b2)),
            Some(other) => bail!("--betas takes two numbers (beta1,beta2), got {other:?}"),
        };
        let config = RunConfig {
            program: self.program.to_string(),
            dataset: self.dataset,
            data_dir: args.data_dir.clone(),
            model,
            epochs: args.epochs.unwrap_or(self.epochs),
            batch_size: args.batch_size.unwrap_or(self.batch_size),
            test_batch_size: args.test_batch_size.unwrap_or(self.test_batch_size),
            optimizer,
            lr: args.lr.unwrap_or(self.lr),
            momentum: args.momentum.unwrap_or(self.momentum),
            betas,
            weight_decay: args.weight_decay.unwrap_or(self.weight_decay),
            nesterov: args.nesterov,
            schedule: args.schedule.unwrap_or(self.schedule),
            milestones: args
                .milestones
                .clone()
                .unwrap_or_else(|| self.milestones.to_vec()),
            step_size: args.step_size.unwrap_or(DEFAULT_STEP_SIZE),
            gamma: args.gamma.unwrap_or(self.gamma),
            warmup_epochs: args.warmup_epochs.unwrap_or(0),
            label_smoothing: args.label_smoothing.unwrap_or(0.0),
            train_transform: args
                .train_transform
                .clone()
                .unwrap_or_else(|| self.train_transform.to_string()),
            test_transform: args
                .test_transform
                .clone()
                .unwrap_or_else(|| self.test_transform.to_string()),
            seed: args.seed.unwrap_or(DEFAULT_SEED),
            device: args.device.clone().unwrap_or_else(|| "auto".to_string()),
            limit_train: args.limit_train,
            limit_test: args.limit_test,
            workers: args.workers.unwrap_or_else(default_workers),
            precision: args.precision.unwrap_or_default(),
            data_placement: args.data_placement.unwrap_or_default(),
            parallel: args.distributed.config(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Runs the program with parsed flags: a fresh run, or a resumed one with `--resume`.
    /// The output directory is checked and locked (see [`RunDir`]) before the data is loaded.
    pub fn run(&self, args: &Args) -> Result<Outcome> {
        crate::distributed::launch(&args.distributed, || self.run_here(args))
    }

    /// [`Recipe::run`] in this process (one rank of a data-parallel job, or alone).
    fn run_here(&self, args: &Args) -> Result<Outcome> {
        let Some(dir) = &args.resume else {
            let config = self.config(args)?;
            let out = self.fresh_dir(args)?;
            return run(&config, load_data(&config)?, out.path(), None);
        };
        let (dir, saved, tensors) = self.resume_dir(dir, args)?;
        let config = resumed_config(&saved.config, args)?;
        run(
            &config,
            load_data(&config)?,
            dir.path(),
            Some((saved, tensors)),
        )
    }

    /// The locked output directory of a fresh run: `--out`, or `runs/<program>-<timestamp>`.
    pub fn fresh_dir(&self, args: &Args) -> Result<RunDir> {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| default_out(self.program));
        RunDir::fresh(&out, args.overwrite)
    }

    /// Locks the run directory `dir` and reads its state, refusing a run another program made
    /// and an `--out` elsewhere.
    pub fn resume_dir(
        &self,
        dir: &Path,
        args: &Args,
    ) -> Result<(RunDir, state::ResumeState, state::StateTensors)> {
        if args.out.as_ref().is_some_and(|o| o != dir) {
            bail!("--resume continues in its own directory; leave out --out or give the same directory");
        }
        let locked = RunDir::existing(dir)?;
        let (saved, tensors) = state::load(dir)?;
        if saved.config.program != self.program {
            bail!(
                "--resume {}: that run was made by {}, not {}; continue it with {}",
                dir.display(),
                saved.config.program,
                self.program,
                saved.config.program
            );
        }
        Ok((locked, saved, tensors))
    }

    /// The whole program: parse the process's arguments, run, report errors.
    pub fn main(&self) -> Result<()> {
        crate::memory::keep_freed_memory();
        let matches = self
            .command()
            .try_get_matches_from(std::env::args_os())
            .unwrap_or_else(|e| e.exit());
        match matches.subcommand() {
            Some(("evaluate", m)) => evaluate(&EvaluateArgs::from_arg_matches(m)?).map(drop),
            Some(("predict", m)) => predict(&PredictArgs::from_arg_matches(m)?),
            _ => self.run(&Args::from_arg_matches(&matches)?).map(drop),
        }
    }
}

/// The saved configuration, with the flags a resumed run may change applied: `--epochs`,
/// `--device`, `--workers`, `--data-placement`, `--data-dir`, `--distributed`. Other training flags may be given
/// with the saved value (re-running the same command with `--resume` added works); a different
/// value is refused, naming the flag, the saved value and the given one, since it would make
/// the run differ from the one being continued.
pub fn resumed_config(saved: &RunConfig, args: &Args) -> Result<RunConfig> {
    let mut changed = Vec::new();
    let mut check = |flag: &str, given: Option<String>, saved: String| {
        if let Some(given) = given.filter(|g| *g != saved) {
            changed.push(format!("{flag} {given} (the run has {saved})"));
        }
    };
    let text = |v: &dyn std::fmt::Debug| format!("{v:?}").to_lowercase();
    check("--model", args.model.clone(), saved.model.clone());
    check(
        "--batch-size",
        args.batch_size.map(|v| v.to_string()),
        saved.batch_size.to_string(),
    );
    check(
        "--test-batch-size",
        args.test_batch_size.map(|v| v.to_string()),
        saved.test_batch_size.to_string(),
    );
    check(
        "--optimizer",
        args.optimizer.map(|v| text(&v)),
        text(&saved.optimizer),
    );
    check("--lr", args.lr.map(|v| v.to_string()), saved.lr.to_string());
    check(
        "--momentum",
        args.momentum.map(|v| v.to_string()),
        saved.momentum.to_string(),
    );
    check(
        "--betas",
        args.betas.as_ref().map(|v| text(v)),
        text(&saved.betas.map(|(a, b)| vec![a, b]).unwrap_or_default()),
    );
    check(
        "--weight-decay",
        args.weight_decay.map(|v| v.to_string()),
        saved.weight_decay.to_string(),
    );
    check(
        "--nesterov",
        args.nesterov.then(|| "true".into()),
        saved.nesterov.to_string(),
    );
    check(
        "--schedule",
        args.schedule.map(|v| text(&v)),
        text(&saved.schedule),
    );
    check(
        "--milestones",
        args.milestones.as_ref().map(|v| text(v)),
        text(&saved.milestones),
    );
    check(
        "--step-size",
        args.step_size.map(|v| v.to_string()),
        saved.step_size.to_string(),
    );
    check(
        "--gamma",
        args.gamma.map(|v| v.to_string()),
        saved.gamma.to_string(),
    );
    check(
        "--warmup-epochs",
        args.warmup_epochs.map(|v| v.to_string()),
        saved.warmup_epochs.to_string(),
    );
    check(
        "--label-smoothing",
        args.label_smoothing.map(|v| v.to_string()),
        saved.label_smoothing.to_string(),
    );
    check(
        "--train-transform",
        args.train_transform.clone(),
        saved.train_transform.clone(),
    );
    check(
        "--test-transform",
        args.test_transform.clone(),
        saved.test_transform.clone(),
    );
    check(
        "--seed",
        args.seed.map(|v| v.to_string()),
        saved.seed.to_string(),
    );
    check(
        "--limit-train",
        args.limit_train.map(|v| v.to_string()),
        saved.limit_train.map_or("none".into(), |v| v.to_string()),
    );
    check(
        "--limit-test",
        args.limit_test.map(|v| v.to_string()),
        saved.limit_test.map_or("none".into(), |v| v.to_string()),
    );
    check(
        "--precision",
        args.precision.map(|v| text(&v)),
        text(&saved.precision),
    );
    args.distributed.check_resumed(&saved.parallel, &mut check);
    if !changed.is_empty() {
        bail!(
            "--resume continues the saved configuration; these flags differ from it: {} (only \
             --epochs, --device, --workers, --data-placement, --data-dir and --distributed can \
             change)",
            changed.join(", ")
        );
    }
    let mut config = saved.clone();
    if let Some(epochs) = args.epochs {
        config.epochs = epochs;
    }
    if let Some(device) = &args.device {
        config.device = device.clone();
    }
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    if let Some(placement) = args.data_placement {
        config.data_placement = placement;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = Some(dir.clone());
    }
    config.validate()?;
    Ok(config)
}

/// Loads the configured data set (see [`datasets::catalog::load`]); with `--limit-train` /
/// `--limit-test`, keeps a seeded stratified subset of each half
/// ([`datasets::stratified_indices`]), the same for a given seed, and logs its class counts
/// when they are unbalanced.
pub fn load_data(config: &RunConfig) -> Result<datasets::Split> {
    let split = datasets::catalog::load(config.dataset.spec(), config.data_dir.as_deref())
        .context("cannot load the data set")?;
    Ok(datasets::Split {
        train: limited(split.train, config.limit_train, config.seed, "train")?,
        test: limited(split.test, config.limit_test, config.seed, "test")?,
    })
}

/// `data`, or `limit` of its samples chosen by [`datasets::stratified_indices`].
fn limited(
    data: Arc<dyn Dataset>,
    limit: Option<usize>,
    seed: u64,
    what: &str,
) -> Result<Arc<dyn Dataset>> {
    let Some(limit) = limit.filter(|&l| l < data.len()) else {
        return Ok(data);
    };
    let indices = datasets::stratified_indices(data.as_ref(), limit, seed);
    let subset = datasets::Subset::new(data.clone(), indices)?;
    let mut counts = vec![0usize; subset.classes().len()];
    for i in 0..subset.len() {
        counts[subset.label(i)] += 1;
    }
    let (least, most) = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    );
    if most > least.max(1) * 3 / 2 {
        let shown: Vec<String> = subset
            .classes()
            .iter()
            .zip(&counts)
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        crate::say!(
            "{what}: {limit} of {} images, classes unbalanced: {}",
            data.len(),
            shown.join(", ")
        );
    }
    Ok(Arc::new(subset))
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `runs/<program>-<UTC timestamp>`.
pub fn default_out(program: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from("runs").join(format!("{program}-{}", utc_timestamp(secs)))
}

/// `YYYYmmdd-HHMMSS` for seconds since the Unix epoch (UTC; civil-from-days by H. Hinnant).
fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: Recipe = Recipe {
        program: "train-test",
        about: "test",
        dataset: DatasetKind::Mnist,
        models: &["lenet5", "cnn-mnist"],
        model: "cnn-mnist",
        optimizer: OptimizerKind::Adam,
        lr: 1e-3,
        momentum: 0.9,
        weight_decay: 0.0,
        schedule: ScheduleKind::Constant,
        milestones: &[],
        gamma: 0.1,
        epochs: 16,
        batch_size: 64,
        test_batch_size: 1000,
        train_transform: "mnist-train",
        test_transform: "mnist-test",
    };

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(0), "19700101-000000");
        assert_eq!(utc_timestamp(951_782_400 + 3_723), "20000229-010203");
        assert_eq!(utc_timestamp(1_767_225_599), "20251231-235959");
    }

    #[test]
    fn defaults_flags_and_resume_rules() -> Result<()> {
        let args = RECIPE.parse([
            "prog",
            "--epochs",
            "2",
            "--milestones",
            "3,5",
            "--lr",
            "0.5",
        ])?;
        let config = RECIPE.config(&args)?;
        assert_eq!(config.epochs, 2);
        assert_eq!(config.batch_size, 64);
        assert_eq!(config.milestones, [3, 5]);
        assert_eq!(config.lr, 0.5);
        assert_eq!(config.optimizer, OptimizerKind::Adam);
        let bad = RECIPE.parse(["prog", "--model", "resnet18-seed"])?;
        assert!(RECIPE.config(&bad).is_err());
        assert!(RECIPE.parse(["prog", "--schedule", "nope"]).is_err());

        let resume = RECIPE.parse(["prog", "--resume", "x", "--epochs", "4"])?;
        assert_eq!(resumed_config(&config, &resume)?.epochs, 4);
        assert_eq!(config.precision, Precision::F32);
        assert_eq!(config.data_placement, DataPlacement::Auto);
        let bf16 = RECIPE.parse(["prog", "--precision", "bf16", "--data-placement", "host"])?;
        let bf16 = RECIPE.config(&bf16)?;
        assert_eq!(bf16.precision.autocast(), Some(candle_core::DType::BF16));
        assert_eq!(bf16.data_placement, DataPlacement::Host);
        let tf32 = RECIPE.config(&RECIPE.parse(["prog", "--precision", "tf32"])?)?;
        assert_eq!(tf32.precision, Precision::Tf32);
        assert_eq!(tf32.precision.autocast(), None);
        assert!(RECIPE.parse(["prog", "--precision", "fp8"]).is_err());
        let moved = RECIPE.parse(["prog", "--resume", "x", "--data-placement", "device"])?;
        assert_eq!(
            resumed_config(&config, &moved)?.data_placement,
            DataPlacement::Device
        );
        let cast = RECIPE.parse(["prog", "--resume", "x", "--precision", "bf16"])?;
        assert!(resumed_config(&config, &cast).is_err());
        let betas = RECIPE.config(&RECIPE.parse(["prog", "--betas", "0.8,0.99"])?)?;
        assert_eq!(betas.betas, Some((0.8, 0.99)));
        assert_eq!(config.adam_betas(), ADAM_BETAS);
        for bad in [
            &["prog", "--momentum", "0.5"][..],
            &["prog", "--betas", "0.9"],
            &["prog", "--betas", "0.9,1.5"],
            &["prog", "--optimizer", "sgd", "--betas", "0.9,0.99"],
        ] {
            assert!(RECIPE.config(&RECIPE.parse(bad)?).is_err(), "{bad:?}");
        }
        let same = RECIPE.parse(["prog", "--resume", "x", "--betas", "0.9,0.999"])?;
        assert!(resumed_config(&config, &same).is_ok());
        let refused = RECIPE.parse(["prog", "--resume", "x", "--lr", "0.1"])?;
        let err = resumed_config(&config, &refused)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("--lr")));
        Ok(())
    }

    #[test]
    fn help_shows_the_recipe_defaults() {
        let help = RECIPE.command().render_help().to_string();
        assert!(help.starts_with("test\n"), "{help}");
        assert!(help.contains("[default: 1000]"), "{help}");
        assert!(help.contains("lenet5|cnn-mnist"), "{help}");
    }
}
