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

/// Columns of a near-square grid of `n` tiles.
pub fn grid_columns(n: usize) -> usize {
    (1..=n.max(1)).find(|c| c * c >= n).unwrap_or(1)
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
    viz::save_image_grid(&path, &title, &tiles, grid_columns(tiles.len()))?;
    train::say!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::grid_columns;

    #[test]
    fn grids_are_near_square() {
        let cols: Vec<usize> = [1, 6, 9, 10, 32, 64, 96].map(grid_columns).to_vec();
        assert_eq!(cols, [1, 3, 3, 4, 6, 8, 10]);
    }
}
