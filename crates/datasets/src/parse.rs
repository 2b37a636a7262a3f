//! The command-line grammar of [`Transform`].
//!
//! ```text
//! spec      := preset | step ("," step)*
//! preset    := "mnist-train" | "mnist-test" | "cifar10-train" | "cifar10-test"
//!            | "imagenet-train" [":" SIZE] | "imagenet-eval" [":" SIZE]     (SIZE defaults to 224)
//! step      := "random-crop:" SIZE [":" PADDING]        RandomCrop(SIZE, padding=PADDING or 0)
//!            | "flip" [":" P]                           RandomHorizontalFlip(P or 0.5)
//!            | "resize:" SIZE                           Resize(SIZE), shorter side
//!            | "center-crop:" SIZE                      CenterCrop(SIZE)
//!            | "random-resized-crop:" SIZE [":" S0 ":" S1 [":" R0 ":" R1]]
//!                                                       RandomResizedCrop(SIZE, scale=(S0, S1),
//!                                                       ratio=(R0, R1)); defaults (0.08, 1), (3/4, 4/3)
//!            | "to-tensor"                              ToTensor only (the default ending)
//!            | "normalize:" NAME                        NAME: mnist | cifar10 | imagenet
//!            | "normalize:" M1/M2/.. ":" S1/S2/..       explicit means and stds
//! ```
//! `normalize` may appear once, as the last step. Whitespace around steps is ignored.
//! Example: `random-crop:32:4,flip,normalize:cifar10` is [`Transform::cifar10_train`].

use crate::transform::{CIFAR10_MEAN_STD, IMAGENET_MEAN_STD, MNIST_MEAN_STD};
use crate::{Op, Transform};
use anyhow::{bail, ensure, Context, Result};
use std::fmt;
use std::str::FromStr;

impl FromStr for Transform {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> Result<Self> {
        parse(spec).with_context(|| format!("invalid transform {spec:?}"))
    }
}

impl Transform {
    /// Parses the grammar documented in this module (see [`FromStr`]).
    ///
    /// # Errors
    /// An unknown preset or step, a malformed number, or values that [`Transform::validate`]
    /// refuses; the message names the part.
    pub fn parse(spec: &str) -> Result<Self> {
        spec.parse()
    }
}

fn parse(spec: &str) -> Result<Transform> {
    let spec = spec.trim();
    ensure!(!spec.is_empty(), "empty transform");
    if let Some(preset) = preset(spec)? {
        return Ok(preset);
    }
    let steps: Vec<&str> = spec.split(',').map(str::trim).collect();
    let mut t = Transform::to_tensor();
    for (i, step) in steps.iter().enumerate() {
        let mut parts = step.split(':');
        let name = parts.next().unwrap_or_default();
        let args: Vec<&str> = parts.collect();
        let last = i + 1 == steps.len();
        t = match (name, args.as_slice()) {
            ("random-crop", [size]) => t.random_crop(num(size)?, 0),
            ("random-crop", [size, pad]) => t.random_crop(num(size)?, num(pad)?),
            ("flip", []) => t.random_horizontal_flip(0.5),
            ("flip", [p]) => t.random_horizontal_flip(prob(p)?),
            ("resize", [size]) => t.resize(num(size)?),
            ("center-crop", [size]) => t.center_crop(num(size)?),
            ("random-resized-crop", [size]) => t.random_resized_crop(num(size)?),
            ("random-resized-crop", [size, s0, s1]) => t.then(Op::RandomResizedCrop {
                size: num(size)?,
                scale: (float(s0)?, float(s1)?),
                ratio: (3.0 / 4.0, 4.0 / 3.0),
            }),
            ("random-resized-crop", [size, s0, s1, r0, r1]) => t.then(Op::RandomResizedCrop {
                size: num(size)?,
                scale: (float(s0)?, float(s1)?),
                ratio: (float(r0)?, float(r1)?),
            }),
            ("to-tensor", []) if last => t,
            ("normalize", [named]) if last => {
                let (mean, std) = named_stats(named)?;
                t.normalize(&mean, &std)?
            }
            ("normalize", [mean, std]) if last => t.normalize(&floats(mean)?, &floats(std)?)?,
            ("normalize" | "to-tensor", _) if !last => {
                bail!("{step:?} must be the last step")
            }
            _ => bail!(
                "unknown step {step:?} (expected random-crop:SIZE[:PAD], flip[:P], resize:SIZE, \
                 center-crop:SIZE, random-resized-crop:SIZE, to-tensor or normalize:...; a \
                 preset ({PRESETS}) stands alone)"
            ),
        };
    }
    t.validate()?;
    Ok(t)
}

/// The presets' names, as errors and help texts list them.
pub const PRESETS: &str =
    "mnist-train, mnist-test, cifar10-train, cifar10-test, imagenet-train[:SIZE], imagenet-eval[:SIZE]";

fn preset(spec: &str) -> Result<Option<Transform>> {
    let (name, size) = match spec.split_once(':') {
        Some((name, size)) => (name, Some(size)),
        None => (spec, None),
    };
    let has_size = size.is_some();
    let size = || -> Result<usize> {
        let size = size.map_or(Ok(224), num)?;
        // Before `imagenet-eval`'s resize to `size * 256 / 224`, which must stay within
        // MAX_SIDE too; 0 is refused by `validate`.
        let most = match name {
            "imagenet-eval" => crate::transform::MAX_SIDE * 224 / 256,
            _ => crate::transform::MAX_SIDE,
        };
        ensure!(
            size <= most,
            "{name}:{size}: size {size} is over {most} pixels, the largest {name} takes{}",
            match name {
                "imagenet-eval" => format!(
                    " (it resizes to size x 256 / 224 first, at most {} pixels)",
                    crate::transform::MAX_SIDE
                ),
                _ => String::new(),
            }
        );
        Ok(size)
    };
    let preset = match (name, has_size) {
        ("mnist-train", false) => Transform::mnist_train(),
        ("mnist-test", false) => Transform::mnist_test(),
        ("cifar10-train", false) => Transform::cifar10_train(),
        ("cifar10-test", false) => Transform::cifar10_test(),
        ("imagenet-train", _) => Transform::imagenet_train(size()?),
        ("imagenet-eval", _) => Transform::imagenet_eval(size()?),
        _ => return Ok(None),
    };
    preset.validate()?;
    Ok(Some(preset))
}

fn named_stats(name: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    Ok(match name {
        "mnist" => (MNIST_MEAN_STD.0.to_vec(), MNIST_MEAN_STD.1.to_vec()),
        "cifar10" => (CIFAR10_MEAN_STD.0.to_vec(), CIFAR10_MEAN_STD.1.to_vec()),
        "imagenet" => (IMAGENET_MEAN_STD.0.to_vec(), IMAGENET_MEAN_STD.1.to_vec()),
        _ => bail!(
            "unknown normalization {name:?} (expected mnist, cifar10, imagenet or M1/M2:S1/S2)"
        ),
    })
}

fn num(s: &str) -> Result<usize> {
    let n: usize = s
        .trim()
        .parse()
        .with_context(|| format!("{s:?} is not a non-negative integer"))?;
    Ok(n)
}

fn prob(s: &str) -> Result<f64> {
    s.trim()
        .parse()
        .with_context(|| format!("{s:?} is not a probability"))
}

fn float(s: &str) -> Result<f64> {
    s.trim()
        .parse()
        .with_context(|| format!("{s:?} is not a number"))
}

fn floats(s: &str) -> Result<Vec<f32>> {
    s.split('/')
        .map(|v| {
            v.trim()
                .parse::<f32>()
                .with_context(|| format!("{v:?} is not a number"))
        })
        .collect()
}

/// Writes the grammar's step form (a preset's steps; `normalize:NAME` for the named statistics),
/// which parses back to an equal transform.
impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |v: &[f32]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("/")
        };
        let mut steps: Vec<String> = self
            .ops()
            .iter()
            .map(|op| match op {
                Op::RandomCrop { size, padding: 0 } => format!("random-crop:{size}"),
                Op::RandomCrop { size, padding } => format!("random-crop:{size}:{padding}"),
                Op::RandomHorizontalFlip { p } if *p == 0.5 => "flip".to_string(),
                Op::RandomHorizontalFlip { p } => format!("flip:{p}"),
                Op::Resize { size } => format!("resize:{size}"),
                Op::CenterCrop { size } => format!("center-crop:{size}"),
                Op::RandomResizedCrop { size, scale, ratio } => format!(
                    "random-resized-crop:{size}:{}:{}:{}:{}",
                    scale.0, scale.1, ratio.0, ratio.1
                ),
            })
            .collect();
        let norm = self.normalization();
        let named = [
            (
                "mnist",
                MNIST_MEAN_STD.0.as_slice(),
                MNIST_MEAN_STD.1.as_slice(),
            ),
            ("cifar10", &CIFAR10_MEAN_STD.0, &CIFAR10_MEAN_STD.1),
            ("imagenet", &IMAGENET_MEAN_STD.0, &IMAGENET_MEAN_STD.1),
        ]
        .into_iter()
        .find(|(_, mean, std)| norm.mean() == *mean && norm.std() == *std);
        steps.push(match named {
            _ if norm.is_identity() => "to-tensor".to_string(),
            Some((name, ..)) => format!("normalize:{name}"),
            None => format!("normalize:{}:{}", join(norm.mean()), join(norm.std())),
        });
        f.write_str(&steps.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_examples() {
        let t: Transform = "random-crop:32:4,flip,normalize:cifar10".parse().unwrap();
        assert_eq!(t, Transform::cifar10_train());
        assert_eq!(Transform::parse("cifar10-train").unwrap(), t);
        assert_eq!(
            Transform::parse("imagenet-eval").unwrap(),
            Transform::imagenet_eval(224)
        );
        assert_eq!(
            Transform::parse("resize:256, center-crop:224 ,normalize:imagenet").unwrap(),
            Transform::imagenet_eval(224)
        );
        assert_eq!(
            Transform::parse("normalize:0.1307:0.3081").unwrap(),
            Transform::mnist_train()
        );
        assert_eq!(
            Transform::parse("random-resized-crop:96,flip:0.25,to-tensor").unwrap(),
            Transform::to_tensor()
                .random_resized_crop(96)
                .random_horizontal_flip(0.25)
        );
    }

    #[test]
    fn display_round_trips() {
        for t in [
            Transform::cifar10_train(),
            Transform::imagenet_train(128),
            Transform::imagenet_eval(224),
            Transform::to_tensor().random_crop(28, 2),
            Transform::parse("random-resized-crop:64:0.5:1:1:2").unwrap(),
        ] {
            assert_eq!(Transform::parse(&t.to_string()).unwrap(), t, "{t}");
        }
        // The presets' steps as one writes them.
        for (preset, steps) in [
            ("cifar10-train", "random-crop:32:4,flip,normalize:cifar10"),
            ("cifar10-test", "normalize:cifar10"),
            ("mnist-train", "normalize:mnist"),
            (
                "imagenet-eval",
                "resize:256,center-crop:224,normalize:imagenet",
            ),
        ] {
            assert_eq!(Transform::parse(preset).unwrap().to_string(), steps);
        }
        assert_eq!(
            Transform::parse("random-crop:28,flip:0.25,normalize:0.5:0.25")
                .unwrap()
                .to_string(),
            "random-crop:28,flip:0.25,normalize:0.5:0.25"
        );
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "",
            "crop:32",
            "random-crop:x",
            "flip:2",
            "normalize:cifar10,flip",
            "normalize:foo",
            "normalize:0.5/0.5:0.5",
            "random-crop:0",
            "imagenet-eval:abc",
            // Sizes of 0 and sizes whose arithmetic would overflow (they panicked).
            "imagenet-eval:0",
            "imagenet-train:0",
            "imagenet-eval:18446744073709551615",
            "random-crop:32:9223372036854775807",
            "random-crop:32:18446744073709551615",
            "center-crop:18446744073709551615",
            "resize:4294967295",
            "random-resized-crop:16385",
            // A normalize mean that is not finite (it made every loss NaN).
            "normalize:nan:1",
            "normalize:inf/0:1/1",
            "normalize:1e39:1",
        ] {
            let err = Transform::parse(bad).unwrap_err();
            assert!(
                format!("{err:#}").contains("invalid transform"),
                "{bad}: {err:#}"
            );
        }
        let err = format!("{:#}", Transform::parse("resize:16385").unwrap_err());
        assert!(err.contains("size 16385 is over 16384 pixels"), "{err}");
        let err = format!("{:#}", Transform::parse("imagenet-eval:99999").unwrap_err());
        assert!(
            err.contains("imagenet-eval:99999: size 99999 is over 14336 pixels"),
            "{err}"
        );
        // Within MAX_SIDE itself, but not once resized by 256 / 224: the size given is named.
        let err = format!("{:#}", Transform::parse("imagenet-eval:15000").unwrap_err());
        assert!(
            err.contains("imagenet-eval:15000: size 15000 is over 14336 pixels"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            Transform::parse("imagenet-train:16385").unwrap_err()
        );
        assert!(err.contains("size 16385 is over 16384 pixels"), "{err}");
        Transform::parse("imagenet-train:16384").unwrap();
        let err = format!("{:#}", Transform::parse("normalize:nan:1").unwrap_err());
        assert!(err.contains("normalize mean must be finite"), "{err}");
        // The largest sizes still parse.
        Transform::parse("random-crop:16384:16384,resize:16384,center-crop:16384").unwrap();
        Transform::parse("imagenet-eval:14336").unwrap();
    }
}
