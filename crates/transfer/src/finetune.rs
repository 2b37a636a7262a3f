//! The tutorial's transfer-learning model: a pretrained ResNet with a new `fc`, the backbone
//! frozen up to a chosen depth.

use candle_core::{Module, ModuleT, Result, Tensor};
use clap::ValueEnum;
use layers::{Network, ParamStore};
use resnet::ResNet;
use serde::{Deserialize, Serialize};

/// How much of the backbone trains along with the new head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Unfreeze {
    /// Only the new `fc` (the tutorial's `requires_grad = False` on every other parameter).
    None,
    /// `layer4` and `fc`.
    Layer4,
    /// `layer3`, `layer4` and `fc`.
    Layer3,
    /// Every parameter.
    All,
}

impl Unfreeze {
    /// Whether residual stage `index` (0 = `layer1`) trains.
    pub fn stage_trains(self, index: usize) -> bool {
        match self {
            Unfreeze::None => false,
            Unfreeze::Layer4 => index >= 3,
            Unfreeze::Layer3 => index >= 2,
            Unfreeze::All => true,
        }
    }

    /// Whether the parameter `name` trains, `head` being the classifier's module name (`fc`,
    /// see [`crate::classifier`]).
    pub fn trains(self, name: &str, head: &str) -> bool {
        let in_head = name
            .strip_prefix(head)
            .is_some_and(|rest| rest.starts_with('.'));
        if in_head || self == Unfreeze::All {
            return true;
        }
        (0..4).any(|i| self.stage_trains(i) && name.starts_with(&format!("layer{}.", i + 1)))
    }
}

/// A pretrained ResNet (one of [`crate::MODELS`]) whose frozen part always runs in evaluation mode, so that its batch norms
/// keep their ImageNet statistics, as `requires_grad = False` plus `model.eval()` on the
/// frozen modules does in PyTorch.
pub struct FineTune {
    net: ResNet,
    unfreeze: Unfreeze,
    head: &'static str,
}

impl FineTune {
    /// Wraps `net`, training the parts `unfreeze` names and the classifier (`fc`, the zoo's
    /// name for it).
    ///
    /// # Errors
    /// The zoo has no ResNet-50 entry (see [`crate::classifier`]).
    pub fn new(net: ResNet, unfreeze: Unfreeze) -> anyhow::Result<Self> {
        Ok(Self {
            net,
            unfreeze,
            head: crate::classifier()?,
        })
    }

    /// The network.
    pub fn net(&self) -> &ResNet {
        &self.net
    }

    /// The variables the optimizer updates (no running statistics).
    pub fn trainable(&self, store: &ParamStore) -> Vec<(String, candle_core::Var)> {
        store
            .trainable()
            .into_iter()
            .filter(|(name, _)| self.unfreeze.trains(name, self.head))
            .collect()
    }

    /// The pooled features of the frozen backbone (evaluation mode throughout): 512 per image
    /// for ResNet-18 and 34, 2048 for the deeper ones.
    ///
    /// # Errors
    /// As [`ResNet::features_t`]: input `(N, 3, H, W)`, output `(N, features)`.
    pub fn frozen_features(&self, xs: &Tensor) -> Result<Tensor> {
        self.net.features_t(xs, false)
    }
}

impl ModuleT for FineTune {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut ys = self
            .net
            .stem_forward_t(xs, train && self.unfreeze == Unfreeze::All)?;
        for i in 0..self.net.num_stages() {
            ys = self
                .net
                .stage_forward_t(i, &ys, train && self.unfreeze.stage_trains(i))?;
        }
        self.net.fc().forward(&self.net.pool(&ys)?)
    }
}

impl Network for FineTune {
    fn forward_stages(&self, xs: &Tensor) -> Result<Vec<(String, Tensor)>> {
        self.net.forward_stages(xs)
    }
}

/// The head alone, for training on cached backbone features.
pub struct Head<'a>(pub &'a ResNet);

impl ModuleT for Head<'_> {
    fn forward_t(&self, features: &Tensor, _train: bool) -> Result<Tensor> {
        self.0.fc().forward(features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfreeze_selects_parameters_by_stage() {
        let head = crate::classifier().expect("the zoo has resnet50");
        assert_eq!(head, "fc");
        assert!(Unfreeze::None.trains("fc.weight", head));
        assert!(!Unfreeze::None.trains("fc2.weight", head));
        assert!(!Unfreeze::None.trains("layer4.0.conv1.weight", head));
        assert!(Unfreeze::Layer4.trains("layer4.0.conv1.weight", head));
        assert!(!Unfreeze::Layer4.trains("layer3.0.conv1.weight", head));
        assert!(Unfreeze::Layer3.trains("layer3.5.bn3.weight", head));
        assert!(!Unfreeze::Layer3.trains("conv1.weight", head));
        assert!(Unfreeze::All.trains("conv1.weight", head));
        assert!(!Unfreeze::Layer4.trains("layer40.weight", head));
    }
}
