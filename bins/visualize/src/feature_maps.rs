//! `visualize feature-maps`: what each stage of a network makes of one image.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use datasets::{ColorMode, Rng, Transform, U8Image};

use crate::filters::grid_columns;
use crate::model::ModelArgs;

/// At most this many channels (or values) of a stage are drawn.
const MAX_CHANNELS: usize = 64;

/// Options of `feature-maps`.
#[derive(Debug, Args)]
pub struct FeatureMapsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The image to look at (PNG or JPEG, any size: resized and centre-cropped to the model's
    /// input).
    #[arg(long)]
    image: PathBuf,
}

/// The evaluation pipeline for a model whose native input is `(c, side, side)`, with the name
/// of its normalisation: grey images get MNIST's, 32x32 colour CIFAR-10's, larger colour
/// ImageNet's (`Resize(side * 256 / 224)` + `CenterCrop(side)`, torchvision's evaluation).
pub fn eval_transform(input: (usize, usize, usize)) -> Result<(Transform, &'static str)> {
    let (c, h, w) = input;
    ensure!(
        h == w,
        "only square model inputs are supported, not {h}x{w}"
    );
    Ok(match (c, h) {
        (1, _) => (Transform::mnist_test().resize(h).center_crop(h), "MNIST"),
        (3, 32) => (
            Transform::cifar10_test().resize(h).center_crop(h),
            "CIFAR-10",
        ),
        _ => (Transform::imagenet_eval(h), "ImageNet"),
    })
}

/// Decodes `path` and brings it to the model's input: returns the cropped image and the
/// normalised `(1, C, H, W)` batch.
pub fn prepare(path: &Path, input: (usize, usize, usize)) -> Result<(U8Image, Tensor)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mode = if input.0 == 1 {
        ColorMode::Gray
    } else {
        ColorMode::Rgb
    };
    let image = datasets::decode_image(&bytes, mode)
        .with_context(|| format!("cannot decode image {}", path.display()))?;
    let (transform, _) = eval_transform(input)?;
    let seen = transform.augment(image, &mut Rng::new(0))?;
    let mut values = vec![0f32; seen.data.len()];
    transform.normalization().write(&seen, &mut values)?;
    let batch = Tensor::from_vec(
        values,
        (1, seen.channels, seen.height, seen.width),
        &Device::Cpu,
    )?;
    Ok((seen, batch))
}

/// A file-name-safe version of a stage name.
pub fn file_stem(stage: &str) -> String {
    stage
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Draws one stage's activations for the first image of the batch: a grid of up to 64 channel
/// maps for `(N, C, H, W)`, a row of up to 64 values for `(N, F)`. `None` for other shapes.
fn save_stage(path: &Path, stage: &str, t: &Tensor) -> Result<Option<String>> {
    let first = t.get(0)?;
    match *first.dims() {
        [c, h, w] => {
            let shown = c.min(MAX_CHANNELS);
            let tiles = viz::tensor_tiles(&first.narrow(0, 0, shown)?, true)?;
            let title = if shown < c {
                format!("{stage}: first {shown} of {c} channels, {h}x{w}")
            } else {
                format!("{stage}: {c} channels, {h}x{w}")
            };
            viz::save_image_grid(path, &title, &tiles, grid_columns(tiles.len()))?;
            Ok(Some(title))
        }
        [f] => {
            let shown = f.min(MAX_CHANNELS);
            let values = first.narrow(0, 0, shown)?.to_vec1::<f32>()?;
            let title = if shown < f {
                format!("{stage}: first {shown} of {f} values")
            } else {
                format!("{stage}: {f} values")
            };
            let panel = viz::Panel {
                title: title.clone(),
                rows: 1,
                cols: shown,
                values,
            };
            viz::save_panels(path, &[panel], viz::ColorMap::Viridis)?;
            Ok(Some(title))
        }
        _ => Ok(None),
    }
}

/// The class names of the data set a model with this input and class count was trained on.
fn class_names(input: (usize, usize, usize), classes: usize) -> Option<[&'static str; 10]> {
    match (input, classes) {
        ((1, 28, 28), 10) => Some(datasets::MNIST_CLASSES),
        ((3, 32, 32), 10) => Some(datasets::CIFAR10_CLASSES),
        _ => None,
    }
}

/// Runs `feature-maps`: writes `feature-maps-input.png` (what the network sees) and
/// `feature-maps-<stage>.png` for every stage in `out`, and prints the predicted class.
pub fn run(args: &FeatureMapsArgs, out: &Path) -> Result<()> {
    let model = args.model.load()?;
    let input = model.spec.input;
    let (_, normalisation) = eval_transform(input)?;
    let (seen, batch) = prepare(&args.image, input)?;
    train::say!("{}: {}", model.spec.name, model.origin);
    train::say!(
        "{} -> {}x{}x{}, {normalisation} normalisation",
        args.image.display(),
        input.0,
        input.1,
        input.2
    );
    let caption = format!("{}x{}x{}", seen.channels, seen.height, seen.width);
    let tile = viz::Tile {
        channels: seen.channels,
        height: seen.height,
        width: seen.width,
        data: seen.data,
        caption,
        highlight: false,
    };
    let path = out.join("feature-maps-input.png");
    viz::save_image_grid(&path, "input", &[tile], 1)?;
    train::say!("wrote {}", path.display());

    let stages = model.net.forward_stages(&batch)?;
    for (stage, t) in &stages {
        let path = out.join(format!("feature-maps-{}.png", file_stem(stage)));
        match save_stage(&path, stage, t).with_context(|| format!("stage {stage}"))? {
            Some(title) => train::say!("wrote {} ({title})", path.display()),
            None => train::say!("stage {stage} has shape {:?}: not drawn", t.dims()),
        }
    }
    if let Some((_, logits)) = stages.last() {
        let logits = logits.flatten_all()?.to_vec1::<f32>()?;
        let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b]));
        if let Some(best) = best {
            let name = class_names(input, logits.len())
                .map_or(String::new(), |names| format!(" ({})", names[best]));
            train::say!("predicted class: {best}{name}, logit {:.4}", logits[best]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_follows_the_input() -> Result<()> {
        let (mnist, name) = eval_transform((1, 28, 28))?;
        assert_eq!(name, "MNIST");
        assert_eq!(mnist.normalization().mean(), datasets::MNIST_MEAN_STD.0);
        let (_, name) = eval_transform((3, 32, 32))?;
        assert_eq!(name, "CIFAR-10");
        let (imagenet, name) = eval_transform((3, 224, 224))?;
        assert_eq!(
            (name, imagenet),
            ("ImageNet", Transform::imagenet_eval(224))
        );
        assert!(eval_transform((3, 20, 30)).is_err());
        Ok(())
    }

    #[test]
    fn stage_names_become_safe_file_names() {
        assert_eq!(file_stem("layer1"), "layer1");
        assert_eq!(file_stem("inception3a/branch 1"), "inception3a-branch-1");
        assert_eq!(file_stem("features.0"), "features-0");
    }
}
