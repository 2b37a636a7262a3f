//! The ResNet family, from torchvision's `ResNet(block, layers)` and the tutorial's variants.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use layers::tap;
use layers::Linear;
use layers::{
    adaptive_avg_pool2d, batch_norm, conv2d, conv_cfg, linear, BatchNorm, Conv2d, Pool2d,
    WeightInit,
};

use crate::block::{Block, BlockKind};

/// How the network first reduces its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stem {
    /// ImageNet's: 7x7 stride-2 convolution, batch norm, ReLU, 3x3 stride-2 max-pool (padding 1).
    ImageNet,
    /// CIFAR's: 3x3 stride-1 convolution, batch norm, ReLU, no pooling.
    Cifar,
}

/// Everything that defines a ResNet. The named constructors on [`ResNet`] fill it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Basic or bottleneck blocks.
    pub block: BlockKind,
    /// Blocks per stage (`layer1`, `layer2`, ...).
    pub layers: Vec<usize>,
    /// Width of each stage; the first stage has stride 1, the others stride 2.
    pub widths: Vec<usize>,
    /// The stem.
    pub stem: Stem,
    /// Output channels of the stem convolution.
    pub stem_width: usize,
    /// Input channels (3 for RGB).
    pub in_channels: usize,
    /// Output classes of `fc`.
    pub num_classes: usize,
}

impl ResNetConfig {
    /// torchvision's layout for `block` and `layers`: widths 64-128-256-512, ImageNet stem.
    pub fn torchvision(block: BlockKind, layers: [usize; 4], num_classes: usize) -> Self {
        Self {
            block,
            layers: layers.to_vec(),
            widths: vec![64, 128, 256, 512],
            stem: Stem::ImageNet,
            stem_width: 64,
            in_channels: 3,
            num_classes,
        }
    }

    /// Channels of the pooled features that `fc` reads.
    pub fn feature_dim(&self) -> usize {
        self.widths.last().copied().unwrap_or(self.stem_width) * self.block.expansion()
    }
}

/// A ResNet: stem, stages of residual blocks, global average pooling, `fc`.
/// Parameter names are torchvision's (`conv1.weight`, `layer1.0.bn1.running_mean`, `fc.bias`).
///
/// ```
/// # fn main() -> candle_core::Result<()> {
/// use candle_core::{Device, ModuleT, Tensor};
/// let store = layers::ParamStore::new(0, &Device::Cpu);
/// let net = resnet::ResNet::resnet18_cifar(10, store.vb())?;
/// let logits = net.forward_t(&Tensor::zeros((1, 3, 32, 32), candle_core::DType::F32, &Device::Cpu)?, false)?;
/// assert_eq!(logits.dims(), [1, 10]);
/// assert_eq!(store.num_parameters(), 11_173_962);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ResNet {
    config: ResNetConfig,
    conv1: Conv2d,
    bn1: BatchNorm,
    stages: Vec<Vec<Block>>,
    fc: Linear,
}

impl ResNet {
    /// Builds the network described by `config` under `vb`, with torchvision's initialisation
    /// (Kaiming-normal fan-out convolutions, batch norm 1/0, PyTorch's default for `fc`).
    ///
    /// # Errors
    /// No stages, a different number of stage depths and widths, or `vb` cannot provide a parameter
    /// of the expected shape (weights of another layout).
    pub fn new(config: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        if config.layers.len() != config.widths.len() || config.layers.is_empty() {
            candle_core::bail!(
                "a ResNet needs one width per stage, got {} stages and {} widths",
                config.layers.len(),
                config.widths.len()
            )
        }
        let (k, stride) = match config.stem {
            Stem::ImageNet => (7, 2),
            Stem::Cifar => (3, 1),
        };
        let conv1 = conv2d(
            vb.pp("conv1"),
            config.in_channels,
            config.stem_width,
            k,
            conv_cfg(stride, k / 2),
            false,
            WeightInit::KaimingFanOut,
        )?;
        let bn1 = batch_norm(vb.pp("bn1"), config.stem_width, 1e-5)?;
        let mut in_channels = config.stem_width;
        let mut stages = Vec::with_capacity(config.layers.len());
        for (i, (&blocks, &width)) in config.layers.iter().zip(&config.widths).enumerate() {
            let vb = vb.pp(format!("layer{}", i + 1));
            let mut stage = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let stride = if i > 0 && b == 0 { 2 } else { 1 };
                stage.push(Block::new(
                    vb.pp(b.to_string()),
                    config.block,
                    in_channels,
                    width,
                    stride,
                )?);
                in_channels = width * config.block.expansion();
            }
            stages.push(stage);
        }
        let fc = linear(
            vb.pp("fc"),
            config.feature_dim(),
            config.num_classes,
            WeightInit::TorchDefault,
        )?;
        Ok(Self {
            config: config.clone(),
            conv1,
            bn1,
            stages,
            fc,
        })
    }

    /// torchvision's `resnet18`: BasicBlock, [2, 2, 2, 2] (11,689,512 parameters at 1000 classes).
    ///
    /// # Errors
    /// `vb` cannot provide a parameter of the expected shape (weights of another layout).
    pub fn resnet18(num_classes: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(
            &ResNetConfig::torchvision(BlockKind::Basic, [2, 2, 2, 2], num_classes),
            vb,
        )
    }

    /// torchvision's `resnet34`: BasicBlock, [3, 4, 6, 3] (21,797,672 parameters at 1000 classes).
    ///
    /// # Errors
    /// `vb` cannot provide a parameter of the expected shape (weights of another layout).
    pub fn resnet34(num_classes: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(
            &ResNetConfig::torchvision(BlockKind::Basic, [3, 4, 6, 3], num_classes),
            vb,
        )
    }

    /// torchvision's `resnet50`: Bottleneck, [3, 4, 6, 3] (25,557,032 parameters at 1000 classes).
    ///
    /// # Errors
    /// `vb` cannot provide a parameter of the expected shape (weights of another layout).
    pub fn resnet50(num_classes: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(
            &ResNetConfig::torchvision(BlockKind::Bottleneck, [3, 4, 6, 3], num_classes),
            vb,
        )
    }

    /// torchvision's `resnet101`: Bottleneck, [3, 4, 23, 3] (44,549,160 parameters at 1000
    /// classes).
    ///
    /// # Errors
    /// `vb` cannot provide a parameter of the expected shape (weights of another layout).
    pub fn resnet101(num_classes: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(
            &ResNetConfig::torchvision(BlockKind::Bottleneck, [3, 4, 23, 3], num_classes),
            vb,
        )
    }

    /// torchvision's `resnet152`: Bottleneck, [3, 8, 36, 3] (60,192,808 parameters at 1000
    /// classes).
    ///
    /// # Errors
    /// `vb` cannot provide a parameter of the expected shape (weights of another layout).
    pub fn resnet152(num_classes: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(
            &ResNetConfig::torchvision(BlockKind::Bottleneck, [3, 8, 36, 3], num_classes),
            vb,
        )
    }

    /// The tutorial's ResNet-18: ImageNet stem, stage widths 64-128-192-256
    /// (4,192,202 parameters at 10 classes).
    ///
    /// # Errors
    /// `vb` cannot provide a parameter of the expected shape (weights of another layout).
    pub fn resnet18_seed(num_classes: usize, vb: VarBuilder) -> Result<Self> {
        let config = ResNetConfig {
            widths: vec![64, 128, 192, 256],
            ..ResNetConfig::torchvision(BlockKind::Basic, [2, 2, 2, 2], num_classes)
        };
        Self::new(&config, vb)
    }

    /// The usual CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool, widths 64-128-256-512
    /// (11,173,962 parameters at 10 classes). In PyTorch it is torchvision's ResNet-18 with
    /// that stem, under torchvision's names (its checkpoints load with `strict=True`):
    ///
    /// ```python
    /// m = torchvision.models.resnet18(num_classes=10)
    /// m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    /// m.maxpool = torch.nn.Identity()
    /// ```
    ///
    /// (The same network as kuangliu's `pytorch-cifar` ResNet18, whose names differ:
    /// `shortcut`, `linear`.)
    ///
    /// # Errors
    /// `vb` cannot provide a parameter of the expected shape (weights of another layout).
    pub fn resnet18_cifar(num_classes: usize, vb: VarBuilder) -> Result<Self> {
        let config = ResNetConfig {
            stem: Stem::Cifar,
            ..ResNetConfig::torchvision(BlockKind::Basic, [2, 2, 2, 2], num_classes)
        };
        Self::new(&config, vb)
    }

    /// The configuration this network was built from.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// The classification head.
    pub fn fc(&self) -> &Linear {
        &self.fc
    }

    /// The number of residual stages.
    pub fn num_stages(&self) -> usize {
        self.stages.len()
    }

    /// The stem: convolution, batch norm, ReLU and (ImageNet stem) max-pool.
    ///
    /// # Errors
    /// `xs` is not `(N, C, H, W)` with the stem's channels, or is too small for its kernels.
    pub fn stem_forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self.config.stem {
            Stem::ImageNet => {
                let pool = Pool2d::max(3, 2).padding(1);
                self.conv1
                    .forward_batch_norm_relu_pool(xs, &self.bn1, &pool, train)
            }
            Stem::Cifar => self.conv1.forward_batch_norm(xs, &self.bn1, true, train),
        }
    }

    /// Residual stage `index` (0 is `layer1`).
    ///
    /// # Errors
    /// `index` is not a stage, or `xs` does not have the stage's input channels.
    pub fn stage_forward_t(&self, index: usize, xs: &Tensor, train: bool) -> Result<Tensor> {
        let stage = self.stages.get(index).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "stage {index} out of range ({} stages)",
                self.stages.len()
            ))
        })?;
        stage
            .iter()
            .try_fold(xs.clone(), |ys, block| block.forward_t(&ys, train))
    }

    /// Global average pooling of the last stage's output to (N, feature_dim).
    ///
    /// # Errors
    /// `xs` is not `(N, C, H, W)`.
    pub fn pool(&self, xs: &Tensor) -> Result<Tensor> {
        adaptive_avg_pool2d(xs, (1, 1))?.flatten_from(1)
    }

    /// The pooled features `fc` reads: everything but the head.
    ///
    /// # Errors
    /// As [`ResNet::stem_forward_t`]. Input `(N, C, H, W)`, output `(N, feature_dim)`.
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut ys = self.stem_forward_t(xs, train)?;
        for i in 0..self.stages.len() {
            ys = self.stage_forward_t(i, &ys, train)?;
        }
        self.pool(&ys)
    }
}

/// `model(x)` of PyTorch: the logits `(N, num_classes)` of float32 images `(N, C, H, W)` (also
/// under [`layers::autocast`], which runs the convolutions and products in bf16 as PyTorch's
/// `torch.autocast` does, on float32 images as there; a bf16 image tensor is refused on the
/// CPU); `train` is `model.train()` (batch norm normalises by the batch
/// and updates its running statistics) or `model.eval()` (the running statistics).
///
/// # Errors
/// As [`ResNet::stem_forward_t`]: `xs` is not `(N, C, H, W)` with the stem's channels, or is too
/// small for its kernels; in training, a batch whose deepest map holds one value per channel
/// (one image whose last stage is 1x1, as an ImageNet ResNet fed 32x32 images): batch norm
/// refuses it, as PyTorch's does.
impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.fc.forward(&self.features_t(xs, train)?)
    }
}

impl layers::Network for ResNet {
    fn forward_stages(&self, xs: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(self.stages.len() + 2);
        let mut ys = tap::stage("stem", self.stem_forward_t(xs, false)?)?;
        out.push(("stem".to_string(), ys.clone()));
        for i in 0..self.stages.len() {
            let name = format!("layer{}", i + 1);
            ys = tap::stage(&name, self.stage_forward_t(i, &ys, false)?)?;
            out.push((name, ys.clone()));
        }
        out.push(("fc".to_string(), self.fc.forward(&self.pool(&ys)?)?));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use layers::ParamStore;

    fn count(build: impl Fn(VarBuilder) -> Result<ResNet>) -> Result<usize> {
        let store = ParamStore::new(0, &Device::Cpu);
        build(store.vb())?;
        Ok(store.num_parameters())
    }

    #[test]
    fn parameter_counts_match_torchvision_and_the_tutorial() -> Result<()> {
        assert_eq!(count(|vb| ResNet::resnet18(1000, vb))?, 11_689_512);
        assert_eq!(count(|vb| ResNet::resnet50(1000, vb))?, 25_557_032);
        assert_eq!(count(|vb| ResNet::resnet18_seed(10, vb))?, 4_192_202);
        assert_eq!(count(|vb| ResNet::resnet18_cifar(10, vb))?, 11_173_962);
        assert_eq!(count(|vb| ResNet::resnet34(1000, vb))?, 21_797_672);
        assert_eq!(count(|vb| ResNet::resnet101(1000, vb))?, 44_549_160);
        assert_eq!(count(|vb| ResNet::resnet152(1000, vb))?, 60_192_808);
        Ok(())
    }

    #[test]
    fn keys_are_torchvisions() -> Result<()> {
        let store = ParamStore::new(0, &Device::Cpu);
        ResNet::resnet50(1000, store.vb())?;
        let names: Vec<String> = store.named_vars().into_iter().map(|(n, _)| n).collect();
        for key in [
            "conv1.weight",
            "bn1.running_var",
            "layer1.0.conv3.weight",
            "layer1.0.downsample.0.weight",
            "layer4.2.bn3.bias",
            "fc.weight",
        ] {
            assert!(names.iter().any(|n| n == key), "missing {key}");
        }
        Ok(())
    }

    #[test]
    fn narrow_variant_trains_and_evaluates() -> Result<()> {
        let store = ParamStore::new(0, &Device::Cpu);
        let config = ResNetConfig {
            widths: vec![4, 8],
            layers: vec![1, 1],
            stem_width: 4,
            ..ResNetConfig::torchvision(BlockKind::Bottleneck, [1, 1, 1, 1], 3)
        };
        let net = ResNet::new(&config, store.vb())?;
        let x = Tensor::randn(0f32, 1., (2, 3, 32, 32), &Device::Cpu)?;
        assert_eq!(net.forward_t(&x, true)?.dims(), [2, 3]);
        assert_eq!(net.forward_t(&x, false)?.dims(), [2, 3]);
        let stages = layers::Network::forward_stages(&net, &x)?;
        let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["stem", "layer1", "layer2", "fc"]);
        assert_eq!(stages[2].1.dims(), [2, 32, 4, 4]);
        Ok(())
    }

    /// Named values: parameter gradients and running statistics.
    type Named = Vec<(String, Vec<f32>)>;

    /// A training step (forward, loss, backward) of `config`'s network on `x` in `format`:
    /// the logits, then the evaluation-mode logits after it, every parameter's gradient and
    /// every running statistic, by name.
    fn step(
        config: &ResNetConfig,
        x: &Tensor,
        format: layers::MemoryFormat,
    ) -> Result<(Vec<f32>, Named)> {
        let store = ParamStore::new(3, &Device::Cpu);
        let net = ResNet::new(config, store.vb())?;
        let logits = net.forward_t(&format.apply(x)?, true)?;
        let loss = logits.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        // Then evaluation, with the running statistics the step moved.
        let eval = net.forward_t(&format.apply(x)?, false)?;
        let mut values = vec![("eval logits".to_string(), eval.flatten_all()?.to_vec1()?)];
        for (name, var) in store.named_vars() {
            let v = match grads.get(var.as_tensor()) {
                Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                None => var
                    .as_tensor()
                    .flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?,
            };
            values.push((name, v));
        }
        Ok((logits.flatten_all()?.to_vec1()?, values))
    }

    #[test]
    fn channels_last_input_gives_the_same_training_step() -> Result<()> {
        // Both stems, both blocks, a downsampling join: bit for bit the contiguous step (on
        // the CPU a channels-last activation runs the same kernels on a contiguous copy).
        let narrow = |block, stem| ResNetConfig {
            widths: vec![4, 8],
            layers: vec![1, 1],
            stem_width: 4,
            stem,
            ..ResNetConfig::torchvision(block, [1, 1, 1, 1], 3)
        };
        let x = Tensor::randn(0f32, 1., (2, 3, 16, 16), &Device::Cpu)?;
        for config in [
            narrow(BlockKind::Basic, Stem::Cifar),
            narrow(BlockKind::Bottleneck, Stem::ImageNet),
        ] {
            // The activations stay channels-last from stage to stage, as PyTorch's.
            let store = ParamStore::new(3, &Device::Cpu);
            let net = ResNet::new(&config, store.vb())?;
            let mut a = net.stem_forward_t(&layers::to_channels_last(&x)?, true)?;
            for stage in 0..net.num_stages() {
                assert!(layers::memory_format::is_channels_last(&a), "{config:?}");
                a = net.stage_forward_t(stage, &a, true)?;
            }
            let plain = step(&config, &x, layers::MemoryFormat::Contiguous)?;
            let last = step(&config, &x, layers::MemoryFormat::ChannelsLast)?;
            assert_eq!(plain.0, last.0, "logits of {config:?}");
            assert_eq!(plain.1.len(), last.1.len());
            for ((name, a), (_, b)) in plain.1.iter().zip(&last.1) {
                assert_eq!(a, b, "{name} of {config:?}");
            }
        }
        Ok(())
    }
}
