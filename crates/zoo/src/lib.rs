//! Every network of the workspace by name: the one place that maps `"resnet18-seed"` or
//! `"vgg16-bn"` to a constructor, with each model's native input size.
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! use candle_core::{DType, Device, Tensor};
//! let store = layers::ParamStore::new(0, &Device::Cpu);
//! let spec = zoo::spec("lenet5")?;
//! let net = zoo::build(spec.name, spec.default_classes, store.vb())?;
//! let (c, h, w) = spec.input;
//! let logits = net.forward_t(&Tensor::zeros((1, c, h, w), DType::F32, &Device::Cpu)?, false)?;
//! assert_eq!(logits.dims(), [1, 10]);
//! assert!(zoo::spec("lenet7").unwrap_err().to_string().contains("resnet18-seed"));
//! # Ok(()) }
//! ```

mod count;
mod registry;

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Device;
use candle_nn::VarBuilder;
use layers::{Network, ParamStore};

pub use registry::{Builder, ModelSpec};

/// The names of every model, in the order of the table.
pub fn names() -> Vec<&'static str> {
    registry::entries().iter().map(|e| e.spec.name).collect()
}

/// Every model's description.
pub fn specs() -> Vec<ModelSpec> {
    registry::entries().iter().map(|e| e.spec).collect()
}

/// Adds a model to the zoo under `spec.name`, built by `build(num_classes, vb)`: a variant
/// from a config (say `ResNetConfig` with other widths) needs no named constructor, and every
/// program that takes `--model` can then train it.
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// let spec = zoo::ModelSpec { name: "lenet5-wide", ..zoo::spec("lenet5")? };
/// zoo::register(spec, std::sync::Arc::new(|n, vb| {
///     let cfg = lenet::LeNetConfig { conv_channels: [12, 32], ..lenet::LeNetConfig::lenet5(n) };
///     Ok(Box::new(lenet::LeNet::new(&cfg, vb)?) as Box<dyn layers::Network>)
/// }))?;
/// assert!(zoo::names().contains(&"lenet5-wide"));
/// # Ok(()) }
/// ```
///
/// Errors: a model of that name is already in the zoo.
pub fn register(spec: ModelSpec, build: Builder) -> Result<()> {
    registry::add(registry::Entry { spec, build })
}

/// Builds model `name` with `num_classes` outputs on `device`, seeded with `seed`, and with
/// `weights` (a safetensors file under PyTorch's names) loads every parameter strictly
/// (`load_state_dict(strict=True)`). Returns the network and its parameters.
///
/// Errors: an unknown name; a file that is missing, not safetensors, holds NaN or infinity, or
/// does not match the model (each named with the key and shapes).
pub fn load(
    name: &str,
    num_classes: usize,
    weights: Option<&Path>,
    device: &Device,
    seed: u64,
) -> Result<(Box<dyn Network>, ParamStore)> {
    load_into(name, num_classes, weights, device, seed, false)
}

/// [`load`] for inference: every parameter enters the network frozen
/// ([`ParamStore::vb_frozen`], PyTorch's `requires_grad_(False)`), so that a forward pass builds
/// no autograd graph and frees each activation once the next layer has read it (a ResNet-50
/// forward pass over batches of 128 images at 224x224 took the process 2.5 GB instead of 22,
/// measured on the CPU). The outputs are
/// the same. A gradient with respect to an input or an activation that is made a variable
/// (Grad-CAM's) still flows.
///
/// Errors: as [`load`].
pub fn load_frozen(
    name: &str,
    num_classes: usize,
    weights: Option<&Path>,
    device: &Device,
    seed: u64,
) -> Result<(Box<dyn Network>, ParamStore)> {
    load_into(name, num_classes, weights, device, seed, true)
}

fn load_into(
    name: &str,
    num_classes: usize,
    weights: Option<&Path>,
    device: &Device,
    seed: u64,
    frozen: bool,
) -> Result<(Box<dyn Network>, ParamStore)> {
    let store = ParamStore::new(seed, device);
    let vb = match frozen {
        true => store.vb_frozen(|_| true),
        false => store.vb(),
    };
    let net = build(name, num_classes, vb)?;
    if let Some(path) = weights {
        layers::checkpoint::load_strict(store.varmap(), path).with_context(|| {
            format!(
                "cannot load {} into {name} with {num_classes} classes",
                path.display()
            )
        })?;
    }
    Ok((net, store))
}

/// [`load`], with the number of classes taken from `weights` when `num_classes` is `None`: the
/// rows of the checkpoint's `<classifier>.weight` (a head fine-tuned for 5 classes loads as a
/// 5-class model), or the model's usual number without weights or without that tensor (the
/// strict load then names what is missing). Returns the network, its parameters and the number
/// of classes built.
///
/// Errors: as [`load`]; also a `--num-classes`-style `Some(n)` that the checkpoint's head
/// contradicts (named with both numbers).
pub fn load_counting_classes(
    name: &str,
    num_classes: Option<usize>,
    weights: Option<&Path>,
    device: &Device,
    seed: u64,
) -> Result<(Box<dyn Network>, ParamStore, usize)> {
    let spec = spec(name)?;
    let Some(path) = weights else {
        let classes = num_classes.unwrap_or(spec.default_classes);
        let (net, store) = load(name, classes, None, device, seed)?;
        return Ok((net, store, classes));
    };
    let tensors = layers::checkpoint::read(path)?;
    let head = format!("{}.weight", spec.classifier);
    let rows = tensors.get(&head).and_then(|w| w.dims().first().copied());
    let classes = match (num_classes, rows) {
        (Some(n), Some(rows)) if n != rows => anyhow::bail!(
            "{}: its {head} has {rows} rows (classes), not the {n} asked for (--num-classes)",
            path.display()
        ),
        (Some(n), _) => n,
        (None, Some(rows)) if rows > 0 => rows,
        (None, _) => spec.default_classes,
    };
    let store = ParamStore::new(seed, device);
    let net = build(name, classes, store.vb())?;
    layers::checkpoint::load_tensors_strict(store.varmap(), &tensors).with_context(|| {
        format!(
            "cannot load {} into {name} with {classes} classes",
            path.display()
        )
    })?;
    Ok((net, store, classes))
}

/// The description of model `name`; an unknown name is an error listing the known ones.
pub fn spec(name: &str) -> Result<ModelSpec> {
    registry::entry(name).map(|e| e.spec)
}

/// Builds model `name` with `num_classes` outputs, its parameters created (or looked up) in
/// `vb` under PyTorch's names.
///
/// # Errors
/// An unknown name (the error lists the known ones), or the constructor fails (for example `vb`
/// holds weights of another layout).
pub fn build(name: &str, num_classes: usize, vb: VarBuilder) -> Result<Box<dyn Network>> {
    let entry = registry::entry(name)?;
    (entry.build)(num_classes, vb).with_context(|| format!("cannot build model {name}"))
}

/// The number of trainable parameters of model `name` with `num_classes` outputs
/// (PyTorch's `sum(p.numel() for p in model.parameters())`), by building it on the CPU with
/// placeholder weights: the count of [`layers::ParamStore::num_parameters`] without the cost of
/// initialising the weights.
///
/// # Errors
/// As [`build`].
pub fn num_parameters(name: &str, num_classes: usize) -> Result<usize> {
    let recorder = count::ShapeRecorder::default();
    build(name, num_classes, recorder.vb())?;
    Ok(recorder.num_parameters())
}

/// The names and shapes of model `name`'s tensors with `num_classes` outputs, as its
/// `state_dict()` holds them (parameters and batch norms' buffers, `num_batches_tracked`
/// included), built on the CPU with placeholder weights: what a checkpoint of it must hold
/// (`layers::checkpoint::check_strict`), without initialising a network.
///
/// # Errors
/// As [`build`].
pub fn shapes(
    name: &str,
    num_classes: usize,
) -> Result<std::collections::HashMap<String, Vec<usize>>> {
    let recorder = count::ShapeRecorder::default();
    build(name, num_classes, recorder.vb())?;
    Ok((recorder.shapes().into_iter())
        .map(|(name, shape)| (name, shape.dims().to_vec()))
        .collect())
}

/// The one of `known` that `name` spells another way, as torchvision's spellings differ from
/// ours in case and separators (`vgg16_bn`, `ResNet50`, `resnet-18`), or the only one that
/// `name` begins (`lenet` for `lenet5`, `google` for `googlenet`; `vgg` begins several, so none).
pub fn did_you_mean<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let folded = |n: &str| {
        n.chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let given = folded(name);
    if let Some(same) = known.iter().copied().find(|k| folded(k) == given) {
        return Some(same);
    }
    let mut begun = known
        .iter()
        .copied()
        .filter(|k| given.len() >= 3 && folded(k).starts_with(&given));
    match (begun.next(), begun.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use layers::ParamStore;

    #[test]
    fn names_are_unique_and_specs_agree() -> Result<()> {
        let names: Vec<&str> = names().into_iter().take(20).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        for name in names {
            assert_eq!(spec(name)?.name, name);
        }
        Ok(())
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let err = build("resnet19", 10, ParamStore::new(0, &Device::Cpu).vb())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown model \"resnet19\""), "{err}");
        for name in names() {
            assert!(err.contains(name), "{name} missing from: {err}");
        }
    }

    #[test]
    fn torchvision_spellings_are_answered_with_ours() {
        for (given, ours) in [
            ("vgg16_bn", "vgg16-bn"),
            ("ResNet50", "resnet50"),
            ("resnet-18", "resnet18"),
            ("RESNET18_SEED", "resnet18-seed"),
        ] {
            let err = spec(given).unwrap_err().to_string();
            assert!(err.contains(&format!("(did you mean {ours:?}?)")), "{err}");
        }
        // The only name a given one begins; none where it begins several, or is too short.
        for (given, ours) in [("lenet", Some("lenet5")), ("GoogLe", Some("googlenet"))] {
            assert_eq!(did_you_mean(given, &names()), ours, "{given}");
        }
        for given in ["vgg", "resnet", "le", "resnet19"] {
            assert_eq!(did_you_mean(given, &names()), None, "{given}");
        }
        let err = spec("resnet19").unwrap_err().to_string();
        assert!(!err.contains("did you mean"), "{err}");
    }

    #[test]
    fn native_inputs() -> Result<()> {
        assert_eq!(spec("cnn-mnist")?.input, (1, 28, 28));
        assert_eq!(spec("resnet18-cifar")?.input, (3, 32, 32));
        assert_eq!(spec("resnet18-seed")?.default_classes, 10);
        assert_eq!(spec("vgg19-bn")?.input, (3, 224, 224));
        assert_eq!(spec("googlenet")?.default_classes, 1000);
        Ok(())
    }

    /// Every spec's first convolution and classifier exist with the right shapes: the first
    /// convolution is the first weight the model creates and reads the input's channels; the
    /// classifier gives `num_classes` outputs.
    #[test]
    fn metadata_names_real_layers() -> Result<()> {
        for spec in specs() {
            let recorder = count::ShapeRecorder::default();
            build(spec.name, 7, recorder.vb())?;
            let shapes = recorder.shapes();
            let first = shapes
                .iter()
                .find(|(n, s)| n.ends_with("weight") && s.rank() == 4)
                .map(|(n, s)| (n.as_str(), s.dims()[1]));
            assert_eq!(
                first,
                Some((spec.first_conv, spec.input.0)),
                "{}",
                spec.name
            );
            let head = |suffix: &str| {
                let key = format!("{}.{suffix}", spec.classifier);
                shapes
                    .iter()
                    .find(|(n, _)| *n == key)
                    .map(|(_, s)| s.dims()[0])
            };
            assert_eq!(head("weight"), Some(7), "{}", spec.name);
            assert_eq!(head("bias"), Some(7), "{}", spec.name);
            assert!(["mnist", "cifar10", "imagenet"].contains(&spec.data));
        }
        Ok(())
    }

    /// Every family refuses one image (C, H, W) naming the way to a batch of one: their first
    /// convolution takes it unbatched, as PyTorch's, and a later layer (a batch norm, the
    /// flatten before the classifier) would refuse it with a message about itself, or read it
    /// otherwise (a reviewer's finding).
    #[test]
    fn one_unbatched_image_is_named_with_the_way_to_a_batch() -> Result<()> {
        use candle_core::{DType, Tensor};
        let names = [
            "lenet5",
            "cnn-mnist",
            "alexnet",
            "vgg11",
            "vgg11-bn",
            "googlenet",
            "resnet18-cifar",
            "resnet50",
        ];
        for name in names {
            let (c, h, w) = spec(name)?.input;
            let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
            let model = build(name, 10, vb)?;
            let image = Tensor::zeros((c, h, w), DType::F32, &Device::Cpu)?;
            let err = match model.forward_t(&image, false) {
                Ok(y) => panic!("{name}: one image gave {:?}", y.dims()),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains("xs.unsqueeze(0) makes it a batch of one"),
                "{name}: {err}"
            );
        }
        Ok(())
    }

    /// A variant built from a config is registered, listed, built, loaded strictly and
    /// refused a second time.
    #[test]
    fn a_model_registered_from_a_config_is_built_and_loaded() -> Result<()> {
        let config = resnet::ResNetConfig {
            widths: vec![8, 16, 24, 32],
            stem: resnet::Stem::Cifar,
            stem_width: 8,
            ..resnet::ResNetConfig::torchvision(resnet::BlockKind::Basic, [2, 2, 2, 2], 10)
        };
        let spec = ModelSpec {
            name: "resnet18-cifar-tiny",
            description: "a CIFAR ResNet-18 with stage widths 8-16-24-32",
            ..spec("resnet18-cifar")?
        };
        register(
            spec,
            std::sync::Arc::new(move |num_classes, vb| {
                let config = resnet::ResNetConfig {
                    num_classes,
                    ..config.clone()
                };
                Ok(Box::new(resnet::ResNet::new(&config, vb)?) as Box<dyn Network>)
            }),
        )?;
        assert!(names().contains(&"resnet18-cifar-tiny"));
        assert!(register(spec, std::sync::Arc::new(|_, _| candle_core::bail!("no"))).is_err());
        let (net, store) = load("resnet18-cifar-tiny", 10, None, &Device::Cpu, 3)?;
        let x = candle_core::Tensor::zeros((2, 3, 32, 32), candle_core::DType::F32, &Device::Cpu)?;
        assert_eq!(net.forward_t(&x, false)?.dims(), [2, 10]);
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tiny.safetensors");
        layers::checkpoint::save(store.varmap(), &path)?;
        let (_, again) = load("resnet18-cifar-tiny", 10, Some(&path), &Device::Cpu, 4)?;
        assert_eq!(again.num_parameters(), store.num_parameters());
        let err = format!(
            "{:#}",
            load("resnet18-cifar", 10, Some(&path), &Device::Cpu, 0)
                .err()
                .expect("mismatch")
        );
        assert!(
            err.contains("tiny.safetensors")
                && err.contains("conv1.weight: the checkpoint has [8, 3, 3, 3]")
                && err.contains("more (a checkpoint of another model?)"),
            "{err}"
        );
        Ok(())
    }

    /// A checkpoint's head gives the number of classes: a 3-class LeNet-5 loads as one without
    /// being told; a contradicting count is refused naming the file and both numbers.
    #[test]
    fn the_number_of_classes_comes_from_the_checkpoints_head() -> Result<()> {
        let (_, store) = load("lenet5", 3, None, &Device::Cpu, 5)?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("three.safetensors");
        layers::checkpoint::save(store.varmap(), &path)?;
        let (net, loaded, classes) =
            load_counting_classes("lenet5", None, Some(&path), &Device::Cpu, 0)?;
        assert_eq!(classes, 3);
        assert_eq!(loaded.num_parameters(), store.num_parameters());
        let x = candle_core::Tensor::zeros((1, 1, 28, 28), candle_core::DType::F32, &Device::Cpu)?;
        assert_eq!(net.forward_t(&x, false)?.dims(), [1, 3]);
        assert_eq!(
            load_counting_classes("lenet5", Some(3), Some(&path), &Device::Cpu, 0)?.2,
            3
        );
        let err = load_counting_classes("lenet5", Some(10), Some(&path), &Device::Cpu, 0)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            err.contains("three.safetensors") && err.contains("3 rows") && err.contains("10"),
            "{err}"
        );
        let usual = load_counting_classes("lenet5", None, None, &Device::Cpu, 0)?.2;
        assert_eq!(usual, spec("lenet5")?.default_classes);
        Ok(())
    }

    /// The Grad-CAM stage is a stage of `forward_stages` with a spatial map, for one model of
    /// each family (the rest share its code).
    #[test]
    fn the_cam_stage_is_a_convolutional_stage() -> Result<()> {
        for name in [
            "lenet5",
            "cnn-mnist",
            "alexnet-tv",
            "vgg11",
            "googlenet",
            "resnet18",
            "resnet18-seed",
        ] {
            let spec = spec(name)?;
            let store = ParamStore::new(0, &Device::Cpu);
            let net = build(name, 10, store.vb())?;
            let (c, h, w) = spec.input;
            let x =
                candle_core::Tensor::zeros((1, c, h, w), candle_core::DType::F32, &Device::Cpu)?;
            let stages = net.forward_stages(&x)?;
            let stage = stages.iter().find(|(n, _)| n == spec.cam_stage);
            let dims = stage.map(|(_, t)| t.dims().to_vec()).unwrap_or_default();
            assert!(dims.len() == 4 && dims[2] * dims[3] > 1, "{name}: {dims:?}");
        }
        Ok(())
    }

    #[test]
    fn counting_agrees_with_a_parameter_store() -> Result<()> {
        for name in ["lenet5", "cnn-mnist", "googlenet", "resnet18-seed"] {
            let store = ParamStore::new(0, &Device::Cpu);
            build(name, 10, store.vb())?;
            assert_eq!(num_parameters(name, 10)?, store.num_parameters(), "{name}");
        }
        assert_eq!(num_parameters("lenet5", 10)?, 44_426);
        assert_eq!(num_parameters("cnn-mnist", 10)?, 421_642);
        Ok(())
    }

    /// A training step of one model of each family (VGG's layers are AlexNet's and ResNet's)
    /// with its images channels-last
    /// (`torch.channels_last`) gives the contiguous step's logits and gradients bit for bit:
    /// every layer takes a channels-last input (on the CPU by computing on a contiguous copy).
    #[test]
    fn channels_last_images_train_as_contiguous_ones() -> Result<()> {
        use candle_core::Tensor;
        use layers::MemoryFormat;
        for name in [
            "lenet5",
            "cnn-mnist",
            "alexnet-tv",
            "googlenet",
            "resnet18-seed",
        ] {
            let (c, h, w) = spec(name)?.input;
            let x = Tensor::randn(0f32, 1.0, (2, c, h, w), &Device::Cpu)?;
            let step = |format: MemoryFormat| -> Result<Vec<Vec<f32>>> {
                let store = ParamStore::new(5, &Device::Cpu);
                let net = build(name, 10, store.vb())?;
                let _preferred = layers::memory_format::prefer(format);
                let logits = net.forward_t(&format.apply(&x)?, true)?;
                let grads = logits.sqr()?.mean_all()?.backward()?;
                let mut out = vec![logits.flatten_all()?.to_vec1::<f32>()?];
                for (_, var) in store.named_vars() {
                    if let Some(g) = grads.get(var.as_tensor()) {
                        out.push(g.flatten_all()?.to_vec1::<f32>()?);
                    }
                }
                Ok(out)
            };
            let seed = layers::rng::state();
            let plain = step(MemoryFormat::Contiguous)?;
            layers::rng::set_state(seed);
            let last = step(MemoryFormat::ChannelsLast)?;
            assert_eq!(plain.len(), last.len(), "{name}");
            for (i, (a, b)) in plain.iter().zip(&last).enumerate() {
                assert!(a == b, "{name}: tensor {i} differs");
            }
        }
        Ok(())
    }

    /// `shapes` is what a checkpoint of the built model holds (its `state_dict`, batch norms'
    /// `num_batches_tracked` included), name for name and shape for shape, for the zoo's models
    /// of under 30 million parameters (LeNet-5, the tutorial's CNN, GoogLeNet, the ResNets to
    /// 50; AlexNet's and VGG's weights take seconds to draw, and their convolutions, linear
    /// layers and batch norms are the same code): what the checks of a run's state against its
    /// `--model` rely on.
    #[test]
    fn shapes_are_the_built_models_state_dict() -> Result<()> {
        let classes = 7;
        let small = |name: &&str| num_parameters(name, classes).is_ok_and(|n| n < 30_000_000);
        let checked: Vec<&str> = names().into_iter().filter(small).collect();
        for family in [
            "lenet",
            "cnn-mnist",
            "googlenet",
            "resnet18-seed",
            "resnet50",
        ] {
            assert!(checked.iter().any(|n| n.starts_with(family)), "{family}");
        }
        for name in checked {
            let store = layers::ParamStore::new(0, &candle_core::Device::Cpu);
            build(name, classes, store.vb())?;
            let saved = layers::checkpoint::state_dict(store.varmap())?;
            let shapes = shapes(name, classes)?;
            let dims: std::collections::HashMap<String, Vec<usize>> = (saved.iter())
                .map(|(k, t)| (k.clone(), t.dims().to_vec()))
                .collect();
            assert_eq!(shapes, dims, "{name}");
            layers::checkpoint::check_strict(&shapes, &saved)?;
        }
        Ok(())
    }
}
