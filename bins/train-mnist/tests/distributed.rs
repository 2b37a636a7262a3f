//! Data-parallel training under `mpirun -n 2` (built with `--features mpi`, Open MPI installed;
//! `.ci/run` installs it): two ranks of batch 32 reach the weights and metrics of one process of
//! batch 64; a failing rank ends the whole job with its error. Needs CNN_SHARED_DIR (the real
//! MNIST subset); skipped with a message otherwise.
#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "../../../tests/support/mpi.rs"]
mod mpi;
use mpi::{max_difference, metrics, mpirun, run, shared_data};

const BIN: &str = env!("CARGO_BIN_EXE_train-mnist");

fn args<'a>(data: &'a str, out: &'a str, batch: &'a str) -> Vec<&'a str> {
    vec![
        "--data-dir",
        data,
        "--model",
        "lenet5",
        "--epochs",
        "1",
        "--batch-size",
        batch,
        "--workers",
        "1",
        "--out",
        out,
    ]
}

/// LeNet-5 (no dropout, no batch norm), Adam at 1e-3, one epoch of the 6,000-image subset:
/// 94 steps of a global batch of 64 (the last of 48, split 24 + 24).
///
/// Tolerance: the two runs differ only in the order of float32 sums (each rank sums its 32
/// samples' gradients, the all-reduce adds the two halves; one process sums 64 at once). Such
/// differences are ~1e-7 relative per step; Adam divides each update by the root of the
/// gradient's running square, so a near-zero gradient component can turn its rounding noise
/// into an update of up to lr, and 94 steps compound it. 2e-4 on weights of order 0.1 (observed
/// below 1e-5) is float32 noise and far below one update (lr = 1e-3); metrics agree to their
/// printed precision, accuracies within one test image.
#[test]
fn two_ranks_of_32_match_one_process_of_64() {
    let Some(data) = shared_data("mnist") else {
        return;
    };
    let data = data.to_string_lossy().into_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let (one_s, two_s) = (one.to_string_lossy(), two.to_string_lossy());
    run(Command::new(BIN).args(args(&data, &one_s, "64")));
    let started = Instant::now();
    let out = run(mpirun()
        .args(["-n", "2", BIN])
        .args(args(&data, &two_s, "32")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Rank 0 alone prints: one line per epoch.
    assert_eq!(stdout.matches("epoch 1/1:").count(), 1, "{stdout}");
    eprintln!("2 ranks: {:.1} s", started.elapsed().as_secs_f64());
    let (diff, name) = max_difference(&one.join("last.safetensors"), &two.join("last.safetensors"));
    eprintln!("largest weight difference {diff:e} ({name})");
    assert!(diff <= 2e-4, "{name} differs by {diff}");
    let (a, b) = (metrics(&one), metrics(&two));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        // epoch, train loss, train acc, test loss, test acc, (top-5,) lr: losses to 1e-4,
        // accuracies (percent) to one test image of 2,000.
        for (u, v) in x.iter().zip(y) {
            assert!(
                (u - v).abs() <= 0.05 + 1e-9,
                "metrics differ: {x:?} vs {y:?}"
            );
        }
        assert!(
            (x[1] - y[1]).abs() <= 1e-4 && (x[3] - y[3]).abs() <= 1e-4,
            "{x:?} vs {y:?}"
        );
    }
    // The saved state does not depend on the world size: one process continues the run,
    // saying that the global batch changes.
    let resumed = run(Command::new(BIN).args([
        "--resume",
        &two_s,
        "--epochs",
        "2",
        "--workers",
        "1",
        "--data-dir",
        &data,
    ]));
    assert_eq!(metrics(&two).len(), 2);
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(
        err.contains("trained with 2 data-parallel process(es) and goes on with 1")
            && err.contains("goes from 64 to 32"),
        "{err}"
    );
}

/// One rank given a data directory that does not exist fails while the other waits in the first
/// collective: the job ends, with that rank's error, within seconds.
#[test]
fn a_failing_rank_ends_the_job_with_its_error() {
    let Some(data) = shared_data("mnist") else {
        return;
    };
    let data = data.to_string_lossy().into_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let out = out.to_string_lossy();
    let missing = dir.path().join("no-such-data");
    let missing = missing.to_string_lossy();
    let started = Instant::now();
    let result = mpirun()
        .args(["-n", "1", BIN])
        .args(args(&data, &out, "32"))
        .args([":", "-n", "1", BIN])
        .args(args(&missing, &out, "32"))
        .output()
        .expect("cannot start mpirun");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(stderr.contains("Error on rank 1 of 2"), "{stderr}");
    assert!(stderr.contains("no-such-data"), "{stderr}");
    eprintln!("the job ended {:.1} s after it started", took.as_secs_f64());
    assert!(took < Duration::from_secs(30), "took {took:?}");
    // Rank 0, which had made the run directory, was ended by mpirun's SIGTERM while it waited
    // for rank 1: it removed the directory first (a failed start leaves none behind).
    assert!(
        !Path::new(&*out).exists(),
        "{out} was left behind:\n{stderr}"
    );
}

/// A rank that never starts MPI (here a `sleep` in its place, as a rank stopped or hung before
/// MPI's start-up would be) leaves the others waiting in that start-up: after
/// --collective-timeout seconds they say so and end the job, which waited forever before.
#[test]
fn a_rank_that_never_starts_mpi_ends_the_job_after_the_collective_timeout() {
    let Some(data) = shared_data("mnist") else {
        return;
    };
    let data = data.to_string_lossy().into_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let out = out.to_string_lossy();
    let started = Instant::now();
    let result = mpirun()
        .args(["-n", "1", BIN])
        .args(args(&data, &out, "32"))
        .args(["--collective-timeout", "3"])
        .args([":", "-n", "1", "sleep", "120"])
        .output()
        .expect("cannot start mpirun");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(
        stderr.contains("Error on rank 0 of 2: waited 3 s in MPI's start-up for the other ranks"),
        "{stderr}"
    );
    eprintln!("the job ended {:.1} s after it started", took.as_secs_f64());
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(!Path::new(&*out).exists(), "{stderr}");
}

/// The pid of the process running `BIN` as rank `rank` of the MPI job whose command line holds
/// `marker` (Linux: its environment in /proc names the rank).
/// A loss that stops being finite reaches every rank at the same step (the all-reduced loss):
/// the ranks stop together once rank 0 has written the epoch before, which stays whole (an
/// abort from rank 1 ended rank 0's write midway); the error is said once, by rank 0, and the
/// job exits with an error. Synthetic MNIST, the MNIST CNN, SGD at 0.01 for the first epoch,
/// 1e7 after.
#[test]
fn a_diverging_job_stops_together_keeping_the_epochs_before() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("mnist");
    train::synthetic::write_mnist(&data, 256, 64).expect("synthetic MNIST");
    let out = dir.path().join("run");
    let data_s = data.to_string_lossy();
    let out_s = out.to_string_lossy();
    let result = mpirun()
        .args(["-n", "2", BIN])
        .args(args(&data_s, &out_s, "32"))
        .args([
            "--model",
            "cnn-mnist",
            "--epochs",
            "3",
            "--optimizer",
            "sgd",
            "--lr",
            "0.01",
        ])
        .args(["--schedule", "step", "--step-size", "1", "--gamma", "1e9"])
        .output()
        .expect("cannot start mpirun");
    let err = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{err}");
    assert_eq!(err.matches("the training loss became").count(), 1, "{err}");
    assert!(err.contains("in epoch 2 at batch"), "{err}");
    assert!(!err.contains("Error on rank"), "{err}");
    assert_eq!(metrics(&out).len(), 1, "{err}");
    // Epoch 1's files are whole: its run evaluates.
    run(Command::new(BIN).args(["evaluate", "--run", &out_s, "--data-dir", &data_s]));
}

fn pid_of_rank(rank: usize, marker: &str) -> Option<u32> {
    let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let exe = std::fs::read_link(entry.path().join("exe")).ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let ours = exe == Path::new(BIN)
                && cmdline
                    .split(|&b| b == 0)
                    .any(|arg| arg == marker.as_bytes())
                && environ
                    .split(|&b| b == 0)
                    .any(|var| var == wanted.as_bytes());
            ours.then_some(pid)
        })
}

/// A rank that stops without failing (here suspended with SIGSTOP, as a hung or unreachable one
/// would be) leaves the other waiting in a collective: after --collective-timeout seconds that
/// rank says so and ends the job, instead of waiting forever.
#[test]
fn a_stopped_rank_ends_the_job_after_the_collective_timeout() {
    let Some(data) = shared_data("mnist") else {
        return;
    };
    let data = data.to_string_lossy().into_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let out = out.to_string_lossy();
    let mut job = mpirun()
        .args(["-n", "2", BIN, "--data-dir", &data, "--model", "lenet5"])
        .args([
            "--epochs",
            "20",
            "--batch-size",
            "32",
            "--workers",
            "1",
            "--out",
            &out,
        ])
        .args(["--collective-timeout", "3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot start mpirun");
    let started = Instant::now();
    let pid = loop {
        if let Some(pid) = pid_of_rank(1, &out) {
            break pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "rank 1 never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Into its first epoch (the run takes far longer than this), then suspended.
    std::thread::sleep(Duration::from_secs(2));
    let stop = |signal: &str| {
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
    };
    stop("-STOP");
    let stopped = Instant::now();
    let ended = loop {
        if let Some(status) = job.try_wait().expect("wait") {
            break Some(status);
        }
        if stopped.elapsed() > Duration::from_secs(120) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = stopped.elapsed();
    if ended.is_none() {
        stop("-CONT");
        let _ = job.kill();
    }
    let result = job.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&result.stderr);
    let status = ended.unwrap_or_else(|| panic!("the job still ran 120 s later:\n{stderr}"));
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("Error on rank 0 of 2: waited 3 s in")
            && stderr.contains("for the other ranks (--collective-timeout 3)"),
        "{stderr}"
    );
    eprintln!(
        "the job ended {:.1} s after rank 1 stopped",
        took.as_secs_f64()
    );
}

/// SIGTERM to one rank (Slurm signals them all; one is the harder case), then again to every
/// rank, stops every rank after the same batch: the job ends as a run in one process does, rank
/// 0 saying once where it stopped and how to resume, every finished epoch saved, no rank
/// aborting or ending early.
#[test]
fn a_sigterm_to_one_rank_stops_every_rank_after_the_same_batch() {
    let Some(data) = shared_data("mnist") else {
        return;
    };
    let data = data.to_string_lossy().into_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let out_s = out.to_string_lossy().into_owned();
    let mut job = mpirun()
        .args(["-n", "2", BIN, "--data-dir", &data, "--model", "lenet5"])
        .args([
            "--epochs",
            "50",
            "--batch-size",
            "8",
            "--workers",
            "1",
            "--out",
            &out_s,
        ])
        .args(["--collective-timeout", "60"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot start mpirun");
    let started = Instant::now();
    let state = out.join(train::rundir::STATE);
    while !state.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no epoch was saved within 180 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = pid_of_rank(1, &out_s).expect("rank 1 runs");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    // Then every rank, as Slurm and mpirun both send it: a repeat changes nothing.
    std::thread::sleep(Duration::from_millis(5));
    for rank in [0, 1] {
        if let Some(pid) = pid_of_rank(rank, &out_s) {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    let waited = Instant::now();
    let ended = loop {
        if let Some(status) = job.try_wait().expect("wait") {
            break Some(status);
        }
        if waited.elapsed() > Duration::from_secs(120) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if ended.is_none() {
        let _ = job.kill();
    }
    let result = job.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&result.stderr);
    let status = ended.unwrap_or_else(|| panic!("the job still ran 120 s later:\n{stderr}"));
    assert!(!status.success(), "{stderr}");
    let done = metrics(&out).len();
    assert!((1..50).contains(&done), "{done} epochs:\n{stderr}");
    assert_eq!(
        train::state::saved_epochs(&out).map(|e| e.0),
        Some(done),
        "{stderr}"
    );
    let said = format!(
        "stopped by SIGTERM in epoch {} of 50: {}",
        done + 1,
        match done {
            1 => "epoch 1 is saved".to_string(),
            n => format!("epochs 1-{n} are saved"),
        }
    );
    assert_eq!(
        stderr.matches("stopped by SIGTERM in epoch").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains(&said)
            && stderr.contains(&format!("continue with --resume {out_s}"))
            && !stderr.contains("Error on rank")
            && !stderr.contains("before the epochs began"),
        "{stderr}"
    );
}

/// Ranks given different settings (`--limit-train`, which left alone makes them wait on each
/// other forever; `--lr`, which would train each rank its own way) or different data (a copy of
/// MNIST with one training label changed) end the job at once, the error naming what differs
/// and both values.
#[test]
fn ranks_that_differ_in_a_setting_or_their_data_are_refused() {
    use datasets::Dataset;
    let Some(data) = shared_data("mnist") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    // The copy: one label changed, in a plain IDX file.
    let copy = dir.path().join("mnist-copy");
    std::fs::create_dir(&copy).expect("copy dir");
    for name in [
        "train-images-idx3-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        std::fs::copy(data.join(name), copy.join(name)).expect("copy");
    }
    let train = datasets::read_idx_pair(
        &data.join("train-images-idx3-ubyte.gz"),
        &data.join("train-labels-idx1-ubyte.gz"),
    )
    .expect("MNIST");
    let mut labels = [0u8, 0, 8, 1].to_vec();
    labels.extend((train.len() as u32).to_be_bytes());
    labels.extend((0..train.len()).map(|i| train.label(i) as u8));
    labels[8] = (labels[8] + 1) % 10;
    std::fs::write(copy.join("train-labels-idx1-ubyte"), labels).expect("labels");
    let (data, copy) = (data.to_string_lossy(), copy.to_string_lossy());
    let out = dir.path().join("run");
    let out = out.to_string_lossy();
    for (other, says) in [
        (
            (&*data, ["--lr", "0.001", "--limit-train", "300"]),
            "differ in their settings: --limit-train 300 here, 600 on rank 0",
        ),
        (
            (&*data, ["--lr", "0.01", "--limit-train", "600"]),
            "differ in their settings: --lr 0.01 here, 0.001 on rank 0",
        ),
        (
            (&*copy, ["--lr", "0.001", "--limit-train", "600"]),
            "differ in their data and model: the training images 600 (CRC-32C",
        ),
    ] {
        let started = Instant::now();
        let result = mpirun()
            .args(["-n", "1", BIN])
            .args(args(&data, &out, "32"))
            .args(["--limit-train", "600"])
            .args([":", "-n", "1", BIN])
            .args(args(other.0, &out, "32"))
            .args(other.1)
            .output()
            .expect("cannot start mpirun");
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{stderr}");
        assert!(stderr.contains("Error on rank 1 of 2"), "{stderr}");
        assert!(stderr.contains(says), "{says}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(60), "{other:?}");
        assert!(
            !Path::new(&*out).join("last.safetensors").exists(),
            "{other:?}: nothing trained"
        );
    }
    // A rank whose optimizer rounds otherwise (PyTorch's portable kernels asked for there
    // alone, or there alone not): its replica would drift from the others', so it is refused
    // too. Only an x86-64 CPU with FMA rounds either way (aarch64's kernels always fuse).
    let fma = cfg!(target_arch = "x86_64")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma");
    if fma {
        let other = match optim::cpu_fused_multiply_add() {
            true => "ATEN_CPU_CAPABILITY=default",
            false => "ATEN_CPU_CAPABILITY=avx2",
        };
        let started = Instant::now();
        let result = mpirun()
            .args(["-n", "1", BIN])
            .args(args(&data, &out, "32"))
            .args(["--limit-train", "600"])
            .args([":", "-n", "1", "env", other, BIN])
            .args(args(&data, &out, "32"))
            .args(["--limit-train", "600"])
            .output()
            .expect("cannot start mpirun");
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(
            !result.status.success()
                && stderr.contains("Error on rank 1 of 2")
                && stderr.contains("differ in their data and model: the optimizer's rounding"),
            "{stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "{stderr}");
        assert!(
            !Path::new(&*out).join("last.safetensors").exists(),
            "rounding: nothing trained"
        );
    }
}

/// Dropout (the MNIST CNN's) with a last global batch split unevenly (501 images, 2 ranks of
/// 32): rank 1 draws fewer masks in it, yet the run resumed after epoch 1 (which restores rank
/// 0's generator on every rank) reaches the uninterrupted run's weights bit for bit.
#[test]
fn a_resumed_run_with_dropout_and_an_uneven_last_batch_is_exact() {
    let Some(data) = shared_data("mnist") else {
        return;
    };
    let data = data.to_string_lossy().into_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let (whole, resumed) = (dir.path().join("whole"), dir.path().join("resumed"));
    let (whole, resumed) = (whole.to_string_lossy(), resumed.to_string_lossy());
    let job = |out: &str, epochs: &str, resume: bool| {
        let mut cmd = mpirun();
        cmd.args(["-n", "2", BIN, "--data-dir", &data, "--model", "cnn-mnist"]);
        cmd.args([
            "--limit-train",
            "501",
            "--limit-test",
            "200",
            "--batch-size",
            "32",
        ]);
        cmd.args(["--workers", "1", "--epochs", epochs]);
        cmd.args([if resume { "--resume" } else { "--out" }, out]);
        run(&mut cmd);
    };
    job(&whole, "2", false);
    job(&resumed, "1", false);
    job(&resumed, "2", true);
    let (diff, name) = max_difference(
        &Path::new(&*whole).join("last.safetensors"),
        &Path::new(&*resumed).join("last.safetensors"),
    );
    assert_eq!(diff, 0.0, "{name} differs by {diff}");
    assert_eq!(metrics(Path::new(&*whole)), metrics(Path::new(&*resumed)));
}

/// The `evaluation-*.json` summary written in `dir`.
fn evaluation_in(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&output_in(dir, "evaluation-", ".json")).expect("JSON")
}

/// The `predictions-*.csv` `evaluate` wrote into `dir` (each test image's prediction).
fn predictions_in(dir: &Path) -> Vec<u8> {
    output_in(dir, "predictions-", ".csv")
}

/// The one file in `dir` named `<prefix>...<suffix>`, read.
fn output_in(dir: &Path, prefix: &str, suffix: &str) -> Vec<u8> {
    let found: Vec<_> = std::fs::read_dir(dir)
        .expect("outputs")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(prefix) && name.ends_with(suffix)
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    std::fs::read(&found[0]).expect("output")
}

/// `evaluate` under `mpirun -n 2`: each rank tests its half of the 2,000 test images (batches
/// of 50, a global batch of 100); rank 0 alone prints the figures and writes the outputs, which
/// are one process's evaluation in batches of 100 (the same top-1, top-5 and per-class
/// accuracies; the loss to float32 rounding, the sums taken in another order). Ranks that
/// would evaluate in different precisions are refused, naming it, and write nothing. Rank 1,
/// given its own --out, writes nothing there. With 1,001 images in batches of 500, rank 1's
/// share of the last global batch (one image) is empty, and the figures are still one
/// process's.
#[test]
fn two_ranks_evaluate_as_one_process() {
    let Some(data) = shared_data("mnist") else {
        return;
    };
    let data = data.to_string_lossy().into_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (trained, one, two, mixed) = (path("run"), path("one"), path("two"), path("mixed"));
    run(Command::new(BIN)
        .args(args(&data, &trained, "64"))
        .args(["--limit-train", "600"]));
    let evaluate = |out: &str, batch: &str| {
        let flags = ["evaluate", "--run", &trained, "--out", out];
        let mut flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        flags.extend(["--test-batch-size".into(), batch.into()]);
        flags
    };
    run(Command::new(BIN).args(evaluate(&one, "100")));
    let job = run(mpirun().args(["-n", "2", BIN]).args(evaluate(&two, "50")));
    let stdout = String::from_utf8_lossy(&job.stdout);
    assert_eq!(
        stdout.matches("test images of MNIST").count(),
        1,
        "{stdout}"
    );
    let (a, b) = (
        evaluation_in(Path::new(&one)),
        evaluation_in(Path::new(&two)),
    );
    assert_eq!(a["samples"], 2000, "{a}");
    for field in ["samples", "top1", "top5", "per_class", "precision"] {
        assert_eq!(a[field], b[field], "{field}: {a} vs {b}");
    }
    let (x, y) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
    assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "loss {x} vs {y}");
    // Uneven: 1,001 images, 500 a rank; rank 1 told to write elsewhere.
    let (odd_one, odd_two, rank1) = (path("odd-one"), path("odd-two"), path("rank1"));
    let odd = |out: &str| {
        let mut flags = evaluate(out, "500");
        flags.extend(["--limit-test".into(), "1001".into()]);
        flags
    };
    run(Command::new(BIN).args(odd(&odd_one)));
    run(mpirun()
        .args(["-n", "1", BIN])
        .args(odd(&odd_two))
        .args([":", "-n", "1", BIN])
        .args(odd(&rank1)));
    let (a, b) = (
        evaluation_in(Path::new(&odd_one)),
        evaluation_in(Path::new(&odd_two)),
    );
    assert_eq!(a["samples"], 1001, "{a}");
    for field in ["samples", "top1", "top5", "per_class"] {
        assert_eq!(a[field], b[field], "{field}: {a} vs {b}");
    }
    // Each image's prediction, gathered from both ranks in the test split's order: the one
    // process's table, byte for byte (here and for the even split above).
    for (one, two) in [(&one, &two), (&odd_one, &odd_two)] {
        let table = predictions_in(Path::new(one));
        assert_eq!(table, predictions_in(Path::new(two)), "{one} vs {two}");
        assert!(!table.is_empty());
    }
    assert!(!Path::new(&rank1).exists(), "rank 1 wrote {rank1}");
    let result = mpirun()
        .args(["-n", "1", BIN])
        .args(evaluate(&mixed, "50"))
        .args([":", "-n", "1", BIN])
        .args(evaluate(&mixed, "50"))
        .args(["--precision", "bf16"])
        .output()
        .expect("cannot start mpirun");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(
        stderr.contains("Error on rank 1 of 2")
            && stderr.contains("differ in their evaluation: --precision bf16 here, f32 on rank 0"),
        "{stderr}"
    );
    assert!(!Path::new(&mixed).exists(), "nothing written");
    // A run stopped between its state and its checkpoints: rank 0 writes them from the state
    // (the run's own, bit for bit), the other rank reads them once it has.
    let checkpoints = ["best.safetensors", "last.safetensors"].map(|n| Path::new(&trained).join(n));
    let saved = checkpoints
        .each_ref()
        .map(|p| std::fs::read(p).expect("checkpoint"));
    for path in &checkpoints {
        std::fs::remove_file(path).expect("remove");
    }
    let restored = path("restored");
    let job = run(mpirun()
        .args(["-n", "2", BIN])
        .args(evaluate(&restored, "50")));
    let stderr = String::from_utf8_lossy(&job.stderr);
    assert!(
        stderr.contains("written again from state.safetensors"),
        "{stderr}"
    );
    for (path, bytes) in checkpoints.iter().zip(&saved) {
        assert!(
            &std::fs::read(path).expect("written again") == bytes,
            "{}",
            path.display()
        );
    }
    let (a, b) = (
        evaluation_in(Path::new(&one)),
        evaluation_in(Path::new(&restored)),
    );
    assert_eq!(a["top1"], b["top1"], "{a} vs {b}");
}

/// A rank given `--distributed off` among ranks given `auto` says so, naming itself, before it
/// runs alone (the others wait for it in MPI's start-up, and the launcher ends them).
#[test]
fn a_rank_given_distributed_off_among_others_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-data");
    let missing = missing.to_string_lossy();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let (one, two) = (one.to_string_lossy(), two.to_string_lossy());
    let result = mpirun()
        .args(["-n", "1", BIN])
        .args(args(&missing, &one, "32"))
        .args([":", "-n", "1", BIN, "--distributed", "off"])
        .args(args(&missing, &two, "32"))
        .output()
        .expect("cannot start mpirun");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "--distributed off: Open MPI started 2 processes; this one (rank 1) trains alone"
        ),
        "{stderr}"
    );
}

/// Without a launcher, `--distributed on` is a clear error; `off` under a launcher trains alone.
#[test]
fn distributed_on_needs_a_launcher() {
    let out = Command::new(BIN)
        .args(["--distributed", "on", "--epochs", "1"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no MPI launcher"), "{err}");
}

/// TensorBoard's `train/batch_loss` counts the optimizer steps actually taken: a run of one
/// process (20 steps an epoch of 320 images in batches of 16) resumed by two ranks (10 global
/// steps an epoch) goes on from step 20, logging 10, 20, 30, 40; numbering the resumed epochs
/// by their own length gave 10, 20, 20, 30, and TensorBoard's default reader drops every point
/// at or after a step that comes again.
#[test]
fn batch_loss_steps_go_on_across_a_resume_with_another_world_size() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("mnist");
    train::synthetic::write_mnist(&data, 320, 20).expect("synthetic MNIST");
    let data = data.to_string_lossy().into_owned();
    let out = dir.path().join("run");
    let out_s = out.to_string_lossy().into_owned();
    run(Command::new(BIN).args(args(&data, &out_s, "16")));
    run(mpirun().args(["-n", "2", BIN, "--resume", &out_s, "--epochs", "3"]));
    let mut steps = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&out)
        .expect("run directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with(train::rundir::EVENTS_PREFIX)
            })
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    for file in files {
        for event in train::tensorboard::read_events(&file).expect("events") {
            for value in event.summary.iter().flat_map(|s| &s.value) {
                if value.tag == "train/batch_loss" {
                    steps.push(event.step);
                }
            }
        }
    }
    assert_eq!(steps, [10, 20, 30, 40]);
}
