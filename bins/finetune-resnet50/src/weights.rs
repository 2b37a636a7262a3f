//! Where the pretrained ResNet comes from: a file, or the Hub model that torchvision's
//! `resnet50(pretrained=True)` (or `resnet18(...)`, the tutorial's) corresponds to.

use std::path::PathBuf;

use anyhow::Result;

/// torchvision's original ImageNet weights of the default model, as published by timm in
/// safetensors ([`transfer::default_weights`] of the others).
pub const DEFAULT_WEIGHTS: &str = "timm/resnet50.tv_in1k";

/// `--weights`: a `.safetensors` file, or a Hub model id whose `model.safetensors` is fetched
/// into the Hugging Face cache; errors give `model`'s Hub id as the example.
pub fn resolve(spec: &str, model: &str) -> Result<PathBuf> {
    datasets::hub::file_or_hub(
        spec,
        "model.safetensors",
        "--weights",
        &transfer::default_weights(model),
    )
}

/// `--weights` as a run saves it (`finetune.json`): an existing file as its absolute path, so
/// that the run's record names it from any directory; a Hub model id as given.
pub fn saved_form(spec: &str) -> String {
    let path = std::path::Path::new(spec);
    match path.is_file().then(|| std::path::absolute(path)) {
        Some(Ok(absolute)) => absolute.to_string_lossy().into_owned(),
        _ => spec.to_string(),
    }
}

/// Whether two `--weights` values name the same weights: the same text, or two spellings of one
/// existing file (`w.safetensors`, `./w.safetensors`, its absolute path), or of one path whose
/// file is gone.
pub fn same(a: &str, b: &str) -> bool {
    let file = |s: &str| std::fs::canonicalize(s).ok().filter(|p| p.is_file());
    // A file that is gone (moved after the run began) is compared by its absolute path.
    let absolute = |s: &str| std::path::absolute(s).ok();
    a == b
        || file(a).is_some_and(|p| file(b) == Some(p))
        || (file(a).is_none() && absolute(a).is_some_and(|p| absolute(b) == Some(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_spelled_two_ways_is_the_same_weights() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("w.safetensors");
        std::fs::write(&file, b"x")?;
        let absolute = saved_form(file.to_str().unwrap_or_default());
        assert!(std::path::Path::new(&absolute).is_absolute());
        let dotted = dir.path().join(".").join("w.safetensors");
        assert!(same(dotted.to_str().unwrap_or_default(), &absolute));
        assert!(!same("other.safetensors", &absolute));
        // Gone: the same path, relative or absolute, is still the same weights.
        std::fs::remove_file(&file)?;
        assert!(same(dotted.to_str().unwrap_or_default(), &absolute));
        assert!(!same("other.safetensors", &absolute));
        assert_eq!(saved_form(DEFAULT_WEIGHTS), DEFAULT_WEIGHTS);
        assert_eq!(transfer::default_weights(transfer::MODEL), DEFAULT_WEIGHTS);
        assert!(same(DEFAULT_WEIGHTS, DEFAULT_WEIGHTS));
        Ok(())
    }
}
