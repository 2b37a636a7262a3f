//! `visualize conv`: the tutorial's convolution of a 5x5 input with a 3x3 kernel.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Module;
use clap::Args;

use crate::geometry::{explain_sizes, SizeRule};
use crate::matrix::{bad_option, Matrix};

/// The tutorial's input.
const INPUT: &str = "1,0,0,1,0; 0,1,1,0,1; 1,0,1,0,1; 0,1,0,1,0; 1,0,1,0,1";
/// The tutorial's kernel.
const KERNEL: &str = "1,0,1; 0,1,0; 1,0,1";

/// Options of `conv`.
#[derive(Debug, Args)]
pub struct ConvArgs {
    /// The input matrix: rows separated by `;`, values by `,` ("1,0;0,1"), or `@FILE`
    /// (one row a line). Default: the tutorial's 5x5 input.
    #[arg(long, conflicts_with = "input_file", allow_hyphen_values = true)]
    input: Option<String>,
    /// Reads the input matrix from a file (one row a line).
    #[arg(long)]
    input_file: Option<PathBuf>,
    /// The kernel, like --input. Default: the tutorial's 3x3 kernel [[1,0,1],[0,1,0],[1,0,1]].
    #[arg(long, conflicts_with = "kernel_file", allow_hyphen_values = true)]
    kernel: Option<String>,
    /// Reads the kernel from a file (one row a line).
    #[arg(long)]
    kernel_file: Option<PathBuf>,
    /// Step of the kernel in both directions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    stride: u16,
    /// Zeros added on every side of the input (0 to 64).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    padding: u16,
}

/// Convolves `input` with `kernel` through [`layers::Conv2d`] (one channel in and out, no
/// bias); errors, naming both sizes, when the kernel does not fit the padded input.
pub fn convolve(input: &Matrix, kernel: &Matrix, stride: usize, padding: usize) -> Result<Matrix> {
    rules(input, kernel, stride, padding)?;
    let conv = layers::Conv2d::new(kernel.to_batch()?, None, layers::conv_cfg(stride, padding));
    let out = conv
        .forward(&input.to_batch()?)
        .context("the convolution failed")?;
    Matrix::from_tensor(&out)
}

fn rules(
    input: &Matrix,
    kernel: &Matrix,
    stride: usize,
    padding: usize,
) -> Result<(SizeRule, SizeRule)> {
    let height = SizeRule {
        n: input.rows,
        k: kernel.rows,
        s: stride,
        p: padding,
    };
    let width = SizeRule {
        n: input.cols,
        k: kernel.cols,
        ..height
    };
    height.output("height")?;
    width.output("width")?;
    Ok((height, width))
}

/// Runs `conv`: prints the matrices and the size rule, writes `conv.png` in `out`.
pub fn run(args: &ConvArgs, out: &Path) -> Result<()> {
    let input = match Matrix::from_options(args.input.as_deref(), args.input_file.as_deref())
        .with_context(|| bad_option("--input", args.input_file.is_some()))?
    {
        Some(m) => m,
        None => Matrix::parse(INPUT)?,
    };
    let kernel = match Matrix::from_options(args.kernel.as_deref(), args.kernel_file.as_deref())
        .with_context(|| bad_option("--kernel", args.kernel_file.is_some()))?
    {
        Some(m) => m,
        None => Matrix::parse(KERNEL)?,
    };
    let (stride, padding) = (usize::from(args.stride), usize::from(args.padding));
    let (height, width) = rules(&input, &kernel, stride, padding)?;
    let result = convolve(&input, &kernel, stride, padding)?;
    result.check_finite("the convolution's result")?;
    let shown = if padding > 0 {
        input
            .padded(padding)
            .panel(&format!("input, padding {padding}"))
    } else {
        input.panel("input")
    };
    let result_title = match stride {
        1 => "result".to_string(),
        s => format!("result, stride {s}"),
    };
    let panels = [shown, kernel.panel("kernel"), result.panel(&result_title)];
    // Before the matrices are printed: a picture too large to draw is said at once.
    viz::check_panels(&panels).context("cannot draw conv.png")?;

    train::say!("input ({}x{}):\n{input}", input.rows, input.cols);
    train::say!("kernel ({}x{}):\n{kernel}", kernel.rows, kernel.cols);
    train::say!("stride {stride}, padding {padding}");
    train::say!("{}", explain_sizes(height, width)?);
    train::say!("result ({}x{}):\n{result}", result.rows, result.cols);

    let path = out.join("conv.png");
    train::atomic::write_with(&path, |tmp| {
        viz::save_panels(tmp, &panels, viz::ColorMap::Gray)
    })?;
    train::say!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tutorial_convolution() -> Result<()> {
        let input = Matrix::parse(INPUT)?;
        let kernel = Matrix::parse(KERNEL)?;
        let result = convolve(&input, &kernel, 1, 0)?;
        assert_eq!((result.rows, result.cols), (3, 3));
        assert_eq!(result.values, [4., 2., 2., 1., 4., 2., 5., 0., 5.]);
        Ok(())
    }

    #[test]
    fn stride_and_padding_follow_pytorch() -> Result<()> {
        let input = Matrix::parse(INPUT)?;
        let kernel = Matrix::parse(KERNEL)?;
        // Cross-correlation of the zero-padded 7x7 input, every second window (as PyTorch).
        let result = convolve(&input, &kernel, 2, 1)?;
        assert_eq!((result.rows, result.cols), (3, 3));
        assert_eq!(result.values, [2., 1., 0., 3., 4., 2., 2., 3., 2.]);
        Ok(())
    }

    #[test]
    fn oversized_kernel_is_refused() {
        let input = Matrix::counting(2);
        let err = convolve(&input, &Matrix::counting(3), 1, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("kernel height 3 is larger"), "{err}");
        assert!(convolve(&input, &Matrix::counting(3), 1, 1).is_ok());
    }
}
