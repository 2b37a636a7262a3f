//! MNIST and CIFAR-10 from the Hugging Face Hub's parquet conversions (the files
//! candle-datasets uses), cached in the standard HF cache (`HF_HOME`, `HF_HUB_CACHE`);
//! `HF_HUB_OFFLINE=1` reads only the cache.

use crate::catalog::{DatasetSpec, HubLocation};
use crate::dataset::class_names;
use crate::decode::{decode_named, ColorMode};
use crate::{Dataset, InMemory, Split};
use anyhow::{anyhow, bail, ensure, Context, Result};
use hf_hub::progress::Progress;
use hf_hub::{HFClient, HFClientSync, HFError};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A catalog entry's Hub copy, resolved, with the client that fetches its files.
struct HubData<'a> {
    spec: &'a DatasetSpec,
    location: HubLocation,
    shape: (usize, usize, usize),
    mode: ColorMode,
    client: HFClientSync,
    cache: PathBuf,
}

impl<'a> HubData<'a> {
    /// `spec`'s Hub copy.
    ///
    /// Errors: `spec` has none, or the Hugging Face client cannot be set up.
    fn new(spec: &'a DatasetSpec) -> Result<Self> {
        let (Some(location), Some(shape)) = (spec.hub, spec.shape) else {
            bail!(
                "{} has no Hub copy; pass --data-dir DIR with {}",
                spec.title,
                spec.local_files
            )
        };
        let client =
            HFClient::new().map_err(|e| anyhow!("cannot set up the Hugging Face client: {e}"))?;
        let cache = client.cache_dir().to_path_buf();
        let client = HFClientSync::from_inner(client)
            .map_err(|e| anyhow!("cannot set up the Hugging Face client: {e}"))?;
        Ok(Self {
            spec,
            location,
            shape,
            mode: if shape.0 == 1 {
                ColorMode::Gray
            } else {
                ColorMode::Rgb
            },
            client,
            cache,
        })
    }

    /// The cached path of `file`, downloading it unless offline.
    fn fetch(&self, file: &str) -> Result<PathBuf> {
        let (owner, name) = hf_hub::split_id(self.location.repo);
        let repo = self.client.dataset(owner, name);
        let (file_name, revision) = (file.to_string(), self.location.revision);
        let what = format!("{} file {}/{file}", self.spec.title, self.location.repo);
        let hint = format!("pass --data-dir DIR with {}", self.spec.local_files);
        cached_or_downloaded(&what, &self.cache, &hint, move |local_only, progress| {
            repo.download_file()
                .filename(file_name.clone())
                .revision(revision)
                .local_files_only(local_only)
                .maybe_progress(progress)
                .send()
        })
    }
}

/// Whether `HF_HUB_OFFLINE` asks for cache-only access (`1`, `true`, `yes`, `on`).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// The Hub copy of `spec` (its [`HubLocation`]), downloaded into the HF cache unless already
/// there. Both files are fetched before either is read, so that a missing one is said at once.
pub(crate) fn load(spec: &DatasetSpec) -> Result<Split> {
    let data = HubData::new(spec)?;
    let train = data.fetch(data.location.train)?;
    let test = data.fetch(data.location.test)?;
    let split = Split {
        train: Arc::new(read_parquet(&train, &data)?),
        test: Arc::new(read_parquet(&test, &data)?),
    };
    split.checked(&train.display().to_string(), &test.display().to_string())
}

/// The test split of `spec`'s Hub copy alone (its training file is not downloaded).
pub(crate) fn load_test(spec: &DatasetSpec) -> Result<Arc<dyn Dataset>> {
    let data = HubData::new(spec)?;
    let test = data.fetch(data.location.test)?;
    let split = read_parquet(&test, &data)?;
    ensure!(
        !split.is_empty(),
        "{}: the test split has no images",
        test.display()
    );
    Ok(Arc::new(split))
}

/// A Hub model id and the revision after its `@`, if any (`owner/name@v2`: a branch, tag or
/// commit, as timm's `hf-hub:owner/name@revision` and `from_pretrained(..., revision=)` take).
///
/// Errors: an `@` with nothing after it.
fn split_revision(spec: &str) -> Result<(&str, Option<&str>)> {
    match spec.split_once('@') {
        None => Ok((spec, None)),
        Some((_, "")) => bail!("{spec}: no revision after the @ (give owner/name@REVISION, a branch, tag or commit, or owner/name for main)"),
        Some((id, revision)) => Ok((id, Some(revision))),
    }
}

/// `file` of the Hub model repository `repo_id` (for example `timm/resnet50.tv_in1k`, or
/// `timm/resnet50.tv_in1k@COMMIT` for a revision: a branch, tag or commit, `main` without
/// one), from the standard Hugging Face cache, downloaded into it unless `HF_HUB_OFFLINE` is
/// set. `local_hint` says how to pass a local file instead (it ends every error message).
pub fn fetch_model_file(repo_id: &str, file: &str, local_hint: &str) -> Result<PathBuf> {
    let (id, revision) = split_revision(repo_id)?;
    let client =
        HFClient::new().map_err(|e| anyhow!("cannot set up the Hugging Face client: {e}"))?;
    let cache = client.cache_dir().to_path_buf();
    let client = HFClientSync::from_inner(client)
        .map_err(|e| anyhow!("cannot set up the Hugging Face client: {e}"))?;
    let (owner, name) = hf_hub::split_id(id);
    let repo = client.model(owner, name);
    let (file_name, revision) = (file.to_string(), revision.map(str::to_string));
    let what = match &revision {
        Some(revision) => format!("model file {id}/{file} at revision {revision}"),
        None => format!("model file {id}/{file}"),
    };
    let hint = format!("pass {local_hint}");
    cached_or_downloaded(&what, &cache, &hint, move |local_only, progress| {
        repo.download_file()
            .filename(file_name.clone())
            .maybe_revision(revision.clone())
            .local_files_only(local_only)
            .maybe_progress(progress)
            .send()
    })
}

/// How long a download waits for another process downloading the same file (hf-hub gives up
/// on its cache lock after 10 s; huggingface_hub waits as long as it takes).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// One call of hf-hub's download: `local_files_only`, and the progress handler to give it.
type Download =
    dyn Fn(bool, Option<Progress>) -> std::result::Result<PathBuf, HFError> + Sync + Send;

/// Looks in the cache first (`send(true)`), then downloads (`send(false)`) unless offline,
/// showing its progress and ending it with an error when no bytes come for
/// [`stall_limit`] ([`watched`]); waits while another process downloads the same file; checks
/// the file against the SHA-256 its cache entry is named by ([`verified`]).
fn cached_or_downloaded(
    what: &str,
    cache: &Path,
    hint: &str,
    send: impl Fn(bool, Option<Progress>) -> std::result::Result<PathBuf, HFError>
        + Sync
        + Send
        + 'static,
) -> Result<PathBuf> {
    let send: Arc<Download> = Arc::new(send);
    let download = || -> Result<std::result::Result<PathBuf, HFError>> {
        let started = std::time::Instant::now();
        let mut said = false;
        loop {
            match watched(what, &send)? {
                Err(HFError::CacheLockTimeout { path }) if started.elapsed() < LOCK_WAIT => {
                    if !said {
                        eprintln!(
                            "waiting for another process downloading {what} (its lock {})",
                            path.display()
                        );
                        said = true;
                    }
                    // hf-hub downloads once it holds the lock, even where the other process
                    // has just stored the file: wait for the lock here, then ask again, which
                    // finds the file stored.
                    wait_for_lock(&path, LOCK_WAIT.saturating_sub(started.elapsed()));
                }
                result => return Ok(result),
            }
        }
    };
    let path = match send(true, None) {
        Ok(path) => path,
        Err(HFError::LocalEntryNotFound { .. }) if offline() => bail!(
            "{what} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set: {hint}, \
             or unset HF_HUB_OFFLINE to download it",
            cache.display()
        ),
        Err(HFError::EntryNotFound { .. }) if offline() => bail!(
            "{what} is marked in the Hugging Face cache ({}) as missing from the repository (the \
             Hub answered 404 to an earlier download) and HF_HUB_OFFLINE is set: {hint}, or \
             unset HF_HUB_OFFLINE to ask the Hub again",
            cache.display()
        ),
        // Not cached, or marked missing by an earlier 404 (hf-hub's `.no_exist` entry, which
        // its cache-only lookup trusts for ever): asked online, as huggingface_hub asks the Hub
        // on every online call, so that a file added since is found.
        Err(HFError::LocalEntryNotFound { .. } | HFError::EntryNotFound { .. }) => download()
            .map_err(|e| anyhow!("{e:#}; {hint} instead"))?
            .map_err(|e| {
                anyhow!(
                    "cannot download {what} ({}); {hint} instead",
                    said_once(&e.to_string())
                )
            })?,
        Err(e) => bail!("cannot read {what} from the cache ({e})"),
    };
    verified(what, &path)?;
    Ok(path)
}

/// How long a download may go without receiving a byte before it is given up (one limit on
/// the silence anywhere in it, the metadata request included; a download given up starts over
/// on the next run): `HF_HUB_DOWNLOAD_TIMEOUT` seconds (huggingface_hub's variable, there the
/// limit on each network read of the file, 10 s by default, resumed after), 60 s without it or
/// at 0 (huggingface_hub's default then too); at least 20 s, since hf-hub itself waits up to
/// 10 s silently for another process's cache lock.
///
/// Errors: the variable is set to something other than a positive number of seconds.
fn stall_limit() -> Result<std::time::Duration> {
    const FLOOR: f64 = 20.0;
    let seconds = match std::env::var("HF_HUB_DOWNLOAD_TIMEOUT") {
        Err(_) => 60.0,
        Ok(v) if v.trim() == "0" => 60.0,
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 => s.max(FLOOR),
            _ => bail!(
                "HF_HUB_DOWNLOAD_TIMEOUT={v}: not a positive number of seconds (how long a \
                 download may go without receiving a byte)"
            ),
        },
    };
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// A download's progress: shown as a bar on a terminal (one line where standard error is not
/// one), and the time bytes last came (or the download began), which [`watched`] watches.
struct Watch {
    what: String,
    bar: indicatif::ProgressBar,
    started: std::time::Instant,
    /// Milliseconds from `started` to the last sign of life.
    last: std::sync::atomic::AtomicU64,
    /// The most bytes reported so far.
    bytes: std::sync::atomic::AtomicU64,
    announced: std::sync::atomic::AtomicBool,
}

impl Watch {
    fn new(what: &str) -> Self {
        let bar = indicatif::ProgressBar::with_draw_target(
            None,
            indicatif::ProgressDrawTarget::stderr_with_hz(4),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!("downloading {what}"));
        Self {
            what: what.to_string(),
            bar,
            started: std::time::Instant::now(),
            last: Default::default(),
            bytes: Default::default(),
            announced: Default::default(),
        }
    }

    fn alive(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// `done` bytes of `total` (0: unknown) received: a sign of life when it is more than before.
    fn received(&self, done: u64, total: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if total > 0 && !self.announced.swap(true, Relaxed) {
            self.bar.set_length(total);
            // Once per file and process (a wait for another process's download asks again).
            static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
            let first = SAID.lock().map_or(true, |mut said| {
                let new = !said.contains(&self.what);
                if new {
                    said.push(self.what.clone());
                }
                new
            });
            if self.bar.is_hidden() && first {
                eprintln!(
                    "downloading {} ({:.1} MB)",
                    self.what,
                    total as f64 / 1_000_000.0
                );
            }
        }
        if self.bytes.fetch_max(done, Relaxed) < done {
            self.bar.set_position(done);
            self.alive();
        }
    }

    /// Time since the last sign of life.
    fn silent_for(&self) -> std::time::Duration {
        let last = self.last.load(std::sync::atomic::Ordering::Relaxed);
        self.started
            .elapsed()
            .saturating_sub(std::time::Duration::from_millis(last))
    }
}

impl hf_hub::progress::ProgressHandler for Watch {
    fn on_progress(&self, event: &hf_hub::progress::ProgressEvent) {
        use hf_hub::progress::{DownloadEvent, ProgressEvent};
        let ProgressEvent::Download(event) = event else {
            return;
        };
        match event {
            DownloadEvent::Start { total_bytes, .. } => {
                self.alive();
                self.received(0, *total_bytes);
            }
            DownloadEvent::Progress { files } => {
                for f in files {
                    self.received(f.bytes_completed, f.total_bytes);
                }
            }
            // A Xet transfer (most of the Hub's large files): hf-hub polls it every 100 ms and
            // counts bytes written, which may wait on a whole fetched range; its client has
            // timeouts and retries of its own, so each poll is a sign of life.
            DownloadEvent::AggregateProgress {
                bytes_completed,
                total_bytes,
                ..
            } => {
                self.alive();
                self.received(*bytes_completed, *total_bytes)
            }
            DownloadEvent::Complete => self.alive(),
        }
    }
}

/// `send(false, progress)` on a thread of its own, its progress shown, given up with an error
/// (the thread left blocked) when no bytes come for [`stall_limit`]: hf-hub 1.0's HTTP clients
/// have no timeouts, so a stalled connection would otherwise wait for ever.
///
/// Errors: the download stalled (naming `what` and the limit); the limit's variable is wrong.
fn watched(what: &str, send: &Arc<Download>) -> Result<std::result::Result<PathBuf, HFError>> {
    let limit = stall_limit()?;
    let watch = Arc::new(Watch::new(what));
    let (tx, rx) = std::sync::mpsc::channel();
    let (send, progress) = (send.clone(), watch.clone());
    std::thread::Builder::new()
        .name("hub-download".into())
        .spawn(move || {
            let _ = tx.send(send(false, Some(Progress::from(progress))));
        })
        .context("cannot start the download's thread")?;
    let tick = std::time::Duration::from_millis(250);
    loop {
        match rx.recv_timeout(tick) {
            Ok(result) => {
                watch.bar.finish_and_clear();
                return Ok(result);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                watch.bar.abandon();
                bail!("the download of {what} ended without a result (its thread panicked)")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let silent = watch.silent_for();
                if silent >= limit {
                    watch.bar.abandon();
                    let got = watch.bytes.load(std::sync::atomic::Ordering::Relaxed);
                    bail!(
                        "the download of {what} stalled: nothing received for {:.0} s ({} bytes \
                         so far; HF_HUB_DOWNLOAD_TIMEOUT sets the limit, now {:.0} s); check \
                         the network and run again (it starts over)",
                        silent.as_secs_f64(),
                        got,
                        limit.as_secs_f64()
                    )
                }
            }
        }
    }
}

/// Waits until the cache lock `path` is free (another process's download ended) or `limit`
/// has passed, polling it twice a second; returns at once where it cannot be opened.
fn wait_for_lock(path: &Path, limit: std::time::Duration) {
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                return;
            }
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < limit => {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(_) => return,
        }
    }
}

/// Checks the file at `path` (a cache snapshot's link) against its blob's name: the Hub's
/// large (LFS) files are stored under their SHA-256, so a blob whose bytes hash otherwise is
/// damaged: an HTTP error page or a cut transfer stored as the file (hf-hub 1.0 checks
/// neither), a disk error. huggingface_hub checks the size only; PyTorch's
/// `load_state_dict_from_url(check_hash=True)` checks the hash. A damaged blob is removed with
/// the link, so that the next run downloads it again. Files stored otherwise (small files
/// under their git hash, a cache without links) are not checked.
///
/// Errors: the file cannot be read, or is damaged (naming both hashes).
fn verified(what: &str, path: &Path) -> Result<()> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let blob = match std::fs::canonicalize(path) {
        Ok(blob) => blob,
        // A link to a blob that is gone (removed as damaged through another snapshot's link):
        // removed too, so that the next run downloads the file again.
        Err(_) if std::fs::symlink_metadata(path).is_ok() => {
            let removed = std::fs::remove_file(path).is_ok();
            bail!(
                "{what}: the cache's {} links to a file that is gone; {}",
                path.display(),
                match removed {
                    true => "the link was removed: run again to download the file",
                    false => "remove the link and run again",
                }
            )
        }
        Err(e) => bail!("cannot resolve {}: {e}", path.display()),
    };
    let Some(expected) = blob.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let mut file =
        std::fs::File::open(&blob).with_context(|| format!("cannot open {}", blob.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("cannot read {}", blob.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let found: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if found.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    let removed = std::fs::remove_file(&blob).is_ok();
    let _ = std::fs::remove_file(path);
    bail!(
        "{what}: the cached file {} is damaged (its SHA-256 is {found}, the Hub's {expected}: a \
         failed or cut download, or a disk error); {}",
        blob.display(),
        match (removed, offline()) {
            (true, false) => "it was removed: run again to download it".to_string(),
            (true, true) =>
                "it was removed: run again without HF_HUB_OFFLINE to download it".to_string(),
            (false, _) => format!("remove it (and {}) and run again", path.display()),
        }
    )
}

/// `text` without a last parenthesised part that it already holds: hf-hub adds the URL to an
/// HTTP error that names it already (`... for url (U) (U)`).
fn said_once(text: &str) -> &str {
    if let Some(start) = text.strip_suffix(')').and_then(|t| t.rfind(" (")) {
        let (head, tail) = text.split_at(start);
        if head.contains(tail.trim_start()) {
            return head;
        }
    }
    text
}

/// Reads rows `{image: {bytes, path}, label}` and decodes the images in parallel.
fn read_parquet(path: &Path, data: &HubData) -> Result<InMemory> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {name}"))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{name}: not a readable parquet file"))?;
    let rows = reader
        .get_row_iter(None)
        .with_context(|| format!("{name}: cannot read rows"))?;
    let mut encoded = Vec::new();
    let mut labels = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = row.with_context(|| format!("{name}: cannot read row {i}"))?;
        let (bytes, label) = image_and_label(&row).with_context(|| format!("{name}: row {i}"))?;
        encoded.push(bytes);
        labels.push(label);
    }
    let (c, h, w) = data.shape;
    let mut pixels = vec![0u8; encoded.len() * c * h * w];
    pixels
        .par_chunks_mut(c * h * w)
        .zip(encoded.par_iter())
        .enumerate()
        .try_for_each(|(i, (out, bytes))| -> Result<()> {
            let img = decode_named(bytes, data.mode, &format!("{name} row {i}"))?;
            ensure!(
                img.shape() == data.shape,
                "{name} row {i}: wrong image size {:?}, expected {:?}",
                img.shape(),
                data.shape
            );
            out.copy_from_slice(&img.data);
            Ok(())
        })?;
    InMemory::new(pixels, labels, data.shape, class_names(data.spec.classes)).with_context(|| name)
}

/// The encoded image bytes (first binary field of the struct column) and the integer label.
fn image_and_label(row: &Row) -> Result<(Vec<u8>, usize)> {
    let mut image = None;
    let mut label = None;
    for (_, field) in row.get_column_iter() {
        match field {
            Field::Group(group) => {
                image = group.get_column_iter().find_map(|(_, f)| match f {
                    Field::Bytes(b) => Some(b.data().to_vec()),
                    _ => None,
                })
            }
            Field::Long(v) => label = usize::try_from(*v).ok(),
            Field::Int(v) => label = usize::try_from(*v).ok(),
            Field::ULong(v) => label = usize::try_from(*v).ok(),
            Field::UInt(v) => label = usize::try_from(*v).ok(),
            _ => {}
        }
    }
    Ok((
        image.context("no image bytes column")?,
        label.context("no non-negative integer label column")?,
    ))
}

/// A local file when `spec` names one (or looks like a path), else the file `hub_file` of the
/// Hub model `spec` (`owner/name`, or `owner/name@REVISION` for a branch, tag or commit other
/// than `main`), fetched into the standard Hugging Face cache.
///
/// Errors: a local-looking `spec` that is no file (naming `flag` and `example_id` as a Hub id
/// that would work), or the Hub's error (offline with an empty cache, unknown repository).
pub fn file_or_hub(spec: &str, hub_file: &str, flag: &str, example_id: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    let file_ext = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "safetensors" | "pth" | "pt" | "bin" | "ckpt"));
    // A Hub id is `owner/name`, with `@REVISION` after it or not.
    let id = spec.split_once('@').map_or(spec, |(id, _)| id);
    let looks_local = path.exists()
        || file_ext
        || spec.starts_with('.')
        || spec.starts_with('/')
        || id.matches('/').count() != 1;
    if looks_local {
        if path.is_dir() {
            bail!("{flag} {spec}: a directory, not a file (give a .safetensors file, such as a run's best.safetensors, or a Hub model id such as {example_id})")
        }
        if path.exists() && !path.is_file() {
            bail!(
                "{flag} {spec}: not a regular file (a pipe or a device): give a .safetensors file"
            )
        }
        if !path.is_file() {
            bail!("{flag} {spec}: the file does not exist (give a .safetensors file or a Hub model id such as {example_id})")
        }
        return Ok(path.to_path_buf());
    }
    fetch_model_file(
        spec,
        hub_file,
        &format!(
            "{flag} FILE.safetensors (made once where PyTorch is installed: the model's \
             state_dict() through safetensors.torch's save_file; or {spec}'s {hub_file} copied \
             from a machine with access)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::{said_once, verified};

    /// The wait for another download's cache lock ends once that lock is released, and at
    /// the limit where it never is.
    #[test]
    fn waiting_for_a_lock_ends_when_it_is_free_or_at_the_limit() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("blob.lock");
        let held = std::fs::File::create(&path).expect("lock file");
        held.lock().expect("lock");
        let released = std::sync::Arc::new(AtomicBool::new(false));
        let flag = released.clone();
        let other = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            flag.store(true, Ordering::SeqCst);
            drop(held);
        });
        super::wait_for_lock(&path, std::time::Duration::from_secs(600));
        assert!(released.load(Ordering::SeqCst));
        other.join().expect("the holder");
        let held = std::fs::File::create(&path).expect("lock file");
        held.lock().expect("lock");
        // Never released: the wait ends at its limit (the test would hang otherwise).
        let waited = std::time::Instant::now();
        super::wait_for_lock(&path, std::time::Duration::from_millis(100));
        assert!(waited.elapsed() >= std::time::Duration::from_millis(100));
        drop(held);
    }

    /// A cache entry as hf-hub lays it out: the blob named by `name`, holding `bytes`, and the
    /// snapshot's link to it; the link's path.
    fn entry(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let blobs = dir.join("blobs");
        let snapshot = dir.join("snapshots").join("0123");
        std::fs::create_dir_all(&blobs).expect("blobs");
        std::fs::create_dir_all(&snapshot).expect("snapshot");
        std::fs::write(blobs.join(name), bytes).expect("blob");
        let link = snapshot.join("model.safetensors");
        std::os::unix::fs::symlink(blobs.join(name), &link).expect("link");
        link
    }

    /// A blob whose bytes hash to its name is taken; one that does not (an error page stored
    /// as the file) is refused, naming both hashes, and removed with its link, so that the
    /// next run downloads it again; a blob not named by a SHA-256 is not checked.
    #[test]
    fn a_cached_file_is_checked_against_its_sha256() {
        let dir = tempfile::tempdir().expect("temp dir");
        // SHA-256 of "abc".
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let good = entry(&dir.path().join("good"), abc, b"abc");
        verified("model file x/y", &good).expect("a sound blob");
        let bad = entry(&dir.path().join("bad"), abc, b"<Error>AccessDenied</Error>");
        let err = format!("{:#}", verified("model file x/y", &bad).unwrap_err());
        assert!(
            err.starts_with("model file x/y: the cached file")
                && err.contains(&format!("the Hub's {abc}"))
                && err.contains("is damaged")
                && err.contains("it was removed"),
            "{err}"
        );
        assert!(!dir.path().join("bad/blobs").join(abc).exists());
        assert!(std::fs::symlink_metadata(&bad).is_err());
        let git = entry(&dir.path().join("git"), "0123456789abcdef", b"anything");
        verified("model file x/y", &git).expect("not checked");
        // Another snapshot's link to the blob removed: removed too, with a clear message.
        let other = dir.path().join("bad/snapshots/4567");
        std::fs::create_dir_all(&other).expect("snapshot");
        let dangling = other.join("model.safetensors");
        std::os::unix::fs::symlink(dir.path().join("bad/blobs").join(abc), &dangling)
            .expect("link");
        let err = format!("{:#}", verified("model file x/y", &dangling).unwrap_err());
        assert!(
            err.contains("links to a file that is gone") && err.contains("run again"),
            "{err}"
        );
        assert!(std::fs::symlink_metadata(&dangling).is_err());
    }

    #[test]
    fn a_repeated_url_is_said_once() {
        let url = "https://huggingface.co/datasets/x/resolve/main/a.parquet";
        let twice = format!("HTTP request error: error sending request for url ({url}) ({url})");
        assert_eq!(
            said_once(&twice),
            format!("HTTP request error: error sending request for url ({url})")
        );
        for text in ["status 404 (not found)", "no parentheses", "a (b) (c)"] {
            assert_eq!(said_once(text), text);
        }
    }
}
