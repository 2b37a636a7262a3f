//! End-to-end runs of `train-cifar`: every output on tiny synthetic CIFAR-10 batches, a clear
//! refusal of a model that does not fit; with CNN_SHARED_DIR set, the real JPEG archive.

#[path = "../../../tests/support/flag_scan.rs"]
mod flag_scan;

use std::path::Path;
use std::process::{Command, Output};

fn train_cifar(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_train-cifar"))
        .args(args)
        .args(["--device", "cpu", "--workers", "2"])
        .output()
        .expect("train-cifar starts")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn assert_outputs(dir: &Path, epochs: usize) {
    for name in train::rundir::OUTPUTS {
        assert!(
            dir.join(name).is_file(),
            "{name} missing in {}",
            dir.display()
        );
    }
    let csv = std::fs::read_to_string(dir.join(train::rundir::METRICS_CSV)).expect("metrics.csv");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("epoch,train_loss,train_acc,test_loss,test_acc,test_top5,lr,seconds")
    );
    assert_eq!(lines.count(), epochs);
}

#[test]
fn synthetic_cifar_run_writes_every_output_and_onecycle_steps_per_batch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("cifar");
    train::synthetic::write_cifar10(&data, 8, 20).expect("synthetic CIFAR-10");
    let out = dir.path().join("run");
    let args = [
        "--data-dir",
        &s(&data),
        "--out",
        &s(&out),
        "--epochs",
        "2",
        "--batch-size",
        "20",
        "--schedule",
        "onecycle",
        "--label-smoothing",
        "0.1",
    ];
    let run = train_cifar(&args);
    assert!(run.status.success(), "{}", text(&run));
    assert_outputs(&out, 2);
    // Batches of other sizes than the official ones (a file cut at a record's end, or a
    // subset as here): said.
    assert!(
        text(&run).contains(&format!(
            "read CIFAR-10: 40 training images from {}, 20 test images from {}; the official \
             CIFAR-10 has 50000 and 10000",
            data.join("data_batch_1..5.bin").display(),
            data.join("test_batch.bin").display()
        )),
        "{}",
        text(&run)
    );
    let config = std::fs::read_to_string(out.join(train::rundir::CONFIG)).expect("config.json");
    assert!(config.contains("\"resnet18-seed\""), "{config}");
    assert!(config.contains("\"onecycle\""), "{config}");
    // OneCycle over 2 epochs of 2 batches ends at max_lr / 25 / 1e4 = 4e-7 after the last batch.
    let csv = std::fs::read_to_string(out.join(train::rundir::METRICS_CSV)).expect("metrics.csv");
    let lr: f64 = csv
        .lines()
        .nth(2)
        .and_then(|l| l.split(',').nth(6))
        .and_then(|v| v.parse().ok())
        .expect("lr");
    assert!((lr - 4e-7).abs() < 1e-13, "{csv}");
    // `evaluate` reports the loss with the run's criterion, and says so.
    let evaluated = Command::new(env!("CARGO_BIN_EXE_train-cifar"))
        .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
        .output()
        .expect("train-cifar starts");
    let said = text(&evaluated);
    assert!(evaluated.status.success(), "{said}");
    assert!(
        said.contains("(with the run's label smoothing 0.1), top-1"),
        "{said}"
    );
    let report = std::fs::read_to_string(out.join("evaluation-best.json")).expect("evaluation");
    let report: serde_json::Value = serde_json::from_str(&report).expect("JSON");
    assert_eq!(report["label_smoothing"], 0.1, "{report}");
}

/// CIFAR-10 as an image folder (`train/` and `test/`, one folder per class): image files in no
/// class folder are passed over as torchvision's `ImageFolder` passes them over, and the line
/// saying what was read names them (as for `finetune-resnet50`'s folders; a tester).
#[test]
fn cifar_folder_names_the_images_it_passes_over() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("cifar");
    // A 32x32 PPM (P6) image of one colour.
    let ppm = |path: &Path, shade: u8| {
        let mut bytes = b"P6\n32 32\n255\n".to_vec();
        bytes.extend(std::iter::repeat_n(shade, 32 * 32 * 3));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("folder");
        std::fs::write(path, bytes).expect("image");
    };
    for split in ["train", "test"] {
        for (i, class) in datasets::CIFAR10_CLASSES.iter().enumerate() {
            ppm(&data.join(split).join(class).join("0.ppm"), 20 * i as u8);
        }
    }
    ppm(&data.join("stray.ppm"), 7);
    ppm(&data.join("train").join("loose.ppm"), 9);
    // One epoch on `data` into `out`: what it said.
    let said = |data: &Path, out: &str| {
        let out = dir.path().join(out);
        let run = train_cifar(&["--data-dir", &s(data), "--out", &s(&out), "--epochs", "1"]);
        assert!(run.status.success(), "{}", text(&run));
        text(&run)
    };
    let log = said(&data, "run");
    assert!(
        log.contains("passed over, as in no class folder")
            && log.contains("stray.ppm")
            && log.contains("loose.ppm"),
        "{log}"
    );
    // Beside CIFAR-10's binary batches, which are what is read, an image is no image passed
    // over by an image folder: not said.
    let batches = dir.path().join("batches");
    train::synthetic::write_cifar10(&batches, 8, 20).expect("synthetic CIFAR-10");
    ppm(&batches.join("sample.ppm"), 7);
    let log = said(&batches, "run2");
    assert!(!log.contains("passed over, as in no class folder"), "{log}");
}

/// The data held "on the device" (here the CPU: the same code as on a GPU) trains to the very
/// same weights as the host loader; bf16 autocast trains too, to different but finite weights.
#[test]
fn device_resident_data_matches_the_host_loader_and_bf16_trains() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("cifar");
    train::synthetic::write_cifar10(&data, 4, 2).expect("synthetic CIFAR-10");
    let run = |name: &str, extra: &[&str]| -> (String, Vec<u8>) {
        let out = dir.path().join(name);
        let (data, out_arg) = (s(&data), s(&out));
        let args = [
            &[
                "--data-dir",
                &data,
                "--out",
                &out_arg,
                "--epochs",
                "1",
                "--batch-size",
                "16",
            ][..],
            extra,
        ]
        .concat();
        let run = train_cifar(&args);
        let log = text(&run);
        assert!(run.status.success(), "{log}");
        let weights = std::fs::read(out.join(train::rundir::LAST)).expect("weights");
        (log, weights)
    };
    let (host_log, host) = run("host", &["--data-placement", "host"]);
    let (device_log, device) = run("device", &["--data-placement", "device"]);
    assert!(!host_log.contains("augmented there"), "{host_log}");
    assert!(device_log.contains("train data on cpu"), "{device_log}");
    assert!(
        host == device,
        "device-resident batches changed the weights"
    );

    let (bf16_log, bf16) = run("bf16", &["--precision", "bf16"]);
    // The log names the instructions that run the products (AMX's tiles where the CPU has them
    // and Linux grants them).
    let isa = match layers::autocast::cpu_bf16_isa() {
        Some(isa) => format!("bf16 autocast (products on {isa})"),
        None => "bf16 autocast (float32 products".into(),
    };
    assert!(bf16_log.contains(&isa), "{isa}: {bf16_log}");
    if layers::autocast::cpu_bf16_isa().is_some() {
        assert!(bf16 != host, "bf16 autocast left the weights bit-identical");
    } else {
        // Without AVX512-BF16 the products run in float32 (`autocast::cpu_bf16_kernel`).
        assert!(
            bf16 == host,
            "bf16 autocast's float32 products changed the weights"
        );
    }
    let tensors = safetensors::SafeTensors::deserialize(&bf16).expect("safetensors");
    let fc = tensors.tensor("fc.weight").expect("fc.weight");
    assert_eq!(fc.dtype(), safetensors::Dtype::F32);
    assert!(fc
        .data()
        .chunks_exact(4)
        .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()));
    let config = std::fs::read_to_string(dir.path().join("bf16/config.json")).expect("config");
    assert!(config.contains("\"precision\": \"bf16\""), "{config}");
}

/// A test transform that makes inputs of another size, or normalises otherwise, than the
/// training transform: the run trains (the model takes either), and says so before it does.
#[test]
fn transforms_that_differ_between_training_and_testing_are_said() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("cifar");
    train::synthetic::write_cifar10(&data, 2, 4).expect("synthetic CIFAR-10");
    let run = |out: &str, extra: &[&str]| {
        let out = s(&dir.path().join(out));
        let args = [
            "--data-dir",
            &s(&data),
            "--out",
            &out,
            "--model",
            "resnet18-cifar",
        ];
        train_cifar(&[&args[..], &["--epochs", "1", "--batch-size", "4"], extra].concat())
    };
    let differing = run(
        "run",
        &[
            "--test-transform",
            "resize:40,center-crop:40,normalize:imagenet",
        ],
    );
    let log = text(&differing);
    assert!(differing.status.success(), "{log}");
    assert!(
        log.contains("--test-transform resize:40,center-crop:40,normalize:imagenet 3x40x40")
            && log.contains("tested on inputs of another size")
            && log.contains("normalise differently"),
        "{log}"
    );
    // The defaults say nothing.
    let plain = run("plain", &[]);
    let log = text(&plain);
    assert!(plain.status.success(), "{log}");
    assert!(
        !log.contains("another size") && !log.contains("normalise differently"),
        "{log}"
    );
}

#[test]
fn a_model_that_does_not_fit_fails_before_training() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("cifar");
    train::synthetic::write_cifar10(&data, 2, 4).expect("synthetic CIFAR-10");
    let out = dir.path().join("run");
    let run = train_cifar(&[
        "--data-dir",
        &s(&data),
        "--out",
        &s(&out),
        "--model",
        "lenet5",
    ]);
    assert!(!run.status.success());
    let log = text(&run);
    // Refused by its channels before the data is read.
    assert!(
        log.contains(
            "--model lenet5: it takes 1-channel images, and train-cifar reads CIFAR-10 \
             (3-channel); it trains resnet18-seed, resnet18-cifar (made for 3x32x32)"
        ) && !log.contains("read CIFAR-10"),
        "{log}"
    );
    assert!(!out.join(train::rundir::METRICS_CSV).exists());

    // A transform that does not fit the images is refused before training, naming the flag,
    // and leaves nothing that would hold the directory.
    let run = train_cifar(&[
        "--data-dir",
        &s(&data),
        "--out",
        &s(&out),
        "--model",
        "resnet18-cifar",
        "--train-transform",
        "random-crop:64:4,flip,normalize:cifar10",
    ]);
    assert!(!run.status.success());
    let log = text(&run);
    assert!(
        log.contains("--train-transform random-crop:64:4") && log.contains("3x32x32"),
        "{log}"
    );
    assert!(!out.join(train::rundir::CONFIG).exists());

    // A last training batch of one image, which torchvision's ResNet-18 (its last stage at 1x1
    // here) cannot batch-normalise: refused before training, saying what to change.
    let run = train_cifar(&[
        "--data-dir",
        &s(&data),
        "--out",
        &s(&out),
        "--model",
        "resnet18",
        "--limit-train",
        "9",
        "--batch-size",
        "8",
        "--epochs",
        "1",
    ]);
    assert!(!run.status.success());
    let log = text(&run);
    assert!(
        log.contains("would hold one image (9 images in batches of 8)")
            && log.contains("resnet18 cannot train on")
            && log.contains("--drop-last"),
        "{log}"
    );
    assert!(!out.join(train::rundir::CONFIG).exists(), "{log}");
}

/// `predict --model NAME --weights FILE` of a head CIFAR-10 does not have: a torchvision ImageNet
/// checkpoint (1000 outputs) is read as ImageNet's images are (224x224, ImageNet's mean and
/// std) and named by ImageNet's classes, as `weights.transforms()` would; another count is named
/// `class K`, each said on standard error.
#[test]
fn predict_reads_an_imagenet_head_as_imagenet() {
    use candle_core::Device;
    let dir = tempfile::tempdir().expect("temp dir");
    // A 40x30 PPM of a gradient: any image will do, as long as the transforms tell apart.
    let image = dir.path().join("photo.ppm");
    let mut ppm = b"P6\n40 30\n255\n".to_vec();
    ppm.extend((0..40 * 30 * 3).map(|i| (i * 7 % 251) as u8));
    std::fs::write(&image, ppm).expect("write the image");
    let predict = |model: &str, weights: &Path| {
        Command::new(env!("CARGO_BIN_EXE_train-cifar"))
            .args([
                "predict",
                "--model",
                model,
                "--weights",
                &s(weights),
                "--logits",
            ])
            .args([s(&image).as_str(), "--device", "cpu"])
            .output()
            .expect("train-cifar starts")
    };

    let store = layers::ParamStore::new(3, &Device::Cpu);
    let model = zoo::build("resnet18", 1000, store.vb()).expect("resnet18");
    let weights = dir.path().join("resnet18-imagenet.safetensors");
    layers::checkpoint::save(store.varmap(), &weights).expect("save");
    let run = predict("resnet18", &weights);
    assert!(run.status.success(), "{}", text(&run));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("has 1000 outputs, ImageNet's classes for resnet18, not CIFAR-10's 10")
            && err.contains("`imagenet-eval` at 224x224"),
        "{err}"
    );
    // The logits are the model's on ImageNet's evaluation transform at 224x224.
    let classes = datasets::catalog::imagenet_classes();
    let expected = train::inference::Predictor::new(
        model.as_ref(),
        datasets::Transform::imagenet_eval(224),
        (3, 224),
        &classes,
        &Device::Cpu,
    )
    .expect("predictor")
    .predict(&image)
    .expect("prediction");
    let out = String::from_utf8_lossy(&run.stdout);
    let printed: Vec<f32> = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("logits: ["))
        .expect("a logits line")
        .trim_end_matches(']')
        .split(", ")
        .map(|v| v.parse().expect("a float"))
        .collect();
    assert_eq!(printed, expected.logits);
    assert!(out.contains(&expected.top5[0].0), "{out}");

    // 7 outputs, no classes.json beside the file: CIFAR-10's transform, outputs named class K.
    let store = layers::ParamStore::new(3, &Device::Cpu);
    zoo::build("resnet18-cifar", 7, store.vb()).expect("resnet18-cifar");
    let weights = dir.path().join("seven.safetensors");
    layers::checkpoint::save(store.varmap(), &weights).expect("save");
    let run = predict("resnet18-cifar", &weights);
    assert!(run.status.success(), "{}", text(&run));
    let (out, err) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(
        err.contains("has 7 outputs, not CIFAR-10's 10 classes, and no classes.json beside it")
            && out.contains("class "),
        "{out}{err}"
    );
}

/// The real CIFAR-10 JPEG archive, end to end on a slice of it.
#[test]
fn real_cifar_archive_end_to_end() {
    let Ok(shared) = std::env::var("CNN_SHARED_DIR") else {
        eprintln!("skipped: CNN_SHARED_DIR not set");
        return;
    };
    let data = Path::new(&shared).join("data").join("cifar10");
    let dir = tempfile::tempdir().expect("temp dir");
    let run = train_cifar(&[
        "--data-dir",
        &s(&data),
        "--out",
        &s(dir.path()),
        "--epochs",
        "1",
        "--limit-train",
        "256",
        "--limit-test",
        "256",
    ]);
    assert!(run.status.success(), "{}", text(&run));
    assert_outputs(dir.path(), 1);
    // The whole data set (--limit-train draws from it): no note on its sizes.
    assert!(
        !text(&run).contains("the official CIFAR-10 has"),
        "{}",
        text(&run)
    );
    // The state remembers the 256 images trained on by their files' bytes: another CIFAR-10
    // folder whose test/ holds 2 of them in each class beside 3 test images is scored on the
    // 30 others, the 20 named as left out.
    let trained = train::state::saved_trained_on(dir.path())
        .expect("state")
        .expect("fingerprints");
    assert_eq!(trained.len(), 256);
    let archive = data.join("cifar10-jpeg.tar.gz");
    let other = dir.path().join("other");
    let mut put: std::collections::HashMap<(String, bool), usize> = Default::default();
    for entry in datasets::read_archive(&archive).expect("archive") {
        let parts: Vec<&str> = entry.name.trim_start_matches("./").split('/').collect();
        let (split, class) = match parts[..] {
            [split @ ("train" | "test"), class, _] if !entry.is_dir => (split, class),
            _ => continue,
        };
        let seen = trained
            .binary_search(&datasets::fingerprint(&entry.bytes))
            .is_ok();
        let wanted = match (split, seen) {
            ("train", true) => 2,
            ("test", _) => 3,
            _ => continue,
        };
        let n = put.entry((class.to_string(), seen)).or_default();
        if *n < wanted {
            let folder = other.join("test").join(class);
            std::fs::create_dir_all(&folder).expect("class folder");
            std::fs::write(folder.join(format!("{split}-{}", parts[2])), &*entry.bytes)
                .expect("image");
            *n += 1;
        }
    }
    let evaluated = Command::new(env!("CARGO_BIN_EXE_train-cifar"))
        .args([
            "evaluate",
            "--run",
            &s(dir.path()),
            "--data-dir",
            &s(&other),
        ])
        .args(["--device", "cpu"])
        .output()
        .expect("train-cifar starts");
    let said = text(&evaluated);
    assert!(evaluated.status.success(), "{said}");
    assert!(
        said.contains("its test split now has 50 images, the run tested on 256")
            && said.contains("20 of them are files the run trained on")
            && said.contains("on 30 test images"),
        "{said}"
    );
    let table = std::fs::read_to_string(dir.path().join("predictions-best-data-other.csv"))
        .expect("predictions");
    assert_eq!(
        table
            .lines()
            .skip(1)
            .filter(|r| r.contains("/train-"))
            .count(),
        0,
        "{table}"
    );
    assert_eq!(table.lines().count(), 31, "{table}");
}

/// Every flag with 0, 1, negative, huge, non-numeric and empty values: clear errors or runs,
/// never a panic, an abort or a hang.
#[test]
fn extreme_flag_values_never_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("cifar");
    train::synthetic::write_cifar10(&data, 2, 10).expect("synthetic CIFAR-10");
    let data = s(&data);
    let program = std::path::PathBuf::from(env!("CARGO_BIN_EXE_train-cifar"));
    let base = [
        "--data-dir",
        &data,
        "--model",
        "resnet18-seed",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--limit-train",
        "8",
        "--limit-test",
        "10",
        "--device",
        "cpu",
        "--workers",
        "1",
        "--overwrite",
    ];
    let failures = flag_scan::scan(
        &program,
        &[],
        &base,
        dir.path(),
        std::time::Duration::from_secs(180),
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A run stopped by Ctrl-C once its first epoch is saved, then resumed, ends with the very bytes
/// of the uninterrupted run's checkpoints and the same history: through batch norm in training
/// mode (running statistics and `num_batches_tracked` saved and read back), the random crops
/// and flips, and schedules whose rate changes at every epoch (OneCycle per batch; StepLR with
/// a step each epoch under a one-epoch warm-up, with AdamW); in f32 and in bf16 autocast.
#[test]
fn runs_with_batch_norm_stopped_and_resumed_are_exact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("cifar");
    train::synthetic::write_cifar10(&data, 12, 2).expect("synthetic CIFAR-10");
    let data = s(&data);
    let history = |out: &Path| -> Vec<String> {
        std::fs::read_to_string(out.join(train::rundir::METRICS_CSV))
            .expect("metrics.csv")
            .lines()
            .map(|l| l.rsplit_once(',').expect("a seconds column").0.to_string())
            .collect()
    };
    let epochs = 4;
    let cases: [&[&str]; 3] = [
        &["--schedule", "onecycle", "--batch-size", "8"],
        &[
            "--schedule",
            "step",
            "--step-size",
            "1",
            "--warmup-epochs",
            "1",
            "--batch-size",
            "12",
            "--optimizer",
            "adamw",
            "--lr",
            "0.001",
        ],
        &[
            "--schedule",
            "onecycle",
            "--batch-size",
            "8",
            "--precision",
            "bf16",
            "--label-smoothing",
            "0.1",
        ],
    ];
    for (i, case) in cases.iter().enumerate() {
        let (whole, part) = (
            dir.path().join(format!("whole-{i}")),
            dir.path().join(format!("part-{i}")),
        );
        let args = |out: &Path| -> Vec<String> {
            let epochs = epochs.to_string();
            let fixed = ["--data-dir", &data, "--seed", "7", "--epochs", &epochs];
            [&fixed[..], case, &["--out", &s(out)]]
                .concat()
                .into_iter()
                .map(String::from)
                .collect()
        };
        let whole_args = args(&whole);
        let run = train_cifar(&whole_args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(run.status.success(), "{case:?}: {}", text(&run));
        let child = Command::new(env!("CARGO_BIN_EXE_train-cifar"))
            .args(args(&part))
            .args(["--device", "cpu", "--workers", "2"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("train-cifar starts");
        let state = part.join(train::rundir::STATE);
        let waited = std::time::Instant::now();
        while !state.exists() {
            assert!(waited.elapsed().as_secs() < 300, "no epoch was saved");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // SAFETY: a plain kill(2) of our own child, which has not been waited for yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        let stopped = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&stopped.stderr);
        assert!(
            err.contains("stopped by Ctrl-C in epoch"),
            "{case:?}: {err}"
        );
        let done = history(&part).len() - 1;
        assert!((1..epochs).contains(&done), "{case:?}: {done} epochs saved");
        let resumed = train_cifar(&["--resume", &s(&part)]);
        assert!(resumed.status.success(), "{case:?}: {}", text(&resumed));
        assert!(text(&resumed).contains("resumes"), "{}", text(&resumed));
        assert_eq!(history(&whole), history(&part), "{case:?}");
        assert_eq!(history(&whole).len(), epochs + 1, "{case:?}");
        for name in [train::rundir::LAST, train::rundir::BEST] {
            let (a, b) = (
                std::fs::read(whole.join(name)).expect("checkpoint"),
                std::fs::read(part.join(name)).expect("checkpoint"),
            );
            assert!(a == b, "{case:?}: {name} differs after the resume");
        }
        // The rate changes at every epoch, so a schedule resumed a step off would show.
        let rates: Vec<String> = history(&whole)
            .iter()
            .skip(1)
            .map(|l| l.rsplit(',').next().expect("lr").to_string())
            .collect();
        assert!(rates.windows(2).all(|w| w[0] != w[1]), "{rates:?}");
    }
}
