//! The two residual blocks, as torchvision's `BasicBlock` and `Bottleneck`.

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use layers::{batch_norm, conv2d, conv_cfg, BatchNorm, Conv2d, WeightInit};

const BN_EPS: f64 = 1e-5;

/// Which residual block a network stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34); expansion 1.
    Basic,
    /// 1x1, 3x3 (carrying the stride, as torchvision's "ResNet v1.5"), 1x1; expansion 4.
    Bottleneck,
}

impl BlockKind {
    /// Output channels per unit of stage width.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

fn conv(vb: VarBuilder, cin: usize, cout: usize, k: usize, stride: usize) -> Result<Conv2d> {
    conv2d(
        vb,
        cin,
        cout,
        k,
        conv_cfg(stride, k / 2),
        false,
        WeightInit::KaimingFanOut,
    )
}

/// The 1x1 projection (`downsample.0` conv, `downsample.1` batch norm) used when a block
/// changes the resolution or the width.
#[derive(Debug, Clone)]
struct Downsample {
    conv: Conv2d,
    bn: BatchNorm,
}

impl Downsample {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.conv.forward_batch_norm(xs, &self.bn, false, train)
    }
}

/// One residual block, torchvision's `BasicBlock` (two 3x3 convolutions) or `Bottleneck` (1x1,
/// 3x3, 1x1; the stride on the 3x3, as torchvision's "ResNet v1.5"), each with batch norm, plus
/// the shortcut, projected (`downsample`: 1x1 convolution and batch norm) where the block changes
/// the resolution or the width. Takes `(N, in_channels, H, W)` and gives
/// `(N, width * expansion, ⌈H/stride⌉, ⌈W/stride⌉)`.
#[derive(Debug, Clone)]
pub struct Block {
    convs: Vec<(Conv2d, BatchNorm)>,
    downsample: Option<Downsample>,
}

impl Block {
    /// A block of `kind` from `in_channels` to `width * expansion` channels, with `stride` on
    /// its 3x3 convolution; parameters `conv1`, `bn1`, ... and `downsample.{0,1}` under `vb`.
    ///
    /// # Errors
    /// `vb` cannot provide a parameter of the expected shape (weights of another layout).
    pub fn new(
        vb: VarBuilder,
        kind: BlockKind,
        in_channels: usize,
        width: usize,
        stride: usize,
    ) -> Result<Self> {
        let out = width * kind.expansion();
        let shapes: Vec<(usize, usize, usize, usize)> = match kind {
            BlockKind::Basic => vec![(in_channels, width, 3, stride), (width, width, 3, 1)],
            BlockKind::Bottleneck => vec![
                (in_channels, width, 1, 1),
                (width, width, 3, stride),
                (width, out, 1, 1),
            ],
        };
        let convs = shapes
            .into_iter()
            .enumerate()
            .map(|(i, (cin, cout, k, s))| {
                Ok((
                    conv(vb.pp(format!("conv{}", i + 1)), cin, cout, k, s)?,
                    batch_norm(vb.pp(format!("bn{}", i + 1)), cout, BN_EPS)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let downsample = if stride != 1 || in_channels != out {
            Some(Downsample {
                conv: conv(vb.pp("downsample.0"), in_channels, out, 1, stride)?,
                bn: batch_norm(vb.pp("downsample.1"), out, BN_EPS)?,
            })
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }
}

/// `block(x)` of torchvision: `relu(bn(conv(...)) + shortcut(x))` of `(N, in_channels, H, W)`
/// images, `(N, width * expansion, ⌈H/stride⌉, ⌈W/stride⌉)`; `train` is `block.train()`
/// (batch statistics, running statistics updated) or `block.eval()`.
///
/// # Errors
/// `xs` is not `(N, in_channels, H, W)`.
impl ModuleT for Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let shortcut = match &self.downsample {
            Some(d) => d.forward_t(xs, train)?,
            None => xs.clone(),
        };
        let mut ys = xs.clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            ys = if i != last {
                // relu(bn(conv(x))), in the convolution's op where it can be.
                conv.forward_batch_norm(&ys, bn, true, train)?
            } else {
                // relu(bn(out) + identity), one operation each way (PyTorch's zero gradient
                // where the sum is zero).
                conv.forward_batch_norm_add_relu(&ys, bn, &shortcut, train)?
            };
        }
        Ok(ys)
    }
}
