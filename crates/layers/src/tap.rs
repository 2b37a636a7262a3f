//! Taking one stage of a network's forward pass as a leaf of the autograd graph, so that the
//! gradient with respect to that activation can be read (Candle keeps gradients of variables
//! only): what Grad-CAM needs, as PyTorch's `register_hook` on an activation.
//!
//! Networks pass each stage output they continue from through [`stage`]; outside [`capture`]
//! it returns the tensor unchanged.

use std::cell::RefCell;

use candle_core::{Result, Tensor, Var};

thread_local! {
    static TAP: RefCell<Option<(String, Option<Var>)>> = const { RefCell::new(None) };
}

/// The stage output `t` named `name`, or, while [`capture`] asks for this name, a variable with
/// its values that the rest of the pass continues from.
///
/// # Errors
/// The variable cannot be made (a tensor operation fails).
pub fn stage(name: &str, t: Tensor) -> Result<Tensor> {
    TAP.with(|tap| match &mut *tap.borrow_mut() {
        Some((wanted, slot)) if wanted == name => {
            let var = Var::from_tensor(&t.detach())?;
            let leaf = var.as_tensor().clone();
            *slot = Some(var);
            Ok(leaf)
        }
        _ => Ok(t),
    })
}

/// Runs `forward` (on this thread) with stage `name` taken as a variable; returns its result and
/// that variable (`None` when the network has no such stage).
///
/// # Errors
/// `forward` fails, or the stage variable cannot be made.
pub fn capture<T>(name: &str, forward: impl FnOnce() -> Result<T>) -> Result<(T, Option<Var>)> {
    TAP.with(|tap| *tap.borrow_mut() = Some((name.to_string(), None)));
    let result = forward();
    let var = TAP
        .with(|tap| tap.borrow_mut().take())
        .and_then(|(_, var)| var);
    Ok((result?, var))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_captured_stage_gets_a_gradient() -> Result<()> {
        let x = Tensor::new(&[1f32, 2., 3.], &Device::Cpu)?;
        let forward = || -> Result<Tensor> {
            let a = stage("a", x.sqr()?)?;
            (a * 2.0)?.sum_all()
        };
        let (y, var) = capture("a", forward)?;
        let var = var.expect("stage a");
        let grads = y.backward()?;
        let g = grads.get(var.as_tensor()).expect("gradient");
        assert_eq!(g.to_vec1::<f32>()?, [2., 2., 2.]);
        let (_, none) = capture("b", forward)?;
        assert!(none.is_none());
        // Outside capture the tensor passes unchanged.
        assert!(!stage("a", x.clone())?.is_variable());
        Ok(())
    }
}
