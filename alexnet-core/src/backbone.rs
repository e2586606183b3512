//! Backbones: the pretrained networks a classifier can be trained on. AlexNet is fine-tuned at
//! any depth by the backends' own models; any other backbone is a [`crate::net`] description
//! whose frozen prefix runs on the backend's primitive ops, with a trainable head after it.

use crate::backend::{Model, Stage, StepStats, TrainState};
use crate::data::Preprocess;
use crate::net::{Extractor, Graph};
use crate::tensor::HostTensor;
use crate::weights::WeightSet;
use crate::{Error, FreezePolicy, Result, Targets};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A pretrained network to transfer from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Backbone {
    /// torchvision's AlexNet, fine-tuned at the depth the freeze policy says.
    #[default]
    #[serde(rename = "alexnet")]
    AlexNet,
    /// TensorFlow's Inception-v3 (2015-12-05), frozen to its 2048-d bottleneck, with a new head.
    #[serde(rename = "inception-v3")]
    InceptionV3,
}

impl Backbone {
    pub const ALL: [Backbone; 2] = [Backbone::AlexNet, Backbone::InceptionV3];

    /// Name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Backbone::AlexNet => "alexnet",
            Backbone::InceptionV3 => "inception-v3",
        }
    }

    /// The preprocessing its weights were trained with: AlexNet 256 → 224 with ImageNet
    /// statistics; Inception-v3 299 → 299 with (x − 128)/128.
    pub fn preprocess(self) -> Preprocess {
        match self {
            Backbone::AlexNet => Preprocess::default(),
            Backbone::InceptionV3 => {
                let m = crate::net::INCEPTION_MEAN_STD;
                let s = crate::net::INCEPTION_CROP as u32;
                Preprocess { resize: s, crop: s, mean: [m; 3], std: [m; 3] }
            }
        }
    }

    /// The cut its head trains on (`None` for AlexNet, whose depth the freeze policy picks).
    pub fn head_cut(self) -> Option<&'static str> {
        match self {
            Backbone::AlexNet => None,
            Backbone::InceptionV3 => Some(crate::net::INCEPTION_CUT),
        }
    }

    /// The frozen backbone's description on `crop`-sized inputs and the cut its head trains on
    /// (`None` for AlexNet).
    pub fn frozen_graph(self, crop: usize) -> Result<Option<(Graph, &'static str)>> {
        match self {
            Backbone::AlexNet => Ok(None),
            Backbone::InceptionV3 => Ok(Some((crate::net::inception_v3(crop)?, crate::net::INCEPTION_CUT))),
        }
    }

    /// The weights file `alexnet weights fetch --backbone <name>` writes.
    pub fn default_weights(self) -> std::path::PathBuf {
        match self {
            Backbone::AlexNet => crate::paths::default_weights(),
            Backbone::InceptionV3 => crate::paths::default_inception_weights(),
        }
    }

    /// The freeze policy of a head with `hidden` units: fc8 alone, or fc7–fc8.
    pub fn head_policy(hidden: usize) -> FreezePolicy {
        FreezePolicy::from_layer(if hidden > 0 { crate::LayerId::Fc7 } else { crate::LayerId::Fc8 })
    }
}

impl fmt::Display for Backbone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Backbone {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Backbone::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| Error::Config(format!("unknown backbone {s:?}: expected alexnet or inception-v3")))
    }
}

/// A described backbone's frozen prefix, loaded: its graph, the cut, the plan to it and the
/// weights (checked against the graph).
pub struct FrozenBackbone {
    pub backbone: Backbone,
    pub graph: Graph,
    pub cut: &'static str,
    pub plan: crate::net::Plan,
    pub tensors: BTreeMap<String, HostTensor>,
    pub weights_file: std::path::PathBuf,
}

impl FrozenBackbone {
    /// Loads `backbone` for `crop`-sized inputs from `weights_file`; `None` for AlexNet (its
    /// frozen layers are the backends' own). A file that is not this backbone's, or lacks or
    /// mis-shapes a parameter, is an error naming the file.
    pub fn load(backbone: Backbone, crop: usize, weights_file: &std::path::Path) -> Result<Option<Self>> {
        let Some((graph, cut)) = backbone.frozen_graph(crop)? else { return Ok(None) };
        let tensors = crate::inception_import::read_inception_safetensors(weights_file)?.tensors;
        let plan = crate::net::Plan::new(&graph, cut)?;
        plan.check_weights(&tensors).map_err(|e| Error::Weights { path: weights_file.into(), msg: e.to_string() })?;
        Ok(Some(Self { backbone, graph, cut, plan, tensors, weights_file: weights_file.into() }))
    }

    /// Width of the features at the cut.
    pub fn features(&self) -> usize {
        self.plan.output_shape().iter().product()
    }

    /// The feature cache's key parts: the weights' content hash and the cut's name.
    pub fn cache_id(&self) -> (String, String) {
        (params_hash(&self.graph, self.plan.output, &self.tensors), format!("{}/{}", self.backbone, self.cut))
    }

    /// The backbone on `backend` in front of `head`, as one model.
    pub fn model(&self, backend: &dyn crate::Backend, head: Box<dyn Model>) -> Result<Box<dyn Model>> {
        Ok(Box::new(BackboneModel::new(backend.extractor(&self.graph, self.cut, &self.tensors)?, head)))
    }
}

/// A content hash of the parameters of `graph` up to value `upto` (names, shapes, values): the
/// feature cache's key for a described backbone's frozen prefix.
pub fn params_hash(graph: &Graph, upto: usize, tensors: &BTreeMap<String, HostTensor>) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(graph.name.as_bytes());
    for p in graph.params_upto(upto) {
        let data = tensors.get(&p.name).map_or(&[][..], |t| &t.data[..]);
        crate::weights::hash_tensor(&mut h, &p.name, &p.shape, data);
    }
    format!("{:032x}", h.digest128())
}

/// A frozen backbone (any described network, on the backend's primitive ops) and a trainable
/// head (a backend [`Model`] built from a head-only [`crate::AlexNetSpec`]), as one [`Model`]:
/// images run through both; cached features enter the head directly.
pub struct BackboneModel {
    backbone: Box<dyn Extractor>,
    head: Box<dyn Model>,
}

impl BackboneModel {
    pub fn new(backbone: Box<dyn Extractor>, head: Box<dyn Model>) -> Self {
        Self { backbone, head }
    }

    /// The head's input: the backbone's features of images, or cached features as they are.
    fn at_cut<'a>(&mut self, x: &'a HostTensor, stage: Stage) -> Result<std::borrow::Cow<'a, HostTensor>> {
        match stage {
            Stage::Image => self.backbone.extract(x).map(std::borrow::Cow::Owned),
            Stage::Cut => Ok(std::borrow::Cow::Borrowed(x)),
        }
    }
}

impl Model for BackboneModel {
    fn policy(&self) -> FreezePolicy {
        self.head.policy()
    }

    fn extract(&mut self, images: &HostTensor) -> Result<HostTensor> {
        self.backbone.extract(images)
    }

    fn train_step_with(&mut self, x: &HostTensor, stage: Stage, targets: Targets<'_>, lr: f32) -> Result<StepStats> {
        let f = self.at_cut(x, stage)?;
        self.head.train_step_with(&f, Stage::Cut, targets, lr)
    }

    fn logits(&mut self, x: &HostTensor, stage: Stage) -> Result<HostTensor> {
        let f = self.at_cut(x, stage)?;
        self.head.logits(&f, Stage::Cut)
    }

    fn weights(&self) -> Result<WeightSet> {
        self.head.weights()
    }

    fn set_weights(&mut self, weights: &WeightSet) -> Result<()> {
        self.head.set_weights(weights)
    }

    fn train_state(&self) -> Result<TrainState> {
        self.head.train_state()
    }

    fn set_train_state(&mut self, state: &TrainState) -> Result<()> {
        self.head.set_train_state(state)
    }

    fn synchronize(&self) -> Result<()> {
        self.backbone.synchronize()?;
        self.head.synchronize()
    }
}
