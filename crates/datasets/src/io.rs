//! Reading whole files, transparently gunzipping `.gz` ones.

use anyhow::{bail, ensure, Context, Result};
use flate2::read::MultiGzDecoder;
use std::io::Read;
use std::path::Path;

/// The gzip magic bytes.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The most bytes [`read_image_file`] reads from a pipe (whose length is not known before).
pub const MAX_PIPED_IMAGE: u64 = 256 << 20;

/// The largest regular file [`read_image_file`] reads (4 GiB): an encoded image's pixels may
/// take at most about 1.4 GB (178,956,970 pixels of 16-bit RGBA), so a larger file is no image
/// this can decode.
pub const MAX_INPUT_FILE: u64 = 4 << 30;

/// How long [`read_image_file`] waits for a process to open a named pipe for writing.
pub const PIPE_WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the image file `path` (for [`crate::decode_image`]): a regular file, or a pipe
/// (`predict <(curl ...)`, `/dev/stdin`) of at most `MAX_PIPED_IMAGE` bytes (256 MiB). A directory, a
/// device such as `/dev/zero` or a socket is refused, naming it, rather than read without end.
/// A pipe is read as `cat` reads it, except that a named pipe which no process opens for
/// writing within `PIPE_WRITER_WAIT` (10 s) is an error rather than a wait without end.
///
/// # Errors
/// `path` does not exist, is none of those, is a regular file over `MAX_INPUT_FILE` (4 GiB), a
/// named pipe finds no writer, a pipe gives no bytes or more than the limit, or it cannot be
/// read.
pub fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    read_input_file(path, "image")
}

/// Reads a user's input file of the kind `what` (`"image"`, `"matrix"`: named in the errors)
/// as [`read_image_file`] reads an image: a regular file, or a pipe.
///
/// # Errors
/// As [`read_image_file`].
pub fn read_input_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    let article = match what.starts_with(['a', 'e', 'i', 'o', 'u']) {
        true => "an",
        false => "a",
    };
    let read_error = || format!("cannot read {what} {}", path.display());
    let meta = std::fs::metadata(path).with_context(read_error)?;
    #[cfg(unix)]
    let pipe = std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type());
    #[cfg(not(unix))]
    let pipe = false;
    anyhow::ensure!(
        meta.is_file() || pipe,
        "{}: not {article} {what} file ({})",
        path.display(),
        if meta.is_dir() {
            "a directory"
        } else {
            "a device or socket"
        }
    );
    if !pipe {
        // Read whole, a file of terabytes would take the memory; no image is that large.
        ensure!(
            meta.len() <= MAX_INPUT_FILE,
            "{}: {:.1} GiB, too large for {article} {what} (at most {} GiB are read)",
            path.display(),
            meta.len() as f64 / f64::from(1u32 << 30),
            MAX_INPUT_FILE >> 30
        );
        return std::fs::read(path).with_context(read_error);
    }
    let bytes = read_pipe(path, what)?;
    anyhow::ensure!(
        !bytes.is_empty(),
        "{}: the pipe gave no bytes (an empty {what})",
        path.display()
    );
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_PIPED_IMAGE,
        "{}: the pipe gives more than {} MiB, too much for {article} {what}",
        path.display(),
        MAX_PIPED_IMAGE >> 20
    );
    Ok(bytes)
}

/// The bytes of the pipe `path`, up to one more than [`MAX_PIPED_IMAGE`]. It is opened without
/// waiting for a writer (a plain open waits forever for a named pipe nothing writes to); while
/// a read finds no writer, one is waited for, up to [`PIPE_WRITER_WAIT`]; once one is there
/// (the pipe of `<(cmd)` or `/dev/stdin` has one from the start), reads wait for its data as
/// usual.
#[cfg(unix)]
fn read_pipe(path: &Path, what: &str) -> Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let read_error = || format!("cannot read {what} {}", path.display());
    let mut file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(read_error)?;
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let waited = std::time::Instant::now();
    loop {
        match file.read(&mut chunk) {
            // No writer yet (a named pipe): wait for one.
            Ok(0) if waited.elapsed() < PIPE_WRITER_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Ok(0) => anyhow::bail!(
                "{}: no process opened the named pipe for writing within {} s",
                path.display(),
                PIPE_WRITER_WAIT.as_secs()
            ),
            Ok(n) => {
                bytes.extend_from_slice(&chunk[..n]);
                break;
            }
            // A writer, no data yet.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(read_error),
        }
    }
    // SAFETY: fcntl on a descriptor this function owns, with valid commands and flags.
    let cleared = unsafe {
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) >= 0
    };
    if !cleared {
        return Err(std::io::Error::last_os_error()).with_context(read_error);
    }
    file.take(MAX_PIPED_IMAGE + 1 - bytes.len() as u64)
        .read_to_end(&mut bytes)
        .with_context(read_error)?;
    Ok(bytes)
}

#[cfg(not(unix))]
fn read_pipe(path: &Path, what: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PIPED_IMAGE + 1).read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    Ok(bytes)
}

/// Reads the file `path` whole, refusing (naming it) one over `max` bytes, which `what` (as
/// "a CIFAR-10 batch") cannot be: read whole, a file of terabytes would take the memory.
///
/// # Errors
/// The file cannot be read, or is larger than `max`.
pub fn read_at_most(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(
        meta.len() <= max,
        "{}: {} bytes, more than {what} can be (at most {max})",
        path.display(),
        meta.len()
    );
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Reads `path` into memory, gunzipping it when it starts with the gzip magic.
///
/// The gzip stream is read to its end, so its CRC-32 and length trailer are verified; data after
/// it that is not another gzip member is an error, as for `gzip -t`. `size` is told the first
/// `head` bytes (fewer in a shorter file) and says how many bytes the whole should have (a
/// header's count), or `None` for a header the reader will refuse (those bytes alone are then
/// returned). Gunzipping stops one byte past that size, and more is an error, so that a small
/// file that unpacks to far more than its header says (a "gzip bomb") is not unpacked into
/// memory. A plain file is measured against `size` before it is read: one of another size is
/// refused unread (a file of terabytes would take the memory).
///
/// # Errors
/// The file cannot be read, its gzip data is corrupt or truncated, it unpacks to more bytes
/// than `size` says, or a plain file's length is not what `size` says.
pub fn read_maybe_gz(
    path: &Path,
    head: usize,
    size: impl Fn(&[u8]) -> Option<usize>,
) -> Result<Vec<u8>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(
        meta.is_file(),
        "{}: not a regular file (a directory, a pipe or a device)",
        path.display()
    );
    // A plain file longer than its header says is refused before it is read whole (one of
    // terabytes would otherwise take the memory).
    let mut first = Vec::with_capacity(head);
    std::fs::File::open(path)
        .and_then(|f| f.take(head as u64).read_to_end(&mut first))
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !first.starts_with(&GZIP_MAGIC) {
        match size(&first) {
            // A header the reader refuses: its bytes are all it needs to say why.
            None => return Ok(first),
            Some(whole) if meta.len() > whole as u64 => bail!(
                "{}: {} unexpected trailing bytes after the {whole} bytes its header describes \
                 (the file has {} bytes)",
                path.display(),
                meta.len() - whole as u64,
                meta.len()
            ),
            Some(whole) if meta.len() < whole as u64 => bail!(
                "{}: truncated file: its header says {whole} bytes, the file has {}",
                path.display(),
                meta.len()
            ),
            Some(_) => {}
        }
    }
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    let corrupt = || format!("{}: corrupt or truncated gzip data", path.display());
    let mut decoder = MultiGzDecoder::new(raw.as_slice());
    let mut out = Vec::with_capacity(head);
    (&mut decoder)
        .take(head as u64)
        .read_to_end(&mut out)
        .with_context(corrupt)?;
    let Some(whole) = size(&out) else {
        return Ok(out);
    };
    let mut rest = (&mut decoder).take(whole.saturating_sub(out.len()).saturating_add(1) as u64);
    out.reserve(
        whole
            .saturating_sub(out.len())
            .min(raw.len().saturating_mul(64)),
    );
    rest.read_to_end(&mut out).with_context(corrupt)?;
    ensure!(
        out.len() <= whole,
        "{}: unpacks to more than the {whole} bytes its header says (unpacking stopped there): \
         corrupt gzip data, or contents other than the header describes",
        path.display()
    );
    // The stream read to its end (nothing is left), for its checksum.
    let mut tail = Vec::new();
    decoder.read_to_end(&mut tail).with_context(corrupt)?;
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

/// Errors unless `path` exists, naming it. A data set's root must be a directory or a
/// regular file (an archive): a pipe, a socket or a device is named as what it is.
pub fn ensure_exists(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    let kind = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .file_type();
    let what = if kind.is_fifo() {
        "a pipe"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "neither a directory nor a regular file"
    };
    anyhow::ensure!(
        kind.is_dir() || kind.is_file(),
        "{} is {what}, not a data set's folder or file",
        path.display()
    );
    Ok(())
}
