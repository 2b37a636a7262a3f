//! Renders one example of every figure into a directory (default `/tmp/viz-examples`), so they
//! can be looked at: `cargo run -p viz --example render_examples -- [DIR]`.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use viz::{
    save_confusion, save_curves, save_image_grid, save_panels, tensor_tiles, ColorMap, EpochPoint,
    Panel, Tile,
};

/// A 28x28 grey "digit": a ring whose radius depends on `k`.
fn ring(k: usize) -> Tile {
    let radius = 5.0 + k as f32;
    let data = (0..28 * 28)
        .map(|i| {
            let (y, x) = ((i / 28) as f32 - 13.5, (i % 28) as f32 - 13.5);
            let d = ((x * x + y * y).sqrt() - radius).abs();
            (255.0 * (1.0 - d / 2.5).max(0.0)) as u8
        })
        .collect();
    Tile {
        channels: 1,
        height: 28,
        width: 28,
        data,
        caption: format!("label {k}"),
        highlight: false,
    }
}

/// A 32x32 colour gradient standing in for a CIFAR image.
fn gradient(k: usize, caption: &str) -> Tile {
    let plane = 32 * 32;
    let mut data = vec![0u8; 3 * plane];
    for i in 0..plane {
        let (y, x) = (i / 32, i % 32);
        data[i] = (x * 8) as u8;
        data[plane + i] = (y * 8) as u8;
        data[2 * plane + i] = ((k * 40 + x * y / 4) % 256) as u8;
    }
    Tile {
        channels: 3,
        height: 32,
        width: 32,
        data,
        caption: caption.to_string(),
        highlight: false,
    }
}

fn main() -> Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or("/tmp/viz-examples".into()),
    );
    let device = Device::Cpu;

    let input: Vec<f32> = (0..25).map(|v| (v % 7) as f32).collect();
    let kernel: [f32; 9] = [0.0, -1.0, 0.0, -1.0, 5.0, -1.0, 0.0, -1.0, 0.0];
    let x = Tensor::from_vec(input.clone(), (1, 1, 5, 5), &device)?;
    let k = Tensor::from_vec(kernel.to_vec(), (1, 1, 3, 3), &device)?;
    let y = x.conv2d(&k, 0, 1, 1, 1)?;
    let panels = [
        Panel::from_tensor("input", &x)?,
        Panel::from_tensor("kernel", &k)?,
        Panel::from_tensor("result", &y)?,
    ];
    save_panels(&dir.join("conv_gray.png"), &panels, ColorMap::Gray)?;
    let pooled = [
        Panel::from_tensor("feature map", &(y.clone() / 3.0)?)?,
        Panel::from_tensor(
            "max pool 2x2, stride 1",
            &(y.max_pool2d_with_stride(2, 1)? / 3.0)?,
        )?,
    ];
    save_panels(&dir.join("pool_viridis.png"), &pooled, ColorMap::Viridis)?;

    let digits: Vec<Tile> = (0..10).map(ring).collect();
    save_image_grid(
        &dir.join("mnist_grid.png"),
        "MNIST training samples",
        &digits,
        5,
    )?;

    let classes = ["cat", "ship", "automobile", "frog", "horse", "truck"];
    let predictions: Vec<Tile> = classes
        .iter()
        .enumerate()
        .map(|(i, truth)| {
            let predicted = if i % 3 == 1 { "airplane" } else { truth };
            let mut tile = gradient(i, &format!("true: {truth}\npred: {predicted}"));
            tile.highlight = predicted != *truth;
            tile
        })
        .collect();
    save_image_grid(
        &dir.join("predictions.png"),
        "Predictions (red: wrong)",
        &predictions,
        3,
    )?;

    let filters = Tensor::randn(0f32, 1f32, (16, 3, 11, 11), &device)?;
    save_image_grid(
        &dir.join("filters_rgb.png"),
        "conv1 filters",
        &tensor_tiles(&filters, false)?,
        8,
    )?;
    let maps = Tensor::randn(0f32, 1f32, (1, 8, 14, 14), &device)?.relu()?;
    save_image_grid(
        &dir.join("feature_maps.png"),
        "conv2 feature maps",
        &tensor_tiles(&maps, true)?,
        4,
    )?;

    let points: Vec<EpochPoint> = (1..=20)
        .map(|epoch| {
            let e = epoch as f64;
            EpochPoint {
                epoch,
                train_loss: 2.3 * (-0.25 * e).exp() + 0.05,
                train_acc: 1.0 - 0.85 * (-0.3 * e).exp(),
                test_loss: 2.2 * (-0.2 * e).exp() + 0.12,
                test_acc: 0.97 - 0.8 * (-0.28 * e).exp(),
            }
        })
        .collect();
    save_curves(&dir.join("curves.png"), "LeNet-5 on MNIST", &points)?;
    save_curves(&dir.join("curves_one_epoch.png"), "one epoch", &points[..1])?;

    let cifar = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ];
    let matrix: Vec<Vec<u64>> = (0..10)
        .map(|r| {
            (0..10)
                .map(|c| {
                    if r == c {
                        800 + 13 * r as u64
                    } else {
                        ((r * 7 + c * 3) % 40) as u64
                    }
                })
                .collect()
        })
        .collect();
    let names: Vec<String> = cifar.iter().map(|s| s.to_string()).collect();
    save_confusion(
        &dir.join("confusion_cifar.png"),
        "Confusion matrix",
        &matrix,
        &names,
    )?;
    let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    save_confusion(
        &dir.join("confusion_mnist.png"),
        "Confusion matrix",
        &matrix,
        &digits,
    )?;
    println!("wrote examples to {}", dir.display());
    Ok(())
}
