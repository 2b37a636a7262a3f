//! Section 1 of the tutorial in pictures: convolution and pooling on small matrices, dataset
//! samples, and what a (trained) network sees: its first-layer filters and feature maps.
//!
//! `cargo run -p visualize -- conv --out docs`

mod conv;
mod feature_maps;
mod filters;
mod geometry;
mod grad_cam;
mod matrix;
mod model;
mod pool;
mod samples;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Pictures of convolution, pooling, datasets, filters and feature maps (PNG).
#[derive(Debug, Parser)]
// A flag given twice takes its last value, as argparse does.
#[command(name = "visualize", version, about, args_override_self = true)]
struct Cli {
    /// Directory the PNG files are written to (created if missing).
    #[arg(long, global = true, default_value = ".")]
    out: PathBuf,
    #[command(subcommand)]
    command: Command,
}

// A negative number after a flag is its value (refused by the flag's range), not a flag.
#[derive(Debug, Subcommand)]
enum Command {
    /// Convolves the tutorial's 5x5 input with its 3x3 kernel (or your own): conv.png.
    #[command(allow_negative_numbers = true)]
    Conv(conv::ConvArgs),
    /// Max- and average-pools the tutorial's 4x4 feature map (or your own): pool.png.
    #[command(allow_negative_numbers = true)]
    Pool(pool::PoolArgs),
    /// The first training images of MNIST, CIFAR-10 or an image folder (--dataset folder) with
    /// their labels: samples-<dataset>.png.
    #[command(allow_negative_numbers = true)]
    Samples(samples::SamplesArgs),
    /// A model's first-layer kernels as an image grid: filters.png.
    #[command(allow_negative_numbers = true)]
    Filters(filters::FiltersArgs),
    /// A model's activations after each stage for one image: feature-maps-<stage>.png. A stage
    /// is a block: in the MNIST CNN, conv1 is the output of conv1, its activation and its
    /// pooling (a hook on PyTorch's conv1 module gives the map before them); LeNet-5's stages
    /// are named for their layers (not the paper's C1...F6), conv1 and conv2 its state_dict's
    /// features.0-2 and features.3-5, fc1 and fc2 classifier.0-1 and classifier.2-3; in a
    /// ResNet, torchvision's layer1..layer4 modules.
    #[command(allow_negative_numbers = true)]
    FeatureMaps(feature_maps::FeatureMapsArgs),
    /// Where a (trained) network looks for a class (Grad-CAM) in one image:
    /// grad-cam-<image>.png (grad-cam-<image>-class<K>.png for a --class). The map is divided
    /// by its maximum (pytorch-grad-cam also subtracts its minimum first); the stage of the
    /// tutorial's CNNs is conv2 after its activation and pooling, not the conv2 module's output.
    #[command(allow_negative_numbers = true)]
    GradCam(grad_cam::GradCamArgs),
}

/// Running out of memory ends in an error saying what to do, not in an abort.
#[global_allocator]
static ALLOCATOR: train::memory::ReportOutOfMemory = train::memory::ReportOutOfMemory;

fn main() -> Result<()> {
    train::cli::user_errors_without_backtraces();
    train::cli::write_errors_not_signals();
    let cli = Cli::try_parse().unwrap_or_else(|e| train::cli::exit_for_clap(e));
    let out = &cli.out;
    // Before any work: the pictures go into a folder.
    if std::fs::symlink_metadata(out).is_ok() && !out.is_dir() {
        anyhow::bail!(
            "--out {}: {}, not a directory (--out names the folder the pictures go into)",
            out.display(),
            match out.exists() {
                true => "a file",
                false => "a link to nothing",
            }
        );
    }
    let result = match &cli.command {
        Command::Conv(args) => conv::run(args, out),
        Command::Pool(args) => pool::run(args, out),
        Command::Samples(args) => samples::run(args, out),
        Command::Filters(args) => filters::run(args, out),
        Command::FeatureMaps(args) => feature_maps::run(args, out),
        Command::GradCam(args) => grad_cam::run(args, out),
    };
    train::progress::stdout_written(result)
}
