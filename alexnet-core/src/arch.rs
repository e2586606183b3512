//! torchvision's AlexNet as a layer graph: names, shapes, FLOPs and cut points.
//!
//! Parameter names match torchvision's state dict (`features.0.weight` … `classifier.6.bias`), so
//! torchvision files load without remapping.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The eight learnable layers of AlexNet, in forward order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerId {
    Conv1,
    Conv2,
    Conv3,
    Conv4,
    Conv5,
    Fc6,
    Fc7,
    Fc8,
}

impl LayerId {
    /// All layers in forward order.
    pub const ALL: [LayerId; 8] =
        [LayerId::Conv1, LayerId::Conv2, LayerId::Conv3, LayerId::Conv4, LayerId::Conv5, LayerId::Fc6, LayerId::Fc7, LayerId::Fc8];

    /// Short name as used on the command line (`conv1` … `fc8`).
    pub fn name(self) -> &'static str {
        ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"][self.index()]
    }

    /// torchvision module path (`features.0` … `classifier.6`).
    pub fn module(self) -> &'static str {
        ["features.0", "features.3", "features.6", "features.8", "features.10", "classifier.1", "classifier.4", "classifier.6"][self.index()]
    }

    /// Position in forward order, 0 for conv1.
    pub fn index(self) -> usize {
        self as usize
    }

    /// State-dict name of the weight.
    pub fn weight_name(self) -> String {
        format!("{}.weight", self.module())
    }

    /// State-dict name of the bias.
    pub fn bias_name(self) -> String {
        format!("{}.bias", self.module())
    }

    /// True for conv1–conv5.
    pub fn is_conv(self) -> bool {
        self < LayerId::Fc6
    }

    /// The layer before this one, if any.
    pub fn prev(self) -> Option<LayerId> {
        self.index().checked_sub(1).map(|i| Self::ALL[i])
    }
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for LayerId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        LayerId::ALL
            .into_iter()
            .find(|l| l.name() == lower || l.module() == lower)
            .ok_or_else(|| Error::UnknownLayer { name: s.to_string(), expected: LayerId::ALL.map(|l| l.name()).join(", ") })
    }
}

/// How a layer computes, with what it does after (ReLU, max-pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LayerKind {
    /// Conv2d + ReLU, followed by a 3×3/2 max-pool when `pool_after`.
    Conv { in_channels: usize, out_channels: usize, kernel: usize, stride: usize, padding: usize, pool_after: bool },
    /// Dropout (when `dropout_before`), Linear, then ReLU when `relu_after`.
    Linear { in_features: usize, out_features: usize, dropout_before: bool, relu_after: bool },
}

/// One layer of a concrete AlexNet: its kind, parameter shapes and cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerSpec {
    pub id: LayerId,
    pub kind: LayerKind,
    pub weight_shape: Vec<usize>,
    pub bias_shape: Vec<usize>,
    /// Per-sample shape of the block's output (after ReLU / pool / flatten).
    pub output_shape: Vec<usize>,
    /// Multiply-adds ×2 per sample for the forward pass.
    pub flops: u64,
}

impl LayerSpec {
    /// Number of parameters (weight + bias).
    pub fn num_params(&self) -> usize {
        self.weight_shape.iter().product::<usize>() + self.bias_shape.iter().product::<usize>()
    }
}

/// Side of the adaptive average pool's output, fixed by torchvision's classifier (256·6·6 = 9216).
pub const POOL5_SIDE: usize = 6;
/// Max-pool window and stride used after conv1, conv2 and conv5.
pub const MAXPOOL: (usize, usize) = (3, 2);

/// A concrete AlexNet: class count and input crop size. With [`HeadSpec`] it is only a classifier
/// (fc8, optionally preceded by a hidden fc7) on another frozen backbone's features, such as
/// Inception-v3's 2048-d bottleneck; the backbone itself is a [`crate::net`] description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlexNetSpec {
    pub num_classes: usize,
    pub crop_size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadSpec>,
}

/// A classifier on `in_features`-wide backbone features: fc8 alone (the article's "retrained
/// last layer"), or with `hidden > 0` a hidden fc7 of that width (dropout before it, ReLU after).
/// The layers keep AlexNet's classifier names (`classifier.4`, `classifier.6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadSpec {
    pub in_features: usize,
    pub hidden: usize,
}

impl AlexNetSpec {
    /// An AlexNet for `num_classes` classes on 224×224 crops.
    pub fn new(num_classes: usize) -> Self {
        Self { num_classes, crop_size: 224, head: None }
    }

    /// A classifier head on `in_features`-wide features of a backbone fed `crop_size` crops.
    pub fn head(num_classes: usize, crop_size: usize, head: HeadSpec) -> Self {
        Self { num_classes, crop_size, head: Some(head) }
    }

    /// The layers this network has, in forward order: all eight, or the head's one or two.
    pub fn layer_ids(&self) -> Vec<LayerId> {
        match self.head {
            None => LayerId::ALL.to_vec(),
            Some(h) if h.hidden > 0 => vec![LayerId::Fc7, LayerId::Fc8],
            Some(_) => vec![LayerId::Fc8],
        }
    }

    /// Sets the input crop size (224 as torchvision, 227 as Caffe).
    pub fn with_crop_size(mut self, crop_size: usize) -> Self {
        self.crop_size = crop_size;
        self
    }

    /// Checks the spec: at least 2 classes, and a crop whose pool5 is exactly 6×6 (the classifier's
    /// input), so no adaptive pooling with overlapping windows is needed.
    pub fn validate(&self) -> Result<()> {
        if self.num_classes < 2 {
            return Err(Error::Config(format!("need at least 2 classes, got {}", self.num_classes)));
        }
        if let Some(h) = self.head {
            // The backbone's description checks the crop; the head needs only a width.
            return if h.in_features == 0 { Err(Error::Config("a classifier head needs at least one input feature".into())) } else { Ok(()) };
        }
        let side = self.conv_sides()[4];
        let pooled = pool_out(side);
        if pooled != POOL5_SIDE {
            return Err(Error::Config(format!(
                "crop size {} gives a {pooled}×{pooled} pool5, but the classifier needs 6×6; use a crop between 223 and 254 (224 as torchvision, 227 as Caffe)",
                self.crop_size
            )));
        }
        Ok(())
    }

    /// Spatial side of each conv layer's output (before its pool).
    fn conv_sides(&self) -> [usize; 5] {
        // Saturating: a crop smaller than conv1's kernel gives side 1, which validate() refuses.
        let c1 = (self.crop_size + 2 * 2).saturating_sub(11) / 4 + 1;
        let p1 = pool_out(c1);
        let p2 = pool_out(p1); // conv2 keeps the side (k5, p2)
        [c1, p1, p2, p2, p2]
    }

    /// Every layer ([`AlexNetSpec::layer_ids`]), in forward order.
    pub fn layers(&self) -> Vec<LayerSpec> {
        self.layer_ids().into_iter().map(|id| self.layer(id)).collect()
    }

    /// One layer's spec.
    pub fn layer(&self, id: LayerId) -> LayerSpec {
        let sides = self.conv_sides();
        let conv = |i: usize, in_c, out_c, k, s, p, pool_after| {
            let side = sides[i];
            let out_side = if pool_after { pool_out(side) } else { side };
            let output_shape = if id == LayerId::Conv5 { vec![out_c * POOL5_SIDE * POOL5_SIDE] } else { vec![out_c, out_side, out_side] };
            LayerSpec {
                id,
                kind: LayerKind::Conv { in_channels: in_c, out_channels: out_c, kernel: k, stride: s, padding: p, pool_after },
                weight_shape: vec![out_c, in_c, k, k],
                bias_shape: vec![out_c],
                output_shape,
                flops: 2 * (out_c * in_c * k * k * side * side) as u64,
            }
        };
        let linear = |inf: usize, outf: usize, dropout_before, relu_after| LayerSpec {
            id,
            kind: LayerKind::Linear { in_features: inf, out_features: outf, dropout_before, relu_after },
            weight_shape: vec![outf, inf],
            bias_shape: vec![outf],
            output_shape: vec![outf],
            flops: 2 * (inf * outf) as u64,
        };
        if let Some(h) = self.head {
            return match id {
                LayerId::Fc7 => linear(h.in_features, h.hidden, true, true),
                _ => linear(if h.hidden > 0 { h.hidden } else { h.in_features }, self.num_classes, false, false),
            };
        }
        match id {
            LayerId::Conv1 => conv(0, 3, 64, 11, 4, 2, true),
            LayerId::Conv2 => conv(1, 64, 192, 5, 1, 2, true),
            LayerId::Conv3 => conv(2, 192, 384, 3, 1, 1, false),
            LayerId::Conv4 => conv(3, 384, 256, 3, 1, 1, false),
            LayerId::Conv5 => conv(4, 256, 256, 3, 1, 1, true),
            LayerId::Fc6 => linear(256 * POOL5_SIDE * POOL5_SIDE, 4096, true, true),
            LayerId::Fc7 => linear(4096, 4096, true, true),
            LayerId::Fc8 => linear(4096, self.num_classes, false, false),
        }
    }

    /// Per-sample shape of the tensor that enters `layer` (the cut point before it).
    pub fn input_shape(&self, layer: LayerId) -> Vec<usize> {
        if let Some(h) = self.head {
            return if layer == LayerId::Fc8 && h.hidden > 0 { vec![h.hidden] } else { vec![h.in_features] };
        }
        match layer.prev() {
            None => vec![3, self.crop_size, self.crop_size],
            Some(p) => self.layer(p).output_shape,
        }
    }

    /// Every parameter name with its shape, in forward order.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.layers().into_iter().flat_map(|l| [(l.id.weight_name(), l.weight_shape), (l.id.bias_name(), l.bias_shape)]).collect()
    }
}

/// Output side of a 3×3, stride-2 max-pool without padding (floor mode); 1 for a side smaller
/// than the window (which no valid spec has).
pub fn pool_out(side: usize) -> usize {
    side.saturating_sub(MAXPOOL.0) / MAXPOOL.1 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_shapes_and_param_count() {
        let spec = AlexNetSpec::new(1000);
        spec.validate().unwrap();
        let total: usize = spec.layers().iter().map(|l| l.num_params()).sum();
        assert_eq!(total, 61_100_840); // torchvision.models.alexnet()
        let conv: usize = spec.layers().iter().filter(|l| l.id.is_conv()).map(|l| l.num_params()).sum();
        assert_eq!(conv, 2_469_696);
        assert_eq!(spec.input_shape(LayerId::Conv2), vec![64, 27, 27]);
        assert_eq!(spec.input_shape(LayerId::Conv3), vec![192, 13, 13]);
        assert_eq!(spec.input_shape(LayerId::Conv4), vec![384, 13, 13]);
        assert_eq!(spec.input_shape(LayerId::Conv5), vec![256, 13, 13]);
        assert_eq!(spec.input_shape(LayerId::Fc6), vec![9216]);
        assert_eq!(spec.input_shape(LayerId::Fc8), vec![4096]);
        assert_eq!(spec.layer(LayerId::Conv1).flops, 2 * 64 * 3 * 121 * 55 * 55);
    }

    #[test]
    fn caffe_crop_fits_and_odd_crops_are_refused() {
        AlexNetSpec::new(5).with_crop_size(227).validate().unwrap();
        let err = AlexNetSpec::new(5).with_crop_size(299).validate().unwrap_err();
        assert!(err.to_string().contains("pool5"), "{err}");
        assert!(AlexNetSpec::new(1).validate().is_err());
        // The accepted range is exactly the one the message names; tiny crops are refused, not a panic.
        let ok: Vec<usize> = (0..400).filter(|c| AlexNetSpec::new(5).with_crop_size(*c).validate().is_ok()).collect();
        assert_eq!((ok.len(), ok[0], ok[ok.len() - 1]), (32, 223, 254));
        for c in [0, 1, 10, 11, 66] {
            assert!(AlexNetSpec::new(5).with_crop_size(c).validate().is_err(), "crop {c}");
        }
    }

    #[test]
    fn layer_names_parse_both_ways() {
        assert_eq!("fc6".parse::<LayerId>().unwrap(), LayerId::Fc6);
        assert_eq!("features.10".parse::<LayerId>().unwrap(), LayerId::Conv5);
        let err = "fc9".parse::<LayerId>().unwrap_err().to_string();
        assert!(err.contains("fc9") && err.contains("conv1"), "{err}");
    }
}
