//! Checks and loading of torchvision-named ResNet-50 checkpoints, explaining the common
//! mistakes (another depth, another naming scheme, a wrong head).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use layers::ParamStore;

/// Checks that `tensors` (read from `path`) is a torchvision-named ResNet-50, explaining the
/// common mistakes: another depth, other naming schemes.
///
/// # Errors
/// Other names than torchvision's, a ResNet-18/34 (no `conv3`), or a deeper ResNet (101/152).
pub fn check_resnet50(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let has = |k: &str| tensors.contains_key(k);
    if !has("conv1.weight") || !has("layer1.0.conv1.weight") {
        let sample: Vec<&String> = tensors.keys().take(3).collect();
        bail!(
            "{} does not use torchvision's ResNet names (conv1.weight, layer1.0.conv1.weight, ...); \
             its keys look like {sample:?}",
            path.display()
        )
    }
    if !has("layer1.0.conv3.weight") {
        let depth = if has("layer3.5.conv1.weight") { 34 } else { 18 };
        bail!(
            "{} is a ResNet-{depth} checkpoint (BasicBlock, no conv3); this tool fine-tunes a \
             ResNet-50 (Bottleneck) and needs ResNet-50 weights",
            path.display()
        )
    }
    if has("layer3.6.conv1.weight") {
        bail!(
            "{} is a deeper ResNet (101/152) checkpoint; this tool needs ResNet-50 weights",
            path.display()
        )
    }
    Ok(())
}

/// The number of classes of the checkpoint's head (the zoo entry's classifier, `fc`).
///
/// # Errors
/// The checkpoint has no `fc.weight`, or it is not `[classes, 2048]`.
pub fn head_classes(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<usize> {
    let key = format!("{}.weight", crate::classifier()?);
    let head = tensors
        .get(&key)
        .with_context(|| format!("{} has no {key}", path.display()))?;
    match head.dims() {
        [classes, 2048] => Ok(*classes),
        dims => bail!(
            "{}: {key} has shape {dims:?}, a ResNet-50 head is [classes, 2048]",
            path.display()
        ),
    }
}

/// Loads the checkpoint into a model built in `store`, strictly. With `new_head`, the
/// checkpoint's `fc` must still be a valid ResNet-50 head (so every key is consumed) but the
/// model keeps its freshly initialised `fc`.
///
/// # Errors
/// As [`check_resnet50`] and [`head_classes`], and a missing, extra or misshapen tensor
/// (`layers::checkpoint::load_tensors_strict`).
pub fn load(
    store: &ParamStore,
    mut tensors: HashMap<String, Tensor>,
    path: &Path,
    new_head: bool,
) -> Result<()> {
    check_resnet50(&tensors, path)?;
    head_classes(&tensors, path)?;
    if new_head {
        let head = format!("{}.", crate::classifier()?);
        for (name, var) in store.named_vars() {
            if name.starts_with(&head) {
                tensors.insert(name, var.as_tensor().copy()?);
            }
        }
    }
    layers::checkpoint::load_tensors_strict(store.varmap(), &tensors)
        .with_context(|| format!("loading {}", path.display()))
}
