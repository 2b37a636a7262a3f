//! Which threads compute a CPU training step: Candle's own element-wise operations, and
//! rayon's pool (the GEMMs and this workspace's kernels).
//!
//! rayon's global pool takes the calling thread in ([`calling_thread_joins_the_pool`]): before,
//! the thread running the step handed each parallel operation to the pool's threads and slept
//! until one of them woke it, a sleep and a wake-up per operation (several hundred per step;
//! about 10% of a `resnet18-seed` bf16 step's samples were in the kernel, 7% after). Measured
//! with `bench-step` (oneDNN build, one binary with and without it, interleaved runs, medians):
//! `lenet5` b64 bf16 1.6 -> 1.3 ms and f32 1.9 -> 1.5 (six rounds of 40 steps), `cnn-mnist` b64
//! 9.7 -> 9.25 and 12.65 -> 12.0, `resnet18-seed` b128 bf16 69.0 -> 62.9 and f32 97.8 -> 85.6
//! (six rounds of 30 steps, faster in 5 of 6), `resnet18-cifar` b128 level (bf16 746 -> 738 ms
//! and f32 1,100 -> 1,080 over four rounds, bf16 810 -> 787 over eight more: its operations are
//! long enough that a wake-up costs little). Running the whole step on a pool thread instead
//! (`ThreadPool::install`) had been slower (docs/PERFORMANCE.md: `resnet18-cifar` bf16 624 -> 671 ms);
//! one cause, measured now: the step's large blocks then come from that thread's malloc arena,
//! which hands them back to the kernel when freed (five times the page faults of a
//! `resnet18-seed` run).
//!
//! Candle 0.11 splits every element-wise operation over 64K elements or more across its own
//! "barrier pool" of threads, apart from rayon's pool that the GEMMs and this workspace's
//! kernels use: one more thread per core, which spins 25,000 times after each operation, and a
//! caller that spins until the pool's threads are done. On the 2-core CI machine, with another
//! process busy, that made the training step 2-3x slower (`bench-step`, interleaved runs with
//! and without the pool: `lenet5` 20.7-24.0 ms against 7.7-7.8 ms, `cnn-mnist` 81-82 ms against
//! 40-41 ms, `resnet18-seed` 885-929 ms against 419-424 ms). After the custom operations
//! (layers' activations, pooling, batch norm, linear layers; the fused Adam) the Candle
//! element-wise operations left in a step are mostly the gradient sums of its autograd; the
//! large ones (a ResNet's residual joins) run across rayon's pool instead (`vendor/README.md`).

/// Makes Candle run its element-wise CPU operations on the calling thread (its barrier pool
/// gets no threads), unless `CANDLE_NUM_THREADS` is already set: set it to 2 or more to keep
/// the pool. rayon's pool is untouched. Call it first thing in `main`, before any thread is
/// started and before the first tensor operation (Candle reads the variable once).
pub fn candle_ops_on_the_calling_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Makes the calling thread (call it from `main`, before anything uses rayon) one of the
/// threads of rayon's global pool (`ThreadPoolBuilder::use_current_thread`), as OpenMP's
/// master thread is one of its team in PyTorch: each parallel operation of a training step then
/// runs part of its work on the thread that started it and hands the rest to the pool's other
/// threads, instead of handing all of it to the pool and sleeping until a worker wakes it.
/// The pool keeps its size (`RAYON_NUM_THREADS`, else one thread per CPU), so as many threads
/// compute as before and one fewer waits; per-thread settings (autocast, the MPI context) stay
/// on the calling thread, where the step runs (measured: the module docs).
///
/// Leaves the pool alone, and returns false, with one thread (a job handed to the pool by
/// another thread would then wait for the calling thread to enter rayon) or when the global
/// pool already exists.
pub fn calling_thread_joins_the_pool() -> bool {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    threads >= 2
        && rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .use_current_thread()
            .build_global()
            .is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_variable_is_set_and_an_explicit_one_is_kept() {
        super::candle_ops_on_the_calling_thread();
        let set = std::env::var("CANDLE_NUM_THREADS").expect("set");
        assert!(set.parse::<usize>().is_ok_and(|n| n > 0), "{set}");
        super::candle_ops_on_the_calling_thread();
        assert_eq!(std::env::var("CANDLE_NUM_THREADS").expect("set"), set);
    }
}
