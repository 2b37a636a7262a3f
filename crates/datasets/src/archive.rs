//! Reading a (gzipped) tar archive into memory, entry by entry, checking the whole container:
//! every tar header's checksum and size, the end-of-archive marker, and the gzip trailer
//! (CRC-32 and length), as `tar` and `gzip -t` do.

use anyhow::{bail, ensure, Context, Result};
use flate2::read::MultiGzDecoder;
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

/// Size of a tar block; the end-of-archive marker is two zero blocks.
const BLOCK: usize = 512;

/// Reads every regular file and directory of the `.tar.gz`, `.tgz` or `.tar` at `path`.
///
/// Any damage to the container is an error naming the archive (and the member when one is
/// concerned): a bad gzip header, deflate data, CRC-32 or length, data after the gzip stream,
/// a tar header with a wrong checksum or size, a member cut short, a missing end-of-archive
/// marker. Memory grows with the bytes actually read, never with a size a header claims.
pub fn read_archive(path: &Path) -> Result<Vec<ArchiveEntry>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let real_size = file
        .metadata()
        .with_context(|| format!("cannot read the size of {}", path.display()))?
        .len();
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let gzipped = !path.to_string_lossy().to_lowercase().ends_with(".tar");
    let stream: Box<dyn Read> = if gzipped {
        Box::new(MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    read_tar(stream, real_size)
        .with_context(|| format!("{}: corrupt or truncated archive", path.display()))
}

/// Reads the tar stream to its end (so that a gzip trailer below it is verified); `real_size`
/// (the archive file's size) caps what is reserved ahead of reading.
fn read_tar(stream: impl Read, real_size: u64) -> Result<Vec<ArchiveEntry>> {
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
            let size = entry.size();
            bytes.reserve(usize::try_from(size.min(real_size)).unwrap_or(0));
            entry
                .read_to_end(&mut bytes)
                .with_context(|| format!("cannot read member {name}"))?;
            ensure!(
                bytes.len() as u64 == size,
                "member {name} is cut short: its header says {size} bytes, the archive holds {}",
                bytes.len()
            );
        }
        out.push(ArchiveEntry {
            name,
            is_dir: kind.is_dir(),
            bytes,
        });
    }
    // The tar reader stops at the first zero block, or silently at the end of the data when a
    // cut falls between members; the second zero block must follow the first.
    let mut rest = archive.into_inner();
    let mut second = [0u8; BLOCK];
    let mut filled = 0;
    while filled < BLOCK {
        match rest
            .read(&mut second[filled..])
            .context("cannot read the end of the archive")?
        {
            0 => {
                bail!("truncated: no end-of-archive marker (two zero blocks) after the last member")
            }
            n => filled += n,
        }
    }
    ensure!(
        second.iter().all(|&b| b == 0),
        "corrupt end-of-archive marker: a zero block followed by data"
    );
    // What follows the marker is padding that tar ignores; reading it to the end makes the
    // gzip decoder check its CRC-32 and length trailer and refuse anything after the stream.
    std::io::copy(&mut rest, &mut std::io::sink())
        .context("corrupt or truncated data after the end-of-archive marker")?;
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
