//! AlexNet: five convolutions (11x11 stride 4, 5x5, three 3x3) with overlapping 3x3 stride-2
//! max-pools, adaptive average pooling to 6x6, and a three-layer classifier with dropout.
//!
//! Two layouts: the tutorial's, with the paper's widths 96-256-384-384-256
//! ([`AlexNet::tutorial`], 62,378,344 parameters at 1000 classes), and torchvision's
//! 64-192-384-256-256 ([`AlexNet::torchvision`], 61,100,840). Both use torchvision's
//! `features.N` / `classifier.N` parameter names and PyTorch's default initialisation.
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! use candle_core::{DType, Device, Tensor};
//! use candle_core::ModuleT;
//! let store = layers::ParamStore::new(0, &Device::Cpu);
//! let cfg = alexnet::AlexNetConfig { widths: [8, 16, 16, 16, 16], hidden: 32, ..alexnet::AlexNetConfig::tutorial(5) };
//! let net = alexnet::AlexNet::new(&cfg, store.vb())?;
//! let logits = net.forward_t(&Tensor::zeros((1, 3, 224, 224), DType::F32, &Device::Cpu)?, false)?;
//! assert_eq!(logits.dims(), [1, 5]);
//! # Ok(()) }
//! ```

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use layers::tap;
use layers::Linear;
use layers::{
    adaptive_avg_pool2d, conv2d, conv_cfg, flatten, linear, Conv2d, Dropout, Pool2d, WeightInit,
};

/// Indices of the five convolutions in torchvision's `features` sequence.
const CONV_KEYS: [&str; 5] = ["0", "3", "6", "8", "10"];
/// Side of the adaptive average pool in front of the classifier.
const POOLED: usize = 6;

/// The widths of an AlexNet.
#[derive(Debug, Clone, PartialEq)]
pub struct AlexNetConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels of the five convolutions.
    pub widths: [usize; 5],
    /// Width of the two hidden fully connected layers.
    pub hidden: usize,
    /// Drop probability in front of the first two linears.
    pub dropout: f32,
    /// Number of output classes.
    pub num_classes: usize,
}

impl AlexNetConfig {
    /// The tutorial's AlexNet with the paper's widths 96-256-384-384-256.
    pub fn tutorial(num_classes: usize) -> Self {
        Self {
            in_channels: 3,
            widths: [96, 256, 384, 384, 256],
            hidden: 4096,
            dropout: 0.5,
            num_classes,
        }
    }

    /// torchvision's AlexNet, widths 64-192-384-256-256.
    pub fn torchvision(num_classes: usize) -> Self {
        Self {
            widths: [64, 192, 384, 256, 256],
            ..Self::tutorial(num_classes)
        }
    }
}

/// AlexNet (see the crate documentation): A. Krizhevsky, I. Sutskever and G. E. Hinton,
/// "ImageNet Classification with Deep Convolutional Neural Networks" (NeurIPS 2012), and
/// torchvision's `alexnet`. Takes `(N, in_channels, H, W)` float32 images, 224x224 natively
/// (any side of 63 or more: the adaptive pool brings the features to 6x6), normalised as the
/// weights were trained (`datasets::IMAGENET_MEAN_STD` for torchvision's), and gives
/// `(N, num_classes)` logits. Dropout (`cfg.dropout`) acts in training only.
#[derive(Debug, Clone)]
pub struct AlexNet {
    convs: Vec<Conv2d>,
    fc6: Linear,
    fc7: Linear,
    fc8: Linear,
    pool: Pool2d,
    dropout: Dropout,
}

impl AlexNet {
    /// Builds the network described by `cfg` under `vb`.
    ///
    /// # Errors
    /// `cfg.dropout` outside [0, 1], or `vb` cannot provide a parameter of the expected shape
    /// (weights of another layout).
    pub fn new(cfg: &AlexNetConfig, vb: VarBuilder) -> Result<Self> {
        let features = vb.pp("features");
        let init = WeightInit::TorchDefault;
        // (kernel, stride, padding) of each convolution.
        let shapes = [(11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1)];
        let mut convs = Vec::with_capacity(5);
        let mut in_channels = cfg.in_channels;
        for ((key, width), (k, s, p)) in CONV_KEYS.iter().zip(cfg.widths).zip(shapes) {
            let conv = conv2d(
                features.pp(key),
                in_channels,
                width,
                k,
                conv_cfg(s, p),
                true,
                init,
            )?;
            convs.push(conv);
            in_channels = width;
        }
        let classifier = vb.pp("classifier");
        let flat = in_channels * POOLED * POOLED;
        Ok(Self {
            convs,
            fc6: linear(classifier.pp("1"), flat, cfg.hidden, init)?,
            fc7: linear(classifier.pp("4"), cfg.hidden, cfg.hidden, init)?,
            fc8: linear(classifier.pp("6"), cfg.hidden, cfg.num_classes, init)?,
            pool: Pool2d::max(3, 2),
            dropout: Dropout::new(cfg.dropout)?,
        })
    }

    /// The tutorial's AlexNet (paper widths; 62,378,344 parameters at 1000 classes).
    ///
    /// # Errors
    /// `vb` cannot provide a parameter of the expected shape (weights of another layout).
    pub fn tutorial(num_classes: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(&AlexNetConfig::tutorial(num_classes), vb)
    }

    /// torchvision's AlexNet (61,100,840 parameters at 1000 classes).
    ///
    /// # Errors
    /// `vb` cannot provide a parameter of the expected shape (weights of another layout).
    pub fn torchvision(num_classes: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(&AlexNetConfig::torchvision(num_classes), vb)
    }

    /// Every stage's output; `train` switches dropout on.
    fn stages(&self, xs: &Tensor, train: bool) -> Result<Vec<(String, Tensor)>> {
        layers::check_images(xs, "AlexNet")?;
        let mut out = Vec::with_capacity(12);
        let mut xs = xs.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            let name = format!("conv{}", i + 1);
            xs = tap::stage(&name, layers::relu(&conv.forward(&xs)?)?)?;
            out.push((name, xs.clone()));
            if matches!(i, 0 | 1 | 4) {
                let name = format!("pool{}", i + 1);
                xs = tap::stage(&name, self.pool.forward(&xs)?)?;
                out.push((name, xs.clone()));
            }
        }
        let pooled = adaptive_avg_pool2d(&xs, (POOLED, POOLED))?;
        let flat = self.dropout.forward_t(&flatten(&pooled)?, train)?;
        let fc6 = layers::relu(&self.fc6.forward(&flat)?)?;
        let fc7 = layers::relu(&self.fc7.forward(&self.dropout.forward_t(&fc6, train)?)?)?;
        let logits = self.fc8.forward(&fc7)?;
        out.push(("avgpool".to_string(), pooled));
        out.push(("fc6".to_string(), fc6));
        out.push(("fc7".to_string(), fc7));
        out.push(("logits".to_string(), logits));
        Ok(out)
    }
}

/// `model(x)` of PyTorch: the logits `(N, num_classes)` of images `(N, in_channels, H, W)`
/// (224x224 in the paper; the adaptive pool takes other sizes its layers leave a map for, 63x63
/// and up); `train` is `model.train()` (dropout on) or `model.eval()`.
///
/// # Errors
/// `xs` is not `(N, C, H, W)` with the configured input channels, or too small for the layers.
impl ModuleT for AlexNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self.stages(xs, train)?.pop() {
            Some((_, logits)) => Ok(logits),
            None => candle_core::bail!("AlexNet produced no stages"),
        }
    }
}

impl layers::Network for AlexNet {
    fn forward_stages(&self, xs: &Tensor) -> Result<Vec<(String, Tensor)>> {
        self.stages(xs, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use layers::Network;

    #[test]
    fn keys_follow_torchvision() -> Result<()> {
        let store = layers::ParamStore::new(0, &Device::Cpu);
        let cfg = AlexNetConfig {
            widths: [4, 8, 8, 8, 8],
            hidden: 16,
            ..AlexNetConfig::tutorial(3)
        };
        AlexNet::new(&cfg, store.vb())?;
        let names: Vec<String> = store
            .named_vars()
            .into_iter()
            .filter(|(n, _)| n.ends_with(".weight"))
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "classifier.1.weight",
                "classifier.4.weight",
                "classifier.6.weight",
                "features.0.weight",
                "features.10.weight",
                "features.3.weight",
                "features.6.weight",
                "features.8.weight",
            ]
        );
        let fc6 = store.vb().pp("classifier.1").get((16, 8 * 36), "weight")?;
        assert_eq!(fc6.dims(), [16, 288]);
        Ok(())
    }

    #[test]
    fn stage_shapes_at_224() -> Result<()> {
        let store = layers::ParamStore::new(0, &Device::Cpu);
        let cfg = AlexNetConfig {
            widths: [4, 8, 8, 8, 8],
            hidden: 16,
            ..AlexNetConfig::tutorial(3)
        };
        let net = AlexNet::new(&cfg, store.vb())?;
        let xs = Tensor::randn(0f32, 1., (1, 3, 224, 224), &Device::Cpu)?;
        let stages = net.forward_stages(&xs)?;
        let got: Vec<(&str, Vec<usize>)> = stages
            .iter()
            .map(|(n, t)| (n.as_str(), t.dims().to_vec()))
            .collect();
        assert_eq!(got[0], ("conv1", vec![1, 4, 55, 55]));
        assert_eq!(got[1], ("pool1", vec![1, 4, 27, 27]));
        assert_eq!(got[7], ("pool5", vec![1, 8, 6, 6]));
        assert_eq!(got[11], ("logits", vec![1, 3]));
        assert_eq!(net.forward_t(&xs, true)?.dtype(), DType::F32);
        Ok(())
    }
}
