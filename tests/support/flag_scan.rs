//! Runs a program once per flag and extreme value and reports every run that panicked, aborted,
//! died on a signal or hung. Clear errors (exit code 1 or 2) and successes both pass.
//!
//! Shared by the programs' test suites through `#[path = ...] mod flag_scan;`: a test can only
//! reach its own package's binary (`CARGO_BIN_EXE_<name>`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// 0, 1, negative, past u32, past u64, past f64, not a number, empty, and a long string.
pub const EXTREMES: [&str; 9] = [
    "0",
    "1",
    "-1",
    "4294967297",
    "18446744073709551616",
    "1e309",
    "nan",
    "",
    "9999999999999999999999999999999999999999",
];

/// The flags that take a value in `--help` of `program subcommand...`, without `--help` itself.
pub fn value_flags(program: &Path, subcommand: &[&str]) -> Vec<String> {
    let help = Command::new(program)
        .args(subcommand)
        .arg("--help")
        .output()
        .expect("program starts");
    let text = String::from_utf8_lossy(&help.stdout);
    let mut flags: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            if !line.starts_with('-') {
                return None;
            }
            let long = line.split("--").nth(1)?;
            let (name, rest) = long.split_once(' ')?;
            rest.starts_with('<').then(|| format!("--{name}"))
        })
        .collect();
    flags.dedup();
    assert!(!flags.is_empty(), "no flags found in:\n{text}");
    flags
}

/// One run that failed the scan: its arguments and what happened.
pub type Failure = (Vec<String>, String);

/// Runs `program` with `base` arguments plus `--flag=value` (replacing the flag in `base` if
/// there) for every flag that `program subcommand... --help` lists with a value and every
/// value of [`EXTREMES`], two runs at a time, in `cwd`. Returns the runs that panicked,
/// aborted, died on a signal, or ran past `limit`. `base` alone must succeed, so that the
/// values are tried on a run that works.
pub fn scan(
    program: &Path,
    subcommand: &[&str],
    base: &[&str],
    cwd: &Path,
    limit: Duration,
) -> Vec<Failure> {
    let flags = value_flags(program, subcommand);
    let values = EXTREMES;
    let base_alone: Vec<String> = base.iter().map(|a| a.to_string()).collect();
    match run_one(program, &base_alone, cwd, limit) {
        Ok(0) => {}
        Ok(code) => panic!("{base:?} fails with exit code {code}"),
        Err(what) => panic!("{base:?} fails: {what}"),
    }
    let mut jobs: Vec<Vec<String>> = Vec::new();
    for flag in &flags {
        for value in values {
            let mut args: Vec<String> = Vec::new();
            let mut skip = false;
            for a in base {
                if skip {
                    skip = false;
                    continue;
                }
                if a == flag {
                    skip = true;
                    continue;
                }
                args.push(a.to_string());
            }
            args.push(format!("{flag}={value}"));
            jobs.push(args);
        }
    }
    let jobs = Mutex::new(jobs);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some(args) = jobs.lock().expect("jobs").pop() else {
                    break;
                };
                if let Err(what) = run_one(program, &args, cwd, limit) {
                    failures.lock().expect("failures").push((args, what));
                }
            });
        }
    });
    failures.into_inner().expect("failures")
}

/// The exit code of a run that ended by itself with 0, 1 or 2 and printed no panic; else what
/// went wrong.
fn run_one(program: &Path, args: &[String], cwd: &Path, limit: Duration) -> Result<i32, String> {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("program starts");
    let started = Instant::now();
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = reader.join().unwrap_or_default();
    match status.code() {
        _ if text.contains("panicked") => Err(format!("panicked: {text}")),
        Some(code @ 0..=2) => Ok(code),
        Some(code) => Err(format!("exit code {code}: {text}")),
        None => Err(format!("killed by a signal ({status}): {text}")),
    }
}
