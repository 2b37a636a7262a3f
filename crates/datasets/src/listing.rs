//! A virtual directory tree of image files, built from a directory or an archive, on which the
//! ImageFolder layout rules run.

use crate::archive::ArchiveEntry;
use crate::filelist::{EncodedSample, Source};
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Image extensions accepted, compared case-insensitively (torchvision's `IMG_EXTENSIONS` that
/// the decoder supports).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

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

/// Whether `name` ends in an accepted image extension.
pub fn is_image(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

/// Hidden names (`.git`, `.DS_Store`, macOS `._x.jpg`) are skipped.
fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

impl Listing {
    /// Walks `root` recursively (following links, skipping hidden entries).
    pub fn from_dir(root: &Path) -> Result<Self> {
        anyhow::ensure!(root.is_dir(), "{} is not a directory", root.display());
        let mut listing = Self {
            origin: root.to_path_buf(),
            dirs: BTreeSet::new(),
            files: Vec::new(),
        };
        listing.walk(root, "")?;
        Ok(listing)
    }

    fn walk(&mut self, dir: &Path, rel: &str) -> Result<()> {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_hidden(&name) {
                continue;
            }
            let path = entry.path();
            let child = join(rel, &name);
            if path.is_dir() {
                self.dirs.insert(child.clone());
                self.walk(&path, &child)?;
            } else if is_image(&name) {
                self.files.push((child, EncodedSample::file(path)));
            }
        }
        Ok(())
    }

    /// Builds the tree from archive entries, dropping a common top folder (e.g. `cifar10/`)
    /// that is neither a split (`train`, `test`, `val`) nor a class.
    pub fn from_entries(archive: &Path, entries: Vec<ArchiveEntry>) -> Result<Self> {
        let visible = |name: &str| !name.split('/').any(is_hidden);
        let mut dirs: Vec<String> = Vec::new();
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in entries {
            if !visible(&entry.name) {
                continue;
            }
            if entry.is_dir {
                dirs.push(entry.name);
            } else if is_image(&entry.name) {
                files.push((entry.name, entry.bytes));
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
                source: Source::Bytes(Arc::new(bytes)),
            };
            listing.files.push((rel, sample));
        }
        Ok(listing)
    }
}

/// The leading folders shared by every file, kept while at least `split/class/file` or
/// `class/file` remains below them.
fn common_top(files: &[(String, Vec<u8>)]) -> String {
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

/// `rel/name`, or `name` at the root.
pub fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}
