//! Data-parallel fine-tuning under `mpirun -n 2` (built with `--features mpi`, Open MPI
//! installed; `.ci/run` installs it): the frozen backbone's features are computed once, each
//! rank computing a share of the batches, and two ranks of batch 5 reach one process's head
//! of batch 10.
#![cfg(feature = "mpi")]

use std::process::Command;

use candle_core::Device;
use layers::ParamStore;

#[path = "../../../tests/support/mpi.rs"]
mod mpi;
use mpi::{max_difference, metrics, mpirun, run};

const BIN: &str = env!("CARGO_BIN_EXE_finetune-resnet50");

/// A torchvision ResNet-18 (random weights, 1000 classes), 50 training and 10 test images of
/// synthetic CIFAR-10 at 32x32, the features computed in batches of 8 (seven batches of
/// training images: four on rank 0, three on rank 1; two of test images, one each), two
/// epochs of five steps.
///
/// Tolerance: the features are one process's bit for bit (each value is its rank's, summed
/// with zeros); the head's gradients are summed in another order (each rank's five samples,
/// then the all-reduce), float32 rounding over ten SGD steps at lr 0.001.
#[test]
fn two_ranks_share_the_feature_pass_and_match_one_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("cifar");
    train::synthetic::write_cifar10(&data, 10, 10).expect("synthetic CIFAR-10");
    let weights = dir.path().join("resnet18.safetensors");
    let store = ParamStore::new(3, &Device::Cpu);
    transfer::build("resnet18", 1000, store.vb()).expect("a torchvision ResNet-18");
    layers::checkpoint::save(store.varmap(), &weights).expect("weights");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let args = |out: &std::path::Path, batch: &str| -> Vec<String> {
        let (data, weights, out) = (
            data.to_string_lossy(),
            weights.to_string_lossy(),
            out.to_string_lossy(),
        );
        [
            "--weights",
            &weights,
            "--model",
            "resnet18",
            "--data-dir",
            &data,
            "--image-size",
            "32",
            "--epochs",
            "2",
            "--batch-size",
            batch,
            "--test-batch-size",
            "8",
            "--workers",
            "1",
            "--device",
            "cpu",
            "--out",
            &out,
        ]
        .map(String::from)
        .to_vec()
    };
    let single = run(Command::new(BIN).args(args(&one, "10")));
    let job = run(mpirun().args(["-n", "2", BIN]).args(args(&two, "5")));
    let log = String::from_utf8_lossy(&job.stdout);
    assert!(
        log.contains("features of 50 training and 10 test images computed")
            && log.contains("each of the 2 processes computing a share"),
        "{log}"
    );
    assert!(
        !String::from_utf8_lossy(&single.stdout).contains("processes computing"),
        "{}",
        String::from_utf8_lossy(&single.stdout)
    );
    let (diff, name) = max_difference(&one.join("last.safetensors"), &two.join("last.safetensors"));
    assert!(diff <= 1e-5, "{name} differs by {diff}");
    let (a, b) = (metrics(&one), metrics(&two));
    assert_eq!(a.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        // epoch, train loss, train acc, test loss, test acc, top-5, lr: losses to rounding,
        // accuracies to one image of ten.
        for (i, (u, v)) in x.iter().zip(y).enumerate() {
            let tolerance = if [1, 3].contains(&i) { 1e-4 } else { 10.0 };
            assert!((u - v).abs() <= tolerance, "{x:?} vs {y:?}");
        }
    }
}
