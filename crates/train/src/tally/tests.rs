//! The device-side counts against [`Metrics::update`], the host-side computation they replace.

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::*;

/// A batch: each sample's logits and label, and the batch's mean loss.
struct Batch {
    rows: Vec<Vec<f32>>,
    labels: Vec<u32>,
    loss: f32,
}

/// A small generator (SplitMix64), so the cases repeat.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Logits of `k` classes drawn from few values, so rows tie often, with NaN (single, several,
/// whole rows), infinities and rows whose only numbers are minus infinity.
fn batches(k: usize, sizes: &[usize], seed: u64) -> Vec<Batch> {
    let mut g = Gen(seed);
    let values = [
        -1.0,
        0.0,
        0.5,
        2.0,
        2.0,
        3.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    sizes
        .iter()
        .map(|&n| {
            let rows = (0..n)
                .map(|_| match g.below(12) {
                    0 => vec![f32::NAN; k],
                    1 => (0..k)
                        .map(|_| {
                            if g.below(2) == 0 {
                                f32::NAN
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                        .collect(),
                    2 => vec![1.5; k],
                    3 | 4 => (0..k).map(|_| values[g.below(9) as usize]).collect(),
                    _ => (0..k)
                        .map(|_| (g.below(1000) as f32 - 500.0) / 37.0)
                        .collect(),
                })
                .collect();
            Batch {
                rows,
                labels: (0..n).map(|_| g.below(k as u64) as u32).collect(),
                loss: (g.below(1000) as f32) / 997.0 + 0.1,
            }
        })
        .collect()
}

/// The host path: `Metrics::update` on each batch, as the loop did before the tally.
fn on_the_host(k: usize, batches: &[Batch]) -> Result<Counted> {
    let mut metrics = Metrics::new(k);
    let mut predictions = Vec::new();
    let mut losses = Vec::new();
    let mut at = 0;
    for b in batches {
        let loss = f64::from(b.loss);
        let predicted = metrics.update(loss, &b.rows, &b.labels)?;
        predictions.extend((at..at + b.labels.len()).zip(predicted));
        at += b.labels.len();
        losses.push(loss);
    }
    Ok(Counted {
        metrics,
        predictions,
        losses,
    })
}

/// The same batches through a [`Tally`] on `dev`, read after each batch whose position is in
/// `reads` and at the end.
fn on_the_device(k: usize, batches: &[Batch], reads: &[usize], dev: &Device) -> Result<Counted> {
    let mut tally = Tally::new(k, dev, 1, 1)?;
    let mut at = 0;
    for (i, b) in batches.iter().enumerate() {
        let n = b.labels.len();
        let flat: Vec<f32> = b.rows.iter().flatten().copied().collect();
        let logits = Tensor::from_vec(flat, (n, k), dev)?;
        let labels = Tensor::new(b.labels.as_slice(), dev)?;
        let loss = Tensor::new(b.loss, dev)?;
        let indices: Vec<usize> = (at..at + n).collect();
        tally.add(&loss, &logits, &labels, &indices)?;
        at += n;
        if reads.contains(&i) {
            assert_eq!(tally.read()?, None);
        }
    }
    tally.finish()
}

/// The CPU, and the first GPU when the build has CUDA and the machine one.
fn devices() -> Result<Vec<Device>> {
    let gpu = Device::cuda_if_available(0)?;
    Ok(if gpu.is_cpu() {
        vec![gpu]
    } else {
        vec![Device::Cpu, gpu]
    })
}

fn assert_same(host: &Counted, device: &Counted) {
    // `Metrics` compares the f64 loss sum, the counts and the confusion matrix exactly.
    assert_eq!(host.metrics, device.metrics);
    assert_eq!(host.predictions, device.predictions);
    assert_eq!(host.losses, device.losses);
}

#[test]
fn device_counts_equal_the_host_ones_with_ties_nan_and_an_uneven_last_batch() -> Result<()> {
    for dev in devices()? {
        counts_equal_on(&dev)?;
    }
    Ok(())
}

fn counts_equal_on(dev: &Device) -> Result<()> {
    for (k, sizes) in [
        (10, vec![64, 64, 64, 17]),
        (3, vec![5, 5, 1]),
        (1, vec![4, 3]),
        (7, vec![33]),
        (100, vec![40, 40, 9]),
        // More rows than one block of the CUDA kernel's threads.
        (10, vec![1500, 3]),
    ] {
        for seed in 0..4 {
            let data = batches(k, &sizes, seed);
            let host = on_the_host(k, &data)?;
            for reads in [vec![], vec![0], (0..sizes.len()).collect()] {
                assert_same(&host, &on_the_device(k, &data, &reads, dev)?);
            }
            // The cases do hold ties, NaN rows and top-5 misses.
            if k == 10 && seed == 0 {
                let m = &host.metrics;
                let (top1, top5) = (m.accuracy(), m.top5());
                assert!(top5 < 100.0 && top1 > 0.0, "top-1 {top1}, top-5 {top5}");
            }
        }
    }
    Ok(())
}

#[test]
fn ties_go_to_the_first_maximal_logit_and_nan_is_skipped() -> Result<()> {
    let rows = vec![
        vec![1.0, 3.0, 3.0, 0.0],
        vec![f32::NAN, 2.0, 2.0, f32::NAN],
        vec![f32::NAN, f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY],
        vec![f32::NAN; 4],
        vec![f32::INFINITY, 0.0, f32::INFINITY, f32::NAN],
        vec![0.0; 4],
    ];
    let data = [Batch {
        labels: vec![2, 1, 3, 0, 2, 3],
        rows,
        loss: 1.0,
    }];
    let host = on_the_host(4, &data)?;
    let classes: Vec<usize> = host.predictions.iter().map(|p| p.1).collect();
    assert_eq!(classes, [1, 1, 1, 0, 0, 0]);
    for dev in devices()? {
        assert_same(&host, &on_the_device(4, &data, &[], &dev)?);
    }
    Ok(())
}

#[test]
fn a_read_names_the_first_non_finite_batch_loss() -> Result<()> {
    for dev in devices()? {
        a_read_names_the_first_non_finite_batch_loss_on(&dev)?;
    }
    Ok(())
}

fn a_read_names_the_first_non_finite_batch_loss_on(dev: &Device) -> Result<()> {
    let dev = dev.clone();
    let mut tally = Tally::new(2, &dev, 8, 8)?;
    let logits = Tensor::new(&[[1f32, 0.0]], &dev)?;
    let labels = Tensor::new(&[0u32], &dev)?;
    for (i, loss) in [0.5, 0.25, f32::INFINITY, f32::NAN, 1.0]
        .into_iter()
        .enumerate()
    {
        tally.add(&Tensor::new(loss, &dev)?, &logits, &labels, &[i])?;
        if i == 0 {
            assert_eq!(tally.read()?, None);
        }
    }
    assert_eq!(tally.read()?, Some((2, f64::INFINITY)));
    assert_eq!(tally.read()?, None);
    Ok(())
}

#[test]
fn a_label_that_is_no_class_is_an_error_at_the_next_read() -> Result<()> {
    for dev in devices()? {
        a_label_that_is_no_class_is_an_error_on(&dev)?;
    }
    Ok(())
}

fn a_label_that_is_no_class_is_an_error_on(dev: &Device) -> Result<()> {
    let dev = dev.clone();
    let mut tally = Tally::new(3, &dev, 1, 1)?;
    let logits = Tensor::new(&[[1f32, 0.0, 2.0], [0.0, 1.0, 0.0]], &dev)?;
    let loss = Tensor::new(0.5f32, &dev)?;
    tally.add(&loss, &logits, &Tensor::new(&[0u32, 2], &dev)?, &[0, 1])?;
    assert_eq!(tally.read()?, None);
    tally.add(&loss, &logits, &Tensor::new(&[1u32, 3], &dev)?, &[2, 3])?;
    let err = tally
        .read()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("1 samples with a label that is no class"),
        "{err}"
    );
    assert!(tally
        .add(&loss, &logits, &Tensor::new(&[1u32], &dev)?, &[4, 5])
        .is_err());
    assert!(Tally::new(0, &dev, 1, 1).is_err());
    Ok(())
}

/// CUDA refuses zero-byte allocations (`cuMemAllocAsync` answers `CUDA_ERROR_INVALID_VALUE`),
/// which an H200 run of `train-cifar` hit at the first batch: nothing a tally holds may be
/// empty, before or after reads.
#[test]
fn a_tally_never_holds_an_empty_device_tensor() -> Result<()> {
    let dev = Device::Cpu;
    let nonempty = |t: &Tally| {
        let c = &t.constants;
        for (name, x) in [
            ("counts", &t.counts),
            ("losses", &t.losses.data),
            ("predicted", &t.predicted.data),
            ("minus_infinity", &c.minus_infinity),
            ("first", &c.first),
            ("fallback", &c.fallback),
            ("k", &c.k),
            ("overflow", &c.overflow),
            ("last_class", &c.last_class),
            ("five", &c.five),
            ("classes", &c.classes),
            ("ones", &c.ones),
        ] {
            assert!(x.elem_count() > 0, "{name} is empty");
        }
    };
    let mut tally = Tally::new(1, &dev, 0, 0)?;
    nonempty(&tally);
    tally.read()?;
    nonempty(&tally);
    let logits = Tensor::new(&[[1f32]], &dev)?;
    tally.add(
        &Tensor::new(0.5f32, &dev)?,
        &logits,
        &Tensor::new(&[0u32], &dev)?,
        &[0],
    )?;
    tally.read()?;
    nonempty(&tally);
    Ok(())
}
