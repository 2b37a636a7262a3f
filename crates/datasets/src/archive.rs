//! Reading a (gzipped) tar archive into memory, entry by entry.

use anyhow::{Context, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Component, Path};

/// One regular file or directory of an archive.
#[derive(Debug, Clone)]
pub struct ArchiveEntry {
    /// Path inside the archive, `/`-separated, without `./` or a trailing `/`.
    pub name: String,
    /// Whether the entry is a directory (then `bytes` is empty).
    pub is_dir: bool,
    /// The file's contents.
    pub bytes: Vec<u8>,
}

/// Reads every regular file and directory of the `.tar.gz`, `.tgz` or `.tar` at `path`.
pub fn read_archive(path: &Path) -> Result<Vec<ArchiveEntry>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let gzipped = !path.to_string_lossy().to_lowercase().ends_with(".tar");
    let stream: Box<dyn Read> = if gzipped {
        Box::new(GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    read_tar(stream).with_context(|| format!("{}: corrupt or truncated archive", path.display()))
}

fn read_tar(stream: impl Read) -> Result<Vec<ArchiveEntry>> {
    let mut archive = tar::Archive::new(stream);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        let name = normalize(&entry.path()?);
        if name.is_empty() {
            continue;
        }
        let mut bytes = Vec::new();
        if kind.is_file() {
            bytes.reserve(entry.size() as usize);
            entry
                .read_to_end(&mut bytes)
                .with_context(|| format!("cannot read entry {name}"))?;
        }
        out.push(ArchiveEntry {
            name,
            is_dir: kind.is_dir(),
            bytes,
        });
    }
    Ok(out)
}

/// `./a/b/` -> `a/b`: only the normal components, joined by `/`.
fn normalize(path: &Path) -> String {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}
