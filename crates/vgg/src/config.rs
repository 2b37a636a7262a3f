//! VGG configurations as torchvision writes them: lists of convolution widths and max-pools.

/// One entry of a VGG feature configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VggLayer {
    /// A 3x3 convolution (padding 1) with this many output channels, then (batch norm and) ReLU.
    Conv(usize),
    /// A 2x2 stride-2 max-pool.
    MaxPool,
}

/// Marks a max-pool in the width lists below, as torchvision's `"M"`.
const M: usize = 0;

/// torchvision's configuration "A" (VGG-11).
const VGG11: &[usize] = &[64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M];
/// torchvision's configuration "B" (VGG-13).
const VGG13: &[usize] = &[
    64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M,
];
/// torchvision's configuration "D" (VGG-16).
const VGG16: &[usize] = &[
    64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M,
];
/// torchvision's configuration "E" (VGG-19).
const VGG19: &[usize] = &[
    64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M,
];

/// The shape of a VGG network.
#[derive(Debug, Clone, PartialEq)]
pub struct VggConfig {
    /// Input channels.
    pub in_channels: usize,
    /// The feature extractor, in order.
    pub layers: Vec<VggLayer>,
    /// Batch norm (eps 1e-5) after every convolution.
    pub batch_norm: bool,
    /// Side of the adaptive average pool in front of the classifier (7 in torchvision).
    pub pooled: usize,
    /// Width of the two hidden fully connected layers.
    pub hidden: usize,
    /// Drop probability after each hidden fully connected layer.
    pub dropout: f32,
    /// Number of output classes.
    pub num_classes: usize,
}

impl VggConfig {
    /// torchvision's VGG with `depth` weight layers (11, 13, 16 or 19).
    ///
    /// # Errors
    /// A depth other than 11, 13, 16 or 19.
    pub fn from_depth(
        depth: usize,
        batch_norm: bool,
        num_classes: usize,
    ) -> candle_core::Result<Self> {
        let layers = match depth {
            11 => VGG11,
            13 => VGG13,
            16 => VGG16,
            19 => VGG19,
            _ => candle_core::bail!("VGG comes in depths 11, 13, 16 and 19, not {depth}"),
        };
        Ok(Self {
            in_channels: 3,
            layers: layers
                .iter()
                .map(|&w| {
                    if w == M {
                        VggLayer::MaxPool
                    } else {
                        VggLayer::Conv(w)
                    }
                })
                .collect(),
            batch_norm,
            pooled: 7,
            hidden: 4096,
            dropout: 0.5,
            num_classes,
        })
    }

    /// The same network with every convolution and hidden width divided by `divisor` (at least
    /// one channel each): a cheap variant with the same layout, for tests and small data.
    pub fn narrow(self, divisor: usize) -> Self {
        let divide = |w: usize| (w / divisor.max(1)).max(1);
        Self {
            layers: self
                .layers
                .iter()
                .map(|l| match l {
                    VggLayer::Conv(w) => VggLayer::Conv(divide(*w)),
                    VggLayer::MaxPool => VggLayer::MaxPool,
                })
                .collect(),
            hidden: divide(self.hidden),
            ..self
        }
    }
}
