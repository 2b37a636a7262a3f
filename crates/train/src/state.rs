//! The resumable state of a run, beside its checkpoints: one file, `state.safetensors`, holding
//! the model weights with BatchNorm statistics and the optimizer buffers as tensors, and in its
//! header's metadata the rest as JSON (epoch, schedule position, best accuracy, dropout RNG
//! state, history and configuration). One rename commits all of it, so a crash at any instant
//! leaves either the previous state or the new one, never half of each.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::history::EpochRecord;
use crate::rundir::{LEGACY_STATE_JSON, STATE};
use optim::lr_scheduler::Stepping;

/// The metadata key of the JSON half.
const RESUME_KEY: &str = "resume_state";

/// The metadata key of the resume state's own CRC-32C (8 hex digits of its JSON's bytes), for
/// the readers of the header alone ([`header_of`]); a load checks the whole file's sum.
const RESUME_CRC_KEY: &str = "resume_state_crc32c";
const MODEL: &str = "model.";
const OPTIMIZER: &str = "optimizer.";
const EPOCHS_DONE: &str = "meta.epochs_done";
/// The training images' [`datasets::fingerprint`]s, sorted, as int64 (the bits of each u64).
const TRAINED_ON: &str = "data.trained_on_xxh3_64";
/// The metadata key of [`TRAINED_ON`]'s own CRC-32C (8 hex digits of its bytes), for
/// [`saved_trained_on`], which reads that tensor alone.
const TRAINED_ON_CRC_KEY: &str = "trained_on_crc32c";

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Best test accuracy so far, in percent.
    pub best_acc: f64,
    /// The epoch (from 1) that reached it.
    pub best_epoch: usize,
    /// The dropout generator's state (`layers::rng::state`).
    pub rng_state: [u64; 4],
    /// How the schedule steps.
    pub stepping: Stepping,
    /// The schedule's step count (PyTorch's `last_epoch`) for the next batch.
    pub schedule_step: usize,
    /// The optimizer's learning rate after the last step.
    pub lr: f64,
    /// The epochs so far.
    pub history: Vec<EpochRecord>,
    /// The run's configuration.
    pub config: RunConfig,
    /// How many training and test images the run trained and tested on (`None` in states
    /// saved before they were recorded): a resume on data of other sizes is refused.
    #[serde(default)]
    pub images: Option<[usize; 2]>,
    /// The class names in label order (`None` in states saved before they were kept): a
    /// resume on data with other classes is refused, whatever `classes.json` says.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// How many data-parallel processes (the world size) trained the last epoch (`None` in
    /// states saved before it was kept): a resume with another count is said, since the
    /// global batch (world size x `--batch-size`) changes with it.
    #[serde(default)]
    pub world_size: Option<usize>,
    /// The training and test labels in order, each split's as [`labels_crc`] sums them (`None`
    /// in states saved before they were kept): a resume on data of the same sizes whose images
    /// are others, or in another order (the test split trained on, say), is refused.
    #[serde(default)]
    pub labels: Option<[u32; 2]>,
    /// The training and test images' names in order, each split's as [`names_crc`] sums them
    /// (`None` in states saved before they were kept): an image folder's held-out test split
    /// drawn again (an image added to a class) holds other images in as many places with the
    /// same labels.
    #[serde(default)]
    pub names: Option<[u32; 2]>,
    /// The test images' files' fingerprints in order, as [`contents_crc`] sums them (`None` for
    /// data read from no files, and in states saved before they were kept): a test split whose
    /// files were changed in place (the same names, other images) is not the run's test.
    #[serde(default)]
    pub test_contents: Option<u32>,
    /// The training images' contents in order, as [`contents_crc`] sums them (`None` in states
    /// saved before they were kept): training images changed in place since (the same names
    /// and labels, other pixels) would train the epochs left on other images than the epochs
    /// before, so a resume on them is refused.
    #[serde(default)]
    pub train_contents: Option<u32>,
    /// The best epoch's weights as `best.safetensors` holds them, their
    /// [`layers::checkpoint::tensors_checksum`] (`None` in states saved before it was kept, and
    /// until an epoch of a resumed run improves on them): `evaluate` and `predict` say when the
    /// file holds other weights (swapped with `last`, rewritten by another tool).
    #[serde(default)]
    pub best_crc32c: Option<u32>,
    /// How many compute threads (rayon's pool) trained the last epoch (`None` in states saved
    /// before it was kept): on the CPU the gradients' partial sums follow the threads, so a
    /// resume with another count is said (its weights follow the run to float32 rounding, not
    /// bit for bit).
    #[serde(default)]
    pub threads: Option<usize>,
    /// The device that trained the last epoch (`cpu`, `cuda:0`; `None` in states saved before
    /// it was kept): a resume on another is said, as for [`ResumeState::threads`].
    #[serde(default)]
    pub device: Option<String>,
    /// Optimizer steps (training batches) taken so far: the global step of TensorBoard's
    /// `train/batch_loss` (`None` in states saved before they were counted: then the epochs
    /// done times the batches of an epoch now, which another world size changes).
    #[serde(default)]
    pub steps_done: Option<usize>,
}

/// The CRC-32C of `data`'s labels in order (each as 8 little-endian bytes): what tells one data
/// set from another of the same size and classes, or the same in another order, without
/// reading the images.
pub fn labels_crc(data: &dyn datasets::Dataset) -> u32 {
    (0..data.len()).fold(0, |crc, i| {
        crc32c::crc32c_append(crc, &(data.label(i) as u64).to_le_bytes())
    })
}

/// The CRC-32C of `data`'s sample names in order ([`datasets::Dataset::sample_name`], each
/// with `root`, the run's data directory, cut from its start, so that the same folder moved
/// elsewhere, or spelled otherwise (`DIR`, `DIR/`, `DIR/.`), is the same data): what tells an
/// image folder's held-out split drawn again from the run's. Data whose samples have no names
/// (decoded batches) sums to 0.
pub fn names_crc(data: &dyn datasets::Dataset, root: Option<&Path>) -> u32 {
    // One spelling of a path: its components (as the plain spelling `DIR` always was).
    let plain = |path: &str| {
        Path::new(path)
            .components()
            .collect::<std::path::PathBuf>()
            .display()
            .to_string()
    };
    crc_of_names(data, root.map(|r| plain(&r.to_string_lossy())), plain)
}

/// [`names_crc`] as `saved` was summed: the one spelling of the paths, or, for a state saved
/// before they had one, `root` cut from the names as it is spelled (`DIR/` with its slash,
/// which tab completion adds). `saved` `None`: the one spelling.
pub fn names_crc_like(
    saved: Option<u32>,
    data: &dyn datasets::Dataset,
    root: Option<&Path>,
) -> u32 {
    let now = names_crc(data, root);
    match saved {
        // Data whose samples had no names when the state was saved (an image folder held
        // decoded, as CIFAR-10's, before those kept their files' names): nothing to compare.
        Some(0) => 0,
        Some(saved) if saved != now => {
            // The root as given, and with a slash: a state of `DIR/` read with `--data-dir DIR`.
            let as_given = root.map(|r| r.display().to_string()).unwrap_or_default();
            let slashed = format!("{}/", as_given.trim_end_matches('/'));
            let matches = [as_given, slashed]
                .into_iter()
                .any(|root| crc_of_names(data, Some(root), |name| name.to_string()) == saved);
            match matches {
                true => saved,
                false => now,
            }
        }
        _ => now,
    }
}

/// The CRC-32C of `data`'s names, each spelled by `spell`, with `root` cut from its start.
fn crc_of_names(
    data: &dyn datasets::Dataset,
    root: Option<String>,
    spell: impl Fn(&str) -> String,
) -> u32 {
    let root = root.unwrap_or_default();
    (0..data.len()).fold(0, |crc, i| match data.sample_name(i) {
        Some(name) => {
            let name = spell(&name);
            let name = name.strip_prefix(root.as_str()).unwrap_or(&name);
            crc32c::crc32c_append(crc32c::crc32c_append(crc, name.as_bytes()), &[0])
        }
        None => crc,
    })
}

/// The CRC-32C of `data`'s files' fingerprints in order ([`datasets::Dataset::fingerprint`],
/// each as 8 little-endian bytes; the files read in parallel), or for data held decoded from no
/// files of their own (MNIST's and CIFAR-10's batches), of each image's pixels' CRC-32C in
/// order: what tells a test split whose images changed in place. `None` for an empty data set,
/// or one of neither kind.
///
/// # Errors
/// A file cannot be read (named).
pub fn contents_crc(data: &dyn datasets::Dataset) -> Result<Option<u32>> {
    contents_crc_of(data, false)
}

/// [`contents_crc`], the files read a share per rank in a data-parallel job (every rank must
/// call it, in the same order: the training run's checks do).
///
/// # Errors
/// A file cannot be read (named; on the other ranks, that a rank could not read its share).
pub fn shared_contents_crc(data: &dyn datasets::Dataset) -> Result<Option<u32>> {
    contents_crc_of(data, true)
}

fn contents_crc_of(data: &dyn datasets::Dataset, shared: bool) -> Result<Option<u32>> {
    use rayon::prelude::*;
    if data.is_empty() {
        return Ok(None);
    }
    if let Some(sums) = file_fingerprints(data, shared)? {
        return Ok(Some(crc_of_fingerprints(&sums)));
    }
    if data.fixed_shape().is_none() {
        return Ok(None);
    }
    let sums: Vec<u32> = (0..data.len())
        .into_par_iter()
        .with_min_len(256)
        .map(|i| Ok(crc32c::crc32c(&data.image(i)?.data)))
        .collect::<Result<_>>()?;
    Ok(Some(sums.iter().fold(0, |crc, s| {
        crc32c::crc32c_append(crc, &s.to_le_bytes())
    })))
}

/// Every sample's [`datasets::Dataset::fingerprint`] in order (the files read in parallel;
/// `shared`, in a data-parallel job each rank reads a share, gathered on every rank: every
/// rank must then call it); `None` for an empty data set or one whose samples come from no
/// file of their own.
///
/// # Errors
/// A file cannot be read (named).
fn file_fingerprints(data: &dyn datasets::Dataset, shared: bool) -> Result<Option<Vec<u64>>> {
    use rayon::prelude::*;
    if data.is_empty() || data.fingerprint(0)?.is_none() {
        return Ok(None);
    }
    let part = |share: std::ops::Range<usize>| -> Result<Vec<u64>> {
        share
            .into_par_iter()
            .with_min_len(64)
            .map(|i| {
                data.fingerprint(i)?.with_context(|| {
                    format!("image {i} comes from no file of its own, unlike image 0")
                })
            })
            .collect()
    };
    match shared {
        true => crate::distributed::share_u64s(data.len(), part),
        false => part(0..data.len()),
    }
    .map(Some)
}

/// What the state in `dir` records of the test split the run tested on, read from its header
/// alone; each `None` where the state does not record it (saved before it was kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestRecord {
    /// Its number of images.
    pub images: Option<usize>,
    /// Its labels' [`labels_crc`].
    pub labels: Option<u32>,
    /// Its names' [`names_crc`].
    pub names: Option<u32>,
    /// Its files' [`contents_crc`].
    pub contents: Option<u32>,
}

/// The [`TestRecord`] of the state in `dir`; `None` without a readable state.
pub fn saved_test_record(dir: &Path) -> Option<TestRecord> {
    #[derive(serde::Deserialize)]
    struct Recorded {
        #[serde(default)]
        images: Option<[usize; 2]>,
        #[serde(default)]
        labels: Option<[u32; 2]>,
        #[serde(default)]
        names: Option<[u32; 2]>,
        #[serde(default)]
        test_contents: Option<u32>,
    }
    let r = recorded::<Recorded>(dir)?;
    Some(TestRecord {
        images: r.images.map(|[_, test]| test),
        labels: r.labels.map(|[_, test]| test),
        names: r.names.map(|[_, test]| test),
        contents: r.test_contents,
    })
}

/// The test split's [`names_crc`] that the state in `dir` records, read from its header alone.
/// `None` without a state, or for one that does not record it.
pub fn saved_test_names(dir: &Path) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Recorded {
        #[serde(default)]
        names: Option<[u32; 2]>,
    }
    recorded::<Recorded>(dir)?.names.map(|[_, test]| test)
}

/// The tensors of a saved state.
pub struct StateTensors {
    /// Model variables by PyTorch name (running statistics included).
    pub model: HashMap<String, Tensor>,
    /// Optimizer buffers as [`optim::Optimizer::state`] names them.
    pub optimizer: HashMap<String, Tensor>,
    /// The training images' files' [`datasets::fingerprint`]s, sorted, for data read from
    /// files (image folders; `None` for MNIST's and CIFAR-10's batches, and in states saved
    /// before they were kept): what tells `evaluate` that an image of another folder is one
    /// the run trained on.
    pub trained_on: Option<Vec<u64>>,
}

/// Writes the state into `dir` as one file, atomically.
///
/// Errors: a tensor holding NaN or infinity (nothing is written), or the file system's.
pub fn save(dir: &Path, state: &ResumeState, tensors: &StateTensors) -> Result<()> {
    let mut all = HashMap::new();
    for (prefix, part) in [(MODEL, &tensors.model), (OPTIMIZER, &tensors.optimizer)] {
        for (k, v) in part {
            all.insert(format!("{prefix}{k}"), v.clone());
        }
    }
    all.insert(
        EPOCHS_DONE.to_string(),
        Tensor::new(state.epochs_done as i64, &Device::Cpu)?,
    );
    let json = serde_json::to_string(state)?;
    let crc = format!("{:08x}", crc32c::crc32c(json.as_bytes()));
    let mut metadata = HashMap::from([
        (RESUME_KEY.to_string(), json),
        (RESUME_CRC_KEY.to_string(), crc),
    ]);
    if let Some(sums) = &tensors.trained_on {
        // The bits of each u64 as an int64 (safetensors' and PyTorch's 64-bit integer), in
        // little-endian order as the file holds them.
        let bits: Vec<i64> = sums.iter().map(|&s| s as i64).collect();
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        metadata.insert(
            TRAINED_ON_CRC_KEY.to_string(),
            format!("{:08x}", crc32c::crc32c(&bytes)),
        );
        all.insert(TRAINED_ON.to_string(), Tensor::new(bits, &Device::Cpu)?);
    }
    // The lock checked before the work, and again as the file is renamed into place.
    crate::rundir::check_lock(dir)?;
    layers::checkpoint::save_with_metadata_renaming(
        &all,
        Some(metadata),
        &dir.join(STATE),
        crate::atomic::rename_into_run,
    )
}

/// How many training and test images the run in `dir` trained and tested on, as its state
/// records them, read from the state's header alone (not its tensors). `None` without a state,
/// or for a state that does not record them (or cannot be read: [`load`] says why).
pub fn saved_images(dir: &Path) -> Option<[usize; 2]> {
    #[derive(serde::Deserialize)]
    struct Recorded {
        #[serde(default)]
        images: Option<[usize; 2]>,
    }
    recorded::<Recorded>(dir)?.images
}

/// The run's configuration and class names as the state in `dir` keeps them, read from its
/// header alone: what `evaluate` and `predict` take when `config.json` (or `classes.json`) was
/// removed. `None` without a readable state.
pub fn saved_settings(dir: &Path) -> Option<(RunConfig, Option<Vec<String>>)> {
    #[derive(serde::Deserialize)]
    struct Recorded {
        config: RunConfig,
        #[serde(default)]
        classes: Option<Vec<String>>,
    }
    let recorded = recorded::<Recorded>(dir)?;
    Some((recorded.config, recorded.classes))
}

/// The epochs done and the best epoch (from 1) that the resume state in `dir` records, read
/// from its header alone. `None` without a readable state.
pub fn saved_epochs(dir: &Path) -> Option<(usize, usize)> {
    #[derive(serde::Deserialize)]
    struct Recorded {
        epochs_done: usize,
        best_epoch: usize,
    }
    recorded::<Recorded>(dir).map(|r| (r.epochs_done, r.best_epoch))
}

/// The [`ResumeState::best_crc32c`] that the state in `dir` records, read from its header
/// alone; `None` without a state, or for one that does not record it.
pub fn saved_best_crc(dir: &Path) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Recorded {
        #[serde(default)]
        best_crc32c: Option<u32>,
    }
    recorded::<Recorded>(dir).and_then(|r| r.best_crc32c)
}

/// The epochs done that `path` records when it is a resume state (whatever its name: a state
/// given where a checkpoint goes), read from its header alone; `None` for any other file.
pub fn epochs_of_state_file(path: &Path) -> Option<usize> {
    #[derive(serde::Deserialize)]
    struct Recorded {
        epochs_done: usize,
    }
    serde_json::from_str::<Recorded>(&header_of(path)?)
        .ok()
        .map(|r| r.epochs_done)
}

/// What the resume state in `dir` records, as `T` takes it from its JSON (`None` without a
/// readable one).
fn recorded<T: serde::de::DeserializeOwned>(dir: &Path) -> Option<T> {
    serde_json::from_str(&saved_header(dir)?).ok()
}

/// The resume state's JSON in the header of `dir`'s state, without reading its tensors.
fn saved_header(dir: &Path) -> Option<String> {
    header_of(&dir.join(STATE))
}

/// Whether the state in `dir` holds the checksums every state a run writes holds, and every
/// load checks: its tensors' ([`layers::checkpoint::CHECKSUM_KEY`]) and its resume record's,
/// read from its header alone. A state without them was rewritten by another tool (or saved
/// before they were kept).
pub fn checksummed(dir: &Path) -> bool {
    metadata_of(&dir.join(STATE)).is_some_and(|m| {
        m.get(layers::checkpoint::CHECKSUM_KEY).is_some() && m.get(RESUME_CRC_KEY).is_some()
    })
}

/// The metadata in the header of the safetensors file `path`, without reading its tensors;
/// `None` for a file that holds none, or is no regular file.
fn metadata_of(path: &Path) -> Option<serde_json::Value> {
    use std::io::Read;
    // A pipe or device by the state's name is never opened (the open would wait on a pipe).
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return None;
    }
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    // A header larger than safetensors allows (100 MB) is no state's.
    let len = usize::try_from(u64::from_le_bytes(len))
        .ok()
        .filter(|&n| n <= 100_000_000)?;
    let mut header = vec![0u8; len];
    file.read_exact(&mut header).ok()?;
    let mut header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    Some(header.get_mut("__metadata__")?.take())
}

/// The resume state's JSON in the header of the safetensors file `path`, without reading its
/// tensors; `None` for a file that holds none.
fn header_of(path: &Path) -> Option<String> {
    let metadata = metadata_of(path)?;
    let text = metadata.get(RESUME_KEY)?.as_str()?;
    // A record damaged since it was written (a flipped digit of its best accuracy, say) is
    // none; states saved before the sum was kept are read as they are.
    if let Some(written) = metadata.get(RESUME_CRC_KEY) {
        let written = written
            .as_str()
            .and_then(|w| u32::from_str_radix(w, 16).ok());
        if written != Some(crc32c::crc32c(text.as_bytes())) {
            return None;
        }
    }
    Some(text.to_string())
}

/// Reads the state saved in `dir`.
///
/// Errors name the file: missing (no epoch finished yet), not a valid state, a tensor holding
/// NaN or infinity, or (for runs saved as two files) halves from different epochs.
pub fn load(dir: &Path) -> Result<(ResumeState, StateTensors)> {
    let path = dir.join(STATE);
    if !path.exists() {
        let saved_none = dir.join(crate::rundir::CONFIG).is_file()
            && [crate::rundir::BEST, crate::rundir::LAST]
                .iter()
                .all(|f| !dir.join(f).exists());
        let checkpoints = [crate::rundir::BEST, crate::rundir::LAST]
            .iter()
            .any(|f| dir.join(f).exists());
        let hint = match (saved_none, checkpoints) {
            (true, _) => {
                " (the run there saved no epoch: start it again without --resume, with the \
                     same --out)"
            }
            (false, true) => {
                " (only checkpoints, which do not say how to go on: a run killed while saving \
                 its first epoch by an older version, or files put there; start the run again \
                 with --overwrite, which moves them aside)"
            }
            (false, false) => " (no epoch of a run was saved there)",
        };
        bail!(
            "cannot resume from {}: it holds no {STATE}{hint}",
            dir.display()
        );
    }
    let (all, metadata) = layers::checkpoint::read_with_metadata(&path)?;
    let state: ResumeState = match metadata.get(RESUME_KEY) {
        Some(json) => serde_json::from_str(json)
            .with_context(|| format!("{} holds no valid resume state", path.display()))?,
        None => legacy_json(dir)?,
    };
    let done = all
        .get(EPOCHS_DONE)
        .with_context(|| format!("{} lacks {EPOCHS_DONE}", path.display()))?
        .to_scalar::<i64>()
        .with_context(|| format!("{}: {EPOCHS_DONE} is not an int64 scalar", path.display()))?;
    if done != state.epochs_done as i64 {
        bail!(
            "{} holds tensors from epoch {done} but a resume state from epoch {}: the run was \
             interrupted while saving; resume is not possible from it",
            path.display(),
            state.epochs_done
        );
    }
    check_consistent(&state).with_context(|| {
        format!(
            "{}: the resume state does not hold together (edited or damaged); resume is not \
             possible from it",
            path.display()
        )
    })?;
    let mut tensors = StateTensors {
        model: HashMap::new(),
        optimizer: HashMap::new(),
        trained_on: None,
    };
    for (k, v) in all {
        if k == TRAINED_ON {
            tensors.trained_on = Some(fingerprints(&v).with_context(|| {
                format!("{}: {TRAINED_ON} is not a vector of int64", path.display())
            })?);
        } else if let Some(name) = k.strip_prefix(MODEL) {
            tensors.model.insert(name.to_string(), v);
        } else if let Some(name) = k.strip_prefix(OPTIMIZER) {
            tensors.optimizer.insert(name.to_string(), v);
        } else if k != EPOCHS_DONE {
            bail!("{} holds an unexpected tensor {k}", path.display());
        }
    }
    Ok((state, tensors))
}

/// [`contents_crc`] of data whose files' fingerprints in order are `sums`.
pub fn crc_of_fingerprints(sums: &[u64]) -> u32 {
    sums.iter()
        .fold(0, |crc, s| crc32c::crc32c_append(crc, &s.to_le_bytes()))
}

/// The fingerprints of `data`'s files in order ([`datasets::Dataset::fingerprint`], each file's
/// bytes read once, in parallel; a share per rank in a data-parallel job, gathered on every
/// rank: every rank must call it, in the same order); `None` for data whose samples come from
/// no file of their own (MNIST's and CIFAR-10's batches). Sorted, they are what
/// [`StateTensors::trained_on`] keeps; in order, their [`crc_of_fingerprints`] is the data's
/// [`contents_crc`].
///
/// # Errors
/// A file cannot be read (named; on the other ranks, that a rank could not read its share).
pub fn fingerprints_in_order(data: &dyn datasets::Dataset) -> Result<Option<Vec<u64>>> {
    file_fingerprints(data, true)
}

/// The sorted fingerprints of `data`'s files ([`datasets::Dataset::fingerprint`], each file's
/// bytes read once, in parallel), what [`StateTensors::trained_on`] keeps of the training
/// images; `None` for data whose samples come from no file of their own (MNIST's and
/// CIFAR-10's batches). In a data-parallel job each rank reads a share, gathered on every rank:
/// every rank must call it, in the same order (the training run's start does).
///
/// # Errors
/// A file cannot be read (named; on the other ranks, that a rank could not read its share).
pub fn fingerprints_of(data: &dyn datasets::Dataset) -> Result<Option<Vec<u64>>> {
    Ok(file_fingerprints(data, true)?.map(sorted))
}

/// The fingerprints a [`TRAINED_ON`] tensor holds, sorted, each once (as written; a file
/// rewritten by another tool may hold them otherwise).
fn fingerprints(tensor: &Tensor) -> Result<Vec<u64>> {
    Ok(sorted(
        tensor
            .to_vec1::<i64>()?
            .into_iter()
            .map(|s| s as u64)
            .collect(),
    ))
}

/// `sums` sorted, each once.
pub(crate) fn sorted(mut sums: Vec<u64>) -> Vec<u64> {
    sums.sort_unstable();
    sums.dedup();
    sums
}

/// The training images' fingerprints ([`StateTensors::trained_on`], sorted) that the state in
/// `dir` keeps, read from its header and that tensor alone (not the weights and optimizer
/// buffers), checked against their own CRC-32C. `Ok(None)` without a state, or for one that
/// keeps none (a run of MNIST or CIFAR-10's batches, or saved before they were kept).
///
/// # Errors
/// The state cannot be read, is no safetensors file, or its fingerprints are damaged (named).
pub fn saved_trained_on(dir: &Path) -> Result<Option<Vec<u64>>> {
    use std::io::{Read, Seek};
    let path = dir.join(STATE);
    if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    let damaged = |what: &str| {
        anyhow::anyhow!(
            "{}: the training images' fingerprints ({TRAINED_ON}) {what}",
            path.display()
        )
    };
    let mut file =
        std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .with_context(|| format!("{} is no safetensors file (too short)", path.display()))?;
    let len = usize::try_from(u64::from_le_bytes(len))
        .ok()
        .filter(|&n| n <= 100_000_000)
        .with_context(|| format!("{} is no safetensors file (header length)", path.display()))?;
    let mut header = vec![0u8; len];
    file.read_exact(&mut header)
        .with_context(|| format!("{} is no safetensors file (cut short)", path.display()))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("{} is no safetensors file (header)", path.display()))?;
    let Some(entry) = header.get(TRAINED_ON) else {
        return Ok(None);
    };
    let offsets: Option<Vec<u64>> = entry
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .and_then(|o| o.iter().map(|v| v.as_u64()).collect());
    // Within the file: the data section begins after the length and the header.
    let size = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let (start, end) = match offsets.as_deref() {
        Some(&[start, end])
            if start <= end
                && (end - start) % 8 == 0
                && (8 + len as u64)
                    .checked_add(end)
                    .is_some_and(|last| last <= size) =>
        {
            (start, end)
        }
        _ => return Err(damaged("have no valid place in the file")),
    };
    let shape_ok = entry
        .get("shape")
        .and_then(|s| s.as_array())
        .is_some_and(|s| s.len() == 1 && s[0].as_u64() == Some((end - start) / 8));
    if entry.get("dtype").and_then(|d| d.as_str()) != Some("I64") || !shape_ok {
        return Err(damaged("are not a vector of int64"));
    }
    let mut bytes = vec![0u8; usize::try_from(end - start).map_err(|_| damaged("too many"))?];
    file.seek(std::io::SeekFrom::Start(8 + len as u64 + start))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|_| damaged("are cut short"))?;
    let written = header
        .get("__metadata__")
        .and_then(|m| m.get(TRAINED_ON_CRC_KEY))
        .and_then(|c| c.as_str())
        .and_then(|c| u32::from_str_radix(c, 16).ok());
    // Written with their sum; a file rewritten by another tool without it is read as it is.
    if written.is_some_and(|w| w != crc32c::crc32c(&bytes)) {
        return Err(damaged("are damaged (their CRC-32C does not match)"));
    }
    Ok(Some(sorted(
        bytes
            .chunks_exact(8)
            .map(|b| {
                let mut word = [0u8; 8];
                word.copy_from_slice(b);
                u64::from_le_bytes(word)
            })
            .collect(),
    )))
}

/// What a saved state must hold to be continued: one history record per epoch done, epochs 1
/// to `epochs_done` in order (a resume writes the metrics files from it), a best epoch among
/// them (the first of the highest test accuracy, with that accuracy), and a dropout generator state that is not all zero (xoshiro256's one state that
/// gives nothing but zeros).
fn check_consistent(state: &ResumeState) -> Result<()> {
    let epochs: Vec<usize> = state.history.iter().map(|r| r.epoch).collect();
    if !epochs.iter().copied().eq(1..=state.epochs_done) {
        bail!(
            "{} epoch{} done, but the history holds epochs {epochs:?}",
            state.epochs_done,
            if state.epochs_done == 1 { "" } else { "s" }
        );
    }
    if state.best_epoch > state.epochs_done {
        bail!(
            "its best epoch {} is past the epochs done ({})",
            state.best_epoch,
            state.epochs_done
        );
    }
    // The best epoch is the history's first of the highest test accuracy, and its accuracy
    // that one's (a run sets both from the epoch's record): another would keep the best
    // checkpoint from ever being replaced, or say a best the run never reached.
    if let Some(first) = state.history.first() {
        let best = state
            .history
            .iter()
            .fold(first, |best, r| match r.test_acc > best.test_acc {
                true => r,
                false => best,
            });
        if state.best_epoch != best.epoch || state.best_acc != best.test_acc {
            bail!(
                "its best epoch {} at {}% test accuracy is not its history's, epoch {} at {}%",
                state.best_epoch,
                state.best_acc,
                best.epoch,
                best.test_acc
            );
        }
    }
    if state.rng_state == [0; 4] {
        bail!("its dropout generator state is all zero");
    }
    Ok(())
}

/// Before a resume writes anything: the run's other files in `dir` agree with its state
/// (`saved`, `tensors`), which the resume continues. A `state.safetensors` copied from another
/// run, or a `config.json` edited by hand, would otherwise have the resumed run replace the
/// checkpoints and the configuration of the run that is there with another run's.
///
/// - `config.json` (when there) holds the state's settings, but for those `--resume` may
///   change (`--epochs`, `--data-dir`, ...): it is a copy, and editing it changes nothing;
/// - `best.safetensors` and `last.safetensors` (when there and readable: one cut short holds
///   nothing to keep) hold the state's network: the same tensor names and shapes (read from
///   their headers).
///
/// # Errors
/// Names the file, the settings or tensor that differ, and what to do.
pub fn check_agrees_with_run(
    dir: &Path,
    saved: &ResumeState,
    tensors: &StateTensors,
) -> Result<()> {
    let config_path = dir.join(crate::rundir::CONFIG);
    match layers::file::read(&config_path) {
        Ok(bytes) => {
            let copy: RunConfig = serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not a run's configuration: --resume takes the settings of {} and \
                     writes config.json again from them; put the run's config.json back or \
                     remove it",
                    config_path.display(),
                    STATE
                )
            })?;
            let differ = settings_differing(&copy, &saved.config);
            if !differ.is_empty() {
                let changeable = crate::flags::changeable_on_resume();
                bail!(
                    "--resume {}: config.json and {STATE} disagree ({}): they come from \
                     different runs, or config.json was edited. --resume continues the run of \
                     {STATE}, whose settings config.json only copies (editing it changes \
                     nothing; only {} may change, on the command line); put the run's own \
                     files back",
                    dir.display(),
                    differ.join("; "),
                    changeable.join(", ")
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", config_path.display())),
    }
    let network: std::collections::BTreeMap<&str, Vec<usize>> = tensors
        .model
        .iter()
        .map(|(name, t)| (name.as_str(), t.dims().to_vec()))
        .collect();
    for file in [crate::rundir::BEST, crate::rundir::LAST] {
        let path = dir.join(file);
        if !path.exists() {
            continue;
        }
        // A file cut short or garbled holds no network to protect: `last` is written again
        // from the state, and a damaged `best` is said (run::best_damage).
        let Ok(shapes) = tensor_shapes(&path) else {
            continue;
        };
        let found: std::collections::BTreeMap<&str, Vec<usize>> = shapes
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        if let Some(why) = first_difference(&found, &network) {
            bail!(
                "--resume {}: {file} and {STATE} hold different networks ({why}; the state \
                 names a {} run): one of them comes from another run or was damaged. Resuming \
                 would replace {file}; put the run's own files back",
                dir.display(),
                saved.config.model
            );
        }
    }
    Ok(())
}

/// The settings that differ between a run's `config.json` (`copy`) and its state's
/// configuration (`saved`), as `--flag: X in config.json, Y in state.safetensors`; the settings
/// `--resume` may change are passed over.
pub fn settings_differing(copy: &RunConfig, saved: &RunConfig) -> Vec<String> {
    let mut differ = Vec::new();
    let mut compare = |name: String, a: String, b: String| {
        if a != b {
            differ.push(format!("{name}: {a:?} in config.json, {b:?} in {STATE}"));
        }
    };
    compare(
        "program".into(),
        copy.program.clone(),
        saved.program.clone(),
    );
    compare(
        "data set".into(),
        format!("{:?}", copy.dataset),
        format!("{:?}", saved.dataset),
    );
    for row in crate::flags::table().iter().filter(|row| !row.changeable) {
        compare(row.flag(), (row.value)(copy), (row.value)(saved));
    }
    let settings = |c: &RunConfig| {
        c.program_settings
            .as_ref()
            .map_or(String::new(), |s| s.to_string())
    };
    compare("program settings".into(), settings(copy), settings(saved));
    differ
}

/// The first way in which the tensors `found` (name to shape) differ from `network`'s.
fn first_difference(
    found: &std::collections::BTreeMap<&str, Vec<usize>>,
    network: &std::collections::BTreeMap<&str, Vec<usize>>,
) -> Option<String> {
    if let Some(name) = found.keys().find(|k| !network.contains_key(*k)) {
        return Some(format!("it has {name}, which the state's network lacks"));
    }
    if let Some(name) = network.keys().find(|k| !found.contains_key(*k)) {
        return Some(format!("it lacks {name}"));
    }
    found
        .iter()
        .find(|(name, shape)| network[*name] != **shape)
        .map(|(name, shape)| {
            format!(
                "{name} is {shape:?} there, {:?} in the state",
                network[*name]
            )
        })
}

/// The tensor names and shapes of the safetensors file `path`, from its header alone.
///
/// # Errors
/// The file cannot be read or its header is not safetensors'.
fn tensor_shapes(path: &Path) -> Result<std::collections::BTreeMap<String, Vec<usize>>> {
    use std::io::Read;
    let bad = || {
        format!(
            "{} is not a safetensors file (its header cannot be read)",
            path.display()
        )
    };
    layers::file::regular(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).with_context(bad)?;
    let len = u64::from_le_bytes(len);
    // safetensors' own limit on a header.
    anyhow::ensure!(len <= 100_000_000, "{}", bad());
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).with_context(bad)?;
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).with_context(bad)?;
    let mut shapes = std::collections::BTreeMap::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let shape = info
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|dims| {
                dims.iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect()
            })
            .with_context(bad)?;
        shapes.insert(name, shape);
    }
    Ok(shapes)
}

fn legacy_json(dir: &Path) -> Result<ResumeState> {
    let path = dir.join(LEGACY_STATE_JSON);
    let text = layers::file::read(&path).with_context(|| {
        format!(
            "{} holds no resume state in its metadata and there is no readable {}",
            dir.join(STATE).display(),
            path.display()
        )
    })?;
    serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a valid resume state", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image folder of two classes of two images each under `root`.
    fn folder(root: &Path) {
        for class in ["cat", "dog"] {
            for k in 0..2u8 {
                let path = root.join(class).join(format!("{k}.png"));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                image::RgbImage::from_pixel(4, 4, image::Rgb([k * 50, 0, 9]))
                    .save(&path)
                    .unwrap();
            }
        }
    }

    /// The resume record read from the header alone: as written, or `None` once damaged (one
    /// digit changed, the length kept); a record without its sum (states saved before) is
    /// read as it is.
    #[test]
    fn a_damaged_resume_record_is_not_read_from_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE);
        let json = r#"{"best_acc":83.0}"#;
        let crc = format!("{:08x}", crc32c::crc32c(json.as_bytes()));
        let tensors =
            HashMap::from([("w".to_string(), Tensor::new(&[1f32], &Device::Cpu).unwrap())]);
        let write = |record: &str, crc: Option<&str>| {
            let mut metadata = HashMap::from([(RESUME_KEY.to_string(), record.to_string())]);
            if let Some(crc) = crc {
                metadata.insert(RESUME_CRC_KEY.to_string(), crc.to_string());
            }
            layers::checkpoint::save_with_metadata(&tensors, Some(metadata), &path).unwrap();
        };
        write(json, Some(&crc));
        assert_eq!(header_of(&path).as_deref(), Some(json));
        write(&json.replace("83", "93"), Some(&crc));
        assert_eq!(header_of(&path), None);
        write(&json.replace("83", "93"), None);
        assert_eq!(header_of(&path).as_deref(), Some(r#"{"best_acc":93.0}"#));
    }

    /// The training images' fingerprints are their files' XXH3-64, whether the folder is read
    /// file by file or decoded into memory (what `evaluate` reads another folder as may be the
    /// other), sorted; they survive the state's save and load; MNIST-like batches have none.
    #[test]
    fn a_state_keeps_its_training_files_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        folder(dir.path());
        let mut expected: Vec<u64> = ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
            .iter()
            .map(|f| datasets::fingerprint(&std::fs::read(dir.path().join(f)).unwrap()))
            .collect();
        // Sorted, each once (the two classes hold the same two files).
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(expected.len(), 2);
        for storage in [datasets::Storage::Files, datasets::Storage::Memory] {
            let data = datasets::image_folder_training(dir.path(), storage).unwrap();
            let sums = fingerprints_of(data.as_ref()).unwrap();
            assert_eq!(sums.as_ref(), Some(&expected), "{storage:?}");
        }
        let batches = datasets::InMemory::new(vec![0u8; 8], vec![0usize, 1], (1, 2, 2), {
            vec!["a".into(), "b".into()]
        })
        .unwrap();
        assert_eq!(fingerprints_of(&batches).unwrap(), None);

        // Kept as int64 bits: sums with the top bit set come back as they were, sorted and each
        // once however the file holds them; with their CRC-32C, damaged ones are refused.
        let run = tempfile::tempdir().unwrap();
        let kept = [u64::MAX, 3, 1 << 63, 3];
        let bits: Vec<i64> = kept.iter().map(|&s| s as i64).collect();
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let tensors = HashMap::from([
            (
                "model.w".to_string(),
                Tensor::new(&[1f32], &Device::Cpu).unwrap(),
            ),
            (
                TRAINED_ON.to_string(),
                Tensor::new(bits, &Device::Cpu).unwrap(),
            ),
        ]);
        let path = run.path().join(STATE);
        let write = |crc: Option<u32>| {
            let metadata =
                crc.map(|c| HashMap::from([(TRAINED_ON_CRC_KEY.into(), format!("{c:08x}"))]));
            layers::checkpoint::save_with_metadata(&tensors, metadata, &path).unwrap();
        };
        for crc in [None, Some(crc32c::crc32c(&bytes))] {
            write(crc);
            assert_eq!(
                saved_trained_on(run.path()).unwrap(),
                Some(vec![3, 1 << 63, u64::MAX])
            );
        }
        write(Some(crc32c::crc32c(&bytes) ^ 1));
        let err = saved_trained_on(run.path()).unwrap_err().to_string();
        assert!(err.contains("are damaged") && err.contains(STATE), "{err}");
        // A header that places them past the file's end, at offsets no number, or cut short:
        // an error, never an allocation of what the header claims.
        let written = std::fs::read(&path).unwrap();
        let header_len = u64::from_le_bytes(written[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&written[8..8 + header_len])
            .unwrap()
            .to_string();
        let at = header.find("\"data_offsets\":[").unwrap() + "\"data_offsets\":[".len();
        let close = at + header[at..].find(']').unwrap();
        let (first, _) = header[at..close].split_once(',').unwrap();
        for offsets in [
            format!("{first},{}", u64::MAX - 7),
            format!("{first},\"x\",{first}"),
        ] {
            let bad = header[..at].to_string() + &offsets + &header[close..];
            let mut file = (bad.len() as u64).to_le_bytes().to_vec();
            file.extend_from_slice(bad.as_bytes());
            file.extend_from_slice(&written[8 + header_len..]);
            std::fs::write(&path, &file).unwrap();
            let err = saved_trained_on(run.path()).unwrap_err().to_string();
            assert!(err.contains("have no valid place"), "{offsets}: {err}");
        }
        std::fs::write(&path, &written[..written.len() - 8]).unwrap();
        let err = saved_trained_on(run.path()).unwrap_err().to_string();
        assert!(err.contains("have no valid place"), "cut short: {err}");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(saved_trained_on(&run.path().join("none")).unwrap(), None);
    }

    /// The training images of the folder read as `spelled`.
    fn read(spelled: &str) -> std::sync::Arc<dyn datasets::Dataset> {
        datasets::image_folder_training(Path::new(spelled), datasets::Storage::Files).unwrap()
    }

    /// One folder spelled `DIR`, `DIR/` or `DIR/.` sums to one CRC, the plain spelling's as it
    /// always was (the names below the folder, from their slash); a state saved before, which
    /// summed `DIR/`'s names without their slash, is still matched by `names_crc_like`, and
    /// other names are not.
    #[test]
    fn one_folder_in_any_spelling_has_one_names_crc() {
        let dir = tempfile::tempdir().unwrap();
        folder(dir.path());
        let plain = dir.path().display().to_string();
        let data = read(&plain);
        let expected = ["/cat/0.png", "/cat/1.png", "/dog/0.png", "/dog/1.png"]
            .iter()
            .fold(0, |crc, name| {
                crc32c::crc32c_append(crc32c::crc32c_append(crc, name.as_bytes()), &[0])
            });
        assert_eq!(names_crc(data.as_ref(), Some(Path::new(&plain))), expected);
        for spelled in [
            format!("{plain}/"),
            format!("{plain}/."),
            format!("{plain}//"),
        ] {
            let data = read(&spelled);
            let root = Some(Path::new(&spelled));
            assert_eq!(names_crc(data.as_ref(), root), expected, "{spelled}");
        }
        // As a state saved before summed `DIR/`: the names from below the slash.
        let slashed = format!("{plain}/");
        let data = read(&slashed);
        let root = Some(Path::new(&slashed));
        let before = ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
            .iter()
            .fold(0, |crc, name| {
                crc32c::crc32c_append(crc32c::crc32c_append(crc, name.as_bytes()), &[0])
            });
        assert_eq!(names_crc_like(Some(before), data.as_ref(), root), before);
        // ... and read with the plain spelling (`evaluate --data-dir DIR` of a run of `DIR/`).
        let data = read(&plain);
        let root = Some(Path::new(&plain));
        assert_eq!(names_crc_like(Some(before), data.as_ref(), root), before);
        let (data, root) = (read(&slashed), Some(Path::new(&slashed)));
        assert_eq!(names_crc_like(None, data.as_ref(), root), expected);
        assert_eq!(names_crc_like(Some(7), data.as_ref(), root), expected);
    }
}
