//! `bench-step --help` describes the benchmark instead of running it.

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
