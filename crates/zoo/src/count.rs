//! Counting a model's parameters without initialising them.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

/// A builder backend that records every variable's shape and hands out broadcast zeros, so a
/// model is built without drawing (or even allocating) its weights: VGG-19's 143 million
/// parameters take microseconds instead of seconds.
#[derive(Clone, Default)]
pub(crate) struct ShapeRecorder {
    /// Every variable's name and shape, in the order the model created them.
    shapes: Arc<Mutex<Vec<(String, Shape)>>>,
}

impl ShapeRecorder {
    /// A builder whose variables this recorder sees.
    pub(crate) fn vb(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, Device::Cpu)
    }

    /// The number of trainable scalars recorded (BatchNorm running statistics left out).
    pub(crate) fn num_parameters(&self) -> usize {
        self.lock()
            .iter()
            .filter(|(name, _)| !layers::is_buffer(name))
            .map(|(_, shape)| shape.elem_count())
            .sum()
    }

    /// Every variable's name and shape, in creation order.
    pub(crate) fn shapes(&self) -> Vec<(String, Shape)> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Shape)>> {
        self.shapes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SimpleBackend for ShapeRecorder {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut shapes = self.lock();
        match shapes.iter().find(|(n, _)| n == name) {
            Some((_, known)) if known != &s => {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {known:?}")
            }
            Some(_) => {}
            None => shapes.push((name.to_string(), s.clone())),
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("cannot create {name} without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock().iter().any(|(n, _)| n == name)
    }
}
