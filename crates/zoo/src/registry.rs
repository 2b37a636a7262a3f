//! The table of models: name, native input, default classes, description and constructor.

use alexnet::AlexNet;
use anyhow::{bail, Result};
use candle_nn::VarBuilder;
use googlenet::GoogLeNet;
use layers::Network;
use lenet::LeNet;
use mnist_cnn::MnistCnn;
use resnet::ResNet;
use vgg::Vgg;

/// What the zoo knows about a model besides its constructor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// The name [`crate::build`] takes.
    pub name: &'static str,
    /// The native input (channels, height, width).
    pub input: (usize, usize, usize),
    /// The number of classes the model is usually built with.
    pub default_classes: usize,
    /// One line on what the model is.
    pub description: &'static str,
}

/// A model's constructor: `num_classes` and where its parameters live.
type Builder = fn(usize, VarBuilder) -> candle_core::Result<Box<dyn Network>>;

/// A row of the table.
pub(crate) struct Entry {
    pub(crate) spec: ModelSpec,
    pub(crate) build: Builder,
}

fn boxed<N: Network + 'static>(
    net: candle_core::Result<N>,
) -> candle_core::Result<Box<dyn Network>> {
    Ok(Box::new(net?))
}

const MNIST: (usize, usize, usize) = (1, 28, 28);
const IMAGENET: (usize, usize, usize) = (3, 224, 224);
const CIFAR: (usize, usize, usize) = (3, 32, 32);

macro_rules! entry {
    ($name:literal, $input:expr, $classes:literal, $description:literal, $build:expr) => {
        Entry {
            spec: ModelSpec {
                name: $name,
                input: $input,
                default_classes: $classes,
                description: $description,
            },
            build: |n, vb| boxed($build(n, vb)),
        }
    };
}

/// Every model, in the order [`crate::names`] lists them.
pub(crate) const ENTRIES: &[Entry] = &[
    entry!(
        "lenet5",
        MNIST,
        10,
        "the tutorial's LeNet-5: Tanh, average pooling, 28x28",
        LeNet::lenet5
    ),
    entry!(
        "cnn-mnist",
        MNIST,
        10,
        "the tutorial's MNIST CNN: two 3x3 convolutions, max-pooling, dropout",
        MnistCnn::tutorial
    ),
    entry!(
        "alexnet",
        IMAGENET,
        1000,
        "the tutorial's AlexNet with the paper's widths 96-256-384-384-256",
        AlexNet::tutorial
    ),
    entry!(
        "alexnet-tv",
        IMAGENET,
        1000,
        "torchvision's AlexNet (64-192-384-256-256)",
        AlexNet::torchvision
    ),
    entry!(
        "vgg11",
        IMAGENET,
        1000,
        "VGG-11 (configuration A)",
        Vgg::vgg11
    ),
    entry!(
        "vgg11-bn",
        IMAGENET,
        1000,
        "VGG-11 with batch norm",
        Vgg::vgg11_bn
    ),
    entry!(
        "vgg13",
        IMAGENET,
        1000,
        "VGG-13 (configuration B)",
        Vgg::vgg13
    ),
    entry!(
        "vgg13-bn",
        IMAGENET,
        1000,
        "VGG-13 with batch norm",
        Vgg::vgg13_bn
    ),
    entry!(
        "vgg16",
        IMAGENET,
        1000,
        "VGG-16 (configuration D)",
        Vgg::vgg16
    ),
    entry!(
        "vgg16-bn",
        IMAGENET,
        1000,
        "VGG-16 with batch norm",
        Vgg::vgg16_bn
    ),
    entry!(
        "vgg19",
        IMAGENET,
        1000,
        "VGG-19 (configuration E)",
        Vgg::vgg19
    ),
    entry!(
        "vgg19-bn",
        IMAGENET,
        1000,
        "VGG-19 with batch norm",
        Vgg::vgg19_bn
    ),
    entry!(
        "googlenet",
        IMAGENET,
        1000,
        "torchvision's GoogLeNet (Inception v1), no auxiliary classifiers",
        GoogLeNet::torchvision
    ),
    entry!(
        "resnet18",
        IMAGENET,
        1000,
        "torchvision's ResNet-18 (BasicBlock, 2-2-2-2)",
        ResNet::resnet18
    ),
    entry!(
        "resnet34",
        IMAGENET,
        1000,
        "torchvision's ResNet-34 (BasicBlock, 3-4-6-3)",
        ResNet::resnet34
    ),
    entry!(
        "resnet50",
        IMAGENET,
        1000,
        "torchvision's ResNet-50 (Bottleneck, 3-4-6-3)",
        ResNet::resnet50
    ),
    entry!(
        "resnet101",
        IMAGENET,
        1000,
        "torchvision's ResNet-101 (Bottleneck, 3-4-23-3)",
        ResNet::resnet101
    ),
    entry!(
        "resnet152",
        IMAGENET,
        1000,
        "torchvision's ResNet-152 (Bottleneck, 3-8-36-3)",
        ResNet::resnet152
    ),
    entry!(
        "resnet18-seed",
        CIFAR,
        10,
        "the tutorial's ResNet-18: 7x7 stem with max-pool, widths 64-128-192-256",
        ResNet::resnet18_seed
    ),
    entry!(
        "resnet18-cifar",
        CIFAR,
        10,
        "CIFAR ResNet-18: 3x3 stem, no max-pool, widths 64-128-256-512",
        ResNet::resnet18_cifar
    ),
];

/// The row for `name`, or an error listing every known name.
pub(crate) fn entry(name: &str) -> Result<&'static Entry> {
    match ENTRIES.iter().find(|e| e.spec.name == name) {
        Some(entry) => Ok(entry),
        None => {
            let known: Vec<&str> = ENTRIES.iter().map(|e| e.spec.name).collect();
            bail!("unknown model {name:?}; known models: {}", known.join(", "))
        }
    }
}
