//! `calling_thread_joins_the_pool` (what the training programs and `bench-step` call first):
//! the calling thread becomes rayon's worker 0 and computes part of each parallel operation it
//! starts, the pool keeps its size, and work that another thread hands to the pool still runs.
//! One test in its own process, because it sets up rayon's global pool.

use std::collections::HashSet;
use std::sync::Mutex;
use std::thread::ThreadId;

use rayon::prelude::*;

#[test]
fn the_calling_thread_computes_in_the_global_pool() {
    // Before rayon is used in this process (this file's only test).
    std::env::set_var("RAYON_NUM_THREADS", "2");
    assert!(train::threads::calling_thread_joins_the_pool());
    assert_eq!(rayon::current_thread_index(), Some(0));
    assert_eq!(rayon::current_num_threads(), 2);

    // A two-part split: rayon's join runs its first part on the thread that asks.
    let me = std::thread::current().id();
    let seen: Mutex<HashSet<ThreadId>> = Mutex::new(HashSet::new());
    let total: usize = (0..1_000usize)
        .into_par_iter()
        .with_min_len(500)
        .map(|i| {
            seen.lock().unwrap().insert(std::thread::current().id());
            i
        })
        .sum();
    assert_eq!(total, 999 * 1_000 / 2);
    assert!(seen.into_inner().unwrap().contains(&me));

    // Work handed to the pool from another thread (as a checkpoint writer's would be) is done
    // by the other worker while this thread waits outside rayon.
    let from_another = std::thread::spawn(|| (0..10_000u64).into_par_iter().sum::<u64>());
    assert_eq!(from_another.join().unwrap(), 9_999 * 10_000 / 2);

    // Once set up, the pool is not set up again.
    assert!(!train::threads::calling_thread_joins_the_pool());
}
