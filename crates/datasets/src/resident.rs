//! The whole data set on the training device as u8, cropped, flipped and normalised there, so
//! a GPU never waits for the host to decode or augment.
//!
//! A [`ResidentLoader`] takes a [`Loader`] whose transform is random crops and horizontal flips
//! (the CIFAR-10 recipe) or none, uploads every image once, zero-padded for the crop, and then
//! builds each batch with a handful of device ops: `index_select` of the batch, one `gather`
//! that crops and flips every sample at its own offsets, and a table lookup that normalises.
//! The per-sample random draws are the host loader's (`Rng::for_sample(seed, epoch, index)` in
//! the transform's order), so both loaders yield the same batches, bit for bit.
//!
//! ```no_run
//! # use datasets::{cifar10, Loader, LoaderConfig, ResidentLoader, Transform};
//! # fn main() -> anyhow::Result<()> {
//! let split = cifar10(None)?;
//! let host = Loader::new(split.train, Transform::cifar10_train(), LoaderConfig::train(512, 0))?;
//! let gpu = candle_core::Device::new_cuda(0)?;
//! let resident = ResidentLoader::new(host, &gpu)?;
//! for batch in resident.epoch(0) {
//!     let batch = batch?; // images (512, 3, 32, 32) f32 and labels on the GPU
//! }
//! # Ok(()) }
//! ```

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::transform::random_crop_origin;
use crate::{Batch, Loader, Op, Rng, U8Image};

/// Where each output pixel of one sample is read from in the padded stored image: row
/// `row0 + i`, column `col0 + col_step * j`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct View {
    row0: isize,
    col0: isize,
    col_step: isize,
    height: usize,
    width: usize,
}

/// A [`Loader`]'s data held on a device, with its crops, flips and normalisation run there.
pub struct ResidentLoader {
    loader: Loader,
    device: Device,
    /// (N, C, H + 2 pad, W + 2 pad) u8, zero borders.
    images: Tensor,
    /// (N,) u32.
    labels: Tensor,
    /// (C * 256,) f32: the normalised value of every byte in every channel.
    table: Tensor,
    /// (1, C, 1) u32: `256 * c`, the table offset of channel `c`.
    channel_offsets: Tensor,
    shape: (usize, usize, usize),
    pad: usize,
}

impl std::fmt::Debug for ResidentLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResidentLoader")
            .field("loader", &self.loader)
            .field("device", &self.device)
            .field("shape", &self.shape)
            .finish()
    }
}

impl ResidentLoader {
    /// Why `loader`'s transform cannot run on the device, if it cannot: only random crops (at
    /// most one) and horizontal flips can.
    pub fn unsupported(loader: &Loader) -> Option<String> {
        let ops = loader.transform().ops();
        let crops = ops
            .iter()
            .filter(|op| matches!(op, Op::RandomCrop { .. }))
            .count();
        if crops > 1 {
            return Some("more than one random crop".into());
        }
        ops.iter()
            .find(|op| !matches!(op, Op::RandomCrop { .. } | Op::RandomHorizontalFlip { .. }))
            .map(|op| format!("{op:?} runs on the host only"))
    }

    /// Decodes every sample `loader` uses (in parallel), checks they share one size, and
    /// uploads them to `device` as u8, with the labels and the normalisation table.
    ///
    /// # Errors
    /// A sample cannot be read or decoded, the samples differ in size, the transform has steps that
    /// cannot run on the device (see `ResidentLoader::unsupported`), or `device` cannot hold the
    /// data.
    pub fn new(loader: Loader, device: &Device) -> Result<Self> {
        if let Some(why) = Self::unsupported(&loader) {
            bail!(
                "the transform `{}` cannot run on the device ({why}); use the host loader",
                loader.transform()
            );
        }
        let pad = loader
            .transform()
            .ops()
            .iter()
            .find_map(|op| match op {
                Op::RandomCrop { padding, .. } => Some(*padding),
                _ => None,
            })
            .unwrap_or(0);
        let dataset = loader.dataset().clone();
        let n = loader.used();
        ensure!(n > 0, "the data set is empty");
        let first = dataset.image(0).context("reading sample 0")?;
        let (c, h, w) = first.shape();
        let (ph, pw) = (h + 2 * pad, w + 2 * pad);
        let mut padded = vec![0u8; n * c * ph * pw];
        padded
            .par_chunks_mut(c * ph * pw)
            .enumerate()
            .try_for_each(|(i, out)| -> Result<()> {
                let img = dataset
                    .image(i)
                    .with_context(|| format!("reading sample {i}"))?;
                ensure!(
                    img.shape() == (c, h, w),
                    "sample {i} is {:?} (CxHxW) but sample 0 is {:?}: device-resident data needs \
                     one image size",
                    img.shape(),
                    (c, h, w)
                );
                for ch in 0..c {
                    let plane = img.plane(ch);
                    for y in 0..h {
                        let dst = (ch * ph + y + pad) * pw + pad;
                        out[dst..dst + w].copy_from_slice(&plane[y * w..(y + 1) * w]);
                    }
                }
                Ok(())
            })?;
        let labels: Vec<u32> = (0..n).map(|i| dataset.label(i) as u32).collect();
        let table = normalisation_table(&loader, c)?;
        let offsets: Vec<u32> = (0..c as u32).map(|ch| ch * 256).collect();
        Ok(Self {
            images: Tensor::from_vec(padded, (n, c, ph, pw), device)?,
            labels: Tensor::from_vec(labels, n, device)?,
            table: Tensor::from_vec(table, c * 256, device)?,
            channel_offsets: Tensor::from_vec(offsets, (1, c, 1), device)?,
            device: device.clone(),
            shape: (c, h, w),
            pad,
            loader,
        })
    }

    /// The host loader this one mirrors (order, batch size, transform).
    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    /// Where the data and the batches live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes of image data held on the device.
    pub fn resident_bytes(&self) -> usize {
        self.images.elem_count()
    }

    /// Batches per epoch (as the host loader).
    pub fn num_batches(&self) -> usize {
        self.loader.num_batches()
    }

    /// Samples per epoch (as the host loader).
    pub fn num_samples(&self) -> usize {
        self.loader.num_samples()
    }

    /// Sample `index`'s crop and flips in `epoch`, drawn as the host transform draws them.
    fn view(&self, epoch: usize, index: usize) -> Result<View> {
        let (_, h, w) = self.shape;
        let pad = self.pad as isize;
        let mut rng = Rng::for_sample(self.loader.config().seed, epoch as u64, index as u64);
        let mut v = View {
            row0: pad,
            col0: pad,
            col_step: 1,
            height: h,
            width: w,
        };
        for op in self.loader.transform().ops() {
            match *op {
                Op::RandomCrop { size, padding } => {
                    let (top, left) =
                        random_crop_origin(v.height, v.width, size, padding, &mut rng)?;
                    let p = padding as isize;
                    v.row0 += top - p;
                    v.col0 += v.col_step * (left - p);
                    v.height = size;
                    v.width = size;
                }
                Op::RandomHorizontalFlip { p } => {
                    if rng.next_f64() < p {
                        v.col0 += v.col_step * (v.width as isize - 1);
                        v.col_step = -v.col_step;
                    }
                }
                ref other => bail!("{other:?} cannot run on the device"),
            }
        }
        Ok(v)
    }

    /// The batch of `indices` in `epoch`, built on the device.
    ///
    /// # Errors
    /// An index out of range, or a tensor operation on the device fails.
    pub fn batch(&self, epoch: usize, indices: &[usize]) -> Result<Batch> {
        if indices.is_empty() {
            bail!("empty batch");
        }
        let (c, _, _) = self.shape;
        let (_, _, ph, pw) = self.images.dims4()?;
        let views = indices
            .iter()
            .map(|&index| self.view(epoch, index))
            .collect::<Result<Vec<View>>>()?;
        // One image size and one crop size: every sample comes out the same size.
        let (oh, ow) = (views[0].height, views[0].width);
        debug_assert!(views.iter().all(|v| (v.height, v.width) == (oh, ow)));
        let b = indices.len();
        let mut rows = Vec::with_capacity(b * oh);
        let mut cols = Vec::with_capacity(b * ow);
        for v in &views {
            rows.extend((0..oh as isize).map(|i| ((v.row0 + i) as usize * pw) as u32));
            cols.extend((0..ow as isize).map(|j| (v.col0 + v.col_step * j) as u32));
        }
        debug_assert!(rows.iter().all(|&r| (r as usize) < ph * pw));
        let dev = &self.device;
        let rows = Tensor::from_vec(rows, (b, oh, 1), dev)?;
        let cols = Tensor::from_vec(cols, (b, 1, ow), dev)?;
        let pixels = rows
            .broadcast_add(&cols)?
            .reshape((b, 1, oh * ow))?
            .broadcast_as((b, c, oh * ow))?
            .contiguous()?;
        let ids: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let ids = Tensor::from_vec(ids, b, dev)?;
        let bytes = self
            .images
            .index_select(&ids, 0)?
            .reshape((b, c, ph * pw))?
            .gather(&pixels, 2)?;
        let images = bytes
            .to_dtype(DType::U32)?
            .broadcast_add(&self.channel_offsets)?
            .flatten_all()?;
        let images = self
            .table
            .index_select(&images, 0)?
            .reshape((b, c, oh, ow))?;
        Ok(Batch {
            images,
            labels: self.labels.index_select(&ids, 0)?,
            indices: indices.to_vec(),
        })
    }

    /// The batches of `epoch`, in the host loader's order.
    ///
    /// # Errors
    /// Each item fails as [`ResidentLoader::batch`].
    pub fn epoch(&self, epoch: usize) -> impl Iterator<Item = Result<Batch>> + '_ {
        let order = self.loader.order(epoch);
        let batch_size = self.loader.config().batch_size;
        let batches: Vec<Vec<usize>> = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
        let mut failed = false;
        batches.into_iter().map_while(move |indices| {
            if failed {
                return None;
            }
            let batch = self.batch(epoch, &indices);
            failed = batch.is_err();
            Some(batch)
        })
    }
}

/// The loader's normalisation of every byte value, channel by channel: `C * 256` values.
fn normalisation_table(loader: &Loader, channels: usize) -> Result<Vec<f32>> {
    let ramp: Vec<u8> = (0..channels).flat_map(|_| 0..=255u8).collect();
    let img = U8Image::new(channels, 1, 256, ramp)?;
    let mut table = vec![0f32; channels * 256];
    loader.transform().normalization().write(&img, &mut table)?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dataset, InMemory, LoaderConfig, Transform};
    use std::sync::Arc;

    fn data(n: usize, c: usize, h: usize, w: usize) -> Arc<dyn Dataset> {
        let pixels: Vec<u8> = (0..n * c * h * w).map(|i| (i * 37 % 251) as u8).collect();
        let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
        Arc::new(
            InMemory::new(
                pixels,
                labels,
                (c, h, w),
                vec!["a".into(), "b".into(), "c".into()],
            )
            .expect("dataset"),
        )
    }

    fn same_batches(data: Arc<dyn Dataset>, transform: Transform, cfg: LoaderConfig) -> Result<()> {
        let host = Loader::new(data.clone(), transform.clone(), cfg.clone())?;
        let resident = ResidentLoader::new(Loader::new(data, transform, cfg)?, &Device::Cpu)?;
        assert_eq!(resident.num_batches(), host.num_batches());
        for epoch in 0..2 {
            let mut count = 0;
            for (a, b) in host.epoch(epoch).zip(resident.epoch(epoch)) {
                let (a, b) = (a?, b?);
                assert_eq!(a.indices, b.indices);
                assert_eq!(a.images.dims(), b.images.dims());
                assert_eq!(
                    a.images.flatten_all()?.to_vec1::<f32>()?,
                    b.images.flatten_all()?.to_vec1::<f32>()?,
                    "epoch {epoch} batch {count}"
                );
                assert_eq!(a.labels.to_vec1::<u32>()?, b.labels.to_vec1::<u32>()?);
                count += 1;
            }
            assert_eq!(count, host.num_batches());
        }
        Ok(())
    }

    #[test]
    fn the_cifar_recipe_gives_the_host_loaders_batches_bit_for_bit() -> Result<()> {
        same_batches(
            data(37, 3, 8, 8),
            "random-crop:8:2,flip,normalize:cifar10".parse()?,
            LoaderConfig::train(8, 5),
        )
    }

    #[test]
    fn flips_before_crops_smaller_crops_gray_images_and_limits_match_too() -> Result<()> {
        same_batches(
            data(20, 1, 9, 7),
            "flip,random-crop:6:1,flip:0.3,normalize:mnist".parse()?,
            LoaderConfig {
                limit: Some(13),
                ..LoaderConfig::train(4, 9)
            },
        )?;
        same_batches(
            data(10, 3, 5, 5),
            "normalize:imagenet".parse()?,
            LoaderConfig::eval(3),
        )
    }

    #[test]
    fn host_only_transforms_are_refused_with_a_reason() -> Result<()> {
        let host = Loader::new(data(4, 3, 8, 8), "resize:4".parse()?, LoaderConfig::eval(2))?;
        let err = ResidentLoader::new(host, &Device::Cpu).expect_err("refused");
        assert!(err.to_string().contains("host"), "{err}");
        Ok(())
    }
}
