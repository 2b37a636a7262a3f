//! A virtual directory tree of image files, built from a directory or an archive, on which the
//! ImageFolder layout rules run.

use crate::archive::ArchiveEntry;
use crate::filelist::{EncodedSample, Source};
use anyhow::{Context, Result};
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Image extensions accepted, compared case-insensitively: torchvision's `IMG_EXTENSIONS`
/// (`.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp`).
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];

/// Directories and image files under one root, with `/`-separated relative paths.
#[derive(Debug)]
pub struct Listing {
    /// The directory or archive the listing came from.
    pub origin: PathBuf,
    /// Every directory (relative path, no trailing `/`), including implied parents.
    pub dirs: BTreeSet<String>,
    /// Every image file: relative path and sample.
    pub files: Vec<(String, EncodedSample)>,
}

impl Listing {
    /// The folder or file `rel` of the listing as messages name it: a path below a directory,
    /// `archive:rel` in an archive (as its samples are named); the origin itself for `""`.
    pub fn place(&self, rel: &str) -> String {
        match (rel.is_empty(), self.origin.is_file()) {
            (true, _) => self.origin.display().to_string(),
            (false, true) => format!("{}:{rel}", self.origin.display()),
            (false, false) => self.origin.join(rel).display().to_string(),
        }
    }
}

/// Whether `name` ends in an accepted image extension.
pub fn is_image(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

/// The image files in the folder `root` and below it, sorted by path: the files named as images
/// (hidden entries passed over, as an image folder's reading does; links followed, each real
/// folder entered once; pipes, sockets and devices passed over, never opened). Unlike an image
/// folder's reading, an entry named as an image is listed even where it cannot be read (a link
/// to nothing, a file whose name is not UTF-8), for its reader to name what is wrong with it,
/// image by image.
///
/// # Errors
/// `root` or a folder below it cannot be read.
pub fn image_files_below(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut entered = HashSet::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let read = |e: std::io::Error| {
            anyhow::Error::from(e).context(format!("cannot read the folder {}", folder.display()))
        };
        let real = std::fs::canonicalize(&folder).map_err(read)?;
        if !entered.insert(real) {
            continue;
        }
        for entry in std::fs::read_dir(&folder).map_err(read)? {
            let entry = entry.map_err(read)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if is_hidden(&name) {
                continue;
            }
            let path = entry.path();
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => folders.push(path),
                // A pipe, socket or device is no image file: never opened (a pipe would be
                // waited on).
                Ok(m) if !m.is_file() => {}
                _ if is_image(&name) => files.push(path),
                _ => {}
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Hidden names (`.git`, `.DS_Store`, macOS `._x.jpg`) are skipped.
pub(crate) fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

impl Listing {
    /// Walks `root` recursively in name order, following links but entering each real directory
    /// once (so link cycles end; the real folders are walked first, then linked ones in the order
    /// met), skipping hidden entries and files not named as images. A pipe, socket or device
    /// named as an image is refused, never opened (it would block or never end).
    ///
    /// # Errors
    /// `root` or a folder below it cannot be read, a folder's name is not UTF-8, or an image's
    /// name leads to something other than a regular file.
    pub fn from_dir(root: &Path) -> Result<Self> {
        anyhow::ensure!(root.is_dir(), "{} is not a directory", root.display());
        let mut listing = Self {
            origin: root.to_path_buf(),
            dirs: BTreeSet::new(),
            files: Vec::new(),
        };
        let mut seen = HashSet::new();
        let mut real = vec![(root.to_path_buf(), String::new())];
        let mut linked = VecDeque::new();
        while let Some((dir, rel)) = real.pop().or_else(|| linked.pop_front()) {
            let meta = std::fs::metadata(&dir)
                .with_context(|| format!("cannot read {}", dir.display()))?;
            if !rel.is_empty() {
                listing.dirs.insert(rel.clone());
            }
            if !seen.insert(DirId::of(&dir, &meta)?) {
                continue;
            }
            for (entry, is_link) in sorted_entries(&dir)? {
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_hidden(&name) {
                    continue;
                }
                let path = entry.path();
                let child = join(&rel, &name);
                // `metadata` follows links and never opens the file, so it cannot block.
                let meta = std::fs::metadata(&path);
                // A folder's name is a class (or split) name: text. Read lossily, two such
                // names could be one class.
                if meta.as_ref().is_ok_and(|m| m.is_dir()) && entry.file_name().to_str().is_none() {
                    anyhow::bail!(
                        "{}: a folder whose name is not UTF-8; rename it (class names are text)",
                        path.display()
                    );
                }
                match meta {
                    Ok(meta) if meta.is_dir() && is_link => linked.push_back((path, child)),
                    Ok(meta) if meta.is_dir() => real.push((path, child)),
                    Ok(meta) if meta.is_file() && is_image(&name) => {
                        listing.files.push((child, EncodedSample::file(path)));
                    }
                    Ok(_) if is_image(&name) => anyhow::bail!(
                        "{}: named as an image but not a regular file (a pipe, a socket or a \
                         device): remove it from the data",
                        path.display()
                    ),
                    Ok(_) => {}
                    Err(err) if is_image(&name) => {
                        return Err(err).with_context(|| format!("cannot read {}", path.display()))
                    }
                    Err(_) => {}
                }
            }
        }
        Ok(listing)
    }

    /// Builds the tree from archive entries, dropping a common top folder (e.g. `cifar10/`)
    /// that is neither a split (`train`, `test`, `val`) nor a class.
    ///
    /// # Errors
    /// None at present: the `Result` matches [`Listing::from_dir`], so that both sources can
    /// grow checks.
    pub fn from_entries(archive: &Path, entries: Vec<ArchiveEntry>) -> Result<Self> {
        let visible = |name: &str| !name.split('/').any(is_hidden);
        let mut dirs: Vec<String> = Vec::new();
        let mut files: Vec<(String, Arc<Vec<u8>>)> = Vec::new();
        for entry in entries {
            if !visible(&entry.name) {
                continue;
            }
            if entry.is_dir {
                dirs.push(entry.name);
            } else if is_image(&entry.name) {
                files.push((entry.name, entry.bytes));
            } else if let Some((folder, _)) = entry.name.rsplit_once('/') {
                // Its folder is there once extracted, images or not (an empty class folder
                // is then refused, as for the folder itself).
                dirs.push(folder.to_string());
            }
        }
        let strip = common_top(&files);
        let strip_prefix = |name: &str| name[strip.len()..].trim_start_matches('/').to_string();
        let mut listing = Self {
            origin: archive.to_path_buf(),
            dirs: BTreeSet::new(),
            files: Vec::with_capacity(files.len()),
        };
        for dir in dirs {
            if dir.len() > strip.len() && dir.starts_with(&strip) {
                listing.dirs.insert(strip_prefix(&dir));
            }
        }
        for (name, bytes) in files {
            let rel = strip_prefix(&name);
            let mut parent = rel.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                listing.dirs.insert(p.to_string());
                parent = p;
            }
            let sample = EncodedSample {
                name: format!("{}:{name}", archive.display()),
                source: Source::Bytes(bytes),
            };
            listing.files.push((rel, sample));
        }
        Ok(listing)
    }
}

/// The leading folders shared by every file, kept while at least `split/class/file` or
/// `class/file` remains below them.
fn common_top(files: &[(String, Arc<Vec<u8>>)]) -> String {
    let mut prefix = String::new();
    loop {
        let rest = |name: &str| name[prefix.len()..].trim_start_matches('/').to_string();
        let Some((first, _)) = files.first() else {
            return prefix;
        };
        let Some((top, _)) = rest(first)
            .split_once('/')
            .map(|(t, r)| (t.to_string(), r.to_string()))
        else {
            return prefix;
        };
        let splits = ["train", "test", "val"];
        let shared = files.iter().all(|(name, _)| {
            let r = rest(name);
            r.split_once('/').is_some_and(|(t, _)| t == top) && r.split('/').count() >= 3
        });
        if !shared || splits.contains(&top.as_str()) {
            return prefix;
        }
        prefix = join(&prefix, &top);
    }
}

/// The entries of `dir` in reverse name order (so that a stack pops them in name order), each
/// with whether it is a symbolic link.
fn sorted_entries(dir: &Path) -> Result<Vec<(std::fs::DirEntry, bool)>> {
    let list = || format!("cannot list {}", dir.display());
    let mut entries = std::fs::read_dir(dir)
        .with_context(list)?
        .map(|entry| {
            let entry = entry.with_context(list)?;
            let is_link = entry.file_type().with_context(list)?.is_symlink();
            Ok((entry, is_link))
        })
        .collect::<Result<Vec<_>>>()?;
    entries.sort_by_key(|(entry, _)| std::cmp::Reverse(entry.file_name()));
    Ok(entries)
}

/// `rel/name`, or `name` at the root.
pub fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

/// A directory's identity on disk, the same through every link to it.
#[derive(Debug, PartialEq, Eq, Hash)]
enum DirId {
    /// Device and inode number.
    #[cfg(unix)]
    Inode(u64, u64),
    /// The canonical path, where there are no inode numbers.
    #[cfg(not(unix))]
    Canonical(PathBuf),
}

impl DirId {
    #[cfg(unix)]
    fn of(_dir: &Path, meta: &std::fs::Metadata) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        Ok(Self::Inode(meta.dev(), meta.ino()))
    }

    #[cfg(not(unix))]
    fn of(dir: &Path, _meta: &std::fs::Metadata) -> Result<Self> {
        let canonical = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        Ok(Self::Canonical(canonical))
    }
}
