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

/// Reads every regular file and directory of the `.tar.gz`, `.tgz` or `.tar` at `path`, as
/// `tar -x` would leave them: a link as a copy of its target (a link to a folder, of the files
/// below it), a member that comes again in place of the earlier one.
///
/// Any damage to the container is an error naming the archive (and the member when one is
/// concerned): a bad gzip header, deflate data, CRC-32 or length, data after the gzip stream,
/// a tar header with a wrong checksum or size, a member cut short, a missing end-of-archive
/// marker. So is a member whose path holds `..` or is not UTF-8, and a link named as an image
/// whose target the archive does not hold. Memory grows with the bytes actually read, never
/// with a size a header claims.
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
    // Symbolic and hard links: (name, target), both archive paths, resolved once all is read.
    let mut links: Vec<(String, String)> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let link = kind.is_symlink() || kind.is_hard_link();
        if !(kind.is_file() || kind.is_dir() || link) {
            continue;
        }
        let name = member_name(&entry.path_bytes())?;
        if name.is_empty() {
            continue;
        }
        if link {
            let target = entry.link_name_bytes().unwrap_or_default();
            let target = String::from_utf8_lossy(&target);
            // A hard link names its target from the archive's root, a symbolic link from its
            // own folder (and one from the file system's root points out of the archive).
            let target = match (kind.is_hard_link(), name.rsplit_once('/')) {
                (true, _) | (false, None) => lexical(&target),
                (false, _) if target.starts_with('/') => None,
                (false, Some((folder, _))) => lexical(&format!("{folder}/{target}")),
            };
            links.push((name, target.unwrap_or_default()));
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
    as_extracted(out, links)
}

/// The entries as `tar -x` leaves them on disk: a member that comes again replaces the earlier
/// one, and a link is a copy of its target (a link to a folder, of the files below it).
///
/// # Errors
/// A link named as an image whose target is not in the archive (or outside it).
fn as_extracted(
    entries: Vec<ArchiveEntry>,
    links: Vec<(String, String)>,
) -> Result<Vec<ArchiveEntry>> {
    let mut out: Vec<ArchiveEntry> = Vec::with_capacity(entries.len() + links.len());
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut put = |entry: ArchiveEntry, out: &mut Vec<ArchiveEntry>| match at.get(&entry.name) {
        Some(&i) => out[i] = entry,
        None => {
            at.insert(entry.name.clone(), out.len());
            out.push(entry);
        }
    };
    for entry in entries {
        put(entry, &mut out);
    }
    for (name, target) in links {
        let below = format!("{target}/");
        let copies: Vec<ArchiveEntry> = out
            .iter()
            .filter(|e| !target.is_empty() && (e.name == target || e.name.starts_with(&below)))
            .map(|e| ArchiveEntry {
                name: format!("{name}{}", &e.name[target.len()..]),
                is_dir: e.is_dir,
                bytes: e.bytes.clone(),
            })
            .collect();
        ensure!(
            !copies.is_empty() || !crate::listing::is_image(&name),
            "member {name} is a link to {}, which the archive does not hold: extract the \
             archive where its target exists and pass the folder",
            if target.is_empty() {
                "a place outside it"
            } else {
                &target
            }
        );
        for copy in copies {
            put(copy, &mut out);
        }
    }
    Ok(out)
}

/// A member's path as its archive names it (`./a/b/` -> `a/b`: the components joined by `/`).
///
/// # Errors
/// A `..` component (`tar -x` refuses such members too), or a name that is not UTF-8 (two
/// class folders would then read as one).
fn member_name(bytes: &[u8]) -> Result<String> {
    let shown = String::from_utf8_lossy(bytes);
    let text = std::str::from_utf8(bytes).with_context(|| {
        format!("member {shown}: its name is not UTF-8; rename it (class names are text)")
    })?;
    let mut parts = Vec::new();
    for part in Path::new(text).components() {
        match part {
            Component::Normal(s) => parts.push(s.to_str().unwrap_or_default()),
            Component::ParentDir => {
                bail!("member {shown}: a \"..\" in its path, which tar -x refuses too")
            }
            _ => {}
        }
    }
    Ok(parts.join("/"))
}

/// `a/./b/../c` -> `a/c`, or `None` when `..` climbs above the root.
fn lexical(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}
