//! The seeded generator behind dropout: one global [`Rng`] (the workspace's `rng` crate), as
//! `torch.manual_seed` seeds PyTorch's dropout masks.
//!
//! Candle's CPU random ops cannot be seeded, so runs would never repeat. Dropout draws its
//! masks from this generator instead; its state can be saved and restored, which is what lets
//! a resumed training run reach the same weights as an uninterrupted one. Parameter
//! initialisation does not use it: each [`crate::ParamStore`] has its own generator, seeded by
//! [`crate::ParamStore::new`], so [`set_seed`] does not change a model's initial weights.

use std::sync::Mutex;

pub use ::rng::Rng;

static GLOBAL: Mutex<Option<Rng>> = Mutex::new(None);

/// Seeds the global generator used by dropout.
pub fn set_seed(seed: u64) {
    *lock() = Some(Rng::new(seed));
}

/// The global generator's state (seed 0 if it was never seeded).
pub fn state() -> [u64; 4] {
    with(|rng| rng.state())
}

/// Restores the global generator's state saved by [`state`].
pub fn set_state(s: [u64; 4]) {
    *lock() = Some(Rng::from_state(s));
}

/// Runs `f` with the global generator.
pub fn with<T>(f: impl FnOnce(&mut Rng) -> T) -> T {
    let mut guard = lock();
    f(guard.get_or_insert_with(|| Rng::new(0)))
}

fn lock() -> std::sync::MutexGuard<'static, Option<Rng>> {
    GLOBAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
