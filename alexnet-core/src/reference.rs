//! A deliberately plain AlexNet in f64 loops: the oracle that every backend is checked against
//! by the conformance suite. Slow, obvious, and independent of any backend.

use crate::arch::{AlexNetSpec, LayerKind, LayerSpec, MAXPOOL};
use crate::backend::{DropoutMasks, ModelConfig, Optimizer};
use crate::tensor::HostTensor;
use crate::weights::WeightSet;
use std::collections::BTreeMap;

/// A batch of activations, `[N, ...]`, in f64.
#[derive(Clone, Debug)]
pub struct Act {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Act {
    /// From a host tensor.
    pub fn from_host(t: &HostTensor) -> Self {
        Self { shape: t.shape.clone(), data: t.data.iter().map(|v| *v as f64).collect() }
    }

    /// To a host tensor (rounded to f32).
    pub fn to_host(&self) -> HostTensor {
        HostTensor { shape: self.shape.clone(), data: self.data.iter().map(|v| *v as f32).collect() }
    }
}

fn conv_relu(x: &Act, w: &HostTensor, b: &HostTensor, stride: usize, pad: usize) -> Act {
    let (n, ci, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (co, k) = (w.shape[0], w.shape[2]);
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (wd + 2 * pad - k) / stride + 1;
    let mut out = vec![0f64; n * co * ho * wo];
    for b_ in 0..n {
        for o in 0..co {
            for y in 0..ho {
                for xx in 0..wo {
                    let mut acc = b.data[o] as f64;
                    for i in 0..ci {
                        for ky in 0..k {
                            let iy = (y * stride + ky) as isize - pad as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..k {
                                let ix = (xx * stride + kx) as isize - pad as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                acc += w.data[((o * ci + i) * k + ky) * k + kx] as f64
                                    * x.data[((b_ * ci + i) * h + iy as usize) * wd + ix as usize];
                            }
                        }
                    }
                    out[((b_ * co + o) * ho + y) * wo + xx] = acc.max(0.0);
                }
            }
        }
    }
    Act { shape: vec![n, co, ho, wo], data: out }
}

fn max_pool(x: &Act) -> Act {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (k, s) = MAXPOOL;
    let (ho, wo) = (crate::arch::pool_out(h), crate::arch::pool_out(w));
    let mut out = vec![f64::NEG_INFINITY; n * c * ho * wo];
    for p in 0..n * c {
        for y in 0..ho {
            for xx in 0..wo {
                let o = &mut out[(p * ho + y) * wo + xx];
                for ky in 0..k {
                    for kx in 0..k {
                        *o = o.max(x.data[(p * h + y * s + ky) * w + xx * s + kx]);
                    }
                }
            }
        }
    }
    Act { shape: vec![n, c, ho, wo], data: out }
}

fn linear(x: &Act, w: &HostTensor, b: &HostTensor) -> Act {
    let (n, i_) = (x.shape[0], x.data.len() / x.shape[0]);
    let o_ = w.shape[0];
    let mut out = vec![0f64; n * o_];
    for r in 0..n {
        for o in 0..o_ {
            let wr = &w.data[o * i_..(o + 1) * i_];
            let xr = &x.data[r * i_..(r + 1) * i_];
            out[r * o_ + o] = b.data[o] as f64 + wr.iter().zip(xr).map(|(a, b)| *a as f64 * b).sum::<f64>();
        }
    }
    Act { shape: vec![n, o_], data: out }
}

/// One layer's block in evaluation mode (no dropout).
pub fn block(x: &Act, spec: &LayerSpec, w: &WeightSet) -> Act {
    let (wt, bt) = w.layer(spec.id);
    match spec.kind {
        LayerKind::Conv { stride, padding, pool_after, .. } => {
            let mut y = conv_relu(x, wt, bt, stride, padding);
            if pool_after {
                y = max_pool(&y);
            }
            if spec.output_shape.len() == 1 {
                y.shape = vec![y.shape[0], spec.output_shape[0]];
            }
            y
        }
        LayerKind::Linear { relu_after, .. } => {
            let mut y = linear(x, wt, bt);
            if relu_after {
                y.data.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            y
        }
    }
}

/// Runs layers `from..to` (indices into the layer list) in evaluation mode.
pub fn forward(x: &Act, w: &WeightSet, from: usize, to: usize) -> Act {
    let spec: AlexNetSpec = *w.spec();
    spec.layers()[from..to].iter().fold(x.clone(), |a, l| block(&a, l, w))
}

/// One training step of the fully connected trainable layers (policy fc6, fc7 or fc8) on input
/// at the cut, with the same dropout masks and optimiser as the backends. Returns the loss and
/// the updated weights; `state` carries the optimiser state between steps.
pub fn fc_train_step(
    w: &mut WeightSet,
    cfg: &ModelConfig,
    masks: &mut DropoutMasks,
    state: &mut BTreeMap<String, (Vec<f64>, Vec<f64>, i32)>,
    x: &HostTensor,
    labels: &[u32],
    lr: f32,
) -> f64 {
    let spec = *w.spec();
    let layers: Vec<LayerSpec> = spec.layers().into_iter().filter(|l| cfg.policy.is_trainable(l.id)).collect();
    assert!(layers.iter().all(|l| !l.id.is_conv()), "reference trains fully connected layers only");
    let n = x.batch();
    // Forward, keeping inputs (after dropout) and pre-activations.
    let mut h = Act::from_host(x);
    h.shape = vec![n, x.row_len()];
    let mut saved = Vec::new();
    for l in &layers {
        let LayerKind::Linear { dropout_before, relu_after, .. } = l.kind else { unreachable!() };
        let mask = (dropout_before && cfg.dropout > 0.0).then(|| masks.next_mask(h.data.len()));
        if let Some(m) = &mask {
            h.data.iter_mut().zip(m).for_each(|(v, m)| *v *= *m as f64);
        }
        let (wt, bt) = w.layer(l.id);
        let z = linear(&h, wt, bt);
        let mut a = z.clone();
        if relu_after {
            a.data.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        saved.push((h, mask, z));
        h = a;
    }
    let k = h.shape[1];
    let mut loss = 0.0;
    let mut dz = vec![0f64; n * k];
    for (i, &y) in labels.iter().enumerate() {
        let row = &h.data[i * k..(i + 1) * k];
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        loss += sum.ln() + max - row[y as usize];
        for j in 0..k {
            dz[i * k + j] = ((row[j] - max).exp() / sum - if j == y as usize { 1.0 } else { 0.0 }) / n as f64;
        }
    }
    let mut grads = Vec::new();
    for idx in (0..layers.len()).rev() {
        let (hin, _, _) = &saved[idx];
        let (wt, _) = w.layer(layers[idx].id);
        let (o_, i_) = (wt.shape[0], wt.shape[1]);
        let mut gw = vec![0f64; o_ * i_];
        let mut gb = vec![0f64; o_];
        for r in 0..n {
            for o in 0..o_ {
                let d = dz[r * o_ + o];
                gb[o] += d;
                if d != 0.0 {
                    for i in 0..i_ {
                        gw[o * i_ + i] += d * hin.data[r * i_ + i];
                    }
                }
            }
        }
        grads.push((layers[idx].id, gw, gb));
        if idx > 0 {
            let mut dh = vec![0f64; n * i_];
            for r in 0..n {
                for o in 0..o_ {
                    let d = dz[r * o_ + o];
                    if d != 0.0 {
                        for i in 0..i_ {
                            dh[r * i_ + i] += d * wt.data[o * i_ + i] as f64;
                        }
                    }
                }
            }
            if let Some(m) = &saved[idx].1 {
                dh.iter_mut().zip(m).for_each(|(v, m)| *v *= *m as f64);
            }
            let zp = &saved[idx - 1].2;
            dh.iter_mut().zip(&zp.data).for_each(|(v, z)| if *z <= 0.0 { *v = 0.0 });
            dz = dh;
        }
    }
    for (id, gw, gb) in grads {
        for (name, g) in [(id.weight_name(), gw), (id.bias_name(), gb)] {
            let mut p = w.get(&name).unwrap().clone();
            let (m, v, t) = state.entry(name.clone()).or_insert_with(|| (vec![], vec![], 0));
            *t += 1;
            sgd_or_adam(cfg, &mut p.data, &g, m, v, *t, lr as f64);
            w.set(&name, p).unwrap();
        }
    }
    loss / n as f64
}

fn sgd_or_adam(cfg: &ModelConfig, p: &mut [f32], g: &[f64], m: &mut Vec<f64>, v: &mut Vec<f64>, t: i32, lr: f64) {
    let wd = cfg.optimizer.weight_decay as f64;
    let h: Vec<f64> = g.iter().zip(p.iter()).map(|(g, p)| g + wd * *p as f64).collect();
    match cfg.optimizer.optimizer {
        Optimizer::Sgd { momentum } => {
            if m.is_empty() || momentum == 0.0 {
                *m = h;
            } else {
                m.iter_mut().zip(&h).for_each(|(m, h)| *m = momentum as f64 * *m + h);
            }
            p.iter_mut().zip(m.iter()).for_each(|(p, m)| *p = (*p as f64 - lr * m) as f32);
        }
        Optimizer::Adam { beta1, beta2, eps } => {
            let (b1, b2) = (beta1 as f64, beta2 as f64);
            if m.is_empty() {
                *m = vec![0.0; h.len()];
                *v = vec![0.0; h.len()];
            }
            let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            for i in 0..h.len() {
                m[i] = b1 * m[i] + (1.0 - b1) * h[i];
                v[i] = b2 * v[i] + (1.0 - b2) * h[i] * h[i];
                p[i] = (p[i] as f64 - lr / bc1 * m[i] / ((v[i] / bc2).sqrt() + eps as f64)) as f32;
            }
        }
    }
}
