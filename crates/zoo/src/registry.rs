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

/// What the zoo knows about a model besides its constructor, as timm keeps a `pretrained_cfg`
/// per model: programs read these fields instead of guessing from shapes or names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// The name [`crate::build`] takes.
    pub name: &'static str,
    /// The native input (channels, height, width) of the `(N, C, H, W)` batches. `lenet5` and
    /// `cnn-mnist` take that size and those their pooling floors to the same map (28 to 31 for
    /// both, as their PyTorch forms do), no other: their `fc1` is sized for it; the others
    /// reduce other sizes too, down to a minimum (AlexNet 63, VGG 32, GoogLeNet 15), through
    /// their adaptive pooling.
    pub input: (usize, usize, usize),
    /// The data set the native layout is made for (`"mnist"`, `"cifar10"` or `"imagenet"`):
    /// its normalisation (`datasets::MNIST_MEAN_STD`, `CIFAR10_MEAN_STD` or
    /// `IMAGENET_MEAN_STD`, through `datasets::catalog::spec(data)`'s `eval` transform) is the
    /// model's evaluation transform and its class names are the model's at
    /// [`ModelSpec::default_classes`].
    pub data: &'static str,
    /// The number of classes the model is usually built with.
    pub default_classes: usize,
    /// The parameter name of the first convolution's weight (`conv1.weight`), the kernels that
    /// look at the image.
    pub first_conv: &'static str,
    /// The module name of the final linear layer (`fc`, `classifier.6`): what a new head for
    /// other classes replaces (`<classifier>.weight`, `<classifier>.bias`).
    pub classifier: &'static str,
    /// The stage of `Network::forward_stages` that Grad-CAM looks at: the last convolutional
    /// stage whose map still has some resolution (`layer4`, `block5`, `inception5b`).
    pub cam_stage: &'static str,
    /// One line on what the model is.
    pub description: &'static str,
}

/// A model's constructor: `num_classes` and where its parameters live.
pub type Builder = std::sync::Arc<
    dyn Fn(usize, VarBuilder) -> candle_core::Result<Box<dyn Network>> + Send + Sync,
>;

/// A row of the table.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) spec: ModelSpec,
    pub(crate) build: Builder,
}

fn boxed<N: Network + 'static>(
    net: candle_core::Result<N>,
) -> candle_core::Result<Box<dyn Network>> {
    Ok(Box::new(net?))
}

/// A native input and the data set it is made for.
type Native = ((usize, usize, usize), &'static str);
const MNIST: Native = ((1, 28, 28), "mnist");
const IMAGENET: Native = ((3, 224, 224), "imagenet");
const CIFAR: Native = ((3, 32, 32), "cifar10");

/// First convolution, classifier and Grad-CAM stage of the torchvision-style families.
const ALEXNET: (&str, &str, &str) = ("features.0.weight", "classifier.6", "conv5");
const VGG: (&str, &str, &str) = ("features.0.weight", "classifier.6", "block5");
const RESNET: (&str, &str, &str) = ("conv1.weight", "fc", "layer4");

macro_rules! entry {
    ($name:literal, $native:expr, $classes:literal, $layers:expr, $description:literal, $build:expr) => {
        Entry {
            spec: ModelSpec {
                name: $name,
                input: $native.0,
                data: $native.1,
                default_classes: $classes,
                first_conv: $layers.0,
                classifier: $layers.1,
                cam_stage: $layers.2,
                description: $description,
            },
            build: std::sync::Arc::new(|n, vb| boxed($build(n, vb))),
        }
    };
}

/// Every built-in model, in the order [`crate::names`] lists them.
fn builtin() -> Vec<Entry> {
    vec![
        entry!(
            "lenet5",
            MNIST,
            10,
            ("features.0.weight", "classifier.4", "conv2"),
            "the tutorial's LeNet-5: Tanh, average pooling, 28x28",
            LeNet::lenet5
        ),
        entry!(
            "cnn-mnist",
            MNIST,
            10,
            ("conv1.weight", "fc2", "conv2"),
            "the tutorial's MNIST CNN: two 3x3 convolutions, max-pooling, dropout",
            MnistCnn::tutorial
        ),
        entry!(
            "alexnet",
            IMAGENET,
            1000,
            ALEXNET,
            "the tutorial's AlexNet with the paper's widths 96-256-384-384-256",
            AlexNet::tutorial
        ),
        entry!(
            "alexnet-tv",
            IMAGENET,
            1000,
            ALEXNET,
            "torchvision's AlexNet (64-192-384-256-256)",
            AlexNet::torchvision
        ),
        entry!(
            "vgg11",
            IMAGENET,
            1000,
            VGG,
            "VGG-11 (configuration A)",
            Vgg::vgg11
        ),
        entry!(
            "vgg11-bn",
            IMAGENET,
            1000,
            VGG,
            "VGG-11 with batch norm",
            Vgg::vgg11_bn
        ),
        entry!(
            "vgg13",
            IMAGENET,
            1000,
            VGG,
            "VGG-13 (configuration B)",
            Vgg::vgg13
        ),
        entry!(
            "vgg13-bn",
            IMAGENET,
            1000,
            VGG,
            "VGG-13 with batch norm",
            Vgg::vgg13_bn
        ),
        entry!(
            "vgg16",
            IMAGENET,
            1000,
            VGG,
            "VGG-16 (configuration D)",
            Vgg::vgg16
        ),
        entry!(
            "vgg16-bn",
            IMAGENET,
            1000,
            VGG,
            "VGG-16 with batch norm",
            Vgg::vgg16_bn
        ),
        entry!(
            "vgg19",
            IMAGENET,
            1000,
            VGG,
            "VGG-19 (configuration E)",
            Vgg::vgg19
        ),
        entry!(
            "vgg19-bn",
            IMAGENET,
            1000,
            VGG,
            "VGG-19 with batch norm",
            Vgg::vgg19_bn
        ),
        entry!(
            "googlenet",
            IMAGENET,
            1000,
            ("conv1.conv.weight", "fc", "inception5b"),
            "torchvision's GoogLeNet (Inception v1), no auxiliary classifiers",
            GoogLeNet::torchvision
        ),
        entry!(
            "resnet18",
            IMAGENET,
            1000,
            RESNET,
            "torchvision's ResNet-18 (BasicBlock, 2-2-2-2)",
            ResNet::resnet18
        ),
        entry!(
            "resnet34",
            IMAGENET,
            1000,
            RESNET,
            "torchvision's ResNet-34 (BasicBlock, 3-4-6-3)",
            ResNet::resnet34
        ),
        entry!(
            "resnet50",
            IMAGENET,
            1000,
            RESNET,
            "torchvision's ResNet-50 (Bottleneck, 3-4-6-3)",
            ResNet::resnet50
        ),
        entry!(
            "resnet101",
            IMAGENET,
            1000,
            RESNET,
            "torchvision's ResNet-101 (Bottleneck, 3-4-23-3)",
            ResNet::resnet101
        ),
        entry!(
            "resnet152",
            IMAGENET,
            1000,
            RESNET,
            "torchvision's ResNet-152 (Bottleneck, 3-8-36-3)",
            ResNet::resnet152
        ),
        entry!(
            "resnet18-seed",
            CIFAR,
            10,
            ("conv1.weight", "fc", "layer3"),
            "the tutorial's ResNet-18: 7x7 stem with max-pool, widths 64-128-192-256",
            ResNet::resnet18_seed
        ),
        entry!(
            "resnet18-cifar",
            CIFAR,
            10,
            RESNET,
            "CIFAR ResNet-18: 3x3 stem, no max-pool, widths 64-128-256-512",
            ResNet::resnet18_cifar
        ),
    ]
}

/// The table: the built-in models, then those added with [`crate::register`].
static ENTRIES: std::sync::LazyLock<std::sync::RwLock<Vec<Entry>>> =
    std::sync::LazyLock::new(|| std::sync::RwLock::new(builtin()));

/// A copy of every row, in table order.
pub(crate) fn entries() -> Vec<Entry> {
    ENTRIES.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Appends a row; a name already in the table is an error.
pub(crate) fn add(entry: Entry) -> Result<()> {
    let mut table = ENTRIES.write().unwrap_or_else(|p| p.into_inner());
    if table.iter().any(|e| e.spec.name == entry.spec.name) {
        bail!("model {:?} is already in the zoo", entry.spec.name);
    }
    table.push(entry);
    Ok(())
}

/// The row for `name`, or an error listing every known name.
pub(crate) fn entry(name: &str) -> Result<Entry> {
    let table = entries();
    match table.iter().find(|e| e.spec.name == name) {
        Some(entry) => Ok(entry.clone()),
        None => {
            let known: Vec<&str> = table.iter().map(|e| e.spec.name).collect();
            let suggestion = crate::did_you_mean(name, &known)
                .map(|k| format!(" (did you mean {k:?}?)"))
                .unwrap_or_default();
            bail!(
                "unknown model {name:?}{suggestion}; known models: {}",
                known.join(", ")
            )
        }
    }
}
