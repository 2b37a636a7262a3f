//! After training: evaluate a run's checkpoint again (`<program> evaluate --run DIR`) and
//! classify images with it (`<program> predict --run DIR IMAGE...`). Both rebuild the model,
//! transforms and class names from what the run saved: `config.json`, `classes.json` and the
//! checkpoint. A checkpoint outside any run (a PyTorch user's) is read as the zoo model that
//! `--model NAME` names, with the program's data set's settings.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor, D};
use datasets::{ColorMode, Op, Rng, Transform};
use layers::{Network, ParamStore};
use serde::Serialize;

use crate::cli::Recipe;
use crate::config::{DatasetKind, Precision, RunConfig};
use crate::device::parse_device;
use crate::engine::evaluate as evaluate_pass;
use crate::flags::FlagText;
use crate::rundir::{evaluated_confusion, evaluation_summary, BEST, CLASSES, CONFIG, LAST};

/// Writes `classes` as `dir/classes.json`.
///
/// # Errors
/// The file cannot be written.
pub fn save_classes(dir: &Path, classes: &[String]) -> Result<()> {
    crate::atomic::write_bytes(&dir.join(CLASSES), &serde_json::to_vec_pretty(classes)?)
}

/// The class names in the `classes.json` beside the checkpoint `weights` (a run directory's
/// `best.safetensors`, say), when there is one with `count` names; `None` otherwise.
pub fn classes_beside(weights: &Path, count: usize) -> Option<Vec<String>> {
    let dir = weights.parent()?;
    let text = layers::file::read(&dir.join(CLASSES)).ok()?;
    serde_json::from_slice::<Vec<String>>(&text)
        .ok()
        .filter(|classes| classes.len() == count)
}

/// The run directory holding the checkpoint file `weights` (a run's `best.safetensors`, say)
/// and its configuration, when a `config.json` beside the file says so (or, where it was
/// removed, the resume state's copy of it); `None` for `best` and `last` (which name a run's
/// checkpoints, not files) and a file outside any run. A checkpoint read this way is read as
/// `--run DIR --weights FILE` reads it: the run's input size, transform and classes.
pub fn run_beside(weights: &Path) -> Option<(PathBuf, RunConfig)> {
    if weights == Path::new("best") || weights == Path::new("last") {
        return None;
    }
    // A link to a run's checkpoint: the run where the file it names lies.
    run_in_folder_of(weights).or_else(|| {
        let link = std::fs::symlink_metadata(weights).ok()?.is_symlink();
        run_in_folder_of(&std::fs::canonicalize(weights).ok().filter(|_| link)?)
    })
}

/// The run whose folder holds the checkpoint file `weights` (given without `--run`), said on
/// standard error (standard output holds what scripts read) by the writing process; `None` for
/// `best`, `last` and a file in no run's folder.
fn found_run(weights: &str) -> Option<PathBuf> {
    let (dir, _) = run_beside(Path::new(weights))?;
    // A run's resume state is no checkpoint: the error that follows says what to take.
    if crate::distributed::writes()
        && crate::state::epochs_of_state_file(Path::new(weights)).is_none()
    {
        crate::warn!(
            "{weights}: a checkpoint of the run in {}: read as --run {} --weights FILE",
            dir.display(),
            dir.display()
        );
    }
    Some(dir)
}

/// [`run_beside`] for the file's own folder.
fn run_in_folder_of(weights: &Path) -> Option<(PathBuf, RunConfig)> {
    let dir = match weights.parent()? {
        dir if dir.as_os_str().is_empty() => Path::new("."),
        dir => dir,
    };
    // As `Trained::open` reads a run: a removed config.json (not one a replacing run is about
    // to write) from the state.
    let config = match config_removed(dir) {
        true => crate::state::saved_settings(dir)?.0,
        false => serde_json::from_slice(&layers::file::read(&dir.join(CONFIG)).ok()?).ok()?,
    };
    Some((dir.to_path_buf(), config))
}

/// Whether the run in `dir` has no `config.json` because it was removed (not because a run
/// replacing it is about to write one): its state's copy of the settings is then read.
fn config_removed(dir: &Path) -> bool {
    matches!(
        std::fs::symlink_metadata(dir.join(CONFIG)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound
    ) && !crate::rundir::in_use(dir)
}

/// A trained run, ready to evaluate or predict.
pub struct Trained {
    /// The run's configuration.
    pub config: RunConfig,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// The network, in evaluation mode when called with `train = false`.
    pub model: Box<dyn Network>,
    /// Its parameters.
    pub store: ParamStore,
    /// The checkpoint loaded.
    pub weights: PathBuf,
    /// `best`, `last` or the checkpoint's file stem (`<folder>-<stem>` for a file outside the
    /// run directory), for output names.
    pub tag: String,
}

impl Trained {
    /// Opens the run in `dir` with the checkpoint `weights` (`best`, `last` or a file) on
    /// `device`.
    ///
    /// An `--overwrite` of `dir` that was interrupted before the new run saved an epoch is
    /// undone first ([`crate::rundir::settle_for_reading`]), so the replaced run is read.
    ///
    /// Errors: `dir` is not there or not a directory, a run replacing the one in `dir` is still
    /// training and has saved no epoch, no
    /// `config.json` (not a run directory), class names that cannot be found, an
    /// unknown model, or a checkpoint that is missing, non-finite or does not match (named).
    pub fn open(dir: &Path, weights: &str, device: &Device) -> Result<Self> {
        match std::fs::metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "--run {}: no such directory{} (give the directory a run wrote, its --out)",
                dir.display(),
                match std::fs::symlink_metadata(dir).is_ok() {
                    true => " (a link to nothing)",
                    false => "",
                }
            ),
            Ok(meta) if !meta.is_dir() => bail!(
                "--run {}: a file, not a run directory (give the directory a run wrote, its \
                 --out; a checkpoint file goes to --weights)",
                dir.display()
            ),
            _ => {}
        }
        crate::rundir::settle_for_reading(dir)?;
        let config_path = dir.join(CONFIG);
        // A removed config.json: the state keeps the same settings (and the class names).
        let kept = match config_removed(dir) {
            true => crate::state::saved_settings(dir),
            false => None,
        };
        if kept.is_some() {
            crate::warn!(
                "{} is missing: the run's settings come from its {} (`--resume` writes {CONFIG} \
                 again)",
                config_path.display(),
                crate::rundir::STATE
            );
        }
        let (kept_config, kept_classes) = kept.unzip();
        let text = match kept_config.as_ref().map(serde_json::to_vec).transpose()? {
            Some(text) => text,
            None => match layers::file::read(&config_path) {
                Ok(text) => text,
                Err(_) if crate::rundir::in_use(dir) => bail!(
                "--run {}: a run is starting there (it holds {}) and has not written its {CONFIG} \
                 yet; it can be read once it has saved its first epoch",
                dir.display(),
                dir.join(crate::rundir::LOCK).display()
            ),
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "--run {}: no readable {CONFIG} (is it a run directory?)",
                            dir.display()
                        )
                    })
                }
            },
        };
        // Where the settings come from, for the errors below.
        let source = match kept_config {
            Some(_) => dir.join(crate::rundir::STATE),
            None => config_path.clone(),
        };
        let config: RunConfig = serde_json::from_slice(&text).with_context(|| {
            // A damaged config.json beside a state that keeps the settings: the way to them.
            let state_keeps = kept_config.is_none() && crate::state::saved_settings(dir).is_some();
            format!(
                "{} is not a run configuration{}",
                source.display(),
                match state_keeps {
                    true => format!(
                        ": put the run's {CONFIG} back, or remove it, and the settings its {} \
                         keeps are read (`--resume` writes {CONFIG} again from them)",
                        crate::rundir::STATE
                    ),
                    false => String::new(),
                }
            )
        })?;
        // Settings a run refuses on its command line cannot come from a run (edited, then).
        config.validate().with_context(|| {
            format!(
                "{}: a setting no run saves (the file was edited?)",
                source.display()
            )
        })?;
        // config.json and classes.json copy what the state keeps, as `--resume` checks them: an
        // edited copy (another --label-smoothing, --precision or class order) would be scored
        // and named as the run.
        let saved = match kept_config {
            Some(_) => None,
            None => crate::state::saved_settings(dir),
        };
        if let Some((saved, _)) = &saved {
            let differ = crate::state::settings_differing(&config, saved);
            if !differ.is_empty() {
                bail!(
                    "--run {}: {CONFIG} and {} disagree ({}): {CONFIG} was edited or comes from \
                     another run; the run's settings are those of its state, which {CONFIG} only \
                     copies: put the run's own {CONFIG} back, or remove it and they are read \
                     from the state",
                    dir.display(),
                    crate::rundir::STATE,
                    differ.join("; ")
                );
            }
        }
        let unreadable = || {
            format!(
                "--run {}: no readable {CLASSES} with the class names",
                dir.display()
            )
        };
        let classes: Vec<String> = match layers::file::read(&dir.join(CLASSES)) {
            Ok(text) => serde_json::from_slice(&text).with_context(|| {
                format!(
                    "{} is not a JSON list of class names",
                    dir.join(CLASSES).display()
                )
            })?,
            // Removed: the state keeps them (states saved before it kept them have none), or a
            // data set with built-in class names (runs saved before classes.json was written).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let kept = kept_classes
                    .flatten()
                    .or_else(|| crate::state::saved_settings(dir).and_then(|(_, c)| c));
                let builtin = config.dataset.spec().classes;
                match kept {
                    Some(classes) => classes,
                    None if !builtin.is_empty() => builtin.iter().map(|c| c.to_string()).collect(),
                    None => return Err(e).with_context(unreadable),
                }
            }
            Err(e) => return Err(e).with_context(unreadable),
        };
        if let Some(kept) = saved.and_then(|(_, classes)| classes) {
            if kept != classes {
                let k = (0..kept.len().max(classes.len()))
                    .find(|&k| kept.get(k) != classes.get(k))
                    .unwrap_or(0);
                let name = |c: Option<&String>| c.map_or("none".to_string(), |c| format!("{c:?}"));
                bail!(
                    "--run {}: {CLASSES} and {} disagree (label {k}: {} in {CLASSES}, {} in the \
                     state; {} and {} classes): {CLASSES} was edited or comes from another run; \
                     put the run's own {CLASSES} back, or remove it and they are read from the \
                     state",
                    dir.display(),
                    crate::rundir::STATE,
                    name(classes.get(k)),
                    name(kept.get(k)),
                    classes.len(),
                    kept.len()
                );
            }
        }
        let (path, tag) = match weights {
            "best" => (dir.join(BEST), "best".to_string()),
            "last" => (dir.join(LAST), "last".to_string()),
            file => {
                let path = weights_file(dir, file)?;
                let tag = checkpoint_tag(dir, &path);
                (path, tag)
            }
        };
        if let Some(epochs) = crate::state::epochs_of_state_file(&path) {
            let run = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(dir);
            let what = "a run's resume state (the weights of epoch";
            if run.join(LAST).is_file() {
                bail!(
                    "--weights {}: {what} {epochs} with the optimizer's buffers and the run's \
                     progress), not a checkpoint: take --weights {}, the checkpoint of the \
                     run's last saved epoch (should a kill have left it behind the state, \
                     reading it says so, and `{} --resume {}` writes it again)",
                    path.display(),
                    run.join(LAST).display(),
                    config.program,
                    run.display()
                );
            }
            bail!(
                "--weights {}: {what} {epochs} with the optimizer's buffers and the run's \
                 progress), not a checkpoint: `{} --resume {}` writes {LAST} again from it (a \
                 finished run trains no more), then take --weights last",
                path.display(),
                config.program,
                run.display()
            );
        }
        if matches!(weights, "best" | "last") && std::fs::symlink_metadata(&path).is_err() {
            let name = path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let other = if weights == "best" { "last" } else { "best" };
            let state_there = dir.join(crate::rundir::STATE).exists();
            // A data-parallel evaluation's rank 0 did it before the ranks met (`evaluate_here`).
            if crate::distributed::rank().is_none() {
                restore_checkpoints(dir, weights);
            }
            let other_there = dir
                .join(if weights == "best" { LAST } else { BEST })
                .exists();
            match state_there {
                _ if path.exists() => {}
                true if other_there => bail!(
                    "--run {}: there is no {name}, though the run saved epochs (its {} is \
                     there): {name} was removed; take --weights {other}, or a checkpoint file",
                    dir.display(),
                    crate::rundir::STATE
                ),
                true if crate::rundir::in_use(dir) => bail!(
                    "--run {}: neither {BEST} nor {LAST} is there, though the run saved epochs \
                     (its {} is there), and another process still held the directory after a \
                     wait of {} s (it holds {}): a `--resume` writes {LAST} from the state once \
                     its data is loaded; run again then",
                    dir.display(),
                    crate::rundir::STATE,
                    crate::run::READER_WAIT.as_secs(),
                    dir.join(crate::rundir::LOCK).display()
                ),
                true => bail!(
                    "--run {}: neither {BEST} nor {LAST} is there, though the run saved epochs \
                     (its {} is there): the run was stopped after saving an epoch's state and \
                     before writing its checkpoints, or they were removed; `{} --resume {}` \
                     writes {LAST} from the state (a finished run trains no more), or give a \
                     checkpoint file",
                    dir.display(),
                    crate::rundir::STATE,
                    config.program,
                    dir.display()
                ),
                false => bail!(
                    "--run {}: there is no {name}: the run has not saved an epoch (yet)",
                    dir.display()
                ),
            }
        }
        // Frozen: evaluate's test batches build no autograd graph.
        let (model, store) = zoo::load_frozen(
            &config.model,
            classes.len(),
            Some(&path),
            device,
            config.seed,
        )
        .map_err(|e| {
            // A head of another size: the class count came from classes.json, which may be the
            // one at fault.
            let head_differs =
                head_rows(&config.model, &path).is_some_and(|(rows, _)| rows != classes.len());
            match head_differs && dir.join(CLASSES).is_file() {
                true => e.context(format!(
                    "loading {} for the {} classes that {} lists",
                    path.display(),
                    classes.len(),
                    dir.join(CLASSES).display()
                )),
                false => e,
            }
        })?;
        if let Some(note) = behind_the_state(dir, (weights, &path), &store, &config.program) {
            crate::warn!("{note}");
        }
        if let Some(note) = another_runs_settings(dir, &path, &config, &classes) {
            crate::warn!("{note}");
        }
        Ok(Self {
            config,
            classes,
            model,
            store,
            weights: path,
            tag,
        })
    }
}

/// The rows (classes) of the classifier's weight of zoo model `model` in the checkpoint
/// `weights`, with that tensor's name: for the errors of a checkpoint that does not load, to
/// tell a head of another number of classes from other mismatches. `None` when the model is
/// unknown, or the file cannot be read or has no such tensor.
fn head_rows(model: &str, weights: &Path) -> Option<(usize, String)> {
    let head = format!("{}.weight", zoo::spec(model).ok()?.classifier);
    let tensors = layers::checkpoint::read(weights).ok()?;
    Some((tensors.get(&head)?.dims().first().copied()?, head))
}

/// For a checkpoint file `path` of another run than the one in `dir` (whose `config` and
/// `classes` it is read with): a note naming what that run set otherwise, where it changes
/// the answer: the model, the test transform (the image size a fine-tuning ran at, say), the
/// class names or their order. `None` when it is this run's file, in no run's folder, or
/// read the same; said by the writing process of a data-parallel job only.
fn another_runs_settings(
    dir: &Path,
    path: &Path,
    config: &RunConfig,
    classes: &[String],
) -> Option<String> {
    if !crate::distributed::writes() {
        return None;
    }
    let (home, theirs) = run_beside(path).filter(|(home, _)| !same_dir(home, dir))?;
    let mut differs = Vec::new();
    if theirs.model != config.model {
        differs.push(format!("--model {} (here {})", theirs.model, config.model));
    }
    // As transforms, not as text: `imagenet-eval` is `imagenet-eval:224`.
    let transform = |text: &str| Transform::parse(text).ok();
    if theirs.test_transform != config.test_transform
        && transform(&theirs.test_transform) != transform(&config.test_transform)
    {
        differs.push(format!(
            "--test-transform {} (here {})",
            theirs.test_transform, config.test_transform
        ));
    }
    if classes_beside(path, classes.len()).is_some_and(|own| own != classes) {
        differs.push("other class names or another order of them".into());
    }
    if differs.is_empty() {
        return None;
    }
    Some(format!(
        "note: --weights {}: a checkpoint of the run in {}, which had {}; read with --run {}'s \
         settings, so the figures may not be that checkpoint's (give --run {} to read it as its \
         run)",
        path.display(),
        home.display(),
        differs.join(", "),
        dir.display(),
        home.display()
    ))
}

/// The output-name tag of the checkpoint file `path` evaluated with the run in `dir`: its stem,
/// with its folder's name before it when it lies outside `dir` (another run's
/// `best.safetensors` is `<that run>-best`), so that its outputs do not take the run's own.
/// A file of the run's own folder whose stem reads like a tag of the run's checkpoints
/// (`best-bf16.safetensors` beside `best.safetensors`, whose bf16 evaluation is `best-bf16`)
/// takes its folder's name before it too.
fn checkpoint_tag(dir: &Path, path: &Path) -> String {
    let stem = path
        .file_stem()
        .map_or("weights".into(), |s| s.to_string_lossy().into_owned());
    let parent = path.parent().map(|p| match p.as_os_str().is_empty() {
        true => Path::new("."),
        false => p,
    });
    // Inside the run's folder, a stem that reads like a tag of the run's checkpoints.
    let like_a_tag = stem != "best"
        && stem != "last"
        && crate::rundir::evaluated_checkpoint(&format!("evaluation-{stem}.json")).is_some();
    match (
        parent.and_then(|p| p.canonicalize().ok()),
        dir.canonicalize(),
    ) {
        (Some(folder), Ok(run)) if folder != run || like_a_tag => {
            let name = folder
                .file_name()
                .map_or("file".into(), |n| n.to_string_lossy().into_owned());
            let tag = format!("{name}-{stem}");
            // A folder named like a checkpoint (`best/bf16.safetensors`): not the run's names.
            match crate::rundir::evaluated_checkpoint(&format!("evaluation-{tag}.json")) {
                Some(_) => format!("file-{tag}"),
                None => tag,
            }
        }
        _ => stem,
    }
}

/// `tag`, or the first of `tag-2`, `tag-3`... whose evaluation in `out` is not another file's:
/// names made of a folder and a file name can meet (`a/b-c.safetensors` and
/// `a-b/c.safetensors` are both `a-b-c`; two runs' `best` evaluated into one `--out`), and one
/// checkpoint's figures must not replace another's. An evaluation there is `file`'s when it
/// names it (its `weights_file`; for one written before that was kept, its `weights` as seen
/// from here); one that cannot be read or tell is taken as another file's. With `data` (a
/// checkpoint outside any run, `--model`, whose names do not say the data), an evaluation of
/// the same file on other test data (its `data_dir`, `None` for the Hub's copy) is taken as
/// another's too. Without `file_too` (the run's own checkpoint beside the outputs: whichever
/// path it had when evaluated, it is this one), the data alone tells.
fn unclaimed_tag(
    out: &Path,
    tag: String,
    (file, file_too): (Option<&Path>, bool),
    data: Option<Option<&Path>>,
) -> String {
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let claimed_by_another = |tag: &str| {
        let path = out.join(evaluation_summary(tag));
        if std::fs::symlink_metadata(&path).is_err() {
            return false;
        }
        let json = layers::file::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        let at = |key: &str| json.as_ref()?.get(key)?.as_str().map(PathBuf::from);
        let other_file = match (file_too, file) {
            (false, _) => json.is_none(),
            (true, None) => true,
            (true, Some(file)) => {
                let named = at("weights_file")
                    .or_else(|| at("weights"))
                    .and_then(|named| std::fs::canonicalize(named).ok());
                named.as_deref() != Some(file)
            }
        };
        // The data's absolute path as written (`data_dir_file`), else as given, from here.
        let written = || at("data_dir_file").or_else(|| at("data_dir").map(|d| real(&d)));
        let other_data = data.is_some_and(|data| written() != data.map(real));
        other_file || other_data
    };
    let mut n = 1;
    loop {
        let candidate = match n {
            1 => tag.clone(),
            n => format!("{tag}-{n}"),
        };
        if !claimed_by_another(&candidate) {
            if n > 1 {
                crate::say!(
                    "{} holds the evaluation of another checkpoint file{}: this one's outputs \
                     are named {candidate}",
                    out.join(evaluation_summary(&tag)).display(),
                    match data {
                        Some(_) => ", or of this one on other test data",
                        None => "",
                    }
                );
            }
            return candidate;
        }
        n += 1;
    }
}

/// `evaluate`'s flags.
// The fields' doc comments are `--help`'s text (`<weights>`, `[-test<N>]`), not Markdown.
#[allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]
#[derive(clap::Args, Debug, Clone)]
pub struct EvaluateArgs {
    /// The run directory (what --out was) [default: the folder of --weights FILE, when it
    /// holds a run]
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// The checkpoint: best, last, or a .safetensors file
    #[arg(long, default_value = "best", value_parser = crate::flags::Utf8Text)]
    pub weights: String,
    /// The zoo model a --weights file outside any run holds (a PyTorch-trained resnet18-seed,
    /// say): scored on this program's data set's test split with a fresh run's test transform,
    /// test batch size and class names (finetune-resnet50's image folder --data-dir: its test/
    /// or val/ split, else all its images, labelled by class folder in name order as
    /// torchvision's ImageFolder does); outputs beside the file (or in --out), named for it
    /// (evaluation-<stem>[-<precision>][-test<N>].json; -2, -3... for other test data)
    #[arg(long, conflicts_with = "run")]
    pub model: Option<String>,
    /// Directory holding the data set [default: the run's; with --model, the program's default]
    /// (other data than the run's adds -data-<its name> to the outputs' names, -2, -3... after
    /// it for another folder of the same name; another image folder than the run's is scored
    /// on all its images but the files the run trained on)
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where confusion-<weights>.png and evaluation-<weights>.json go (<weights>-<precision>
    /// with a --precision other than the run's) [default: the run directory; with --model, the
    /// folder of the --weights file]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, tf32 or bf16 (autocast) [default: the run's --precision; f32 with --model]
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Test on N test images (the seeded subset keeping each class's share that training's
    /// --limit-test N draws), or on all of them [default: the run's --limit-test; all with
    /// --model]
    #[arg(long, value_name = "N|all", value_parser = parse_test_limit)]
    pub limit_test: Option<TestLimit>,
    /// Test images per batch; the accuracies do not depend on it (eval mode), the loss (summed in
    /// float32 batch by batch) only in its last digits [default: the run's --test-batch-size;
    /// the program's with --model]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=crate::config::MAX_COUNT as u64))]
    pub test_batch_size: Option<u64>,
    /// off, auto or on: under an MPI launcher (mpirun -n N), each process tests a contiguous
    /// share of each global batch, nothing repeated (unlike DistributedSampler's padding), and
    /// the sums are reduced; rank 0 prints and writes; --test-batch-size is then per rank
    /// [default: auto]
    #[arg(long, value_enum)]
    pub distributed: Option<crate::distributed::Mode>,
    /// Seconds a rank waits in one collective for the others before it ends the whole job
    /// (as training's --collective-timeout) [default: 1800]
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub collective_timeout: Option<u64>,
}

/// The name that `evaluate --data-dir DIR` adds to its outputs' names (`-data-<name>`) when
/// `DIR` is other data than the run's: the run's own data directory is still there and is
/// another, or the run read the Hub's copy. So the evaluation of the run's own data stays.
/// `None` when `DIR` is the run's data directory, or when that is gone (`DIR` is then taken as
/// where the data is now). The name is `DIR`'s own, its characters other than letters,
/// digits, `.`, `_` and `-` written `_`.
fn other_data(given: Option<&Path>, saved: Option<&Path>) -> Option<String> {
    let given = given?;
    let real = |p: &Path| std::fs::canonicalize(p).or_else(|_| std::path::absolute(p));
    let given = real(given).unwrap_or_else(|_| given.to_path_buf());
    if let Some(saved) = saved {
        if !saved.exists() || real(saved).is_ok_and(|saved| saved == given) {
            return None;
        }
    }
    let name: String = given
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() || "._-".contains(c) {
            true => c,
            false => '_',
        })
        .collect();
    Some(match name.is_empty() {
        true => "data".into(),
        false => name,
    })
}

/// How a test split differs from the one the run tested on ([`test_split_change`]).
struct SplitChange {
    /// Said after "its test split ...".
    text: String,
    /// Whether an image folder's held-out share would be drawn again (images added, removed
    /// or renamed), not the same files changed.
    drawn_again: bool,
}

/// How `as_run`, the run's share of a test split drawn as the run drew it, differs from the
/// test split the run tested on (`record`, from its state; each part compared where recorded):
/// `None` when it does not (or cannot be told to). The same images (their contents' sum, where
/// recorded) under the same labels are the run's test whatever their names (an archive
/// unpacked). `root`: the data directory the names are below.
///
/// # Errors
/// A test file cannot be read for its fingerprint (named).
fn test_split_change(
    record: &crate::state::TestRecord,
    as_run: &dyn datasets::Dataset,
    root: Option<&Path>,
) -> Result<Option<SplitChange>> {
    let n = as_run.len();
    let change = |text: String, drawn_again: bool| Ok(Some(SplitChange { text, drawn_again }));
    if let Some(tested) = record.images.filter(|&t| t != n) {
        return change(
            format!("now has {n} images, the run tested on {tested}"),
            true,
        );
    }
    let labels_differ = record
        .labels
        .is_some_and(|saved| saved != crate::state::labels_crc(as_run));
    let contents = match record.contents {
        Some(_) => crate::state::contents_crc(as_run)?,
        None => None,
    };
    if !labels_differ && contents.is_some() && contents == record.contents {
        return Ok(None);
    }
    let names = crate::state::names_crc_like(record.names, as_run, root);
    if record.names.is_some_and(|saved| saved != names) {
        return change(
            format!("has as many images as the run tested on ({n}), but other files"),
            true,
        );
    }
    if labels_differ {
        return change(
            format!("has as many images as the run tested on ({n}), but other labels"),
            false,
        );
    }
    if contents.is_some() && contents != record.contents {
        let text = match record.names.is_some_and(|n| n != 0) {
            true => format!(
                "has as many images as the run tested on ({n}), with the same names and labels, \
                 but other contents"
            ),
            false => format!(
                "has as many images as the run tested on ({n}), with the same labels, but other \
                 images"
            ),
        };
        return change(text, false);
    }
    Ok(None)
}

/// Whether the run's own data directory (its `--data-dir`) is gone.
fn saved_dir_gone(trained: &Trained) -> bool {
    trained
        .config
        .data_dir
        .as_deref()
        .is_some_and(|d| !d.exists())
}

/// The first few of `names` (three, printable: [`printable`]), and how many more.
fn examples(names: &[String]) -> String {
    let shown: Vec<String> = names.iter().take(3).map(|n| printable(n)).collect();
    match names.len() > shown.len() {
        true => format!(
            "{} and {} more",
            shown.join(", "),
            names.len() - shown.len()
        ),
        false => shown.join(", "),
    }
}

/// What the note says of the images `left_out` as files the run trained on (nothing for
/// none): `; N of them are files the run trained on (...), left out: a, b, c and K more`.
fn trained_left_out(left_out: &[String]) -> String {
    match left_out.len() {
        0 => String::new(),
        1 => format!(
            "; 1 of them is a file the run trained on (the same bytes as one of its training \
             images), left out: {}",
            examples(left_out)
        ),
        n => format!(
            "; {n} of them are files the run trained on (the same bytes as its training \
             images), left out: {}",
            examples(left_out)
        ),
    }
}

/// Whether `given`, an image folder `evaluate --data-dir` names for a run that trained on one
/// (`trained`), is another than the run's: neither its folder (by path) nor a copy or move of
/// it, whose held-out share holds the images the run tested on under the same names (a copy
/// scored whole would be scored on the images the run trained on). For a state that recorded
/// no names, any folder at another path than the run's, where that is still there.
fn another_folder(given: &Path, run: &Path, trained: &RunConfig) -> bool {
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let saved = trained.data_dir.as_deref().filter(|d| d.exists());
    if saved.is_some_and(|saved| real(saved) == real(given)) {
        return false;
    }
    let Some(names) = crate::state::saved_test_names(run).filter(|&n| n != 0) else {
        return saved.is_some();
    };
    // The share the run would hold out of it, with the run's `--limit-test` drawn here, not
    // through `load_test_data`'s, whose notes on the subset are not about what is scored.
    let mut as_run = trained.clone();
    as_run.data_dir = Some(given.to_path_buf());
    as_run.limit_test = None;
    let Ok((held_out, _)) = crate::cli::load_test_data(&as_run, true) else {
        // No share of it can be held out as the run's was (too few images): not the run's.
        return true;
    };
    let held_out = match trained.limit_test.filter(|&n| n < held_out.len()) {
        Some(n) => {
            let indices = datasets::stratified_indices(held_out.as_ref(), n, trained.seed);
            match datasets::Subset::new(held_out, indices) {
                Ok(subset) => std::sync::Arc::new(subset) as std::sync::Arc<dyn datasets::Dataset>,
                Err(_) => return true,
            }
        }
        None => held_out,
    };
    if crate::state::names_crc_like(Some(names), held_out.as_ref(), Some(given)) == names {
        return false;
    }
    // Other names, but the run's images under its labels (its archive unpacked, its files
    // renamed in order): the run's data, where the state records their contents.
    let record = crate::state::saved_test_record(run);
    let same_images = record.is_some_and(|r| {
        r.contents.is_some()
            && r.labels == Some(crate::state::labels_crc(held_out.as_ref()))
            && crate::state::contents_crc(held_out.as_ref()).ok().flatten() == r.contents
    });
    !same_images
}

/// `evaluate --limit-test`: `all` test images, or a subset of `N` (`TestLimit(Some(N))`), as
/// the training programs' `--limit-test N` draws it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestLimit(pub Option<usize>);

/// Parses `all` or a positive count.
fn parse_test_limit(text: &str) -> Result<TestLimit, String> {
    if text == "all" {
        return Ok(TestLimit(None));
    }
    match text.parse::<usize>() {
        Ok(0) => Err("0 test images would test nothing: give 1 or more, or all".into()),
        Ok(n) => Ok(TestLimit(Some(n))),
        Err(_) => Err(format!(
            "{text:?} is not a count of images: give a whole number of 1 or more, or all"
        )),
    }
}

/// `--weights FILE` as given (relative to the current directory, as PyTorch's `torch.load`
/// reads it). A relative path that names no file there but one in the run directory `run`
/// (`--weights best.safetensors` for the run's best) is refused, naming both ways to give it.
///
/// # Errors
/// As said.
fn weights_file(run: &Path, file: &str) -> Result<PathBuf> {
    let path = PathBuf::from(file);
    let beside = run.join(&path);
    if path.is_relative() && std::fs::symlink_metadata(&path).is_err() && beside.is_file() {
        let short = match file {
            BEST => " (or --weights best)",
            LAST => " (or --weights last)",
            _ => "",
        };
        bail!(
            "--weights {file}: no such file in the current directory (the path is read from \
             there, not from the run's folder); the run's is {}: give --weights {}{short}",
            beside.display(),
            beside.display()
        );
    }
    Ok(path)
}

/// What `evaluate` measured (also written as `evaluation-<weights>.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// The zoo model the checkpoint was read as (the run's, or `--model`'s).
    pub model: String,
    /// The checkpoint, as given (relative to the directory `evaluate` ran in, or absolute).
    #[serde(serialize_with = "path_text")]
    pub weights: PathBuf,
    /// The checkpoint's absolute path (links resolved): which file these figures are of, so
    /// that another file's evaluation never replaces them.
    #[serde(serialize_with = "optional_path_text")]
    pub weights_file: Option<PathBuf>,
    /// The run's checkpoint evaluated (`best` or `last`) when the outputs lie beside it in its
    /// run directory, else `null`: the run removes them when it replaces that checkpoint, from
    /// wherever either ran.
    pub checkpoint: Option<String>,
    /// The precision the test pass ran in (the run's unless `--precision` said otherwise).
    pub precision: Precision,
    /// Where the test images were read (`--data-dir`, else the run's); `None`: the Hugging
    /// Face Hub's copy.
    #[serde(serialize_with = "optional_path_text")]
    pub data_dir: Option<PathBuf>,
    /// `data_dir`'s absolute path (links resolved): which folder these figures are of, so that
    /// another folder of the same name never replaces them.
    #[serde(serialize_with = "optional_path_text")]
    pub data_dir_file: Option<PathBuf>,
    /// Test images.
    pub samples: usize,
    /// Mean test loss, with the run's training criterion: cross-entropy with the run's label
    /// smoothing (`label_smoothing`; 0 for a checkpoint evaluated without its run).
    pub loss: f64,
    /// The label smoothing of `loss` (`F.cross_entropy(..., label_smoothing=...)`).
    pub label_smoothing: f64,
    /// Top-1 accuracy, percent.
    pub top1: f64,
    /// Top-5 accuracy, percent.
    pub top5: f64,
    /// Each class's accuracy in percent (`None`: no test image of that class).
    pub per_class: Vec<(String, Option<f64>)>,
    /// Images of other data than the run's test split (`--data-dir`) left out as files the run
    /// trained on (the same bytes as its training images), by name; not written when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out_as_trained: Vec<String>,
}

/// What tells one version of a file from the next (device, inode, size, modification time):
/// a checkpoint is replaced by renaming a new file over it. `None` when it cannot be read.
fn file_stamp(path: &Path) -> Option<(u64, u64, u64, Option<std::time::SystemTime>)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino(), meta.len(), meta.modified().ok()))
}

/// A path as JSON text; one that is not UTF-8 with U+FFFD for what is not (the report is
/// written, not refused).
fn path_text<S: serde::Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&path.to_string_lossy())
}

/// [`path_text`] of an optional path (`null` for none).
fn optional_path_text<S: serde::Serializer>(
    path: &Option<PathBuf>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match path {
        Some(path) => path_text(path, serializer),
        None => serializer.serialize_none(),
    }
}

/// Evaluates a run's checkpoint on the test split its configuration names (the same transform
/// and limit, read without the training files where the layout allows:
/// [`crate::cli::load_test_data`]), prints loss, top-1, top-5 and per-class accuracy, and
/// writes the confusion matrix and a JSON summary. Without `--run`, the run whose folder holds
/// the `--weights` file; with `--model NAME`, a checkpoint outside any run, scored on the test
/// split of `recipe`'s data set as a fresh run of `NAME` would test.
///
/// Under an MPI launcher (with the `mpi` feature; `--distributed`), rank 0 first puts back a
/// run an interrupted `--overwrite` left half replaced and writes the checkpoints of a run
/// stopped before them from its state, then each rank tests its share of the
/// test images ([`crate::distributed::evaluate`]) after the ranks agree on the
/// checkpoint, the test images and the settings; every rank returns the whole test set's
/// evaluation, rank 0 alone prints it and writes the outputs.
///
/// Errors: those of [`Trained::open`], of loading the data, of writing the outputs, and of
/// [`crate::distributed::launch_job`]; ranks that differ in what they would evaluate.
pub fn evaluate(args: &EvaluateArgs, recipe: &Recipe) -> Result<Evaluation> {
    let job = crate::distributed::DistributedArgs {
        distributed: args.distributed,
        collective_timeout: args.collective_timeout,
        ..Default::default()
    };
    crate::distributed::launch_job(crate::distributed::Job::Evaluation, &job, || {
        evaluate_here(args, recipe)
    })
}

/// When the run in `dir` was stopped between saving an epoch's state and writing its
/// checkpoints (neither is there, the state is), or a process writing them from the state was
/// stopped between the two: writes them from the state as `--resume` would first (said on
/// stderr), so that `weights` (`best` or `last`) can be read; a process holding
/// the directory is waited for ([`crate::run::checkpoints_for_reading`]). Nothing otherwise,
/// nor for a checkpoint file given by its path, nor on a data-parallel rank other than 0; a
/// failure leaves the error to the reader, which names the way out.
fn restore_checkpoints(dir: &Path, weights: &str) {
    // A link to nothing counts as there: it is the user's, never written over.
    let absent = |name: &str| std::fs::symlink_metadata(dir.join(name)).is_err();
    // `best` alone missing: a process killed between writing `last` and `best` from the state,
    // where the state's last epoch was the best (an earlier best's file was removed since,
    // said by the reader); not while another process holds the run, which writes them itself.
    let missing = match absent(BEST) {
        true if absent(LAST) => true,
        true => {
            !crate::rundir::in_use(dir)
                && crate::state::saved_epochs(dir).is_some_and(|(done, best)| best == done)
        }
        false => false,
    };
    if matches!(weights, "best" | "last") && missing && dir.join(crate::rundir::STATE).exists() {
        let _ = crate::run::checkpoints_for_reading(dir);
    }
}

/// Whether files can be made in `dir`, where `evaluate` writes its outputs: a file made there
/// and removed at once. Errors name the folder as it was given: `--out DIR` when `defaulted`
/// is `None`, else what it says (`--run DIR`, the folder of the `--weights` file), with
/// `--out` as the way out.
fn check_writable(dir: &Path, defaulted: Option<String>) -> Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let probe = dir.join(format!(
        ".evaluate-write-check.{}.{nanos}",
        std::process::id()
    ));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(file) => {
            drop(file);
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => {
            let said = match defaulted {
                Some(folder) => format!(
                    "{folder}: cannot write there (evaluate writes its confusion matrix and \
                     figures there unless told otherwise): give --out DIR for them"
                ),
                None => format!("--out {}: cannot write there", dir.display()),
            };
            Err(anyhow::Error::new(e).context(said))
        }
    }
}

/// Whether `a` and `b` are the same existing directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    std::fs::canonicalize(a).is_ok_and(|a| std::fs::canonicalize(b).is_ok_and(|b| a == b))
}

/// `--out` is a directory (or not there yet) and, unless it is `run`, holds no run, whose
/// evaluation files the outputs would replace. `run` is `None` for a checkpoint outside any run
/// (`--model`).
fn check_out(out: Option<&Path>, run: Option<&Path>) -> Result<()> {
    let Some(out) = out else {
        return Ok(());
    };
    if std::fs::symlink_metadata(out).is_ok() && !out.is_dir() {
        bail!(
            "--out {}: {}, not a directory (--out names the folder the outputs go into)",
            out.display(),
            match out.exists() {
                true => "a file",
                false => "a link to nothing",
            }
        );
    }
    if !run.is_some_and(|run| same_dir(out, run)) && crate::rundir::holds_run(out) {
        bail!(
            "--out {}: it holds {} run, whose evaluation files this would replace: give a folder \
             of no run{}",
            out.display(),
            match run {
                Some(_) => "another",
                None => "a",
            },
            match run {
                Some(run) => format!(", or leave --out out to write into --run {}", run.display()),
                None => String::new(),
            }
        );
    }
    Ok(())
}

/// [`evaluate`] in this process (one rank of a sharded evaluation, or alone).
fn evaluate_here(args: &EvaluateArgs, recipe: &Recipe) -> Result<Evaluation> {
    // Without --run: --model's checkpoint outside any run, or the run whose folder holds the
    // --weights file.
    let run = match (&args.run, &args.model) {
        (Some(run), _) => run.clone(),
        (None, Some(model)) => return evaluate_with_model(args, recipe, model),
        (None, None) => match found_run(&args.weights) {
            Some(dir) => dir,
            None => bail!(
                "evaluate needs --run DIR (a training run: what --out was){}",
                match args.weights.as_str() {
                    "best" | "last" => String::new(),
                    file => format!(
                        "; --weights {file} lies in no run's folder (no readable {CONFIG} beside \
                         it), so its model and data are unknown: give --model NAME, the zoo model \
                         it holds, to score it on {}'s test split",
                        recipe.dataset.spec().title
                    ),
                }
            ),
        },
    };
    let run = run.as_path();
    check_out(args.out.as_deref(), Some(run))?;
    let device = parse_device(&crate::distributed::device_spec(&args.device))?;
    // The checkpoint as it is before it is read: a run training meanwhile may replace it.
    let weights_file = match args.weights.as_str() {
        "best" => run.join(BEST),
        "last" => run.join(LAST),
        file => weights_file(run, file)?,
    };
    // An interrupted --overwrite's old run put back first: that is no replacement while read.
    // Rank 0 alone, then the others: two ranks would race to put the same run back.
    if crate::distributed::writes() {
        crate::rundir::settle_for_reading(run)?;
    }
    crate::distributed::barrier();
    if crate::distributed::writes() {
        // The outputs' folder must take files before the test pass, not after it.
        let out = args.out.as_deref().unwrap_or(run);
        if out.is_dir() {
            let defaulted = args.out.is_none();
            check_writable(out, defaulted.then(|| format!("--run {}", run.display())))?;
        }
        // Before the checkpoint's stamp: one written from the state now is no replacement.
        restore_checkpoints(run, &args.weights);
    }
    // The other ranks read the checkpoints rank 0 may have written.
    crate::distributed::barrier();
    let before = file_stamp(&weights_file);
    let trained = Trained::open(run, &args.weights, &device)?;
    // Another program's run (`train-cifar evaluate` of a train-mnist run): scored as its own
    // program would, on its own data, and said so.
    if trained.config.program != recipe.program && crate::distributed::writes() {
        crate::warn!(
            "note: --run {}: a run of {} ({} on {}), scored as it was set up, as `{} evaluate` \
             would",
            run.display(),
            trained.config.program,
            trained.config.model,
            trained.config.dataset.spec().title,
            trained.config.program
        );
    }
    // The run's precision (bf16 autocast, TF32), as its test passes ran, unless told otherwise.
    let precision = args.precision.unwrap_or(trained.config.precision);
    let _precision = precision.enter();
    let mut config = trained.config.clone();
    if let Some(TestLimit(limit)) = args.limit_test {
        config.limit_test = limit;
    }
    if let Some(n) = args.test_batch_size {
        config.test_batch_size = usize::try_from(n).unwrap_or(usize::MAX);
    }

    match &args.data_dir {
        Some(dir) => config.data_dir = Some(dir.clone()),
        None => crate::cli::saved_data_dir_is_here(&config)?,
    }
    // An image folder other than the one the run trained on (and held its test share out of):
    // every image of it is scored, as torchvision's `ImageFolder(dir)` would give them all,
    // under its own `--limit-test` only.
    let saved_dir = trained.config.data_dir.as_deref();
    let other_folder = match (&args.data_dir, config.dataset) {
        (Some(given), crate::config::DatasetKind::Folder) => {
            another_folder(given, run, &trained.config)
        }
        _ => false,
    };
    if other_folder && args.limit_test.is_none() {
        config.limit_test = None;
    }
    // The training images' fingerprints, by which images the run trained on are left out of any
    // test set that is not the run's own; why there are none (`Err`), for the notes: a state
    // that cannot tell does not stop the evaluation, which needs the checkpoint alone.
    let trained_on = match crate::state::saved_trained_on(run) {
        Ok(Some(sums)) => Ok(sums),
        Ok(None) if !run.join(crate::rundir::STATE).exists() => {
            Err(format!("the run's {} is not there", crate::rundir::STATE))
        }
        Ok(None) if trained.config.dataset == crate::config::DatasetKind::Folder => Err(format!(
            "the run's {} keeps no fingerprints of its training images (it predates them)",
            crate::rundir::STATE
        )),
        Ok(None) => Err(format!(
            "the run's {} keeps no fingerprints of its training images (they are kept for \
             images read from files of their own, an image folder's, not for MNIST's IDX or \
             CIFAR-10's batch files, which hold many each)",
            crate::rundir::STATE
        )),
        Err(e) => Err(format!("its fingerprints cannot be read ({e:#})")),
    };
    // The whole test split, before any --limit-test: another folder's every image, else the
    // split the run holds out (or its test files).
    let mut whole_config = config.clone();
    whole_config.limit_test = None;
    let split = crate::cli::load_test_data(&whole_config, !other_folder);
    let (split, whole) = match (&args.data_dir, &config.data_dir) {
        // The run's own data directory, gone: say where it was and how to give it.
        (None, Some(saved)) if !saved.exists() => split.with_context(|| {
            format!(
                "the run's data, --data-dir {} (from its {CONFIG}), is not there: give \
                 --data-dir where the data is now",
                saved.display()
            )
        })?,
        _ => split?,
    };
    if split.classes() != trained.classes.as_slice() {
        bail!(
            "the test data's classes {:?} are not the run's {:?}",
            split.classes(),
            trained.classes
        );
    }
    let given = args.data_dir.as_deref().unwrap_or(Path::new(""));
    let mut other_data = other_data(args.data_dir.as_deref(), trained.config.data_dir.as_deref());
    // Is it the run's own test split? The run's --limit-test share drawn from it as the run drew
    // it, against what the state records (its size, and the CRC-32C of its labels, file names
    // and files' contents). A split that has changed since (images added, removed, renamed or
    // changed in place) is not: refused without --data-dir (as --resume refuses it), scored as
    // other data with it.
    let record = crate::state::saved_test_record(run);
    // The run's share of the split, drawn as the run drew it (its indices in the split).
    let as_run: Vec<usize> = match trained.config.limit_test.filter(|&n| n < split.len()) {
        Some(n) => datasets::stratified_indices(split.as_ref(), n, trained.config.seed),
        None => (0..split.len()).collect(),
    };
    let changed = match (other_folder, record) {
        (false, Some(record)) => {
            let share = datasets::Subset::new(split.clone(), as_run.clone())?;
            test_split_change(&record, &share, config.data_dir.as_deref())?
        }
        _ => None,
    };
    let own_path = args.data_dir.is_none() || other_data.is_none() && !saved_dir_gone(&trained);
    // A record that tells the split (its labels, names or contents, not its size alone).
    // (Labels alone tell little of class-sorted data: the classes' counts.)
    let telling = record.is_some_and(|r| r.names.is_some_and(|n| n != 0) || r.contents.is_some());
    // The run's own data, unless changed, or given where the run's folder is gone without a
    // state to confirm it (a folder there could be any).
    let own = !other_folder && changed.is_none() && (telling || own_path);
    if let (Some(what), None) = (&changed, &args.data_dir) {
        bail!(
            "the run's data{} has changed since it trained: its test split {}{}; give \
             --data-dir to evaluate on the data as it is now",
            config
                .data_dir
                .as_ref()
                .map_or(String::new(), |d| format!(" in {}", d.display())),
            what.text,
            match (config.dataset, what.drawn_again) {
                (crate::config::DatasetKind::Folder, true) => {
                    " (an image folder's held-out test images are drawn again from what is \
                     there, and may include images the run trained on)"
                }
                _ => "",
            }
        );
    }
    // Other data is named for itself, so that the run's own evaluation stays.
    if !own && other_data.is_none() {
        other_data = crate::inference::other_data(args.data_dir.as_deref(), None);
    }
    // Images the run trained on are left out of any test set but its own, before --limit-test
    // draws from what is left; of the run's own split under another --limit-test, those
    // beyond the run's share (which the state's record does not cover).
    let (split, left_out) = match (&trained_on, own) {
        (Ok(sums), false) => crate::cli::without_trained(split, sums, &[])?,
        (Ok(sums), true)
            if as_run.len() < split.len() && config.limit_test != trained.config.limit_test =>
        {
            crate::cli::without_trained(split, sums, &as_run)?
        }
        _ => (split, Vec::new()),
    };
    if split.is_empty() && !left_out.is_empty() {
        bail!(
            "--data-dir {}: all {whole} of its test images are files the run trained on (the \
             same bytes as its training images{}), which no test scores",
            given.display(),
            match config.dataset {
                crate::config::DatasetKind::Folder => {
                    ": a part, a copy or an archive of the run's folder"
                }
                _ => "",
            },
        );
    }
    if (!own || !left_out.is_empty()) && crate::distributed::writes() {
        let scored = whole - left_out.len();
        let limited = config.limit_test.is_some_and(|n| n < scored);
        crate::warn!(
            "note: {}{}{}{}{}{}",
            match &args.data_dir {
                Some(dir) => format!("--data-dir {}: ", dir.display()),
                None => String::new(),
            },
            match (other_folder, &changed) {
                (true, _) => format!(
                    "an image folder other than the run's{}: its {whole} test images are all \
                     its class folders hold (those of test/ or val/ beside train/), none held \
                     out",
                    saved_dir.map_or(String::new(), |d| format!(" ({})", d.display())),
                ),
                (false, Some(what)) => format!(
                    "its test split {}{}; these figures are not the run's test",
                    what.text,
                    match as_run.len() != whole {
                        true => format!(
                            " (compared as the run drew its test: {} of its {whole} images)",
                            as_run.len()
                        ),
                        false => String::new(),
                    }
                ),
                (false, None) if own => format!(
                    "all {whole} images of the run's test split, those beyond its --limit-test \
                     share ({}) included",
                    as_run.len()
                ),
                (false, None) => format!(
                    "its {whole} test images are scored as other data than the run's, as \
                     nothing confirms this is the run's test split{}: its {}",
                    match saved_dir_gone(&trained) {
                        true => " moved here (the run's folder is gone)",
                        false => "",
                    },
                    match (record, run.join(crate::rundir::STATE).exists()) {
                        (_, false) => "state is not there",
                        (None, true) => "state's record cannot be read",
                        (Some(_), true) => "state records too little of its test split",
                    }
                ),
            },
            trained_left_out(&left_out),
            match (limited, left_out.is_empty()) {
                (true, true) => format!(
                    "; --limit-test scores {} of them",
                    config.limit_test.unwrap_or(scored)
                ),
                (true, false) => format!(
                    "; --limit-test scores {} of the {scored} not left out",
                    config.limit_test.unwrap_or(scored)
                ),
                (false, _) => match (other_folder, trained.config.limit_test) {
                    (true, Some(n)) if args.limit_test.is_none() && n < scored => {
                        format!("; the run's --limit-test {n} is set aside")
                    }
                    _ => String::new(),
                },
            },
            match other_data.is_some() {
                true => " (the outputs are named for the data)",
                false => "",
            },
            match &trained_on {
                Ok(_) => String::new(),
                Err(why) => format!(
                    "; images the run trained on there{} are scored too, as nothing tells them: \
                     {why}",
                    match config.dataset {
                        crate::config::DatasetKind::Folder => {
                            " (a part, a copy or an archive of the run's folder)"
                        }
                        _ => "",
                    }
                ),
            }
        );
    }
    let test = crate::cli::limited(split, config.limit_test, config.seed, "test")?;
    // Another test set than the run's (`--limit-test`) is said in the outputs' names too; a
    // limit at or above the split's size is the whole split.
    let not_left_out = whole - left_out.len();
    let limit = |limit: Option<usize>| limit.filter(|&n| n < not_left_out);
    let other_limit = limit(config.limit_test) != limit(trained.config.limit_test);
    // In another precision than the run's, the outputs say which (`evaluation-best-f32.json`),
    // so the run-precision ones stay.
    let own_precision = precision == trained.config.precision;
    let mut tag = trained.tag.clone();
    let mut shown = String::new();
    if !own_precision {
        tag = format!("{tag}-{}", precision.flag_text());
        shown = format!(
            " in {} (the run trained in {})",
            precision.flag_text(),
            trained.config.precision.flag_text()
        );
    }
    if other_limit {
        tag = match limit(config.limit_test) {
            Some(n) => format!("{tag}-test{n}"),
            None => format!("{tag}-test-all"),
        };
    }
    let of_other_data = other_data.is_some();
    if let Some(name) = other_data {
        tag = format!("{tag}-data-{name}");
    }
    let outputs = Outputs {
        out: args.out.clone().unwrap_or_else(|| run.to_path_buf()),
        tag,
        shown,
        data_dir: args.data_dir.as_deref(),
        weights_file,
        before,
        run_checkpoint: true,
        other_data: of_other_data,
        left_out,
    };
    test_and_write(&trained, &config, &test, &device, precision, &outputs)
}

/// `evaluate --model NAME --weights FILE`: a checkpoint outside any run (trained by PyTorch,
/// say) as the zoo model `name`, scored on the test split of `recipe`'s data set with the
/// settings a fresh run of `name` would take (its test transform, test batch size, seed for a
/// `--limit-test` subset, no label smoothing) and evaluate's flags; the outputs go to `--out`,
/// else beside the file, named for it (`evaluation-<stem>.json`).
///
/// Errors: `best` or `last` as the checkpoint, a run's resume state, a model this program does
/// not train or whose input does not fit its data, a checkpoint that does not load into `name`
/// with the data set's number of classes (its mismatches named), the file's folder holding a
/// run with no `--out` given (its evaluation files would be replaced), and those of the test
/// pass ([`test_and_write`]).
fn evaluate_with_model(args: &EvaluateArgs, recipe: &Recipe, name: &str) -> Result<Evaluation> {
    if matches!(args.weights.as_str(), "best" | "last") {
        bail!(
            "--model {name} reads a checkpoint file: give --weights FILE.safetensors (best and \
             last are a run's: give --run DIR instead of --model)"
        );
    }
    let weights = PathBuf::from(&args.weights);
    if let Some(epochs) = crate::state::epochs_of_state_file(&weights) {
        bail!(
            "--weights {}: a run's resume state (the weights of epoch {epochs} with the \
             optimizer's buffers and the run's progress), not a checkpoint: score its run with \
             --run DIR (without --model)",
            weights.display()
        );
    }
    // The settings of a fresh run of `name` by this program, with evaluate's flags.
    let flags = crate::flags::Args {
        model: Some(name.to_string()),
        data_dir: args.data_dir.clone(),
        device: Some(crate::distributed::device_spec(&args.device)),
        precision: args.precision,
        limit_test: args.limit_test.and_then(|TestLimit(n)| n),
        test_batch_size: args
            .test_batch_size
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        ..Default::default()
    };
    let config = recipe.config(&flags)?;
    let device = parse_device(&config.device)?;
    let folder = match weights.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    check_out(args.out.as_deref(), None)?;
    // The file's own folder, when it holds a run's files (a run's checkpoint, or a folder
    // named like one): the run's evaluation files would be replaced.
    if args.out.is_none() && crate::rundir::holds_run(&folder) {
        bail!(
            "--weights {}: its folder holds a run's files, whose evaluation files this would \
             replace: give --out DIR for this evaluation{}",
            weights.display(),
            match crate::rundir::is_run_folder(&folder) {
                true => format!(
                    ", or leave out --model to score it as its run was set up (--run {})",
                    folder.display()
                ),
                false => String::new(),
            }
        );
    }
    if let Some((dir, _)) = run_beside(&weights) {
        if crate::distributed::writes() {
            crate::warn!(
                "{}: a checkpoint of the run in {}, scored as --model {name} says (with {}'s \
                 test transform), not as its run was set up (leave out --model for that)",
                weights.display(),
                dir.display(),
                recipe.dataset.spec().title
            );
        }
    }
    let out = args.out.clone().unwrap_or_else(|| folder.clone());
    if crate::distributed::writes() && out.is_dir() {
        let defaulted = args.out.is_none();
        check_writable(
            &out,
            defaulted.then(|| {
                format!(
                    "{}, the folder of --weights {}",
                    folder.display(),
                    weights.display()
                )
            }),
        )?;
    }
    let before = file_stamp(&weights);
    // The model first (a wrong file is said before the data is read), with as many classes as
    // the data set has.
    let data = config.dataset.spec();
    let load = |count: usize| {
        // Frozen: the test batches build no autograd graph.
        zoo::load_frozen(name, count, Some(&weights), &device, 0).map_err(|e| {
            // A head of another number of classes (an ImageNet checkpoint, say): why that many.
            match head_rows(name, &weights) {
                Some((rows, head)) if rows != count && config.dataset == DatasetKind::Folder => {
                    let dir = config.data_dir.as_deref().unwrap_or(Path::new(""));
                    let hidden = crate::cli::hidden_class_folders(dir);
                    e.context(format!(
                        "--weights {}: its {head} has {rows} rows (classes), and the image \
                         folder --data-dir {}, which --model {name} is scored on, has {count} \
                         class folders (torchvision's ImageFolder labels them in name order){}",
                        weights.display(),
                        dir.display(),
                        match hidden.is_empty() {
                            true => String::new(),
                            false => format!(
                                "; hidden folders are not classes here, where torchvision's \
                                 ImageFolder makes each one a class (or refuses one without \
                                 images): {}",
                                crate::cli::first_paths(&hidden)
                            ),
                        }
                    ))
                }
                Some((rows, head)) if rows != count => e.context(format!(
                    "--weights {}: its {head} has {rows} rows (classes), and {}'s test split, \
                     which --model {name} is scored on, has {count} classes{}",
                    weights.display(),
                    data.title,
                    match &config.data_dir {
                        Some(dir) => format!(
                            " (--data-dir {} is read as {}'s files; a checkpoint trained on \
                             image folders of your own is scored by `evaluate --run RUN`, the \
                             folder of its run, on another folder of its classes with \
                             --data-dir too)",
                            dir.display(),
                            data.title
                        ),
                        None => String::new(),
                    }
                )),
                _ => e,
            }
        })
    };
    let loaded = match data.classes.len() {
        0 => None,
        count => Some(load(count)?),
    };
    // An image folder is scored whole where it has no test split of its own: the file did not
    // train on a share of it held out as a run of ours would (torchvision's `ImageFolder(root)`).
    let (test, whole) = crate::cli::load_test_data(&config, false)?;
    let classes = test.classes().to_vec();
    let (model, store) = match loaded {
        Some(loaded) => loaded,
        None => load(classes.len())?,
    };
    let _precision = config.precision.enter();
    // Named for the file (its stem), with what differs from a fresh run's test: another
    // precision than f32, a subset. The file's evaluation on other test data takes the next
    // free name (`unclaimed_tag`). So one setting's figures never replace another's.
    let mut tag = weights
        .file_stem()
        .map_or("weights".into(), |s| s.to_string_lossy().into_owned());
    let mut shown = String::new();
    if config.precision != Precision::default() {
        tag = format!("{tag}-{}", config.precision.flag_text());
        shown = format!(" in {}", config.precision.flag_text());
    }
    if let Some(n) = config.limit_test.filter(|&n| n < whole) {
        tag = format!("{tag}-test{n}");
    }
    let trained = Trained {
        tag: tag.clone(),
        config,
        classes,
        model,
        store,
        weights: weights.clone(),
    };
    let outputs = Outputs {
        out,
        tag,
        shown,
        data_dir: args.data_dir.as_deref(),
        weights_file: weights,
        before,
        run_checkpoint: false,
        other_data: false,
        left_out: Vec::new(),
    };
    let precision = trained.config.precision;
    test_and_write(
        &trained,
        &trained.config,
        &test,
        &device,
        precision,
        &outputs,
    )
}

/// Where [`test_and_write`] writes its outputs, how it names them, and what it says.
struct Outputs<'a> {
    /// The folder of the confusion matrix and the JSON summary.
    out: PathBuf,
    /// Their names' tag, before [`unclaimed_tag`] (`best`, `best-bf16`, ...).
    tag: String,
    /// What the printed figures add after the test set (` in bf16 (the run trained in f32)`).
    shown: String,
    /// The `--data-dir` given, for the errors.
    data_dir: Option<&'a Path>,
    /// The checkpoint file as it was named before it was read, and its stamp then
    /// ([`file_stamp`]): the figures are not written when it was replaced meanwhile.
    weights_file: PathBuf,
    before: Option<(u64, u64, u64, Option<std::time::SystemTime>)>,
    /// Whether the checkpoint may be a run's `best` or `last` beside the outputs (whose
    /// outputs the run removes when it replaces it); `false` for a file outside any run.
    run_checkpoint: bool,
    /// Whether the tag names other data than the run's (`-data-<name>`, a folder's own name,
    /// which two folders may share).
    other_data: bool,
    /// The images left out as files the run trained on ([`Evaluation::left_out_as_trained`]).
    left_out: Vec<String>,
}

/// The test pass of `trained` on `test` with `config`'s settings in `precision` (each rank its
/// share in a data-parallel job), its figures printed, and the confusion matrix and summary
/// written by the writing rank as `outputs` says.
///
/// Errors: test images the model cannot take, ranks that differ, a pass that fails or gives
/// non-finite outputs, a checkpoint replaced during the pass, outputs that cannot be written.
fn test_and_write(
    trained: &Trained,
    config: &RunConfig,
    test: &std::sync::Arc<dyn datasets::Dataset>,
    device: &Device,
    precision: Precision,
    outputs: &Outputs,
) -> Result<Evaluation> {
    // Test images the model cannot take (another size than the run's, with a test transform
    // that does not resize): said before the pass, as training says it.
    if !test.is_empty() {
        let image = test.image(0).context("cannot read the first test image")?;
        let (c, h, w) = image.shape();
        let text = &config.test_transform;
        let (given, _) = datasets::Transform::parse(text)?
            .apply(image, &mut Rng::new(0))
            .with_context(|| {
                format!("--test-transform {text} does not fit the {c}x{h}x{w} test images")
            })?;
        crate::run::check_fits(
            trained.model.as_ref(),
            &config.model,
            &[("--test-transform", text.clone(), given)],
            trained.classes.len(),
            device,
        )
        .with_context(|| {
            format!(
                "the test images{} are {c}x{h}x{w} (CxHxW)",
                outputs
                    .data_dir
                    .map_or(String::new(), |d| format!(" of --data-dir {}", d.display()))
            )
        })?;
    }
    // Every rank evaluates the same checkpoint on the same test images with the same settings.
    crate::distributed::agree_that(
        "evaluation",
        &evaluation_settings(trained, config, test.as_ref(), precision)?,
        "only the paths of --run, --weights and --data-dir, --device and --out may differ",
    )?;
    let loader = crate::run::loader(config, test, false)?;
    // From here the batches take the memory.
    crate::memory::on_out_of_memory(format!(
        "A batch's activations take most of the memory: a smaller --test-batch-size (now {}) \
         needs less.",
        config.test_batch_size
    ));
    let label = format!("evaluate {}", trained.tag);
    let (model, classes) = (trained.model.as_ref(), trained.classes.len());
    let pass = match crate::distributed::shard(&loader, config.test_batch_size, false) {
        Some(share) => crate::distributed::evaluate(
            model,
            &share,
            device,
            classes,
            config.label_smoothing,
            label,
        )?,
        None => evaluate_pass(
            model,
            &loader,
            device,
            classes,
            config.label_smoothing,
            label,
        )?,
    };
    let m = &pass.metrics;
    ensure!(
        m.loss().is_finite(),
        "{}: the network's outputs on the test images are not finite (the loss is {}): its \
         weights give no prediction; nothing was written",
        trained.weights.display(),
        m.loss()
    );
    let evaluation = Evaluation {
        model: config.model.clone(),
        weights: trained.weights.clone(),
        weights_file: std::fs::canonicalize(&trained.weights).ok(),
        checkpoint: None,
        precision,
        data_dir: config.data_dir.clone(),
        data_dir_file: config
            .data_dir
            .as_deref()
            .and_then(|d| std::fs::canonicalize(d).ok()),
        samples: m.samples(),
        loss: m.loss(),
        label_smoothing: config.label_smoothing,
        top1: m.accuracy(),
        top5: m.top5(),
        per_class: trained
            .classes
            .iter()
            .cloned()
            .zip(m.per_class_accuracy())
            .collect(),
        left_out_as_trained: outputs.left_out.clone(),
    };
    let shown = &outputs.shown;
    // The run's criterion: a loss with label smoothing is not plain cross-entropy's.
    let smoothed = match evaluation.label_smoothing {
        0.0 => String::new(),
        s => format!(" (with the run's label smoothing {s})"),
    };
    crate::say!(
        "{} on {} test images of {}{shown}: loss {:.4}{smoothed}, top-1 {:.2}%{}",
        trained.weights.display(),
        evaluation.samples,
        config.dataset.spec().title,
        evaluation.loss,
        evaluation.top1,
        crate::metrics::top5_text(evaluation.top5, trained.classes.len(), ", top-5 ", "%")
    );
    crate::say!("accuracy per class (the share of its test images predicted as it):");
    for (class, acc) in &evaluation.per_class {
        match acc {
            Some(acc) => crate::say!("  {acc:6.2}%  {}", printable(class)),
            None => crate::say!("     -    {} (no test image)", printable(class)),
        }
    }
    let out = &outputs.out;
    // One process, or rank 0 of a sharded evaluation, writes.
    let writes = crate::distributed::writes();
    if writes {
        crate::rundir::refuse_dangling_link(out)?;
        std::fs::create_dir_all(out)
            .with_context(|| format!("--out {}: cannot create the directory", out.display()))?;
    }
    let mut evaluation = evaluation;
    evaluation.checkpoint = [BEST, LAST]
        .into_iter()
        .filter(|_| outputs.run_checkpoint)
        .find(|c| {
            let folder = match trained.weights.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            trained.weights.file_name().is_some_and(|n| n == *c) && same_dir(folder, out)
        })
        .map(|c| c.trim_end_matches(".safetensors").to_string());
    // The run's own best or last beside it takes its name (the run clears those outputs when
    // it replaces the checkpoint); on other data, the first name not another folder's of the
    // same name (`-data-photos`, `-data-photos-2`); another file, the first name not another
    // file's.
    let data = evaluation.data_dir.as_deref();
    let tag = match evaluation.checkpoint {
        Some(_) if !outputs.other_data => outputs.tag.clone(),
        Some(_) => unclaimed_tag(
            out,
            outputs.tag.clone(),
            (evaluation.weights_file.as_deref(), false),
            Some(data),
        ),
        None => unclaimed_tag(
            out,
            outputs.tag.clone(),
            (evaluation.weights_file.as_deref(), true),
            (!outputs.run_checkpoint || outputs.other_data).then_some(data),
        ),
    };
    // Only the writer checks what follows: another rank's refusal would end the job while
    // rank 0 writes.
    if !writes {
        return Ok(evaluation);
    }
    // Replaced while it was tested (its run is training): these figures describe weights that
    // are gone, and the run has already cleared the outputs of the old ones.
    ensure!(
        outputs.before.is_some() && file_stamp(&outputs.weights_file) == outputs.before,
        "{} was replaced while it was evaluated (its run is training, or it was copied over): \
         nothing was written, as the figures may not be those of the file there now; evaluate \
         again",
        trained.weights.display()
    );
    let picture = out.join(evaluated_confusion(&tag));
    let weights = trained.weights.file_name().map_or_else(
        || trained.weights.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    crate::pictures::save_confusion_as(
        &picture,
        &format!(
            "{} {weights}{shown}: top-1 {:.2}% of {} test images",
            config.model, evaluation.top1, evaluation.samples
        ),
        m.confusion(),
        &trained.classes,
    )?;
    let table = out.join(crate::rundir::evaluated_predictions(&tag));
    crate::per_image::write_predictions(
        &table,
        test.as_ref(),
        &pass.predictions,
        &trained.classes,
    )?;
    let summary = out.join(evaluation_summary(&tag));
    crate::atomic::write_bytes(&summary, &serde_json::to_vec_pretty(&evaluation)?)?;
    crate::say!(
        "wrote {}, {} and {} (each test image's prediction)",
        picture.display(),
        summary.display(),
        table.display()
    );
    Ok(evaluation)
}

/// What every rank of a sharded evaluation must share ([`crate::distributed::agree`]): the
/// weights loaded, the model, the classes, the test images (their count and labels in
/// order), the test transform, the batch size, the precision and the loss's label smoothing.
/// Sums are CRC-32C. Nothing is read without a job.
fn evaluation_settings(
    trained: &Trained,
    config: &RunConfig,
    test: &dyn datasets::Dataset,
    precision: Precision,
) -> Result<crate::distributed::Settings> {
    if crate::distributed::rank().is_none() {
        return Ok(Vec::new());
    }
    // What was loaded (not the file, which may have been replaced since): each tensor's name,
    // shape and values in float32 (little-endian), in name order.
    let mut vars = trained.store.named_vars();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut weights = 0;
    let mut bytes = Vec::new();
    for (name, var) in &vars {
        weights = crc32c::crc32c_append(weights, format!("{name} {:?}\n", var.dims()).as_bytes());
        let values = var
            .as_tensor()
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        for chunk in values.chunks(1 << 14) {
            bytes.clear();
            bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            weights = crc32c::crc32c_append(weights, &bytes);
        }
    }
    let classes = trained.classes.iter().fold(0, |crc, name| {
        crc32c::crc32c_append(crc32c::crc32c_append(crc, name.as_bytes()), b"\n")
    });
    Ok(vec![
        (
            "the checkpoint's weights".into(),
            format!("{} tensors (CRC-32C {weights:08x})", vars.len()),
        ),
        ("the model".into(), config.model.clone()),
        (
            "the classes".into(),
            format!("{} (CRC-32C {classes:08x})", trained.classes.len()),
        ),
        (
            "the test images and labels".into(),
            format!(
                "{} (CRC-32C {:08x})",
                test.len(),
                crate::state::labels_crc(test)
            ),
        ),
        ("--test-transform".into(), config.test_transform.clone()),
        (
            "--test-batch-size".into(),
            config.test_batch_size.to_string(),
        ),
        ("--precision".into(), precision.flag_text()),
        (
            "the label smoothing".into(),
            config.label_smoothing.to_string(),
        ),
    ])
}

/// `predict`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct PredictArgs {
    /// The run directory (what --out was) [default: the folder of --weights FILE, when it
    /// holds a run]
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Images to classify (any size and colour mode), as finetune-resnet50 predict and
    /// visualize take them; a folder stands for the image files in it and below it
    #[arg(long, num_args = 1..)]
    pub image: Vec<PathBuf>,
    /// More images (or folders of images) to classify
    pub images: Vec<PathBuf>,
    /// The checkpoint: best, last, or a .safetensors file
    #[arg(long, default_value = "best", value_parser = crate::flags::Utf8Text)]
    pub weights: String,
    /// The zoo model a --weights file outside any run holds (e.g. resnet18-seed): read with
    /// this program's data set's test transform and class names, its classes counted from the
    /// checkpoint's classifier
    #[arg(long, conflicts_with = "run")]
    pub model: Option<String>,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, tf32 or bf16 (autocast) [default: the run's --precision; f32 with --model]
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Also print each image's logits (the network's outputs before softmax, PyTorch's
    /// `model(x)`): one line `logits: [...]` in label order, each value at float32's full
    /// precision, a Python list
    #[arg(long)]
    pub logits: bool,
}

/// The images of `predict`'s `--image` and its positional `images` in `matches`, in the order
/// they were given on the command line (clap keeps each argument's values apart), so that the
/// predictions come out in that order.
pub fn images_in_order(matches: &clap::ArgMatches) -> Vec<PathBuf> {
    let mut given: Vec<(usize, PathBuf)> = Vec::new();
    for id in ["image", "images"] {
        if let (Ok(Some(values)), Some(indices)) =
            (matches.try_get_many::<PathBuf>(id), matches.indices_of(id))
        {
            given.extend(indices.zip(values.cloned()));
        }
    }
    given.sort_by_key(|(index, _)| *index);
    given.into_iter().map(|(_, path)| path).collect()
}

/// Classifies image files as a trained network sees them.
pub struct Predictor<'a> {
    model: &'a dyn Network,
    transform: Transform,
    mode: ColorMode,
    classes: &'a [String],
    device: Device,
    /// The checkpoint the model holds, for errors ([`Predictor::named`]).
    weights: Option<PathBuf>,
}

impl<'a> Predictor<'a> {
    /// Names the checkpoint the model holds in this predictor's errors (outputs that are not
    /// finite).
    pub fn named(mut self, weights: &Path) -> Self {
        self.weights = Some(weights.to_path_buf());
        self
    }

    /// `model` (input `(N, channels, side, side)`) with the run's test `transform`; a transform
    /// that does not resize gets `Resize(side)` + `CenterCrop(side)` in front, so that any image
    /// fits.
    ///
    /// Errors: a normalisation the transform cannot take again (never for a valid transform).
    pub fn new(
        model: &'a dyn Network,
        transform: Transform,
        (channels, side): (usize, usize),
        classes: &'a [String],
        device: &Device,
    ) -> Result<Self> {
        let resizes = transform
            .ops()
            .iter()
            .any(|op| matches!(op, Op::Resize { .. } | Op::RandomResizedCrop { .. }));
        let transform = if resizes {
            transform
        } else {
            sized_first(&transform, side)?
        };
        Self::with(model, transform, channels, classes, device)
    }

    /// The predictor of a trained run's model: where the run's data set has one image size
    /// (`input.data_size`), every image is first brought to it (`Resize` + `CenterCrop`), as
    /// the run's test images were, before the run's test transform (which may resize again, as
    /// fine-tuning's `imagenet-eval`); where its images vary (an image folder), the run's test
    /// transform takes each image as it is, as it took the run's test images (`evaluate`'s
    /// scores): `model(test_transform(image))`, as in PyTorch; one that neither crops nor
    /// resizes gets the model's native size (`input.side`) first, as [`Predictor::new`] does.
    ///
    /// Errors: as [`Predictor::new`].
    pub fn for_run(
        model: &'a dyn Network,
        transform: Transform,
        input: RunInput,
        classes: &'a [String],
        device: &Device,
    ) -> Result<Self> {
        if !input.data_size {
            // One that neither crops nor resizes: the model's native size first, as `new`.
            let fixes_size = transform.ops().iter().any(|op| {
                matches!(
                    op,
                    Op::CenterCrop { .. } | Op::RandomCrop { .. } | Op::RandomResizedCrop { .. }
                )
            });
            return match fixes_size {
                true => Self::with(model, transform, input.channels, classes, device),
                false => Self::new(
                    model,
                    transform,
                    (input.channels, input.side),
                    classes,
                    device,
                ),
            };
        }
        let transform = sized_first(&transform, input.side)?;
        Self::with(model, transform, input.channels, classes, device)
    }

    fn with(
        model: &'a dyn Network,
        transform: Transform,
        channels: usize,
        classes: &'a [String],
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            model,
            transform,
            mode: if channels == 1 {
                ColorMode::Gray
            } else {
                ColorMode::Rgb
            },
            classes,
            device: device.clone(),
            weights: None,
        })
    }

    /// The image in `path` as the network sees it: resized and cropped (`(C, H, W)` u8), and
    /// normalised as the `(1, C, H, W)` input on the predictor's device.
    ///
    /// Errors: the file cannot be read or decoded (named).
    pub fn prepare(&self, path: &Path) -> Result<(datasets::U8Image, Tensor)> {
        let bytes = datasets::read_image_file(path)?;
        let image = datasets::decode_image(&bytes, self.mode)
            .with_context(|| format!("cannot decode image {}", path.display()))?;
        let seen = self.transform.augment(image, &mut Rng::new(0))?;
        let mut values = vec![0f32; seen.data.len()];
        self.transform.normalization().write(&seen, &mut values)?;
        let x = Tensor::from_vec(
            values,
            (1, seen.channels, seen.height, seen.width),
            &Device::Cpu,
        )?
        .to_device(&self.device)?;
        Ok((seen, x))
    }

    /// The softmax probability of every class for the image in `path`, in label order.
    ///
    /// Errors: the file cannot be read or decoded (named), or the outputs are not finite.
    pub fn probabilities(&self, path: &Path) -> Result<Vec<f32>> {
        Ok(self.outputs(path)?.1)
    }

    /// The network's outputs for the image in `path`: its logits (before softmax) and their
    /// softmax probabilities, each in label order, in float32.
    fn outputs(&self, path: &Path) -> Result<(Vec<f32>, Vec<f32>)> {
        let (_, x) = self.prepare(path)?;
        let _no_grad = layers::no_grad();
        let logits = self.model.forward_t(&x, false)?;
        let probabilities = candle_nn::ops::softmax(&logits, D::Minus1)?
            .squeeze(0)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        let logits = logits
            .squeeze(0)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        ensure!(
            probabilities.iter().all(|p| p.is_finite()),
            "{}: the network's outputs are not finite (NaN or infinity): {} give no prediction",
            path.display(),
            match &self.weights {
                Some(weights) => format!("the weights of {}", weights.display()),
                None => "its weights".to_string(),
            }
        );
        Ok((logits, probabilities))
    }

    /// The five most probable classes (fewer when there are fewer), best first.
    ///
    /// # Errors
    /// The image cannot be read or decoded, or the forward pass fails.
    pub fn top5(&self, path: &Path) -> Result<Vec<(String, f32)>> {
        Ok(self.predict(path)?.top5)
    }

    /// The top 5 and the logits of the image in `path`, from one forward pass.
    ///
    /// # Errors
    /// The image cannot be read or decoded, or the forward pass fails or gives values that are
    /// not finite.
    pub fn predict(&self, path: &Path) -> Result<Prediction> {
        let (logits, probs) = self.outputs(path)?;
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]));
        let top5 = order
            .into_iter()
            .take(5)
            .map(|i| (self.classes[i].clone(), probs[i]))
            .collect();
        Ok(Prediction { top5, logits })
    }
}

/// What `predict` says of one image ([`Predictor::predict`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The five most probable classes (fewer when there are fewer) with their softmax
    /// probabilities (0 to 1), best first.
    pub top5: Vec<(String, f32)>,
    /// The network's outputs before softmax, in label order (PyTorch's `model(x)[0]`).
    pub logits: Vec<f32>,
}

/// What images a run's model saw before its test transform, for [`Predictor::for_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunInput {
    /// Colour channels (1: grey).
    pub channels: usize,
    /// Height and width.
    pub side: usize,
    /// Whether `side` is the data set's own image size (every image is brought to it first),
    /// rather than the model's native input (the images vary: the run's test transform takes
    /// each as it is).
    pub data_size: bool,
}

/// The images a run's model saw before its test transform: the data set's own image shape
/// where all its images share one (MNIST's 1x28x28, CIFAR-10's 3x32x32, whatever the model's
/// native input), else the model's native input (an ImageFolder run, whose test transform
/// resizes).
///
/// Errors: the run's model is not in the zoo.
pub fn run_input(config: &RunConfig) -> Result<RunInput> {
    Ok(match config.dataset.spec().shape {
        Some((channels, side, _)) => RunInput {
            channels,
            side,
            data_size: true,
        },
        None => {
            let spec = zoo::spec(&config.model)?;
            RunInput {
                channels: spec.input.0,
                side: spec.input.1,
                data_size: false,
            }
        }
    })
}

/// `transform` with `Resize(side)` and `CenterCrop(side)` in front.
fn sized_first(transform: &Transform, side: usize) -> Result<Transform> {
    let n = transform.normalization();
    let mut fitted = Transform::to_tensor_normalize(n.mean(), n.std())?
        .resize(side)
        .center_crop(side);
    for op in transform.ops() {
        fitted = fitted.then(op.clone());
    }
    Ok(fitted)
}

/// Whether the run's `best` or `last` checkpoint (`weights`, read from `path` into `store`)
/// holds other weights than its resume state's when it should hold the same (`last`, and
/// `best` when the last epoch saved was the best): a kill between the state and the
/// checkpoints left it an epoch behind, or the file was changed since the run wrote it (edited,
/// copied over); `--resume` writes the state's weights again. Said, not mended here. Looked
/// at by one process of a data-parallel job, and not while a run holds the directory (it may
/// be between the two writes); the checkpoint may be given by its path.
fn behind_the_state(
    dir: &Path,
    (weights, path): (&str, &Path),
    store: &ParamStore,
    program: &str,
) -> Option<String> {
    if !crate::distributed::writes() || crate::rundir::in_use(dir) {
        return None;
    }
    let (epochs, best) = crate::state::saved_epochs(dir)?;
    // The run's checkpoint, by its word or its path.
    let same_file = |name: &str| {
        let canonical = |p: &Path| std::fs::canonicalize(p).ok();
        canonical(path).is_some_and(|p| Some(p) == canonical(&dir.join(name)))
    };
    let last = weights == "last" || same_file(LAST);
    let best_file = weights == "best" || same_file(BEST);
    let best_is_last = best_file && best == epochs;
    if best_file && best < epochs {
        // An earlier epoch's weights: the state keeps their checksum (states saved before it
        // was kept, none).
        let kept = crate::state::saved_best_crc(dir)?;
        let now = layers::checkpoint::file_checksum(path).ok()?;
        return (now != kept).then(|| {
            format!(
                "{} holds other weights than the run's best epoch, {best}, as {} records them: \
                 changed since the run wrote it (swapped with another checkpoint, rewritten by \
                 another tool, copied over); it is read as it is, not as epoch {best}'s weights",
                path.display(),
                crate::rundir::STATE,
            )
        });
    }
    if !(last || best_is_last) {
        return None;
    }
    let (_, saved) = crate::state::load(dir).ok()?;
    let loaded = layers::checkpoint::state_dict(store.varmap()).ok()?;
    let same = |a: &Tensor, b: &Tensor| -> candle_core::Result<bool> {
        let (a, b) = (
            a.to_dtype(candle_core::DType::F64)?,
            b.to_device(a.device())?.to_dtype(candle_core::DType::F64)?,
        );
        Ok(a.dims() == b.dims() && (a - b)?.abs()?.max_all()?.to_scalar::<f64>()? == 0.0)
    };
    let differs = saved.model.len() != loaded.len()
        || saved.model.iter().any(|(name, t)| {
            loaded
                .get(name)
                .is_none_or(|l| !same(t, l).unwrap_or(false))
        });
    differs.then(|| {
        format!(
            "{} holds other weights than the run's {} (epoch {epochs}): changed since the run \
             wrote it, or left behind by a kill between the run's files; it is read as it is \
             (not as epoch {epochs}'s weights): `{} --resume {}` writes epoch {epochs}'s again \
             from the state (a finished run trains no more)",
            path.display(),
            crate::rundir::STATE,
            program,
            dir.display()
        )
    })
}

/// Prints the top-5 classes with probabilities for each image, under a run's checkpoint.
///
/// # Errors
/// Those of [`parse_device`] and [`Trained::open`]; the run's saved test transform or input
/// size cannot be read; one or more images could not be classified ([`print_top5`], after all
/// were tried, each named with its [`Predictor::top5`] error).
pub fn predict(args: &PredictArgs, dataset: DatasetKind) -> Result<()> {
    let images: Vec<PathBuf> = args.image.iter().chain(&args.images).cloned().collect();
    if images.is_empty() {
        bail!(
            "predict needs images: predict {} IMAGE... (or --image IMAGE)",
            match &args.model {
                Some(model) => format!("--model {model} --weights FILE"),
                None => "--run DIR".into(),
            }
        );
    }
    if let Some(model) = &args.model {
        return predict_with_model(args, model, dataset, &images);
    }
    // Without --run, the run whose folder holds the --weights file.
    let run = match &args.run {
        Some(run) => run.clone(),
        None => match found_run(&args.weights) {
            Some(dir) => dir,
            None => bail!(
                "predict needs --run DIR (a training run: what --out was){}",
                match (
                    args.weights.as_str(),
                    images.iter().find(|p| crate::rundir::is_run_folder(p))
                ) {
                    // A PyTorch user's guess: the run's folder first, where the images go.
                    (_, Some(dir)) => format!(
                        "; {0} is a run's folder, given where the images go: predict --run {0} \
                         IMAGE...",
                        dir.display()
                    ),
                    ("best" | "last", None) => String::new(),
                    (file, None) => format!(
                        "; --weights {file} lies in no run's folder (no readable {CONFIG} \
                         beside it), so its model, transform and classes are unknown: give \
                         --model NAME, the zoo model it holds, to read it with {}'s test \
                         transform and classes",
                        dataset.spec().title
                    ),
                }
            ),
        },
    };
    let device = parse_device(&args.device)?;
    let trained = Trained::open(&run, &args.weights, &device)?;
    // The run's precision (bf16 autocast, TF32), as its test passes ran, unless told otherwise.
    let _precision = args.precision.unwrap_or(trained.config.precision).enter();
    let transform = Transform::parse(&trained.config.test_transform)?;
    let predictor = Predictor::for_run(
        trained.model.as_ref(),
        transform,
        run_input(&trained.config)?,
        &trained.classes,
        &device,
    )?
    .named(&trained.weights);
    // The images that are files the run trained on are said so; a state that cannot tell (the
    // checkpoint does not need it) is said once, on stderr.
    let cannot_tell = |why: String| {
        crate::warn!("note: {why}: which images are files the run trained on cannot be said");
        Vec::new()
    };
    let trained_on = match crate::state::saved_trained_on(&run) {
        Ok(Some(sums)) => sums,
        Ok(None) if !run.join(crate::rundir::STATE).exists() => cannot_tell(format!(
            "{} is not there",
            run.join(crate::rundir::STATE).display()
        )),
        Ok(None) if trained.config.dataset == crate::config::DatasetKind::Folder => {
            cannot_tell(format!(
                "{} keeps no fingerprints of the run's training images (it predates them)",
                run.join(crate::rundir::STATE).display()
            ))
        }
        Ok(None) => Vec::new(),
        Err(e) => cannot_tell(format!("{e:#}")),
    };
    let images = folders_as_images(&images)?;
    print_top5(&images, &trained_on, args.logits, |image| {
        predictor.predict(image)
    })
}

/// `predict`'s images, each folder among them replaced by the image files in it and below it
/// (sorted by path; hidden ones and files not named as images passed over, as an image folder's
/// reading does: `predict --run DIR photos/` or `data/test/`). A folder without images, or a
/// run's (whose pictures are no input), stays, for [`print_top5`] to say so in its place.
///
/// # Errors
/// A folder (or one below it) cannot be read.
pub fn folders_as_images(given: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut images = Vec::with_capacity(given.len());
    for path in given {
        if !path.is_dir() || crate::rundir::is_run_folder(path) {
            images.push(path.clone());
            continue;
        }
        let found = datasets::image_files_below(path)
            .with_context(|| format!("cannot list the images in {}", path.display()))?;
        match found.is_empty() {
            true => images.push(path.clone()),
            false => images.extend(found),
        }
    }
    Ok(images)
}

/// Why `folder`, given among the images (and left by [`folders_as_images`]), is not classified.
fn not_images(folder: &Path) -> anyhow::Error {
    match crate::rundir::is_run_folder(folder) {
        true => anyhow::anyhow!(
            "a training run's folder, not a folder of images (the run to predict with goes to \
             --run)"
        ),
        false => anyhow::anyhow!(
            "a folder with no image file in it or below it (files named .{}, as torchvision's \
             IMG_EXTENSIONS; hidden ones are passed over)",
            datasets::IMAGE_EXTENSIONS.join(", .")
        ),
    }
}

/// The names of a network's `count` outputs under `weights`, for a model of data set `data`:
/// those of the run the checkpoint comes from (its `classes.json` beside it), else the data
/// set's where the count is theirs, else ImageNet's for a 1000-class head of loaded weights of
/// an ImageNet model (a pretrained ResNet, say; not random initial ones), else `class K`.
pub fn output_names(
    data: &datasets::DatasetSpec,
    weights: Option<&Path>,
    count: usize,
) -> Vec<String> {
    if let Some(classes) = weights.and_then(|w| classes_beside(w, count)) {
        return classes;
    }
    if data.classes.len() == count {
        data.classes.iter().map(|c| c.to_string()).collect()
    } else if weights.is_some() && data.name == datasets::catalog::IMAGENET.name && count == 1000 {
        datasets::catalog::imagenet_classes()
    } else {
        (0..count).map(|k| format!("class {k}")).collect()
    }
}

/// `predict --model NAME --weights FILE`: a checkpoint outside any run, as the zoo model `name`
/// with as many classes as its classifier has rows, through `dataset`'s evaluation transform at
/// the data set's image size (the model's native size for data of varying size), and the data
/// set's class names where the count is theirs (a `classes.json` beside the file first); a head
/// of the model's own data set (1000 ImageNet classes) is read as that data set ([`data_of_head`]).
fn predict_with_model(
    args: &PredictArgs,
    name: &str,
    dataset: DatasetKind,
    images: &[PathBuf],
) -> Result<()> {
    if matches!(args.weights.as_str(), "best" | "last") {
        bail!(
            "--model {name} reads a checkpoint file: give --weights FILE.safetensors (best and \
             last are a run's: give --run DIR instead of --model)"
        );
    }
    let weights = Path::new(&args.weights);
    let device = parse_device(&args.device)?;
    let _precision = args.precision.unwrap_or_default().enter();
    let spec = zoo::spec(name)?;
    let data = dataset.spec();
    if let Some((c, _, _)) = data.shape.filter(|s| s.0 != spec.input.0) {
        bail!(
            "--model {name} takes {}-channel images, and this program reads {} ({c}-channel): \
             give a model of {c} channels, or use the program of {name}'s data ({})",
            spec.input.0,
            data.title,
            spec.data
        );
    }
    if let Some((dir, _)) = run_beside(weights) {
        crate::warn!(
            "{}: a checkpoint of the run in {}, read as --model {name} says (with {}'s test \
             transform and classes), not as its run was set up (leave out --model for that)",
            weights.display(),
            dir.display(),
            data.title
        );
    }
    let (model, _, count) = zoo::load_counting_classes(name, None, Some(weights), &device, 0)?;
    let data = data_of_head(name, &spec, data, weights, count)?;
    let classes = output_names(data, Some(weights), count);
    let (channels, side) = data
        .shape
        .map_or((spec.input.0, spec.input.1), |(c, h, _)| (c, h));
    let predictor = Predictor::new(
        model.as_ref(),
        (data.eval)(side),
        (channels, side),
        &classes,
        &device,
    )?
    .named(weights);
    let images = folders_as_images(images)?;
    print_top5(&images, &[], args.logits, |image| predictor.predict(image))
}

/// The data set `predict --model NAME --weights FILE` reads its images as and names the outputs
/// by, for a checkpoint whose head has `count` outputs: the program's (`data`) where the count is
/// its class count or `classes.json` beside the file names them; the model's own (ImageNet's
/// resize, crop, mean and std, and its class names, as torchvision's `weights.transforms()` and
/// `weights.meta["categories"]`) for a head of the model's own count that the program's data set
/// does not have (a torchvision ImageNet checkpoint given to `train-cifar`), said on standard
/// error; otherwise the program's, with a note that the outputs have no names.
fn data_of_head(
    name: &str,
    spec: &zoo::ModelSpec,
    data: &'static datasets::DatasetSpec,
    weights: &Path,
    count: usize,
) -> Result<&'static datasets::DatasetSpec> {
    if count == data.classes.len() || classes_beside(weights, count).is_some() {
        return Ok(data);
    }
    let own = datasets::catalog::spec(spec.data)
        .ok()
        .filter(|own| count == spec.default_classes && own.name != data.name);
    if let Some(own) = own {
        crate::warn!(
            "note: {} has {count} outputs, {}'s classes for {name}, not {}'s {}: the images are \
             read with {}'s evaluation transform (`{}` at {}), as the model's own weights are",
            weights.display(),
            own.title,
            data.title,
            data.classes.len(),
            own.title,
            own.test_transform,
            own.shape
                .map_or(String::from("the model's size"), |(_, h, w)| format!(
                    "{h}x{w}"
                )),
        );
        return Ok(own);
    }
    crate::warn!(
        "note: {} has {count} outputs, not {}'s {} classes, and no classes.json beside it: they \
         are named class 0 to class {}, and the images are read with {}'s test transform",
        weights.display(),
        data.title,
        data.classes.len(),
        count.saturating_sub(1),
        data.title,
    );
    Ok(data)
}

/// `values` as a Python list, each the shortest decimal that reads back as the same float32
/// (an infinite logit, whose softmax is still finite, as `float('-inf')`).
fn python_list(values: &[f32]) -> String {
    let items: Vec<String> = values
        .iter()
        .map(|v| match v.is_finite() {
            true => format!("{v:?}"),
            false => format!("float('{}')", format!("{v}").to_lowercase()),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// A class name as printed, one line each: its control characters (a newline or a tab in a
/// folder's name) written as Rust escapes (`\n`), the rest (any script, emoji) as it is.
pub fn printable(name: &str) -> String {
    name.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// Says on standard error why `image` could not be read or used (`error`, with its causes),
/// naming the image once (its own errors name it already).
pub fn warn_failed(image: &Path, error: &anyhow::Error) {
    let message = format!("{error:#}");
    match message.contains(&image.display().to_string()) {
        true => crate::warn!("{message}"),
        false => crate::warn!("{}: {message}", image.display()),
    }
}

/// Prints each image's path and its top-5 classes (`predict`), with `logits` its logits too
/// (`  logits: [v0, v1, ...]`, label order, each value as the shortest decimal that reads back
/// as the same float32: a Python list), and for an image whose file's
/// [`datasets::fingerprint`] is among `trained_on` (sorted: the training images a run's state
/// keeps, [`crate::state::saved_trained_on`]; empty for none) a line saying the run trained
/// on it. An image that cannot be read or classified is said on standard error, naming it, and
/// the rest are still classified; so is a folder among `images` (one [`folders_as_images`]
/// left: without images, or a run's).
///
/// # Errors
/// One or more images could not be classified (how many, after all were tried).
pub fn print_top5(
    images: &[PathBuf],
    trained_on: &[u64],
    logits: bool,
    predict: impl Fn(&Path) -> Result<Prediction>,
) -> Result<()> {
    let mut failed = 0;
    for image in images {
        let predicted = match image.is_dir() {
            true => Err(not_images(image)),
            false => predict(image),
        };
        match predicted {
            Ok(prediction) => {
                crate::say!("{}", printable(&image.display().to_string()));
                for (class, p) in &prediction.top5 {
                    crate::say!("  {:6.2}%  {}", p * 100.0, printable(class));
                }
                if logits {
                    crate::say!("  logits: {}", python_list(&prediction.logits));
                }
                // A regular file read again (a pipe gave its bytes once).
                let trained = !trained_on.is_empty()
                    && std::fs::metadata(image).is_ok_and(|m| m.is_file())
                    && datasets::read_image_file(image).is_ok_and(|bytes| {
                        trained_on
                            .binary_search(&datasets::fingerprint(&bytes))
                            .is_ok()
                    });
                if trained {
                    // On stderr: stdout holds the predictions that scripts read.
                    crate::warn!(
                        "note: {} is a file the run trained on (the same bytes as one of its \
                         training images): its prediction is no test",
                        printable(&image.display().to_string())
                    );
                }
            }
            Err(e) => {
                failed += 1;
                warn_failed(image, &e);
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} images could not be classified (each is named above)",
            images.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatasetKind;

    /// `evaluate --weights` and `predict --weights` with a name that is not UTF-8 (a Latin-1
    /// file name) are refused naming the flag, not with clap's bare "invalid UTF-8"; an empty
    /// one as clap refuses it.
    #[cfg(unix)]
    #[test]
    fn a_weights_name_that_is_not_utf8_is_refused_naming_the_flag() {
        use clap::Parser;
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        #[derive(clap::Parser, Debug)]
        enum Commands {
            Evaluate(EvaluateArgs),
            Predict(PredictArgs),
        }
        for command in ["evaluate", "predict"] {
            let argv = |weights: &'static [u8]| {
                [command.as_bytes(), b"--weights", weights, b"x.png"]
                    .into_iter()
                    .map(OsStr::from_bytes)
                    .take(if command == "evaluate" { 3 } else { 4 })
            };
            let prog = std::iter::once(OsStr::new("prog"));
            let err = Commands::try_parse_from(prog.clone().chain(argv(b"caf\xe9.safetensors")))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(
                    "--weights caf\u{FFFD}.safetensors: the path is not valid UTF-8 (shown with \
                     U+FFFD for what is not)"
                ),
                "{command}: {err}"
            );
            let err = Commands::try_parse_from(prog.clone().chain(argv(b"")))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("a value is required for '--weights <WEIGHTS>'"),
                "{command}: {err}"
            );
            let parsed = Commands::try_parse_from(prog.chain(argv(b"caf\xc3\xa9.safetensors")));
            assert!(parsed.is_ok(), "{command}: {parsed:?}");
        }
    }

    /// `--logits`' list reads in Python: shortest round-trip decimals, non-finite values as
    /// `float(...)`.
    #[test]
    fn logits_print_as_a_python_list() {
        let list = python_list(&[1.0, -0.5, 1e-8, 0.1, f32::NEG_INFINITY, f32::NAN]);
        assert_eq!(list, "[1.0, -0.5, 1e-8, 0.1, float('-inf'), float('nan')]");
        assert_eq!(python_list(&[]), "[]");
    }

    /// A class name prints on one line: control characters escaped, other scripts kept.
    #[test]
    fn class_names_print_on_one_line() {
        assert_eq!(printable("new\nline\tx"), "new\\nline\\tx");
        assert_eq!(
            printable("Hündchen 🚢 \"big\" cat"),
            "Hündchen 🚢 \"big\" cat"
        );
    }

    #[test]
    fn an_unwritable_outputs_folder_is_named_before_the_test_pass() -> Result<()> {
        let err = format!(
            "{:#}",
            check_writable(Path::new("/proc"), Some("--run /proc".into())).unwrap_err()
        );
        assert!(
            err.starts_with("--run /proc: cannot write there") && err.contains("--out DIR"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            check_writable(Path::new("/proc"), None).unwrap_err()
        );
        assert!(err.starts_with("--out /proc: cannot write there"), "{err}");
        let dir = tempfile::tempdir()?;
        check_writable(dir.path(), Some("--run".into()))?;
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
        Ok(())
    }

    /// A checkpoint whose folder has no config.json and a pipe for its state: the state is
    /// never opened (the open would wait for a writer), so the file is in no run.
    #[test]
    fn a_pipe_for_the_state_is_never_opened() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let weights = dir.path().join("best.safetensors");
        std::fs::write(&weights, b"x")?;
        let pipe = dir.path().join(crate::rundir::STATE);
        let name = std::ffi::CString::new(pipe.as_os_str().as_encoded_bytes())?;
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(run_beside(&weights).is_none());
        });
        // A blocked open is a failure here, not a hung test.
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(20)),
            Ok(true)
        );
        Ok(())
    }

    /// A checkpoint file outside the run directory names its outputs with its folder.
    #[test]
    fn checkpoints_from_elsewhere_are_named_with_their_folder() -> Result<()> {
        let root = tempfile::tempdir()?;
        let (run, other) = (root.path().join("run"), root.path().join("r1"));
        std::fs::create_dir_all(&run)?;
        std::fs::create_dir_all(&other)?;
        assert_eq!(
            checkpoint_tag(&run, &run.join("epoch3.safetensors")),
            "epoch3"
        );
        let dotted = run.join(".").join("best.safetensors");
        assert_eq!(checkpoint_tag(&run, &dotted), "best");
        assert_eq!(
            checkpoint_tag(&run, &other.join("best.safetensors")),
            "r1-best"
        );
        // A folder named like a checkpoint: its file's tag is not one of the run's.
        let best = root.path().join("best");
        std::fs::create_dir_all(&best)?;
        assert_eq!(
            checkpoint_tag(&run, &best.join("bf16.safetensors")),
            "file-best-bf16"
        );
        Ok(())
    }

    /// Two checkpoint files whose outputs would take one name (`a/b-c` and `a-b/c`, both
    /// `a-b-c`) each keep their own: the second is named `a-b-c-2`, and evaluated again it
    /// takes that name again; an evaluation saved before the file was recorded is matched by
    /// its `weights`; one that cannot be read is another file's.
    #[test]
    fn another_files_evaluation_is_not_replaced() -> Result<()> {
        let root = tempfile::tempdir()?;
        let out = root.path().join("out");
        std::fs::create_dir_all(root.path().join("a"))?;
        std::fs::create_dir_all(root.path().join("a-b"))?;
        std::fs::create_dir_all(&out)?;
        let (one, two) = (
            root.path().join("a").join("b-c.safetensors"),
            root.path().join("a-b").join("c.safetensors"),
        );
        std::fs::write(&one, b"1")?;
        std::fs::write(&two, b"2")?;
        let (one, two) = (std::fs::canonicalize(&one)?, std::fs::canonicalize(&two)?);
        let tag = |file: &Path| unclaimed_tag(&out, "a-b-c".into(), (Some(file), true), None);
        let record = |tag: &str, json: serde_json::Value| {
            std::fs::write(out.join(evaluation_summary(tag)), json.to_string())
        };
        assert_eq!(tag(&one), "a-b-c");
        record(
            "a-b-c",
            serde_json::json!({"weights": "x", "weights_file": one}),
        )?;
        assert_eq!(tag(&one), "a-b-c");
        assert_eq!(tag(&two), "a-b-c-2");
        record(
            "a-b-c-2",
            serde_json::json!({"weights": "y", "weights_file": two}),
        )?;
        assert_eq!(tag(&two), "a-b-c-2");
        assert_eq!(tag(&one), "a-b-c");
        // Saved before `weights_file`: its `weights`.
        record("a-b-c", serde_json::json!({"weights": one}))?;
        assert_eq!((tag(&one), tag(&two)), ("a-b-c".into(), "a-b-c-2".into()));
        // Unreadable: another file's.
        std::fs::write(out.join(evaluation_summary("a-b-c")), b"{")?;
        assert_eq!(tag(&one), "a-b-c-3");
        Ok(())
    }

    /// A checkpoint replaced by a rename (as a run writes it) while it was evaluated is seen,
    /// even with the same size; one left alone is not.
    #[test]
    fn a_replaced_checkpoint_changes_its_stamp() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("best.safetensors");
        std::fs::write(&path, b"epoch 1")?;
        let before = file_stamp(&path);
        assert!(before.is_some());
        assert_eq!(file_stamp(&path), before);
        let tmp = dir.path().join(".best.tmp1.safetensors");
        std::fs::write(&tmp, b"epoch 2")?;
        std::fs::rename(&tmp, &path)?;
        assert_ne!(file_stamp(&path), before);
        assert_eq!(file_stamp(&dir.path().join("gone")), None);
        Ok(())
    }

    /// A model of another native size trained on CIFAR-10 or MNIST saw the data set's images
    /// (before the test transform), not its native input; an ImageFolder run's test transform
    /// resizes to the model's.
    #[test]
    fn predict_feeds_the_images_the_run_saw() -> Result<()> {
        let run = |data, model| -> Result<(usize, usize, bool)> {
            let input = run_input(&RunConfig::new("t", data, model))?;
            Ok((input.channels, input.side, input.data_size))
        };
        assert_eq!(run(DatasetKind::Cifar10, "resnet18")?, (3, 32, true));
        assert_eq!(run(DatasetKind::Cifar10, "resnet18-cifar")?, (3, 32, true));
        assert_eq!(run(DatasetKind::Mnist, "lenet5")?, (1, 28, true));
        assert_eq!(run(DatasetKind::Folder, "resnet18")?, (3, 224, false));
        Ok(())
    }
}
