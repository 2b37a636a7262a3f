//! `finetune-resnet50 predict`: top-5 classes of images under a ResNet-50 checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, ModuleT, Tensor, D};
use datasets::{decode_image, ColorMode, Rng, Transform};
use layers::ParamStore;
use resnet::ResNet;

use crate::classes;
use crate::weights;

/// One image's five most probable classes, best first.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The image file.
    pub image: PathBuf,
    /// `(class name, probability)`.
    pub top5: Vec<(String, f32)>,
}

/// A ResNet-50 ready for inference with its class names.
pub struct Classifier {
    model: ResNet,
    classes: Vec<String>,
    transform: Transform,
    device: Device,
}

impl Classifier {
    /// Loads `weights` (a file or a Hub id). Class names come from `classes.json` beside a
    /// fine-tuned checkpoint, else ImageNet's for a 1000-class head.
    pub fn load(weights: &str, image_size: usize, device: &Device) -> Result<Self> {
        let path = weights::resolve(weights)?;
        let tensors = layers::checkpoint::read(&path)?;
        transfer::weights::check_resnet50(&tensors, &path)?;
        let num_classes = transfer::weights::head_classes(&tensors, &path)?;
        let classes = classes::for_checkpoint(&path, num_classes)?;
        let store = ParamStore::new(0, device);
        let model = ResNet::resnet50(num_classes, store.vb())?;
        transfer::weights::load(&store, tensors, &path, false)?;
        Ok(Self {
            model,
            classes,
            transform: Transform::imagenet_eval(image_size),
            device: device.clone(),
        })
    }

    /// The top-5 classes of the image in `path`, with softmax probabilities.
    pub fn predict(&self, path: &Path) -> Result<Prediction> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
        let img = decode_image(&bytes, ColorMode::Rgb)
            .with_context(|| format!("cannot decode image {}", path.display()))?;
        let (shape, values) = self.transform.apply(img, &mut Rng::new(0))?;
        let x = Tensor::from_vec(values, (1, shape.0, shape.1, shape.2), &Device::Cpu)?
            .to_device(&self.device)?;
        let probs = candle_nn::ops::softmax(&self.model.forward_t(&x, false)?, D::Minus1)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]));
        let top5 = order
            .into_iter()
            .take(5)
            .map(|i| (self.classes[i].clone(), probs[i]))
            .collect();
        Ok(Prediction {
            image: path.to_path_buf(),
            top5,
        })
    }
}
