//! GoogLeNet (Inception v1) in torchvision's layout: a 7x7 / 1x1 / 3x3 stem with ceil-mode
//! max-pools, nine inception blocks, global average pooling, dropout 0.2 and `fc`, with optional
//! auxiliary classifiers (`transform_input` is off).
//!
//! Parameter names are torchvision's (`conv1.conv.weight`, `conv1.bn.running_mean`,
//! `inception3a.branch2.0.conv.weight`, `aux1.fc2.weight`, `fc.weight`); so is initialisation
//! (weights normal with std 0.01, batch norm 1/0 with eps 0.001, `fc` bias PyTorch's default).
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! use candle_core::{DType, Device, Tensor};
//! let store = layers::ParamStore::new(0, &Device::Cpu);
//! let cfg = googlenet::GoogLeNetConfig { aux_logits: true, ..googlenet::GoogLeNetConfig::torchvision(10).narrow(16) };
//! let net = googlenet::GoogLeNet::new(&cfg, store.vb())?;
//! let out = net.forward_with_aux(&Tensor::zeros((2, 3, 64, 64), DType::F32, &Device::Cpu)?, true)?;
//! assert_eq!(out.logits.dims(), [2, 10]);
//! assert!(out.aux1.is_some() && out.aux2.is_some());
//! # Ok(()) }
//! ```

mod config;
mod inception;

pub use config::{GoogLeNetConfig, InceptionSpec, INCEPTION_NAMES};

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use inception::{basic_conv, Inception, InceptionAux, FC_INIT};
use layers::tap;
use layers::Linear;
use layers::{adaptive_avg_pool2d, flatten, linear, ConvBnRelu, Dropout, Pool2d};

/// Index of the block after which `aux1` reads (`inception4a`).
const AUX1_AFTER: usize = 2;
/// Index of the block after which `aux2` reads (`inception4d`).
const AUX2_AFTER: usize = 5;

/// The logits, and in training (when built with `aux_logits`) the auxiliary logits.
#[derive(Debug, Clone)]
pub struct GoogLeNetOutput {
    /// The main classifier's logits.
    pub logits: Tensor,
    /// `aux1`'s logits (after `inception4a`), in training with auxiliary classifiers only.
    pub aux1: Option<Tensor>,
    /// `aux2`'s logits (after `inception4d`), in training with auxiliary classifiers only.
    pub aux2: Option<Tensor>,
}

/// GoogLeNet (see the crate documentation): C. Szegedy et al., "Going Deeper with
/// Convolutions" (CVPR 2015, arXiv:1409.4842), in torchvision's `googlenet` layout. Takes
/// `(N, in_channels, H, W)` float32 images, 224x224 natively and down to 15x15 (torchvision's
/// smallest, its ceil-mode pools then leaving one window), and gives `(N, num_classes)`
/// logits ([`GoogLeNet::forward_with_aux`] adds the auxiliary ones in training).
///
/// torchvision's ImageNet weights (`GoogLeNet_Weights.IMAGENET1K_V1`) hold `aux1.*` and
/// `aux2.*` too: load them into a network built with `aux_logits: true`, or the strict load
/// names those keys as unexpected. They were trained with `transform_input=True`, which this
/// network does not apply: give it images normalised with mean 0.5 and std 0.5 on every
/// channel (what `transform_input` makes of `IMAGENET_MEAN_STD`-normalised input).
#[derive(Debug, Clone)]
pub struct GoogLeNet {
    stem: [ConvBnRelu; 3],
    blocks: Vec<Inception>,
    aux: Option<[InceptionAux; 2]>,
    fc: Linear,
    dropout: Dropout,
}

/// Named activations, in order.
type Stages = Vec<(String, Tensor)>;

/// A ceil-mode max-pool, as every pool of torchvision's GoogLeNet.
fn ceil_pool(kernel: usize) -> Pool2d {
    Pool2d::max(kernel, 2).ceil_mode(true)
}

impl GoogLeNet {
    /// Builds the network described by `cfg` under `vb`.
    ///
    /// # Errors
    /// `cfg.dropout` or `cfg.aux_dropout` outside [0, 1], or `vb` cannot provide a parameter of
    /// the expected shape (weights of another layout).
    pub fn new(cfg: &GoogLeNetConfig, vb: VarBuilder) -> Result<Self> {
        let [w1, w2, w3] = cfg.stem;
        let stem = [
            basic_conv(vb.pp("conv1"), cfg.in_channels, w1, 7, 2, 3)?,
            basic_conv(vb.pp("conv2"), w1, w2, 1, 1, 0)?,
            basic_conv(vb.pp("conv3"), w2, w3, 3, 1, 1)?,
        ];
        let mut blocks = Vec::with_capacity(9);
        let mut channels = w3;
        let mut aux_inputs = [0; 2];
        for (i, (name, spec)) in INCEPTION_NAMES.iter().zip(&cfg.inception).enumerate() {
            blocks.push(Inception::new(vb.pp(name), channels, spec)?);
            channels = spec.out_channels();
            match i {
                AUX1_AFTER => aux_inputs[0] = channels,
                AUX2_AFTER => aux_inputs[1] = channels,
                _ => {}
            }
        }
        let aux = if cfg.aux_logits {
            let make = |key: &str, in_channels: usize| {
                InceptionAux::new(
                    vb.pp(key),
                    in_channels,
                    cfg.aux_channels,
                    cfg.aux_hidden,
                    cfg.aux_dropout,
                    cfg.num_classes,
                )
            };
            Some([make("aux1", aux_inputs[0])?, make("aux2", aux_inputs[1])?])
        } else {
            None
        };
        Ok(Self {
            stem,
            blocks,
            aux,
            fc: linear(vb.pp("fc"), channels, cfg.num_classes, FC_INIT)?,
            dropout: Dropout::new(cfg.dropout)?,
        })
    }

    /// torchvision's `googlenet(aux_logits=False)` (6,624,904 parameters at 1000 classes).
    ///
    /// # Errors
    /// `vb` cannot provide a parameter of the expected shape (weights of another layout).
    pub fn torchvision(num_classes: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(&GoogLeNetConfig::torchvision(num_classes), vb)
    }

    /// The logits and, in training with auxiliary classifiers, their logits too (torchvision
    /// trains with `loss + 0.3 * (aux1_loss + aux2_loss)`).
    ///
    /// # Errors
    /// `xs` is not `(N, in_channels, H, W)` with sides of at least 15 (torchvision's smallest),
    /// or a tensor operation fails.
    pub fn forward_with_aux(&self, xs: &Tensor, train: bool) -> Result<GoogLeNetOutput> {
        let (mut stages, aux1, aux2) = self.run(xs, train)?;
        match stages.pop() {
            Some((_, logits)) => Ok(GoogLeNetOutput { logits, aux1, aux2 }),
            None => candle_core::bail!("GoogLeNet produced no stages"),
        }
    }

    /// Every stage's output and the auxiliary logits (computed only when training).
    fn run(&self, xs: &Tensor, train: bool) -> Result<(Stages, Option<Tensor>, Option<Tensor>)> {
        let mut out = Vec::with_capacity(20);
        let mut record = |name: &str, t: Tensor| -> Result<Tensor> {
            let t = tap::stage(name, t)?;
            out.push((name.to_string(), t.clone()));
            Ok(t)
        };
        let xs = record("conv1", self.stem[0].forward_t(xs, train)?)?;
        let xs = record("maxpool1", ceil_pool(3).forward(&xs)?)?;
        let xs = record("conv2", self.stem[1].forward_t(&xs, train)?)?;
        let xs = record("conv3", self.stem[2].forward_t(&xs, train)?)?;
        let mut xs = record("maxpool2", ceil_pool(3).forward(&xs)?)?;
        let (mut aux1, mut aux2) = (None, None);
        for (i, (block, name)) in self.blocks.iter().zip(INCEPTION_NAMES).enumerate() {
            xs = record(name, block.forward_t(&xs, train)?)?;
            match (i, &self.aux) {
                (AUX1_AFTER, Some([a1, _])) if train => aux1 = Some(a1.forward_t(&xs, train)?),
                (AUX2_AFTER, Some([_, a2])) if train => aux2 = Some(a2.forward_t(&xs, train)?),
                _ => {}
            }
            match i {
                1 => {
                    xs = record("maxpool3", ceil_pool(3).forward(&xs)?)?;
                }
                6 => {
                    xs = record("maxpool4", ceil_pool(2).forward(&xs)?)?;
                }
                _ => {}
            }
        }
        let pooled = record("avgpool", adaptive_avg_pool2d(&xs, (1, 1))?)?;
        let dropped = self.dropout.forward_t(&flatten(&pooled)?, train)?;
        record("logits", self.fc.forward(&dropped)?)?;
        Ok((out, aux1, aux2))
    }
}

/// `model(x)` of torchvision in eval mode, or the main logits in training: `(N, num_classes)`
/// for images `(N, in_channels, H, W)` (224x224 natively); the auxiliary classifiers' logits
/// (training only, when configured) come from [`GoogLeNet::forward_with_aux`].
///
/// # Errors
/// `xs` is not `(N, C, H, W)` with the configured input channels, or too small for the layers.
impl ModuleT for GoogLeNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.forward_with_aux(xs, train)?.logits)
    }
}

impl layers::Network for GoogLeNet {
    fn forward_stages(&self, xs: &Tensor) -> Result<Vec<(String, Tensor)>> {
        Ok(self.run(xs, false)?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use layers::Network;

    #[test]
    fn torchvision_count_and_keys() -> Result<()> {
        let store = layers::ParamStore::new(0, &Device::Cpu);
        GoogLeNet::torchvision(1000, store.vb())?;
        assert_eq!(store.num_parameters(), 6_624_904);
        let shapes: std::collections::HashMap<String, Vec<usize>> = store
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.dims().to_vec()))
            .collect();
        assert_eq!(shapes["inception3a.branch3.1.conv.weight"], [32, 16, 3, 3]);
        assert_eq!(shapes["inception5b.branch4.1.bn.running_var"], [128]);
        assert_eq!(shapes["fc.weight"], [1000, 1024]);
        assert!(!shapes.keys().any(|k| k.starts_with("aux")));
        Ok(())
    }

    #[test]
    fn aux_classifiers_have_torchvision_shapes_and_run_only_in_training() -> Result<()> {
        let store = layers::ParamStore::new(0, &Device::Cpu);
        let cfg = GoogLeNetConfig {
            aux_logits: true,
            ..GoogLeNetConfig::torchvision(7).narrow(8)
        };
        let net = GoogLeNet::new(&cfg, store.vb())?;
        let fc1 = store.vb().pp("aux2.fc1").get((128, 16 * 16), "weight")?;
        assert_eq!(fc1.dims(), [128, 256]);
        let xs = Tensor::randn(0f32, 1., (2, 3, 96, 96), &Device::Cpu)?;
        let train = net.forward_with_aux(&xs, true)?;
        assert_eq!(train.aux1.map(|t| t.dims().to_vec()), Some(vec![2, 7]));
        assert_eq!(train.aux2.map(|t| t.dims().to_vec()), Some(vec![2, 7]));
        let eval = net.forward_with_aux(&xs, false)?;
        assert!(eval.aux1.is_none() && eval.aux2.is_none());
        Ok(())
    }

    #[test]
    fn the_smallest_side_is_torchvisions() -> Result<()> {
        // torchvision's `googlenet(aux_logits=True)` takes 15x15 images and up, in training
        // and in evaluation, and refuses 14x14 (its ceil-mode pools then leave no window).
        let store = layers::ParamStore::new(0, &Device::Cpu);
        let cfg = GoogLeNetConfig {
            aux_logits: true,
            ..GoogLeNetConfig::torchvision(3).narrow(16)
        };
        let net = GoogLeNet::new(&cfg, store.vb())?;
        for train in [false, true] {
            let run = |side: usize| -> Result<GoogLeNetOutput> {
                let xs = Tensor::randn(0f32, 1., (2, 3, side, side), &Device::Cpu)?;
                net.forward_with_aux(&xs, train)
            };
            let out = run(15)?;
            assert_eq!(out.logits.dims(), [2, 3]);
            assert_eq!(out.aux1.is_some(), train);
            assert!(run(14).is_err(), "14x14 accepted (train {train})");
        }
        Ok(())
    }

    #[test]
    fn stage_shapes_at_224() -> Result<()> {
        let store = layers::ParamStore::new(0, &Device::Cpu);
        let net = GoogLeNet::new(&GoogLeNetConfig::torchvision(5).narrow(16), store.vb())?;
        let xs = Tensor::randn(0f32, 1., (1, 3, 224, 224), &Device::Cpu)?;
        let stages = net.forward_stages(&xs)?;
        let side = |name: &str| -> Option<usize> {
            let (_, t) = stages.iter().find(|(n, _)| n == name)?;
            t.dims().get(2).copied()
        };
        assert_eq!(side("conv1"), Some(112));
        assert_eq!(side("maxpool1"), Some(56));
        assert_eq!(side("maxpool2"), Some(28));
        assert_eq!(side("maxpool3"), Some(14));
        assert_eq!(side("maxpool4"), Some(7));
        assert_eq!(side("inception5b"), Some(7));
        assert_eq!(
            stages.last().map(|(_, t)| t.dims().to_vec()),
            Some(vec![1, 5])
        );
        Ok(())
    }
}
