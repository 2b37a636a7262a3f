//! What the convolution examples share: one convolution case to time.

use candle_core::{Device, Result, Tensor, Var};
use candle_nn::Conv2dConfig;
use layers::Conv2d;

/// Random images `(n, cin, size, size)` (a variable, so that the input gradient is timed too,
/// except for a network's first layer of one to three channels, which needs none) and a
/// convolution `cin -> cout` with a `k` x `k` kernel, `stride` and `padding`, without bias.
pub fn conv_case(
    (n, cin, cout, size, k, stride, padding): (usize, usize, usize, usize, usize, usize, usize),
    dev: &Device,
) -> Result<(Tensor, Conv2d)> {
    let x = Tensor::randn(0f32, 1., (n, cin, size, size), dev)?;
    let x = match cin > 3 {
        true => Var::from_tensor(&x)?.as_tensor().clone(),
        false => x,
    };
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (cout, cin, k, k), dev)?)?;
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    Ok((x, Conv2d::new(w.as_tensor().clone(), None, cfg)))
}
