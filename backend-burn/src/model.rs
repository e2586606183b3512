//! AlexNet on burn tensors. Frozen layers live outside burn's autodiff decorator (plain tensors,
//! so no tape is recorded and no gradient exists for them); trainable layers are autodiff leaves
//! marked `require_grad`, and are updated by PyTorch's SGD/Adam written with burn tensor ops.

use crate::err;
use alexnet_core::arch::{LayerKind, LayerSpec, MAXPOOL};
use alexnet_core::metrics::argmax_rows;
use alexnet_core::{
    AlexNetSpec, DropoutMasks, FreezePolicy, HostTensor, Model, ModelConfig, Optimizer, Result, Stage, StepStats, Targets, TrainState, WeightSet,
};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Gradients, Tensor, TensorData};

/// A layer's weight: 4-d for conv; 2-d for linear, held as `[in, out]` (torchvision's `[out, in]`
/// transposed at upload and download), so `x·w` and its weight gradient are contiguous and the
/// optimiser's element-wise passes run over matching layouts.
enum Weight {
    Conv(Param<4>),
    Linear(Param<2>),
}

/// An activation between layers: feature maps, or flat rows after pool5.
enum Act {
    Map(Tensor<4>),
    Flat(Tensor<2>),
}

/// A parameter and its optimiser state (momentum buffer, or Adam's two moments). A trainable
/// parameter is an autodiff leaf with `require_grad`; a frozen one is a plain tensor.
struct Param<const D: usize> {
    t: Tensor<D>,
    m: Option<Tensor<D>>,
    v: Option<Tensor<D>>,
}

impl<const D: usize> Param<D> {
    fn new(t: Tensor<D>, train: bool) -> Self {
        Self { t: if train { t.autodiff().require_grad() } else { t }, m: None, v: None }
    }

    /// The value without its autodiff association (for inference and read-out).
    fn value(&self) -> Tensor<D> {
        self.t.clone().inner()
    }

    /// Applies one optimiser step with this parameter's gradient from `grads`.
    fn step(&mut self, grads: &mut Gradients, cfg: &ModelConfig, lr: f64, step: i32) -> Option<()> {
        let g = self.t.grad_remove(grads)?;
        // Take the tensor out so the update owns its only handle: burn then updates in place.
        let empty = Tensor::<D>::empty([0; D], &self.t.device().inner());
        let p = std::mem::replace(&mut self.t, empty).inner();
        let p = update(cfg, p, g, &mut self.m, &mut self.v, lr, step);
        self.t = p.autodiff().require_grad();
        Some(())
    }
}

struct Layer {
    spec: LayerSpec,
    w: Weight,
    b: Param<1>,
}

/// An AlexNet on one burn device.
pub struct BurnModel {
    device: Device,
    arch: AlexNetSpec,
    cfg: ModelConfig,
    base: WeightSet,
    frozen: Vec<Layer>,
    trainable: Vec<Layer>,
    masks: DropoutMasks,
    steps: i32,
}

fn upload<const D: usize>(t: &HostTensor, device: &Device) -> Result<Tensor<D>> {
    if t.shape.len() != D {
        return Err(err(format!("expected a {D}-d tensor, got shape {:?}", t.shape)));
    }
    Ok(Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device))
}

fn download<const D: usize>(t: Tensor<D>) -> Result<HostTensor> {
    let shape = t.dims().to_vec();
    let data = t.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| err(format!("{e:?}")))?;
    HostTensor::new(shape, data)
}

/// `[r, c]` → `[c, r]` on the host, in cache-sized tiles.
fn transpose(t: &HostTensor) -> Result<HostTensor> {
    let [r, c] = t.shape[..] else { return Err(err(format!("expected a 2-d weight, got shape {:?}", t.shape))) };
    let mut out = vec![0f32; r * c];
    const TILE: usize = 64;
    for i0 in (0..r).step_by(TILE) {
        for j0 in (0..c).step_by(TILE) {
            for i in i0..(i0 + TILE).min(r) {
                for j in j0..(j0 + TILE).min(c) {
                    out[j * r + i] = t.data[i * c + j];
                }
            }
        }
    }
    HostTensor::new(vec![c, r], out)
}

fn act_to_host(a: Act) -> Result<HostTensor> {
    match a {
        Act::Map(t) => download(t),
        Act::Flat(t) => download(t),
    }
}

fn act_from_host(t: &HostTensor, device: &Device) -> Result<Act> {
    match t.shape.len() {
        4 => Ok(Act::Map(upload(t, device)?)),
        2 => Ok(Act::Flat(upload(t, device)?)),
        _ => Err(err(format!("expected a 2-d or 4-d input, got shape {:?}", t.shape))),
    }
}

impl Act {
    /// Marks the input of the trainable part as an autodiff constant (no gradient wanted for it).
    fn autodiff(self) -> Act {
        match self {
            Act::Map(t) => Act::Map(t.autodiff()),
            Act::Flat(t) => Act::Flat(t.autodiff()),
        }
    }

    fn numel(&self) -> usize {
        match self {
            Act::Map(t) => t.dims().iter().product(),
            Act::Flat(t) => t.dims().iter().product(),
        }
    }
}

/// One AlexNet block: conv+ReLU(+pool), or (dropout)+linear(+ReLU).
fn block(x: Act, spec: &LayerSpec, w: Act, b: Tensor<1>, mask: Option<Tensor<2>>) -> Result<Act> {
    match (&spec.kind, x, w) {
        (LayerKind::Conv { stride, padding, pool_after, .. }, Act::Map(x), Act::Map(w)) => {
            let opts = ConvOptions::new([*stride; 2], [*padding; 2], [1, 1], 1);
            let mut y = relu(conv2d(x, w, Some(b), opts));
            if *pool_after {
                let (k, s) = MAXPOOL;
                y = max_pool2d(y, MaxPoolOptions::new([k, k]).with_stride([s, s]));
            }
            if spec.output_shape.len() == 1 {
                return Ok(Act::Flat(y.flatten(1, 3))); // pool5 is 6×6 by construction
            }
            Ok(Act::Map(y))
        }
        (LayerKind::Linear { relu_after, .. }, Act::Flat(x), Act::Flat(w)) => {
            let x = match mask {
                Some(m) => x.mul(m),
                None => x,
            };
            let y = x.matmul(w).add(b.unsqueeze_dim(0));
            Ok(Act::Flat(if *relu_after { relu(y) } else { y }))
        }
        _ => Err(err(format!("{}: input does not match the layer kind", spec.id.name()))),
    }
}

/// PyTorch's SGD (dampening 0, no Nesterov) or Adam on one parameter; returns the new value.
fn update<const D: usize>(
    cfg: &ModelConfig,
    p: Tensor<D>,
    g: Tensor<D>,
    m: &mut Option<Tensor<D>>,
    v: &mut Option<Tensor<D>>,
    lr: f64,
    step: i32,
) -> Tensor<D> {
    let wd = cfg.optimizer.weight_decay as f64;
    let h = if wd > 0.0 { g.add(p.clone().mul_scalar(wd)) } else { g };
    match cfg.optimizer.optimizer {
        Optimizer::Sgd { momentum } => {
            let buf = match m.take() {
                Some(b) if momentum > 0.0 => b.mul_scalar(momentum as f64).add(h),
                _ => h,
            };
            let p = p.sub(buf.clone().mul_scalar(lr));
            if momentum > 0.0 {
                *m = Some(buf);
            }
            p
        }
        Optimizer::Adam { beta1, beta2, eps } => {
            let (b1, b2) = (beta1 as f64, beta2 as f64);
            let m1 = match m.take() {
                Some(m) => m.mul_scalar(b1).add(h.clone().mul_scalar(1.0 - b1)),
                None => h.clone().mul_scalar(1.0 - b1),
            };
            let sq = h.clone().mul(h);
            let v1 = match v.take() {
                Some(v) => v.mul_scalar(b2).add(sq.mul_scalar(1.0 - b2)),
                None => sq.mul_scalar(1.0 - b2),
            };
            let (bc1, bc2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
            let denom = v1.clone().sqrt().div_scalar(bc2.sqrt()).add_scalar(eps as f64);
            let p = p.sub(m1.clone().div(denom).mul_scalar(lr / bc1));
            *m = Some(m1);
            *v = Some(v1);
            p
        }
    }
}

impl Layer {
    fn new(spec: LayerSpec, weights: &WeightSet, device: &Device, train: bool) -> Result<Self> {
        let (w, b) = weights.layer(spec.id);
        let w = match spec.kind {
            LayerKind::Conv { .. } => Weight::Conv(Param::new(upload(w, device)?, train)),
            LayerKind::Linear { .. } => Weight::Linear(Param::new(upload(&transpose(w)?, device)?, train)),
        };
        Ok(Self { spec, w, b: Param::new(upload(b, device)?, train) })
    }

    /// Runs the layer; `tracked` keeps the parameters' autodiff association (training).
    fn forward(&self, x: Act, tracked: bool, mask: Option<Tensor<2>>) -> Result<Act> {
        let (w, b) = match (&self.w, tracked) {
            (Weight::Conv(p), true) => (Act::Map(p.t.clone()), self.b.t.clone()),
            (Weight::Linear(p), true) => (Act::Flat(p.t.clone()), self.b.t.clone()),
            (Weight::Conv(p), false) => (Act::Map(p.value()), self.b.value()),
            (Weight::Linear(p), false) => (Act::Flat(p.value()), self.b.value()),
        };
        block(x, &self.spec, w, b, mask)
    }

    fn step(&mut self, grads: &mut Gradients, cfg: &ModelConfig, lr: f64, step: i32) -> Result<()> {
        let done = match &mut self.w {
            Weight::Conv(p) => p.step(grads, cfg, lr, step),
            Weight::Linear(p) => p.step(grads, cfg, lr, step),
        }
        .and_then(|_| self.b.step(grads, cfg, lr, step));
        done.ok_or_else(|| err(format!("{}: no gradient reached this trainable layer", self.spec.id.name())))
    }

    /// The optimiser buffers of weight and bias in torchvision layout: `[[m, v] of w, [m, v] of b]`.
    fn buffers(&self) -> Result<[[Option<HostTensor>; 2]; 2]> {
        let host = |t: &Option<Tensor<1>>| t.clone().map(download).transpose();
        let w = match &self.w {
            Weight::Conv(p) => [p.m.clone().map(download).transpose()?, p.v.clone().map(download).transpose()?],
            Weight::Linear(p) => {
                let tr =
                    |t: &Option<Tensor<2>>| -> Result<Option<HostTensor>> { t.clone().map(|t| download(t).and_then(|h| transpose(&h))).transpose() };
                [tr(&p.m)?, tr(&p.v)?]
            }
        };
        Ok([w, [host(&self.b.m)?, host(&self.b.v)?]])
    }

    /// Restores the optimiser buffers (torchvision layout; `None` before the first step).
    fn set_buffers(&mut self, [w, b]: [[Option<&HostTensor>; 2]; 2], device: &Device) -> Result<()> {
        match &mut self.w {
            Weight::Conv(p) => [p.m, p.v] = [w[0].map(|t| upload(t, device)).transpose()?, w[1].map(|t| upload(t, device)).transpose()?],
            Weight::Linear(p) => {
                let up = |t: Option<&HostTensor>| t.map(|t| transpose(t).and_then(|t| upload(&t, device))).transpose();
                [p.m, p.v] = [up(w[0])?, up(w[1])?];
            }
        }
        [self.b.m, self.b.v] = [b[0].map(|t| upload(t, device)).transpose()?, b[1].map(|t| upload(t, device)).transpose()?];
        Ok(())
    }

    fn read(&self) -> Result<(HostTensor, HostTensor)> {
        let w = match &self.w {
            Weight::Conv(p) => download(p.value())?,
            Weight::Linear(p) => transpose(&download(p.value())?)?,
        };
        Ok((w, download(self.b.value())?))
    }
}

impl BurnModel {
    /// Builds the model on `device` (an inner, non-autodiff device), splitting layers by
    /// `cfg.policy`.
    pub fn new(device: Device, weights: &WeightSet, cfg: &ModelConfig) -> Result<Self> {
        let arch = *weights.spec();
        let (mut frozen, mut trainable) = (Vec::new(), Vec::new());
        for spec in arch.layers() {
            let train = cfg.policy.is_trainable(spec.id);
            let l = Layer::new(spec, weights, &device, train)?;
            if train { trainable.push(l) } else { frozen.push(l) }
        }
        Ok(Self { device, arch, cfg: *cfg, base: weights.clone(), frozen, trainable, masks: DropoutMasks::new(cfg.seed, cfg.dropout), steps: 0 })
    }

    /// The input at the policy's cut, on the inner device (no autodiff).
    fn at_cut(&self, x: &HostTensor, stage: Stage) -> Result<Act> {
        let mut a = act_from_host(x, &self.device)?;
        if stage == Stage::Image {
            for l in &self.frozen {
                a = l.forward(a, false, None)?;
            }
        }
        Ok(a)
    }

    /// The trainable layers; `train` draws dropout masks and keeps the autodiff graph.
    fn head(&mut self, mut a: Act, train: bool) -> Result<Tensor<2>> {
        for i in 0..self.trainable.len() {
            let dropout = matches!(self.trainable[i].spec.kind, LayerKind::Linear { dropout_before: true, .. }) && self.cfg.dropout > 0.0;
            let mask = match (&a, train && dropout) {
                (Act::Flat(t), true) => {
                    let dims = t.dims();
                    let m = self.masks.next_mask(a.numel());
                    Some(Tensor::<2>::from_data(TensorData::new(m, dims.to_vec()), &self.device))
                }
                _ => None,
            };
            a = self.trainable[i].forward(a, train, mask)?;
        }
        match a {
            Act::Flat(t) => Ok(t),
            Act::Map(_) => Err(err("the network must end in a linear layer")),
        }
    }
}

impl Model for BurnModel {
    fn policy(&self) -> FreezePolicy {
        self.cfg.policy
    }

    fn extract(&mut self, images: &HostTensor) -> Result<HostTensor> {
        act_to_host(self.at_cut(images, Stage::Image)?)
    }

    fn train_step_with(&mut self, x: &HostTensor, stage: Stage, targets: Targets<'_>, lr: f32) -> Result<StepStats> {
        let input = self.at_cut(x, stage)?.autodiff();
        let logits = self.head(input, true)?;
        let [n, classes] = logits.dims();
        targets.check(n, classes)?;
        // One-hot, or label-smoothed: (1 − ε)·one-hot + ε/classes; mixed: λ·that + (1 − λ)·the partner's.
        let eps = self.cfg.label_smoothing as f64;
        let target: Vec<f32> = (0..n).flat_map(|i| targets.row(i, classes, eps)).map(|t| t as f32).collect();
        let target = Tensor::<2>::from_data(TensorData::new(target, vec![n, classes]), &self.device);
        let loss = log_softmax(logits.clone(), 1).mul(target).sum().neg().div_scalar(n as f64);
        let mut grads = loss.backward();
        let host_logits = download(logits.inner())?;
        let correct = argmax_rows(&host_logits).iter().zip(targets.labels).filter(|(p, l)| **p == **l).count();
        // Dropping the graph releases its handles on the parameters, so they update in place.
        let loss = loss.inner().into_scalar::<f32>();
        self.steps += 1;
        let (cfg, step) = (self.cfg, self.steps);
        for l in &mut self.trainable {
            let lr = if l.spec.id.is_conv() { lr * cfg.optimizer.conv_lr_mult } else { lr } as f64;
            l.step(&mut grads, &cfg, lr, step)?;
        }
        Ok(StepStats { loss, correct })
    }

    fn logits(&mut self, x: &HostTensor, stage: Stage) -> Result<HostTensor> {
        let input = self.at_cut(x, stage)?;
        download(self.head(input, false)?)
    }

    fn weights(&self) -> Result<WeightSet> {
        let mut w = self.base.clone();
        for l in &self.trainable {
            let (wt, b) = l.read()?;
            w.set_trained(l.spec.id, wt, b)?;
        }
        Ok(w)
    }

    fn set_weights(&mut self, weights: &WeightSet) -> Result<()> {
        weights.ensure_spec(&self.arch)?;
        for l in &mut self.trainable {
            *l = Layer::new(l.spec.clone(), weights, &self.device, true)?;
        }
        self.steps = 0;
        Ok(())
    }

    fn train_state(&self) -> Result<TrainState> {
        let mut st = TrainState { steps: self.steps as u64, dropout_position: self.masks.position(), ..Default::default() };
        for l in &self.trainable {
            st.insert_layer(l.spec.id, &self.cfg.optimizer.optimizer, l.buffers()?);
        }
        Ok(st)
    }

    fn set_train_state(&mut self, st: &TrainState) -> Result<()> {
        let opt = self.cfg.optimizer.optimizer;
        let layers: Vec<_> = self.trainable.iter().map(|l| l.spec.id).collect();
        let steps = st.check_for(&layers, &opt)?;
        for l in &mut self.trainable {
            l.set_buffers(st.layer(&l.spec, &opt)?, &self.device)?;
        }
        self.steps = steps;
        self.masks.set_position(st.dropout_position);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.device.sync().map_err(|e| err(format!("{e:?}")))
    }
}
