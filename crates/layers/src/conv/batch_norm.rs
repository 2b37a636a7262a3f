//! A convolution and the training-mode batch norm after it (and its ReLU) as one autograd node
//! on the CPU: `relu?(bn(conv(x)))`.
//!
//! Apart, Candle adds the batch norm's input gradient into a zero-filled buffer the size of the
//! convolution's output before the convolution's backward reads it: an allocation and two
//! passes on the calling thread per convolution (with the other cores idle), the largest
//! tensors of a ResNet step. Here the batch norm's statistics, output and backward are the same
//! functions as [`crate::BatchNorm`]'s CPU path on the same values, so the results are the
//! same bit for bit; the convolution's backward reads the batch norm's input gradient directly.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Tensor};

use crate::per_channel::{batch_stats, f32_slice, normalize, normalize_grads};

/// What the fused op keeps from its forward pass: the convolution's output (N, C, L) and the
/// batch statistics (mean, biased variance, `1 / sqrt(var + eps)`).
pub(crate) struct Saved {
    pub y: Tensor,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub invstd: Vec<f32>,
}

/// The batch norm to run after a convolution: weight and bias concatenated (2C), `eps`, whether
/// a ReLU follows, and where the op leaves its statistics for the running averages.
#[derive(Clone)]
pub(crate) struct Epilogue {
    pub wb: Tensor,
    pub eps: f32,
    pub relu: bool,
    pub saved: Arc<OnceLock<Saved>>,
}

pub(super) struct WithBatchNorm<O> {
    pub conv: O,
    pub bn: Epilogue,
}

impl<O: CustomOp2> CustomOp3 for WithBatchNorm<O> {
    fn name(&self) -> &'static str {
        "conv2d-batch-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (ys, shape) = self.conv.cpu_fwd(xs, xl, ws, wl)?;
        let y = match ys {
            CpuStorage::F32(y) => y,
            _ => candle_core::bail!("{}: the convolution must give float32", self.name()),
        };
        let (n, c, h, w) = shape.dims4()?;
        let l = h * w;
        let wb = f32_slice(bs, bl, self.name(), "batch-norm weight and bias")?;
        if wb.len() != 2 * c {
            candle_core::bail!(
                "batch-norm over {} features after {c} channels",
                wb.len() / 2
            )
        }
        if n * l < 2 {
            candle_core::bail!(
                "batch-norm in training needs more than one value per channel, got input (N, C, L) = ({n}, {c}, {l})"
            )
        }
        let (mean, var) = batch_stats(&y, (n, c, l));
        let invstd: Vec<f32> = var
            .iter()
            .map(|v| (v + self.bn.eps).sqrt().recip())
            .collect();
        let stats = (&mean[..], &invstd[..]);
        let z = normalize(&y, None, (&wb[..c], &wb[c..]), stats, self.bn.relu, (c, l));
        let y = Tensor::from_vec(y, (n, c, l), &Device::Cpu)?;
        let saved = Saved {
            y,
            mean,
            var,
            invstd,
        };
        if self.bn.saved.set(saved).is_err() {
            candle_core::bail!("{}: the op ran twice", self.name())
        }
        Ok((CpuStorage::F32(z), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        wb: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(saved) = self.bn.saved.get() else {
            candle_core::bail!("{}: backward before forward", self.name())
        };
        let (n, c, l) = saved.y.dims3()?;
        let w_bn = wb.narrow(0, 0, c)?;
        let (z, g) = (
            res.reshape((n, c, l))?,
            grad.contiguous()?.reshape((n, c, l))?,
        );
        let stats = (&saved.mean[..], &saved.invstd[..]);
        let want = (x.track_op() || w.track_op(), false);
        let (gy, gw, gsum, _) =
            normalize_grads((&saved.y, &w_bn, &z, &g), stats, self.bn.relu, want)?;
        let (gx, gwc) = match gy {
            Some(gy) => {
                let gy = Tensor::from_vec(gy, res.shape(), res.device())?;
                let y = saved.y.reshape(res.shape())?;
                self.conv.bwd(x, w, &y, &gy)?
            }
            None => (None, None),
        };
        let gwb = match wb.track_op() {
            true => {
                let mut v = gw;
                v.extend(gsum);
                Some(Tensor::from_vec(v, 2 * c, wb.device())?)
            }
            false => None,
        };
        Ok((gx, gwc, gwb))
    }
}
