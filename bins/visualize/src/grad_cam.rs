//! `visualize grad-cam`: where in the image the network looked for a class (Grad-CAM,
//! Selvaraju et al., 2017): the gradient of the class score with respect to the zoo entry's
//! `cam_stage` activations, averaged over the map, weights the activations; their positive sum,
//! upsampled, is drawn over the image.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use clap::Args;
use datasets::{Transform, U8Image};
use layers::Network;

/// Options of `grad-cam`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("network").required(true).multiple(true).args(["run", "model", "weights"]))]
pub struct GradCamArgs {
    /// A training run (what --out was); its checkpoint, transform and class names are used
    #[arg(long, conflicts_with = "model")]
    run: Option<PathBuf>,
    /// Or a zoo model (lenet5, resnet18, ...), with --weights (as many classes as its
    /// classifier has rows) or its seeded initial weights
    #[arg(long)]
    model: Option<String>,
    /// The run's checkpoint (best, last or a file), or the --model's weights file; alone, a
    /// run's checkpoint (read as its run) or a torchvision ResNet's (its depth found)
    #[arg(long)]
    weights: Option<String>,
    /// The images (any size and colour mode): one picture each
    #[arg(long, num_args = 1.., required = true)]
    image: Vec<PathBuf>,
    /// The class to explain: a name (any case; MNIST's `7 - seven` also as `seven`) or an index
    /// from 0 [default: the predicted one]
    #[arg(long, allow_hyphen_values = true)]
    class: Option<String>,
}

/// A Grad-CAM map: `height x width` values in `[0, 1]` over the stage's grid, for `class`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cam {
    /// The class explained.
    pub class: usize,
    /// The network's softmax probability of that class, in `[0, 1]`.
    pub probability: f32,
    /// The class the network predicts (its largest logit, the first of equal ones, as
    /// `torch.argmax`) and its softmax probability: `class` unless another was asked for.
    pub predicted: (usize, f32),
    /// Row-major values, 1 at the map's maximum (all 0 when nothing speaks for the class): the
    /// map divided by its maximum (pytorch-grad-cam's `scale_cam_image` subtracts the minimum
    /// first, so its lowest cell is 0 where every cell is positive).
    pub values: Vec<f32>,
    /// Rows of the stage's map.
    pub height: usize,
    /// Columns of the stage's map.
    pub width: usize,
}

/// Grad-CAM of `net` for the `(1, C, H, W)` input `x` at stage `stage` of
/// `forward_stages`, for `class` (the top-scoring one when `None`). The last stage is taken as
/// the logits.
///
/// Errors: no stage of that name, a stage without a spatial map, a class out of range, logits
/// that are not finite.
pub fn grad_cam(net: &dyn Network, x: &Tensor, stage: &str, class: Option<usize>) -> Result<Cam> {
    let (stages, leaf) = layers::tap::capture(stage, || net.forward_stages(x))?;
    let leaf = leaf.with_context(|| format!("the network has no stage {stage}"))?;
    let activation = leaf.as_tensor();
    let (_, logits) = stages.last().context("the network has no stages")?;
    let (_, _, height, width) = activation
        .dims4()
        .with_context(|| format!("stage {stage} has no (N, C, H, W) map"))?;
    let logits = logits.flatten_all()?;
    let values = logits.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    ensure!(
        values.iter().all(|v| v.is_finite()),
        "the network's outputs (logits) are not finite (NaN or infinity): its weights give no \
         prediction to explain"
    );
    let classes = logits.dim(0)?;
    let predicted = logits.argmax(D::Minus1)?.to_scalar::<u32>()? as usize;
    let class = match class {
        Some(c) if c < classes => c,
        Some(c) => bail!("class {c} is out of range for {classes} classes"),
        None => predicted,
    };
    let top_logit = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f32 = values.iter().map(|v| (v - top_logit).exp()).sum();
    let softmax = |k: usize| (values[k] - top_logit).exp() / total;
    let probability = softmax(class);
    let predicted = (predicted, softmax(predicted));
    let grads = logits.get(class)?.backward()?;
    let gradient = grads
        .get(activation)
        .with_context(|| format!("no gradient reaches stage {stage}"))?;
    let weights = gradient.mean_keepdim(3)?.mean_keepdim(2)?;
    let map = activation
        .broadcast_mul(&weights)?
        .sum(1)?
        .relu()?
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    let top = map.iter().copied().fold(0f32, f32::max);
    let values = map
        .into_iter()
        .map(|v| if top > 0.0 { v / top } else { 0.0 })
        .collect();
    Ok(Cam {
        class,
        probability,
        predicted,
        values,
        height,
        width,
    })
}

/// `seen` (what the network saw) with the map upsampled over it in viridis, half and half.
fn overlay(seen: &U8Image, cam: &Cam) -> Result<U8Image> {
    let map = U8Image::new(
        1,
        cam.height,
        cam.width,
        cam.values
            .iter()
            .map(|v| (v * 255.0).round() as u8)
            .collect(),
    )?;
    let map = datasets::resize_bilinear(&map, seen.height, seen.width);
    let plane = seen.height * seen.width;
    let mut data = vec![0u8; 3 * plane];
    for i in 0..plane {
        let colour = viz::ColorMap::Viridis.rgb(f32::from(map.data[i]) / 255.0);
        for (ch, c) in colour.iter().enumerate() {
            let pixel = seen.data[(ch % seen.channels) * plane + i];
            data[ch * plane + i] = ((u16::from(pixel) + u16::from(*c)) / 2) as u8;
        }
    }
    U8Image::new(3, seen.height, seen.width, data)
}

/// Runs `grad-cam`: for each image, writes `grad-cam-<image's stem>.png` (`-class<K>` added for
/// a `--class`; images of one stem told apart, [`file_names`]): the image and the map over it,
/// titled with the stage, the class and its softmax probability, in `out`, and prints the class
/// explained. An image that cannot be read is named and the others are still explained (the
/// error, at the end, counts them), as `predict` does.
pub fn run(args: &GradCamArgs, out: &Path) -> Result<()> {
    let device = Device::Cpu;
    let (beside, found) = match (&args.run, &args.model, &args.weights) {
        (None, Some(name), Some(weights)) => (
            crate::model::run_of_checkpoint(name, Path::new(weights)),
            None,
        ),
        (None, None, Some(weights)) => match crate::model::holder_of(Path::new(weights))? {
            crate::model::Holder::Run(run) => (Some(run), None),
            crate::model::Holder::Model(name) => (None, Some(name.to_string())),
        },
        _ => (None, None),
    };
    let weights_named: String;
    let (model, store_spec, input, classes, transform) = match (
        args.run.as_ref().or(beside.as_ref()),
        args.model.as_ref().or(found.as_ref()),
    ) {
        (Some(run), _) => {
            let weights = args.weights.as_deref().unwrap_or("best");
            let trained = train::inference::Trained::open(run, weights, &device)?;
            let spec = zoo::spec(&trained.config.model)?;
            let input = train::inference::run_input(&trained.config)?;
            let transform = Transform::parse(&trained.config.test_transform)?;
            weights_named = trained.weights.display().to_string();
            (trained.model, spec, input, trained.classes, transform)
        }
        (None, Some(name)) => {
            let spec = zoo::spec(name)?;
            let weights = args.weights.as_ref().map(PathBuf::from);
            weights_named = match &weights {
                Some(w) => w.display().to_string(),
                None => format!("{name}'s initial weights"),
            };
            let (net, _, count) =
                crate::model::load_zoo(name, None, weights.as_deref(), &device, 0)?;
            let data = datasets::catalog::spec(spec.data)?;
            let classes = crate::model::class_names(&spec, weights.as_deref(), count);
            if weights.is_none() {
                train::say!("{name}: initial weights (seed 0), no --weights given");
            }
            // A head of its own outside any run (fine-tuned elsewhere, or copied out of its
            // run): nothing says its classes or the image size it learned at (said as
            // `predict` says it).
            let numbered = classes
                .iter()
                .enumerate()
                .all(|(k, c)| *c == format!("class {k}"));
            if let (Some(path), true) = (&weights, numbered) {
                train::warn!(
                    "{}: no {} beside it names its {count} classes, so they are named by number \
                     (class 0, class 1, ...), and the image is taken at {name}'s native {}x{} \
                     (--run DIR, the folder of its run, gives both)",
                    path.display(),
                    train::rundir::CLASSES,
                    spec.input.1,
                    spec.input.2
                );
            }
            let input = train::inference::RunInput {
                channels: spec.input.0,
                side: spec.input.1,
                data_size: false,
            };
            (net, spec, input, classes, (data.eval)(spec.input.1))
        }
        (None, None) => {
            bail!("grad-cam needs --run DIR (a training run), --model NAME or a --weights file")
        }
    };
    let predictor =
        train::inference::Predictor::for_run(model.as_ref(), transform, input, &classes, &device)?;
    let class = match &args.class {
        None => None,
        Some(c) => {
            let k = class_index(c, &classes)?;
            // A class folder named by a number: the name wins (said, as it may not be meant).
            if let Some(index) = c.parse::<usize>().ok().filter(|i| *i != k) {
                train::say!(
                    "note: --class {c} is the class named {c:?} (index {k}); {}",
                    match classes.get(index) {
                        Some(other) => format!("the class of index {index} is {other:?}"),
                        None => format!("there is no class of index {index}"),
                    }
                );
            }
            Some(k)
        }
    };
    let names = file_names(&args.image, args.class.as_ref().and(class));
    let mut failed = 0;
    for (image, name) in args.image.iter().zip(names) {
        let explained = explain(
            model.as_ref(),
            &predictor,
            (store_spec.cam_stage, &weights_named),
            (image, class, &classes),
            &out.join(name),
            // Each line names its image where there are several.
            &match args.image.len() {
                1 => String::new(),
                _ => format!("{}: ", image.display()),
            },
        );
        if let Err(e) = explained {
            failed += 1;
            train::inference::warn_failed(image, &e);
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} images could not be explained (each is named above)",
            args.image.len()
        );
    }
    Ok(())
}

/// Grad-CAM of one image for [`run`]: `stage` and the weights' name, the image, the class
/// asked for (if any) and the class names; the picture written to `path`.
fn explain(
    model: &dyn Network,
    predictor: &train::inference::Predictor,
    (stage, weights_named): (&str, &str),
    (image, class, classes): (&Path, Option<usize>, &[String]),
    path: &Path,
    about: &str,
) -> Result<()> {
    let (seen, x) = predictor.prepare(image)?;
    let mut stage = stage.to_string();
    let mut cam = grad_cam(model, &x, &stage, class)
        .with_context(|| format!("Grad-CAM under {weights_named}"))?;
    if cam.height * cam.width == 1 {
        // A 1x1 map points at no place: the last stage before it that has a map, if any.
        if let Some(earlier) = earlier_stage_with_a_map(model, &x, &stage)? {
            train::say!(
                "{about}note: {stage}'s map is 1x1 for this input ({}x{}), so Grad-CAM could point at \
                 no place: it is taken at {earlier}, the last stage before it with a map",
                seen.height,
                seen.width
            );
            stage = earlier;
            cam = grad_cam(model, &x, &stage, class)
                .with_context(|| format!("Grad-CAM under {weights_named}"))?;
        }
    }
    ensure!(
        cam.class < classes.len(),
        "the model has more outputs than class names"
    );
    let name = &classes[cam.class];
    // The probability before the name, which a long name then cannot push out of the title.
    // A class asked for that the network does not predict: the prediction beside it (on a
    // caption line of its own, which the title's width would cut).
    let (predicted, caption) = match cam.predicted {
        (k, p) if k != cam.class => {
            let top = classes.get(k).map_or(format!("class {k}"), Clone::clone);
            let p = 100.0 * p;
            (
                format!(" (predicted: {top}, {p:.1}%)"),
                format!("{name}\npredicted: {top} {p:.1}%"),
            )
        }
        _ => (String::new(), name.clone()),
    };
    let title = format!(
        "Grad-CAM at {stage}, softmax {:.1}%: {name}",
        100.0 * cam.probability
    );
    let tiles = [
        viz::Tile {
            channels: seen.channels,
            height: seen.height,
            width: seen.width,
            data: seen.data.clone(),
            caption: "input".into(),
            highlight: false,
        },
        {
            let over = overlay(&seen, &cam)?;
            viz::Tile {
                channels: 3,
                height: over.height,
                width: over.width,
                data: over.data,
                caption,
                highlight: false,
            }
        },
    ];
    train::atomic::write_with(path, |tmp| viz::save_image_grid(tmp, &title, &tiles, 2))?;
    let peak = cam
        .values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    let lit = cam.values.iter().filter(|v| **v > 0.5).count();
    if cam.height * cam.width == 1 {
        train::warn!(
            "{about}note: {stage}'s map is 1x1 for this input ({}x{}), so Grad-CAM can point at no \
             place: the picture is one colour; a larger input (--image-size for a fine-tuning \
             run) gives the stage a map",
            seen.height,
            seen.width
        );
    }
    if cam.values.iter().all(|v| *v <= 0.0) {
        train::say!(
            "{about}class {} ({name}){predicted}: no cell of {} speaks for it (every gradient-weighted \
             sum is <= 0, so the map is blank); wrote {}",
            cam.class,
            stage,
            path.display()
        );
        return Ok(());
    }
    train::say!(
        "{about}class {} ({name}){predicted}: {lit} of {}x{} cells above half the peak, the peak at \
         row {}, column {}; wrote {}",
        cam.class,
        cam.height,
        cam.width,
        peak / cam.width.max(1),
        peak % cam.width.max(1),
        path.display()
    );
    Ok(())
}

/// The pictures' names of `images` ([`file_name`]), each its own: images of the same stem (the
/// same file name in two class folders) are told apart by their folder's name
/// (`grad-cam-dog-024.png`), and by a number where that is the same too (`-2`, `-3`, ...).
fn file_names(images: &[PathBuf], class: Option<usize>) -> Vec<String> {
    let stem_of = |image: &Path| {
        image
            .file_stem()
            .map_or("image".into(), |s| s.to_string_lossy().into_owned())
    };
    let plain: Vec<String> = images.iter().map(|i| file_name(i, class)).collect();
    let stems: Vec<String> = images
        .iter()
        .zip(&plain)
        .map(|(image, name)| {
            let shared = plain.iter().filter(|n| *n == name).count() > 1;
            match (shared, image.parent().and_then(Path::file_name)) {
                (true, Some(folder)) => format!("{}-{}", folder.to_string_lossy(), stem_of(image)),
                _ => stem_of(image),
            }
        })
        .collect();
    let mut names: Vec<String> = Vec::with_capacity(images.len());
    for stem in stems {
        let mut copy = 1;
        let mut name = picture_name(&stem, class, copy);
        while names.contains(&name) {
            copy += 1;
            name = picture_name(&stem, class, copy);
        }
        names.push(name);
    }
    names
}

/// `grad-cam-<image's stem>.png`, with `-class<K>` for a class asked for by `--class`: each
/// image (and class) its own picture.
fn file_name(image: &Path, class: Option<usize>) -> String {
    let stem = image
        .file_stem()
        .map_or("image".into(), |s| s.to_string_lossy());
    picture_name(&stem, class, 1)
}

/// `grad-cam-<stem>.png`, with `-class<K>` for a class asked for and `-<copy>` from the second
/// copy on; control characters and `/` in `stem` written `_`, and a long stem cut (at a
/// character) to keep the name within 255 bytes, a file name's limit.
fn picture_name(stem: &str, class: Option<usize>, copy: usize) -> String {
    let mut stem = stem.replace(|c: char| c.is_control() || c == '/', "_");
    let mut suffix = match class {
        Some(k) => format!("-class{k}"),
        None => String::new(),
    };
    if copy > 1 {
        suffix += &format!("-{copy}");
    }
    suffix += ".png";
    let room = 255 - "grad-cam-".len() - suffix.len();
    if stem.len() > room {
        let cut = (0..=room)
            .rev()
            .find(|&i| stem.is_char_boundary(i))
            .unwrap_or(0);
        stem.truncate(cut);
    }
    format!("grad-cam-{stem}{suffix}")
}

/// The last stage of `net` before `stage` whose output for `x` is an (N, C, H, W) map of more
/// than one cell; `None` when there is none (or no stage `stage`).
fn earlier_stage_with_a_map(net: &dyn Network, x: &Tensor, stage: &str) -> Result<Option<String>> {
    let stages = {
        let _no_grad = layers::no_grad();
        net.forward_stages(&x.detach())?
    };
    let Some(at) = stages.iter().position(|(name, _)| name == stage) else {
        return Ok(None);
    };
    Ok(stages[..at]
        .iter()
        .rev()
        .find(|(_, t)| t.dims4().is_ok_and(|(_, _, h, w)| h * w > 1))
        .map(|(name, _)| name.clone()))
}

/// `--class`: a class name (`cat`; any case; for MNIST's `7 - seven` also `seven`) or an index
/// from 0 (`7`).
///
/// # Errors
/// Neither a name nor an index below the class count: the classes are listed.
fn class_index(given: &str, classes: &[String]) -> Result<usize> {
    // Any case in Unicode's sense (`CAFÉ` for `café`), as Python's `str.lower()`.
    let given_lower = given.to_lowercase();
    let same = |name: &str| name.to_lowercase() == given_lower;
    let named =
        |name: &str| same(name) || name.split_once(" - ").is_some_and(|(_, word)| same(word));
    // A name (exact first, then in any case) that one class alone has; ImageNet's list has a
    // few twice ("crane": the bird and the machine).
    for matches in [
        &(|name: &String| name == given) as &dyn Fn(&String) -> bool,
        &|name: &String| named(name),
    ] {
        let found: Vec<usize> = (0..classes.len())
            .filter(|&k| matches(&classes[k]))
            .collect();
        match found.as_slice() {
            [] => {}
            [k] => return Ok(*k),
            several => bail!(
                "--class {given}: the name of classes {several:?}; give the index of the one \
                 meant"
            ),
        }
    }
    match given.parse::<usize>() {
        Ok(k) if k < classes.len() => Ok(k),
        Ok(k) => bail!(
            "--class {k} is out of range for {} classes, numbered 0 to {} ({classes:?})",
            classes.len(),
            classes.len() - 1
        ),
        Err(_) => {
            // The first names (an ImageNet head has a thousand).
            let shown: Vec<&String> = classes.iter().take(12).collect();
            let more = match classes.len() > shown.len() {
                true => format!(" and {} more", classes.len() - shown.len()),
                false => String::new(),
            };
            bail!(
                "--class {given}: neither a class name nor an index from 0 to {} (classes: \
                 {shown:?}{more})",
                classes.len().saturating_sub(1)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Module, ModuleT};

    /// Sees only the top-left quadrant of its 8x8 input: `features` is the input times a mask,
    /// the logits are two linear functions of its mean.
    struct Quadrant {
        mask: Tensor,
        head: candle_nn::Linear,
    }

    impl ModuleT for Quadrant {
        fn forward_t(&self, xs: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
            Ok(
                self.forward_stages(xs).map_err(candle_core::Error::wrap)?[1]
                    .1
                    .clone(),
            )
        }
    }

    impl Network for Quadrant {
        fn forward_stages(&self, xs: &Tensor) -> candle_core::Result<Vec<(String, Tensor)>> {
            let features = layers::tap::stage("features", xs.broadcast_mul(&self.mask)?)?;
            let pooled = features.mean_keepdim(3)?.mean_keepdim(2)?.flatten_from(1)?;
            Ok(vec![
                ("features".into(), features),
                ("logits".into(), self.head.forward(&pooled)?),
            ])
        }
    }

    #[test]
    fn the_map_lights_up_the_quadrant_the_network_sees() -> Result<()> {
        let dev = Device::Cpu;
        let mask: Vec<f32> = (0..64).map(|i| f32::from(i / 8 < 4 && i % 8 < 4)).collect();
        let net = Quadrant {
            mask: Tensor::from_vec(mask, (1, 1, 8, 8), &dev)?,
            head: candle_nn::Linear::new(Tensor::new(&[[2f32], [-1.0]], &dev)?, None),
        };
        let x = Tensor::ones((1, 1, 8, 8), DType::F32, &dev)?;
        let cam = grad_cam(&net, &x, "features", None)?;
        assert_eq!((cam.class, cam.height, cam.width), (0, 8, 8));
        for (i, v) in cam.values.iter().enumerate() {
            let seen = i / 8 < 4 && i % 8 < 4;
            assert_eq!(*v, if seen { 1.0 } else { 0.0 }, "pixel {i}");
        }
        // The other class has a negative weight: nothing speaks for it.
        let other = grad_cam(&net, &x, "features", Some(1))?;
        assert!(other.values.iter().all(|v| *v == 0.0));
        // Logits 2 * 0.25 and -0.25: class 0 predicted either way, with its own probability.
        let p0 = 1.0 / (1.0 + (-0.75f32).exp());
        assert_eq!(cam.predicted, (0, cam.probability));
        assert!((cam.probability - p0).abs() < 1e-6, "{}", cam.probability);
        assert_eq!(other.predicted, (0, cam.probability));
        assert!((other.probability - (1.0 - p0)).abs() < 1e-6);
        assert!(grad_cam(&net, &x, "nowhere", None).is_err());
        assert!(grad_cam(&net, &x, "features", Some(2)).is_err());
        Ok(())
    }

    #[test]
    fn every_zoo_model_gives_a_map() -> Result<()> {
        for name in ["lenet5", "cnn-mnist", "resnet18-cifar", "resnet18-seed"] {
            let spec = zoo::spec(name)?;
            let (net, _) = zoo::load(name, spec.default_classes, None, &Device::Cpu, 1)?;
            let (c, h, w) = spec.input;
            let x = Tensor::rand(0f32, 1.0, (1, c, h, w), &Device::Cpu)?;
            let cam = grad_cam(net.as_ref(), &x, spec.cam_stage, None)?;
            assert!(cam.values.iter().all(|v| (0.0..=1.0).contains(v)), "{name}");
            assert!(cam.height * cam.width > 1, "{name}");
        }
        Ok(())
    }

    /// ResNet-50 at 32x32 (a fine-tuning run at --image-size 32): `layer4`'s map is 1x1, the
    /// last stage before it with a map is `layer3` (2x2).
    #[test]
    fn a_stage_of_one_cell_gives_way_to_the_one_before() -> Result<()> {
        let (net, _) = zoo::load("resnet50", 10, None, &Device::Cpu, 1)?;
        let x = Tensor::rand(0f32, 1.0, (1, 3, 32, 32), &Device::Cpu)?;
        let cam = grad_cam(net.as_ref(), &x, "layer4", None)?;
        assert_eq!((cam.height, cam.width), (1, 1));
        let earlier = earlier_stage_with_a_map(net.as_ref(), &x, "layer4")?;
        assert_eq!(earlier.as_deref(), Some("layer3"));
        let cam = grad_cam(net.as_ref(), &x, "layer3", None)?;
        assert_eq!((cam.height, cam.width), (2, 2));
        // No stage of that name: none.
        assert_eq!(earlier_stage_with_a_map(net.as_ref(), &x, "nowhere")?, None);
        Ok(())
    }

    /// The picture's name keeps within 255 bytes (a file name's limit), cut at a character.
    #[test]
    fn long_image_names_are_cut() {
        let long = format!("{}.png", "é".repeat(200));
        for class in [None, Some(7)] {
            let name = file_name(Path::new(&long), class);
            assert!(name.len() <= 255 && name.len() > 240, "{}", name.len());
            assert!(
                name.starts_with("grad-cam-é") && name.ends_with(".png"),
                "{name}"
            );
        }
        assert_eq!(
            file_name(Path::new("a/cat.jpg"), Some(3)),
            "grad-cam-cat-class3.png"
        );
    }

    /// Images of one stem (the same file name in two class folders) get pictures of their own,
    /// named by their folders, then by number; others keep their plain names.
    #[test]
    fn images_of_one_stem_get_pictures_of_their_own() {
        let images: Vec<PathBuf> = ["t/cat/024.jpg", "t/dog/024.png", "u/dog/024.jpg", "a.png"]
            .map(PathBuf::from)
            .to_vec();
        assert_eq!(
            file_names(&images, None),
            [
                "grad-cam-cat-024.png",
                "grad-cam-dog-024.png",
                "grad-cam-dog-024-2.png",
                "grad-cam-a.png"
            ]
        );
        assert_eq!(
            file_names(&images[..1], Some(3)),
            ["grad-cam-024-class3.png"]
        );
        // Dots in folder names stay; a copy number keeps the name within 255 bytes.
        let dotted: Vec<PathBuf> = ["run.v1/024.jpg", "run.v2/024.jpg"]
            .map(PathBuf::from)
            .to_vec();
        assert_eq!(
            file_names(&dotted, None),
            ["grad-cam-run.v1-024.png", "grad-cam-run.v2-024.png"]
        );
        let long = PathBuf::from(format!("{}.png", "x".repeat(300)));
        for name in file_names(&[long.clone(), long], Some(2)) {
            assert!(name.len() <= 255 && name.ends_with(".png"), "{name}");
        }
        // The same image twice: two pictures, not one written twice.
        let twice = [PathBuf::from("x.png"), PathBuf::from("x.png")];
        assert_eq!(
            file_names(&twice, Some(1)),
            ["grad-cam-x-class1.png", "grad-cam-x-class1-2.png"]
        );
    }

    #[test]
    fn class_by_name_word_or_index() {
        let mnist: Vec<String> = datasets::MNIST_CLASSES
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(class_index("7 - seven", &mnist).unwrap(), 7);
        assert_eq!(class_index("seven", &mnist).unwrap(), 7);
        assert_eq!(class_index("Seven", &mnist).unwrap(), 7);
        assert_eq!(class_index("7", &mnist).unwrap(), 7);
        let err = class_index("10", &mnist).unwrap_err().to_string();
        assert!(
            err.contains("out of range for 10 classes, numbered 0 to 9"),
            "{err}"
        );
        assert!(class_index("eleven", &mnist).is_err());
        // A class named by a number is its name first, not an index.
        let folders: Vec<String> = ["1", "0"].map(String::from).to_vec();
        assert_eq!(class_index("1", &folders).unwrap(), 0);
        let cifar: Vec<String> = ["airplane", "cat"].map(String::from).to_vec();
        assert_eq!(class_index("CAT", &cifar).unwrap(), 1);
        // Any case beyond ASCII: folder names of other scripts.
        let unicode: Vec<String> = ["Zebra", "café", "日本"].map(String::from).to_vec();
        assert_eq!(class_index("CAFÉ", &unicode).unwrap(), 1);
        assert_eq!(class_index("zebra", &unicode).unwrap(), 0);
        assert_eq!(class_index("日本", &unicode).unwrap(), 2);
        // ImageNet's names (a ResNet-50's pretrained head); an unknown one lists the first few.
        let imagenet = datasets::catalog::imagenet_classes();
        assert_eq!(class_index("tiger cat", &imagenet).unwrap(), 282);
        let err = class_index("crane", &imagenet).unwrap_err().to_string();
        assert!(err.contains("classes [134, 517]"), "{err}");
        let err = class_index("tabby cat", &imagenet).unwrap_err().to_string();
        assert!(
            err.contains("\"tench\"") && err.contains("and 988 more"),
            "{err}"
        );
        assert!(err.len() < 600, "{} characters", err.len());
    }
}
