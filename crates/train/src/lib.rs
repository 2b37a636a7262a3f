//! The training engine: the train/eval loop over [`optim`]'s optimizers and LR schedules,
//! metrics, checkpoints with resumable state, progress output and the pictures of a run.
//! (A loop of your own needs only `layers`, `optim` and a model crate.)
//!
//! The training programs are thin: `train-mnist` and `train-cifar` describe their defaults as a
//! [`cli::Recipe`] and call [`cli::Recipe::main`]; `finetune-resnet50` adds its own flags and
//! builds its configuration with the same recipe ([`cli::Recipe::config`]).

pub mod atomic;
pub mod cli;
pub mod config;
pub mod device;
pub mod distributed;
pub mod engine;
pub mod features;
pub mod flags;
pub mod history;
pub mod inference;
pub mod interrupt;
pub mod memory;
pub mod metrics;
pub mod per_image;
pub mod pictures;
pub mod progress;
pub mod run;
pub mod rundir;
pub mod source;
pub mod state;
#[cfg(feature = "test-support")]
pub mod synthetic;
pub mod tally;
pub mod tensorboard;
pub mod threads;
