//! Where Candle's own element-wise operations run on the CPU.
//!
//! Candle 0.11 splits every element-wise operation over 64K elements or more across its own
//! "barrier pool" of threads, apart from rayon's pool that the GEMMs and this workspace's
//! kernels use: one more thread per core, which spins 25,000 times after each operation, and a
//! caller that spins until the pool's threads are done. On the 2-core CI machine, with another
//! process busy, that made the training step 2-3x slower (`bench-step`, interleaved runs with
//! and without the pool: `lenet5` 20.7-24.0 ms against 7.7-7.8 ms, `cnn-mnist` 81-82 ms against
//! 40-41 ms, `resnet18-seed` 885-929 ms against 419-424 ms). After the custom operations
//! (layers' activations, pooling, batch norm, linear layers; the fused Adam) the Candle
//! element-wise operations left in a step are mostly the gradient sums of its autograd, which
//! gain little from a second thread.

/// Makes Candle run its element-wise CPU operations on the calling thread (its barrier pool
/// gets no threads), unless `CANDLE_NUM_THREADS` is already set: set it to 2 or more to keep
/// the pool. rayon's pool is untouched. Call it first thing in `main`, before any thread is
/// started and before the first tensor operation (Candle reads the variable once).
pub fn candle_ops_on_the_calling_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
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
