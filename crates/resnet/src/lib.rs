//! ResNet in torchvision's layout (18, 34, 50, 101, 152; BasicBlock and Bottleneck), the
//! tutorial's ResNet-18 (widths 64-128-192-256) and the CIFAR ResNet-18, on Candle.
//!
//! Parameter names are torchvision's `state_dict()` keys, so ImageNet checkpoints converted
//! to safetensors load directly.

mod block;
mod resnet;

pub use block::{Block, BlockKind};
pub use resnet::{ResNet, ResNetConfig, Stem};
