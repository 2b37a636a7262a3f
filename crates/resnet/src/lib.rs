//! ResNet in torchvision's layout (18, 34, 50, 101, 152; BasicBlock and Bottleneck), the
//! tutorial's ResNet-18 (widths 64-128-192-256) and the CIFAR ResNet-18, on Candle.
//!
//! Kaiming He, Xiangyu Zhang, Shaoqing Ren and Jian Sun, "Deep Residual Learning for Image
//! Recognition" (CVPR 2016, arXiv:1512.03385); torchvision's `torchvision.models.resnet`.
//!
//! Parameter names are torchvision's `state_dict()` keys, so ImageNet checkpoints converted
//! to safetensors load directly, with `layers::checkpoint::load_strict` (add `layers` as a
//! dependency too; it holds the [`layers::ParamStore`] the weights live in). Build the model
//! first: building makes the variables a checkpoint fills. The inputs are `(N, 3, H, W)` float32
//! images normalised as the weights were trained: torchvision's ImageNet weights take
//! `datasets::IMAGENET_MEAN_STD` (mean 0.485, 0.456, 0.406, std 0.229, 0.224, 0.225 on pixels
//! scaled to [0, 1]) at 224x224 (`datasets::Transform::imagenet_eval(224)`); a `train-cifar`
//! run takes `datasets::CIFAR10_MEAN_STD` at 32x32. The logits are `(N, num_classes)`.
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! use candle_core::{DType, Device, ModuleT, Tensor};
//!
//! // What `train-cifar --model resnet18-cifar` saves as best.safetensors, made here.
//! let trained = layers::ParamStore::new(1, &Device::Cpu);
//! resnet::ResNet::resnet18_cifar(10, trained.vb())?;
//! let file = std::env::temp_dir().join(format!("resnet-doc-{}.safetensors", std::process::id()));
//! layers::checkpoint::save(trained.varmap(), &file)?;
//!
//! let store = layers::ParamStore::new(0, &Device::Cpu); // seeded; PyTorch's names
//! let net = resnet::ResNet::resnet18_cifar(10, store.vb())?; // makes the variables
//! layers::checkpoint::load_strict(store.varmap(), &file)?; // every key, every shape, or an error
//! let images = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?; // normalised (N, 3, 32, 32)
//! let _no_grad = layers::no_grad(); // as `with torch.no_grad():`, no autograd graph
//! let logits = net.forward_t(&images, false)?; // eval mode: batch norm's running statistics
//! assert_eq!(logits.dims(), [2, 10]);
//! assert!(!logits.track_op());
//! # std::fs::remove_file(&file)?;
//! # Ok(()) }
//! ```

mod block;
mod resnet;

pub use block::{Block, BlockKind};
pub use resnet::{ResNet, ResNetConfig, Stem};
