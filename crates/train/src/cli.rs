//! The command line shared by the training programs: flags in the style of PyTorch's examples,
//! program defaults from a [`Recipe`], resuming, and the run itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{ArgMatches, Args as _, Command, FromArgMatches as _};
use datasets::Dataset;

use crate::config::{DatasetKind, OptimizerKind, RunConfig, ScheduleKind};
use crate::flags::{apply_on_resume, FlagText};
pub use crate::flags::{Args, Recipe};
use crate::inference::{evaluate, predict, EvaluateArgs, PredictArgs};
use crate::run::{run, Outcome};
use crate::rundir::RunDir;
use crate::state;

/// What every training program does first, on its main thread, before anything else runs:
/// freed memory is kept for reuse ([`crate::memory::keep_freed_memory`]), Candle's element-wise
/// operations run on the calling thread ([`crate::threads::candle_ops_on_the_calling_thread`])
/// and that thread computes in rayon's pool
/// ([`crate::threads::calling_thread_joins_the_pool`]). Errors print without a backtrace
/// ([`user_errors_without_backtraces`]).
pub fn set_up_process() {
    user_errors_without_backtraces();
    write_errors_not_signals();
    crate::memory::keep_freed_memory();
    crate::threads::candle_ops_on_the_calling_thread();
    crate::threads::calling_thread_joins_the_pool();
}

/// A write past the file-size limit (`ulimit -f`) fails with "File too large" (EFBIG), which
/// the program's error names with its file, instead of SIGXFSZ ending the process at once with
/// nothing said (status 153). Python ignores SIGXFSZ too, so PyTorch's programs get an
/// `OSError` there.
pub fn write_errors_not_signals() {
    #[cfg(unix)]
    // SAFETY: setting a signal to be ignored touches no memory of the process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Ends the process for a command line clap did not run (`--help`, `--version`, a bad flag) as
/// `clap::Error::exit` does, printing its text, but with status 1 when that text could not be
/// written (`--help > /dev/full`) rather than 0; a closed pipe (`--help | head -1`) is no
/// failure.
pub fn exit_for_clap(e: clap::Error) -> ! {
    let code = e.exit_code();
    match e.print() {
        Err(io) if io.kind() != std::io::ErrorKind::BrokenPipe => {
            crate::warn!("Error: standard output could not be written ({io})");
            std::process::exit(1)
        }
        _ => {
            if let Some(tip) = run_folder_tip(&e) {
                crate::warn!("{tip}");
            }
            std::process::exit(code)
        }
    }
}

/// For an unexpected argument that is a run's folder (`evaluate runs/x`, as other tools take
/// it): the flag that takes it.
fn run_folder_tip(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let ContextValue::String(arg) = e.get(ContextKind::InvalidArg)? else {
        return None;
    };
    crate::rundir::is_run_folder(Path::new(arg))
        .then(|| format!("  tip: {arg} is a run's folder: give it as --run {arg}"))
}

/// The programs' errors are the user's to fix (a path, a flag, a file), printed with their
/// causes; a backtrace of where the error was made tells a user nothing. So `RUST_BACKTRACE=1`
/// (often set for good) keeps giving panics their backtraces, but adds none to an error unless
/// `RUST_LIB_BACKTRACE=1` asks for it (the variable `anyhow` reads first). Call it first on the
/// main thread, before other threads start.
pub fn user_errors_without_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

impl Recipe {
    /// `cmd` (holding the training flags, [`Args`]) with this recipe's defaults in the flags'
    /// help (`[default: ...]`), but for the fields in `except` (whose default the program
    /// decides otherwise), and taking negative numbers as values (`--lr -1` is refused by the
    /// range check, naming the flag, not by the parser as an unknown flag `-1`).
    pub fn with_defaults(&self, mut cmd: Command, except: &[&str]) -> Command {
        for (id, value) in self.help_defaults() {
            if except.contains(&id) {
                continue;
            }
            // An empty list (train-mnist's milestones) is shown as none.
            let value = if value.is_empty() {
                "none".into()
            } else {
                value
            };
            // --model lists the models it takes.
            let models = match id {
                "model" if self.models.is_empty() => {
                    format!(": {}", self.zoo_models_for_the_data())
                }
                "model" => format!(": {}", self.models.join("|")),
                _ => String::new(),
            };
            cmd = cmd.mut_arg(id, |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                a.help(format!("{help}{models} [default: {value}]"))
            });
        }
        cmd.allow_negative_numbers(true)
    }

    /// The clap command: [`Args`] with this recipe's defaults in the help text.
    pub fn command(&self) -> Command {
        // After the flags: their struct's doc comment would otherwise become the description.
        let mut cmd = self.with_defaults(Args::augment_args(Command::new(self.program)), &[]);
        // The workspace's version, which every program shares (`--version`, as clap's `version`
        // attribute gives finetune-resnet50 and visualize).
        cmd = cmd.about(self.about).version(env!("CARGO_PKG_VERSION"));
        // MNIST and CIFAR-10 come with their test split: --test-fraction (refused there, naming
        // why) is not offered.
        if self.dataset != DatasetKind::Folder {
            cmd = cmd.mut_arg("test_fraction", |a| a.hide(true));
        }
        cmd.args_conflicts_with_subcommands(true)
            // A flag given twice takes its last value, as argparse does (`$DEFAULTS --epochs 5`
            // in a script); flags that take several values in turn (predict's images) gather.
            .args_override_self(true)
            // The descriptions after the flags: their structs' doc comments would replace them.
            .subcommand(
                EvaluateArgs::augment_args(Command::new("evaluate"))
                    .about(
                        "Evaluate a run's checkpoint on its test split (or, with --model, a \
                         checkpoint file on this program's): loss, top-1, top-5, per-class \
                         accuracy, confusion matrix",
                    )
                    // `--limit-test -5` is a value to refuse, not an unknown flag.
                    .allow_negative_numbers(true),
            )
            .subcommand(
                PredictArgs::augment_args(Command::new("predict"))
                    .about("Print the top-5 classes of images under a run's checkpoint")
                    .allow_negative_numbers(true),
            )
    }

    /// A fresh run's `--model`, when any zoo model is accepted: a zoo model taking as many
    /// channels as the configured data set's images have, checked before the data is read (a
    /// misspelt name otherwise cost a whole data load). A data set of unknown shape (an image
    /// folder) is checked for the name only; its channels when the images are read.
    fn check_zoo_model(&self, config: &RunConfig) -> Result<()> {
        let shape = config.dataset.spec().shape;
        let fitting: Vec<&str> = zoo::specs()
            .into_iter()
            .filter(|s| shape.is_none_or(|(c, _, _)| s.input.0 == c))
            .map(|s| s.name)
            .collect();
        let listing = match shape {
            Some(_) if config.dataset == self.dataset => self.zoo_models_for_the_data(),
            _ => fitting.join(", "),
        };
        let known = match zoo::spec(&config.model) {
            Ok(spec) => spec,
            Err(_) => bail!(
                "--model {:?}: no such model{}; {} trains {listing}",
                config.model,
                zoo::did_you_mean(&config.model, &fitting)
                    .map(|k| format!(" (did you mean {k}?)"))
                    .unwrap_or_default(),
                self.program,
            ),
        };
        if let Some((c, _, _)) = shape {
            if known.input.0 != c {
                bail!(
                    "--model {}: it takes {}-channel images, and {} reads {} ({c}-channel); it \
                     trains {listing}",
                    known.name,
                    known.input.0,
                    self.program,
                    config.dataset.spec().title,
                );
            }
        }
        Ok(())
    }

    /// For `--model`'s help when any zoo model is accepted: those made for this recipe's images,
    /// then the others taking as many channels.
    fn zoo_models_for_the_data(&self) -> String {
        let Some(shape) = self.dataset.spec().shape else {
            return zoo::names().join(", ");
        };
        let specs = zoo::specs();
        let names = |keep: &dyn Fn(&zoo::ModelSpec) -> bool| {
            let kept: Vec<&str> = specs.iter().filter(|s| keep(s)).map(|s| s.name).collect();
            kept.join(", ")
        };
        let (c, h, w) = shape;
        format!(
            "{} (made for {c}x{h}x{w}); also the zoo's other {c}-channel models: {} (made for \
             larger images; some need a resize step, which the error then gives)",
            names(&|s| s.input == shape),
            names(&|s| s.input != shape && s.input.0 == c)
        )
    }

    /// Parses `argv` (program name first) into [`Args`].
    ///
    /// # Errors
    /// Unknown flags and values clap cannot parse (the error prints as clap's usage message).
    pub fn parse<I, T>(&self, argv: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches: ArgMatches = self.command().try_get_matches_from(argv)?;
        Args::from_arg_matches(&matches)
    }

    /// The configuration of a fresh run: the flags given, this recipe's defaults for the rest.
    ///
    /// # Errors
    /// `--model` is not one of the recipe's models, `--momentum` with Adam or `--betas` with SGD,
    /// `--betas` with other than two numbers, `--nesterov` with Adam or AdamW or without a
    /// momentum above 0, a schedule flag the schedule does not use (`--milestones` without
    /// `multistep`, `--step-size` without `step`, `--gamma` with none of those,
    /// `exponential` and `plateau`, `--patience` without `plateau`, `--t-0` or `--t-mult`
    /// without `cosine-warm-restarts`), `multistep` without `--milestones`, `exponential`
    /// without `--gamma`, `cosine-warm-restarts` without `--t-0`, `plateau` with a `--gamma` of
    /// 1 or more, `plateau` or `cosine-warm-restarts` with `--warmup-epochs`, a
    /// `--data-dir` that cannot be made absolute, or a value that
    /// [`RunConfig::validate`] refuses.
    pub fn config(&self, args: &Args) -> Result<RunConfig> {
        let mut config = self.resolve(args)?;
        if !self.models.is_empty() && !self.models.contains(&config.model.as_str()) {
            bail!(
                "{} trains {}; --model {:?} is not one of them{}",
                self.program,
                self.models.join(" or "),
                config.model,
                zoo::did_you_mean(&config.model, self.models)
                    .map(|k| format!(" (did you mean {k}?)"))
                    .unwrap_or_default()
            );
        }
        if self.models.is_empty() {
            self.check_zoo_model(&config)?;
        }
        let adam = config.optimizer != OptimizerKind::Sgd;
        if adam && args.momentum.is_some() {
            bail!("--momentum is SGD's; Adam's beta1 is the first of --betas (default 0.9,0.999)");
        }
        if !adam && args.betas.is_some() {
            bail!("--betas are Adam's and AdamW's; SGD takes --momentum");
        }
        // (Checked for fresh runs only: runs saved before kept the flag, unused, with Adam.)
        if adam && config.nesterov {
            bail!("--nesterov is SGD's momentum; Adam and AdamW take none");
        }
        if config.nesterov && config.momentum <= 0.0 {
            bail!(
                "--nesterov needs a momentum above 0 (--momentum), got {}",
                config.momentum
            );
        }
        if !adam {
            config.betas = None;
        }
        check_schedule_flags(args, &config, false)?;
        absolute_data_dir(&mut config)?;
        config.validate()?;
        // Before the data is loaded (a download, perhaps): a typo, or CUDA in a CPU build.
        crate::device::check_device(&config.device)?;
        if config.warmup_epochs >= config.epochs && config.warmup_epochs > 0 {
            // Allowed, as PyTorch's LinearLR allows it, but rarely meant.
            crate::warn!(
                "--warmup-epochs {} with --epochs {}: the warm-up does not end within the run, \
                 so the learning rate never reaches --lr",
                config.warmup_epochs,
                config.epochs
            );
        }
        Ok(config)
    }

    /// Runs the program with parsed flags: a fresh run, or a resumed one with `--resume`.
    /// The output directory is checked and locked (see [`RunDir`]) before the data is loaded.
    ///
    /// # Errors
    /// Any error of [`Recipe::config`], [`resumed_config`], the run directory ([`RunDir`]), loading
    /// the data ([`load_data`]) or training ([`run`]).
    pub fn run(&self, args: &Args) -> Result<Outcome> {
        crate::distributed::launch(&args.distributed, || self.run_here(args))
    }

    /// [`Recipe::run`] in this process (one rank of a data-parallel job, or alone).
    fn run_here(&self, args: &Args) -> Result<Outcome> {
        let Some(dir) = &args.resume else {
            let config = self.config(args)?;
            crate::distributed::agree_on_run(&config, 0)?;
            let out = self.fresh_dir(args, &config)?;
            return run(&config, load_data(&config)?, out.path(), None);
        };
        let (dir, saved, tensors) = self.resume_dir(dir, args)?;
        let config = resumed_config(&saved.config, args)?;
        crate::device::check_device(&config.device)?;
        crate::distributed::agree_on_run(&config, saved.epochs_done)?;
        // A finished run is said so before its data is loaded (it may be large, or gone).
        if let Some(done) = crate::run::finished(
            &config,
            &saved,
            (&tensors.model, &crate::run::title(&config)),
            dir.path(),
        )? {
            return Ok(done);
        }
        let data = load_resumed_data(&config, &saved.config)?;
        run(&config, data, dir.path(), Some((saved, tensors)))
    }

    /// The locked output directory of a fresh run of `config`: `--out`, or
    /// `runs/<program>-<timestamp>`.
    ///
    /// # Errors
    /// The run directory lies where an image folder `--data-dir` would read it as a class
    /// (`inside_the_classes`), or as [`RunDir::fresh`]: the directory cannot be created or
    /// locked, or holds a run and `--overwrite` is not given.
    pub fn fresh_dir(&self, args: &Args, config: &RunConfig) -> Result<RunDir> {
        let out = args.out.as_deref().unwrap_or(Path::new("runs"));
        if let Some(folder) = inside_the_classes(out, config) {
            bail!(
                "{} {} is inside {}, where the image folder's class folders stand: the run's \
                 folder would be read as an empty class; give an --out outside it",
                match args.out {
                    Some(_) => "--out",
                    None => "the default --out",
                },
                out.display(),
                folder.display()
            );
        }
        match &args.out {
            Some(out) => RunDir::fresh(out, args.overwrite),
            None => RunDir::fresh_default(self.program, args.overwrite),
        }
    }

    /// Locks the run directory `dir` and reads its state, refusing a run another program made
    /// and an `--out` elsewhere.
    pub fn resume_dir(
        &self,
        dir: &Path,
        args: &Args,
    ) -> Result<(RunDir, state::ResumeState, state::StateTensors)> {
        // `rs/` and `./rs` are the same directory.
        let same = |o: &Path| {
            o == dir
                || std::fs::canonicalize(o)
                    .is_ok_and(|o| std::fs::canonicalize(dir).is_ok_and(|d| o == d))
        };
        if args.out.as_deref().is_some_and(|o| !same(o)) {
            bail!("--resume continues in its own directory; leave out --out or give the same directory");
        }
        let locked = RunDir::existing(dir)?;
        crate::rundir::check_outputs_are_files(dir)?;
        let (saved, tensors) = state::load(dir)?;
        if saved.config.program != self.program {
            bail!(
                "--resume {}: that run was made by {}, not {}; continue it with {}",
                dir.display(),
                saved.config.program,
                self.program,
                saved.config.program
            );
        }
        state::check_agrees_with_run(dir, &saved, &tensors)?;
        Ok((locked, saved, tensors))
    }

    /// The whole program: parse the process's arguments, run, report errors.
    pub fn main(&self) -> Result<()> {
        set_up_process();
        let matches = self
            .command()
            .try_get_matches_from(std::env::args_os())
            .unwrap_or_else(|e| exit_for_clap(e));
        let result = match matches.subcommand() {
            Some(("evaluate", m)) => evaluate(&EvaluateArgs::from_arg_matches(m)?, self).map(drop),
            Some(("predict", m)) => {
                let mut args = PredictArgs::from_arg_matches(m)?;
                args.image = crate::inference::images_in_order(m);
                args.images.clear();
                predict(&args, self.dataset)
            }
            _ => exit_status(self.run(&Args::from_arg_matches(&matches)?).map(drop)),
        };
        crate::progress::stdout_written(result)
    }
}

/// A training run's result, for `main` to return; a run stopped by Ctrl-C or SIGTERM
/// ([`crate::interrupt::Interrupted`]), or one that finished although one came after its last
/// batch, ends the process here, after its message, by that signal (a shell reports status
/// 130 or 143, and a loop around the program stops too).
pub fn exit_status(result: Result<()>) -> Result<()> {
    match result {
        Err(e) if e.downcast_ref::<crate::interrupt::Interrupted>().is_some() => {
            // The run's own message (where it stopped, what is saved) is the outermost.
            crate::warn!("Error: {e}");
            crate::interrupt::die_by_signal()
        }
        // A Ctrl-C or SIGTERM after the last batch stopped nothing, but a loop around the
        // program must still stop, as for one that came earlier.
        Ok(()) if crate::interrupt::requested() => {
            if !crate::distributed::quiet() {
                crate::warn!(
                    "{} came as the run ended: all its epochs were trained and saved",
                    crate::interrupt::by()
                );
            }
            crate::interrupt::die_by_signal()
        }
        result => result,
    }
}

/// The saved configuration, with the flags a resumed run may change applied (those the
/// [`crate::flags`] table marks changeable: `--epochs`, `--test-batch-size`, `--device`, `--workers`,
/// `--data-placement`, `--memory-format`, `--data-dir`). Other training flags may be given with the saved value
/// (re-running the same command with `--resume` added works); a different value is refused,
/// naming the flag, the saved value and the given one, since it would make the run differ from
/// the one being continued. A run with `--schedule plateau` keeps its `--test-batch-size` too
/// (its rates follow the test loss).
///
/// # Errors
/// A fixed flag differs from the saved run, a schedule's flag is given that the run's schedule
/// does not take, another `--test-batch-size` for a `plateau` run, the run's saved relative
/// `--data-dir` is not found from here (without `--data-dir`), or the result fails
/// [`RunConfig::validate`].
pub fn resumed_config(saved: &RunConfig, args: &Args) -> Result<RunConfig> {
    if args.schedule.is_none_or(|s| s == saved.schedule) {
        // A scheduler's flag the run's schedule does not take, named as such (rather than
        // as a value differing from the saved one).
        check_schedule_flags(args, saved, true)?;
    }
    let (mut config, refused) = apply_on_resume(saved, args)?;
    if !refused.is_empty() {
        let changeable = crate::flags::changeable_on_resume();
        bail!(
            "--resume continues the saved configuration; these flags differ from it: {} (only {} \
             can change)",
            refused.join(", "),
            changeable.join(", ")
        );
    }
    match &args.data_dir {
        Some(_) => absolute_data_dir(&mut config)?,
        None => saved_data_dir_is_here(saved)?,
    }
    // ReduceLROnPlateau's rate follows the test loss, whose last digits follow the test
    // batches: another size could flip a decision and take the run elsewhere.
    if config.schedule == ScheduleKind::Plateau && config.test_batch_size != saved.test_batch_size {
        bail!(
            "--test-batch-size {}: this run's --schedule plateau steps with the test loss, whose \
             last digits follow the test batches (of {}), so another size could change a rate \
             and the run; give --test-batch-size {} (evaluate takes any)",
            config.test_batch_size,
            saved.test_batch_size,
            saved.test_batch_size
        );
    }
    config.validate()?;
    Ok(config)
}

/// The folder of class folders of an image-folder run (`DatasetKind::Folder`) that `out` would
/// lie in, so that the run's folder would be read as a class: `--data-dir` itself when the
/// class folders stand directly in it, else its `train/`, `test/` or `val/`. A hidden folder
/// (`.runs/`) is never read, and other data sets read no class folders.
fn inside_the_classes(out: &Path, config: &RunConfig) -> Option<PathBuf> {
    let data = config.data_dir.as_deref()?;
    if config.dataset != DatasetKind::Folder || !data.is_dir() {
        return None;
    }
    let splits = ["train", "test", "val"].map(|s| data.join(s));
    let folders: Vec<PathBuf> = match splits[0].is_dir() {
        true => splits.into_iter().filter(|s| s.is_dir()).collect(),
        false => vec![data.to_path_buf()],
    };
    folders.into_iter().find(|folder| inside(out, folder))
}

/// Whether `path` (which need not exist yet) lies inside the directory `dir` (or is it), links
/// resolved, and not in a hidden folder of it (`dir/.runs/x`, which a folder walk skips).
fn inside(path: &Path, dir: &Path) -> bool {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return false;
    };
    if !dir.is_dir() {
        return false;
    }
    let Ok(path) = std::path::absolute(path) else {
        return false;
    };
    // Resolved part by part: links of the parts that exist, `..` and `.` of the rest.
    let mut resolved = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                resolved.pop();
            }
            std::path::Component::CurDir => {}
            other => resolved.push(other),
        }
        if let Ok(real) = std::fs::canonicalize(&resolved) {
            resolved = real;
        }
    }
    match resolved.strip_prefix(&dir) {
        Ok(below) => !below
            .components()
            .next()
            .is_some_and(|first| first.as_os_str().to_string_lossy().starts_with('.')),
        Err(_) => false,
    }
}

/// Refuses a run's saved `--data-dir` that is relative (runs saved before it was made
/// absolute) and not found from the working directory, asking for `--data-dir`.
///
/// # Errors
/// That case.
pub(crate) fn saved_data_dir_is_here(saved: &RunConfig) -> Result<()> {
    match &saved.data_dir {
        Some(dir) if dir.is_relative() && !dir.exists() => bail!(
            "the run's --data-dir {} is relative to the directory it was trained in, and is not \
             found from here: give --data-dir DIR",
            dir.display()
        ),
        _ => Ok(()),
    }
}

/// Makes `--data-dir` absolute (relative to the working directory), as it is saved in
/// `config.json`: `evaluate`, `predict` and `--resume` then find the data from any directory.
fn absolute_data_dir(config: &mut RunConfig) -> Result<()> {
    if let Some(dir) = &config.data_dir {
        let absolute = std::path::absolute(dir)
            .with_context(|| format!("--data-dir {}: cannot make it absolute", dir.display()))?;
        config.data_dir = Some(absolute);
    }
    Ok(())
}

/// Loads the configured data set (see [`datasets::catalog::load`]); with `--limit-train` /
/// `--limit-test`, keeps a seeded stratified subset of each half
/// ([`datasets::stratified_indices`]), the same for a given seed, and logs its class counts
/// when they are unbalanced.
///
/// # Errors
/// The data set cannot be found, downloaded or read (with the reader's reason), holds one class
/// only, or a subset cannot be drawn; `--test-fraction` is given for MNIST or CIFAR-10 (which
/// have their own test split).
pub fn load_data(config: &RunConfig) -> Result<datasets::Split> {
    load_data_then(config, |_| Ok(()))
}

/// [`load_data`] for a run resumed from `saved`, its configuration as kept: where the data
/// directory it keeps (no other `--data-dir` given) is gone, the error says that it comes from
/// the run's `config.json` and to give `--data-dir` where the data is now (the run's data may
/// move between a run and its resume).
///
/// # Errors
/// As [`load_data`].
pub fn load_resumed_data(config: &RunConfig, saved: &RunConfig) -> Result<datasets::Split> {
    let split = load_data(config);
    match (&config.data_dir, &saved.data_dir) {
        (Some(dir), Some(kept)) if dir == kept && !dir.exists() => split.with_context(|| {
            format!(
                "the run's data, --data-dir {} (from its {}), is not there: give --data-dir \
                 where the data is now (with --resume)",
                dir.display(),
                crate::rundir::CONFIG
            )
        }),
        _ => split,
    }
}

/// [`load_data`], with `check` run on the whole split as read, before a `--limit-train` /
/// `--limit-test` subset is drawn (a fresh run's [`refuse_a_class_outside_a_split`]).
///
/// # Errors
/// As [`load_data`], and `check`'s.
pub fn load_data_then(
    config: &RunConfig,
    check: impl FnOnce(&datasets::Split) -> Result<()>,
) -> Result<datasets::Split> {
    if config.dataset != DatasetKind::Folder
        && config.test_fraction != datasets::FolderOptions::default().test_fraction
    {
        bail!(
            "--test-fraction {}: {} comes with its own test split; the flag is for an image \
             folder whose class folders stand directly in --data-dir",
            config.test_fraction,
            config.dataset.spec().title
        );
    }
    let split = match (config.dataset, config.data_dir.as_deref()) {
        (DatasetKind::Folder, Some(dir)) => datasets::image_folder(dir, &folder_options(config)),
        (dataset, dir) => datasets::catalog::load(dataset.spec(), dir),
    }
    .context("cannot load the data set")?;
    if let [only] = split.train.classes() {
        // A folder that wraps the class folders (what an archive holds unwrapped): its path.
        let inner = config
            .data_dir
            .as_deref()
            .map(|d| d.join(only))
            .filter(|inner| {
                std::fs::read_dir(inner).is_ok_and(|entries| {
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .nth(1)
                        .is_some()
                })
            })
            .map(|inner| {
                format!(
                    "; if {only:?} holds the class folders, give --data-dir {}",
                    inner.display()
                )
            })
            .unwrap_or_default();
        bail!(
            "{}: one class found ({only:?}); a classifier needs two or more. The class folders \
             go directly inside --data-dir (ROOT/<class>/...), or inside ROOT/train/ and \
             ROOT/test/ (or val/) together{inner}",
            config
                .data_dir
                .as_deref()
                .map_or("the data set".into(), |d| d.display().to_string())
        );
    }
    say_read(config, &split);
    if let Some(note) = boxes_in_pictures(split.train.classes()) {
        crate::warn!("{note}");
    }
    check(&split)?;
    Ok(datasets::Split {
        train: limited(split.train, config.limit_train, config.seed, "train")?,
        test: limited(split.test, config.limit_test, config.seed, "test")?,
    })
}

/// The folders of the image folder `root` (a directory; none for an archive) whose subfolders
/// are classes: `root`, and, where `root` holds the split (`train/` with `test/` or `val/`),
/// `train/` and the test split's folder.
fn class_levels(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    let test = ["test", "val"]
        .map(|d| root.join(d))
        .into_iter()
        .find(|d| d.is_dir());
    if let (true, Some(test)) = (root.join("train").is_dir(), test) {
        dirs.extend([root.join("train"), test]);
    }
    dirs
}

/// The entries of the folders `dirs` that `keep` keeps (by name and path), sorted.
fn entries_of(dirs: &[PathBuf], keep: impl Fn(&str, &Path) -> bool) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| keep(&e.file_name().to_string_lossy(), &e.path()))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// The image files of the image folder `root` that stand in no class folder, so that no class
/// reads them: directly in `root`, `train/` or the test split's folder ([`class_levels`]).
/// Hidden names are left out, as the folder's reading leaves them out.
fn loose_images(root: &Path) -> Vec<PathBuf> {
    entries_of(&class_levels(root), |name, path| {
        !name.starts_with('.') && datasets::is_image(name) && path.is_file()
    })
}

/// The hidden folders (`.ipynb_checkpoints`, `.git`) among the class folders of the image
/// folder `root` (those of `train/` and the test split where `root` holds the split, else those
/// of `root`): passed over, where torchvision's `ImageFolder` makes each one a class (and
/// refuses one without images).
pub(crate) fn hidden_class_folders(root: &Path) -> Vec<PathBuf> {
    let levels = class_levels(root);
    let split = usize::from(levels.len() > 1);
    entries_of(&levels[split..], |name, path| {
        name.starts_with('.') && path.is_dir()
    })
}

/// `paths` as a message lists them: the first three, then how many more.
pub(crate) fn first_paths(paths: &[PathBuf]) -> String {
    const SHOWN: usize = 3;
    let mut named: Vec<String> = paths
        .iter()
        .take(SHOWN)
        .map(|p| p.display().to_string())
        .collect();
    if paths.len() > SHOWN {
        named.push(format!("{} more", paths.len() - SHOWN));
    }
    named.join(", ")
}

/// A note when class names have characters the pictures' font has no glyph for (a CJK script,
/// for example): they draw as boxes in the PNGs, as with matplotlib's default font, while the
/// JSON files and what is printed keep them; `None` when every name draws.
fn boxes_in_pictures(classes: &[String]) -> Option<String> {
    let lacking: Vec<&String> = classes
        .iter()
        .filter(|c| !viz::missing_glyphs(c).is_empty())
        .collect();
    let first = lacking.first()?;
    let name = crate::inference::printable(first);
    let which = match lacking.len() {
        1 => format!("the class name \"{name}\" has"),
        n => format!("the class names \"{name}\" and {} more have", n - 1),
    };
    let chars: String = viz::missing_glyphs(first).into_iter().take(3).collect();
    Some(format!(
        "note: {which} characters the pictures' font (DejaVu Sans) has no glyph for ({chars}): \
         they draw as boxes in the PNGs; classes.json, metrics.json and what is printed keep them"
    ))
}

/// Says what was read, from where ([`datasets::Dataset::origin`]), and when the split sizes
/// are not the official data set's (a subset, or a file cut at a record's end, which its
/// format cannot tell from a whole one).
fn say_read(config: &RunConfig, split: &datasets::Split) {
    let spec = config.dataset.spec();
    let read = [split.train.len(), split.test.len()];
    let (train, test) = (split.train.origin(), split.test.origin());
    let mut note = String::new();
    if let Some(official) = spec.sizes.filter(|sizes| *sizes != read) {
        note += &format!(
            "; the official {} has {} and {} (a subset, or a cut or edited file?)",
            spec.title, official[0], official[1]
        );
    }
    if let (DatasetKind::Cifar10, Some(dir)) = (config.dataset, config.data_dir.as_deref()) {
        let passed = datasets::cifar10_incomplete_batches(dir);
        if !passed.is_empty() {
            note += &format!("; passed over, as incomplete: {}", passed.join(", "));
        }
    }
    if unused_test_fraction(config, split) {
        note += &format!(
            "; --test-fraction {} has no effect: the folder has its own test split",
            config.test_fraction
        );
    }
    // An image folder: the user's own, or CIFAR-10's read from its train/ class folders (not
    // from batches or an archive in the same directory).
    let folder = |dir: &Path| match config.dataset {
        DatasetKind::Folder => true,
        DatasetKind::Cifar10 => train.as_deref() == Some(&*dir.join("train").to_string_lossy()),
        _ => false,
    };
    if let Some(dir) = config.data_dir.as_deref().filter(|d| folder(d)) {
        let loose = loose_images(dir);
        if !loose.is_empty() {
            note += &format!(
                "; passed over, as in no class folder (as torchvision's ImageFolder does): {}",
                first_paths(&loose)
            );
        }
        let hidden = hidden_class_folders(dir);
        if !hidden.is_empty() {
            note += &format!(
                "; passed over, as hidden (torchvision's ImageFolder makes each a class, or \
                 refuses one without images): {}",
                first_paths(&hidden)
            );
        }
    }
    let from = |origin: &Option<String>| {
        origin
            .as_ref()
            .map(|o| format!(" from {o}"))
            .unwrap_or_default()
    };
    match (&train, &test) {
        // One folder whose classes are split: the test images are a held-out share.
        (Some(one), Some(other)) if one == other => crate::say!(
            "read {}: {} training and {} test images from {one} (held out: --test-fraction {}){note}",
            spec.title,
            read[0],
            read[1],
            config.test_fraction
        ),
        _ => crate::say!(
            "read {}: {} training images{}, {} test images{}{note}",
            spec.title,
            read[0],
            from(&train),
            read[1],
            from(&test),
        ),
    }
}

/// Whether `--test-fraction` was given (another than the default) for image-folder data that
/// has its own test split (the folder's or an archive's `train/` and `test/`): it has no effect.
fn unused_test_fraction(config: &RunConfig, split: &datasets::Split) -> bool {
    let own_test = matches!(
        (split.train.origin(), split.test.origin()),
        (Some(one), Some(other)) if one != other
    );
    config.dataset == DatasetKind::Folder
        && own_test
        && config.test_fraction != datasets::FolderOptions::default().test_fraction
}

/// Refuses, for a fresh run, data that leaves a class out of a split: a class with no
/// training image is never learnt, one with no test image never tested. An image folder's
/// held-out share does so for a class of few images (at 0.2, one or two images round to no
/// test image; at 0.5, one image to no training image). A resumed run, an evaluation, read
/// their data as it is. `split` is the whole data as read ([`load_data_then`]): a
/// `--limit-train` / `--limit-test` subset that leaves out classes the whole split has is
/// warned of where it is drawn.
///
/// # Errors
/// A class without training or test images, named with its number of images.
pub fn refuse_a_class_outside_a_split(config: &RunConfig, split: &datasets::Split) -> Result<()> {
    let counts = |data: &dyn Dataset| {
        let mut counts = vec![0usize; data.classes().len()];
        for i in 0..data.len() {
            counts[data.label(i)] += 1;
        }
        counts
    };
    let (train, test) = (counts(split.train.as_ref()), counts(split.test.as_ref()));
    let classes = split.train.classes();
    let named = |missing: &[usize]| {
        let shown: Vec<String> = missing
            .iter()
            .take(8)
            .map(|&k| {
                let n = train[k] + test.get(k).copied().unwrap_or(0);
                format!(
                    "{:?} ({n} image{})",
                    classes[k],
                    if n == 1 { "" } else { "s" }
                )
            })
            .collect();
        let more = match missing.len() > shown.len() {
            true => format!(" and {} more", missing.len() - shown.len()),
            false => String::new(),
        };
        format!("{}{more}", shown.join(", "))
    };
    let held_out = config.dataset == DatasetKind::Folder
        && split.train.origin().is_some()
        && split.train.origin() == split.test.origin();
    let data = config
        .data_dir
        .as_deref()
        .map_or("the data".into(), |d| d.display().to_string());
    let share = format!(
        "holding out {}% of each class (rounded, --test-fraction {})",
        datasets::percent(config.test_fraction),
        config.test_fraction
    );
    let untrained: Vec<usize> = (0..classes.len()).filter(|&k| train[k] == 0).collect();
    if !untrained.is_empty() {
        match held_out {
            true => bail!(
                "{data}: {share} leaves no training image of {}: give {} more images, hold out \
                 less, or make train/ and test/ (or val/) folders",
                named(&untrained),
                if untrained.len() == 1 { "it" } else { "them" }
            ),
            false => bail!(
                "{data}: the training split has no image of {}",
                named(&untrained)
            ),
        }
    }
    let untested: Vec<usize> = (0..classes.len())
        .filter(|&k| test.get(k).copied().unwrap_or(0) == 0)
        .collect();
    if !untested.is_empty() {
        match held_out {
            true => bail!(
                "{data}: {share} leaves no test image of {}: give {} {} or more images, hold out \
                 more, or make train/ and test/ (or val/) folders",
                named(&untested),
                if untested.len() == 1 { "it" } else { "each" },
                (0.5 / config.test_fraction).ceil()
            ),
            false => bail!(
                "{data}: the test split has no image of {}",
                named(&untested)
            ),
        }
    }
    Ok(())
}

/// Refuses `--test-fraction` given for a fresh run on image-folder data with its own test
/// split, which only reading tells for an archive (a folder's `train/` and `test/` can be
/// refused before). A resumed run made with it before is only told ([`load_data`]'s note).
///
/// # Errors
/// The flag would have no effect.
pub fn refuse_unused_test_fraction(config: &RunConfig, split: &datasets::Split) -> Result<()> {
    if unused_test_fraction(config, split) {
        bail!(
            "--test-fraction {}: {} has its own test split ({}), which is used as it is; leave \
             out --test-fraction, or put the class folders directly in the archive's top to \
             hold out a share of each",
            config.test_fraction,
            config
                .data_dir
                .as_deref()
                .map_or("the data".into(), |d| d.display().to_string()),
            split.test.origin().unwrap_or_default()
        );
    }
    Ok(())
}

/// The configured data set's test split alone, as [`load_data`] gives it (the same
/// `--limit-test` subset), read without the training files where the data set's layout allows
/// ([`datasets::catalog::load_test`]): what `evaluate` needs. Also gives the whole split's
/// number of images (a `--limit-test` at or above it is the whole split). An image folder
/// without `train/` + `test/` gives the share of each class a run holds out
/// (`--test-fraction`), or, unless `held_out`, all its images (a folder the run did not train
/// on: [`datasets::image_folder_for_evaluation`]).
///
/// # Errors
/// The test split cannot be found, downloaded or read, or a subset cannot be drawn.
pub fn load_test_data(config: &RunConfig, held_out: bool) -> Result<(Arc<dyn Dataset>, usize)> {
    let test = match (config.dataset, config.data_dir.as_deref()) {
        (DatasetKind::Folder, Some(dir)) if held_out => {
            datasets::image_folder_test(dir, &folder_options(config))
        }
        (DatasetKind::Folder, Some(dir)) => {
            datasets::image_folder_for_evaluation(dir, &folder_options(config))
        }
        (dataset, dir) => datasets::catalog::load_test(dataset.spec(), dir),
    }
    .context("cannot load the test split")?;
    let whole = test.len();
    Ok((
        limited(test, config.limit_test, config.seed, "test")?,
        whole,
    ))
}

/// `data` without the samples whose files' fingerprints ([`datasets::Dataset::fingerprint`])
/// are among `trained_on` (sorted: the training images a run's state keeps), and the names of
/// those (their indices where they have none), in order; the samples `keep` (indices) stay
/// whatever they are.
///
/// # Errors
/// A file cannot be read for its fingerprint (named).
pub(crate) fn without_trained(
    data: Arc<dyn Dataset>,
    trained_on: &[u64],
    keep: &[usize],
) -> Result<(Arc<dyn Dataset>, Vec<String>)> {
    use rayon::prelude::*;
    let kept: std::collections::HashSet<usize> = keep.iter().copied().collect();
    let seen: Vec<bool> = (0..data.len())
        .into_par_iter()
        .with_min_len(64)
        .map(|i| {
            Ok(!kept.contains(&i)
                && data
                    .fingerprint(i)?
                    .is_some_and(|sum| trained_on.binary_search(&sum).is_ok()))
        })
        .collect::<Result<_>>()?;
    if !seen.contains(&true) {
        return Ok((data, Vec::new()));
    }
    let left_out = (0..data.len())
        .filter(|&i| seen[i])
        .map(|i| data.sample_name(i).unwrap_or_else(|| format!("image {i}")))
        .collect();
    let kept = (0..data.len()).filter(|&i| !seen[i]).collect();
    Ok((Arc::new(datasets::Subset::new(data, kept)?), left_out))
}

/// How an image folder (`DatasetKind::Folder`) is read: the catalog's way, with the run's
/// `--test-fraction`.
fn folder_options(config: &RunConfig) -> datasets::FolderOptions {
    datasets::FolderOptions {
        test_fraction: config.test_fraction,
        ..datasets::FolderOptions::default()
    }
}

/// `data`, or `limit` of its samples chosen by [`datasets::stratified_indices`].
pub(crate) fn limited(
    data: Arc<dyn Dataset>,
    limit: Option<usize>,
    seed: u64,
    what: &str,
) -> Result<Arc<dyn Dataset>> {
    let Some(limit) = limit else {
        return Ok(data);
    };
    if limit >= data.len() {
        crate::say!(
            "--limit-{what} {limit}: the {what} split has {} image{}, all of them used",
            data.len(),
            if data.len() == 1 { "" } else { "s" }
        );
        return Ok(data);
    }
    let indices = datasets::stratified_indices(data.as_ref(), limit, seed);
    let subset = datasets::Subset::new(data.clone(), indices)?;
    let mut counts = vec![0usize; subset.classes().len()];
    for i in 0..subset.len() {
        counts[subset.label(i)] += 1;
    }
    let (least, most) = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    );
    let without: Vec<&String> = subset
        .classes()
        .iter()
        .zip(&counts)
        .filter(|&(_, &n)| n == 0)
        .map(|(c, _)| c)
        .collect();
    if !without.is_empty() {
        // Whether the whole split has them, for the advice.
        let mut whole = vec![0usize; counts.len()];
        for i in 0..data.len() {
            whole[data.label(i)] += 1;
        }
        let absent = counts
            .iter()
            .zip(&whole)
            .filter(|&(&n, &all)| n == 0 && all == 0)
            .count();
        let advice = match absent {
            0 => format!("a larger --limit-{what} keeps them"),
            a if a == without.len() => format!("the whole {what} split has none of them either"),
            a => format!(
                "the whole {what} split has none of {a} of them; a larger --limit-{what} keeps \
                 the others"
            ),
        };
        // Said once in a data-parallel job (every rank makes the same subset).
        if !crate::distributed::quiet() {
            crate::warn!(
                "--limit-{what} {limit}: the {what} subset has no image of {} of the {} classes \
             ({}){}; {advice}",
                without.len(),
                counts.len(),
                without
                    .iter()
                    .take(12)
                    .map(|c| format!("{c:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                match what {
                    "train" => ": the model never trains on them",
                    _ => ": they are never tested",
                }
            );
        }
    } else if most > least.max(1) * 3 / 2 && !crate::distributed::quiet() {
        let shown: Vec<String> = subset
            .classes()
            .iter()
            .zip(&counts)
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        crate::say!(
            "{what}: {limit} of {} images, classes unbalanced: {}",
            data.len(),
            shown.join(", ")
        );
    }
    Ok(Arc::new(subset))
}

/// Refuses a schedule flag given on the command line that `config`'s schedule would ignore, as
/// a PyTorch scheduler takes only its own arguments: `--milestones` is `MultiStepLR`'s,
/// `--step-size` `StepLR`'s, `--gamma` theirs, `ExponentialLR`'s and `ReduceLROnPlateau`'s
/// (its factor), `--patience` `ReduceLROnPlateau`'s, `--t-0` and `--t-mult`
/// `CosineAnnealingWarmRestarts`'. On resume (`resumed`, `config` the
/// saved run's) only a value other than the run's is refused, saying that the run's schedule
/// takes no such flag. On a fresh run a multistep schedule without milestones (a constant rate
/// in disguise) is refused too (runs saved before that check are resumed as they are), and so
/// are an exponential one without `--gamma` (the recipes' default is a decay, not a factor per
/// epoch), onecycle, plateau and cosine-warm-restarts with `--warmup-epochs` (none of them
/// follows a warm-up chained before it in PyTorch, `ChainedScheduler([LinearLR, schedule])`),
/// cosine-warm-restarts without `--t-0`, and plateau with a `--gamma` of 1 or more.
fn check_schedule_flags(args: &Args, config: &RunConfig, resumed: bool) -> Result<()> {
    use ScheduleKind::{CosineWarmRestarts, Exponential, Multistep, Plateau, Step};
    let (schedule, milestones) = (config.schedule, &config.milestones);
    // Resumed: only a value other than the run's (the same command with `--resume` added is
    // taken, as for any flag).
    let given = |is_given: bool, same: bool| is_given && !(resumed && same);
    let given = [
        (
            "--milestones",
            given(
                args.milestones.is_some(),
                args.milestones.as_ref() == Some(milestones),
            ),
            &[Multistep][..],
        ),
        (
            "--step-size",
            given(
                args.step_size.is_some(),
                args.step_size == Some(config.step_size),
            ),
            &[Step],
        ),
        (
            "--gamma",
            given(args.gamma.is_some(), args.gamma == Some(config.gamma)),
            &[Multistep, Step, Exponential, Plateau],
        ),
        (
            "--patience",
            given(
                args.patience.is_some(),
                args.patience == Some(config.patience),
            ),
            &[Plateau],
        ),
        (
            "--t-0",
            given(args.t_0.is_some(), args.t_0 == Some(config.t_0)),
            &[CosineWarmRestarts],
        ),
        (
            "--t-mult",
            given(args.t_mult.is_some(), args.t_mult == Some(config.t_mult)),
            &[CosineWarmRestarts],
        ),
    ];
    for (flag, is_given, users) in given {
        if is_given && !users.contains(&schedule) {
            let names: Vec<_> = users.iter().map(|s| s.flag_text()).collect();
            if resumed {
                bail!(
                    "{flag} is used by --schedule {} only; the run being resumed has --schedule \
                     {}, which takes no {flag} (and a resumed run keeps its schedule): leave it \
                     out",
                    names.join(" or "),
                    schedule.flag_text()
                );
            }
            bail!(
                "{flag} is used by --schedule {} only; --schedule {} would ignore it \
                 (give it with --schedule {}, or leave it out)",
                names.join(" or "),
                schedule.flag_text(),
                names.join(" or ")
            );
        }
    }
    // OneCycleLR warms up by itself (its first 30% of steps rise from lr / 25 to lr) and is not
    // chainable: PyTorch's ChainedScheduler([LinearLR, OneCycleLR]) steps to OneCycleLR's rates
    // alone, so a warm-up multiplied into it would be no PyTorch schedule. (Runs saved before
    // this check are resumed as they are.)
    if !resumed && schedule == ScheduleKind::Onecycle && config.warmup_epochs > 0 {
        bail!(
            "--warmup-epochs {} with --schedule onecycle: OneCycleLR warms up by itself (the \
             rate rises from lr / 25 to lr over the first 30% of the steps) and, as PyTorch \
             says, is not chainable (ChainedScheduler([LinearLR, OneCycleLR]) gives \
             OneCycleLR's rates alone): leave --warmup-epochs out",
            config.warmup_epochs
        );
    }
    // ReduceLROnPlateau steps with a metric, which ChainedScheduler's step() does not pass on
    // (PyTorch cannot chain it), and its factor must be below 1.
    if !resumed && schedule == Plateau && config.warmup_epochs > 0 {
        bail!(
            "--warmup-epochs {} with --schedule plateau: ReduceLROnPlateau steps with the test \
             loss and, as PyTorch says, is not chainable with a warm-up; leave --warmup-epochs \
             out",
            config.warmup_epochs
        );
    }
    // CosineAnnealingWarmRestarts computes each rate from the initial one (closed form): in
    // PyTorch's ChainedScheduler([LinearLR, CosineAnnealingWarmRestarts]), the order the
    // warm-up is chained in here, its rates overwrite the warm-up's from the first epoch on.
    if !resumed && schedule == CosineWarmRestarts && config.warmup_epochs > 0 {
        bail!(
            "--warmup-epochs {} with --schedule cosine-warm-restarts: CosineAnnealingWarmRestarts \
             computes each rate from the initial one, so a warm-up chained before it is lost \
             (PyTorch's ChainedScheduler([LinearLR, CosineAnnealingWarmRestarts]) gives its \
             rates alone, from the first epoch): leave --warmup-epochs out",
            config.warmup_epochs
        );
    }
    // Its first period has no default in PyTorch (T_0 is required).
    if !resumed && schedule == CosineWarmRestarts && args.t_0.is_none() {
        bail!(
            "--schedule cosine-warm-restarts needs --t-0 (the epochs of its first period, as \
             CosineAnnealingWarmRestarts(T_0) takes it: --t-0 10 --t-mult 2 restarts the rate \
             after epochs 10, 30, 70, ...)"
        );
    }
    // `ExponentialLR` has no default factor (the recipes' 0.1 a decay, not a factor per epoch).
    if !resumed && schedule == Exponential && args.gamma.is_none() {
        bail!(
            "--schedule exponential needs --gamma (the rate's factor per epoch, as \
             ExponentialLR(gamma) takes it: 0.95 takes the rate to a third in about 21 epochs)"
        );
    }
    if !resumed && schedule == Multistep && milestones.is_empty() {
        bail!(
            "--schedule multistep needs --milestones (epochs at which the rate is multiplied by \
             --gamma); without them the rate stays constant (--schedule constant)"
        );
    }
    Ok(())
}

/// `runs/<program>-<UTC timestamp>`, or with `-2`, `-3`... after it when a run started in the
/// same second already has that directory; with the folders above it made for it (`runs/`
/// where there was none), innermost first.
pub fn default_out(program: &str) -> (PathBuf, Vec<PathBuf>) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = PathBuf::from("runs").join(format!("{program}-{}", utc_timestamp(secs)));
    let missing = missing_parents(&base);
    let path = free_dir(&base);
    let made = missing.into_iter().filter(|p| p.is_dir()).collect();
    (path, made)
}

/// The folders above `path` that do not exist, innermost first (none above a relative path's
/// first component: the current directory).
pub(crate) fn missing_parents(path: &Path) -> Vec<PathBuf> {
    path.ancestors()
        .skip(1)
        .take_while(|p| !p.as_os_str().is_empty() && std::fs::symlink_metadata(p).is_err())
        .map(Path::to_path_buf)
        .collect()
}

/// `base`, or the first of `base-2`, `base-3`... that does not exist yet, created here so that
/// runs started together each get their own (a directory that cannot be created is returned
/// as it is, for [`RunDir::fresh`] to report).
fn free_dir(base: &Path) -> PathBuf {
    if !crate::distributed::writes() {
        // Data-parallel ranks other than 0 write nothing there.
        return base.to_path_buf();
    }
    if let Some(parent) = base.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let mut n = 1;
    loop {
        let path = match n {
            1 => base.to_path_buf(),
            n => {
                let mut name = base.as_os_str().to_os_string();
                name.push(format!("-{n}"));
                PathBuf::from(name)
            }
        };
        match std::fs::create_dir(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            _ => return path,
        }
    }
}

/// `YYYYmmdd-HHMMSS` for seconds since the Unix epoch (UTC; civil-from-days by H. Hinnant).
fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Class names the pictures cannot draw are said once, the first named; others say nothing.
    #[test]
    fn class_names_drawn_as_boxes_are_said() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            boxes_in_pictures(&names(&["cat", "chien", "Ελιά", "ёж"])),
            None
        );
        let one = boxes_in_pictures(&names(&["cat", "猫猫 x"])).expect("a note");
        assert!(
            one.contains("the class name \"猫猫 x\" has characters") && one.contains("(猫)"),
            "{one}"
        );
        let more = boxes_in_pictures(&names(&["犬", "cat", "ねこ", "고양이"])).expect("a note");
        assert!(
            more.contains("the class names \"犬\" and 2 more have") && more.contains("(犬)"),
            "{more}"
        );
    }

    /// Image files in no class folder are found where no class reads them: in the root beside
    /// the class folders or the split, and in the split's folders beside their classes; not
    /// in a class, not hidden, not other files, not in a third split's folder.
    #[test]
    fn loose_images_are_those_in_no_class_folder() -> Result<()> {
        let root = tempfile::tempdir()?;
        let put = |rel: &str| -> Result<()> {
            let path = root.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent"))?;
            std::fs::write(path, b"x")?;
            Ok(())
        };
        for rel in [
            "cat/0.jpg",
            "dog/0.PNG",
            "stray.JPG",
            ".hidden.jpg",
            "notes.txt",
        ] {
            put(rel)?;
        }
        let names = |root: &Path| -> Vec<String> {
            loose_images(root)
                .iter()
                .map(|p| p.strip_prefix(root).expect("inside").display().to_string())
                .collect()
        };
        assert_eq!(names(root.path()), ["stray.JPG"]);
        // A class folder named test/ is a class where no train/ stands beside it.
        put("test/loose.png")?;
        assert_eq!(names(root.path()), ["stray.JPG"]);
        for rel in [
            "train/cat/1.jpg",
            "train/a.bmp",
            "val/b.webp",
            "test/cat/2.jpg",
        ] {
            put(rel)?;
        }
        // test/ is the test split (val/ beside it a third split, left alone).
        assert_eq!(
            names(root.path()),
            ["stray.JPG", "test/loose.png", "train/a.bmp"]
        );
        // Hidden folders where classes are (not below them, not hidden files).
        for rel in [
            ".ipynb_checkpoints/x.png",
            "train/.git/y.jpg",
            "test/cat/.z/w.jpg",
        ] {
            put(rel)?;
        }
        let hidden = |root: &Path| -> Vec<String> {
            hidden_class_folders(root)
                .iter()
                .map(|p| p.strip_prefix(root).expect("inside").display().to_string())
                .collect()
        };
        // With the split there, ROOT's own hidden folder is none of ImageFolder(train/)'s.
        assert_eq!(hidden(root.path()), ["train/.git"]);
        let flat = tempfile::tempdir()?;
        for rel in ["cat/0.jpg", ".ipynb_checkpoints/x.png", ".notes.txt"] {
            let path = flat.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent"))?;
            std::fs::write(path, b"x")?;
        }
        assert_eq!(hidden(flat.path()), [".ipynb_checkpoints"]);
        Ok(())
    }

    #[test]
    fn an_out_inside_the_data_dir_is_seen_through_dots_and_links() -> Result<()> {
        let root = tempfile::tempdir()?;
        let data = root.path().join("photos");
        std::fs::create_dir_all(data.join("cats"))?;
        std::fs::create_dir(root.path().join("other"))?;
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&data, &link)?;
        for out in [
            data.join("run"),
            data.join("new/deeper/run"),
            data.join("cats"),
            data.clone(),
            root.path().join("other/../photos/run"),
            data.join("new/../run"),
            data.join("new/.."),
            link.join("run"),
        ] {
            assert!(inside(&out, &data), "{}", out.display());
        }
        for out in [
            root.path().join("photos-run"),
            root.path().join("run"),
            root.path().to_path_buf(),
            data.join(".runs/x"),
            data.join("new/../../run"),
        ] {
            assert!(!inside(&out, &data), "{}", out.display());
        }
        // A data set given as a file (an archive) has no inside.
        let archive = root.path().join("data.tar.gz");
        std::fs::write(&archive, b"")?;
        assert!(!inside(&root.path().join("data.tar.gz/run"), &archive));

        // Which folder an image-folder run reads classes from: the data directory when they
        // stand in it, else train/ and test/; other data sets read none.
        let mut config = RunConfig::new("finetune-resnet50", DatasetKind::Folder, "resnet50");
        config.data_dir = Some(data.clone());
        assert_eq!(
            inside_the_classes(&data.join("run"), &config),
            Some(data.clone())
        );
        std::fs::create_dir_all(data.join("train/cats"))?;
        std::fs::create_dir_all(data.join("test/cats"))?;
        assert_eq!(inside_the_classes(&data.join("run"), &config), None);
        assert_eq!(
            inside_the_classes(&data.join("train/run"), &config),
            Some(data.join("train"))
        );
        config.dataset = DatasetKind::Cifar10;
        assert_eq!(inside_the_classes(&data.join("train/run"), &config), None);
        Ok(())
    }
    use crate::config::{
        DataPlacement, DatasetKind, MemoryFormat, Precision, ScheduleKind, ADAM_BETAS,
    };

    /// A `--data-dir` that is not UTF-8 is refused naming the flag (the run keeps it as text;
    /// serde said only "path contains invalid UTF-8 characters").
    #[cfg(unix)]
    #[test]
    fn a_data_dir_that_is_not_utf8_is_refused_naming_the_flag() -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let dir = std::ffi::OsStr::from_bytes(b"bad\xffdir");
        let args = RECIPE.parse([std::ffi::OsStr::new("prog"), "--data-dir".as_ref(), dir])?;
        let err = format!(
            "{:#}",
            RECIPE.config(&args).and_then(|c| c.validate()).unwrap_err()
        );
        assert!(err.contains("--data-dir") && err.contains("UTF-8"), "{err}");
        Ok(())
    }

    /// A `--device` typo (or CUDA in a build without it) is refused with the other flags, before
    /// the run's folder is made or any data is read (here a data folder that does not exist).
    #[test]
    fn a_bad_device_is_refused_before_the_data_is_read() -> Result<()> {
        let out = std::env::temp_dir().join(format!("cnn-bad-device-{}", std::process::id()));
        let mut devices = vec!["gpu", "cuda:x"];
        if !cfg!(feature = "cuda") {
            devices.push("cuda");
        }
        for device in devices {
            let args = RECIPE.parse([
                "prog",
                "--device",
                device,
                "--data-dir",
                "/nonexistent/cnn-data",
                "--out",
                out.to_str().unwrap_or("cnn-bad-device"),
            ])?;
            let err = format!("{:#}", RECIPE.run(&args).err().context("a run started")?);
            assert!(err.contains(&format!("--device {device}")), "{err}");
            assert!(!out.exists(), "{device}: the run's folder was made");
        }
        Ok(())
    }

    /// `--nesterov` is refused with Adam and without momentum, naming the flags.
    #[test]
    fn nesterov_needs_sgd_with_momentum() -> Result<()> {
        for (argv, expected) in [
            (&["prog", "--optimizer", "adam", "--nesterov"][..], "Adam"),
            (
                &[
                    "prog",
                    "--optimizer",
                    "sgd",
                    "--nesterov",
                    "--momentum",
                    "0",
                ][..],
                "--momentum",
            ),
        ] {
            let err = format!("{:#}", RECIPE.config(&RECIPE.parse(argv)?).unwrap_err());
            assert!(
                err.contains("--nesterov") && err.contains(expected),
                "{err}"
            );
        }
        let sgd = RECIPE.parse(["prog", "--optimizer", "sgd", "--nesterov"])?;
        assert!(RECIPE.config(&sgd)?.nesterov);
        Ok(())
    }

    /// Two runs started in the same second get directories of their own.
    #[test]
    fn default_directories_do_not_collide() -> Result<()> {
        let root = tempfile::tempdir()?;
        let base = root.path().join("runs/train-mnist-20261202-060330");
        assert_eq!(free_dir(&base), base);
        assert!(base.is_dir());
        let second = root.path().join("runs/train-mnist-20261202-060330-2");
        assert_eq!(free_dir(&base), second);
        assert!(second.is_dir());
        assert_eq!(
            free_dir(&base),
            root.path().join("runs/train-mnist-20261202-060330-3")
        );
        Ok(())
    }

    const RECIPE: Recipe = Recipe {
        program: "train-test",
        about: "test",
        dataset: DatasetKind::Mnist,
        models: &["lenet5", "cnn-mnist"],
        model: "cnn-mnist",
        optimizer: OptimizerKind::Adam,
        lr: 1e-3,
        momentum: 0.9,
        weight_decay: 0.0,
        schedule: ScheduleKind::Constant,
        milestones: &[],
        step_size: crate::flags::DEFAULT_STEP_SIZE,
        gamma: 0.1,
        epochs: 16,
        batch_size: 64,
        test_batch_size: 1000,
        train_transform: "mnist-train",
        test_transform: "mnist-test",
    };

    /// A scheduler's own flags with another schedule are refused, not ignored, naming the
    /// flag and the schedule that uses it; the recipe's default schedule counts too.
    #[test]
    fn schedule_flags_need_their_schedule() -> Result<()> {
        let config = |argv: &[&str]| -> Result<std::result::Result<RunConfig, String>> {
            let args = RECIPE.parse(["prog"].iter().chain(argv))?;
            Ok(RECIPE.config(&args).map_err(|e| e.to_string()))
        };
        for (argv, used_by) in [
            (&["--milestones", "3"][..], "multistep"),
            (&["--schedule", "step", "--milestones", "3"], "multistep"),
            (&["--schedule", "multistep", "--step-size", "3"], "step"),
            (
                &["--schedule", "cosine", "--gamma", "0.5"],
                "multistep or step or exponential or plateau",
            ),
            (
                &["--schedule", "onecycle", "--gamma", "0.5"],
                "multistep or step or exponential or plateau",
            ),
            (&["--step-size", "2"], "step"),
            (&["--schedule", "cosine", "--patience", "2"], "plateau"),
            (
                &["--schedule", "cosine", "--t-0", "2"],
                "cosine-warm-restarts",
            ),
            (
                &["--schedule", "plateau", "--t-mult", "2"],
                "cosine-warm-restarts",
            ),
        ] {
            let err = config(argv)?.expect_err(&format!("{argv:?}"));
            let flag = argv[argv.len() - 2];
            assert!(
                err.starts_with(&format!("{flag} is used by --schedule {used_by} only")),
                "{argv:?}: {err}"
            );
            assert!(err.contains("would ignore it"), "{argv:?}: {err}");
        }
        let step = config(&["--schedule", "step", "--step-size", "3", "--gamma", "0.5"])?
            .map_err(anyhow::Error::msg)?;
        assert_eq!((step.step_size, step.gamma), (3, 0.5));
        // ExponentialLR takes --gamma, and needs it (there is no default factor per epoch).
        let exponential = config(&["--schedule", "exponential", "--gamma", "0.5"])?
            .map_err(anyhow::Error::msg)?;
        let rates = exponential.schedule(10).schedule;
        assert_eq!(
            [rates.lr(0), rates.lr(2)],
            [exponential.lr, exponential.lr * 0.25]
        );
        let err = config(&["--schedule", "exponential"])?.expect_err("no gamma");
        assert!(
            err.contains("--schedule exponential needs --gamma"),
            "{err}"
        );
        // ReduceLROnPlateau: --gamma its factor (below 1), --patience; no warm-up.
        let plateau = config(&["--schedule", "plateau", "--gamma", "0.5", "--patience", "1"])?
            .map_err(anyhow::Error::msg)?;
        let record = |test_loss| crate::history::EpochRecord {
            test_loss,
            ..Default::default()
        };
        let losses = [1.0, 0.8, 0.9, 0.85, 0.7, 0.75, 0.75].map(record);
        // Better, better, bad, bad (the rate halves: patience 1), better, bad, bad (halves).
        let rates: Vec<f64> = (0..=losses.len())
            .map(|e| Ok(plateau.schedule_after(10, &losses[..e])?.schedule.lr(0)))
            .collect::<Result<_>>()?;
        let lr = plateau.lr;
        assert_eq!(
            rates,
            [lr, lr, lr, lr, lr / 2.0, lr / 2.0, lr / 2.0, lr / 4.0],
            "{rates:?}"
        );
        // CosineAnnealingWarmRestarts(T_0, T_mult), per epoch: restarts after epochs 2, 6, 14.
        let sgdr = config(&[
            "--schedule",
            "cosine-warm-restarts",
            "--t-0",
            "2",
            "--t-mult",
            "2",
        ])?
        .map_err(anyhow::Error::msg)?;
        let scheduled = sgdr.schedule(10);
        assert_eq!(scheduled.stepping, optim::lr_scheduler::Stepping::PerEpoch);
        let rates: Vec<f64> = (0..15).map(|e| scheduled.schedule.lr(e)).collect();
        let lr = sgdr.lr;
        for restart in [0, 2, 6, 14] {
            assert_eq!(rates[restart], lr, "{rates:?}");
        }
        assert_eq!(rates[1], lr / 2.0, "{rates:?}");
        assert!(
            rates[3] < lr && rates[4] < rates[3] && rates[5] < rates[4],
            "{rates:?}"
        );
        let periods_of_3 = config(&["--schedule", "cosine-warm-restarts", "--t-0", "3"])?
            .map_err(anyhow::Error::msg)?;
        assert_eq!(periods_of_3.t_mult, 1);
        assert_eq!(periods_of_3.schedule(10).schedule.lr(6), lr);
        for (argv, words) in [
            (
                &["--schedule", "cosine-warm-restarts"][..],
                "--schedule cosine-warm-restarts needs --t-0",
            ),
            (
                &["--schedule", "cosine-warm-restarts", "--t-0", "0"],
                "--t-0 must lie in [1,",
            ),
            (
                &[
                    "--schedule",
                    "cosine-warm-restarts",
                    "--t-0",
                    "2",
                    "--t-mult",
                    "0",
                ],
                "--t-mult must lie in [1,",
            ),
            (
                &[
                    "--schedule",
                    "cosine-warm-restarts",
                    "--t-0",
                    "2",
                    "--warmup-epochs",
                    "1",
                ],
                "--warmup-epochs 1 with --schedule cosine-warm-restarts",
            ),
            (
                &["--schedule", "plateau", "--gamma", "1.5"][..],
                "--schedule plateau with --gamma 1.5: ReduceLROnPlateau's factor must be \
                 below 1",
            ),
            (
                &["--schedule", "plateau", "--warmup-epochs", "2"],
                "--warmup-epochs 2 with --schedule plateau",
            ),
        ] {
            let err = config(argv)?.expect_err("refused");
            assert!(err.contains(words), "{argv:?}: {err}");
        }
        let multistep_argv = [
            "--schedule",
            "multistep",
            "--milestones",
            "2,4",
            "--gamma",
            "0.2",
        ];
        let multistep = config(&multistep_argv)?.map_err(anyhow::Error::msg)?;
        assert_eq!(
            (multistep.milestones.as_slice(), multistep.gamma),
            (&[2, 4][..], 0.2)
        );
        // The recipe's own milestones and gamma are not flags given: any schedule takes them.
        assert!(config(&["--schedule", "cosine"])?.is_ok());
        // Multistep without milestones (this recipe has none) is refused, naming the flag.
        for argv in [
            &["--schedule", "multistep"][..],
            &["--schedule", "multistep", "--gamma", "0.5"],
        ] {
            let err = config(argv)?.expect_err("no milestones");
            assert!(err.contains("needs --milestones"), "{err}");
        }
        // OneCycleLR takes no warm-up (it has its own, and is not chainable); others do.
        let err = config(&["--schedule", "onecycle", "--warmup-epochs", "2"])?
            .expect_err("warm-up with onecycle");
        assert!(
            err.starts_with("--warmup-epochs 2 with --schedule onecycle"),
            "{err}"
        );
        assert!(config(&["--schedule", "onecycle"])?.is_ok());
        assert!(config(&["--schedule", "cosine", "--warmup-epochs", "2"])?.is_ok());
        // Values the schedule would use are still checked.
        for (argv, flag) in [
            (
                &["--schedule", "step", "--step-size", "0"][..],
                "--step-size",
            ),
            (
                &[
                    "--schedule",
                    "multistep",
                    "--milestones",
                    "2",
                    "--gamma",
                    "0",
                ],
                "--gamma",
            ),
            (&["--schedule", "step", "--gamma=-1"], "--gamma"),
        ] {
            let err = config(argv)?.expect_err(&format!("{argv:?}"));
            assert!(err.starts_with(&format!("{flag} must")), "{argv:?}: {err}");
        }
        // On resume, a flag the run's schedule does not take says so (not "differs from the
        // saved value"); the run's own schedule flags, repeated, are taken.
        let resumed = |saved: &RunConfig, argv: &[&str]| -> Result<Result<RunConfig, String>> {
            let args = RECIPE.parse(["prog", "--resume", "x"].iter().chain(argv))?;
            Ok(resumed_config(saved, &args).map_err(|e| e.to_string()))
        };
        let cosine = config(&["--schedule", "cosine"])?.map_err(anyhow::Error::msg)?;
        for argv in [
            &["--milestones", "5"][..],
            &["--gamma", "0.5"],
            &["--schedule", "cosine", "--step-size", "3"],
        ] {
            let err = resumed(&cosine, argv)?.expect_err(&format!("{argv:?}"));
            assert!(
                err.contains("the run being resumed has --schedule cosine, which takes no"),
                "{argv:?}: {err}"
            );
        }
        assert_eq!(
            resumed(&multistep, &multistep_argv)?.map_err(anyhow::Error::msg)?,
            multistep
        );
        // A multistep run saved without milestones (before they were required) resumes.
        let old = RunConfig {
            milestones: Vec::new(),
            ..multistep.clone()
        };
        assert!(resumed(&old, &["--epochs", "9"])?.is_ok());
        // Another schedule is refused as a changed value.
        let err = resumed(&cosine, &["--schedule", "step", "--gamma", "0.5"])?.unwrap_err();
        assert!(
            err.contains("--schedule step (the run has cosine)"),
            "{err}"
        );
        Ok(())
    }

    /// The ranks of a data-parallel job compare their settings by flag: those that may differ
    /// from rank to rank are left out, and a difference names the flag and both values.
    #[test]
    fn ranks_compare_their_settings_by_flag() -> Result<()> {
        use crate::distributed::{differences, run_settings};
        let config = |argv: &[&str]| -> Result<RunConfig> {
            RECIPE.config(&RECIPE.parse(["prog"].iter().chain(argv))?)
        };
        let first = run_settings(&config(&["--workers", "1", "--device", "cpu"])?, 0)?;
        let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
        for name in [
            "--lr",
            "--batch-size",
            "--test-batch-size",
            "--sync-bn",
            "--seed",
        ] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        for name in [
            "--data-dir",
            "--device",
            "--workers",
            "--data-placement",
            "--memory-format",
            "--weights",
        ] {
            assert!(!names.contains(&name), "{name} in {names:?}");
        }
        // Only per-rank settings differ: nothing to say. (A fine-tuning run's settings, kept
        // in `program_settings`, are compared by name, its `weights` left out.)
        let mut per_rank = config(&["--workers", "2", "--device", "auto"])?;
        per_rank.data_placement = crate::config::DataPlacement::Host;
        let mut fine_tuning = |weights: &str| -> Result<_> {
            per_rank.program_settings =
                Some(serde_json::json!({"weights": weights, "unfreeze": "none"}));
            run_settings(&per_rank, 0)
        };
        let (mut a, b) = (fine_tuning("a.safetensors")?, fine_tuning("b.safetensors")?);
        assert!(differences(&a, &b).is_empty());
        assert!(a.iter().any(|(n, v)| n == "--unfreeze" && v == "\"none\""));
        a.retain(|(n, _)| n != "--unfreeze");
        assert!(differences(&a, &first).is_empty(), "{a:?}");
        let here = run_settings(&config(&["--lr", "0.5", "--test-batch-size", "7"])?, 2)?;
        assert_eq!(
            differences(&here, &first),
            [
                "--lr 0.5 here, 0.001 on rank 0",
                "--test-batch-size 7 here, 1000 on rank 0",
                "the epochs done (--resume) 2 here, 0 on rank 0"
            ]
        );
        Ok(())
    }

    /// `--workers 0`, PyTorch's habit for loading in the training process, is refused saying
    /// what the flag counts and what comes closest.
    #[test]
    fn workers_0_says_what_comes_closest() -> Result<()> {
        let err = RECIPE
            .config(&RECIPE.parse(["prog", "--workers", "0"])?)
            .and_then(|c| c.validate())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--workers must lie in [1, ") && err.contains("closest to --workers 1"),
            "{err}"
        );
        Ok(())
    }

    /// A rate or decay beyond float32's range (infinite in the float32 update) is refused
    /// before training, as infinity is; PyTorch's names `--wd` and `--num-workers` are taken.
    #[test]
    fn float32_infinite_rates_are_refused_and_pytorch_names_taken() -> Result<()> {
        let refused = |argv: &[&str]| -> Result<String> {
            Ok(RECIPE
                .config(&RECIPE.parse(["prog"].iter().chain(argv))?)
                .and_then(|c| c.validate())
                .unwrap_err()
                .to_string())
        };
        for (flag, value) in [
            ("--lr", "1e39"),
            ("--weight-decay", "inf"),
            ("--momentum", "3.5e38"),
        ] {
            let err = refused(&["--optimizer", "sgd", flag, value])?;
            assert!(
                err.starts_with(&format!(
                    "{flag} must be a finite number >= 0 (at most 3.4028235e38"
                )),
                "{err}"
            );
        }
        let config = RECIPE.config(&RECIPE.parse(["prog", "--lr", "3e38", "--wd", "0.25"])?)?;
        config.validate()?;
        assert_eq!((config.lr, config.weight_decay), (3e38, 0.25));
        let config = RECIPE.config(&RECIPE.parse(["prog", "--num-workers", "3"])?)?;
        assert_eq!(config.workers, 3);
        Ok(())
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(0), "19700101-000000");
        assert_eq!(utc_timestamp(951_782_400 + 3_723), "20000229-010203");
        assert_eq!(utc_timestamp(1_767_225_599), "20251231-235959");
    }

    #[test]
    fn defaults_flags_and_resume_rules() -> Result<()> {
        let args = RECIPE.parse([
            "prog",
            "--epochs",
            "2",
            "--schedule",
            "multistep",
            "--milestones",
            "3,5",
            "--lr",
            "0.5",
        ])?;
        let config = RECIPE.config(&args)?;
        assert_eq!(config.epochs, 2);
        assert_eq!(config.batch_size, 64);
        assert_eq!(config.milestones, [3, 5]);
        assert_eq!(config.lr, 0.5);
        assert_eq!(config.optimizer, OptimizerKind::Adam);
        let bad = RECIPE.parse(["prog", "--model", "resnet18-seed"])?;
        assert!(RECIPE.config(&bad).is_err());
        assert!(RECIPE.parse(["prog", "--schedule", "nope"]).is_err());

        let resume = RECIPE.parse(["prog", "--resume", "x", "--epochs", "4"])?;
        assert_eq!(resumed_config(&config, &resume)?.epochs, 4);
        assert_eq!(config.precision, Precision::F32);
        assert_eq!(config.data_placement, DataPlacement::Auto);
        let bf16 = RECIPE.parse(["prog", "--precision", "bf16", "--data-placement", "host"])?;
        let bf16 = RECIPE.config(&bf16)?;
        assert_eq!(bf16.precision.autocast(), Some(candle_core::DType::BF16));
        assert_eq!(bf16.data_placement, DataPlacement::Host);
        let tf32 = RECIPE.config(&RECIPE.parse(["prog", "--precision", "tf32"])?)?;
        assert_eq!(tf32.precision, Precision::Tf32);
        assert_eq!(tf32.precision.autocast(), None);
        assert!(RECIPE.parse(["prog", "--precision", "fp8"]).is_err());
        let moved = RECIPE.parse(["prog", "--resume", "x", "--data-placement", "device"])?;
        assert_eq!(
            resumed_config(&config, &moved)?.data_placement,
            DataPlacement::Device
        );
        let cast = RECIPE.parse(["prog", "--resume", "x", "--precision", "bf16"])?;
        assert!(resumed_config(&config, &cast).is_err());
        // PyTorch's names for the memory formats; a resumed run may change it (its speed; with
        // cuDNN its sums too, which the resume says).
        assert_eq!(config.memory_format, MemoryFormat::Contiguous);
        for name in ["channels_last", "channels-last"] {
            let cl = RECIPE.config(&RECIPE.parse(["prog", "--memory-format", name])?)?;
            assert_eq!(cl.memory_format, MemoryFormat::ChannelsLast);
            let json = serde_json::to_string(&cl)?;
            assert!(
                json.contains(r#""memory_format":"channels_last""#),
                "{json}"
            );
        }
        assert!(RECIPE.parse(["prog", "--memory-format", "nhwc"]).is_err());
        let cl = RECIPE.parse(["prog", "--resume", "x", "--memory-format", "channels_last"])?;
        assert_eq!(
            resumed_config(&config, &cl)?.memory_format,
            MemoryFormat::ChannelsLast
        );
        let betas = RECIPE.config(&RECIPE.parse(["prog", "--betas", "0.8,0.99"])?)?;
        assert_eq!(betas.betas, Some((0.8, 0.99)));
        assert_eq!(config.adam_betas(), ADAM_BETAS);
        for bad in [
            &["prog", "--momentum", "0.5"][..],
            &["prog", "--betas", "0.9"],
            &["prog", "--betas", "0.9,1.5"],
            &["prog", "--optimizer", "sgd", "--betas", "0.9,0.99"],
        ] {
            assert!(RECIPE.config(&RECIPE.parse(bad)?).is_err(), "{bad:?}");
        }
        let same = RECIPE.parse(["prog", "--resume", "x", "--betas", "0.9,0.999"])?;
        assert!(resumed_config(&config, &same).is_ok());
        let refused = RECIPE.parse(["prog", "--resume", "x", "--lr", "0.1"])?;
        let err = resumed_config(&config, &refused)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("--lr")));
        Ok(())
    }

    /// The "add a flag" recipe: every row of the `flags` table is a flag with its help and
    /// (where it has one) its default in `--help`, and `--resume` applies the changeable ones
    /// and refuses any other value of the fixed ones, naming the flag.
    #[test]
    fn each_flag_of_the_table_has_help_a_default_and_a_resume_rule() -> Result<()> {
        const VALUES: [&str; 13] = [
            "2",
            "7",
            "0.5",
            "0.25",
            "sgd",
            "adamw",
            "cosine",
            "bf16",
            "host",
            "4,6",
            "0.8,0.99",
            "channels_last",
            "other",
        ];
        let command = RECIPE.command();
        let saved = RECIPE.config(&RECIPE.parse([
            "prog",
            "--data-dir",
            "d",
            "--schedule",
            "multistep",
            "--milestones",
            "3,5",
            "--limit-train",
            "100",
            "--limit-test",
            "50",
            "--workers",
            "3",
        ])?)?;
        for row in crate::flags::table() {
            let flag = row.flag();
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == row.field)
                .unwrap_or_else(|| panic!("{flag} is no flag"));
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.len() > 10, "{flag}: {help}");
            let defaults = help.matches("[default: ").count();
            assert!(
                defaults <= 1 && (defaults == 1 || !row.default_in_help),
                "{flag}: {help}"
            );
            let resumed = |value: Option<&str>| -> Result<Result<RunConfig, String>> {
                let mut argv = vec!["prog", "--resume", "x", &flag];
                argv.extend(value);
                Ok(resumed_config(&saved, &RECIPE.parse(argv)?).map_err(|e| e.to_string()))
            };
            let takes_value = arg.get_action().takes_values();
            let same = (row.value)(&saved);
            if takes_value {
                assert_eq!(resumed(Some(&same))?, Ok(saved.clone()), "{flag} {same}");
            }
            let others: Vec<Option<&str>> = if takes_value {
                VALUES
                    .iter()
                    .filter(|v| **v != same)
                    .map(|v| Some(*v))
                    .collect()
            } else {
                vec![None]
            };
            let mut tried = 0;
            for value in others {
                let Ok(outcome) = resumed(value) else {
                    continue; // not a value of this flag
                };
                tried += 1;
                if row.changeable {
                    let config = outcome.map_err(anyhow::Error::msg)?;
                    let shown = (row.value)(&config);
                    if flag == "--data-dir" {
                        // Saved absolute, from any directory.
                        let given = value.map(std::path::absolute).transpose()?;
                        assert_eq!(Some(PathBuf::from(shown)), given, "{flag}");
                    } else {
                        assert_eq!(Some(shown.as_str()), value, "{flag}");
                    }
                } else {
                    let err = outcome.expect_err(&flag);
                    assert!(err.contains(&format!("{flag} ")), "{flag}: {err}");
                }
            }
            assert!(tried > 0, "{flag}: no value tried");
        }
        Ok(())
    }

    /// A fresh run's image folder whose held-out share leaves a class without training or
    /// test images is refused, naming the class and its number of images; with every class in
    /// both splits it passes.
    #[test]
    fn a_class_outside_a_split_is_refused_for_a_fresh_run() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let image = |class: &str, k: usize| -> Result<()> {
            let path = dir.path().join(class).join(format!("{k}.png"));
            std::fs::create_dir_all(path.parent().unwrap())?;
            image::RgbImage::from_pixel(4, 4, image::Rgb([k as u8 * 40, 1, 2])).save(path)?;
            Ok(())
        };
        for class in ["b", "c"] {
            for k in 0..4 {
                image(class, k)?;
            }
        }
        image("a", 0)?;
        let mut config = RECIPE.config(&RECIPE.parse(["prog", "--data-dir", "d"])?)?;
        config.dataset = DatasetKind::Folder;
        config.data_dir = Some(dir.path().to_path_buf());
        let refused = |config: &RunConfig| -> Result<String> {
            let split = datasets::image_folder(dir.path(), &folder_options(config))?;
            Ok(refuse_a_class_outside_a_split(config, &split)
                .map_or_else(|e| format!("{e:#}"), |()| String::new()))
        };
        config.test_fraction = 0.5;
        let err = refused(&config)?;
        assert!(
            err.contains(
                "holding out 50% of each class (rounded, --test-fraction 0.5) leaves no \
                 training image of \"a\" (1 image)"
            ),
            "{err}"
        );
        config.test_fraction = 0.2;
        let err = refused(&config)?;
        assert!(
            err.contains("leaves no test image of \"a\" (1 image): give it 3 or more images"),
            "{err}"
        );
        // The whole split is checked, whatever subset --limit-* draws from it afterwards.
        config.limit_train = Some(5);
        let mut seen = 0;
        let err = load_data_then(&config, |whole| {
            seen = whole.train.len();
            refuse_a_class_outside_a_split(&config, whole)
        })
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("leaves no test image of \"a\" (1 image)"),
            "{err}"
        );
        assert!(
            seen > 5,
            "the check saw {seen} training images, not the whole split"
        );
        config.limit_train = None;
        image("a", 1)?;
        config.test_fraction = 0.25;
        assert_eq!(refused(&config)?, "");
        Ok(())
    }

    #[test]
    fn help_shows_the_recipe_defaults() {
        let help = RECIPE.command().render_help().to_string();
        assert!(help.starts_with("test\n"), "{help}");
        assert!(help.contains("[default: 1000]"), "{help}");
        assert!(help.contains("lenet5|cnn-mnist"), "{help}");
        assert!(
            help.contains("comma separated (--schedule multistep) [default: none]"),
            "{help}"
        );
        let version = RECIPE.command().render_version();
        assert_eq!(
            version.trim(),
            format!("train-test {}", env!("CARGO_PKG_VERSION"))
        );
        // Any zoo model: those made for the data first, then the others of its channels.
        let any = Recipe {
            dataset: DatasetKind::Cifar10,
            models: &[],
            ..RECIPE
        };
        let help = any.command().render_help().to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            help.contains("resnet18-seed, resnet18-cifar (made for 3x32x32)"),
            "{help}"
        );
        assert!(help.contains("other 3-channel models: alexnet,"), "{help}");
        assert!(!help.contains("lenet5"), "{help}");
        // --test-fraction is an image folder's, not offered for CIFAR-10 (nor MNIST).
        assert!(!help.contains("--test-fraction"), "{help}");
        let folder = Recipe {
            dataset: DatasetKind::Folder,
            ..any
        };
        let help = folder.command().render_help().to_string();
        assert!(help.contains("--test-fraction"), "{help}");
    }

    /// Any zoo model: a misspelt name, or one taking other images, is refused by the
    /// configuration, before any data is read, naming the models that fit.
    #[test]
    fn a_zoo_model_is_checked_before_the_data_is_read() -> Result<()> {
        let any = Recipe {
            dataset: DatasetKind::Cifar10,
            models: &[],
            ..RECIPE
        };
        let refused = |model: &str| -> Result<String> {
            let args = any.parse(["prog", "--model", model])?;
            Ok(format!("{:#}", any.config(&args).unwrap_err()))
        };
        let err = refused("resnet18_cifar")?;
        assert!(
            err.contains("no such model (did you mean resnet18-cifar?)"),
            "{err}"
        );
        assert!(err.contains("other 3-channel models: alexnet,"), "{err}");
        assert!(!err.contains("lenet5"), "{err}");
        let err = refused("google")?;
        assert!(err.contains("(did you mean googlenet?)"), "{err}");
        let err = refused("lenet5")?;
        assert!(
            err.contains(
                "--model lenet5: it takes 1-channel images, and train-test reads CIFAR-10"
            ),
            "{err}"
        );
        assert!(
            err.contains("(3-channel); it trains resnet18-seed, resnet18-cifar (made for"),
            "{err}"
        );
        assert!(!err.contains("cnn-mnist"), "{err}");
        assert!(any
            .config(&any.parse(["prog", "--model", "resnet18-cifar"])?)
            .is_ok());
        // The recipe's own list: as before, with the name it begins.
        let err = format!(
            "{:#}",
            RECIPE
                .config(&RECIPE.parse(["prog", "--model", "lenet"])?)
                .unwrap_err()
        );
        assert!(err.contains("(did you mean lenet5?)"), "{err}");
        Ok(())
    }
}
