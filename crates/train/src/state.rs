//! The resumable state of a run, beside its checkpoints: `state.safetensors` (model weights with
//! BatchNorm statistics, and optimizer buffers) and `state.json` (epoch, schedule position, best
//! accuracy, dropout RNG state, history and configuration).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::config::RunConfig;
use crate::history::EpochRecord;
use crate::schedule::Stepping;

/// File name of the JSON half of the state.
pub const STATE_JSON: &str = "state.json";
/// File name of the tensor half of the state.
pub const STATE_TENSORS: &str = "state.safetensors";
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
}

/// The tensors of a saved state.
pub struct StateTensors {
    /// Model variables by PyTorch name (running statistics included).
    pub model: HashMap<String, Tensor>,
    /// Optimizer buffers as [`crate::optim::Optimizer::state`] names them.
    pub optimizer: HashMap<String, Tensor>,
}

/// Writes the state into `dir`: the tensors first, then the JSON, each atomically.
pub fn save(dir: &Path, state: &ResumeState, tensors: &StateTensors) -> Result<()> {
    let mut all = HashMap::new();
    for (prefix, part) in [(MODEL, &tensors.model), (OPTIMIZER, &tensors.optimizer)] {
        for (k, v) in part {
            all.insert(format!("{prefix}{k}"), v.to_device(&Device::Cpu)?);
        }
    }
    all.insert(
        EPOCHS_DONE.to_string(),
        Tensor::new(state.epochs_done as i64, &Device::Cpu)?,
    );
    layers::checkpoint::save_tensors(&all, &dir.join(STATE_TENSORS))?;
    atomic::write_bytes(&dir.join(STATE_JSON), &serde_json::to_vec_pretty(state)?)
}

/// Reads the state saved in `dir`, checking that its two files belong together.
pub fn load(dir: &Path) -> Result<(ResumeState, StateTensors)> {
    let json_path = dir.join(STATE_JSON);
    let text = std::fs::read(&json_path).with_context(|| {
        format!(
            "cannot resume from {}: no readable {STATE_JSON} (was the run saved after an epoch?)",
            dir.display()
        )
    })?;
    let state: ResumeState = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a valid resume state", json_path.display()))?;
    let tensor_path = dir.join(STATE_TENSORS);
    let all = layers::checkpoint::read(&tensor_path)?;
    let done = all
        .get(EPOCHS_DONE)
        .with_context(|| format!("{} lacks {EPOCHS_DONE}", tensor_path.display()))?
        .to_scalar::<i64>()?;
    if done != state.epochs_done as i64 {
        bail!(
            "{} is from epoch {done} but {} from epoch {}: the run was interrupted while saving; \
             resume is not possible from this pair",
            tensor_path.display(),
            json_path.display(),
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
            bail!("{} holds an unexpected tensor {k}", tensor_path.display());
        }
    }
    Ok((state, tensors))
}
