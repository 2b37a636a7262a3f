//! PyTorch's memory formats for 4-D activations: `torch.contiguous_format` ((N, C, H, W) in
//! that order in memory) and `torch.channels_last` (the same logical (N, C, H, W) tensor with
//! the channels innermost, as (N, H, W, C) in memory).
//!
//! A channels-last tensor here is what PyTorch's is: a view with shape (N, C, H, W) and strides
//! (H·W·C, 1, W·C, C), made by [`to_channels_last`]. Shapes, indexing and results do not
//! change, only the order in memory. On CUDA with the `cudnn` feature the convolutions and
//! batch norms run cuDNN's NHWC kernels on such tensors (tensor cores read NHWC natively; in
//! NCHW cuDNN transposes around its bf16 kernels), and the layers of this crate hand on their
//! output in their input's format, as PyTorch's do. Elsewhere (the CPU, and layers without an
//! NHWC kernel) a layer computes in (N, C, H, W) order and converts its output back, so the
//! results are the same, with one copy more each way.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use layers::memory_format::{is_channels_last, to_channels_last};
//! # fn main() -> candle_core::Result<()> {
//! let x = Tensor::arange(0f32, 24., &Device::Cpu)?.reshape((1, 2, 3, 4))?;
//! let y = to_channels_last(&x)?;
//! assert!(is_channels_last(&y) && !y.is_contiguous());
//! assert_eq!(y.dims(), x.dims());
//! // The same values, in another order in memory.
//! assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, x.flatten_all()?.to_vec1::<f32>()?);
//! # Ok(()) }
//! ```

use std::cell::Cell;

use candle_core::{Result, Shape, Tensor};

thread_local! {
    static PREFERRED: Cell<MemoryFormat> = const { Cell::new(MemoryFormat::Contiguous) };
}

/// The format this thread's layers prefer for a tensor that is both contiguous and
/// channels-last (one channel, such as MNIST's images, or a 1x1 map): with `ChannelsLast` a
/// convolution on CUDA takes such an input in cuDNN's NHWC kernels and hands on channels-last,
/// as PyTorch's channels-last model does; the memory is the same either way. Set by
/// [`prefer`].
pub fn preferred() -> MemoryFormat {
    PREFERRED.with(Cell::get)
}

/// Restores the previous preference when dropped.
#[derive(Debug)]
#[must_use = "the preference ends when the guard is dropped"]
pub struct Guard {
    previous: MemoryFormat,
}

impl Drop for Guard {
    fn drop(&mut self) {
        PREFERRED.with(|p| p.set(self.previous));
    }
}

/// Prefers `format` on this thread until the guard is dropped (see [`preferred`]); a model
/// run in a format sets it for its forward pass (`train::engine::InMemoryFormat`).
pub fn prefer(format: MemoryFormat) -> Guard {
    Guard {
        previous: PREFERRED.with(|p| p.replace(format)),
    }
}

/// The order of a 4-D activation in memory, PyTorch's `torch.memory_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryFormat {
    /// (N, C, H, W) in that order: `torch.contiguous_format`, the default.
    #[default]
    Contiguous,
    /// (N, H, W, C) in memory, the channels innermost: `torch.channels_last`.
    ChannelsLast,
}

impl MemoryFormat {
    /// PyTorch's name without `torch.`: `contiguous_format` or `channels_last`.
    pub fn name(self) -> &'static str {
        match self {
            MemoryFormat::Contiguous => "contiguous_format",
            MemoryFormat::ChannelsLast => "channels_last",
        }
    }

    /// `t` in this format: [`to_channels_last`], or `t.contiguous()`. A tensor of another rank
    /// than 4 is returned as it is for `ChannelsLast` (PyTorch's `Tensor.to(memory_format=...)`
    /// refuses it; a batch of vectors has no channels to move).
    ///
    /// # Errors
    /// The copy failed (out of memory).
    pub fn apply(self, t: &Tensor) -> Result<Tensor> {
        match self {
            MemoryFormat::Contiguous => t.contiguous(),
            MemoryFormat::ChannelsLast if t.rank() == 4 => to_channels_last(t),
            MemoryFormat::ChannelsLast => Ok(t.clone()),
        }
    }
}

impl std::fmt::Display for MemoryFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MemoryFormat {
    type Err = String;

    /// `contiguous_format` (or `contiguous`) and `channels_last`, `-` taken for `_`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.replace('-', "_").as_str() {
            "contiguous" | "contiguous_format" => Ok(MemoryFormat::Contiguous),
            "channels_last" => Ok(MemoryFormat::ChannelsLast),
            _ => Err(format!(
                "unknown memory format {s:?}: expected contiguous_format or channels_last"
            )),
        }
    }
}

/// Whether `t` is a 4-D tensor in the channels-last layout and not also plainly contiguous
/// (for one channel or a 1x1 map both hold, and such a tensor counts as contiguous): shape
/// (N, C, H, W), strides (H·W·C, 1, W·C, C), dimensions of size 1 aside. PyTorch's
/// `t.is_contiguous(memory_format=torch.channels_last)` for the tensors where the two differ.
pub fn is_channels_last(t: &Tensor) -> bool {
    let (d, s) = (t.dims(), t.stride());
    t.rank() == 4
        && !t.is_contiguous()
        && Shape::from(vec![d[0], d[2], d[3], d[1]]).is_contiguous(&[s[0], s[2], s[3], s[1]])
}

/// `t` (N, C, H, W) as a channels-last tensor: the same shape and values, the channels
/// innermost in memory (one copy, none when it already is). PyTorch:
/// `t.to(memory_format=torch.channels_last)`.
///
/// # Errors
/// `t` is not 4-D.
pub fn to_channels_last(t: &Tensor) -> Result<Tensor> {
    if t.rank() != 4 {
        candle_core::bail!(
            "channels_last needs a 4-D (N, C, H, W) tensor, got shape {:?}",
            t.dims()
        )
    }
    if is_channels_last(t) {
        return Ok(t.clone());
    }
    t.permute((0, 2, 3, 1))?.contiguous()?.permute((0, 3, 1, 2))
}

/// Whether the layers take `t` as channels-last: it is ([`is_channels_last`]), or it is
/// contiguous and channels-last at once (one channel, or a 1x1 map) while channels-last is
/// [`preferred`].
pub fn takes_channels_last(t: &Tensor) -> bool {
    is_channels_last(t)
        || (preferred() == MemoryFormat::ChannelsLast
            && t.rank() == 4
            && t.is_contiguous()
            && t.permute((0, 2, 3, 1)).is_ok_and(|v| v.is_contiguous()))
}

/// `torch.cat(ts, dim=1)`: (N, C_i, H, W) tensors joined along the channels. Channels-last
/// when every part is (joined along the channels of their (N, H, W, C) views), otherwise
/// Candle's `Tensor::cat`; the values are the same either way.
///
/// # Errors
/// No parts, or parts whose other dimensions, dtypes or devices differ.
pub fn cat_channels(ts: &[&Tensor]) -> Result<Tensor> {
    let views: Option<Vec<Tensor>> = ts.iter().map(|t| nhwc(t).ok().flatten()).collect();
    match views {
        Some(views) if !views.is_empty() => from_nhwc(&Tensor::cat(&views, 3)?),
        _ => Tensor::cat(ts, 1),
    }
}

/// The contiguous (N, H, W, C) tensor behind a channels-last `t` (a view, no copy), or `None`
/// when `t` is not channels-last. While channels-last is [`preferred`], also for a 4-D `t`
/// that is contiguous and channels-last at once (one channel, or a 1x1 map).
pub(crate) fn nhwc(t: &Tensor) -> Result<Option<Tensor>> {
    match takes_channels_last(t) {
        true => Ok(Some(t.permute((0, 2, 3, 1))?)),
        false => Ok(None),
    }
}

/// The (N, C, H, W) view of a contiguous (N, H, W, C) tensor: channels-last.
pub(crate) fn from_nhwc(t: &Tensor) -> Result<Tensor> {
    t.permute((0, 3, 1, 2))
}

/// `f(t)` in `t`'s memory format: for a channels-last `t`, `f` runs on a contiguous copy and
/// its (4-D) result is converted to channels-last (a layer without an NHWC kernel, as PyTorch's
/// fallbacks do); otherwise `f(t)`.
pub(crate) fn keep(t: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    match is_channels_last(t) {
        true => {
            let ys = f(&t.contiguous()?)?;
            match ys.rank() {
                4 => to_channels_last(&ys),
                _ => Ok(ys),
            }
        }
        false => f(t),
    }
}

/// An element-wise `f` of `t` in its memory format: on the (N, H, W, C) view of a
/// channels-last `t` (no copy), otherwise on `t`.
pub(crate) fn map(t: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    match nhwc(t)? {
        Some(v) => from_nhwc(&f(&v)?),
        None => f(t),
    }
}

/// An element-wise `f` of `a` and `b` (one shape) in their memory format: on both (N, H, W, C)
/// views when both are channels-last, otherwise on the tensors (a contiguous result).
pub(crate) fn map2(
    a: &Tensor,
    b: &Tensor,
    f: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    match (nhwc(a)?, nhwc(b)?) {
        (Some(va), Some(vb)) => from_nhwc(&f(&va, &vb)?),
        _ => f(a, b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn sample(dims: (usize, usize, usize, usize)) -> Result<Tensor> {
        let len = dims.0 * dims.1 * dims.2 * dims.3;
        Tensor::arange(0f32, len as f32, &Device::Cpu)?.reshape(dims)
    }

    fn values(t: &Tensor) -> Result<Vec<f32>> {
        t.flatten_all()?.to_vec1::<f32>()
    }

    #[test]
    fn channels_last_keeps_values_and_puts_channels_innermost() -> Result<()> {
        let x = sample((2, 3, 4, 5))?;
        assert!(!is_channels_last(&x));
        let y = to_channels_last(&x)?;
        assert!(is_channels_last(&y));
        assert_eq!(y.dims(), &[2, 3, 4, 5]);
        assert_eq!(y.stride(), &[60, 1, 15, 3]);
        assert_eq!(values(&x)?, values(&y)?);
        // Converting again copies nothing; back to contiguous gives the original order.
        assert_eq!(to_channels_last(&y)?.stride(), y.stride());
        assert!(MemoryFormat::Contiguous.apply(&y)?.is_contiguous());
        // One channel or a 1x1 map: both layouts at once, counted as contiguous.
        for dims in [(2, 1, 4, 5), (2, 3, 1, 1)] {
            let t = to_channels_last(&sample(dims)?)?;
            assert!(t.is_contiguous() && !is_channels_last(&t));
        }
        // Not 4-D: an error naming the shape; `apply` leaves it.
        let v = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu)?;
        let err = to_channels_last(&v).unwrap_err().to_string();
        assert!(err.contains("[2, 3]"), "{err}");
        assert_eq!(MemoryFormat::ChannelsLast.apply(&v)?.dims(), &[2, 3]);
        Ok(())
    }

    #[test]
    fn a_preference_takes_one_channel_inputs_as_channels_last() -> Result<()> {
        let one = sample((2, 1, 4, 5))?;
        let many = sample((2, 3, 4, 5))?;
        assert!(nhwc(&one)?.is_none() && nhwc(&many)?.is_none());
        {
            let _cl = prefer(MemoryFormat::ChannelsLast);
            assert_eq!(preferred(), MemoryFormat::ChannelsLast);
            let v = nhwc(&one)?.expect("an (N, H, W, C) view");
            assert!(v.is_contiguous() && v.dims() == [2, 4, 5, 1]);
            // A contiguous tensor of several channels is no channels-last one.
            assert!(nhwc(&many)?.is_none());
            {
                let _plain = prefer(MemoryFormat::Contiguous);
                assert!(nhwc(&one)?.is_none());
            }
            assert!(nhwc(&one)?.is_some());
        }
        assert_eq!(preferred(), MemoryFormat::Contiguous);
        Ok(())
    }

    #[test]
    fn channels_join_in_the_parts_format() -> Result<()> {
        let (a, b) = (sample((2, 3, 4, 5))?, (sample((2, 2, 4, 5))? * -1.0)?);
        let plain = Tensor::cat(&[&a, &b], 1)?;
        let (ca, cb) = (to_channels_last(&a)?, to_channels_last(&b)?);
        let joined = cat_channels(&[&ca, &cb])?;
        assert!(is_channels_last(&joined));
        assert_eq!(values(&joined)?, values(&plain)?);
        // Mixed formats: Candle's join (not channels-last), the same values.
        let mixed = cat_channels(&[&ca, &b])?;
        assert!(!is_channels_last(&mixed));
        assert_eq!(values(&mixed)?, values(&plain)?);
        assert!(cat_channels(&[]).is_err());
        Ok(())
    }

    #[test]
    fn names_are_pytorchs() {
        for f in [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast] {
            assert_eq!(f.name().parse::<MemoryFormat>(), Ok(f));
        }
        assert_eq!(
            "channels-last".parse::<MemoryFormat>(),
            Ok(MemoryFormat::ChannelsLast)
        );
        assert!("nhwc".parse::<MemoryFormat>().is_err());
    }

    #[test]
    fn element_wise_helpers_keep_the_format_and_its_gradients() -> Result<()> {
        // Channels-last views of two (N, H, W, C) variables.
        let nhwc_var = |scale: f64| -> Result<Var> {
            let t = (sample((2, 3, 4, 5))? * scale)?.permute((0, 2, 3, 1))?;
            Var::from_tensor(&t.contiguous()?)
        };
        let (vx, vy) = (nhwc_var(1.0)?, nhwc_var(-0.5)?);
        let (x, y) = (from_nhwc(vx.as_tensor())?, from_nhwc(vy.as_tensor())?);
        assert!(is_channels_last(&x) && is_channels_last(&y));
        let s = map2(&x, &y, |a, b| a + b)?;
        assert!(is_channels_last(&s));
        let r = map(&s, |t| t.relu())?;
        assert!(is_channels_last(&r));
        let k = keep(&r, |t| {
            assert!(t.is_contiguous());
            t.affine(2.0, 1.0)
        })?;
        assert!(is_channels_last(&k));
        let plain = (x.contiguous()? + y.contiguous()?)?
            .relu()?
            .affine(2.0, 1.0)?;
        assert_eq!(values(&k)?, values(&plain)?);
        let grads = k.sqr()?.sum_all()?.backward()?;
        let plain_grads = plain.sqr()?.sum_all()?.backward()?;
        for v in [&vx, &vy] {
            let g = grads.get(v.as_tensor()).expect("a gradient");
            let p = plain_grads.get(v.as_tensor()).expect("a gradient");
            assert!(g.is_contiguous());
            assert_eq!(values(g)?, values(p)?);
        }
        Ok(())
    }

    fn address(t: &Tensor) -> usize {
        let (storage, layout) = t.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(s) => {
                let data = s.as_slice::<f32>().expect("f32");
                data[layout.start_offset()..].as_ptr() as usize
            }
            _ => unreachable!("CPU tensors only"),
        }
    }

    /// A tensor used twice gets the sum of its two gradients, the same bits as Candle's `add`
    /// of them: below and above the size from which `vendor/`'s backward sums them across
    /// rayon's pool (65,536 values), contiguous and channels-last.
    #[test]
    fn gradient_sums_are_candles_additions_bit_for_bit() -> Result<()> {
        let dev = Device::Cpu;
        for (dims, cl) in [
            ((2, 3, 5, 7), false),
            ((2, 8, 64, 64), false),
            ((3, 8, 64, 61), false),
            ((3, 8, 64, 61), true),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., dims, &dev)?)?;
            let (a, b) = (
                Tensor::randn(0f32, 1., dims, &dev)?,
                Tensor::randn(0f32, 1., dims, &dev)?,
            );
            // d/dx of sum(x·a) + sum(x·b): a, then b added to it (channels-last both, where
            // `cl`: the products of channels-last operands).
            let layout = |t: &Tensor| {
                if cl {
                    to_channels_last(t)
                } else {
                    Ok(t.clone())
                }
            };
            let (xa, xb) = (layout(x.as_tensor())?, layout(x.as_tensor())?);
            let loss = ((xa * layout(&a)?)?.sum_all()? + (xb * layout(&b)?)?.sum_all()?)?;
            let grads = loss.backward()?;
            let got = values(grads.get(x.as_tensor()).expect("a gradient"))?;
            let want = values(&(&a + &b)?)?;
            assert_eq!(got.len(), want.len());
            let differs = got
                .iter()
                .zip(&want)
                .position(|(g, w)| g.to_bits() != w.to_bits());
            assert_eq!(
                differs, None,
                "{dims:?} channels-last {cl}: first value that differs"
            );
            // Both gradients views 7 values into their buffers (`Shifted`'s backward).
            let shifted = || x.as_tensor().apply_op1(Shifted);
            let loss = ((shifted()? * &a)?.sum_all()? + (shifted()? * &b)?.sum_all()?)?;
            let got = values(loss.backward()?.get(x.as_tensor()).expect("a gradient"))?;
            let differs = got
                .iter()
                .zip(&want)
                .position(|(g, w)| g.to_bits() != w.to_bits());
            assert_eq!(
                differs, None,
                "{dims:?}: a shifted gradient, first value that differs"
            );
        }
        Ok(())
    }

    /// Identity on the CPU whose backward hands back `scale · grad` (a new buffer) and records
    /// the address of the gradient it gave (`gave`) and of the one it received (`got`); with
    /// `keep`, it also keeps both tensors alive (so that no address is reused), else neither
    /// (so that it holds no gradient the backward pass could otherwise reuse). Clones share the
    /// records.
    #[derive(Clone)]
    struct Addresses {
        scale: f64,
        keep: bool,
        gave: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
        got: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
        kept: std::sync::Arc<std::sync::Mutex<Vec<Tensor>>>,
    }

    impl Addresses {
        fn new(scale: f64, keep: bool) -> Self {
            Addresses {
                scale,
                keep,
                gave: Default::default(),
                got: Default::default(),
                kept: Default::default(),
            }
        }
    }

    impl candle_core::CustomOp1 for Addresses {
        fn name(&self) -> &'static str {
            "addresses"
        }

        fn cpu_fwd(
            &self,
            s: &candle_core::CpuStorage,
            l: &candle_core::Layout,
        ) -> Result<(candle_core::CpuStorage, Shape)> {
            identity_fwd(s, l)
        }

        fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
            let out = (grad * self.scale)?;
            self.got.lock().expect("addresses").push(address(grad));
            self.gave.lock().expect("addresses").push(address(&out));
            if self.keep {
                let mut kept = self.kept.lock().expect("addresses");
                kept.extend([grad.clone(), out.clone()]);
            }
            Ok(Some(out))
        }
    }

    /// A tensor used twice whose first gradient is held by nothing else gets the second added
    /// into that buffer (no new one the size of the gradient): the op before it receives the
    /// sum where the first gradient was written, and the sum is the same bits as `add`'s.
    #[test]
    fn a_later_gradient_is_added_into_the_first_in_place() -> Result<()> {
        let dev = Device::Cpu;
        // Above the 65,536 values from which the sums run across the pool (and in place).
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 8, 64, 72), &dev)?)?;
        let (before, first, second) = (
            Addresses::new(1.0, false),
            Addresses::new(2.0, false),
            Addresses::new(3.0, false),
        );
        let t = x.as_tensor().apply_op1(before.clone())?;
        let loss =
            (t.apply_op1(first.clone())?.sum_all()? + t.apply_op1(second.clone())?.sum_all()?)?;
        let grads = loss.backward()?;
        // d/dt = 2 + 3, into whichever of the two buffers came first.
        let got = before.got.lock().expect("addresses").clone();
        let gave = [&first, &second].map(|a| a.gave.lock().expect("addresses")[0]);
        assert_eq!(got.len(), 1);
        assert!(gave.contains(&got[0]), "the sum went to a new buffer");
        let g = values(grads.get(x.as_tensor()).expect("a gradient"))?;
        assert!(g.iter().all(|v| v.to_bits() == 5f32.to_bits()));
        Ok(())
    }

    /// A gradient that two tensors share (an addition hands its output gradient to both inputs)
    /// is not changed in place when a later gradient reaches one of them. In
    /// `(u + u·b)·a` the addition hands `a` to `u` and to `u·b`; the product's backward then
    /// adds `a·b` to `u`'s while it still needs `a` for `b`'s gradient, `a·u`.
    #[test]
    fn a_shared_gradient_is_not_summed_in_place() -> Result<()> {
        let dev = Device::Cpu;
        let dims = (2, 8, 64, 72);
        let (u, b) = (
            Var::from_tensor(&Tensor::randn(0f32, 1., dims, &dev)?)?,
            Var::from_tensor(&Tensor::randn(0f32, 1., dims, &dev)?)?,
        );
        let a = Tensor::randn(0f32, 1., dims, &dev)?;
        let (ut, bt) = (u.as_tensor(), b.as_tensor());
        let loss = ((ut + (ut * bt)?)? * &a)?.sum_all()?;
        let grads = loss.backward()?;
        for (v, want) in [(&u, (&a + (&a * bt)?)?), (&b, (&a * ut)?)] {
            let got = values(grads.get(v.as_tensor()).expect("a gradient"))?;
            let differs = got
                .iter()
                .zip(&values(&want)?)
                .position(|(g, w)| g.to_bits() != w.to_bits());
            assert_eq!(differs, None, "first value that differs");
        }
        Ok(())
    }

    /// The test ops' forward: a contiguous f32 copy of the input.
    fn identity_fwd(
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        let data = s.as_slice::<f32>()?;
        let n = l.shape().elem_count();
        let data = data[l.start_offset()..l.start_offset() + n].to_vec();
        Ok((candle_core::CpuStorage::F32(data), l.shape().clone()))
    }

    /// The identity, whose backward hands back the gradient as a contiguous view that starts 7
    /// values into a larger buffer.
    struct Shifted;

    impl candle_core::CustomOp1 for Shifted {
        fn name(&self) -> &'static str {
            "shifted"
        }

        fn cpu_fwd(
            &self,
            s: &candle_core::CpuStorage,
            l: &candle_core::Layout,
        ) -> Result<(candle_core::CpuStorage, Shape)> {
            identity_fwd(s, l)
        }

        fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
            let junk = Tensor::full(f32::NAN, 7, grad.device())?;
            let n = grad.elem_count();
            let view = Tensor::cat(&[&junk, &grad.flatten_all()?], 0)?
                .narrow(0, 7, n)?
                .reshape(grad.shape())?;
            assert_eq!(view.layout().start_offset(), 7, "a view into the buffer");
            Ok(Some(view))
        }
    }

    #[test]
    fn a_channels_last_gradient_reaches_the_op_before_it_uncopied() -> Result<()> {
        // up (N, H, W, C) -> first probe -> channels-last x -> second probe on x's (N, H, W, C)
        // view -> loss. The gradient the second probe gives travels back through two
        // permutes and a channels-last (N, C, H, W) gradient to the first probe: the same
        // buffer when Candle's backward keeps the channels-last gradient (vendor/'s patch).
        let up = Var::from_tensor(&sample((2, 4, 5, 3))?)?;
        let (first, second) = (Addresses::new(2.0, true), Addresses::new(2.0, true));
        let x = from_nhwc(&up.as_tensor().apply_op1(first.clone())?)?;
        assert!(is_channels_last(&x));
        let x2 = map(&x, |v| v.apply_op1(second.clone()))?;
        assert!(is_channels_last(&x2));
        let grads = x2.sum_all()?.backward()?;
        assert_eq!(
            values(grads.get(up.as_tensor()).expect("a gradient"))?,
            vec![4.0; 120]
        );
        let (got, gave) = (first.got.lock().unwrap(), second.gave.lock().unwrap());
        assert_eq!((got.len(), gave.len()), (1, 1));
        assert_eq!(got[0], gave[0], "the gradient was copied on the way");
        Ok(())
    }
}
