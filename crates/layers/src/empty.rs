//! Empty outputs that keep their operation's inputs in the autograd graph (an empty batch
//! through a convolution or a batch norm).

use candle_core::{DType, Result, Tensor};

/// An empty output of `shape` in `dtype` in the graph of three tensors (an op's input and
/// parameters), whose gradients are zeros, as PyTorch's: Candle's arithmetic on an empty
/// tensor returns it without recording the operation, so the parameters would get no gradient.
struct EmptyOutput {
    shape: candle_core::Shape,
    dtype: DType,
}

impl candle_core::CustomOp3 for EmptyOutput {
    fn name(&self) -> &'static str {
        "empty-output"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::{BackendDevice, BackendStorage};
        let ys = x.device().zeros_impl(&self.shape, self.dtype)?;
        Ok((ys, self.shape.clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        _: &candle_core::Layout,
        _: &candle_core::CudaStorage,
        _: &candle_core::Layout,
        _: &candle_core::CudaStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use candle_core::backend::{BackendDevice, BackendStorage};
        let ys = x.device().zeros_impl(&self.shape, self.dtype)?;
        Ok((ys, self.shape.clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _: &Tensor,
        _: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let zeros = |t: &Tensor| t.track_op().then(|| t.zeros_like()).transpose();
        Ok((zeros(x)?, zeros(w)?, zeros(b)?))
    }
}

/// An empty tensor of `shape` in `dtype` whose gradient reaches `inputs` as zeros (PyTorch's
/// gradients of an empty batch's weights); `inputs[0]` gives the device.
pub(crate) fn output(shape: &[usize], dtype: DType, inputs: [&Tensor; 3]) -> Result<Tensor> {
    let op = EmptyOutput {
        shape: candle_core::Shape::from(shape.to_vec()),
        dtype,
    };
    inputs[0].apply_op3(inputs[1], inputs[2], op)
}
