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

use anyhow::{Context, Result};
use candle_nn::VarBuilder;
use layers::Network;

pub use registry::ModelSpec;

/// The names of every model, in the order of the table.
pub fn names() -> Vec<&'static str> {
    registry::ENTRIES.iter().map(|e| e.spec.name).collect()
}

/// Every model's description.
pub fn specs() -> Vec<ModelSpec> {
    registry::ENTRIES.iter().map(|e| e.spec).collect()
}

/// The description of model `name`; an unknown name is an error listing the known ones.
pub fn spec(name: &str) -> Result<ModelSpec> {
    registry::entry(name).map(|e| e.spec)
}

/// Builds model `name` with `num_classes` outputs, its parameters created (or looked up) in
/// `vb` under PyTorch's names.
pub fn build(name: &str, num_classes: usize, vb: VarBuilder) -> Result<Box<dyn Network>> {
    let entry = registry::entry(name)?;
    (entry.build)(num_classes, vb).with_context(|| format!("cannot build model {name}"))
}

/// The number of trainable parameters of model `name` with `num_classes` outputs
/// (PyTorch's `sum(p.numel() for p in model.parameters())`), by building it on the CPU with
/// placeholder weights: the count of [`layers::ParamStore::num_parameters`] without the cost of
/// initialising the weights.
pub fn num_parameters(name: &str, num_classes: usize) -> Result<usize> {
    let recorder = count::ShapeRecorder::default();
    build(name, num_classes, recorder.vb())?;
    Ok(recorder.num_parameters())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use layers::ParamStore;

    #[test]
    fn names_are_unique_and_specs_agree() -> Result<()> {
        let names = names();
        assert_eq!(names.len(), 20);
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
    fn native_inputs() -> Result<()> {
        assert_eq!(spec("cnn-mnist")?.input, (1, 28, 28));
        assert_eq!(spec("resnet18-cifar")?.input, (3, 32, 32));
        assert_eq!(spec("resnet18-seed")?.default_classes, 10);
        assert_eq!(spec("vgg19-bn")?.input, (3, 224, 224));
        assert_eq!(spec("googlenet")?.default_classes, 1000);
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
}
