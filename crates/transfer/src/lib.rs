//! Transfer learning on an ImageNet-pretrained ResNet, after the PyTorch transfer-learning
//! tutorial's "ConvNet as fixed feature extractor": [`FineTune`] trains a new `fc` (and, with
//! [`Unfreeze`], the last stages) while the frozen part runs in evaluation mode (the tutorial's
//! `model.train()` leaves the frozen batch norm on batch statistics, updating its running
//! ones; here the pretrained statistics stay, so the frozen features do not change);
//! [`weights`] checks and loads torchvision-named checkpoints of torchvision's five ResNets
//! ([`MODELS`]), keeping or replacing their head.

#![warn(missing_docs)]

mod finetune;
pub mod weights;

use anyhow::{bail, Result};
use candle_nn::VarBuilder;
use resnet::{BlockKind, ResNet, ResNetConfig};

pub use finetune::{FineTune, Head, Unfreeze};

/// The zoo entries this crate fine-tunes: torchvision's ImageNet ResNets, `resnet18` (the
/// tutorial's) to `resnet152`.
pub const MODELS: [&str; 5] = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"];

/// The model fine-tuned when none is named.
pub const MODEL: &str = "resnet50";

/// torchvision's layout of each of [`MODELS`]: its depth, block and blocks per stage.
const LAYOUTS: [(&str, usize, BlockKind, [usize; 4]); 5] = [
    ("resnet18", 18, BlockKind::Basic, [2, 2, 2, 2]),
    ("resnet34", 34, BlockKind::Basic, [3, 4, 6, 3]),
    ("resnet50", 50, BlockKind::Bottleneck, [3, 4, 6, 3]),
    ("resnet101", 101, BlockKind::Bottleneck, [3, 4, 23, 3]),
    ("resnet152", 152, BlockKind::Bottleneck, [3, 8, 36, 3]),
];

/// `model`'s row of [`LAYOUTS`].
fn layout(model: &str) -> Result<&'static (&'static str, usize, BlockKind, [usize; 4])> {
    match LAYOUTS.iter().find(|(name, ..)| *name == model) {
        Some(layout) => Ok(layout),
        None => bail!(
            "{model} is not one of the ResNets this fine-tunes: {}",
            MODELS.join(", ")
        ),
    }
}

/// The torchvision configuration of `model` (one of [`MODELS`]) with `num_classes` outputs.
///
/// # Errors
/// `model` is not one of [`MODELS`].
pub fn config(model: &str, num_classes: usize) -> Result<ResNetConfig> {
    let (_, _, block, layers) = layout(model)?;
    Ok(ResNetConfig::torchvision(*block, *layers, num_classes))
}

/// The depth of `model` (18 for `resnet18`), for messages ("ResNet-18").
///
/// # Errors
/// `model` is not one of [`MODELS`].
pub fn depth(model: &str) -> Result<usize> {
    Ok(layout(model)?.1)
}

/// Builds `model` (one of [`MODELS`], as torchvision's `resnet18()` ... `resnet152()`) with
/// `num_classes` outputs in `vb`.
///
/// # Errors
/// `model` is not one of [`MODELS`]; `vb` cannot provide a parameter.
pub fn build(model: &str, num_classes: usize, vb: VarBuilder) -> Result<ResNet> {
    Ok(ResNet::new(&config(model, num_classes)?, vb)?)
}

/// torchvision's original ImageNet weights of `model`, as timm publishes them in safetensors
/// on the Hugging Face Hub (`timm/resnet50.tv_in1k`: what `resnet50(pretrained=True)` loads).
pub fn default_weights(model: &str) -> String {
    format!("timm/{model}.tv_in1k")
}

/// The module name of the ResNets' classifier (`fc`), from the zoo's [`MODEL`] entry: what
/// the new head replaces.
///
/// # Errors
/// The zoo has no [`MODEL`] entry.
pub fn classifier() -> anyhow::Result<&'static str> {
    Ok(zoo::spec(MODEL)?.classifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layouts here and the zoo's (which `evaluate`, `predict --run` and `visualize` build
    /// a fine-tuning run's model from) are the same networks: every parameter's name and shape.
    #[test]
    fn each_model_is_the_zoos() -> Result<()> {
        let shapes = |store: &layers::ParamStore| -> Vec<(String, Vec<usize>)> {
            let mut all: Vec<_> = store
                .named_vars()
                .into_iter()
                .map(|(name, var)| (name, var.as_tensor().dims().to_vec()))
                .collect();
            all.sort();
            all
        };
        for model in MODELS {
            let (ours, zoos) = (
                layers::ParamStore::new(0, &candle_core::Device::Cpu),
                layers::ParamStore::new(0, &candle_core::Device::Cpu),
            );
            let net = build(model, 10, ours.vb())?;
            zoo::build(model, 10, zoos.vb())?;
            assert_eq!(shapes(&ours), shapes(&zoos), "{model}");
            assert_eq!(zoo::spec(model)?.classifier, classifier()?);
            assert_eq!(net.config(), &config(model, 10)?);
            assert_eq!(
                depth(model)?.to_string(),
                model.trim_start_matches("resnet")
            );
        }
        let err = config("resnet18-cifar", 10).unwrap_err().to_string();
        assert!(err.contains("resnet152"), "{err}");
        assert_eq!(default_weights("resnet18"), "timm/resnet18.tv_in1k");
        Ok(())
    }
}
