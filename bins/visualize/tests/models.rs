//! `visualize filters`, `feature-maps` and `grad-cam` on LeNet-5 with weights saved here.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::{
    assert_not_blank, command, open_png, visualize, visualize_fails, visualize_stderr, Grid,
};
use layers::ParamStore;

/// Kernel `k` of LeNet-5's first layer: a ramp over its 25 taps, rotated by `k`, so the
/// minimum (black) and maximum (white) of each tile are known.
fn ramp(k: usize, tap: usize) -> f32 {
    ((tap + 5 * k) % 25) as f32 - 12.0
}

/// Saves LeNet-5 weights whose first-layer kernels are the ramps.
fn save_lenet(path: &Path) {
    let store = ParamStore::new(11, &Device::Cpu);
    zoo::build("lenet5", 10, store.vb()).unwrap();
    let values: Vec<f32> = (0..6)
        .flat_map(|k| (0..25).map(move |tap| ramp(k, tap)))
        .collect();
    let kernels = Tensor::from_vec(values, (6, 1, 5, 5), &Device::Cpu).unwrap();
    let vars = store.named_vars();
    let (_, first) = vars
        .iter()
        .find(|(name, _)| name == "features.0.weight")
        .expect("lenet5 has features.0.weight");
    first.set(&kernels).unwrap();
    layers::checkpoint::save(store.varmap(), path).unwrap();
}

/// Makes `run` a LeNet-5 training run's folder: its `config.json` (train-mnist's), no
/// checkpoint yet.
fn lenet_run(run: &Path) {
    std::fs::create_dir(run).unwrap();
    let config =
        train::config::RunConfig::new("train-mnist", train::config::DatasetKind::Mnist, "lenet5");
    std::fs::write(
        run.join(train::rundir::CONFIG),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn filters_draws_the_saved_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("lenet5.safetensors");
    save_lenet(&weights);
    let out = dir.path().join("trained");
    let stdout = visualize(&[
        "filters",
        "--model",
        "lenet5",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(stdout.contains("trained weights from"), "{stdout}");
    assert!(
        stdout.contains("first layer features.0.weight: 6 kernels of 1x5x5"),
        "{stdout}"
    );
    let img = open_png(&out.join("filters.png"));
    let grid = Grid::new(5, 5, 6, 3);
    assert_eq!(grid.scale, 20);
    assert_eq!(img.dimensions(), grid.size);
    assert_not_blank(&img, "filters.png");
    for k in 0..6 {
        for tap in 0..25u32 {
            let v = ramp(k, tap as usize);
            let expected = ((v + 12.0) / 24.0 * 255.0).round() as u8;
            let seen = grid.pixel(&img, k, (tap % 5, tap / 5));
            assert_eq!(seen, [expected; 3], "kernel {k} tap {tap}");
        }
    }

    // A training run's directory gives the same model and checkpoint (its best by default).
    let run = dir.path().join("run");
    lenet_run(&run);
    std::fs::copy(&weights, run.join(train::rundir::BEST)).unwrap();
    let by_run = dir.path().join("by-run");
    let stdout = visualize(&[
        "filters",
        "--run",
        run.to_str().unwrap(),
        "--out",
        by_run.to_str().unwrap(),
    ]);
    assert!(stdout.contains("best.safetensors"), "{stdout}");
    assert!(open_png(&by_run.join("filters.png")) == img);
    let err = visualize_fails(&[
        "filters",
        "--run",
        run.to_str().unwrap(),
        "--model",
        "vgg11",
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
    // feature-maps of a run: the run's test transform (MNIST's 28x28 grey) and class names.
    let picture = dir.path().join("picture.png");
    write_picture(&picture, 40, 30, true);
    let stdout = visualize(&[
        "feature-maps",
        "--run",
        run.to_str().unwrap(),
        "--image",
        picture.to_str().unwrap(),
        "--out",
        by_run.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("-> 1x28x28, the run's test transform mnist-test"),
        "{stdout}"
    );
    assert!(
        stdout.contains("predicted class: ") && stdout.contains(" - "),
        "{stdout}"
    );
    // grad-cam of the run's checkpoint named as --model --weights: read as the run's; a file
    // elsewhere is the zoo model's.
    let grad_cam = |weights: &Path| {
        visualize(&[
            "grad-cam",
            "--model",
            "lenet5",
            "--weights",
            weights.to_str().unwrap(),
            "--image",
            picture.to_str().unwrap(),
            "--out",
            by_run.to_str().unwrap(),
        ])
    };
    let stdout = grad_cam(&run.join(train::rundir::BEST));
    assert!(stdout.contains("a checkpoint of the run in"), "{stdout}");
    let stdout = grad_cam(&weights);
    assert!(!stdout.contains("a checkpoint of the run"), "{stdout}");
    // feature-maps the same: the run's transform (it took LeNet-5's 32x32 zoo input before).
    let stdout = visualize(&[
        "feature-maps",
        "--model",
        "lenet5",
        "--weights",
        run.join(train::rundir::BEST).to_str().unwrap(),
        "--image",
        picture.to_str().unwrap(),
        "--out",
        by_run.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("a checkpoint of the run in")
            && stdout.contains("-> 1x28x28, the run's test transform mnist-test"),
        "{stdout}"
    );
    // --weights alone: a run's checkpoint is read as its run (feature-maps and grad-cam), a
    // file outside any run that is not a torchvision ResNet's asks for --model.
    let best = run.join(train::rundir::BEST);
    let alone = |command: &str, weights: &Path| -> Vec<String> {
        [command, "--weights", weights.to_str().unwrap()]
            .into_iter()
            .chain(["--image", picture.to_str().unwrap()])
            .chain(["--out", by_run.to_str().unwrap()])
            .map(String::from)
            .collect()
    };
    for command in ["feature-maps", "grad-cam"] {
        let stdout = visualize(&strs(&alone(command, &best)));
        assert!(
            stdout.contains("a checkpoint of the run in") && stdout.contains("(lenet5)"),
            "{command}: {stdout}"
        );
        let err = visualize_fails(&strs(&alone(command, &weights)));
        assert!(
            err.contains("lenet5.safetensors: not a training run's checkpoint")
                && err.contains("give --model NAME"),
            "{command}: {err}"
        );
    }
    // A link to the run's checkpoint is read as the run too.
    let link = dir.path().join("link.safetensors");
    std::os::unix::fs::symlink(&best, &link).unwrap();
    let stdout = visualize(&strs(&alone("feature-maps", &link)));
    assert!(stdout.contains("a checkpoint of the run in"), "{stdout}");
    // A file in the run's folder that is no checkpoint is said to be none.
    let err = visualize_fails(&strs(&alone(
        "feature-maps",
        &run.join(train::rundir::CONFIG),
    )));
    assert!(
        !err.contains("a checkpoint of the run") && err.contains("config.json"),
        "{err}"
    );
    let err = visualize_fails(&["filters", "--weights", "best"]);
    assert!(err.contains("give --run DIR with it"), "{err}");
    for flag in ["--num-classes", "--seed"] {
        let err = visualize_fails(&["filters", "--weights", best.to_str().unwrap(), flag, "3"]);
        assert!(
            err.contains(&format!("{flag} 3: ")) && err.contains(&format!("leave {flag} out")),
            "{err}"
        );
    }

    let initial_out = dir.path().join("initial");
    let stdout = visualize(&[
        "filters",
        "--model",
        "lenet5",
        "--out",
        initial_out.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("initial weights (seed 0), no --weights given"),
        "{stdout}"
    );
    let initial = open_png(&initial_out.join("filters.png"));
    assert_eq!(initial.dimensions(), grid.size);
    assert!(initial != img, "initial kernels look like the saved ones");
}

#[test]
fn filters_of_an_rgb_model_are_colour_tiles() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = visualize(&[
        "filters",
        "--model",
        "resnet18-cifar",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("first layer conv1.weight: 64 kernels of 3x3x3"),
        "{stdout}"
    );
    let img = open_png(&dir.path().join("filters.png"));
    let grid = Grid::new(3, 3, 64, 8);
    assert_eq!(img.dimensions(), grid.size);
    let coloured = (0..64)
        .flat_map(|k| (0..9).map(move |t| (k, (t % 3, t / 3))))
        .map(|(k, at)| grid.pixel(&img, k, at))
        .filter(|[r, g, b]| r != g || g != b)
        .count();
    assert!(coloured > 64 * 9 / 2, "only {coloured} coloured taps");
}

#[test]
fn weights_of_another_model_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("lenet5.safetensors");
    save_lenet(&weights);
    let err = visualize_fails(&[
        "filters",
        "--model",
        "cnn-mnist",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        err.contains("lenet5.safetensors") && err.contains("does not match"),
        "{err}"
    );
    let unknown = visualize_fails(&["filters", "--model", "lenet7"]);
    assert!(unknown.contains("unknown model"), "{unknown}");
    // Another torchvision ResNet's file: its model named.
    let r18 = dir.path().join("r18.safetensors");
    let store = ParamStore::new(0, &Device::Cpu);
    zoo::build("resnet18", 1000, store.vb()).unwrap();
    layers::checkpoint::save(store.varmap(), &r18).unwrap();
    let err = visualize_fails(&[
        "filters",
        "--model",
        "resnet50",
        "--weights",
        r18.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        err.contains(
            "is a torchvision resnet18 checkpoint, not a resnet50 one: give --model resnet18"
        ),
        "{err}"
    );
    // Given alone, that file is read as the ResNet it holds, also in a LeNet-5 run's folder.
    let run = dir.path().join("run");
    lenet_run(&run);
    std::fs::copy(&r18, run.join("r18.safetensors")).unwrap();
    let stdout = visualize(&[
        "filters",
        "--weights",
        run.join("r18.safetensors").to_str().unwrap(),
        "--out",
        dir.path().join("in-run").to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("torchvision's resnet18 weights")
            && stdout.contains("not the lenet5 run's"),
        "{stdout}"
    );
    let alone = dir.path().join("alone");
    let stdout = visualize(&[
        "filters",
        "--weights",
        r18.to_str().unwrap(),
        "--out",
        alone.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("torchvision's resnet18 weights")
            && stdout.contains("first layer conv1.weight: 64 kernels of 3x7x7"),
        "{stdout}"
    );
}

/// A `w` x `h` picture: a bright disc on a dark background when `disc`, else stripes.
fn write_picture(path: &Path, w: u32, h: u32, disc: bool) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as i32 - w as i32 / 2, y as i32 - h as i32 / 2);
        let on = if disc {
            dx * dx + dy * dy < (h as i32 / 3).pow(2)
        } else {
            (x / 4) % 2 == 0
        };
        if on {
            image::Rgb([240, 200, 160])
        } else {
            image::Rgb([10, 20, 30])
        }
    });
    img.save(path).unwrap();
}

#[test]
fn feature_maps_draws_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("lenet5.safetensors");
    save_lenet(&weights);
    let run = |picture: &Path, out: &Path| {
        visualize(&[
            "feature-maps",
            "--model",
            "lenet5",
            "--weights",
            weights.to_str().unwrap(),
            "--image",
            picture.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let disc = dir.path().join("disc.png");
    write_picture(&disc, 60, 40, true);
    let out = dir.path().join("disc");
    let stdout = run(&disc, &out);
    assert!(
        stdout.contains("-> 1x28x28, MNIST normalisation"),
        "{stdout}"
    );
    assert!(stdout.contains("predicted class: "), "{stdout}");
    // The pictures' scales are said, and the logits' cells are the classes in order.
    assert!(
        stdout.contains("each channel's map is drawn over its own range")
            && stdout.contains("(logits: 10 values, classes 0-9 left to right)")
            && stdout.contains("(fc1: first 64 of 120 values)"),
        "{stdout}"
    );

    let input = open_png(&out.join("feature-maps-input.png"));
    let grid = Grid::new(28, 28, 1, 1);
    assert_eq!(input.dimensions(), grid.size);
    let corner = grid.pixel(&input, 0, (0, 0));
    assert!(
        corner[0] < 40 && corner[0] == corner[2],
        "dark grey corner, got {corner:?}"
    );
    let centre = grid.pixel(&input, 0, (14, 14));
    assert!(centre[0] > 180, "bright centre, got {centre:?}");

    // LeNet-5 at 28x28: conv1 6x12x12, conv2 16x4x4, then 120, 84 and 10 values.
    for (stage, n, side) in [("conv1", 6, 12), ("conv2", 16, 4)] {
        let img = open_png(&out.join(format!("feature-maps-{stage}.png")));
        let cols = (1..=n).find(|c| c * c >= n).unwrap();
        assert_eq!(
            img.dimensions(),
            Grid::new(side, side, n, cols).size,
            "{stage}"
        );
        assert_not_blank(&img, stage);
    }
    for (stage, values) in [("fc1", 64), ("fc2", 64), ("logits", 10)] {
        let img = open_png(&out.join(format!("feature-maps-{stage}.png")));
        let c = (720 / values).min(56);
        assert_eq!(img.height(), 64 + c, "{stage}");
        assert!(img.width() >= 32 + (values * c).max(120), "{stage}");
        assert_not_blank(&img, stage);
    }

    let stripes = dir.path().join("stripes.jpg");
    write_picture(&stripes, 28, 28, false);
    let other = dir.path().join("stripes");
    run(&stripes, &other);
    for stage in ["input", "conv1", "conv2"] {
        let name = format!("feature-maps-{stage}.png");
        assert!(
            open_png(&out.join(&name)) != open_png(&other.join(&name)),
            "{stage} is the same for two different images"
        );
    }
}

/// Weights whose logits overflow (finite, so a checkpoint holds them): the stages before are
/// drawn, the logits are not (no picture of NaN), and the error says which are written.
#[test]
fn feature_maps_draws_no_stage_that_is_not_finite() {
    let dir = tempfile::tempdir().unwrap();
    let store = ParamStore::new(3, &Device::Cpu);
    zoo::build("cnn-mnist", 10, store.vb()).unwrap();
    // fc1 gives 10 everywhere, the head 128 * 10 * 3e38 = infinity.
    for (name, var) in store.named_vars() {
        let value = match name.as_str() {
            "fc1.weight" => 0f32,
            "fc1.bias" => 10.0,
            "fc2.weight" => 3e38,
            _ => continue,
        };
        var.set(&Tensor::full(value, var.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
    let weights = dir.path().join("huge.safetensors");
    layers::checkpoint::save(store.varmap(), &weights).unwrap();
    let digit = dir.path().join("digit.png");
    write_picture(&digit, 28, 28, true);
    let out = dir.path().join("out");
    let output = command(&[
        "feature-maps",
        "--model",
        "cnn-mnist",
        "--weights",
        weights.to_str().unwrap(),
        "--image",
        digit.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("stage logits: not finite (NaN or infinity): not drawn"),
        "{stdout}"
    );
    assert!(
        stderr.contains("logits) are not finite") && stderr.contains("finite stages"),
        "{stderr}"
    );
    for stage in ["input", "conv1", "conv2", "fc1"] {
        assert!(
            out.join(format!("feature-maps-{stage}.png")).exists(),
            "{stage}"
        );
    }
    assert!(!out.join("feature-maps-logits.png").exists());
}

/// Pictures of an earlier call in the same folder that this one did not replace (another
/// model's stages) are named, so that they are not read as this model's.
#[test]
fn feature_maps_names_the_pictures_of_an_earlier_call() {
    let dir = tempfile::tempdir().unwrap();
    let digit = dir.path().join("digit.png");
    write_picture(&digit, 28, 28, true);
    let out = dir.path().join("out");
    let run = |model: &str| {
        visualize(&[
            "feature-maps",
            "--model",
            model,
            "--image",
            digit.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let first = run("lenet5");
    assert!(!first.contains("of an earlier call"), "{first}");
    // The MNIST CNN has no fc2: LeNet-5's stays, and is named.
    let second = run("cnn-mnist");
    assert!(
        second.contains("also holds feature-maps-fc2.png of an earlier call"),
        "{second}"
    );
    assert!(out.join("feature-maps-fc2.png").exists());
    let third = run("lenet5");
    assert!(!third.contains("of an earlier call"), "{third}");
}

#[test]
fn feature_maps_refuses_a_missing_or_broken_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let missing = visualize_fails(&[
        "feature-maps",
        "--model",
        "lenet5",
        "--image",
        "/nonexistent/digit.png",
        "--out",
        out,
    ]);
    assert!(missing.contains("/nonexistent/digit.png"), "{missing}");
    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"not a png").unwrap();
    let err = visualize_fails(&[
        "feature-maps",
        "--model",
        "lenet5",
        "--image",
        broken.to_str().unwrap(),
        "--out",
        out,
    ]);
    assert!(err.contains("cannot decode image"), "{err}");
}

/// `--weights` of a head trained for other classes (here 3) load without `--num-classes`:
/// the classifier's rows give the count, in `filters` and in `grad-cam` (whose classes are
/// then numbered); a contradicting `--num-classes` is refused naming both counts.
#[test]
fn a_checkpoint_of_another_class_count_loads_by_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let store = ParamStore::new(4, &Device::Cpu);
    zoo::build("lenet5", 3, store.vb()).unwrap();
    let weights = dir.path().join("three.safetensors");
    layers::checkpoint::save(store.varmap(), &weights).unwrap();
    let weights = weights.to_str().unwrap();
    let out = dir.path().to_str().unwrap();
    let digit = dir.path().join("digit.png");
    write_picture(&digit, 28, 28, true);
    let grad_cam = |class| {
        [
            "grad-cam",
            "--model",
            "lenet5",
            "--weights",
            weights,
            "--image",
            digit.to_str().unwrap(),
            "--class",
            class,
            "--out",
            out,
        ]
    };
    let stdout = visualize(&grad_cam("2"));
    assert!(stdout.contains("class 2 (class 2)"), "{stdout}");
    // Of the three classes, two are not the one predicted: each says which is.
    let told = ["0", "1", "2"]
        .into_iter()
        .filter(|&c| visualize(&grad_cam(c)).contains("(predicted: class "))
        .count();
    assert_eq!(told, 2);
    assert_not_blank(
        &open_png(&dir.path().join("grad-cam-digit-class2.png")),
        "grad-cam-digit-class2.png",
    );
    let err = visualize_fails(&grad_cam("3"));
    assert!(err.contains("out of range for 3 classes"), "{err}");
    // Beside a run's classes.json (three names, as the head has), the names are the run's;
    // a list of another length is not taken.
    let names = dir.path().join("classes.json");
    std::fs::write(&names, br#"["ant", "bee", "cat"]"#).unwrap();
    let stdout = visualize(&grad_cam("bee"));
    assert!(stdout.contains("class 1 (bee)"), "{stdout}");
    std::fs::write(&names, br#"["ant", "bee"]"#).unwrap();
    let stdout = visualize(&grad_cam("1"));
    assert!(stdout.contains("class 1 (class 1)"), "{stdout}");
    std::fs::remove_file(&names).unwrap();
    visualize(&[
        "filters",
        "--model",
        "lenet5",
        "--weights",
        weights,
        "--out",
        out,
    ]);
    let err = visualize_fails(&[
        "filters",
        "--model",
        "lenet5",
        "--weights",
        weights,
        "--num-classes",
        "10",
        "--out",
        out,
    ]);
    assert!(
        err.contains("three.safetensors") && err.contains("3 rows") && err.contains("10"),
        "{err}"
    );
}

/// A fine-tuning run of `--model resnet18` at `--image-size 32` (its files as
/// finetune-resnet50 writes them): grad-cam takes `layer3`, `layer4`'s map being 1x1 there,
/// and feature-maps feeds the run's transform and names its classes.
#[test]
fn a_resnet18_fine_tuning_run_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let mut config = train::config::RunConfig::new(
        "finetune-resnet50",
        train::config::DatasetKind::Folder,
        "resnet18",
    );
    config.train_transform = "imagenet-eval:32".into();
    config.test_transform = "imagenet-eval:32".into();
    std::fs::write(
        run.join(train::rundir::CONFIG),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    let classes: Vec<String> = ["ant", "bee", "cat"].map(String::from).to_vec();
    train::inference::save_classes(&run, &classes).unwrap();
    let store = ParamStore::new(3, &Device::Cpu);
    zoo::build("resnet18", 3, store.vb()).unwrap();
    layers::checkpoint::save(store.varmap(), &run.join(train::rundir::BEST)).unwrap();
    let picture = dir.path().join("picture.png");
    write_picture(&picture, 40, 30, true);
    let out = dir.path().join("out");
    let explain = |command: &str| {
        visualize(&[
            command,
            "--run",
            run.to_str().unwrap(),
            "--image",
            picture.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let stdout = explain("grad-cam");
    assert!(
        stdout.contains("layer4's map is 1x1") && stdout.contains("it is taken at layer3"),
        "{stdout}"
    );
    assert_not_blank(
        &open_png(&out.join("grad-cam-picture.png")),
        "grad-cam-picture.png",
    );
    let stdout = explain("feature-maps");
    let predicted = stdout
        .lines()
        .find(|l| l.contains("predicted class: "))
        .unwrap_or_default();
    assert!(
        stdout.contains("-> 3x32x32, the run's test transform imagenet-eval:32")
            && ["(ant)", "(bee)", "(cat)"]
                .iter()
                .any(|c| predicted.contains(c)),
        "{stdout}"
    );
}

/// grad-cam of a zoo model whose head has a number of classes of its own, outside any run, says
/// that its classes are named by number and the image taken at the model's native size (nothing
/// beside the file says either); a file with MNIST's ten classes (named) says nothing so.
#[test]
fn grad_cam_of_a_head_outside_any_run_says_what_it_assumes() {
    let dir = tempfile::tempdir().unwrap();
    let store = ParamStore::new(3, &Device::Cpu);
    zoo::build("lenet5", 5, store.vb()).unwrap();
    let five = dir.path().join("five.safetensors");
    layers::checkpoint::save(store.varmap(), &five).unwrap();
    let ten = dir.path().join("ten.safetensors");
    save_lenet(&ten);
    let picture = dir.path().join("picture.png");
    write_picture(&picture, 40, 30, true);
    for (weights, said) in [(&five, true), (&ten, false)] {
        let err = visualize_stderr(&[
            "grad-cam",
            "--model",
            "lenet5",
            "--weights",
            weights.to_str().unwrap(),
            "--image",
            picture.to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
        ]);
        let note = format!(
            "{}: no classes.json beside it names its 5 classes, so they are named by number \
             (class 0, class 1, ...), and the image is taken at lenet5's native 28x28",
            five.display()
        );
        assert_eq!(err.contains(&note), said, "{err}");
        assert_eq!(err.contains("named by number"), said, "{err}");
    }
}
