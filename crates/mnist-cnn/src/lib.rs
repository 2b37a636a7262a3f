//! The tutorial's MNIST CNN: two 3x3 convolutions (32 and 64 channels, padding 1), each followed
//! by ReLU and 2x2 max-pooling, dropout 0.25, then `fc1` (3136 -> 128), ReLU, dropout 0.25 again
//! (the tutorial's one `nn.Dropout(0.25)` module, applied twice in its `forward`) and `fc2`.
//!
//! Parameter names are PyTorch's (`conv1`, `conv2`, `fc1`, `fc2`); initialisation is PyTorch's
//! default.
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! use candle_core::{DType, Device, Tensor};
//! use candle_core::ModuleT;
//! let store = layers::ParamStore::new(0, &Device::Cpu);
//! let net = mnist_cnn::MnistCnn::tutorial(10, store.vb())?;
//! let logits = net.forward_t(&Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu)?, false)?;
//! assert_eq!(logits.dims(), [2, 10]);
//! assert_eq!(store.num_parameters(), 421_642);
//! # Ok(()) }
//! ```

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use layers::tap;
use layers::Linear;
use layers::{conv2d, conv_cfg, flatten, linear, relu, Conv2d, Dropout, Pool2d, WeightInit};

/// The shape of the MNIST CNN.
#[derive(Debug, Clone, PartialEq)]
pub struct MnistCnnConfig {
    /// Input channels (1 for MNIST).
    pub in_channels: usize,
    /// Input height and width (square images).
    pub input_size: usize,
    /// Output channels of `conv1` and `conv2`.
    pub conv_channels: [usize; 2],
    /// Width of `fc1`.
    pub hidden: usize,
    /// Drop probability applied to the flattened features before `fc1` and to `fc1`'s output
    /// after its ReLU (one `nn.Dropout(p)` used twice, as the tutorial's `forward`).
    pub dropout: f32,
    /// Number of output classes.
    pub num_classes: usize,
}

impl MnistCnnConfig {
    /// The tutorial's network: 32 and 64 channels, 128 hidden units, dropout 0.25, 28x28 input.
    pub fn tutorial(num_classes: usize) -> Self {
        Self {
            in_channels: 1,
            input_size: 28,
            conv_channels: [32, 64],
            hidden: 128,
            dropout: 0.25,
            num_classes,
        }
    }
}

/// The MNIST CNN of the tutorial. Takes `(N, in_channels, H, W)` float32 images of the
/// configured `input_size` (MNIST's normalisation, `datasets::MNIST_MEAN_STD`, for the
/// tutorial's) and gives `(N, num_classes)` logits; a size whose features do not fit `fc1` is an
/// error naming both sizes.
#[derive(Debug, Clone)]
pub struct MnistCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
    pool: Pool2d,
    dropout: Dropout,
    /// The configured input side, and the side of the features `fc1` was sized for.
    sides: (usize, usize),
}

impl MnistCnn {
    /// Builds the network described by `cfg` under `vb`.
    ///
    /// # Errors
    /// An input smaller than 4x4, `cfg.dropout` outside [0, 1], or `vb` cannot provide a
    /// parameter of the expected shape (weights of another layout).
    pub fn new(cfg: &MnistCnnConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.input_size < 4 {
            candle_core::bail!(
                "the MNIST CNN needs inputs of at least 4x4, got {}x{}",
                cfg.input_size,
                cfg.input_size
            )
        }
        let side = cfg.input_size / 4;
        let [c1, c2] = cfg.conv_channels;
        let init = WeightInit::TorchDefault;
        Ok(Self {
            conv1: conv2d(
                vb.pp("conv1"),
                cfg.in_channels,
                c1,
                3,
                conv_cfg(1, 1),
                true,
                init,
            )?,
            conv2: conv2d(vb.pp("conv2"), c1, c2, 3, conv_cfg(1, 1), true, init)?,
            fc1: linear(vb.pp("fc1"), c2 * side * side, cfg.hidden, init)?,
            fc2: linear(vb.pp("fc2"), cfg.hidden, cfg.num_classes, init)?,
            pool: Pool2d::max(2, 2),
            dropout: Dropout::new(cfg.dropout)?,
            sides: (cfg.input_size, side),
        })
    }

    /// The tutorial's MNIST CNN for 1x28x28 input (421,642 parameters at 10 classes).
    ///
    /// # Errors
    /// `vb` cannot provide a parameter of the expected shape (weights of another layout).
    pub fn tutorial(num_classes: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(&MnistCnnConfig::tutorial(num_classes), vb)
    }

    /// Every stage's output; `train` switches dropout on.
    fn stages(&self, xs: &Tensor, train: bool) -> Result<Vec<(String, Tensor)>> {
        layers::check_images(xs, "the MNIST CNN")?;
        // max_pool(relu(x)) is relu(max_pool(x)), values and gradients (both monotone; where a
        // window's maximum is not positive the gradient is zero either way), on a quarter of
        // the elements, in one op with the pooling.
        let c1 = tap::stage("conv1", self.pool.forward_relu(&self.conv1.forward(xs)?)?)?;
        let c2 = tap::stage("conv2", self.pool.forward_relu(&self.conv2.forward(&c1)?)?)?;
        // What `fc1` reads is the flattened map: as in PyTorch, its area has to fit.
        let (_, _, h, w) = c2.dims4()?;
        if h * w != self.sides.1 * self.sides.1 {
            candle_core::bail!(
                "the MNIST CNN was built for {0}x{0} inputs (its fc1 takes {1}x{1} feature maps), \
                 but the input {2:?} gives {h}x{w}: resize the images to {0}x{0}, or build it \
                 with that input_size",
                self.sides.0,
                self.sides.1,
                xs.dims()
            )
        }
        // The tutorial's forward drops with the same module twice: the flattened features,
        // then fc1's output after its ReLU.
        let dropped = self.dropout.forward_t(&c2, train)?;
        let f1 = tap::stage("fc1", relu(&self.fc1.forward(&flatten(&dropped)?)?)?)?;
        let logits = self.fc2.forward(&self.dropout.forward_t(&f1, train)?)?;
        Ok(vec![
            ("conv1".to_string(), c1),
            ("conv2".to_string(), c2),
            ("fc1".to_string(), f1),
            ("logits".to_string(), logits),
        ])
    }
}

/// `model(x)` of PyTorch: the logits `(N, num_classes)` of images `(N, C, S, S)`, `S` the
/// configured `input_size` (one channel of 28x28 for the tutorial's network); `train` is
/// `model.train()` (dropout on) or `model.eval()`.
///
/// # Errors
/// `xs` is not `(N, C, H, W)` with the configured channels, or its pooled map (`H/4` x `W/4`,
/// floored) has another area than the one `fc1` was sized for: as in PyTorch, sides 28 to 31
/// all pool to the tutorial's 7x7.
impl ModuleT for MnistCnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self.stages(xs, train)?.pop() {
            Some((_, logits)) => Ok(logits),
            None => candle_core::bail!("the MNIST CNN produced no stages"),
        }
    }
}

impl layers::Network for MnistCnn {
    fn forward_stages(&self, xs: &Tensor) -> Result<Vec<(String, Tensor)>> {
        self.stages(xs, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use layers::Network;

    #[test]
    fn an_input_of_another_size_is_named() -> Result<()> {
        let store = layers::ParamStore::new(0, &candle_core::Device::Cpu);
        let net = MnistCnn::tutorial(10, store.vb())?;
        let x = Tensor::zeros(
            (1, 1, 32, 32),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )?;
        let err = net.forward_t(&x, false).unwrap_err().to_string();
        assert!(
            err.contains("built for 28x28 inputs") && err.contains("gives 8x8"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn tutorial_has_pytorch_keys_and_count() -> Result<()> {
        let store = layers::ParamStore::new(0, &Device::Cpu);
        MnistCnn::tutorial(10, store.vb())?;
        let shapes: Vec<(String, Vec<usize>)> = store
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.dims().to_vec()))
            .collect();
        assert_eq!(shapes[2], ("conv2.bias".to_string(), vec![64]));
        assert_eq!(shapes[5], ("fc1.weight".to_string(), vec![128, 3136]));
        assert_eq!(shapes.len(), 8);
        assert_eq!(store.num_parameters(), 421_642);
        Ok(())
    }

    #[test]
    fn dropout_acts_on_the_features_and_on_fc1s_output() -> Result<()> {
        // Dropping everything: with the second dropout, what fc2 reads is all zeros and the
        // logits are fc2's bias; with the features' dropout alone they would be
        // fc2(relu(fc1's bias)).
        let store = layers::ParamStore::new(4, &Device::Cpu);
        let cfg = MnistCnnConfig {
            dropout: 1.0,
            ..MnistCnnConfig::tutorial(10)
        };
        let net = MnistCnn::new(&cfg, store.vb())?;
        let xs = Tensor::randn(0f32, 1., (3, 1, 28, 28), &Device::Cpu)?;
        let logits = net.forward_t(&xs, true)?;
        let bias = store
            .named_vars()
            .into_iter()
            .find(|(n, _)| n == "fc2.bias")
            .map(|(_, v)| v)
            .expect("fc2.bias");
        let fc1_bias_only = net.fc2.forward(&relu(&net.fc1.forward(&Tensor::zeros(
            (1, 3136),
            candle_core::DType::F32,
            &Device::Cpu,
        )?)?)?)?;
        let gap = |a: &Tensor, b: &Tensor| -> Result<f32> {
            a.broadcast_sub(b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert_eq!(gap(&logits, &bias.unsqueeze(0)?)?, 0.0);
        assert!(gap(&logits, &fc1_bias_only)? > 1e-3);
        Ok(())
    }

    #[test]
    fn dropout_acts_only_in_training() -> Result<()> {
        let store = layers::ParamStore::new(2, &Device::Cpu);
        let net = MnistCnn::tutorial(10, store.vb())?;
        let xs = Tensor::randn(0f32, 1., (2, 1, 28, 28), &Device::Cpu)?;
        let eval = net.forward_t(&xs, false)?;
        let stages = net.forward_stages(&xs)?;
        assert_eq!(stages[1].1.dims(), [2, 64, 7, 7]);
        let same = (&eval - &stages[3].1)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(same, 0.0);
        let train = net.forward_t(&xs, true)?;
        let diff = (&eval - &train)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff > 0.0, "dropout changed nothing in training");
        Ok(())
    }
}
