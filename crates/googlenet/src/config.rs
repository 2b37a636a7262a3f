//! The widths of a GoogLeNet, torchvision's by default.

/// The widths of one inception block (torchvision's `Inception` arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InceptionSpec {
    /// Output channels of the 1x1 branch.
    pub ch1x1: usize,
    /// Reduction in front of the 3x3 branch.
    pub ch3x3red: usize,
    /// Output channels of the 3x3 branch.
    pub ch3x3: usize,
    /// Reduction in front of the "5x5" branch (a 3x3 convolution in torchvision).
    pub ch5x5red: usize,
    /// Output channels of the "5x5" branch.
    pub ch5x5: usize,
    /// Output channels of the 1x1 projection after the pooling branch.
    pub pool_proj: usize,
}

impl InceptionSpec {
    /// Channels of the concatenated output.
    pub fn out_channels(&self) -> usize {
        self.ch1x1 + self.ch3x3 + self.ch5x5 + self.pool_proj
    }
}

const fn spec(w: [usize; 6]) -> InceptionSpec {
    InceptionSpec {
        ch1x1: w[0],
        ch3x3red: w[1],
        ch3x3: w[2],
        ch5x5red: w[3],
        ch5x5: w[4],
        pool_proj: w[5],
    }
}

/// The names of the nine inception blocks, in order.
pub const INCEPTION_NAMES: [&str; 9] = [
    "inception3a",
    "inception3b",
    "inception4a",
    "inception4b",
    "inception4c",
    "inception4d",
    "inception4e",
    "inception5a",
    "inception5b",
];

/// The shape of a GoogLeNet.
#[derive(Debug, Clone, PartialEq)]
pub struct GoogLeNetConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels of the stem's `conv1` (7x7 stride 2), `conv2` (1x1) and `conv3` (3x3).
    pub stem: [usize; 3],
    /// The nine inception blocks, `inception3a` to `inception5b`.
    pub inception: [InceptionSpec; 9],
    /// Whether to build the two auxiliary classifiers (`aux1` after `inception4a`, `aux2` after
    /// `inception4d`).
    pub aux_logits: bool,
    /// Output channels of the auxiliary classifiers' 1x1 convolution.
    pub aux_channels: usize,
    /// Width of the auxiliary classifiers' hidden linear.
    pub aux_hidden: usize,
    /// Drop probability in the auxiliary classifiers.
    pub aux_dropout: f32,
    /// Drop probability in front of `fc`.
    pub dropout: f32,
    /// Number of output classes.
    pub num_classes: usize,
}

impl GoogLeNetConfig {
    /// torchvision's GoogLeNet (`aux_logits=False`, `transform_input=False`).
    pub fn torchvision(num_classes: usize) -> Self {
        Self {
            in_channels: 3,
            stem: [64, 64, 192],
            inception: [
                spec([64, 96, 128, 16, 32, 32]),
                spec([128, 128, 192, 32, 96, 64]),
                spec([192, 96, 208, 16, 48, 64]),
                spec([160, 112, 224, 24, 64, 64]),
                spec([128, 128, 256, 24, 64, 64]),
                spec([112, 144, 288, 32, 64, 64]),
                spec([256, 160, 320, 32, 128, 128]),
                spec([256, 160, 320, 32, 128, 128]),
                spec([384, 192, 384, 48, 128, 128]),
            ],
            aux_logits: false,
            aux_channels: 128,
            aux_hidden: 1024,
            aux_dropout: 0.7,
            dropout: 0.2,
            num_classes,
        }
    }

    /// The same network with every width divided by `divisor` (at least one channel each).
    pub fn narrow(self, divisor: usize) -> Self {
        let d = |w: usize| (w / divisor.max(1)).max(1);
        Self {
            stem: self.stem.map(d),
            inception: self.inception.map(|s| InceptionSpec {
                ch1x1: d(s.ch1x1),
                ch3x3red: d(s.ch3x3red),
                ch3x3: d(s.ch3x3),
                ch5x5red: d(s.ch5x5red),
                ch5x5: d(s.ch5x5),
                pool_proj: d(s.pool_proj),
            }),
            aux_channels: d(self.aux_channels),
            aux_hidden: d(self.aux_hidden),
            ..self
        }
    }
}
