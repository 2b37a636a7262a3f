//! PyTorch's `torch.no_grad()`: while a [`no_grad`] guard lives, this thread's layers
//! ([`Conv2d`](crate::Conv2d), [`BatchNorm`](crate::BatchNorm), [`Linear`](crate::Linear))
//! compute from detached inputs and parameters, so no autograd graph is recorded and every
//! activation is freed as soon as the next layer has read it. The values are the same bit for
//! bit; in evaluation mode a convolution's batch norm (and ReLU, and residual join) then runs
//! in place on the convolution's output, one pass instead of three or four.
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! use candle_core::{Device, Tensor, Var};
//! let w = Var::from_tensor(&Tensor::ones((2, 3), candle_core::DType::F32, &Device::Cpu)?)?;
//! let linear = layers::Linear::new(w.as_tensor().clone(), None);
//! let x = Tensor::ones((1, 3), candle_core::DType::F32, &Device::Cpu)?;
//! let y = {
//!     let _no_grad = layers::no_grad();
//!     assert!(!layers::is_grad_enabled());
//!     candle_core::Module::forward(&linear, &x)?
//! };
//! assert!(!y.track_op()); // nothing to back-propagate through
//! assert!(layers::is_grad_enabled());
//! # Ok(()) }
//! ```
//!
//! Like PyTorch's, the setting is per thread and nests; other code (Candle's own operations)
//! still records a graph when its inputs need one.

use std::cell::Cell;

use candle_core::Tensor;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether this thread's layers record gradients (`torch.is_grad_enabled()`): true unless a
/// [`no_grad`] guard lives.
pub fn is_grad_enabled() -> bool {
    ENABLED.with(Cell::get)
}

/// Restores the previous setting when dropped.
#[derive(Debug)]
#[must_use = "no_grad ends when the guard is dropped"]
pub struct NoGradGuard {
    previous: bool,
    /// The setting is this thread's: the guard stays on it (not `Send`).
    thread: std::marker::PhantomData<*const ()>,
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        ENABLED.with(|e| e.set(self.previous));
    }
}

/// Stops this thread's layers recording gradients until the guard is dropped, as `with
/// torch.no_grad():` (inference, a test pass).
pub fn no_grad() -> NoGradGuard {
    NoGradGuard {
        previous: ENABLED.with(|e| e.replace(false)),
        thread: std::marker::PhantomData,
    }
}

/// Whether, under [`no_grad`], any of `ts` is still tracked (and the layer should run again on
/// detached copies).
pub(crate) fn detach_first(ts: &[Option<&Tensor>]) -> bool {
    !is_grad_enabled() && ts.iter().flatten().any(|t| t.track_op())
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module, Result, Tensor, Var};
    use candle_nn::ModuleT;

    use crate::batch_norm::EVAL_IN_PLACE_RUNS;
    use crate::test_values::{bits, values};
    use crate::{conv_cfg, BatchNorm, Conv2d, Linear, Pool2d};

    fn tensor(shape: &[usize], seed: u32) -> Result<Tensor> {
        let n = shape.iter().product();
        Tensor::from_vec(values(n, seed), shape, &Device::Cpu)
    }

    /// A convolution (weight a variable, as a training program's) and a batch norm with running
    /// statistics away from 0 and 1.
    fn block(cin: usize, cout: usize, k: usize, stride: usize) -> Result<(Conv2d, BatchNorm)> {
        let w = Var::from_tensor(&(tensor(&[cout, cin, k, k], 3)? * 0.4)?)?;
        let conv = Conv2d::new(w.as_tensor().clone(), None, conv_cfg(stride, k / 2));
        let bn = BatchNorm::new(
            (tensor(&[cout], 5)? * 0.3)?,
            (tensor(&[cout], 7)?.abs()? + 0.5)?,
            Var::from_tensor(&(tensor(&[cout], 9)? + 1.0)?)?
                .as_tensor()
                .clone(),
            Var::from_tensor(&(tensor(&[cout], 11)? * 0.2)?)?
                .as_tensor()
                .clone(),
            1e-5,
            0.1,
        )?;
        Ok((conv, bn))
    }

    /// In evaluation mode under `no_grad` a convolution's batch norm, ReLU and residual join
    /// run in the convolution's op (the image-by-image convolution on each block of output
    /// rows) or in place on its output, with the bits of the graph-recording path:
    /// `relu(bn(conv))`, `bn(conv)`, `relu(bn(conv) + residual)` and the stem's
    /// `pool(relu(bn(conv)))`, over image-by-image outputs (8x8: Winograd's 3x3 and an im2col
    /// 3x3 and 1x1; 6x6 with 5x5 and 3x3 strided kernels), whole-batch (2x2) outputs and a direct first layer,
    /// in float32 and under bf16 autocast (16 channels: bf16 products), with a NaN, zeros and
    /// infinities in the input. Nothing comes out tracked; with gradients on, the outputs are
    /// tracked and neither path runs.
    #[test]
    fn no_grad_evaluation_has_the_bits_of_the_graph_path() -> Result<()> {
        let pool = Pool2d::max(3, 2).padding(1);
        // The last: a first layer (three input channels), the direct convolution.
        // (size, kernel, stride, input channels)
        let shapes = [
            (8, 3, 1, 16),
            (8, 3, 1, 5),
            (8, 1, 1, 5),
            (12, 5, 2, 5),
            (12, 3, 2, 5),
            (4, 3, 2, 5),
            (16, 7, 2, 3),
        ];
        for precision in [None, Some(DType::BF16)] {
            let _autocast = crate::autocast::set(precision);
            for (hw, k, stride, cin) in shapes {
                // 16 output channels under bf16 (bf16 products) and for the first shape
                // (Winograd's, which takes 16 and more both ways).
                let cout = if precision.is_some() || cin >= 16 {
                    16
                } else {
                    6
                };
                let (conv, bn) = block(cin, cout, k, stride)?;
                let mut x = values(2 * cin * hw * hw, 13);
                x[3] = f32::NAN;
                x[4] = f32::INFINITY;
                x[10..20].fill(0.0);
                let x = Tensor::from_vec(x, (2, cin, hw, hw), &Device::Cpu)?;
                let out = (hw + 2 * (k / 2) - k) / stride + 1;
                let residual = tensor(&[2, cout, out, out], 17)?;
                let cases = |conv: &Conv2d, bn: &BatchNorm| -> Result<Vec<Tensor>> {
                    Ok(vec![
                        conv.forward_batch_norm(&x, bn, true, false)?,
                        conv.forward_batch_norm(&x, bn, false, false)?,
                        conv.forward_batch_norm_add_relu(&x, bn, &residual, false)?,
                        conv.forward_batch_norm_relu_pool(&x, bn, &pool, false)?,
                    ])
                };
                let runs = || EVAL_IN_PLACE_RUNS.with(|r| r.get());
                let in_conv = || crate::conv::cpu::EVAL_IN_CONV_RUNS.with(|r| r.get());
                let (before, before_in_conv) = (runs(), in_conv());
                let tracked = cases(&conv, &bn)?;
                assert_eq!((runs(), in_conv()), (before, before_in_conv));
                assert!(tracked.iter().all(Tensor::track_op));
                let untracked = {
                    let _no_grad = crate::no_grad();
                    cases(&conv, &bn)?
                };
                let at = format!("{precision:?} {hw}x{hw}, {k}x{k} stride {stride}");
                assert_eq!(runs(), before + 4, "{at}");
                // Outputs of 4x4 and more run image by image, the batch norm in the
                // convolution's op, but for a first layer (three channels here) that the
                // direct convolution takes: with AVX-512 or AVX2, where its products are not bf16.
                // (With `onednn`, some go to oneDNN, the batch norm then after its op.)
                let bf16_products =
                    precision.is_some() && crate::autocast::cpu_bf16_kernel_active();
                let direct = cin <= 4 && !bf16_products && crate::conv::direct::active();
                let image_by_image = out >= 4 && !direct;
                if !cfg!(feature = "onednn") {
                    assert_eq!(
                        in_conv() - before_in_conv,
                        4 * image_by_image as usize,
                        "{at}"
                    );
                }
                for (i, (a, b)) in tracked.iter().zip(&untracked).enumerate() {
                    assert!(!b.track_op());
                    assert_eq!(bits(a)?, bits(b)?, "case {i}, {at}");
                }
                // The unfused reference: bn(conv(x)) then relu / the join, as separate operations.
                let y = conv.forward(&x)?;
                assert_eq!(
                    bits(&untracked[1])?,
                    bits(&bn.forward_t(&y, false)?)?,
                    "{at}"
                );
                assert_eq!(
                    bits(&untracked[0])?,
                    bits(&bn.forward_relu(&y, false)?)?,
                    "{at}"
                );
                let joined = crate::add_relu(&bn.forward_t(&y, false)?, &residual)?;
                assert_eq!(bits(&untracked[2])?, bits(&joined)?, "{at}");
            }
        }
        Ok(())
    }

    /// Training mode under `no_grad` records no graph and moves the running statistics as with
    /// gradients on (as `torch.no_grad()` does); a linear layer's output is untracked too, with
    /// the same values; the setting nests and ends with its guard.
    #[test]
    fn no_grad_training_mode_and_linear() -> Result<()> {
        let x = tensor(&[3, 5, 6, 6], 21)?;
        let (conv_a, bn_a) = block(5, 4, 3, 1)?;
        let (conv_b, bn_b) = block(5, 4, 3, 1)?;
        let a = conv_a.forward_batch_norm(&x, &bn_a, true, true)?;
        let b = {
            let _outer = crate::no_grad();
            let b = {
                let _inner = crate::no_grad();
                conv_b.forward_batch_norm(&x, &bn_b, true, true)?
            };
            assert!(!crate::is_grad_enabled());
            b
        };
        assert!(crate::is_grad_enabled());
        assert!(a.track_op() && !b.track_op());
        assert_eq!(bits(&a)?, bits(&b)?);
        // The same running statistics after: evaluation mode agrees.
        let (ea, eb) = (
            bn_a.forward_t(&a, false)?.detach(),
            bn_b.forward_t(&b, false)?,
        );
        assert_eq!(bits(&ea)?, bits(&eb)?);

        let w = Var::from_tensor(&tensor(&[3, 8], 23)?)?;
        let bias = Var::from_tensor(&tensor(&[3], 25)?)?;
        let linear = Linear::new(w.as_tensor().clone(), Some(bias.as_tensor().clone()));
        let z = tensor(&[4, 8], 27)?;
        let with = linear.forward(&z)?;
        let without = {
            let _no_grad = crate::no_grad();
            linear.forward(&z)?
        };
        assert!(with.track_op() && !without.track_op());
        assert_eq!(bits(&with)?, bits(&without)?);
        assert_eq!(without.dtype(), DType::F32);
        Ok(())
    }
}
