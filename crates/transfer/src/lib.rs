//! Transfer learning on an ImageNet-pretrained ResNet, after the PyTorch transfer-learning
//! tutorial's "ConvNet as fixed feature extractor": [`FineTune`] trains a new `fc` (and, with
//! [`Unfreeze`], the last stages) while the frozen part runs in evaluation mode (the tutorial's
//! `model.train()` leaves the frozen batch norm on batch statistics, updating its running
//! ones; here the pretrained statistics stay, so the frozen features do not change); [`weights`] checks and loads torchvision-named ResNet-50
//! checkpoints, keeping or replacing their head.

#![warn(missing_docs)]

mod finetune;
pub mod weights;

pub use finetune::{FineTune, Head, Unfreeze};

/// The zoo entry this crate fine-tunes.
pub const MODEL: &str = "resnet50";

/// The module name of [`MODEL`]'s classifier (`fc`), from its zoo entry: what the new head
/// replaces.
///
/// # Errors
/// The zoo has no [`MODEL`] entry.
pub fn classifier() -> anyhow::Result<&'static str> {
    Ok(zoo::spec(MODEL)?.classifier)
}
