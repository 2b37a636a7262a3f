//! A convolution and the training-mode batch norm after it (and its ReLU, a residual join, or a
//! max pooling) as one autograd node on the CPU: `relu?(bn(conv(x)) + residual?)`, or
//! `pool(relu(bn(conv(x))))` (a ResNet's stem).
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

#[cfg(test)]
thread_local! {
    /// Fused batch norms run on this thread (the ops run on the caller's thread): lets tests
    /// tell the fused path from the fallback.
    pub(crate) static RUNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// What the fused op keeps from its forward pass: the convolution's output (N, C, L), the
/// batch statistics (mean, biased variance, `1 / sqrt(var + eps)`), and with a pooling after,
/// the pooling's input and the convolution's output shape.
pub(crate) struct Saved {
    pub y: Tensor,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub invstd: Vec<f32>,
    /// With a pooling after: the batch norm's (and ReLU's) output, the pooling's input.
    pub z: Option<Tensor>,
    /// The convolution's output shape, (N, C, H, W).
    pub shape: Shape,
}

/// The batch norm to run after a convolution: weight and bias concatenated (2C), `eps`, whether
/// a ReLU follows, a residual added before it (`relu(bn(conv(x)) + residual)`, a residual
/// block's join), a pooling after it all (`pool(relu(bn(conv(x))))`, a ResNet's stem), and
/// where the op leaves its statistics for the running averages.
#[derive(Clone)]
pub(crate) struct Epilogue {
    pub wb: Tensor,
    pub eps: f32,
    pub relu: bool,
    pub residual: Option<Tensor>,
    pub pool: Option<Arc<crate::pool::Inner>>,
    pub saved: Arc<OnceLock<Saved>>,
}

/// An evaluation-mode batch norm (with its ReLU, or a residual join and ReLU) that a
/// convolution's op applies to its fresh output where nothing is tracked by autograd:
/// `relu?(y · scale[c] + shift[c] (+ residual))`, [`crate::BatchNorm`]'s evaluation-mode
/// arithmetic ([`crate::per_channel::scale_shift_row`]). The image-by-image convolution runs it
/// on each block of output rows while the block is in cache (`conv::cpu`); the other ops on
/// their whole output, in place ([`EvalEpilogue::in_place`]).
pub(crate) struct EvalEpilogue {
    /// Per output channel, (C).
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    pub relu: bool,
    /// A contiguous f32 (N, C, H, W) tensor of the output's shape, added before the ReLU.
    pub residual: Option<Tensor>,
}

impl EvalEpilogue {
    /// Applies it to `y`, (N, C, L) values with `l` positions per channel (and the residual's
    /// `r` of the same layout), across the thread pool.
    pub(crate) fn on_values(&self, y: &mut [f32], r: Option<&[f32]>, l: usize) -> Result<()> {
        let (c, scale_shift) = (self.scale.len(), (&self.scale[..], &self.shift[..]));
        crate::per_channel::scale_shift_in_place(y, r, (c, l), scale_shift, self.relu)
    }

    /// Applies it to `y`, values of output channel `c` (and the residual's `r` at the same
    /// places), on this thread.
    pub(crate) fn on_row(&self, c: usize, y: &mut [f32], r: Option<&[f32]>) {
        crate::per_channel::scale_shift_row(y, r, self.scale[c], self.shift[c], self.relu)
    }

    /// Applies it in place to `ys`, an op's fresh contiguous f32 (N, C, ...) output held by the
    /// caller alone (the write is not checked against other holders).
    pub(crate) fn in_place(&self, ys: &Tensor) -> Result<()> {
        #[cfg(test)]
        crate::batch_norm::EVAL_IN_PLACE_RUNS.with(|r| r.set(r.get() + 1));
        let l = ys.elem_count() / (ys.dim(0)? * self.scale.len()).max(1);
        if l == 0 {
            return Ok(());
        }
        let run = |y: &mut [f32], r: Option<&[f32]>| self.on_values(y, r, l);
        crate::in_place::in_place_cpu(ys, "batch-norm-eval", |storage, layout| {
            let (Some((a, b)), CpuStorage::F32(v)) = (layout.contiguous_offsets(), storage) else {
                candle_core::bail!("batch-norm-eval: expected a contiguous f32 CPU output")
            };
            let y = &mut v[a..b];
            match &self.residual {
                None => run(y, None),
                Some(r) => match crate::per_channel::with_f32(r, |r| run(y, Some(r))) {
                    Some(done) => done,
                    None => {
                        candle_core::bail!("batch-norm-eval: expected a contiguous f32 residual")
                    }
                },
            }
        })
    }
}

impl Epilogue {
    /// The batch norm (and residual, ReLU and pooling) of the convolution's output `y` of
    /// `shape`: the output and its shape, with the statistics and `y` kept in `saved`.
    fn run(
        &self,
        name: &str,
        y: CpuStorage,
        shape: &Shape,
        wb: &[f32],
        residual: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let y = match y {
            CpuStorage::F32(y) => y,
            _ => candle_core::bail!("{name}: the convolution must give float32"),
        };
        let (n, c, h, w) = shape.dims4()?;
        let l = h * w;
        if wb.len() != 2 * c || residual.is_some_and(|r| r.len() != y.len()) {
            candle_core::bail!(
                "{name}: batch-norm over {} features after {c} channels, or a residual of another shape",
                wb.len() / 2
            )
        }
        if n * l < 2 {
            candle_core::bail!(
                "batch-norm in training needs more than one value per channel, got input (N, C, L) = ({n}, {c}, {l})"
            )
        }
        #[cfg(test)]
        RUNS.with(|r| r.set(r.get() + 1));
        let (mean, var) = batch_stats(&y, (n, c, l));
        let invstd: Vec<f32> = var.iter().map(|v| (v + self.eps).sqrt().recip()).collect();
        let stats = (&mean[..], &invstd[..]);
        let relu = self.relu || residual.is_some();
        let z = normalize(&y, residual, (&wb[..c], &wb[c..]), stats, relu, (c, l));
        let (out, out_shape, z) = match &self.pool {
            Some(pool) => {
                let (p, p_shape) = pool.forward(&z, shape)?;
                (p, p_shape, Some(Tensor::from_vec(z, shape, &Device::Cpu)?))
            }
            None => (z, shape.clone(), None),
        };
        let saved = Saved {
            y: Tensor::from_vec(y, (n, c, l), &Device::Cpu)?,
            mean,
            var,
            invstd,
            z,
            shape: shape.clone(),
        };
        if self.saved.set(saved).is_err() {
            candle_core::bail!("{name}: the op ran twice")
        }
        Ok((CpuStorage::F32(out), out_shape))
    }

    /// The gradients of the batch norm: the convolution output's (as its shape, if `want_y`),
    /// the concatenated weight and bias's, and the residual's (if `want_r`).
    fn grads(
        &self,
        name: &str,
        (wb, res, grad): (&Tensor, &Tensor, &Tensor),
        (want_y, want_r): (bool, bool),
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        let Some(saved) = self.saved.get() else {
            candle_core::bail!("{name}: backward before forward")
        };
        let (n, c, l) = saved.y.dims3()?;
        let w_bn = wb.narrow(0, 0, c)?;
        // With a pooling after: back through it first, to the batch norm's output.
        let (res, grad) = match (&self.pool, &saved.z) {
            (Some(pool), Some(z)) => (z.clone(), pool.backward(z, res, grad)?),
            _ => (res.clone(), grad.clone()),
        };
        let (z, g) = (
            res.reshape((n, c, l))?,
            grad.contiguous()?.reshape((n, c, l))?,
        );
        let stats = (&saved.mean[..], &saved.invstd[..]);
        let relu = self.relu || self.residual.is_some();
        let want = (want_y, want_r);
        // A ReLU right after the batch norm: its mask from the convolution's output.
        let bias = match self.residual {
            None => Some(wb.narrow(0, c, c)?),
            Some(_) => None,
        };
        let (gy, gw, gsum, gr) =
            normalize_grads((&saved.y, &w_bn, &z, &g), stats, relu, want, bias.as_ref())?;
        let dev = res.device();
        let tensor = |v: Vec<f32>| Tensor::from_vec(v, res.shape(), dev);
        let mut gwb = gw;
        gwb.extend(gsum);
        Ok((
            gy.map(tensor).transpose()?,
            Tensor::from_vec(gwb, 2 * c, dev)?,
            gr.map(tensor).transpose()?,
        ))
    }

    /// The convolution's output (N, C, H, W) the forward pass kept.
    fn conv_output(&self) -> Result<Tensor> {
        match self.saved.get() {
            Some(saved) => saved.y.reshape(&saved.shape),
            None => candle_core::bail!("batch-norm after a convolution: backward before forward"),
        }
    }
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
        let (y, shape) = self.conv.cpu_fwd(xs, xl, ws, wl)?;
        let wb = f32_slice(bs, bl, self.name(), "batch-norm weight and bias")?;
        self.bn.run(self.name(), y, &shape, wb, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        wb: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want_y = x.track_op() || w.track_op();
        let (gy, gwb, _) = self
            .bn
            .grads(self.name(), (wb, res, grad), (want_y, false))?;
        let (gx, gw) = match gy {
            Some(gy) => self.conv.bwd(x, w, &self.bn.conv_output()?, &gy)?,
            None => (None, None),
        };
        Ok((gx, gw, wb.track_op().then_some(gwb)))
    }
}

/// `relu(bn(conv(x, w)) + residual)` as one op: arguments (x, the kernel flattened and the batch
/// norm's weight and bias after it, residual); the kernel's `shape` is given.
pub(super) struct WithBatchNormAddRelu<O> {
    pub conv: O,
    pub bn: Epilogue,
    pub kernel: Shape,
}

impl<O: CustomOp2> CustomOp3 for WithBatchNormAddRelu<O> {
    fn name(&self) -> &'static str {
        "conv2d-batch-norm-add-relu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let params = f32_slice(ps, pl, name, "kernel, weight and bias")?;
        let k = self.kernel.elem_count();
        if params.len() < k || pl.start_offset() != 0 {
            candle_core::bail!("{name}: {} parameters for a kernel of {k}", params.len())
        }
        // The kernel: the first values of the parameters, read through its own layout.
        let (y, shape) = self
            .conv
            .cpu_fwd(xs, xl, ps, &Layout::contiguous(&self.kernel))?;
        let r = f32_slice(rs, rl, name, "residual")?;
        if rl.shape() != &shape {
            candle_core::bail!(
                "{name}: residual of shape {:?} for an output of {:?}",
                rl.dims(),
                shape.dims()
            )
        }
        self.bn.run(name, y, &shape, &params[k..], Some(r))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        r: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let k = self.kernel.elem_count();
        let w = params.narrow(0, 0, k)?.reshape(&self.kernel)?;
        let wb = params.narrow(0, k, params.elem_count() - k)?;
        let want = (x.track_op() || params.track_op(), r.track_op());
        let (gy, gwb, gr) = self.bn.grads(self.name(), (&wb, res, grad), want)?;
        let (gx, gw) = match gy {
            Some(gy) => self.conv.bwd(x, &w, &self.bn.conv_output()?, &gy)?,
            None => (None, None),
        };
        let gparams = match (params.track_op(), gw) {
            (true, Some(gw)) => Some(Tensor::cat(&[&gw.flatten_all()?, &gwb], 0)?),
            (true, None) => Some(Tensor::cat(
                &[&Tensor::zeros(k, gwb.dtype(), gwb.device())?, &gwb],
                0,
            )?),
            (false, _) => None,
        };
        Ok((gx, gparams, gr))
    }
}
