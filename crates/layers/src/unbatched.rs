//! PyTorch's unbatched inputs: `nn.Conv2d`, `F.max_pool2d`, `F.avg_pool2d` and
//! `F.adaptive_avg_pool2d` take one image `(C, H, W)` as a batch of one and hand back
//! `(C', H', W')`.

use candle_core::{Result, Tensor};

/// `f(xs)` for a batch `(N, C, H, W)` (or any other rank, which `f` checks); for one image
/// `(C, H, W)`, `f` of it as a batch of one, that batch's dimension removed again.
pub(crate) fn or_one_image(
    xs: &Tensor,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    match xs.rank() {
        3 => f(&xs.unsqueeze(0)?)?.squeeze(0),
        _ => f(xs),
    }
}
