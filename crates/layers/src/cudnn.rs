//! What the cuDNN convolution ([`conv::cudnn`](crate::conv)) and batch norm share: one cuDNN
//! handle per thread and device, bound to the device's stream (Candle's tensors live on that
//! one stream, so everything cuDNN does is ordered with Candle's own kernels), the workspace
//! buffer, descriptors that destroy themselves, and the device pointers of Candle's storages.
//!
//! cudarc's safe cuDNN wrappers keep their raw handles and descriptors to themselves, and the
//! algorithm search (`cudnnFind*AlgorithmEx`) and batch norm need them, so this module holds
//! its own, made with cudarc's `result` functions and called through its `sys` bindings.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::cudnn::{result, sys};
use candle_core::cuda::cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, SyncOnDrop,
};
use candle_core::cuda::{CudaDType, DeviceId};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result};
use half::{bf16, f16};

/// `Err` with `what` and cuDNN's status unless `status` is success.
pub(crate) fn check(status: sys::cudnnStatus_t, what: &str) -> Result<()> {
    status
        .result()
        .map_err(|e| candle_core::Error::Msg(format!("cuDNN {what}: {:?}", e.0)))
}

/// Whether `status` is cuDNN refusing the problem as asked (its shape, layout, data type or
/// padding), not a failure of this call: `CUDNN_STATUS_BAD_PARAM`, `CUDNN_STATUS_NOT_SUPPORTED`
/// and cuDNN 9's detailed codes of that kind (`NOT_SUPPORTED_LAYOUT` 3004, ...). Codes that
/// name a bug or the set-up (a null or misaligned pointer, another stream, the driver) are not
/// refusals: they stay errors rather than send every later call elsewhere.
pub(crate) fn is_refusal(status: sys::cudnnStatus_t) -> bool {
    use sys::cudnnStatus_t::*;
    matches!(
        status,
        CUDNN_STATUS_BAD_PARAM
            | CUDNN_STATUS_NOT_SUPPORTED
            | CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN
            | CUDNN_STATUS_NOT_SUPPORTED_SHAPE
            | CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE
            | CUDNN_STATUS_NOT_SUPPORTED_LAYOUT
            | CUDNN_STATUS_NOT_SUPPORTED_SHARED_MEMORY_INSUFFICIENT
            | CUDNN_STATUS_NOT_SUPPORTED_PADDING
            | CUDNN_STATUS_NOT_SUPPORTED_BAD_LAUNCH_PARAM
    )
}

/// Whether `status` says that cuDNN could not allocate memory (on the host or the device), so
/// that a later call may succeed.
pub(crate) fn is_out_of_memory(status: sys::cudnnStatus_t) -> bool {
    use sys::cudnnStatus_t::*;
    matches!(
        status,
        CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED
            | CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED
    )
}

/// A cuDNN error from cudarc's `result` layer, with what was being done.
pub(crate) fn context<T>(r: std::result::Result<T, result::CudnnError>, what: &str) -> Result<T> {
    r.map_err(|e| candle_core::Error::Msg(format!("cuDNN {what}: {:?}", e.0)))
}

/// cuDNN's element type for a Candle dtype that cuDNN convolves or normalises here.
pub(crate) fn data_type(dtype: DType) -> Option<sys::cudnnDataType_t> {
    match dtype {
        DType::F32 => Some(sys::cudnnDataType_t::CUDNN_DATA_FLOAT),
        DType::BF16 => Some(sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16),
        DType::F16 => Some(sys::cudnnDataType_t::CUDNN_DATA_HALF),
        _ => None,
    }
}

fn cudnn_dim(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("cuDNN: {what} {v} too large")))
}

/// `dims` as the `int`s cuDNN takes.
pub(crate) fn dims4(dims: [usize; 4], what: &str) -> Result<[i32; 4]> {
    Ok([
        cudnn_dim(dims[0], what)?,
        cudnn_dim(dims[1], what)?,
        cudnn_dim(dims[2], what)?,
        cudnn_dim(dims[3], what)?,
    ])
}

/// cuDNN's layout of a 4-D tensor, or of a filter (whose NHWC is (O, KH, KW, C)).
fn format(nhwc: bool) -> sys::cudnnTensorFormat_t {
    match nhwc {
        true => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
        false => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
    }
}

/// A 4-D tensor descriptor, dims (N, C, H, W), NCHW or NHWC in memory.
#[derive(Debug)]
pub(crate) struct TensorDesc(pub(crate) sys::cudnnTensorDescriptor_t);

impl TensorDesc {
    pub(crate) fn nchw(dtype: sys::cudnnDataType_t, dims: [usize; 4]) -> Result<Self> {
        Self::new(dtype, dims, false)
    }

    /// (N, C, H, W) = `dims`, held (N, H, W, C) in memory when `nhwc`.
    pub(crate) fn new(dtype: sys::cudnnDataType_t, dims: [usize; 4], nhwc: bool) -> Result<Self> {
        let desc = Self(context(
            result::create_tensor_descriptor(),
            "tensor descriptor",
        )?);
        let format = format(nhwc);
        // SAFETY: the descriptor was just created and is destroyed only by `drop`.
        context(
            unsafe { result::set_tensor4d_descriptor(desc.0, format, dtype, dims4(dims, "dim")?) },
            "tensor descriptor",
        )?;
        Ok(desc)
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created by `new`, destroyed once, here. A failure leaks one descriptor.
        let _ = unsafe { result::destroy_tensor_descriptor(self.0) };
    }
}

/// A 4-D filter descriptor, dims (O, C / groups, KH, KW), held in that order or, when `nhwc`,
/// as (O, KH, KW, C / groups).
#[derive(Debug)]
pub(crate) struct FilterDesc(pub(crate) sys::cudnnFilterDescriptor_t);

impl FilterDesc {
    pub(crate) fn new(dtype: sys::cudnnDataType_t, dims: [usize; 4], nhwc: bool) -> Result<Self> {
        let desc = Self(context(
            result::create_filter_descriptor(),
            "filter descriptor",
        )?);
        let format = format(nhwc);
        // SAFETY: the descriptor was just created and is destroyed only by `drop`.
        context(
            unsafe { result::set_filter4d_descriptor(desc.0, dtype, format, dims4(dims, "dim")?) },
            "filter descriptor",
        )?;
        Ok(desc)
    }
}

impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created by `new`, destroyed once, here.
        let _ = unsafe { result::destroy_filter_descriptor(self.0) };
    }
}

/// A convolution descriptor.
#[derive(Debug)]
pub(crate) struct ConvDesc(pub(crate) sys::cudnnConvolutionDescriptor_t);

impl ConvDesc {
    /// Cross-correlation (PyTorch's convolution) with these parameters, its sums in
    /// `compute` and the given math type.
    pub(crate) fn new(
        [padding, stride, dilation, groups]: [usize; 4],
        compute: sys::cudnnDataType_t,
        math: sys::cudnnMathType_t,
    ) -> Result<Self> {
        let desc = Self(context(
            result::create_convolution_descriptor(),
            "convolution descriptor",
        )?);
        let [p, s, d, g] = dims4([padding, stride, dilation, groups], "convolution parameter")?;
        let mode = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
        // SAFETY: the descriptor was just created and is destroyed only by `drop`.
        unsafe {
            context(
                result::set_convolution2d_descriptor(desc.0, p, p, s, s, d, d, mode, compute),
                "convolution descriptor",
            )?;
            context(
                result::set_convolution_group_count(desc.0, g),
                "convolution groups",
            )?;
        }
        desc.set_math(math)?;
        Ok(desc)
    }

    pub(crate) fn set_math(&self, math: sys::cudnnMathType_t) -> Result<()> {
        // SAFETY: `self.0` is alive until `drop`.
        context(
            unsafe { result::set_convolution_math_type(self.0, math) },
            "convolution math type",
        )
    }
}

impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created by `new`, destroyed once, here.
        let _ = unsafe { result::destroy_convolution_descriptor(self.0) };
    }
}

/// A cuDNN handle on one device's stream.
#[derive(Debug)]
pub(crate) struct Handle(pub(crate) sys::cudnnHandle_t);

impl Handle {
    fn new(stream: &CudaStream) -> Result<Self> {
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| candle_core::Error::Msg(format!("cuDNN: binding the device: {e:?}")))?;
        let handle = Self(context(result::create_handle(), "creating a handle")?);
        // SAFETY: a live handle and the stream of a device that outlives it (the state holding
        // the handle keeps the stream's `Arc`).
        context(
            unsafe { result::set_stream(handle.0, stream.cu_stream() as sys::cudaStream_t) },
            "setting the stream",
        )?;
        Ok(handle)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by `new`, destroyed once, here.
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}

/// The scratch buffer every cuDNN call of one thread on one device shares: grown when a call
/// needs more, never shrunk (calls are ordered on the one stream, so one buffer serves all).
#[derive(Default)]
pub(crate) struct Workspace(Option<CudaSlice<u8>>);

impl Workspace {
    /// The buffer, at least `bytes` long (null and 0 for 0 bytes), and its stream guard.
    pub(crate) fn get<'a>(
        &'a mut self,
        device: &CudaDevice,
        stream: &'a CudaStream,
        bytes: usize,
    ) -> Result<(*mut c_void, usize, Option<SyncOnDrop<'a>>)> {
        if bytes == 0 {
            return Ok((std::ptr::null_mut(), 0, None));
        }
        if self.0.as_ref().is_none_or(|w| w.len() < bytes) {
            // The old buffer goes first, so that the two never need memory together.
            self.0 = None;
            // SAFETY: cuDNN's scratch space; nothing reads it before cuDNN writes it.
            self.0 = Some(unsafe { device.alloc::<u8>(bytes)? });
        }
        let Some(w) = self.0.as_mut() else {
            candle_core::bail!("cuDNN: workspace missing after allocation")
        };
        let len = w.len();
        let (ptr, guard) = w.device_ptr_mut(stream);
        Ok((ptr as *mut c_void, len, Some(guard)))
    }
}

/// One thread's cuDNN state on one device: the handle on the device's stream, the shared
/// [`Workspace`], and what the convolution and batch norm cache.
pub(crate) struct State {
    pub(crate) handle: Handle,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) device: CudaDevice,
    pub(crate) workspace: Workspace,
    pub(crate) conv: crate::conv::cudnn::Cache,
    pub(crate) batch_norm: crate::batch_norm::cudnn::Cache,
}

thread_local! {
    static STATES: RefCell<HashMap<DeviceId, State>> = RefCell::new(HashMap::new());
}

/// Runs `f` with this thread's cuDNN state for `device`, made on first use.
pub(crate) fn with_state<R>(
    device: &CudaDevice,
    f: impl FnOnce(&mut State) -> Result<R>,
) -> Result<R> {
    STATES.with(|states| {
        let mut states = states.try_borrow_mut().map_err(|_| {
            candle_core::Error::Msg("cuDNN: state already in use on this thread".into())
        })?;
        let state = match states.entry(device.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let stream = device.cuda_stream();
                e.insert(State {
                    handle: Handle::new(&stream)?,
                    stream,
                    device: device.clone(),
                    workspace: Workspace::default(),
                    conv: Default::default(),
                    batch_norm: Default::default(),
                })
            }
        };
        f(state)
    })
}

/// `storage` as a typed slice, from where `layout` starts; `Err` unless contiguous.
fn start<'a, T: CudaDType + DeviceRepr + 'static>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> Result<(&'a CudaSlice<T>, usize)> {
    if !layout.is_contiguous() {
        candle_core::bail!("cuDNN: {what} must be contiguous")
    }
    let slice = storage.as_cuda_slice::<T>()?;
    if layout.start_offset() + layout.shape().elem_count() > slice.len() {
        candle_core::bail!("cuDNN: {what} extends past its storage")
    }
    Ok((slice, layout.start_offset() * std::mem::size_of::<T>()))
}

/// The device address of a contiguous tensor (f32, bf16 or f16) for reading, and the guard
/// that records the read on `stream` when dropped.
pub(crate) fn read_ptr<'a>(
    storage: &'a CudaStorage,
    layout: &Layout,
    stream: &'a CudaStream,
    what: &str,
) -> Result<(*const c_void, SyncOnDrop<'a>)> {
    fn typed<'a, T: CudaDType + DeviceRepr + 'static>(
        storage: &'a CudaStorage,
        layout: &Layout,
        stream: &'a CudaStream,
        what: &str,
    ) -> Result<(*const c_void, SyncOnDrop<'a>)> {
        let (slice, offset) = start::<T>(storage, layout, what)?;
        let (ptr, guard) = slice.device_ptr(stream);
        Ok(((ptr + offset as u64) as *const c_void, guard))
    }
    match storage.dtype() {
        DType::F32 => typed::<f32>(storage, layout, stream, what),
        DType::BF16 => typed::<bf16>(storage, layout, stream, what),
        DType::F16 => typed::<f16>(storage, layout, stream, what),
        d => candle_core::bail!("cuDNN: {what} has dtype {d:?}, expected f32, bf16 or f16"),
    }
}

/// A fresh device buffer of one of the dtypes cuDNN works in here.
pub(crate) enum Buffer {
    F32(CudaSlice<f32>),
    BF16(CudaSlice<bf16>),
    F16(CudaSlice<f16>),
}

impl Buffer {
    /// `len` uninitialised elements of `dtype` on `device`: for outputs cuDNN writes whole.
    pub(crate) fn uninit(device: &CudaDevice, dtype: DType, len: usize) -> Result<Self> {
        // SAFETY: every caller hands the buffer to a cuDNN call that writes all of it before
        // anything reads it.
        unsafe {
            Ok(match dtype {
                DType::F32 => Self::F32(device.alloc::<f32>(len)?),
                DType::BF16 => Self::BF16(device.alloc::<bf16>(len)?),
                DType::F16 => Self::F16(device.alloc::<f16>(len)?),
                d => candle_core::bail!("cuDNN: no {d:?} outputs"),
            })
        }
    }

    /// The buffer's device address for writing, and the guard that records the write.
    pub(crate) fn write_ptr<'a>(
        &'a mut self,
        stream: &'a CudaStream,
    ) -> (*mut c_void, SyncOnDrop<'a>) {
        let (ptr, guard) = match self {
            Self::F32(s) => s.device_ptr_mut(stream),
            Self::BF16(s) => s.device_ptr_mut(stream),
            Self::F16(s) => s.device_ptr_mut(stream),
        };
        (ptr as *mut c_void, guard)
    }

    /// The buffer as Candle storage on `device`.
    pub(crate) fn into_storage(self, device: CudaDevice) -> CudaStorage {
        match self {
            Self::F32(s) => CudaStorage::wrap_cuda_slice(s, device),
            Self::BF16(s) => CudaStorage::wrap_cuda_slice(s, device),
            Self::F16(s) => CudaStorage::wrap_cuda_slice(s, device),
        }
    }
}

/// The f32 slice of `storage` under a contiguous `layout`, as a mutable device address for
/// in-place updates (batch norm's running statistics).
pub(crate) fn f32_write_ptr<'a>(
    storage: &'a mut CudaStorage,
    layout: &Layout,
    stream: &'a CudaStream,
    what: &str,
) -> Result<(*mut c_void, SyncOnDrop<'a>)> {
    let (_, offset) = start::<f32>(storage, layout, what)?;
    let slice = storage.as_cuda_slice_mut::<f32>()?;
    let (ptr, guard) = slice.device_ptr_mut(stream);
    Ok(((ptr + offset as u64) as *mut c_void, guard))
}
