//! A deliberately plain AlexNet in f64 loops: the oracle that every backend is checked against
//! by the conformance suite. Slow, obvious, and independent of any backend.
//!
//! Besides each value it computes a **bound on how far an f32 implementation may deviate** from
//! it, element by element, so the suite's tolerances follow from f32 rounding and the size of each
//! reduction instead of being fitted to one CPU. The model (Higham & Mary, "A new approach to
//! probabilistic rounding error analysis", SIAM J. Sci. Comput. 2019):
//!
//! - a sum of `K` products computed in f32, in **any order** (sequential, pairwise, SIMD lanes,
//!   blocked GEMM, with or without FMA), differs from the exact sum by at most
//!   `λ·√(K+1)·u·(‖terms‖₂ + |sum|)`, `u = 2⁻²⁴`. Each of the K additions rounds a partial sum
//!   with a relative error ≤ u; treated as independent and zero-mean, the total has a standard
//!   deviation ≤ `u·√K·max|partial sum|/√3`, and every partial sum is bounded by the terms'
//!   2-norm (random-sign terms) plus the sum itself (same-sign terms). `λ = 4` is ≈ 7 standard
//!   deviations: a miss has probability < 10⁻¹¹ per element. Fewer roundings (FMA, wider
//!   accumulators, pairwise trees) only make the error smaller;
//! - an error `e` already in the inputs propagates through the weights as `√(Σ w²e²)` (errors of
//!   independent sign, each already at λ standard deviations), and adds to the new rounding in
//!   quadrature; ReLU and max-pool are 1-Lipschitz, so they pass a bound through (max-pool takes
//!   the window's largest bound);
//! - element-wise operations (softmax, the optimiser's update) are propagated to first order with
//!   their exact derivatives, plus `u` per rounding.
//!
//! The conformance suite reports the worst `|backend − reference| / bound` of every check; the
//! crate README lists them.

use crate::Targets;
use crate::arch::{AlexNetSpec, LayerKind, LayerSpec, MAXPOOL};
use crate::backend::{DropoutMasks, ModelConfig, Optimizer};
use crate::tensor::HostTensor;
use crate::weights::WeightSet;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Unit roundoff of f32 (round to nearest): 2⁻²⁴.
pub const U: f64 = f32::EPSILON as f64 / 2.0;
/// Standard deviations of the probabilistic rounding model that a bound allows.
pub const LAMBDA: f64 = 4.0;

/// Relative rounding bound of an f32 sum of `k` terms (plus the bias), in any order.
pub fn gamma(k: usize) -> f64 {
    LAMBDA * ((k + 1) as f64).sqrt() * U
}

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

    fn map(&self, f: impl Fn(f64) -> f64) -> Act {
        Act { shape: self.shape.clone(), data: self.data.iter().map(|v| f(*v)).collect() }
    }
}

/// Activations with a per-element bound on an f32 implementation's deviation from them.
#[derive(Clone, Debug)]
pub struct Bounded {
    pub value: Act,
    pub bound: Act,
}

impl Bounded {
    /// An input that the f32 implementation receives exactly.
    pub fn exact(t: &HostTensor) -> Self {
        let value = Act::from_host(t);
        let bound = value.map(|_| 0.0);
        Self { value, bound }
    }

    fn map(&self, f: impl Fn(&Act) -> Act) -> Self {
        Self { value: f(&self.value), bound: f(&self.bound) }
    }
}

/// Correlation of `x` with `w` (`[co, ci, k, k]`, row-major) plus `b`; no activation.
fn conv(x: &Act, w: &[f64], wshape: &[usize], b: &[f64], stride: usize, pad: usize) -> Act {
    let (n, ci, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (co, k) = (wshape[0], wshape[2]);
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (wd + 2 * pad - k) / stride + 1;
    let mut out = vec![0f64; n * co * ho * wo];
    // One output plane per task; each element's sum runs in the same order as a serial loop.
    out.par_chunks_mut(ho * wo).enumerate().for_each(|(plane, out)| {
        let (b_, o) = (plane / co, plane % co);
        for y in 0..ho {
            for xx in 0..wo {
                let mut acc = b[o];
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
                            acc += w[((o * ci + i) * k + ky) * k + kx] * x.data[((b_ * ci + i) * h + iy as usize) * wd + ix as usize];
                        }
                    }
                }
                out[y * wo + xx] = acc;
            }
        }
    });
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

/// `x · wᵀ + b` for `w` of `[o, i]`.
fn linear(x: &Act, w: &[f64], o_: usize, b: &[f64]) -> Act {
    let (n, i_) = (x.shape[0], x.data.len() / x.shape[0]);
    let mut out = vec![0f64; n * o_];
    out.par_iter_mut().enumerate().for_each(|(j, out)| {
        let (r, o) = (j / o_, j % o_);
        let (xr, wr) = (&x.data[r * i_..(r + 1) * i_], &w[o * i_..(o + 1) * i_]);
        *out = b[o] + wr.iter().zip(xr).map(|(a, b)| a * b).sum::<f64>();
    });
    Act { shape: vec![n, o_], data: out }
}

fn f64s(t: &HostTensor) -> Vec<f64> {
    t.data.iter().map(|v| *v as f64).collect()
}

fn squares(v: &[f64]) -> Vec<f64> {
    v.iter().map(|a| a * a).collect()
}

/// A conv or linear map `(input, weights, bias) → output`.
type AffineOp<'a> = dyn Fn(&Act, &[f64], &[f64]) -> Act + 'a;

/// An affine map (conv or linear, `k` products per output) with its deviation bound: input
/// errors propagated through the weights, plus the rounding of the sum and of the stored output.
/// `w_err` bounds how far the implementation's weights already are from `w` (after a step).
fn affine(x: &Bounded, w: &[f64], w_err: &[f64], b: &[f64], k: usize, op: &AffineOp<'_>) -> Bounded {
    let zero_b = vec![0.0; b.len()];
    let value = op(&x.value, w, b);
    let x2 = x.value.map(|v| v * v);
    let terms = op(&x2, &squares(w), &squares(b));
    // Exact inputs or weights contribute nothing: skip the (slow) pass.
    let zeros = || value.map(|_| 0.0);
    let from_inputs = if x.bound.data.iter().any(|e| *e != 0.0) { op(&x.bound.map(|e| e * e), &squares(w), &zero_b) } else { zeros() };
    let from_weights = if w_err.iter().any(|e| *e != 0.0) { op(&x2, &squares(w_err), &zero_b) } else { zeros() };
    let g = gamma(k);
    let bound = Act {
        shape: value.shape.clone(),
        data: (0..value.data.len())
            .map(|j| {
                let z = value.data[j].abs();
                // Independent error sources add in quadrature (each is already at λ standard
                // deviations); the final rounding of the stored output adds directly.
                quadrature(from_inputs.data[j] + from_weights.data[j], g * (terms.data[j].sqrt() + z)) + U * z
            })
            .collect(),
    };
    Bounded { value, bound }
}

fn relu(x: &Bounded) -> Bounded {
    Bounded { value: x.value.map(|v| v.max(0.0)), bound: x.bound.clone() }
}

/// One layer's block in evaluation mode (no dropout), with its deviation bound.
pub fn block_bounded(x: &Bounded, spec: &LayerSpec, w: &WeightSet) -> Bounded {
    let (wt, bt) = w.layer(spec.id);
    let (wv, bv) = (f64s(wt), f64s(bt));
    let no_err = vec![0.0; wv.len()];
    match spec.kind {
        LayerKind::Conv { stride, padding, pool_after, in_channels, kernel, .. } => {
            let shape = wt.shape.clone();
            let op = move |a: &Act, w: &[f64], b: &[f64]| conv(a, w, &shape, b, stride, padding);
            let mut y = relu(&affine(x, &wv, &no_err, &bv, in_channels * kernel * kernel, &op));
            if pool_after {
                y = y.map(max_pool);
            }
            if spec.output_shape.len() == 1 {
                let flat = vec![y.value.shape[0], spec.output_shape[0]];
                y.value.shape.clone_from(&flat);
                y.bound.shape = flat;
            }
            y
        }
        LayerKind::Linear { relu_after, in_features, out_features, .. } => {
            let op = move |a: &Act, w: &[f64], b: &[f64]| linear(a, w, out_features, b);
            let mut x = x.clone();
            x.value.shape = vec![x.value.shape[0], in_features];
            x.bound.shape = x.value.shape.clone();
            let y = affine(&x, &wv, &no_err, &bv, in_features, &op);
            if relu_after { relu(&y) } else { y }
        }
    }
}

/// conv5's output before its ReLU and max-pool, on conv4 features `x`, with bounds.
pub fn conv5_preactivation(x: &HostTensor, w: &WeightSet) -> Bounded {
    let (wt, bt) = w.layer(crate::arch::LayerId::Conv5);
    let shape = wt.shape.clone();
    let op = move |a: &Act, w: &[f64], b: &[f64]| conv(a, w, &shape, b, 1, 1);
    let wv = f64s(wt);
    affine(&Bounded::exact(x), &wv, &vec![0.0; wv.len()], &f64s(bt), wt.shape[1] * 9, &op)
}

/// Runs layers `from..to` (indices into the layer list) in evaluation mode, with bounds.
pub fn forward_bounded(x: &Bounded, w: &WeightSet, from: usize, to: usize) -> Bounded {
    let spec: AlexNetSpec = *w.spec();
    spec.layers()[from..to].iter().fold(x.clone(), |a, l| block_bounded(&a, l, w))
}

/// Runs layers `from..to` in evaluation mode (values only, exact f64).
pub fn forward(x: &Act, w: &WeightSet, from: usize, to: usize) -> Act {
    let spec: AlexNetSpec = *w.spec();
    spec.layers()[from..to].iter().fold(x.clone(), |a, l| {
        let (wt, bt) = w.layer(l.id);
        match l.kind {
            LayerKind::Conv { stride, padding, pool_after, .. } => {
                let mut y = conv(&a, &f64s(wt), &wt.shape, &f64s(bt), stride, padding).map(|v| v.max(0.0));
                if pool_after {
                    y = max_pool(&y);
                }
                if l.output_shape.len() == 1 {
                    y.shape = vec![y.shape[0], l.output_shape[0]];
                }
                y
            }
            LayerKind::Linear { relu_after, .. } => {
                let mut a = a;
                a.shape = vec![a.shape[0], a.data.len() / a.shape[0].max(1)];
                let y = linear(&a, &f64s(wt), wt.shape[0], &f64s(bt));
                if relu_after { y.map(|v| v.max(0.0)) } else { y }
            }
        }
    })
}

/// Mean softmax cross-entropy of f64 logits.
pub fn cross_entropy(logits: &Act, labels: &[u32]) -> f64 {
    let k = logits.shape[1];
    let n = labels.len();
    labels
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            let row = &logits.data[i * k..(i + 1) * k];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            row.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max - row[y as usize]
        })
        .sum::<f64>()
        / n as f64
}

/// The update rule the reference applies: PyTorch's, or a deliberately wrong one that the
/// conformance suite uses to show its bounds are tight enough to reject it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// torch.optim.SGD / torch.optim.Adam exactly.
    Torch,
    /// Adam without bias correction (a classic slip).
    AdamWithoutBiasCorrection,
    /// The weight-decay term forgotten.
    NoWeightDecay,
}

/// Optimiser state of one parameter, with bounds on how far an f32 implementation's state (and
/// the parameter itself) may be from it.
#[derive(Debug, Clone, Default)]
pub struct ParamState {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
    m_err: Vec<f64>,
    v_err: Vec<f64>,
    /// Accumulated bound on the parameter's deviation.
    p_err: Vec<f64>,
}

/// What one reference step returns: the loss and per-parameter bounds.
#[derive(Debug, Clone)]
pub struct StepBounds {
    /// Mean cross-entropy before the update.
    pub loss: f64,
    /// Bound on an f32 implementation's loss deviation.
    pub loss_bound: f64,
    /// Per parameter name: element-wise bound on the deviation of the update (`after − before`).
    pub update_bounds: BTreeMap<String, Vec<f64>>,
}

/// One training step of the fully connected trainable layers (policy fc6, fc7 or fc8) on input
/// at the cut, with the same dropout masks and optimiser as the backends. Updates `w` and
/// `state` (carried between steps) and returns the loss and the bounds of this step.
#[allow(clippy::too_many_arguments)]
pub fn fc_train_step(
    w: &mut WeightSet,
    cfg: &ModelConfig,
    masks: &mut DropoutMasks,
    state: &mut BTreeMap<String, ParamState>,
    x: &HostTensor,
    targets: Targets<'_>,
    lr: f32,
    rule: Rule,
) -> StepBounds {
    let spec = *w.spec();
    let layers: Vec<LayerSpec> = spec.layers().into_iter().filter(|l| cfg.policy.is_trainable(l.id)).collect();
    assert!(layers.iter().all(|l| !l.id.is_conv()), "reference trains fully connected layers only");
    let n = x.batch();
    let p_err = |state: &BTreeMap<String, ParamState>, name: &str, len: usize| {
        state.get(name).map(|s| s.p_err.clone()).filter(|e| !e.is_empty()).unwrap_or_else(|| vec![0.0; len])
    };
    // Forward, keeping each layer's input (after dropout), mask and pre-activation.
    let mut h = Bounded::exact(x);
    h.value.shape = vec![n, x.row_len()];
    h.bound.shape = h.value.shape.clone();
    let mut saved = Vec::new();
    for l in &layers {
        let LayerKind::Linear { dropout_before, relu_after, in_features, out_features } = l.kind else { unreachable!() };
        let mask = (dropout_before && cfg.dropout > 0.0).then(|| masks.next_mask(h.value.data.len()));
        if let Some(m) = &mask {
            // Scaling by 0 or 1/(1−p): at most one rounding.
            for (j, m) in m.iter().enumerate() {
                h.value.data[j] *= *m as f64;
                h.bound.data[j] = h.bound.data[j] * *m as f64 + U * h.value.data[j].abs();
            }
        }
        let (wt, bt) = w.layer(l.id);
        let (wv, bv) = (f64s(wt), f64s(bt));
        let we = p_err(state, &l.id.weight_name(), wv.len());
        let be = p_err(state, &l.id.bias_name(), bv.len());
        // A bias deviation adds directly to every output.
        let op = move |a: &Act, w: &[f64], b: &[f64]| linear(a, w, out_features, b);
        let mut z = affine(&h, &wv, &we, &bv, in_features, &op);
        for r in 0..n {
            for (o, e) in be.iter().enumerate() {
                z.bound.data[r * out_features + o] += e;
            }
        }
        let a = if relu_after { relu(&z) } else { z.clone() };
        saved.push((h, mask, z));
        h = a;
    }
    // Softmax cross-entropy against the (label-smoothed, mixed) target and its gradient
    // (softmax − target)/n, with bounds.
    let k = h.value.shape[1];
    let eps = cfg.label_smoothing as f64;
    // A target that is not one-hot carries its own rounding in f32.
    let soft = eps > 0.0 || targets.mix.is_some();
    let (mut loss, mut loss_bound) = (0.0, 0.0);
    let mut dz = Bounded { value: Act { shape: vec![n, k], data: vec![0.0; n * k] }, bound: Act { shape: vec![n, k], data: vec![0.0; n * k] } };
    let softmax_rounding = LAMBDA * (3.0 + (k as f64).sqrt()) * U;
    for i in 0..targets.len() {
        let row = &h.value.data[i * k..(i + 1) * k];
        let err = &h.bound.data[i * k..(i + 1) * k];
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        let lse = sum.ln() + max;
        let p: Vec<f64> = row.iter().map(|v| (v - max).exp() / sum).collect();
        let mean_err: f64 = p.iter().zip(err).map(|(p, e)| p * e).sum();
        let t = targets.row(i, k, eps);
        // Σ t = 1, so the loss is lse − Σ t·z; an f32 target carries its own rounding.
        let tz: f64 = t.iter().zip(row).map(|(t, z)| t * z).sum();
        let t_err: f64 = t.iter().zip(err).map(|(t, e)| t * e).sum();
        let t_abs: f64 = t.iter().zip(row).map(|(t, z)| t * z.abs()).sum();
        loss += lse - tz;
        loss_bound += mean_err + t_err + softmax_rounding * (lse.abs() + t_abs) + if soft { gamma(k + 1) * (lse.abs() + t_abs) } else { 0.0 };
        for j in 0..k {
            dz.value.data[i * k + j] = (p[j] - t[j]) / n as f64;
            let t_rounding = if soft { U * t[j] } else { 0.0 };
            // Mixed: λ·(p − t_a) + (1 − λ)·(p − t_b), each part rounded, scaled and summed.
            let mix_rounding = if targets.mix.is_some() { 3.0 * U * (p[j] + t[j]) } else { 0.0 };
            dz.bound.data[i * k + j] =
                (p[j] * (err[j] + mean_err) + softmax_rounding * p[j] + U * (p[j] - t[j]).abs() + t_rounding + mix_rounding) / n as f64;
        }
    }
    let loss = loss / n as f64;
    let loss_bound = loss_bound / n as f64 + gamma(n) * loss.abs();
    // Backward.
    let mut grads = Vec::new();
    for idx in (0..layers.len()).rev() {
        let (hin, _, _) = &saved[idx];
        let (wt, _) = w.layer(layers[idx].id);
        let (o_, i_) = (wt.shape[0], wt.shape[1]);
        let wv = f64s(wt);
        let we = p_err(state, &layers[idx].id.weight_name(), wv.len());
        // gW[o,i] = Σ_r dz[r,o]·h[r,i] (n products); gb[o] = Σ_r dz[r,o].
        let mut gw = vec![0f64; o_ * i_];
        let mut gw_err = vec![0f64; o_ * i_];
        let mut gb = vec![0f64; o_];
        let mut gb_err = vec![0f64; o_];
        let gn = gamma(n);
        for o in 0..o_ {
            let (mut s_b, mut t_b, mut e_b) = (0.0, 0.0, 0.0);
            for r in 0..n {
                let (d, de) = (dz.value.data[r * o_ + o], dz.bound.data[r * o_ + o]);
                s_b += d;
                t_b += d * d;
                e_b += de * de;
            }
            gb[o] = s_b;
            gb_err[o] = quadrature(e_b, gn * (t_b.sqrt() + s_b.abs())) + U * s_b.abs();
        }
        // One row of gW per task.
        gw.par_chunks_mut(i_).zip(gw_err.par_chunks_mut(i_)).enumerate().for_each(|(o, (gw, gw_err))| {
            for i in 0..i_ {
                let (mut s, mut t, mut e) = (0.0, 0.0, 0.0);
                for r in 0..n {
                    let (d, de) = (dz.value.data[r * o_ + o], dz.bound.data[r * o_ + o]);
                    let (hv, he) = (hin.value.data[r * i_ + i], hin.bound.data[r * i_ + i]);
                    s += d * hv;
                    t += d * d * hv * hv;
                    e += de * de * hv * hv + d * d * he * he;
                }
                gw[i] = s;
                gw_err[i] = quadrature(e, gn * (t.sqrt() + s.abs())) + U * s.abs();
            }
        });
        grads.push((layers[idx].id, (gw, gw_err), (gb, gb_err)));
        if idx > 0 {
            // dh[r,i] = Σ_o dz[r,o]·w[o,i] (o_ products), then dropout and the ReLU's mask.
            let mut dh =
                Bounded { value: Act { shape: vec![n, i_], data: vec![0.0; n * i_] }, bound: Act { shape: vec![n, i_], data: vec![0.0; n * i_] } };
            let go = gamma(o_);
            dh.value.data.par_iter_mut().zip(dh.bound.data.par_iter_mut()).enumerate().for_each(|(j, (v, err))| {
                let (r, i) = (j / i_, j % i_);
                let (mut s, mut t, mut e) = (0.0, 0.0, 0.0);
                for o in 0..o_ {
                    let (d, de) = (dz.value.data[r * o_ + o], dz.bound.data[r * o_ + o]);
                    let (wv_, wer) = (wv[o * i_ + i], we[o * i_ + i]);
                    s += d * wv_;
                    t += d * d * wv_ * wv_;
                    e += de * de * wv_ * wv_ + d * d * wer * wer;
                }
                *v = s;
                *err = quadrature(e, go * (t.sqrt() + s.abs())) + U * s.abs();
            });
            if let Some(m) = &saved[idx].1 {
                for ((v, e), m) in dh.value.data.iter_mut().zip(&mut dh.bound.data).zip(m) {
                    *v *= *m as f64;
                    *e *= *m as f64;
                }
            }
            let zp = &saved[idx - 1].2;
            for j in 0..n * i_ {
                let (z, ze) = (zp.value.data[j], zp.bound.data[j]);
                if z.abs() <= ze {
                    // The implementation's ReLU may decide either way here.
                    dh.bound.data[j] += dh.value.data[j].abs();
                }
                if z <= 0.0 {
                    dh.value.data[j] = 0.0;
                }
            }
            dz = dh;
        }
    }
    let mut update_bounds = BTreeMap::new();
    for (id, gw, gb) in grads {
        for (name, (g, g_err)) in [(id.weight_name(), gw), (id.bias_name(), gb)] {
            let mut p = w.get(&name).unwrap().clone();
            let st = state.entry(name.clone()).or_default();
            let bound = update(cfg, rule, &mut p.data, &g, &g_err, st, lr as f64);
            w.set(&name, p).unwrap();
            update_bounds.insert(name, bound);
        }
    }
    StepBounds { loss, loss_bound, update_bounds }
}

/// A propagated error (given as its square) and a new rounding error, both at λ standard
/// deviations and independent, combined.
fn quadrature(propagated_sq: f64, rounding: f64) -> f64 {
    (propagated_sq + rounding * rounding).sqrt()
}

/// Applies the optimiser to `p` and returns the element-wise bound on the deviation of the
/// update; the parameter's accumulated deviation is kept in `st` for the next step.
fn update(cfg: &ModelConfig, rule: Rule, p: &mut [f32], g: &[f64], g_err: &[f64], st: &mut ParamState, lr: f64) -> Vec<f64> {
    let len = g.len();
    let wd = if rule == Rule::NoWeightDecay { 0.0 } else { cfg.optimizer.weight_decay as f64 };
    if st.m.is_empty() {
        *st = ParamState { m: vec![0.0; len], v: vec![0.0; len], t: 0, m_err: vec![0.0; len], v_err: vec![0.0; len], p_err: vec![0.0; len] };
    }
    st.t += 1;
    let mut bounds = vec![0.0; len];
    for i in 0..len {
        let pv = p[i] as f64;
        // The decayed gradient h = g + wd·p: the parameter's own deviation enters through wd.
        let h = g[i] + wd * pv;
        let h_err = g_err[i] + wd * st.p_err[i] + 2.0 * U * (h.abs() + (wd * pv).abs());
        let (step, step_err) = match cfg.optimizer.optimizer {
            Optimizer::Sgd { momentum } => {
                let mu = momentum as f64;
                // PyTorch: the buffer starts as the first gradient; v = μ·v + h afterwards.
                if st.t == 1 || mu == 0.0 {
                    st.m[i] = h;
                    st.m_err[i] = h_err;
                } else {
                    st.m[i] = mu * st.m[i] + h;
                    st.m_err[i] = mu * st.m_err[i] + h_err + 2.0 * U * st.m[i].abs();
                }
                (lr * st.m[i], lr * st.m_err[i] + U * (lr * st.m[i]).abs())
            }
            Optimizer::Adam { beta1, beta2, eps } => {
                let (b1, b2, eps) = (beta1 as f64, beta2 as f64, eps as f64);
                st.m[i] = b1 * st.m[i] + (1.0 - b1) * h;
                st.m_err[i] = b1 * st.m_err[i] + (1.0 - b1) * h_err + 3.0 * U * st.m[i].abs();
                st.v[i] = b2 * st.v[i] + (1.0 - b2) * h * h;
                st.v_err[i] = b2 * st.v_err[i] + (1.0 - b2) * (2.0 * h.abs() * h_err + h_err * h_err) + 4.0 * U * st.v[i];
                let (bc1, bc2) = if rule == Rule::AdamWithoutBiasCorrection { (1.0, 1.0) } else { (1.0 - b1.powi(st.t), 1.0 - b2.powi(st.t)) };
                let vh = st.v[i] / bc2;
                let vh_err = st.v_err[i] / bc2;
                // √ is 1/(2√v)-Lipschitz away from 0 and √e-continuous at 0.
                let sqrt_err = if vh > 0.0 { (vh_err / (2.0 * vh.sqrt())).min(vh_err.sqrt()) } else { vh_err.sqrt() };
                let d = vh.sqrt() + eps;
                let d_err = sqrt_err + 3.0 * U * d;
                let m_hat = st.m[i] / bc1;
                let s = lr * m_hat / d;
                // The implementation's denominator is at least eps, whatever its error.
                let d_low = (d - d_err).max(eps);
                let s_err = lr / bc1 * (st.m_err[i] / d_low + st.m[i].abs() * d_err / (d * d_low)) + 4.0 * U * s.abs();
                (s, s_err)
            }
        };
        let new = (pv - step) as f32;
        // Both sides round their new parameter to f32 (u·|p| each), and the suite's f32
        // subtraction after − before rounds once more on each side.
        let rounding = 2.0 * U * (new as f64).abs();
        bounds[i] = step_err + rounding + 2.0 * U * step.abs();
        st.p_err[i] += step_err + rounding;
        p[i] = new;
    }
    bounds
}
