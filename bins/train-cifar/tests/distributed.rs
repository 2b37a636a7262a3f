//! Data-parallel training with `--sync-bn` under `mpirun -n 2` (built with `--features mpi`,
//! Open MPI installed; `.ci/run` installs it): two ranks of batch 32 reach the weights and
//! metrics of one process of batch 64 (needs CNN_SHARED_DIR, the real CIFAR-10; skipped with a
//! message otherwise); a rank left one image by the last global batch; the files trained on,
//! read a share per rank.
#![cfg(feature = "mpi")]

use std::process::Command;

#[path = "../../../tests/support/mpi.rs"]
mod mpi;
use mpi::{max_difference, metrics, mpirun, run, shared_data};

const BIN: &str = env!("CARGO_BIN_EXE_train-cifar");

/// resnet18-seed (20 batch norms) with `--sync-bn`, SGD (momentum 0.9, weight decay 5e-4) at
/// lr 0.002, one epoch of 64 augmented training images: one step of a global batch of 64.
///
/// Tolerance: only float32 summation orders differ (per-rank sums then the all-reduce, in the
/// gradients and in every batch norm's statistics and backward sums). At initialisation the
/// first convolution's gradient is large and comes out of the batch norm's backward as a
/// difference of large, nearly cancelling sums (the batch norms' bias gradients nearly cancel
/// too), so rounding noise is amplified, and more with every step: after one step the weights
/// agree to 4.8e-6 (measured 2026-12-07), after four to anything from 2e-5 to 7e-3 as
/// ulp-level changes anywhere move the trajectory (four steps of 256 images were compared
/// until a change of the loss's gradient at the largest logit, by a few ulp, moved them from
/// 5e-4 to 6.4e-3; crops alone gave 7.3e-3 with the code before it). So one step, to 1e-4:
/// that noise with margin, a small fraction of the step's change (it moves conv1 by ~0.04 in
/// norm), and far below what different batch statistics give (without --sync-bn); losses
/// agree to 1e-3, top-1 accuracies to one of the 64 test images. Top-5 to three: the logits
/// are near uniform (test loss 2.30, ln 10), so which class is fifth turns on differences of
/// that noise's size.
#[test]
fn two_ranks_with_sync_bn_match_one_process() {
    let Some(data) = shared_data("cifar10") else {
        return;
    };
    let data = data.to_string_lossy().into_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let (one_s, two_s) = (one.to_string_lossy(), two.to_string_lossy());
    let args = |out: &str, batch: &str| -> Vec<String> {
        [
            "--data-dir",
            &data,
            "--model",
            "resnet18-seed",
            "--epochs",
            "1",
            "--lr",
            "0.002",
            "--limit-train",
            "64",
            "--limit-test",
            "64",
            "--sync-bn",
            "--workers",
            "1",
            "--batch-size",
            batch,
            "--out",
            out,
        ]
        .map(String::from)
        .to_vec()
    };
    run(Command::new(BIN).args(args(&one_s, "64")));
    run(mpirun().args(["-n", "2", BIN]).args(args(&two_s, "32")));
    let (diff, name) = max_difference(&one.join("last.safetensors"), &two.join("last.safetensors"));
    eprintln!("largest weight difference {diff:e} ({name})");
    assert!(diff <= 1e-4, "{name} differs by {diff}");
    let (a, b) = (metrics(&one), metrics(&two));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        // epoch, train loss, train acc, test loss, test acc, (top-5,) lr
        for (i, (u, v)) in x.iter().zip(y).enumerate() {
            let images = if i == 5 { 3.0 } else { 1.0 };
            assert!(
                (u - v).abs() <= images * 100.0 / 64.0 + 1e-9,
                "metrics differ: {x:?} vs {y:?}"
            );
        }
        assert!(
            (x[1] - y[1]).abs() <= 1e-3 && (x[3] - y[3]).abs() <= 1e-3,
            "{x:?} vs {y:?}"
        );
    }
}

/// A last global batch that leaves a rank one image (here 10 images over 2 ranks of batch 2:
/// the third global batch is two images, one a rank): without `--sync-bn` each rank's batch
/// norms would see one value per channel at `resnet18-seed`'s 1x1 stage and refuse it, as
/// PyTorch's do, at the end of the first epoch; the job is refused before training, naming the
/// last global batch, the rank's share and the ways out (nothing trained, nothing written but
/// the run's settings). With `--sync-bn` the statistics are the global batch's, two values a
/// channel, and the run trains.
#[test]
fn a_rank_left_one_image_names_the_ways_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("cifar");
    // Two images in each of the five training files: 10 training images.
    train::synthetic::write_cifar10(&data, 2, 1).expect("synthetic CIFAR-10");
    let data = data.to_string_lossy().into_owned();
    let args = |out: &str| -> Vec<String> {
        [
            "--data-dir",
            &data,
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--workers",
            "1",
            "--device",
            "cpu",
            "--out",
            out,
        ]
        .map(String::from)
        .to_vec()
    };
    let out = dir.path().join("run");
    let failed = mpirun()
        .args(["-n", "2", BIN])
        .args(args(&out.to_string_lossy()))
        .output()
        .expect("mpirun starts");
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{err}");
    assert!(
        err.contains(
            "the last global batch of each epoch would hold 2 images (10 images in global \
             batches of 2 ranks x 2 = 4), which leaves rank 1 one image"
        ) && err.contains("add --sync-bn, or add --drop-last"),
        "{err}"
    );
    let said = format!("{err}{}", String::from_utf8_lossy(&failed.stdout));
    assert!(
        !said.contains("epoch 1/1"),
        "trained before refusing: {said}"
    );
    assert!(!out.join("state.safetensors").exists());
    let synced = dir.path().join("synced");
    run(mpirun()
        .args(["-n", "2", BIN])
        .args(args(&synced.to_string_lossy()))
        .arg("--sync-bn"));
    assert_eq!(metrics(&synced).len(), 1);
}

/// The training files' fingerprints (what tells `evaluate` the images a run trained on) are
/// read a share per rank and gathered: a job of two ranks records those of one process, all 64
/// of them (a lost share would leave zeros or fewer). Needs CNN_SHARED_DIR (the CIFAR-10 JPEG
/// archive).
#[test]
fn two_ranks_record_the_files_trained_on_as_one_process() {
    let Some(data) = shared_data("cifar10") else {
        return;
    };
    let archive = data
        .join("cifar10-jpeg.tar.gz")
        .to_string_lossy()
        .into_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let args = |out: &std::path::Path, batch: &str| -> Vec<String> {
        [
            "--data-dir",
            &archive,
            "--epochs",
            "1",
            "--limit-train",
            "64",
            "--limit-test",
            "20",
            "--workers",
            "1",
            "--batch-size",
            batch,
            "--out",
            &out.to_string_lossy(),
        ]
        .map(String::from)
        .to_vec()
    };
    run(Command::new(BIN).args(args(&one, "32")));
    run(mpirun().args(["-n", "2", BIN]).args(args(&two, "16")));
    let recorded = |dir: &std::path::Path| {
        train::state::saved_trained_on(dir)
            .expect("state")
            .expect("fingerprints")
    };
    let (a, b) = (recorded(&one), recorded(&two));
    assert_eq!(a.len(), 64);
    assert!(!a.contains(&0));
    assert_eq!(a, b);
}
