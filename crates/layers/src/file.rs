//! Reading the files a run keeps (checkpoints, resume states, JSON settings) as `std::fs`
//! reads them, except that a path that is not a regular file once links are followed (a
//! directory, a named pipe, a device such as `/dev/zero`, a socket) is refused with its name:
//! `std::fs::read` would wait on a pipe without end, or read a device until memory runs out.
//! And the syncing that makes a temporary file durable before its rename ([`sync`],
//! [`sync_dir`]).

use std::io::{Error, ErrorKind, Result};
use std::path::Path;

/// `std::fs::read` of a regular file.
///
/// # Errors
/// `std::fs::read`'s (a missing file keeps `ErrorKind::NotFound`), or `ErrorKind::InvalidInput`
/// naming `path` and what it is when it is not a regular file.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    regular(path)?;
    std::fs::read(path)
}

/// `std::fs::read_to_string` of a regular file.
///
/// # Errors
/// As [`read`], and text that is not UTF-8.
pub fn read_to_string(path: &Path) -> Result<String> {
    regular(path)?;
    std::fs::read_to_string(path)
}

/// Makes a file just written durable before it is renamed over another: its data goes to the
/// disk (`fsync`), so that after a power cut the new name never leads to an empty or partial
/// file (a rename can reach the disk before the data it names). File systems that cannot sync
/// a file (`EINVAL`, `ENOTSUP`: some FUSE and network ones) are left as they are.
///
/// # Errors
/// The file cannot be opened for writing, or the sync fails otherwise (a failing disk: `EIO`).
pub fn sync(path: &Path) -> Result<()> {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| sync_file(&f))
}

/// [`sync`] of a file already open (for writing): a file system that cannot sync (`EINVAL`,
/// `ENOTSUP`) is no error.
///
/// # Errors
/// The sync fails otherwise (a failing disk: `EIO`).
pub fn sync_file(file: &std::fs::File) -> Result<()> {
    match file.sync_all() {
        // EINVAL and ENOTSUP.
        Err(e) if e.kind() == ErrorKind::Unsupported || e.kind() == ErrorKind::InvalidInput => {
            Ok(())
        }
        other => other,
    }
}

/// After a rename into `dir`: the directory's entry goes to the disk too (`fsync` of the
/// directory), so that after a power cut the name still leads to the new file. A directory
/// that cannot be opened (for reading: a write-only one; or with no file handle left) or a
/// system that cannot sync a directory so opened (`EINVAL`, `ENOTSUP`, `EBADF`) is left as it
/// is.
///
/// # Errors
/// The sync fails otherwise (a failing disk: `EIO`): the file renamed may not survive a power
/// cut, where the rename said it was in place.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let dir = match dir.as_os_str().is_empty() {
        true => Path::new("."),
        false => dir,
    };
    let Ok(dir) = std::fs::File::open(dir) else {
        return Ok(());
    };
    match sync_file(&dir) {
        // EBADF: systems that sync no directory opened for reading (PostgreSQL passes it over).
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(()),
        other => other,
    }
}

/// [`sync_dir`] of the folder `path` was just renamed into.
///
/// # Errors
/// The sync fails (a failing disk), naming the folder and the file, of the sync's kind.
pub fn sync_dir_of(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    sync_dir(dir).map_err(|e| {
        Error::new(
            e.kind(),
            format!(
                "cannot sync the folder {} after renaming {} into it: {e}",
                dir.display(),
                path.display()
            ),
        )
    })
}

/// `Ok` when `path` leads to a regular file (following links); `NotFound` when nothing is
/// there; `InvalidInput` naming what it is otherwise (a pipe, `<(cmd)` included).
///
/// # Errors
/// As said.
pub fn regular(path: &Path) -> Result<()> {
    let kind = std::fs::metadata(path)?.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_dir() {
        "a directory"
    } else {
        special(&kind)
    };
    Err(Error::new(
        ErrorKind::InvalidInput,
        format!("{} is {what}, not a regular file", path.display()),
    ))
}

#[cfg(unix)]
fn special(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a pipe"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "something else"
    }
}

#[cfg(not(unix))]
fn special(_: &std::fs::FileType) -> &'static str {
    "something else"
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.json");
        std::fs::write(&file, b"[1]").unwrap();
        assert_eq!(read(&file).unwrap(), b"[1]");
        assert_eq!(read_to_string(&file).unwrap(), "[1]");
        // Through a link too.
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read(&link).unwrap(), b"[1]");
        let missing = read(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        let fifo = dir.path().join("pipe.safetensors");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        let zero = dir.path().join("zero.safetensors");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        for (path, what) in [
            (&fifo, "a pipe"),
            (&zero, "a device"),
            (&dir.path().to_path_buf(), "a directory"),
        ] {
            let err = read(path).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            let text = err.to_string();
            assert!(
                text.contains(&path.display().to_string()) && text.contains(what),
                "{text}"
            );
        }
    }
}
