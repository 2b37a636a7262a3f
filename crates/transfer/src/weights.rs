//! Checks and loading of torchvision-named ResNet checkpoints, explaining the common mistakes
//! (another depth than the model's, another naming scheme, a wrong head).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use layers::ParamStore;

use crate::{LAYOUTS, MODELS};

/// Which of [`MODELS`] the torchvision-named checkpoint `tensors` (read from `path`) is,
/// from its blocks: `layer1.0.conv3` for a Bottleneck, the number of blocks per stage.
///
/// # Errors
/// Other names than torchvision's, or blocks per stage of none of torchvision's ResNets.
pub fn model_of(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<&'static str> {
    let has = |k: &str| tensors.contains_key(k);
    if !has("conv1.weight") || !has("layer1.0.conv1.weight") {
        let mut sample: Vec<&String> = tensors.keys().collect();
        sample.sort();
        sample.truncate(3);
        bail!(
            "{} does not use torchvision's ResNet names (conv1.weight, layer1.0.conv1.weight, ...); \
             its keys look like {sample:?}",
            path.display()
        )
    }
    let bottleneck = has("layer1.0.conv3.weight");
    let blocks: Vec<usize> = (1..=4)
        .map(|stage| {
            (0..)
                .take_while(|i| has(&format!("layer{stage}.{i}.conv1.weight")))
                .count()
        })
        .collect();
    let model = LAYOUTS
        .iter()
        .find(|(_, _, block, layers)| {
            (*block == resnet::BlockKind::Bottleneck) == bottleneck && layers[..] == blocks[..]
        })
        .map(|(name, ..)| *name)
        .with_context(|| {
            format!(
                "{} is a ResNet of {} with {blocks:?} blocks per stage, none of torchvision's \
                 ({})",
                path.display(),
                if bottleneck {
                    "Bottleneck blocks"
                } else {
                    "BasicBlocks"
                },
                MODELS.join(", ")
            )
        })?;
    // The same blocks with another stem or widths: this workspace's CIFAR ResNets
    // (resnet18-seed, resnet18-cifar), a wide ResNet, a ResNeXt.
    let expected: [(&str, &[usize]); 3] = [
        ("conv1.weight", &[64, 3, 7, 7]),
        (
            "layer1.0.conv1.weight",
            if bottleneck {
                &[64, 64, 1, 1]
            } else {
                &[64, 64, 3, 3]
            },
        ),
        ("layer4.0.conv2.weight", &[512, 512, 3, 3]),
    ];
    for (key, dims) in expected {
        let found = tensors
            .get(key)
            .map(|t| t.dims().to_vec())
            .unwrap_or_default();
        ensure!(
            found == dims,
            "{} is not one of torchvision's ImageNet ResNets: {key} is {found:?}, torchvision's \
             {model} has {dims:?} (this workspace's CIFAR ResNets, resnet18-seed and \
             resnet18-cifar, have other widths or a 3x3 stem: train-cifar predict --model NAME \
             --weights FILE reads them; wide ResNets and ResNeXts are not fine-tuned here)",
            path.display()
        );
    }
    Ok(model)
}

/// Checks that `tensors` (read from `path`) is a torchvision-named `model` (one of
/// [`MODELS`]), explaining the common mistakes: another depth, other naming schemes.
///
/// # Errors
/// As [`model_of`], and a checkpoint of another depth than `model`'s (the error names the
/// `--model` that reads it).
pub fn check(tensors: &HashMap<String, Tensor>, path: &Path, model: &str) -> Result<()> {
    let found = model_of(tensors, path)?;
    if found != model {
        bail!(
            "{} is a ResNet-{} checkpoint; this run fine-tunes a ResNet-{} (--model {model}): \
             give --model {found} to fine-tune it, or weights of a ResNet-{}",
            path.display(),
            crate::depth(found)?,
            crate::depth(model)?,
            crate::depth(model)?,
        )
    }
    Ok(())
}

/// The number of classes of the checkpoint's head (the zoo entry's classifier, `fc`), whose
/// inputs are `model`'s features (512 for ResNet-18 and 34, 2048 for the deeper ones).
///
/// # Errors
/// The checkpoint has no `fc.weight`, or it is not `[classes, features]`.
pub fn head_classes(tensors: &HashMap<String, Tensor>, path: &Path, model: &str) -> Result<usize> {
    let key = format!("{}.weight", crate::classifier()?);
    let features = crate::config(model, 1)?.feature_dim();
    let head = tensors
        .get(&key)
        .with_context(|| format!("{} has no {key}", path.display()))?;
    match head.dims() {
        [classes, f] if *f == features && *classes > 0 => Ok(*classes),
        dims => bail!(
            "{}: {key} has shape {dims:?}, a ResNet-{} head is [classes, {features}]",
            path.display(),
            crate::depth(model)?
        ),
    }
}

/// Loads the checkpoint into a `model` built in `store`, strictly. With `new_head`, the
/// checkpoint's `fc` must still be a valid head (so every key is consumed) but the model keeps
/// its freshly initialised `fc`.
///
/// # Errors
/// As [`check`] and [`head_classes`], and a missing, extra or misshapen tensor
/// (`layers::checkpoint::load_tensors_strict`).
pub fn load(
    store: &ParamStore,
    mut tensors: HashMap<String, Tensor>,
    path: &Path,
    model: &str,
    new_head: bool,
) -> Result<()> {
    check(&tensors, path, model)?;
    head_classes(&tensors, path, model)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Each model's initial weights as torchvision names them.
    fn tensors(model: &str, classes: usize) -> Result<HashMap<String, Tensor>> {
        let store = ParamStore::new(0, &Device::Cpu);
        crate::build(model, classes, store.vb())?;
        Ok(store
            .named_vars()
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().clone()))
            .collect())
    }

    #[test]
    fn each_depth_is_told_apart_and_another_is_refused_naming_its_model() -> Result<()> {
        let path = Path::new("w.safetensors");
        for model in MODELS {
            let t = tensors(model, 7)?;
            assert_eq!(model_of(&t, path)?, model);
            check(&t, path, model)?;
            assert_eq!(head_classes(&t, path, model)?, 7);
        }
        let r18 = tensors("resnet18", 1000)?;
        let err = check(&r18, path, "resnet50").unwrap_err().to_string();
        assert!(
            err.contains("ResNet-18")
                && err.contains("ResNet-50")
                && err.contains("--model resnet18"),
            "{err}"
        );
        let err = head_classes(&r18, path, "resnet50")
            .unwrap_err()
            .to_string();
        assert!(err.contains("[classes, 2048]"), "{err}");
        // A stage cut short is none of torchvision's.
        let mut cut = r18.clone();
        cut.retain(|k, _| !k.starts_with("layer4.1."));
        let err = model_of(&cut, path).unwrap_err().to_string();
        assert!(err.contains("[2, 2, 2, 1]"), "{err}");
        let renamed: HashMap<String, Tensor> = r18
            .into_iter()
            .map(|(k, v)| (format!("backbone.{k}"), v))
            .collect();
        let err = model_of(&renamed, path).unwrap_err().to_string();
        assert!(err.contains("torchvision's ResNet names"), "{err}");
        // The blocks of a ResNet-18 with CIFAR's stem and widths (train-cifar's models).
        for (name, key, dims) in [
            ("resnet18-seed", "layer4.0.conv2.weight", "[256, 256, 3, 3]"),
            ("resnet18-cifar", "conv1.weight", "[64, 3, 3, 3]"),
        ] {
            let store = ParamStore::new(0, &Device::Cpu);
            zoo::build(name, 10, store.vb())?;
            let cifar: HashMap<String, Tensor> = store
                .named_vars()
                .into_iter()
                .map(|(name, var)| (name, var.as_tensor().clone()))
                .collect();
            let err = model_of(&cifar, path).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{key} is {dims}")) && err.contains("train-cifar predict"),
                "{name}: {err}"
            );
        }
        Ok(())
    }
}
