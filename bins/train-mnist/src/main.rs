//! Section 3 of the tutorial: a CNN (or LeNet-5) on MNIST, with the tutorial's defaults.
//!
//! `cargo run -p train-mnist -- --data-dir ../shared/data/mnist --epochs 2`

use train::cli::Recipe;
use train::config::{DatasetKind, OptimizerKind, ScheduleKind};

/// The tutorial's MNIST recipe: Adam at 1e-3, batches of 64 (1000 for testing),
/// `Normalize((0.1307,), (0.3081,))`, 16 epochs.
const RECIPE: Recipe = Recipe {
    program: "train-mnist",
    about: "Train a CNN on MNIST (the tutorial's section 3)",
    dataset: DatasetKind::Mnist,
    models: &["cnn-mnist", "lenet5"],
    model: "cnn-mnist",
    optimizer: OptimizerKind::Adam,
    lr: 1e-3,
    momentum: 0.9,
    weight_decay: 0.0,
    schedule: ScheduleKind::Constant,
    milestones: &[],
    step_size: train::flags::DEFAULT_STEP_SIZE,
    gamma: 0.1,
    epochs: 16,
    batch_size: 64,
    test_batch_size: 1000,
    train_transform: "mnist-train",
    test_transform: "mnist-test",
};

/// Running out of memory ends in an error saying what to do, not in an abort.
#[global_allocator]
static ALLOCATOR: train::memory::ReportOutOfMemory = train::memory::ReportOutOfMemory;

fn main() -> anyhow::Result<()> {
    RECIPE.main()
}
