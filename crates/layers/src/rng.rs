//! The seeded generator behind dropout: one [`Rng`] (the workspace's `rng` crate) per thread,
//! as `torch.manual_seed` seeds PyTorch's dropout masks. A training run seeds it on the thread
//! that runs its steps, and draws from it there.
//!
//! Candle's CPU random ops cannot be seeded, so runs would never repeat. Dropout draws its
//! masks from this generator instead; its state can be saved and restored, which is what lets
//! a resumed training run reach the same weights as an uninterrupted one. Parameter
//! initialisation does not use it: each [`crate::ParamStore`] has its own generator, seeded by
//! [`crate::ParamStore::new`], so [`set_seed`] does not change a model's initial weights.
//!
//! Per thread, not one for the process: two runs training side by side in one process (tests,
//! a program training several models in threads) would otherwise draw from each other's
//! stream, and neither would repeat. Seed it on the thread that runs the forward passes.

use std::cell::RefCell;

pub use ::rng::Rng;

thread_local! {
    static GENERATOR: RefCell<Option<Rng>> = const { RefCell::new(None) };
}

/// Seeds this thread's generator used by dropout.
pub fn set_seed(seed: u64) {
    GENERATOR.with(|g| *g.borrow_mut() = Some(Rng::new(seed)));
}

/// This thread's generator's state (seed 0 if it was never seeded).
pub fn state() -> [u64; 4] {
    with(|rng| rng.state())
}

/// Restores this thread's generator's state saved by [`state`].
pub fn set_state(s: [u64; 4]) {
    GENERATOR.with(|g| *g.borrow_mut() = Some(Rng::from_state(s)));
}

/// Runs `f` with this thread's generator.
pub fn with<T>(f: impl FnOnce(&mut Rng) -> T) -> T {
    GENERATOR.with(|g| f(g.borrow_mut().get_or_insert_with(|| Rng::new(0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two threads seeded alike draw the same stream, each its own, however their draws
    /// interleave (here strictly in turn): one generator for the process gave each every other
    /// number, so two runs side by side in one process (the tests) did not repeat.
    #[test]
    fn each_thread_draws_its_own_stream() {
        let barrier = std::sync::Barrier::new(2);
        let draws = || {
            set_seed(5);
            barrier.wait();
            (0..100)
                .map(|_| {
                    let v = with(|rng| rng.next_u64());
                    barrier.wait();
                    v
                })
                .collect::<Vec<u64>>()
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(draws);
            let b = s.spawn(draws);
            (a.join().expect("thread a"), b.join().expect("thread b"))
        });
        let mut alone = Rng::new(5);
        let expected: Vec<u64> = (0..100).map(|_| alone.next_u64()).collect();
        assert_eq!(a, expected);
        assert_eq!(b, expected);
    }
}
