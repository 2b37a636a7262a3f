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
use crate::schedule::Stepping;

/// The metadata key of the JSON half.
const RESUME_KEY: &str = "resume_state";
const MODEL: &str = "model.";
const OPTIMIZER: &str = "optimizer.";
const EPOCHS_DONE: &str = "meta.epochs_done";

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
}

/// The tensors of a saved state.
pub struct StateTensors {
    /// Model variables by PyTorch name (running statistics included).
    pub model: HashMap<String, Tensor>,
    /// Optimizer buffers as [`crate::optim::Optimizer::state`] names them.
    pub optimizer: HashMap<String, Tensor>,
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
    layers::checkpoint::save_with_metadata(
        &all,
        Some(HashMap::from([(RESUME_KEY.to_string(), json)])),
        &dir.join(STATE),
    )
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
        let hint = match saved_none {
            true => {
                " (the run there saved no epoch: start it again without --resume, with the \
                     same --out)"
            }
            false => " (no epoch of a run was saved there)",
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
    let mut tensors = StateTensors {
        model: HashMap::new(),
        optimizer: HashMap::new(),
    };
    for (k, v) in all {
        if let Some(name) = k.strip_prefix(MODEL) {
            tensors.model.insert(name.to_string(), v);
        } else if let Some(name) = k.strip_prefix(OPTIMIZER) {
            tensors.optimizer.insert(name.to_string(), v);
        } else if k != EPOCHS_DONE {
            bail!("{} holds an unexpected tensor {k}", path.display());
        }
    }
    Ok((state, tensors))
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
