//! The epoch loop with its metrics counted on the device against the loop it replaces, which
//! read every batch's loss and logits on the host.

use anyhow::Result;
use candle_core::{DType, Device, Module, Tensor};
use datasets::Batch;
use layers::ParamStore;

use super::*;
use optim::lr_scheduler::{Constant, Stepping};
use optim::{Sgd, SgdConfig};

/// Batches held in memory.
struct Held(Vec<Batch>);

impl BatchSource for Held {
    fn num_batches(&self) -> usize {
        self.0.len()
    }

    fn num_samples(&self) -> usize {
        self.0.iter().map(|b| b.indices.len()).sum()
    }

    fn batches(&self, _epoch: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
        Box::new(self.0.iter().cloned().map(Ok))
    }

    fn order(&self, _epoch: usize) -> Vec<usize> {
        (0..self.num_samples()).collect()
    }

    fn batches_of(
        &self,
        _epoch: usize,
        _groups: Vec<Vec<usize>>,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
        Box::new(std::iter::empty())
    }
}

const FEATURES: usize = 6;
const CLASSES: usize = 4;

/// Batches of 8, 8, 8 and 5 samples of deterministic features; `poisoned` batches hold a NaN.
fn data(poisoned: &[usize]) -> Result<Held> {
    let mut at = 0;
    let mut batches = Vec::new();
    for (b, n) in [8usize, 8, 8, 5].into_iter().enumerate() {
        let mut x: Vec<f32> = (0..n * FEATURES)
            .map(|i| (((at * FEATURES + i) * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        if poisoned.contains(&b) {
            x[3] = f32::NAN;
        }
        let labels: Vec<u32> = (at..at + n).map(|i| (i * 7 % CLASSES) as u32).collect();
        batches.push(Batch {
            images: Tensor::from_vec(x, (n, FEATURES), &Device::Cpu)?,
            labels: Tensor::new(labels.as_slice(), &Device::Cpu)?,
            indices: (at..at + n).map(|i| 100 + i).collect(),
        });
        at += n;
    }
    Ok(Held(batches))
}

fn model(seed: u64) -> Result<(ParamStore, candle_nn::Linear)> {
    let store = ParamStore::new(seed, &Device::Cpu);
    let linear = candle_nn::linear(FEATURES, CLASSES, store.vb().pp("fc"))?;
    Ok((store, linear))
}

fn sgd(store: &ParamStore) -> Result<Sgd> {
    let c = SgdConfig {
        momentum: 0.9,
        weight_decay: 1e-3,
        ..SgdConfig::new(0.5)
    };
    Sgd::new(store.trainable(), c)
}

fn constant(lr: f64) -> Scheduled {
    Scheduled {
        schedule: Box::new(Constant(lr)),
        stepping: Stepping::PerEpoch,
    }
}

#[test]
fn an_epoch_counts_what_reading_every_batch_on_the_host_counted() -> Result<()> {
    let held = data(&[])?;
    let schedule = constant(0.5);
    let (store, net) = model(5)?;
    let mut opt = sgd(&store)?;
    let step = TrainStep {
        optimizer: &mut opt,
        schedule: &schedule,
        label_smoothing: 0.1,
    };
    let pass = train_epoch(&net, &held, &Device::Cpu, 0, step, CLASSES, "t".into())?;

    // The loop as it was: the loss read before the update, the logits copied to the host.
    let (store2, net2) = model(5)?;
    let mut opt2 = sgd(&store2)?;
    let mut metrics = Metrics::new(CLASSES);
    let (mut predictions, mut losses) = (Vec::new(), Vec::new());
    for batch in &held.0 {
        let logits = net2.forward(&batch.images)?;
        let loss = cross_entropy(&logits, &batch.labels, 0.1)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        opt2.step(&loss.backward()?)?;
        let rows = logits.to_vec2::<f32>()?;
        let labels = batch.labels.to_vec1::<u32>()?;
        let predicted = metrics.update(value, &rows, &labels)?;
        predictions.extend(batch.indices.iter().copied().zip(predicted));
        losses.push(value);
    }
    assert_eq!(pass.metrics, metrics);
    assert_eq!(pass.predictions, predictions);
    assert_eq!(pass.batch_losses, losses);
    assert_eq!(pass.metrics.samples(), 29);

    let tested = evaluate(&net, &held, &Device::Cpu, CLASSES, 0.0, "e".into())?;
    let mut want = Metrics::new(CLASSES);
    for batch in &held.0 {
        let logits = net.forward(&batch.images)?;
        let value = cross_entropy(&logits, &batch.labels, 0.0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        want.update(value, &logits.to_vec2()?, &batch.labels.to_vec1()?)?;
    }
    assert_eq!(tested.metrics, want);
    Ok(())
}

#[test]
fn a_non_finite_loss_names_the_first_batch_where_it_happened() -> Result<()> {
    let held = data(&[1, 3])?;
    let schedule = constant(0.5);
    let (store, net) = model(5)?;
    let mut opt = sgd(&store)?;
    let step = TrainStep {
        optimizer: &mut opt,
        schedule: &schedule,
        label_smoothing: 0.0,
    };
    let err = train_epoch(&net, &held, &Device::Cpu, 2, step, CLASSES, "t".into())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with("the training loss became NaN in epoch 3 at batch 2/4: training stopped"),
        "{err}"
    );
    // Evaluation reports a non-finite loss in its metrics, as before, without an error.
    let tested = evaluate(&net, &held, &Device::Cpu, CLASSES, 0.0, "e".into())?;
    assert!(tested.metrics.loss().is_nan());
    Ok(())
}

/// `InMemoryFormat` hands the model its images channels-last (as PyTorch's
/// `images.to(memory_format=torch.channels_last)`), with the same values.
#[test]
fn in_memory_format_hands_the_model_channels_last_images() -> Result<()> {
    struct Sees;
    impl ModuleT for Sees {
        fn forward_t(&self, xs: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
            assert!(layers::memory_format::is_channels_last(xs));
            assert_eq!(
                layers::memory_format::preferred(),
                layers::MemoryFormat::ChannelsLast
            );
            xs.flatten_from(1)
        }
    }
    let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &Device::Cpu)?;
    let model = InMemoryFormat {
        model: &Sees,
        format: layers::MemoryFormat::ChannelsLast,
    };
    let y = model.forward_t(&x, true)?;
    assert_eq!(y.to_vec2::<f32>()?, x.flatten_from(1)?.to_vec2::<f32>()?);
    assert_eq!(
        layers::memory_format::preferred(),
        layers::MemoryFormat::Contiguous
    );
    Ok(())
}

/// With `layers::Linear` (which honours `layers::no_grad`): the test pass runs without a graph
/// and counts what the graph-recording forward counts; training after it still moves the
/// weights (the guard ends with the pass); and a training epoch under `no_grad` is an error,
/// as PyTorch's backward is there.
#[test]
fn the_test_pass_runs_under_no_grad_and_training_refuses_it() -> Result<()> {
    let held = data(&[])?;
    let schedule = constant(0.5);
    let store = ParamStore::new(5, &Device::Cpu);
    let net = layers::linear(
        store.vb().pp("fc"),
        FEATURES,
        CLASSES,
        layers::WeightInit::TorchDefault,
    )?;
    let tested = evaluate(&net, &held, &Device::Cpu, CLASSES, 0.0, "e".into())?;
    let mut want = Metrics::new(CLASSES);
    for batch in &held.0 {
        let logits = net.forward(&batch.images)?;
        assert!(logits.track_op());
        let value = cross_entropy(&logits, &batch.labels, 0.0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        want.update(value, &logits.to_vec2()?, &batch.labels.to_vec1()?)?;
    }
    assert_eq!(tested.metrics, want);
    assert!(layers::is_grad_enabled());

    let before = net.weight().flatten_all()?.to_vec1::<f32>()?;
    let mut opt = sgd(&store)?;
    let step = |opt: &mut Sgd| -> Result<Pass> {
        let step = TrainStep {
            optimizer: opt,
            schedule: &schedule,
            label_smoothing: 0.0,
        };
        train_epoch(&net, &held, &Device::Cpu, 0, step, CLASSES, "t".into())
    };
    let err = {
        let _no_grad = layers::no_grad();
        step(&mut opt)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err.contains("under layers::no_grad"), "{err}");
    assert_eq!(net.weight().flatten_all()?.to_vec1::<f32>()?, before);
    step(&mut opt)?;
    assert_ne!(net.weight().flatten_all()?.to_vec1::<f32>()?, before);
    Ok(())
}
