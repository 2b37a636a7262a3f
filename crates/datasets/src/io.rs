//! Reading whole files, transparently gunzipping `.gz` ones.

use anyhow::{Context, Result};
use flate2::read::MultiGzDecoder;
use std::io::Read;
use std::path::Path;

/// The gzip magic bytes.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The most bytes [`read_image_file`] reads from a pipe (whose length is not known before).
pub const MAX_PIPED_IMAGE: u64 = 256 << 20;

/// Reads the image file `path` (for [`crate::decode_image`]): a regular file, or a pipe
/// (`predict <(curl ...)`, `/dev/stdin`) of at most [`MAX_PIPED_IMAGE`] bytes. A directory, a
/// device such as `/dev/zero` or a socket is refused, naming it, rather than read without end.
/// A named pipe that no process has open for writing is not waited for: it gives no bytes.
///
/// # Errors
/// `path` does not exist, is none of those, a pipe gives no bytes or more than the limit, or it
/// cannot be read.
pub fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    let read_error = || format!("cannot read image {}", path.display());
    let meta = std::fs::metadata(path).with_context(read_error)?;
    #[cfg(unix)]
    let pipe = std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type());
    #[cfg(not(unix))]
    let pipe = false;
    anyhow::ensure!(
        meta.is_file() || pipe,
        "{}: not an image file ({})",
        path.display(),
        if meta.is_dir() {
            "a directory"
        } else {
            "a device or socket"
        }
    );
    if !pipe {
        return std::fs::read(path).with_context(read_error);
    }
    let mut bytes = Vec::new();
    open_pipe(path)
        .with_context(read_error)?
        .take(MAX_PIPED_IMAGE + 1)
        .read_to_end(&mut bytes)
        .with_context(read_error)?;
    anyhow::ensure!(
        !bytes.is_empty(),
        "{}: the pipe gave no bytes (a named pipe that nothing writes to, or an empty image)",
        path.display()
    );
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_PIPED_IMAGE,
        "{}: the pipe gives more than {} MiB, too much for an image",
        path.display(),
        MAX_PIPED_IMAGE >> 20
    );
    Ok(bytes)
}

/// Opens the pipe `path` for reading without waiting for a writer to open it (as a plain open
/// would, forever, for a named pipe nothing writes to); reads then wait for data as usual, and
/// end at once when no writer has it open.
#[cfg(unix)]
fn open_pipe(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    // SAFETY: fcntl on a descriptor this function owns, with valid commands and flags.
    unsafe {
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(file)
}

#[cfg(not(unix))]
fn open_pipe(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
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
