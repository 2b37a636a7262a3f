//! Reading whole files, transparently gunzipping `.gz` ones.

use anyhow::{Context, Result};
use flate2::read::MultiGzDecoder;
use std::io::Read;
use std::path::Path;

/// The gzip magic bytes.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads the image file `path` (for [`crate::decode_image`]): a regular file, so that a
/// directory, a device such as `/dev/zero` or a pipe is refused, naming it, rather than read
/// without end.
///
/// # Errors
/// `path` does not exist, is not a regular file, or cannot be read.
pub fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read image {}", path.display()))?;
    anyhow::ensure!(
        meta.is_file(),
        "{}: not an image file ({})",
        path.display(),
        if meta.is_dir() {
            "a directory"
        } else {
            "a device, pipe or socket"
        }
    );
    std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))
}

/// Reads `path` into memory, gunzipping it when it starts with the gzip magic.
///
/// The gzip stream is read to its end, so its CRC-32 and length trailer are verified; data after
/// it that is not another gzip member is an error, as for `gzip -t`.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4));
    MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .with_context(|| format!("{}: corrupt or truncated gzip data", path.display()))?;
    Ok(out)
}

/// Whether `path` names a gzipped tar archive (`.tar.gz` or `.tgz`) or a plain `.tar`.
pub fn is_archive(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    name.ends_with(".tar.gz") || name.ends_with(".tgz") || name.ends_with(".tar")
}

/// Errors unless `path` exists, naming it.
pub fn ensure_exists(path: &Path) -> Result<()> {
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    Ok(())
}
