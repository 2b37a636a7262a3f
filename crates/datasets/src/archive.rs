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

/// Bytes of files other than images that [`read_archive_keeping`] keeps, in all (CIFAR-10's
/// seven files hold 180 MB).
pub(crate) const MAX_KEPT: u64 = 1 << 30;

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
/// a link named as an image that leads nowhere in the archive, and a pipe or device member
/// named as an image; other members with such names are skipped. Memory grows with the bytes actually read, never with a size a header
/// claims. Only images' bytes are kept (each at most `MAX_INPUT_FILE`, 4 GiB, as a
/// file); other files are listed with no bytes, unread.
pub fn read_archive(path: &Path) -> Result<Vec<ArchiveEntry>> {
    read_archive_keeping(path, &|_| None)
}

/// [`read_archive`], keeping also the bytes of the files for which `keep(name)` gives the
/// most bytes such a file may hold and what it is (for the error when a member holds more); at
/// most [`MAX_KEPT`] bytes of such files in all.
pub(crate) fn read_archive_keeping(
    path: &Path,
    keep: &dyn Fn(&str) -> Option<(u64, &'static str)>,
) -> Result<Vec<ArchiveEntry>> {
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
    read_tar(stream, real_size, keep).map_err(|e| match e.downcast_ref::<Refused>() {
        Some(_) => e.context(format!("{}: a member that cannot be read", path.display())),
        None => e.context(format!("{}: corrupt or truncated archive", path.display())),
    })
}

/// Reads the tar stream to its end (so that a gzip trailer below it is verified); `real_size`
/// (the archive file's size) caps what is reserved ahead of reading.
fn read_tar(
    stream: impl Read,
    real_size: u64,
    keep: &dyn Fn(&str) -> Option<(u64, &'static str)>,
) -> Result<Vec<ArchiveEntry>> {
    let mut archive = tar::Archive::new(stream);
    // The members in archive order: files and folders, and links (name, target as an archive
    // path; hard or symbolic), applied in that order once all is read.
    let mut items: Vec<Item> = Vec::new();
    let mut kept = 0u64;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let link = kind.is_symlink() || kind.is_hard_link();
        let special = kind.is_fifo() || kind.is_character_special() || kind.is_block_special();
        if special || kind.is_gnu_sparse() {
            // A pipe or device member named as an image, refused as in a folder (extracted,
            // it would block or never end); a sparse file (`tar --sparse`), which this reader
            // does not expand. Hidden ones are skipped, as a folder's are.
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let hidden = raw
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .any(crate::listing::is_hidden);
            if !hidden && crate::listing::is_image(&raw) {
                let why = match special {
                    true => {
                        "named as an image but not a regular file (a pipe or a device): \
                             remove it from the archive"
                    }
                    false => {
                        "a sparse file (tar --sparse), which is not read here: pack the \
                              images without --sparse"
                    }
                };
                return Err(Refused(format!("member {raw}: {why}")).into());
            }
            continue;
        }
        // A contiguous file (type '7') is a regular file to `tar -x`.
        let file = kind.is_file() || kind.is_contiguous();
        if !(file || kind.is_dir() || link) {
            continue;
        }
        let raw = entry.path_bytes();
        let matters = !file || crate::listing::is_image(&String::from_utf8_lossy(&raw));
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
            let target = target.unwrap_or_default();
            items.push(match kind.is_hard_link() {
                true => Item::Hard(name, target),
                false => Item::Symbolic(name, target),
            });
            continue;
        }
        let mut bytes = Vec::new();
        let limit = match crate::listing::is_image(&name) {
            true => Some((crate::io::MAX_INPUT_FILE, "an image file")),
            false => keep(&name),
        };
        if let (true, Some((max, what))) = (file, limit) {
            ensure!(
                entry.size() <= max,
                Refused(format!(
                    "member {name}: {} bytes, more than {what} can be (at most {max})",
                    entry.size()
                ))
            );
            if !crate::listing::is_image(&name) {
                kept = kept.saturating_add(entry.size());
                ensure!(
                    kept <= MAX_KEPT,
                    Refused(format!(
                        "member {name}: the files to read besides images hold more than \
                         {MAX_KEPT} bytes in all (copies of the same files in several folders?)"
                    ))
                );
            }
        }
        if file && limit.is_none() {
            // Not needed: read past, unkept.
            std::io::copy(&mut entry, &mut std::io::sink())
                .with_context(|| format!("cannot read member {name}"))?;
        } else if file {
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
        items.push(Item::Member(ArchiveEntry {
            name,
            is_dir: kind.is_dir(),
            bytes: std::sync::Arc::new(bytes),
        }));
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
    as_extracted(items)
}

/// One member of an archive, in its order.
enum Item {
    /// A file or a folder.
    Member(ArchiveEntry),
    /// A hard link: its name and the archive path of the file it repeats.
    Hard(String, String),
    /// A symbolic link: its name and the archive path it points to (empty: outside it).
    Symbolic(String, String),
}

/// What a name holds once the members before it are extracted.
enum Node {
    File(std::sync::Arc<Vec<u8>>),
    Folder,
    Link(String),
}

/// The members as the image-folder walk reads the tree `tar -x` leaves, in archive order: a
/// member that comes again replaces the earlier one (a link too); a hard link repeats the file
/// its target names at that point; a symbolic link to a file (through links, also as folders
/// on the way, up to Linux's 40) reads as that file, its bytes shared; one to a folder as an
/// empty folder, as the walk enters each real folder once, unless that folder is hidden (the
/// walk skips it), whose files then read below the link, once; a link to nothing is skipped.
///
/// # Errors
/// A link named as an image that leads to no file of the archive.
fn as_extracted(items: Vec<Item>) -> Result<Vec<ArchiveEntry>> {
    use std::collections::{HashMap, HashSet};
    let mut order: Vec<String> = Vec::with_capacity(items.len());
    let mut nodes: HashMap<String, Node> = HashMap::new();
    let mut set = |name: String, node: Node, nodes: &mut HashMap<String, Node>| {
        if !nodes.contains_key(&name) {
            order.push(name.clone());
        }
        nodes.insert(name, node);
    };
    let nowhere = |name: &str, target: &str| -> anyhow::Error {
        Refused(format!(
            "member {name} is a link to {}, which the archive does not hold as a file there: \
             extract the archive where its target exists and pass the folder",
            if target.is_empty() {
                "a place outside it"
            } else {
                target
            }
        ))
        .into()
    };
    for item in items {
        match item {
            Item::Member(e) if e.is_dir => set(e.name, Node::Folder, &mut nodes),
            Item::Member(e) => set(e.name, Node::File(e.bytes), &mut nodes),
            Item::Hard(name, target) => match nodes.get(&target) {
                Some(Node::File(bytes)) => {
                    let bytes = bytes.clone();
                    set(name, Node::File(bytes), &mut nodes)
                }
                _ if crate::listing::is_image(&name) => return Err(nowhere(&name, &target)),
                _ => {}
            },
            Item::Symbolic(name, target) => set(name, Node::Link(target), &mut nodes),
        }
    }
    // The folders: those named, and those above any member.
    let mut folders: HashSet<String> = HashSet::new();
    for (name, node) in &nodes {
        if matches!(node, Node::Folder) {
            folders.insert(name.clone());
        }
        let mut above = name.as_str();
        while let Some((parent, _)) = above.rsplit_once('/') {
            folders.insert(parent.to_string());
            above = parent;
        }
    }
    let hidden = |path: &str| path.split('/').any(|part| part.starts_with('.'));
    let mut claimed: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(order.len());
    for name in &order {
        match &nodes[name] {
            Node::File(bytes) => out.push(ArchiveEntry {
                name: name.clone(),
                is_dir: false,
                bytes: bytes.clone(),
            }),
            Node::Folder => out.push(ArchiveEntry {
                name: name.clone(),
                is_dir: true,
                bytes: Default::default(),
            }),
            Node::Link(target) => match resolve(target, &nodes) {
                Some(path) => match nodes.get(&path) {
                    Some(Node::File(bytes)) => out.push(ArchiveEntry {
                        name: name.clone(),
                        is_dir: false,
                        bytes: bytes.clone(),
                    }),
                    _ if folders.contains(&path) => {
                        out.push(ArchiveEntry {
                            name: name.clone(),
                            is_dir: true,
                            bytes: Default::default(),
                        });
                        // A hidden folder is not walked but through the link: its files.
                        if hidden(&path) && !hidden(name) && claimed.insert(path.clone()) {
                            let below = format!("{path}/");
                            for inner in &order {
                                if let (Some(rest), Some(Node::File(bytes))) =
                                    (inner.strip_prefix(&below), nodes.get(inner))
                                {
                                    out.push(ArchiveEntry {
                                        name: format!("{name}/{rest}"),
                                        is_dir: false,
                                        bytes: bytes.clone(),
                                    });
                                }
                            }
                        }
                    }
                    _ if crate::listing::is_image(name) => return Err(nowhere(name, target)),
                    _ => {}
                },
                None if crate::listing::is_image(name) => return Err(nowhere(name, target)),
                None => {}
            },
        }
    }
    Ok(out)
}

/// The archive path that `path` leads to once the symbolic links on the way (itself, or a
/// folder of it) are followed, up to 40 of them as Linux follows them; `None` past that, or
/// through a link out of the archive.
fn resolve(path: &str, nodes: &std::collections::HashMap<String, Node>) -> Option<String> {
    let mut path = path.to_string();
    for _ in 0..=40 {
        if path.is_empty() {
            return None;
        }
        let parts: Vec<&str> = path.split('/').collect();
        let link = (1..=parts.len()).find_map(|i| match nodes.get(&parts[..i].join("/")) {
            Some(Node::Link(target)) => Some((i, target.clone())),
            _ => None,
        });
        let Some((i, target)) = link else {
            return Some(path);
        };
        if target.is_empty() {
            return None;
        }
        let rest = parts[i..].join("/");
        path = match rest.is_empty() {
            true => target,
            false => lexical(&format!("{target}/{rest}"))?,
        };
    }
    None
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
