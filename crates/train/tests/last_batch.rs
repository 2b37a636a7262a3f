//! The check for a last training batch of one image (`train::run::check_last_batch`) leaves
//! the model, its batch-norm statistics and the dropout generator exactly as they were, and
//! refuses a model that cannot train on one image.

use anyhow::Result;
use candle_core::Device;
use layers::ParamStore;
use train::config::{DatasetKind, RunConfig};

fn values(store: &ParamStore) -> Result<Vec<(String, Vec<f32>)>> {
    store
        .named_vars()
        .into_iter()
        .map(|(name, var)| {
            let t = var.as_tensor().to_dtype(candle_core::DType::F32)?;
            Ok((name, t.flatten_all()?.to_vec1::<f32>()?))
        })
        .collect()
}

#[test]
fn the_check_changes_nothing_and_refuses_a_model_that_cannot_train_on_one_image() -> Result<()> {
    let shape = ("--train-transform", String::new(), (3, 32, 32));
    let config = |model: &str| RunConfig {
        batch_size: 8,
        ..RunConfig::new("test", DatasetKind::Cifar10, model)
    };
    // ResNet-18 for CIFAR (its last stage at 4x4) trains on one image: a training-mode
    // forward runs (moving batch norm's running statistics), and everything is put back.
    let store = ParamStore::new(3, &Device::Cpu);
    let net = zoo::build("resnet18-cifar", 10, store.vb())?;
    layers::rng::set_seed(7);
    let (before, rng) = (values(&store)?, layers::rng::state());
    train::run::check_last_batch(
        net.as_ref(),
        &store,
        &config("resnet18-cifar"),
        17,
        std::slice::from_ref(&shape),
        &Device::Cpu,
    )?;
    assert!(values(&store)? == before, "a parameter or statistic moved");
    assert_eq!(layers::rng::state(), rng);

    // torchvision's ResNet-18 on 32x32 images ends at 1x1: refused, naming the fix.
    let store = ParamStore::new(3, &Device::Cpu);
    let net = zoo::build("resnet18", 10, store.vb())?;
    let before = values(&store)?;
    let err = train::run::check_last_batch(
        net.as_ref(),
        &store,
        &config("resnet18"),
        17,
        std::slice::from_ref(&shape),
        &Device::Cpu,
    )
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("one image (17 images in batches of 8)") && err.contains("--drop-last"),
        "{err}"
    );
    assert!(values(&store)? == before, "a parameter or statistic moved");
    // Batches of one image: refused, asking for two or more.
    let one = RunConfig {
        batch_size: 1,
        ..config("resnet18")
    };
    let err = train::run::check_last_batch(
        net.as_ref(),
        &store,
        &one,
        16,
        std::slice::from_ref(&shape),
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("--batch-size 1: resnet18 cannot train"));
    // No single-image last batch: nothing to check.
    train::run::check_last_batch(
        net.as_ref(),
        &store,
        &config("resnet18"),
        16,
        std::slice::from_ref(&shape),
        &Device::Cpu,
    )?;
    Ok(())
}
