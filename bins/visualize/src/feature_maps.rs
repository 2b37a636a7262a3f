//! `visualize feature-maps`: what each stage of a network makes of one image.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use datasets::{ColorMode, DatasetSpec, Rng, Transform, U8Image};
use zoo::ModelSpec;

use crate::model::ModelArgs;

/// At most this many channels (or values) of a stage are drawn.
const MAX_CHANNELS: usize = 64;

/// Options of `feature-maps`.
#[derive(Debug, Args)]
pub struct FeatureMapsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The image to look at (JPEG, PNG, BMP, PPM/PGM, TIFF or WebP, any size: resized and
    /// centre-cropped to the model's input).
    #[arg(long)]
    image: PathBuf,
}

/// The evaluation pipeline of a model (the data set its zoo entry names: its normalisation,
/// and for ImageNet `Resize(side * 256 / 224)` + `CenterCrop(side)`), with that data set.
pub fn eval_transform(model: &ModelSpec) -> Result<(Transform, &'static DatasetSpec)> {
    let (_, h, w) = model.input;
    ensure!(
        h == w,
        "only square model inputs are supported, not {h}x{w}"
    );
    let data = datasets::catalog::spec(model.data)?;
    Ok(((data.eval)(h), data))
}

/// Decodes `path` and brings it to the model's input: returns the cropped image and the
/// normalised `(1, C, H, W)` batch.
pub fn prepare(path: &Path, model: &ModelSpec) -> Result<(U8Image, Tensor)> {
    let bytes = datasets::read_image_file(path)?;
    let mode = if model.input.0 == 1 {
        ColorMode::Gray
    } else {
        ColorMode::Rgb
    };
    let image = datasets::decode_image(&bytes, mode)
        .with_context(|| format!("cannot decode image {}", path.display()))?;
    let (transform, _) = eval_transform(model)?;
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
/// `logits` (the network's last stage): its values are the classes' scores, in class order.
fn save_stage(path: &Path, stage: &str, t: &Tensor, logits: bool) -> Result<Option<String>> {
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
            train::atomic::write_with(path, |tmp| viz::save_square_grid(tmp, &title, &tiles))?;
            Ok(Some(title))
        }
        [f] => {
            let shown = f.min(MAX_CHANNELS);
            let values = first.narrow(0, 0, shown)?.to_vec1::<f32>()?;
            let mut title = if shown < f {
                format!("{stage}: first {shown} of {f} values")
            } else {
                format!("{stage}: {f} values")
            };
            if logits && shown > 0 {
                title.push_str(&format!(", classes 0-{} left to right", shown - 1));
            }
            let panel = viz::Panel {
                title: title.clone(),
                rows: 1,
                cols: shown,
                values,
            };
            train::atomic::write_with(path, |tmp| {
                viz::save_panels(tmp, &[panel], viz::ColorMap::Viridis)
            })?;
            Ok(Some(title))
        }
        _ => Ok(None),
    }
}

/// Runs `feature-maps`: writes `feature-maps-input.png` (what the network sees) and
/// `feature-maps-<stage>.png` for every stage in `out`, and prints the predicted class.
pub fn run(args: &FeatureMapsArgs, out: &Path) -> Result<()> {
    let model = args.model.load()?;
    // A run's images go through its own test transform (as `predict` and `grad-cam` feed
    // them), and its class names name the prediction; a zoo model's through its data set's.
    let (seen, batch, described, classes) = match &model.run {
        Some((config, classes)) => {
            let predictor = train::inference::Predictor::for_run(
                model.net.as_ref(),
                Transform::parse(&config.test_transform)?,
                train::inference::run_input(config)?,
                classes,
                &Device::Cpu,
            )?;
            let (seen, batch) = predictor.prepare(&args.image)?;
            let described = format!("the run's test transform {}", config.test_transform);
            (seen, batch, described, classes.clone())
        }
        None => {
            let (_, data) = eval_transform(&model.spec)?;
            let (seen, batch) = prepare(&args.image, &model.spec)?;
            (
                seen,
                batch,
                format!("{} normalisation", data.title),
                model.classes.clone(),
            )
        }
    };
    train::say!("{}: {}", model.spec.name, model.origin);
    train::say!(
        "{} -> {}x{}x{}, {described}",
        args.image.display(),
        seen.channels,
        seen.height,
        seen.width
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
    train::atomic::write_with(&path, |tmp| viz::save_image_grid(tmp, "input", &[tile], 1))?;
    train::say!("wrote {}", path.display());

    let stages = {
        let _no_grad = layers::no_grad();
        model.net.forward_stages(&batch)?
    };
    train::say!(
        "each channel's map is drawn over its own range (its smallest value black, its largest \
         white; a map of one value, such as a 1x1 map, at its place on the stage's range), a \
         stage of single values as a row of cells over their range (viridis)"
    );
    let mut written = vec![path];
    for (i, (stage, t)) in stages.iter().enumerate() {
        // Nothing computed from NaN or infinity is drawn (its colours and numbers would mean
        // nothing).
        let values = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        if !values.iter().all(|v| v.is_finite()) {
            train::say!("stage {stage}: not finite (NaN or infinity): not drawn");
            continue;
        }
        let path = out.join(format!("feature-maps-{}.png", file_stem(stage)));
        let logits = i + 1 == stages.len();
        match save_stage(&path, stage, t, logits).with_context(|| format!("stage {stage}"))? {
            Some(title) => {
                train::say!("wrote {} ({title})", path.display());
                written.push(path);
            }
            None => train::say!("stage {stage} has shape {:?}: not drawn", t.dims()),
        }
    }
    let earlier = earlier_pictures(out, &written);
    if !earlier.is_empty() {
        train::say!(
            "note: {} also holds {} of an earlier call (another model's stages, or one not drawn \
             now), left as they are",
            out.display(),
            earlier.join(", ")
        );
    }
    if let Some((_, logits)) = stages.last() {
        let logits = logits
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        anyhow::ensure!(
            logits.iter().all(|v| v.is_finite()),
            "the network's outputs (logits) are not finite (NaN or infinity): its weights ({}) \
             give no prediction (the feature maps of the finite stages above are written)",
            model.origin
        );
        let best = first_max(&logits);
        if let Some(best) = best {
            let name = match classes.get(best) {
                Some(class) if classes.len() == logits.len() => format!(" ({class})"),
                _ => String::new(),
            };
            let logit = viz::format_value_precisely(logits[best]);
            train::say!("predicted class: {best}{name}, logit {logit}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_follows_the_zoo_entry() -> Result<()> {
        let (mnist, data) = eval_transform(&zoo::spec("lenet5")?)?;
        assert_eq!(data.title, "MNIST");
        assert_eq!(mnist.normalization().mean(), datasets::MNIST_MEAN_STD.0);
        let (_, data) = eval_transform(&zoo::spec("resnet18-cifar")?)?;
        assert_eq!(data.title, "CIFAR-10");
        let (imagenet, data) = eval_transform(&zoo::spec("resnet18")?)?;
        assert_eq!(
            (data.title, imagenet),
            ("ImageNet", Transform::imagenet_eval(224))
        );
        let odd = zoo::ModelSpec {
            input: (3, 20, 30),
            ..zoo::spec("resnet18")?
        };
        assert!(eval_transform(&odd).is_err());
        for model in zoo::specs() {
            eval_transform(&model)?;
        }
        Ok(())
    }

    #[test]
    fn stage_names_become_safe_file_names() {
        assert_eq!(file_stem("layer1"), "layer1");
        assert_eq!(file_stem("inception3a/branch 1"), "inception3a-branch-1");
        assert_eq!(file_stem("features.0"), "features-0");
    }
}

/// The `feature-maps-*.png` files in `out` that this call did not write (`written`), sorted.
fn earlier_pictures(out: &Path, written: &[PathBuf]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Vec::new();
    };
    let mut earlier: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            !written
                .iter()
                .any(|w| w.file_name() == Some(&e.file_name()))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("feature-maps-") && name.ends_with(".png"))
        .collect();
    earlier.sort();
    earlier
}

/// The index of the first maximal value, as `torch.argmax` takes it; `None` for no values.
fn first_max(values: &[f32]) -> Option<usize> {
    (0..values.len()).max_by(|&a, &b| values[a].total_cmp(&values[b]).then(b.cmp(&a)))
}

#[cfg(test)]
mod first_max_tests {
    #[test]
    fn ties_go_to_the_first() {
        assert_eq!(super::first_max(&[0.5, 2.0, 2.0, -1.0]), Some(1));
        assert_eq!(super::first_max(&[3.0; 1000]), Some(0));
        assert_eq!(super::first_max(&[]), None);
    }
}
