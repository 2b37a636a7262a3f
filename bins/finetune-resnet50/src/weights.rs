//! Where the pretrained ResNet-50 comes from: a file, or the Hub model the tutorial's
//! `resnet50(pretrained=True)` corresponds to.

use std::path::PathBuf;

use anyhow::Result;

/// torchvision's original ImageNet weights, as published by timm in safetensors.
pub const DEFAULT_WEIGHTS: &str = "timm/resnet50.tv_in1k";

/// `--weights`: a `.safetensors` file, or a Hub model id whose `model.safetensors` is fetched
/// into the Hugging Face cache.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    datasets::hub::file_or_hub(spec, "model.safetensors", "--weights", DEFAULT_WEIGHTS)
}
