//! A parameter store whose initial values depend only on a seed.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use crate::rng::Rng;

/// Owns a network's variables (a Candle [`VarMap`] keyed by PyTorch `state_dict()` names) and
/// initialises new ones from a seeded generator, so that the same seed builds the same network.
///
/// ```
/// # fn main() -> candle_core::Result<()> {
/// let store = layers::ParamStore::new(0, &candle_core::Device::Cpu);
/// let fc = layers::linear(store.vb().pp("fc"), 4, 2, layers::WeightInit::TorchDefault)?;
/// assert_eq!(store.named_vars().len(), 2);
/// # let _ = fc; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ParamStore {
    backend: SeededBackend,
    device: Device,
}

#[derive(Clone)]
struct SeededBackend {
    varmap: VarMap,
    rng: Arc<Mutex<Rng>>,
}

impl ParamStore {
    /// An empty store on `device`; variables created through [`ParamStore::vb`] draw from `seed`
    /// (each store its own generator: `torch.manual_seed(seed)` before building a model). A
    /// model built from [`ParamStore::vb`] makes its variables here; build it before loading a
    /// checkpoint into [`ParamStore::varmap`], which fills only the variables that exist.
    pub fn new(seed: u64, device: &Device) -> Self {
        Self {
            backend: SeededBackend {
                varmap: VarMap::new(),
                rng: Arc::new(Mutex::new(Rng::new(seed))),
            },
            device: device.clone(),
        }
    }

    /// A float32 builder that creates (or returns) variables in this store; for a float64
    /// model (PyTorch's `model.double()`), `store.vb().set_dtype(DType::F64)`.
    pub fn vb(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(self.backend.clone()),
            DType::F32,
            self.device.clone(),
        )
    }

    /// [`ParamStore::vb`], but the parameters whose names `frozen` accepts enter the network
    /// detached: PyTorch's `requires_grad_(False)`. They stay variables of this store (sharing
    /// their storage, so a checkpoint loaded into [`ParamStore::varmap`] reaches them), but an
    /// operation on them and on an input that needs no gradient builds no autograd graph: a
    /// forward pass through frozen layers frees each activation once the next layer has read
    /// it, instead of keeping all of them for a backward pass that never comes (a ResNet-50
    /// batch of 128 at 224x224 holds about 20 GB that way). Batch-norm running statistics are
    /// read detached anyway, and always come as variables (batch norm updates them in place).
    ///
    /// ```
    /// # fn main() -> candle_core::Result<()> {
    /// let store = layers::ParamStore::new(0, &candle_core::Device::Cpu);
    /// let vb = store.vb_frozen(|name| name.starts_with("backbone."));
    /// let w = vb.get_with_hints(3, "backbone.w", candle_nn::Init::Const(1.))?;
    /// let fc = vb.get_with_hints(3, "fc.w", candle_nn::Init::Const(1.))?;
    /// assert!(!w.track_op() && fc.track_op());
    /// assert_eq!(store.named_vars().len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn vb_frozen(
        &self,
        frozen: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(FrozenBackend {
                inner: self.backend.clone(),
                frozen: Arc::new(frozen),
            }),
            DType::F32,
            self.device.clone(),
        )
    }

    /// The underlying Candle variable map.
    pub fn varmap(&self) -> &VarMap {
        &self.backend.varmap
    }

    /// The device the variables live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every variable with its name, sorted by name (BatchNorm running statistics included).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self
            .backend
            .varmap
            .data()
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut vars: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// The variables an optimizer should update: all but BatchNorm running statistics.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.named_vars()
            .into_iter()
            .filter(|(name, _)| !is_buffer(name))
            .collect()
    }

    /// The number of trainable scalars (PyTorch's `sum(p.numel() for p in model.parameters())`).
    pub fn num_parameters(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// Whether `name` is a buffer (running statistics) rather than a parameter.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean")
        || name.ends_with(".running_var")
        || name.ends_with(".num_batches_tracked")
}

impl SeededBackend {
    fn sample(&self, shape: &Shape, init: Init) -> Vec<f32> {
        let n = shape.elem_count();
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        match init {
            Init::Const(v) => vec![v as f32; n],
            Init::Uniform { lo, up } => (0..n)
                .map(|_| (lo + (up - lo) * rng.next_f64()) as f32)
                .collect(),
            Init::Randn { mean, stdev } => rng.normals(n, mean, stdev),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
                match dist {
                    candle_nn::init::NormalOrUniform::Normal => rng.normals(n, 0.0, std),
                    candle_nn::init::NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        (0..n)
                            .map(|_| (bound * (2.0 * rng.next_f64() - 1.0)) as f32)
                            .collect()
                    }
                }
            }
        }
    }
}

impl SimpleBackend for SeededBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.varmap.data().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(var) = data.get(name) {
            if var.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", var.shape())
            }
            return Ok(var.as_tensor().clone());
        }
        let values = self.sample(&s, h);
        let tensor = Tensor::from_vec(values, s, &Device::Cpu)?;
        let tensor = if dtype == DType::F32 {
            tensor
        } else {
            tensor.to_dtype(dtype)?
        };
        let tensor = if dev.is_cpu() {
            tensor
        } else {
            tensor.to_device(dev)?
        };
        let var = Var::from_tensor(&tensor)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("a parameter store cannot create {name} without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }
}

/// [`ParamStore::vb_frozen`]'s backend: the store's, detaching the frozen parameters.
#[derive(Clone)]
struct FrozenBackend {
    inner: SeededBackend,
    frozen: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

impl SimpleBackend for FrozenBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = self.inner.get(s, name, h, dtype, dev)?;
        Ok(match !is_buffer(name) && (self.frozen)(name) {
            true => t.detach(),
            false => t,
        })
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.inner.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_other_seed_other_values() -> Result<()> {
        let make = |seed| -> Result<Vec<f32>> {
            let store = ParamStore::new(seed, &Device::Cpu);
            let w = store
                .vb()
                .get_with_hints((3, 4), "w", crate::init::KAIMING_NORMAL_FAN_OUT)?;
            w.flatten_all()?.to_vec1()
        };
        assert_eq!(make(1)?, make(1)?);
        assert_ne!(make(1)?, make(2)?);
        Ok(())
    }

    #[test]
    fn kaiming_fan_out_has_torchvision_std() -> Result<()> {
        let store = ParamStore::new(3, &Device::Cpu);
        let w =
            store
                .vb()
                .get_with_hints((64, 32, 3, 3), "w", crate::init::KAIMING_NORMAL_FAN_OUT)?;
        let v: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let var = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
        let expected = 2.0 / (64.0 * 9.0);
        assert!((var / expected - 1.0).abs() < 0.05, "{var} vs {expected}");
        Ok(())
    }

    /// Frozen layers build no graph on an input that needs none (their output does not track),
    /// take values loaded into the store after they were built, and get no gradient; the
    /// layers after them do.
    #[test]
    fn frozen_parameters_build_no_graph_and_see_loaded_values() -> Result<()> {
        use candle_core::{Module, ModuleT};
        let dev = Device::Cpu;
        let store = ParamStore::new(0, &dev);
        let vb = store.vb_frozen(|name| !name.starts_with("fc."));
        let conv = crate::conv2d(
            vb.pp("conv"),
            2,
            3,
            3,
            candle_nn::Conv2dConfig::default(),
            false,
            crate::WeightInit::TorchDefault,
        )?;
        let bn = crate::batch_norm(vb.pp("bn"), 3, 1e-5)?;
        let fc = crate::linear(vb.pp("fc"), 3 * 4 * 4, 2, crate::WeightInit::TorchDefault)?;
        let x = Tensor::rand(0f32, 1.0, (2, 2, 6, 6), &dev)?;
        let features = |x: &Tensor| conv.forward_batch_norm(x, &bn, true, false);
        let f = features(&x)?;
        assert!(!f.track_op(), "a frozen forward built a graph");
        let logits = fc.forward(&f.flatten_from(1)?)?;
        let grads = logits.sum_all()?.backward()?;
        let var = |name: &str| store.varmap().data().lock().expect("map")[name].clone();
        assert!(grads.get(var("conv.weight").as_tensor()).is_none());
        assert!(grads.get(var("fc.weight").as_tensor()).is_some());
        // A value loaded after building reaches the frozen layer.
        var("conv.weight").set(&var("conv.weight").as_tensor().zeros_like()?)?;
        var("bn.bias").set(&Tensor::new(&[1f32, 2.0, 3.0], &dev)?)?;
        let f = bn.forward_t(&conv.forward(&x)?, false)?;
        let v = f.flatten_all()?.to_vec1::<f32>()?;
        assert!(v[..16].iter().all(|v| (*v - 1.0).abs() < 1e-6), "{v:?}");
        Ok(())
    }

    #[test]
    fn trainable_skips_running_stats() -> Result<()> {
        let store = ParamStore::new(0, &Device::Cpu);
        crate::batch_norm(store.vb().pp("bn"), 4, 1e-5)?;
        let names: Vec<String> = store.trainable().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["bn.bias", "bn.weight"]);
        assert_eq!(store.named_vars().len(), 5);
        Ok(())
    }
}
