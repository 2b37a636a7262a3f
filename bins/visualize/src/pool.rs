//! `visualize pool`: max and average pooling of the tutorial's 4x4 feature map.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Module;
use clap::Args;

use crate::geometry::{explain_sizes, SizeRule};
use crate::matrix::{bad_option, Matrix};

/// Options of `pool`.
#[derive(Debug, Args)]
pub struct PoolArgs {
    /// The feature map: rows separated by `;`, values by `,` ("1,2;3,4"), or `@FILE`
    /// (one row a line). Default: the tutorial's 4x4 map 1..16.
    #[arg(long, conflicts_with = "input_file", allow_hyphen_values = true)]
    input: Option<String>,
    /// Reads the feature map from a file (one row a line).
    #[arg(long)]
    input_file: Option<PathBuf>,
    /// Side of the square pooling window.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    kernel: u16,
    /// Step of the window; defaults to the kernel size, as in PyTorch.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    stride: Option<u16>,
    /// Implicit padding on every side (at most half the kernel, as in PyTorch, and 64).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    padding: u16,
}

/// Max- and average-pools `input` through [`layers::Pool2d`] (PyTorch's `MaxPool2d` and
/// `AvgPool2d` with `count_include_pad=True`, floor mode).
pub fn pool(input: &Matrix, kernel: usize, stride: usize, padding: usize) -> Result<[Matrix; 2]> {
    let x = input.to_batch()?;
    let run = |layer: layers::Pool2d| -> Result<Matrix> {
        layer
            .output_size(input.rows, input.cols)
            .context("cannot pool this input")?;
        Matrix::from_tensor(&layer.forward(&x).context("pooling failed")?)
    };
    Ok([
        run(layers::Pool2d::max(kernel, stride).padding(padding))?,
        run(layers::Pool2d::avg(kernel, stride).padding(padding))?,
    ])
}

/// Runs `pool`: prints the map, both results and the size rule, writes `pool.png` in `out`
/// (the three panels on one colour scale: each value one colour throughout).
pub fn run(args: &PoolArgs, out: &Path) -> Result<()> {
    let input = Matrix::from_options(args.input.as_deref(), args.input_file.as_deref())
        .with_context(|| bad_option("--input", args.input_file.is_some()))?
        .unwrap_or_else(|| Matrix::counting(4));
    let kernel = usize::from(args.kernel);
    let stride = usize::from(args.stride.unwrap_or(args.kernel));
    let padding = usize::from(args.padding);
    let [max, avg] = pool(&input, kernel, stride, padding)?;
    avg.check_finite("the average pooling's result")?;
    let height = SizeRule {
        n: input.rows,
        k: kernel,
        s: stride,
        p: padding,
    };
    let width = SizeRule {
        n: input.cols,
        ..height
    };

    let mut short = format!("{kernel}x{kernel}");
    if stride != kernel {
        short.push_str(&format!(", stride {stride}"));
    }
    if padding > 0 {
        short.push_str(&format!(", padding {padding}"));
    }
    let window = format!("{kernel}x{kernel}, stride {stride}, padding {padding}");
    // The padding is implicit (PyTorch's): max pooling never picks it, average pooling
    // counts it as zeros (count_include_pad=True), so the input is drawn as given.
    let input_title = match padding {
        0 => "input".to_string(),
        p => format!("input (padding {p} not drawn)"),
    };
    let panels = [
        input.panel(&input_title),
        max.panel(&format!("max pool {short}")),
        avg.panel(&format!("average pool {short}")),
    ];
    // Before the matrices are printed: a picture too large to draw is said at once.
    viz::check_panels(&panels).context("cannot draw pool.png")?;
    train::say!("input ({}x{}):\n{input}", input.rows, input.cols);
    train::say!("{}", explain_sizes(height, width)?);
    if padding > 0 {
        train::say!(
            "padding {padding}: max pooling pads with -inf (never the maximum), average pooling \
             with zeros that count in each window's mean (PyTorch's count_include_pad=True)"
        );
    }
    train::say!("max pool {window}:\n{max}");
    train::say!("average pool {window}:\n{avg}");

    let path = out.join("pool.png");
    train::atomic::write_with(&path, |tmp| {
        viz::save_panels_shared(tmp, &panels, viz::ColorMap::Viridis)
    })?;
    train::say!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tutorial_pooling() -> Result<()> {
        let [max, avg] = pool(&Matrix::counting(4), 2, 2, 0)?;
        assert_eq!(max.values, [6., 8., 14., 16.]);
        assert_eq!(avg.values, [3.5, 5.5, 11.5, 13.5]);
        assert_eq!((avg.rows, avg.cols), (2, 2));
        Ok(())
    }

    #[test]
    fn overlapping_and_padded_windows() -> Result<()> {
        let [max, avg] = pool(&Matrix::counting(4), 3, 1, 1)?;
        assert_eq!((max.rows, max.cols), (4, 4));
        // Top-left window covers 1, 2, 5, 6 and five padded cells.
        assert_eq!(max.values[0], 6.);
        assert_eq!(avg.values[0], 14. / 9.);
        let err = pool(&Matrix::counting(2), 3, 1, 0).unwrap_err();
        assert!(
            format!("{err:#}").contains("smaller than the kernel"),
            "{err:#}"
        );
        Ok(())
    }
}
