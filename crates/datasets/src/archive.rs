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
    /// The file's contents (shared by the links to it).
    pub bytes: std::sync::Arc<Vec<u8>>,
}

/// A member refused for what its name or link says, not for damage to the archive.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Size of a tar block; the end-of-archive marker is two zero blocks.
const BLOCK: usize = 512;

/// Reads every regular file and directory of the `.tar.gz`, `.tgz` or `.tar` at `path`, as
/// the image-folder walk would read the tree `tar -x` leaves: a member that comes again in
/// place of the earlier one; a link (symbolic or hard) to a file as that file (its bytes
/// shared); a link to a folder as an empty folder (the walk enters each real folder once); a
/// link to nothing is skipped.
///
/// Any damage to the container is an error naming the archive (and the member when one is
/// concerned): a bad gzip header, deflate data, CRC-32 or length, data after the gzip stream,
/// a tar header with a wrong checksum or size, a member cut short, a missing end-of-archive
/// marker. So, named as such, is a folder, link or image member whose path holds `..` (which
/// `tar -x` does not extract either) or is not UTF-8 (two class folders could read as one),
/// and a link named as an image that leads nowhere in the archive; other members with such
/// names are skipped. Memory grows with the bytes actually read, never with a size a header
/// claims.
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
    read_tar(stream, real_size).map_err(|e| match e.downcast_ref::<Refused>() {
        Some(_) => e.context(format!("{}: a member that cannot be read", path.display())),
        None => e.context(format!("{}: corrupt or truncated archive", path.display())),
    })
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
        let raw = entry.path_bytes();
        let matters = !kind.is_file() || crate::listing::is_image(&String::from_utf8_lossy(&raw));
        let Some(name) = member_name(&raw, matters)? else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        if link {
            let target = entry.link_name_bytes().unwrap_or_default();
            let target = String::from_utf8_lossy(&target);
            // A hard link names its target from the archive's root, a symbolic link from its
            // own folder; one from the file system's root points out of the archive.
            let target = match (kind.is_hard_link(), name.rsplit_once('/')) {
                (false, _) if target.starts_with('/') => None,
                (true, _) | (false, None) => lexical(&target),
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
            bytes: std::sync::Arc::new(bytes),
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

/// The entries as the image-folder walk reads the tree `tar -x` leaves: a member that comes
/// again replaces the earlier one; a link to a file (through other links, as the file system
/// follows them) is that file, its bytes shared; a link to a folder is an empty folder, as the
/// walk enters each real folder once; a link to nothing is skipped.
///
/// # Errors
/// A link named as an image that leads to no file of the archive.
fn as_extracted(
    entries: Vec<ArchiveEntry>,
    links: Vec<(String, String)>,
) -> Result<Vec<ArchiveEntry>> {
    use std::collections::{HashMap, HashSet};
    let mut out: Vec<ArchiveEntry> = Vec::with_capacity(entries.len() + links.len());
    let mut at: HashMap<String, usize> = HashMap::new();
    let put = |entry: ArchiveEntry,
               out: &mut Vec<ArchiveEntry>,
               at: &mut HashMap<String, usize>| {
        match at.get(&entry.name) {
            Some(&i) => out[i] = entry,
            None => {
                at.insert(entry.name.clone(), out.len());
                out.push(entry);
            }
        }
    };
    for entry in entries {
        put(entry, &mut out, &mut at);
    }
    // The real folders: those named, and those above a file.
    let mut folders: HashSet<String> = HashSet::new();
    for entry in &out {
        if entry.is_dir {
            folders.insert(entry.name.clone());
        }
        let mut above = entry.name.as_str();
        while let Some((parent, _)) = above.rsplit_once('/') {
            folders.insert(parent.to_string());
            above = parent;
        }
    }
    let linked: HashMap<&str, &str> = links
        .iter()
        .map(|(name, target)| (name.as_str(), target.as_str()))
        .collect();
    let mut resolved = Vec::with_capacity(links.len());
    for (name, target) in &links {
        // Through links to links, up to Linux's limit of 40.
        let mut target = target.as_str();
        for _ in 0..40 {
            match linked.get(target) {
                Some(next) if !at.contains_key(target) => target = next,
                _ => break,
            }
        }
        match at.get(target).map(|&i| &out[i]) {
            Some(file) if !file.is_dir => resolved.push(ArchiveEntry {
                name: name.clone(),
                is_dir: false,
                bytes: file.bytes.clone(),
            }),
            _ if folders.contains(target) => resolved.push(ArchiveEntry {
                name: name.clone(),
                is_dir: true,
                bytes: Default::default(),
            }),
            _ if crate::listing::is_image(name) => {
                return Err(Refused(format!(
                    "member {name} is a link to {}, which the archive does not hold as a file: \
                     extract the archive where its target exists and pass the folder",
                    if target.is_empty() {
                        "a place outside it"
                    } else {
                        target
                    }
                ))
                .into())
            }
            _ => {}
        }
    }
    for entry in resolved {
        put(entry, &mut out, &mut at);
    }
    Ok(out)
}

/// A member's path as its archive names it (`./a/b/` -> `a/b`: the components joined by `/`),
/// or `None` for a member to skip: one that does not `matter` (a file not named as an image)
/// whose path holds `..` or is not UTF-8.
///
/// # Errors
/// A member that matters (a folder, a link, an image) whose path holds `..` (`tar -x` does not
/// extract it either) or is not UTF-8 (two class folders could then read as one).
fn member_name(bytes: &[u8], matters: bool) -> Result<Option<String>> {
    let shown = String::from_utf8_lossy(bytes);
    let refused = |why: &str| -> Result<Option<String>> {
        match matters {
            true => Err(Refused(format!("member {shown}: {why}")).into()),
            false => Ok(None),
        }
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        return refused("its name is not UTF-8; rename it (class names are text)");
    };
    let mut parts = Vec::new();
    for part in Path::new(text).components() {
        match part {
            Component::Normal(s) => parts.push(s.to_str().unwrap_or_default()),
            Component::ParentDir => {
                return refused("a \"..\" in its path, which tar -x does not extract either")
            }
            _ => {}
        }
    }
    Ok(Some(parts.join("/")))
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
