//! The CUDA memory pool kept, as PyTorch keeps its cached blocks.
//!
//! Candle allocates through cudarc's stream-ordered allocator (`cuMemAllocAsync`) from the
//! device's current memory pool. That pool's release threshold is 0 by default, so every
//! stream, event or context synchronisation hands the freed memory back to the driver, and the
//! next step's allocations map it again. PyTorch's caching allocator never returns memory
//! unless asked (`torch.cuda.empty_cache()`), and its `cudaMallocAsync` backend sets the same
//! threshold to `UINT64_MAX`; [`keep_freed_memory`] does that.

use candle_core::cuda::cudarc::driver::{result, sys};
use candle_core::{CudaDevice, Result};

/// Sets the release threshold of `device`'s current memory pool to `u64::MAX`
/// (`CU_MEMPOOL_ATTR_RELEASE_THRESHOLD`, as PyTorch's `cudaMallocAsync` backend), so that
/// memory a step frees stays in the pool for the next step instead of going back to the driver
/// at each synchronisation. Nothing happens where the device has no stream-ordered allocator
/// (cudarc then allocates with `cuMemAlloc`, which keeps nothing either way), or with
/// `LAYERS_CUDA_KEEP_FREED=0` in the environment (Candle's default kept, to measure the
/// difference: `tools/gpu-check.sh` does).
///
/// # Errors
/// The driver's error when the pool cannot be read or set.
pub fn keep_freed_memory(device: &CudaDevice) -> Result<()> {
    if std::env::var_os("LAYERS_CUDA_KEEP_FREED").is_some_and(|v| v == "0") {
        return Ok(());
    }
    let stream = device.cuda_stream();
    let context = stream.context();
    if !context.has_async_alloc() {
        return Ok(());
    }
    let failed = |what: &str, e: result::DriverError| {
        candle_core::Error::Msg(format!(
            "CUDA device {}: {what} of its memory pool failed: {e:?}",
            context.ordinal()
        ))
    };
    context
        .bind_to_thread()
        .map_err(|e| failed("binding the context", e))?;
    let mut threshold = u64::MAX;
    // SAFETY: the device is the context's own (from `cuDeviceGet`); the pool is that device's
    // current one, and the release threshold's value is a `cuuint64_t`.
    unsafe {
        let pool = result::device::get_mem_pool(context.cu_device())
            .map_err(|e| failed("reading the current pool", e))?;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .map_err(|e| failed("setting the release threshold", e))?;
    }
    Ok(())
}

/// Bytes the current memory pool of `device` holds but no allocation uses: memory the next
/// allocations take before asking the driver for more, so free for them though the driver's
/// `cuMemGetInfo` does not count it (0 when unknown, or without a stream-ordered allocator).
pub fn pool_spare_bytes(device: &CudaDevice) -> usize {
    let stream = device.cuda_stream();
    let context = stream.context();
    if !context.has_async_alloc() || context.bind_to_thread().is_err() {
        return 0;
    }
    let read = |pool, attr| {
        let mut value = 0u64;
        // SAFETY: a valid pool; both attributes' values are `cuuint64_t`.
        unsafe { result::mem_pool::get_attribute(pool, attr, (&mut value as *mut u64).cast()) }
            .map(|()| value)
    };
    // SAFETY: the device is the context's own.
    let Ok(pool) = (unsafe { result::device::get_mem_pool(context.cu_device()) }) else {
        return 0;
    };
    use sys::CUmemPool_attribute::{
        CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT as RESERVED, CU_MEMPOOL_ATTR_USED_MEM_CURRENT as USED,
    };
    match (read(pool, RESERVED), read(pool, USED)) {
        (Ok(reserved), Ok(used)) => usize::try_from(reserved.saturating_sub(used)).unwrap_or(0),
        _ => 0,
    }
}
