//! AlexNet in candle: a frozen prefix of plain tensors and a trainable suffix of `Var`s.

use crate::err;
use crate::optim::ParamState;
use alexnet_core::arch::{LayerKind, LayerSpec, MAXPOOL};
use alexnet_core::{
    AlexNetSpec, DropoutMasks, FreezePolicy, HostTensor, LayerSource, Model, ModelConfig, Result, Stage, StepStats,
    WeightSet,
};
use candle_core::{DType, Device, Tensor, Var};

struct Frozen {
    spec: LayerSpec,
    w: Tensor,
    b: Tensor,
}

struct Trainable {
    spec: LayerSpec,
    w: Var,
    b: Var,
    state: [ParamState; 2],
}

/// An AlexNet on a candle device.
pub struct CandleModel {
    device: Device,
    arch: AlexNetSpec,
    cfg: ModelConfig,
    base: WeightSet,
    frozen: Vec<Frozen>,
    trainable: Vec<Trainable>,
    masks: DropoutMasks,
}

fn to_device(t: &HostTensor, device: &Device) -> Result<Tensor> {
    Tensor::from_slice(&t.data, t.shape.as_slice(), device).map_err(err)
}

fn to_host(t: &Tensor) -> Result<HostTensor> {
    let shape = t.dims().to_vec();
    let data = t.flatten_all().and_then(|f| f.to_dtype(DType::F32)).and_then(|f| f.to_vec1::<f32>()).map_err(err)?;
    HostTensor::new(shape, data)
}

/// One layer's block: conv + ReLU (+ max-pool, + flatten after conv5), or
/// (dropout) + linear (+ ReLU).
fn block(x: &Tensor, spec: &LayerSpec, w: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match spec.kind {
        LayerKind::Conv { stride, padding, pool_after, out_channels, .. } => {
            let mut y = x.conv2d(w, padding, stride, 1, 1)?.broadcast_add(&b.reshape((1, out_channels, 1, 1))?)?.relu()?;
            if pool_after {
                y = y.max_pool2d_with_stride(MAXPOOL.0, MAXPOOL.1)?;
            }
            if spec.output_shape.len() == 1 {
                y = y.flatten_from(1)?; // pool5 is 6×6 by construction: the adaptive pool is the identity
            }
            Ok(y)
        }
        LayerKind::Linear { relu_after, .. } => {
            let x = match mask {
                Some(m) => (x * m)?,
                None => x.clone(),
            };
            let y = x.matmul(&w.t()?)?.broadcast_add(b)?;
            if relu_after { y.relu() } else { Ok(y) }
        }
    }
}

impl CandleModel {
    /// Builds the model on `device`, splitting layers by `cfg.policy`.
    pub fn new(device: &Device, weights: &WeightSet, cfg: &ModelConfig) -> Result<Self> {
        let arch = *weights.spec();
        let (mut frozen, mut trainable) = (Vec::new(), Vec::new());
        for spec in arch.layers() {
            let (w, b) = weights.layer(spec.id);
            let (w, b) = (to_device(w, device)?, to_device(b, device)?);
            if cfg.policy.is_trainable(spec.id) {
                let (w, b) = (Var::from_tensor(&w).map_err(err)?, Var::from_tensor(&b).map_err(err)?);
                trainable.push(Trainable { spec, w, b, state: Default::default() });
            } else {
                frozen.push(Frozen { spec, w, b });
            }
        }
        Ok(Self {
            device: device.clone(),
            arch,
            cfg: *cfg,
            base: weights.clone(),
            frozen,
            trainable,
            masks: DropoutMasks::new(cfg.seed, cfg.dropout),
        })
    }

    /// Input at the cut, shaped `[N, ...]` on the device, running the frozen prefix if needed.
    fn at_cut(&self, x: &HostTensor, stage: Stage) -> Result<Tensor> {
        let mut t = to_device(x, &self.device)?;
        if stage == Stage::Image {
            for f in &self.frozen {
                t = block(&t, &f.spec, &f.w, &f.b, None).map_err(err)?;
            }
        }
        Ok(t)
    }

    /// Forward through the trainable layers; `train` applies dropout.
    fn head(&mut self, mut t: Tensor, train: bool) -> Result<Tensor> {
        for i in 0..self.trainable.len() {
            let spec = self.trainable[i].spec.clone();
            let dropout = matches!(spec.kind, LayerKind::Linear { dropout_before: true, .. }) && self.cfg.dropout > 0.0;
            let mask = if train && dropout {
                let mask = self.masks.next_mask(t.elem_count());
                Some(Tensor::from_vec(mask, t.shape(), &self.device).map_err(err)?)
            } else {
                None
            };
            let l = &self.trainable[i];
            t = if train {
                block(&t, &spec, l.w.as_tensor(), l.b.as_tensor(), mask.as_ref())
            } else {
                block(&t, &spec, &l.w.as_detached_tensor(), &l.b.as_detached_tensor(), None)
            }
            .map_err(err)?;
        }
        Ok(t)
    }
}

impl Model for CandleModel {
    fn policy(&self) -> FreezePolicy {
        self.cfg.policy
    }

    fn extract(&mut self, images: &HostTensor) -> Result<HostTensor> {
        let t = self.at_cut(images, Stage::Image)?;
        to_host(&t)
    }

    fn train_step(&mut self, x: &HostTensor, stage: Stage, labels: &[u32], lr: f32) -> Result<StepStats> {
        let input = self.at_cut(x, stage)?;
        let logits = self.head(input, true)?;
        let targets = Tensor::from_slice(labels, labels.len(), &self.device).map_err(err)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &targets).map_err(err)?;
        let correct = logits
            .argmax(1)
            .and_then(|p| p.eq(&targets))
            .and_then(|e| e.to_dtype(DType::F32))
            .and_then(|e| e.sum_all())
            .and_then(|s| s.to_scalar::<f32>())
            .map_err(err)? as usize;
        let grads = loss.backward().map_err(err)?;
        let opt = self.cfg.optimizer;
        for l in &mut self.trainable {
            let lr = if l.spec.id.is_conv() { lr * opt.conv_lr_mult } else { lr } as f64;
            for (k, var) in [&l.w, &l.b].into_iter().enumerate() {
                let g = grads.get(var.as_tensor()).ok_or_else(|| err(format!("no gradient for {}", l.spec.id)))?;
                l.state[k].update(&opt, var, g, lr).map_err(err)?;
            }
        }
        let loss = loss.to_scalar::<f32>().map_err(err)?;
        Ok(StepStats { loss, correct })
    }

    fn logits(&mut self, x: &HostTensor, stage: Stage) -> Result<HostTensor> {
        let input = self.at_cut(x, stage)?;
        let out = self.head(input, false)?;
        to_host(&out)
    }

    fn weights(&self) -> Result<WeightSet> {
        let mut w = self.base.clone();
        for l in &self.trainable {
            w.set(&l.spec.id.weight_name(), to_host(l.w.as_tensor())?)?;
            w.set(&l.spec.id.bias_name(), to_host(l.b.as_tensor())?)?;
            w.set_source(l.spec.id, LayerSource::Trained);
        }
        Ok(w)
    }

    fn set_weights(&mut self, weights: &WeightSet) -> Result<()> {
        if weights.spec() != &self.arch {
            return Err(err(format!("weights are for {:?}, model is {:?}", weights.spec(), self.arch)));
        }
        for l in &mut self.trainable {
            let (w, b) = weights.layer(l.spec.id);
            l.w.set(&to_device(w, &self.device)?).map_err(err)?;
            l.b.set(&to_device(b, &self.device)?).map_err(err)?;
            l.state = Default::default();
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.device.synchronize().map_err(err)
    }
}
