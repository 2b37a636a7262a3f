//! `visualize filters`: the first layer's kernels as an image grid.

use std::path::Path;

use anyhow::Result;
use clap::Args;

use crate::model::ModelArgs;

/// Options of `filters`.
#[derive(Debug, Args)]
pub struct FiltersArgs {
    #[command(flatten)]
    model: ModelArgs,
}

/// Runs `filters`: writes `filters.png` in `out`, one tile per kernel (in colour for RGB
/// input), each normalised on its own from black (minimum) to white (maximum).
pub fn run(args: &FiltersArgs, out: &Path) -> Result<()> {
    let model = args.model.load()?;
    let (name, weight) = model.first_conv()?;
    let dims = weight.dims();
    train::say!("{}: {}", model.spec.name, model.origin);
    train::say!(
        "first layer {name}: {} kernels of {}x{}x{}",
        dims[0],
        dims[1],
        dims[2],
        dims[3]
    );
    let tiles = viz::tensor_tiles(&weight, false)?;
    let title = format!("{} {name}", model.spec.name);
    let path = out.join("filters.png");
    train::atomic::write_with(&path, |tmp| viz::save_square_grid(tmp, &title, &tiles))?;
    train::say!(
        "wrote {} (each kernel over its own range: its smallest weight black, its largest \
         white{})",
        path.display(),
        match dims[1] {
            3 => ", its three input channels as one colour image",
            _ => "",
        }
    );
    Ok(())
}
