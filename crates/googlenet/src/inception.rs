//! torchvision's `Inception` block and `InceptionAux` classifier.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use layers::Linear;
use layers::{
    adaptive_avg_pool2d, conv_cfg, flatten, linear, ConvBnRelu, Dropout, Pool2d, WeightInit,
};

use crate::config::InceptionSpec;

/// torchvision's `BasicConv2d` eps.
pub(crate) const BN_EPS: f64 = 1e-3;
/// torchvision initialises convolutions with a truncated normal of std 0.01.
pub(crate) const CONV_INIT: WeightInit = WeightInit::Normal(0.01);
/// ... and linear weights the same way, keeping PyTorch's default bias.
pub(crate) const FC_INIT: WeightInit = WeightInit::NormalWeightDefaultBias(0.01);

/// `BasicConv2d(in, out, kernel, stride=stride, padding=padding)` under `vb`.
pub(crate) fn basic_conv(
    vb: VarBuilder,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<ConvBnRelu> {
    let cfg = conv_cfg(stride, padding);
    ConvBnRelu::new(
        vb,
        in_channels,
        out_channels,
        kernel,
        cfg,
        BN_EPS,
        true,
        CONV_INIT,
    )
}

/// Four parallel branches concatenated along channels: 1x1; 1x1 then 3x3; 1x1 then 3x3
/// (torchvision's "5x5" branch); 3x3 stride-1 ceil-mode max-pool then 1x1.
#[derive(Debug, Clone)]
pub(crate) struct Inception {
    branch1: ConvBnRelu,
    branch2: [ConvBnRelu; 2],
    branch3: [ConvBnRelu; 2],
    branch4: ConvBnRelu,
    pool: Pool2d,
}

impl Inception {
    pub(crate) fn new(vb: VarBuilder, in_channels: usize, s: &InceptionSpec) -> Result<Self> {
        Ok(Self {
            branch1: basic_conv(vb.pp("branch1"), in_channels, s.ch1x1, 1, 1, 0)?,
            branch2: [
                basic_conv(vb.pp("branch2.0"), in_channels, s.ch3x3red, 1, 1, 0)?,
                basic_conv(vb.pp("branch2.1"), s.ch3x3red, s.ch3x3, 3, 1, 1)?,
            ],
            branch3: [
                basic_conv(vb.pp("branch3.0"), in_channels, s.ch5x5red, 1, 1, 0)?,
                basic_conv(vb.pp("branch3.1"), s.ch5x5red, s.ch5x5, 3, 1, 1)?,
            ],
            branch4: basic_conv(vb.pp("branch4.1"), in_channels, s.pool_proj, 1, 1, 0)?,
            pool: Pool2d::max(3, 1).padding(1).ceil_mode(true),
        })
    }
}

impl ModuleT for Inception {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let b1 = self.branch1.forward_t(xs, train)?;
        let b2 = self.branch2[1].forward_t(&self.branch2[0].forward_t(xs, train)?, train)?;
        let b3 = self.branch3[1].forward_t(&self.branch3[0].forward_t(xs, train)?, train)?;
        let b4 = self.branch4.forward_t(&self.pool.forward(xs)?, train)?;
        // In the branches' memory format (channels-last stays channels-last).
        layers::memory_format::cat_channels(&[&b1, &b2, &b3, &b4])
    }
}

/// An auxiliary classifier: adaptive average pool to 4x4, 1x1 `conv`, `fc1` with ReLU,
/// dropout, `fc2`.
#[derive(Debug, Clone)]
pub(crate) struct InceptionAux {
    conv: ConvBnRelu,
    fc1: Linear,
    fc2: Linear,
    dropout: Dropout,
}

impl InceptionAux {
    pub(crate) fn new(
        vb: VarBuilder,
        in_channels: usize,
        channels: usize,
        hidden: usize,
        dropout: f32,
        num_classes: usize,
    ) -> Result<Self> {
        Ok(Self {
            conv: basic_conv(vb.pp("conv"), in_channels, channels, 1, 1, 0)?,
            fc1: linear(vb.pp("fc1"), channels * 16, hidden, FC_INIT)?,
            fc2: linear(vb.pp("fc2"), hidden, num_classes, FC_INIT)?,
            dropout: Dropout::new(dropout)?,
        })
    }
}

impl ModuleT for InceptionAux {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let xs = self
            .conv
            .forward_t(&adaptive_avg_pool2d(xs, (4, 4))?, train)?;
        let xs = layers::relu(&self.fc1.forward(&flatten(&xs)?)?)?;
        self.fc2.forward(&self.dropout.forward_t(&xs, train)?)
    }
}
