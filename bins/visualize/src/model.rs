//! The `--run` or `--model` / `--weights` options: a training run's network, or a zoo network,
//! trained or freshly initialised.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use layers::{Network, ParamStore};
use zoo::ModelSpec;

/// Which network to look at.
#[derive(Debug, Args)]
#[group(skip)]
#[command(group = clap::ArgGroup::new("network").required(true).multiple(true).args(["run", "model", "weights"]))]
pub struct ModelArgs {
    /// A training run (what --out was): its model with its checkpoint (--weights best, last or
    /// a file; default best)
    #[arg(long, conflicts_with_all = ["model", "num_classes", "seed"])]
    run: Option<PathBuf>,
    /// A model of the zoo (lenet5, cnn-mnist, alexnet, vgg16, resnet18-seed, ...).
    #[arg(long)]
    model: Option<String>,
    /// Safetensors weights under PyTorch's names, loaded strictly; without them the network
    /// keeps its seeded initial parameters. With --run: best, last or a file [default: best].
    /// Alone: a run's checkpoint (read as its run) or a torchvision ResNet's (its depth found)
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Outputs of the last layer (1 to 100000) [default: the rows of the --weights' classifier,
    /// else the model's usual number]
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    num_classes: Option<usize>,
    /// Seed of the initial parameters (used when no --weights are given) [default: 0]
    #[arg(long)]
    seed: Option<u64>,
}

/// A built network with its parameters.
pub struct Loaded {
    /// The zoo's description of the model.
    pub spec: ModelSpec,
    /// Its parameters, by PyTorch name.
    pub store: ParamStore,
    /// The network.
    pub net: Box<dyn Network>,
    /// Where the parameters come from, for titles and messages.
    pub origin: String,
    /// With `--run`: the run's configuration (its test transform) and class names.
    pub run: Option<(train::config::RunConfig, Vec<String>)>,
    /// The class names of the outputs (see [`class_names`]).
    pub classes: Vec<String>,
}

/// The names of a zoo network's `count` outputs under `weights`, by its data set
/// ([`train::inference::output_names`]; a data set the catalog lacks names none).
pub fn class_names(
    spec: &ModelSpec,
    weights: Option<&std::path::Path>,
    count: usize,
) -> Vec<String> {
    let data = datasets::catalog::spec(spec.data).unwrap_or(&datasets::catalog::FOLDER);
    train::inference::output_names(data, weights, count)
}

/// The run whose checkpoint `weights` is, when it is a run of `name`: a run's checkpoint given
/// as `--model NAME --weights RUN/best.safetensors` is read as `--run RUN` reads it (its input
/// size, transform and classes, not the model's native ones: a resnet18 trained on 32x32
/// CIFAR-10 images, say), as `predict` reads it. Said so when it is.
pub fn run_of_checkpoint(name: &str, weights: &std::path::Path) -> Option<PathBuf> {
    let (run, _) =
        train::inference::run_beside(weights).filter(|(_, config)| config.model == name)?;
    // A run's resume state is no checkpoint: the error that follows says what to take instead.
    if train::state::epochs_of_state_file(weights).is_some() {
        return Some(run);
    }
    train::say!(
        "{}: a checkpoint of the run in {}: its input size, transform and classes are used \
         (as --run {} --weights FILE)",
        weights.display(),
        run.display(),
        run.display()
    );
    Some(run)
}

/// What a `--weights FILE` given without `--run` or `--model` holds (see [`holder_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// The checkpoint of the run in this directory.
    Run(PathBuf),
    /// The weights of this torchvision ResNet (`resnet18` to `resnet152`).
    Model(&'static str),
}

/// The network `weights` holds, for `--weights FILE` given alone (as `predict --weights FILE`
/// works it out): the run beside it (or beside the file a link names) when the file is a run's
/// checkpoint (read as `--run DIR` reads it), else the torchvision ResNet its blocks make (also
/// a ResNet's file put in the folder of a run of another model). Said so.
///
/// # Errors
/// `best` or `last` (which name a run's checkpoints: `--run` is needed), a file that cannot be
/// read, or one that is neither (the message asks for `--model`).
pub fn holder_of(weights: &std::path::Path) -> Result<Holder> {
    if weights == std::path::Path::new("best") || weights == std::path::Path::new("last") {
        anyhow::bail!(
            "--weights {}: names a run's checkpoint; give --run DIR with it",
            weights.display()
        );
    }
    // Read first: a file that is no checkpoint is said so before anything else.
    let tensors = layers::checkpoint::read(weights)?;
    let resnet = transfer::weights::model_of(&tensors, weights);
    if let Some((run, config)) = train::inference::run_beside(weights) {
        // A torchvision ResNet's file put in a run's folder is that ResNet's.
        if let Ok(&found) = resnet.as_ref() {
            if found != config.model {
                train::say!(
                    "{}: torchvision's {found} weights (from their blocks; as --model {found}), \
                     not the {} run's in {}",
                    weights.display(),
                    config.model,
                    run.display()
                );
                return Ok(Holder::Model(found));
            }
        }
        // A run's resume state is no checkpoint: the error that follows says what to take.
        if train::state::epochs_of_state_file(weights).is_none() {
            train::say!(
                "{}: a checkpoint of the run in {} ({}): its input size, transform and classes \
                 are used (as --run {} --weights FILE)",
                weights.display(),
                run.display(),
                config.model,
                run.display()
            );
        }
        return Ok(Holder::Run(run));
    }
    let found = resnet.with_context(|| {
        format!(
            "--weights {}: not a training run's checkpoint (no readable config.json beside it) nor \
             torchvision's weights of a ResNet: give --model NAME, the zoo model it holds",
            weights.display()
        )
    })?;
    train::say!(
        "{}: torchvision's {found} weights (from their blocks; as --model {found})",
        weights.display()
    );
    Ok(Holder::Model(found))
}

/// `zoo::load_counting_classes`, naming the checkpoint's own model when it is another of
/// torchvision's ResNets than `name` (resnet50 weights given to `--model resnet18`, say): the
/// load's own error lists keys and shapes.
///
/// # Errors
/// As `zoo::load_counting_classes`.
pub fn load_zoo(
    name: &str,
    num_classes: Option<usize>,
    weights: Option<&std::path::Path>,
    device: &Device,
    seed: u64,
) -> Result<(Box<dyn Network>, ParamStore, usize)> {
    zoo::load_counting_classes(name, num_classes, weights, device, seed).map_err(|e| match weights
        .and_then(|w| other_depth(name, w))
    {
        Some(hint) => e.context(hint),
        None => e,
    })
}

/// The other torchvision ResNet that `weights` holds, said, when `name` is one of them.
fn other_depth(name: &str, weights: &std::path::Path) -> Option<String> {
    if !transfer::MODELS.contains(&name) {
        return None;
    }
    let tensors = layers::checkpoint::read(weights).ok()?;
    let found = transfer::weights::model_of(&tensors, weights).ok()?;
    (found != name).then(|| {
        format!(
            "{} is a torchvision {found} checkpoint, not a {name} one: give --model {found}",
            weights.display()
        )
    })
}

impl ModelArgs {
    /// Builds the model on the CPU and loads `--weights` if given, or the `--run`'s model and
    /// checkpoint.
    pub fn load(&self) -> Result<Loaded> {
        let (beside, found) = match (&self.run, &self.model, &self.weights, self.num_classes) {
            (None, Some(name), Some(weights), None) => (run_of_checkpoint(name, weights), None),
            (None, None, Some(weights), classes) => match holder_of(weights)? {
                Holder::Run(run) => {
                    // As with --run: the run's classes and its trained weights.
                    let given = match (classes, self.seed) {
                        (Some(n), _) => Some(format!("--num-classes {n}")),
                        (None, Some(seed)) => Some(format!("--seed {seed}")),
                        (None, None) => None,
                    };
                    if let Some(given) = given {
                        anyhow::bail!(
                            "{given}: {} is a run's checkpoint, read with the run's classes and \
                             weights; leave {} out",
                            weights.display(),
                            given.split(' ').next().unwrap_or_default()
                        );
                    }
                    (Some(run), None)
                }
                Holder::Model(name) => (None, Some(name.to_string())),
            },
            _ => (None, None),
        };
        let model = match (
            self.run.as_ref().or(beside.as_ref()),
            self.model.as_ref().or(found.as_ref()),
        ) {
            (Some(run), _) => {
                let weights = self
                    .weights
                    .as_deref()
                    .map_or("best".into(), |w| w.to_string_lossy().into_owned());
                let trained = train::inference::Trained::open(run, &weights, &Device::Cpu)?;
                return Ok(Loaded {
                    spec: zoo::spec(&trained.config.model)?,
                    origin: format!("trained weights from {}", trained.weights.display()),
                    store: trained.store,
                    net: trained.model,
                    classes: trained.classes.clone(),
                    run: Some((trained.config, trained.classes)),
                });
            }
            (None, Some(model)) => model,
            (None, None) => {
                anyhow::bail!("give --run DIR (a training run), --model NAME or a --weights file")
            }
        };
        let spec = zoo::spec(model)?;
        let (net, store, count) = load_zoo(
            spec.name,
            self.num_classes,
            self.weights.as_deref(),
            &Device::Cpu,
            self.seed.unwrap_or(0),
        )?;
        let origin = match &self.weights {
            Some(path) => format!("trained weights from {}", path.display()),
            None => format!(
                "initial weights (seed {}), no --weights given",
                self.seed.unwrap_or(0)
            ),
        };
        Ok(Loaded {
            classes: class_names(&spec, self.weights.as_deref(), count),
            spec,
            store,
            net,
            origin,
            run: None,
        })
    }
}

impl Loaded {
    /// The first layer's kernels: the zoo entry's first convolution, with its name.
    pub fn first_conv(&self) -> Result<(String, Tensor)> {
        let name = self.spec.first_conv;
        let weight = self
            .store
            .named_vars()
            .into_iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("{} has no parameter {name}", self.spec.name))?
            .1;
        Ok((name.to_string(), weight.as_tensor().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_named_as_the_weights_allow() -> Result<()> {
        let resnet50 = zoo::spec("resnet50")?;
        let file = std::path::Path::new("/nonexistent/resnet50.safetensors");
        // Loaded ImageNet weights: ImageNet's names (as predict gives them).
        assert_eq!(class_names(&resnet50, Some(file), 1000)[0], "tench");
        // Random initial weights name no ImageNet class; other counts have no names.
        assert_eq!(class_names(&resnet50, None, 1000)[0], "class 0");
        assert_eq!(class_names(&resnet50, Some(file), 7)[6], "class 6");
        assert_eq!(
            class_names(&zoo::spec("resnet18-seed")?, None, 10)[0],
            "airplane"
        );
        Ok(())
    }

    fn args(model: &str) -> ModelArgs {
        ModelArgs {
            run: None,
            model: Some(model.into()),
            weights: None,
            num_classes: None,
            seed: Some(3),
        }
    }

    #[test]
    fn first_conv_of_small_models() -> Result<()> {
        let (name, w) = args("lenet5").load()?.first_conv()?;
        assert_eq!(
            (name.as_str(), w.dims()),
            ("features.0.weight", &[6, 1, 5, 5][..])
        );
        let (name, w) = args("cnn-mnist").load()?.first_conv()?;
        assert_eq!(
            (name.as_str(), w.dims()),
            ("conv1.weight", &[32, 1, 3, 3][..])
        );
        Ok(())
    }

    #[test]
    fn unknown_model_and_missing_weights_are_errors() {
        assert!(args("lenet7").load().is_err());
        let missing = ModelArgs {
            weights: Some("/nonexistent/w.safetensors".into()),
            ..args("lenet5")
        };
        let err = missing
            .load()
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/w.safetensors"), "{err}");
    }
}
