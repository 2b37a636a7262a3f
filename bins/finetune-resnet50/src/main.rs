//! Fine-tune an ImageNet-pretrained ResNet (ResNet-50, or with `--model` any of torchvision's
//! `resnet18` ... `resnet152`) on CIFAR-10 or your own image folders (the tutorial's transfer
//! learning), and predict with any such checkpoint.
//!
//! `cargo run -p finetune-resnet50 -- --data-dir ../shared/data/cifar10 --image-size 64 --limit-train 2000`
//! `cargo run -p finetune-resnet50 -- predict --image cat.jpg`

mod classes;
mod finetune;
mod predict;
mod weights;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{FromArgMatches, Parser, Subcommand};
use train::cli::Recipe;
use train::config::{DatasetKind, OptimizerKind, ScheduleKind};

use crate::finetune::{dataset_kind, FineTuneConfig};
use transfer::Unfreeze;

/// The transfer-learning recipe of PyTorch's tutorial: SGD lr 0.001 momentum 0.9 on the new
/// head, the rate divided by 10 every 7 epochs (`StepLR(step_size=7, gamma=0.1)`).
const RECIPE: Recipe = Recipe {
    program: "finetune-resnet50",
    about: "Fine-tune an ImageNet-pretrained ResNet (ResNet-50 unless --model says; backbone \
            frozen, new head)",
    dataset: DatasetKind::Cifar10,
    models: &transfer::MODELS,
    model: transfer::MODEL,
    optimizer: OptimizerKind::Sgd,
    lr: 0.001,
    momentum: 0.9,
    weight_decay: 0.0,
    schedule: ScheduleKind::Step,
    milestones: &[7],
    step_size: 7,
    gamma: 0.1,
    epochs: 10,
    batch_size: 64,
    test_batch_size: 128,
    train_transform: "imagenet-eval",
    test_transform: "imagenet-eval",
};

#[derive(Parser, Debug)]
// A flag given twice takes its last value, as argparse does.
#[command(name = "finetune-resnet50", version, about = RECIPE.about, args_conflicts_with_subcommands = true, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    finetune: FineTuneArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the top-5 classes of images under a ResNet checkpoint (any of torchvision's five)
    Predict(PredictArgs),
    /// Evaluate a run's checkpoint on its test split (or, with --model, a checkpoint file on
    /// CIFAR-10's or an image folder's): loss, top-1, top-5, per-class accuracy, confusion matrix
    Evaluate(train::inference::EvaluateArgs),
}

#[derive(clap::Args, Debug)]
struct FineTuneArgs {
    /// Pretrained weights: a .safetensors file or a Hugging Face Hub model id (owner/name, or
    /// owner/name@REVISION to pin a branch, tag or commit) [default: torchvision's ImageNet
    /// weights of --model, timm/resnet50.tv_in1k for resnet50]
    #[arg(long, value_parser = train::flags::Utf8Text)]
    weights: Option<String>,
    /// Train on an ImageFolder at --data-dir (ROOT/<class>/*.jpg, or ROOT/train + ROOT/test)
    /// instead of CIFAR-10
    #[arg(long)]
    folder: bool,
    /// Side of the square network input (smaller is faster on a CPU) [default: 224]
    #[arg(long, value_parser = image_size())]
    image_size: Option<usize>,
    /// How much of the backbone trains besides the new head [default: none]
    #[arg(long, value_enum)]
    unfreeze: Option<Unfreeze>,
    /// RandomResizedCrop + horizontal flip for training (turns off feature caching)
    #[arg(long)]
    augment: bool,
    #[command(flatten)]
    train: train::cli::Args,
}

impl FineTuneArgs {
    /// A fresh run's fine-tuning settings: the flags, or their defaults.
    fn fresh(&self) -> FineTuneConfig {
        FineTuneConfig {
            weights: self.weights.as_deref().map_or_else(
                || transfer::default_weights(self.train.model.as_deref().unwrap_or(RECIPE.model)),
                weights::saved_form,
            ),
            unfreeze: self.unfreeze.unwrap_or(Unfreeze::None),
            image_size: self.image_size.unwrap_or(224),
            augment: self.augment,
        }
    }

    /// A resumed run's fine-tuning settings: the saved ones. A flag given with another value
    /// is refused (as the training flags are), naming it, the saved value and the given one.
    fn resumed(&self, saved: FineTuneConfig, dir: &std::path::Path) -> Result<FineTuneConfig> {
        let name = |u: Unfreeze| {
            clap::ValueEnum::to_possible_value(&u)
                .map_or_else(|| format!("{u:?}"), |v| v.get_name().to_string())
        };
        let mut differ = Vec::new();
        if let Some(w) = self
            .weights
            .as_ref()
            .filter(|w| !weights::same(w, &saved.weights))
        {
            differ.push(format!(
                "--weights {w} (the run has {}; leave --weights out to resume: the run's state \
                 holds its weights)",
                saved.weights
            ));
        }
        if let Some(u) = self.unfreeze.filter(|u| *u != saved.unfreeze) {
            differ.push(format!(
                "--unfreeze {} (the run has {})",
                name(u),
                name(saved.unfreeze)
            ));
        }
        if let Some(s) = self.image_size.filter(|s| *s != saved.image_size) {
            differ.push(format!(
                "--image-size {s} (the run has {})",
                saved.image_size
            ));
        }
        if self.augment && !saved.augment {
            differ.push("--augment (the run trained without augmentation)".into());
        }
        if !differ.is_empty() {
            bail!(
                "--resume {} continues the saved fine-tuning; these flags differ from it: {}",
                dir.display(),
                differ.join(", ")
            );
        }
        Ok(saved)
    }
}

#[derive(clap::Args, Debug)]
struct PredictArgs {
    /// A fine-tuning run (what --out was): its checkpoint (--weights best, last or a file),
    /// classes, image size and precision
    #[arg(long, conflicts_with = "image_size")]
    run: Option<PathBuf>,
    /// A .safetensors file or a Hub model id (owner/name[@REVISION]); a fine-tuning run's
    /// checkpoint (RUN/best.safetensors)
    /// is read as --run RUN reads it unless --image-size is given; with --run: best, last or a
    /// .safetensors file [default: timm/resnet50.tv_in1k; with --run: best]
    #[arg(long, value_parser = train::flags::Utf8Text)]
    weights: Option<String>,
    /// Images to classify; a folder stands for the image files in it and below it
    #[arg(long, num_args = 1..)]
    image: Vec<PathBuf>,
    /// More images (or folders of images) to classify
    images: Vec<PathBuf>,
    /// Side of the network input (Resize to size*256/224, CenterCrop to size, ImageNet's
    /// normalisation) [default: 224; a fine-tuning run's checkpoint: the run's transform]
    #[arg(long, value_parser = image_size())]
    image_size: Option<usize>,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    /// f32, tf32 or bf16 (autocast) [default: the run's precision; f32 for other weights]
    #[arg(long, value_enum)]
    precision: Option<train::config::Precision>,
    /// Also print each image's logits (the network's outputs before softmax, PyTorch's
    /// `model(x)`): one line `logits: [...]` in label order, each value at float32's full
    /// precision, a Python list
    #[arg(long)]
    logits: bool,
}

/// `--image-size`: a ResNet halves its input five times; 32 is the least that leaves a pixel.
fn image_size() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(32..=4096)
}

/// Running out of memory ends in an error saying what to do, not in an abort.
#[global_allocator]
static ALLOCATOR: train::memory::ReportOutOfMemory = train::memory::ReportOutOfMemory;

fn main() -> Result<()> {
    train::cli::set_up_process();
    // The recipe's defaults in --help (the transforms' depend on --augment and --image-size).
    let command = RECIPE
        .with_defaults(
            <Cli as clap::CommandFactory>::command(),
            &["train_transform", "test_transform"],
        )
        .mut_args(|a| {
            let default = match a.get_id().as_str() {
                "train_transform" => {
                    "imagenet-eval:SIZE, or imagenet-train:SIZE with --augment; SIZE is --image-size"
                }
                "test_transform" => "imagenet-eval:SIZE, SIZE is --image-size",
                _ => return a,
            };
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            a.help(format!("{help} [default: {default}]"))
        })
        // `--limit-test -5` is a value to refuse, not an unknown flag, there too.
        .mut_subcommand("evaluate", |c| c.allow_negative_numbers(true))
        .mut_subcommand("predict", |c| c.allow_negative_numbers(true));
    let matches = command
        .try_get_matches()
        .unwrap_or_else(|e| train::cli::exit_for_clap(e));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| train::cli::exit_for_clap(e));
    let result = match cli.command {
        Some(Command::Predict(mut args)) => {
            // In the order given, --image and the positional images mixed.
            if let Some(m) = matches.subcommand_matches("predict") {
                args.image = train::inference::images_in_order(m);
                args.images.clear();
            }
            predict(&args)
        }
        Some(Command::Evaluate(args)) => {
            // `--model`'s checkpoint file is scored on what --data-dir holds, read as training
            // reads it: CIFAR-10, or any other folder of class folders as an image folder (a
            // PyTorch ImageFolder run's weights on its own folders). A run names its data set.
            let recipe = match (&args.model, &args.data_dir, &args.run) {
                (Some(_), Some(dir), None) => Recipe {
                    dataset: dataset_kind(false, Some(dir)),
                    ..RECIPE
                },
                _ => RECIPE,
            };
            train::inference::evaluate(&args, &recipe).map(drop)
        }
        None => {
            let distributed = cli.finetune.train.distributed.clone();
            train::cli::exit_status(train::distributed::launch(&distributed, || {
                run(cli.finetune)
            }))
        }
    };
    train::progress::stdout_written(result)
}

fn predict(args: &PredictArgs) -> Result<()> {
    let images: Vec<PathBuf> = args.image.iter().chain(&args.images).cloned().collect();
    if images.is_empty() {
        bail!("predict needs images: predict [--run DIR | --weights W] IMAGE...");
    }
    // A run's checkpoint given as --weights RUN/best.safetensors (or last) is read as --run RUN
    // reads it (the same answer): its transform (a CIFAR-10 run's images at 32x32 first),
    // image size, classes and precision; a train-cifar run's too (read at 224 with ImageNet's
    // normalisation, it answered otherwise). --image-size asks for ImageNet's preprocessing at
    // that size instead; other files in a run's folder (ImageNet's weights, say) are read as
    // files.
    let beside = match (&args.run, &args.weights, args.image_size) {
        (None, Some(weights), None) => Some(Path::new(weights))
            .filter(|w| {
                w.is_file()
                    && w.file_name()
                        .is_some_and(|n| n == train::rundir::BEST || n == train::rundir::LAST)
            })
            .and_then(train::inference::run_beside),
        _ => None,
    };
    if let Some((dir, config)) = &beside {
        // On stderr: stdout holds the predictions that scripts read.
        train::warn!(
            "{}: a checkpoint of the {} run in {}: read as --run {} --weights FILE (its \
             transform, image size, classes and precision)",
            args.weights.as_deref().unwrap_or_default(),
            config.program,
            dir.display(),
            dir.display()
        );
    }
    let beside = beside.map(|(dir, _)| dir);
    if let Some(run) = args.run.as_ref().or(beside.as_ref()) {
        // The run names its data set: the kind given here is not read.
        return train::inference::predict(
            &train::inference::PredictArgs {
                run: Some(run.clone()),
                image: Vec::new(),
                images,
                weights: args.weights.clone().unwrap_or_else(|| "best".into()),
                model: None,
                device: args.device.clone(),
                precision: args.precision,
                logits: args.logits,
            },
            train::config::DatasetKind::Folder,
        );
    }
    let _precision = args.precision.unwrap_or_default().enter();
    let device = train::device::parse_device(&args.device)?;
    let weights = args.weights.as_deref().unwrap_or(weights::DEFAULT_WEIGHTS);
    let classifier = predict::Classifier::load(weights, args.image_size, &device)?;
    let images = train::inference::folders_as_images(&images)?;
    train::inference::print_top5(&images, &[], args.logits, |image| classifier.predict(image))
}

fn run(args: FineTuneArgs) -> Result<()> {
    if let Some(dir) = &args.train.resume {
        let (locked, saved, tensors) = RECIPE.resume_dir(dir, &args.train)?;
        let ft = match (&saved.config.program_settings, FineTuneConfig::exists(dir)) {
            // The state keeps the settings: a removed finetune.json is written again.
            (Some(kept), false) => {
                train::warn!(
                    "{} was missing: the fine-tuning settings are those {} keeps (it is \
                     written again)",
                    dir.join(train::rundir::FINETUNE).display(),
                    train::rundir::STATE
                );
                serde_json::from_value(kept.clone())?
            }
            _ => FineTuneConfig::load(dir)?,
        };
        ft.check_agrees_with_state(&saved.config, dir)?;
        // Both the fine-tuning flags and the training flags, so that every one that differs
        // is named at once.
        let (ft, config) = match (
            args.resumed(ft, dir),
            train::cli::resumed_config(&saved.config, &args.train),
        ) {
            (Ok(ft), Ok(config)) => (ft, config),
            (Err(ft), Err(training)) => bail!("{ft:#}; and {training:#}"),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        train::distributed::agree_on_run(&config, saved.epochs_done)?;
        // With the backbone's features computed once, the training images' features are
        // computed in test batches too: another size could round them otherwise.
        if config.test_batch_size != saved.config.test_batch_size
            && ft.caches_features(&datasets::Transform::parse(&config.train_transform)?)
        {
            bail!(
                "--test-batch-size {}: this run (backbone frozen, no augmentation) computes the \
                 training images' backbone features in test batches of {}, so another size \
                 could change what it trains on; give --test-batch-size {} (evaluate takes \
                 any)",
                config.test_batch_size,
                saved.config.test_batch_size,
                saved.config.test_batch_size
            );
        }
        // A finished run is said so before the weights and the data are loaded.
        if train::run::finished(
            &config,
            &saved,
            (&tensors.model, &finetune::title(&config)),
            locked.path(),
        )?
        .is_some()
        {
            // A removed finetune.json comes back, as `evaluate` and `predict` need it.
            if train::distributed::writes() {
                ft.save(locked.path())?;
            }
            return Ok(());
        }
        finetune::finetune(&config, &ft, locked.path(), Some((saved, tensors)))?;
        return Ok(());
    }
    if args.folder && args.train.data_dir.is_none() {
        bail!("--folder needs --data-dir ROOT with one subfolder per class");
    }
    if let (true, Some(given)) = (args.augment, &args.train.train_transform) {
        bail!(
            "--augment and --train-transform {given} both set the training transform (--augment \
             is imagenet-train:SIZE, RandomResizedCrop and a horizontal flip); give one of them"
        );
    }
    let ft = args.fresh();
    let (train_t, test_t) = ft.transforms();
    let mut train_args = args.train.clone();
    train_args.train_transform.get_or_insert(train_t);
    train_args.test_transform.get_or_insert(test_t);
    let mut config = RECIPE.config(&train_args)?;
    config.dataset = dataset_kind(args.folder, args.train.data_dir.as_deref());
    // --test-fraction holds out a share of class folders that stand directly in --data-dir; a
    // folder with its own test split would ignore it (an archive's layout is said once read).
    if let (Some(fraction), Some(dir)) = (args.train.test_fraction, &args.train.data_dir) {
        let split = ["test", "val"].iter().find(|d| dir.join(d).is_dir());
        if let (true, Some(split)) = (dir.join("train").is_dir(), split) {
            bail!(
                "--test-fraction {fraction}: {} has its own test split ({split}/ beside train/), \
                 which is used as it is; leave out --test-fraction, or put the class folders \
                 directly in the folder to hold out a share of each",
                dir.display()
            );
        }
    }
    // Kept with the state too, so that a resume can tell an edited finetune.json.
    config.program_settings = Some(serde_json::to_value(&ft)?);
    train::distributed::agree_on_run(&config, 0)?;
    let out = RECIPE.fresh_dir(&train_args, &config)?;
    finetune::finetune(&config, &ft, out.path(), None)?;
    Ok(())
}
