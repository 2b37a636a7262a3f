//! The test loss is the training criterion: with label smoothing, the smoothed cross-entropy.

use anyhow::Result;
use candle_core::{DType, Device};
use train::cli::load_data;
use train::config::{DatasetKind, RunConfig};

#[test]
fn the_test_loss_uses_the_label_smoothing_of_training() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("mnist");
    train::synthetic::write_mnist(&data, 16, 30)?;
    let config = RunConfig {
        data_dir: Some(data),
        test_batch_size: 30,
        ..RunConfig::new("test", DatasetKind::Mnist, "lenet5")
    };
    let split = load_data(&config)?;
    let loader = train::run::loader(&config, &split.test, false)?;
    let (net, _) = zoo::load("lenet5", 10, None, &Device::Cpu, 5)?;
    let batch = train::source::BatchSource::batches(&loader, 0)
        .next()
        .expect("one batch")?;
    let logits = net.forward_t(&batch.images, false)?;
    let labels = batch.labels.to_dtype(DType::U32)?;
    for smoothing in [0.0, 0.3] {
        let pass = train::engine::evaluate(
            net.as_ref(),
            &loader,
            &Device::Cpu,
            10,
            smoothing,
            "t".into(),
        )?;
        let expected = layers::loss::cross_entropy(&logits, &labels, smoothing)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        assert!(
            (pass.metrics.loss() - expected).abs() < 1e-6,
            "smoothing {smoothing}: {} vs {expected}",
            pass.metrics.loss()
        );
    }
    Ok(())
}
