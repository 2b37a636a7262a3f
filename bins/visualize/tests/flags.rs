//! Every subcommand of `visualize` with every flag at 0, 1, negative, huge, non-numeric and empty
//! values: clear errors or pictures, never a panic, an abort or a hang.

#[path = "../../../tests/support/flag_scan.rs"]
mod flag_scan;

use std::path::{Path, PathBuf};
use std::time::Duration;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn extreme_flag_values_never_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mnist = dir.path().join("mnist");
    train::synthetic::write_mnist(&mnist, 20, 10).expect("synthetic MNIST");
    let digit = dir.path().join("digit.png");
    image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 9 + y * 5) % 256) as u8]))
        .save(&digit)
        .expect("png");
    let (mnist, digit) = (s(&mnist), s(&digit));
    let program = PathBuf::from(env!("CARGO_BIN_EXE_visualize"));
    let subcommands: [(&str, Vec<&str>); 6] = [
        ("conv", vec![]),
        ("pool", vec![]),
        ("samples", vec!["--dataset", "mnist", "--data-dir", &mnist]),
        ("filters", vec!["--model", "lenet5"]),
        ("feature-maps", vec!["--model", "lenet5", "--image", &digit]),
        ("grad-cam", vec!["--model", "lenet5", "--image", &digit]),
    ];
    let mut failures = Vec::new();
    for (name, rest) in subcommands {
        let base: Vec<&str> = [&[name][..], &rest[..]].concat();
        failures.extend(flag_scan::scan(
            &program,
            &[name],
            &base,
            dir.path(),
            Duration::from_secs(120),
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // A negative number after a space is the flag's value, said to be out of range (it read as
    // an unknown flag "-1", which did not name the flag).
    for (args, flag) in [
        (vec!["pool", "--kernel", "-1"], "--kernel"),
        (vec!["conv", "--stride", "-2"], "--stride"),
        (
            vec!["samples", "--dataset", "mnist", "--count", "-3"],
            "--count",
        ),
    ] {
        let refused = std::process::Command::new(&program)
            .args(&args)
            .current_dir(dir.path())
            .output()
            .expect("visualize starts");
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && err.contains(&format!("for '{flag} <")),
            "{args:?}: {err}"
        );
    }

    // An --out that is a file is refused before any work, naming it.
    let file = dir.path().join("some.png");
    std::fs::write(&file, b"x").expect("write");
    let refused = std::process::Command::new(&program)
        .args(["--out", &s(&file), "conv"])
        .output()
        .expect("visualize starts");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains(&format!("--out {}: a file, not a directory", s(&file)))
            && refused.stdout.is_empty(),
        "{err}"
    );
    // A link to nothing too.
    let dangling = dir.path().join("gone");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).expect("link");
    let refused = std::process::Command::new(&program)
        .args(["--out", &s(&dangling), "conv"])
        .output()
        .expect("visualize starts");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("gone: a link to nothing, not a directory"),
        "{err}"
    );
}
