//! The traits every backend implements. Tensors cross this boundary as [`HostTensor`]s, so the
//! core (data, cache, training loop) never depends on a backend.

use crate::freeze::FreezePolicy;
use crate::mixup::Targets;
use crate::net::{Extractor, Graph};
use crate::tensor::HostTensor;
use crate::weights::WeightSet;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Where an input enters the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Preprocessed images `[N, 3, crop, crop]`: the frozen prefix runs first (no cache).
    Image,
    /// Features at the policy's cut point `[N, ...]` (from the feature cache).
    Cut,
}

/// Which device a backend runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Config(format!("unknown device {s:?}: expected cpu, cuda or cuda:N"));
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(DeviceSpec::Cuda).ok_or_else(bad),
        }
    }
}

/// The optimiser's update rule. Both follow PyTorch's definitions exactly (weight decay is L2,
/// added to the gradient), so backends agree and results compare with PyTorch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Optimizer {
    /// `v = μ·v + g; p -= lr·v` (torch.optim.SGD, dampening 0, no Nesterov).
    Sgd { momentum: f32 },
    /// torch.optim.Adam with bias correction.
    Adam { beta1: f32, beta2: f32, eps: f32 },
}

/// Optimiser settings fixed for a model's life; the learning rate comes with each step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub optimizer: Optimizer,
    pub weight_decay: f32,
    /// Multiplies the learning rate of trainable conv layers: pretrained features want gentler
    /// updates than the new classifier.
    pub conv_lr_mult: f32,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self { optimizer: Optimizer::Sgd { momentum: 0.9 }, weight_decay: 5e-4, conv_lr_mult: 0.1 }
    }
}

impl OptimizerConfig {
    /// Adam with PyTorch's default betas and epsilon.
    pub fn adam() -> Self {
        Self { optimizer: Optimizer::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, ..Self::default() }
    }
}

/// Everything a backend needs to build a trainable model besides the weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub policy: FreezePolicy,
    pub optimizer: OptimizerConfig,
    /// Dropout probability before fc6 and fc7 (training only), as torchvision's 0.5.
    pub dropout: f32,
    /// Seeds the backend's dropout masks.
    pub seed: u64,
    /// Label smoothing ε: the cross-entropy target is (1 − ε)·one-hot + ε/classes (left out
    /// of the JSON when 0, so configurations from before it existed still match).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f32,
}

/// Serde's test for settings left out of the JSON when off (0), so older files still match.
pub(crate) fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl ModelConfig {
    /// Defaults for `policy`: SGD momentum 0.9, weight decay 5e-4, dropout 0.5.
    pub fn new(policy: FreezePolicy) -> Self {
        Self { policy, optimizer: OptimizerConfig::default(), dropout: 0.5, seed: 0, label_smoothing: 0.0 }
    }

    pub fn with_optimizer(mut self, optimizer: OptimizerConfig) -> Self {
        self.optimizer = optimizer;
        self
    }

    pub fn with_dropout(mut self, dropout: f32) -> Self {
        self.dropout = dropout;
        self
    }

    pub fn with_label_smoothing(mut self, label_smoothing: f32) -> Self {
        self.label_smoothing = label_smoothing;
        self
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks the regularisation and optimiser settings: dropout in [0, 1), weight decay, conv
    /// learning-rate multiplier and momentum finite and ≥ 0, Adam's betas in [0, 1) and eps > 0.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        let non_negative = |v: f32| v.is_finite() && v >= 0.0;
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout (--dropout) must be in [0, 1), got {}", self.dropout));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!("label smoothing (--label-smoothing) must be in [0, 1), got {}", self.label_smoothing));
        }
        let o = &self.optimizer;
        if !non_negative(o.weight_decay) {
            return bad(format!("weight decay (--weight-decay) must be a finite number ≥ 0, got {}", o.weight_decay));
        }
        if !non_negative(o.conv_lr_mult) {
            return bad(format!("conv learning-rate multiplier (--conv-lr-mult) must be a finite number ≥ 0, got {}", o.conv_lr_mult));
        }
        match o.optimizer {
            Optimizer::Sgd { momentum } if !non_negative(momentum) => {
                bad(format!("momentum (--momentum) must be a finite number ≥ 0, got {momentum}"))
            }
            Optimizer::Adam { beta1, beta2, eps }
                if !((0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2) && eps.is_finite() && eps > 0.0) =>
            {
                bad(format!("Adam needs betas in [0, 1) and a finite eps > 0, got ({beta1}, {beta2}, {eps})"))
            }
            _ => Ok(()),
        }
    }
}

/// Loss and correct predictions of one training step (before the update).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over the batch.
    pub loss: f32,
    /// Samples whose arg-max logit was the label.
    pub correct: usize,
}

/// A backend: a factory for models on one device.
pub trait Backend: Send + Sync {
    /// Short name (`candle`, `tch`, `burn`).
    fn name(&self) -> &'static str;
    /// The device, in words (`cpu`, `cuda:0 (NVIDIA H100)`).
    fn device_name(&self) -> String;
    /// Builds a model from `weights` (all eight layers) with `cfg.policy` deciding what trains.
    /// Frozen layers must get no gradient and stay bit-identical.
    fn build(&self, weights: &WeightSet, cfg: &ModelConfig) -> Result<Box<dyn Model>>;
    /// The frozen prefix of any described network, up to cut `cut`, run by the core's one
    /// runner on this backend's primitive ops ([`crate::net::Kernels`]). `weights` hold the
    /// graph's parameters by name (checked first).
    fn extractor(&self, graph: &Graph, cut: &str, weights: &BTreeMap<String, HostTensor>) -> Result<Box<dyn Extractor>>;
}

/// An AlexNet on a device, with a frozen prefix and a trainable suffix.
pub trait Model: Send {
    /// The freeze policy it was built with.
    fn policy(&self) -> FreezePolicy;
    /// Runs the frozen prefix in inference mode: images `[N, 3, crop, crop]` → features at the
    /// cut `[N, ...]` (pool5 is flattened to 9216). With no frozen prefix, returns the input.
    fn extract(&mut self, images: &HostTensor) -> Result<HostTensor>;
    /// One optimisation step of the trainable layers on a batch entering at `stage`.
    fn train_step(&mut self, x: &HostTensor, stage: Stage, labels: &[u32], lr: f32) -> Result<StepStats> {
        self.train_step_with(x, stage, Targets::hard(labels), lr)
    }
    /// [`Model::train_step`] against `targets`: with mixup, the loss is λ·CE(labels) +
    /// (1 − λ)·CE(partners), each label-smoothed as configured.
    fn train_step_with(&mut self, x: &HostTensor, stage: Stage, targets: Targets<'_>, lr: f32) -> Result<StepStats>;
    /// Logits `[N, classes]` in evaluation mode (no dropout).
    fn logits(&mut self, x: &HostTensor, stage: Stage) -> Result<HostTensor>;
    /// All parameters, frozen and trained, by torchvision name.
    fn weights(&self) -> Result<WeightSet>;
    /// Replaces the parameters of the trainable layers (e.g. to restore the best checkpoint);
    /// the optimiser starts afresh: buffers cleared and step count 0, as a newly built model.
    /// The dropout generator keeps its position.
    fn set_weights(&mut self, weights: &WeightSet) -> Result<()>;
    /// The optimiser's buffers and step count and the dropout generator's position: with the
    /// weights, everything the next training step depends on.
    fn train_state(&self) -> Result<TrainState>;
    /// Restores a [`TrainState`] taken from a model with the same policy and optimiser, so the
    /// next step is bit-identical to the one the original model would have taken.
    fn set_train_state(&mut self, state: &TrainState) -> Result<()>;
    /// Waits until queued device work is done (a no-op on CPU); benches call it.
    fn synchronize(&self) -> Result<()>;
}

/// Everything besides the weights that the next training step depends on. Buffers have the
/// parameter's torchvision name and shape plus torch.optim's state name:
/// `<param>.momentum_buffer` (SGD with momentum), `<param>.exp_avg` and `<param>.exp_avg_sq` (Adam).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainState {
    /// Optimiser steps since the model was built or its weights were last set (Adam's bias
    /// correction uses it).
    pub steps: u64,
    /// Position of the dropout mask generator ([`DropoutMasks::position`]).
    pub dropout_position: u128,
    pub buffers: BTreeMap<String, HostTensor>,
}

impl TrainState {
    /// The buffer names of parameter `param` under `optimizer`, in the order backends hold them
    /// (first moment or momentum, second moment).
    pub fn buffer_names(param: &str, optimizer: &Optimizer) -> Vec<String> {
        match optimizer {
            Optimizer::Sgd { momentum } if *momentum > 0.0 => vec![format!("{param}.momentum_buffer")],
            Optimizer::Sgd { .. } => vec![],
            Optimizer::Adam { .. } => vec![format!("{param}.exp_avg"), format!("{param}.exp_avg_sq")],
        }
    }

    /// The buffer `name`, checked against the shape its parameter has; `None` when the state
    /// has none yet (before the first step).
    pub fn buffer(&self, name: &str, shape: &[usize]) -> Result<Option<&HostTensor>> {
        match self.buffers.get(name) {
            Some(t) if t.shape != shape => Err(Error::WeightSet(format!("optimiser state {name}: shape {:?}, the parameter has {shape:?}", t.shape))),
            other => Ok(other),
        }
    }

    /// Adds one layer's buffers, as a backend holds them (`[[first, second] of weight, [first,
    /// second] of bias]`, torchvision shapes, `None` before the first step), under their names.
    pub fn insert_layer(&mut self, layer: crate::LayerId, optimizer: &Optimizer, buffers: [[Option<HostTensor>; 2]; 2]) {
        for (param, bufs) in [layer.weight_name(), layer.bias_name()].iter().zip(buffers) {
            for (name, t) in Self::buffer_names(param, optimizer).into_iter().zip(bufs) {
                if let Some(t) = t {
                    self.buffers.insert(name, t);
                }
            }
        }
    }

    /// One layer's buffers in the order [`TrainState::insert_layer`] takes them, each checked
    /// against its parameter's shape.
    pub fn layer(&self, spec: &crate::arch::LayerSpec, optimizer: &Optimizer) -> Result<[[Option<&HostTensor>; 2]; 2]> {
        let mut out = [[None, None], [None, None]];
        for ((param, shape), slot) in [spec.id.weight_name(), spec.id.bias_name()].iter().zip([&spec.weight_shape, &spec.bias_shape]).zip(&mut out) {
            for (s, name) in slot.iter_mut().zip(Self::buffer_names(param, optimizer)) {
                *s = self.buffer(&name, shape)?;
            }
        }
        Ok(out)
    }

    /// Checks the state fits a model training `layers` with `optimizer` (buffer names; the step
    /// count as backends hold it) before a backend applies any of it; returns the step count.
    pub fn check_for(&self, layers: &[crate::LayerId], optimizer: &Optimizer) -> Result<i32> {
        let params: Vec<String> = layers.iter().flat_map(|l| [l.weight_name(), l.bias_name()]).collect();
        self.check_names(&params, optimizer)?;
        i32::try_from(self.steps).map_err(|_| Error::Config(format!("optimiser step count {} out of range", self.steps)))
    }

    /// Checks every buffer belongs to one of `params` under `optimizer` (a state saved with
    /// another policy or optimiser is refused rather than half-applied).
    fn check_names(&self, params: &[String], optimizer: &Optimizer) -> Result<()> {
        let known: Vec<String> = params.iter().flat_map(|p| Self::buffer_names(p, optimizer)).collect();
        match self.buffers.keys().find(|k| !known.contains(k)) {
            Some(k) => Err(Error::WeightSet(format!(
                "optimiser state has {k}, which this model ({optimizer:?}, trainable {}) does not use",
                params.join(", ")
            ))),
            None => Ok(()),
        }
    }
}

/// Dropout masks drawn the same way by every backend from the model's seed, so training is
/// reproducible and backends can be compared step for step. Each value is 0 (dropped, with
/// probability `p`) or 1/(1−p) (kept), as in PyTorch's inverted dropout.
pub struct DropoutMasks {
    rng: rand_chacha::ChaCha8Rng,
    p: f32,
}

impl DropoutMasks {
    /// Masks with drop probability `p`, seeded by `seed`.
    pub fn new(seed: u64, p: f32) -> Self {
        use rand::SeedableRng;
        Self { rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xD50F_0A7E), p }
    }

    /// The drop probability.
    pub fn p(&self) -> f32 {
        self.p
    }

    /// The generator's position (in 32-bit words drawn), to save with a checkpoint.
    pub fn position(&self) -> u128 {
        self.rng.get_word_pos()
    }

    /// Moves the generator to a saved position.
    pub fn set_position(&mut self, pos: u128) {
        self.rng.set_word_pos(pos)
    }

    /// The next mask of `n` values.
    pub fn next_mask(&mut self, n: usize) -> Vec<f32> {
        use rand::Rng;
        let keep = 1.0 / (1.0 - self.p);
        (0..n).map(|_| if self.rng.random::<f32>() < self.p { 0.0 } else { keep }).collect()
    }
}
