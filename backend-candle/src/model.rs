//! AlexNet in candle: a frozen prefix of plain tensors and a trainable suffix of `Var`s.

use crate::err;
use crate::optim::ParamState;
use alexnet_core::arch::{LayerKind, LayerSpec, MAXPOOL};
use alexnet_core::{
    AlexNetSpec, DropoutMasks, FreezePolicy, HostTensor, Model, ModelConfig, Result, Stage, StepStats, Targets, TrainState, WeightSet,
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

/// 3×3 / stride-2 max-pool built from differentiable ops. candle's own max-pool has no backward
/// pass for overlapping windows, which trainable conv1, conv2 and conv5 need: this takes the
/// maximum of the nine strided shifts of the input.
fn max_pool_differentiable(x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (ho, wo) = (alexnet_core::arch::pool_out(h), alexnet_core::arch::pool_out(w));
    // One zero row/column of padding lets every shift take 2·out elements; the padding only ever
    // lands on the odd positions that the stride skips.
    let xp = x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
    let mut out: Option<Tensor> = None;
    for dy in 0..MAXPOOL.0 {
        for dx in 0..MAXPOOL.0 {
            let s = xp
                .narrow(2, dy, 2 * ho)?
                .narrow(3, dx, 2 * wo)?
                .reshape((n, c, ho, 2, wo, 2))?
                .narrow(3, 0, 1)?
                .narrow(5, 0, 1)?
                .reshape((n, c, ho, wo))?;
            out = Some(match out {
                None => s,
                Some(o) => o.maximum(&s)?,
            });
        }
    }
    Ok(out.expect("nine shifts"))
}

/// One layer's block: conv + ReLU (+ max-pool, + flatten after conv5), or
/// (dropout) + linear (+ ReLU). `differentiable` picks the max-pool that supports backward.
fn block(x: &Tensor, spec: &LayerSpec, w: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
    block_mode(x, spec, w, b, mask, false)
}

fn block_mode(x: &Tensor, spec: &LayerSpec, w: &Tensor, b: &Tensor, mask: Option<&Tensor>, differentiable: bool) -> candle_core::Result<Tensor> {
    match spec.kind {
        LayerKind::Conv { stride, padding, pool_after, out_channels, .. } => {
            let mut y = x.conv2d(w, padding, stride, 1, 1)?.broadcast_add(&b.reshape((1, out_channels, 1, 1))?)?.relu()?;
            if pool_after {
                y = if differentiable { max_pool_differentiable(&y)? } else { y.max_pool2d_with_stride(MAXPOOL.0, MAXPOOL.1)? };
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

    /// Forward and backward pass of one training batch entering at the cut. The fully connected
    /// layers are differentiated by hand (three GEMMs each, no graph), which is several times
    /// faster than candle's autograd on CPU; trainable conv layers, if any, use autograd, seeded
    /// with the gradient at the classifier's input. Returns the stats and (dW, db) per trainable
    /// layer, in order.
    fn backprop(&mut self, input: Tensor, targets: Targets<'_>) -> Result<(StepStats, Vec<(Tensor, Tensor)>)> {
        let n_conv = self.trainable.iter().filter(|l| l.spec.id.is_conv()).count();
        // Trainable conv layers, recorded for autograd.
        let mut t = input;
        for l in &self.trainable[..n_conv] {
            t = block_mode(&t, &l.spec, l.w.as_tensor(), l.b.as_tensor(), None, true).map_err(err)?;
        }
        let conv_out = t;
        let mut h = conv_out.detach();
        // Fully connected layers: keep each layer's (dropped-out) input and pre-activation.
        let mut saved: Vec<(Tensor, Option<Tensor>, Tensor)> = Vec::new(); // (input, mask, z)
        for l in &self.trainable[n_conv..] {
            let (dropout_before, relu_after) = match l.spec.kind {
                LayerKind::Linear { dropout_before, relu_after, .. } => (dropout_before, relu_after),
                LayerKind::Conv { .. } => unreachable!("conv layers come first"),
            };
            let mask = if dropout_before && self.cfg.dropout > 0.0 {
                let m = self.masks.next_mask(h.elem_count());
                Some(Tensor::from_vec(m, h.shape(), &self.device).map_err(err)?)
            } else {
                None
            };
            let hin = match &mask {
                Some(m) => (&h * m).map_err(err)?,
                None => h,
            };
            let z = hin.matmul(&l.w.as_detached_tensor().t().map_err(err)?).and_then(|z| z.broadcast_add(&l.b.as_detached_tensor())).map_err(err)?;
            h = if relu_after { z.relu().map_err(err)? } else { z.clone() };
            saved.push((hin, mask, z));
        }
        // Softmax cross-entropy on the host: [N, classes] is tiny.
        let logits = to_host(&h)?;
        let (n, k) = (logits.batch(), logits.row_len());
        targets.check(n, k)?;
        let (loss, dlogits) = alexnet_core::metrics::cross_entropy(&logits, targets, self.cfg.label_smoothing);
        let predicted = alexnet_core::metrics::argmax_rows(&logits);
        let correct = predicted.iter().zip(targets.labels).filter(|(p, y)| p == y).count();
        let mut dz = Tensor::from_vec(dlogits, (n, k), &self.device).map_err(err)?;
        // Backward through the fully connected layers, last to first.
        let mut grads: Vec<(Tensor, Tensor)> = Vec::new();
        let fc = &self.trainable[n_conv..];
        for (idx, l) in fc.iter().enumerate().rev() {
            let (hin, _, _) = &saved[idx];
            let gw = dz.t().and_then(|t| t.matmul(hin)).map_err(err)?;
            let gb = dz.sum(0).map_err(err)?;
            grads.push((gw, gb));
            let needs_input_grad = idx > 0 || n_conv > 0;
            if needs_input_grad {
                let mut dh = dz.matmul(&l.w.as_detached_tensor()).map_err(err)?;
                if let Some(m) = &saved[idx].1 {
                    dh = (dh * m).map_err(err)?;
                }
                if idx > 0 {
                    // Through the previous layer's ReLU.
                    let z_prev = &saved[idx - 1].2;
                    let on = z_prev.gt(0f32).and_then(|m| m.to_dtype(DType::F32)).map_err(err)?;
                    dz = (dh * on).map_err(err)?;
                } else {
                    dz = dh;
                }
            }
        }
        grads.reverse();
        let mut all = Vec::with_capacity(self.trainable.len());
        if n_conv > 0 {
            // d(loss)/d(conv params) = d(<conv_out, g>)/d(params) with g the gradient at conv_out.
            let g = dz.reshape(conv_out.shape()).map_err(err)?;
            let surrogate = (&conv_out * &g).and_then(|p| p.sum_all()).map_err(err)?;
            let store = surrogate.backward().map_err(err)?;
            for l in &self.trainable[..n_conv] {
                let get = |v: &Var| store.get(v.as_tensor()).cloned().ok_or_else(|| err(format!("no gradient for {}", l.spec.id)));
                all.push((get(&l.w)?, get(&l.b)?));
            }
        }
        all.extend(grads);
        Ok((StepStats { loss: loss as f32, correct }, all))
    }

    /// Forward through the trainable layers in evaluation mode (no dropout, no graph).
    fn head_eval(&self, mut t: Tensor) -> Result<Tensor> {
        for l in &self.trainable {
            t = block(&t, &l.spec, &l.w.as_detached_tensor(), &l.b.as_detached_tensor(), None).map_err(err)?;
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

    fn train_step_with(&mut self, x: &HostTensor, stage: Stage, targets: Targets<'_>, lr: f32) -> Result<StepStats> {
        let input = self.at_cut(x, stage)?;
        let (stats, conv_grads) = self.backprop(input, targets)?;
        let opt = self.cfg.optimizer;
        for (i, l) in self.trainable.iter_mut().enumerate() {
            let lr = if l.spec.id.is_conv() { lr * opt.conv_lr_mult } else { lr } as f64;
            let (gw, gb) = &conv_grads[i];
            l.state[0].update(&opt, &l.w, gw, lr).map_err(err)?;
            l.state[1].update(&opt, &l.b, gb, lr).map_err(err)?;
        }
        Ok(stats)
    }

    fn logits(&mut self, x: &HostTensor, stage: Stage) -> Result<HostTensor> {
        let input = self.at_cut(x, stage)?;
        let out = self.head_eval(input)?;
        to_host(&out)
    }

    fn weights(&self) -> Result<WeightSet> {
        let mut w = self.base.clone();
        for l in &self.trainable {
            w.set_trained(l.spec.id, to_host(l.w.as_tensor())?, to_host(l.b.as_tensor())?)?;
        }
        Ok(w)
    }

    fn set_weights(&mut self, weights: &WeightSet) -> Result<()> {
        weights.ensure_spec(&self.arch)?;
        for l in &mut self.trainable {
            let (w, b) = weights.layer(l.spec.id);
            l.w.set(&to_device(w, &self.device)?).map_err(err)?;
            l.b.set(&to_device(b, &self.device)?).map_err(err)?;
            l.state = Default::default();
        }
        Ok(())
    }

    fn train_state(&self) -> Result<TrainState> {
        let mut st = TrainState { dropout_position: self.masks.position(), ..Default::default() };
        for l in &self.trainable {
            let mut bufs = [[None, None], [None, None]];
            for (slot, state) in bufs.iter_mut().zip(&l.state) {
                let (parts, steps) = state.parts();
                st.steps = steps as u64;
                for (s, t) in slot.iter_mut().zip(parts) {
                    *s = t.map(to_host).transpose()?;
                }
            }
            st.insert_layer(l.spec.id, &self.cfg.optimizer.optimizer, bufs);
        }
        Ok(st)
    }

    fn set_train_state(&mut self, st: &TrainState) -> Result<()> {
        let opt = self.cfg.optimizer.optimizer;
        let layers: Vec<_> = self.trainable.iter().map(|l| l.spec.id).collect();
        let steps = st.check_for(&layers, &opt)?;
        for l in &mut self.trainable {
            let up = |t: Option<&HostTensor>| t.map(|t| to_device(t, &self.device)).transpose();
            let [w, b] = st.layer(&l.spec, &opt)?;
            l.state = [ParamState::restore(up(w[0])?, up(w[1])?, steps), ParamState::restore(up(b[0])?, up(b[1])?, steps)];
        }
        self.masks.set_position(st.dropout_position);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.device.synchronize().map_err(err)
    }
}
