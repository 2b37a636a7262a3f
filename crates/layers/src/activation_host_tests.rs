//! With `cuda-emulation`: the kernels of `src/cuda/activation.cu`, compiled as C++ for the CPU
//! by the build script (`ptx-build`'s `host`) and run one thread at a time as their CUDA
//! launches run them, against this module's CPU passes (f32) and PyTorch's bf16 rules (f32
//! arithmetic, rounded to nearest even once), so that they are checked on machines without a
//! GPU. On a GPU, `tests/cuda.rs` compares the real launches.

use candle_core::{Device, Result, Tensor};
use half::bf16;

extern "C" {
    fn relu_f32(x: *const f32, y: *mut f32, n: u32);
    fn relu_bf16(x: *const bf16, y: *mut bf16, n: u32);
    fn tanh_f32(x: *const f32, y: *mut f32, n: u32);
    fn tanh_bf16(x: *const bf16, y: *mut bf16, n: u32);
    fn add_relu_f32(a: *const f32, b: *const f32, y: *mut f32, n: u32);
    fn add_relu_bf16(a: *const bf16, b: *const bf16, y: *mut bf16, n: u32);
    fn relu_bwd_f32(y: *const f32, g: *const f32, dx: *mut f32, n: u32);
    fn relu_bwd_bf16(y: *const bf16, g: *const bf16, dx: *mut bf16, n: u32);
    fn tanh_bwd_f32(y: *const f32, g: *const f32, dx: *mut f32, n: u32);
    fn tanh_bwd_bf16(y: *const bf16, g: *const bf16, dx: *mut bf16, n: u32);
}

type Unary<T> = unsafe extern "C" fn(*const T, *mut T, u32);
type Binary<T> = unsafe extern "C" fn(*const T, *const T, *mut T, u32);

/// `kernel` over `x` as `activation_cuda.rs` launches it (Cudarc's `for_num_elems`: blocks of
/// 1024 threads), each thread in turn.
fn unary<T: Copy + Default>(kernel: Unary<T>, x: &[T]) -> Vec<T> {
    let mut y = vec![T::default(); x.len()];
    launch(x.len(), || unsafe {
        kernel(x.as_ptr(), y.as_mut_ptr(), x.len() as u32)
    });
    y
}

fn binary<T: Copy + Default>(kernel: Binary<T>, a: &[T], b: &[T]) -> Vec<T> {
    let mut y = vec![T::default(); a.len()];
    let n = a.len() as u32;
    launch(a.len(), || unsafe {
        kernel(a.as_ptr(), b.as_ptr(), y.as_mut_ptr(), n)
    });
    y
}

fn launch(n: usize, thread: impl FnMut()) {
    crate::cuda_host::launch(n.div_ceil(1024) as u32, 1024, thread);
}

/// Edge values (zeros of both signs, infinities, NaN of both signs, subnormals, the largest
/// finite values, numbers next to 0) and then pseudo-random ones of every magnitude up to
/// about 8, more than two blocks of threads in all; `seed` varies the random part.
fn values(seed: u64) -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(1),
        -f32::from_bits(1),
        f32::MAX,
        f32::MIN,
        1e-30,
        -1e-30,
        0.625,
        -0.625,
        9.5,
        -9.5,
    ];
    let mut state = seed;
    v.extend((0..2500).map(|_| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let unit = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        unit * 16.0 * if state & 1 == 0 { 1.0 } else { 1e-3 }
    }));
    v
}

fn tensor(v: &[f32]) -> Result<Tensor> {
    Tensor::from_slice(v, v.len(), &Device::Cpu)
}

fn same_bits(what: &str, got: &[f32], want: &[f32]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what}[{i}]: {g} against {w}"
        );
    }
}

/// Within `tol` of `want` relative to `scale`, NaN where `want` is.
fn close(what: &str, got: &[f32], want: &[f32], scale: &[f32], tol: f32) {
    for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else {
            g == w || (g - w).abs() <= tol * s.abs().max(f32::MIN_POSITIVE)
        };
        assert!(ok, "{what}[{i}]: {g} against {w}");
    }
}

fn wide(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

fn narrow(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

#[test]
fn float32_kernels_equal_the_cpu_passes() -> Result<()> {
    let (x, other, g) = (values(1), values(2), values(3));
    let relu = super::relu(&tensor(&x)?)?.to_vec1::<f32>()?;
    same_bits("relu", &unary(relu_f32, &x), &relu);
    let sum = super::add_relu(&tensor(&x)?, &tensor(&other)?)?.to_vec1::<f32>()?;
    same_bits("add_relu", &binary(add_relu_f32, &x, &other), &sum);
    let back = super::relu_backward(&tensor(&relu)?, &tensor(&g)?)?.to_vec1::<f32>()?;
    same_bits("relu_bwd", &binary(relu_bwd_f32, &relu, &g), &back);
    // The C library's tanhf (CUDA's, on a GPU) and this module's are each within 2 ulp.
    let tanh = super::tanh(&tensor(&x)?)?.to_vec1::<f32>()?;
    let ones = vec![1.0; x.len()];
    close("tanh", &unary(tanh_f32, &x), &tanh, &ones, 5e-7);
    let tanh_back = tensor(&tanh)?
        .apply_op2_no_bwd(&tensor(&g)?, &super::Backward(super::Unary::Tanh))?
        .to_vec1::<f32>()?;
    close(
        "tanh_bwd",
        &binary(tanh_bwd_f32, &tanh, &g),
        &tanh_back,
        &g,
        5e-7,
    );
    Ok(())
}

#[test]
fn bf16_kernels_follow_pytorchs_rules() -> Result<()> {
    let (x, other, g) = (narrow(&values(4)), narrow(&values(5)), narrow(&values(6)));
    let (xf, of, gf) = (wide(&x), wide(&other), wide(&g));
    let relu = |v: f32| if v <= 0.0 { 0.0 } else { v };
    let y: Vec<f32> = xf.iter().map(|&v| relu(v)).collect();
    same_bits("relu", &wide(&unary(relu_bf16, &x)), &y);
    // The sum rounded to bf16 (to nearest even), then the ReLU.
    let sum: Vec<f32> = (xf.iter().zip(&of))
        .map(|(a, b)| relu(bf16::from_f32(a + b).to_f32()))
        .collect();
    same_bits("add_relu", &wide(&binary(add_relu_bf16, &x, &other)), &sum);
    let y = narrow(&y);
    let back: Vec<f32> = (wide(&y).iter().zip(&gf))
        .map(|(&y, &g)| if y <= 0.0 { 0.0 } else { g })
        .collect();
    same_bits("relu_bwd", &wide(&binary(relu_bwd_bf16, &y, &g)), &back);
    // tanh in f32 (the C library's here, within 2 ulp), rounded once: within one bf16 step.
    let t: Vec<f32> = xf
        .iter()
        .map(|v| bf16::from_f32(v.tanh()).to_f32())
        .collect();
    let ones = vec![1.0; x.len()];
    close("tanh", &wide(&unary(tanh_bf16, &x)), &t, &ones, 1.0 / 128.0);
    let t = narrow(&t);
    let want: Vec<f32> = (wide(&t).iter().zip(&gf))
        .map(|(&y, &g)| bf16::from_f32(g * (1.0 - y * y)).to_f32())
        .collect();
    close(
        "tanh_bwd",
        &wide(&binary(tanh_bwd_bf16, &t, &g)),
        &want,
        &gf,
        1.0 / 128.0,
    );
    // NaN stays NaN through every kernel (quiet, either sign).
    let nan = [bf16::NAN, -bf16::NAN, bf16::from_bits(0x7f81)];
    for out in [unary(relu_bf16, &nan), unary(tanh_bf16, &nan)] {
        assert!(out.iter().all(|v| v.is_nan()), "{out:?}");
    }
    Ok(())
}
