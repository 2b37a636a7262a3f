//! Tensors and numbers to PNG pictures: titled matrix panels, captioned image grids,
//! convolution filters and feature maps, training curves and confusion matrices.
//!
//! Every figure is drawn with `plotters` into an in-memory RGB buffer and written as PNG
//! through the `image` crate. Text uses the embedded DejaVu Sans font, so nothing depends on
//! fonts installed on the machine, and the same input always gives the same bytes.
//! Each `save_*` function documents the pixel size of the figure it writes.

mod canvas;
mod colormap;
mod confusion;
mod curves;
mod grid;
mod number;
mod panels;
mod text;
mod tiles;

pub use colormap::ColorMap;
pub use confusion::save_confusion;
pub use curves::{save_curves, EpochPoint, CURVES_HEIGHT, CURVES_WIDTH};
pub use grid::{grid_columns, save_image_grid, save_square_grid, Tile};
pub use number::{format_value, format_value_precisely};
pub use panels::{check_panels, save_panels, save_panels_shared, Panel};
pub use text::missing_glyphs;
pub use tiles::tensor_tiles;
