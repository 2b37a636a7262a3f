//! torchvision-style transforms: geometric steps on u8 images, then `ToTensor` + `Normalize`
//! into f32. Randomness comes from a per-sample [`Rng`].

use crate::geometry::{
    center_crop_origin, crop_fill, hflip, random_resized_crop_params, shorter_side_size,
};
use crate::resize::resize_bilinear;
use crate::{Rng, U8Image};
use anyhow::{bail, ensure, Result};

/// The largest size (and padding) a transform step takes, in pixels: beyond it an image is
/// gigabytes, and sizes near `usize::MAX` would overflow the arithmetic.
pub const MAX_SIDE: usize = 16_384;

/// MNIST's normalisation (mean, std), as in the PyTorch MNIST example.
pub const MNIST_MEAN_STD: ([f32; 1], [f32; 1]) = ([0.1307], [0.3081]);
/// CIFAR-10's per-channel normalisation (mean, std).
pub const CIFAR10_MEAN_STD: ([f32; 3], [f32; 3]) =
    ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]);
/// ImageNet's per-channel normalisation (mean, std).
pub const IMAGENET_MEAN_STD: ([f32; 3], [f32; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);

/// One geometric step, with torchvision's semantics on PIL images.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `RandomCrop(size, padding)`: zero-pad each side by `padding`, crop a random square.
    RandomCrop {
        /// Output side.
        size: usize,
        /// Zero padding added on every side first.
        padding: usize,
    },
    /// `RandomHorizontalFlip(p)`: mirror with probability `p`.
    RandomHorizontalFlip {
        /// Flip probability.
        p: f64,
    },
    /// `Resize(size)` with an int: the shorter side becomes `size` (bilinear, antialiased).
    Resize {
        /// New shorter side.
        size: usize,
    },
    /// `CenterCrop(size)`: the central square (zero-padded if the image is smaller).
    CenterCrop {
        /// Output side.
        size: usize,
    },
    /// `RandomResizedCrop(size, scale, ratio)`: a random crop resized to a square.
    RandomResizedCrop {
        /// Output side.
        size: usize,
        /// Range of the crop's area as a fraction of the image's.
        scale: (f64, f64),
        /// Range of the crop's aspect ratio (width / height).
        ratio: (f64, f64),
    },
}

impl Op {
    /// Applies this step to `img`, drawing from `rng` when random.
    ///
    /// # Errors
    /// A random crop larger than the padded image.
    pub fn apply(&self, mut img: U8Image, rng: &mut Rng) -> Result<U8Image> {
        let (_, h, w) = img.shape();
        Ok(match *self {
            Op::RandomCrop { size, padding } => {
                let (top, left) = random_crop_origin(h, w, size, padding, rng)?;
                let pad = padding as isize;
                crop_fill(&img, top - pad, left - pad, size, size)
            }
            Op::RandomHorizontalFlip { p } => {
                if rng.next_f64() < p {
                    hflip(&mut img);
                }
                img
            }
            Op::Resize { size } => {
                let (oh, ow) = shorter_side_size(h, w, size);
                resize_bilinear(&img, oh, ow)
            }
            Op::CenterCrop { size } => {
                let (top, left) = center_crop_origin(h, w, size, size);
                crop_fill(&img, top, left, size, size)
            }
            Op::RandomResizedCrop { size, scale, ratio } => {
                let (top, left, ch, cw) = random_resized_crop_params(h, w, scale, ratio, rng);
                let crop = crop_fill(&img, top as isize, left as isize, ch, cw);
                resize_bilinear(&crop, size, size)
            }
        })
    }
}

/// `RandomCrop(size, padding)`'s draw for an `h` x `w` image: the crop's top-left corner in the
/// padded image (torchvision's `get_params`, no draw when the crop is the whole padded image).
pub(crate) fn random_crop_origin(
    h: usize,
    w: usize,
    size: usize,
    padding: usize,
    rng: &mut Rng,
) -> Result<(isize, isize)> {
    let (ph, pw) = (h + 2 * padding, w + 2 * padding);
    ensure!(
        ph >= size && pw >= size,
        "required crop size ({size}, {size}) is larger than the padded image size ({ph}, {pw})"
    );
    if (ph, pw) == (size, size) {
        return Ok((0, 0));
    }
    let top = rng.below((ph - size + 1) as u64) as isize;
    Ok((top, rng.below((pw - size + 1) as u64) as isize))
}

/// `Normalize(mean, std)` after `ToTensor`: `(x / 255 - mean) / std` in f32, per channel
/// (one value applies to every channel). Kept as a 256-entry table per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    mean: Vec<f32>,
    std: Vec<f32>,
    tables: Vec<[f32; 256]>,
}

impl Normalize {
    /// Checks lengths and that every std is non-zero.
    ///
    /// # Errors
    /// No means, a different number of means and stds, a std that is zero or not finite, or a
    /// mean that is not finite.
    pub fn new(mean: &[f32], std: &[f32]) -> Result<Self> {
        ensure!(
            !mean.is_empty() && mean.len() == std.len(),
            "normalize needs as many means as stds (got {} and {})",
            mean.len(),
            std.len()
        );
        ensure!(
            std.iter().all(|&s| s != 0.0 && s.is_finite()),
            "normalize std must be finite and non-zero, got {std:?}"
        );
        ensure!(
            mean.iter().all(|m| m.is_finite()),
            "normalize mean must be finite, got {mean:?}"
        );
        Ok(Self::build(mean, std))
    }

    /// Builds the tables without checks (for the presets' constants).
    fn build(mean: &[f32], std: &[f32]) -> Self {
        let tables = mean
            .iter()
            .zip(std)
            .map(|(&m, &s)| std::array::from_fn(|x| (x as f32 / 255.0 - m) / s))
            .collect();
        Self {
            mean: mean.to_vec(),
            std: std.to_vec(),
            tables,
        }
    }

    /// `ToTensor` alone: `x / 255`.
    pub fn identity() -> Self {
        Self::build(&[0.0], &[1.0])
    }

    /// Per-channel means.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// Per-channel standard deviations.
    pub fn std(&self) -> &[f32] {
        &self.std
    }

    /// Whether this is plain `ToTensor` (mean 0, std 1).
    pub fn is_identity(&self) -> bool {
        self.mean == [0.0] && self.std == [1.0]
    }

    /// Writes `img` as normalised f32 CHW into `out` (exactly `img.data.len()` long).
    ///
    /// # Errors
    /// The table's channels do not match the image's (one value fits any), or `out` has another
    /// length than the image.
    pub fn write(&self, img: &U8Image, out: &mut [f32]) -> Result<()> {
        ensure!(
            self.tables.len() == 1 || self.tables.len() == img.channels,
            "normalize has {} channel values but the image has {} channel{}",
            self.tables.len(),
            img.channels,
            if img.channels == 1 { "" } else { "s" }
        );
        ensure!(
            out.len() == img.data.len(),
            "output buffer holds {} values, the image {}",
            out.len(),
            img.data.len()
        );
        let plane = img.plane_len();
        for (c, (dst, src)) in out
            .chunks_exact_mut(plane)
            .zip(img.data.chunks_exact(plane))
            .enumerate()
        {
            let table = &self.tables[if self.tables.len() == 1 { 0 } else { c }];
            for (o, &p) in dst.iter_mut().zip(src) {
                *o = table[usize::from(p)];
            }
        }
        Ok(())
    }
}

/// A pipeline: geometric [`Op`]s on u8, then `ToTensor` + [`Normalize`] into f32.
///
/// ```
/// use datasets::Transform;
/// let t = Transform::to_tensor()
///     .random_crop(32, 4)
///     .random_horizontal_flip(0.5)
///     .normalize(&[0.4914, 0.4822, 0.4465], &[0.2470, 0.2435, 0.2616])
///     .unwrap();
/// assert_eq!(t, Transform::cifar10_train());
/// assert_eq!(t, "random-crop:32:4,flip,normalize:cifar10".parse().unwrap());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    ops: Vec<Op>,
    normalize: Normalize,
}

impl Default for Transform {
    fn default() -> Self {
        Self::to_tensor()
    }
}

impl Transform {
    /// `ToTensor()` alone: u8 to f32 in `[0, 1]`.
    pub fn to_tensor() -> Self {
        Self {
            ops: Vec::new(),
            normalize: Normalize::identity(),
        }
    }

    /// `ToTensor()` + `Normalize(mean, std)`.
    ///
    /// # Errors
    /// As [`Normalize::new`].
    pub fn to_tensor_normalize(mean: &[f32], std: &[f32]) -> Result<Self> {
        Self::to_tensor().normalize(mean, std)
    }

    /// Appends a geometric step.
    pub fn then(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }

    /// Appends `RandomCrop(size, padding)` (zero padding).
    pub fn random_crop(self, size: usize, padding: usize) -> Self {
        self.then(Op::RandomCrop { size, padding })
    }

    /// Appends `RandomHorizontalFlip(p)`.
    pub fn random_horizontal_flip(self, p: f64) -> Self {
        self.then(Op::RandomHorizontalFlip { p })
    }

    /// Appends `Resize(shorter_side)`.
    pub fn resize(self, shorter_side: usize) -> Self {
        self.then(Op::Resize { size: shorter_side })
    }

    /// Appends `CenterCrop(size)`.
    pub fn center_crop(self, size: usize) -> Self {
        self.then(Op::CenterCrop { size })
    }

    /// Appends `RandomResizedCrop(size)` with torchvision's defaults: scale (0.08, 1), ratio
    /// (3/4, 4/3).
    pub fn random_resized_crop(self, size: usize) -> Self {
        self.then(Op::RandomResizedCrop {
            size,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        })
    }

    /// Sets the final `Normalize(mean, std)` (replacing any earlier one).
    ///
    /// # Errors
    /// As [`Normalize::new`].
    pub fn normalize(mut self, mean: &[f32], std: &[f32]) -> Result<Self> {
        self.normalize = Normalize::new(mean, std)?;
        Ok(self)
    }

    /// MNIST training: `ToTensor`, `Normalize((0.1307,), (0.3081,))`.
    pub fn mnist_train() -> Self {
        Self::with_norm(Self::to_tensor(), &MNIST_MEAN_STD.0, &MNIST_MEAN_STD.1)
    }

    /// MNIST evaluation: the same as [`Transform::mnist_train`].
    pub fn mnist_test() -> Self {
        Self::mnist_train()
    }

    /// CIFAR-10 training: `RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`, `ToTensor`,
    /// `Normalize` with [`CIFAR10_MEAN_STD`].
    pub fn cifar10_train() -> Self {
        let t = Self::to_tensor()
            .random_crop(32, 4)
            .random_horizontal_flip(0.5);
        Self::with_norm(t, &CIFAR10_MEAN_STD.0, &CIFAR10_MEAN_STD.1)
    }

    /// CIFAR-10 evaluation: `ToTensor`, `Normalize` with [`CIFAR10_MEAN_STD`].
    pub fn cifar10_test() -> Self {
        Self::with_norm(Self::to_tensor(), &CIFAR10_MEAN_STD.0, &CIFAR10_MEAN_STD.1)
    }

    /// ImageNet training: `RandomResizedCrop(size)`, `RandomHorizontalFlip()`, `ToTensor`,
    /// `Normalize` with [`IMAGENET_MEAN_STD`].
    pub fn imagenet_train(size: usize) -> Self {
        let t = Self::to_tensor()
            .random_resized_crop(size)
            .random_horizontal_flip(0.5);
        Self::with_norm(t, &IMAGENET_MEAN_STD.0, &IMAGENET_MEAN_STD.1)
    }

    /// ImageNet evaluation: `Resize(size * 256 / 224)`, `CenterCrop(size)`, `ToTensor`,
    /// `Normalize` with [`IMAGENET_MEAN_STD`] (256 then 224 for `size = 224`).
    pub fn imagenet_eval(size: usize) -> Self {
        let t = Self::to_tensor().resize(size * 256 / 224).center_crop(size);
        Self::with_norm(t, &IMAGENET_MEAN_STD.0, &IMAGENET_MEAN_STD.1)
    }

    /// Presets use constants that always pass [`Normalize::new`]'s checks.
    fn with_norm(mut self, mean: &[f32], std: &[f32]) -> Self {
        self.normalize = Normalize::build(mean, std);
        self
    }

    /// The geometric steps, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Whether an image may come out differently each time (a random crop, a flip with a
    /// probability strictly between 0 and 1): its results cannot be computed once and reused.
    pub fn is_random(&self) -> bool {
        self.ops.iter().any(|op| match op {
            Op::RandomCrop { .. } | Op::RandomResizedCrop { .. } => true,
            Op::RandomHorizontalFlip { p } => *p > 0.0 && *p < 1.0,
            Op::Resize { .. } | Op::CenterCrop { .. } => false,
        })
    }

    /// The final normalisation.
    pub fn normalization(&self) -> &Normalize {
        &self.normalize
    }

    /// Checks every step's parameters (sizes > 0, probabilities in [0, 1], valid ranges).
    ///
    /// # Errors
    /// The first step with a size of 0 or over [`MAX_SIDE`] (or such a padding), a probability
    /// outside `[0, 1]`, or a scale or ratio range that is not positive and increasing.
    pub fn validate(&self) -> Result<()> {
        let at_most = |op: &Op, what: &str, value: usize| {
            ensure!(
                value <= MAX_SIDE,
                "{op:?}: {what} {value} is over {MAX_SIDE} pixels, the largest a transform takes \
                 (a {MAX_SIDE} x {MAX_SIDE} RGB image is 805 MB)"
            );
            Ok(())
        };
        for op in &self.ops {
            match *op {
                Op::RandomCrop { size, padding } => {
                    ensure!(size > 0, "{op:?}: size must be positive");
                    at_most(op, "size", size)?;
                    at_most(op, "padding", padding)?;
                }
                Op::Resize { size } | Op::CenterCrop { size } => {
                    ensure!(size > 0, "{op:?}: size must be positive");
                    at_most(op, "size", size)?;
                }
                Op::RandomHorizontalFlip { p } => {
                    ensure!((0.0..=1.0).contains(&p), "{op:?}: p must be in [0, 1]")
                }
                Op::RandomResizedCrop { size, scale, ratio } => {
                    ensure!(size > 0, "{op:?}: size must be positive");
                    at_most(op, "size", size)?;
                    if !(0.0 < scale.0 && scale.0 <= scale.1 && 0.0 < ratio.0 && ratio.0 <= ratio.1)
                    {
                        bail!("{op:?}: scale and ratio must be positive, increasing ranges");
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs the geometric steps on `img`.
    ///
    /// # Errors
    /// A step that does not fit `img` (a random crop larger than the padded image).
    pub fn augment(&self, img: U8Image, rng: &mut Rng) -> Result<U8Image> {
        self.ops.iter().try_fold(img, |img, op| op.apply(img, rng))
    }

    /// Runs the whole pipeline: returns the `(c, h, w)` shape and the f32 CHW values.
    ///
    /// # Errors
    /// A step that does not fit `img`, or a normalisation with another number of channels.
    pub fn apply(&self, img: U8Image, rng: &mut Rng) -> Result<((usize, usize, usize), Vec<f32>)> {
        let img = self.augment(img, rng)?;
        let mut out = vec![0f32; img.data.len()];
        self.normalize.write(&img, &mut out)?;
        Ok((img.shape(), out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(c: usize, h: usize, w: usize) -> U8Image {
        U8Image::new(c, h, w, (0..c * h * w).map(|v| (v % 251) as u8).collect()).unwrap()
    }

    /// Random steps make a transform random; resizes, centre crops and certain flips do not.
    #[test]
    fn randomness_is_known() -> Result<()> {
        for (text, random) in [
            ("cifar10-train", true),
            ("cifar10-test", false),
            ("imagenet-eval", false),
            ("random-crop:32:4,normalize:cifar10", true),
            ("resize:40,center-crop:32,normalize:cifar10", false),
            ("flip,normalize:cifar10", true),
        ] {
            assert_eq!(Transform::parse(text)?.is_random(), random, "{text}");
        }
        assert!(!Transform::to_tensor()
            .random_horizontal_flip(1.0)
            .resize(8)
            .is_random());
        Ok(())
    }

    #[test]
    fn normalize_matches_torchvision_formula() {
        let t = Transform::cifar10_test();
        let img = U8Image::new(3, 1, 2, vec![0, 255, 128, 3, 77, 200]).unwrap();
        let (shape, out) = t.apply(img.clone(), &mut Rng::new(0)).unwrap();
        assert_eq!(shape, (3, 1, 2));
        for (i, (&o, &p)) in out.iter().zip(&img.data).enumerate() {
            let c = i / 2;
            let expected = (p as f32 / 255.0 - CIFAR10_MEAN_STD.0[c]) / CIFAR10_MEAN_STD.1[c];
            assert_eq!(o.to_bits(), expected.to_bits());
        }
    }

    #[test]
    fn one_normalize_value_broadcasts_and_wrong_count_errors() {
        let img = ramp(3, 2, 2);
        let (_, out) = Transform::mnist_test()
            .apply(img.clone(), &mut Rng::new(0))
            .unwrap();
        assert_eq!(out[5], (5.0 / 255.0 - 0.1307) / 0.3081);
        let two = Transform::to_tensor_normalize(&[0.5, 0.5], &[0.5, 0.5]).unwrap();
        assert!(two.apply(img, &mut Rng::new(0)).is_err());
        assert!(Normalize::new(&[0.5], &[0.0]).is_err());
        assert!(Normalize::new(&[0.5, 0.1], &[0.2]).is_err());
    }

    #[test]
    fn random_crop_covers_every_offset_and_pads_with_zeros() {
        let t = Transform::to_tensor().random_crop(4, 2);
        let img = U8Image::new(1, 4, 4, vec![255; 16]).unwrap();
        let mut corners = std::collections::HashSet::new();
        for i in 0..2000 {
            let out = t
                .augment(img.clone(), &mut Rng::for_sample(1, 0, i))
                .unwrap();
            assert_eq!(out.shape(), (1, 4, 4));
            let lit = out.data.iter().filter(|&&p| p == 255).count();
            let zeros = out.data.iter().filter(|&&p| p == 0).count();
            assert_eq!(lit + zeros, 16);
            // Offsets 0..=4 in each direction: the lit window is (4 - |dy|) x (4 - |dx|).
            corners.insert((out.data[0], out.data[15], lit));
        }
        assert!(corners.len() >= 10, "{corners:?}");
        let too_big = Transform::to_tensor().random_crop(9, 2);
        assert!(too_big.augment(img, &mut Rng::new(0)).is_err());
    }

    #[test]
    fn flip_probability_is_respected() {
        let img = ramp(1, 1, 3);
        let t = Transform::to_tensor().random_horizontal_flip(0.5);
        let flips = (0..4000)
            .filter(|&i| {
                let out = t
                    .augment(img.clone(), &mut Rng::for_sample(3, 0, i))
                    .unwrap();
                out.data == [2, 1, 0]
            })
            .count();
        assert!((1800..2200).contains(&flips), "{flips} flips of 4000");
        let never = Transform::to_tensor().random_horizontal_flip(0.0);
        assert_eq!(never.augment(img.clone(), &mut Rng::new(0)).unwrap(), img);
    }

    #[test]
    fn imagenet_eval_gives_the_center_square() {
        let t = Transform::imagenet_eval(224);
        assert_eq!(
            t.ops(),
            &[Op::Resize { size: 256 }, Op::CenterCrop { size: 224 }]
        );
        let (shape, _) = t.apply(ramp(3, 300, 400), &mut Rng::new(0)).unwrap();
        assert_eq!(shape, (3, 224, 224));
        let (shape, _) = Transform::imagenet_train(64)
            .apply(ramp(3, 50, 90), &mut Rng::new(1))
            .unwrap();
        assert_eq!(shape, (3, 64, 64));
    }

    #[test]
    fn same_rng_same_output() {
        let t = Transform::cifar10_train();
        let img = ramp(3, 32, 32);
        let a = t
            .apply(img.clone(), &mut Rng::for_sample(5, 2, 17))
            .unwrap();
        let b = t.apply(img, &mut Rng::for_sample(5, 2, 17)).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn validate_rejects_bad_parameters() {
        assert!(Transform::to_tensor().random_crop(0, 1).validate().is_err());
        assert!(Transform::to_tensor()
            .random_horizontal_flip(1.5)
            .validate()
            .is_err());
        assert!(Transform::imagenet_train(224).validate().is_ok());
    }
}
