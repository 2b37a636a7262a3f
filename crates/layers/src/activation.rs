//! `torch.tanh`, `torch.relu` and a residual join's `relu(a + b)` as CPU custom ops: one
//! parallel pass forward and one backward.
//!
//! Candle's own `tanh` calls the C library's `tanhf` per element (a third of a LeNet-5
//! training step), and its backward passes are three to five whole-tensor operations
//! (`y² - 1`, the product, the ReLU mask made as u8 then converted...). Here the forward is one
//! pass over contiguous f32 data, in 16K-element chunks across the thread pool, and the
//! backward is one pass reading the output and its gradient: `g (1 - y²)` for Tanh and
//! `g [not y <= 0]` for ReLU (PyTorch's `tanh_backward` and `threshold_backward`). Element-wise, so
//! the result does not depend on the number of threads. On CUDA (`cuda` feature), float32 and
//! bf16 tensors take one kernel each way (`activation_cuda.rs`, the same rules), on the
//! (N, H, W, C) view of a channels-last tensor. Other dtypes and devices take Candle's
//! operations.
//!
//! The Tanh is Cephes' `tanhf` written without branches, so that it vectorises: an odd
//! polynomial below |x| = 0.625, `1 - 2 / (exp(2|x|) + 1)` above, with Cephes' `expf`. Its
//! error is within 2 ulp of the exact value (PyTorch's vectorised CPU tanh, Sleef's, is within
//! 1 ulp), tested against f64 over the whole range that does not round to ±1.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use crate::fill::par_filled;
use crate::memory_format;
use crate::per_channel::f32_slice;

/// Elements per chunk of the parallel passes; tensors up to twice this run on the caller.
const CHUNK: usize = 16 * 1024;

/// `torch.tanh(xs)`, any shape; the output has the input's shape.
///
/// # Errors
/// Only those of Candle's `tanh` on tensors that are not f32 on the CPU.
pub fn tanh(xs: &Tensor) -> Result<Tensor> {
    match fused(xs) {
        Some(Place::Cpu) => memory_format::keep(xs, |xs| xs.contiguous()?.apply_op1(Unary::Tanh)),
        Some(Place::Cuda) => memory_format::map(xs, |xs| xs.contiguous()?.apply_op1(Unary::Tanh)),
        None => memory_format::map(xs, |xs| xs.tanh()),
    }
}

/// `torch.relu(xs)`, any shape; the output has the input's shape. Its gradient is zero where
/// `x <= 0`, at x = 0 too, and passes where x is NaN, as PyTorch's `threshold_backward` (on
/// every dtype and device: the vendored Candle's own ReLU backward, which the other dtypes
/// take, follows it too).
///
/// # Errors
/// Only those of Candle's `relu` on tensors that are neither f32 on the CPU nor f32 or bf16
/// on CUDA.
pub fn relu(xs: &Tensor) -> Result<Tensor> {
    match fused(xs) {
        Some(Place::Cpu) => memory_format::keep(xs, |xs| xs.contiguous()?.apply_op1(Unary::Relu)),
        Some(Place::Cuda) => memory_format::map(xs, |xs| xs.contiguous()?.apply_op1(Unary::Relu)),
        None => memory_format::map(xs, |xs| xs.relu()),
    }
}

/// The input gradient of a ReLU from its output `y` and the output's gradient `g` (tensors of
/// one shape, f32 on the CPU or f32/bf16 on CUDA: see [`takes_relu_backward`]): PyTorch's
/// `threshold_backward`, zero where `y <= 0`.
pub(crate) fn relu_backward(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    y.contiguous()?
        .apply_op2_no_bwd(&g.contiguous()?, &Backward(Unary::Relu))
}

/// Whether [`relu_backward`] takes an output and gradient like `y`.
#[cfg(feature = "cudnn")]
pub(crate) fn takes_relu_backward(y: &Tensor) -> bool {
    fused(y).is_some()
}

/// Where the one-pass kernels here run `xs`: f32 on the CPU, f32 and bf16 on CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Cpu,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Cuda,
}

fn fused(xs: &Tensor) -> Option<Place> {
    if cpu_f32(xs) {
        return Some(Place::Cpu);
    }
    #[cfg(feature = "cuda")]
    if crate::activation_cuda::takes(xs) {
        return Some(Place::Cuda);
    }
    None
}

/// `torch.relu(a + b)` for two tensors of one shape: a residual block's join, torchvision's
/// `out += identity; out = self.relu(out)` in `BasicBlock` and `Bottleneck`. Returns a tensor of
/// that shape.
///
/// On contiguous-able f32 CPU tensors (and f32 or bf16 CUDA tensors, one kernel each way), one
/// pass forward (the sum rounded as Candle's and PyTorch's `+`) and one backward: both inputs
/// get the gradient where y is not `<= 0` (PyTorch's `threshold_backward`: zero at y = 0,
/// passed where y is NaN). Candle's `(a + b)?.relu()` takes one pass for the sum and one for
/// the ReLU forward, and six backward (the ReLU mask built as zeros, a comparison, a
/// conversion, a product, then the sum's two gradients).
///
/// # Errors
/// Shapes that differ (no broadcasting), or those of Candle's `+` and `relu` on other tensors.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        candle_core::bail!(
            "add_relu: the operands' shapes differ: {:?} and {:?}",
            a.dims(),
            b.dims()
        )
    }
    let place = fused(a).filter(|&p| fused(b) == Some(p) && a.dtype() == b.dtype());
    let op = |a: &Tensor, b: &Tensor| a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu);
    match place {
        Some(Place::Cpu) => memory_format::keep(a, |a| op(a, b)),
        Some(Place::Cuda) => memory_format::map2(a, b, op),
        None => memory_format::map2(a, b, |a, b| (a + b)?.relu()),
    }
}

/// `relu(a + b)`, see [`add_relu`].
struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "add-relu"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        al: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::activation_cuda::launch("add_relu", &[(a, al), (b, bl)])
    }

    fn cpu_fwd(
        &self,
        a_s: &CpuStorage,
        al: &Layout,
        b_s: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = f32_slice(a_s, al, self.name(), "first operand")?;
        let b = f32_slice(b_s, bl, self.name(), "second operand")?;
        if al.shape() != bl.shape() {
            candle_core::bail!("{}: the operands' shapes differ", self.name())
        }
        let y = par_map2(a, b, |a, b, y| {
            for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                let s = a + b;
                // NaN stays NaN, as torch.relu.
                y.write(if s <= 0.0 { 0.0 } else { s });
            }
        });
        Ok((CpuStorage::F32(y), al.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (want_a, want_b) = (a.track_op(), b.track_op());
        if !want_a && !want_b {
            return Ok((None, None));
        }
        let g = res.apply_op2(&grad.contiguous()?, Backward(Unary::Relu))?;
        Ok((want_a.then(|| g.clone()), want_b.then_some(g)))
    }
}

fn cpu_f32(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// A fresh vector of `min(a.len(), b.len())` values, `f(a, b, out)` writing every value of
/// `out` from chunks of `a` and `b` of its length: in chunks across the thread pool when they
/// are long, with no zero-filling pass first.
fn par_map2(
    a: &[f32],
    b: &[f32],
    f: impl Fn(&[f32], &[f32], &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let n = a.len().min(b.len());
    let chunk = if n <= 2 * CHUNK { n } else { CHUNK };
    // SAFETY: every kernel passed here zips its output chunk with input chunks of the same
    // length and writes each element.
    unsafe {
        par_filled(n, chunk, |i, out| {
            let at = i * chunk..i * chunk + out.len();
            f(&a[at.clone()], &b[at], out)
        })
    }
}

/// Cephes' `expf` without branches, for `x` in [-87, 88] (NaN stays NaN).
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to the nearest integer, kept in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let shifted = x * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * C1 - n * C2;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let p = p * r * r + r + 1.0;
    // 2^n: the integer n sits in the low bits of `shifted`, offset by MAGIC's own bits.
    let pow2 = f32::from_bits(
        shifted
            .to_bits()
            .wrapping_sub(MAGIC.to_bits())
            .wrapping_add(127)
            << 23,
    );
    p * pow2
}

/// tanh of one f32, Cephes' `tanhf` without branches.
#[inline(always)]
fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328e-1)
            * z
            * x
            + x;
    // tanh rounds to ±1 from |x| = 9.01; exp(20) keeps clear of overflow. NaN compares false
    // and stays NaN.
    let two_a = if 2.0 * a > 20.0 { 20.0 } else { 2.0 * a };
    let large = (1.0 - 2.0 / (exp_f32(two_a) + 1.0)).copysign(x);
    if a < 0.625 {
        // tanh(-0) = -0.
        small.copysign(x)
    } else {
        large
    }
}

/// `y[i] = tanh(x[i])`, compiled for AVX-512 where the CPU has it ([`crate::wide`]: sixteen
/// lanes a step where the default target's SSE2 takes four: the same operations, so the same
/// bits).
fn tanh_slice(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    crate::wide::run(
        #[inline(always)]
        || tanh_slice_any(x, y),
    )
}

#[inline(always)]
fn tanh_slice_any(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    for (y, &x) in y.iter_mut().zip(x) {
        y.write(tanh_f32(x));
    }
}

#[derive(Debug, Clone, Copy)]
enum Unary {
    Tanh,
    Relu,
}

impl Unary {
    fn forward(self, x: &[f32], y: &mut [MaybeUninit<f32>]) {
        match self {
            Unary::Tanh => tanh_slice(x, y),
            Unary::Relu => {
                for (y, &x) in y.iter_mut().zip(x) {
                    // NaN stays NaN, as torch.relu.
                    y.write(if x <= 0.0 { 0.0 } else { x });
                }
            }
        }
    }

    /// The input's gradient from the output `y` and its gradient `g`.
    fn backward(self, y: &[f32], g: &[f32], out: &mut [MaybeUninit<f32>]) {
        let rows = out.iter_mut().zip(y.iter().zip(g));
        match self {
            Unary::Tanh => rows.for_each(|(o, (&y, &g))| {
                o.write(g * (1.0 - y * y));
            }),
            // PyTorch's `threshold_backward`: zero where y <= 0, the gradient elsewhere (NaN too).
            Unary::Relu => rows.for_each(|(o, (&y, &g))| {
                o.write(if y <= 0.0 { 0.0 } else { g });
            }),
        }
    }
}

impl CustomOp1 for Unary {
    fn name(&self) -> &'static str {
        match self {
            Unary::Tanh => "tanh",
            Unary::Relu => "relu",
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::activation_cuda::launch(self.name(), &[(s, l)])
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name(), "input")?;
        let op = *self;
        let y = par_map2(x, x, |x, _, y| op.forward(x, y));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        res.apply_op2(&grad.contiguous()?, Backward(*self))
            .map(Some)
    }
}

/// The input gradient of [`Unary`] from (output, output gradient).
struct Backward(Unary);

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        match self.0 {
            Unary::Tanh => "tanh-backward",
            Unary::Relu => "relu-backward",
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ys: &candle_core::CudaStorage,
        yl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let kernel = match self.0 {
            Unary::Tanh => "tanh_bwd",
            Unary::Relu => "relu_bwd",
        };
        crate::activation_cuda::launch(kernel, &[(ys, yl), (gs, gl)])
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (
            f32_slice(ys, yl, self.name(), "output")?,
            f32_slice(gs, gl, self.name(), "gradient")?,
        );
        if yl.shape() != gl.shape() {
            candle_core::bail!(
                "{}: gradient of shape {:?} for an output of shape {:?}",
                self.name(),
                gl.dims(),
                yl.dims()
            )
        }
        let op = self.0;
        let out = par_map2(y, g, |y, g, o| op.backward(y, g, o));
        Ok((CpuStorage::F32(out), yl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn ulps(a: f32, b: f32) -> u32 {
        let key = |v: f32| {
            let b = v.to_bits() as i32;
            if b < 0 {
                i32::MIN - b
            } else {
                b
            }
        };
        key(a).abs_diff(key(b))
    }

    #[test]
    fn tanh_is_within_two_ulp_of_the_exact_value() {
        let mut worst = (0, 0f32);
        // Every 97th f32 from 0 up to 9.1 (beyond, tanh rounds to 1), and their negatives.
        let top = 9.1f32.to_bits();
        for bits in (0..top).step_by(97).chain([top, 0.625f32.to_bits()]) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                let exact = (x as f64).tanh() as f32;
                let e = ulps(tanh_f32(x), exact);
                if e > worst.0 {
                    worst = (e, x);
                }
            }
        }
        assert!(worst.0 <= 2, "{} ulp at {}", worst.0, worst.1);
        // The pass over a slice (vectorised, AVX-512 where the CPU has it) gives each value's
        // bits, edges and non-finite values included.
        let mut xs: Vec<f32> = (0..top).step_by(89).map(f32::from_bits).collect();
        xs.extend(xs.clone().iter().map(|x| -x));
        xs.extend([
            0.625,
            -0.625,
            9.01,
            30.0,
            -1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
        ]);
        xs.push(f32::NAN);
        let mut ys = vec![MaybeUninit::uninit(); xs.len()];
        tanh_slice(&xs, &mut ys);
        for (x, y) in xs.iter().zip(&ys) {
            // SAFETY: `tanh_slice` wrote every value.
            let y = unsafe { y.assume_init() };
            assert_eq!(y.to_bits(), tanh_f32(*x).to_bits(), "tanh({x}) in a slice");
        }
        for (x, want) in [(30.0, 1.0), (-1e30, -1.0), (f32::INFINITY, 1.0)] {
            assert_eq!(tanh_f32(x), want);
        }
        assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
        assert!(tanh_f32(f32::NAN).is_nan());
        assert_eq!(tanh_f32(-0.0).to_bits(), (-0.0f32).to_bits());
    }

    /// Values and gradients against Candle's own operation, on a tensor long enough to be
    /// split across threads and on a strided (transposed) one.
    fn matches_candle(
        ours: fn(&Tensor) -> Result<Tensor>,
        theirs: fn(&Tensor) -> Result<Tensor>,
        value_tol: f32,
        grad_tol: f32,
    ) -> Result<()> {
        let dev = Device::Cpu;
        for shape in [(3, 5, 7, 6), (4, 8, 40, 60)] {
            let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, shape, &dev)?))?;
            let up = Tensor::randn(0f32, 1.0, shape, &dev)?;
            for xt in [x.as_tensor().clone(), x.as_tensor().transpose(2, 3)?] {
                let up = if xt.is_contiguous() {
                    up.clone()
                } else {
                    up.transpose(2, 3)?
                };
                let (a, b) = (ours(&xt)?, theirs(&xt)?);
                assert_eq!(a.dims(), b.dims());
                let diff = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff <= value_tol, "values differ by {diff}");
                let ga = (&a * &up)?.sum_all()?.backward()?;
                let gb = (&b * &up)?.sum_all()?.backward()?;
                let (ga, gb) = (ga.get(&x).unwrap(), gb.get(&x).unwrap());
                let diff = (ga - gb)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff <= grad_tol, "gradients differ by {diff}");
            }
        }
        Ok(())
    }

    #[test]
    fn tanh_matches_candle_values_and_gradients() -> Result<()> {
        // tanh's values lie in [-1, 1]: 2 ulp of 1 is 2.4e-7; the gradient g (1 - y²) moves by
        // up to 2 |g y| times that, |g| < 6 here.
        matches_candle(tanh, |x| x.tanh(), 2.5e-7, 4e-6)
    }

    #[test]
    fn relu_matches_candle_values_and_gradients() -> Result<()> {
        matches_candle(relu, |x| x.relu(), 0.0, 0.0)
    }

    /// Values equal Candle's `(a + b).relu()` bit for bit; both gradients equal its wherever the
    /// sum is not exactly zero, and are zero where it is (Candle's pass the gradient there,
    /// PyTorch's do not); strided and split-over-threads tensors; an untracked operand gets
    /// none; shapes that differ are an error.
    #[test]
    fn add_relu_matches_the_sum_then_relu() -> Result<()> {
        let dev = Device::Cpu;
        for shape in [(3, 5, 7, 6), (4, 8, 40, 60)] {
            let a = Var::from_tensor(&Tensor::randn(0f32, 2.0, shape, &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 2.0, shape, &dev)?)?;
            let up = Tensor::randn(0f32, 1.0, shape, &dev)?;
            let bt = b
                .as_tensor()
                .transpose(2, 3)?
                .contiguous()?
                .transpose(2, 3)?;
            for bx in [b.as_tensor().clone(), bt] {
                let ours = add_relu(a.as_tensor(), &bx)?;
                let theirs = (a.as_tensor() + &bx)?.relu()?;
                let d = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert_eq!(d, 0.0, "values differ");
                let go = (&ours * &up)?.sum_all()?.backward()?;
                let gt = (&theirs * &up)?.sum_all()?.backward()?;
                for v in [&a, &b] {
                    let d = (go.get(v).unwrap() - gt.get(v).unwrap())?
                        .abs()?
                        .max_all()?
                        .to_scalar::<f32>()?;
                    assert_eq!(d, 0.0, "gradients differ");
                }
            }
        }
        let a = Var::from_tensor(&Tensor::new(&[1f32, -2.0, 3.0, f32::NAN], &dev)?)?;
        let b = Tensor::new(&[-1f32, 1.0, 1.0, 0.0], &dev)?;
        let y = add_relu(a.as_tensor(), &b)?;
        let v = y.to_vec1::<f32>()?;
        assert_eq!(&v[..3], [0.0, 0.0, 4.0]);
        assert!(v[3].is_nan());
        let g = y.sum_all()?.backward()?;
        assert_eq!(g.get(&a).unwrap().to_vec1::<f32>()?, [0.0, 0.0, 1.0, 1.0]);
        assert!(g.get(&b).is_none());
        assert!(add_relu(a.as_tensor(), &Tensor::zeros(3, DType::F32, &dev)?).is_err());
        Ok(())
    }

    #[test]
    fn relu_gradient_is_zero_at_zero_and_nan_passes_through() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::new(&[-1f32, 0.0, 2.0, f32::NAN], &dev)?)?;
        let y = relu(x.as_tensor())?;
        let v = y.to_vec1::<f32>()?;
        assert_eq!(&v[..3], [0.0, 0.0, 2.0]);
        assert!(v[3].is_nan());
        let g = y.sum_all()?.backward()?;
        // As PyTorch's threshold_backward: the gradient passes where the output is NaN.
        assert_eq!(g.get(&x).unwrap().to_vec1::<f32>()?, [0.0, 0.0, 1.0, 1.0]);
        Ok(())
    }

    #[test]
    fn candles_relu_gradient_is_pytorchs_on_other_dtypes() -> Result<()> {
        // f64 and bf16 take Candle's own ReLU, whose backward the vendored Candle makes
        // PyTorch's: zero at 0, passed at NaN.
        let dev = Device::Cpu;
        for dtype in [DType::F64, DType::BF16] {
            let x = Tensor::new(&[-1f32, 0.0, 2.0, f32::NAN, -0.0], &dev)?.to_dtype(dtype)?;
            let x = Var::from_tensor(&x)?;
            let g = relu(x.as_tensor())?.sum_all()?.backward()?;
            let g = g.get(&x).expect("gradient").to_dtype(DType::F32)?;
            assert_eq!(g.to_vec1::<f32>()?, [0.0, 0.0, 1.0, 1.0, 0.0], "{dtype:?}");
        }
        Ok(())
    }

    #[test]
    fn a_gradient_of_another_shape_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let y = Tensor::ones(6, DType::F32, &dev)?;
        let g = Tensor::ones(5, DType::F32, &dev)?;
        assert!(y.apply_op2(&g, Backward(Unary::Tanh)).is_err());
        Ok(())
    }
}

#[cfg(all(test, feature = "cuda-emulation"))]
#[path = "activation_host_tests.rs"]
mod host_tests;
