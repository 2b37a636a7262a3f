//! `visualize samples`: the tutorial's grid of the first training images with their labels.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use clap::Args;
use datasets::{Dataset, DatasetSpec};

/// `--dataset`: a data set of the catalog that can be loaded.
fn loadable(name: &str) -> Result<&'static DatasetSpec, String> {
    match datasets::catalog::spec(name) {
        Ok(spec) if spec.read.is_some() => Ok(spec),
        Ok(spec) => Err(format!(
            "{} is not read by name: give {}",
            spec.title, spec.local_files
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Options of `samples`.
#[derive(Debug, Args)]
pub struct SamplesArgs {
    /// Which data set of the catalog (mnist, cifar10, folder, ...).
    #[arg(long, value_parser = loadable)]
    dataset: &'static DatasetSpec,
    /// Where the data set is (MNIST: the IDX files; CIFAR-10: the binary or Python batches, an
    /// ImageFolder tree, or the .tar.gz of any); without it, the Hub copy (downloaded once).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How many images.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=100))]
    count: u16,
    /// The first image of each class instead of the first images (useful when the files are
    /// sorted by class, as in an ImageFolder).
    #[arg(long)]
    per_class: bool,
    /// Images per row.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    cols: u16,
}

/// The indices to show: the first `count`, or the first of each class (at most `count`).
pub fn pick(data: &dyn Dataset, count: usize, per_class: bool) -> Vec<usize> {
    if !per_class {
        return (0..count.min(data.len())).collect();
    }
    let mut seen = vec![false; data.classes().len()];
    let mut chosen = Vec::new();
    for i in 0..data.len() {
        let label = data.label(i);
        if !seen[label] {
            seen[label] = true;
            chosen.push(i);
            if chosen.len() == count.min(seen.len()) {
                break;
            }
        }
    }
    chosen.sort_by_key(|&i| data.label(i));
    chosen
}

/// Runs `samples`: writes `samples-<dataset>.png` in `out` and prints each image's label.
pub fn run(args: &SamplesArgs, out: &Path) -> Result<()> {
    let dir = args.data_dir.as_deref();
    let train = match (args.dataset.name, dir) {
        // An image folder's training images, none held out: a folder too small to split
        // still shows its samples.
        ("folder", Some(dir)) => datasets::image_folder_training(dir, datasets::Storage::Files)?,
        _ => datasets::catalog::load(args.dataset, dir)?.train,
    };
    ensure!(!train.is_empty(), "the training set is empty");
    let chosen = pick(train.as_ref(), usize::from(args.count), args.per_class);
    let mut tiles = Vec::with_capacity(chosen.len());
    for &i in &chosen {
        let image = train.image(i)?;
        let class = &train.classes()[train.label(i)];
        train::say!("sample {i}: label {} ({class})", train.label(i));
        tiles.push(viz::Tile {
            channels: image.channels,
            height: image.height,
            width: image.width,
            data: image.data,
            caption: class.clone(),
            highlight: false,
        });
    }
    // An image folder's images are its train/ folder's, or all of them (none held out).
    let images = match args.dataset.name {
        "folder" => "",
        _ => " training",
    };
    let classes = train.classes().len();
    let count = usize::from(args.count);
    if args.per_class && count > chosen.len() {
        train::say!(
            "--per-class: one image for each class, {} images (--count {count} is more)",
            chosen.len()
        );
    }
    let which = match (args.per_class, chosen.len()) {
        (true, n) if n == classes => format!("the first{images} image of each class"),
        (true, n) => format!("the first{images} image of {n} of its {classes} classes"),
        (false, 1) => format!("the first{images} image"),
        (false, n) => format!("the first {n}{images} images"),
    };
    let title = format!("{}: {which}", args.dataset.title);
    let path = out.join(format!("samples-{}.png", args.dataset.name));
    train::atomic::write_with(&path, |tmp| {
        viz::save_image_grid(tmp, &title, &tiles, usize::from(args.cols))
    })?;
    train::say!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datasets::InMemory;

    #[test]
    fn picks_first_images_or_one_per_class() -> Result<()> {
        let classes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let labels = vec![2usize, 2, 0, 2, 1, 0];
        let data = InMemory::new(vec![0; 6], labels, (1, 1, 1), classes)?;
        assert_eq!(pick(&data, 4, false), [0, 1, 2, 3]);
        assert_eq!(pick(&data, 10, false), [0, 1, 2, 3, 4, 5]);
        assert_eq!(pick(&data, 10, true), [2, 4, 0]);
        assert_eq!(pick(&data, 2, true), [2, 0]);
        Ok(())
    }
}
