//! Dropout masks made on the GPU: cuRAND's Philox generator, reseeded for each mask from one
//! draw of [`crate::rng`], so that runs repeat and a resumed run draws the same masks (the
//! generator's whole state is that seed), without the host generating and copying a mask per
//! element (1.2 M values a step in the MNIST CNN's classifier).

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::cuda::cudarc::curand::{result, sys};
use candle_core::cuda::cudarc::driver::DevicePtrMut;
use candle_core::cuda_backend::{CudaDevice, DeviceId, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Device, Result, Storage, Tensor};

/// One Philox generator per device on this thread, on that device's stream.
struct Generator(sys::curandGenerator_t);

impl Drop for Generator {
    fn drop(&mut self) {
        // SAFETY: created by `create_generator_kind`, destroyed once.
        unsafe {
            let _ = result::destroy_generator(self.0);
        }
    }
}

thread_local! {
    static GENERATORS: RefCell<HashMap<DeviceId, Generator>> = RefCell::new(HashMap::new());
}

fn curand(e: result::CurandError, what: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuRAND {what}: {e:?}"))
}

/// `shape` uniform f32 values in (0, 1] on the CUDA device `device`, from Philox with `seed`.
pub(crate) fn uniform(device: &CudaDevice, shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let stream = device.cuda_stream();
    // SAFETY: cuRAND writes all `n` values before anything reads them.
    let mut out = unsafe { device.alloc::<f32>(n.max(1))? };
    GENERATORS.with(|g| -> Result<()> {
        let mut g = g.borrow_mut();
        let generator = match g.entry(device.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                // cuRAND creates the generator in the current context: this device's.
                stream.context().bind_to_thread().w()?;
                let kind = sys::curandRngType_t::CURAND_RNG_PSEUDO_PHILOX4_32_10;
                let gen = result::create_generator_kind(kind).map_err(|e| curand(e, "create"))?;
                let gen = Generator(gen);
                // SAFETY: a live generator and the device's own stream.
                unsafe { result::set_stream(gen.0, stream.cu_stream() as _) }
                    .map_err(|e| curand(e, "set stream"))?;
                e.insert(gen)
            }
        };
        // SAFETY: a live generator; `out` holds at least `n` f32 values on its stream.
        unsafe {
            result::set_seed(generator.0, seed).map_err(|e| curand(e, "seed"))?;
            result::set_offset(generator.0, 0).map_err(|e| curand(e, "offset"))?;
            if n > 0 {
                let (ptr, _record) = out.device_ptr_mut(&stream);
                result::generate::uniform_f32(generator.0, ptr as *mut f32, n)
                    .map_err(|e| curand(e, "uniform"))?;
            }
        }
        Ok(())
    })?;
    let storage = CudaStorage::wrap_cuda_slice(out, device.clone());
    let t = Tensor::from_storage(Storage::Cuda(storage), n.max(1), BackpropOp::none(), false);
    t.narrow(0, 0, n)?.reshape(shape)
}

/// `xs` with each element kept (and scaled by `1 / keep`) with probability `keep`, zeroed
/// otherwise, the mask drawn on `xs`'s CUDA device.
pub(crate) fn dropout(xs: &Tensor, keep: f64) -> Result<Tensor> {
    let Device::Cuda(device) = xs.device() else {
        candle_core::bail!("dropout on the GPU: the input is not on a CUDA device")
    };
    let seed = crate::rng::with(|rng| rng.next_u64());
    let u = uniform(device, xs.dims(), seed)?;
    // (0, 1] values: `u <= keep` holds with probability `keep`. The scale in float32, as
    // PyTorch's kernel: a bf16 input is scaled in float32 and rounded once.
    let mask = (u.le(keep)?.to_dtype(DType::F32)? * (1.0 / keep))?;
    match xs.dtype() {
        DType::F32 => xs * mask,
        d @ (DType::BF16 | DType::F16) => (xs.to_dtype(DType::F32)? * mask)?.to_dtype(d),
        d => xs * mask.to_dtype(d)?,
    }
}
