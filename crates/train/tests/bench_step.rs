//! `bench-step --help` describes the benchmark instead of running it.

/// `bench-step` with `args`, to add more to and run.
fn bench_step<const N: usize>(args: [&str; N]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bench-step"));
    command.args(args);
    command
}

#[test]
fn help_prints_the_flags_and_runs_nothing() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bench-step"))
        .arg("--help")
        .output()
        .expect("bench-step starts");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Usage: bench-step") && text.contains("--precision"),
        "{text}"
    );
    assert!(!text.contains("median training step on"), "{text}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_bench-step"))
        .args(["--steps", "0"])
        .output()
        .expect("bench-step starts");
    assert_eq!(bad.status.code(), Some(2));
}

/// `--rounds` times each model in turn and ends with the medians and PyTorch's time over ours
/// round by round, here from a saved PyTorch result (the anchor script's output format).
#[test]
fn rounds_end_with_medians_and_per_round_ratios() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let saved = dir.path().join("pytorch.txt");
    std::fs::write(
        &saved,
        "torch 2.15.0 threads 2 isa AVX512\n\
         lenet5   f32      batch  64  step    5.3 ms     12000.0 img/s\n\
         lenet5   f32-cl   batch  64  step    3.5 ms     18000.0 img/s\n\
         lenet5   bf16-cl  batch  64  step    3.4 ms     18500.0 img/s\n",
    )
    .expect("write the saved result");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bench-step"))
        .args(["--only", "lenet5", "--steps", "1", "--rounds", "2"])
        .args(["--precision", "f32,bf16", "--pytorch-results"])
        .arg(&saved)
        .output()
        .expect("bench-step starts");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Our step per round and precision, as printed: `lenet5 b64   f32   10.6 ms ...`.
    let ours = |precision: &str| -> Vec<f64> {
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f.as_slice() {
                    ["lenet5", "b64", p, ms, "ms", ..] if *p == precision => ms.parse().ok(),
                    _ => None,
                }
            })
            .collect()
    };
    let (f32s, bf16s) = (ours("f32"), ours("bf16"));
    assert_eq!((f32s.len(), bf16s.len()), (2, 2), "{text}");
    assert!(text.contains("lenet5 round 2/2"), "{text}");
    assert!(
        text.contains("lenet5 over 2 rounds, medians: ours b64 f32"),
        "{text}"
    );
    assert!(
        text.contains("lenet5 PyTorch f32 5.3 ms, f32-cl 3.5 ms, bf16-cl 3.4 ms"),
        "{text}"
    );
    // Each round's ratio is PyTorch's time over that round's own step, `round:ratio`. The step
    // is printed to 0.1 ms and the ratio to 0.01: the ratio recomputed from the printed step
    // may differ by up to pytorch * 0.05 / ms² + 0.005.
    for (mode, pytorch, ours) in [("f32", 5.3, &f32s), ("f32-cl", 3.5, &f32s)]
        .into_iter()
        .chain([("bf16-cl", 3.4, &bf16s)])
    {
        let precision = mode.split('-').next().unwrap();
        let head = format!("PyTorch {mode} / our {precision}, round by round: ");
        let line = text
            .lines()
            .find_map(|l| l.split_once(&head).map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no `{head}` in\n{text}"));
        let ratios: Vec<(String, f64)> = line
            .split(" (median")
            .next()
            .unwrap()
            .split_whitespace()
            .map(|r| {
                let (round, ratio) = r.split_once(':').expect("round:ratio");
                (round.to_string(), ratio.parse().expect("a ratio"))
            })
            .collect();
        let rounds: Vec<&str> = ratios.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(rounds, ["1", "2"], "{line}");
        let slack = |ms: f64| pytorch * 0.05 / (ms * ms) + 0.0051;
        for ((_, ratio), &ms) in ratios.iter().zip(ours.iter()) {
            let expected = pytorch / ms;
            assert!(
                (ratio - expected).abs() <= slack(ms),
                "{mode}: {ratio} against {pytorch} / {ms} ms\n{text}"
            );
        }
        // (Unless a round is too close to call from the printed time.)
        if ours
            .iter()
            .all(|&ms| (pytorch / ms - 1.0).abs() > slack(ms))
        {
            let ahead = ours.iter().filter(|&&ms| pytorch / ms > 1.0).count();
            assert!(
                line.contains(&format!("ours faster in {ahead} of 2")),
                "{line}"
            );
        }
    }
}

/// A `--pytorch-results` file without step figures is refused, named; figures at another batch
/// than ours give no ratio, and say so.
#[test]
fn pytorch_results_without_figures_or_at_another_batch_are_said() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let bench = |saved: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bench-step"))
            .args(["--only", "lenet5", "--steps", "1", "--pytorch-results"])
            .arg(saved)
            .output()
            .expect("bench-step starts")
    };
    let wrong = dir.path().join("hostname");
    std::fs::write(&wrong, "localhost\n").expect("write");
    let out = bench(&wrong);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("hostname: no step figures in it"),
        "{err}"
    );
    let other = dir.path().join("b32.txt");
    std::fs::write(
        &other,
        "lenet5   f32      batch  32  step    2.0 ms     16000.0 img/s\n",
    )
    .expect("write");
    let out = bench(&other);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("figures for lenet5 at batch 32 only, not 64: no ratio"),
        "{text}"
    );
    assert!(!text.contains("x)"), "a ratio across batch sizes: {text}");
    // Ours at another batch than the tutorial's: said once, no ratio.
    let saved = dir.path().join("b64.txt");
    std::fs::write(
        &saved,
        "lenet5   f32      batch  64  step    2.0 ms     16000.0 img/s\n",
    )
    .expect("write");
    let out = bench_step(["--only", "lenet5", "--steps", "1", "--batches", "8,64"])
        .arg("--pytorch-results")
        .arg(&saved)
        .output()
        .expect("bench-step starts");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("PyTorch: compared at batch 64 only (the anchors' script times the tutorial's batch): no ratio at batch 8"),
        "{text}"
    );
    assert_eq!(text.matches("no ratio at batch").count(), 1, "{text}");
    assert!(
        text.contains("(2.00x)") || text.contains("x)"),
        "batch 64 compared: {text}"
    );
}

/// `--only` takes the zoo's other models, at batch 128 (or the one `--batches` given) on
/// `--image-size` images, and `--compare-pytorch` gives their PyTorch script to the Python
/// named, on standard input, with the model, batch and size (here a stand-in that checks it
/// was given the script and answers as the script does); unknown names, 1-channel models and
/// models torchvision does not have (asked of the script's `--list`) are refused, naming the
/// flag.
#[cfg(unix)]
#[test]
fn other_zoo_models_are_timed_against_torchvisions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temporary directory");
    let python = dir.path().join("python");
    std::fs::write(
        &python,
        "#!/bin/sh\n\
         if [ \"$2\" = --list ]; then grep -q 'TORCHVISION' || exit 5; echo resnet18; echo googlenet; exit 0; fi\n\
         [ \"$1\" = - ] && [ \"$2\" = resnet18 ] && [ \"$3\" = --batch ] && [ \"$6\" = 24 ] || exit 3\n\
         grep -q 'torchvision.models' || exit 4\n\
         echo 'torch 2.15.0 threads 2 isa AVX512'\n\
         echo \"resnet18         f32      batch  $4  step    1000.0 ms  128.0 img/s\"\n",
    )
    .expect("write the stand-in");
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // At the model's batch, and at the one other batch given (the script takes any).
    for (batches, shown) in [(None, "resnet18 b128"), (Some("6"), "resnet18 b6 ")] {
        let mut command = bench_step(["--only", "resnet18", "--image-size", "24", "--steps", "1"]);
        if let Some(b) = batches {
            command.args(["--batches", b]);
        }
        let out = command
            .arg("--compare-pytorch")
            .arg(&python)
            .env_remove("CNN_SHARED_DIR")
            .output()
            .expect("bench-step starts");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(shown)
                && text.contains("PyTorch 2.15.0, threads 2, AVX512: f32 1000.0 ms ("),
            "{batches:?}: {text}"
        );
    }
    // A zoo model torchvision does not have: refused before ours is timed, naming those it has.
    let out = bench_step(["--only", "alexnet", "--image-size", "64", "--steps", "1"])
        .arg("--compare-pytorch")
        .arg(&python)
        .output()
        .expect("bench-step starts");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("torchvision has no model alexnet (it is the zoo's own)")
            && err.contains("timed for resnet18, googlenet"),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("alexnet b"),
        "timed before the refusal"
    );
    for (args, expected) in [
        (
            &["--only", "resnet18x"][..],
            "--only resnet18x: no such model",
        ),
        (
            &["--only", "lenet5", "--image-size", "32"],
            "lenet5 is timed at its training images' size, 28x28",
        ),
        (
            &["--image-size", "32"],
            "--image-size is for a zoo model other than the four",
        ),
        (
            &["--only", "alexnet-tv", "--steps", "1"],
            "--only alexnet-tv on 32x32 images: give a larger --image-size",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bench-step"))
            .args(args)
            .output()
            .expect("bench-step starts");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expected),
            "{args:?}: {err}"
        );
    }
}
