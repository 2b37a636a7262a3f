//! Model weights as safetensors under PyTorch's `state_dict()` names, with strict loading.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;

const BATCHES_TRACKED: &str = ".num_batches_tracked";

/// Writes `tensors` to `path` as safetensors, atomically: a temporary file in the same
/// directory, then a rename, so an interrupted write never clobbers an earlier checkpoint.
///
/// Errors: a tensor holding NaN or infinity (named, nothing is written), or the file system's.
pub fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    save_with_metadata(tensors, None, path)
}

/// The metadata key of a checkpoint's checksum, written by every save and checked by every
/// read of a file that has it: the CRC-32C (8 hex digits) of the metadata the writer gave
/// (the keys [`COVERED_KEY`] lists) and of each tensor's name, type, shape and data bytes as
/// the file holds them, the tensors in name order. Keys added by another tool
/// (`"format": "pt"`) are not covered, so such a file stays readable. PyTorch's `safetensors`
/// readers pass over metadata; files from elsewhere, which have no checksum, are read
/// unchecked.
pub const CHECKSUM_KEY: &str = "crc32c";

/// The metadata key listing (comma-separated, in order) the other keys [`CHECKSUM_KEY`]'s sum
/// covers: those the writer gave (a resume state's), absent when it gave none.
pub const COVERED_KEY: &str = "crc32c_covers";

/// The checksum of [`CHECKSUM_KEY`]: the CRC-32C, first over each covered metadata entry in
/// key order (its key, a zero byte, its value, a zero byte; a listed key that is missing
/// counts as the key alone), then over each tensor in name order (its name, a zero byte, its
/// type as the header spells it, a zero byte, its shape as decimal sizes each followed by a
/// comma, a zero byte, then its data bytes, little-endian as safetensors stores them, one
/// tensor's bytes at a time). It tells a file damaged since it was written (a bit flipped on
/// the disk, bytes overwritten) from the one written, where the values alone, still finite,
/// would be read as weights or as a resume state.
fn checksum<V: safetensors::View>(
    metadata: &HashMap<String, String>,
    covered: &[&str],
    mut tensors: Vec<(&str, V)>,
) -> u32 {
    let mut crc = 0;
    for key in covered {
        crc = crc32c::crc32c_append(crc, format!("{key}\0").as_bytes());
        if let Some(value) = metadata.get(*key) {
            crc = crc32c::crc32c_append(crc, format!("{value}\0").as_bytes());
        }
    }
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    for (name, tensor) in &tensors {
        let shape: String = tensor.shape().iter().map(|d| format!("{d},")).collect();
        let index = format!("{name}\0{:?}\0{shape}\0", tensor.dtype());
        crc = crc32c::crc32c_append(crc, index.as_bytes());
        crc = crc32c::crc32c_append(crc, &tensor.data());
    }
    crc
}

/// The [`CHECKSUM_KEY`] sum a checkpoint of `tensors` (saved without metadata, as
/// [`save_tensors`] saves it) holds: what tells later whether a file still holds these weights.
///
/// # Errors
/// A tensor cannot be copied to the host.
pub fn tensors_checksum(tensors: &HashMap<String, Tensor>) -> Result<u32> {
    let on_cpu: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(k, v)| Ok((k.as_str(), v.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    Ok(checksum(
        &HashMap::new(),
        &[],
        on_cpu.iter().map(|(k, v)| (*k, v)).collect(),
    ))
}

/// The [`tensors_checksum`] of the checkpoint file `path`: the sum its header holds where it
/// covers no metadata (as [`save_tensors`] writes it; checked against its tensors as any read
/// checks it), else the sum of its tensors as read.
///
/// # Errors
/// The file cannot be read, is no safetensors file, or does not match its sum.
pub fn file_checksum(path: &Path) -> Result<u32> {
    let (tensors, metadata) = read_with_metadata(path)?;
    match (metadata.get(CHECKSUM_KEY), metadata.get(COVERED_KEY)) {
        (Some(sum), None) => u32::from_str_radix(sum, 16).with_context(|| {
            format!(
                "{}: its {CHECKSUM_KEY:?} is not hexadecimal",
                path.display()
            )
        }),
        _ => tensors_checksum(&tensors),
    }
}

/// [`save_tensors`] with string metadata in the safetensors header (`__metadata__`), written
/// in the same atomic step as the tensors; [`read_with_metadata`] gives it back. The header
/// also holds the tensors' checksum under [`CHECKSUM_KEY`].
///
/// # Errors
/// A tensor holds NaN or infinity (named), or the file cannot be written.
pub fn save_with_metadata(
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    save_with_metadata_renaming(tensors, metadata, path, |tmp, path| {
        std::fs::rename(tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    })
}

/// [`save_with_metadata`] whose last step, the rename of the synced temporary file over `path`,
/// is `rename(temporary, path)`: a caller that must keep other work from the directory at that
/// moment (a training run tidying its folder at Ctrl-C) renames under its own lock.
///
/// # Errors
/// As [`save_with_metadata`], and those of `rename` (the temporary file is then removed).
pub fn save_with_metadata_renaming(
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
    rename: impl FnOnce(&Path, &Path) -> Result<()>,
) -> Result<()> {
    ensure_finite(tensors).with_context(|| format!("refusing to write {}", path.display()))?;
    let tmp = temporary_path(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let on_cpu: Vec<(&String, Tensor)> = tensors
        .iter()
        .map(|(k, v)| Ok((k, v.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let mut metadata = metadata.unwrap_or_default();
    let mut covered: Vec<String> = metadata.keys().cloned().collect();
    covered.sort();
    ensure!(
        covered
            .iter()
            .all(|k| !k.contains(',') && k != CHECKSUM_KEY && k != COVERED_KEY),
        "cannot write {}: metadata keys must hold no comma and differ from {CHECKSUM_KEY:?} and \
         {COVERED_KEY:?}: {covered:?}",
        path.display()
    );
    let covered: Vec<&str> = covered.iter().map(String::as_str).collect();
    let tensors = on_cpu.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let sum = checksum(&metadata, &covered, tensors);
    if !covered.is_empty() {
        metadata.insert(COVERED_KEY.into(), covered.join(","));
    }
    metadata.insert(CHECKSUM_KEY.into(), format!("{sum:08x}"));
    let metadata = Some(metadata);
    let written =
        safetensors::serialize_to_file(on_cpu.iter().map(|(k, v)| (*k, v)), metadata, &tmp)
            .map_err(|e| match e {
                // The system's error itself (safetensors' wrapper repeats it as "I/O error: ...").
                safetensors::SafeTensorError::IoError(e) => anyhow::Error::from(e),
                e => anyhow::Error::from(e),
            })
            .with_context(|| format!("cannot write {}", tmp.display()))
            .and_then(|()| {
                readable_by_all(&tmp);
                crate::file::sync(&tmp)
                    .with_context(|| format!("cannot sync {}", tmp.display()))?;
                rename(&tmp, path)?;
                Ok(crate::file::sync_dir_of(path)?)
            });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Gives `path` the mode `torch.save` gives a new file, `rw-rw-rw-` less the process's umask
/// (`rw-r--r--` under the usual 022): safetensors writes through a temporary file that only
/// its owner may read. The mode is that of a file created beside it (a probe, removed at
/// once), so it follows the umask on every Unix. Best effort: where no probe can be made or the
/// file system keeps no modes, the file stays as it is.
fn readable_by_all(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".mode");
        let probe = temporary_path(&path.with_file_name(name));
        let mode = std::fs::File::create(&probe).and_then(|f| f.metadata());
        let _ = std::fs::remove_file(&probe);
        if let Ok(mode) = mode {
            let mode = mode.permissions().mode() & 0o777;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        }
    }
    let _ = path;
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// The weights of `varmap` as PyTorch would save them: every variable under its name
/// (BatchNorm's `num_batches_tracked` counts included), and a zero `num_batches_tracked`
/// (int64 scalar) beside running statistics that do not count, so that
/// `load_state_dict(strict=True)` in PyTorch sees exactly its own keys.
///
/// As PyTorch's `state_dict()`, the tensors share storage with the model's variables on the
/// CPU: the next optimizer step or train-mode pass changes them too. Take `.copy()` of each
/// for a snapshot (PyTorch's `copy.deepcopy(model.state_dict())`); on a GPU they are host
/// copies already.
///
/// # Errors
/// A variable cannot be read.
pub fn state_dict(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    let mut out = HashMap::with_capacity(data.len() * 2);
    for (name, var) in data.iter() {
        out.insert(name.clone(), var.as_tensor().to_device(&Device::Cpu)?);
    }
    for name in data.keys() {
        if let Some(prefix) = name.strip_suffix(".running_var") {
            if let std::collections::hash_map::Entry::Vacant(slot) =
                out.entry(format!("{prefix}{BATCHES_TRACKED}"))
            {
                slot.insert(Tensor::new(0i64, &Device::Cpu)?);
            }
        }
    }
    Ok(out)
}

/// Saves the weights of `varmap` to `path` (see [`state_dict`] and [`save_tensors`]).
///
/// # Errors
/// As [`save_with_metadata`].
pub fn save(varmap: &VarMap, path: &Path) -> Result<()> {
    save_tensors(&state_dict(varmap)?, path)
}

/// Reads every tensor of a safetensors file onto the CPU, refusing PyTorch pickles with a hint.
///
/// Errors name the file: missing or unreadable, a pickle, not valid safetensors, or a tensor
/// holding NaN or infinity (named too).
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(read_with_metadata(path)?.0)
}

/// [`read`], with the header's string metadata (`__metadata__`; empty when there is none).
///
/// # Errors
/// As [`read`]: the file cannot be read, is no safetensors file, or holds NaN or infinity.
pub fn read_with_metadata(
    path: &Path,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = crate::file::read(path)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let Some(head) = bytes.get(..9) else {
        bail!(
            "{} is not a safetensors file: only {} bytes long",
            path.display(),
            bytes.len()
        )
    };
    // A safetensors file is a little-endian header length, then the JSON header.
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let pickle = head.starts_with(b"PK\x03\x04") || (head[0] == 0x80 && (2..=5).contains(&head[1]));
    if head[8] != b'{' && (pickle || matches!(ext, "pth" | "pt" | "pkl" | "bin")) {
        bail!(
            "{} looks like a PyTorch pickle (.pth/.pt), which is not loaded for safety; convert a \
             saved state_dict with: python -c \"import torch; from safetensors.torch import \
             save_file; save_file(torch.load('{}', map_location='cpu'), 'model.safetensors')\" \
             (a whole model saved with torch.save(model): torch.load(..., weights_only=False)\
             .state_dict(); a checkpoint dict: its state_dict entry, such as ['model'])",
            path.display(),
            path.display()
        )
    }
    let invalid = || match cut_short(&bytes) {
        Some(why) => format!("{} is not a whole safetensors file: {why}", path.display()),
        None => format!("{} is not a valid safetensors file", path.display()),
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).with_context(invalid)?;
    let metadata = header.metadata().clone().unwrap_or_default();
    if let Some(written) = metadata.get(CHECKSUM_KEY) {
        let file = safetensors::SafeTensors::deserialize(&bytes).with_context(invalid)?;
        let tensors = file.tensors();
        let covered: Vec<&str> = metadata
            .get(COVERED_KEY)
            .map_or(Vec::new(), |keys| keys.split(',').collect());
        let now = checksum(
            &metadata,
            &covered,
            tensors
                .iter()
                .map(|(name, view)| (name.as_str(), view))
                .collect(),
        );
        if u32::from_str_radix(written, 16).ok() != Some(now) {
            bail!(
                "{} is damaged: its tensors or its resume state are not those it was written \
                 with (their CRC-32C is {now:08x}, the {CHECKSUM_KEY:?} of its header says \
                 {written}): a bit flipped on the disk or bytes overwritten since, so it is not \
                 read (a file rewritten on purpose by a tool that kept this header's metadata \
                 reads once saved without the {CHECKSUM_KEY:?} key)",
                path.display()
            );
        }
    }
    let tensors =
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).with_context(invalid)?;
    ensure_finite(&tensors).with_context(|| format!("refusing {}", path.display()))?;
    Ok((tensors, metadata))
}

/// Where `bytes`, a safetensors file by its start (a header length, then `{`), are fewer than
/// its header describes: a copy or a write cut off. The sizes, said; `None` for anything else.
fn cut_short(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let len = bytes.len() as u64;
    // A header of more than 100 MB is no header (safetensors refuses those too).
    if bytes.get(8) != Some(&b'{') || n > 100_000_000 {
        return None;
    }
    let cut = |what: String| {
        format!(
            "it is shorter than its header says, {what}: cut short (a copy, download or write \
             that was interrupted) or its header damaged"
        )
    };
    let Some(header) = bytes.get(8..8 + n as usize) else {
        return Some(cut(format!(
            "{len} bytes, within its header of {} bytes",
            8 + n
        )));
    };
    let text = std::str::from_utf8(header).ok()?;
    // The data's end: the largest end of a tensor's `"data_offsets": [begin, end]`.
    let mut end = 0u64;
    for part in text.split("\"data_offsets\"").skip(1) {
        let list = part.trim_start().strip_prefix(':')?.trim_start();
        let list = list.strip_prefix('[')?;
        let list = &list[..list.find(']')?];
        end = end.max(list.split(',').nth(1)?.trim().parse().ok()?);
    }
    let expected = (8 + n).checked_add(end)?;
    (expected > len).then(|| cut(format!("{len} bytes where its header describes {expected}")))
}

/// The first floating-point tensor (by name) holding NaN or infinity, with that value.
///
/// # Errors
/// A tensor cannot be read back to the host.
pub fn first_non_finite(tensors: &HashMap<String, Tensor>) -> Result<Option<(String, f64)>> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        if let Some(value) = non_finite_value(&tensors[name])? {
            return Ok(Some((name.clone(), value)));
        }
    }
    Ok(None)
}

/// A NaN or infinite element of `t`, if it has one (integer tensors have none). Every float
/// type is read, the 8-bit ones (`F8_E4M3`, whose NaN is `0x7f`) included.
///
/// # Errors
/// `t` cannot be read back to the host.
pub fn non_finite_value(t: &Tensor) -> Result<Option<f64>> {
    use candle_core::DType;
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F64 => flat.to_vec1::<f64>()?.into_iter().find(|v| !v.is_finite()),
        DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 => flat
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .into_iter()
            .find(|v| !v.is_finite())
            .map(f64::from),
        // Candle converts these narrower float types only in some builds; one it cannot
        // convert cannot be loaded into a model either (that conversion's error says so).
        dtype if dtype.is_float() => flat
            .to_dtype(DType::F32)
            .and_then(|f| f.to_vec1::<f32>())
            .ok()
            .and_then(|v| v.into_iter().find(|v| !v.is_finite()))
            .map(f64::from),
        _ => None,
    })
}

/// Fails naming the first tensor that holds NaN or infinity.
pub fn ensure_finite(tensors: &HashMap<String, Tensor>) -> Result<()> {
    match first_non_finite(tensors)? {
        Some((name, value)) => bail!("tensor {name} holds a non-finite value ({value})"),
        None => Ok(()),
    }
}

/// Loads `path` into the variables of `varmap`, strictly (PyTorch's
/// `load_state_dict(strict=True)`): every variable must be in the file with the same shape, and
/// the file may hold nothing else. A batch norm's `num_batches_tracked` may be missing (a
/// checkpoint written before it was counted; the model's count is kept, as PyTorch's
/// `_NormBase` keeps it), never unexpected. Build the model from the
/// store first: its variables are what the file fills (into an empty store every key is
/// unexpected). Errors name the file, the key and both shapes. Values are cast to each
/// variable's dtype.
pub fn load_strict(varmap: &VarMap, path: &Path) -> Result<()> {
    let tensors = read(path)?;
    load_tensors_strict(varmap, &tensors).with_context(|| format!("loading {}", path.display()))
}

/// The prefix (`model.`) under which `tensors` holds every one of the `missing` names, if
/// there is one.
fn prefix_of_missing(missing: &[&String], tensors: &HashMap<String, Tensor>) -> Option<String> {
    let first = missing.first()?;
    let suffix = format!(".{first}");
    // Every key ending in the first missing name gives a candidate (a ResNet's `bn1.bias` ends
    // `model.bn1.bias` and `model.layer1.0.bn1.bias` too); the shortest that holds them all.
    let mut prefixes: Vec<&str> = tensors
        .keys()
        .filter(|k| k.ends_with(&suffix))
        .map(|k| &k[..k.len() - first.len()])
        .collect();
    prefixes.sort_by_key(|p| (p.len(), *p));
    prefixes
        .into_iter()
        .find(|prefix| {
            missing
                .iter()
                .all(|k| tensors.contains_key(&format!("{prefix}{k}")))
        })
        .map(str::to_string)
}

/// [`load_strict`] from tensors already in memory.
///
/// Values are not checked for NaN or infinity here: [`read`], which every loader reads files
/// with, refuses them.
///
/// # Errors
/// Names missing from `tensors` or not in `varmap` (all listed), or a tensor of another shape.
pub fn load_tensors_strict(varmap: &VarMap, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    let shapes: HashMap<String, Vec<usize>> = (data.iter())
        .map(|(name, var)| (name.clone(), var.dims().to_vec()))
        .collect();
    check_strict(&shapes, tensors)?;
    for (name, var) in data.iter().filter(|(name, _)| tensors.contains_key(*name)) {
        let t = tensors[name]
            .to_dtype(var.dtype())?
            .to_device(var.device())?;
        var.set(&t).with_context(|| format!("cannot set {name}"))?;
    }
    Ok(())
}

/// What [`load_tensors_strict`] checks before it loads, against a model's names and shapes
/// alone (`zoo::shapes`, which builds none of its weights): every name of `shapes` in
/// `tensors` but `num_batches_tracked`, no other, each of its shape.
///
/// # Errors
/// As [`load_tensors_strict`].
pub fn check_strict(
    shapes: &HashMap<String, Vec<usize>>,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    // A checkpoint without `num_batches_tracked` (written before it was counted) leaves it as is.
    let mut missing: Vec<&String> = shapes
        .keys()
        .filter(|k| !tensors.contains_key(*k) && !k.ends_with(BATCHES_TRACKED))
        .collect();
    missing.sort();
    // One the model has no place for is refused, as PyTorch's strict load refuses it.
    let mut unexpected: Vec<&String> = (tensors.keys())
        .filter(|k| !shapes.contains_key(*k))
        .collect();
    unexpected.sort();
    if !missing.is_empty() || !unexpected.is_empty() {
        let part = |keys: &[&String], what: &str| match keys.len() {
            0 => None,
            n => Some(format!("{n} {what} key(s) {}", preview(keys))),
        };
        let parts: Vec<String> = [part(&missing, "missing"), part(&unexpected, "unexpected")]
            .into_iter()
            .flatten()
            .collect();
        bail!(
            "the checkpoint does not match the model: {} ({})",
            parts.join("; "),
            match prefix_of_missing(&missing, tensors) {
                Some(prefix) if prefix == "model." => "every missing key is in the file under \
                    `model.`, as a run's training state (state.safetensors) holds the weights: \
                    load the run's best.safetensors or last.safetensors"
                    .to_string(),
                Some(prefix) => format!(
                    "every missing key is in the file under `{prefix}`: the model's weights \
                     inside something larger (strip the prefix from the names)"
                ),
                None => "a checkpoint of another model?".to_string(),
            }
        )
    }
    let mut mismatched: Vec<String> = shapes
        .iter()
        .filter(|(name, dims)| {
            tensors
                .get(*name)
                .is_some_and(|t| t.dims() != dims.as_slice())
        })
        .map(|(name, dims)| {
            format!(
                "{name}: the checkpoint has {:?}, the model expects {dims:?}",
                tensors[name].dims(),
            )
        })
        .collect();
    mismatched.sort();
    if !mismatched.is_empty() {
        // Many: another model of the same names (another width, or depth); a few shown.
        let n = mismatched.len();
        let more = match n > SHOWN {
            true => format!("; and {} more (a checkpoint of another model?)", n - SHOWN),
            false => String::new(),
        };
        mismatched.truncate(SHOWN);
        bail!("shape mismatch for {}{more}", mismatched.join("; "))
    }
    Ok(())
}

/// Keys or mismatches an error lists before it says how many more there are.
const SHOWN: usize = 8;

fn preview(keys: &[&String]) -> String {
    let shown: Vec<&str> = keys.iter().take(SHOWN).map(|k| k.as_str()).collect();
    let more = if keys.len() > SHOWN { ", ..." } else { "" };
    format!("[{}{more}]", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ParamStore;
    use candle_core::DType;

    fn model(store: &ParamStore, out: usize) -> Result<()> {
        crate::linear(store.vb().pp("fc"), 3, out, crate::WeightInit::TorchDefault)?;
        crate::batch_norm(store.vb().pp("bn"), 3, 1e-5)?;
        Ok(())
    }

    #[test]
    fn round_trip_is_bit_exact_and_adds_batches_tracked() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("m.safetensors");
        let a = ParamStore::new(1, &Device::Cpu);
        model(&a, 2)?;
        save(a.varmap(), &path)?;
        #[cfg(unix)]
        {
            // Readable by others as the umask allows, as torch.save's files (safetensors' own
            // are owner-only): the mode of a file created here.
            use std::os::unix::fs::PermissionsExt;
            let plain = dir.path().join("plain");
            std::fs::write(&plain, b"x")?;
            let mode = |p: &Path| -> Result<u32> {
                Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
            };
            assert_eq!(mode(&path)?, mode(&plain)?);
        }
        let raw = read(&path)?;
        assert_eq!(raw["bn.num_batches_tracked"].dtype(), DType::I64);
        let b = ParamStore::new(2, &Device::Cpu);
        model(&b, 2)?;
        load_strict(b.varmap(), &path)?;
        for ((na, va), (nb, vb)) in a.named_vars().iter().zip(b.named_vars().iter()) {
            assert_eq!(na, nb);
            let x: Vec<f64> = va.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
            let y: Vec<f64> = vb.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
            assert_eq!(
                x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
        Ok(())
    }

    /// A file cut short (an interrupted copy) is said to be, with its size and the size its
    /// header describes, wherever it is cut; a file with bytes changed, not cut, is not.
    #[test]
    fn a_file_cut_short_is_said_to_be() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("m.safetensors");
        let a = ParamStore::new(1, &Device::Cpu);
        model(&a, 2)?;
        save(a.varmap(), &path)?;
        let whole = std::fs::read(&path)?;
        let header = 8 + u64::from_le_bytes(whole[..8].try_into()?) as usize;
        let cut_path = dir.path().join("cut.safetensors");
        for keep in [header / 2, header, header + 4, whole.len() - 1] {
            std::fs::write(&cut_path, &whole[..keep])?;
            let msg = format!("{:#}", read(&cut_path).unwrap_err());
            let sizes = match keep < header {
                true => format!("{keep} bytes, within its header of {header} bytes"),
                false => format!("{keep} bytes where its header describes {}", whole.len()),
            };
            assert!(
                msg.contains(
                    "cut.safetensors is not a whole safetensors file: it is shorter than its header"
                ) && msg.contains("cut short")
                    && msg.contains(&sizes),
                "{keep}: {msg}"
            );
        }
        // Longer than its header says: invalid, not cut short.
        let mut longer = whole.clone();
        longer.extend_from_slice(&[0; 16]);
        std::fs::write(&cut_path, &longer)?;
        let msg = format!("{:#}", read(&cut_path).unwrap_err());
        assert!(
            msg.contains("is not a valid safetensors file") && !msg.contains("cut short"),
            "{msg}"
        );
        Ok(())
    }

    /// A write the system refuses names the file and says the system's error once (not again
    /// as safetensors' "I/O error: ..."), and leaves nothing behind: here the temporary file's
    /// name is taken by a directory.
    #[cfg(unix)]
    #[test]
    fn a_failed_write_says_the_systems_error_once() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("m.safetensors");
        let a = ParamStore::new(1, &Device::Cpu);
        model(&a, 2)?;
        std::fs::create_dir(temporary_path(&path))?;
        let err = format!("{:#}", save(a.varmap(), &path).unwrap_err());
        assert!(
            err.starts_with("cannot write ") && err.contains(".tmp"),
            "{err}"
        );
        let system = std::io::Error::from_raw_os_error(21).to_string();
        assert_eq!(err.matches(&system).count(), 1, "{err}");
        assert!(!err.contains("I/O error"), "{err}");
        assert!(!path.exists());
        Ok(())
    }

    /// Every save writes the tensors' checksum beside the caller's metadata; a read of a file
    /// whose data changed since (one bit of a weight, still finite) refuses it, naming it; a
    /// file without a checksum (PyTorch's `save_file`) is read as it is.
    #[test]
    fn a_checkpoint_damaged_since_it_was_written_is_refused() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("m.safetensors");
        let w = Tensor::new(&[1.0f32, 2.0, 3.0, 4.0], &Device::Cpu)?;
        let tensors = HashMap::from([("w".to_string(), w.clone())]);
        let mine = HashMap::from([("epoch".to_string(), "3".to_string())]);
        save_with_metadata(&tensors, Some(mine), &path)?;
        let (read_back, metadata) = read_with_metadata(&path)?;
        assert_eq!(metadata["epoch"], "3");
        assert_eq!(metadata[CHECKSUM_KEY].len(), 8);
        assert_eq!(read_back["w"].to_vec1::<f32>()?, [1.0, 2.0, 3.0, 4.0]);
        // The last weight's lowest mantissa bit: 4.0 becomes 4.0000005, finite.
        let mut bytes = std::fs::read(&path)?;
        let at = bytes.len() - 4;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes)?;
        let err = format!("{:#}", read(&path).unwrap_err());
        assert!(
            err.contains("m.safetensors is damaged") && err.contains("CRC-32C"),
            "{err}"
        );
        // Metadata passed through by another tool that adds its own key, the tensors as
        // written: read.
        let mut edited = metadata.clone();
        edited.insert("format".into(), "pt".into());
        safetensors::serialize_to_file([("w", &w)], Some(edited.clone()), &path)?;
        assert_eq!(read(&path)?["w"].to_vec1::<f32>()?, [1.0, 2.0, 3.0, 4.0]);
        // The written metadata edited (the tensors as written): refused; the checksum in
        // capitals is the same number.
        let mut bumped = edited.clone();
        bumped.insert("epoch".into(), "4".into());
        safetensors::serialize_to_file([("w", &w)], Some(bumped), &path)?;
        assert!(format!("{:#}", read(&path).unwrap_err()).contains("is damaged"));
        let mut capitals = metadata.clone();
        capitals.insert(CHECKSUM_KEY.into(), metadata[CHECKSUM_KEY].to_uppercase());
        safetensors::serialize_to_file([("w", &w)], Some(capitals), &path)?;
        assert_eq!(read_with_metadata(&path)?.1["epoch"], "3");
        // A tensor renamed, given another shape or another type of the same width, with the
        // same bytes: refused.
        let bits: Vec<u32> = w.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect();
        let as_int = Tensor::new(bits.as_slice(), &Device::Cpu)?;
        for (name, t) in [("v", w.clone()), ("w", w.reshape((2, 2))?), ("w", as_int)] {
            safetensors::serialize_to_file([(name, &t)], Some(edited.clone()), &path)?;
            let err = format!("{:#}", read(&path).unwrap_err());
            assert!(err.contains("m.safetensors is damaged"), "{name}: {err}");
        }
        // Written without a checksum, as PyTorch's safetensors writes: read unchecked.
        let plain = dir.path().join("plain.safetensors");
        safetensors::serialize_to_file([("w", &w)], None, &plain)?;
        assert_eq!(read(&plain)?["w"].to_vec1::<f32>()?, [1.0, 2.0, 3.0, 4.0]);
        Ok(())
    }

    #[test]
    fn mismatches_name_the_key_and_shapes() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("m.safetensors");
        let a = ParamStore::new(1, &Device::Cpu);
        model(&a, 2)?;
        save(a.varmap(), &path)?;

        let wider = ParamStore::new(1, &Device::Cpu);
        model(&wider, 5)?;
        let err = format!("{:#}", load_strict(wider.varmap(), &path).unwrap_err());
        assert!(
            err.contains("fc.weight") && err.contains("[2, 3]") && err.contains("[5, 3]"),
            "{err}"
        );

        let extra = ParamStore::new(1, &Device::Cpu);
        model(&extra, 2)?;
        crate::linear(extra.vb().pp("head"), 3, 1, crate::WeightInit::TorchDefault)?;
        let err = format!("{:#}", load_strict(extra.varmap(), &path).unwrap_err());
        assert!(
            err.contains("missing") && err.contains("head.weight"),
            "{err}"
        );

        let fewer = ParamStore::new(1, &Device::Cpu);
        crate::linear(fewer.vb().pp("fc"), 3, 2, crate::WeightInit::TorchDefault)?;
        let err = format!("{:#}", load_strict(fewer.varmap(), &path).unwrap_err());
        assert!(
            err.contains("unexpected") && err.contains("bn.weight"),
            "{err}"
        );
        assert!(err.contains("m.safetensors"), "{err}");

        // A batch norm's count the model has no batch norm for is unexpected too (PyTorch's
        // strict load refuses it); a missing one is not (the model's count is kept).
        let mut tensors = read(&path)?;
        tensors.insert(
            "head.num_batches_tracked".into(),
            Tensor::new(0i64, &Device::Cpu)?.reshape(())?,
        );
        let same = ParamStore::new(1, &Device::Cpu);
        model(&same, 2)?;
        let err = format!(
            "{:#}",
            load_tensors_strict(same.varmap(), &tensors).unwrap_err()
        );
        assert!(
            err.contains("1 unexpected key(s)") && err.contains("head.num_batches_tracked"),
            "{err}"
        );
        tensors.remove("head.num_batches_tracked");
        tensors.remove("bn.num_batches_tracked").expect("counted");
        load_tensors_strict(same.varmap(), &tensors)?;

        // The model's weights under a prefix: a run's training state, or another wrapper; the
        // first missing name (`bn.bias`) also ends other keys (`layer1.0.bn.bias`, as a
        // ResNet's `layer1.0.bn1.bias` ends as its stem's `bn1.bias`).
        let nested = ParamStore::new(1, &Device::Cpu);
        model(&nested, 2)?;
        crate::batch_norm(nested.vb().pp("layer1").pp("bn"), 2, 1e-5)?;
        crate::batch_norm(nested.vb().pp("layer1").pp("0").pp("bn"), 2, 1e-5)?;
        let tensors: HashMap<String, Tensor> = nested
            .named_vars()
            .into_iter()
            .map(|(name, var)| (format!("model.{name}"), var.as_tensor().clone()))
            .collect();
        let bn = "bn.bias".to_string();
        assert_eq!(
            prefix_of_missing(&[&bn], &tensors).as_deref(),
            Some("model.")
        );
        for _ in 0..20 {
            // HashMap's order differs from map to map: the answer must not.
            let shuffled: HashMap<String, Tensor> = tensors
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let err = format!(
                "{:#}",
                load_tensors_strict(nested.varmap(), &shuffled).unwrap_err()
            );
            assert!(err.contains("load the run's best.safetensors"), "{err}");
        }
        for (prefix, said) in [
            ("model.", "load the run's best.safetensors"),
            ("net.", "under `net.`: the model's weights inside"),
        ] {
            let tensors: HashMap<String, Tensor> = a
                .named_vars()
                .into_iter()
                .map(|(name, var)| (format!("{prefix}{name}"), var.as_tensor().clone()))
                .chain([(
                    "meta.epochs".to_string(),
                    Tensor::new(&[1f32], &Device::Cpu)?,
                )])
                .collect();
            let err = format!(
                "{:#}",
                load_tensors_strict(a.varmap(), &tensors).unwrap_err()
            );
            assert!(
                err.contains(said) && !err.contains("another model"),
                "{err}"
            );
        }

        // Many mismatches (another width of the same model): a few shown, the rest counted.
        let layers = |store: &ParamStore, width: usize| -> Result<()> {
            for i in 0..12 {
                let vb = store.vb().pp(format!("l{i:02}"));
                crate::linear(vb, width, width, crate::WeightInit::TorchDefault)?;
            }
            Ok(())
        };
        let narrow = ParamStore::new(1, &Device::Cpu);
        layers(&narrow, 2)?;
        let path = dir.path().join("narrow.safetensors");
        save(narrow.varmap(), &path)?;
        let wide = ParamStore::new(1, &Device::Cpu);
        layers(&wide, 3)?;
        let err = format!("{:#}", load_strict(wide.varmap(), &path).unwrap_err());
        assert!(err.contains("l00.bias: the checkpoint has [2]"), "{err}");
        assert!(
            err.contains("and 16 more (a checkpoint of another model?)"),
            "{err}"
        );
        assert!(!err.contains("l11.weight"), "{err}");
        Ok(())
    }

    #[test]
    fn pickles_and_garbage_are_refused_clearly() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let pth = dir.path().join("resnet.pth");
        std::fs::write(&pth, b"PK\x03\x04 zipped pickle")?;
        let err = format!("{:#}", read(&pth).unwrap_err());
        assert!(
            err.contains("pickle") && err.contains("safetensors"),
            "{err}"
        );
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"0123456789abcdef")?;
        let err = format!("{:#}", read(&junk).unwrap_err());
        assert!(err.contains("junk.safetensors"), "{err}");
        let missing = dir.path().join("none.safetensors");
        assert!(format!("{:#}", read(&missing).unwrap_err()).contains("none.safetensors"));
        Ok(())
    }

    /// `num_batches_tracked` counts training-mode passes (as PyTorch's), is saved and loaded;
    /// a checkpoint without it loads and leaves the count alone.
    #[test]
    fn batches_tracked_are_counted_saved_and_loaded() -> Result<()> {
        use candle_core::ModuleT;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bn.safetensors");
        let a = ParamStore::new(1, &Device::Cpu);
        let bn = crate::batch_norm(a.vb().pp("bn"), 3, 1e-5)?;
        let x = Tensor::randn(0f32, 1.0, (4, 3, 2, 2), &Device::Cpu)?;
        for _ in 0..3 {
            bn.forward_t(&x, true)?;
        }
        bn.forward_t(&x, false)?;
        let count = |t: Option<&Tensor>| t.map(|t| t.to_scalar::<i64>()).transpose();
        assert_eq!(count(bn.num_batches_tracked())?, Some(3));
        save(a.varmap(), &path)?;
        assert_eq!(
            read(&path)?["bn.num_batches_tracked"].to_scalar::<i64>()?,
            3
        );
        let b = ParamStore::new(2, &Device::Cpu);
        let fresh = crate::batch_norm(b.vb().pp("bn"), 3, 1e-5)?;
        load_strict(b.varmap(), &path)?;
        assert_eq!(count(fresh.num_batches_tracked())?, Some(3));
        let mut old = read(&path)?;
        old.remove("bn.num_batches_tracked");
        load_tensors_strict(b.varmap(), &old)?;
        assert_eq!(count(fresh.num_batches_tracked())?, Some(3));
        Ok(())
    }

    #[test]
    fn non_finite_tensors_are_never_written_nor_read() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("m.safetensors");
        let good = Tensor::new(&[1f32, 2.0], &Device::Cpu)?;
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let t = Tensor::new(&[1f32, bad], &Device::Cpu)?;
            let tensors = HashMap::from([("a".to_string(), good.clone()), ("z.w".to_string(), t)]);
            let err = format!("{:#}", save_tensors(&tensors, &path).unwrap_err());
            assert!(
                err.contains("z.w") && err.contains("m.safetensors"),
                "{err}"
            );
            assert!(!path.exists());
            // A file written by someone else is refused on reading, naming file and tensor.
            candle_core::safetensors::save(&tensors, &path)?;
            let err = format!("{:#}", read(&path).unwrap_err());
            assert!(
                err.contains("z.w") && err.contains("m.safetensors"),
                "{err}"
            );
            std::fs::remove_file(&path)?;
        }
        let bf16 = Tensor::new(&[f32::NAN], &Device::Cpu)?.to_dtype(DType::BF16)?;
        assert!(non_finite_value(&bf16)?.is_some_and(f64::is_nan));
        // An 8-bit float's NaN (0x7f in F8_E4M3), as a file stores it, refused on reading.
        let f8 = Tensor::new(&[0.5f32, 1.0], &Device::Cpu)?.to_dtype(DType::F8E4M3)?;
        assert!(non_finite_value(&f8)?.is_none());
        let mut bytes = std::fs::read({
            let path = dir.path().join("f8.safetensors");
            candle_core::safetensors::save(&HashMap::from([("w".to_string(), f8)]), &path)?;
            path
        })?;
        let last = bytes.len() - 1;
        // Its NaNs: 0x7f and, negative, 0xff.
        for nan in [0x7f, 0xff] {
            bytes[last] = nan;
            let path = dir.path().join("f8-nan.safetensors");
            std::fs::write(&path, &bytes)?;
            let err = format!("{:#}", read(&path).unwrap_err());
            assert!(
                err.contains("f8-nan.safetensors")
                    && err.contains("tensor w")
                    && err.contains("NaN"),
                "{err}"
            );
        }
        let ints = Tensor::new(&[1i64, 2], &Device::Cpu)?;
        assert!(non_finite_value(&ints)?.is_none());
        Ok(())
    }
}
