//! A whole training run: build, check, (resume,) train and test each epoch, save everything.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::ModuleT;
use datasets::{Dataset, Loader, LoaderConfig, ResidentLoader, Split};
use layers::{Network, ParamStore};

use crate::config::{DataPlacement, MemoryFormat, Precision, RunConfig, ScheduleKind};
use crate::device::{device_name, parse_device};
use crate::engine::{evaluate, train_epoch, Pass, TrainStep};
use crate::history::{self, EpochRecord};
use crate::interrupt::Interrupted;
use crate::rundir::{BEST, CONFIG, CONFUSION, LAST, PREDICTIONS};
use crate::source::BatchSource;
use crate::state::{self, ResumeState, StateTensors};
use crate::tensorboard::EventWriter;
use crate::{atomic, pictures};
use optim::{NamedVar, Optimizer};

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Where everything was written.
    pub out: PathBuf,
    /// Every epoch, resumed ones included.
    pub history: Vec<EpochRecord>,
    /// The best test accuracy, in percent.
    pub best_acc: f64,
}

/// A prepared network and its data: what [`train`] needs beyond the configuration.
pub struct Trainee<'a> {
    /// What trains: `forward_t(inputs, train)` gives the logits.
    pub model: &'a dyn ModuleT,
    /// Every weight of the network; checkpoints save all of it.
    pub store: &'a ParamStore,
    /// The parameters the optimizer updates (a frozen backbone is left out).
    pub trainable: Vec<NamedVar>,
    /// Training batches.
    pub train: &'a dyn BatchSource,
    /// Test batches; their indices address `test_images`.
    pub test: &'a dyn BatchSource,
    /// The training images (after `--limit-train`; before `--drop-last` and any sharding): their
    /// count is what a resumed run must find again, their labels what the ranks of a
    /// data-parallel job must share.
    pub train_images: &'a dyn Dataset,
    /// The test images, for the predictions picture.
    pub test_images: &'a dyn Dataset,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// What is trained on what, for the log and the pictures.
    pub title: String,
    /// Where the model lives; batches are moved there.
    pub device: Device,
}

/// Trains the zoo model `config.model` on `data`, writing into `out`; with `resume`, continues
/// the saved run (loaded with [`state::load`]) to the same weights an uninterrupted run would reach.
///
/// # Errors
/// An unknown or unfitting model, a device that cannot be used, a resume state that does not match
/// the model, a non-finite loss or weight, or an output file that cannot be written.
pub fn run(
    config: &RunConfig,
    data: Split,
    out: &Path,
    resume: Option<(ResumeState, StateTensors)>,
) -> Result<Outcome> {
    config.validate()?;
    let device = parse_device(&crate::distributed::device_spec(&config.device))?;
    let classes = data.train.classes().to_vec();
    let store = ParamStore::new(config.seed, &device);
    let model = zoo::build(&config.model, classes.len(), store.vb())?;
    let inputs = check_transforms(config, &data)?;
    check_fits(
        model.as_ref(),
        &config.model,
        &inputs,
        classes.len(),
        &device,
    )?;
    let train_source = source(config, loader(config, &data.train, true)?, &device, "train")?;
    let test_source = source(config, loader(config, &data.test, false)?, &device, "test")?;
    // From here the batches take the memory.
    advise_on_out_of_memory(config, out, resume.is_some());
    check_last_batch(
        model.as_ref(),
        &store,
        config,
        train_source.num_samples(),
        &inputs,
        &device,
    )?;
    let trainee = Trainee {
        model: model.as_ref(),
        store: &store,
        trainable: store.trainable(),
        train: train_source.as_ref(),
        test: test_source.as_ref(),
        train_images: data.train.as_ref(),
        test_images: data.test.as_ref(),
        classes,
        title: title(config),
        device,
    };
    train(config, trainee, out, resume)
}

/// What a run's pictures are headed: the model and the data set (`cnn-mnist on MNIST`).
pub fn title(config: &RunConfig) -> String {
    format!("{} on {}", config.model, dataset_title(config))
}

/// Sets what running out of memory says (see [`crate::memory::ReportOutOfMemory`]) for a
/// training run of `config` writing to `out`, `resumed` or new: the batch sizes to lower, and
/// that the files saved stay.
pub fn advise_on_out_of_memory(config: &RunConfig, out: &Path, resumed: bool) {
    crate::memory::on_out_of_memory(format!(
        "A batch's activations take most of a step's memory: a smaller --batch-size (now {}) \
         or --test-batch-size (now {}) needs less{}. The files saved in {} before stay (an \
         --overwrite's old run is put back by the next run on it).",
        config.batch_size,
        config.test_batch_size,
        if resumed {
            " (a resumed run keeps its --batch-size, and a fine-tuning run that computes its \
             backbone's features once its --test-batch-size: a new run can take smaller ones)"
        } else {
            ""
        },
        out.display()
    ));
}

/// Trains `trainee` as `config` says (optimizer, schedule, epochs, seed), writing checkpoints,
/// resumable state, metrics and pictures into `out`; with `resume`, continues a saved run.
///
/// # Errors
/// As [`run`]: a state that does not fit, a non-finite loss or weight, or an output that cannot be
/// written.
pub fn train(
    config: &RunConfig,
    trainee: Trainee<'_>,
    out: &Path,
    mut resume: Option<(ResumeState, StateTensors)>,
) -> Result<Outcome> {
    config.validate()?;
    if let Some((saved, tensors)) = &resume {
        if let Some(done) = finished(config, saved, (&tensors.model, &trainee.title), out)? {
            return Ok(done);
        }
        if config.epochs != saved.config.epochs
            && matches!(
                config.schedule,
                ScheduleKind::Cosine | ScheduleKind::Onecycle
            )
        {
            crate::warn!(
                "--epochs {} (the run was set for {}): --schedule {} spans the whole run, so the \
                 rest of it follows the new length; the result is that of neither an \
                 uninterrupted {}-epoch run nor a {}-epoch one",
                config.epochs,
                saved.config.epochs,
                crate::flags::FlagText::flag_text(&config.schedule),
                saved.config.epochs,
                config.epochs
            );
        }
    }
    if let Some((saved, _)) = &resume {
        let world = crate::distributed::rank().map_or(1, |r| r.size);
        if let Some(was) = saved.world_size.filter(|&was| was != world) {
            if !crate::distributed::quiet() {
                crate::warn!(
                    "the run trained with {was} data-parallel process(es) and goes on with \
                     {world}: its global batch (processes x --batch-size {}) goes from {} to {}, \
                     so the rest of the run steps unlike an uninterrupted one would (resume \
                     with {was} to continue it exactly)",
                    config.batch_size,
                    was * config.batch_size,
                    world * config.batch_size
                );
            }
        }
    }
    if let Some((saved, _)) = &resume {
        let device = device_name(&trainee.device);
        let recorded = (saved.device.as_deref(), saved.threads);
        let cudnn = trainee.device.is_cuda() && cfg!(feature = "cudnn");
        let notes = [
            exactness_note(recorded, &device, rayon::current_num_threads()),
            layout_note(saved.config.memory_format, config.memory_format, cudnn),
        ];
        for note in notes.into_iter().flatten() {
            if !crate::distributed::quiet() {
                crate::warn!("{}", with_schedule_caveat(note, config.schedule));
            }
        }
    }
    advise_on_out_of_memory(config, out, resume.is_some());
    // Ctrl-C from here on stops after the batch (see `crate::interrupt`).
    let _training = crate::interrupt::training();
    let Trainee {
        model,
        store,
        trainable,
        train: train_loader,
        test: test_loader,
        train_images,
        test_images,
        classes,
        title,
        device,
    } = trainee;
    // Data-parallel: the same data and model on every rank, before the first collective.
    crate::distributed::agree_on_data(train_images, test_images, store, &trainable, &device)?;
    let train_data = train_images;
    let train_images = train_images.len();
    let shards =
        crate::distributed::shard(train_loader, config.batch_size, config.parallel.drop_last).zip(
            crate::distributed::shard(test_loader, config.test_batch_size, false),
        );
    // Data-parallel: the global view (batches of the job, every sample).
    let (train_loader, test_loader): (&dyn BatchSource, &dyn BatchSource) = match &shards {
        Some((train, test)) => (train, test),
        None => (train_loader, test_loader),
    };
    if train_loader.num_batches() == 0 {
        let images = config
            .limit_train
            .map_or(train_images, |l| l.min(train_images));
        let world = crate::distributed::rank().map_or(1, |r| r.size);
        return Err(no_batch(config, images, world));
    }
    let saved_names = resume.as_ref().and_then(|(saved, _)| saved.names);
    let (labels, names) = data_sums(
        train_data,
        test_images,
        config.data_dir.as_deref(),
        saved_names,
    );
    if let Some((saved, _)) = &resume {
        same_data(
            out,
            saved,
            &classes,
            [train_images, test_images.len()],
            (labels, names),
        )?;
    }
    let writes = crate::distributed::writes();
    // In a data-parallel job every rank reads a share of the files below (rank 0 alone took
    // long enough on a large folder for the others' first collective to time out).
    let shared = crate::distributed::rank().is_some();
    // What tells `evaluate` that an image of another folder is one this run trained on: each
    // training file's bytes read once now (with those a resumed state kept). And what the
    // training images hold, which a resume must find as they were (the epochs left would
    // otherwise train on other images than those before).
    let saved_train_contents = resume.as_ref().and_then(|(saved, _)| saved.train_contents);
    let (trained_on, train_contents, changed) =
        match writes || shared || saved_train_contents.is_some() {
            true => {
                let started = std::time::Instant::now();
                let now = crate::state::fingerprints_in_order(train_data).context(
                    "reading the training images' files for their fingerprints (kept in the \
                     run's state, so that evaluate can tell the images the run trained on, and a \
                     resume that they are the same)",
                )?;
                let contents = match &now {
                    Some(sums) => Some(crate::state::crc_of_fingerprints(sums)),
                    // Held decoded (MNIST's and CIFAR-10's batches): their pixels.
                    None => crate::state::contents_crc(train_data)
                        .context("reading the training images for their contents' CRC-32C")?,
                };
                let seconds = started.elapsed().as_secs_f64();
                if seconds >= 5.0 {
                    crate::say!(
                        "read the {train_images} training images' files for their fingerprints in \
                     {seconds:.0} s"
                    );
                }
                let kept = resume.as_mut().and_then(|(_, t)| t.trained_on.take());
                // On a resume, the files whose bytes the run never trained on, named.
                let changed: Vec<String> = match (&now, &kept) {
                    (Some(now), Some(kept))
                        if saved_train_contents.is_some_and(|s| Some(s) != contents) =>
                    {
                        now.iter()
                            .enumerate()
                            .filter(|(_, sum)| kept.binary_search(sum).is_err())
                            .map(|(i, _)| {
                                train_data
                                    .sample_name(i)
                                    .unwrap_or_else(|| format!("image {i}"))
                            })
                            .collect()
                    }
                    _ => Vec::new(),
                };
                let trained_on = now.filter(|_| writes).map(|mut now| {
                    now.extend(kept.unwrap_or_default());
                    std::sync::Arc::new(crate::state::sorted(now))
                });
                (trained_on, contents, changed)
            }
            false => (None, None, Vec::new()),
        };
    same_contents(
        out,
        SplitKind::Train,
        saved_train_contents,
        train_contents,
        &changed,
    )?;
    // What tells `evaluate` a test split whose files changed in place; on resume, what the
    // run's state records of them must be what they are now (on every rank, so that all
    // refuse together).
    let saved_contents = resume.as_ref().and_then(|(saved, _)| saved.test_contents);
    let test_contents = match writes || shared || saved_contents.is_some() {
        true => crate::state::shared_contents_crc(test_images).context(
            "reading the test images' files for their fingerprints (kept in the run's state)",
        )?,
        false => None,
    };
    same_contents(out, SplitKind::Test, saved_contents, test_contents, &[])?;
    if writes {
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create output directory {}", out.display()))?;
    }
    let trained_parameters: usize = trainable.iter().map(|(_, v)| v.elem_count()).sum();
    // Data-parallel: the gradients of these are all-reduced.
    let reduced = trainable.clone();
    let mut optimizer = config.optimizer(trainable)?;
    let schedule = config.schedule(train_loader.num_batches());
    layers::rng::set_seed(dropout_seed(config.seed));
    // Forward and backward run on this thread: autocast covers every epoch of this run.
    let _precision = config.precision.enter();

    // The state's weights and buffers into the model and optimizer first, which checks them
    // against the network (names and shapes): a damaged state writes no checkpoint.
    let from_state = (resume.as_ref())
        .filter(|_| writes)
        .map(|(saved, tensors)| (saved.clone(), tensors.model.clone()));
    // A state without its checksum (rewritten by another tool): checked as a run writes it.
    if let Some((saved, tensors)) = resume.as_ref().filter(|_| !state::checksummed(out)) {
        state_as_a_run_writes(saved, tensors, store, &reduced)?;
    }
    let saved_best_crc = resume.as_ref().and_then(|(saved, _)| saved.best_crc32c);
    let mut progress = restore(
        store,
        optimizer.as_mut(),
        resume,
        train_loader.num_batches(),
    )?;
    if let Some((saved, model)) = from_state {
        checkpoints_from_state(out, &saved, &model, false)?;
    }
    crate::distributed::broadcast_weights(store)?;
    let mut outputs = None;
    if writes && progress.best_epoch > 0 {
        if let Some(why) = best_damage(out, saved_best_crc) {
            crate::warn!(
                "{} {why}: it held the weights of epoch {}, {:.2}%; it is written again when \
                 an epoch beats {:.2}%",
                out.join(BEST).display(),
                progress.best_epoch,
                progress.best_acc,
                progress.best_acc
            );
        }
    }
    if writes {
        atomic::write_bytes(&out.join(CONFIG), &serde_json::to_vec_pretty(config)?)?;
        crate::inference::save_classes(out, &classes)?;
        if !progress.history.is_empty() {
            // A run killed between its state and its metrics resumes with both complete.
            history::save(out, &progress.history)?;
        }
        outputs = Some(Outputs {
            out,
            config,
            store,
            title: &title,
            classes: &classes,
            test_images,
            images: [train_images, test_images.len()],
            labels,
            names,
            trained_on,
            train_contents,
            test_contents,
            events: Some(EventWriter::create(out)?),
            best_crc: std::cell::Cell::new(saved_best_crc),
        });
    }
    crate::say!(
        "{} {}: {title} ({} train / {} test images, {} parameters, {} trained) on {}{}{}, writing to {}",
        config.program,
        if progress.epochs_done > 0 {
            "resumes"
        } else {
            "trains"
        },
        train_loader.num_samples(),
        test_loader.num_samples(),
        store.num_parameters(),
        trained_parameters,
        device_name(&device),
        match config.precision {
            Precision::F32 => String::new(),
            Precision::Tf32 if device.is_cuda() => " with TF32 products".into(),
            // As PyTorch's allow_tf32: a CUDA setting, float32 elsewhere.
            Precision::Tf32 => " in float32 (TF32 is for CUDA's tensor cores)".into(),
            Precision::Bf16 if device.is_cuda() => " in bf16 autocast".into(),
            Precision::Bf16 => match layers::autocast::cpu_bf16_isa() {
                Some(isa) => format!(" in bf16 autocast (products on {isa})"),
                None => " in bf16 autocast (float32 products: no AVX512-BF16 here)".into(),
            },
        },
        match config.memory_format {
            MemoryFormat::Contiguous => "",
            MemoryFormat::ChannelsLast => ", channels_last",
        },
        out.display()
    );
    if config.memory_format == MemoryFormat::ChannelsLast
        && !(device.is_cuda() && cfg!(feature = "cudnn"))
    {
        crate::say!(
            "note: --memory-format channels_last computes each layer on a contiguous copy here \
             (the same results, slower); it pays on CUDA in a build with the cudnn feature"
        );
    }
    let formatted = crate::engine::InMemoryFormat {
        model,
        format: config.memory_format.layers(),
    };
    let model: &dyn ModuleT = match config.memory_format {
        MemoryFormat::Contiguous => model,
        MemoryFormat::ChannelsLast => &formatted,
    };
    let passes = Epoch {
        model,
        train: train_loader,
        test: test_loader,
        device: &device,
        classes: classes.len(),
        config,
        shards: shards.as_ref().map(|(a, b)| (a, b)),
        trainable: &reduced,
    };
    // Each epoch's files are written on a second thread while the next epoch trains, from host
    // copies taken on this one (`Snapshot`); the writes of one epoch finish before the next
    // epoch's start, and the last before the run returns, also when it fails.
    // A failed write stops the epoch training meanwhile after its batch (in a data-parallel
    // job rank 0's error then ends the job: nothing else is being written).
    let write_failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stop = crate::interrupt::stop_when(write_failed.clone());
    std::thread::scope(|scope| -> Result<()> {
        let mut pending = None;
        // A write's error found while the epochs go on: the run's error once they stop.
        let mut write_error = None;
        // The epochs whose files are written or being written (by rank 0 in a data-parallel
        // job): what an error stopping the run can say is saved.
        let mut snapshotted = progress.epochs_done;
        let trained = (|| -> Result<()> {
            // A finished write: its event file back, or its error kept and the epochs stopped.
            let mut take_up = |handle: Writing<'_>, outputs: &mut Outputs<'_>| match finish(handle)
            {
                Ok(events) => {
                    outputs.events = Some(events);
                    Ok(())
                }
                Err(e) => {
                    write_error = Some(e);
                    Err(anyhow::Error::from(crate::interrupt::WriteFailed))
                }
            };
            for epoch in progress.epochs_done..config.epochs {
                // A write that already ended (failed, say) is taken up before the next epoch.
                if pending
                    .as_ref()
                    .is_some_and(|h: &Writing<'_>| h.is_finished())
                {
                    if let (Some(done), Some(outputs)) = (pending.take(), outputs.as_mut()) {
                        take_up(done, outputs)?;
                    }
                }
                // --schedule plateau: the rate its ReduceLROnPlateau holds after the test
                // losses so far (the other schedules are functions of the step count alone).
                let replayed = (config.schedule == ScheduleKind::Plateau)
                    .then(|| config.schedule_after(train_loader.num_batches(), &progress.history))
                    .transpose()?;
                let schedule = replayed.as_ref().unwrap_or(&schedule);
                let (trained, tested, record, images_per_s, writing) =
                    passes.run(epoch, store, optimizer.as_mut(), schedule)?;
                let improved = record.test_acc > progress.best_acc || progress.history.is_empty();
                if improved {
                    progress.best_acc = record.test_acc;
                    progress.best_epoch = record.epoch;
                }
                progress.history.push(record);
                progress.epochs_done = epoch + 1;
                progress.steps_done += trained.batch_losses.len();
                let Some(outputs) = outputs.as_mut() else {
                    snapshotted = progress.epochs_done;
                    continue;
                };
                // The previous epoch's files first: one snapshot in memory at a time.
                if let Some(previous) = pending.take() {
                    take_up(previous, outputs)?;
                }
                let snapshot = outputs.snapshot(
                    &progress,
                    improved,
                    optimizer.as_ref(),
                    (schedule, train_loader),
                    (&trained, &tested, images_per_s),
                )?;
                let Some(events) = outputs.events.take() else {
                    bail!("the TensorBoard event file was lost by an earlier failed write")
                };
                let failed = write_failed.clone();
                pending = Some(scope.spawn(move || {
                    let _writing = writing;
                    let written = snapshot.write(events);
                    if written.is_err() {
                        failed.store(true, std::sync::atomic::Ordering::SeqCst);
                        crate::interrupt::write_failed();
                    }
                    written
                }));
                snapshotted = progress.epochs_done;
            }
            Ok(())
        })();
        let written = match pending.take() {
            Some(last) => finish(last).map(|events| {
                if let Some(outputs) = outputs.as_mut() {
                    outputs.events = Some(events);
                }
            }),
            None => write_error.map_or(Ok(()), Err),
        };
        match (trained, written) {
            (Err(error), written) if error.downcast_ref::<Interrupted>().is_some() => Err(
                stopped_by_ctrl_c(error, written, &progress, config.epochs, out),
            ),
            // The write's error is the run's: the epoch training meanwhile stopped for it.
            (Err(error), Err(writing))
                if error
                    .downcast_ref::<crate::interrupt::WriteFailed>()
                    .is_some() =>
            {
                Err(write_failed_error(writing, out))
            }
            // Both failed: the epoch's error, and that the files said to be kept may not be.
            (Err(error), Err(writing)) => Err(error.context(format!(
                "writing the files of an earlier epoch failed too: {writing:#}"
            ))),
            (Ok(()), Err(writing)) => Err(write_failed_error(writing, out)),
            // Any other error inside an epoch (an image that cannot be read, say): where the run
            // stopped, what is saved and how to go on, as for Ctrl-C. A loss that stopped being
            // finite says so itself (a new run, not --resume, is the way on).
            (Err(error), Ok(())) if !error.chain().any(|e| e.is::<crate::engine::Diverged>()) => {
                let out = crate::distributed::writes().then_some(out);
                Err(stopped_by_error(error, snapshotted, config.epochs, out))
            }
            (trained, Ok(())) => trained,
        }
    })?;
    say_best(out, progress.best_acc, progress.best_epoch);
    Ok(Outcome {
        out: out.to_path_buf(),
        history: progress.history,
        best_acc: progress.best_acc,
    })
}

/// Before a resumed run trains: the checkpoints its state holds the weights of, written again
/// from the state (for a reader, `only_missing`: those not there alone). `last.safetensors` is always the state's weights, and `best.safetensors`
/// too when the last epoch saved was the best; a kill between the state and the checkpoints
/// (which the epoch writes after it) left them an epoch behind, or missing.
///
/// # Errors
/// A checkpoint cannot be written.
fn checkpoints_from_state(
    out: &Path,
    saved: &ResumeState,
    model: &std::collections::HashMap<String, candle_core::Tensor>,
    only_missing: bool,
) -> Result<()> {
    if saved.epochs_done == 0 {
        return Ok(());
    }
    let mut files = vec![LAST];
    if saved.best_epoch == saved.epochs_done {
        files.push(BEST);
    }
    for file in files {
        let path = out.join(file);
        // A reader writes no file over one there (a link to storage unmounted is the user's).
        if only_missing && std::fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        let missing = !path.exists();
        // Other weights than the file held (an epoch behind): `evaluate`'s outputs of those go.
        replace_checkpoint(model, out, file, Replaced::IfChanged)?;
        if missing {
            crate::warn!(
                "{} was missing: written again from {} (the weights of epoch {})",
                path.display(),
                crate::rundir::STATE,
                saved.epochs_done
            );
        }
    }
    Ok(())
}

/// For a reader of the run in `dir` (`evaluate`, `predict`, `grad-cam`) that finds neither
/// checkpoint beside its resume state (the run was stopped between saving an epoch's state and
/// writing its checkpoints), or `last` without `best` where the state's last epoch was the best
/// (a process killed between writing the two): writes them from the state as `--resume` would
/// first ([`LAST`], and [`BEST`] when the state's last epoch was the best), holding the
/// directory's lock. The
/// process that writes the run directory only (alone, or rank 0 of a data-parallel
/// evaluation, whose other ranks wait for it).
///
/// Where another process holds the directory (another reader writing the same checkpoints, a
/// `--resume` about to), waits up to [`READER_WAIT`] for the checkpoints or the lock (the first
/// time in the process).
///
/// # Errors
/// A rank other than 0, a run still holds the directory after the wait, the directory cannot
/// be written, or the state cannot be read.
pub(crate) fn checkpoints_for_reading(dir: &Path) -> Result<()> {
    if !crate::distributed::writes() {
        bail!("rank 0 of a data-parallel evaluation writes the checkpoints");
    }
    let there = |name: &str| std::fs::symlink_metadata(dir.join(name)).is_ok();
    let written = || there(LAST) || there(BEST);
    // Both: what a restore writes last is there (it writes `last` first, then `best`).
    let both = || there(LAST) && there(BEST);
    // Once per process: `evaluate` asks before it opens the run, and opening it asks again.
    static WAITED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let waited = std::time::Instant::now();
    let wait = !WAITED.swap(true, std::sync::atomic::Ordering::Relaxed);
    if wait && crate::rundir::in_use(dir) && !both() {
        crate::warn!(
            "note: {}: the run's checkpoints are not all there and another process holds the \
             directory: waiting up to {} s for it",
            dir.display(),
            READER_WAIT.as_secs()
        );
    }
    while wait && crate::rundir::in_use(dir) && !both() && waited.elapsed() < READER_WAIT {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if both() {
        return Ok(());
    }
    // Still held after the wait: a `--resume` training on (it writes its checkpoints once its
    // data is loaded; `best` only where its epoch was the best), read as it is; or a writer
    // that wrote none.
    if crate::rundir::in_use(dir) {
        if written() {
            return Ok(());
        }
        bail!("{} is held by another process", dir.display());
    }
    let held = crate::rundir::RunDir::existing(dir)?;
    // Written meanwhile (another reader, a `--resume`): nothing to do.
    if both() {
        return Ok(());
    }
    let (saved, tensors) = match crate::state::load(dir) {
        Ok(loaded) => loaded,
        // One checkpoint is there for the reader to take (its own error names a missing one).
        Err(_) if written() => return Ok(()),
        Err(e) => return Err(e),
    };
    // All the state would write is there: `last`, and `best` only where the last epoch was the
    // best (an earlier best's file was removed since). Where `best` is missing although the
    // last epoch was the best, a process was killed between writing the two (a reader, or a
    // `--resume` as it began): written here.
    if there(LAST) && (there(BEST) || saved.best_epoch != saved.epochs_done) {
        return Ok(());
    }
    if let Err(e) = check_state_network(&saved, &tensors.model) {
        // The reader's own error (no checkpoint) would not say why; said once (a reader asks
        // before it opens the run and again as it opens it).
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            crate::warn!("{}: {e:#}", dir.join(crate::rundir::STATE).display());
        }
        return Err(e);
    }
    checkpoints_from_state(dir, &saved, &tensors.model, true)?;
    drop(held);
    Ok(())
}

/// The weights of a resume state against the network its settings name (`--model` with the
/// classes it keeps: its names and shapes, [`zoo::shapes`]), strictly as a resume loads them
/// (every name, no other, each shape): a state edited or from another program writes no
/// checkpoint. A state that keeps no class names, or whose model the zoo does not build, is not
/// checked here (the reader's strict load of the checkpoint checks it). For the readers that
/// write missing checkpoints and a `--resume` of a finished run, which build no model of their
/// own (a resume that trains on loads the state into its model first).
///
/// # Errors
/// A tensor missing, extra or of another shape, named.
fn check_state_network(
    saved: &ResumeState,
    model: &std::collections::HashMap<String, Tensor>,
) -> Result<()> {
    let Some(classes) = saved.classes.as_ref().map(Vec::len) else {
        return Ok(());
    };
    // Names and shapes only: no weight is drawn (VGG-19's would take seconds).
    let Ok(shapes) = zoo::shapes(&saved.config.model, classes) else {
        return Ok(());
    };
    layers::checkpoint::check_strict(&shapes, model).with_context(|| {
        format!(
            "its weights are not those of the {} network it names ({classes} classes): no \
             checkpoint is written from it",
            saved.config.model
        )
    })
}

/// How long a reader that would write a run's checkpoints from its state waits for another
/// process holding the directory: a reader writing them (seconds, a ResNet-50's two) or a
/// `--resume`, which writes them once its data is loaded.
pub(crate) const READER_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// When [`replace_checkpoint`] counts the checkpoint it writes as replacing the one there.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replaced {
    /// Always (an epoch's new weights).
    Always,
    /// Where a file was there and held other bytes (a checkpoint written again from the state).
    IfChanged,
}

/// Writes the checkpoint `file` ([`BEST`] or [`LAST`]) of the run in `out`
/// (`layers::checkpoint::save_tensors`) once its folder is still this run's
/// ([`crate::rundir::check_lock`], before the work and as the file is renamed into place:
/// [`crate::atomic::rename_into_run`]). Where it replaces the one there (as `replaced` says),
/// `evaluate`'s outputs of the one replaced go first
/// ([`crate::rundir::remove_evaluations_of`]), before the new file is renamed into place: a
/// kill between the two then loses an evaluation rather than leaving one that describes
/// weights no longer there.
///
/// # Errors
/// The folder is another run's now, or the file cannot be written.
pub(crate) fn replace_checkpoint(
    model: &std::collections::HashMap<String, candle_core::Tensor>,
    out: &Path,
    file: &str,
    replaced: Replaced,
) -> Result<()> {
    let path = out.join(file);
    crate::rundir::check_lock(crate::rundir::folder_of(&path))?;
    layers::checkpoint::save_with_metadata_renaming(model, None, &path, |tmp, path| {
        // Still this run's folder before anything in it goes.
        crate::rundir::check_lock(crate::rundir::folder_of(path))?;
        let changed = match replaced {
            Replaced::Always => true,
            Replaced::IfChanged => std::fs::read(path)
                .is_ok_and(|old| std::fs::read(tmp).ok().is_none_or(|new| new != old)),
        };
        if changed {
            crate::rundir::remove_evaluations_of(out, file.trim_end_matches(".safetensors"));
        }
        crate::atomic::rename_into_run(tmp, path)
    })
}

/// The closing line: the best test accuracy and where its weights are, or that they are gone
/// (`best.safetensors` removed since, and no later epoch beat it).
fn say_best(out: &Path, accuracy: f64, epoch: usize) {
    let best = out.join(BEST);
    let damage = crate::distributed::writes()
        .then(|| best_damage(out, crate::state::saved_best_crc(out)))
        .flatten();
    match damage {
        None => crate::say!(
            "best test accuracy {accuracy:.2}% (epoch {epoch}); weights in {}",
            best.display()
        ),
        Some(why) => crate::say!(
            "best test accuracy {accuracy:.2}% (epoch {epoch}); its weights are not there: {} \
             {why} (last.safetensors holds the last epoch's)",
            best.display()
        ),
    }
}

/// What is wrong with the run's `best.safetensors`, which a resumed run cannot write again
/// (only the last epoch's weights are in its state): gone, damaged since it was saved (cut
/// short, overwritten), or holding other weights than the best epoch's checksum the state
/// records (`kept`; swapped with `last`, rewritten by another tool). `None` when it reads as
/// the best epoch's.
fn best_damage(out: &Path, kept: Option<u32>) -> Option<String> {
    let best = out.join(BEST);
    if !best.exists() {
        return Some("is gone".to_string());
    }
    match layers::checkpoint::file_checksum(&best) {
        Err(e) => Some(format!("cannot be read ({e:#})")),
        Ok(sum) if kept.is_some_and(|kept| kept != sum) => Some(
            "holds other weights than the best epoch's that the run's state records (swapped \
             with another checkpoint, or rewritten by another tool)"
                .to_string(),
        ),
        Ok(_) => None,
    }
}

/// The latest epoch whose test accuracy the TensorBoard event files in `out` log, read as
/// TensorBoard reads them. An epoch's events come before its state, so a run stopped while
/// saving an epoch has logged one epoch more than it saved.
fn latest_logged_epoch(out: &Path) -> Option<i64> {
    std::fs::read_dir(out)
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(crate::rundir::EVENTS_PREFIX)
                && e.file_type().is_ok_and(|t| t.is_file())
        })
        .filter_map(|e| crate::tensorboard::read_events_until_damage(&e.path()).ok())
        .flatten()
        .filter(|event| {
            event
                .summary
                .iter()
                .flat_map(|s| &s.value)
                .any(|v| v.tag == "test/acc")
        })
        .map(|event| event.step)
        .max()
}

/// A resumed run's trained epochs (`saved`) against `config.epochs`, checked before any data is
/// loaded: more than asked is refused; exactly as many is a finished run, said so and returned
/// as it is (its `metrics.csv` / `metrics.json` and `curves.png`, headed `title`, rewritten
/// from the state, its checkpoints from the state's weights `model` as a resume writes them,
/// and its `config.json` and `classes.json`, which completes a run killed, or whose writes
/// failed, between the state and the other files of its last epoch, or files removed); fewer
/// is `None`, a run to continue.
///
/// # Errors
/// More epochs trained than `--epochs`, or the metrics or checkpoints cannot be written.
pub fn finished(
    config: &RunConfig,
    saved: &ResumeState,
    (model, title): (
        &std::collections::HashMap<String, candle_core::Tensor>,
        &str,
    ),
    out: &Path,
) -> Result<Option<Outcome>> {
    if saved.epochs_done > config.epochs {
        bail!(
            "--epochs {}: the run in {} has already trained {} epochs; give --epochs {} or more to \
             continue it",
            config.epochs,
            out.display(),
            saved.epochs_done,
            saved.epochs_done + 1
        );
    }
    if saved.epochs_done < config.epochs || config.epochs == 0 {
        return Ok(None);
    }
    // Before the checkpoints are written from the state (below), and before it is said
    // finished.
    if crate::distributed::writes() && !saved.history.is_empty() {
        check_state_network(saved, model)
            .with_context(|| format!("--resume {}: {}", out.display(), crate::rundir::STATE))?;
    }
    crate::say!(
        "the run in {} has already trained {}: nothing to train (give a larger --epochs to \
         continue it)",
        out.display(),
        match config.epochs {
            1 => "its 1 epoch".to_string(),
            n => format!("all {n} epochs"),
        }
    );
    if let Some(logged) = crate::distributed::writes()
        .then(|| latest_logged_epoch(out))
        .flatten()
        .filter(|&epoch| epoch > saved.epochs_done as i64)
    {
        crate::warn!(
            "epoch {logged} was trained and logged, but the run stopped while saving it: {} and \
             {} show it, and TensorBoard has its step {logged}, though the checkpoints hold \
             epoch {}; --epochs {logged} with --resume trains it again (to the same values)",
            out.join(PREDICTIONS).display(),
            out.join(CONFUSION).display(),
            saved.epochs_done
        );
    }
    if crate::distributed::writes() && !saved.history.is_empty() {
        checkpoints_from_state(out, saved, model, false)?;
        history::save(out, &saved.history)?;
        pictures::save_curves(out, title, &saved.history)?;
        // What `evaluate` and `predict` read, as a run that goes on writes it again.
        atomic::write_bytes(&out.join(CONFIG), &serde_json::to_vec_pretty(config)?)?;
        if let Some(classes) = &saved.classes {
            crate::inference::save_classes(out, classes)?;
        }
        if let Some(why) = best_damage(out, saved.best_crc32c).filter(|_| saved.best_epoch > 0) {
            crate::warn!(
                "{} {why}: it held the weights of epoch {}, {:.2}%, which this finished run \
                 cannot write again (last.safetensors holds epoch {}'s)",
                out.join(BEST).display(),
                saved.best_epoch,
                saved.best_acc,
                saved.epochs_done
            );
        }
    }
    say_best(out, saved.best_acc, saved.best_epoch);
    Ok(Some(Outcome {
        out: out.to_path_buf(),
        history: saved.history.clone(),
        best_acc: saved.best_acc,
    }))
}

/// The error of a run whose epoch files could not be written (`writing`): the run stopped
/// there (an epoch training meanwhile stops after its batch); what stays and how to go on.
fn write_failed_error(writing: anyhow::Error, out: &Path) -> anyhow::Error {
    let taken = writing
        .chain()
        .any(|e| e.is::<crate::rundir::FolderTaken>());
    let next = if taken {
        format!(
            "{} is the other run's now, not to be resumed as this one: start this run again \
             with another --out",
            out.display()
        )
    } else if out.join(crate::rundir::STATE).is_file() {
        format!(
            "--resume {} continues from the last epoch whose resume state was written, once \
             the cause is fixed",
            out.display()
        )
    } else {
        "no epoch was saved".to_string()
    };
    writing.context(format!(
        "an epoch's files could not be written, so the run stopped; {next}"
    ))
}

/// The error of a run stopped by Ctrl-C or SIGTERM (`error`, an [`Interrupted`]) after `progress`'s
/// epochs, whose last files' writing ended as `written`: where it stopped, what is saved, how
/// to continue.
fn stopped_by_ctrl_c(
    error: anyhow::Error,
    written: Result<()>,
    progress: &RunProgress,
    epochs: usize,
    out: &Path,
) -> anyhow::Error {
    let done = progress.epochs_done;
    let at = format!(
        "stopped by {} in epoch {} of {epochs}",
        crate::interrupt::by(),
        done + 1
    );
    if !crate::distributed::writes() {
        // A data-parallel rank other than 0 (heard with CNN_LOG_ALL_RANKS): its `out` may not
        // be the run's (a default --out is rank 0's choice).
        return error.context(format!(
            "{at}: rank 0 saves the run's epochs in its --out; --resume that directory \
             continues"
        ));
    }
    let message = match (done, written) {
        (_, Err(writing)) if out.join(crate::rundir::STATE).is_file() => format!(
            "{at}: writing the files of epoch {done} failed ({writing:#}); --resume {} continues \
             from the last epoch whose files were written",
            out.display()
        ),
        (_, Err(writing)) => format!(
            "{at}: writing the files of epoch {done} failed ({writing:#}), so no epoch was saved"
        ),
        (0, Ok(())) => format!("{at}: no epoch had finished, so nothing was saved"),
        (_, Ok(())) => format!(
            "{at}: {}; continue with --resume {}",
            saved_in(done, out),
            out.display()
        ),
    };
    error.context(message)
}

/// The error of a run that an error inside an epoch (`error`: an image that cannot be read, a
/// device failing) stopped after `done` epochs whose files were written: where it stopped, what
/// is saved and how to continue once the cause is mended.
///
/// `out` is `None` on a data-parallel rank other than 0: rank 0 writes the run, and the job
/// ends (`MPI_Abort`) on this rank's error perhaps before rank 0 has finished writing the last
/// epoch's files, in a directory whose name this rank may not know (a default `--out` is
/// rank 0's choice).
fn stopped_by_error(
    error: anyhow::Error,
    done: usize,
    epochs: usize,
    out: Option<&Path>,
) -> anyhow::Error {
    let at = format!(
        "the run stopped in epoch {} of {epochs} on the error below",
        done + 1
    );
    let message = match (done, out) {
        (0, _) => format!("{at}: no epoch had finished, so nothing was saved"),
        (_, Some(out)) => format!(
            "{at}: {}; once the cause is mended, --resume {} continues from there",
            saved_in(done, out),
            out.display()
        ),
        (_, None) => format!(
            "{at}: rank 0 saves the run's epochs in its --out (the last one finished, epoch \
             {done}, perhaps not yet when the job ended); once the cause is mended, --resume \
             that directory continues from the last epoch saved there"
        ),
    };
    error.context(message)
}

/// `epoch 1 is saved in OUT`, or `epochs 1-N are saved in OUT`, for `done` (1 or more) epochs.
fn saved_in(done: usize, out: &Path) -> String {
    match done {
        1 => format!("epoch 1 is saved in {}", out.display()),
        _ => format!("epochs 1-{done} are saved in {}", out.display()),
    }
}

/// What a run writes in its state, checked before a resume restores a state without its
/// checksum: the checksum refuses any edit of a state a run wrote, but a state rewritten by
/// another tool without it (as the README tells such tools to) is read as it is, and these
/// would otherwise go unnoticed:
///
/// - weights of another type than the network's (float32; a file rewritten in float16 was
///   cast silently, the run going on from rounded weights);
/// - after a step, no trained parameter with its optimizer buffers (Adam's and AdamW's
///   moments and step count; SGD's momentum buffer where momentum is not 0): they would all
///   start again from zero (one parameter without them may be one that never had a gradient,
///   as in PyTorch);
/// - an Adam step count above the optimizer steps taken (`steps_done`; a parameter without a
///   gradient at some steps counts fewer): the bias corrections would be another step's.
///
/// # Errors
/// Names the state, the tensor and what a run writes there.
fn state_as_a_run_writes(
    saved: &ResumeState,
    tensors: &StateTensors,
    store: &ParamStore,
    trained: &[NamedVar],
) -> Result<()> {
    let vars: std::collections::HashMap<String, candle_core::Var> =
        store.named_vars().into_iter().collect();
    let edited = "(the state was rewritten by another tool?)";
    for (name, t) in &tensors.model {
        if let Some(var) = vars.get(name).filter(|v| v.dtype() != t.dtype()) {
            bail!(
                "{}: model.{name} is {:?}, where a run saves the network's {:?} {edited}",
                crate::rundir::STATE,
                t.dtype(),
                var.dtype()
            );
        }
    }
    let Some(steps) = saved.steps_done.filter(|&s| s > 0) else {
        return Ok(());
    };
    let config = &saved.config;
    let buffers: &[&str] = match config.optimizer {
        crate::config::OptimizerKind::Sgd if config.momentum == 0.0 => &[],
        crate::config::OptimizerKind::Sgd => &["momentum_buffer"],
        _ => &["step", "exp_avg", "exp_avg_sq"],
    };
    if let Some(first) = buffers.first() {
        let held = |name: &str| tensors.optimizer.contains_key(&format!("{name}.{first}"));
        if !trained.is_empty() && !trained.iter().any(|(name, _)| held(name)) {
            bail!(
                "{}: it holds no optimizer buffer ({first} of {} and the rest), which a run has \
                 after its first step ({steps} taken) {edited}",
                crate::rundir::STATE,
                trained[0].0
            );
        }
    }
    for (key, t) in tensors
        .optimizer
        .iter()
        .filter(|(k, _)| k.ends_with(".step"))
    {
        let step = t.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if step > steps as f64 {
            bail!(
                "{}: optimizer state {key} is {step}, where the run took {steps} steps \
                 (steps_done) {edited}",
                crate::rundir::STATE
            );
        }
    }
    Ok(())
}

/// Restores the model, the optimizer (buffers and learning rate) and the dropout generator
/// from a resume state; a fresh run starts from nothing done.
fn restore(
    store: &ParamStore,
    optimizer: &mut dyn Optimizer,
    resume: Option<(ResumeState, StateTensors)>,
    batches: usize,
) -> Result<RunProgress> {
    let Some((saved, tensors)) = resume else {
        return Ok(RunProgress::default());
    };
    layers::checkpoint::load_tensors_strict(store.varmap(), &tensors.model)
        .context("restoring the model from the resume state")?;
    optimizer
        .load_state(&tensors.optimizer)
        .context("restoring the optimizer from the resume state")?;
    optimizer.set_learning_rate(saved.lr);
    layers::rng::set_state(saved.rng_state);
    Ok(RunProgress {
        epochs_done: saved.epochs_done,
        steps_done: saved.steps_done.unwrap_or(saved.epochs_done * batches),
        best_acc: saved.best_acc,
        best_epoch: saved.best_epoch,
        history: saved.history,
    })
}

/// One epoch's passes: what trains, on what, and how it is tested.
struct Epoch<'a> {
    model: &'a dyn ModuleT,
    train: &'a dyn BatchSource,
    test: &'a dyn BatchSource,
    device: &'a Device,
    classes: usize,
    config: &'a RunConfig,
    /// This rank's shares of the training and test data, in a data-parallel job.
    shards: Option<(
        &'a crate::distributed::Sharded<'a>,
        &'a crate::distributed::Sharded<'a>,
    )>,
    /// The parameters the optimizer updates (whose gradients a data-parallel job all-reduces).
    trainable: &'a [NamedVar],
}

impl Epoch<'_> {
    /// Trains epoch `epoch` (from 0), checks that nothing became non-finite, tests, prints the
    /// epoch's line and returns both passes with the epoch's record, the training pass's
    /// images/s and the guard that counts the epoch's files as being written from its line on
    /// ([`crate::interrupt::writing`]: a second Ctrl-C lets them be written).
    fn run(
        &self,
        epoch: usize,
        store: &ParamStore,
        optimizer: &mut dyn Optimizer,
        schedule: &optim::lr_scheduler::Scheduled,
    ) -> Result<(Pass, Pass, EpochRecord, f64, crate::interrupt::Writing)> {
        let config = self.config;
        let started = Instant::now();
        let label = |phase: &str| format!("epoch {}/{} {phase}", epoch + 1, config.epochs);
        let step = TrainStep {
            optimizer: &mut *optimizer,
            schedule,
            label_smoothing: config.label_smoothing,
        };
        let trained = match self.shards {
            Some((train, _)) => crate::distributed::train_epoch(
                self.model,
                train,
                store,
                self.trainable,
                self.device,
                epoch,
                step,
                self.classes,
                label("train"),
                config.parallel.sync_bn,
            )?,
            None => train_epoch(
                self.model,
                self.train,
                self.device,
                epoch,
                step,
                self.classes,
                label("train"),
            )?,
        };
        // The training pass alone: its images/s do not depend on the size of the test split.
        let train_seconds = started.elapsed().as_secs_f64();
        ensure_finite_after(epoch + 1, store, optimizer)?;
        let tested = match self.shards {
            Some((_, test)) => crate::distributed::evaluate(
                self.model,
                test,
                self.device,
                self.classes,
                config.label_smoothing,
                label("test"),
            )?,
            None => evaluate(
                self.model,
                self.test,
                self.device,
                self.classes,
                config.label_smoothing,
                label("test"),
            )?,
        };
        for (what, value) in [
            ("training loss", trained.metrics.loss()),
            ("test loss", tested.metrics.loss()),
        ] {
            if !value.is_finite() {
                return Err(crate::engine::Diverged(format!(
                    "the {what} of epoch {} is {value}: training stopped (a lower --lr may help, \
                     in a new run: --resume keeps the run's); {}",
                    epoch + 1,
                    kept(epoch)
                ))
                .into());
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: trained.metrics.loss(),
            train_acc: trained.metrics.accuracy(),
            test_loss: tested.metrics.loss(),
            test_acc: tested.metrics.accuracy(),
            test_top5: tested.metrics.top5(),
            test_per_class_acc: tested.metrics.per_class_accuracy(),
            lr: trained.last_lr.unwrap_or_else(|| optimizer.learning_rate()),
            seconds,
        };
        let images_per_s = trained.metrics.samples() as f64 / train_seconds.max(1e-9);
        let writing = crate::interrupt::writing();
        crate::say!(
            "epoch {}/{}: train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}%{} | lr {:.3e} | {:.1} s (training {:.1} s, {:.0} img/s)",
            record.epoch,
            config.epochs,
            record.train_loss,
            record.train_acc,
            record.test_loss,
            record.test_acc,
            crate::metrics::top5_text(record.test_top5, self.classes, " (top-5 ", "%)"),
            record.lr,
            seconds,
            train_seconds,
            images_per_s
        );
        Ok((trained, tested, record, images_per_s, writing))
    }
}

/// Everything a run writes after each epoch, and where.
struct Outputs<'a> {
    out: &'a Path,
    config: &'a RunConfig,
    store: &'a ParamStore,
    title: &'a str,
    classes: &'a [String],
    test_images: &'a dyn Dataset,
    /// The training and test images, for the resume state.
    images: [usize; 2],
    /// Their labels' CRC-32C, for the resume state.
    labels: [u32; 2],
    /// Their names' CRC-32C ([`crate::state::names_crc`]), for the resume state.
    names: [u32; 2],
    /// The training images' fingerprints, for the resume state
    /// ([`StateTensors::trained_on`]).
    trained_on: Option<std::sync::Arc<Vec<u64>>>,
    /// The training images' [`crate::state::contents_crc`], for the resume state.
    train_contents: Option<u32>,
    /// The test images' files' [`crate::state::contents_crc`], for the resume state.
    test_contents: Option<u32>,
    /// The TensorBoard file; with the writing thread while an epoch's files are written.
    events: Option<EventWriter>,
    /// The best epoch's weights' checksum, for the resume state
    /// ([`ResumeState::best_crc32c`]): the resumed state's, then each improving epoch's.
    best_crc: std::cell::Cell<Option<u32>>,
}

/// An epoch's writing thread: its event file back when it is done.
type Writing<'scope> = std::thread::ScopedJoinHandle<'scope, Result<EventWriter>>;

/// The waiting for an epoch's writing thread: its event file back, or what went wrong.
fn finish(handle: Writing<'_>) -> Result<EventWriter> {
    match handle.join() {
        Ok(written) => written,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// What an epoch's files hold, copied to the host on the training thread: the model's and the
/// optimizer's tensors (fresh storage, which the next steps do not touch), the resume state,
/// the history and what the pictures show.
struct Snapshot<'a> {
    out: &'a Path,
    title: &'a str,
    classes: &'a [String],
    improved: bool,
    model: std::collections::HashMap<String, Tensor>,
    optimizer: std::collections::HashMap<String, Tensor>,
    trained_on: Option<std::sync::Arc<Vec<u64>>>,
    state: ResumeState,
    tiles: Vec<viz::Tile>,
    confusion: Vec<Vec<u64>>,
    batch_losses: Vec<f64>,
    batch_times: Vec<f64>,
    images_per_s: f64,
}

/// `tensors` in storage of their own on the host: those on a GPU copied to the host, those on
/// the CPU copied there (with `cpu_copies`; without, they are taken to be copies already).
fn host_copies(
    tensors: std::collections::HashMap<String, Tensor>,
    cpu_copies: bool,
) -> Result<std::collections::HashMap<String, Tensor>> {
    tensors
        .into_iter()
        .map(|(k, v)| {
            let v = match v.device().is_cpu() {
                true if cpu_copies => v.copy()?,
                true => v,
                false => v.to_device(&Device::Cpu)?,
            };
            Ok((k, v))
        })
        .collect()
}

impl<'a> Outputs<'a> {
    /// The files of the epoch just recorded in `progress`, taken now (see [`Snapshot::write`]).
    fn snapshot(
        &self,
        progress: &RunProgress,
        improved: bool,
        optimizer: &dyn Optimizer,
        (schedule, train_loader): (&optim::lr_scheduler::Scheduled, &dyn BatchSource),
        (trained, tested, images_per_s): (&Pass, &Pass, f64),
    ) -> Result<Snapshot<'a>> {
        // `state_dict` copies a GPU's variables to the host; the CPU's it hands out as they are,
        // and those are copied here.
        let model = host_copies(
            layers::checkpoint::state_dict(self.store.varmap())?,
            self.store.device().is_cpu(),
        )?;
        if improved {
            self.best_crc
                .set(Some(layers::checkpoint::tensors_checksum(&model)?));
        }
        Ok(Snapshot {
            out: self.out,
            title: self.title,
            classes: self.classes,
            improved,
            model,
            optimizer: host_copies(optimizer.state()?, true)?,
            trained_on: self.trained_on.clone(),
            state: ResumeState {
                best_crc32c: self.best_crc.get(),
                train_contents: self.train_contents,
                test_contents: self.test_contents,
                ..resume_state(
                    self.config,
                    optimizer,
                    progress,
                    schedule,
                    (train_loader, self.images, (self.labels, self.names)),
                    self.classes,
                    self.store.device(),
                )
            },
            tiles: pictures::prediction_tiles(self.test_images, &tested.predictions)?,
            confusion: tested.metrics.confusion().to_vec(),
            batch_losses: trained.batch_losses.clone(),
            batch_times: trained.batch_times.clone(),
            images_per_s,
        })
    }
}

impl Snapshot<'_> {
    /// Writes the epoch's files: the pictures, the TensorBoard events, the resume state, `best`
    /// (when it improved) and `last` checkpoints, the metrics and the curves; each file but the
    /// event file (appended to) atomically.
    ///
    /// The pictures and the TensorBoard events come first, then the state, which commits the
    /// epoch, then the files the state can give again. A kill before the state leaves the
    /// epoch to be trained again by `--resume`, which (resuming exactly) draws the same
    /// pictures and logs the same values once more; a kill after it finds them written. (With
    /// the events after the state, a kill between the two lost the epoch's TensorBoard
    /// scalars for good, and in the last epoch left the pictures of the epoch before.)
    fn write(self, mut events: EventWriter) -> Result<EventWriter> {
        let out = self.out;
        let history = &self.state.history;
        let epoch = self.state.epochs_done - 1;
        let tested = history.last().map_or(f64::NAN, |r| r.test_acc);
        let title = format!(
            "{}, epoch {}: test top-1 {tested:.2}%",
            self.title,
            epoch + 1
        );
        pictures::save_prediction_tiles(out, &title, &self.tiles)?;
        pictures::save_confusion(out, &title, &self.confusion, self.classes)?;
        let steps = self.state.steps_done.unwrap_or_default();
        log_epoch(
            &mut events,
            steps.saturating_sub(self.batch_losses.len()),
            (&self.batch_losses, &self.batch_times),
            history,
            self.images_per_s,
        )?;
        let step = self.state.epochs_done as i64;
        events.png("predictions", step, &out.join(PREDICTIONS))?;
        events.png("confusion", step, &out.join(CONFUSION))?;
        events.flush()?;
        // The state: it commits the epoch, and holds the weights the checkpoints are copies
        // of, so that a kill between the files leaves a run that resumes (which writes the
        // checkpoints again from the state: `checkpoints_from_state`), as it does the metrics
        // and the curves (`finished`, for a run whose last epoch this is).
        let tensors = StateTensors {
            model: self.model,
            optimizer: self.optimizer,
            trained_on: self.trained_on.map(std::sync::Arc::unwrap_or_clone),
        };
        state::save(out, &self.state, &tensors)?;
        // A run this one replaces (--overwrite) goes once this one has saved an epoch.
        crate::rundir::forget_replaced(out);
        // `evaluate`'s outputs for a checkpoint replaced here described weights now gone.
        if self.improved {
            replace_checkpoint(&tensors.model, out, BEST, Replaced::Always)?;
        }
        replace_checkpoint(&tensors.model, out, LAST, Replaced::Always)?;
        history::save(out, history)?;
        pictures::save_curves(out, self.title, history)?;
        Ok(events)
    }
}

/// Training losses are logged to TensorBoard every this many steps (batches).
pub const LOSS_EVERY: usize = 10;

/// Writes an epoch's TensorBoard scalars: the training loss every [`LOSS_EVERY`] steps
/// (`train/batch_loss`, at the global step, counted from `first`, the steps of the epochs
/// before, and stamped with the time its batch was stepped), and per epoch (at the epoch
/// number, as in `metrics.csv`) `train/loss`, `train/acc`, `test/loss`, `test/acc`,
/// `test/top5`, `lr` and `images_per_s`.
fn log_epoch(
    events: &mut EventWriter,
    first: usize,
    (batch_losses, batch_times): (&[f64], &[f64]),
    history: &[EpochRecord],
    images_per_s: f64,
) -> Result<()> {
    for (b, loss) in batch_losses.iter().enumerate() {
        let step = first + b + 1;
        if step.is_multiple_of(LOSS_EVERY) {
            match batch_times.get(b) {
                Some(&at) => events.scalar_at("train/batch_loss", step as i64, *loss, at)?,
                None => events.scalar("train/batch_loss", step as i64, *loss)?,
            }
        }
    }
    let Some(r) = history.last() else {
        return Ok(());
    };
    let step = r.epoch as i64;
    for (tag, value) in [
        ("train/loss", r.train_loss),
        ("train/acc", r.train_acc),
        ("test/loss", r.test_loss),
        ("test/acc", r.test_acc),
        ("test/top5", r.test_top5),
        ("lr", r.lr),
        ("images_per_s", images_per_s),
    ] {
        events.scalar(tag, step, value)?;
    }
    Ok(())
}

/// Fails when an update of epoch `epoch` (from 1) left a weight, a BatchNorm statistic or an
/// optimizer buffer NaN or infinite, naming the first such tensor.
fn ensure_finite_after(epoch: usize, store: &ParamStore, optimizer: &dyn Optimizer) -> Result<()> {
    let found = [
        (
            "model tensor",
            layers::checkpoint::state_dict(store.varmap())?,
        ),
        ("optimizer buffer", optimizer.state()?),
    ];
    let mut first = None;
    for (what, tensors) in found {
        if let Some((name, value)) = layers::checkpoint::first_non_finite(&tensors)? {
            first = Some(format!("{what} {name} holds {value}"));
            break;
        }
    }
    // In a data-parallel job the weights are rank 0's, but each rank's optimizer buffers are
    // its own (loaded from its own copy of a resumed run): every rank learns whether any found
    // one, so that all stop together (`Diverged`).
    if let (Some(found), Some(rank)) = (&first, crate::distributed::rank()) {
        if rank.rank != 0 {
            // Rank 0 says that another rank found one; this one names it.
            crate::warn!("rank {} of {}: {found}", rank.rank, rank.size);
        }
    }
    let anywhere = crate::distributed::any_rank(first.is_some());
    let found = match (first, anywhere) {
        (Some(found), _) => found,
        (None, true) => "another rank's optimizer buffers hold a value that is not finite".into(),
        (None, false) => return Ok(()),
    };
    Err(crate::engine::Diverged(format!(
        "after the updates of epoch {epoch}, {found}: training stopped (a lower --lr may help, \
         in a new run: --resume keeps the run's); {}",
        kept(epoch - 1)
    ))
    .into())
}

/// What is kept when epoch `done + 1` fails.
fn kept(done: usize) -> String {
    if done == 0 {
        "no checkpoint was written".into()
    } else {
        format!("the checkpoints and resume state of epoch {done} are kept")
    }
}

#[derive(Default)]
struct RunProgress {
    epochs_done: usize,
    /// Optimizer steps (training batches) taken so far.
    steps_done: usize,
    best_acc: f64,
    best_epoch: usize,
    history: Vec<EpochRecord>,
}

/// The resume state after the epochs `progress` counts: where the schedule, the optimizer's
/// rate and the dropout generator stand, the history and the configuration.
fn resume_state(
    config: &RunConfig,
    optimizer: &dyn Optimizer,
    progress: &RunProgress,
    schedule: &optim::lr_scheduler::Scheduled,
    (train_loader, images, (labels, names)): (&dyn BatchSource, [usize; 2], DataSums),
    classes: &[String],
    device: &Device,
) -> ResumeState {
    ResumeState {
        epochs_done: progress.epochs_done,
        best_acc: progress.best_acc,
        best_epoch: progress.best_epoch,
        rng_state: layers::rng::state(),
        stepping: schedule.stepping,
        schedule_step: schedule.t(progress.epochs_done, 0, train_loader.num_batches()),
        lr: optimizer.learning_rate(),
        history: progress.history.clone(),
        config: config.clone(),
        images: Some(images),
        labels: Some(labels),
        names: Some(names),
        test_contents: None,
        train_contents: None,
        best_crc32c: None,
        classes: Some(classes.to_vec()),
        world_size: Some(crate::distributed::rank().map_or(1, |r| r.size)),
        threads: Some(rayon::current_num_threads()),
        device: Some(device_name(device)),
        steps_done: Some(progress.steps_done),
    }
}

/// What a resume of a run saved on `saved` (its device's name and compute threads, as its state
/// recorded them) on `device` with `threads` compute threads changes in the run's
/// exactness, if anything: another device, or on the CPU another count of threads (the
/// gradients' partial sums follow the threads), continues it to float32 rounding rather than
/// bit for bit, as PyTorch's sums differ between thread counts and devices too.
fn exactness_note(
    saved: (Option<&str>, Option<usize>),
    device: &str,
    threads: usize,
) -> Option<String> {
    let exact = "so its weights follow an uninterrupted run's to float32 rounding, not bit for bit";
    if let Some(was) = saved.0.filter(|&was| was != device) {
        return Some(format!(
            "the run trained on {was} and goes on on {device}: its sums run in another order, \
             {exact}"
        ));
    }
    let was = saved.1.filter(|&was| was != threads)?;
    (device == "cpu").then(|| {
        format!(
            "the run trained with {was} compute thread(s) and goes on with {threads}: the \
             gradients' partial sums follow the threads, {exact} (resume with \
             RAYON_NUM_THREADS={was} to continue it exactly)"
        )
    })
}

/// A note that a resume continues to float32 rounding, with what that means under
/// `--schedule plateau`: its rates follow the test loss, so one rounded otherwise can move a
/// rate to another epoch.
fn with_schedule_caveat(note: String, schedule: ScheduleKind) -> String {
    match schedule {
        ScheduleKind::Plateau => format!(
            "{note}; under --schedule plateau, whose rates follow the test loss, a loss \
             rounded otherwise can also move a rate to another epoch"
        ),
        _ => note,
    }
}

/// What a resume in memory format `now` of a run trained in `saved` changes in its exactness:
/// with cuDNN (`cudnn`: a CUDA device in a build with the feature) the two layouts run other
/// algorithms, whose sums run in another order, as PyTorch's do; elsewhere each layer computes
/// on a contiguous copy, the same numbers.
fn layout_note(saved: MemoryFormat, now: MemoryFormat, cudnn: bool) -> Option<String> {
    let name = |format| crate::flags::FlagText::flag_text(&format);
    (saved != now && cudnn).then(|| {
        format!(
            "the run trained in --memory-format {} and goes on in {}: cuDNN's convolutions of \
             the other layout sum in another order, so its weights follow an uninterrupted \
             run's to float32 rounding, not bit for bit (resume with --memory-format {} to \
             continue it exactly)",
            name(saved),
            name(now),
            name(saved)
        )
    })
}

/// The training and test splits' CRC-32C sums of their labels and of their file names (the
/// resume state's `labels` and `names`).
type DataSums = ([u32; 2], [u32; 2]);

/// The error of a run whose `--drop-last` leaves no training batch: `images` training images
/// (after `--limit-train`), fewer than one global batch of `--batch-size` on each of `world`
/// data-parallel ranks (1 in one process).
pub fn no_batch(config: &RunConfig, images: usize, world: usize) -> anyhow::Error {
    let b = config.batch_size;
    anyhow::anyhow!(
        "--drop-last with --batch-size {b}: the {images} training images (fewer than one {}) \
         make no batch, so no step would train; lower --batch-size or leave out --drop-last",
        match world {
            1 => "batch".to_string(),
            _ => format!("global batch of {world} ranks x {b} = {}", world * b),
        }
    )
}

/// The training (shuffled) or test loader that `config` describes for `dataset`.
///
/// # Errors
/// The transform cannot be parsed ([`datasets::Transform::parse`]), or the loader refuses its
/// configuration ([`Loader::new`]).
pub fn loader(config: &RunConfig, dataset: &Arc<dyn Dataset>, train: bool) -> Result<Loader> {
    let (name, batch_size, limit) = if train {
        (
            &config.train_transform,
            config.batch_size,
            config.limit_train,
        )
    } else {
        (
            &config.test_transform,
            config.test_batch_size,
            config.limit_test,
        )
    };
    let transform = datasets::Transform::parse(name)?;
    Loader::new(
        dataset.clone(),
        transform,
        LoaderConfig {
            batch_size,
            shuffle: train,
            seed: config.seed,
            // Data-parallel, the last global batch is dropped instead (distributed::shard).
            drop_last: train && config.parallel.drop_last && crate::distributed::rank().is_none(),
            workers: config.workers,
            limit,
        },
    )
}

/// `loader`'s batches as `config.data_placement` says: from the host loader, or from the data
/// held on `device` ([`ResidentLoader`]; `auto` picks it on a GPU when the transforms allow).
/// The batches are the same either way. `what` names the split in the log.
///
/// # Errors
/// The device cannot hold the data (`device` placement), or the transforms cannot run there when
/// `device` placement is asked for.
pub fn source(
    config: &RunConfig,
    loader: Loader,
    device: &Device,
    what: &str,
) -> Result<Box<dyn BatchSource>> {
    let on_device = match config.data_placement {
        DataPlacement::Host => false,
        DataPlacement::Device => true,
        DataPlacement::Auto => !device.is_cpu() && ResidentLoader::unsupported(&loader).is_none(),
    };
    if !on_device {
        return Ok(Box::new(loader));
    }
    let started = Instant::now();
    let resident = ResidentLoader::new(loader, device)
        .with_context(|| format!("cannot hold the {what} data on {}", device_name(device)))?;
    crate::say!(
        "{what} data on {}: {:.1} MB of u8 images, augmented there (loaded in {:.1} s)",
        device_name(device),
        resident.resident_bytes() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(Box::new(resident))
}

/// On resume of the run in `out` (its state `saved`, its settings now `config`): the data
/// (`data`, as [`crate::cli::load_data`] gives it, with its limits) is the run's: its classes,
/// numbers of images, labels and file names in order, as [`train`] checks them. For a program that works on the data
/// before [`train`] (a fine-tuning run builds its head for the data's classes and computes the
/// backbone's features): the refusal then comes first, not as a shape mismatch or after that
/// work.
///
/// # Errors
/// The data differs from the run's, as said.
pub fn check_resumed_data(
    out: &Path,
    config: &RunConfig,
    saved: &crate::state::ResumeState,
    data: &datasets::Split,
) -> Result<()> {
    same_data(
        out,
        saved,
        data.train.classes(),
        [data.train.len(), data.test.len()],
        data_sums(
            data.train.as_ref(),
            data.test.as_ref(),
            config.data_dir.as_deref(),
            saved.names,
        ),
    )
}

/// The training and test splits' [`DataSums`]: their labels' and their names' CRC-32C, the
/// names below `root` (the run's data directory), summed as a resumed run's state summed them
/// (`saved`: [`crate::state::names_crc_like`]).
fn data_sums(
    train: &dyn Dataset,
    test: &dyn Dataset,
    root: Option<&Path>,
    saved: Option<[u32; 2]>,
) -> DataSums {
    (
        [
            crate::state::labels_crc(train),
            crate::state::labels_crc(test),
        ],
        [
            crate::state::names_crc_like(saved.map(|s| s[0]), train, root),
            crate::state::names_crc_like(saved.map(|s| s[1]), test, root),
        ],
    )
}

/// On resume of the run in `out`: the data's classes, numbers of images (`images`) and sums
/// (`sums`) are those its state `saved` records.
fn same_data(
    out: &Path,
    saved: &crate::state::ResumeState,
    classes: &[String],
    images: [usize; 2],
    (labels, names): DataSums,
) -> Result<()> {
    same_classes(out, classes, saved.classes.as_deref())?;
    same_images(out, saved.images, images)?;
    same_labels(out, saved.labels, labels)?;
    same_names(out, saved.names, names)
}

/// The splits ("training", "test") whose sums `now` differ from the `saved` ones (none
/// without saved ones: states saved before they were kept).
fn differing_splits(saved: Option<[u32; 2]>, now: [u32; 2]) -> Vec<&'static str> {
    let Some(saved) = saved else {
        return Vec::new();
    };
    ["training", "test"]
        .into_iter()
        .zip(saved.iter().zip(&now))
        .filter(|(_, (a, b))| a != b)
        .map(|(split, _)| split)
        .collect()
}

/// Which split of the data a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SplitKind {
    Train,
    Test,
}

/// Refuses to resume the run in `out` on a split whose images changed in place since (`saved`
/// and `now` are its [`contents_crc`]; states saved before they were kept have none): as many
/// images, with the same names and labels, other contents. The run's best epoch was chosen on
/// the test images as they were (and `evaluate` refuses others as the run's test); the epochs
/// left would train on other training images than the epochs before (a resume is to reach the
/// weights of a run that never stopped).
///
/// [`contents_crc`]: crate::state::contents_crc
fn same_contents(
    out: &Path,
    split: SplitKind,
    saved: Option<u32>,
    now: Option<u32>,
    changed: &[String],
) -> Result<()> {
    match saved {
        Some(saved) if now != Some(saved) => {
            let (images, since, verb) = match split {
                SplitKind::Train => (
                    "training",
                    "trained on them: the epochs left would train on other images than the \
                     epochs before",
                    "trained on",
                ),
                SplitKind::Test => (
                    "test",
                    "tested on them; its best epoch was chosen on them as they were",
                    "tested on",
                ),
            };
            bail!(
                "--resume {}: the data is not what the run trained on: its {images} images are \
                 as many as the run's, with the same names and labels, but other contents \
                 (files changed in place since the run {since}{}); put back the files the run \
                 {verb} (their bytes as they were: a copy decoded and saved again is another \
                 file), or start a new run",
                out.display(),
                match changed {
                    [] => String::new(),
                    [one] => format!("; changed: {one}"),
                    [first, rest @ ..] => format!("; changed: {first} and {} more", rest.len()),
                },
            )
        }
        _ => Ok(()),
    }
}

/// Refuses to resume the run in `out` on images whose names, in order, are not those it
/// trained and tested on (`saved`, CRC-32C from its state; states saved before they were kept
/// have none): an image folder's held-out split drawn again after an image was added or
/// removed, with as many images and labels in the same places.
fn same_names(out: &Path, saved: Option<[u32; 2]>, now: [u32; 2]) -> Result<()> {
    let differ = differing_splits(saved, now);
    if differ.is_empty() {
        return Ok(());
    }
    bail!(
        "--resume {}: the data is not what the run trained on: its {} images are as many as \
         the run's, with the same labels, but other files (an image folder's held-out test \
         split drawn again after an image was added or removed, or files renamed); resume on \
         the files the run trained on, or start a new run",
        out.display(),
        differ.join(" and ")
    )
}

/// On resume: the data's classes (`classes`, in label order) are the run's: those its state
/// keeps (`kept`; states saved before it was kept have none), and `classes.json`, which must
/// agree with the state too (an edited or foreign copy is named as such, not blamed on the
/// data).
///
/// # Errors
/// The first class that differs, naming where.
fn same_classes(out: &Path, classes: &[String], kept: Option<&[String]>) -> Result<()> {
    let differ = |a: &[String], b: &[String], a_is: &str, b_is: &str| -> Option<String> {
        if a == b {
            return None;
        }
        Some(match a.iter().zip(b).position(|(x, y)| x != y) {
            Some(i) => format!("class {i} is {:?} in {a_is} but {:?} in {b_is}", a[i], b[i]),
            None => format!("{a_is} has {} classes, {b_is} {}", a.len(), b.len()),
        })
    };
    let path = out.join(crate::rundir::CLASSES);
    let copy: Option<Vec<String>> = match layers::file::read(&path) {
        Ok(text) => Some(
            serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a JSON list of class names", path.display()))?,
        ),
        // Runs of data sets with built-in class names may have none.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if let (Some(kept), Some(copy)) = (kept, &copy) {
        if let Some(why) = differ(copy, kept, "classes.json", crate::rundir::STATE) {
            bail!(
                "--resume {}: {} and {} disagree ({why}): classes.json was edited or comes \
                 from another run; put the run's own back (or remove it: the resume writes it \
                 again from the state)",
                out.display(),
                path.display(),
                crate::rundir::STATE
            );
        }
    }
    let (run, where_) = match (kept, &copy) {
        (Some(kept), _) => (kept.to_vec(), crate::rundir::STATE.to_string()),
        (None, Some(copy)) => (copy.clone(), path.display().to_string()),
        (None, None) => return Ok(()),
    };
    if let Some(why) = differ(classes, &run, "the data", "the run") {
        bail!(
            "--resume {}: the data's classes are not the run's ({why}; the run's are in {where_}): \
             resume on the data the run was trained on",
            out.display()
        );
    }
    Ok(())
}

/// Refuses to resume the run in `out` on data of another size than it trained and tested on
/// (`saved`, from its resume state; states saved before it was recorded have none): images
/// added or removed change the batches, and an image folder's held-out test split is drawn
/// again, so images trained on could become test images.
fn same_images(out: &Path, saved: Option<[usize; 2]>, now: [usize; 2]) -> Result<()> {
    match saved {
        Some(saved) if saved != now => bail!(
            "--resume {}: the data is not what the run trained on: it has {} training and {} \
             test images, the run had {} and {} (with its --limit-train and --limit-test); \
             resume on the same data, or start a new run",
            out.display(),
            now[0],
            now[1],
            saved[0],
            saved[1]
        ),
        _ => Ok(()),
    }
}

/// Refuses to resume the run in `out` on data whose labels, in order, are not those it trained
/// and tested on (`saved`, CRC-32C from its state; states saved before they were kept have
/// none): other images of the same number, or the same in another order (CIFAR-10's
/// ImageFolder after its binary batches, a test split swapped for the training one).
fn same_labels(out: &Path, saved: Option<[u32; 2]>, now: [u32; 2]) -> Result<()> {
    let differ = differing_splits(saved, now);
    if differ.is_empty() {
        return Ok(());
    }
    bail!(
        "--resume {}: the data is not what the run trained on: its {} images are as many as \
         the run's, but their labels in order are not the run's (other images, or the same in \
         another order); resume on the files the run trained on, or start a new run",
        out.display(),
        differ.join(" and ")
    )
}

/// The dropout generator's seed: derived from the run's seed, apart from the initialisation's.
fn dropout_seed(seed: u64) -> u64 {
    seed ^ 0x5851_F42D_4C95_7F2D
}

/// The data set's name for logs and pictures.
pub fn dataset_title(config: &RunConfig) -> &'static str {
    config.dataset.spec().title
}

/// What a transform makes of a split's images: the flag, its value and the `(C, H, W)` shape
/// of the images it gives.
pub type TransformedInput = (&'static str, String, (usize, usize, usize));

/// Refuses, before training, a transform that does not fit the data set's images (a crop larger
/// than the padded image, a normalisation of another number of channels): each split's first
/// image goes through its transform, and an error names the flag. Returns the shapes the
/// transforms give, for [`check_fits`].
///
/// # Errors
/// A transform that does not parse or does not fit, or the first image cannot be read.
pub fn check_transforms(config: &RunConfig, data: &Split) -> Result<Vec<TransformedInput>> {
    let splits: [(&'static str, &str, &dyn Dataset); 2] = [
        (
            "--train-transform",
            &config.train_transform,
            data.train.as_ref(),
        ),
        (
            "--test-transform",
            &config.test_transform,
            data.test.as_ref(),
        ),
    ];
    let mut inputs = Vec::new();
    let mut normalizations = Vec::new();
    for (flag, text, split) in splits {
        let transform =
            datasets::Transform::parse(text).with_context(|| format!("{flag} {text}"))?;
        normalizations.push(transform.normalization().clone());
        if split.is_empty() {
            continue;
        }
        let image = split.image(0).context("cannot read the first image")?;
        let shape = image.shape();
        let (given, _) = transform
            .apply(image, &mut datasets::Rng::new(0))
            .with_context(|| {
                format!(
                    "{flag} {text} does not fit the data's {}x{}x{} images",
                    shape.0, shape.1, shape.2
                )
            })?;
        inputs.push((flag, text.to_string(), given));
    }
    // Training and testing on images of another size or normalisation is most likely a
    // mistake (CIFAR-10's statistics for training, ImageNet's for testing, say); said, as the
    // model may take either.
    let quiet = crate::distributed::quiet();
    if let [(_, train, a), (_, test, b)] = &inputs[..] {
        if a != b && !quiet {
            crate::warn!(
                "--train-transform {train} makes {}x{}x{} inputs, --test-transform {test} {}x{}x{}: \
                 the model is tested on inputs of another size than it trains on",
                a.0, a.1, a.2, b.0, b.1, b.2
            );
        }
    }
    if normalizations[0] != normalizations[1] && !quiet {
        crate::warn!(
            "--train-transform {} and --test-transform {} normalise differently (mean {:?} \
             and std {:?} against {:?} and {:?}): the model is tested on inputs scaled otherwise \
             than it trains on",
            config.train_transform,
            config.test_transform,
            normalizations[0].mean(),
            normalizations[0].std(),
            normalizations[1].mean(),
            normalizations[1].std()
        );
    }
    Ok(inputs)
}

/// A batch of one image that a training run would meet ([`lone_image`]).
#[derive(Debug, PartialEq)]
pub(crate) enum LoneImage {
    /// `--batch-size 1` (per rank, without `--sync-bn`).
    BatchOfOne,
    /// The last (global) batch of each epoch: it holds `last` images, which leave `fewest` (0
    /// or 1) on rank `rank` (in one process, or with `--sync-bn`, `fewest` is `last`).
    LastBatch {
        last: usize,
        fewest: usize,
        rank: usize,
    },
}

/// Where a run of `samples` training images in batches of `batch` per rank, on `world` ranks,
/// would give a batch norm one image a step: in one process a batch of one; in a data-parallel
/// job without `sync_bn` a rank's share of a batch of one or none (a rank without images runs
/// one at a weight of zero), with `sync_bn` a global batch of one. None with `drop_last` but
/// for `--batch-size 1`. Ranks take their shares of a global batch as
/// [`crate::distributed::Sharded`] cuts them: the last ranks the fewest.
pub(crate) fn lone_image(
    samples: usize,
    batch: usize,
    world: usize,
    sync_bn: bool,
    drop_last: bool,
) -> Option<LoneImage> {
    let world = world.max(1);
    let global = batch * world;
    if global == 1 || (batch == 1 && !sync_bn) {
        return Some(LoneImage::BatchOfOne);
    }
    let last = samples % global;
    if drop_last || last == 0 {
        return None;
    }
    if world == 1 || sync_bn {
        return (last == 1).then_some(LoneImage::LastBatch {
            last,
            fewest: last,
            rank: 0,
        });
    }
    let fewest = last / world;
    (fewest <= 1).then_some(LoneImage::LastBatch {
        last,
        fewest,
        rank: world - 1,
    })
}

/// Refuses, before training, batches of one image that the model cannot train on: batch norm in
/// training needs more than one value per channel (`torch.nn.BatchNorm2d` refuses it too), so
/// a stage at 1x1 needs two images or more. Checked where `lone_image` finds such a batch: in
/// one process `--batch-size` 1 or a last batch of one image (the run would otherwise fail at
/// the end of its first epoch); in a data-parallel job also a rank's share of the last global
/// batch (without `--sync-bn`). One training-mode forward of a single zero image tells; the
/// parameters, batch-norm statistics and dropout generator are put back as they were, so the
/// run is the same as without the check.
pub fn check_last_batch(
    model: &dyn Network,
    store: &ParamStore,
    config: &RunConfig,
    samples: usize,
    inputs: &[TransformedInput],
    device: &Device,
) -> Result<()> {
    let world = crate::distributed::rank().map_or(1, |r| r.size);
    let parallel = &config.parallel;
    let lone = lone_image(
        samples,
        config.batch_size,
        world,
        parallel.sync_bn && world > 1,
        parallel.drop_last,
    );
    let Some((_, _, (c, h, w))) = inputs
        .iter()
        .find(|(flag, ..)| *flag == "--train-transform")
    else {
        return Ok(());
    };
    let Some(lone) = lone else {
        return Ok(());
    };
    let vars = store.named_vars();
    let kept: Vec<Tensor> = vars
        .iter()
        .map(|(_, v)| v.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?;
    let rng = layers::rng::state();
    let x = Tensor::zeros((1, *c, *h, *w), DType::F32, device)?;
    let forward = model.forward_t(&x, true);
    layers::rng::set_state(rng);
    for ((_, var), value) in vars.iter().zip(&kept) {
        var.set(value)?;
    }
    let model_name = &config.model;
    let (b, plural) = (config.batch_size, if samples == 1 { "" } else { "s" });
    forward.map(drop).with_context(|| match lone {
        LoneImage::BatchOfOne if world == 1 => format!(
            "--batch-size 1: {model_name} cannot train on batches of one image (batch norm \
             needs more than one value per channel); choose a --batch-size of 2 or more"
        ),
        LoneImage::BatchOfOne => format!(
            "--batch-size 1 (a rank's share of each global batch): {model_name} cannot train \
             on a rank's share of one image without --sync-bn (batch norm needs more than one \
             value per channel); choose a --batch-size of 2 or more, or add --sync-bn"
        ),
        LoneImage::LastBatch { .. } if world == 1 => format!(
            "the last training batch of each epoch would hold one image ({samples} image\
             {plural} in batches of {b}), which {model_name} cannot train on; choose another \
             --batch-size{}",
            if samples > b {
                ", or add --drop-last"
            } else {
                ""
            }
        ),
        LoneImage::LastBatch { .. } if parallel.sync_bn => format!(
            "the last global batch of each epoch would hold one image ({samples} image{plural} \
             in global batches of {world} ranks x {b} = {}), which {model_name} cannot train \
             on even with --sync-bn; choose another --batch-size, or add --drop-last",
            world * b
        ),
        LoneImage::LastBatch { last, fewest, rank } => format!(
            "the last global batch of each epoch would hold {last} image{} ({samples} image\
             {plural} in global batches of {world} ranks x {b} = {}), which leaves rank {rank} \
             {} (a rank without images runs one at a weight of zero): {model_name} cannot \
             train on a rank's share of one image without --sync-bn (batch norm needs more than \
             one value per channel); choose a --batch-size whose last global batch leaves every rank \
             two or more, add --sync-bn, or add --drop-last",
            if last == 1 { "" } else { "s" },
            world * b,
            match fewest {
                0 => "no image".to_string(),
                _ => "one image".to_string(),
            }
        ),
    })
}

/// Fails early, with a clear message, when `model` cannot take the images the transforms give
/// (`inputs`, from [`check_transforms`]): one eval-mode forward of a single zero image of each
/// shape, which must give `num_classes` logits. The training would otherwise fail at its first
/// batch (a crop of another size for the training images) or after a whole epoch (for the
/// test images).
pub fn check_fits(
    model: &dyn Network,
    name: &str,
    inputs: &[TransformedInput],
    num_classes: usize,
    device: &Device,
) -> Result<()> {
    let native = zoo::spec(name).ok().map(|s| s.input);
    let expects = native
        .map(|(c, h, w)| format!(" (it expects {c}x{h}x{w})"))
        .unwrap_or_default();
    // What to do about it: the same channels take a resize (the adaptive pooling of most zoo
    // models takes other sides), given as the whole flags; other channels need another model.
    let resized = |side: usize| -> String {
        inputs
            .iter()
            .filter(|(_, _, (_, h, w))| (*h, *w) != (side, side))
            .filter_map(|(flag, text, _)| {
                // The flag's own resizes and center crops give way to the new ones.
                let steps = datasets::Transform::parse(text).ok()?.to_string();
                let kept: Vec<&str> = steps
                    .split(',')
                    .filter(|s| !s.starts_with("resize:") && !s.starts_with("center-crop:"))
                    .collect();
                let t = datasets::Transform::parse(&kept.join(",")).ok()?;
                Some(format!("{flag} {}", t.resize(side).center_crop(side)))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let hint = |c: usize| match native {
        Some((nc, nh, _)) if nc == c => format!(
            "; resize the images to it with a resize:{nh},center-crop:{nh} step ({}), or \
             choose a --model made for these images",
            resized(nh)
        ),
        Some((nc, _, _)) => {
            format!("; it takes {nc}-channel images: choose a --model made for {c} channels")
        }
        None => String::new(),
    };
    let mut tried = Vec::new();
    for (flag, text, shape) in inputs {
        if tried.contains(shape) {
            continue;
        }
        tried.push(*shape);
        let (c, h, w) = *shape;
        let x = Tensor::zeros((1, c, h, w), DType::F32, device)?;
        let _no_grad = layers::no_grad();
        let logits = model.forward_t(&x, false).with_context(|| {
            format!(
                "model {name} does not fit the {c}x{h}x{w} images that {flag} {text} gives\
                 {expects}{}",
                hint(c)
            )
        })?;
        if logits.dims() != [1, num_classes] {
            anyhow::bail!(
                "model {name} gives outputs of shape {:?} for one {c}x{h}x{w} image ({flag} {text}); expected [1, {num_classes}]",
                logits.dims()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a batch norm would meet one image: a batch of one, a last batch of one, a rank's
    /// share of the last global batch of one or none (the last ranks take the fewest), a
    /// global batch of one with --sync-bn; never with --drop-last but for --batch-size 1.
    #[test]
    fn a_lone_image_is_found_in_one_process_and_on_each_rank() {
        use LoneImage::*;
        let last = |last, fewest, rank| Some(LastBatch { last, fewest, rank });
        // One process: (samples, batch, world, sync_bn, drop_last).
        assert_eq!(lone_image(10, 1, 1, false, false), Some(BatchOfOne));
        assert_eq!(lone_image(10, 1, 1, false, true), Some(BatchOfOne));
        assert_eq!(lone_image(10, 3, 1, false, false), last(1, 1, 0));
        assert_eq!(lone_image(10, 3, 1, false, true), None);
        assert_eq!(lone_image(11, 3, 1, false, false), None);
        assert_eq!(lone_image(1, 64, 1, false, false), last(1, 1, 0));
        // Two ranks of 2: 10 images leave a last global batch of 2, one a rank.
        assert_eq!(lone_image(10, 2, 2, false, false), last(2, 1, 1));
        assert_eq!(lone_image(10, 2, 2, true, false), None);
        assert_eq!(lone_image(10, 2, 2, false, true), None);
        // 50,000 over two ranks of 39: the last global batch holds 2 (one a rank).
        assert_eq!(lone_image(50_000, 39, 2, false, false), last(2, 1, 1));
        // Three ranks: 5 leave (2, 2, 1); 7 leave (3, 2, 2); 2 leave (1, 1, 0).
        assert_eq!(lone_image(5, 4, 3, false, false), last(5, 1, 2));
        assert_eq!(lone_image(7, 4, 3, false, false), None);
        assert_eq!(lone_image(14, 4, 3, false, false), last(2, 0, 2));
        // --sync-bn pools the ranks' statistics: only a global batch of one is lone.
        assert_eq!(lone_image(13, 4, 3, true, false), last(1, 1, 0));
        assert_eq!(lone_image(14, 4, 3, true, false), None);
        assert_eq!(lone_image(10, 1, 2, true, false), None);
        assert_eq!(lone_image(10, 1, 2, false, false), Some(BatchOfOne));
    }

    /// A resume on another device, or on the CPU with another count of threads, says that the
    /// run goes on to float32 rounding (and how to continue it exactly); the same device and
    /// threads, a GPU with other host threads, or a state that recorded neither, say nothing.
    #[test]
    fn a_resume_that_cannot_be_exact_says_so() {
        assert_eq!(exactness_note((Some("cpu"), Some(2)), "cpu", 2), None);
        assert_eq!(exactness_note((None, None), "cpu", 2), None);
        assert_eq!(
            exactness_note((Some("cuda:0"), Some(1)), "cuda:0", 16),
            None
        );
        let threads = exactness_note((Some("cpu"), Some(1)), "cpu", 2).expect("a note");
        assert!(
            threads.contains("with 1 compute thread(s) and goes on with 2")
                && threads.contains("RAYON_NUM_THREADS=1")
                && threads.contains("not bit for bit"),
            "{threads}"
        );
        let device = exactness_note((Some("cuda:0"), Some(2)), "cpu", 2).expect("a note");
        assert!(
            device.contains("trained on cuda:0 and goes on on cpu") && device.contains("rounding"),
            "{device}"
        );
        // Under --schedule plateau the note says a rate may move; under the others, unchanged.
        let plateau = with_schedule_caveat(device.clone(), ScheduleKind::Plateau);
        assert!(
            plateau.starts_with(&device) && plateau.contains("can also move a rate"),
            "{plateau}"
        );
        assert_eq!(
            with_schedule_caveat(device.clone(), ScheduleKind::Cosine),
            device
        );
    }

    /// An epoch's batch losses are logged at the steps counted from the epochs before (not the
    /// epoch's index times its own length) and stamped with their batches' times.
    #[test]
    fn batch_losses_are_logged_at_their_steps_and_times() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut events = EventWriter::create(dir.path())?;
        let losses: Vec<f64> = (0..12).map(|b| f64::from(b) / 8.0).collect();
        let times: Vec<f64> = (0..12).map(|b| 1.7e9 + f64::from(b)).collect();
        log_epoch(&mut events, 15, (&losses, &times), &[], 0.0)?;
        events.flush()?;
        let logged: Vec<(i64, f64, f32)> = crate::tensorboard::read_events(events.path())?
            .into_iter()
            .flat_map(|e| {
                let (step, at) = (e.step, e.wall_time);
                e.summary
                    .into_iter()
                    .flat_map(|s| s.value)
                    .filter(|v| v.tag == "train/batch_loss")
                    .map(move |v| (step, at, v.simple_value.unwrap_or(f32::NAN)))
            })
            .collect();
        // Steps 16-27: 20 is the fifth batch.
        assert_eq!(logged, [(20, 1.7e9 + 4.0, 0.5)]);
        Ok(())
    }

    /// An error inside an epoch says what is saved where; on a data-parallel rank other than 0
    /// (no `out`) it names neither rank 0's directory nor the last epoch as saved, since the job
    /// may end before rank 0 has written it.
    #[test]
    fn an_error_in_an_epoch_says_what_is_saved_and_where() {
        let say = |done, out| {
            format!(
                "{:#}",
                stopped_by_error(anyhow::anyhow!("bad"), done, 5, out)
            )
        };
        let out = Path::new("runs/x");
        assert!(say(0, Some(out)).contains("no epoch had finished"));
        let one = say(2, Some(out));
        assert!(
            one.contains("epoch 3 of 5")
                && one.contains("epochs 1-2 are saved in runs/x")
                && one.contains("--resume runs/x continues")
                && one.ends_with(": bad"),
            "{one}"
        );
        let other = say(2, None);
        assert!(
            other.contains("rank 0 saves the run's epochs in its --out")
                && other.contains("epoch 2, perhaps not yet")
                && !other.contains("are saved in"),
            "{other}"
        );
    }

    /// Another memory format on resume is said where it changes the sums (cuDNN), and only
    /// there.
    #[test]
    fn a_resume_in_another_memory_format_is_said_where_it_changes_the_sums() {
        let (nchw, nhwc) = (MemoryFormat::Contiguous, MemoryFormat::ChannelsLast);
        assert_eq!(layout_note(nchw, nhwc, false), None);
        assert_eq!(layout_note(nhwc, nhwc, true), None);
        let note = layout_note(nhwc, nchw, true).expect("a note");
        assert!(!note.contains("  "), "{note}");
        assert!(
            note.contains(
                "trained in --memory-format channels_last and goes on in \
                 contiguous_format"
            ) && note.contains("resume with --memory-format channels_last"),
            "{note}"
        );
    }

    /// A weight left NaN by an epoch's updates stops the run as a loss that stopped being
    /// finite does (`Diverged`): its own advice (a new run), not the `--resume` of an error
    /// whose cause can be mended; a finite one passes.
    #[test]
    fn a_non_finite_weight_keeps_its_own_advice() -> Result<()> {
        let store = ParamStore::new(0, &Device::Cpu);
        let w = store
            .vb()
            .get_with_hints(2, "w", candle_nn::Init::Const(1.0))?;
        let optimizer = optim::Sgd::new(store.named_vars(), optim::SgdConfig::new(0.1))?;
        ensure_finite_after(1, &store, &optimizer)?;
        let var = store
            .named_vars()
            .into_iter()
            .find(|(name, _)| name == "w")
            .map(|(_, var)| var)
            .expect("w");
        var.set(&Tensor::new(&[f32::NAN, 1.0], &Device::Cpu)?)?;
        assert_eq!(w.dims(), [2]);
        let err = ensure_finite_after(3, &store, &optimizer).unwrap_err();
        assert!(err.is::<crate::engine::Diverged>(), "{err:#}");
        let message = format!("{err:#}");
        assert!(
            message.contains("after the updates of epoch 3, model tensor w holds NaN")
                && message.contains("in a new run"),
            "{message}"
        );
        Ok(())
    }
}
