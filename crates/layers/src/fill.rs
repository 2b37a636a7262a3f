//! Output buffers written in parallel without a zero-filling pass first.
//!
//! `vec![0f32; n]` for an output that a kernel then overwrites costs a whole pass of `calloc`'s
//! `memset` on the calling thread while the pool waits: in a `cnn-mnist` training step (perf,
//! samples by thread) these passes were about 5% of the samples, all on the calling thread.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A vector of `n` values whose chunk `i` (`chunk` values, the last one possibly fewer) is
/// written by `fill(i, values)`, the chunks in parallel (one chunk runs on the caller; none, for
/// `n = 0`).
///
/// # Safety
/// `fill` must write every element of each chunk it is given (with `MaybeUninit::write`).
pub(crate) unsafe fn par_filled<T: Send>(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    let out = &mut v.spare_capacity_mut()[..n];
    let chunk = chunk.max(1);
    if (1..=chunk).contains(&n) {
        fill(0, out);
    } else if n > chunk {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| fill(i, c));
    }
    // SAFETY: every chunk of the first `n` values was written (the caller's promise).
    unsafe { v.set_len(n) };
    v
}

/// A vector of `n` values whose chunk `i` (`chunk` values, the last one possibly fewer) is set
/// to `init` and then handed to `f(i, values)`, the chunks in parallel (one chunk runs on the
/// caller; none, for `n = 0`): each chunk's initialisation runs on the thread that uses it,
/// while it is in cache, instead of one pass on the calling thread first.
pub(crate) fn par_init<T: Copy + Send + Sync>(
    n: usize,
    chunk: usize,
    init: T,
    f: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let init_then_f = |i: usize, c: &mut [MaybeUninit<T>]| {
        c.fill(MaybeUninit::new(init));
        // SAFETY: every element of `c` was just initialised; `MaybeUninit<T>` has `T`'s layout.
        let c = unsafe { std::slice::from_raw_parts_mut(c.as_mut_ptr().cast::<T>(), c.len()) };
        f(i, c);
    };
    // SAFETY: `init_then_f` initialises every element of each chunk.
    unsafe { par_filled(n, chunk, init_then_f) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_is_written_in_order() {
        for (n, chunk) in [(0, 4), (3, 4), (4, 4), (10, 4), (100_000, 1024)] {
            // SAFETY: every element is written.
            let v = unsafe {
                par_filled(n, chunk, |i, c| {
                    for (j, o) in c.iter_mut().enumerate() {
                        o.write((i * chunk + j) as f32);
                    }
                })
            };
            assert_eq!(v.len(), n);
            assert!(
                v.iter().enumerate().all(|(i, &x)| x == i as f32),
                "{n} {chunk}"
            );
            let w = par_init(n, chunk, 2.0f64, |i, c| {
                if i % 2 == 0 {
                    c[0] += i as f64;
                }
            });
            let want = (0..n).map(|j| match j % chunk == 0 && (j / chunk) % 2 == 0 {
                true => 2.0 + (j / chunk) as f64,
                false => 2.0,
            });
            assert!(w.iter().copied().eq(want), "{n} {chunk}");
        }
    }
}
