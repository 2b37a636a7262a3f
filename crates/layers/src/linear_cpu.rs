//! `F.linear(x, weight, bias)` for a contiguous f32 CPU (N, in) input as one custom op: one
//! GEMM forward (starting from the bias), and in the backward one GEMM per gradient plus the
//! bias's column sums.
//!
//! Built from Candle's operations a linear layer is four nodes (the weight's transpose, the
//! product, the bias's broadcast and the sum), each gradient accumulated into a zero-filled
//! buffer, and the weight's gradient arrives transposed and is then added up element by
//! element through the strided view. Here the weight's gradient is written (out, in) directly.
//! The GEMMs split over output blocks, never over the inner dimension, and the bias sums run
//! in a fixed order, so the result is the same for any number of threads.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use crate::per_channel::{f32_slice, with_f32};
use crate::products::{self, bf16_product};

/// Products from this many multiply-adds use the whole thread pool; smaller ones run on the
/// calling thread.
const PARALLEL_MACS: usize = 1 << 21;

/// `dst := dst (if accumulate) + lhs · rhs`, (m, n, k), each operand as (values, row stride,
/// column stride); with `bf16`, in the AVX512-BF16 kernel (operands rounded to bf16, float32
/// sums).
fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: (&mut [f32], usize, usize),
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    accumulate: bool,
    bf16: bool,
) -> Result<()> {
    let (d, drs, dcs) = dst;
    let (l, lrs, lcs) = lhs;
    let (r, rrs, rcs) = rhs;
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    if m * n * k == 0 {
        return Ok(());
    }
    if last(m, n, drs, dcs) >= d.len()
        || last(m, k, lrs, lcs) >= l.len()
        || last(k, n, rrs, rcs) >= r.len()
    {
        candle_core::bail!("linear: GEMM operands out of bounds")
    }
    let threads = match rayon::current_num_threads() {
        t if m * n * k >= PARALLEL_MACS => t,
        _ => 1,
    };
    let dst = (d, drs, dcs);
    if bf16 && crate::bf16_gemm::available() {
        let packed = crate::bf16_gemm::PackedLhs::new(m, k, lhs);
        let mut scratch = crate::bf16_gemm::Scratch::default();
        bf16_product(
            (m, n, k),
            dst,
            &packed,
            rhs,
            accumulate,
            threads,
            &mut scratch,
        );
    } else {
        products::gemm((m, n, k), dst, lhs, rhs, accumulate, threads);
    }
    Ok(())
}

/// `x W^T + b`: `x` (N, in), `weight` (out, in), `bias` (out), all contiguous f32 on the CPU;
/// the result is (N, out). With `bf16` (on a CPU with AVX512-BF16), the three products take
/// bf16 operands (input, weight and output gradient rounded) and sum in float32, as the
/// convolutions under bf16 autocast.
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor, bf16: bool) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LinearCpu { bf16 },
    )
}

struct LinearCpu {
    bf16: bool,
}

/// (N, in, out) of the three shapes, or an error.
fn dims(x: &Shape, w: &Shape, b: &Shape) -> Result<(usize, usize, usize)> {
    let (n, i) = x.dims2()?;
    let (o, wi) = w.dims2()?;
    if wi != i || b.dims() != [o] {
        candle_core::bail!(
            "linear: input {:?}, weight {:?} and bias {:?} do not fit together",
            x.dims(),
            w.dims(),
            b.dims()
        )
    }
    Ok((n, i, o))
}

impl CustomOp3 for LinearCpu {
    fn name(&self) -> &'static str {
        "linear-cpu"
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
        let op = self.name();
        let (n, i, o) = dims(xl.shape(), wl.shape(), bl.shape())?;
        let x = f32_slice(xs, xl, op, "input")?;
        let w = f32_slice(ws, wl, op, "weight")?;
        let b = f32_slice(bs, bl, op, "bias")?;
        // Every row starts as the bias; the product is added to it.
        let mut y: Vec<f32> = b.iter().copied().cycle().take(n * o).collect();
        gemm(
            (n, o, i),
            (&mut y, o, 1),
            (x, i, 1),
            (w, 1, i),
            true,
            self.bf16,
        )?;
        Ok((CpuStorage::F32(y), Shape::from((n, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, i, o) = dims(x.shape(), w.shape(), b.shape())?;
        if grad.dims() != [n, o] {
            candle_core::bail!(
                "linear: gradient {:?} for an output ({n}, {o})",
                grad.dims()
            )
        }
        let grad = grad.contiguous()?;
        let dev = x.device();
        let (gx, gw, gb) = on_f32(&grad, "gradient", |g| {
            let gx = match x.track_op() {
                true => Some(on_f32(w, "weight", |w| {
                    let mut gx = vec![0f32; n * i];
                    gemm(
                        (n, i, o),
                        (&mut gx, i, 1),
                        (g, o, 1),
                        (w, i, 1),
                        false,
                        self.bf16,
                    )?;
                    Ok(gx)
                })?),
                false => None,
            };
            let gw = match w.track_op() {
                true => Some(on_f32(x, "input", |x| {
                    let mut gw = vec![0f32; o * i];
                    gemm(
                        (o, i, n),
                        (&mut gw, i, 1),
                        (g, 1, o),
                        (x, i, 1),
                        false,
                        self.bf16,
                    )?;
                    Ok(gw)
                })?),
                false => None,
            };
            // The bias's gradient: the column sums of g, row after row.
            let mut gb = vec![0f32; o];
            for row in g.chunks_exact(o.max(1)) {
                for (s, v) in gb.iter_mut().zip(row) {
                    *s += v;
                }
            }
            Ok((gx, gw, gb))
        })?;
        Ok((
            gx.map(|v| Tensor::from_vec(v, (n, i), dev)).transpose()?,
            gw.map(|v| Tensor::from_vec(v, (o, i), dev)).transpose()?,
            b.track_op()
                .then(|| Tensor::from_vec(gb, o, dev))
                .transpose()?,
        ))
    }
}

/// `f` on the values of `t`, which must be contiguous f32 on the CPU (`what` names it).
fn on_f32<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    with_f32(t, f).unwrap_or_else(|| {
        candle_core::bail!("linear: the {what} must be a contiguous f32 CPU tensor")
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    /// Values and all three gradients against Candle's `x.matmul(w.t()) + b`, small and large
    /// enough for the parallel GEMM.
    #[test]
    fn linear_matches_candle_values_and_gradients() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (n, i, o) in [(3, 7, 5), (64, 3136, 128), (1, 4, 1)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, i), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (o, i), &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, o, &dev)?)?;
            let up = Tensor::randn(0f32, 1.0, (n, o), &dev)?;
            let ours = super::linear(&x, &w, &b, false)?;
            let theirs = x.matmul(&w.t()?)?.broadcast_add(&b)?;
            let close = |a: &Tensor, b: &Tensor, what: &str| -> candle_core::Result<()> {
                let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
                let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(
                    diff <= 1e-5 * scale,
                    "{what} ({n}, {i}, {o}) differs by {diff}"
                );
                Ok(())
            };
            close(&ours, &theirs, "output")?;
            let ga = (&ours * &up)?.sum_all()?.backward()?;
            let gb = (&theirs * &up)?.sum_all()?.backward()?;
            for (v, what) in [(&x, "input"), (&w, "weight"), (&b, "bias")] {
                close(ga.get(v).unwrap(), gb.get(v).unwrap(), what)?;
            }
        }
        Ok(())
    }

    #[test]
    fn mismatched_shapes_are_errors() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3), DType::F32, &dev)?;
        let w = Tensor::zeros((4, 5), DType::F32, &dev)?;
        let b = Tensor::zeros(4, DType::F32, &dev)?;
        assert!(super::linear(&x, &w, &b, false).is_err());
        let w = Tensor::zeros((4, 3), DType::F32, &dev)?;
        assert!(super::linear(&x, &w, &Tensor::zeros(3, DType::F32, &dev)?, false).is_err());
        assert!(super::linear(&x.flatten_all()?, &w, &b, false).is_err());
        Ok(())
    }

    /// With `bf16`: the float32 products of the bf16-rounded input, weight and output gradient
    /// (exact in float32), up to the order of the float32 sums.
    #[test]
    fn bf16_products_match_the_rounded_operands() -> candle_core::Result<()> {
        if !crate::bf16_gemm::available() {
            eprintln!("skipped: this CPU lacks AVX512-BF16");
            return Ok(());
        }
        let dev = Device::Cpu;
        let round = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
        for (n, i, o) in [(3, 7, 5), (64, 400, 120), (1, 4, 1)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, i), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (o, i), &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, o, &dev)?)?;
            let up = round(&Tensor::randn(0f32, 1.0, (n, o), &dev)?)?;
            let ours = super::linear(x.as_tensor(), w.as_tensor(), b.as_tensor(), true)?;
            let (xr, wr) = (
                round(x.as_tensor())?.detach(),
                round(w.as_tensor())?.detach(),
            );
            let theirs = xr.matmul(&wr.t()?)?.broadcast_add(b.as_tensor())?;
            let ga = (&ours * &up)?.sum_all()?.backward()?;
            let gx = up.matmul(&wr)?;
            let gw = up.t()?.matmul(&xr)?;
            let close = |a: &Tensor, b: &Tensor, what: &str| -> candle_core::Result<()> {
                let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
                assert!(diff <= 1e-5 * scale, "{n}x{i}x{o} {what}: {diff}");
                Ok(())
            };
            close(&ours, &theirs, "output")?;
            close(ga.get(&x).expect("grad"), &gx, "input grad")?;
            close(ga.get(&w).expect("grad"), &gw, "weight grad")?;
        }
        Ok(())
    }
}
