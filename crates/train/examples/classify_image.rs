//! Classifies image files with a trained checkpoint from your own code: each file decoded as
//! torchvision's default loader decodes it (RGB), resized and centre-cropped to 32x32, normalised
//! as CIFAR-10's test transform, then one eval-mode forward pass and a softmax.
//!
//! ```sh
//! cargo run --release -p train-cifar -- --epochs 3 --limit-train 5000 --lr 0.02 --out runs/cifar
//! cargo run --release -p train --example classify_image -- runs/cifar/best.safetensors cat.jpg
//! ```
//!
//! (The first command: three short epochs, 15 s on a 2-core AMD Zen 5 on 2026-12-05 (33% test
//! accuracy), a first look; the recipe's rate 0.1 on so few steps reaches about 24%, and fewer
//! steps (`--epochs 1 --limit-train 2000`) leave a network that answers one class for every
//! image.)
//!
//! The PyTorch equivalent: `model.load_state_dict(safetensors.torch.load_file(path),
//! strict=True); model.eval();
//! model(transform(Image.open(path).convert("RGB")).unsqueeze(0)).softmax(-1)`.

use anyhow::{bail, Context, Result};
use candle_core::{Device, ModuleT, Tensor, D};
use datasets::{decode_image, read_image_file, ColorMode, Rng, Transform, CIFAR10_CLASSES};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((weights, images)) = args.split_first().filter(|(_, images)| !images.is_empty())
    else {
        bail!("usage: classify_image WEIGHTS.safetensors IMAGE...");
    };
    let device = Device::Cpu;
    // Building the network makes its variables under PyTorch's names; the checkpoint then fills
    // them, every key checked (train-cifar's default model is the tutorial's ResNet-18).
    let store = layers::ParamStore::new(0, &device);
    let net = resnet::ResNet::resnet18_seed(CIFAR10_CLASSES.len(), store.vb())?;
    layers::checkpoint::load_strict(store.varmap(), weights.as_ref())?;
    // Resize(32) and CenterCrop(32) before ToTensor and Normalize: any image size goes in.
    let transform = Transform::cifar10_test().resize(32).center_crop(32);
    for image in images {
        let img = decode_image(&read_image_file(image.as_ref())?, ColorMode::Rgb)
            .with_context(|| image.clone())?;
        // The test transform draws nothing at random; the generator is for random steps.
        let ((c, h, w), pixels) = transform.apply(img, &mut Rng::new(0))?;
        let x = Tensor::from_vec(pixels, (1, c, h, w), &device)?;
        let _no_grad = layers::no_grad(); // as `with torch.no_grad():`, no autograd graph
        let logits = net.forward_t(&x, false)?; // (1, 10); false: eval mode
        let probs = candle_nn::ops::softmax(&logits, D::Minus1)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = ranked[..3]
            .iter()
            .map(|(k, p)| format!("{} {:.1}%", CIFAR10_CLASSES[*k], 100.0 * p))
            .collect();
        println!("{image}: {}", top.join(", "));
    }
    Ok(())
}
