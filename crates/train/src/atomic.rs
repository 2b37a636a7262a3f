//! Writing files so that a reader never sees half of one: a temporary file, synced to the disk,
//! then a rename (and the directory synced), so that neither a crash nor a power cut leaves
//! half a file under the name.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A hidden temporary path beside `path` (same directory, so the rename is atomic) that keeps
/// the extension, for writers that pick the format from it (`.curves.tmp123.png`). A long
/// stem is cut to its first 100 characters, so that the temporary name stays within the
/// 255 bytes a file name may have wherever the final name does.
pub fn temp_path(path: &Path) -> PathBuf {
    let stem: String = path
        .file_stem()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default()
        .chars()
        .take(100)
        .collect();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    path.with_file_name(format!(".{stem}.tmp{}{ext}", std::process::id()))
}

/// Calls `write` on a temporary path beside `path`, then renames it over `path`.
///
/// # Errors
/// `write` fails, or the temporary file cannot be renamed over `path`; the temporary file is
/// removed either way.
pub fn write_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    let result = write(&tmp).and_then(|()| {
        // The data on the disk before the name: a power cut never leaves an empty file there.
        layers::file::sync(&tmp).with_context(|| format!("cannot sync {}", tmp.display()))?;
        rename_into_run(&tmp, path)?;
        Ok(layers::file::sync_dir_of(path)?)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Renames the temporary file `tmp` over `path`, a file of a run's folder, once the folder is
/// still this run's ([`crate::rundir::check_lock`]), and never while a Ctrl-C tidies the run
/// directories ([`crate::rundir::no_tidying`]): every file a run puts in place (its checkpoints
/// and resume state too, through `layers::checkpoint::save_with_metadata_renaming`) lands
/// before the tidying looks at the folder, or not at all.
///
/// # Errors
/// The folder is no longer this run's, or the rename fails.
pub(crate) fn rename_into_run(tmp: &Path, path: &Path) -> Result<()> {
    let _not_while_tidying = crate::rundir::no_tidying();
    crate::rundir::check_lock(crate::rundir::folder_of(path))?;
    std::fs::rename(tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// Writes `bytes` to `path` atomically.
///
/// # Errors
/// The temporary file cannot be written or renamed (the path is named).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |tmp| {
        std::fs::write(tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.txt");
        write_bytes(&path, b"one")?;
        write_bytes(&path, b"two")?;
        assert_eq!(std::fs::read(&path)?, b"two");
        assert!(write_with(&path, |_| anyhow::bail!("boom")).is_err());
        assert_eq!(std::fs::read(&path)?, b"two");
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }
}
