//! What the data-parallel tests of several programs share: `mpirun` set up for CI, and
//! comparing checkpoints and metrics of two runs. Included with `#[path]`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `$CNN_SHARED_DIR/data/<name>`, or `None` with a message that the test is skipped.
pub fn shared_data(name: &str) -> Option<PathBuf> {
    match std::env::var("CNN_SHARED_DIR") {
        Ok(dir) => Some(Path::new(&dir).join("data").join(name)),
        Err(_) => {
            eprintln!("skipped: CNN_SHARED_DIR not set");
            None
        }
    }
}

/// `mpirun` with what Open MPI needs to run as root (CI) and on more ranks than cores; a rank
/// waiting in a collective yields its core (the machine is shared) and each rank computes on
/// one thread.
pub fn mpirun() -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "--allow-run-as-root"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_mpi_yield_when_idle", "1")
        .env("RAYON_NUM_THREADS", "1");
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .expect("cannot start the program (is Open MPI installed?)");
    assert!(
        out.status.success(),
        "{:?} failed:\n{}\n{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).expect("checkpoint");
    let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut out: Vec<(String, Vec<f32>)> = tensors
        .tensors()
        .into_iter()
        .filter(|(_, t)| t.dtype() == safetensors::Dtype::F32)
        .map(|(name, t)| {
            let values = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The largest absolute difference between two checkpoints' float tensors, and where.
pub fn max_difference(a: &Path, b: &Path) -> (f32, String) {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    let mut worst = (0f32, String::new());
    for ((name, x), (other, y)) in a.iter().zip(&b) {
        assert_eq!(name, other);
        for (u, v) in x.iter().zip(y) {
            if (u - v).abs() > worst.0 {
                worst = ((u - v).abs(), name.clone());
            }
        }
    }
    worst
}

/// `metrics.csv`'s rows: epoch, train loss and accuracy, test loss, accuracy and top-5, lr.
pub fn metrics(dir: &Path) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let keep: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| **h != "seconds")
        .map(|(i, _)| i)
        .collect();
    lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            keep.iter()
                .map(|&i| cells[i].parse::<f64>().unwrap_or(f64::NAN))
                .collect()
        })
        .collect()
}
