//! The fine-tuning run: pretrained ResNet (ResNet-50 unless `--model` says), new head, frozen backbone, the shared engine.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_nn::ModuleT;
use datasets::{Loader, LoaderConfig, Transform};
use layers::ParamStore;
use serde::{Deserialize, Serialize};
use train::config::{DatasetKind, RunConfig};
use train::features::CachedFeatures;
use train::run::{train, Outcome, Trainee};
use train::source::BatchSource;
use transfer::{FineTune, Head, Unfreeze};

use crate::weights;

/// What fine-tuning adds to a training run's configuration (saved as `finetune.json`, so that
/// `--resume` rebuilds the same model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTuneConfig {
    /// A `.safetensors` file or a Hub model id.
    pub weights: String,
    /// How much of the backbone trains.
    pub unfreeze: Unfreeze,
    /// Side of the square network input.
    pub image_size: usize,
    /// RandomResizedCrop + flip for training (else the evaluation transform).
    pub augment: bool,
}

impl FineTuneConfig {
    /// The training and test transforms: ImageNet preprocessing at `image_size`.
    pub fn transforms(&self) -> (String, String) {
        let eval = format!("imagenet-eval:{}", self.image_size);
        let train = if self.augment {
            format!("imagenet-train:{}", self.image_size)
        } else {
            eval.clone()
        };
        (train, eval)
    }

    /// Before a resume: this `finetune.json` of the run in `dir` is the one its state keeps
    /// (`RunConfig::program_settings` of `saved`, the state's configuration; runs saved before
    /// it was kept are not checked). An edited or foreign `finetune.json` would have the resume
    /// check the flags against settings the run does not have, train another part of the
    /// backbone (`unfreeze`), and record them.
    ///
    /// # Errors
    /// The two differ: the settings named with both values.
    pub fn check_agrees_with_state(&self, saved: &RunConfig, dir: &Path) -> Result<()> {
        let Some(kept) = &saved.program_settings else {
            return Ok(());
        };
        let here = serde_json::to_value(self)?;
        let differ: Vec<String> = match (here.as_object(), kept.as_object()) {
            (Some(here), Some(kept)) => here
                .iter()
                .filter(|(name, value)| kept.get(*name) != Some(*value))
                .map(|(name, value)| {
                    let there = kept.get(name).map_or("nothing".into(), |v| v.to_string());
                    format!("{name} {value} there, {there} in the state")
                })
                .collect(),
            _ => vec![format!("{here} there, {kept} in the state")],
        };
        anyhow::ensure!(
            differ.is_empty(),
            "--resume {}: {} and {} disagree ({}): it comes from another run, or was edited \
             (--resume continues the state's run; --weights, --unfreeze, --image-size and \
             --augment cannot change); put the run's own {} back",
            dir.display(),
            train::rundir::FINETUNE,
            train::rundir::STATE,
            differ.join("; "),
            train::rundir::FINETUNE
        );
        Ok(())
    }

    /// Whether the backbone's features can be computed once: nothing in it trains and the
    /// inputs do not change between epochs (no --augment, and a `train_transform` without
    /// random steps: a `--train-transform cifar10-train` is drawn anew each epoch).
    pub fn caches_features(&self, train_transform: &Transform) -> bool {
        self.unfreeze == Unfreeze::None && !self.augment && !train_transform.is_random()
    }

    fn path(dir: &Path) -> PathBuf {
        dir.join(train::rundir::FINETUNE)
    }

    /// Whether the run directory `dir` holds a `finetune.json` (anything by that name: what
    /// is not a readable one is [`FineTuneConfig::load`]'s to name).
    pub fn exists(dir: &Path) -> bool {
        std::fs::symlink_metadata(Self::path(dir)).is_ok()
    }

    /// Writes `finetune.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output directory {}", dir.display()))?;
        train::atomic::write_bytes(&Self::path(dir), &serde_json::to_vec_pretty(self)?)
    }

    /// Reads `finetune.json` from a run directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let text = layers::file::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (is this a fine-tuning run?)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
    }
}

/// Where the network's weights come from before training.
enum Start<'a> {
    /// The pretrained file (`--weights`, or its Hub download) and its tensors, by PyTorch name.
    Pretrained(
        PathBuf,
        std::collections::HashMap<String, candle_core::Tensor>,
    ),
    /// A resumed run's state, by PyTorch name.
    State(&'a std::collections::HashMap<String, candle_core::Tensor>),
}

/// What a fine-tuning run's pictures are headed.
pub fn title(run: &RunConfig) -> String {
    format!(
        "{} fine-tuned on {}",
        run.model,
        train::run::dataset_title(run)
    )
}

/// Fine-tunes as `run` and `ft` say, on the data `run` names, writing into `out`.
pub fn finetune(
    run: &RunConfig,
    ft: &FineTuneConfig,
    out: &Path,
    resume: Option<(train::state::ResumeState, train::state::StateTensors)>,
) -> Result<Outcome> {
    // The pretrained file (or its Hub download) first: a wrong --weights is said before the
    // data is loaded. A resumed run takes its state's weights.
    let start = match &resume {
        Some((_, saved)) => Start::State(&saved.model),
        None => {
            let path = weights::resolve(&ft.weights, &run.model)?;
            let tensors = layers::checkpoint::read(&path)?;
            // What the file is not (another depth than --model's, other names, a head of
            // other features) is said before the data is read too.
            transfer::weights::check(&tensors, &path, &run.model)?;
            transfer::weights::head_classes(&tensors, &path, &run.model)?;
            Start::Pretrained(path, tensors)
        }
    };
    // Checked before the head is built for the data's classes and the features computed; a
    // fresh run's classes on the whole split, before a --limit-* subset is drawn.
    let data = match &resume {
        Some((saved, _)) => train::cli::load_resumed_data(run, &saved.config)?,
        None => train::cli::load_data_then(run, |whole| {
            train::cli::refuse_unused_test_fraction(run, whole)?;
            train::cli::refuse_a_class_outside_a_split(run, whole)
        })?,
    };
    if let Some((saved, _)) = &resume {
        train::run::check_resumed_data(out, run, saved, &data)?;
    }
    train::run::check_transforms(run, &data)?;
    let classes = data.train.classes().to_vec();
    let device = train::device::parse_device(&train::distributed::device_spec(&run.device))?;
    let store = ParamStore::new(run.seed, &device);
    // The frozen part's parameters enter it detached (PyTorch's requires_grad_(False)): its
    // forward passes build no autograd graph, so each activation is freed once read (a
    // ResNet-50 batch of 128 at 224x224 otherwise holds about 20 GB until its end).
    let (unfreeze, head) = (ft.unfreeze, transfer::classifier()?);
    let net = transfer::build(
        &run.model,
        classes.len(),
        store.vb_frozen(move |name| !unfreeze.trains(name, head)),
    )?;
    // A fine-tuned checkpoint of these very classes (its run's classes.json beside it, the
    // same names in the same order) keeps its head: fine-tuning in two stages, the head first,
    // then --unfreeze, continues from the trained head, as load_state_dict of the whole
    // fine-tuned model does in PyTorch. Any other checkpoint gets a new head.
    let mut kept_head = false;
    // A fine-tuned head of as many classes whose classes.json names others: why it is new.
    let mut other_classes = false;
    let loaded = match start {
        // The run's own weights, the pretrained backbone included: resuming needs neither the
        // Hub nor the --weights file (the backbone's features are computed before the rest of
        // the state is restored).
        Start::State(model) => {
            layers::checkpoint::load_tensors_strict(store.varmap(), model)
                .context("restoring the model from the resume state")?;
            format!(
                "the weights of {} (pretrained: {})",
                out.join(train::rundir::STATE).display(),
                ft.weights
            )
        }
        Start::Pretrained(path, tensors) => {
            let beside = train::inference::classes_beside(&path, classes.len());
            let as_many =
                transfer::weights::head_classes(&tensors, &path, &run.model)? == classes.len();
            kept_head = as_many && beside.as_deref() == Some(&classes[..]);
            other_classes = as_many && beside.is_some() && !kept_head;
            transfer::weights::load(&store, tensors, &path, &run.model, !kept_head)?;
            // A Hub id with the cached file it names; a file once.
            match Path::new(&ft.weights) == path {
                true => ft.weights.clone(),
                false => format!("{} ({})", ft.weights, path.display()),
            }
        }
    };
    let head = match (resume.is_some(), kept_head) {
        (true, _) => "its head",
        (false, true) => {
            "its fine-tuned head (the same classes, as the classes.json beside it says)"
        }
        (false, false) if other_classes => {
            "a new head (the classes.json beside the checkpoint names other classes than the \
             data's)"
        }
        (false, false) => "a new head",
    };
    train::say!(
        "loaded {loaded}, a ResNet-{}; {head} for {} classes; training {}",
        transfer::depth(&run.model)?,
        classes.len(),
        match ft.unfreeze {
            Unfreeze::None => "the head only (backbone frozen)",
            Unfreeze::Layer4 => "layer4 and the head",
            Unfreeze::Layer3 => "layer3, layer4 and the head",
            Unfreeze::All => "every layer",
        }
    );
    // From here the batches take the memory (the backbone's features too, batch by batch).
    train::run::advise_on_out_of_memory(run, out, resume.is_some());
    let model = FineTune::new(net, ft.unfreeze)?;
    let train_images = train::run::loader(run, &data.train, true)?;
    let test_images = train::run::loader(run, &data.test, false)?;
    // --drop-last leaving no batch, refused before the backbone's features are computed (in one
    // process: a data-parallel job's ranks are checked on their shares when training starts).
    if train_images.num_batches() == 0 {
        return Err(train::run::no_batch(run, train_images.used(), 1));
    }
    if train::distributed::writes() {
        ft.save(out)?;
    }
    let title = title(run);
    let trainable = model.trainable(&store);
    let head = Head(model.net());
    // Data-parallel: the same data and model on every rank, then rank 0's weights, before the
    // frozen backbone's features are computed (a rank's own --weights file could differ).
    train::distributed::agree_on_data(
        data.train.as_ref(),
        data.test.as_ref(),
        &store,
        &trainable,
        &device,
    )?;
    train::distributed::broadcast_weights(&store)?;
    let cached: (CachedFeatures, CachedFeatures);
    let sources: (Box<dyn BatchSource>, Box<dyn BatchSource>);
    let (trained, train_source, test_source): (&dyn ModuleT, &dyn BatchSource, &dyn BatchSource) =
        if ft.caches_features(&Transform::parse(&run.train_transform)?) {
            train::say!(
                "backbone frozen and no augmentation: computing its features once, then training the head on them"
            );
            train::memory::on_out_of_memory(format!(
                "The backbone's features are computed in batches of --test-batch-size (now {}): \
                 a smaller one needs less{}.",
                run.test_batch_size,
                match resume.is_some() {
                    true => " (in a new run: this run keeps its own)",
                    false => "",
                }
            ));
            let unshuffled = Loader::new(
                data.train.clone(),
                Transform::parse(&run.train_transform)?,
                LoaderConfig {
                    batch_size: run.test_batch_size,
                    shuffle: false,
                    seed: run.seed,
                    drop_last: false,
                    workers: run.workers,
                    limit: run.limit_train,
                },
            )?;
            let started = std::time::Instant::now();
            cached = (
                CachedFeatures::compute(
                    &|x| model.frozen_features(x),
                    &unshuffled,
                    run.test_batch_size,
                    &device,
                    run.batch_size,
                    Some(run.seed),
                    run.precision,
                    "features: train".into(),
                )?
                // As the training images' loader drops (data-parallel, the last global batch is
                // dropped instead, in distributed::shard).
                .drop_last(train_images.config().drop_last),
                CachedFeatures::compute(
                    &|x| model.frozen_features(x),
                    &test_images,
                    run.test_batch_size,
                    &device,
                    run.test_batch_size,
                    None,
                    run.precision,
                    "features: test".into(),
                )?,
            );
            // Every training image's features were computed, those --drop-last leaves out of
            // an epoch too.
            let computed = unshuffled.num_samples();
            let images = computed + cached.1.num_samples();
            let seconds = started.elapsed().as_secs_f64();
            let shared = match train::distributed::rank() {
                Some(rank) if rank.size > 1 => {
                    format!(", each of the {} processes computing a share", rank.size)
                }
                _ => String::new(),
            };
            train::say!(
                "features of {} training and {} test images computed in {seconds:.1} s \
                 ({:.0} img/s{shared}); the epochs' times are the head's alone",
                computed,
                cached.1.num_samples(),
                images as f64 / seconds.max(1e-9)
            );
            (&head, &cached.0, &cached.1)
        } else {
            sources = (
                train::run::source(run, train_images, &device, "train")?,
                train::run::source(run, test_images, &device, "test")?,
            );
            (&model, sources.0.as_ref(), sources.1.as_ref())
        };
    let trainee = Trainee {
        model: trained,
        store: &store,
        trainable,
        train: train_source,
        test: test_source,
        train_images: data.train.as_ref(),
        test_images: data.test.as_ref(),
        classes,
        title,
        device,
    };
    train(run, trainee, out, resume)
}

/// What `--data-dir` holds: CIFAR-10 (its batches, archive or class folders), or with
/// `--folder`, or any other folder of class subfolders, the user's own ImageFolder. Says which
/// reading was chosen.
pub fn dataset_kind(folder: bool, data_dir: Option<&Path>) -> DatasetKind {
    let kind = match data_dir {
        Some(dir) if folder || !datasets::is_cifar10(dir) => DatasetKind::Folder,
        _ => DatasetKind::Cifar10,
    };
    // A folder that is not there is said so by the reader, without a line on how it is read.
    if let Some(dir) = data_dir.filter(|d| d.exists()) {
        train::say!(
            "reading {} as {}{}",
            dir.display(),
            kind.spec().title,
            if kind == DatasetKind::Folder && !folder {
                " (not CIFAR-10: it holds no CIFAR-10 batches or archive, nor CIFAR-10's ten \
                 class folders)"
            } else {
                ""
            }
        );
    }
    kind
}
