//! The flat update: the parameters updated together (same dtype, device and step state) are
//! gathered into one flat tensor, with their gradients, the update's element-wise operations
//! run once over the flat tensors, and the new values are copied back into each parameter.
//! Between steps the optimizer state of such a group stays flat: each parameter's buffers are
//! views (`narrow` + `reshape`, no copy) of the group's flat buffers.
//!
//! On a GPU, a step is then `2N` copies to gather parameters and gradients, the update's 6 to 15
//! kernels once, and `N` copies back (`N` parameter tensors), where the per-tensor update
//! launches about 16 kernels (Adam) or 7 to 9 (SGD with momentum and weight decay) per tensor.
//! Every operation is element-wise, so each element sees the same operations in the same order
//! as in the per-tensor update: the results are identical bit for bit (on the CPU, where both
//! run the fused step; on CUDA the one-launch kernel and Candle's per-tensor operations agree
//! but for the sign of an exact zero, which Candle's products with a scalar make `+0.0`).
//!
//! The parameters themselves cannot be views of one flat tensor: the model holds one
//! [`candle_core::Var`] per tensor, each owning its storage, and Candle makes no variable out
//! of a view. Hence the gather and the copy back, one copy per tensor each.

use anyhow::Result;
use candle_core::{DType, Device, DeviceLocation, Tensor, Var};

/// How an optimizer applies its update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// Each parameter tensor by itself (Adam's f32 CPU tensors in one fused in-place pass
    /// each): the fastest on the CPU, where an operation costs no launch.
    PerTensor,
    /// All parameters of one dtype and step state at once, over flat tensors (see the module
    /// documentation): a few kernel launches per step on a GPU instead of several per tensor.
    /// Adam's `amsgrad` and the optimizers' `maximize` step per tensor whatever this says.
    Flat,
}

impl Update {
    /// [`Update::Flat`] on a GPU, [`Update::PerTensor`] on the CPU.
    pub fn for_device(device: &Device) -> Self {
        if device.is_cpu() {
            Self::PerTensor
        } else {
            Self::Flat
        }
    }

    /// [`Update::for_device`] of the first parameter's device (per tensor without parameters).
    pub(super) fn for_params(params: &[Var]) -> Self {
        params
            .first()
            .map_or(Self::PerTensor, |v| Self::for_device(v.device()))
    }
}

/// What decides which parameters update together: their dtype and device, and `K`, the
/// optimizer's per-parameter state the update's constants depend on (Adam's step count,
/// whether SGD has a momentum buffer yet).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct GroupKey<K> {
    dtype: DType,
    location: DeviceLocation,
    pub state: K,
}

impl<K> GroupKey<K> {
    pub(super) fn of(var: &Var, state: K) -> Self {
        Self {
            dtype: var.dtype(),
            location: var.device().location(),
            state,
        }
    }
}

/// The flat parameter `param` as a variable for the fused CPU step (`fused.rs`), where it and
/// its flat gradient are f32 on the CPU (a copy of `param`, which the step updates in place).
pub(super) fn fused_var(param: &Tensor, grad: &Tensor) -> Result<Option<Var>> {
    if !param.device().is_cpu() || param.dtype() != DType::F32 {
        return Ok(None);
    }
    // A group of one 1-D parameter gathers into that parameter's own variable, which
    // `Var::from_tensor` would share rather than copy.
    let var = match param.is_variable() {
        true => Var::from_tensor(&param.copy()?)?,
        false => Var::from_tensor(param)?,
    };
    Ok(super::fused::applies(&var, grad).then_some(var))
}

/// The indices of `keyed` in groups of equal keys, each in the order given, the groups in the
/// order of their first member.
pub(super) fn partition<K: PartialEq>(keyed: Vec<(usize, K)>) -> Vec<(K, Vec<usize>)> {
    let mut groups: Vec<(K, Vec<usize>)> = Vec::new();
    for (i, key) in keyed {
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    groups
}

/// Whether the flat step of these parameters and gradients runs as the one-launch kernel
/// (`multi_tensor.rs`): float32 CUDA tensors of storages of their own (or CPU ones, with
/// `cuda-emulation`).
pub(super) fn one_launch(vars: &[&Var], grads: &[&Tensor]) -> bool {
    #[cfg(any(feature = "cuda", feature = "cuda-emulation"))]
    return super::multi_tensor::takes(vars, grads);
    #[cfg(not(any(feature = "cuda", feature = "cuda-emulation")))]
    {
        let _ = (vars, grads);
        false
    }
}

/// `tensors` flattened and concatenated (one copy each; a single tensor is only flattened).
pub(super) fn gather<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> Result<Tensor> {
    let flat = tensors
        .into_iter()
        .map(|t| t.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&flat, 0)?)
}

/// The views of `flat` (from [`gather`]) in the shapes of `vars`, in order: no copy.
pub(super) fn views<'a>(
    flat: &Tensor,
    vars: impl IntoIterator<Item = &'a Var>,
) -> Result<Vec<Tensor>> {
    let mut at = 0;
    vars.into_iter()
        .map(|v| {
            let n = v.elem_count();
            let view = flat.narrow(0, at, n)?.reshape(v.shape())?;
            at += n;
            Ok(view)
        })
        .collect()
}

/// Copies the values of `flat` (from [`gather`]) into `vars`, one copy each.
pub(super) fn scatter<'a>(
    flat: &Tensor,
    vars: impl IntoIterator<Item = &'a Var> + Clone,
) -> Result<()> {
    for (var, value) in vars.clone().into_iter().zip(views(flat, vars)?) {
        var.set(&value)?;
    }
    Ok(())
}

/// The flat state buffers of the groups of the last step, by member list: what the members'
/// buffers are views of. A group updated again with the same members takes its buffers from
/// here instead of gathering them.
#[derive(Default)]
pub(super) struct Cache {
    groups: Vec<(Vec<usize>, Vec<Tensor>)>,
}

impl Cache {
    /// The cached flat buffers of exactly `members`, removed from the cache.
    pub(super) fn take(&mut self, members: &[usize]) -> Option<Vec<Tensor>> {
        let at = self.groups.iter().position(|(m, _)| m == members)?;
        Some(self.groups.swap_remove(at).1)
    }

    /// Remembers the flat `buffers` of `members`.
    pub(super) fn put(&mut self, members: Vec<usize>, buffers: Vec<Tensor>) {
        self.groups.push((members, buffers));
    }

    /// Forgets everything (the per-parameter buffers were replaced).
    pub(super) fn clear(&mut self) {
        self.groups.clear();
    }
}

#[cfg(test)]
mod tests;
