//! The initialisers torchvision uses, as Candle [`Init`] hints.

use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::Init;

/// `nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")`: ResNet and VGG convolutions.
pub const KAIMING_NORMAL_FAN_OUT: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};

/// PyTorch's default for `nn.Linear` and `nn.Conv2d` weights and biases:
/// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (kaiming_uniform with a = sqrt(5)).
pub fn torch_default(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `nn.init.normal_(w, 0, std)`: VGG's linear layers use std 0.01.
pub fn normal(std: f64) -> Init {
    Init::Randn {
        mean: 0.0,
        stdev: std,
    }
}

/// Zeros.
pub const ZEROS: Init = Init::Const(0.0);

/// How a layer's weights and biases are initialised.
#[derive(Debug, Clone, Copy)]
pub enum WeightInit {
    /// PyTorch's own default for the layer (weight and bias uniform in ±1/sqrt(fan_in)).
    TorchDefault,
    /// Kaiming normal with fan-out for the weight, zero bias (torchvision's ResNet and VGG convs).
    KaimingFanOut,
    /// Normal with this standard deviation for the weight, zero bias (VGG's linears; GoogLeNet's
    /// truncated normal at std 0.01, whose ±2 cut-off is 200 standard deviations away).
    Normal(f64),
    /// Normal weight with PyTorch's default bias (GoogLeNet's `fc`, whose bias keeps the default).
    NormalWeightDefaultBias(f64),
}

impl WeightInit {
    /// The hint for the weight of a layer with this `fan_in`.
    pub fn weight(self, fan_in: usize) -> Init {
        match self {
            WeightInit::TorchDefault => torch_default(fan_in),
            WeightInit::KaimingFanOut => KAIMING_NORMAL_FAN_OUT,
            WeightInit::Normal(std) | WeightInit::NormalWeightDefaultBias(std) => normal(std),
        }
    }

    /// The hint for the bias of a layer with this `fan_in`.
    pub fn bias(self, fan_in: usize) -> Init {
        match self {
            WeightInit::TorchDefault | WeightInit::NormalWeightDefaultBias(_) => {
                torch_default(fan_in)
            }
            WeightInit::KaimingFanOut | WeightInit::Normal(_) => ZEROS,
        }
    }
}
