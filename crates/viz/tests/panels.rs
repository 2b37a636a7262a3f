//! `save_panels`: layout size, colours, values and error handling.

mod common;

use anyhow::Result;
use candle_core::{Device, Tensor};
use common::{assert_figure, load, pixel, region};
use viz::{save_panels, ColorMap, Panel};

fn panel(title: &str, rows: usize, cols: usize, values: Vec<f32>) -> Panel {
    Panel {
        title: title.to_string(),
        rows,
        cols,
        values,
    }
}

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|v| v as f32).collect()
}

#[test]
fn input_kernel_result_has_documented_size() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("conv.png");
    let panels = [
        panel("input", 5, 5, ramp(25)),
        panel(
            "kernel",
            3,
            3,
            vec![0.0, 1.0, 0.0, 1.0, -4.0, 1.0, 0.0, 1.0, 0.0],
        ),
        panel("result", 3, 3, ramp(9).iter().map(|v| v * 0.25).collect()),
    ];
    save_panels(&path, &panels, ColorMap::Viridis)?;
    // cell = clamp(720 / 5, 6, 56) = 56; slots 280, 168, 168.
    let img = load(&path);
    assert_figure(&img, (32 + 280 + 168 + 168 + 2 * 32, 32 + 32 + 5 * 56));
    Ok(())
}

#[test]
fn identical_panels_draw_identically_and_different_ones_differ() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (same, different) = (dir.path().join("same.png"), dir.path().join("diff.png"));
    let a = panel("m", 3, 3, ramp(9));
    let b = panel("m", 3, 3, ramp(9).iter().map(|v| 8.0 - v).collect());
    save_panels(&same, &[a.clone(), a.clone()], ColorMap::Gray)?;
    save_panels(&different, &[a, b], ColorMap::Gray)?;
    // Slots are 3 * 56 = 168 wide starting at x = 16 and 16 + 168 + 32; the cells start at
    // y = 16 + 32.
    let (first, second, size) = ((16, 48), (216, 48), (168, 168));
    let same = load(&same);
    assert_eq!(region(&same, first, size), region(&same, second, size));
    let different = load(&different);
    assert_ne!(
        region(&different, first, size),
        region(&different, second, size)
    );
    assert_eq!(region(&same, first, size), region(&different, first, size));
    Ok(())
}

#[test]
fn cells_take_colour_map_colours() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("cells.png");
    save_panels(
        &path,
        &[panel("gray", 1, 2, vec![-1.0, 3.0])],
        ColorMap::Gray,
    )?;
    let img = load(&path);
    // One 1x2 panel: slot 120 wide, cells of 56 centred in it from x = 16 + 4.
    let (left, top) = (16 + (120 - 112) / 2, 48);
    assert_eq!(pixel(&img, left + 3, top + 3), [0, 0, 0]);
    assert_eq!(pixel(&img, left + 56 + 3, top + 3), [255, 255, 255]);
    // The value is printed: the middle of the black cell holds light (text) pixels.
    let middle = region(&img, (left + 8, top + 18), (40, 20));
    assert!(middle.iter().any(|p| p[0] > 128), "no text in the cell");

    let viridis = dir.path().join("viridis.png");
    save_panels(
        &viridis,
        &[panel("v", 1, 2, vec![0.0, 1.0])],
        ColorMap::Viridis,
    )?;
    let img = load(&viridis);
    assert_eq!(pixel(&img, left + 3, top + 3), [68, 1, 84]);
    assert_eq!(pixel(&img, left + 56 + 3, top + 3), [253, 231, 37]);
    Ok(())
}

#[test]
fn large_matrices_shrink_cells() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("big.png");
    save_panels(&path, &[panel("28x28", 28, 28, ramp(784))], ColorMap::Gray)?;
    // cell = 720 / 28 = 25: a 700-pixel panel, no values printed.
    assert_figure(&load(&path), (32 + 700, 32 + 32 + 700));
    Ok(())
}

#[test]
fn long_titles_widen_their_slot() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("long.png");
    let title = "max pool 2x2, stride 1, padding 0";
    save_panels(&path, &[panel(title, 2, 2, ramp(4))], ColorMap::Gray)?;
    let img = load(&path);
    // Without the title the slot would be max(2 * 56, 120) = 120.
    assert!(img.width() > 32 + 120 + 100, "width {}", img.width());
    assert_eq!(img.height(), 32 + 32 + 2 * 56);
    Ok(())
}

#[test]
fn panels_from_tensors() -> Result<()> {
    let t = Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((1, 1, 2, 3))?;
    let p = Panel::from_tensor("t", &t)?;
    assert_eq!((p.rows, p.cols, p.values.len()), (2, 3, 6));
    assert_eq!(p.values[5], 5.0);
    let not_a_matrix = Tensor::zeros((2, 2, 2), candle_core::DType::F32, &Device::Cpu)?;
    assert!(Panel::from_tensor("t", &not_a_matrix).is_err());
    Ok(())
}

#[test]
fn bad_panels_are_errors_and_write_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.png");
    assert!(save_panels(&path, &[], ColorMap::Gray).is_err());
    assert!(save_panels(&path, &[panel("zero", 0, 3, vec![])], ColorMap::Gray).is_err());
    let err = save_panels(&path, &[panel("short", 2, 2, vec![1.0; 3])], ColorMap::Gray)
        .expect_err("3 values for a 2x2 panel");
    assert!(format!("{err:#}").contains("short"), "{err:#}");
    assert!(!path.exists());
    Ok(())
}

#[test]
fn output_is_deterministic() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    let panels = [panel("x", 2, 2, vec![0.5, -1.25, 3.0, 1e-3])];
    save_panels(&a, &panels, ColorMap::Viridis)?;
    save_panels(&b, &panels, ColorMap::Viridis)?;
    assert_eq!(std::fs::read(a)?, std::fs::read(b)?);
    Ok(())
}

/// `save_panels_shared` gives one value one colour in every panel (pooling's input and
/// output), where `save_panels` scales each panel over its own range.
#[test]
fn a_shared_scale_gives_a_value_one_colour_in_every_panel() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let counting: Vec<f32> = (1..=16).map(|v| v as f32).collect();
    let panels = [
        panel("a", 4, 4, counting),
        panel("b", 2, 2, vec![6.0, 8.0, 14.0, 16.0]),
    ];
    let (shared, own) = (dir.path().join("shared.png"), dir.path().join("own.png"));
    viz::save_panels_shared(&shared, &panels, ColorMap::Viridis)?;
    save_panels(&own, &panels, ColorMap::Viridis)?;
    // cell = 720 / 4 = 56; slots 224 and 120 (2 * 56 = 112 centred in it): the first panel's
    // cells from x = 16, the second's from 16 + 224 + 32 + 4; cell corners away from the text.
    let first =
        |img: &image::RgbImage, r: u32, c: u32| pixel(img, 16 + c * 56 + 3, 48 + r * 56 + 3);
    let second =
        |img: &image::RgbImage, r: u32, c: u32| pixel(img, 276 + c * 56 + 3, 48 + r * 56 + 3);
    let shared = load(&shared);
    assert_eq!(
        first(&shared, 1, 1),
        second(&shared, 0, 0),
        "6 in both panels"
    );
    assert_eq!(
        first(&shared, 3, 3),
        second(&shared, 1, 1),
        "16 in both panels"
    );
    assert_eq!(
        first(&shared, 3, 3),
        [253, 231, 37],
        "16, the maximum, is yellow"
    );
    let own = load(&own);
    assert_eq!(
        second(&own, 0, 0),
        [68, 1, 84],
        "6, the second panel's minimum"
    );
    assert_ne!(first(&own, 1, 1), second(&own, 0, 0));
    Ok(())
}
