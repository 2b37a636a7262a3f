//! The output directory of a run (`--out`): checked and locked before any data is loaded, held
//! by one run at a time, never silently taken over from a finished run, and cleaned of the
//! temporary files a killed run left behind. A run that `--overwrite` replaces is moved aside
//! (into [`REPLACED`]) and only removed once the new run has saved its first epoch; if the new
//! run stops before that, the replaced run is put back.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use anyhow::{bail, Context, Result};

/// The lock file inside a run directory; a run holds an exclusive lock on it while it lives.
pub const LOCK: &str = ".lock";
/// The run's configuration, written when it starts.
pub const CONFIG: &str = "config.json";
/// The resumable state (see [`crate::state`]).
pub const STATE: &str = "state.safetensors";
/// The JSON file that held the non-tensor half of the state before it moved into
/// [`STATE`]'s metadata; still read from runs saved that way.
pub const LEGACY_STATE_JSON: &str = "state.json";
/// The weights with the best test accuracy.
pub const BEST: &str = "best.safetensors";
/// The weights after the last finished epoch.
pub const LAST: &str = "last.safetensors";
/// The class names in label order (a JSON list), for `evaluate` and `predict`.
pub const CLASSES: &str = "classes.json";
/// One line per epoch: losses, accuracies, learning rate, seconds.
pub const METRICS_CSV: &str = "metrics.csv";
/// The same records as [`METRICS_CSV`], as JSON.
pub const METRICS_JSON: &str = "metrics.json";
/// Loss and accuracy curves.
pub const CURVES: &str = "curves.png";
/// A grid of test images with their true and predicted classes.
pub const PREDICTIONS: &str = "predictions.png";
/// The test split's confusion matrix.
pub const CONFUSION: &str = "confusion.png";
/// How TensorBoard event files begin (`events.out.tfevents.<seconds>.<host>.<pid>`).
pub const EVENTS_PREFIX: &str = "events.out.tfevents.";
/// `finetune-resnet50`'s fine-tuning settings (weights, unfrozen stages, image size).
pub const FINETUNE: &str = "finetune.json";
/// The folder inside a run directory where `--overwrite` keeps the run it replaces until the
/// new run has saved its first epoch.
pub const REPLACED: &str = "replaced-run";
/// [`REPLACED`] while `--overwrite` moves the old run's files into it.
const MOVING_ASIDE: &str = "replaced-run.moving";
/// [`REPLACED`] while the old run's files move back.
const MOVING_BACK: &str = "replaced-run.returning";
/// The file that marks those folders as `--overwrite`'s.
const MARK: &str = ".made-by-overwrite";

/// What a training program leaves in its run directory after an epoch, besides [`CLASSES`] and
/// [`FINETUNE`] (written before training) and TensorBoard's event files ([`EVENTS_PREFIX`]).
pub const OUTPUTS: [&str; 9] = [
    BEST,
    LAST,
    STATE,
    METRICS_CSV,
    METRICS_JSON,
    CONFIG,
    CURVES,
    PREDICTIONS,
    CONFUSION,
];

/// `evaluate`'s confusion matrix of the `best` or `last` weights (`best-f32` and the like when
/// evaluated in another precision than the run's, then `-test-all` or `-test<N>` with another
/// `--limit-test`, then `-data-<name>` with another `--data-dir`; a checkpoint file given by
/// its path is named by its stem, `<folder>-<stem>` outside the run directory).
pub fn evaluated_confusion(weights: &str) -> String {
    format!("confusion-{weights}.png")
}

/// `evaluate`'s JSON summary, tagged as [`evaluated_confusion`] is.
pub fn evaluation_summary(weights: &str) -> String {
    format!("evaluation-{weights}.json")
}

/// `evaluate`'s answer for each test image ([`crate::per_image`]), tagged as
/// [`evaluated_confusion`] is.
pub fn evaluated_predictions(weights: &str) -> String {
    format!("predictions-{weights}.csv")
}

/// Files whose presence means the directory already holds a run.
const RUN_FILES: [&str; 5] = [STATE, LEGACY_STATE_JSON, BEST, LAST, CONFIG];

/// Refuses a run directory where a file the run writes ([`OUTPUTS`] after each epoch,
/// [`CLASSES`] and [`FINETUNE`] at its start) is something else (a directory, a pipe, a link to
/// a device): a resumed run would train an epoch and then fail to save it.
///
/// # Errors
/// The first such path, named with what it is.
pub fn check_outputs_are_files(dir: &Path) -> Result<()> {
    for name in OUTPUTS.iter().chain(&[CLASSES, FINETUNE]) {
        let path = dir.join(name);
        match layers::file::regular(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => bail!(
                "{e}; the run writes {name} there: put the run's file back, or take this away"
            ),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot read {}", path.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `path` is a run's folder as a reader takes it: a directory holding the run's
/// [`CONFIG`] or [`STATE`] (for the hints to a folder given where it does not go).
pub fn is_run_folder(path: &Path) -> bool {
    path.is_dir() && (path.join(CONFIG).is_file() || path.join(STATE).is_file())
}

/// Whether `dir` holds a run's files (its state, a checkpoint or its configuration).
pub fn holds_run(dir: &Path) -> bool {
    RUN_FILES.iter().any(|f| dir.join(f).exists())
}

/// Whether `name` is a file a run, or `evaluate` on it, writes into the run directory: what
/// `--overwrite` moves aside, so that nothing of the old run mixes with the new one.
fn is_run_output(name: &str) -> bool {
    let named = [
        STATE,
        LEGACY_STATE_JSON,
        BEST,
        LAST,
        CONFIG,
        CLASSES,
        METRICS_CSV,
        METRICS_JSON,
        CURVES,
        PREDICTIONS,
        CONFUSION,
        FINETUNE,
    ];
    named.contains(&name) || name.starts_with(EVENTS_PREFIX) || is_evaluation_output(name)
}

/// Whether `name` is `evaluate`'s output for the run's `best` or `last` weights (see
/// [`evaluated_checkpoint`]).
fn is_evaluation_output(name: &str) -> bool {
    evaluated_checkpoint(name).is_some()
}

/// Removes `evaluate`'s outputs for the run's checkpoint `weights` (`best` or `last`) from
/// `dir`, once the run has replaced that checkpoint: they described weights that are gone.
/// Only an `evaluation-<tag>.json` that records that checkpoint of this directory as the one
/// evaluated (its `checkpoint`, or in older outputs its `weights` path, read from here) goes,
/// with its `confusion-<tag>.png` and `predictions-<tag>.csv`; files that only look like them
/// (a user's, or the outputs of another checkpoint file) stay. Said on stdout, naming them; a
/// file that cannot be removed is said on stderr.
pub(crate) fn remove_evaluations_of(dir: &Path, weights: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let checkpoint = format!("{weights}.safetensors");
    let here = std::fs::canonicalize(dir).ok();
    let evaluated_here = |path: &Path| -> bool {
        let Ok(bytes) = layers::file::read(path) else {
            return false;
        };
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return false;
        };
        // Written beside the run's checkpoint, which `evaluate` records (wherever it ran).
        if let Some(evaluated) = json.get("checkpoint") {
            return evaluated.as_str() == Some(weights);
        }
        // Outputs of older versions: the recorded path, from here.
        let Some(file) = json.get("weights").and_then(|w| w.as_str()).map(Path::new) else {
            return false;
        };
        let folder = match file.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => return false,
        };
        file.file_name().is_some_and(|n| n == checkpoint.as_str())
            && here.is_some()
            && std::fs::canonicalize(folder).ok() == here
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(tag) = name
            .strip_prefix("evaluation-")
            .and_then(|t| t.strip_suffix(".json"))
        else {
            continue;
        };
        if evaluated_checkpoint(&name) != Some(weights)
            || !entry.file_type().is_ok_and(|t| t.is_file())
            || !evaluated_here(&entry.path())
        {
            continue;
        }
        let picture = dir.join(evaluated_confusion(tag));
        let table = dir.join(evaluated_predictions(tag));
        for path in [entry.path(), picture, table] {
            if !path.is_file() {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(
                    path.file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                ),
                Err(e) => crate::warn!(
                    "cannot remove {}, which evaluated the {weights} weights this run replaced: \
                     {e}",
                    path.display()
                ),
            }
        }
    }
    if !removed.is_empty() {
        removed.sort();
        crate::say!(
            "removed {} in {}: they evaluated weights the run has replaced in {checkpoint}",
            removed.join(", "),
            dir.display()
        );
    }
}

/// The checkpoint (`best` or `last`) whose `evaluate` output `name` is, if it is one:
/// `confusion-<tag>.png`, `evaluation-<tag>.json` or `predictions-<tag>.csv`, the tag `best`
/// or `last`, then `-<precision>` in another precision than the run's, then `-test-all` or
/// `-test<N>` with another `--limit-test` than the run's, then `-data-<name>` for another
/// `--data-dir`.
pub(crate) fn evaluated_checkpoint(name: &str) -> Option<&'static str> {
    let tagged = |prefix: &str, suffix: &str| {
        name.strip_prefix(prefix)
            .and_then(|t| t.strip_suffix(suffix))
    };
    let tag = tagged("confusion-", ".png")
        .or_else(|| tagged("evaluation-", ".json"))
        .or_else(|| tagged("predictions-", ".csv"))?;
    let tag = match tag.split_once("-data-") {
        Some((head, name)) if !name.is_empty() => head,
        _ => tag,
    };
    let tag = match tag.rsplit_once("-test") {
        Some((head, "-all")) => head,
        Some((head, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => tag,
    };
    let precisions = <crate::config::Precision as clap::ValueEnum>::value_variants();
    ["best", "last"].into_iter().find(|w| {
        tag == *w
            || precisions
                .iter()
                .any(|p| tag == format!("{w}-{}", crate::flags::FlagText::flag_text(p)))
    })
}

/// The run's files in `dir` (see [`is_run_output`]).
fn run_outputs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        // Files and links to them (a link moves as the link); never a folder.
        if is_run_output(&entry.file_name().to_string_lossy()) && !entry.file_type()?.is_dir() {
            found.push(entry.path());
        }
    }
    Ok(found)
}

/// Moves `from` to `to` (one file system: a rename).
fn move_file(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))
}

/// Whether `dir` holds a run of ours that stopped before saving its first epoch: its
/// [`CONFIG`] is a run configuration, and there is no state, checkpoint or metrics (written
/// after the state) of any kind, not even a link.
fn saved_no_epoch(dir: &Path) -> bool {
    let none = [
        STATE,
        LEGACY_STATE_JSON,
        BEST,
        LAST,
        METRICS_CSV,
        METRICS_JSON,
    ]
    .iter()
    .all(|f| std::fs::symlink_metadata(dir.join(f)).is_err());
    none && layers::file::read(&dir.join(CONFIG))
        .is_ok_and(|text| serde_json::from_slice::<crate::config::RunConfig>(&text).is_ok())
}

/// Removes the old run that a new one replaced once it has saved an epoch. Best effort: the old
/// run is no longer needed, so a failure (a file still open over NFS) is said and left.
fn remove_replaced(aside: &Path) {
    if let Err(e) = std::fs::remove_dir_all(aside) {
        crate::warn!(
            "cannot remove the replaced run in {} ({e}); it is no longer needed: delete it when you like",
            aside.display()
        );
    }
}

/// Whether `folder` is one of ours (it holds [`MARK`]), not a user's folder of the same name.
fn ours(folder: &Path) -> bool {
    folder.join(MARK).is_file()
}

/// Whether the run in `dir` has saved an epoch: its own [`STATE`], a file (written by
/// renaming a temporary over it, so never a link).
fn saved_an_epoch(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(STATE)).is_ok_and(|m| m.is_file())
}

/// Ends the replacement of a run that `--overwrite` moved into `dir`'s [`REPLACED`] folder, if
/// there is one: removes the old run once the new one has saved an epoch (its [`STATE`]), and
/// otherwise removes what the new run wrote and puts the old run back. Each step can be
/// interrupted (a kill) and is finished by the next call: the old run's files move aside
/// through [`MOVING_ASIDE`] and back through [`MOVING_BACK`], each renamed whole. Folders of
/// these names without our [`MARK`] are the user's and left alone.
fn settle(dir: &Path) -> Result<()> {
    // A kill between making one of these folders and marking it (or between unmarking and
    // removing it) leaves it empty: remove_dir removes only an empty one.
    for name in [MOVING_ASIDE, REPLACED, MOVING_BACK] {
        if !ours(&dir.join(name)) {
            let _ = std::fs::remove_dir(dir.join(name));
        }
    }
    // Moving aside was interrupted: the new run never started.
    let moving = dir.join(MOVING_ASIDE);
    if ours(&moving) {
        move_back(&moving, dir)?;
    }
    let aside = dir.join(REPLACED);
    let back = dir.join(MOVING_BACK);
    if ours(&aside) {
        if saved_an_epoch(dir) {
            remove_replaced(&aside);
            return Ok(());
        }
        // What is beside it is the new run's.
        for file in run_outputs(dir)? {
            std::fs::remove_file(&file)
                .with_context(|| format!("cannot remove {}", file.display()))?;
        }
        move_file(&aside, &back)?;
    }
    if ours(&back) {
        move_back(&back, dir)?;
        crate::warn!(
            "the run that was to replace the one in {} stopped before saving an epoch: the replaced run is back in place",
            dir.display()
        );
    }
    Ok(())
}

/// Moves the run's files in our folder `from` back into `dir`, then removes the folder (its
/// mark last).
fn move_back(from: &Path, dir: &Path) -> Result<()> {
    let entries =
        std::fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", from.display()))?;
        if entry.file_name() != MARK {
            move_file(&entry.path(), &dir.join(entry.file_name()))?;
        }
    }
    std::fs::remove_file(from.join(MARK))
        .and_then(|()| std::fs::remove_dir(from))
        .with_context(|| format!("cannot remove {}", from.display()))
}

/// Removes the run that `--overwrite` set aside in `dir` once the new run has saved an epoch:
/// called by the epoch writer after each resume state, so that the old run goes with the
/// first one. Nothing to do otherwise.
pub(crate) fn forget_replaced(dir: &Path) {
    let aside = dir.join(REPLACED);
    // Not while a Ctrl-C tidies the directory (which may be settling the same folder).
    let _not_while_tidying = no_tidying();
    if ours(&aside) && saved_an_epoch(dir) {
        remove_replaced(&aside);
    }
}

/// Before `evaluate`, `predict` or `grad-cam` read the run in `dir`: when an `--overwrite`
/// there was interrupted (Ctrl-C, a kill) before the new run saved an epoch, and no run holds
/// the directory, puts the replaced run back (as the next run to lock it would), so that what
/// is read is the old run, whole. When the new run was killed after saving its first epoch, the
/// replaced run it had not removed yet goes, as the next run would remove it. In every case,
/// with no run holding the directory, the temporaries killed processes left (a run's, an
/// `evaluate`'s: those of processes that are gone) and emptied `--overwrite` folders go too.
/// Nothing to do for a directory without any of these.
///
/// Errors: a live run started with `--overwrite` holds `dir` and has not saved an epoch (the
/// files beside its `replaced-run` are then the new run's, incomplete; the error names the
/// folder holding the old run), or putting the old run back fails.
pub fn settle_for_reading(dir: &Path) -> Result<()> {
    let pending = |dir: &Path| {
        ours(&dir.join(MOVING_ASIDE))
            || (ours(&dir.join(REPLACED)) && !saved_an_epoch(dir))
            || ours(&dir.join(MOVING_BACK))
    };
    // The new run saved an epoch but was killed before it removed the old one.
    let replaced_left = |dir: &Path| ours(&dir.join(REPLACED)) && saved_an_epoch(dir);
    if !pending(dir) && !replaced_left(dir) && !leftovers(dir) {
        return Ok(());
    }
    let lock_path = dir.join(LOCK);
    let lock = loop {
        let lock = match open_lock(&lock_path, true) {
            Ok(lock) => lock,
            // Something there that is no lock file (a pipe, a directory): named as such.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                return Err(e).with_context(|| format!("--run {}", dir.display()))
            }
            // Only the finished replacement's old run left: the run is whole, read as it is.
            Err(_) if !pending(dir) => return Ok(()),
            Err(_) => bail!(
                "--run {}: an interrupted --overwrite left the run there half replaced, and the \
                 directory is not writable to put it back; the replaced run is in {}",
                dir.display(),
                dir.join(REPLACED).display()
            ),
        };
        // As `RunDir::lock`: a lock file unlinked meanwhile is not the directory's lock.
        match lock.try_lock() {
            Ok(()) if !same_file(&lock, &lock_path) => continue,
            locked => break (lock, locked),
        }
    };
    let (_lock, locked) = lock;
    match locked {
        Ok(()) => {
            let left = replaced_left(dir);
            settle(dir)?;
            if left && !dir.join(REPLACED).exists() {
                crate::warn!(
                    "removed {}: the run that replaced it in {} had saved its first epoch",
                    dir.join(REPLACED).display(),
                    dir.display()
                );
            }
            // Best effort: what is read is whole without it.
            if let Err(e) = remove_temporaries(dir) {
                crate::warn!(
                    "{e:#}; the leftover stays until the next run in {}",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(TryLockError::WouldBlock) if pending(dir) => bail!(
            "--run {}: a run started there with --overwrite is still training and has not saved \
             its first epoch; until it does, the run it replaces is in {} (give that as --run, \
             with --out elsewhere for evaluate's outputs: that folder goes with the first epoch)",
            dir.display(),
            dir.join(REPLACED).display()
        ),
        Err(TryLockError::WouldBlock) => Ok(()),
        Err(TryLockError::Error(_)) if !pending(dir) => Ok(()),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
        }
    }
}

/// Whether `dir` holds what a killed process may have left and the next run would remove: a
/// temporary of a run's file (of a dead writer or not: [`remove_temporaries`] tells), or one of
/// the `--overwrite` folders without our mark (emptied, or made and killed before marking).
fn leftovers(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        is_temporary(&name)
            || ([MOVING_ASIDE, REPLACED, MOVING_BACK].contains(&&*name) && !ours(&entry.path()))
    })
}

/// The lock files this process holds, one per run directory (its device and inode): what the
/// directory's `.lock` must still be when a file is written there ([`check_lock`]).
static LOCKS: Mutex<Vec<HeldLock>> = Mutex::new(Vec::new());

struct HeldLock {
    dir: (u64, u64),
    path: PathBuf,
    /// The lock file locked (device, inode): the lock itself stays with the [`RunDir`].
    locked: (u64, u64),
    /// A lock file made and locked again by [`check_lock`], held until the run ends.
    again: Option<File>,
    /// Whether a file has been written into the directory under this lock ([`check_lock`]
    /// passed): a process that made the lock file and wrote nothing (refused, say) takes the
    /// file away when it ends, so that it is not read as another run's.
    wrote: bool,
}

/// A path's (device, inode).
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
}

fn locks() -> MutexGuard<'static, Vec<HeldLock>> {
    LOCKS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Before a file is renamed into `dir` ([`crate::atomic`]): where this process holds `dir`'s
/// lock, its `.lock` must still be the file locked. One removed meanwhile (by hand, taken for a
/// stale lock) would let another run start there and mix its files with this one's: it is
/// made and locked again, with a warning. Another file there is another run's lock (the run
/// may have finished since): this run writes no more there.
///
/// # Errors
/// Another run holds `dir`'s lock now (this run then stops without writing there), or the
/// lock file cannot be made again.
pub(crate) fn check_lock(dir: &Path) -> Result<()> {
    let mut held = locks();
    let Some(id) = file_id(dir) else {
        return Ok(());
    };
    let Some(entry) = held.iter_mut().rev().find(|h| h.dir == id) else {
        return Ok(());
    };
    let mut now = file_id(&entry.path);
    // Another process's lock file there, still locked: one that may be about to end having
    // written nothing (a command refused for this very run's files, which made the lock file
    // after it was removed by hand, and takes it away when it ends); waited for as a run
    // waits for a lock, as long as it stays locked.
    let waited = std::time::Instant::now();
    while now.is_some_and(|n| n != entry.locked)
        && held_by_another(&entry.path)
        && waited.elapsed() < LOCK_WAIT
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
        now = file_id(&entry.path);
    }
    if now == Some(entry.locked) {
        entry.wrote = true;
        return Ok(());
    }
    let gone = format!(
        "{} was removed or replaced while this run held {}",
        entry.path.display(),
        dir.display()
    );
    // Another lock file there was made by another run (which may have ended since, its files
    // written): this run's next writes would mix with them.
    let taken = format!(
        "{gone}, and another run has taken the folder since: this run stops without writing \
         there again, so as not to mix its files with the other run's (a live run's .lock is \
         not stale: leave it)"
    );
    if now.is_some() {
        return Err(FolderTaken(taken).into());
    }
    let again = open_lock(&entry.path, true)
        .with_context(|| format!("{gone}, and cannot be made again"))?;
    match again.try_lock() {
        Ok(()) if same_file(&again, &entry.path) => {
            crate::warn!("{gone}: it is locked again (a live run's lock is not stale: leave it)");
            if let Some(id) = file_id(&entry.path) {
                entry.locked = id;
            }
            entry.again = Some(again);
            entry.wrote = true;
            Ok(())
        }
        Ok(()) | Err(TryLockError::WouldBlock) => Err(FolderTaken(taken).into()),
        Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("{gone}; cannot lock it")),
    }
}

/// `check_lock`'s error when another run has taken the folder: what the run stops on, with no
/// advice to resume there (the folder is the other run's).
#[derive(Debug)]
pub struct FolderTaken(String);

impl std::fmt::Display for FolderTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FolderTaken {}

/// The folder a file is written into: `path`'s parent, `.` for a bare file name.
pub(crate) fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Whether another run has made `dir`'s `.lock` since this process locked it (see
/// [`check_lock`]): the folder is no longer this run's to tidy.
fn taken_by_another(dir: &Path) -> bool {
    let held = locks();
    file_id(dir)
        .and_then(|id| held.iter().rev().find(|h| h.dir == id))
        .is_some_and(|h| file_id(&h.path).is_some_and(|now| now != h.locked))
}

/// Whether the open file `file` is the one `path` names now (not unlinked or replaced since).
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Opens the lock file `path` (for writing, made if missing, with `make`; else for reading). A
/// path there that is not a regular file (a named pipe, a device, a directory) is refused,
/// naming it, rather than waited on: no run makes one.
fn open_lock(path: &Path, make: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match layers::file::regular(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = File::options();
    match make {
        true => options.create(true).truncate(false).write(true),
        false => options.read(true),
    };
    // Never waits, even on a pipe put there after the check.
    options.custom_flags(libc::O_NONBLOCK).open(path)
}

/// Whether a live run holds `dir`'s lock (a run starting, training, or resuming there): what a
/// reader says when the files it needs are not there yet. Best effort: `false` when unsure.
pub fn in_use(dir: &Path) -> bool {
    held_by_another(&dir.join(LOCK))
}

/// Whether another process holds the lock file `path` locked now. Best effort: `false` when
/// unsure.
fn held_by_another(path: &Path) -> bool {
    open_lock(path, false)
        .is_ok_and(|lock| matches!(lock.try_lock(), Err(TryLockError::WouldBlock)))
}

/// Whether this process has written a file into `dir` under its lock ([`HeldLock::wrote`]).
fn wrote_into(dir: &Path) -> bool {
    let held = locks();
    file_id(dir)
        .and_then(|id| held.iter().rev().find(|h| h.dir == id))
        .is_some_and(|h| h.wrote)
}

/// How long a run tries again for a run directory's lock another process holds before it is
/// refused as in use (see [`RunDir::lock`]).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A locked run directory. The lock (an OS file lock, released by the kernel even when the
/// process is killed) lasts as long as this value.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    /// `None` on the data-parallel ranks that write nothing (rank 0 holds the lock).
    lock: Option<File>,
    /// Whether this run replaces one that `--overwrite` moved into [`REPLACED`].
    replacing: bool,
    /// Whether this run made the directory: removed again if the run stops before writing
    /// anything but its configuration.
    created: bool,
    /// The folders above the directory that this run made with it (`runs/` for the default
    /// `--out`), innermost first: removed after it, each while it is empty.
    made_parents: Vec<PathBuf>,
    /// Whether this run made the lock file in a directory it did not make: removed again if
    /// the directory holds no saved epoch when the run ends (a failed start in a folder of the
    /// user's takes its lock file back; files a run wrote once training began stay).
    made_lock: bool,
    /// Whether it is noted in [`HELD`] (for a Ctrl-C outside the epochs).
    noted: bool,
}

impl RunDir {
    /// Creates `path` (if needed) for a fresh run and locks it.
    ///
    /// Errors: the directory cannot be created or written, another run holds it, or it already
    /// holds a run that saved an epoch (its `state.safetensors` or checkpoints) and `overwrite`
    /// is false. A run that saved none (only its `config.json`) is replaced without asking.
    /// With `overwrite`, the old run's files move into [`REPLACED`]: removed once this
    /// run has saved its first epoch (when this value is dropped, or by the next run to lock
    /// the directory if this process is killed), put back if it stops before that.
    pub fn fresh(path: &Path, overwrite: bool) -> Result<Self> {
        let mut noting = noted();
        let created = std::fs::symlink_metadata(path).is_err();
        Self::fresh_noted(path, overwrite, created, Vec::new(), &mut noting)
    }

    /// [`RunDir::fresh`] in a new directory `runs/<program>-<time>` that this run makes
    /// ([`crate::cli::default_out`]: with `-2`, `-3`... when taken).
    pub(crate) fn fresh_default(program: &str, overwrite: bool) -> Result<Self> {
        let mut noting = noted();
        let (path, made_above) = crate::cli::default_out(program);
        Self::fresh_noted(&path, overwrite, true, made_above, &mut noting)
    }

    /// [`RunDir::fresh`] for a directory this run made (`created`) or not, while the caller
    /// holds [`HELD`] (`noting`), from before the directory is made until the run is noted
    /// there: a Ctrl-C meanwhile waits, and never tidies a half-made or half-moved run (see
    /// [`tidy_at_ctrl_c`]). A `RunDir` dropped by an error here is not noted yet, and tidies
    /// without taking the lock. `made_above`: folders above `path` that the caller made for it
    /// (innermost first), removed with it while empty.
    fn fresh_noted(
        path: &Path,
        overwrite: bool,
        created: bool,
        made_above: Vec<PathBuf>,
        noting: &mut Vec<Held>,
    ) -> Result<Self> {
        if !crate::distributed::writes() {
            return Ok(Self::unlocked(path));
        }
        if path.exists() && !path.is_dir() {
            bail!(
                "--out {}: a file, not a directory (--out names the run's directory)",
                path.display()
            );
        }
        refuse_dangling_link(path)?;
        let mut made_parents = match created {
            true => crate::cli::missing_parents(path),
            false => Vec::new(),
        };
        made_parents.extend(made_above);
        let locked = std::fs::create_dir_all(path)
            .with_context(|| format!("--out {}: cannot create the directory", path.display()))
            .and_then(|()| Self::lock(path));
        let mut dir = match locked {
            Ok(dir) => dir,
            Err(e) => {
                // Nothing of the run is there yet: what it made goes again, while empty.
                if created {
                    let _ = std::fs::remove_dir(path);
                }
                remove_empty(&made_parents);
                return Err(e);
            }
        };
        dir.created = created;
        dir.made_parents = made_parents;
        let held: Vec<&str> = RUN_FILES
            .into_iter()
            .filter(|f| path.join(f).exists())
            .collect();
        if !overwrite && saved_no_epoch(path) {
            // A run that stopped before saving its first epoch (an error, a NaN loss, a kill):
            // no weights, nothing to resume; this run takes its place.
            for file in run_outputs(path)? {
                std::fs::remove_file(&file)
                    .with_context(|| format!("cannot remove {}", file.display()))?;
            }
            crate::say!(
                "--out {}: the run there stopped before saving an epoch; this run replaces it",
                path.display()
            );
        } else if held.is_empty() && !overwrite {
            // No run here, but files a run writes after an epoch (a user's own metrics.csv,
            // say): this run would overwrite them. (The classes.json and finetune.json that a
            // run which failed before training left are ours, and simply replaced.)
            let theirs: Vec<&str> = OUTPUTS
                .iter()
                .copied()
                .filter(|f| std::fs::symlink_metadata(path.join(f)).is_ok_and(|m| !m.is_dir()))
                .collect();
            if !theirs.is_empty() {
                bail!(
                    "--out {} holds {}, which this run would overwrite; move them, choose another \
                     --out, or give --overwrite to replace them",
                    path.display(),
                    theirs.join(", ")
                );
            }
        } else if !held.is_empty() {
            if !overwrite {
                // The program that made it continues it (a train-mnist run, say, for a
                // train-cifar --out).
                let maker = layers::file::read(&path.join(CONFIG))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|c| c.get("program")?.as_str().map(|p| format!("{p} ")))
                    .unwrap_or_default();
                if (held.contains(&BEST) || held.contains(&LAST))
                    && !held.contains(&STATE)
                    && !held.contains(&LEGACY_STATE_JSON)
                {
                    bail!(
                        "--out {} already holds checkpoints ({}) but no {STATE}, so it cannot \
                         be resumed: replace them with --overwrite (they are moved aside), or \
                         choose another --out",
                        path.display(),
                        held.join(", ")
                    );
                }
                bail!(
                    "--out {} already holds a run ({}): continue it with {maker}--resume {}, or \
                     replace it with --overwrite, or choose another --out",
                    path.display(),
                    held.join(", "),
                    path.display()
                );
            }
            let (moving, aside) = (path.join(MOVING_ASIDE), path.join(REPLACED));
            for folder in [&moving, &aside, &path.join(MOVING_BACK)] {
                if std::fs::symlink_metadata(folder).is_ok() {
                    bail!(
                        "--overwrite: {} is in the way (it is not one this program made); move it \
                         elsewhere first",
                        folder.display()
                    );
                }
            }
            let move_aside = || -> Result<()> {
                std::fs::create_dir(&moving)
                    .with_context(|| format!("cannot create {}", moving.display()))?;
                std::fs::write(moving.join(MARK), b"")
                    .with_context(|| format!("cannot write in {}", moving.display()))?;
                for file in run_outputs(path)? {
                    let name = file.file_name().expect("a listed file has a name");
                    move_file(&file, &moving.join(name))?;
                }
                move_file(&moving, &aside)
            };
            if let Err(e) = move_aside() {
                // Whatever moved goes back; the error is the first one.
                let _ = settle(path);
                return Err(e.context("--overwrite"));
            }
            dir.replacing = true;
            crate::say!(
                "--overwrite: the run in {} moved to {}, to be deleted when this run saves its first epoch",
                path.display(),
                aside.display()
            );
        }
        if dir.replacing || dir.created || dir.made_lock {
            noting.push(Held {
                path: path.to_path_buf(),
                replacing: dir.replacing,
                created: dir.created,
                made_parents: dir.made_parents.clone(),
                made_lock: dir.made_lock,
            });
            dir.noted = true;
        }
        Ok(dir)
    }

    /// Locks the existing run directory `path`, to continue its run.
    ///
    /// Errors: `path` is not a directory, or another run holds it.
    pub fn existing(path: &Path) -> Result<Self> {
        if path.exists() && !path.is_dir() {
            bail!(
                "--resume {}: a file, not a run directory (give the directory that was --out)",
                path.display()
            );
        }
        if !path.is_dir() {
            bail!("--resume {}: no such run directory", path.display());
        }
        if !crate::distributed::writes() {
            // Rank 0 finishes an interrupted --overwrite (see `settle`) when it locks the
            // directory; the other ranks read the state once it has.
            let waited = std::time::Instant::now();
            // In the order a folder passes through them, so that one renamed meanwhile is
            // still seen.
            while ours(&path.join(MOVING_ASIDE))
                || (ours(&path.join(REPLACED)) && !saved_an_epoch(path))
                || ours(&path.join(MOVING_BACK))
            {
                if waited.elapsed() > std::time::Duration::from_secs(120) {
                    bail!(
                        "--resume {}: an interrupted --overwrite is still being undone there; \
                         run again",
                        path.display()
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            return Ok(Self::unlocked(path));
        }
        let dir = Self::lock(path)?;
        remove_empty_event_files(path);
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory of a data-parallel rank other than 0: read, never written or locked.
    fn unlocked(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            lock: None,
            replacing: false,
            created: false,
            made_parents: Vec::new(),
            made_lock: false,
            noted: false,
        }
    }

    fn lock(path: &Path) -> Result<Self> {
        let lock_path = path.join(LOCK);
        // A run that saved nothing removes the lock file it made (see `Held::end`), after
        // which another process may lock the unlinked file it had opened before: a lock is only
        // taken once the name still leads to the file locked, else the name is opened again.
        // A lock held by another process is tried again for up to `LOCK_WAIT`: `evaluate`,
        // `predict` and `grad-cam` hold it for the moments they tidy the run or write its
        // checkpoints from its state.
        let (waited, mut said) = (std::time::Instant::now(), false);
        let (lock, made_lock) = loop {
            let made_lock = std::fs::symlink_metadata(&lock_path).is_err();
            let lock = open_lock(&lock_path, true).map_err(|e| {
                let context = match e.kind() {
                    std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::ReadOnlyFilesystem => {
                        format!("{} is not writable", path.display())
                    }
                    _ => format!("cannot open the lock file {}", lock_path.display()),
                };
                anyhow::Error::new(e).context(context)
            })?;
            match lock.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) if waited.elapsed() < LOCK_WAIT => {
                    if !said {
                        said = true;
                        crate::warn!(
                            "note: {} is held by another process (it holds {}): trying again \
                             for {} s",
                            path.display(),
                            lock_path.display(),
                            LOCK_WAIT.as_secs()
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                }
                Err(TryLockError::WouldBlock) => bail!(
                    "{} is in use by another run (it holds {}); wait for it to finish or choose \
                     another --out",
                    path.display(),
                    lock_path.display()
                ),
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
                }
            }
            if same_file(&lock, &lock_path) {
                break (lock, made_lock);
            }
        };
        // Checked before each write into the directory (see `check_lock`).
        if let (Some(dir), Some(locked)) = (file_id(path), file_id(&lock_path)) {
            locks().push(HeldLock {
                dir,
                path: lock_path.clone(),
                locked,
                again: None,
                wrote: false,
            });
        }
        // Made before the tidying below, so that its drop takes back a lock file it made.
        let dir = Self {
            path: path.to_path_buf(),
            lock: Some(lock),
            replacing: false,
            created: false,
            made_parents: Vec::new(),
            made_lock,
            noted: false,
        };
        remove_temporaries(path)?;
        settle(path)?;
        Ok(dir)
    }
}

impl Drop for RunDir {
    /// Ends a replacement (see [`RunDir::fresh`]) while the lock is still held, and removes a
    /// directory this run made when it stopped before writing anything but its configuration
    /// (a bad flag, missing data), and the folders it made for it while they are empty: failed
    /// starts leave no empty run directories behind.
    fn drop(&mut self) {
        // The lock made again by `check_lock` is held until the tidying below is done; a folder
        // another run has taken since is not tidied (its files, its .lock are that run's).
        let taken = taken_by_another(&self.path);
        let release = |path: &Path| {
            if let Some(id) = file_id(path) {
                locks().retain(|h| h.dir != id);
            }
        };
        if taken || self.lock.is_none() || !(self.replacing || self.created || self.made_lock) {
            if taken && self.noted {
                noted().retain(|h| h.path != self.path);
            }
            release(&self.path);
            return;
        }
        // A lock file this process made and wrote nothing under (a run refused for the files
        // there, an `evaluate` that only read), still the one locked: taken away, so that a
        // live run whose lock file was removed by hand does not take it for another run's and
        // stop.
        let unused_lock = self.made_lock
            && !wrote_into(&self.path)
            && self
                .lock
                .as_ref()
                .is_some_and(|lock| same_file(lock, &self.path.join(LOCK)));
        // Unnoted: it failed while being made, and its maker holds the lock.
        let mut held = self.noted.then(noted);
        if let Some(held) = held.as_mut() {
            held.retain(|h| h.path != self.path);
        }
        let this = Held {
            path: self.path.clone(),
            replacing: self.replacing,
            created: self.created,
            made_parents: std::mem::take(&mut self.made_parents),
            made_lock: self.made_lock,
        };
        this.end();
        // Still the file locked (the tidying above removes none that another process made).
        let lock_path = self.path.join(LOCK);
        if unused_lock && self.lock.as_ref().is_some_and(|l| same_file(l, &lock_path)) {
            let _ = std::fs::remove_file(&lock_path);
        }
        drop(held);
        release(&self.path);
    }
}

/// A fresh run's directory that must be tidied when the run ends: a replacement to settle, or
/// a directory the run made, to remove if unused.
#[derive(Debug)]
pub(crate) struct Held {
    path: PathBuf,
    replacing: bool,
    created: bool,
    /// As [`RunDir`]'s.
    made_parents: Vec<PathBuf>,
    made_lock: bool,
}

impl Held {
    /// What [`RunDir`]'s drop does.
    fn end(&self) {
        if self.replacing {
            if let Err(e) = settle(&self.path) {
                crate::warn!("{e:#}");
            }
        }
        if self.created {
            remove_if_unused(&self.path);
            // The folders made with it, while empty (another run's directory in one keeps it).
            if std::fs::symlink_metadata(&self.path).is_err() {
                remove_empty(&self.made_parents);
            }
        } else if self.made_lock && !saved_an_epoch(&self.path) {
            // A directory of the user's that holds no run: only the lock file was ours.
            let _ = std::fs::remove_file(self.path.join(LOCK));
        }
    }
}

/// Removes `folders` (innermost first) while each is empty: up to the first that is not.
fn remove_empty(folders: &[PathBuf]) {
    for folder in folders {
        if std::fs::remove_dir(folder).is_err() {
            break;
        }
    }
}

/// The fresh runs' directories this process holds that need tidying when their run ends
/// (see [`Held`]), for [`tidy_at_ctrl_c`]. Its lock also keeps [`crate::atomic`]'s renames
/// from running while they are tidied.
static HELD: Mutex<Vec<Held>> = Mutex::new(Vec::new());

fn noted() -> MutexGuard<'static, Vec<Held>> {
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

/// Held while [`crate::atomic`] renames a file into place, and while
/// [`crate::interrupt::training`] marks the epochs as training: never while a Ctrl-C tidies
/// the run directories ([`tidy_at_ctrl_c`]), so that no file of the new run lands after the
/// old run was put back, and no epoch starts.
pub(crate) fn no_tidying() -> MutexGuard<'static, Vec<Held>> {
    noted()
}

/// For a Ctrl-C that ends the process at once outside the epochs (while the data loads, say;
/// see [`crate::interrupt`]): does what the drop of each fresh [`RunDir`] would, so that an
/// `--overwrite` whose run saved no epoch puts the old run back and a run directory this
/// process made and left unused goes, as when the run stops with an error; temporary files of
/// writes it cut short go too. The lock stays held until the process ends: no file is renamed
/// into a run directory after this (the checkpoints are written only while the epochs train,
/// and they cannot start), and `Some(true)` is returned, for the process to end.
///
/// `None` (nothing done): `training()` holds once the lock is taken (the epochs started
/// meanwhile; Ctrl-C then stops after the batch). `Some(false)`, nothing tidied, for the
/// process to end: the lock stays taken for two seconds (a write blocked on a full disk or a
/// stopped terminal); the next run or reader puts an old run back.
pub(crate) fn tidy_at_ctrl_c(training: impl Fn() -> bool) -> Option<bool> {
    let Some(held) = held_for_tidying() else {
        return Some(false);
    };
    if training() {
        return None;
    }
    tidy(held);
    Some(true)
}

/// For a second Ctrl-C, which ends the process at once while the epochs train: what
/// [`tidy_at_ctrl_c`] does, under the same lock (no file is renamed into place meanwhile or
/// after), so that a fresh run that has saved no epoch leaves nothing (the directory it made
/// removed, an `--overwrite`'s old run put back), and one that saved an epoch keeps it.
/// Returns whether the fresh runs held had all saved an epoch (`true` when none is held: a
/// resumed run, whose epochs stay), or `None` when the lock stayed taken for two seconds (a
/// write blocked on a full disk, say: nothing tidied, which the next run or reader does).
pub(crate) fn tidy_at_second_ctrl_c() -> Option<bool> {
    let held = held_for_tidying()?;
    let saved = held.iter().all(|h| saved_an_epoch(&h.path));
    tidy(held);
    Some(saved)
}

/// For a stop request to a rank of a data-parallel job: where this process holds fresh run
/// directories of which none has saved an epoch, tidies them as [`tidy_at_second_ctrl_c`]
/// does and returns `true`, for the process to end at once (nothing is lost: no epoch to
/// resume); otherwise (a resumed run, a saved epoch, no run directory held, as on ranks other
/// than 0, or the lock taken for two seconds) does nothing and returns `false`.
pub(crate) fn tidy_if_nothing_saved() -> bool {
    let Some(held) = held_for_tidying() else {
        return false;
    };
    if held.is_empty() || held.iter().any(|h| saved_an_epoch(&h.path)) {
        return false;
    }
    tidy(held);
    true
}

/// [`HELD`]'s lock for a Ctrl-C's tidying: `None` when it stays taken for two seconds (a write
/// blocked on a full disk or a stopped terminal; the next run or reader puts an old run back).
fn held_for_tidying() -> Option<MutexGuard<'static, Vec<Held>>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match HELD.try_lock() {
            Ok(held) => return Some(held),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}

/// What the drop of each fresh [`RunDir`] in `held` would do, temporary files of writes cut
/// short removed too; the lock then stays held until the process ends.
fn tidy(held: MutexGuard<'static, Vec<Held>>) {
    for h in held.iter() {
        let _ = remove_temporaries(&h.path);
        h.end();
    }
    std::mem::forget(held);
}

/// Removes the run directory `dir` if it holds nothing but the lock, the configuration files a
/// run writes before training ([`CONFIG`], [`CLASSES`], [`FINETUNE`]), TensorBoard events and
/// pictures ([`PREDICTIONS`], [`CONFUSION`], written before the state) of an epoch that was
/// not saved, and temporary files of cut writes: a run that saved no epoch (no state,
/// checkpoint or metrics) leaves nothing. Best effort.
fn remove_if_unused(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else { return };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if ![LOCK, CONFIG, CLASSES, FINETUNE, PREDICTIONS, CONFUSION].contains(&name.as_ref())
            && !name.starts_with(EVENTS_PREFIX)
            && !is_temporary(&name)
        {
            return;
        }
        files.push(entry.path());
    }
    for file in files {
        let _ = std::fs::remove_file(file);
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes what an interrupted atomic write left: `name.tmp<pid>`, `.stem.tmp<pid>.ext`, and
/// `.tmpXXXXXX` (six letters or digits: the sibling temporary file in which
/// `safetensors::serialize_to_file` writes before its own rename). Called under the lock, so no
/// run writes them; a `<pid>` that is still alive (an `evaluate` writing its outputs, which
/// takes no lock) keeps its file, and so does a `.tmpXXXXXX` that does not begin as a
/// safetensors file does (a user's file).
fn remove_temporaries(dir: &Path) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // A regular file first (not followed through links): a pipe is never opened.
        let ours = entry.file_type()?.is_file()
            && match tempfile_name(&name) {
                true => begins_as_safetensors(&entry.path()),
                false => is_temporary(&name) && !writer_alive(&entry.path(), &name),
            };
        if ours {
            let path = entry.path();
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove the leftover {}", path.display()))?;
        }
    }
    Ok(())
}

/// Removes the TensorBoard event files in `dir` that hold nothing but their version record and
/// were made by a process of this program's naming on this host that is gone: those of runs
/// of this run stopped before an epoch's end (each process writes its own file). Called under
/// the lock when a run resumes; another program's writer that has not flushed yet (PyTorch's
/// `SummaryWriter` in a shared log folder) names another process, alive. Best effort.
fn remove_empty_event_files(dir: &Path) {
    let host = crate::tensorboard::host();
    // `events.out.tfevents.<seconds>.<host>.<pid>`, then `.<n>` for a second file in one
    // second (`EventWriter::create`).
    let gone_writer = |path: &Path, name: &str| -> bool {
        let Some(rest) = name.strip_prefix(EVENTS_PREFIX) else {
            return false;
        };
        let Some((seconds, rest)) = rest.split_once('.') else {
            return false;
        };
        let Some(rest) = rest
            .strip_prefix(host.as_str())
            .and_then(|r| r.strip_prefix('.'))
        else {
            return false;
        };
        let pid = rest.split_once('.').map_or(rest, |(pid, n)| {
            match n.bytes().all(|b| b.is_ascii_digit()) {
                true => pid,
                false => "",
            }
        });
        let numbers = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        numbers(seconds)
            && numbers(pid)
            && pid.parse::<libc::pid_t>().is_ok_and(|pid| {
                pid > 0 && pid as u32 != std::process::id() && !process_wrote(pid, path)
            })
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        // The version record alone is about 40 bytes; one scalar makes it longer than this.
        let small = entry
            .metadata()
            .is_ok_and(|m| m.file_type().is_file() && m.len() < 128);
        if !small || !gone_writer(&entry.path(), &name.to_string_lossy()) {
            continue;
        }
        let empty = crate::tensorboard::read_events(&entry.path()).is_ok_and(|events| {
            events
                .iter()
                .all(|e| e.summary.is_none() && e.file_version.is_some())
        });
        if empty {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether the process whose id a temporary's name holds (`.stem.tmp<pid>.ext`,
/// `name.tmp<pid>`, the file `path`) is alive, other than this one, and may have written it: a
/// process of that id started after the file was last written is another (ids are reused: in
/// a container the program is often process 1, each time it starts).
fn writer_alive(path: &Path, name: &str) -> bool {
    let Some((_, after)) = name.rsplit_once(".tmp") else {
        return false;
    };
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    let rest = &after[digits.len()..];
    if !(rest.is_empty() || rest.starts_with('.')) {
        return false;
    }
    let Ok(pid) = digits.parse::<libc::pid_t>() else {
        return false;
    };
    if pid <= 0 || pid as u32 == std::process::id() {
        return false;
    }
    process_wrote(pid, path)
}

/// Whether process `pid` is alive and may have written `path`: it started before the file was
/// last written.
fn process_wrote(pid: libc::pid_t, path: &Path) -> bool {
    // SAFETY: signal 0 only asks whether the process exists.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    let found = found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    found && !started_after_writing(pid, path)
}

/// Whether process `pid` started after `path` was last written, by more than the clocks'
/// rounding (Linux: its start in `/proc/<pid>/stat`, from the boot time in whole seconds);
/// `false` where that cannot be told.
fn started_after_writing(pid: libc::pid_t, path: &Path) -> bool {
    let started = || -> Option<std::time::SystemTime> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 22, `starttime` (clock ticks after boot), counted after the command's `)`,
        // which ends field 2 (a command name may hold spaces and parentheses).
        let fields = stat.get(stat.rfind(')')? + 1..)?;
        let ticks: u64 = fields.split_whitespace().nth(19)?.parse().ok()?;
        let boot: u64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: sysconf only reads a system setting.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
        (hz > 0).then(|| {
            std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(boot)
                + std::time::Duration::from_millis(ticks * 1000 / hz)
        })
    };
    let written = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    match (started(), written) {
        (Some(started), Some(written)) => written + std::time::Duration::from_secs(2) < started,
        _ => false,
    }
}

/// Whether `path` is what a cut `safetensors::serialize_to_file` leaves: empty, zeros (it sizes
/// its temporary to the whole file before writing, so a kill then leaves a file of zeros), or
/// the beginning of a safetensors file (an 8-byte header length, then the JSON header's `{`).
fn begins_as_safetensors(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 9];
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(_) => return false,
        }
    }
    read == 0 || (read == head.len() && (head[8] == b'{' || head.iter().all(|&b| b == 0)))
}

/// tempfile's `.tmpXXXXXX`: six random letters and digits (a digit or capital among them: a
/// user's `.tmpconfig` is not one), no process id.
fn tempfile_name(name: &str) -> bool {
    name.len() == 10
        && name.starts_with(".tmp")
        && name[4..].chars().all(|c| c.is_ascii_alphanumeric())
        && name[4..]
            .chars()
            .any(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
}

fn is_temporary(name: &str) -> bool {
    let tempfile_crate = tempfile_name(name);
    // `atomic`'s `.{stem}.tmp{pid}{ext}` of a run's file (`.curves.tmp77.png`).
    let atomic = name
        .strip_prefix('.')
        .and_then(|rest| {
            let (stem, after) = rest.rsplit_once(".tmp")?;
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let ext = &after[digits..];
            (digits > 0 && (ext.is_empty() || ext.starts_with('.'))).then(|| format!("{stem}{ext}"))
        })
        .is_some_and(|target| is_run_output(&target));
    // The older `{name}.tmp{pid}` of a run's file (`layers::checkpoint`'s temporary).
    let older = |name: &str| {
        name.rsplit_once(".tmp").is_some_and(|(target, pid)| {
            !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && is_run_output(target)
        })
    };
    // `layers::checkpoint`'s probe of the file mode beside its temporary,
    // `{name}.tmp{pid}.mode.tmp{pid}`, which a kill may leave.
    let probe = name
        .rsplit_once(".mode.tmp")
        .is_some_and(|(temporary, pid)| {
            !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && older(temporary)
        });
    tempfile_crate || atomic || older(name) || probe
}

/// Refuses `--out path` when it is a link to nothing (creating it would say only "File
/// exists"), naming where the link points.
///
/// # Errors
/// As said.
pub(crate) fn refuse_dangling_link(path: &Path) -> Result<()> {
    let dangling = path
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
        && !path.exists();
    if dangling {
        let target = std::fs::read_link(path).unwrap_or_default();
        // A relative target is read from the link's folder.
        let target = match target.is_relative() {
            true => path.parent().unwrap_or(Path::new("")).join(target),
            false => target,
        };
        bail!(
            "--out {}: a link to {}, which does not exist (or cannot be reached): make that \
             folder, or remove the link",
            path.display(),
            target.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn temporaries_are_recognised() {
        assert!(is_temporary("best.safetensors.tmp1234"));
        assert!(is_temporary("state.safetensors.tmp30343.mode.tmp30343"));
        assert!(!is_temporary("notes.txt.tmp1.mode.tmp1"));
        assert!(is_temporary(".curves.tmp77.png"));
        assert!(!is_temporary("best.safetensors"));
        assert!(!is_temporary("notes.tmpl"));
        assert!(is_temporary(".tmpq6jowu"));
        assert!(!is_temporary(".tmpq6jowu.png"));
        assert!(!is_temporary("tmpq6jowu12"));
        // A user's files that look alike are not ours.
        assert!(!is_temporary("thesis.tmp1.docx"));
        assert!(!is_temporary(".notes.tmp1.txt"));
        assert!(!is_temporary("notes.txt.tmp12"));
        assert!(!is_temporary(".tmpconfig"));
        assert!(is_temporary(".metrics.tmp12.csv"));
        assert!(is_temporary(".evaluation-best-test-all.tmp9.json"));
    }

    /// Leftovers of dead writers go; a live writer's file, and a user's file named like
    /// tempfile's, stay. (No child process is started: a child forked while another test holds
    /// a run's lock shares the lock until it execs, and that test would find its directory
    /// in use.)
    #[test]
    fn only_dead_writers_temporaries_are_removed() -> Result<()> {
        let dir = tempfile::tempdir()?;
        // Above any pid_max (at most 2^22): no process has it.
        let dead = 2_000_000_000;
        // init, always there.
        let live = 1;
        let files: [(String, &[u8], bool); 7] = [
            (format!(".metrics.tmp{dead}.csv"), b"1,2", false),
            (format!(".evaluation-best.tmp{live}.json"), b"{", true),
            (".tmpA1b2C3".into(), b"the user's notes", true),
            (".tmpB2c3D4".into(), b"\x02\0\0\0\0\0\0\0{}", false),
            (".tmpC3d4E5".into(), b"", false),
            // Sized before it was written (safetensors' set_len), then killed.
            (".tmpE5f6G7".into(), &[0u8; 64], false),
            // A tempfile name that begins with digits is no process id.
            (".tmp1b2c3D".into(), b"\x02\0\0\0\0\0\0\0{}", false),
        ];
        for (name, bytes, _) in &files {
            std::fs::write(dir.path().join(name), bytes)?;
        }
        // A pipe named like tempfile's is never opened (it would block): it stays.
        let pipe = dir.path().join(".tmpD4e5F6");
        let name = std::ffi::CString::new(pipe.as_os_str().as_encoded_bytes())?;
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        // Written before process 1 started (a container's earlier program of that id, say):
        // another process's, so it goes.
        let before = dir.path().join(format!("last.safetensors.tmp{live}"));
        std::fs::write(&before, b"\x02\0\0\0\0\0\0\0{}")?;
        std::fs::File::options()
            .write(true)
            .open(&before)?
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(946_684_800))?;
        remove_temporaries(dir.path())?;
        assert!(pipe.exists());
        for (name, _, stays) in &files {
            assert_eq!(dir.path().join(name).exists(), *stays, "{name}");
        }
        assert!(
            !before.exists(),
            "a temporary older than its pid's process goes"
        );
        Ok(())
    }

    /// A resumed run removes the event files that hold only their version record and name a
    /// process of this host that is gone; not one of a live process, of another host, or with
    /// a record.
    #[test]
    fn only_gone_writers_empty_event_files_are_removed() -> Result<()> {
        let made = tempfile::tempdir()?;
        let empty = {
            let writer = crate::tensorboard::EventWriter::create(made.path())?;
            writer.path().to_path_buf()
        };
        let mut writer = crate::tensorboard::EventWriter::create(made.path())?;
        writer.scalar("test/acc", 1, 50.0)?;
        writer.flush()?;
        let logged = writer.path().to_path_buf();
        let host = crate::tensorboard::host();
        let dir = tempfile::tempdir()?;
        let dead = 2_000_000_000;
        let files = [
            (
                format!("{EVENTS_PREFIX}1796364732.{host}.{dead}"),
                &empty,
                false,
            ),
            (
                format!("{EVENTS_PREFIX}1796364732.{host}.{dead}.1"),
                &empty,
                false,
            ),
            (format!("{EVENTS_PREFIX}1796364732.{host}.1"), &empty, true),
            (
                format!("{EVENTS_PREFIX}1796364732.elsewhere.{dead}"),
                &empty,
                true,
            ),
            (
                format!("{EVENTS_PREFIX}1796364733.{host}.{dead}"),
                &logged,
                true,
            ),
        ];
        for (name, from, _) in &files {
            std::fs::copy(from, dir.path().join(name))?;
        }
        remove_empty_event_files(dir.path());
        for (name, _, stays) in &files {
            assert_eq!(dir.path().join(name).exists(), *stays, "{name}");
        }
        Ok(())
    }

    #[test]
    fn evaluate_outputs_are_the_runs() {
        for name in [
            "confusion-best.png",
            "evaluation-last.json",
            "evaluation-best-f32.json",
            "confusion-best-test-all.png",
            "evaluation-last-bf16-test500.json",
            "evaluation-best-data-cifar10-jpeg.tar.gz.json",
            "confusion-last-f32-test-all-data-my_photos.png",
            "predictions-best.csv",
            "predictions-last-bf16-test-all.csv",
        ] {
            assert!(is_run_output(name), "{name}");
        }
        for name in [
            "evaluation-other-best.json",
            "confusion-best-test.png",
            "evaluation-best-testx.json",
            "evaluation-best-data-.json",
            "evaluation-other-data-x.json",
            "evaluation-best.png",
            "predictions-best.json",
            "predictions-other.csv",
        ] {
            assert!(!is_run_output(name), "{name}");
        }
    }

    /// A `.lock` removed by hand while its run trains is locked again before the run's next
    /// write; one that another run has taken since stops this run's writes there.
    #[test]
    fn a_removed_lock_file_is_taken_again_or_stops_the_writes() -> Result<()> {
        let root = tempfile::tempdir()?;
        let out = root.path().join("run");
        let run = RunDir::fresh(&out, false)?;
        crate::atomic::write_bytes(&out.join("a.txt"), b"1")?;
        std::fs::remove_file(out.join(LOCK))?;
        crate::atomic::write_bytes(&out.join("a.txt"), b"2")?;
        assert!(in_use(&out), "the new .lock is locked");
        assert!(RunDir::existing(&out).is_err());
        // Removed again, and another run (here: another open file) made a new one, locked
        // while it lives, unlocked once it ended: either way this run writes no more there.
        std::fs::remove_file(out.join(LOCK))?;
        let other = open_lock(&out.join(LOCK), true)?;
        other.try_lock()?;
        std::fs::write(out.join(CONFIG), b"the other run's")?;
        let weights = std::collections::HashMap::from([(
            "w".to_string(),
            candle_core::Tensor::new(&[1f32], &Device::Cpu)?,
        )]);
        for _ in 0..2 {
            // Neither a file (atomic) nor a checkpoint (safetensors) is written.
            let err = format!(
                "{:#}",
                crate::atomic::write_bytes(&out.join("a.txt"), b"3").unwrap_err()
            );
            assert!(
                err.contains("another run has taken the folder since"),
                "{err}"
            );
            assert_eq!(std::fs::read(out.join("a.txt"))?, b"2");
            let err =
                crate::run::replace_checkpoint(&weights, &out, LAST, crate::run::Replaced::Always)
                    .unwrap_err();
            assert!(err.is::<FolderTaken>(), "{err:#}");
            assert!(!out.join(LAST).exists());
            other.unlock()?;
        }
        // This run ends: the folder it made is the other run's (which has saved no epoch
        // yet), left as that run has it.
        std::fs::remove_file(out.join("a.txt"))?;
        drop(run);
        assert_eq!(std::fs::read(out.join(CONFIG))?, b"the other run's");
        assert!(out.join(LOCK).exists());
        drop(other);
        assert!(!in_use(&out));
        Ok(())
    }

    /// A lock file another process made after this run's was removed by hand, held for a
    /// moment and then taken away (a command refused for this run's files, as it ends): the
    /// run's write waits for it, makes its own lock file again and writes.
    #[test]
    fn a_lock_file_taken_away_by_its_maker_is_waited_for() -> Result<()> {
        let root = tempfile::tempdir()?;
        let out = root.path().join("run");
        let _run = RunDir::fresh(&out, false)?;
        crate::atomic::write_bytes(&out.join("a.txt"), b"1")?;
        std::fs::remove_file(out.join(LOCK))?;
        let other = open_lock(&out.join(LOCK), true)?;
        other.try_lock()?;
        let path = out.join(LOCK);
        let refused = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            std::fs::remove_file(&path).expect("remove");
            drop(other);
        });
        crate::atomic::write_bytes(&out.join("a.txt"), b"2")?;
        refused.join().expect("the other process's end");
        assert_eq!(std::fs::read(out.join("a.txt"))?, b"2");
        assert!(in_use(&out), "the run's lock file, made again and locked");
        Ok(())
    }

    #[test]
    fn one_run_per_directory() -> Result<()> {
        let root = tempfile::tempdir()?;
        let out = root.path().join("run");
        let first = RunDir::fresh(&out, false)?;
        let err = format!("{:#}", RunDir::fresh(&out, false).unwrap_err());
        assert!(err.contains("in use by another run"), "{err}");
        let err = format!("{:#}", RunDir::existing(&out).unwrap_err());
        assert!(err.contains("in use by another run"), "{err}");
        std::fs::write(out.join(BEST), b"weights")?;
        // Of a writer that is gone: no process id reaches 2e9 (Linux's pid_max is at most
        // 2^22; a small id such as 99 may be a live thread's, whose file is kept).
        std::fs::write(out.join(".config.tmp2000000000.json"), b"half")?;
        std::fs::write(out.join("last.safetensors.tmp2000000000"), b"half")?;
        drop(first);

        let err = format!("{:#}", RunDir::fresh(&out, false).unwrap_err());
        assert!(
            err.contains("already holds checkpoints")
                && err.contains(BEST)
                && err.contains("no state.safetensors")
                && err.contains("--overwrite"),
            "{err}"
        );
        assert!(out.join(BEST).exists());
        let resumed = RunDir::existing(&out)?;
        let mut left: Vec<String> = std::fs::read_dir(&out)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        left.sort();
        assert_eq!(left, [LOCK, BEST]);
        drop(resumed);
        let replacing = RunDir::fresh(&out, true)?;
        assert!(!out.join(BEST).exists() && out.join(REPLACED).join(BEST).exists());
        drop(replacing);

        // No run, but a file of a run's name (the user's): refused, not overwritten.
        let theirs = root.path().join("theirs");
        std::fs::create_dir(&theirs)?;
        std::fs::write(theirs.join(METRICS_CSV), b"their numbers")?;
        let err = format!("{:#}", RunDir::fresh(&theirs, false).unwrap_err());
        assert!(
            err.contains("holds metrics.csv, which this run would overwrite"),
            "{err}"
        );
        assert_eq!(std::fs::read(theirs.join(METRICS_CSV))?, b"their numbers");
        // ... and left as it was, without a lock file.
        assert_eq!(names(&theirs)?, [METRICS_CSV]);
        // A folder of the user's that a run or a resume locked and left without saving an
        // epoch (a failed start) is left as it was too; one whose run saved keeps the lock.
        let plain = root.path().join("plain");
        std::fs::create_dir(&plain)?;
        std::fs::write(plain.join("a.txt"), b"theirs")?;
        drop(RunDir::existing(&plain)?);
        assert_eq!(names(&plain)?, ["a.txt"]);
        drop(RunDir::fresh(&plain, false)?);
        assert_eq!(names(&plain)?, ["a.txt"]);
        // While a run holds it, before its configuration is written, readers say so.
        let starting = RunDir::fresh(&plain, false)?;
        assert!(in_use(&plain));
        let err = match crate::inference::Trained::open(&plain, "best", &Device::Cpu) {
            Ok(_) => panic!("a run with no configuration opened"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("a run is starting there"), "{err}");
        drop(starting);
        assert!(!in_use(&plain));
        // A run that wrote (as the run's files are written, through `atomic`) leaves its lock
        // file; one that made it and wrote nothing takes it away (above).
        let kept = RunDir::fresh(&plain, false)?;
        crate::atomic::write_bytes(&plain.join(STATE), b"saved")?;
        drop(kept);
        assert_eq!(names(&plain)?, [LOCK, "a.txt", STATE]);
        drop(RunDir::fresh(&theirs, true)?);

        let file = root.path().join("file");
        std::fs::write(&file, b"x")?;
        let err = format!("{:#}", RunDir::fresh(&file, false).unwrap_err());
        assert!(err.contains("--out") && err.contains("file"), "{err}");
        let err = format!(
            "{:#}",
            RunDir::existing(&root.path().join("none")).unwrap_err()
        );
        assert!(err.contains("no such run directory"), "{err}");
        Ok(())
    }

    fn names(dir: &Path) -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(dir)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        names.sort();
        Ok(names)
    }

    /// A reader (`evaluate`, `predict`, `grad-cam`) of a run with nothing to put back removes
    /// what killed processes left, as the next run would: dead writers' temporaries (a run's
    /// checkpoint, an `evaluate`'s picture) and an `--overwrite` folder killed before its mark;
    /// a live writer's temporary stays, and nothing is touched while a run holds the directory.
    #[test]
    fn readers_remove_what_killed_processes_left() -> Result<()> {
        let root = tempfile::tempdir()?;
        let out = root.path().join("run");
        std::fs::create_dir(&out)?;
        std::fs::write(out.join(STATE), "state")?;
        std::fs::write(out.join(BEST), "best")?;
        let dead = 2_000_000_000;
        let gone = [
            format!("{LAST}.tmp{dead}"),
            format!(".confusion-best.tmp{dead}.png"),
        ];
        // Process 1 (init, always there), written after it started.
        let live = out.join(".evaluation-best.tmp1.json");
        let empty = out.join(MOVING_ASIDE);
        let fill = |out: &Path| -> Result<()> {
            for name in &gone {
                std::fs::write(out.join(name), "half")?;
            }
            std::fs::write(&live, "{")?;
            std::fs::create_dir(&empty)?;
            Ok(())
        };
        // A run holds it: left alone.
        let held = RunDir::existing(&out)?;
        fill(&out)?;
        settle_for_reading(&out)?;
        assert!(gone.iter().all(|n| out.join(n).exists()) && empty.exists());
        drop(held);
        settle_for_reading(&out)?;
        for name in &gone {
            assert!(!out.join(name).exists(), "{name} stays");
        }
        assert!(live.exists(), "a live writer's temporary is removed");
        assert!(!empty.exists(), "the unmarked --overwrite folder stays");
        assert_eq!(std::fs::read_to_string(out.join(BEST))?, "best");
        assert_eq!(std::fs::read_to_string(out.join(STATE))?, "state");
        Ok(())
    }

    /// `--overwrite` moves the old run aside and puts it back, whole, when the new run stops
    /// before saving an epoch (on drop, or at the next lock after a kill); once the new run has
    /// saved its state, the old run is gone. Files that are not a run's stay where they are.
    #[test]
    fn an_overwritten_run_is_kept_until_the_new_one_saves_an_epoch() -> Result<()> {
        let root = tempfile::tempdir()?;
        let out = root.path().join("run");
        std::fs::create_dir(&out)?;
        let old = [
            (STATE, "old state"),
            (BEST, "old best"),
            (LAST, "old last"),
            (CONFIG, "old config"),
            (METRICS_CSV, "old metrics"),
            (CURVES, "old curves"),
            ("events.out.tfevents.1.host.7", "old events"),
            ("evaluation-best.json", "old evaluation"),
            ("confusion-last-f32.png", "old evaluation in f32"),
            ("notes.txt", "the user's"),
        ];
        for (name, text) in old {
            std::fs::write(out.join(name), text)?;
        }
        let before = names(&out)?;
        let unchanged = |out: &Path| -> Result<()> {
            for (name, text) in old {
                assert_eq!(std::fs::read_to_string(out.join(name))?, text, "{name}");
            }
            let lock = usize::from(out.join(LOCK).exists());
            assert_eq!(names(out)?.len(), before.len() + lock, "{:?}", names(out)?);
            Ok(())
        };

        // The new run fails before its first epoch: the old run is back.
        let dir = RunDir::fresh(&out, true)?;
        assert_eq!(names(&out)?, [LOCK, "notes.txt", REPLACED]);
        std::fs::write(out.join(CONFIG), "new config")?;
        std::fs::write(out.join(METRICS_CSV), "new metrics")?;
        drop(dir);
        unchanged(&out)?;

        // Killed before its first epoch: the next run to lock the directory puts it back.
        let dir = RunDir::fresh(&out, true)?;
        std::fs::write(out.join(CONFIG), "new config")?;
        let aside = out.join(REPLACED);
        let kept = root.path().join("kept");
        std::fs::rename(&aside, &kept)?;
        drop(dir); // (nothing to settle now)
        std::fs::rename(&kept, &aside)?;
        drop(RunDir::existing(&out)?);
        unchanged(&out)?;

        // Readers (`evaluate`, `predict`, `grad-cam`): while the new run lives and has saved
        // no epoch they are refused, pointed at the replaced run; after it was interrupted
        // (its lock released without settling, as by Ctrl-C or a kill) they put the old run
        // back first.
        settle_for_reading(&out)?; // nothing pending
        let mut dir = RunDir::fresh(&out, true)?;
        std::fs::write(out.join(CONFIG), "new config")?;
        let err = settle_for_reading(&out).unwrap_err().to_string();
        assert!(
            err.contains("still training") && err.contains(REPLACED),
            "{err}"
        );
        // It was writing its pictures when it died: their temporaries go too.
        let left = out.join(".predictions.tmp2000000000.png");
        std::fs::write(&left, "half a picture")?;
        drop(dir.lock.take()); // the process dies: the kernel releases its lock
        dir.replacing = false;
        drop(dir);
        assert_eq!(std::fs::read_to_string(out.join(CONFIG))?, "new config");
        settle_for_reading(&out)?;
        assert!(!left.exists(), "the killed run's temporary is removed");
        unchanged(&out)?;

        // Killed while moving the old run aside, or while moving it back: the next lock
        // finishes putting it back.
        for (part, folder) in [(3, MOVING_ASIDE), (5, MOVING_BACK)] {
            let half = out.join(folder);
            std::fs::create_dir(&half)?;
            std::fs::write(half.join(MARK), b"")?;
            for (name, _) in &old[..part] {
                std::fs::rename(out.join(name), half.join(name))?;
            }
            drop(RunDir::fresh(&out, false).unwrap_err());
            unchanged(&out)?;
        }

        // A folder of the user's under one of those names is left alone, and --overwrite
        // refuses to start rather than take it.
        let theirs = out.join(REPLACED);
        std::fs::create_dir(&theirs)?;
        std::fs::write(theirs.join(BEST), "their best")?;
        let err = format!("{:#}", RunDir::fresh(&out, true).unwrap_err());
        assert!(err.contains("in the way"), "{err}");
        assert_eq!(std::fs::read_to_string(theirs.join(BEST))?, "their best");
        std::fs::remove_dir_all(&theirs)?;
        unchanged(&out)?;

        // The new run saves an epoch: the old run is gone, the new one stays.
        let dir = RunDir::fresh(&out, true)?;
        std::fs::write(out.join(STATE), "new state")?;
        std::fs::write(out.join(BEST), "new best")?;
        // (The epoch writer removes it as soon as the state is saved.)
        forget_replaced(&out);
        assert!(!out.join(REPLACED).exists());
        drop(dir);
        assert_eq!(names(&out)?, [LOCK, BEST, "notes.txt", STATE]);
        assert_eq!(std::fs::read_to_string(out.join(STATE))?, "new state");

        // Killed right after its first state, before it removed the old run: a reader leaves
        // the new run and removes the old, as the next run would; not while a run holds it.
        let mut dir = RunDir::fresh(&out, true)?;
        std::fs::write(out.join(STATE), "newer state")?;
        settle_for_reading(&out)?;
        assert!(
            out.join(REPLACED).exists(),
            "a live run's replaced run stays"
        );
        drop(dir.lock.take());
        dir.replacing = false;
        drop(dir);
        assert!(out.join(REPLACED).exists());
        settle_for_reading(&out)?;
        assert_eq!(names(&out)?, [LOCK, "notes.txt", STATE]);
        assert_eq!(std::fs::read_to_string(out.join(STATE))?, "newer state");
        Ok(())
    }

    /// What a Ctrl-C outside the epochs tidies ([`tidy_at_ctrl_c`]): each fresh run's directory
    /// that needs it is noted while held, ended as its drop would end it, and forgotten when
    /// dropped.
    #[test]
    fn fresh_run_directories_are_noted_for_ctrl_c() -> Result<()> {
        let root = tempfile::tempdir()?;
        let out = root.path().join("run");
        std::fs::create_dir(&out)?;
        std::fs::write(out.join(STATE), "old state")?;
        std::fs::write(out.join(CONFIG), "old config")?;
        let replacing = RunDir::fresh(&out, true)?;
        std::fs::write(out.join(CONFIG), "new config")?;
        let made = root.path().join("made");
        let creating = RunDir::fresh(&made, false)?;
        // A directory that was there, without a lock: noted, for the lock file made in it.
        let theirs = root.path().join("theirs");
        std::fs::create_dir(&theirs)?;
        let plain = RunDir::fresh(&theirs, false)?;
        let ours = |h: &Held| h.path.starts_with(root.path());
        assert_eq!(noted().iter().filter(|h| ours(h)).count(), 3);
        // What `tidy_at_ctrl_c` does, for this test's directories (it keeps the lock).
        noted().iter().filter(|h| ours(h)).for_each(Held::end);
        assert_eq!(std::fs::read_to_string(out.join(CONFIG))?, "old config");
        assert_eq!(std::fs::read_to_string(out.join(STATE))?, "old state");
        assert!(!out.join(REPLACED).exists() && !made.exists() && theirs.is_dir());
        assert!(names(&theirs)?.is_empty());
        drop((replacing, creating, plain));
        assert!(!noted().iter().any(ours));
        assert_eq!(std::fs::read_to_string(out.join(CONFIG))?, "old config");
        Ok(())
    }

    /// A directory the run made is removed when the run stops having saved no epoch (only its
    /// configuration, events of the first epoch, temporaries); one that existed before, or
    /// that holds anything else, stays.
    #[test]
    fn failed_starts_leave_no_directory_they_made() -> Result<()> {
        let root = tempfile::tempdir()?;
        let made = root.path().join("made");
        let dir = RunDir::fresh(&made, false)?;
        std::fs::write(made.join(CONFIG), "config")?;
        std::fs::write(made.join(CLASSES), "[]")?;
        drop(dir);
        assert!(!made.exists());

        // Stopped in its first epoch (Ctrl-C, a NaN loss): its batch losses go with it.
        let dir = RunDir::fresh(&made, false)?;
        std::fs::write(made.join(CONFIG), "config")?;
        std::fs::write(made.join("events.out.tfevents.1.host.7"), "losses")?;
        std::fs::write(made.join(".config.tmp2000000000.json"), "cut")?;
        drop(dir);
        assert!(!made.exists());

        // Anything else (a saved epoch, a file of the user's) keeps the directory.
        for kept in [METRICS_CSV, "notes.txt"] {
            let dir = RunDir::fresh(&made, false)?;
            crate::atomic::write_bytes(&made.join(CONFIG), b"config")?;
            std::fs::write(made.join(kept), "kept")?;
            drop(dir);
            assert_eq!(names(&made)?, [LOCK, CONFIG, kept]);
            std::fs::remove_dir_all(&made)?;
        }

        let theirs = root.path().join("theirs");
        std::fs::create_dir(&theirs)?;
        drop(RunDir::fresh(&theirs, false)?);
        assert!(theirs.is_dir());

        // The folders made with it (`runs/` of the default --out) go with it while empty; one
        // that holds another run's directory, or that was there, stays.
        let (runs, nested) = (root.path().join("runs"), root.path().join("a/b"));
        let (first, second) = (runs.join("one"), runs.join("two"));
        drop(RunDir::fresh(&nested.join("run"), false)?);
        assert!(!root.path().join("a").exists());
        drop(RunDir::fresh(&first, false)?);
        assert!(!runs.exists());
        let (one, two) = (
            RunDir::fresh(&first, false)?,
            RunDir::fresh(&second, false)?,
        );
        drop(one);
        assert!(!first.exists() && second.is_dir());
        // Made by the first, which left it to the second: a folder that was there for it.
        drop(two);
        assert!(!second.exists() && runs.is_dir());
        drop(RunDir::fresh(&first, false)?);
        assert!(!first.exists() && runs.is_dir());
        // A directory that cannot be made (a name too long for the file system) after the
        // folders above it were: they go again.
        let long = root.path().join("p1/p2").join("x".repeat(300));
        assert!(RunDir::fresh(&long, false).is_err());
        assert!(!root.path().join("p1").exists());
        Ok(())
    }

    /// A run file that is a link (here the state) moves aside and back as the link, and does
    /// not count as the new run's saved state.
    #[cfg(unix)]
    #[test]
    fn linked_run_files_move_as_links() -> Result<()> {
        let root = tempfile::tempdir()?;
        let out = root.path().join("run");
        std::fs::create_dir(&out)?;
        let target = root.path().join("elsewhere.safetensors");
        std::fs::write(&target, "old state")?;
        std::os::unix::fs::symlink(&target, out.join(STATE))?;
        std::fs::write(out.join(BEST), "old best")?;
        let dir = RunDir::fresh(&out, true)?;
        assert!(!out.join(BEST).exists() && std::fs::symlink_metadata(out.join(STATE)).is_err());
        // A link where the new run's state would be is no saved epoch.
        std::os::unix::fs::symlink(root.path().join("other"), out.join(STATE))?;
        std::fs::write(root.path().join("other"), "not a state")?;
        drop(dir);
        assert_eq!(std::fs::read_link(out.join(STATE))?, target);
        assert_eq!(std::fs::read_to_string(out.join(BEST))?, "old best");
        assert!(!out.join(REPLACED).exists());
        Ok(())
    }

    /// A run that stopped before saving an epoch (only its configuration, classes and events)
    /// is replaced by the next fresh run without --overwrite; other files stay.
    #[test]
    fn a_run_that_saved_no_epoch_is_replaced() -> Result<()> {
        let root = tempfile::tempdir()?;
        let out = root.path().join("run");
        std::fs::create_dir(&out)?;
        let config =
            crate::config::RunConfig::new("t", crate::config::DatasetKind::Mnist, "lenet5");
        std::fs::write(out.join(CONFIG), serde_json::to_vec(&config)?)?;
        for name in [CLASSES, "events.out.tfevents.1.host.7", "notes.txt"] {
            std::fs::write(out.join(name), "x")?;
        }
        drop(RunDir::fresh(&out, false)?);
        // (Its lock file too: this run made it, and saved no epoch either.)
        assert_eq!(names(&out)?, ["notes.txt"]);

        // Not so: a config.json that is no run's, or a run whose metrics show a saved epoch
        // (its checkpoints deleted), or one whose checkpoint is a dangling link.
        let not_a_run = root.path().join("project");
        std::fs::create_dir(&not_a_run)?;
        std::fs::write(not_a_run.join(CONFIG), r#"{"architectures": ["Bert"]}"#)?;
        let pruned = root.path().join("pruned");
        std::fs::create_dir(&pruned)?;
        std::fs::write(pruned.join(CONFIG), serde_json::to_vec(&config)?)?;
        std::fs::write(pruned.join(METRICS_CSV), "epoch\n1")?;
        let mut dirs = vec![not_a_run, pruned];
        #[cfg(unix)]
        {
            let dangling = root.path().join("dangling");
            std::fs::create_dir(&dangling)?;
            std::fs::write(dangling.join(CONFIG), serde_json::to_vec(&config)?)?;
            std::os::unix::fs::symlink(root.path().join("gone"), dangling.join(BEST))?;
            dirs.push(dangling);
        }
        for dir in dirs {
            let err = format!("{:#}", RunDir::fresh(&dir, false).unwrap_err());
            assert!(err.contains("already holds a run"), "{err}");
            assert!(dir.join(CONFIG).is_file());
        }
        Ok(())
    }
}
