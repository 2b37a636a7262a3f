//! `finetune-resnet50 predict`: top-5 classes of images under a ResNet checkpoint (a file or
//! a Hub id; any of torchvision's five depths), through the training programs' shared [`train::inference::Predictor`].

use std::path::Path;

use anyhow::Result;
use candle_core::Device;
use datasets::Transform;
use layers::ParamStore;
use resnet::ResNet;

use crate::classes;
use crate::weights;

/// A ResNet (the depth its checkpoint has) ready for inference with its class names.
pub struct Classifier {
    model: ResNet,
    classes: Vec<String>,
    image_size: usize,
    device: Device,
    /// The checkpoint file, for errors.
    weights: std::path::PathBuf,
}

impl Classifier {
    /// Loads `weights` (a file or a Hub id), a torchvision ResNet of any of
    /// [`transfer::MODELS`], told by its keys. Class names come from `classes.json` beside a
    /// fine-tuned checkpoint, else ImageNet's for a 1000-class head. The input side is
    /// `image_size`, or without one the fine-tuning run's (its `finetune.json` beside the
    /// checkpoint), else 224.
    pub fn load(weights: &str, image_size: Option<usize>, device: &Device) -> Result<Self> {
        let path = weights::resolve(weights, transfer::MODEL)?;
        let tensors = layers::checkpoint::read(&path)?;
        let model = transfer::weights::model_of(&tensors, &path)?;
        let num_classes = transfer::weights::head_classes(&tensors, &path, model)?;
        let image_size = match image_size {
            Some(size) => size,
            None => run_image_size(&path, num_classes != IMAGENET_CLASSES)?.unwrap_or(224),
        };
        let classes = classes::for_checkpoint(&path, num_classes)?;
        let store = ParamStore::new(0, device);
        // Frozen (requires_grad_(False)): a forward pass builds no autograd graph.
        let net = transfer::build(model, num_classes, store.vb_frozen(|_| true))?;
        transfer::weights::load(&store, tensors, &path, model, false)?;
        Ok(Self {
            model: net,
            classes,
            image_size,
            device: device.clone(),
            weights: path,
        })
    }

    /// The top-5 classes of the image in `path`, with softmax probabilities, best first, and
    /// the network's logits (`Resize(size * 256 / 224)`, `CenterCrop(size)`, ImageNet's
    /// normalisation).
    pub fn predict(&self, path: &Path) -> Result<train::inference::Prediction> {
        train::inference::Predictor::new(
            &self.model,
            Transform::imagenet_eval(self.image_size),
            (3, self.image_size),
            &self.classes,
            &self.device,
        )?
        .named(&self.weights)
        .predict(path)
    }
}

/// The class count of ImageNet's head: a checkpoint with another was fine-tuned.
const IMAGENET_CLASSES: usize = 1000;

/// The image size a fine-tuning run trained at, when `weights` lies in its directory (beside
/// its `finetune.json`). A `fine_tuned` checkpoint (a head of other than ImageNet's classes)
/// without it is said to be read at 224.
fn run_image_size(weights: &Path, fine_tuned: bool) -> Result<Option<usize>> {
    let dir = match weights.parent() {
        Some(dir) if dir.as_os_str().is_empty() => Path::new("."),
        Some(dir) => dir,
        None => return Ok(None),
    };
    if !dir.join(train::rundir::FINETUNE).is_file() {
        if fine_tuned || dir.join(train::rundir::CLASSES).is_file() {
            // A fine-tuned checkpoint whose run settings are gone: the size is a guess.
            train::warn!(
                "no {} beside {}: taking image size 224 (--image-size sets the run's)",
                train::rundir::FINETUNE,
                weights.display()
            );
        }
        return Ok(None);
    }
    let size = crate::finetune::FineTuneConfig::load(dir)?.image_size;
    train::say!(
        "image size {size}, as the fine-tuning run in {} (--image-size sets another)",
        dir.display()
    );
    Ok(Some(size))
}
