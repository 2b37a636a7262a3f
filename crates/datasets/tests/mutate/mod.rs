//! A small mutation fuzzer on bolero: each input picks a seed file and a list of edits (bit
//! flips, byte and size-field overwrites, cuts, insertions, deletions, block copies), so that
//! plain `cargo test` explores near-valid files rather than noise. Shared by the fuzz targets of
//! `datasets` and `layers` (which includes this file by path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Values that break size arithmetic, written big- or little-endian over 4 or 8 bytes.
const EXTREMES: [u64; 8] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff_ffff,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// The input being run and since when.
type Running = (Instant, Vec<u8>);

/// Applies `edits` (kind, position, value) to `data`.
pub fn mutate(data: &mut Vec<u8>, edits: &[(u8, u32, u32)]) {
    for &(kind, at, value) in edits {
        let len = data.len();
        let pos = if len == 0 { 0 } else { at as usize % len };
        match kind % 8 {
            0 if len > 0 => data[pos] ^= 1 << (value % 8),
            1 if len > 0 => data[pos] = value as u8,
            2 => data.truncate(at as usize % (len + 1)),
            3 => {
                let bytes = value.to_le_bytes();
                let n = 1 + (value >> 30) as usize;
                let at = (at as usize % (len + 1)).min(len);
                data.splice(at..at, bytes[..n].iter().copied());
            }
            4 if len > 0 => {
                let end = (pos + 1 + value as usize % 64).min(len);
                data.drain(pos..end);
            }
            5 => {
                let extreme = EXTREMES[value as usize % EXTREMES.len()];
                let width = if value & 8 == 0 { 4 } else { 8 };
                let bytes = if value & 16 == 0 {
                    extreme.to_be_bytes()[8 - width..].to_vec()
                } else {
                    extreme.to_le_bytes()[..width].to_vec()
                };
                let end = (pos + width).min(len);
                data.splice(pos..end, bytes);
            }
            6 if len > 1 => {
                let from = value as usize % len;
                let n = (1 + (value >> 16) as usize % 512).min(len - from);
                let chunk = data[from..from + n].to_vec();
                data.splice(pos..pos, chunk);
            }
            7 if len > 0 => {
                let n = (1 + value as usize % 32).min(len - pos);
                data[pos..pos + n].fill(if value & 0x100 == 0 { 0 } else { 0xff });
            }
            _ => {}
        }
    }
}

/// The seconds each fuzz target runs: `FUZZ_SECONDS`, else 2 (a quick check for CI).
pub fn seconds() -> u64 {
    std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
}

/// Runs `target` on mutations of `seeds` for [`seconds`], under bolero's engine (random inputs
/// under `cargo test`, coverage-guided under `cargo bolero`). The input is `(seed, flags, count,
/// edits)`: mostly one or two edits, sometimes all of them. `target` gets the mutated bytes, the
/// flags and the seed's index, and says whether the bytes parsed. A panic fails the test; an input still running after
/// `hang_after` aborts the process, after writing it to `$TMPDIR/fuzz-hang-<name>.bin`. Prints
/// the number of inputs run every minute, and at the end how many parsed.
pub fn fuzz(
    name: &str,
    seeds: &[Vec<u8>],
    hang_after: Duration,
    target: impl Fn(&[u8], u8, usize) -> bool + std::panic::RefUnwindSafe,
) {
    let count = Arc::new(AtomicU64::new(0));
    let parsed = AtomicU64::new(0);
    let current: Arc<Mutex<Option<Running>>> = Arc::default();
    let watchdog = {
        let (count, current, name) = (count.clone(), current.clone(), name.to_string());
        std::thread::spawn(move || {
            let mut last_report = Instant::now();
            while Arc::strong_count(&count) > 1 {
                std::thread::sleep(Duration::from_millis(500));
                if last_report.elapsed() > Duration::from_secs(60) {
                    let runs = count.load(Ordering::Relaxed);
                    eprintln!("fuzz {name}: {runs} inputs so far");
                    last_report = Instant::now();
                }
                let guard = current.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((started, input)) = guard.as_ref() {
                    if started.elapsed() > hang_after {
                        let path = std::env::temp_dir().join(format!("fuzz-hang-{name}.bin"));
                        let _ = std::fs::write(&path, input);
                        eprintln!("fuzz {name}: input hangs, written to {}", path.display());
                        std::process::abort();
                    }
                }
            }
        })
    };
    let started = Instant::now();
    bolero::check!()
        .with_type::<(u8, u8, u8, Vec<(u8, u32, u32)>)>()
        .with_test_time(Duration::from_secs(seconds()))
        .for_each(|(seed, flags, many, edits)| {
            let seed = usize::from(*seed) % seeds.len();
            let mut data = seeds[seed].clone();
            let n = match many % 8 {
                0..=3 => 1,
                4 | 5 => 2,
                6 => 4,
                _ => edits.len(),
            };
            mutate(&mut data, &edits[..n.min(edits.len())]);
            *current.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now(), data.clone()));
            if target(&data, *flags, seed) {
                parsed.fetch_add(1, Ordering::Relaxed);
            }
            *current.lock().unwrap_or_else(|p| p.into_inner()) = None;
            count.fetch_add(1, Ordering::Relaxed);
        });
    let runs = count.load(Ordering::Relaxed);
    drop(count);
    let _ = watchdog.join();
    eprintln!(
        "fuzz {name}: {runs} inputs in {:.0} s, {} parsed without error",
        started.elapsed().as_secs_f64(),
        parsed.load(Ordering::Relaxed)
    );
}
