//! End-to-end runs of `finetune-resnet50`: the Hub path (through a Hugging Face cache the test
//! fills, offline), fine-tuning on a small ImageFolder, predict, and every bad checkpoint.
//!
//! No real pretrained weights are at hand offline, so the "pretrained" ResNet-50 is ours:
//! seeded initial weights whose batch-norm statistics are calibrated on the training images
//! (a few train-mode passes), saved with torchvision's names by `layers::checkpoint`.

#[path = "../../../tests/support/flag_scan.rs"]
mod flag_scan;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, ModuleT, Tensor};
use layers::ParamStore;
use resnet::ResNet;

const HUB_ID: &str = "timm/resnet50.tv_in1k";

fn finetune(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_finetune-resnet50"));
    cmd.args(args).env("HF_HUB_OFFLINE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("finetune-resnet50 starts")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(args: &[&str], env: &[(&str, &Path)]) -> String {
    let out = finetune(args, env);
    assert!(
        out.status.success(),
        "finetune-resnet50 {args:?} failed:\n{}",
        text(&out)
    );
    text(&out)
}

fn fails(args: &[&str], env: &[(&str, &Path)]) -> String {
    let out = finetune(args, env);
    assert!(
        !out.status.success(),
        "finetune-resnet50 {args:?} should fail"
    );
    text(&out)
}

/// Arguments as `ok` and `fails` take them.
fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A ResNet-50 (1000 classes) with batch-norm statistics calibrated on `images` (N,3,H,W).
fn pretrained(images: &Tensor, path: &Path) {
    pretrained_model("resnet50", images, path)
}

/// [`pretrained`] of another of torchvision's ResNets (`resnet18` ...).
fn pretrained_model(model: &str, images: &Tensor, path: &Path) {
    let store = ParamStore::new(7, &Device::Cpu);
    let net = transfer::build(model, 1000, store.vb()).expect("a torchvision ResNet");
    for _ in 0..12 {
        net.forward_t(images, true).expect("calibration pass");
    }
    layers::checkpoint::save(store.varmap(), path).expect("save checkpoint");
}

/// Three classes of small RGB images written as PNG: `root/{train,test}/<class>/*.png`. With
/// CNN_SHARED_DIR, the first images of three CIFAR-10 classes from the shared archive;
/// without it, coloured noise whose class is its dominant channel.
/// [`small_folder`] under `dir/name` and a pretrained checkpoint made from its calibration
/// images, `dir/resnet50.safetensors`: (data dir, weights).
fn folder_and_weights(dir: &Path, name: &str, train: usize, test: usize) -> (PathBuf, PathBuf) {
    let data = dir.join(name);
    let calib = small_folder(&data, train, test);
    let weights = dir.join("resnet50.safetensors");
    pretrained(&calib, &weights);
    (data, weights)
}

fn small_folder(root: &Path, train: usize, test: usize) -> Tensor {
    let mut tiles: Vec<f32> = Vec::new();
    let shared = std::env::var_os("CNN_SHARED_DIR").map(PathBuf::from);
    let classes = ["airplane", "frog", "truck"];
    let mut written: HashMap<(&str, &str), usize> = HashMap::new();
    let mut put = |split: &'static str, class: &'static str, img: image::RgbImage| {
        let n = written.entry((split, class)).or_default();
        let dir = root.join(split).join(class);
        std::fs::create_dir_all(&dir).expect("class dir");
        img.save(dir.join(format!("{n:04}.png"))).expect("png");
        *n += 1;
        if split == "train" && tiles.len() < 48 * 3 * 32 * 32 {
            let img = image::imageops::resize(&img, 32, 32, image::imageops::FilterType::Triangle);
            for c in 0..3 {
                tiles.extend(img.pixels().map(|p| (p.0[c] as f32 / 255.0 - 0.45) / 0.25));
            }
        }
    };
    if let Some(shared) = shared {
        let archive = shared.join("data/cifar10/cifar10-jpeg.tar.gz");
        let entries = datasets::read_archive(&archive).expect("shared CIFAR-10 archive");
        for (split, count) in [("train", train), ("test", test)] {
            for class in classes {
                let prefix = format!("{split}/{class}/");
                entries
                    .iter()
                    .filter(|e| !e.is_dir && e.name.contains(&prefix))
                    .take(count)
                    .for_each(|e| {
                        let img = image::load_from_memory(&e.bytes).expect("jpeg").into_rgb8();
                        put(split, class, img);
                    });
            }
        }
    } else {
        let mut state = 12345u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        };
        for (split, count) in [("train", train), ("test", test)] {
            for (k, class) in classes.into_iter().enumerate() {
                for _ in 0..count {
                    let img = image::RgbImage::from_fn(32, 32, |_, _| {
                        let mut p = [next() / 3, next() / 3, next() / 3];
                        p[k] = p[k].saturating_add(140);
                        image::Rgb(p)
                    });
                    put(split, class, img);
                }
            }
        }
    }
    let n = tiles.len() / (3 * 32 * 32);
    Tensor::from_vec(tiles, (n, 3, 32, 32), &Device::Cpu).expect("calibration batch")
}

/// Every file below `dir`, by path.
fn walk(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("folder") {
        let path = entry.expect("entry").path();
        match path.is_dir() {
            true => found.extend(walk(&path)),
            false => found.push(path.display().to_string()),
        }
    }
    found
}

/// The images `evaluate` left out as trained on in the run `out`'s evaluation of the data
/// named `tag`.
fn summary_names(out: &Path, tag: &str) -> Vec<String> {
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join(format!("evaluation-best-data-{tag}.json"))).expect("evaluation"),
    )
    .expect("JSON");
    summary["left_out_as_trained"]
        .as_array()
        .expect("left out")
        .iter()
        .map(|n| n.as_str().expect("name").to_string())
        .collect()
}

/// Every tensor of a safetensors file, as raw bytes by name.
fn raw(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).expect("checkpoint");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

/// Puts `file` where hf-hub keeps `HUB_ID`'s model.safetensors, under `hf_home`.
fn fill_hub_cache(hf_home: &Path, file: &Path) {
    let repo = hf_home.join("hub").join("models--timm--resnet50.tv_in1k");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).expect("snapshot dir");
    std::fs::create_dir_all(repo.join("refs")).expect("refs dir");
    std::fs::write(repo.join("refs").join("main"), commit).expect("ref");
    std::fs::copy(file, snapshot.join("model.safetensors")).expect("cached weights");
}

#[test]
fn our_checkpoint_has_torchvisions_keys_and_predicts_through_the_hub_cache() {
    let dir = tempfile::tempdir().expect("temp dir");
    let calib = small_folder(&dir.path().join("data"), 16, 2);
    let weights = dir.path().join("resnet50.safetensors");
    pretrained(&calib, &weights);
    match std::env::var_os("CNN_SHARED_DIR") {
        Some(shared) => {
            let listed = std::fs::read_to_string(
                Path::new(&shared).join("fixtures/pytorch/resnet50-torchvision-keys.txt"),
            )
            .expect("keys file");
            let expected: BTreeMap<String, Vec<usize>> = listed
                .lines()
                .map(|l| {
                    let mut f = l.split('\t');
                    let key = f.next().expect("key").to_string();
                    let shape = f.next().expect("shape").trim_matches(['[', ']']);
                    let dims = shape
                        .split(',')
                        .filter(|d| !d.trim().is_empty())
                        .map(|d| d.trim().parse().expect("dim"))
                        .collect();
                    (key, dims)
                })
                .collect();
            let ours: BTreeMap<String, Vec<usize>> = raw(&weights)
                .into_iter()
                .map(|(k, (shape, _))| (k, shape))
                .collect();
            assert_eq!(ours, expected, "key set and shapes equal torchvision's");
        }
        None => eprintln!("skipped the key-file comparison: CNN_SHARED_DIR not set"),
    }

    let hf_home = dir.path().join("hf");
    fill_hub_cache(&hf_home, &weights);
    let image = dir.path().join("data/test/frog/0000.png");
    let out = ok(
        &[
            "predict",
            "--weights",
            HUB_ID,
            "--image",
            s(&image),
            "--image-size",
            "64",
            "--device",
            "cpu",
        ],
        &[("HF_HOME", &hf_home)],
    );
    let rows: Vec<(f64, String)> = out
        .lines()
        .filter_map(|l| {
            let (p, name) = l.trim().split_once("%  ")?;
            Some((p.trim().parse().ok()?, name.to_string()))
        })
        .collect();
    assert_eq!(rows.len(), 5, "five classes:\n{out}");
    let total: f64 = rows.iter().map(|(p, _)| p).sum();
    assert!(
        total <= 100.0 + 1e-3 && total > 0.0,
        "probabilities sum to {total}%"
    );
    assert!(
        rows.windows(2).all(|w| w[0].0 >= w[1].0),
        "best first:\n{out}"
    );
    let imagenet =
        include_str!("../../../crates/datasets/assets/imagenet_classes.txt").replace('_', " ");
    assert!(
        rows.iter().all(|(_, n)| imagenet.lines().any(|l| l == n)),
        "ImageNet names:\n{out}"
    );

    let empty = dir.path().join("empty-hf");
    let err = fails(
        &["predict", "--weights", HUB_ID, "--image", s(&image)],
        &[("HF_HOME", &empty)],
    );
    assert!(
        err.contains(HUB_ID) && err.contains("HF_HUB_OFFLINE") && err.contains("--weights"),
        "{err}"
    );
}

#[test]
fn finetunes_a_small_folder_above_chance_with_the_backbone_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, weights) = folder_and_weights(dir.path(), "data", 40, 20);
    let out = dir.path().join("run");
    let log = ok(
        &[
            "--weights",
            s(&weights),
            "--folder",
            "--data-dir",
            s(&data),
            "--image-size",
            "32",
            "--epochs",
            "6",
            "--lr",
            "0.05",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--out",
            s(&out),
        ],
        &[],
    );
    assert!(log.contains("computing its features once"), "{log}");
    let csv = std::fs::read_to_string(out.join(train::rundir::METRICS_CSV)).expect("metrics.csv");
    let best = csv
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .nth(4)
                .expect("test_acc")
                .parse::<f64>()
                .expect("number")
        })
        .fold(0.0, f64::max);
    assert!(
        best > 100.0 / 3.0 + 15.0,
        "best test accuracy {best}% is not clearly above chance:\n{csv}"
    );

    let before = raw(&weights);
    let after = raw(&out.join(train::rundir::LAST));
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the fine-tuned checkpoint has torchvision's keys"
    );
    for (key, (shape, bytes)) in &before {
        if key.starts_with("fc.") {
            assert_ne!(after[key].0, *shape, "{key} is the new 3-class head");
        } else {
            assert!(after[key].1 == *bytes, "frozen {key} changed");
        }
    }
    let classes: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(out.join(train::rundir::CLASSES)).expect("classes.json"),
    )
    .expect("class list");
    assert_eq!(classes, ["airplane", "frog", "truck"]);
    for file in [
        train::rundir::BEST,
        train::rundir::METRICS_CSV,
        train::rundir::CURVES,
        train::rundir::PREDICTIONS,
        train::rundir::CONFUSION,
    ] {
        assert!(out.join(file).is_file(), "{file} written");
    }

    let image = data.join("test/truck/0000.png");
    let out_text = ok(
        &[
            "predict",
            "--weights",
            s(&out.join(train::rundir::BEST)),
            "--image",
            s(&image),
            "--image-size",
            "32",
            "--device",
            "cpu",
        ],
        &[],
    );
    let names: Vec<&str> = out_text
        .lines()
        .filter_map(|l| l.split_once("%  ").map(|(_, n)| n))
        .collect();
    assert_eq!(
        names.len(),
        3,
        "a 3-class head lists its 3 classes:\n{out_text}"
    );
    assert!(
        names.iter().all(|n| classes.iter().any(|c| c == n)),
        "{out_text}"
    );

    // Fine-tuning in two stages: the run's checkpoint as --weights, with --unfreeze, keeps its
    // trained head (the same classes, as its classes.json says); at --lr 0 it stays as it was.
    let second = dir.path().join("second");
    let log = ok(
        &[
            "--weights",
            s(&out.join(train::rundir::BEST)),
            "--folder",
            "--data-dir",
            s(&data),
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--lr",
            "0",
            "--unfreeze",
            "layer4",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--out",
            s(&second),
        ],
        &[],
    );
    assert!(log.contains("its fine-tuned head"), "{log}");
    let (first, then) = (
        raw(&out.join(train::rundir::BEST)),
        raw(&second.join(train::rundir::LAST)),
    );
    for key in ["fc.weight", "fc.bias"] {
        assert!(first[key] == then[key], "{key} is the first stage's");
    }

    // --drop-last holds for the features computed once too: 3 x 40 training images in
    // batches of 128 make no whole batch, so no step would train (the cached features served
    // the partial one before).
    let err = fails(
        &[
            "--weights",
            s(&weights),
            "--folder",
            "--data-dir",
            s(&data),
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "128",
            "--drop-last",
            "--device",
            "cpu",
            "--out",
            s(&dir.path().join("dropped")),
        ],
        &[],
    );
    assert!(
        err.contains("--drop-last with --batch-size 128: the 120 training images")
            && err.contains("no step would train"),
        "{err}"
    );
    // Refused before the backbone's features are computed, and the --out it made is gone.
    assert!(!err.contains("computing its features"), "{err}");
    assert!(!dir.path().join("dropped").exists(), "{err}");
}

#[test]
fn bad_checkpoints_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("x.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]))
        .save(&image)
        .expect("png");
    let predict = |weights: &Path| {
        fails(
            &["predict", "--weights", s(weights), "--image", s(&image)],
            &[],
        )
    };

    let pth = dir.path().join("resnet50.pth");
    std::fs::write(&pth, b"PK\x03\x04 a zipped pickle").expect("pth");
    let err = predict(&pth);
    assert!(
        err.contains("pickle") && err.contains("safetensors"),
        "{err}"
    );

    let r18 = dir.path().join("resnet18.safetensors");
    let store = ParamStore::new(0, &Device::Cpu);
    ResNet::resnet18(1000, store.vb()).expect("resnet18");
    layers::checkpoint::save(store.varmap(), &r18).expect("save");
    // predict reads a checkpoint of any depth; fine-tuning from it needs --model resnet18,
    // said before its head is read.
    let top5 = ok(
        &["predict", "--weights", s(&r18), "--image", s(&image)],
        &[],
    );
    assert!(top5.contains('%'), "{top5}");
    let data = dir.path().join("data");
    small_folder(&data, 4, 2);
    let ft18 = dir.path().join("ft18");
    let err = fails(
        &[
            "--weights",
            s(&r18),
            "--folder",
            "--data-dir",
            s(&data),
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            s(&ft18),
        ],
        &[],
    );
    assert!(
        err.contains("ResNet-18") && err.contains("ResNet-50") && err.contains("--model resnet18"),
        "{err}"
    );
    assert!(!ft18.join(train::rundir::STATE).exists());

    let store = ParamStore::new(0, &Device::Cpu);
    ResNet::resnet50(1000, store.vb()).expect("resnet50");
    let good = layers::checkpoint::state_dict(store.varmap()).expect("state dict");
    let variant = |name: &str, edit: &dyn Fn(&mut HashMap<String, Tensor>)| -> String {
        let mut t = good.clone();
        edit(&mut t);
        let path = dir.path().join(name);
        layers::checkpoint::save_tensors(&t, &path).expect("save");
        predict(&path)
    };
    let err = variant("missing.safetensors", &|t| {
        t.remove("layer2.1.bn2.running_var");
    });
    assert!(
        err.contains("missing") && err.contains("layer2.1.bn2.running_var"),
        "{err}"
    );
    let err = variant("extra.safetensors", &|t| {
        t.insert(
            "head.extra".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(
        err.contains("unexpected") && err.contains("head.extra"),
        "{err}"
    );
    let err = variant("shape.safetensors", &|t| {
        t.insert(
            "layer1.0.conv2.weight".into(),
            Tensor::zeros((64, 64, 1, 1), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(
        err.contains("layer1.0.conv2.weight")
            && err.contains("[64, 64, 1, 1]")
            && err.contains("[64, 64, 3, 3]"),
        "{err}"
    );

    let err = predict(&dir.path().join("nowhere.safetensors"));
    assert!(
        err.contains("nowhere.safetensors") && err.contains("does not exist"),
        "{err}"
    );
    // A run directory given for the file: named as a directory.
    let err = predict(dir.path());
    assert!(err.contains("a directory, not a file"), "{err}");
}

/// `--model resnet18`, the tutorial's own model: its torchvision weights (512 features), its
/// Hub id by default, a 512-wide new head, and predict, evaluate and resume of its run.
#[test]
fn finetunes_the_tutorials_resnet18_and_every_command_reads_its_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let calib = small_folder(&data, 12, 4);
    let r18 = dir.path().join("r18.safetensors");
    pretrained_model("resnet18", &calib, &r18);
    let run = dir.path().join("run");
    let base = [
        "--model",
        "resnet18",
        "--folder",
        "--data-dir",
        s(&data),
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--device",
        "cpu",
    ];
    let train = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|a| a.to_string()).collect()
    };
    let log = ok(
        &strs(&train(&[
            "--weights",
            s(&r18),
            "--epochs",
            "1",
            "--out",
            s(&run),
        ])),
        &[],
    );
    assert!(
        log.contains("a ResNet-18;") && log.contains("a new head"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "read an image folder: 36 training images from {}, 12 test images from {}",
            data.join("train").display(),
            data.join("test").display()
        )),
        "{log}"
    );
    let before = raw(&r18);
    let after = raw(&run.join(train::rundir::BEST));
    assert_eq!(
        after["fc.weight"].0,
        [3, 512],
        "a new 3-class head on 512 features"
    );
    for (key, (_, bytes)) in before.iter().filter(|(k, _)| !k.starts_with("fc.")) {
        assert!(after[key].1 == *bytes, "frozen {key} changed");
    }
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join(train::rundir::CONFIG)).expect("config.json"),
    )
    .expect("json");
    assert_eq!(config["model"], "resnet18");

    let image = data.join("test/frog/0000.png");
    let by_run = ok(&["predict", "--run", s(&run), s(&image)], &[]);
    let by_file = ok(
        &[
            "predict",
            "--weights",
            s(&run.join(train::rundir::BEST)),
            s(&image),
        ],
        &[],
    );
    let rows = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains('%'))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(rows(&by_run).len(), 3, "{by_run}");
    assert_eq!(rows(&by_run), rows(&by_file));
    let evaluated = ok(&["evaluate", "--run", s(&run), "--device", "cpu"], &[]);
    assert!(evaluated.contains("on 12 test images"), "{evaluated}");
    // A resume keeps the model (and needs no --model); another one is refused.
    let err = fails(
        &["--resume", s(&run), "--model", "resnet34", "--epochs", "2"],
        &[],
    );
    assert!(err.contains("--model resnet34"), "{err}");
    // With another --weights too: both named.
    let err = fails(
        &[
            "--resume",
            s(&run),
            "--model",
            "resnet34",
            "--weights",
            "other.safetensors",
            "--epochs",
            "2",
        ],
        &[],
    );
    assert!(
        err.contains("--model resnet34") && err.contains("--weights other.safetensors"),
        "{err}"
    );
    ok(
        &["--resume", s(&run), "--epochs", "2", "--device", "cpu"],
        &[],
    );
    let csv = std::fs::read_to_string(run.join(train::rundir::METRICS_CSV)).expect("metrics");
    assert_eq!(csv.lines().count(), 3, "two epochs:\n{csv}");

    // Without --weights: torchvision's ResNet-18 from the Hub (offline here, so named).
    let err = fails(
        &strs(&train(&[
            "--epochs",
            "1",
            "--out",
            s(&dir.path().join("hub")),
        ])),
        &[("HF_HOME", &dir.path().join("empty-hf"))],
    );
    assert!(err.contains("timm/resnet18.tv_in1k"), "{err}");
    // ResNet-50 weights for --model resnet18: named, with the flag that reads them.
    let r50 = dir.path().join("r50.safetensors");
    pretrained(&calib, &r50);
    let err = fails(
        &strs(&train(&[
            "--weights",
            s(&r50),
            "--out",
            s(&dir.path().join("r50")),
        ])),
        &[],
    );
    assert!(
        err.contains("ResNet-50") && err.contains("--model resnet50"),
        "{err}"
    );
    // Said before the data is read.
    assert!(!err.contains("training images from"), "{err}");
    let err = fails(
        &[
            "--model",
            "resnet18-cifar",
            "--weights",
            s(&r18),
            "--data-dir",
            s(&data),
        ],
        &[],
    );
    assert!(
        err.contains("--model \"resnet18-cifar\"") && err.contains("resnet152"),
        "{err}"
    );
    let err = fails(&["--model", "ResNet-18", "--data-dir", s(&data)], &[]);
    assert!(err.contains("(did you mean resnet18?)"), "{err}");
    // --test-fraction beside the folder's own test split: refused, not ignored.
    let err = fails(
        &strs(&train(&[
            "--weights",
            s(&r18),
            "--test-fraction",
            "0.5",
            "--out",
            s(&dir.path().join("fraction")),
        ])),
        &[],
    );
    assert!(
        err.contains("--test-fraction 0.5: ") && err.contains("has its own test split (test/"),
        "{err}"
    );
    // The same folder as a .tar, whose layout only reading tells: refused too, nothing kept.
    let archive = dir.path().join("data.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&archive).expect("archive"));
    tar.append_dir_all(".", &data).expect("archive the folder");
    tar.finish().expect("archive written");
    let fraction_run = dir.path().join("fraction-archive");
    let mut flags = train(&[
        "--weights",
        s(&r18),
        "--test-fraction",
        "0.5",
        "--out",
        s(&fraction_run),
    ]);
    let at = flags.iter().position(|f| f == "--data-dir").unwrap() + 1;
    flags[at] = archive.display().to_string();
    let err = fails(&strs(&flags), &[]);
    assert!(
        err.contains("--test-fraction 0.5: ")
            && err.contains(&format!(
                "has its own test split ({}:test)",
                archive.display()
            )),
        "{err}"
    );
    assert!(
        !fraction_run.exists(),
        "the run folder made for nothing is removed"
    );
    // Resumed on data of other classes: refused before the features are computed (it was a
    // shape mismatch of the head, after them).
    let fewer = dir.path().join("fewer");
    small_folder(&fewer, 2, 1);
    for split in ["train", "test"] {
        std::fs::remove_dir_all(fewer.join(split).join("truck")).expect("remove a class");
    }
    let err = fails(
        &[
            "--resume",
            s(&run),
            "--epochs",
            "3",
            "--data-dir",
            s(&fewer),
            "--device",
            "cpu",
        ],
        &[],
    );
    assert!(
        err.contains("the data's classes are not the run's") && !err.contains("features of"),
        "{err}"
    );
    // Another program's run (a train-cifar run of resnet18, say): its checkpoint given as
    // --weights is read as its run too (it was read at 224 with ImageNet's normalisation).
    // Made by editing config.json with the state out of the way (config.json edited beside
    // the state is refused: it disagrees with the state).
    std::fs::rename(
        run.join(train::rundir::STATE),
        dir.path().join("state-aside"),
    )
    .expect("move the state aside");
    let config_path = run.join(train::rundir::CONFIG);
    let text = std::fs::read_to_string(&config_path).expect("config.json");
    std::fs::write(
        &config_path,
        text.replace("\"finetune-resnet50\"", "\"train-cifar\""),
    )
    .expect("edit config.json");
    let by_run = ok(&["predict", "--run", s(&run), s(&image)], &[]);
    let by_file = finetune(
        &[
            "predict",
            "--weights",
            s(&run.join(train::rundir::BEST)),
            s(&image),
        ],
        &[],
    );
    let said = String::from_utf8_lossy(&by_file.stderr);
    assert!(
        said.contains("a checkpoint of the train-cifar run in"),
        "{said}"
    );
    assert_eq!(
        rows(&by_run),
        rows(&String::from_utf8_lossy(&by_file.stdout))
    );
}

#[test]
fn resume_reaches_the_same_weights_as_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, weights) = folder_and_weights(dir.path(), "data", 12, 6);
    let common = |out: &Path, epochs: &str| -> Vec<String> {
        [
            "--weights",
            s(&weights),
            "--folder",
            "--data-dir",
            s(&data),
            "--image-size",
            "32",
            "--lr",
            "0.05",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--out",
            s(out),
            "--epochs",
            epochs,
        ]
        .map(String::from)
        .to_vec()
    };
    let whole = dir.path().join("whole");
    let args = common(&whole, "2");
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let parts = dir.path().join("parts");
    let args = common(&parts, "1");
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    // A fine-tuning flag of another value, or data whose classes differ, is refused, naming
    // what differs; the run is left as it was (the resume below still matches).
    let refused = |extra: &[&str], expected: &[&str]| {
        let mut args = vec!["--resume", s(&parts), "--epochs", "2", "--device", "cpu"];
        args.extend(extra);
        let err = fails(&args, &[]);
        for e in expected {
            assert!(err.contains(e), "{args:?}: {err}");
        }
    };
    refused(
        &["--image-size", "64"],
        &["--image-size 64 (the run has 32)"],
    );
    refused(
        &["--unfreeze", "all", "--augment"],
        &[
            "--unfreeze all (the run has none)",
            "--augment (the run trained without augmentation)",
        ],
    );
    refused(
        &["--weights", "other.safetensors"],
        &["--weights other.safetensors"],
    );
    // The training images' backbone features are computed in test batches: fixed here.
    refused(
        &["--test-batch-size", "5"],
        &["--test-batch-size 5", "give --test-batch-size"],
    );
    // finetune.json edited: refused, naming the file, before any flag is compared with it.
    let ft_json = parts.join(train::rundir::FINETUNE);
    let kept = std::fs::read_to_string(&ft_json).expect("finetune.json");
    std::fs::write(
        &ft_json,
        kept.replace("\"image_size\": 32", "\"image_size\": 64"),
    )
    .expect("edit finetune.json");
    refused(
        &["--image-size", "64"],
        &[
            "finetune.json and state.safetensors disagree",
            "image_size 64 there, 32 in the state",
        ],
    );
    // Another part of the backbone to train: refused too (SGD would have started the backbone
    // without momentum buffers).
    let unfrozen = kept.replace("\"unfreeze\": \"none\"", "\"unfreeze\": \"all\"");
    assert_ne!(unfrozen, kept, "{kept}");
    std::fs::write(&ft_json, unfrozen).expect("edit finetune.json");
    refused(&[], &["unfreeze \"all\" there, \"none\" in the state"]);
    std::fs::write(&ft_json, &kept).expect("put finetune.json back");
    let renamed = dir.path().join("renamed");
    for split in ["train", "test"] {
        for class in ["airplane", "frog", "truck"] {
            let to = renamed
                .join(split)
                .join(if class == "frog" { "bird" } else { class });
            std::fs::create_dir_all(&to).expect("class dir");
            for file in std::fs::read_dir(data.join(split).join(class)).expect("list") {
                let file = file.expect("entry").path();
                std::fs::copy(&file, to.join(file.file_name().expect("name"))).expect("copy");
            }
        }
    }
    refused(
        &["--data-dir", s(&renamed)],
        &["class 1 is \"bird\" in the data but \"frog\" in the run"],
    );
    // finetune.json removed: written again from the settings the state keeps.
    std::fs::remove_file(&ft_json).expect("remove finetune.json");
    // The pretrained file is not needed to resume: the state holds the backbone.
    let moved = dir.path().join("moved.safetensors");
    std::fs::rename(&weights, &moved).expect("move the pretrained weights");
    let resumed = ok(
        &["--resume", s(&parts), "--epochs", "2", "--device", "cpu"],
        &[],
    );
    assert!(
        resumed.contains("state.safetensors (pretrained:"),
        "{resumed}"
    );
    assert!(resumed.contains("finetune.json was missing"), "{resumed}");
    assert_eq!(
        std::fs::read_to_string(&ft_json).expect("finetune.json written again"),
        kept
    );
    std::fs::rename(&moved, &weights).expect("put the pretrained weights back");
    assert!(
        std::fs::read(whole.join(train::rundir::LAST)).expect("whole")
            == std::fs::read(parts.join(train::rundir::LAST)).expect("parts"),
        "a resumed run ends with the same weights as an uninterrupted one"
    );
    // ... and keeps the fingerprints of the images it trained on, as the uninterrupted run.
    let trained_on =
        |run: &Path| raw(&run.join(train::rundir::STATE))["data.trained_on_xxh3_64"].clone();
    let kept = trained_on(&parts);
    assert_eq!(kept.0, [12 * 3], "one fingerprint a training image");
    assert_eq!(kept, trained_on(&whole));
    // Resumed again, finished: said so before the data is read (its folder may be gone), and
    // nothing in the run changes.
    let state = std::fs::read(parts.join(train::rundir::STATE)).expect("state");
    let done = ok(
        &[
            "--resume",
            s(&parts),
            "--epochs",
            "2",
            "--data-dir",
            s(&dir.path().join("gone")),
        ],
        &[],
    );
    assert!(done.contains("nothing to train"), "{done}");
    assert_eq!(
        std::fs::read(parts.join(train::rundir::STATE)).expect("state"),
        state
    );
    // predict with the run's checkpoint as --weights reads it as predict --run does (the run's
    // transform and image size, 32, not 224): the same answer, also for an image of another
    // size than the run's (which the run's transform brings to 32x32 first).
    let image = data.join("test/airplane/0000.png");
    let large = dir.path().join("large.png");
    image::open(&image)
        .expect("test image")
        .resize_exact(97, 71, image::imageops::FilterType::Triangle)
        .save(&large)
        .expect("save the larger image");
    let best = parts.join(train::rundir::BEST);
    let by_run = ok(&["predict", "--run", s(&parts), s(&image), s(&large)], &[]);
    let by_weights = ok(
        &["predict", "--weights", s(&best), s(&image), s(&large)],
        &[],
    );
    let top5 = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains('%'))
            .map(String::from)
            .collect()
    };
    assert!(by_weights.contains("read as --run"), "{by_weights}");
    assert_eq!(top5(&by_run), top5(&by_weights));
    assert_eq!(top5(&by_run).len(), 6, "{by_run}");
    // --image-size asks for ImageNet's preprocessing at that size instead.
    let resized = ok(
        &[
            "predict",
            "--weights",
            s(&best),
            "--image-size",
            "32",
            s(&image),
        ],
        &[],
    );
    assert!(!resized.contains("read as --run"), "{resized}");
    assert_eq!(top5(&resized).len(), 3, "{resized}");
    // A fine-tuned checkpoint alone (no run files beside it) is read at 224, and said so.
    let lone = dir.path().join("lone");
    std::fs::create_dir(&lone).expect("lone dir");
    std::fs::copy(&best, lone.join("best.safetensors")).expect("copy best");
    let alone = ok(
        &[
            "predict",
            "--weights",
            s(&lone.join("best.safetensors")),
            s(&image),
        ],
        &[],
    );
    assert!(alone.contains("taking image size 224"), "{alone}");
    let by_run = ok(&["predict", "--run", s(&parts), s(&image)], &[]);
    // --run takes --weights best, last or a file, as the training programs' predict does.
    // A last checkpoint made to answer class 2 (truck) whatever the image, to tell it from best.
    let last = parts.join(train::rundir::LAST);
    let mut tensors = candle_core::safetensors::load(&last, &Device::Cpu).expect("last");
    let bias = &tensors["fc.bias"];
    let tilted = bias
        .broadcast_add(&Tensor::new(&[0f32, 0., 1000.], &Device::Cpu).expect("tensor"))
        .expect("add");
    tensors.insert("fc.bias".into(), tilted);
    candle_core::safetensors::save(&tensors, &last).expect("save");
    let by_run_last = ok(
        &[
            "predict",
            "--run",
            s(&parts),
            "--weights",
            "last",
            s(&image),
        ],
        &[],
    );
    assert!(
        top5(&by_run_last)[0].contains("100.00%") && top5(&by_run_last)[0].ends_with("truck"),
        "{by_run_last}"
    );
    assert_ne!(top5(&by_run_last), top5(&by_run));
    let by_last = ok(&["predict", "--weights", s(&last), s(&image)], &[]);
    assert_eq!(top5(&by_run_last), top5(&by_last));
    let best_again = ok(
        &[
            "predict",
            "--run",
            s(&parts),
            "--weights",
            s(&best),
            s(&image),
        ],
        &[],
    );
    assert_eq!(top5(&best_again), top5(&by_run));
    // A training file changed in place (the same name): the epochs left would train on another
    // image than the epochs before; refused, naming it, the run as it was; put back, resumed.
    let changed = data.join("train/airplane/0000.png");
    let original = std::fs::read(&changed).expect("png");
    let mut img = image::open(&changed).expect("png").into_rgb8();
    img.get_pixel_mut(0, 0).0[0] ^= 0x80;
    img.save(&changed).expect("png");
    let state = std::fs::read(whole.join(train::rundir::STATE)).expect("state");
    let resume = ["--resume", s(&whole), "--epochs", "3", "--device", "cpu"];
    let err = fails(&resume, &[]);
    assert!(
        err.contains(&format!("but other contents (files changed in place since the run trained on them: the epochs left would train on other images than the epochs before; changed: {})", s(&changed))),
        "{err}"
    );
    assert_eq!(
        std::fs::read(whole.join(train::rundir::STATE)).expect("state"),
        state
    );
    std::fs::write(&changed, original).expect("put back");
    let resumed = ok(&resume, &[]);
    assert!(resumed.contains("epoch 3/3"), "{resumed}");
    assert_eq!(trained_on(&whole).0, [36]);
}

/// An image folder's run whose test transform does not resize (a centre crop alone): `predict`
/// takes each image as the run's test pass took it, `model(test_transform(image))`, so the
/// cross-entropy of its logits over the test images is `evaluate`'s loss (it brought each
/// image to the model's native 224x224 first, and its predictions differed from `evaluate`'s;
/// a new user's finding).
#[test]
fn predict_on_a_folder_run_sees_what_its_test_pass_saw() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let calib = small_folder(&data, 4, 4);
    let r18 = dir.path().join("r18.safetensors");
    pretrained_model("resnet18", &calib, &r18);
    let run = dir.path().join("run");
    ok(
        &[
            "--model",
            "resnet18",
            "--folder",
            "--data-dir",
            s(&data),
            "--weights",
            s(&r18),
            "--image-size",
            "32",
            "--test-transform",
            "center-crop:24,normalize:imagenet",
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            s(&run),
        ],
        &[],
    );
    ok(&["evaluate", "--run", s(&run), "--device", "cpu"], &[]);
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("evaluation-best.json")).expect("evaluation"),
    )
    .expect("json");
    let loss = summary["loss"].as_f64().expect("loss");
    let classes = ["airplane", "frog", "truck"];
    let mut images = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let folder = data.join("test").join(class);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .expect("class folder")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        images.extend(files.into_iter().map(|f| (f, label)));
    }
    let mut args = vec!["predict", "--run", s(&run), "--device", "cpu", "--logits"];
    args.extend(images.iter().map(|(f, _)| s(f)));
    let printed = ok(&args, &[]);
    let rows: Vec<Vec<f64>> = printed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("logits: "))
        .map(|list| serde_json::from_str(list).expect("a list of logits"))
        .collect();
    assert_eq!(rows.len(), images.len(), "{printed}");
    let total: f64 = rows
        .iter()
        .zip(&images)
        .map(|(z, (_, label))| {
            let top = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|v| (v - top).exp()).sum();
            top + sum.ln() - z[*label]
        })
        .sum();
    let mean = total / images.len() as f64;
    assert!(
        (mean - loss).abs() <= 1e-4 * loss.abs().max(1.0),
        "predict's logits give a loss of {mean}, evaluate's is {loss}"
    );
}

/// `evaluate --model NAME --weights FILE --data-dir ROOT` of a ResNet fine-tuned elsewhere (a
/// PyTorch ImageFolder run) on image folders: ROOT's test split, or every image of a folder of
/// class folders, labelled in class-folder order, through `imagenet-eval:224`: the loss of the
/// model's logits on each image as `predict`'s transform makes them; a head of another class
/// count is refused, naming the folder's.
#[test]
fn evaluate_scores_a_checkpoint_file_on_image_folders() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let calib = small_folder(&data, 4, 4);
    // Fine-tuned elsewhere: a 3-class head on calibrated weights.
    let store = ParamStore::new(11, &Device::Cpu);
    let net = transfer::build("resnet18", 3, store.vb()).expect("resnet18");
    for _ in 0..4 {
        net.forward_t(&calib, true).expect("calibration pass");
    }
    let weights = dir.path().join("ants-bees.safetensors");
    layers::checkpoint::save(store.varmap(), &weights).expect("save");
    let classes: Vec<String> = ["airplane", "frog", "truck"].map(String::from).into();
    let predictor = train::inference::Predictor::new(
        &net,
        datasets::Transform::imagenet_eval(224),
        (3, 224),
        &classes,
        &Device::Cpu,
    )
    .expect("predictor");
    let expected_loss = |root: &Path| {
        let mut losses = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(class))
                .expect("class folder")
                .map(|e| e.expect("entry").path())
                .collect();
            files.sort();
            for file in files {
                let z = predictor.predict(&file).expect("prediction").logits;
                let top = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let sum: f64 = z.iter().map(|&v| (v as f64 - top).exp()).sum();
                losses.push(top + sum.ln() - z[label] as f64);
            }
        }
        (
            losses.iter().sum::<f64>() / losses.len() as f64,
            losses.len(),
        )
    };
    for (root, scored) in [
        (data.clone(), data.join("test")),
        (data.join("train"), data.join("train")),
    ] {
        let out = dir.path().join(format!(
            "scored-{}",
            root.file_name().unwrap().to_string_lossy()
        ));
        let said = ok(
            &[
                "evaluate",
                "--model",
                "resnet18",
                "--weights",
                s(&weights),
                "--data-dir",
                s(&root),
                "--out",
                s(&out),
                "--device",
                "cpu",
            ],
            &[],
        );
        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("evaluation-ants-bees.json")).expect("evaluation"),
        )
        .expect("json");
        let (loss, images) = expected_loss(&scored);
        assert_eq!(summary["samples"].as_u64(), Some(images as u64), "{said}");
        let got = summary["loss"].as_f64().expect("loss");
        assert!(
            (got - loss).abs() <= 1e-5 * loss.abs().max(1.0),
            "{}: evaluate's loss {got}, the logits' {loss}",
            root.display()
        );
    }

    // A head of two classes on a folder of three: refused, saying so, and naming the hidden
    // folder that torchvision's ImageFolder would have made a fourth class.
    let hidden = data.join("test").join(".ipynb_checkpoints");
    std::fs::create_dir(&hidden).expect("hidden folder");
    let an_image = datasets::image_files_below(&data).expect("images")[0].clone();
    std::fs::copy(&an_image, hidden.join("copy.png")).expect("an image in it");
    let store = ParamStore::new(11, &Device::Cpu);
    transfer::build("resnet18", 2, store.vb()).expect("resnet18");
    let two = dir.path().join("two.safetensors");
    layers::checkpoint::save(store.varmap(), &two).expect("save");
    let err = fails(
        &[
            "evaluate",
            "--model",
            "resnet18",
            "--weights",
            s(&two),
            "--data-dir",
            s(&data),
            "--out",
            s(&dir.path().join("two")),
            "--device",
            "cpu",
        ],
        &[],
    );
    assert!(
        err.contains("its fc.weight has 2 rows (classes), and the image folder --data-dir")
            && err.contains("has 3 class folders")
            && err.contains("hidden folders are not classes here")
            && err.contains(".ipynb_checkpoints"),
        "{err}"
    );
}

/// Fine-tuning and predict with every flag at 0, 1, negative, huge, non-numeric and empty
/// values: clear errors or runs, never a panic, an abort or a hang. A resumed run of another
/// program is refused too.
/// `--help` shows the recipe's defaults (the tutorial's: 10 epochs, SGD 0.001, batch 64), and
/// a negative value reaches the range check, which names the flag.
#[test]
fn help_shows_the_recipe_and_negative_values_are_checked() {
    let help = ok(&["--help"], &[]);
    for default in [
        "Epochs to train in total [default: 10]",
        "[default: 0.001]",
        "Training batch size [default: 64]",
        "[default: step]",
        "StepLR period in epochs (--schedule step) [default: 7]",
        "MultiStepLR milestones in epochs, comma separated (--schedule multistep) [default: 7]",
        "resnet18|resnet34|resnet50|resnet101|resnet152 [default: resnet50]",
    ] {
        assert!(help.contains(default), "{default}: {help}");
    }
    let err = fails(&["--lr", "-1"], &[]);
    assert!(err.contains("--lr must be"), "{err}");
    // Two flags for the training transform: refused, not one silently taken.
    let err = fails(&["--augment", "--train-transform", "flip"], &[]);
    assert!(
        err.contains("--augment and --train-transform flip both set the training transform"),
        "{err}"
    );
}

#[test]
fn extreme_flag_values_never_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, weights) = folder_and_weights(dir.path(), "data", 4, 2);
    let image = data.join("test").join("frog").join("0000.png");
    let program = PathBuf::from(env!("CARGO_BIN_EXE_finetune-resnet50"));
    let train = [
        "--weights",
        s(&weights),
        "--folder",
        "--data-dir",
        s(&data),
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--workers",
        "1",
        "--overwrite",
    ];
    let predict = [
        "predict",
        "--weights",
        s(&weights),
        "--image",
        s(&image),
        "--image-size",
        "32",
    ];
    let mut failures = Vec::new();
    for (subcommand, base) in [(&[][..], &train[..]), (&["predict"][..], &predict[..])] {
        failures.extend(flag_scan::scan(
            &program,
            subcommand,
            base,
            dir.path(),
            std::time::Duration::from_secs(180),
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A folder of class subfolders that are not CIFAR-10's is the user's own data, also without
/// `--folder`; the log says which reading was chosen.
#[test]
fn own_class_folders_need_no_folder_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, weights) = folder_and_weights(dir.path(), "my_photos", 4, 2);
    let out = dir.path().join("run");
    let log = ok(
        &[
            "--weights",
            s(&weights),
            "--data-dir",
            s(&data),
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            s(&out),
        ],
        &[],
    );
    assert!(
        log.contains("as an image folder (not CIFAR-10: it holds no CIFAR-10 batches or archive"),
        "{log}"
    );
    assert!(out.join(train::rundir::BEST).is_file());
    // The run's own predict: its best checkpoint, classes and image size.
    let image = data.join("test").join("frog").join("0000.png");
    let printed = ok(
        &["predict", "--run", s(&out), s(&image), "--device", "cpu"],
        &[],
    );
    let lines: Vec<&str> = printed.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.ends_with("0000.png"))
        .expect("image line");
    let classes: Vec<&str> = lines[at + 1..at + 4]
        .iter()
        .map(|l| l.rsplit("  ").next().unwrap_or_default())
        .collect();
    let mut sorted = classes.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["airplane", "frog", "truck"], "{printed}");

    // A folder holding only test/<class>/... has one class folder ("test"): refused, not a
    // one-class classifier at 100% accuracy; nothing is left in the --out it would make.
    let lone = dir.path().join("lone");
    std::fs::create_dir_all(&lone).expect("lone");
    std::fs::rename(data.join("test"), lone.join("test")).expect("move test/");
    let lone_out = dir.path().join("lone-run");
    let err = fails(
        &[
            "--weights",
            s(&weights),
            "--data-dir",
            s(&lone),
            "--image-size",
            "32",
            "--device",
            "cpu",
            "--out",
            s(&lone_out),
        ],
        &[],
    );
    assert!(
        err.contains("the one folder there is test/, taken as a class")
            && err.contains("train/ and test/ (or val/) together"),
        "{err}"
    );
    assert!(!lone_out.exists(), "a failed start leaves no directory");
    // A folder that wraps the data set (wrapped/photos/train/<class>/...): one class, photos,
    // and the error names the folder to give instead.
    let wrapped = dir.path().join("wrapped");
    small_folder(&wrapped.join("photos"), 2, 1);
    let err = fails(
        &[
            "--weights",
            s(&weights),
            "--data-dir",
            s(&wrapped),
            "--image-size",
            "32",
            "--device",
            "cpu",
            "--out",
            s(&lone_out),
        ],
        &[],
    );
    let inner = wrapped.join("photos");
    assert!(
        err.contains("one class found (\"photos\")")
            && err.contains(&format!(
                "if \"photos\" holds the class folders, give --data-dir {}",
                inner.display()
            )),
        "{err}"
    );

    // The class folders directly in --data-dir (4 images each): --test-fraction 0.5 holds out
    // 2 of each for testing, evaluate reads the same split, and a resume keeps the fraction.
    let flat = dir.path().join("flat");
    std::fs::rename(data.join("train"), &flat).expect("move train/");
    let flat_out = dir.path().join("flat-run");
    let flat_args = [
        "--weights",
        s(&weights),
        "--data-dir",
        s(&flat),
        "--image-size",
        "32",
        "--device",
        "cpu",
        "--out",
        s(&flat_out),
    ];
    let log = ok(
        &[&flat_args[..], &["--epochs", "1", "--test-fraction", "0.5"]].concat(),
        &[],
    );
    assert!(log.contains("(6 train / 6 test images"), "{log}");
    let evaluated = ok(&["evaluate", "--run", s(&flat_out), "--device", "cpu"], &[]);
    assert!(evaluated.contains("on 6 test images"), "{evaluated}");
    let err = fails(
        &[
            "--resume",
            s(&flat_out),
            "--epochs",
            "2",
            "--test-fraction",
            "0.25",
        ],
        &[],
    );
    assert!(
        err.contains("--test-fraction 0.25 (the run has 0.5)"),
        "{err}"
    );
    let err = fails(&[&flat_args[..], &["--test-fraction", "1"]].concat(), &[]);
    assert!(err.contains("--test-fraction must be in (0, 1)"), "{err}");
    assert!(
        log.contains("6 training and 6 test images from") && log.contains("(held out"),
        "{log}"
    );
    // The run's own folder given as --data-dir, in other spellings: the run's test, no note.
    let evaluate_on = |data: &str| {
        let args = ["evaluate", "--run", s(&flat_out), "--device", "cpu"];
        ok(&[&args[..], &["--data-dir", data]].concat(), &[])
    };
    for form in [format!("{}/", s(&flat)), format!("{}/./", s(&flat))] {
        let given = evaluate_on(&form);
        assert!(
            !given.contains("not the run's test") && given.contains("on 6 test images"),
            "{given}"
        );
    }
    // A copy of the run's folder elsewhere is the run's data: its held-out share, the run's
    // test, not its training images too.
    let copy_as = |name: &str, prefix: &str| {
        let copy = dir.path().join(name);
        for class in std::fs::read_dir(&flat).expect("flat folder") {
            let class = class.expect("entry").path();
            let to = copy.join(class.file_name().expect("class name"));
            std::fs::create_dir_all(&to).expect("class folder");
            for image in std::fs::read_dir(&class).expect("class folder") {
                let image = image.expect("entry").path();
                let named = format!("{prefix}{}", image.file_name().expect("name").display());
                std::fs::copy(&image, to.join(named)).expect("copy");
            }
        }
        copy
    };
    let same = evaluate_on(s(&copy_as("same", "")));
    assert!(
        same.contains("on 6 test images") && !same.contains("other than the run's"),
        "{same}"
    );
    // Another folder (other images: each of the run's, one pixel changed): every one of its
    // 12 images is a test image, as torchvision's ImageFolder of it gives them all, not the 6
    // a run would hold out.
    let other = copy_as("other", "new-");
    for class in std::fs::read_dir(&other).expect("other folder") {
        for image in std::fs::read_dir(class.expect("entry").path()).expect("class folder") {
            let path = image.expect("entry").path();
            let mut img = image::open(&path).expect("png").into_rgb8();
            let p = img.get_pixel_mut(0, 0);
            p.0[0] = p.0[0].wrapping_add(1);
            img.save(&path).expect("png");
        }
    }
    let given = evaluate_on(s(&other));
    assert!(
        given.contains("an image folder other than the run's")
            && given.contains("its 12 test images are all its class folders hold")
            && given.contains("on 12 test images")
            && !given.contains("trained on")
            && !given.contains("the run tested on"),
        "{given}"
    );
    assert!(flat_out.join("evaluation-best-data-other.json").is_file());
    // Each image's prediction names its file.
    let table = std::fs::read_to_string(flat_out.join("predictions-best-data-other.csv"))
        .expect("predictions");
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 12, "{table}");
    assert!(
        rows.iter()
            .all(|r| r.split(',').nth(1).is_some_and(|f| f.contains("other/"))),
        "{table}"
    );
    // Another folder of the same name elsewhere: its outputs take the next free name, and
    // the first folder's keep theirs, evaluated again.
    let namesake = dir.path().join("elsewhere").join("other");
    std::fs::create_dir_all(namesake.parent().expect("parent")).expect("parent");
    std::fs::rename(copy_as("namesake", "again-"), &namesake).expect("move");
    let said = evaluate_on(s(&namesake));
    assert!(
        said.contains("outputs are named best-data-other-2"),
        "{said}"
    );
    let summary = |tag: &str| -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(flat_out.join(format!("evaluation-best-data-{tag}.json")))
                .expect("evaluation"),
        )
        .expect("JSON")
    };
    assert_eq!(summary("other-2")["data_dir"], s(&namesake));
    let again = evaluate_on(s(&other));
    assert!(!again.contains("this one's outputs are named"), "{again}");
    assert_eq!(summary("other")["data_dir"], s(&other));
    assert!(!flat_out.join("evaluation-best-data-other-3.json").exists());
    // The run's files renamed in a folder of their own, or packed in an archive: the 6 the
    // run trained on (the same bytes) are left out, named, and the 6 it held out are scored.
    // Renamed in order, unchanged, the run's images are the run's test (the state records
    // their contents): its held-out share, not another folder.
    let renamed = evaluate_on(s(&copy_as("renamed", "r-")));
    assert!(
        renamed.contains("on 6 test images") && !renamed.contains("other than the run's"),
        "{renamed}"
    );
    // With one held-out image changed, the renamed copy (and an archive of it) is another
    // folder.
    let copy = copy_as("copy", "new-");
    let first_held_out = std::fs::read_to_string(flat_out.join("predictions-best.csv"))
        .expect("predictions")
        .lines()
        .nth(1)
        .and_then(|r| r.split(',').nth(1))
        .map(|f| f.replace("/./", "/"))
        .expect("a held-out image");
    let in_copy = std::path::PathBuf::from(first_held_out.replace(s(&flat), s(&copy)));
    let in_copy = in_copy.with_file_name(format!(
        "new-{}",
        in_copy.file_name().expect("name").to_string_lossy()
    ));
    let mut img = image::open(&in_copy).expect("png").into_rgb8();
    img.get_pixel_mut(2, 2).0[2] ^= 0x20;
    img.save(&in_copy).expect("png");
    let archive = dir.path().join("packed.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&archive).expect("archive"));
    tar.append_dir_all(".", &copy).expect("archive the folder");
    tar.finish().expect("archive");
    drop(tar);
    for (given, tag) in [(&copy, "copy"), (&archive, "packed.tar")] {
        let said = evaluate_on(s(given));
        assert!(
            said.contains("its 12 test images are all its class folders hold")
                && said.contains("6 of them are files the run trained on")
                && said.contains("left out: ")
                && said.contains("on 6 test images"),
            "{said}"
        );
        let summary: serde_json::Value = serde_json::from_slice(
            &std::fs::read(flat_out.join(format!("evaluation-best-data-{tag}.json")))
                .expect("evaluation"),
        )
        .expect("JSON");
        let left_out = summary["left_out_as_trained"].as_array().expect("left out");
        assert_eq!(left_out.len(), 6, "{summary}");
        let table =
            std::fs::read_to_string(flat_out.join(format!("predictions-best-data-{tag}.csv")))
                .expect("predictions");
        // None of the scored images is one of those left out.
        let rows: Vec<&str> = table.lines().skip(1).collect();
        assert_eq!(rows.len(), 6, "{table}");
        assert!(
            rows.iter().all(|r| left_out
                .iter()
                .all(|l| !r.contains(l.as_str().expect("name")))),
            "{table}\n{summary}"
        );
    }
    // The images scored in the renamed copy are the run's own held-out test images (its
    // predictions-best.csv), the ones left out the others.
    let files = |table: &str, from: &str| -> std::collections::BTreeSet<String> {
        table
            .lines()
            .skip(1)
            .filter_map(|r| r.split(',').nth(1))
            // The run's own evaluated last as `flat/./`.
            .map(|f| {
                f.replace("/./", "/")
                    .replace(from, s(&flat))
                    .replace("/new-", "/")
            })
            .collect()
    };
    let read = |name: &str| std::fs::read_to_string(flat_out.join(name)).expect("predictions");
    let held_out = files(&read("predictions-best.csv"), s(&flat));
    assert_eq!(held_out.len(), 6);
    // A held-out file changed in place (the same name, another image): not the run's test any
    // more, refused without --data-dir, and back as it was, scored as the run's again.
    let changed = held_out.iter().next().expect("a held-out file").clone();
    let original = std::fs::read(&changed).expect("image");
    let mut img = image::open(&changed).expect("png").into_rgb8();
    img.get_pixel_mut(1, 1).0[1] ^= 0x40;
    img.save(&changed).expect("png");
    let err = fails(&["evaluate", "--run", s(&flat_out), "--device", "cpu"], &[]);
    assert!(
        err.contains("with the same names and labels, but other contents"),
        "{err}"
    );
    // A resume refuses it too (the run's best epoch was chosen on the image as it was), and
    // leaves the run as it was.
    let state = std::fs::read(flat_out.join("state.safetensors")).expect("state");
    let resume = ["--resume", s(&flat_out), "--epochs", "2", "--device", "cpu"];
    let err = fails(&resume, &[]);
    assert!(
        err.contains("test images are as many as the run's, with the same names and labels, but other contents"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(flat_out.join("state.safetensors")).expect("state"),
        state
    );
    std::fs::write(&changed, &original).expect("put it back");
    // A training file changed in place: the epochs left would train on another image than the
    // epochs before; refused, the run as it was.
    let trained = walk(&flat)
        .into_iter()
        .find(|f| !held_out.contains(f))
        .expect("a training file");
    let original = std::fs::read(&trained).expect("image");
    let mut img = image::open(&trained).expect("png").into_rgb8();
    img.get_pixel_mut(2, 2).0[0] ^= 0x20;
    img.save(&trained).expect("png");
    let err = fails(&resume, &[]);
    assert!(
        err.contains("training images are as many as the run's, with the same names and labels, but other contents")
            && err.contains("the epochs left would train on other images than the epochs before"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(flat_out.join("state.safetensors")).expect("state"),
        state
    );
    std::fs::write(&trained, &original).expect("put it back");
    assert_eq!(
        files(&read("predictions-best-data-copy.csv"), s(&copy)),
        held_out
    );
    let left_out: std::collections::BTreeSet<String> = summary_names(&flat_out, "copy")
        .iter()
        .map(|f| f.replace(s(&copy), s(&flat)).replace("/new-", "/"))
        .collect();
    let all: std::collections::BTreeSet<String> = walk(&flat).into_iter().collect();
    assert_eq!(left_out.len(), 6);
    assert!(left_out.is_disjoint(&held_out));
    assert_eq!(
        left_out
            .union(&held_out)
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        all
    );
    // A state saved before it kept the fingerprints (the tensor and the sums taken out):
    // the copy's 12 images are all scored, and the note says why.
    let state_path = flat_out.join(train::rundir::STATE);
    let state = std::fs::read(&state_path).expect("state");
    let (_, header) = safetensors::SafeTensors::read_metadata(&state).expect("safetensors");
    let loaded = safetensors::SafeTensors::deserialize(&state).expect("safetensors");
    let kept: Vec<(String, safetensors::tensor::TensorView)> = loaded
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "data.trained_on_xxh3_64")
        .collect();
    let metadata: std::collections::HashMap<String, String> = header
        .metadata()
        .clone()
        .expect("metadata")
        .into_iter()
        .filter(|(k, _)| !k.starts_with("crc32c") && k != "trained_on_crc32c")
        .collect();
    safetensors::serialize_to_file(kept, Some(metadata), &state_path).expect("older state");
    let said = evaluate_on(s(&copy));
    assert!(
        said.contains("on 12 test images")
            && said.contains("keeps no fingerprints of its training images")
            && said.contains("are scored too"),
        "{said}"
    );
    // Without a state at all: said so.
    std::fs::remove_file(&state_path).expect("remove the state");
    let said = evaluate_on(s(&copy));
    assert!(
        said.contains(
            "scored too, as nothing tells them: the run's state.safetensors is not there"
        ),
        "{said}"
    );
    std::fs::write(&state_path, &state).expect("state back");
    let said = evaluate_on(s(&copy));
    assert!(said.contains("on 6 test images"), "{said}");
    // A folder of nothing but the images the run trained on: nothing to test, said.
    let trained_only = dir.path().join("trained-only");
    for name in summary_names(&flat_out, "copy") {
        let from = std::path::PathBuf::from(&name);
        let class = from.parent().and_then(|p| p.file_name()).expect("class");
        let to = trained_only.join(class);
        std::fs::create_dir_all(&to).expect("class folder");
        std::fs::copy(&from, to.join(from.file_name().expect("name"))).expect("copy");
    }
    let err = fails(
        &[
            "evaluate",
            "--run",
            s(&flat_out),
            "--device",
            "cpu",
            "--data-dir",
            s(&trained_only),
        ],
        &[],
    );
    assert!(
        err.contains("all 6 of its test images are files the run trained on")
            && !err.contains("without --data-dir"),
        "{err}"
    );
    // predict says which of its images are files the run trained on.
    let trained = summary_names(&flat_out, "copy").remove(0);
    let table = std::fs::read_to_string(flat_out.join("predictions-best-data-copy.csv"))
        .expect("predictions");
    let held_out = table
        .lines()
        .nth(1)
        .and_then(|r| r.split(',').nth(1))
        .expect("a row");
    let said = ok(
        &[
            "predict",
            "--run",
            s(&flat_out),
            "--device",
            "cpu",
            &trained,
            held_out,
        ],
        &[],
    );
    let note = "is a file the run trained on (the same bytes as one of its training images)";
    assert_eq!(said.matches(note).count(), 1, "{said}");
    assert!(said.contains(&format!("{trained} {note}")), "{said}");
    // The same number of images with the same labels, but other files (a class's images
    // A class's images renamed in the same order: the same files are held out, so evaluate
    // scores them as the run's test (their contents and labels are the run's), while --resume,
    // which compares the names, refuses.
    let frog = flat.join("frog");
    for entry in std::fs::read_dir(&frog).expect("class folder") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        std::fs::rename(&path, frog.join(format!("renamed-{name}"))).expect("rename");
    }
    let before = std::fs::read(flat_out.join("evaluation-best.json")).expect("evaluation");
    let figures = |json: &[u8]| -> (serde_json::Value, serde_json::Value) {
        let v: serde_json::Value = serde_json::from_slice(json).expect("JSON");
        (v["top1"].clone(), v["loss"].clone())
    };
    let own = ok(&["evaluate", "--run", s(&flat_out), "--device", "cpu"], &[]);
    assert!(
        own.contains("on 6 test images") && !own.contains("not the run's test"),
        "{own}"
    );
    assert_eq!(
        figures(&std::fs::read(flat_out.join("evaluation-best.json")).expect("evaluation")),
        figures(&before)
    );
    let err = fails(
        &["--resume", s(&flat_out), "--epochs", "2", "--device", "cpu"],
        &[],
    );
    assert!(
        err.contains("as many as the run's, with the same labels, but other files"),
        "{err}"
    );
    let before = std::fs::read(flat_out.join("evaluation-best.json")).expect("evaluation");
    // The run's folder with more images (each of `other`'s, other bytes): its held-out share,
    // drawn again, holds files the run trained on, which are left out, said; none of those
    // scored is one.
    for class in ["airplane", "frog", "truck"] {
        for image in std::fs::read_dir(other.join(class)).expect("class folder") {
            let image = image.expect("entry").path();
            let to = flat.join(class).join(image.file_name().expect("name"));
            std::fs::copy(&image, to).expect("copy");
        }
    }
    let given = evaluate_on(s(&flat));
    assert!(
        given.contains("its test split now has 12 images, the run tested on 6")
            && given.contains("the run trained on (the same bytes"),
        "{given}"
    );
    let (shape, bytes) =
        raw(&flat_out.join(train::rundir::STATE))["data.trained_on_xxh3_64"].clone();
    assert_eq!(shape, [6]);
    let trained: std::collections::BTreeSet<u64> = bytes
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    let sum = |file: &str| datasets::fingerprint(&std::fs::read(file).expect("image"));
    let table = read("predictions-best-data-flat.csv");
    let scored: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|r| r.split(',').nth(1))
        .collect();
    let left_out = summary_names(&flat_out, "flat");
    assert!(!left_out.is_empty() && !scored.is_empty());
    assert_eq!(scored.len() + left_out.len(), 12, "{table}");
    assert!(scored.iter().all(|f| !trained.contains(&sum(f))), "{table}");
    assert!(
        left_out.iter().all(|f| trained.contains(&sum(f))),
        "{left_out:?}"
    );
    // The run's folder gone, another folder's evaluation is named for it all the same: the
    // run's own evaluation stays.
    let away = dir.path().join("flat-away");
    std::fs::rename(&flat, &away).expect("move the run's folder");
    let given = evaluate_on(s(&other));
    assert!(
        given.contains("an image folder other than the run's"),
        "{given}"
    );
    assert_eq!(
        std::fs::read(flat_out.join("evaluation-best.json")).expect("evaluation"),
        before
    );
    // ... and without the state to tell a folder moved there from another, any folder given
    // is scored as other data, said so.
    let state_path = flat_out.join(train::rundir::STATE);
    let state = std::fs::read(&state_path).expect("state");
    std::fs::remove_file(&state_path).expect("remove the state");
    let given = evaluate_on(s(&other));
    assert!(
        given.contains("scored as other data than the run's, as nothing confirms this is the run's test split moved here (the run's folder is gone): its state is not there"),
        "{given}"
    );
    std::fs::write(&state_path, &state).expect("state back");
    assert_eq!(
        std::fs::read(flat_out.join("evaluation-best.json")).expect("evaluation"),
        before
    );
    std::fs::rename(&away, &flat).expect("move it back");
    // The run's folder with more images under another --limit-test: still not the run's test
    // (refused without --data-dir), and with it the images the run trained on are left out
    // before the limit draws.
    let args = [
        "evaluate",
        "--run",
        s(&flat_out),
        "--device",
        "cpu",
        "--limit-test",
        "4",
    ];
    let err = fails(&args, &[]);
    assert!(err.contains("has changed since it trained"), "{err}");
    let given = ok(&[&args[..], &["--data-dir", s(&flat)]].concat(), &[]);
    assert!(
        given.contains("the run trained on (the same bytes")
            && given.contains("--limit-test scores 4 of the")
            && given.contains("on 4 test images"),
        "{given}"
    );
    let table = read("predictions-best-test4-data-flat.csv");
    assert!(
        table
            .lines()
            .skip(1)
            .filter_map(|r| r.split(',').nth(1))
            .all(|f| !trained.contains(&sum(f))),
        "{table}"
    );
    // A run that tested on 3 of its 6 held-out images: evaluated on all 6, a held-out image
    // beyond its 3 that became a copy of a training file is left out (the state's record
    // covers the 3 alone, which keep the run's figures).
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).expect("folder");
    for class in ["airplane", "frog", "truck"] {
        let to = small.join(class);
        std::fs::create_dir_all(&to).expect("class folder");
        for image in std::fs::read_dir(other.join(class)).expect("class folder") {
            let image = image.expect("entry").path();
            std::fs::copy(&image, to.join(image.file_name().expect("name"))).expect("copy");
        }
    }
    let small_out = dir.path().join("small-run");
    let mut args: Vec<&str> = flat_args.to_vec();
    let at = args
        .iter()
        .position(|a| *a == s(&flat))
        .expect("--data-dir");
    args[at] = s(&small);
    let at = args.iter().position(|a| *a == s(&flat_out)).expect("--out");
    args[at] = s(&small_out);
    args.extend([
        "--epochs",
        "1",
        "--test-fraction",
        "0.5",
        "--limit-test",
        "3",
    ]);
    ok(&args, &[]);
    let eval_small = |extra: &[&str]| {
        let base = ["evaluate", "--run", s(&small_out), "--device", "cpu"];
        ok(&[&base[..], extra].concat(), &[])
    };
    eval_small(&[]);
    eval_small(&["--limit-test", "all"]);
    let names = |file: &str| -> Vec<String> {
        std::fs::read_to_string(small_out.join(file))
            .expect("predictions")
            .lines()
            .skip(1)
            .filter_map(|r| r.split(',').nth(1).map(String::from))
            .collect()
    };
    let share = names("predictions-best.csv");
    let all = names("predictions-best-test-all.csv");
    assert_eq!((share.len(), all.len()), (3, 6));
    let beyond = all
        .iter()
        .find(|f| !share.contains(f))
        .expect("a held-out image beyond");
    let training = walk(&small)
        .into_iter()
        .find(|f| !all.contains(f))
        .expect("a training image");
    std::fs::copy(&training, beyond).expect("copy a training file over it");
    let said = eval_small(&["--limit-test", "all"]);
    assert!(
        said.contains("1 of them is a file the run trained on")
            && said.contains("on 5 test images"),
        "{said}"
    );
    // Another folder is scored whole, the run's --limit-test set aside, said.
    let renamed_folder = dir.path().join("renamed");
    let whole_other = eval_small(&["--data-dir", s(&renamed_folder)]);
    assert!(
        whole_other.contains("the run's --limit-test 3 is set aside")
            && whole_other.contains("on 12 test images"),
        "{whole_other}"
    );
    let again = eval_small(&[]);
    assert!(
        again.contains("on 3 test images") && !again.contains("trained on ("),
        "{again}"
    );
}

/// The arguments of a fine-tuning run of `epochs` on the folder `data` into `out`, augmented:
/// the images are read in each epoch (not once, as frozen features).
fn augmented_run(weights: &Path, data: &Path, out: &Path, epochs: &str) -> Vec<String> {
    [
        "--weights",
        s(weights),
        "--folder",
        "--data-dir",
        s(data),
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--augment",
        "--device",
        "cpu",
        "--out",
        s(out),
        "--epochs",
        epochs,
    ]
    .map(String::from)
    .to_vec()
}

/// An image that cannot be read any more, met in an epoch after others were saved (cut short
/// while the run trains), stops the run naming the file, where it stopped, what is saved and
/// `--resume` as the way on; once the file is put back, the run continues.
#[test]
fn an_image_damaged_mid_run_stops_the_run_saying_what_is_saved() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, weights) = folder_and_weights(dir.path(), "data", 4, 2);
    let out = dir.path().join("run");
    let args = |epochs: &str| augmented_run(&weights, &data, &out, epochs);
    let mut child = Command::new(env!("CARGO_BIN_EXE_finetune-resnet50"))
        .args(args("3"))
        .env("HF_HUB_OFFLINE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("finetune-resnet50 starts");
    let (first_epoch, seen) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let stdout = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("epoch 1/3") {
                let _ = first_epoch.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut all = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut all).expect("stderr");
        all
    });
    seen.recv_timeout(std::time::Duration::from_secs(300))
        .expect("the first epoch ends");
    let image = data.join("train").join("frog").join("0000.png");
    let whole = std::fs::read(&image).expect("image");
    std::fs::write(&image, &whole[..whole.len().min(100)]).expect("truncate");
    let status = child.wait().expect("wait");
    let said = format!(
        "{}{}",
        stdout.join().expect("stdout"),
        stderr.join().expect("stderr")
    );
    assert!(!status.success(), "{said}");
    for part in [
        "the run stopped in epoch ".to_string(),
        format!(
            "once the cause is mended, --resume {} continues from there",
            s(&out)
        ),
        s(&image).to_string(),
    ] {
        assert!(said.contains(&part), "{part}: {said}");
    }
    std::fs::write(&image, &whole).expect("mend");
    let mut again = args("3");
    again.extend(["--resume".into(), s(&out).into()]);
    let resumed = ok(&strs(&again), &[]);
    assert!(resumed.contains("epoch 3/3"), "{resumed}");
}

/// An image damaged between a run and its resume (cut short) is found before training, named,
/// with `--resume` as the way on once it is mended (it stopped the run in its next epoch,
/// before the state kept the training images' contents); the saved epoch stays as it was, and
/// once the image is mended the run continues.
#[test]
fn an_unreadable_image_mid_run_says_what_is_saved() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, weights) = folder_and_weights(dir.path(), "data", 4, 2);
    let out = dir.path().join("run");
    let run = |epochs: &str| augmented_run(&weights, &data, &out, epochs);
    ok(&strs(&run("1")), &[]);
    let last = out.join(train::rundir::LAST);
    let saved = std::fs::read(&last).expect("last");
    let image = data.join("train").join("frog").join("0000.png");
    let whole = std::fs::read(&image).expect("image");
    std::fs::write(&image, &whole[..whole.len().min(100)]).expect("truncate");
    let mut again = run("2");
    again.extend(["--resume".into(), s(&out).into()]);
    let err = fails(&strs(&again), &[]);
    for said in [
        format!(
            "--resume {}: the data is not what the run trained on: its training images are as \
             many as the run's, with the same names and labels, but other contents",
            s(&out)
        ),
        format!("; changed: {}", s(&image)),
    ] {
        assert!(err.contains(&said), "{said}: {err}");
    }
    assert_eq!(std::fs::read(&last).expect("last"), saved);
    std::fs::write(&image, &whole).expect("mend");
    ok(&strs(&again), &[]);
}

/// `--weights` with a name that is not UTF-8 (a Latin-1 file name), for fine-tuning and for
/// `predict`, is refused naming the flag (kept as text in finetune.json), not with clap's bare
/// "invalid UTF-8 was detected in one or more arguments".
#[cfg(unix)]
#[test]
fn a_weights_name_that_is_not_utf8_is_refused_naming_the_flag() {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.safetensors");
    for command in [&[][..], &["predict"]] {
        let ended = Command::new(env!("CARGO_BIN_EXE_finetune-resnet50"))
            .args(command)
            .arg("--weights")
            .arg(name)
            .output()
            .expect("finetune-resnet50 starts");
        let err = String::from_utf8_lossy(&ended.stderr);
        assert!(!ended.status.success(), "{command:?}: {err}");
        assert!(
            err.contains("--weights caf\u{FFFD}.safetensors: the path is not valid UTF-8"),
            "{command:?}: {err}"
        );
    }
}
