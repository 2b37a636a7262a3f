//! PyTorch's unbatched inputs: `nn.Conv2d`, `F.max_pool2d`, `F.avg_pool2d` and
//! `F.adaptive_avg_pool2d` take one image `(C, H, W)` as a batch of one and hand back
//! `(C', H', W')`; `nn.BatchNorm2d`, and so torchvision's models, refuse it.

use candle_core::{Result, Tensor};

/// What an error about one image `(C, H, W)` where a batch is wanted adds.
pub(crate) const ONE_IMAGE: &str =
    " (one image (C, H, W): xs.unsqueeze(0) makes it a batch of one)";

/// `f(xs)` for a batch `(N, C, H, W)` (or any other rank, which `f` checks); for one image
/// `(C, H, W)`, `f` of it as a batch of one, that batch's dimension removed again (an error
/// names the image's own shape).
pub(crate) fn or_one_image(
    xs: &Tensor,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    match xs.rank() {
        3 => match f(&xs.unsqueeze(0)?) {
            Ok(ys) => ys.squeeze(0),
            Err(e) => Err(e.context(format!(
                "(the input of shape {:?} taken as one image (C, H, W), a batch of one)",
                xs.dims()
            ))),
        },
        _ => f(xs),
    }
}

/// An error unless `xs` is a batch of images `(N, C, H, W)`, as torchvision's models take
/// them: their first layer takes one image unbatched, as PyTorch's, where a later one (a batch
/// norm, a flatten) would refuse it or read it otherwise; one image is named with the way to
/// a batch of one. `model` names the network in the message.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let image = Tensor::zeros((3, 32, 32), DType::F32, &Device::Cpu)?;
/// let err = layers::check_images(&image, "AlexNet").unwrap_err().to_string();
/// assert!(err.contains("xs.unsqueeze(0)"));
/// assert!(layers::check_images(&image.unsqueeze(0)?, "AlexNet").is_ok());
/// # Ok::<(), candle_core::Error>(())
/// ```
///
/// # Errors
/// `xs` is not of rank 4.
pub fn check_images(xs: &Tensor, model: &str) -> Result<()> {
    if xs.rank() != 4 {
        candle_core::bail!(
            "{model} takes images (N, C, H, W), got an input of shape {:?}{}",
            xs.dims(),
            if xs.rank() == 3 { ONE_IMAGE } else { "" }
        )
    }
    Ok(())
}
