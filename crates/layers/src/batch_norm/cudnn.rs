//! Batch norm's training step on CUDA through cuDNN, as PyTorch runs it: the statistics, the
//! running averages and the output in one call (`cudnnBatchNormalizationForwardTraining`), the
//! three gradients in one more (`cudnnBatchNormalizationBackward`). cuDNN updates the running
//! statistics in place with PyTorch's rule (`running = (1 - momentum) running + momentum
//! batch`, the variance unbiased). The ReLU, when fused, is Candle's element-wise kernel after
//! the forward and a mask of the output gradient before the backward.
//!
//! The input (and so the output and both of their gradients) may be float32, bfloat16 or
//! float16, the parameters and statistics float32, as PyTorch's batch norm under CUDA
//! autocast (cuDNN's mixed-precision batch norm: reduced-precision data, float32 per-channel
//! values and arithmetic).
//!
//! A channels-last input comes as its (N, H·W, C) view and runs cuDNN's NHWC batch norm (in
//! `CUDNN_BATCHNORM_SPATIAL`, or `CUDNN_BATCHNORM_SPATIAL_PERSISTENT` with
//! `LAYERS_CUDNN_BN_PERSISTENT=1`, PyTorch's choice for channels-last training), the output
//! and the input gradient in the same order. The persistent mode is an experiment to measure:
//! cuDNN documents that it may overflow on inputs of a wide range, which it reports only
//! through `cudnnQueryRuntimeError` (not called: it waits for the GPU).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::cudnn::sys;
use candle_core::cuda::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use candle_core::op::{BackpropOp, Relu};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};

use super::BatchNorm;
use crate::cudnn::{check, data_type, f32_write_ptr, read_ptr, with_state, Buffer, TensorDesc};
use crate::in_place::in_place_cuda;

/// The smallest epsilon cuDNN's batch norm has always accepted (`CUDNN_BN_MIN_EPSILON` was
/// 1e-5 before cuDNN 7.5); smaller ones take the portable path.
const MIN_EPS: f64 = 1e-5;

/// cuDNN's batch-norm mode for an NCHW or NHWC (`nhwc`) input.
fn mode(nhwc: bool) -> sys::cudnnBatchNormMode_t {
    static PERSISTENT: OnceLock<bool> = OnceLock::new();
    let persistent = *PERSISTENT.get_or_init(|| {
        matches!(std::env::var("LAYERS_CUDNN_BN_PERSISTENT").as_deref(), Ok(v) if !v.is_empty() && v != "0")
    });
    match nhwc && persistent {
        true => sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL_PERSISTENT,
        false => sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL,
    }
}

const ONE: f32 = 1.0;
const ZERO: f32 = 0.0;

/// The largest batch PyTorch hands cuDNN's batch norm in training (`_batch_norm_impl_index`:
/// `input.size(0) <= 880801`); larger ones take its native kernels, here the portable path.
const MAX_BATCH: usize = 880_801;

/// Whether cuDNN runs `bn`'s training step on `x`: a float32, bfloat16 or float16 input,
/// float32 parameters and running statistics on a CUDA device, and an epsilon cuDNN accepts;
/// as PyTorch, at most [`MAX_BATCH`] images and fewer than 2^31 - 1 values (some of cuDNN's
/// kernels index in 32 bits).
pub(super) fn supports(bn: &BatchNorm, x: &Tensor) -> bool {
    let Some((running_mean, running_var)) = &bn.running else {
        return false;
    };
    x.device().is_cuda()
        && x.dims().first().is_some_and(|&n| n <= MAX_BATCH)
        && x.elem_count() < i32::MAX as usize
        && bn.eps >= MIN_EPS
        && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && [
            &bn.weight,
            &bn.bias,
            running_mean.as_tensor(),
            running_var.as_tensor(),
        ]
        .iter()
        .all(|t| t.dtype() == DType::F32)
}

/// A reduced-precision input cuDNN's batch norm refused: its (N, C, L), dtype and whether it
/// is held (N, L, C).
type Refused = ([usize; 3], DType, bool);

/// The reduced-precision inputs cuDNN refused ([`train_reduced`]): each such shape, dtype and
/// layout takes the float32 path from then on; other shapes still go to cuDNN.
static REFUSED: Mutex<Vec<Refused>> = Mutex::new(Vec::new());

/// Whether a bfloat16 or float16 input of (N, C, L) = `dims`, held (N, L, C) when `nhwc`, may
/// go to cuDNN's batch norm: unless cuDNN refused one of that shape, dtype and layout before.
pub(super) fn reduced_allowed(dims: [usize; 3], dtype: DType, nhwc: bool) -> bool {
    REFUSED
        .lock()
        .map_or(true, |refused| !refused.contains(&(dims, dtype, nhwc)))
}

/// [`train`] for a bfloat16 or float16 input; `None` when cuDNN refuses the dtype (its forward
/// call says not supported or bad parameter, before it changed anything: said once on stderr,
/// and inputs of that shape, dtype and layout take the float32 path from then on). Any other
/// error is returned.
pub(super) fn train_reduced(
    bn: &BatchNorm,
    x: &Tensor,
    relu: bool,
    nhwc: bool,
) -> Result<Option<Tensor>> {
    let refused = Arc::new(AtomicBool::new(false));
    match train_flagged(bn, x, relu, nhwc, refused.clone()) {
        Ok(ys) => Ok(Some(ys)),
        Err(error) if refused.load(Ordering::Relaxed) => {
            let (n, c, l) = match (nhwc, x.dims3()?) {
                (true, (n, l, c)) => (n, c, l),
                (false, dims) => dims,
            };
            let key = ([n, c, l], x.dtype(), nhwc);
            let first = REFUSED.lock().is_ok_and(|mut refused| {
                let first = !refused.contains(&key);
                if first {
                    refused.push(key);
                }
                first
            });
            if first {
                eprintln!(
                    "cuDNN batch norm ({:?}, {}) refused a {:?} input of (N, C, L) = ({n}, {c}, {l}) ({error}); batch norm of such inputs runs in float32 from now on",
                    mode(nhwc),
                    if nhwc { "NHWC" } else { "NCHW" },
                    x.dtype()
                );
            }
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// The training-mode `relu?(batch_norm(x))` of an (N, C, L) CUDA tensor, or of an (N, L, C)
/// one when `nhwc` (float32, bfloat16 or float16; the output in the same dtype and order); the
/// running statistics move (in place) and one more batch is counted.
pub(super) fn train(bn: &BatchNorm, x: &Tensor, relu: bool, nhwc: bool) -> Result<Tensor> {
    train_flagged(bn, x, relu, nhwc, Arc::new(AtomicBool::new(false)))
}

/// [`train`], setting `refused` when cuDNN's forward call refuses the input's dtype.
fn train_flagged(
    bn: &BatchNorm,
    x: &Tensor,
    relu: bool,
    nhwc: bool,
    refused: Arc<AtomicBool>,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (n, c, l) = match (nhwc, x.dims3()?) {
        (true, (n, l, c)) => (n, c, l),
        (false, dims) => dims,
    };
    if n * l < 2 {
        candle_core::bail!(
            "batch-norm in training needs more than one value per channel, got input (N, C, L) = ({n}, {c}, {l})"
        )
    }
    let Some((running_mean, running_var)) = &bn.running else {
        candle_core::bail!("cuDNN batch norm: no running statistics")
    };
    let op = Forward {
        running_mean: running_mean.as_tensor().clone(),
        running_var: running_var.as_tensor().clone(),
        momentum: bn.next_momentum()?,
        eps: bn.eps,
        relu,
        dims: [n, c, l],
        nhwc,
        dtype: x.dtype(),
        refused,
        saved: OnceLock::new(),
    };
    let ys = x.apply_op3(&bn.weight.contiguous()?, &bn.bias.contiguous()?, op)?;
    bn.count_batch()?;
    Ok(ys)
}

/// The descriptors of one input shape: the input (and output, and their gradients) as
/// (N, C, L, 1), NCHW or NHWC, the per-channel tensors as (1, C, 1, 1).
struct Descs {
    x: TensorDesc,
    channels: TensorDesc,
}

/// The descriptors of one thread on one device, by (N, C, L) and the input's dtype.
#[derive(Default)]
pub(crate) struct Cache {
    descs: HashMap<([usize; 3], DType, bool), Descs>,
}

impl Cache {
    fn descs(&mut self, [n, c, l]: [usize; 3], dtype: DType, nhwc: bool) -> Result<&Descs> {
        use std::collections::hash_map::Entry;
        let float = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
        let Some(data) = data_type(dtype) else {
            candle_core::bail!("cudnn batch-norm: no {dtype:?} input")
        };
        Ok(match self.descs.entry(([n, c, l], dtype, nhwc)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Descs {
                x: TensorDesc::new(data, [n, c, l, 1], nhwc)?,
                channels: TensorDesc::nchw(float, [1, c, 1, 1])?,
            }),
        })
    }
}

/// The shape an input of (N, C, L) = `dims` is held in: (N, L, C) when `nhwc`.
fn held([n, c, l]: [usize; 3], nhwc: bool) -> Shape {
    match nhwc {
        true => Shape::from_dims(&[n, l, c]),
        false => Shape::from_dims(&[n, c, l]),
    }
}

/// The batch mean and inverse standard deviation the forward saves for the backward.
struct Saved {
    mean: CudaSlice<f32>,
    invstd: CudaSlice<f32>,
}

/// (x, weight, bias) -> y, with the running statistics updated on the way.
struct Forward {
    running_mean: Tensor,
    running_var: Tensor,
    momentum: f64,
    eps: f64,
    relu: bool,
    /// N, C, L.
    dims: [usize; 3],
    /// The input (and output) held as (N, L, C).
    nhwc: bool,
    /// The input's (and output's) dtype.
    dtype: DType,
    /// Set when cuDNN's forward call refuses a reduced-precision dtype (nothing changed yet).
    refused: Arc<AtomicBool>,
    saved: OnceLock<Saved>,
}

impl Forward {
    /// The cuDNN call: `y` and the saved statistics from `x`, `w`, `b`, moving the running
    /// statistics `mean` and `var`.
    fn launch(
        &self,
        (x, xl): (&CudaStorage, &Layout),
        (w, wl): (&CudaStorage, &Layout),
        (b, bl): (&CudaStorage, &Layout),
        (mean, ml): (&mut CudaStorage, &Layout),
        (var, vl): (&mut CudaStorage, &Layout),
    ) -> Result<CudaStorage> {
        let [n, c, l] = self.dims;
        with_state(&x.device, |state| {
            let descs = state.batch_norm.descs(self.dims, self.dtype, self.nhwc)?;
            let (stream, device) = (&state.stream, &state.device);
            let mut y = Buffer::uninit(device, self.dtype, n * c * l)?;
            // SAFETY: cuDNN writes all of `y` and both saved statistics.
            let (mut save_mean, mut save_invstd) =
                unsafe { (device.alloc::<f32>(c)?, device.alloc::<f32>(c)?) };
            {
                let (xp, _gx) = read_ptr(x, xl, stream, "batch-norm input")?;
                let (wp, _gw) = read_ptr(w, wl, stream, "batch-norm weight")?;
                let (bp, _gb) = read_ptr(b, bl, stream, "batch-norm bias")?;
                let (mp, _gm) = f32_write_ptr(mean, ml, stream, "batch-norm running mean")?;
                let (vp, _gv) = f32_write_ptr(var, vl, stream, "batch-norm running variance")?;
                let (yp, _gy) = y.write_ptr(stream);
                let (smp, _gsm) = save_mean.device_ptr_mut(stream);
                let (sip, _gsi) = save_invstd.device_ptr_mut(stream);
                // SAFETY: a live handle; descriptors of the contiguous tensors behind the
                // pointers (dtypes and lengths checked by `read_ptr` / `f32_write_ptr`, the
                // input's and output's dtype `self.dtype`, shapes from the same (N, C, L));
                // float scaling factors.
                let status = unsafe {
                    sys::cudnnBatchNormalizationForwardTraining(
                        state.handle.0,
                        mode(self.nhwc),
                        &ONE as *const f32 as *const c_void,
                        &ZERO as *const f32 as *const c_void,
                        descs.x.0,
                        xp,
                        descs.x.0,
                        yp,
                        descs.channels.0,
                        wp,
                        bp,
                        self.momentum,
                        mp,
                        vp,
                        self.eps,
                        smp as *mut c_void,
                        sip as *mut c_void,
                    )
                };
                if self.dtype != DType::F32 && crate::cudnn::is_refusal(status) {
                    self.refused.store(true, Ordering::Relaxed);
                }
                check(status, "batch-norm forward")?;
            }
            let saved = Saved {
                mean: save_mean,
                invstd: save_invstd,
            };
            if self.saved.set(saved).is_err() {
                candle_core::bail!("cudnn batch-norm: forward ran twice")
            }
            Ok(y.into_storage(device.clone()))
        })
    }
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "cudnn-batch-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("{} runs on CUDA tensors only", self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let shape = held(self.dims, self.nhwc);
        if xl.shape() != &shape || x.dtype() != self.dtype {
            candle_core::bail!(
                "cudnn batch-norm: input {:?} {:?}, expected {shape:?} {:?}",
                xl.shape(),
                x.dtype(),
                self.dtype
            )
        }
        let mut ys = None;
        // Write access to both running statistics, one inside the other, for the one call.
        // (How the forward gets write access to the running statistics, which cuDNN updates in
        // the same call that normalises.)
        const NAME: &str = "cudnn-batch-norm-running-stats";
        in_place_cuda(&self.running_var, NAME, |var, vl| {
            in_place_cuda(&self.running_mean, NAME, |mean, ml| {
                let (mean, var) = ((&mut *mean, ml), (&mut *var, vl));
                ys = Some(self.launch((x, xl), (w, wl), (b, bl), mean, var)?);
                Ok(())
            })
        })?;
        let Some(ys) = ys else {
            candle_core::bail!("cudnn batch-norm: the forward did not run")
        };
        // The ReLU as `layers::relu` runs it (NaN stays NaN, as torch.relu), in place of
        // Candle's (whose float32 `fmaxf` makes NaN 0) where a kernel of ours takes the dtype.
        let ys = match (self.relu, self.dtype) {
            (true, DType::F32 | DType::BF16) => {
                crate::activation_cuda::launch(
                    "relu",
                    &[(&ys, &Layout::contiguous(shape.clone()))],
                )?
                .0
            }
            (true, _) => ys.unary_impl::<Relu>(&Layout::contiguous(shape.clone()))?,
            (false, _) => ys,
        };
        Ok((ys, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        ys: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(saved) = self.saved.get() else {
            candle_core::bail!("cudnn batch-norm: backward before forward")
        };
        // The output gradient in the input's dtype, as cuDNN takes it.
        let grad = grad.to_dtype(self.dtype)?;
        // The ReLU's gradient in one kernel where there is one (PyTorch's `threshold_backward`).
        let grad = match self.relu {
            true if crate::activation::takes_relu_backward(ys) => {
                crate::activation::relu_backward(ys, &grad)?
            }
            // Zero where y <= 0, the gradient elsewhere (NaN too), as the kernel: not a product
            // by a mask, which would turn an infinite gradient at y <= 0 into NaN.
            true => ys.le(0.0)?.where_cond(&grad.zeros_like()?, &grad)?,
            false => grad,
        };
        let op = Backward {
            dims: self.dims,
            nhwc: self.nhwc,
            dtype: self.dtype,
            eps: self.eps,
            saved,
            params: RefCell::new(None),
        };
        let gx = x.apply_op3_no_bwd(&grad.contiguous()?, w, &op)?;
        let Some((gw, gb)) = op.params.into_inner() else {
            candle_core::bail!("cudnn batch-norm: the backward gave no parameter gradients")
        };
        let c = self.dims[1];
        let param = |s| Tensor::from_storage(Storage::Cuda(s), c, BackpropOp::none(), false);
        // A frozen weight or bias gets no gradient (PyTorch leaves its `.grad` None).
        Ok((
            x.track_op().then_some(gx),
            w.track_op().then(|| param(gw)),
            b.track_op().then(|| param(gb)),
        ))
    }
}

/// (x, dy, weight) -> dx, with the weight's and bias's gradients left in `params`.
struct Backward<'a> {
    dims: [usize; 3],
    /// The input and both gradients held as (N, L, C).
    nhwc: bool,
    /// The input's (and both data gradients') dtype.
    dtype: DType,
    eps: f64,
    saved: &'a Saved,
    params: RefCell<Option<(CudaStorage, CudaStorage)>>,
}

impl CustomOp3 for Backward<'_> {
    fn name(&self) -> &'static str {
        "cudnn-batch-norm-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("{} runs on CUDA tensors only", self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let [n, c, l] = self.dims;
        let shape = held(self.dims, self.nhwc);
        if xl.shape() != &shape
            || dyl.shape() != &shape
            || [x.dtype(), dy.dtype()] != [self.dtype; 2]
        {
            candle_core::bail!(
                "cudnn batch-norm backward: input {:?} {:?} and gradient {:?} {:?}, expected {shape:?} {:?}",
                xl.shape(),
                x.dtype(),
                dyl.shape(),
                dy.dtype(),
                self.dtype
            )
        }
        with_state(&x.device, |state| {
            let descs = state.batch_norm.descs(self.dims, self.dtype, self.nhwc)?;
            let (stream, device) = (&state.stream, &state.device);
            let mut dx = Buffer::uninit(device, self.dtype, n * c * l)?;
            // SAFETY: cuDNN writes all three gradients.
            let (mut dw, mut db) = unsafe { (device.alloc::<f32>(c)?, device.alloc::<f32>(c)?) };
            {
                let (xp, _gx) = read_ptr(x, xl, stream, "batch-norm input")?;
                let (dyp, _gdy) = read_ptr(dy, dyl, stream, "batch-norm output gradient")?;
                let (wp, _gw) = read_ptr(w, wl, stream, "batch-norm weight")?;
                let (mp, _gm) = self.saved.mean.device_ptr(stream);
                let (ip, _gi) = self.saved.invstd.device_ptr(stream);
                let (dxp, _gdx) = dx.write_ptr(stream);
                let (dwp, _gdw) = dw.device_ptr_mut(stream);
                let (dbp, _gdb) = db.device_ptr_mut(stream);
                let (one, zero) = (
                    &ONE as *const f32 as *const c_void,
                    &ZERO as *const f32 as *const c_void,
                );
                // SAFETY: as in the forward; the saved statistics are the forward's, of the
                // same shape and epsilon.
                check(
                    unsafe {
                        sys::cudnnBatchNormalizationBackward(
                            state.handle.0,
                            mode(self.nhwc),
                            one,
                            zero,
                            one,
                            zero,
                            descs.x.0,
                            xp,
                            descs.x.0,
                            dyp,
                            descs.x.0,
                            dxp,
                            descs.channels.0,
                            wp,
                            dwp as *mut c_void,
                            dbp as *mut c_void,
                            self.eps,
                            mp as *const c_void,
                            ip as *const c_void,
                        )
                    },
                    "batch-norm backward",
                )?;
            }
            *self.params.borrow_mut() = Some((
                CudaStorage::wrap_cuda_slice(dw, device.clone()),
                CudaStorage::wrap_cuda_slice(db, device.clone()),
            ));
            Ok((dx.into_storage(device.clone()), shape))
        })
    }
}
