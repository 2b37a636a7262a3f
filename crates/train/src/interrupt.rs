//! Ctrl-C (SIGINT) during training: the first one while the epochs train stops the run after
//! the current batch, as an error that ends it like any other. The files of the last finished
//! epoch are then written to their end (they are written on a second thread while the next
//! epoch trains), and an `--overwrite` whose new run has not saved an epoch puts the old run
//! back. The program then says where it stopped and ends by SIGINT, as before (so that a shell
//! loop around it stops too). A second Ctrl-C, or one before the epochs start (loading the
//! data, say) or after they end, ends the process at once, as Ctrl-C always did; outside the
//! epochs it first tidies the run directory as a run that stops there would (an `--overwrite`
//! puts the old run back, a directory the run made and left unused goes), and a second one does
//! the same for a fresh run that has saved no epoch yet, which would otherwise leave a
//! directory of pictures and no state. A second Ctrl-C while a finished epoch's files are
//! being written ([`writing`]) first lets that write end (a third ends the process at once).
//!
//! Only a run in one process takes it over ([`crate::distributed::launch`]): the ranks of a
//! data-parallel job could stop at different batches and wait on each other, so there Ctrl-C
//! keeps its default action, as does a process that was started with SIGINT ignored (a
//! background job of a script). Other signals (SIGTERM, SIGHUP) keep theirs: a run under
//! `nohup` still ignores the hangup.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Set by the first Ctrl-C while the epochs train.
static REQUESTED: AtomicBool = AtomicBool::new(false);
/// Finished epochs whose files are being written ([`writing`]).
static WRITING: AtomicUsize = AtomicUsize::new(0);
/// Set when a finished epoch's files could not be written ([`write_failed`]).
static WRITE_FAILED: AtomicBool = AtomicBool::new(false);

/// Records that a finished epoch's files could not be written: a second Ctrl-C waiting for
/// that write then leaves the run's end (its error, the run directory's tidying) to the run.
pub fn write_failed() {
    WRITE_FAILED.store(true, Ordering::SeqCst);
}

/// Marks a finished epoch's files as being written until the guard drops: a second Ctrl-C
/// meanwhile lets the write end before it stops the process (a third stops it at once), so
/// that the epoch the first Ctrl-C said was saved is.
pub fn writing() -> Writing {
    WRITING.fetch_add(1, Ordering::SeqCst);
    Writing
}

/// See [`writing`].
pub struct Writing;

impl Drop for Writing {
    fn drop(&mut self) {
        WRITING.fetch_sub(1, Ordering::SeqCst);
    }
}
/// Whether the epochs are training: Ctrl-C then waits for the end of the batch.
static TRAINING: AtomicBool = AtomicBool::new(false);

/// The error of a run stopped by Ctrl-C; [`crate::cli::exit_status`] ends the process by
/// SIGINT for it, after the message.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped by Ctrl-C")
    }
}

impl std::error::Error for Interrupted {}

/// Ends the process by SIGINT, its default action (a shell reports it as Ctrl-C's, status 130).
pub fn die_by_sigint() -> ! {
    // SAFETY: plain libc calls; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::raise(libc::SIGINT);
    }
    // Only if SIGINT is blocked on this thread.
    std::process::exit(130)
}

/// Whether SIGINT is ignored in this process (a background job of a non-interactive shell).
fn sigint_ignored() -> bool {
    // SAFETY: reads the current action into a zeroed struct; no handler is installed.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGINT, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Takes over Ctrl-C for this process (see the module's description), unless SIGINT is
/// ignored or a handler of ctrlc's is installed already.
pub fn take_over_ctrl_c() {
    if sigint_ignored() {
        return;
    }
    let _ = ctrlc::set_handler(|| {
        // Outside the epochs nothing is being saved: the run directory is left as the run's end
        // would leave it (no half-replaced --overwrite, no unused directory), then the process
        // ends. (Unless the epochs started meanwhile.)
        let tidied = match TRAINING.load(Ordering::SeqCst) {
            true => None,
            false => crate::rundir::tidy_at_ctrl_c(|| TRAINING.load(Ordering::SeqCst)),
        };
        if let Some(tidied) = tidied {
            match tidied {
                true => crate::warn!(
                    "\nstopped by Ctrl-C before the epochs began: nothing was saved, and the run \
                     directory is as before the run (one this run made is removed, one \
                     --overwrite was replacing is back, a resumed run's is untouched)"
                ),
                false => crate::warn!(
                    "\nstopped by Ctrl-C before the epochs began: nothing was saved (the run \
                     directory was busy: the next run or reader on it tidies it)"
                ),
            }
            die_by_sigint();
        }
        if REQUESTED.swap(true, Ordering::SeqCst) {
            if WRITING.load(Ordering::SeqCst) > 0 {
                // SAFETY: SIG_DFL is a valid disposition: a third Ctrl-C ends the process.
                unsafe {
                    libc::signal(libc::SIGINT, libc::SIG_DFL);
                }
                crate::warn!(
                    "\nCtrl-C again: stopping once the finished epoch's files are written (a \
                     moment; Ctrl-C a third time to stop at once, leaving them unfinished)"
                );
                while WRITING.load(Ordering::SeqCst) > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                if WRITE_FAILED.load(Ordering::SeqCst) {
                    // The run, stopping after its batch, says why and what is kept.
                    return;
                }
            }
            // A fresh run that saved no epoch (its first epoch's files being written, say)
            // leaves its directory as a run that fails before its first epoch does.
            match crate::rundir::tidy_at_second_ctrl_c() {
                Some(true) => crate::warn!(
                    "\nCtrl-C again: stopping at once; the epochs saved so far stay saved"
                ),
                Some(false) => crate::warn!(
                    "\nCtrl-C again: stopping at once, before the first epoch was saved: nothing \
                     to --resume (a run directory the run made is removed; in one that was there, \
                     the next run takes the place of this one's files)"
                ),
                None => crate::warn!(
                    "\nCtrl-C again: stopping at once; the epochs saved so far stay saved (the run \
                     directory was busy: the next run or reader on it tidies it)"
                ),
            }
            die_by_sigint();
        }
        // Best effort: a terminal that is gone must not end this thread.
        crate::warn!(
            "\nCtrl-C: stopping after this batch; the finished epochs stay saved (Ctrl-C again \
             to stop at once)"
        );
    });
}

/// Whether a Ctrl-C came while the epochs trained (it may have come after the last batch, too
/// late to stop anything: the run then ends whole, and by SIGINT still).
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Marks the epochs as training (Ctrl-C then stops after the batch) until the guard drops.
pub fn training() -> Training {
    // Not while a Ctrl-C tidies the run directory (it then ends the process first).
    let _no_tidying = crate::rundir::no_tidying();
    TRAINING.store(true, Ordering::SeqCst);
    Training
}

/// See [`training`].
pub struct Training;

impl Drop for Training {
    fn drop(&mut self) {
        TRAINING.store(false, Ordering::SeqCst);
    }
}

/// The error of a run that stopped after a batch because the thread writing the previous
/// epoch's files failed ([`stop_when`]); the run then ends in that write's error.
#[derive(Debug)]
pub struct WriteFailed;

impl std::fmt::Display for WriteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped after a batch: an epoch's files could not be written")
    }
}

impl std::error::Error for WriteFailed {}

thread_local! {
    /// This thread's [`stop_when`] flag.
    static STOP: std::cell::RefCell<Option<std::sync::Arc<AtomicBool>>> =
        const { std::cell::RefCell::new(None) };
}

/// Until the guard drops, [`check`] on this thread also fails ([`WriteFailed`]) once `flag` is
/// set: the thread writing an epoch's files sets it when a write fails, so that the epoch
/// training meanwhile stops after its batch instead of running to its end for nothing.
pub fn stop_when(flag: std::sync::Arc<AtomicBool>) -> StopWhen {
    StopWhen {
        previous: STOP.with(|s| s.borrow_mut().replace(flag)),
    }
}

/// See [`stop_when`]; dropped, it puts back the flag before it.
#[must_use = "the flag counts only while the guard lives"]
pub struct StopWhen {
    previous: Option<std::sync::Arc<AtomicBool>>,
}

impl Drop for StopWhen {
    fn drop(&mut self) {
        let previous = self.previous.take();
        STOP.with(|s| *s.borrow_mut() = previous);
    }
}

/// `Err` once Ctrl-C was pressed, or once this thread's [`stop_when`] flag is set: called
/// before each batch.
///
/// # Errors
/// [`Interrupted`] after the first Ctrl-C; [`WriteFailed`] after a failed write.
pub fn check() -> anyhow::Result<()> {
    if REQUESTED.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    if STOP.with(|s| {
        s.borrow()
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }) {
        return Err(WriteFailed.into());
    }
    Ok(())
}
