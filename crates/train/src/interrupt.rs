//! Ctrl-C (SIGINT) and SIGTERM (what Slurm sends at a job's time limit or preemption, `docker
//! stop`, `kill`, a system shutting down) during training: the first one while the epochs train
//! stops the run after the current batch (in an epoch's test pass, once the epoch is tested and
//! saved: [`testing`]), as an error that ends it like any other. The files of
//! the last finished epoch are then written to their end (they are written on a second thread
//! while the next epoch trains), and an `--overwrite` whose new run has not saved an epoch puts
//! the old run back. The program then says where it stopped and ends by the same signal (so
//! that a shell loop around it stops too, and a batch system sees it stopped: status 130 for
//! Ctrl-C, 143 for SIGTERM). One before the epochs start (loading the data, say) ends the
//! process at once, after tidying the run directory as a run that stops there would (an
//! `--overwrite` puts the old run back, a directory the run made and left unused goes).
//!
//! A second Ctrl-C ends the process at once, after the same tidying for a fresh run that has
//! saved no epoch yet (which would otherwise leave a directory of pictures and no state); one
//! while a finished epoch's files are being written ([`writing`]) first lets that write end (a
//! third ends the process at once). A second SIGTERM changes nothing: the same request often
//! comes twice (GNU `timeout` signals its child and then the child's process group), and a
//! batch system escalates with SIGKILL. A batch system's grace period between SIGTERM and
//! SIGKILL (Slurm's `KillWait`, 30 s by default; `docker stop`'s 10 s) must cover the rest of a
//! batch and that write. In process 1 (a container's first process), for which the kernel
//! ignores a signal's default action, the process exits with the status that signal's default
//! action gives (`128 + signal`).
//!
//! The ranks of a data-parallel job take them over too ([`crate::distributed::launch`]), and
//! agree on them: each step's gradient all-reduce carries each rank's stop requests
//! ([`to_share`]), so that every rank stops after the same batch ([`agreed`]), whichever ranks
//! the signal reached (Slurm signals them all; `mpirun` answers its own Ctrl-C or SIGTERM by
//! sending the ranks SIGTERM), and the job ends once rank 0 has written the last epoch's files.
//! Before a fresh run has saved its first epoch there is nothing to keep: rank 0 then ends at
//! once, its run directory tidied as a failed start's (mpirun's SIGTERM after another rank's
//! `MPI_Abort` finds it waiting for that rank, and its SIGKILL would come before any tidying).
//! Neither is taken over where the process was started with it ignored (SIGINT in a background
//! job of a script). Other signals (SIGHUP, SIGQUIT) keep theirs: a run under `nohup` still
//! ignores the hangup.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

/// The signal (SIGINT or SIGTERM) of this process's first stop request while the epochs train;
/// 0 for none.
static REQUESTED: AtomicI32 = AtomicI32::new(0);
/// The signal of a stop the ranks of a data-parallel job agreed on ([`agreed`]) where it came
/// to another rank; 0 for none.
static AGREED: AtomicI32 = AtomicI32::new(0);
/// Set while this process is a rank of a data-parallel training job ([`in_a_job`]).
static IN_A_JOB: AtomicBool = AtomicBool::new(false);

/// Marks this process as a rank of a data-parallel training job until the guard drops: a first
/// Ctrl-C or SIGTERM is then only recorded, whatever the job is doing (loading its data, in its
/// last collectives), for the ranks to agree on at their next step, and a second ends only
/// rank 0 at once (the ranks would otherwise end at different moments, rank 0 perhaps in the
/// middle of writing an epoch). Set before [`take_over_ctrl_c`].
pub fn in_a_job() -> InAJob {
    IN_A_JOB.store(true, Ordering::SeqCst);
    InAJob
}

/// See [`in_a_job`].
pub struct InAJob;

impl Drop for InAJob {
    fn drop(&mut self) {
        IN_A_JOB.store(false, Ordering::SeqCst);
    }
}

/// This process's stop request, or else the one its job agreed on: 0 for none.
fn stop_signal() -> i32 {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => AGREED.load(Ordering::SeqCst),
        own => own,
    }
}
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
/// Test passes under way ([`testing`]).
static TESTING: AtomicUsize = AtomicUsize::new(0);

/// Marks a test pass as under way until the guard drops: a first Ctrl-C or SIGTERM then says
/// that the run stops once the epoch is tested and saved (the test pass does not stop for it:
/// a batch system's grace period is better spent saving the epoch than losing it).
pub fn testing() -> Testing {
    TESTING.fetch_add(1, Ordering::SeqCst);
    Testing
}

/// See [`testing`].
pub struct Testing;

impl Drop for Testing {
    fn drop(&mut self) {
        TESTING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether the epochs are training: Ctrl-C and SIGTERM then wait for the end of the batch.
static TRAINING: AtomicBool = AtomicBool::new(false);

/// The error of a run stopped by Ctrl-C or SIGTERM; [`crate::cli::exit_status`] ends the
/// process by that signal for it, after the message.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by {}", by())
    }
}

impl std::error::Error for Interrupted {}

/// What a stop request is called in messages: `Ctrl-C` (SIGINT) or `SIGTERM`.
fn name_of(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        _ => "Ctrl-C",
    }
}

/// The first stop request's name: `Ctrl-C` (SIGINT, and when none came) or `SIGTERM`.
pub fn by() -> &'static str {
    name_of(stop_signal())
}

/// Ends the process by the first stop request's signal (SIGINT when none came), its default
/// action: a shell reports Ctrl-C's status 130 or SIGTERM's 143, and a loop around the
/// program, or a batch system waiting for it, sees that it was stopped.
pub fn die_by_signal() -> ! {
    match stop_signal() {
        0 => die_by(libc::SIGINT),
        signal => die_by(signal),
    }
}

/// Ends the process by `signal`'s default action (in process 1, for which the kernel ignores
/// it, by exiting with status `128 + signal`).
fn die_by(signal: i32) -> ! {
    // SAFETY: plain libc calls; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
    // Process 1 (a container's first process), or the signal blocked on this thread: ended at
    // once as the signal would have (no exit handlers, other threads stopped where they are).
    // SAFETY: `_exit` ends the process; nothing runs after it.
    unsafe { libc::_exit(128 + signal) }
}

/// Whether `signal` is ignored in this process (SIGINT in a background job of a
/// non-interactive shell, SIGTERM where the parent asked so).
fn ignored(signal: i32) -> bool {
    // SAFETY: reads the current action into a zeroed struct; no handler is installed.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Takes over Ctrl-C (SIGINT) and SIGTERM for this process (see the module's description),
/// each unless it is ignored; once.
pub fn take_over_ctrl_c() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let signals: Vec<i32> = [libc::SIGINT, libc::SIGTERM]
            .into_iter()
            .filter(|s| !ignored(*s))
            .collect();
        if signals.is_empty() {
            return;
        }
        let listening = signal_hook::iterator::Signals::new(&signals).and_then(|mut incoming| {
            std::thread::Builder::new()
                .name("stop-requests".into())
                .spawn(move || {
                    for signal in incoming.forever() {
                        on_stop_request(signal);
                    }
                })
        });
        if let Err(e) = listening {
            // Without the thread, signal-hook's handler would be left catching them for
            // nothing (the signals ignored): their default actions back.
            for &signal in &signals {
                next_one_ends_at_once(signal);
            }
            crate::warn!(
                "note: Ctrl-C and SIGTERM end the run at once ({e}: no thread to stop it after \
                 a batch)"
            );
        }
    });
}

/// Makes the next `signal` end the process at once: its default action, or, in process 1 (a
/// container's first process, for which the kernel ignores signals left at their default
/// action), an immediate exit with the status a shell gives a process the signal ended
/// (`128 + signal`).
fn next_one_ends_at_once(signal: i32) {
    if std::process::id() == 1 {
        // SAFETY: `_exit` is async-signal-safe; the action touches no other state.
        let _ =
            unsafe { signal_hook::low_level::register(signal, move || libc::_exit(128 + signal)) };
    } else {
        // SAFETY: SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
}

/// A Ctrl-C or SIGTERM (`signal`), on the thread that receives them. In a data-parallel job
/// only rank 0 (or every rank, [`crate::distributed::LOG_ALL_RANKS`]) says what it does.
fn on_stop_request(signal: i32) {
    let name = name_of(signal);
    macro_rules! warn {
        ($($arg:tt)*) => {
            if !crate::distributed::quiet() {
                crate::warn!($($arg)*)
            }
        };
    }
    let job = IN_A_JOB.load(Ordering::SeqCst);
    let first = REQUESTED.load(Ordering::SeqCst);
    // A repeated SIGTERM is the same request (`timeout` signals the child, then its group; a
    // batch system escalates with SIGKILL), whatever the run is doing.
    if signal == libc::SIGTERM && first != 0 {
        warn!(
            "\n{}: the run is already stopping (Ctrl-C stops it at once)",
            match first == signal {
                true => "SIGTERM again".to_string(),
                false => format!("SIGTERM after {}", name_of(first)),
            }
        );
        return;
    }
    // Outside the epochs nothing is being saved: the run directory is left as the run's end
    // would leave it (no half-replaced --overwrite, no unused directory), then the process
    // ends. (Unless the epochs started meanwhile.) Not a rank of a job: the ranks stop
    // together, at their next step.
    let tidied = match TRAINING.load(Ordering::SeqCst) || job {
        true => None,
        false => crate::rundir::tidy_at_ctrl_c(|| TRAINING.load(Ordering::SeqCst)),
    };
    if let Some(tidied) = tidied {
        match tidied {
            true => warn!(
                "\nstopped by {name} before the epochs began: nothing was saved, and the run \
                 directory is as before the run (one this run made is removed, one \
                 --overwrite was replacing is back, a resumed run's is untouched)"
            ),
            false => warn!(
                "\nstopped by {name} before the epochs began: nothing was saved (the run \
                 directory was busy: the next run or reader on it tidies it)"
            ),
        }
        die_by(signal);
    }
    if let Err(first) = REQUESTED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst) {
        let again = match first == signal {
            true => format!("{name} again"),
            false => format!("{name} after {}", name_of(first)),
        };
        if job && !crate::distributed::writes() {
            // Rank 0's end (once its files are written) ends the job.
            return;
        }
        if WRITING.load(Ordering::SeqCst) > 0 {
            next_one_ends_at_once(libc::SIGINT);
            warn!(
                "\n{again}: stopping once the finished epoch's files are written (a moment; \
                 Ctrl-C a third time to stop at once, leaving them unfinished)"
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
            Some(true) => {
                warn!("\n{again}: stopping at once; the epochs saved so far stay saved")
            }
            Some(false) => warn!(
                "\n{again}: stopping at once, before the first epoch was saved: nothing to \
                 --resume (a run directory the run made is removed; in one that was there, the \
                 next run takes the place of this one's files)"
            ),
            None => warn!(
                "\n{again}: stopping at once; the epochs saved so far stay saved (the run \
                 directory was busy: the next run or reader on it tidies it)"
            ),
        }
        die_by(signal);
    }
    // A rank of a job whose fresh run has saved no epoch yet loses nothing by ending at once,
    // its run directory tidied; and the request may be the launcher ending the job after
    // another rank failed (mpirun's SIGTERM after an MPI_Abort), when this rank may wait in a
    // collective for a rank that is gone until the launcher's SIGKILL, which would leave the
    // run directory behind. (Not while a finished epoch's files are being written.)
    if job && WRITING.load(Ordering::SeqCst) == 0 && crate::rundir::tidy_if_nothing_saved() {
        warn!(
            "\n{name} before the first epoch was saved: stopping at once, nothing to --resume \
             (a run directory this run made is removed, one --overwrite was replacing is \
             back); \
             mpirun sends it when another rank failed, whose error is then above"
        );
        die_by(signal);
    }
    // Best effort: a terminal that is gone must not end this thread. (In a job, a second
    // Ctrl-C reaches the launcher, which ends the ranks.)
    let at_once = match job {
        true => " (mpirun also sends SIGTERM when another rank failed: its error is then above)",
        false => " (Ctrl-C again to stop at once)",
    };
    match (
        TESTING.load(Ordering::SeqCst),
        TRAINING.load(Ordering::SeqCst),
    ) {
        (0, true) => {
            warn!("\n{name}: stopping after this batch; the finished epochs stay saved{at_once}")
        }
        (_, true) => warn!(
            "\n{name}: stopping once this epoch's test pass ends and the epoch is saved{at_once}"
        ),
        (_, false) => warn!(
            "\n{name}: the ranks stop together at their next training step; the finished epochs \
             stay saved{at_once}"
        ),
    }
}

/// The stop requests of this process (its own, not one agreed on) for a data-parallel job's
/// step, as numbers to sum over the ranks with its gradients: `[Ctrl-C, SIGTERM]`, 1 for the
/// one that came first here.
/// Every rank sums the same values at the same step, so all stop after the same batch
/// ([`agreed`]), where one rank stopping alone would leave the others waiting in a collective.
pub fn to_share() -> [f32; 2] {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => [0.0, 0.0],
        libc::SIGTERM => [0.0, 1.0],
        _ => [1.0, 0.0],
    }
}

/// The ranks' [`to_share`] values summed: `Err` ([`Interrupted`]) once any rank had a stop
/// request, on every rank alike; this process ends by it (SIGTERM where any rank had one),
/// unless one came here first. A signal that comes here later still counts as this process's
/// first.
///
/// # Errors
/// [`Interrupted`] when a rank was asked to stop.
pub fn agreed(summed: [f32; 2]) -> anyhow::Result<()> {
    let signal = match summed {
        [_, term] if term > 0.0 => libc::SIGTERM,
        [int, _] if int > 0.0 => libc::SIGINT,
        _ => return Ok(()),
    };
    let _ = AGREED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    Err(Interrupted.into())
}

/// [`check`] without the stop requests (a data-parallel job's step, whose ranks agree on those
/// through [`to_share`] and [`agreed`]): `Err` once this thread's [`stop_when`] flag is set.
///
/// # Errors
/// [`WriteFailed`] after a failed write.
pub fn check_writes() -> anyhow::Result<()> {
    if STOP.with(|s| {
        s.borrow()
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }) {
        return Err(WriteFailed.into());
    }
    Ok(())
}

/// Whether a Ctrl-C or SIGTERM came while the epochs trained (it may have come after the last
/// batch, too late to stop anything: the run then ends whole, and by that signal still).
pub fn requested() -> bool {
    stop_signal() != 0
}

/// Marks the epochs as training (Ctrl-C and SIGTERM then stop after the batch) until the guard
/// drops.
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

/// `Err` once Ctrl-C was pressed or SIGTERM came, or once this thread's [`stop_when`] flag is
/// set: called before each batch.
///
/// # Errors
/// [`Interrupted`] after the first Ctrl-C or SIGTERM; [`WriteFailed`] after a failed write.
pub fn check() -> anyhow::Result<()> {
    if requested() {
        return Err(Interrupted.into());
    }
    check_writes()
}
