//! Section 4 of the tutorial: ResNet-18 (or another 3-channel zoo model) on CIFAR-10.
//!
//! `cargo run -p train-cifar -- --data-dir ../shared/data/cifar10 --limit-train 5000 --limit-test 1000 --epochs 3 --lr 0.02`

use train::cli::Recipe;
use train::config::{DatasetKind, OptimizerKind, ScheduleKind};

/// The tutorial's CIFAR-10 recipe: SGD lr 0.1, momentum 0.9, weight decay 5e-4, MultiStepLR at
/// epochs 100 and 150 (gamma 0.1), 180 epochs, batches of 128 (256 for testing), random crop
/// with padding 4 and horizontal flip.
const RECIPE: Recipe = Recipe {
    program: "train-cifar",
    about: "Train a CNN on CIFAR-10 (the tutorial's section 4)",
    dataset: DatasetKind::Cifar10,
    models: &[],
    model: "resnet18-seed",
    optimizer: OptimizerKind::Sgd,
    lr: 0.1,
    momentum: 0.9,
    weight_decay: 5e-4,
    schedule: ScheduleKind::Multistep,
    milestones: &[100, 150],
    step_size: train::flags::DEFAULT_STEP_SIZE,
    gamma: 0.1,
    epochs: 180,
    batch_size: 128,
    test_batch_size: 256,
    train_transform: "cifar10-train",
    test_transform: "cifar10-test",
};

/// Running out of memory ends in an error saying what to do, not in an abort.
#[global_allocator]
static ALLOCATOR: train::memory::ReportOutOfMemory = train::memory::ReportOutOfMemory;

fn main() -> anyhow::Result<()> {
    RECIPE.main()
}
