//! After training: `evaluate` gives the numbers the run logged for best and last; `predict`
//! gives the top-5 of a forward pass in eval mode; neither panics on extreme flag values.

#[path = "../../../tests/support/flag_scan.rs"]
mod flag_scan;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use candle_core::{Device, Tensor, D};

const BIN: &str = env!("CARGO_BIN_EXE_train-mnist");

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("train-mnist starts");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn trained(dir: &Path, extra: &[&str]) -> PathBuf {
    let data = dir.join("mnist");
    train::synthetic::write_mnist(&data, 96, 40).expect("synthetic MNIST");
    let out = dir.join("run");
    let args = [
        "--data-dir",
        &s(&data),
        "--model",
        "lenet5",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "0.003",
        "--out",
        &s(&out),
        "--device",
        "cpu",
    ];
    run(&[&args[..], extra].concat());
    out
}

/// `evaluate`'s top-1 and loss of `which` (best or last) equal the numbers the run logged.
fn evaluate_matches_the_log(out: &Path) {
    let csv = std::fs::read_to_string(out.join(train::rundir::METRICS_CSV)).expect("metrics");
    let rows: Vec<Vec<f64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|x| x.parse().expect("number")).collect())
        .collect();
    let best = rows
        .iter()
        .fold(&rows[0], |b, r| if r[4] > b[4] { r } else { b });
    for (which, row) in [("last", rows.last().expect("rows")), ("best", best)] {
        let log = run(&[
            "evaluate",
            "--run",
            &s(out),
            "--weights",
            which,
            "--device",
            "cpu",
        ]);
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join(format!("evaluation-{which}.json"))).expect("summary"),
        )
        .expect("json");
        let top1 = json["top1"].as_f64().expect("top1");
        let loss = json["loss"].as_f64().expect("loss");
        assert_eq!(
            format!("{top1:.4}"),
            format!("{:.4}", row[4]),
            "{which}: {log}"
        );
        assert!(
            (loss - row[3]).abs() <= 1e-6 * row[3].max(1.0),
            "{which}: {loss} vs {}",
            row[3]
        );
        assert_eq!(json["per_class"].as_array().map(Vec::len), Some(10));
        assert!(out.join(format!("confusion-{which}.png")).is_file());
    }
}

/// A run trained in bf16 (autocast) is evaluated in bf16 too, as its test passes were.
#[test]
fn evaluate_runs_in_the_runs_precision() {
    let dir = tempfile::tempdir().expect("temp dir");
    evaluate_matches_the_log(&trained(dir.path(), &["--precision", "bf16"]));
}

/// `--precision` overrides the run's: a bf16 run evaluated in f32 says so, records it in its
/// summary, and gives other (close) numbers than the bf16 pass; predict takes it too.
#[test]
fn evaluate_and_predict_take_another_precision() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = trained(dir.path(), &["--precision", "bf16"]);
    let summary = |precision: Option<&str>, file: &str| {
        let mut args = vec![
            "evaluate",
            "--run",
            out.to_str().expect("path"),
            "--device",
            "cpu",
        ];
        args.extend(precision.map(|p| ["--precision", p]).into_iter().flatten());
        let log = run(&args);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(file)).expect("summary")).expect("json");
        (log, json)
    };
    let (log, bf16) = summary(None, "evaluation-best.json");
    assert_eq!(bf16["precision"], "bf16", "{log}");
    assert!(!log.contains("the run trained in"), "{log}");
    let (log, f32) = summary(Some("f32"), "evaluation-best-f32.json");
    assert_eq!(f32["precision"], "f32", "{log}");
    assert!(out.join("confusion-best-f32.png").is_file(), "{log}");
    // The run-precision summary stays as it was.
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("evaluation-best.json")).expect("summary"))
            .expect("json");
    assert_eq!(kept, bf16);
    assert!(log.contains(" in f32 (the run trained in bf16)"), "{log}");
    let (a, b) = (
        bf16["loss"].as_f64().expect("loss"),
        f32["loss"].as_f64().expect("loss"),
    );
    if layers::autocast::cpu_bf16_kernel_active() {
        assert!(
            a != b && (a - b).abs() < 0.05 * a.max(b),
            "bf16 {a}, f32 {b}"
        );
    } else {
        // Without AVX512-BF16, bf16 autocast runs the products in float32: the same loss.
        assert_eq!(a, b, "bf16 autocast's float32 products");
    }
    // predict gives the bf16 forward pass's top-5 by default, the float32 one's in f32.
    let (image, pixels) = digit(dir.path());
    let predicted = |precision: &[&str]| {
        let printed = run(&[
            &["predict", "--run", &s(&out), &s(&image), "--device", "cpu"][..],
            precision,
        ]
        .concat());
        printed
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (f32, bf16) = (
        top5(&out, &pixels, train::config::Precision::F32),
        top5(&out, &pixels, train::config::Precision::Bf16),
    );
    if layers::autocast::cpu_bf16_kernel_active() {
        assert_ne!(f32, bf16, "the two precisions print apart");
    }
    assert_eq!(predicted(&[]), bf16);
    assert_eq!(predicted(&["--precision", "f32"]), f32);
}

#[test]
fn evaluate_reproduces_the_logged_numbers_and_predict_a_forward_pass() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = trained(dir.path(), &[]);
    evaluate_matches_the_log(&out);

    // A 28x28 grey digit: the test transform alone, as the run's test images saw it.
    let (image, pixels) = digit(dir.path());
    let printed = run(&["predict", "--run", &s(&out), &s(&image), "--device", "cpu"]);
    let lines: Vec<&str> = printed.lines().skip(1).collect();
    assert_eq!(
        lines,
        top5(&out, &pixels, train::config::Precision::F32),
        "{printed}"
    );
    // --logits: the same lines, then the network's outputs before softmax as a Python list,
    // those of the forward pass here; their softmax gives the printed percentages.
    let with_logits = run(&[
        "predict",
        "--run",
        &s(&out),
        &s(&image),
        "--device",
        "cpu",
        "--logits",
    ]);
    let (head, list) = with_logits
        .trim_end()
        .rsplit_once("\n  logits: ")
        .unwrap_or_else(|| panic!("no logits line: {with_logits}"));
    assert_eq!(head, printed.trim_end());
    let got: Vec<f32> = list
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .split(", ")
        .map(|v| v.parse().unwrap_or_else(|_| panic!("not a number: {v:?}")))
        .collect();
    let want = logits(&out, &pixels);
    assert_eq!(got.len(), 10, "{list}");
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
            "{got:?} against {want:?}"
        );
    }
    let total: f64 = got.iter().map(|v| f64::from(*v).exp()).sum();
    let best = got.iter().cloned().fold(f32::MIN, f32::max);
    let first = lines[0].trim_start();
    let printed_p: f64 = first[..first.find('%').expect("a percentage")]
        .parse()
        .expect("p");
    assert!(
        (f64::from(best).exp() / total * 100.0 - printed_p).abs() < 0.006,
        "{first} against {got:?}"
    );
    // The same with --image (as finetune-resnet50 predict and visualize take images), and
    // with the run found from its checkpoint's folder.
    let best = out.join(train::rundir::BEST);
    for args in [
        vec!["predict", "--run", &s(&out), "--image", &s(&image)],
        vec!["predict", "--weights", &s(&best), &s(&image)],
    ] {
        let again = run(&[&args[..], &["--device", "cpu"]].concat());
        assert_eq!(again, printed, "{args:?}");
    }
    // The run's folder without --run (as other tools take it): the flag is named.
    let bare = Command::new(BIN)
        .args(["evaluate", &s(&out)])
        .output()
        .expect("starts");
    let err = String::from_utf8_lossy(&bare.stderr);
    assert!(!bare.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "tip: {0} is a run's folder: give it as --run {0}",
            s(&out)
        )),
        "{err}"
    );
    // Neither --run nor a checkpoint inside a run's folder: said so.
    let elsewhere = dir.path().join("elsewhere.safetensors");
    std::fs::copy(&best, &elsewhere).expect("copy");
    for (args, says) in [
        (vec!["predict", &s(&image)], "predict needs --run DIR"),
        (
            vec!["predict", "--weights", &s(&elsewhere), &s(&image)],
            "lies in no run's folder",
        ),
        (vec!["predict", "--run", &s(&out)], "predict needs images"),
        // The run's folder where the images go (a guess from other tools): the flag it wants.
        (
            vec!["predict", &s(&out), &s(&image)],
            &format!(
                "; {0} is a run's folder, given where the images go: predict --run {0} IMAGE...",
                s(&out)
            ),
        ),
        (
            vec!["predict", "--weights", &s(&elsewhere), &s(&image)],
            "give --model NAME",
        ),
        (
            vec!["predict", "--model", "lenet5", &s(&image)],
            "--model lenet5 reads a checkpoint file",
        ),
        (
            vec![
                "predict",
                "--model",
                "resnet18-seed",
                "--weights",
                &s(&elsewhere),
                &s(&image),
            ],
            "--model resnet18-seed takes 3-channel images, and this program reads MNIST",
        ),
        (
            vec![
                "predict",
                "--model",
                "cnn-mnist",
                "--weights",
                &s(&elsewhere),
                &s(&image),
            ],
            "cannot load",
        ),
    ] {
        let ended = Command::new(BIN).args(&args).output().expect("starts");
        let err = String::from_utf8_lossy(&ended.stderr);
        assert!(
            !ended.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
    // With the model named, the file outside the run gives the run's answer: MNIST's test
    // transform and class names.
    let loose = run(&[
        "predict",
        "--model",
        "lenet5",
        "--weights",
        &s(&elsewhere),
        &s(&image),
        "--device",
        "cpu",
    ]);
    assert_eq!(loose, printed);
}

/// A run whose `config.json` and `classes.json` were removed is still evaluated and predicted
/// with: its state keeps the settings and the class names (as `--resume` writes them again).
#[test]
fn evaluate_and_predict_take_the_settings_from_the_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = trained(dir.path(), &[]);
    let (image, _) = digit(dir.path());
    let evaluated = run(&["evaluate", "--run", &s(&out), "--device", "cpu"]);
    let predicted = run(&["predict", "--run", &s(&out), &s(&image), "--device", "cpu"]);
    for file in [train::rundir::CONFIG, train::rundir::CLASSES] {
        std::fs::remove_file(out.join(file)).expect("remove");
    }
    let ended = Command::new(BIN)
        .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
        .output()
        .expect("starts");
    let err = String::from_utf8_lossy(&ended.stderr);
    assert!(ended.status.success(), "{err}");
    assert!(
        err.contains("config.json is missing: the run's settings come from its state.safetensors"),
        "{err}"
    );
    let summary = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("top-1") || l.contains("loss"))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        summary(&String::from_utf8_lossy(&ended.stdout)),
        summary(&evaluated)
    );
    assert_eq!(
        run(&["predict", "--run", &s(&out), &s(&image), "--device", "cpu"]),
        predicted
    );
    // The run's checkpoint given as a file is read as the run's too.
    let best = out.join(train::rundir::BEST);
    assert_eq!(
        run(&[
            "predict",
            "--weights",
            &s(&best),
            &s(&image),
            "--device",
            "cpu"
        ]),
        predicted
    );
}

/// `evaluate --limit-test N|all` tests on another share of the test split than the run's, and
/// names its outputs for it, so the run's own evaluation stays.
#[test]
fn evaluate_takes_another_test_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = trained(dir.path(), &["--limit-test", "20"]);
    let summary = |limit: &[&str], file: &str| {
        let log = run(&[
            &["evaluate", "--run", &s(&out), "--device", "cpu"][..],
            limit,
        ]
        .concat());
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(file)).expect("summary")).expect("json");
        (log, json)
    };
    let (log, own) = summary(&[], "evaluation-best.json");
    assert_eq!(own["samples"], 20, "{log}");
    // The data read is recorded: the run's (absolute) data directory.
    let data_dir = own["data_dir"].as_str().expect("data_dir").to_string();
    assert!(
        Path::new(&data_dir).is_absolute() && data_dir.ends_with("mnist"),
        "{data_dir}"
    );
    // The run's own limit, given: the same test set, the same names.
    let (log, same) = summary(&["--limit-test", "20"], "evaluation-best.json");
    assert_eq!(same, own, "{log}");
    let (log, all) = summary(&["--limit-test", "all"], "evaluation-best-test-all.json");
    assert_eq!(all["samples"], 40, "{log}");
    assert!(out.join("confusion-best-test-all.png").is_file(), "{log}");
    // A limit at or above the split's 40 images is the whole split, named so.
    std::fs::remove_file(out.join("evaluation-best-test-all.json")).expect("remove");
    let (log, over) = summary(&["--limit-test", "41"], "evaluation-best-test-all.json");
    assert_eq!(over, all, "{log}");
    assert!(!out.join("evaluation-best-test41.json").exists(), "{log}");
    let (log, ten) = summary(&["--limit-test", "10"], "evaluation-best-test10.json");
    assert_eq!(ten["samples"], 10, "{log}");
    // Each test image's prediction beside the summary, under its index in the whole test split
    // (torchvision's), in order; right as often as the summary's top-1 says.
    let rows = |file: &str| -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(out.join(file)).expect("predictions");
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("index,file,label,label_name,predicted,predicted_name")
        );
        lines
            .map(|l| l.split(',').map(String::from).collect())
            .collect()
    };
    let index = |row: &Vec<String>| row[0].parse::<usize>().expect("index");
    let subset = rows("predictions-best-test10.csv");
    assert_eq!(subset.len(), 10, "{log}");
    assert!(subset.windows(2).all(|w| index(&w[0]) < index(&w[1])));
    assert!(subset.iter().all(|r| index(r) < 40 && r[1].is_empty()));
    let right = subset.iter().filter(|r| r[2] == r[4]).count();
    assert_eq!(
        ten["top1"].as_f64().expect("top1"),
        100.0 * right as f64 / 10.0
    );
    let whole = rows("predictions-best-test-all.csv");
    let indices: Vec<usize> = whole.iter().map(index).collect();
    assert_eq!(indices, (0..40).collect::<Vec<_>>());
    // The same image, the same label and prediction in both tables.
    for row in &subset {
        assert_eq!(&whole[index(row)], row);
    }
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("evaluation-best.json")).expect("summary"))
            .expect("json");
    assert_eq!(kept, own);
    for (bad, said) in [("0", "test nothing"), ("ten", "not a count of images")] {
        let refused = Command::new(BIN)
            .args(["evaluate", "--run", &s(&out), "--limit-test", bad])
            .output()
            .expect("train-mnist starts");
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && err.contains("--limit-test") && err.contains(said),
            "{err}"
        );
    }
    // Another test batch size (smaller, for a machine with less memory): the same figures.
    let (log, batched) = summary(&["--test-batch-size", "3"], "evaluation-best.json");
    for key in ["samples", "top1", "top5", "per_class", "checkpoint"] {
        assert_eq!(batched[key], own[key], "{key}: {log}");
    }
    let loss = |j: &serde_json::Value| j["loss"].as_f64().expect("loss");
    assert!(
        (loss(&batched) - loss(&own)).abs() <= 1e-5 * loss(&own).abs(),
        "{log}"
    );
}

/// `evaluate` refuses the run's own data when its test split is no longer the one the run
/// tested on (its state records the count), as `--resume` refuses it; given as --data-dir, the
/// data as it is now is evaluated, with a note.
#[test]
fn evaluate_refuses_the_runs_data_once_changed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = trained(dir.path(), &[]);
    let data = dir.path().join("mnist");
    train::synthetic::write_mnist(&data, 96, 50).expect("synthetic MNIST");
    let refused = Command::new(BIN)
        .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
        .output()
        .expect("train-mnist starts");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains("has changed since it trained")
            && err.contains("now has 50 images, the run tested on 40")
            && err.contains("--data-dir"),
        "{err}"
    );
    assert!(!out.join("evaluation-best.json").exists(), "{err}");
    // The same number of test images with the same labels, but other pixels (IDX files carry
    // no names): refused too, by the images' sums the state keeps.
    let other = dir.path().join("mnist-other");
    train::synthetic::write_mnist(&other, 96, 40).expect("synthetic MNIST");
    let images = other.join("t10k-images-idx3-ubyte");
    let mut bytes = std::fs::read(&images).expect("images");
    bytes[16 + 100] ^= 0x55;
    let same = dir.path().join("mnist-same");
    train::synthetic::write_mnist(&same, 96, 40).expect("synthetic MNIST");
    std::fs::write(same.join("t10k-images-idx3-ubyte"), &bytes).expect("images");
    let changed = Command::new(BIN)
        .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
        .args(["--data-dir", &s(&same)])
        .output()
        .expect("train-mnist starts");
    let err = String::from_utf8_lossy(&changed.stderr);
    assert!(
        changed.status.success()
            && err.contains("with the same labels, but other images")
            && err.contains("these figures are not the run's test"),
        "{err}"
    );
    let unchanged = Command::new(BIN)
        .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
        .args(["--data-dir", &s(&other)])
        .output()
        .expect("train-mnist starts");
    let err = String::from_utf8_lossy(&unchanged.stderr);
    assert!(
        unchanged.status.success() && !err.contains("not the run's test"),
        "{err}"
    );
    let given = Command::new(BIN)
        .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
        .args(["--data-dir", &s(&data)])
        .output()
        .expect("train-mnist starts");
    let err = String::from_utf8_lossy(&given.stderr);
    assert!(given.status.success(), "{err}");
    assert!(
        err.contains("these figures are not the run's test"),
        "{err}"
    );
    // Named for the data: no evaluation of the run's own test is replaced.
    assert!(
        out.join("evaluation-best-data-mnist.json").is_file(),
        "{err}"
    );
    assert!(!out.join("evaluation-best.json").exists(), "{err}");
}

/// A `config.json` edited to a setting no run accepts (a `--limit-test` of 0, label smoothing
/// of 5) is refused naming the file, where `evaluate` tested 0 images and said 0%.
#[test]
fn an_edited_config_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = trained(dir.path(), &[]);
    let config = out.join("config.json");
    let saved = std::fs::read_to_string(&config).expect("config.json");
    let json: serde_json::Value = serde_json::from_str(&saved).expect("json");
    for (key, value, flag) in [
        (
            "limit_test",
            serde_json::json!(0),
            "--limit-train and --limit-test",
        ),
        ("label_smoothing", serde_json::json!(5.0), "label-smoothing"),
    ] {
        let mut edited = json.clone();
        edited[key] = value;
        std::fs::write(&config, edited.to_string()).expect("write");
        let refused = Command::new(BIN)
            .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
            .output()
            .expect("train-mnist starts");
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && err.contains("config.json") && err.contains(flag),
            "{key}: {err}"
        );
    }
    std::fs::write(&config, saved).expect("write");
    run(&["evaluate", "--run", &s(&out), "--device", "cpu"]);
}

/// The 28x28 grey digit `pixels` saved as `dir/digit.png`.
fn digit(dir: &Path) -> (PathBuf, Vec<u8>) {
    let image = dir.join("digit.png");
    let pixels: Vec<u8> = (0..28 * 28).map(|i| ((i * 37) % 251) as u8).collect();
    image::GrayImage::from_raw(28, 28, pixels.clone())
        .expect("image")
        .save(&image)
        .expect("png");
    (image, pixels)
}

/// The run's `best` network's output for the 28x28 grey `pixels` (1, 10): a forward pass in
/// eval mode, in the precision entered, with the MNIST test transform.
fn forward(out: &Path, pixels: &[u8]) -> Tensor {
    let (net, _) = zoo::load(
        "lenet5",
        10,
        Some(&out.join(train::rundir::BEST)),
        &Device::Cpu,
        0,
    )
    .expect("model");
    let x = Tensor::from_vec(
        pixels
            .iter()
            .map(|&p| (f32::from(p) / 255.0 - 0.1307) / 0.3081)
            .collect::<Vec<f32>>(),
        (1, 1, 28, 28),
        &Device::Cpu,
    )
    .expect("input");
    net.forward_t(&x, false).expect("forward")
}

/// The run's `best` network's logits for the digit `pixels`, in f32.
fn logits(out: &Path, pixels: &[u8]) -> Vec<f32> {
    let y = forward(out, pixels).flatten_all().expect("flat");
    y.to_vec1::<f32>().expect("logits")
}

/// `predict`'s top-5 lines for the digit `pixels` under the run's best checkpoint, from a
/// forward pass in `precision` ([`forward`]).
fn top5(out: &Path, pixels: &[u8], precision: train::config::Precision) -> Vec<String> {
    let _precision = precision.enter();
    let probs = candle_nn::ops::softmax(&forward(out, pixels), D::Minus1)
        .expect("softmax")
        .flatten_all()
        .expect("flat")
        .to_vec1::<f32>()
        .expect("probs");
    let mut order: Vec<usize> = (0..10).collect();
    order.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]));
    order[..5]
        .iter()
        .map(|&k| {
            format!(
                "  {:6.2}%  {}",
                probs[k] * 100.0,
                datasets::MNIST_CLASSES[k]
            )
        })
        .collect()
}

#[test]
fn evaluate_and_predict_flags_never_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = s(&trained(dir.path(), &[]));
    let image = dir.path().join("digit.png");
    image::RgbImage::from_pixel(40, 30, image::Rgb([200, 10, 10]))
        .save(&image)
        .expect("png");
    let image = s(&image);
    // A checkpoint outside any run, scored with --model.
    let loose = dir.path().join("loose.safetensors");
    std::fs::copy(Path::new(&out).join(train::rundir::BEST), &loose).expect("copy");
    let (loose, data) = (s(&loose), s(&dir.path().join("mnist")));
    let program = PathBuf::from(BIN);
    let mut failures = Vec::new();
    for (sub, base) in [
        (
            "evaluate",
            vec!["evaluate", "--run", &out, "--device", "cpu"],
        ),
        (
            "evaluate",
            vec![
                "evaluate",
                "--model",
                "lenet5",
                "--weights",
                &loose,
                "--data-dir",
                &data,
                "--device",
                "cpu",
            ],
        ),
        (
            "predict",
            vec!["predict", "--run", &out, &image, "--device", "cpu"],
        ),
    ] {
        failures.extend(flag_scan::scan(
            &program,
            &[sub],
            &base,
            dir.path(),
            Duration::from_secs(120),
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // A --run that is not there, or is a file, is named as such.
    let missing = s(&dir.path().join("no-such-run"));
    for (run, said) in [
        (missing.as_str(), "no such directory"),
        (image.as_str(), "a file, not a run directory"),
    ] {
        for sub in [
            vec!["evaluate", "--run", run],
            vec!["predict", "--run", run, &image],
        ] {
            let refused = Command::new(BIN).args(&sub).output().expect("starts");
            let err = String::from_utf8_lossy(&refused.stderr);
            assert!(!refused.status.success(), "{err}");
            assert!(err.contains(&format!("--run {run}: {said}")), "{err}");
        }
    }

    // What is not an image is refused, naming it and why, without reading it to its end; the
    // other images are still classified, and the exit status says that some were not.
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").expect("empty file");
    let folder = dir.path().join("a-folder");
    std::fs::create_dir(&folder).expect("folder");
    // A named pipe nothing writes to is not waited for.
    let fifo = dir.path().join("fifo.png");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let bad = [
        (s(&empty), "the file is empty"),
        (s(&folder), "a folder with no image file in it or below it"),
        (
            "/dev/zero".to_string(),
            "not an image file (a device or socket)",
        ),
        (
            s(&fifo),
            "no process opened the named pipe for writing within 10 s",
        ),
    ];
    let mut args = vec!["predict", "--run", &out, "--device", "cpu"];
    args.extend(bad.iter().map(|(path, _)| path.as_str()));
    args.push(&image);
    // (At most a minute: the named pipe is waited for ten seconds, not forever.)
    let mut child = Command::new(BIN)
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("train-mnist starts");
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("predict hangs on a named pipe nothing writes to");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let predicted = child.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&predicted.stderr);
    assert!(!predicted.status.success(), "{err}");
    for (path, expected) in &bad {
        assert!(
            err.contains(&format!("{path}: ")) && err.contains(expected),
            "{err}"
        );
        // The path is said once.
        let line = err.lines().find(|l| l.contains(expected)).expect("said");
        assert_eq!(line.matches(path.as_str()).count(), 1, "{line}");
    }
    assert!(
        err.contains("4 of 5 images could not be classified"),
        "{err}"
    );
    let printed = String::from_utf8_lossy(&predicted.stdout);
    assert!(
        printed.contains(&image) && printed.matches('%').count() == 5,
        "{printed}"
    );
    // A pipe is read (to a limit): the same top 5 as the file.
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cat '{image}' | '{BIN}' predict --run '{out}' --device cpu /dev/stdin"
        ))
        .output()
        .expect("sh runs");
    let through = String::from_utf8_lossy(&piped.stdout);
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    let lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains('%'))
            .map(String::from)
            .collect()
    };
    assert_eq!(lines(&through), lines(&printed));
}

/// A run trained with a relative `--data-dir` is evaluated from another directory: the
/// configuration holds the data directory absolute. Evaluating needs only the test files.
#[test]
fn evaluate_finds_a_relative_data_dir_from_elsewhere() {
    let dir = tempfile::tempdir().expect("temp dir");
    train::synthetic::write_mnist(&dir.path().join("mnist"), 96, 40).expect("synthetic MNIST");
    let trained = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--data-dir", "mnist", "--model", "lenet5", "--epochs", "1"])
        .args(["--out", "run", "--device", "cpu"])
        .output()
        .expect("train-mnist starts");
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let out = dir.path().join("run");
    let config = std::fs::read_to_string(out.join(train::rundir::CONFIG)).expect("config");
    assert!(config.contains(&s(&dir.path().join("mnist"))), "{config}");
    let elsewhere = tempfile::tempdir().expect("another directory");
    let evaluate = || {
        let evaluated = Command::new(BIN)
            .current_dir(elsewhere.path())
            .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
            .output()
            .expect("train-mnist starts");
        assert!(
            evaluated.status.success(),
            "{}",
            String::from_utf8_lossy(&evaluated.stderr)
        );
        String::from_utf8_lossy(&evaluated.stdout)
            .lines()
            .filter(|l| l.contains('%'))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let with_training_files = evaluate();
    assert_eq!(with_training_files.len(), 11, "{with_training_files:?}");
    // Evaluating reads the test files alone: the training files may be gone.
    for file in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"] {
        std::fs::remove_file(dir.path().join("mnist").join(file)).expect("remove");
    }
    assert_eq!(evaluate(), with_training_files);
    // Data moved away: the error says where the run's data was, and how to give it.
    std::fs::rename(dir.path().join("mnist"), dir.path().join("moved")).expect("move");
    let moved = Command::new(BIN)
        .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
        .output()
        .expect("train-mnist starts");
    let err = String::from_utf8_lossy(&moved.stderr);
    assert!(
        !moved.status.success()
            && err.contains(&format!("--data-dir {}", s(&dir.path().join("mnist"))))
            && err.contains("give --data-dir where the data is now"),
        "{err}"
    );
    // --data-dir where the data is now: the run's own data, under the run's output names.
    let summary = out.join("evaluation-best.json");
    std::fs::remove_file(&summary).expect("remove the summary");
    let evaluate_on = |data: &Path| {
        let evaluated = Command::new(BIN)
            .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
            .args(["--data-dir", &s(data)])
            .output()
            .expect("train-mnist starts");
        let printed = String::from_utf8_lossy(&evaluated.stdout).into_owned();
        assert!(evaluated.status.success(), "{printed}");
        printed
    };
    let moved = dir.path().join("moved");
    evaluate_on(&moved);
    let own = std::fs::read(&summary).expect("the run's own summary");
    // With the run's data back in place, another directory is other data: its outputs are
    // named after it, and the run's own evaluation stays.
    copy_dir(&moved, &dir.path().join("mnist"));
    let other = dir.path().join("other copy");
    copy_dir(&moved, &other);
    let printed = evaluate_on(&other);
    assert!(
        out.join("evaluation-best-data-other_copy.json").is_file()
            && out.join("confusion-best-data-other_copy.png").is_file(),
        "{printed}"
    );
    assert_eq!(std::fs::read(&summary).expect("summary"), own);
    // The run's own directory, spelt another way, is the run's data.
    std::fs::remove_file(&summary).expect("remove the summary");
    evaluate_on(&dir.path().join("mnist").join("..").join("mnist"));
    assert!(summary.is_file());

    // A subcommand on the run that fails: its standard error.
    let refused = |args: &[&str]| {
        let ended = Command::new(BIN)
            .arg(args[0])
            .args(["--run", &s(&out), "--device", "cpu"])
            .args(&args[1..])
            .output()
            .expect("train-mnist starts");
        assert!(!ended.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&ended.stderr).into_owned()
    };

    // A file, or a link to nothing, as --out is named so before evaluating.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "mine").expect("file");
    let err = refused(&["evaluate", "--out", &s(&file)]);
    assert!(err.contains("notes.txt: a file, not a directory"), "{err}");
    let dangling = dir.path().join("gone");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).expect("link");
    let err = refused(&["evaluate", "--out", &s(&dangling)]);
    assert!(
        err.contains("gone: a link to nothing, not a directory"),
        "{err}"
    );
    assert!(!err.contains("test images"), "evaluated first: {err}");

    // Another run's directory as --out is refused before evaluating: its own evaluation stays.
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).expect("mkdir");
    std::fs::write(theirs.join(train::rundir::CONFIG), "{}").expect("their config");
    std::fs::write(theirs.join("evaluation-best.json"), "theirs").expect("their summary");
    let err = refused(&["evaluate", "--out", &s(&theirs)]);
    assert!(err.contains("it holds another run"), "{err}");
    let kept = std::fs::read(theirs.join("evaluation-best.json")).expect("their summary");
    assert_eq!(kept, b"theirs");

    // Weights that are finite but overflow the outputs: evaluate and predict refuse to give
    // numbers computed from NaN, naming the weights.
    let mut tensors = layers::checkpoint::read(&out.join(train::rundir::BEST)).expect("best");
    for t in tensors.values_mut() {
        if t.rank() == 2 {
            *t = (t.ones_like().expect("ones") * 3e38).expect("huge");
        }
    }
    let huge = dir.path().join("huge.safetensors");
    candle_core::safetensors::save(&tensors, &huge).expect("save");
    let err = refused(&["evaluate", "--weights", &s(&huge)]);
    assert!(
        err.contains("not finite") && err.contains(&s(&huge)),
        "{err}"
    );
    let image = dir.path().join("digit.png");
    image::GrayImage::from_pixel(28, 28, image::Luma([200]))
        .save(&image)
        .expect("png");
    let err = refused(&["predict", "--weights", &s(&huge), &s(&image)]);
    assert!(
        err.contains("not finite") && err.contains(&s(&huge)),
        "{err}"
    );

    // Test images of another size than the run's: said before any forward pass.
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 14, 0, 0, 0, 14];
    images.extend(std::iter::repeat_n(7u8, 10 * 14 * 14));
    let mut labels = vec![0, 0, 8, 1, 0, 0, 0, 10];
    labels.extend(0..10u8);
    std::fs::write(small.join("t10k-images-idx3-ubyte"), images).expect("images");
    std::fs::write(small.join("t10k-labels-idx1-ubyte"), labels).expect("labels");
    let err = refused(&["evaluate", "--data-dir", &s(&small)]);
    assert!(
        err.contains(&format!(
            "the test images of --data-dir {} are 1x14x14 (CxHxW)",
            s(&small)
        )) && err.contains("it expects 1x28x28"),
        "{err}"
    );
}

/// `--weights best.safetensors` is a path from the current directory (as `torch.load` reads
/// one); where no such file is there but the run has it, the error names the run's file and
/// `--weights best`, for `evaluate` and `predict` alike.
#[test]
fn a_checkpoint_named_as_in_the_run_folder_is_pointed_to() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = trained(dir.path(), &[]);
    let elsewhere = tempfile::tempdir().expect("another directory");
    let (image, _) = digit(dir.path());
    for (command, extra) in [("evaluate", None), ("predict", Some(&image))] {
        let refused = Command::new(BIN)
            .current_dir(elsewhere.path())
            .args([command, "--run", &s(&out), "--weights", "best.safetensors"])
            .args(extra.map(|i| s(i)))
            .args(["--device", "cpu"])
            .output()
            .expect("train-mnist starts");
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{command}: {err}");
        assert!(
            err.contains(&format!(
                "--weights best.safetensors: no such file in the current directory (the path \
                 is read from there, not from the run's folder); the run's is {}: give \
                 --weights {} (or --weights best)",
                out.join("best.safetensors").display(),
                out.join("best.safetensors").display()
            )),
            "{command}: {err}"
        );
    }
    // From the run's folder the same name is that file.
    let evaluated = Command::new(BIN)
        .current_dir(&out)
        .args(["evaluate", "--run", ".", "--weights", "best.safetensors"])
        .args(["--device", "cpu"])
        .output()
        .expect("train-mnist starts");
    assert!(
        evaluated.status.success(),
        "{}",
        String::from_utf8_lossy(&evaluated.stderr)
    );
}

/// The run's own evaluation keeps its name when the run's folder has moved since (its summary
/// names the checkpoint where it was): a checkpoint file from elsewhere whose outputs' name
/// holds another file's evaluation is named `-2`.
#[test]
fn a_moved_runs_own_evaluation_keeps_its_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = trained(dir.path(), &[]);
    let evaluate = |dir: &Path, extra: &[&str]| {
        run(&[
            &["evaluate", "--run", &s(dir), "--device", "cpu"][..],
            extra,
        ]
        .concat())
    };
    evaluate(&out, &[]);
    let moved = dir.path().join("moved");
    std::fs::rename(&out, &moved).expect("move the run");
    evaluate(&moved, &[]);
    let names = |run: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(run)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("evaluation-"))
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&moved), ["evaluation-best.json"]);
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(moved.join("evaluation-best.json")).expect("summary"),
    )
    .expect("JSON");
    let file = std::fs::canonicalize(moved.join(train::rundir::BEST)).expect("best");
    assert_eq!(summary["weights_file"], s(&file));
    // Two files from elsewhere whose outputs' names meet: the second is named -2.
    for (folder, name) in [("a", "b-c"), ("a-b", "c")] {
        let folder = dir.path().join(folder);
        std::fs::create_dir_all(&folder).expect("mkdir");
        let copy = folder.join(format!("{name}.safetensors"));
        std::fs::copy(moved.join(train::rundir::LAST), &copy).expect("copy");
        evaluate(&moved, &["--weights", &s(&copy)]);
    }
    assert_eq!(
        names(&moved),
        [
            "evaluation-a-b-c-2.json",
            "evaluation-a-b-c.json",
            "evaluation-best.json"
        ]
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// A checkpoint outside any run (as a PyTorch user brings one) is scored with
/// `evaluate --model NAME --weights FILE` on this program's test split with a fresh run's
/// settings: a copy of a run's checkpoint gives the run's own figures, its outputs named for the
/// file beside it. A run's checkpoint is found without `--run`; what cannot be scored is refused,
/// naming why; another program's run is said to be one.
#[test]
fn evaluate_scores_a_checkpoint_outside_any_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = trained(dir.path(), &[]);
    let data = s(&dir.path().join("mnist"));
    let own = run(&["evaluate", "--run", &s(&out), "--device", "cpu"]);
    let loose = dir.path().join("from-pytorch");
    std::fs::create_dir(&loose).expect("folder");
    let file = loose.join("lenet.safetensors");
    std::fs::copy(out.join(train::rundir::BEST), &file).expect("copy");
    let scored = run(&[
        "evaluate",
        "--model",
        "lenet5",
        "--weights",
        &s(&file),
        "--data-dir",
        &data,
        "--device",
        "cpu",
    ]);
    // The same figures, line for line, but for the file's name in the first.
    let figures = |text: &str| -> Vec<String> {
        text.lines()
            .take_while(|l| !l.starts_with("wrote "))
            .map(|l| l.split_once(" on ").map_or(l, |(_, rest)| rest).to_string())
            .collect()
    };
    assert_eq!(figures(&scored), figures(&own), "{scored}\n{own}");
    assert!(scored.starts_with(&format!("{} on ", s(&file))), "{scored}");
    let json = |path: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).expect("evaluation")).expect("json")
    };
    let (mine, runs) = (
        json(&loose.join("evaluation-lenet.json")),
        json(&out.join("evaluation-best.json")),
    );
    for key in ["samples", "loss", "top1", "top5", "per_class"] {
        assert_eq!(mine[key], runs[key], "{key}");
    }
    assert!(loose.join("confusion-lenet.png").is_file());
    assert!(mine["checkpoint"].is_null(), "{mine}");
    assert_eq!(mine["model"], "lenet5");
    // Other settings never replace these figures: another precision or a subset is named so,
    // other test data takes the next free name; the same settings again take the same name.
    let again = |extra: &[&str], data: &str| {
        let args = [
            "evaluate",
            "--model",
            "lenet5",
            "--weights",
            &s(&file),
            "--device",
            "cpu",
        ];
        run(&[&args[..], &["--data-dir", data], extra].concat())
    };
    let copy = dir.path().join("mnist-copy");
    copy_dir(Path::new(&data), &copy);
    for (extra, data, named) in [
        (&["--precision", "bf16"][..], data.as_str(), "lenet-bf16"),
        (&["--limit-test", "20"][..], data.as_str(), "lenet-test20"),
        (&[][..], &s(&copy), "lenet-2"),
        (&[][..], data.as_str(), "lenet"),
    ] {
        let text = again(extra, data);
        assert!(text.contains(&format!("evaluation-{named}.json")), "{text}");
    }
    assert_eq!(
        json(&loose.join("evaluation-lenet.json"))["samples"],
        runs["samples"]
    );
    assert_eq!(
        json(&loose.join("evaluation-lenet-test20.json"))["samples"],
        20
    );
    assert_eq!(
        json(&loose.join("evaluation-lenet-bf16.json"))["precision"],
        "bf16"
    );

    // A run's checkpoint without --run: read as its run (the same outputs' names).
    let beside = Command::new(BIN)
        .args(["evaluate", "--weights", &s(&out.join(train::rundir::LAST))])
        .args(["--device", "cpu"])
        .output()
        .expect("starts");
    let err = String::from_utf8_lossy(&beside.stderr);
    assert!(beside.status.success(), "{err}");
    assert!(
        err.contains(&format!("a checkpoint of the run in {}", s(&out))),
        "{err}"
    );
    assert!(out.join("evaluation-last.json").is_file());

    // Another program's run (its config.json says so): scored as its own program would, said.
    // Made by editing config.json with the state out of the way (config.json edited beside the
    // state is refused: it disagrees with the state).
    let state = out.join(train::rundir::STATE);
    let aside = out.with_extension("state-aside");
    std::fs::rename(&state, &aside).expect("move the state aside");
    let config = out.join(train::rundir::CONFIG);
    let text = std::fs::read_to_string(&config).expect("config");
    let other = text.replace("\"train-mnist\"", "\"train-cifar\"");
    assert_ne!(other, text);
    std::fs::write(&config, other).expect("config");
    let foreign = Command::new(BIN)
        .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
        .output()
        .expect("starts");
    let err = String::from_utf8_lossy(&foreign.stderr);
    assert!(foreign.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "--run {}: a run of train-cifar (lenet5 on MNIST), scored as it was set up, as \
             `train-cifar evaluate` would",
            s(&out)
        )),
        "{err}"
    );
    assert_eq!(
        figures(&String::from_utf8_lossy(&foreign.stdout)),
        figures(&own)
    );
    std::fs::write(&config, text).expect("config");
    std::fs::rename(&aside, &state).expect("put the state back");

    // A head of five classes, for MNIST's ten.
    let five = loose.join("five.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).expect("load");
    for name in ["classifier.4.weight", "classifier.4.bias"] {
        let t = tensors
            .get(name)
            .expect("head")
            .narrow(0, 0, 5)
            .expect("narrow");
        tensors.insert(name.to_string(), t);
    }
    candle_core::safetensors::save(&tensors, &five).expect("save");
    let (file, five, best) = (s(&file), s(&five), s(&out.join(train::rundir::BEST)));
    for (args, says) in [
        (vec!["evaluate"], "evaluate needs --run DIR"),
        (
            vec!["evaluate", "--weights", &file],
            "lies in no run's folder (no readable config.json beside it), so its model and data \
             are unknown: give --model NAME",
        ),
        (
            vec!["evaluate", "--model", "lenet5"],
            "--model lenet5 reads a checkpoint file",
        ),
        (
            vec!["evaluate", "--model", "lenet5", "--weights", &best],
            "its folder holds a run's files, whose evaluation files this would replace: give \
             --out DIR for this evaluation, or leave out --model to score it as its run was set \
             up",
        ),
        (
            vec!["evaluate", "--model", "cnn-mnist", "--weights", &file],
            "cannot load",
        ),
        (
            vec!["evaluate", "--model", "resnet18-seed", "--weights", &file],
            "train-mnist trains cnn-mnist or lenet5; --model \"resnet18-seed\" is not one of them",
        ),
        (
            vec!["evaluate", "--model", "lenet5", "--weights", &five],
            "its classifier.4.weight has 5 rows (classes), and MNIST's test split, which --model \
             lenet5 is scored on, has 10 classes",
        ),
        (
            vec![
                "evaluate",
                "--model",
                "lenet5",
                "--weights",
                &file,
                "--run",
                &s(&out),
            ],
            "cannot be used with",
        ),
        (
            vec![
                "evaluate",
                "--model",
                "lenet5",
                "--weights",
                &file,
                "--out",
                &s(&out),
            ],
            "it holds a run, whose evaluation files this would replace",
        ),
        (
            vec!["evaluate", "--run", &s(&out), "--limit-test", "-5"],
            "invalid value '-5' for '--limit-test <N|all>'",
        ),
        (
            vec!["evaluate", "--model", "lenet5", "--weights", ""],
            "a value is required for '--weights <WEIGHTS>' but none was supplied",
        ),
    ] {
        let ended = Command::new(BIN)
            .args(&args)
            .args(["--data-dir", &data, "--device", "cpu"])
            .output()
            .expect("starts");
        let err = String::from_utf8_lossy(&ended.stderr);
        assert!(
            !ended.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
}

/// `predict` answers in the order the images were given, `--image` and the positional images
/// mixed (clap keeps the two apart).
#[test]
fn predict_keeps_the_order_of_the_images() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = trained(dir.path(), &[]);
    let (image, _) = digit(dir.path());
    let named: Vec<String> = ["c.png", "a.png", "b.png"]
        .iter()
        .map(|name| {
            let path = dir.path().join(name);
            std::fs::copy(&image, &path).expect("copy");
            s(&path)
        })
        .collect();
    let text = run(&[
        "predict",
        "--run",
        &s(&out),
        &named[0],
        &named[1],
        "--image",
        &named[2],
        "--device",
        "cpu",
    ]);
    let printed: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(printed, named, "{text}");

    // A folder stands for the images in it and below it, sorted by path; hidden files and
    // files not named as images are passed over.
    let folder = dir.path().join("photos");
    std::fs::create_dir_all(folder.join("sub")).expect("folders");
    for name in ["b.png", "a.PNG", "sub/c.png", ".hidden.png", "notes.txt"] {
        std::fs::copy(&image, folder.join(name)).expect("copy");
    }
    let text = run(&[
        "predict",
        "--run",
        &s(&out),
        &named[0],
        &s(&folder),
        "--device",
        "cpu",
    ]);
    let printed: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
    let expected = [
        named[0].clone(),
        s(&folder.join("a.PNG")),
        s(&folder.join("b.png")),
        s(&folder.join("sub/c.png")),
    ];
    assert_eq!(printed, expected, "{text}");
    // An entry named as an image that is none (a link to nothing) is said in its place; the
    // folder's other images are still classified.
    std::os::unix::fs::symlink(dir.path().join("gone.png"), folder.join("zz.png")).expect("link");
    let ended = Command::new(BIN)
        .args(["predict", "--run", &s(&out), &s(&folder), "--device", "cpu"])
        .output()
        .expect("starts");
    let err = String::from_utf8_lossy(&ended.stderr);
    let printed = String::from_utf8_lossy(&ended.stdout);
    assert!(
        !ended.status.success()
            && err.contains(&s(&folder.join("zz.png")))
            && err.contains("1 of 4 images could not be classified")
            && printed.lines().filter(|l| !l.starts_with(' ')).count() == 3,
        "{printed}{err}"
    );
    // A folder without images, and a run's folder given as images: refused, named.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("folder");
    for (folder, says) in [
        (&empty, "a folder with no image file in it or below it"),
        (&out, "a training run's folder, not a folder of images"),
    ] {
        let ended = Command::new(BIN)
            .args(["predict", "--run", &s(&out), &s(folder), "--device", "cpu"])
            .output()
            .expect("starts");
        let err = String::from_utf8_lossy(&ended.stderr);
        assert!(
            !ended.status.success()
                && err.contains(&format!("{}: {says}", s(folder)))
                && err.contains("1 of 1 images could not be classified"),
            "{err}"
        );
    }
}

/// Another run's checkpoint read with this run's settings (`--run A --weights B/best`) is said
/// to be read so where B's own settings differ (its test transform here), naming them and the
/// way to read it as its run; where they are the same, nothing is said.
#[test]
fn another_runs_checkpoint_read_otherwise_is_said() {
    let (a, b, c) = (
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    );
    let run_a = trained(a.path(), &[]);
    let run_b = trained(b.path(), &["--test-transform", "normalize:0.5:0.5"]);
    let run_c = trained(c.path(), &[]);
    let (image, _) = digit(a.path());
    for (other, said) in [(&run_b, true), (&run_c, false)] {
        let weights = s(&other.join(train::rundir::BEST));
        for sub in [
            vec!["evaluate", "--run", &s(&run_a), "--weights", &weights],
            vec![
                "predict",
                "--run",
                &s(&run_a),
                "--weights",
                &weights,
                &s(&image),
            ],
        ] {
            let ended = Command::new(BIN)
                .args(&sub)
                .args(["--device", "cpu"])
                .output()
                .expect("starts");
            let err = String::from_utf8_lossy(&ended.stderr);
            assert!(ended.status.success(), "{sub:?}: {err}");
            let note = format!(
                "note: --weights {weights}: a checkpoint of the run in {}, which had \
                 --test-transform normalize:0.5:0.5 (here mnist-test); read with --run {}'s \
                 settings",
                s(other),
                s(&run_a)
            );
            assert_eq!(err.contains(&note), said, "{sub:?}: {err}");
            assert_eq!(err.contains("a checkpoint of the run in"), said, "{err}");
        }
    }
}

/// A run whose `classes.json` lists another number of classes than its checkpoint's head has
/// is refused naming that list as the possible fault.
#[test]
fn a_class_list_of_another_length_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = trained(dir.path(), &[]);
    let path = out.join(train::rundir::CLASSES);
    let classes: Vec<String> =
        serde_json::from_slice(&std::fs::read(&path).expect("classes")).expect("json");
    std::fs::write(&path, serde_json::to_vec(&classes[..5]).expect("json")).expect("write");
    let ended = Command::new(BIN)
        .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
        .output()
        .expect("starts");
    let err = String::from_utf8_lossy(&ended.stderr);
    assert!(!ended.status.success(), "{err}");
    // The state keeps the classes: the list is compared with it first, naming both.
    assert!(
        err.contains(&format!(
            "classes.json and state.safetensors disagree (label 5: none in classes.json, {:?} in \
             the state; 5 and 10 classes)",
            classes[5]
        )),
        "{err}"
    );
    // Without the state, loading the checkpoint for five classes says so.
    std::fs::remove_file(out.join(train::rundir::STATE)).expect("remove the state");
    let ended = Command::new(BIN)
        .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
        .output()
        .expect("starts");
    let err = String::from_utf8_lossy(&ended.stderr);
    assert!(!ended.status.success(), "{err}");
    let said = format!(
        "loading {} for the 5 classes that {} lists",
        s(&out.join(train::rundir::BEST)),
        s(&path)
    );
    assert!(err.contains(&said), "{err}");
}
