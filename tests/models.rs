//! Every zoo model: its parameter count (PyTorch's), and its output shape at its native input in
//! evaluation (batch 1) and training (batch 2, so batch norm sees more than one value per
//! channel) mode.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

/// Checks `zoo::num_parameters(name, classes)` against the count PyTorch reports.
fn assert_count(name: &str, classes: usize, expected: usize) -> Result<()> {
    let got = zoo::num_parameters(name, classes)?;
    ensure!(
        got == expected,
        "{name}: {got} parameters, PyTorch has {expected}"
    );
    Ok(())
}

#[test]
fn tutorial_models_count_as_pytorch() -> Result<()> {
    assert_count("lenet5", 10, 44_426)?;
    assert_count("cnn-mnist", 10, 421_642)?;
    assert_count("resnet18-seed", 10, 4_192_202)?;
    assert_count("resnet18-cifar", 10, 11_173_962)
}

#[test]
fn alexnets_count_as_pytorch() -> Result<()> {
    assert_count("alexnet", 1000, 62_378_344)?;
    assert_count("alexnet-tv", 1000, 61_100_840)
}

#[test]
fn vgg11_and_vgg13_count_as_torchvision() -> Result<()> {
    assert_count("vgg11", 1000, 132_863_336)?;
    assert_count("vgg11-bn", 1000, 132_868_840)?;
    assert_count("vgg13", 1000, 133_047_848)?;
    assert_count("vgg13-bn", 1000, 133_053_736)
}

#[test]
fn vgg16_counts_as_torchvision() -> Result<()> {
    assert_count("vgg16", 1000, 138_357_544)?;
    assert_count("vgg16-bn", 1000, 138_365_992)
}

#[test]
fn vgg19_counts_as_torchvision() -> Result<()> {
    assert_count("vgg19", 1000, 143_667_240)?;
    assert_count("vgg19-bn", 1000, 143_678_248)
}

#[test]
fn googlenet_counts_as_torchvision() -> Result<()> {
    assert_count("googlenet", 1000, 6_624_904)
}

#[test]
fn resnets_count_as_torchvision() -> Result<()> {
    assert_count("resnet18", 1000, 11_689_512)?;
    assert_count("resnet34", 1000, 21_797_672)?;
    assert_count("resnet50", 1000, 25_557_032)?;
    assert_count("resnet101", 1000, 44_549_160)?;
    assert_count("resnet152", 1000, 60_192_808)
}

#[test]
fn counts_follow_the_number_of_classes() -> Result<()> {
    // Only the last linear changes: (84 + 1) * (100 - 10) more parameters.
    assert_count("lenet5", 100, 44_426 + 85 * 90)
}

/// Builds `name` at its default classes and checks the logits' shape for a batch of 1 in eval
/// mode at the model's native input and for a batch of 2 in training mode.
///
/// Cost on a 2-core CPU: the ImageNet-size models run the training pass at half their native
/// side (112x112; adaptive pooling keeps the logits' shape), a quarter of the compute, while
/// the eval pass checks the native input. Weights come from a plain Candle `VarMap` (the same
/// initialisers with a faster, unseeded generator than `ParamStore`'s): only shapes and
/// finiteness are checked here; values are checked in tests/parity_forward.rs.
fn assert_forward_shapes(name: &str) -> Result<()> {
    let spec = zoo::spec(name)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = zoo::build(name, spec.default_classes, vb)?;
    let (c, h, w) = spec.input;
    let (train_h, train_w) = if h >= 224 { (h / 2, w / 2) } else { (h, w) };
    for (batch, train, h, w) in [(1, false, h, w), (2, true, train_h, train_w)] {
        let xs = Tensor::randn(0f32, 1., (batch, c, h, w), &Device::Cpu)?;
        let logits = net.forward_t(&xs, train)?;
        ensure!(
            logits.dims() == [batch, spec.default_classes],
            "{name} (train {train}, {h}x{w}): logits {:?}, expected [{batch}, {}]",
            logits.dims(),
            spec.default_classes
        );
        let max = logits.abs()?.max_all()?.to_scalar::<f32>()?;
        ensure!(max.is_finite(), "{name} (train {train}): non-finite logits");
    }
    Ok(())
}

macro_rules! forward_shape_tests {
    ($($test:ident => $name:literal,)*) => {
        $(
            #[test]
            fn $test() -> Result<()> {
                assert_forward_shapes($name)
            }
        )*

        #[test]
        fn every_zoo_model_has_a_forward_test() {
            let tested = [$($name),*];
            for name in zoo::names() {
                assert!(tested.contains(&name), "no forward test for {name}");
            }
        }
    };
}

forward_shape_tests! {
    forward_lenet5 => "lenet5",
    forward_cnn_mnist => "cnn-mnist",
    forward_alexnet => "alexnet",
    forward_alexnet_tv => "alexnet-tv",
    forward_vgg11 => "vgg11",
    forward_vgg11_bn => "vgg11-bn",
    forward_vgg13 => "vgg13",
    forward_vgg13_bn => "vgg13-bn",
    forward_vgg16 => "vgg16",
    forward_vgg16_bn => "vgg16-bn",
    forward_vgg19 => "vgg19",
    forward_vgg19_bn => "vgg19-bn",
    forward_googlenet => "googlenet",
    forward_resnet18 => "resnet18",
    forward_resnet34 => "resnet34",
    forward_resnet50 => "resnet50",
    forward_resnet101 => "resnet101",
    forward_resnet152 => "resnet152",
    forward_resnet18_seed => "resnet18-seed",
    forward_resnet18_cifar => "resnet18-cifar",
}

#[test]
fn unknown_name_lists_the_known_ones() {
    let message = match zoo::spec("lenet7") {
        Ok(spec) => panic!("lenet7 resolved to {spec:?}"),
        Err(e) => e.to_string(),
    };
    for name in zoo::names() {
        assert!(message.contains(name), "{name} missing from: {message}");
    }
}
