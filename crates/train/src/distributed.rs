//! Data-parallel training across processes and machines, PyTorch DDP's (and Horovod's) design
//! on proven engines: MPI (the `mpi` crate over an installed Open MPI or MPICH) starts the ranks
//! and all-reduces host tensors; with the `nccl` feature, NCCL all-reduces CUDA tensors (its
//! unique id broadcast over MPI, as NCCL's examples do).
//!
//! - Started by an MPI launcher (`mpirun -n 4 ...`, `srun --mpi=pmix ...`) with the `mpi`
//!   feature built in, a training program runs data-parallel; `--distributed off|auto|on`
//!   overrides.
//! - `--batch-size` is per rank: the global batch is world size x batch size. Every rank draws
//!   the same seeded permutation of each epoch; rank r takes the r-th slice of each global batch
//!   ([`shard`]), so the samples and their augmentation (keyed by seed, epoch and index) do not
//!   depend on the world size.
//! - Each step, every rank back-propagates its share of the global batch's mean loss (its mean
//!   loss times its share of the samples); the gradients, flattened into one buffer, are summed
//!   by one all-reduce before the optimizer step: the gradient of the global batch's mean loss,
//!   on every rank.
//! - Batch-norm statistics stay per rank (DDP's default; rank 0's running statistics are
//!   broadcast before each evaluation and saved); `--sync-bn` reduces them across ranks
//!   ([`layers::StatsSync`]).
//! - Evaluation is sharded too; the sums behind the metrics are reduced. So is the `evaluate`
//!   command under a launcher ([`Job::Evaluation`]).
//! - Rank 0 alone writes the run directory and prints; the others are quiet unless
//!   `CNN_LOG_ALL_RANKS=1`. A rank that fails prints its error and aborts the whole job
//!   (`MPI_Abort`), so that the others do not wait forever. A rank that stops without failing
//!   (suspended, hung, its machine unreachable) leaves the others waiting in a collective: after
//!   `--collective-timeout` seconds (30 minutes, PyTorch's default for its Gloo and MPI process
//!   groups) a waiting rank says so and ends the job.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::ModuleT;
use datasets::Batch;
use layers::ParamStore;
use serde::{Deserialize, Serialize};

use crate::engine::{non_finite_loss, Pass, TrainStep};
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::source::BatchSource;
use crate::tally::{Counted, Tally};
use layers::loss::cross_entropy;

/// `--distributed`: whether to train data-parallel across the ranks an MPI launcher started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// One process, even under a launcher.
    Off,
    /// Data-parallel when an MPI launcher started the process.
    #[default]
    Auto,
    /// Data-parallel; an error without a launcher or without the `mpi` feature.
    On,
}

/// The flags of data-parallel training, flattened into [`crate::cli::Args`].
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DistributedArgs {
    /// off, auto or on: train data-parallel across the processes an MPI launcher (mpirun,
    /// srun --mpi=pmix) started; --batch-size is then per rank [default: auto]
    #[arg(long, value_enum)]
    pub distributed: Option<Mode>,
    /// Batch-norm statistics of the whole global batch (SyncBatchNorm) instead of each rank's
    #[arg(long)]
    pub sync_bn: bool,
    /// Drop the last training batch (the last global one, data-parallel) when it is partial
    #[arg(long)]
    pub drop_last: bool,
    /// Seconds a rank waits in one collective (an all-reduce, a broadcast) for the other ranks
    /// before it ends the whole job, as PyTorch's process-group timeout does: for a rank that
    /// stopped or hangs (one that fails ends the job at once). The wait includes rank 0's own
    /// work between collectives (saving checkpoints and pictures): keep it well above that
    /// [default: 1800]
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub collective_timeout: Option<u64>,
}

/// `--collective-timeout`'s default in seconds: PyTorch's for its Gloo and MPI process groups.
pub const DEFAULT_COLLECTIVE_TIMEOUT_S: u64 = 1800;

/// The watchdog of `--collective-timeout`: each collective marks this rank as waiting; a thread
/// ends the job when one lasts too long.
#[cfg(feature = "mpi")]
mod watchdog {
    use anyhow::Result;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// The collectives a rank may wait in.
    #[derive(Debug, Clone, Copy)]
    pub(super) enum Collective {
        AllReduce,
        Broadcast,
        Barrier,
        #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
        NcclSetup,
        /// MPI's start-up (`MPI_Init_thread`), which waits for every rank to start it.
        #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
        Startup,
    }

    /// Their names, in [`Collective`]'s order, for the watchdog's message.
    const COLLECTIVES: [&str; 5] = [
        "an all-reduce",
        "a broadcast",
        "a barrier",
        "NCCL's setup",
        "MPI's start-up",
    ];

    /// This rank's number and the world's size for the watchdog's message: the launcher's
    /// announcement (`usize::MAX` where it made none) until MPI has started and tells them.
    static RANK: AtomicUsize = AtomicUsize::new(usize::MAX);
    static SIZE: AtomicUsize = AtomicUsize::new(0);

    /// Sets the rank the watchdog's message names.
    pub(super) fn set_rank(rank: Option<usize>, size: usize) {
        RANK.store(rank.unwrap_or(usize::MAX), Ordering::Relaxed);
        SIZE.store(size, Ordering::Relaxed);
    }

    /// When this rank entered the collective it waits in (milliseconds since [`clock`]'s start,
    /// plus 1), or 0 when it waits in none.
    static WAITING_SINCE: AtomicU64 = AtomicU64::new(0);
    /// Which of [`COLLECTIVES`] it waits in.
    static WAITING_IN: AtomicUsize = AtomicUsize::new(0);

    /// Milliseconds since the first call.
    fn clock() -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
    }

    /// Marks this rank as waiting in collective `what` until it is dropped.
    pub(super) struct Waiting;

    impl Waiting {
        pub(super) fn new(what: Collective) -> Self {
            WAITING_IN.store(what as usize, Ordering::Relaxed);
            WAITING_SINCE.store(clock() + 1, Ordering::Release);
            Waiting
        }
    }

    impl Drop for Waiting {
        fn drop(&mut self) {
            WAITING_SINCE.store(0, Ordering::Release);
        }
    }

    /// How long this rank has waited in its collective, and which, at `now` (milliseconds).
    fn waited(now: u64) -> Option<(u64, &'static str)> {
        let since = WAITING_SINCE.load(Ordering::Acquire);
        let what = COLLECTIVES[WAITING_IN
            .load(Ordering::Relaxed)
            .min(COLLECTIVES.len() - 1)];
        (since != 0).then(|| (now.saturating_sub(since - 1), what))
    }

    /// The watchdog's message when `rank` (of a world of `size`, 0 where not yet known) has
    /// waited `seconds` in `what`.
    fn timeout_message(rank: Option<usize>, size: usize, what: &str, seconds: u64) -> String {
        let who = match (rank, size) {
            (Some(rank), 1..) => format!("rank {rank} of {size}"),
            (Some(rank), 0) => format!("rank {rank}"),
            (None, _) => "a rank (MPI had not yet said which)".to_string(),
        };
        format!(
            "Error on {who}: waited {seconds} s in {what} for the other ranks \
             (--collective-timeout {seconds}): a rank has stopped, hangs or cannot be reached; \
             ending the job"
        )
    }

    /// Starts the thread that ends the job when this rank has waited in one collective for longer
    /// than `timeout_s`. It exits the process at once (`_exit`, as MPI may not be called from this
    /// thread): the launcher then ends the other ranks.
    pub(super) fn start_watchdog(timeout_s: u64) -> Result<()> {
        let limit = timeout_s.saturating_mul(1000);
        clock();
        std::thread::Builder::new()
            .name("collective-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                if let Some((ms, what)) = waited(clock()) {
                    if ms >= limit {
                        let rank = RANK.load(Ordering::Relaxed);
                        let rank = (rank != usize::MAX).then_some(rank);
                        let size = SIZE.load(Ordering::Relaxed);
                        crate::warn!("{}", timeout_message(rank, size, what, timeout_s));
                        use std::io::Write;
                        let _ = std::io::stderr().flush();
                        let _ = std::io::stdout().flush();
                        // SAFETY: `_exit` ends the process without running anything of this one.
                        unsafe { libc::_exit(1) };
                    }
                }
            })
            .map_err(|e| anyhow::anyhow!("cannot start the collective watchdog thread: {e}"))?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The watchdog sees how long this rank has waited in which collective, and nothing
        /// once the collective returned.
        #[test]
        fn the_watchdog_sees_the_collective_waited_in() {
            assert_eq!(waited(clock()), None);
            {
                let _waiting = Waiting::new(Collective::Broadcast);
                std::thread::sleep(std::time::Duration::from_millis(30));
                let (ms, what) = waited(clock()).expect("waiting");
                assert!(ms >= 30, "{ms}");
                assert_eq!(what, "a broadcast");
            }
            assert_eq!(waited(clock()), None);
            let message = timeout_message(Some(1), 4, "an all-reduce", 60);
            assert!(
                message.starts_with("Error on rank 1 of 4: waited 60 s in an all-reduce")
                    && message.contains("--collective-timeout 60"),
                "{message}"
            );
            let message = timeout_message(Some(3), 0, "MPI's start-up", 5);
            assert!(
                message.starts_with("Error on rank 3: waited 5 s in MPI's start-up"),
                "{message}"
            );
            let message = timeout_message(None, 0, "MPI's start-up", 5);
            assert!(message.starts_with("Error on a rank (MPI had"), "{message}");
        }
    }
}

/// The training flags of data-parallel runs, saved with the run (`sync_bn`, `drop_last` in
/// `config.json`). Both also apply to one process: `sync_bn` is then plain batch norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataParallel {
    /// Reduce batch-norm statistics across ranks.
    #[serde(default)]
    pub sync_bn: bool,
    /// Drop the last partial (global) training batch.
    #[serde(default)]
    pub drop_last: bool,
}

impl DistributedArgs {
    /// The saved part: `--sync-bn` and `--drop-last`.
    pub fn config(&self) -> DataParallel {
        DataParallel {
            sync_bn: self.sync_bn,
            drop_last: self.drop_last,
        }
    }

    /// For `--resume`: records, through `check(flag, given, saved)`, the flags given with a
    /// value other than the saved run's (`--distributed` may change: the saved state does not
    /// depend on the world size).
    pub fn check_resumed(
        &self,
        saved: &DataParallel,
        check: &mut dyn FnMut(&str, Option<String>, String),
    ) {
        check(
            "--sync-bn",
            self.sync_bn.then(|| "true".into()),
            saved.sync_bn.to_string(),
        );
        check(
            "--drop-last",
            self.drop_last.then(|| "true".into()),
            saved.drop_last.to_string(),
        );
    }
}

/// The environment variable that makes ranks other than 0 print their lines too.
pub const LOG_ALL_RANKS: &str = "CNN_LOG_ALL_RANKS";

static QUIET: AtomicBool = AtomicBool::new(false);

/// Whether this process prints nothing (a rank other than 0).
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// This process's place in the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rank {
    /// From 0.
    pub rank: usize,
    /// The number of ranks (world size).
    pub size: usize,
}

struct Context {
    rank: Rank,
    #[cfg(feature = "mpi")]
    comm: mpi::topology::SimpleCommunicator,
    #[cfg(feature = "nccl")]
    nccl: RefCell<Option<Rc<nccl::Nccl>>>,
}

thread_local! {
    // Set on the thread that runs the job (MPI is initialised "funneled": only it calls MPI).
    static CONTEXT: RefCell<Option<Rc<Context>>> = const { RefCell::new(None) };
}

fn context() -> Option<Rc<Context>> {
    CONTEXT.with(|c| c.borrow().clone())
}

/// This rank and the world size, when this thread runs a data-parallel job.
pub fn rank() -> Option<Rank> {
    context().map(|c| c.rank)
}

/// Whether this process writes the run directory: one process, or rank 0.
pub fn writes() -> bool {
    rank().is_none_or(|r| r.rank == 0)
}

/// What started this process, if an MPI launcher did: its name and the world size it announces
/// (0: not announced; MPI tells once started). Open MPI's `mpirun`, MPICH's Hydra (PMI) and
/// PMIx launchers such as `srun --mpi=pmix` are recognised.
pub fn launcher() -> Option<(&'static str, usize)> {
    let read = |name: &str| std::env::var(name).ok()?.trim().parse::<usize>().ok();
    if let Some(size) = read("OMPI_COMM_WORLD_SIZE") {
        return Some(("Open MPI", size));
    }
    if let Some(size) = read("PMI_SIZE") {
        return Some(("a PMI launcher", size));
    }
    if std::env::var_os("PMIX_RANK").is_some() {
        return Some(("a PMIx launcher", read("SLURM_NTASKS").unwrap_or(0)));
    }
    None
}

/// This process's rank as the launcher's environment announces it, before MPI starts.
fn launched_rank() -> Option<usize> {
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// The local rank on this host (which GPU to take), from the launcher's environment.
fn local_rank() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
        "PMIX_LOCAL_RANK",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
    .unwrap_or(0)
}

/// The device a rank trains on: `auto` and `cuda` name this host's GPU number local rank (as
/// DDP's one process per GPU), or the one GPU a rank sees where each sees one (Slurm's
/// `--gpus-per-task=1`, a `CUDA_VISIBLE_DEVICES` set per rank); anything else as given.
pub fn device_spec(spec: &str) -> String {
    let gpu = spec == "cuda" || (spec == "auto" && candle_core::utils::cuda_is_available());
    if rank().is_some() && gpu {
        format!("cuda:{}", gpu_of(local_rank(), visible_gpus()))
    } else {
        spec.to_string()
    }
}

/// The GPU of local rank `local` among `visible` GPUs (`None`: not known): the only one where
/// a rank sees one, else its local rank.
fn gpu_of(local: usize, visible: Option<usize>) -> usize {
    match visible {
        Some(1) => 0,
        _ => local,
    }
}

/// The GPUs this process sees (CUDA's count, after `CUDA_VISIBLE_DEVICES`).
fn visible_gpus() -> Option<usize> {
    #[cfg(feature = "cuda")]
    {
        let count = candle_core::cuda::cudarc::driver::CudaContext::device_count();
        count.ok().and_then(|n| usize::try_from(n).ok())
    }
    #[cfg(not(feature = "cuda"))]
    {
        None
    }
}

/// What a job does: train (the training programs) or evaluate a checkpoint (`evaluate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Training: Ctrl-C and SIGTERM stop it after a batch, alone or data-parallel (every
    /// rank after the same one; [`crate::interrupt`]).
    Training,
    /// A sharded evaluation: each rank tests its share of the test set, the sums are reduced.
    Evaluation,
}

impl Job {
    /// The verb the messages use.
    fn verb(self) -> &'static str {
        match self {
            Job::Training => "train",
            Job::Evaluation => "evaluate",
        }
    }
}

/// Runs `body` as `args` says: directly, or as one rank of a data-parallel job (MPI initialised
/// around it, finalised after). A rank whose `body` fails prints the error, naming the rank, and
/// aborts the whole job, so that no rank waits for it forever.
///
/// Errors: `--distributed on` without a launcher; a launcher but no `mpi` feature (unless
/// `--distributed off`); MPI cannot start; `body`'s error, when it runs alone.
pub fn launch<T>(args: &DistributedArgs, body: impl FnOnce() -> Result<T>) -> Result<T> {
    launch_job(Job::Training, args, body)
}

/// [`launch`] for `job`: an evaluation neither takes over Ctrl-C and SIGTERM nor says anything of
/// `--sync-bn`, and its messages say "evaluate".
pub fn launch_job<T>(
    job: Job,
    args: &DistributedArgs,
    body: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let mode = args.distributed.unwrap_or_default();
    let found = launcher();
    let verb = job.verb();
    match (mode, found) {
        (Mode::Off, _) | (Mode::Auto, None) => {
            if let (Mode::Off, Some((who, size @ 2..))) = (mode, found) {
                // The other ranks, if they were not given `off` too, wait for this one in MPI's
                // start-up and end with the launcher's own message: say why here.
                crate::warn!(
                    "--distributed off: {who} started {size} processes; this one ({}) {verb}s \
                     alone, without MPI; ranks given --distributed auto or on wait for it to \
                     join and end when it exits: give all ranks the same --distributed",
                    launched_rank().map_or("rank unknown".into(), |r| format!("rank {r}"))
                );
            }
            if job == Job::Training {
                crate::interrupt::take_over_ctrl_c();
            }
            if args.sync_bn {
                crate::say!(
                    "--sync-bn: one process, so batch norm uses this process's batch (as \
                     SyncBatchNorm does in a world of one); start the ranks with mpirun to \
                     synchronise it across them"
                );
            }
            body()
        }
        (Mode::On, None) if !cfg!(feature = "mpi") => bail!(
            "--distributed on: this program was built without MPI (data-parallel jobs); rebuild \
             it with `--features mpi` (or `nccl`), then start the ranks with `mpirun -n N \
             <program> ...`"
        ),
        (Mode::On, None) => bail!(
            "--distributed on: no MPI launcher started this process; start the ranks with \
             `mpirun -n N <program> ...` (or `srun --mpi=pmix`), or leave out --distributed \
             to {verb} in one process"
        ),
        (_, Some((who, size))) => start(
            job,
            mode,
            who,
            size,
            args.collective_timeout
                .unwrap_or(DEFAULT_COLLECTIVE_TIMEOUT_S),
            body,
        ),
    }
}

#[cfg(not(feature = "mpi"))]
fn start<T>(
    job: Job,
    mode: Mode,
    who: &str,
    size: usize,
    _timeout_s: u64,
    body: impl FnOnce() -> Result<T>,
) -> Result<T> {
    if mode == Mode::On || size != 1 {
        let alone = match job {
            Job::Training => "train one independent run per process",
            Job::Evaluation => "evaluate the whole test set in each process",
        };
        bail!(
            "started by {who} as one of {size} processes, but this program was built without \
             MPI (data-parallel jobs): rebuild it with `--features mpi` (or `nccl`), or pass \
             --distributed off to {alone}"
        );
    }
    if job == Job::Training {
        crate::interrupt::take_over_ctrl_c();
    }
    body()
}

#[cfg(feature = "mpi")]
fn start<T>(
    job: Job,
    _mode: Mode,
    _who: &str,
    size: usize,
    timeout_s: u64,
    body: impl FnOnce() -> Result<T>,
) -> Result<T> {
    use mpi::traits::{Communicator, CommunicatorCollectives};
    use std::io::Write;

    // MPI's start-up waits for every rank to start it: watched as the collectives are, so that a
    // rank that stops or hangs before it (or never starts it) ends the job too.
    watchdog::set_rank(launched_rank(), size);
    if size != 1 {
        watchdog::start_watchdog(timeout_s)?;
    }
    let started = {
        let _waiting = watchdog::Waiting::new(watchdog::Collective::Startup);
        mpi::initialize_with_threading(mpi::Threading::Funneled)
    };
    let Some((universe, _)) = started else {
        bail!("MPI is already initialised in this process: one data-parallel job per process");
    };
    let comm = universe.world();
    let rank = Rank {
        rank: comm.rank() as usize,
        size: comm.size() as usize,
    };
    watchdog::set_rank(Some(rank.rank), rank.size);
    QUIET.store(
        rank.rank != 0 && std::env::var_os(LOG_ALL_RANKS).is_none(),
        Ordering::Relaxed,
    );
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        crate::warn!(
            "rank {} of {} panicked: aborting the job",
            rank.rank,
            rank.size
        );
        let _ = std::io::stderr().flush();
        mpi::topology::SimpleCommunicator::world().abort(101);
    }));
    if rank.size > 1 && size == 1 {
        // The launcher announced one process and MPI says more.
        watchdog::start_watchdog(timeout_s)?;
    }
    // Ctrl-C and SIGTERM: every rank stops after the same batch (`interrupt::agreed`); until
    // then a rank only records them, whatever it is doing.
    let _in_a_job = (job == Job::Training).then(crate::interrupt::in_a_job);
    if job == Job::Training {
        crate::interrupt::take_over_ctrl_c();
    }
    CONTEXT.with(|c| {
        *c.borrow_mut() = Some(Rc::new(Context {
            rank,
            comm,
            #[cfg(feature = "nccl")]
            nccl: RefCell::new(None),
        }))
    });
    let result = body();
    let context = CONTEXT.with(|c| c.borrow_mut().take());
    // Every rank ends here together: a watched barrier, then MPI finalised.
    let end_together = move |context: Option<Rc<Context>>| {
        if let Some(context) = &context {
            let _waiting = watchdog::Waiting::new(watchdog::Collective::Barrier);
            context.comm.barrier();
        }
        drop(context);
        drop(universe);
    };
    match result {
        Ok(value) => {
            // A Ctrl-C or SIGTERM after the last step may have reached some ranks only: every
            // rank ends by it (`cli::exit_status`), as every rank stops for one before.
            if let (Some(context), Job::Training) = (&context, job) {
                let own = crate::interrupt::to_share();
                let any = context.or_u64(&[u64::from(own[0] > 0.0), u64::from(own[1] > 0.0)]);
                let _ = crate::interrupt::agreed([any[0] as f32, any[1] as f32]);
            }
            end_together(context);
            Ok(value)
        }
        Err(e) if rank.size > 1 && e.chain().any(|c| c.is::<crate::interrupt::Interrupted>()) => {
            // A Ctrl-C or SIGTERM that the ranks agreed on at the same step: they stop
            // together once rank 0 has written the last epoch's files, rank 0 says where the
            // run stopped, and each ends by the signal, as a run in one process does.
            if !quiet() {
                crate::warn!("Error: {e}");
            }
            let _ = std::io::stdout().flush();
            end_together(context);
            crate::interrupt::die_by_signal()
        }
        Err(e) if rank.size > 1 && e.chain().any(|c| c.is::<crate::engine::Diverged>()) => {
            // A non-finite loss or weight: every rank meets it at the same step, from reduced
            // or broadcast values. The ranks stop together once rank 0 has finished writing the
            // epochs before (an abort would end that write midway). Rank 0 says why before any
            // rank exits (mpirun ends the others when one exits with an error), as `main`
            // would; each then exits with status 1.
            if !quiet() {
                crate::warn!("Error: {e:?}");
            }
            let _ = std::io::stdout().flush();
            end_together(context);
            std::process::exit(1)
        }
        Err(e) if rank.size > 1 => {
            if e.chain().any(|c| c.is::<ElsewhereFailed>()) {
                // The failing rank aborts the job with its own error: wait for it (a few
                // seconds, then abort too, saying so).
                std::thread::sleep(std::time::Duration::from_secs(10));
            }
            // Printed before the abort: mpirun then ends every rank within moments.
            crate::warn!("Error on rank {} of {}: {e:?}", rank.rank, rank.size);
            let _ = std::io::stderr().flush();
            let _ = std::io::stdout().flush();
            mpi::topology::SimpleCommunicator::world().abort(1)
        }
        Err(e) => Err(e),
    }
}

/// The training source (or test source) of this rank: `source`'s samples split across the
/// ranks, or `None` when no job runs. `batch_size` is per rank.
pub fn shard<'a>(
    source: &'a dyn BatchSource,
    batch_size: usize,
    drop_last: bool,
) -> Option<Sharded<'a>> {
    let rank = rank()?;
    Some(Sharded {
        inner: source,
        rank,
        global: batch_size * rank.size,
        drop_last,
    })
}

/// A [`BatchSource`] split across ranks: each epoch's order (the same on every rank) is cut
/// into global batches of world size x batch size; rank r takes the r-th of world-size
/// contiguous slices of each, as even as can be (the first `len % size` ranks one more sample,
/// the last partial global batch split the same way). A rank whose slice of the last global
/// batch is empty gets that batch's first sample with no indices: it runs the step with a
/// weight of zero, so that every rank runs every collective.
pub struct Sharded<'a> {
    inner: &'a dyn BatchSource,
    rank: Rank,
    global: usize,
    drop_last: bool,
}

impl Sharded<'_> {
    /// Samples in global batch `b` (from 0).
    fn global_len(&self, b: usize) -> usize {
        self.global
            .min(self.num_samples().saturating_sub(b * self.global))
    }

    /// This rank's `(first, len)` within a global batch of `len` samples.
    fn slice(&self, len: usize) -> (usize, usize) {
        let (base, extra) = (len / self.rank.size, len % self.rank.size);
        let r = self.rank.rank;
        (r * base + r.min(extra), base + usize::from(r < extra))
    }
}

impl BatchSource for Sharded<'_> {
    fn num_batches(&self) -> usize {
        let n = self.inner.num_samples();
        if self.drop_last {
            n / self.global
        } else {
            n.div_ceil(self.global)
        }
    }

    fn num_samples(&self) -> usize {
        if self.drop_last {
            self.num_batches() * self.global
        } else {
            self.inner.num_samples()
        }
    }

    fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order = self.inner.order(epoch);
        order.truncate(self.num_samples());
        order
    }

    fn batches_of(
        &self,
        epoch: usize,
        groups: Vec<Vec<usize>>,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
        self.inner.batches_of(epoch, groups)
    }

    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
        let order = self.order(epoch);
        let mut groups = Vec::with_capacity(self.num_batches());
        let mut empty = Vec::with_capacity(self.num_batches());
        for chunk in order.chunks(self.global) {
            let (first, len) = self.slice(chunk.len());
            empty.push(len == 0);
            groups.push(if len == 0 {
                vec![chunk[0]]
            } else {
                chunk[first..first + len].to_vec()
            });
        }
        Box::new(
            self.inner
                .batches_of(epoch, groups)
                .zip(empty)
                .map(|(batch, empty)| {
                    let mut batch = batch?;
                    if empty {
                        batch.indices.clear();
                    }
                    Ok(batch)
                }),
        )
    }
}

/// Sums over the ranks (the element-wise sum of every rank's tensor): host tensors through
/// MPI, CUDA tensors through NCCL when built in. Every rank must call it in the same order
/// with the same length.
fn all_reduce(t: &Tensor) -> Result<Tensor> {
    let Some(context) = context() else {
        return Ok(t.clone());
    };
    context.all_reduce(t)
}

/// [`all_reduce`] of a step's gradients, waited for at once: the step reads the loss from the
/// sum right after, which waits for it anyway. With NCCL (CUDA tensors) that wait is for the
/// kernel on the GPU, and is watched by `--collective-timeout` as MPI's collectives are: a rank
/// that never joins leaves the others' kernels waiting, and them in this wait, until the
/// timeout ends the job. (SyncBatchNorm's reductions inside the step are not waited for on
/// their own: nothing is read to the host before this sum, whose wait comes after them on the
/// stream and so covers them.)
fn all_reduce_waited(t: &Tensor) -> Result<Tensor> {
    let summed = all_reduce(t)?;
    #[cfg(feature = "nccl")]
    if context().is_some() && summed.device().is_cuda() {
        let _waiting = watchdog::Waiting::new(watchdog::Collective::AllReduce);
        summed.device().synchronize()?;
    }
    Ok(summed)
}

/// The element-wise sum of `t` over the ranks (`t` itself without a job), waited for: a
/// gathering where each rank holds its part among zeros (a data-parallel feature pass). Sent
/// in pieces of at most 2^26 values (MPI counts in int32).
///
/// Errors: the transport failed.
pub fn sum_over_ranks(t: &Tensor) -> Result<Tensor> {
    const PIECE: usize = 1 << 26;
    let flat = t.flatten_all()?;
    let n = flat.elem_count();
    if n <= PIECE {
        return Ok(all_reduce_waited(&flat)?.reshape(t.shape())?);
    }
    let pieces = (0..n)
        .step_by(PIECE)
        .map(|at| all_reduce_waited(&flat.narrow(0, at, PIECE.min(n - at))?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&pieces, 0)?.reshape(t.shape())?)
}

/// `n` values computed a share per rank and gathered on every rank: rank r computes `part` of
/// its contiguous share of `0..n` (as even as can be, the first `n % size` ranks one more), and
/// one bitwise-or all-reduce puts the shares together (each position is one rank's, zero on
/// the others). Without a job, `part(0..n)`. Every rank must call it in the same order with the
/// same `n`; a rank whose `part` fails still joins the all-reduce, so every rank returns an
/// error together.
///
/// Errors: `part`'s on its rank (or a share of another length), and on the other ranks that a
/// rank could not compute its share.
pub fn share_u64s(
    n: usize,
    part: impl FnOnce(std::ops::Range<usize>) -> Result<Vec<u64>>,
) -> Result<Vec<u64>> {
    let Some(context) = context() else {
        return part(0..n);
    };
    let Rank { rank, size } = context.rank;
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    let mine = part(start..start + len).and_then(|mine| {
        anyhow::ensure!(
            mine.len() == len,
            "{} values for a share of {len}",
            mine.len()
        );
        Ok(mine)
    });
    // The last value: whether a rank failed.
    let mut all = vec![0u64; n + 1];
    match &mine {
        Ok(mine) => all[start..start + len].copy_from_slice(mine),
        Err(_) => all[n] = 1,
    }
    let mut all = context.or_u64(&all);
    mine?;
    if all.pop() != Some(0) {
        return Err(ElsewhereFailed.into());
    }
    Ok(all)
}

/// The error of a rank whose work is whole but another rank's failed ([`share_u64s`]): that
/// rank ends the job with its own error; this one says nothing, so that the cause is the
/// job's one message.
#[derive(Debug)]
pub struct ElsewhereFailed;

impl std::fmt::Display for ElsewhereFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("another rank of the job failed (its error names the cause)")
    }
}

impl std::error::Error for ElsewhereFailed {}

/// Whether `flag` holds on any rank of the job (`flag` itself without one). Every rank must
/// call it in the same order.
pub fn any_rank(flag: bool) -> bool {
    match context() {
        Some(context) => context.or_u64(&[u64::from(flag)])[0] != 0,
        None => flag,
    }
}

/// Waits until every rank of the job is here (nothing without a job), watched by
/// `--collective-timeout`.
pub fn barrier() {
    #[cfg(feature = "mpi")]
    if let Some(context) = context() {
        use mpi::traits::CommunicatorCollectives;
        let _waiting = watchdog::Waiting::new(watchdog::Collective::Barrier);
        context.comm.barrier();
    }
}

impl Context {
    #[cfg(not(feature = "mpi"))]
    fn all_reduce(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }

    #[cfg(feature = "mpi")]
    fn all_reduce(&self, t: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "nccl")]
        if let Device::Cuda(cuda) = t.device() {
            let nccl = {
                let mut slot = self.nccl.borrow_mut();
                match slot.as_ref() {
                    Some(n) => n.clone(),
                    None => {
                        let _waiting = watchdog::Waiting::new(watchdog::Collective::NcclSetup);
                        let n = Rc::new(nccl::Nccl::new(cuda, self.rank, &self.comm)?);
                        *slot = Some(n.clone());
                        n
                    }
                }
            };
            return nccl.all_reduce(t);
        }
        let flat = t.flatten_all()?;
        let reduced = match t.dtype() {
            DType::F64 => {
                let local = flat.to_vec1::<f64>()?;
                Tensor::from_vec(self.sum_f64(&local), local.len(), t.device())?
            }
            dtype => {
                let local = flat.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let mut sum = vec![0f32; local.len()];
                let _waiting = watchdog::Waiting::new(watchdog::Collective::AllReduce);
                mpi::collective::CommunicatorCollectives::all_reduce_into(
                    &self.comm,
                    &local[..],
                    &mut sum[..],
                    mpi::collective::SystemOperation::sum(),
                );
                Tensor::from_vec(sum, local.len(), t.device())?.to_dtype(dtype)?
            }
        };
        Ok(reduced.reshape(t.shape())?)
    }

    #[cfg(feature = "mpi")]
    fn sum_f64(&self, local: &[f64]) -> Vec<f64> {
        let mut sum = vec![0f64; local.len()];
        let _waiting = watchdog::Waiting::new(watchdog::Collective::AllReduce);
        mpi::collective::CommunicatorCollectives::all_reduce_into(
            &self.comm,
            local,
            &mut sum[..],
            mpi::collective::SystemOperation::sum(),
        );
        sum
    }

    #[cfg(not(feature = "mpi"))]
    fn sum_f64(&self, local: &[f64]) -> Vec<f64> {
        local.to_vec()
    }

    /// The element-wise bitwise or of every rank's `local`, in pieces of at most 2^26 values
    /// (MPI counts in int32).
    #[cfg(feature = "mpi")]
    fn or_u64(&self, local: &[u64]) -> Vec<u64> {
        const PIECE: usize = 1 << 26;
        let mut all = vec![0u64; local.len()];
        let _waiting = watchdog::Waiting::new(watchdog::Collective::AllReduce);
        for (mine, out) in local.chunks(PIECE).zip(all.chunks_mut(PIECE)) {
            mpi::collective::CommunicatorCollectives::all_reduce_into(
                &self.comm,
                mine,
                out,
                mpi::collective::SystemOperation::bitwise_or(),
            );
        }
        all
    }

    #[cfg(not(feature = "mpi"))]
    fn or_u64(&self, local: &[u64]) -> Vec<u64> {
        local.to_vec()
    }

    /// Rank 0's values of `values`, on every rank.
    #[cfg(feature = "mpi")]
    fn broadcast_f32(&self, values: &mut [f32]) {
        use mpi::traits::{Communicator, Root};
        let _waiting = watchdog::Waiting::new(watchdog::Collective::Broadcast);
        self.comm.process_at_rank(0).broadcast_into(values);
    }

    #[cfg(not(feature = "mpi"))]
    fn broadcast_f32(&self, _values: &mut [f32]) {}

    /// Rank 0's `values`, on every rank.
    #[cfg(feature = "mpi")]
    fn broadcast_u64(&self, values: &mut [u64]) {
        use mpi::traits::{Communicator, Root};
        let _waiting = watchdog::Waiting::new(watchdog::Collective::Broadcast);
        self.comm.process_at_rank(0).broadcast_into(values);
    }

    #[cfg(not(feature = "mpi"))]
    fn broadcast_u64(&self, _values: &mut [u64]) {}

    /// Rank 0's `mine`, on every rank (its length first, then its bytes).
    #[cfg(feature = "mpi")]
    fn broadcast_bytes(&self, mine: &[u8]) -> Vec<u8> {
        use mpi::traits::{Communicator, Root};
        let root = self.comm.process_at_rank(0);
        let _waiting = watchdog::Waiting::new(watchdog::Collective::Broadcast);
        let mut len = [mine.len() as u64];
        root.broadcast_into(&mut len[..]);
        let mut bytes = match self.rank.rank {
            0 => mine.to_vec(),
            _ => vec![0u8; len[0] as usize],
        };
        root.broadcast_into(&mut bytes[..]);
        bytes
    }

    #[cfg(not(feature = "mpi"))]
    fn broadcast_bytes(&self, mine: &[u8]) -> Vec<u8> {
        mine.to_vec()
    }
}

/// Copies rank 0's float tensors of `store` (weights and batch-norm statistics) to every rank,
/// in one broadcast: at the start (as DDP's constructor) and after every training epoch, so
/// that each rank evaluates (and would save) exactly what rank 0 saves. Nothing without a job.
///
/// Errors: a tensor cannot be read or set.
pub fn broadcast_weights(store: &ParamStore) -> Result<()> {
    let Some(context) = context() else {
        return Ok(());
    };
    let vars: Vec<_> = store
        .named_vars()
        .into_iter()
        .filter(|(_, v)| v.dtype().is_float())
        .collect();
    let mut flat = Vec::new();
    for (_, v) in &vars {
        flat.extend(
            v.as_tensor()
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?,
        );
    }
    context.broadcast_f32(&mut flat);
    let mut at = 0;
    for (_, v) in &vars {
        let n = v.elem_count();
        let t =
            Tensor::from_slice(&flat[at..at + n], v.shape(), v.device())?.to_dtype(v.dtype())?;
        v.set(&t)?;
        at += n;
    }
    Ok(())
}

/// Settings every rank of a job must share, each by name with its value as text (see
/// [`agree`]).
pub type Settings = Vec<(String, String)>;

/// The settings in `config` that must be the same on every rank, and `epochs_done` (0 for a
/// fresh run, the saved state's count for `--resume`), named by their flags. Left out, as they
/// may differ from rank to rank: the path of `--data-dir` (the data itself is compared by
/// [`data_settings`]), `--device`, `--workers`, `--data-placement`, `--memory-format`, and
/// a fine-tuning run's `--weights` (rank 0's weights are broadcast before training).
pub fn run_settings(config: &crate::config::RunConfig, epochs_done: usize) -> Result<Settings> {
    const PER_RANK: [&str; 6] = [
        "data_dir",
        "device",
        "workers",
        "data_placement",
        "memory_format",
        "weights",
    ];
    let mut settings = Settings::new();
    let mut add = |key: &str, value: &serde_json::Value| {
        if !PER_RANK.contains(&key) {
            let name = match key {
                "program" => "the program".into(),
                "dataset" => "the data set".into(),
                key => format!("--{}", key.replace('_', "-")),
            };
            settings.push((name, value.to_string()));
        }
    };
    if let serde_json::Value::Object(fields) = serde_json::to_value(config)? {
        for (key, value) in &fields {
            match (key.as_str(), value) {
                ("program_settings", serde_json::Value::Object(more)) => {
                    for (key, value) in more {
                        add(key, value);
                    }
                }
                (key, value) => add(key, value),
            }
        }
    }
    settings.push(("the epochs done (--resume)".into(), epochs_done.to_string()));
    Ok(settings)
}

/// What every rank must train on and with: the training and test images (their counts, the
/// class names and the labels, in order), the model's parameters (their names and shapes) and
/// the trained ones, in a build with NCCL (which all-reduces CUDA tensors, MPI host ones)
/// whether `device` is CUDA, and how the optimizer rounds (on the CPU,
/// [`optim::cpu_fused_multiply_add`]; the CUDA kernel rounds twice). Labels and names are compared by CRC-32C.
pub fn data_settings(
    train: &dyn datasets::Dataset,
    test: &dyn datasets::Dataset,
    store: &ParamStore,
    trainable: &[(String, candle_core::Var)],
    device: &Device,
) -> Settings {
    let labels = |d: &dyn datasets::Dataset| {
        format!("{} (CRC-32C {:08x})", d.len(), crate::state::labels_crc(d))
    };
    let names = |names: &mut dyn Iterator<Item = String>| {
        let (mut count, mut crc) = (0, 0);
        for name in names {
            crc = crc32c::crc32c_append(crc, name.as_bytes());
            crc = crc32c::crc32c_append(crc, b"\n");
            count += 1;
        }
        format!("{count} (CRC-32C {crc:08x})")
    };
    let shapes = |vars: &mut dyn Iterator<Item = (&String, &candle_core::Var)>| {
        names(&mut vars.map(|(name, v)| format!("{name} {:?}", v.dims())))
    };
    let all = store.named_vars();
    let mut settings: Settings = vec![
        ("the training images".into(), labels(train)),
        ("the test images".into(), labels(test)),
        (
            "the classes".into(),
            names(&mut train.classes().iter().cloned()),
        ),
        (
            "the model's tensors".into(),
            shapes(&mut all.iter().map(|(n, v)| (n, v))),
        ),
        (
            "the trained tensors".into(),
            shapes(&mut trainable.iter().map(|(n, v)| (n, v))),
        ),
    ];
    if cfg!(feature = "nccl") {
        let kind = match device.is_cuda() {
            true => "cuda",
            false => "cpu",
        };
        settings.push(("the device (--device)".into(), kind.into()));
    }
    // Each rank updates its own replica: rounded otherwise on one, its weights drift.
    let rounding = match (device.is_cpu(), optim::cpu_fused_multiply_add()) {
        (true, true) => {
            "once (on the CPU, a fused multiply-add, as PyTorch's AVX2 and AVX-512 kernels; \
             ATEN_CPU_CAPABILITY=default rounds twice, as PyTorch's portable kernels and the \
             GPU's)"
        }
        (true, false) => {
            "twice (on the CPU, as PyTorch's portable kernels: a CPU without AVX2 and FMA, or \
             ATEN_CPU_CAPABILITY=default)"
        }
        (false, _) => "twice (the GPU's kernel)",
    };
    settings.push(("the optimizer's rounding".into(), rounding.into()));
    settings
}

/// [`agree`] on the run's settings ([`run_settings`]): called by every rank once the run's
/// configuration is known, before its first collective.
///
/// Errors: a setting differs from rank 0's.
pub fn agree_on_run(config: &crate::config::RunConfig, epochs_done: usize) -> Result<()> {
    agree("settings", &run_settings(config, epochs_done)?)
}

/// [`agree`] on the data and model ([`data_settings`]): called by every rank before the first
/// collective that depends on them (a weight broadcast, the first step).
///
/// Errors: the data or model differs from rank 0's.
pub fn agree_on_data(
    train: &dyn datasets::Dataset,
    test: &dyn datasets::Dataset,
    store: &ParamStore,
    trainable: &[(String, candle_core::Var)],
    device: &Device,
) -> Result<()> {
    agree(
        "data and model",
        &data_settings(train, test, store, trainable, device),
    )
}

/// Refuses a job whose ranks differ in `settings` (their `what`: their settings, their data
/// and model): a rank whose settings are not rank 0's fails, naming each one that differs with
/// both values, and so ends the job (see [`launch`]), instead of training on mixed settings,
/// waiting forever in a collective another rank never reaches, or corrupting memory in one
/// whose length differs. DDP checks its parameters' shapes across ranks likewise. Every rank
/// must call it at the same point; nothing without a job.
///
/// Errors: the settings differ from rank 0's.
pub fn agree(what: &str, settings: &Settings) -> Result<()> {
    agree_that(
        what,
        settings,
        "only --data-dir's path, --device (with NCCL, all CUDA or all CPU; without, CPU ranks \
         beside GPU ones under ATEN_CPU_CAPABILITY=default, so that their optimizers round \
         alike), --workers, --data-placement, --memory-format and a fine-tuning run's \
         --weights may differ",
    )
}

/// [`agree`], its error saying `may_differ` (what the ranks may give differently).
///
/// Errors: the settings differ from rank 0's.
pub fn agree_that(what: &str, settings: &Settings, may_differ: &str) -> Result<()> {
    let Some(context) = context() else {
        return Ok(());
    };
    let mine = serde_json::to_vec(settings)?;
    let first = context.broadcast_bytes(&mine);
    if first == mine {
        return Ok(());
    }
    let first: Settings = serde_json::from_slice(&first)?;
    let differ = differences(settings, &first);
    bail!(
        "the ranks of this data-parallel job differ in their {what}: {} (every rank runs the \
         same command on the same data; {may_differ})",
        differ.join("; ")
    )
}

/// Each setting of `here` (this rank's) whose value is not `first`'s (rank 0's), or that only
/// one of them has: `NAME HERE here, FIRST on rank 0`.
pub(crate) fn differences(here: &Settings, first: &Settings) -> Vec<String> {
    let value = |list: &Settings, name: &str| {
        list.iter()
            .find(|(n, _)| n == name)
            .map_or("nothing".to_string(), |(_, v)| v.clone())
    };
    let mut differ: Vec<String> = here
        .iter()
        .filter(|(name, value_here)| value(first, name) != *value_here)
        .map(|(name, mine)| format!("{name} {mine} here, {} on rank 0", value(first, name)))
        .collect();
    differ.extend(
        first
            .iter()
            .filter(|(name, _)| !here.iter().any(|(n, _)| n == name))
            .map(|(name, there)| format!("{name} nothing here, {there} on rank 0")),
    );
    differ
}

/// Sets every rank's dropout generator (`layers::rng`, of this thread) to rank 0's: after each
/// training epoch, so that a rank whose share of the last global batch was smaller (and which
/// drew fewer masks) continues as rank 0 does, as a resumed run continues from rank 0's saved
/// state. Nothing without a job.
pub fn broadcast_dropout_generator() {
    if let Some(context) = context() {
        let mut state = layers::rng::state();
        context.broadcast_u64(&mut state);
        layers::rng::set_state(state);
    }
}

/// Bytes all-reduced per training step: the flattened f32 gradients of `trainable` plus the
/// two stop requests and the loss (what one step of the job sends into the reduction, per
/// rank).
pub fn bytes_per_step(trainable: &[(String, candle_core::Var)]) -> usize {
    4 * (trainable.iter().map(|(_, v)| v.elem_count()).sum::<usize>() + 3)
}

/// The [`layers::StatsSync`] of `--sync-bn`: the all-reduce, with this rank's contribution
/// zeroed on a step where it holds no sample. Called on the training thread (forward and
/// backward), where the job's context lives.
struct BnSync {
    contributes: AtomicBool,
    /// The step's samples on this rank (1 for a rank without any: it runs the batch's first
    /// sample at a weight of zero) and in the whole global batch.
    samples: [AtomicUsize; 2],
}

impl layers::StatsSync for BnSync {
    fn all_reduce_sum(&self, local: &Tensor) -> candle_core::Result<Tensor> {
        let local = if self.contributes.load(Ordering::Relaxed) {
            local.clone()
        } else {
            local.zeros_like()?
        };
        all_reduce(&local).map_err(candle_core::Error::wrap)
    }

    /// Every rank's batch norm sees its samples' maps of one size: the global count is the
    /// local one scaled by the global batch over this rank's samples. Always known, on every
    /// rank alike (a count left to the reduction on some ranks only would make the ranks'
    /// all-reduces of different lengths).
    fn global_count(&self, local: usize) -> Option<usize> {
        let [mine, global] = self.samples.each_ref().map(|n| n.load(Ordering::Relaxed));
        Some(local * global / mine.max(1))
    }
}

/// Trains epoch `epoch` of a data-parallel job over this rank's share `loader` (from
/// [`shard`]): `engine::train_epoch`'s loop with the gradients all-reduced before each step.
/// The returned metrics and batch losses are the whole global batches'; the predictions this
/// rank's. `sync_bn` installs the batch-norm statistics reduction for the epoch. The gradients
/// of `trainable` (the parameters the optimizer updates: a fine-tuning run's head, not its
/// frozen backbone) are all-reduced; `store` holds every weight, broadcast from rank 0 after
/// the epoch.
///
/// Errors: a batch, the model or the transport failed; the global loss became non-finite
/// (every rank stops at the same step with the same error).
#[allow(clippy::too_many_arguments)]
pub fn train_epoch(
    model: &dyn ModuleT,
    loader: &Sharded<'_>,
    store: &ParamStore,
    trainable: &[(String, candle_core::Var)],
    device: &Device,
    epoch: usize,
    step: TrainStep<'_>,
    num_classes: usize,
    label: String,
    sync_bn: bool,
) -> Result<Pass> {
    crate::engine::refuse_no_grad(epoch)?;
    let batches = loader.num_batches();
    let mut tally = Tally::new(num_classes, device, batches, loader.num_samples())?;
    let mut progress = Progress::start(label, batches);
    let mut last_lr = step.optimizer.learning_rate();
    let mut batch_losses = Vec::with_capacity(batches);
    let mut batch_times = Vec::with_capacity(batches);
    let bn = std::sync::Arc::new(BnSync {
        contributes: AtomicBool::new(true),
        samples: [AtomicUsize::new(0), AtomicUsize::new(0)],
    });
    let previous = sync_bn.then(|| layers::set_stats_sync(Some(bn.clone())));
    let result = (|| -> Result<()> {
        for (b, batch) in loader.batches(epoch).enumerate() {
            // Rank 0's write of the previous epoch's files failed: its error ends the job now,
            // not after an epoch that could not be saved. (A Ctrl-C or SIGTERM is agreed on
            // below, with the gradients.)
            crate::interrupt::check_writes()?;
            let batch = batch?;
            step.schedule.apply(step.optimizer, epoch, b, batches);
            last_lr = step.optimizer.learning_rate();
            let n = batch.indices.len();
            let share = n as f64 / loader.global_len(b).max(1) as f64;
            bn.contributes.store(n > 0, Ordering::Relaxed);
            bn.samples[0].store(batch.images.dim(0)?, Ordering::Relaxed);
            bn.samples[1].store(loader.global_len(b), Ordering::Relaxed);
            let images = batch.images.to_device(device)?;
            let labels = batch.labels.to_device(device)?;
            // This rank's stop requests (Ctrl-C, SIGTERM), summed with the gradients below so
            // that every rank stops after the same batch; copied to the device before the
            // forward pass (a host copy after it could wait for `--sync-bn`'s reductions).
            let stop_requests = Tensor::new(&crate::interrupt::to_share(), device)?;
            let logits = model.forward_t(&images, true).map_err(|e| {
                let global = loader.global_len(b);
                // torch.nn.BatchNorm2d refuses one value per channel in training too; a rank
                // without samples runs one at a weight of zero.
                let one_value = e.to_string().contains("more than one value per channel");
                let hint = match (n, one_value && !sync_bn) {
                    (0, true) => {
                        " (this rank holds none and runs one image at a weight of zero: a \
                         batch norm without --sync-bn needs two; choose a --batch-size whose \
                         last global batch leaves every rank two or more, add --sync-bn, or \
                         add --drop-last)"
                    }
                    (_, true) => {
                        " (one image on this rank: a batch norm without --sync-bn needs two; \
                         choose a --batch-size whose last global batch leaves every rank two \
                         or more, add --sync-bn, or add --drop-last)"
                    }
                    _ => "",
                };
                anyhow::Error::from(e).context(format!(
                    "the forward pass of training batch {}/{batches} ({n} of its {global} \
                     images on this rank){hint}",
                    b + 1
                ))
            })?;
            let loss = cross_entropy(&logits, &labels, step.label_smoothing)?;
            // This rank's part of the global batch's mean loss; its gradient is summed below.
            // Nothing is read to the host before the waited sum: on a GPU such a read would
            // wait for `--sync-bn`'s reductions unwatched (the sum's wait, watched, covers them).
            let local_loss = loss.affine(share, 0.0)?;
            let mut grads = local_loss.backward()?;
            let mut parts = Vec::with_capacity(trainable.len() + 1);
            for (_, v) in trainable {
                parts.push(match grads.get(v.as_tensor()) {
                    Some(g) => g.to_dtype(DType::F32)?.flatten_all()?,
                    None => Tensor::zeros(v.elem_count(), DType::F32, v.device())?,
                });
            }
            // A rank without samples adds 0 (or NaN, for a non-finite loss of the sample it
            // ran at a weight of zero: the job stops as for any non-finite loss).
            parts.push(stop_requests);
            parts.push(local_loss.to_dtype(DType::F32)?.reshape(1)?);
            let summed = all_reduce_waited(&Tensor::cat(&parts, 0)?)?;
            let total = summed.elem_count();
            let tail = summed.narrow(0, total - 3, 3)?.to_vec1::<f32>()?;
            let global_loss = f64::from(tail[2]);
            if !global_loss.is_finite() {
                return Err(non_finite_loss(global_loss, epoch, b, batches));
            }
            let stop = crate::interrupt::agreed([tail[0], tail[1]]);
            let mut at = 0;
            for (_, v) in trainable {
                let len = v.elem_count();
                let g = summed
                    .narrow(0, at, len)?
                    .reshape(v.shape())?
                    .to_dtype(v.dtype())?;
                grads.insert(v.as_tensor(), g);
                at += len;
            }
            step.optimizer.step(&grads)?;
            batch_losses.push(global_loss);
            batch_times.push(crate::engine::unix_seconds());
            if n > 0 {
                tally.add(&loss, &logits, &labels, &batch.indices)?;
            }
            progress.batch(loader.global_len(b));
            if progress.due() {
                tally.read()?;
                progress.show(global_loss, tally.metrics().accuracy());
            }
            stop?;
        }
        Ok(())
    })();
    if let Some(previous) = previous {
        layers::set_stats_sync(previous);
    }
    result?;
    progress.finish();
    broadcast_weights(store)?;
    broadcast_dropout_generator();
    let counted = tally.finish()?;
    Ok(Pass {
        metrics: reduce_metrics(&counted.metrics)?,
        predictions: counted.predictions,
        last_lr: Some(last_lr),
        batch_losses,
        batch_times,
    })
}

/// Evaluates this rank's share `loader` (from [`shard`]) and reduces the result: the metrics
/// and the predictions (in the whole test set's order) of every rank, on every rank.
///
/// Errors: a batch, the model or the transport failed.
pub fn evaluate(
    model: &dyn ModuleT,
    loader: &Sharded<'_>,
    device: &Device,
    num_classes: usize,
    label_smoothing: f64,
    label: String,
) -> Result<Pass> {
    let mut tally = Tally::new(
        num_classes,
        device,
        loader.num_batches(),
        loader.num_samples(),
    )?;
    let _no_grad = layers::no_grad();
    // A Ctrl-C or SIGTERM stops the run at the next epoch's first batch, this one saved.
    let _testing = crate::interrupt::testing();
    let mut positions = Vec::new();
    let mut progress = Progress::start(label, loader.num_batches());
    for (b, batch) in loader.batches(0).enumerate() {
        let batch = batch?;
        let n = batch.indices.len();
        if n > 0 {
            let images = batch.images.to_device(device)?;
            let labels = batch.labels.to_device(device)?;
            let logits = model.forward_t(&images, false)?;
            let loss = cross_entropy(&logits, &labels, label_smoothing)?;
            tally.add(&loss, &logits, &labels, &batch.indices)?;
            let first = b * loader.global + loader.slice(loader.global_len(b)).0;
            positions.extend(first..first + n);
        }
        progress.batch(loader.global_len(b));
        if progress.due() {
            tally.read()?;
            progress.show(tally.metrics().loss(), tally.metrics().accuracy());
        }
    }
    progress.finish();
    let Counted {
        metrics,
        predictions,
        ..
    } = tally.finish()?;
    // Every sample's (index, class) at its place in the global order, summed over the ranks.
    let total = loader.num_samples();
    let mut dense = vec![0f64; 2 * total];
    for (&p, &(index, class)) in positions.iter().zip(&predictions) {
        dense[2 * p] = index as f64;
        dense[2 * p + 1] = class as f64;
    }
    let dense = match context() {
        Some(c) => c.sum_f64(&dense),
        None => dense,
    };
    let predictions = dense
        .chunks(2)
        .map(|pair| (pair[0] as usize, pair[1] as usize))
        .collect();
    Ok(Pass {
        metrics: reduce_metrics(&metrics)?,
        predictions,
        last_lr: None,
        batch_losses: Vec::new(),
        batch_times: Vec::new(),
    })
}

/// The metrics of every rank added up.
fn reduce_metrics(local: &Metrics) -> Result<Metrics> {
    let Some(context) = context() else {
        return Ok(local.clone());
    };
    Metrics::from_sums(local.confusion().len(), &context.sum_f64(&local.sums()))
}

#[cfg(feature = "nccl")]
mod nccl {
    //! NCCL's all-reduce of CUDA tensors, as a Candle op on the tensor's stream.

    use anyhow::{anyhow, Result};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
    use candle_core::{
        CpuStorage, CudaDevice, CudaStorage, CustomOp1, DType, Layout, Shape, Tensor,
    };
    use mpi::traits::{Communicator, Root};

    /// One communicator over the job's ranks, on this rank's GPU.
    pub struct Nccl {
        comm: Comm,
    }

    impl Nccl {
        /// NCCL's unique id made on rank 0 and broadcast over MPI, then `ncclCommInitRank`.
        pub fn new(
            device: &CudaDevice,
            rank: super::Rank,
            comm: &mpi::topology::SimpleCommunicator,
        ) -> Result<Self> {
            let mut id = [0 as std::ffi::c_char; 128];
            if rank.rank == 0 {
                id = *Id::new()
                    .map_err(|e| anyhow!("NCCL cannot make its unique id: {e:?}"))?
                    .internal();
            }
            comm.process_at_rank(0).broadcast_into(&mut id[..]);
            let comm = Comm::from_rank(device.cuda_stream(), rank.rank, rank.size, Id::uninit(id))
                .map_err(|e| {
                    anyhow!(
                        "NCCL cannot start rank {} of {} on GPU {}: {e:?}",
                        rank.rank,
                        rank.size,
                        device.cuda_stream().context().ordinal()
                    )
                })?;
            Ok(Self { comm })
        }

        /// The sum over the ranks of `t` (f32, converted otherwise), a new tensor.
        pub fn all_reduce(&self, t: &Tensor) -> Result<Tensor> {
            let dtype = t.dtype();
            let x = t.to_dtype(DType::F32)?.contiguous()?;
            Ok(x.apply_op1_no_bwd(&AllReduce(&self.comm))?
                .to_dtype(dtype)?)
        }
    }

    struct AllReduce<'a>(&'a Comm);

    impl CustomOp1 for AllReduce<'_> {
        fn name(&self) -> &'static str {
            "nccl-all-reduce"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("NCCL all-reduces CUDA tensors only")
        }

        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let n = l.shape().elem_count();
            let device = s.device().clone();
            let src = s.as_cuda_slice::<f32>()?;
            let src = src.slice(l.start_offset()..l.start_offset() + n);
            let mut dst = device.alloc_zeros::<f32>(n)?;
            self.0
                .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
            Ok((CudaStorage::wrap_cuda_slice(dst, device), l.shape().clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each rank takes the GPU of its local rank, or the only one it sees (one GPU a task).
    #[test]
    fn a_rank_takes_its_local_ranks_gpu_or_the_only_one_it_sees() {
        assert_eq!(gpu_of(3, Some(8)), 3);
        assert_eq!(gpu_of(3, Some(1)), 0);
        assert_eq!(gpu_of(0, Some(1)), 0);
        assert_eq!(gpu_of(2, None), 2);
        // Fewer GPUs than local ranks: the rank's own number, which the device refuses.
        assert_eq!(gpu_of(3, Some(2)), 3);
    }

    /// The first thing missing is said first: the feature in a build without it, else the
    /// launcher.
    #[test]
    fn distributed_on_alone_says_what_is_missing() {
        if launcher().is_some() {
            return;
        }
        let args = DistributedArgs {
            distributed: Some(Mode::On),
            ..DistributedArgs::default()
        };
        let err = launch(&args, || Ok(())).unwrap_err().to_string();
        let expected = match cfg!(feature = "mpi") {
            true => "no MPI launcher started this process",
            false => "built without MPI (data-parallel jobs); rebuild it with `--features mpi`",
        };
        assert!(err.contains(expected), "{err}");
        // An evaluation says so.
        let err = launch_job(Job::Evaluation, &args, || Ok(()))
            .unwrap_err()
            .to_string();
        if cfg!(feature = "mpi") {
            assert!(
                err.contains("leave out --distributed to evaluate in one process"),
                "{err}"
            );
        } else {
            assert!(err.contains(expected), "{err}");
        }
    }

    struct Keys(usize);

    impl BatchSource for Keys {
        fn num_batches(&self) -> usize {
            self.0
        }
        fn num_samples(&self) -> usize {
            self.0
        }
        fn order(&self, _: usize) -> Vec<usize> {
            (0..self.0).rev().collect()
        }
        fn batches_of(
            &self,
            _: usize,
            groups: Vec<Vec<usize>>,
        ) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
            Box::new(groups.into_iter().map(|g| {
                Ok(Batch {
                    images: Tensor::zeros((g.len(), 1), DType::F32, &Device::Cpu)?,
                    labels: Tensor::zeros(g.len(), DType::U32, &Device::Cpu)?,
                    indices: g,
                })
            }))
        }
        fn batches(&self, _: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
            unreachable!("sharding reads order and batches_of")
        }
    }

    fn shares(n: usize, batch: usize, size: usize, drop_last: bool) -> Vec<Vec<Vec<usize>>> {
        let keys = Keys(n);
        (0..size)
            .map(|rank| {
                let s = Sharded {
                    inner: &keys,
                    rank: Rank { rank, size },
                    global: batch * size,
                    drop_last,
                };
                s.batches(0)
                    .map(|b| b.map(|b| b.indices))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()
            .unwrap_or_default()
    }

    #[test]
    fn every_sample_once_in_global_batch_order() {
        // 11 samples, 2 per rank, 2 ranks: global batches of 4, the last one of 3 split 2 + 1.
        let s = shares(11, 2, 2, false);
        assert_eq!(s[0], [vec![10, 9], vec![6, 5], vec![2, 1]]);
        assert_eq!(s[1], [vec![8, 7], vec![4, 3], vec![0]]);
        // The last global batch of one sample: rank 1 runs the step with no sample.
        let s = shares(5, 2, 2, false);
        assert_eq!(s[1], [vec![2, 1], vec![]]);
        assert_eq!(s[0], [vec![4, 3], vec![0]]);
        // --drop-last drops the partial global batch.
        let s = shares(11, 2, 2, true);
        assert_eq!(s[0].len(), 2);
        assert_eq!(s[1], [vec![8, 7], vec![4, 3]]);
    }
}
