//! Freeze policy: how deep to fine-tune.

use crate::arch::LayerId;
use crate::weights::WeightSet;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Trains from `first_trainable` through fc8; everything before it is frozen (no gradient, not
/// updated, and cacheable). fc8 is always re-created for the user's classes and always trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FreezePolicy {
    first_trainable: LayerId,
}

impl FreezePolicy {
    /// Policies accepted on the command line, shallowest first.
    pub const NAMES: [&'static str; 9] = ["fc8", "fc7", "fc6", "conv5", "conv4", "conv3", "conv2", "conv1", "all"];

    /// Fine-tune from `layer` through fc8.
    pub fn from_layer(layer: LayerId) -> Self {
        Self { first_trainable: layer }
    }

    /// Fine-tune every layer.
    pub fn all() -> Self {
        Self::from_layer(LayerId::Conv1)
    }

    /// The first trainable layer.
    pub fn first_trainable(&self) -> LayerId {
        self.first_trainable
    }

    /// Whether `layer` is trained under this policy.
    pub fn is_trainable(&self, layer: LayerId) -> bool {
        layer >= self.first_trainable
    }

    /// Frozen layers, in forward order (possibly none).
    pub fn frozen(&self) -> Vec<LayerId> {
        LayerId::ALL.into_iter().filter(|l| !self.is_trainable(*l)).collect()
    }

    /// Trainable layers, in forward order (always ends with fc8).
    pub fn trainable(&self) -> Vec<LayerId> {
        LayerId::ALL.into_iter().filter(|l| self.is_trainable(*l)).collect()
    }

    /// The trained layers as a range for tables: `fc6–fc8`, or `fc8` alone.
    pub fn trained_span(&self) -> String {
        match self.first_trainable {
            LayerId::Fc8 => LayerId::Fc8.to_string(),
            first => format!("{first}–{}", LayerId::Fc8),
        }
    }

    /// True when there is a frozen prefix whose output can be cached.
    pub fn has_frozen_prefix(&self) -> bool {
        self.first_trainable != LayerId::Conv1
    }

    /// Name of the cut point: the features that enter the first trainable layer.
    pub fn cut_name(&self) -> &'static str {
        match self.first_trainable {
            LayerId::Conv1 => "image",
            LayerId::Conv2 => "pool1",
            LayerId::Conv3 => "pool2",
            LayerId::Conv4 => "conv3",
            LayerId::Conv5 => "conv4",
            LayerId::Fc6 => "pool5",
            LayerId::Fc7 => "fc6",
            LayerId::Fc8 => "fc7",
        }
    }

    /// Refuses to freeze a layer that has no pretrained weights: a frozen random layer throws
    /// information away for good. `allow_random_frozen` overrides this, for experiments.
    pub fn validate(&self, weights: &WeightSet, allow_random_frozen: bool) -> Result<()> {
        let random: Vec<_> = self.frozen().into_iter().filter(|l| !weights.is_learned(*l)).collect();
        if random.is_empty() || allow_random_frozen {
            return Ok(());
        }
        let names: Vec<_> = random.iter().map(|l| l.name()).collect();
        let deepest_ok = LayerId::ALL
            .into_iter()
            .take_while(|l| weights.is_learned(*l))
            .last()
            .and_then(|l| LayerId::ALL.get(l.index() + 1).copied())
            .map(|l| l.name())
            .unwrap_or("all");
        Err(Error::Freeze(format!(
            "--finetune {self} would freeze {} but they have no pretrained weights (they start from a seeded random initialisation, and a frozen random layer never learns); fine-tune from {deepest_ok} or deeper, give a weights file that has them, or pass --allow-random-frozen",
            names.join(", ")
        )))
    }
}

impl Default for FreezePolicy {
    /// fc6–fc8: the article's default depth, and the deepest cacheable one with conv-only weights.
    fn default() -> Self {
        Self::from_layer(LayerId::Fc6)
    }
}

impl fmt::Display for FreezePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first_trainable == LayerId::Conv1 { f.write_str("all") } else { f.write_str(self.first_trainable.name()) }
    }
}

impl FromStr for FreezePolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(Self::all());
        }
        s.parse::<LayerId>()
            .map(Self::from_layer)
            .map_err(|_| Error::Freeze(format!("unknown --finetune value {s:?}: expected one of {}", Self::NAMES.join(", "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::AlexNetSpec;
    use crate::weights::LayerSource;

    fn conv_only_weights() -> WeightSet {
        let spec = AlexNetSpec::new(5);
        let mut w = WeightSet::initialised(&spec, 1);
        for l in LayerId::ALL.into_iter().filter(|l| l.is_conv()) {
            w.set_source(l, LayerSource::Pretrained { file: "conv.safetensors".into() });
        }
        w
    }

    #[test]
    fn parse_and_split_layers() {
        let p: FreezePolicy = "conv5".parse().unwrap();
        assert_eq!(p.frozen(), vec![LayerId::Conv1, LayerId::Conv2, LayerId::Conv3, LayerId::Conv4]);
        assert_eq!(p.trainable(), vec![LayerId::Conv5, LayerId::Fc6, LayerId::Fc7, LayerId::Fc8]);
        assert_eq!(p.cut_name(), "conv4");
        assert_eq!(p.trained_span(), "conv5–fc8");
        assert_eq!(FreezePolicy::from_layer(LayerId::Fc8).trained_span(), "fc8");
        let all: FreezePolicy = "all".parse().unwrap();
        assert!(all.frozen().is_empty() && !all.has_frozen_prefix());
        assert_eq!(all.to_string(), "all");
        let err = "fc9".parse::<FreezePolicy>().unwrap_err().to_string();
        assert!(err.contains("fc9") && err.contains("conv5"), "{err}");
    }

    #[test]
    fn refuses_to_freeze_random_layers() {
        let w = conv_only_weights();
        for ok in ["fc6", "conv5", "conv1", "all"] {
            ok.parse::<FreezePolicy>().unwrap().validate(&w, false).unwrap();
        }
        let err = "fc7".parse::<FreezePolicy>().unwrap().validate(&w, false).unwrap_err().to_string();
        assert!(err.contains("fc6") && err.contains("no pretrained weights") && err.contains("fine-tune from fc6"), "{err}");
        assert!("fc8".parse::<FreezePolicy>().unwrap().validate(&w, false).is_err());
        "fc8".parse::<FreezePolicy>().unwrap().validate(&w, true).unwrap();
    }
}
