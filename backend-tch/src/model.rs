//! AlexNet in libtorch: frozen prefix without gradients, trainable suffix with autograd.

use crate::err;
use alexnet_core::arch::{LayerKind, LayerSpec, MAXPOOL};
use alexnet_core::{
    AlexNetSpec, DropoutMasks, FreezePolicy, HostTensor, Model, ModelConfig, Optimizer, Result, Stage, StepStats, Targets, TrainState, WeightSet,
};
use tch::{Device, Kind, Tensor};

struct Layer {
    spec: LayerSpec,
    w: Tensor,
    b: Tensor,
    /// Optimiser state per parameter: (first moment or momentum buffer, second moment).
    state: [(Option<Tensor>, Option<Tensor>); 2],
}

/// An AlexNet on a libtorch device.
pub struct TchModel {
    device: Device,
    arch: AlexNetSpec,
    cfg: ModelConfig,
    base: WeightSet,
    frozen: Vec<Layer>,
    trainable: Vec<Layer>,
    masks: DropoutMasks,
    steps: i32,
}

fn to_device(t: &HostTensor, device: Device) -> Result<Tensor> {
    let shape: Vec<i64> = t.shape.iter().map(|d| *d as i64).collect();
    Tensor::f_from_slice(&t.data).and_then(|x| x.f_view(shape.as_slice())).and_then(|x| x.f_to_device(device)).map_err(err)
}

fn to_host(t: &Tensor) -> Result<HostTensor> {
    let shape: Vec<usize> = t.size().iter().map(|d| *d as usize).collect();
    let flat = t.f_to_device(Device::Cpu).and_then(|x| x.f_to_kind(Kind::Float)).and_then(|x| x.f_contiguous()).map_err(err)?;
    let data = Vec::<f32>::try_from(flat.flatten(0, -1)).map_err(err)?;
    HostTensor::new(shape, data)
}

fn block(x: &Tensor, spec: &LayerSpec, w: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    match spec.kind {
        LayerKind::Conv { stride, padding, pool_after, .. } => {
            let (s, p, k) = (stride as i64, padding as i64, MAXPOOL.0 as i64);
            let mut y = x.f_conv2d(w, Some(b), [s, s], [p, p], [1, 1], 1).map_err(err)?.f_relu().map_err(err)?;
            if pool_after {
                let ps = MAXPOOL.1 as i64;
                y = y.f_max_pool2d([k, k], [ps, ps], [0, 0], [1, 1], false).map_err(err)?;
            }
            if spec.output_shape.len() == 1 {
                y = y.f_flatten(1, -1).map_err(err)?; // pool5 is 6×6 by construction
            }
            Ok(y)
        }
        LayerKind::Linear { relu_after, .. } => {
            let x = match mask {
                Some(m) => x.f_mul(m).map_err(err)?,
                None => x.shallow_clone(),
            };
            let y = x.f_linear(w, Some(b)).map_err(err)?;
            if relu_after { y.f_relu().map_err(err) } else { Ok(y) }
        }
    }
}

impl TchModel {
    /// Builds the model on `device`, splitting layers by `cfg.policy`.
    pub fn new(device: Device, weights: &WeightSet, cfg: &ModelConfig) -> Result<Self> {
        let arch = *weights.spec();
        let (mut frozen, mut trainable) = (Vec::new(), Vec::new());
        for spec in arch.layers() {
            let (w, b) = weights.layer(spec.id);
            let train = cfg.policy.is_trainable(spec.id);
            let (w, b) = (to_device(w, device)?.set_requires_grad(train), to_device(b, device)?.set_requires_grad(train));
            let l = Layer { spec, w, b, state: Default::default() };
            if train { trainable.push(l) } else { frozen.push(l) }
        }
        Ok(Self { device, arch, cfg: *cfg, base: weights.clone(), frozen, trainable, masks: DropoutMasks::new(cfg.seed, cfg.dropout), steps: 0 })
    }

    fn at_cut(&self, x: &HostTensor, stage: Stage) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let mut t = to_device(x, self.device)?;
        if stage == Stage::Image {
            for l in &self.frozen {
                t = block(&t, &l.spec, &l.w, &l.b, None)?;
            }
        }
        Ok(t)
    }

    fn head(&mut self, mut t: Tensor, train: bool) -> Result<Tensor> {
        for i in 0..self.trainable.len() {
            let dropout = matches!(self.trainable[i].spec.kind, LayerKind::Linear { dropout_before: true, .. }) && self.cfg.dropout > 0.0;
            let mask = if train && dropout {
                let m = self.masks.next_mask(t.numel());
                Some(Tensor::f_from_slice(&m).and_then(|m| m.f_view(t.size().as_slice())).and_then(|m| m.f_to_device(self.device)).map_err(err)?)
            } else {
                None
            };
            let l = &self.trainable[i];
            t = block(&t, &l.spec, &l.w, &l.b, mask.as_ref())?;
        }
        Ok(t)
    }

    /// PyTorch's SGD / Adam update, in place, without recording a graph.
    fn update(cfg: &ModelConfig, p: &mut Tensor, state: &mut (Option<Tensor>, Option<Tensor>), lr: f64, step: i32) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let mut g = p.grad();
        let wd = cfg.optimizer.weight_decay as f64;
        let device = p.device();
        let scalar = move |v: f64| Tensor::from(v as f32).to_device(device);
        match cfg.optimizer.optimizer {
            // In place throughout (as torch.optim.SGD's foreach path): no per-step allocation
            // the size of fc6's weight.
            Optimizer::Sgd { momentum } => {
                if wd > 0.0 {
                    let _ = g.f_addcmul_(p, &scalar(wd)).map_err(err)?;
                }
                let buf = match state.0.take() {
                    Some(mut b) if momentum > 0.0 => {
                        let _ = b.f_mul_scalar_(momentum as f64).map_err(err)?;
                        let _ = b.f_add_(&g).map_err(err)?;
                        b
                    }
                    _ => g.f_detach_copy().map_err(err)?,
                };
                let _ = p.f_addcmul_(&buf, &scalar(-lr)).map_err(err)?;
                if momentum > 0.0 {
                    state.0 = Some(buf);
                }
            }
            Optimizer::Adam { beta1, beta2, eps } => {
                let h = if wd > 0.0 { g.f_add(&p.f_mul_scalar(wd).map_err(err)?).map_err(err)? } else { g.shallow_clone() };
                let (b1, b2) = (beta1 as f64, beta2 as f64);
                let mut m = state.0.take().unwrap_or_else(|| h.zeros_like());
                let mut v = state.1.take().unwrap_or_else(|| h.zeros_like());
                let _ = m.f_mul_scalar_(b1).and_then(|_| m.f_add_(&h.f_mul_scalar(1.0 - b1)?)).map_err(err)?;
                let _ = v.f_mul_scalar_(b2).and_then(|_| v.f_add_(&h.f_mul(&h)?.f_mul_scalar(1.0 - b2)?)).map_err(err)?;
                let (bc1, bc2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
                let denom = v.f_sqrt().and_then(|s| s.f_div_scalar(bc2.sqrt())).and_then(|s| s.f_add_scalar(eps as f64)).map_err(err)?;
                let upd = m.f_div(&denom).and_then(|u| u.f_mul_scalar(lr / bc1)).map_err(err)?;
                let _ = p.f_sub_(&upd).map_err(err)?;
                state.0 = Some(m);
                state.1 = Some(v);
            }
        }
        let mut gr = p.grad();
        let _ = gr.f_zero_().map_err(err)?;
        Ok(())
    }
}

impl Model for TchModel {
    fn policy(&self) -> FreezePolicy {
        self.cfg.policy
    }

    fn extract(&mut self, images: &HostTensor) -> Result<HostTensor> {
        to_host(&self.at_cut(images, Stage::Image)?)
    }

    fn train_step_with(&mut self, x: &HostTensor, stage: Stage, targets: Targets<'_>, lr: f32) -> Result<StepStats> {
        let input = self.at_cut(x, stage)?;
        let logits = self.head(input, true)?;
        let (n, k) = (logits.size()[0] as usize, logits.size()[1] as usize);
        targets.check(n, k)?;
        let on_device = |labels: &[u32]| {
            Tensor::f_from_slice(&labels.iter().map(|l| *l as i64).collect::<Vec<_>>()).and_then(|t| t.f_to_device(self.device)).map_err(err)
        };
        let log_p = logits.f_log_softmax(-1, Kind::Float).map_err(err)?;
        let eps = self.cfg.label_smoothing as f64;
        // −Σ target·log p with target = (1 − ε)·one-hot + ε/classes, averaged over the batch.
        let smoothed = |labels: &Tensor| {
            let nll = log_p.f_nll_loss(labels, None::<Tensor>, tch::Reduction::Mean, -100)?;
            if eps == 0.0 {
                return Ok(nll);
            }
            let uniform = log_p.f_mean_dim(-1, false, Kind::Float)?.f_mean(Kind::Float)?.f_neg()?;
            nll.f_mul_scalar(1.0 - eps)?.f_add(&uniform.f_mul_scalar(eps)?)
        };
        let labels = on_device(targets.labels)?;
        let loss = match targets.mix {
            None => smoothed(&labels),
            // Cross-entropy is linear in the target: λ·CE(labels) + (1 − λ)·CE(partners).
            Some(m) => {
                let partners = on_device(m.partners)?;
                smoothed(&labels).and_then(|a| {
                    let b = smoothed(&partners)?;
                    a.f_mul_scalar(m.lambda as f64)?.f_add(&b.f_mul_scalar(1.0 - m.lambda as f64)?)
                })
            }
        }
        .map_err(err)?;
        let correct = logits.f_argmax(1, false).and_then(|p| p.f_eq_tensor(&labels)).and_then(|e| e.f_sum(Kind::Int64)).map_err(err)?;
        loss.f_backward().map_err(err)?;
        self.steps += 1;
        let cfg = self.cfg;
        for l in &mut self.trainable {
            let lr = if l.spec.id.is_conv() { lr * cfg.optimizer.conv_lr_mult } else { lr } as f64;
            let [sw, sb] = &mut l.state;
            Self::update(&cfg, &mut l.w, sw, lr, self.steps)?;
            Self::update(&cfg, &mut l.b, sb, lr, self.steps)?;
        }
        Ok(StepStats { loss: loss.f_double_value(&[]).map_err(err)? as f32, correct: correct.f_int64_value(&[]).map_err(err)? as usize })
    }

    fn logits(&mut self, x: &HostTensor, stage: Stage) -> Result<HostTensor> {
        let input = self.at_cut(x, stage)?;
        let _guard = tch::no_grad_guard();
        let out = self.head(input, false)?;
        to_host(&out)
    }

    fn weights(&self) -> Result<WeightSet> {
        let mut w = self.base.clone();
        for l in &self.trainable {
            w.set_trained(l.spec.id, to_host(&l.w.detach())?, to_host(&l.b.detach())?)?;
        }
        Ok(w)
    }

    fn set_weights(&mut self, weights: &WeightSet) -> Result<()> {
        weights.ensure_spec(&self.arch)?;
        let _guard = tch::no_grad_guard();
        for l in &mut self.trainable {
            let (w, b) = weights.layer(l.spec.id);
            l.w.f_copy_(&to_device(w, self.device)?).map_err(err)?;
            l.b.f_copy_(&to_device(b, self.device)?).map_err(err)?;
            l.state = Default::default();
        }
        self.steps = 0;
        Ok(())
    }

    fn train_state(&self) -> Result<TrainState> {
        let mut st = TrainState { steps: self.steps as u64, dropout_position: self.masks.position(), ..Default::default() };
        let host = |t: &Option<Tensor>| t.as_ref().map(to_host).transpose();
        for l in &self.trainable {
            let [w, b] = &l.state;
            st.insert_layer(l.spec.id, &self.cfg.optimizer.optimizer, [[host(&w.0)?, host(&w.1)?], [host(&b.0)?, host(&b.1)?]]);
        }
        Ok(st)
    }

    fn set_train_state(&mut self, st: &TrainState) -> Result<()> {
        let opt = self.cfg.optimizer.optimizer;
        let layers: Vec<_> = self.trainable.iter().map(|l| l.spec.id).collect();
        let steps = st.check_for(&layers, &opt)?;
        for l in &mut self.trainable {
            let device = self.device;
            let up = |t: Option<&HostTensor>| t.map(|t| to_device(t, device)).transpose();
            let [w, b] = st.layer(&l.spec, &opt)?;
            l.state = [(up(w[0])?, up(w[1])?), (up(b[0])?, up(b[1])?)];
        }
        self.steps = steps;
        self.masks.set_position(st.dropout_position);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
        Ok(())
    }
}
