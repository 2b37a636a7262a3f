//! Data-parallel training under `mpirun -n 2` (built with `--features mpi`, Open MPI installed;
//! `.ci/run` installs it): two ranks of batch 32 reach the weights and metrics of one process of
//! batch 64; a failing rank ends the whole job with its error. Needs CNN_SHARED_DIR (the real
//! MNIST subset); skipped with a message otherwise.
#![cfg(feature = "mpi")]

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
    // The saved state does not depend on the world size: one process continues the run.
    run(Command::new(BIN).args([
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
