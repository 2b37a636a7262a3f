//! Where a CPU training step's time goes: thread time per kind of work, counted only while
//! switched on (`bench-step --split`), so the cost when off is one relaxed atomic load per
//! operation.
//!
//! Times are summed over threads (two threads busy for 1 ms count 2 ms), so shares compare
//! with the step's wall time multiplied by the number of threads.
//!
//! ```
//! layers::profile::enable(true);
//! // ... a training step ...
//! let report = layers::profile::take();
//! layers::profile::enable(false);
//! assert!(report.seconds(layers::profile::Part::Gemm) >= 0.0);
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// A kind of work in a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Matrix products of convolutions (forward and both gradients).
    Gemm,
    /// `im2col` / `col2im` and the other layout passes of convolutions.
    Im2col,
    /// Batch norm: statistics, output, backward.
    BatchNorm,
    /// Max and average pooling, forward and backward.
    Pool,
}

impl Part {
    /// Every part, in report order.
    pub const ALL: [Part; 4] = [Part::Gemm, Part::Im2col, Part::BatchNorm, Part::Pool];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Part::Gemm => "GEMM",
            Part::Im2col => "im2col/layout",
            Part::BatchNorm => "batch norm",
            Part::Pool => "pooling",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static FLOPS: AtomicU64 = AtomicU64::new(0);

/// Switches counting on or off.
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Whether counting is on.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The counts since the last `take`, which resets them.
pub fn take() -> Report {
    Report {
        nanos: std::array::from_fn(|i| NANOS[i].swap(0, Ordering::Relaxed)),
        gemm_flops: FLOPS.swap(0, Ordering::Relaxed),
    }
}

/// Thread time per [`Part`] and the floating-point operations of the GEMMs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Report {
    nanos: [u64; 4],
    /// Floating-point operations (2·m·n·k per product) issued to the GEMM.
    pub gemm_flops: u64,
}

impl Report {
    /// Thread seconds spent in `part`.
    pub fn seconds(&self, part: Part) -> f64 {
        self.nanos[part as usize] as f64 * 1e-9
    }
}

/// Runs `f`, counting its time as `part` when counting is on.
#[inline]
pub(crate) fn time<R>(part: Part, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let start = Instant::now();
    let r = f();
    NANOS[part as usize].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    r
}

/// Counts `flops` GEMM operations when counting is on.
#[inline]
pub(crate) fn gemm_flops(flops: usize) {
    if enabled() {
        FLOPS.fetch_add(flops as u64, Ordering::Relaxed);
    }
}

/// Counts the time until it is dropped as `part`, when counting is on.
/// Started on the calling thread around work spread over the whole thread pool, it counts
/// its wall time once per pool thread.
pub(crate) struct Timer(Option<(Part, Instant)>);

impl Timer {
    /// Starts counting.
    #[inline]
    pub(crate) fn start(part: Part) -> Self {
        Timer(enabled().then(|| (part, Instant::now())))
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((part, start)) = self.0 {
            let threads = rayon::current_num_threads() as u64;
            let nanos = start.elapsed().as_nanos() as u64 * threads;
            NANOS[part as usize].fetch_add(nanos, Ordering::Relaxed);
        }
    }
}
