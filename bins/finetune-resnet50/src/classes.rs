//! Class names: ImageNet's for the pretrained head, the dataset's for a fine-tuned one.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The 1000 ImageNet class names in label order (torchvision's / Keras' index).
pub fn imagenet() -> Vec<String> {
    datasets::catalog::imagenet_classes()
}

/// The file beside a fine-tuned checkpoint that holds its class names (a JSON list).
pub fn sidecar(weights: &Path) -> std::path::PathBuf {
    weights.with_file_name(train::rundir::CLASSES)
}

/// The names for a checkpoint with `num_classes` outputs stored at `weights`.
pub fn for_checkpoint(weights: &Path, num_classes: usize) -> Result<Vec<String>> {
    let path = sidecar(weights);
    // Anything there is read (a pipe or a folder is refused, named, not taken for absent).
    if std::fs::symlink_metadata(&path).is_ok() {
        let text = layers::file::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let names: Vec<String> = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON list of class names", path.display()))?;
        if names.len() != num_classes {
            bail!(
                "{} lists {} classes but the checkpoint's head has {num_classes}",
                path.display(),
                names.len()
            )
        }
        return Ok(names);
    }
    if num_classes == 1000 {
        return Ok(imagenet());
    }
    train::warn!(
        "no {} beside {}: its {num_classes} classes are named by number (class 0, class 1, ...)",
        train::rundir::CLASSES,
        weights.display()
    );
    Ok((0..num_classes).map(|i| format!("class {i}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_has_a_thousand_names_in_order() {
        let names = imagenet();
        assert_eq!(names.len(), 1000);
        assert_eq!(names[0], "tench");
        assert_eq!(names[281], "tabby");
        assert_eq!(names[999], "toilet tissue");
    }

    #[test]
    fn sidecar_names_must_match_the_head() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let weights = dir.path().join(train::rundir::BEST);
        train::inference::save_classes(dir.path(), &["cat".into(), "dog".into()])?;
        assert_eq!(for_checkpoint(&weights, 2)?, ["cat", "dog"]);
        assert!(for_checkpoint(&weights, 3).is_err());
        Ok(())
    }
}
