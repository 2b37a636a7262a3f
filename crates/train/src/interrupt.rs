//! Ctrl-C during training (SIGINT, and the termination signals SIGTERM and SIGHUP): the first
//! one stops the run after the current batch, as an error that ends it like any other. The
//! files of the last finished epoch are then written to their end (they are written on a second
//! thread while the next epoch trains), and an `--overwrite` whose new run has not saved an
//! epoch puts the old run back. A second one ends the process at once, as Ctrl-C always did.
//!
//! Only a run in one process takes it over ([`crate::distributed::launch`]): the ranks of a
//! data-parallel job could stop at different batches and wait on each other, so there the
//! signal keeps its default action.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the first signal.
static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The error of a run stopped by Ctrl-C; [`crate::cli::exit_status`] gives it the exit status
/// 130, as a shell gives a process ended by SIGINT.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped by Ctrl-C (or a termination signal)")
    }
}

impl std::error::Error for Interrupted {}

/// Takes over Ctrl-C for this process (see the module's description). A process that already
/// has a handler (ctrlc's, installed once) keeps it.
pub fn take_over_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\nCtrl-C again: stopping at once");
            std::process::exit(130);
        }
        eprintln!(
            "\nCtrl-C: stopping after this batch; the finished epochs stay saved (Ctrl-C again \
             to stop at once)"
        );
    });
}

/// `Err(Interrupted)` once Ctrl-C was pressed: called before each batch.
///
/// # Errors
/// [`Interrupted`], after the first signal.
pub fn check() -> Result<(), Interrupted> {
    match REQUESTED.load(Ordering::SeqCst) {
        true => Err(Interrupted),
        false => Ok(()),
    }
}
