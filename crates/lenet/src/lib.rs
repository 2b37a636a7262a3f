//! LeNet-5 as the tutorial writes it for 28x28 MNIST digits: two 5x5 convolutions with Tanh and
//! 2x2 average pooling, then three fully connected layers with Tanh between them.
//!
//! Parameter names are those of a PyTorch `features` / `classifier` pair of `nn.Sequential`s
//! (`features.0.weight`, `features.3.weight`, `classifier.0.weight`, `classifier.2.weight`,
//! `classifier.4.weight` and their biases); initialisation is PyTorch's default.
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! use candle_core::{Device, Tensor};
//! use candle_core::ModuleT;
//! let store = layers::ParamStore::new(0, &Device::Cpu);
//! let net = lenet::LeNet::lenet5(10, store.vb())?;
//! let logits = net.forward_t(&Tensor::zeros((2, 1, 28, 28), candle_core::DType::F32, &Device::Cpu)?, false)?;
//! assert_eq!(logits.dims(), [2, 10]);
//! assert_eq!(store.num_parameters(), 44_426);
//! # Ok(()) }
//! ```

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use layers::tap;
use layers::Linear;
use layers::{conv2d, conv_cfg, flatten, linear, tanh, Conv2d, Pool2d, WeightInit};

/// The shape of a LeNet: input size and the width of every layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeNetConfig {
    /// Input channels (1 for MNIST).
    pub in_channels: usize,
    /// Input height and width (square images).
    pub input_size: usize,
    /// Output channels of the two 5x5 convolutions.
    pub conv_channels: [usize; 2],
    /// Widths of the two hidden fully connected layers.
    pub hidden: [usize; 2],
    /// Number of output classes.
    pub num_classes: usize,
}

impl LeNetConfig {
    /// The tutorial's LeNet-5 at 28x28: 6 and 16 channels, 120 and 84 hidden units.
    pub fn lenet5(num_classes: usize) -> Self {
        Self {
            in_channels: 1,
            input_size: 28,
            conv_channels: [6, 16],
            hidden: [120, 84],
            num_classes,
        }
    }

    /// Side of the feature map that reaches the classifier: two valid 5x5 convolutions, each
    /// followed by a 2x2 pool.
    fn feature_side(&self) -> Result<usize> {
        let after_first = self.input_size.checked_sub(4).map(|s| s / 2);
        match after_first.and_then(|s| s.checked_sub(4)).map(|s| s / 2) {
            Some(side) if side > 0 => Ok(side),
            _ => candle_core::bail!(
                "LeNet needs inputs of at least 16x16, got {}x{}",
                self.input_size,
                self.input_size
            ),
        }
    }
}

/// LeNet-5: `features` (conv-tanh-avgpool twice) and `classifier` (three linears, Tanh between).
/// Takes `(N, in_channels, H, W)` float32 images of the configured `input_size` (MNIST's
/// normalisation, `datasets::MNIST_MEAN_STD`, for the tutorial's) and gives `(N, num_classes)`
/// logits; a size whose features do not fit `fc1` is an error naming both sizes. Y. LeCun, L.
/// Bottou, Y. Bengio and P. Haffner, "Gradient-based learning applied to document
/// recognition" (Proc. IEEE, 1998), with the tutorial's Tanh and average pooling.
#[derive(Debug, Clone)]
pub struct LeNet {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    pool: Pool2d,
    /// The configured input side, and the side of the features `fc1` was sized for.
    sides: (usize, usize),
}

impl LeNet {
    /// Builds the network described by `cfg` under `vb`.
    ///
    /// # Errors
    /// An input smaller than 16x16 (nothing left after the second pooling), or `vb` cannot provide
    /// a parameter of the expected shape (weights of another layout).
    pub fn new(cfg: &LeNetConfig, vb: VarBuilder) -> Result<Self> {
        let side = cfg.feature_side()?;
        let [c1, c2] = cfg.conv_channels;
        let [h1, h2] = cfg.hidden;
        let features = vb.pp("features");
        let classifier = vb.pp("classifier");
        let init = WeightInit::TorchDefault;
        Ok(Self {
            conv1: conv2d(
                features.pp("0"),
                cfg.in_channels,
                c1,
                5,
                conv_cfg(1, 0),
                true,
                init,
            )?,
            conv2: conv2d(features.pp("3"), c1, c2, 5, conv_cfg(1, 0), true, init)?,
            fc1: linear(classifier.pp("0"), c2 * side * side, h1, init)?,
            fc2: linear(classifier.pp("2"), h1, h2, init)?,
            fc3: linear(classifier.pp("4"), h2, cfg.num_classes, init)?,
            pool: Pool2d::avg(2, 2),
            sides: (cfg.input_size, side),
        })
    }

    /// The tutorial's LeNet-5 for 1x28x28 input (44,426 parameters at 10 classes).
    ///
    /// # Errors
    /// `vb` cannot provide a parameter of the expected shape (weights of another layout).
    pub fn lenet5(num_classes: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(&LeNetConfig::lenet5(num_classes), vb)
    }

    /// Every stage's output; no layer behaves differently in training.
    fn stages(&self, xs: &Tensor) -> Result<Vec<(String, Tensor)>> {
        layers::check_images(xs, "LeNet")?;
        let c1 = tap::stage(
            "conv1",
            self.pool.forward(&tanh(&self.conv1.forward(xs)?)?)?,
        )?;
        let c2 = tap::stage(
            "conv2",
            self.pool.forward(&tanh(&self.conv2.forward(&c1)?)?)?,
        )?;
        check_features(&c2, xs, self.sides, "LeNet")?;
        let f1 = tap::stage("fc1", tanh(&self.fc1.forward(&flatten(&c2)?)?)?)?;
        let f2 = tap::stage("fc2", tanh(&self.fc2.forward(&f1)?)?)?;
        let logits = self.fc3.forward(&f2)?;
        Ok(vec![
            ("conv1".to_string(), c1),
            ("conv2".to_string(), c2),
            ("fc1".to_string(), f1),
            ("fc2".to_string(), f2),
            ("logits".to_string(), logits),
        ])
    }
}

/// Refuses features (`features`, of the input `xs`) of another side than the `sides.1` that
/// `fc1` was sized for (built for `sides.0`x`sides.0` inputs), naming both input sizes, where
/// the product would fail with a bare shape error.
fn check_features(features: &Tensor, xs: &Tensor, sides: (usize, usize), net: &str) -> Result<()> {
    // What `fc1` reads is the flattened map: as in PyTorch, its area has to fit.
    let (_, _, h, w) = features.dims4()?;
    if h * w != sides.1 * sides.1 {
        candle_core::bail!(
            "{net} was built for {0}x{0} inputs (its fc1 takes {1}x{1} feature maps), but the \
             input {2:?} gives {h}x{w}: resize the images to {0}x{0}, or build it with that \
             input_size",
            sides.0,
            sides.1,
            xs.dims()
        )
    }
    Ok(())
}

/// `model(x)` of PyTorch: the logits `(N, num_classes)` of images `(N, C, H, W)` at the
/// configured input size (28x28 for the tutorial's); LeNet-5 has no dropout or batch norm, so
/// `train` changes nothing.
///
/// # Errors
/// `xs` is not `(N, C, H, W)` with the configured channels, or its pooled map has another area
/// than the one `fc1` was sized for (the error says which size to resize to): as in PyTorch,
/// sides 28 to 31 all pool to the tutorial's 4x4.
impl ModuleT for LeNet {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        match self.stages(xs)?.pop() {
            Some((_, logits)) => Ok(logits),
            None => candle_core::bail!("LeNet produced no stages"),
        }
    }
}

impl layers::Network for LeNet {
    fn forward_stages(&self, xs: &Tensor) -> Result<Vec<(String, Tensor)>> {
        self.stages(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use layers::Network;

    #[test]
    fn an_input_of_another_size_is_named() -> Result<()> {
        let store = layers::ParamStore::new(0, &Device::Cpu);
        let net = LeNet::lenet5(10, store.vb())?;
        let x = Tensor::zeros((2, 1, 32, 32), candle_core::DType::F32, &Device::Cpu)?;
        let err = net.forward_t(&x, false).unwrap_err().to_string();
        assert!(
            err.contains("built for 28x28 inputs") && err.contains("[2, 1, 32, 32] gives 5x5"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn lenet5_has_the_tutorial_keys_and_count() -> Result<()> {
        let store = layers::ParamStore::new(0, &Device::Cpu);
        LeNet::lenet5(10, store.vb())?;
        let names: Vec<String> = store.named_vars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "classifier.0.bias",
                "classifier.0.weight",
                "classifier.2.bias",
                "classifier.2.weight",
                "classifier.4.bias",
                "classifier.4.weight",
                "features.0.bias",
                "features.0.weight",
                "features.3.bias",
                "features.3.weight",
            ]
        );
        assert_eq!(store.num_parameters(), 44_426);
        Ok(())
    }

    #[test]
    fn stages_end_in_the_logits_and_match_forward() -> Result<()> {
        let store = layers::ParamStore::new(1, &Device::Cpu);
        let net = LeNet::lenet5(10, store.vb())?;
        let xs = Tensor::randn(0f32, 1., (2, 1, 28, 28), &Device::Cpu)?;
        let stages = net.forward_stages(&xs)?;
        let dims: Vec<Vec<usize>> = stages.iter().map(|(_, t)| t.dims().to_vec()).collect();
        assert_eq!(
            dims,
            [
                vec![2, 6, 12, 12],
                vec![2, 16, 4, 4],
                vec![2, 120],
                vec![2, 84],
                vec![2, 10]
            ]
        );
        let logits = net.forward_t(&xs, true)?;
        let diff = (&stages[4].1 - &logits)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }

    #[test]
    fn too_small_input_is_an_error() {
        let store = layers::ParamStore::new(0, &Device::Cpu);
        let cfg = LeNetConfig {
            input_size: 12,
            ..LeNetConfig::lenet5(10)
        };
        let err = LeNet::new(&cfg, store.vb()).unwrap_err().to_string();
        assert!(err.contains("at least 16x16"), "{err}");
    }
}
