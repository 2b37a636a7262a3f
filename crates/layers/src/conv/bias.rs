//! A convolution and its bias as one autograd node on the CPU.
//!
//! Added as a second op (`per_channel::add_channel_bias`), the bias costs a pass over the
//! output forward, and backward Candle adds the output gradient it passes on into a
//! zero-filled buffer before the convolution's backward reads it: two more passes and an
//! allocation the size of the output. Here the bias is added in place to the convolution's
//! fresh output and the convolution's backward reads the output gradient directly; the bias
//! gradient is the same per-channel sum. Same values bit for bit, forward and backward.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::batch_norm::{Epilogue, EvalEpilogue, WithBatchNorm, WithBatchNormAddRelu};
use crate::per_channel::{add_bias_in_place, bias_grad};

/// What a convolution's op adds to its output, when it can.
#[derive(Clone, Copy)]
pub(crate) enum After<'a> {
    /// Nothing: the plain convolution.
    Nothing,
    /// A (C) bias per output channel, where [`fuses`] holds (else the caller adds it).
    Bias(&'a Tensor),
    /// A training-mode batch norm (and ReLU), [`super::batch_norm`].
    BatchNorm(&'a Epilogue),
    /// An evaluation-mode batch norm (and ReLU, residual join) where nothing is tracked.
    EvalBatchNorm(&'a EvalEpilogue),
}

impl After<'_> {
    /// Whether the op adds it (false for a bias it cannot take).
    pub(super) fn fused(&self) -> bool {
        match self {
            After::Nothing => false,
            After::Bias(b) => fuses(b),
            After::BatchNorm(_) | After::EvalBatchNorm(_) => true,
        }
    }
}

/// `xs` convolved by `op` with `weight`, then `after` in the same op (one autograd node) where
/// [`After::fused`] says so. `op`'s backward must not read the output it is passed (it gets
/// the output with what was added).
pub(super) fn apply<O: CustomOp2 + Send + Sync + 'static>(
    xs: &Tensor,
    weight: &Tensor,
    after: After,
    op: O,
) -> Result<Tensor> {
    let (xs, weight) = (xs.contiguous()?, weight.contiguous()?);
    match after {
        After::Bias(b) if fuses(b) => xs.apply_op3(&weight, &b.contiguous()?, WithBias(op)),
        After::BatchNorm(bn) => match &bn.residual {
            None => xs.apply_op3(
                &weight,
                &bn.wb,
                WithBatchNorm {
                    conv: op,
                    bn: bn.clone(),
                },
            ),
            // Candle's ops take three tensors: the kernel and the batch norm's parameters
            // travel as one.
            Some(r) => xs.apply_op3(
                &Tensor::cat(&[&weight.flatten_all()?, &bn.wb], 0)?,
                &r.contiguous()?,
                WithBatchNormAddRelu {
                    conv: op,
                    bn: bn.clone(),
                    kernel: weight.shape().clone(),
                },
            ),
        },
        // Ops that cannot apply it as they write: on their whole output, in place.
        After::EvalBatchNorm(eval) => {
            let ys = xs.apply_op2(&weight, op)?;
            eval.in_place(&ys)?;
            Ok(ys)
        }
        _ => xs.apply_op2(&weight, op),
    }
}

/// Whether [`apply`] adds this bias itself.
pub(super) fn fuses(bias: &Tensor) -> bool {
    bias.device().is_cpu() && bias.dtype() == DType::F32 && bias.rank() == 1
}

#[cfg(test)]
thread_local! {
    /// Biases added inside a convolution's op on this thread (for tests).
    pub(crate) static RUNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

struct WithBias<O>(O);

impl<O: CustomOp2> CustomOp3 for WithBias<O> {
    fn name(&self) -> &'static str {
        self.0.name()
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
        #[cfg(test)]
        RUNS.with(|r| r.set(r.get() + 1));
        let (mut ys, shape) = self.0.cpu_fwd(xs, xl, ws, wl)?;
        let b = crate::per_channel::f32_slice(bs, bl, self.name(), "bias")?;
        match &mut ys {
            CpuStorage::F32(y) => add_bias_in_place(y, &shape, b)?,
            _ => candle_core::bail!("{}: the bias needs a float32 output", self.name()),
        }
        Ok((ys, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = self.0.bwd(x, w, res, grad)?;
        let gb = match b.track_op() {
            true => Some(bias_grad(grad, b.dtype())?),
            false => None,
        };
        Ok((gx, gw, gb))
    }
}
