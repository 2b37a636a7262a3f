//! VGG (11, 13, 16 and 19 weight layers, with or without batch norm) in torchvision's layout:
//! a `features` sequence built from a configuration list, adaptive average pooling to 7x7 and a
//! `classifier` of three linears with ReLU and dropout.
//!
//! Parameter names are torchvision's (`features.N.weight`, `features.N.running_mean`,
//! `classifier.{0,3,6}.weight`); initialisation is torchvision's: Kaiming-normal (fan-out)
//! convolutions with zero bias, batch norm weight 1 and bias 0, linears normal with std 0.01 and
//! zero bias.
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! use candle_core::{DType, Device, Tensor};
//! use candle_core::ModuleT;
//! let store = layers::ParamStore::new(0, &Device::Cpu);
//! let cfg = vgg::VggConfig::from_depth(11, true, 10)?.narrow(16);
//! let net = vgg::Vgg::new(&cfg, store.vb())?;
//! let logits = net.forward_t(&Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?, true)?;
//! assert_eq!(logits.dims(), [2, 10]);
//! # Ok(()) }
//! ```

mod config;

pub use config::{VggConfig, VggLayer};

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use layers::tap;
use layers::Linear;
use layers::{
    adaptive_avg_pool2d, batch_norm, conv2d, conv_cfg, flatten, linear, BatchNorm, Conv2d, Dropout,
    Pool2d, WeightInit,
};

/// One built entry of `features`.
#[derive(Debug, Clone)]
enum Block {
    Conv { conv: Conv2d, bn: Option<BatchNorm> },
    MaxPool,
}

/// A VGG network (see the crate documentation): K. Simonyan and A. Zisserman, "Very Deep
/// Convolutional Networks for Large-Scale Image Recognition" (ICLR 2015, arXiv:1409.1556), in
/// torchvision's `vgg` layout. Takes `(N, in_channels, H, W)` float32 images, 224x224 natively
/// (any side of 32 or more: five 2x2 max-pools, then the adaptive pool to 7x7), normalised as
/// the weights were trained (`datasets::IMAGENET_MEAN_STD` for torchvision's), and gives
/// `(N, num_classes)` logits. Dropout acts in training only, and batch norm (the `_bn`
/// variants) uses batch statistics in training and its running statistics otherwise.
#[derive(Debug, Clone)]
pub struct Vgg {
    features: Vec<Block>,
    pooled: usize,
    fc6: Linear,
    fc7: Linear,
    fc8: Linear,
    pool: Pool2d,
    dropout: Dropout,
}

impl Vgg {
    /// Builds the network described by `cfg` under `vb`.
    ///
    /// # Errors
    /// `cfg.dropout` outside [0, 1], or `vb` cannot provide a parameter of the expected shape
    /// (weights of another layout).
    pub fn new(cfg: &VggConfig, vb: VarBuilder) -> Result<Self> {
        let vf = vb.pp("features");
        let mut features = Vec::with_capacity(cfg.layers.len());
        let mut index = 0;
        let mut channels = cfg.in_channels;
        for layer in &cfg.layers {
            match *layer {
                VggLayer::Conv(width) => {
                    let conv = conv2d(
                        vf.pp(index),
                        channels,
                        width,
                        3,
                        conv_cfg(1, 1),
                        true,
                        WeightInit::KaimingFanOut,
                    )?;
                    let bn = if cfg.batch_norm {
                        Some(batch_norm(vf.pp(index + 1), width, 1e-5)?)
                    } else {
                        None
                    };
                    // conv, [bn], relu
                    index += if cfg.batch_norm { 3 } else { 2 };
                    channels = width;
                    features.push(Block::Conv { conv, bn });
                }
                VggLayer::MaxPool => {
                    index += 1;
                    features.push(Block::MaxPool);
                }
            }
        }
        let vc = vb.pp("classifier");
        let init = WeightInit::Normal(0.01);
        let flat = channels * cfg.pooled * cfg.pooled;
        Ok(Self {
            features,
            pooled: cfg.pooled,
            fc6: linear(vc.pp("0"), flat, cfg.hidden, init)?,
            fc7: linear(vc.pp("3"), cfg.hidden, cfg.hidden, init)?,
            fc8: linear(vc.pp("6"), cfg.hidden, cfg.num_classes, init)?,
            pool: Pool2d::max(2, 2),
            dropout: Dropout::new(cfg.dropout)?,
        })
    }

    /// Every stage's output (after each max-pool, then the classifier's); `train` switches
    /// dropout on and batch norm to batch statistics.
    fn stages(&self, xs: &Tensor, train: bool) -> Result<Vec<(String, Tensor)>> {
        layers::check_images(xs, "VGG")?;
        let mut out = Vec::new();
        let mut xs = xs.clone();
        for block in &self.features {
            match block {
                Block::Conv { conv, bn } => {
                    xs = conv.forward(&xs)?;
                    xs = match bn {
                        Some(bn) => bn.forward_relu(&xs, train)?,
                        None => layers::relu(&xs)?,
                    };
                }
                Block::MaxPool => {
                    let name = format!("block{}", out.len() + 1);
                    xs = tap::stage(&name, self.pool.forward(&xs)?)?;
                    out.push((name, xs.clone()));
                }
            }
        }
        let pooled = adaptive_avg_pool2d(&xs, (self.pooled, self.pooled))?;
        let fc6 = layers::relu(&self.fc6.forward(&flatten(&pooled)?)?)?;
        let fc7 = layers::relu(&self.fc7.forward(&self.dropout.forward_t(&fc6, train)?)?)?;
        let logits = self.fc8.forward(&self.dropout.forward_t(&fc7, train)?)?;
        out.push(("avgpool".to_string(), pooled));
        out.push(("fc6".to_string(), fc6));
        out.push(("fc7".to_string(), fc7));
        out.push(("logits".to_string(), logits));
        Ok(out)
    }
}

macro_rules! named_constructors {
    ($($name:ident, $depth:literal, $bn:literal, $doc:literal;)*) => {
        impl Vgg {
            $(
                #[doc = $doc]
                ///
                /// # Errors
                /// `vb` cannot provide a parameter of the expected shape (weights of another
                /// layout).
                pub fn $name(num_classes: usize, vb: VarBuilder) -> Result<Self> {
                    Self::new(&VggConfig::from_depth($depth, $bn, num_classes)?, vb)
                }
            )*
        }
    };
}

named_constructors! {
    vgg11, 11, false, "torchvision's `vgg11` (132,863,336 parameters at 1000 classes).";
    vgg11_bn, 11, true, "torchvision's `vgg11_bn` (132,868,840 parameters at 1000 classes).";
    vgg13, 13, false, "torchvision's `vgg13` (133,047,848 parameters at 1000 classes).";
    vgg13_bn, 13, true, "torchvision's `vgg13_bn` (133,053,736 parameters at 1000 classes).";
    vgg16, 16, false, "torchvision's `vgg16` (138,357,544 parameters at 1000 classes).";
    vgg16_bn, 16, true, "torchvision's `vgg16_bn` (138,365,992 parameters at 1000 classes).";
    vgg19, 19, false, "torchvision's `vgg19` (143,667,240 parameters at 1000 classes).";
    vgg19_bn, 19, true, "torchvision's `vgg19_bn` (143,678,248 parameters at 1000 classes).";
}

/// `model(x)` of PyTorch: the logits `(N, num_classes)` of images `(N, C, H, W)` (any size the
/// five max-pools leave at least 1x1: the adaptive pool brings the map to 7x7); `train` is
/// `model.train()` (dropout on, batch norm by the batch) or `model.eval()`.
///
/// # Errors
/// `xs` is not `(N, C, H, W)` with the configured input channels, or too small for the pools.
impl ModuleT for Vgg {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self.stages(xs, train)?.pop() {
            Some((_, logits)) => Ok(logits),
            None => candle_core::bail!("VGG produced no stages"),
        }
    }
}

impl layers::Network for Vgg {
    fn forward_stages(&self, xs: &Tensor) -> Result<Vec<(String, Tensor)>> {
        self.stages(xs, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use layers::Network;

    /// The indices N of every `<head>.N.weight`, ascending.
    fn weight_indices(store: &layers::ParamStore, head: &str) -> Vec<usize> {
        let mut indices: Vec<usize> = store
            .named_vars()
            .into_iter()
            .filter_map(|(n, _)| {
                let rest = n.strip_prefix(head)?.strip_prefix('.')?;
                rest.strip_suffix(".weight")?.parse().ok()
            })
            .collect();
        indices.sort();
        indices
    }

    #[test]
    fn vgg11_keys_follow_make_layers() -> Result<()> {
        let store = layers::ParamStore::new(0, &Device::Cpu);
        Vgg::new(
            &VggConfig::from_depth(11, false, 10)?.narrow(32),
            store.vb(),
        )?;
        assert_eq!(
            weight_indices(&store, "features"),
            [0, 3, 6, 8, 11, 13, 16, 18]
        );
        assert_eq!(weight_indices(&store, "classifier"), [0, 3, 6]);
        Ok(())
    }

    #[test]
    fn vgg11_bn_keys_interleave_batch_norms() -> Result<()> {
        let store = layers::ParamStore::new(0, &Device::Cpu);
        Vgg::new(&VggConfig::from_depth(11, true, 10)?.narrow(32), store.vb())?;
        assert_eq!(
            weight_indices(&store, "features"),
            [0, 1, 4, 5, 8, 9, 11, 12, 15, 16, 18, 19, 22, 23, 25, 26]
        );
        let names: Vec<String> = store.named_vars().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"features.26.running_var".to_string()));
        Ok(())
    }

    #[test]
    fn unknown_depth_is_an_error() {
        let err = VggConfig::from_depth(12, false, 10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("11, 13, 16 and 19"), "{err}");
    }

    #[test]
    fn stages_pool_five_times() -> Result<()> {
        let store = layers::ParamStore::new(0, &Device::Cpu);
        let net = Vgg::new(&VggConfig::from_depth(16, true, 4)?.narrow(32), store.vb())?;
        let xs = Tensor::randn(0f32, 1., (1, 3, 64, 64), &Device::Cpu)?;
        let stages = net.forward_stages(&xs)?;
        let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["block1", "block2", "block3", "block4", "block5", "avgpool", "fc6", "fc7", "logits"]
        );
        assert_eq!(stages[4].1.dims(), [1, 16, 2, 2]);
        assert_eq!(stages[5].1.dims(), [1, 16, 7, 7]);
        assert_eq!(stages[8].1.dims(), [1, 4]);
        Ok(())
    }
}
