//! The cross-backend conformance suite, written once and instantiated by every backend crate
//! with [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! alexnet_core::conformance_tests!(backend_candle::CandleBackend::cpu());
//! ```
//!
//! Each backend is checked against [`crate::reference`], a plain f64 implementation that also
//! bounds, element by element, how far any f32 implementation may deviate from it (f32 rounding
//! and the length of each reduction, in any summation order; see that module). No tolerance here
//! is fitted to a CPU: every check passes where `|backend − reference| ≤ bound` for every element,
//! and prints its worst ratio `|backend − reference| / bound` (run with `--nocapture`).
//! Checks that a deliberately wrong update rule fails show the bounds are tight enough to matter.

/// Prints a check's detail line on stderr (seen with `cargo test -- --nocapture`), unless
/// [`selfcheck`] is running, which reports through its table instead.
macro_rules! note {
    ($($t:tt)*) => {
        if !$crate::conformance::QUIET.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!($($t)*);
        }
    };
}

pub mod net;
pub mod selfcheck;

/// Silences [`note!`] (set by [`selfcheck::run`]).
pub static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

use crate::Targets;
use crate::arch::{AlexNetSpec, LayerId};
use crate::backend::{Backend, DropoutMasks, ModelConfig, Optimizer, OptimizerConfig, Stage};
use crate::data::{Preprocess, View};
use crate::freeze::FreezePolicy;
use crate::reference::{self, Act, Bounded, Rule};
use crate::tensor::HostTensor;
use crate::weights::WeightSet;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;

fn random(shape: Vec<usize>, seed: u64, scale: f32) -> HostTensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    HostTensor { shape, data: (0..n).map(|_| rng.random_range(-scale..scale)).collect() }
}

fn weights() -> WeightSet {
    WeightSet::initialised(&AlexNetSpec::new(5), 42)
}

fn cfg(policy: &str) -> ModelConfig {
    ModelConfig::new(policy.parse::<FreezePolicy>().unwrap()).with_seed(7)
}

/// What the comparisons of one check measured, for [`selfcheck`]'s table: the worst
/// `|Δ|/bound` and the largest `|Δ|` relative to the reference's largest magnitude.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Measured {
    pub worst_ratio: f64,
    pub max_relative: f64,
}

thread_local! {
    static MEASURED: std::cell::Cell<Option<Measured>> = const { std::cell::Cell::new(None) };
}

/// Adds one comparison to this thread's running maximum.
fn record(ratio: f64, relative: f64) {
    MEASURED.with(|m| {
        let old = m.get().unwrap_or_default();
        m.set(Some(Measured { worst_ratio: old.worst_ratio.max(ratio), max_relative: old.max_relative.max(relative) }));
    });
}

/// The maximum recorded on this thread since the last call (`None`: no numeric comparison).
pub fn take_measured() -> Option<Measured> {
    MEASURED.with(|m| m.take())
}

/// `max |got − want| / max |want|`: the error relative to the result's scale (∞ on a mismatch).
pub fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    let d = got.iter().zip(want).fold(0f64, |m, (g, w)| {
        let d = (*g as f64 - w).abs();
        if d.is_nan() { f64::INFINITY } else { m.max(d) }
    });
    d / scale
}

/// The worst `|got − want| / bound` over all elements (∞ for a NaN or a shape mismatch).
pub fn worst_ratio(got: &[f32], want: &[f64], bound: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter().zip(want).zip(bound).fold(0f64, |m, ((g, w), b)| {
        let d = (*g as f64 - w).abs();
        // A zero bound (an exactly representable result) allows no difference at all.
        let r = if d == 0.0 {
            0.0
        } else if *b > 0.0 {
            d / b
        } else {
            f64::INFINITY
        };
        if r.is_nan() { f64::INFINITY } else { m.max(r) }
    })
}

/// Asserts `got` is within the reference's bound everywhere and reports the worst ratio.
fn assert_within(what: &str, got: &HostTensor, want: &Bounded) -> f64 {
    assert_eq!(got.shape, want.value.shape, "{what}: shape");
    let r = worst_ratio(&got.data, &want.value.data, &want.bound.data);
    let max_diff = got.data.iter().zip(&want.value.data).fold(0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
    record(r, relative_error(&got.data, &want.value.data));
    note!("conformance · {what}: worst |Δ|/bound {r:.3e} (max |Δ| {max_diff:.3e})");
    assert!(r <= 1.0, "{what}: a difference exceeds its f32 rounding bound (worst |Δ|/bound {r:e}, max |Δ| {max_diff:e})");
    r
}

/// Features at every cut (pool1 … pool5) match the reference.
pub fn extract_matches_reference(b: &dyn Backend) {
    let w = weights();
    let x = random(vec![2, 3, 224, 224], 1, 2.0);
    let mut act = Bounded::exact(&x);
    for (i, layer) in [LayerId::Conv2, LayerId::Conv3, LayerId::Conv4, LayerId::Conv5, LayerId::Fc6].iter().enumerate() {
        act = reference::forward_bounded(&act, &w, i, i + 1);
        let mut m = b.build(&w, &ModelConfig::new(FreezePolicy::from_layer(*layer))).unwrap();
        let got = m.extract(&x).unwrap();
        assert_within(&format!("features before {layer}"), &got, &act);
    }
}

/// Logits, from images and from cached features, match the reference (evaluation mode).
pub fn logits_match_reference(b: &dyn Backend) {
    let w = weights();
    let x = random(vec![2, 3, 224, 224], 2, 2.0);
    let want = reference::forward_bounded(&Bounded::exact(&x), &w, 0, 8);
    let pool5 = reference::forward(&Act::from_host(&x), &w, 0, 5).to_host();
    let want_cut = reference::forward_bounded(&Bounded::exact(&pool5), &w, 5, 8);
    let mut m = b.build(&w, &cfg("fc6")).unwrap();
    assert_within("logits from images", &m.logits(&x, Stage::Image).unwrap(), &want);
    assert_within("logits from pool5", &m.logits(&pool5, Stage::Cut).unwrap(), &want_cut);
}

fn delta(before: &HostTensor, after: &HostTensor) -> Vec<f32> {
    after.data.iter().zip(&before.data).map(|(a, b)| a - b).collect()
}

/// Runs `steps` fc training steps on the backend and on the reference (with `rule`); returns the
/// worst ratio of each step's loss and updates to their bounds, checking frozen layers on the way.
fn fc_step_ratios(
    b: &dyn Backend,
    policy: &str,
    opt: OptimizerConfig,
    steps: usize,
    rule: Rule,
    restore_before: Option<usize>,
    loss: [LossSetup; 2],
) -> Vec<(String, f64, f64)> {
    let w0 = weights();
    let [backend_loss, reference_loss] = loss;
    let config = cfg(policy).with_optimizer(opt).with_label_smoothing(backend_loss.smoothing);
    let reference_config = config.with_label_smoothing(reference_loss.smoothing);
    let mut m = b.build(&w0, &config).unwrap();
    let mut reference_w = w0.clone();
    let mut masks = DropoutMasks::new(config.seed, config.dropout);
    let mut state = BTreeMap::new();
    let cut = w0.spec().input_shape(config.policy.first_trainable());
    let mut prev_backend = w0.clone();
    let mut ratios = Vec::new();
    for s in 0..steps {
        if restore_before == Some(s) {
            // Restoring weights starts the optimiser afresh on every backend (as the reference).
            m.set_weights(&w0).unwrap();
            let st = m.train_state().unwrap();
            assert!(st.steps == 0 && st.buffers.is_empty(), "set_weights left optimiser state: {} steps, {} buffers", st.steps, st.buffers.len());
            reference_w = w0.clone();
            state.clear();
            prev_backend = w0.clone();
        }
        let mut shape = vec![4];
        shape.extend(&cut);
        let x = random(shape, 10 + s as u64, 1.0).data.iter().map(|v| v.max(0.0)).collect();
        let x = HostTensor::new([vec![4], cut.clone()].concat(), x).unwrap();
        let labels = [0, 3, 1, 3];
        // A mixed batch's partners (a permutation of the batch) and weight λ ∈ [0.5, 1].
        let mix = crate::mixup::Mix { partners: &[3, 1, 0, 3], lambda: 0.7 - 0.1 * s as f32 };
        let targets = |setup: LossSetup| Targets { labels: &labels, mix: setup.mixup.then_some(mix) };
        let lr = 0.01;
        let prev_ref = reference_w.clone();
        let got = m.train_step_with(&x, Stage::Cut, targets(backend_loss), lr).unwrap();
        let step = reference::fc_train_step(&mut reference_w, &reference_config, &mut masks, &mut state, &x, targets(reference_loss), lr, rule);
        ratios.push((
            format!("{policy} step {s}: loss"),
            worst_ratio(&[got.loss], &[step.loss], &[step.loss_bound]),
            relative_error(&[got.loss], &[step.loss]),
        ));
        let now = m.weights().unwrap();
        for layer in config.policy.trainable() {
            for name in [layer.weight_name(), layer.bias_name()] {
                let got = delta(prev_backend.get(&name).unwrap(), now.get(&name).unwrap());
                let want_t = delta(prev_ref.get(&name).unwrap(), reference_w.get(&name).unwrap());
                assert!(want_t.iter().any(|v| *v != 0.0), "reference update of {name} is zero");
                let want: Vec<f64> = want_t.iter().map(|v| *v as f64).collect();
                ratios.push((
                    format!("{policy} step {s}: update of {name}"),
                    worst_ratio(&got, &want, &step.update_bounds[&name]),
                    relative_error(&got, &want),
                ));
            }
        }
        for layer in config.policy.frozen() {
            assert_eq!(now.layer(layer), w0.layer(layer), "frozen {layer} changed");
        }
        prev_backend = now;
    }
    ratios
}

/// The loss of the backend's model or of the reference it is checked against: label smoothing,
/// and whether the batch's targets are mixed (mixup).
#[derive(Clone, Copy, Default)]
struct LossSetup {
    smoothing: f32,
    mixup: bool,
}

fn check_fc_steps(b: &dyn Backend, policy: &str, opt: OptimizerConfig, steps: usize, restore_before: Option<usize>) {
    check_fc_steps_with(b, policy, opt, steps, restore_before, LossSetup::default())
}

fn check_fc_steps_with(b: &dyn Backend, policy: &str, opt: OptimizerConfig, steps: usize, restore_before: Option<usize>, loss: LossSetup) {
    let ratios = fc_step_ratios(b, policy, opt, steps, Rule::Torch, restore_before, [loss, loss]);
    for (what, r, rel) in &ratios {
        record(*r, *rel);
        note!("conformance · {what}: worst |Δ|/bound {r:.3e}");
    }
    let bad: Vec<_> = ratios.iter().filter(|(_, r, _)| *r > 1.0).collect();
    assert!(bad.is_empty(), "differences exceed their f32 rounding bounds: {bad:?}");
}

/// Shows a wrong update rule fails the same checks: some ratio exceeds 1 by a wide margin.
fn check_rejects(b: &dyn Backend, policy: &str, opt: OptimizerConfig, rule: Rule) {
    let worst = fc_step_ratios(b, policy, opt, 2, rule, None, Default::default()).into_iter().map(|(_, r, _)| r).fold(0f64, f64::max);
    note!("conformance · {policy} against {rule:?}: worst |Δ|/bound {worst:.3e} (must fail)");
    assert!(worst > 10.0, "the bounds cannot tell {rule:?} from the backend's rule (worst ratio {worst})");
}

fn sgd() -> OptimizerConfig {
    OptimizerConfig::default()
}

/// Adam as PyTorch's default (eps 1e-8), with weight decay: ill-conditioned where a gradient is
/// near zero, which the element-wise bounds account for.
fn adam() -> OptimizerConfig {
    OptimizerConfig { optimizer: Optimizer::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, weight_decay: 1e-3, conv_lr_mult: 0.1 }
}

/// Two SGD-momentum steps with weight decay and dropout on fc6–fc8 match the reference: same
/// loss, same parameter updates, frozen layers bit-identical.
pub fn sgd_steps_match_reference(b: &dyn Backend) {
    check_fc_steps(b, "fc6", sgd(), 2, None);
}

/// Two SGD steps on fc6–fc8 with label smoothing 0.1 match the reference's smoothed
/// cross-entropy; checked against the one-hot reference instead, they fail (so a backend
/// ignoring the setting cannot pass).
pub fn label_smoothing_steps_match_reference(b: &dyn Backend) {
    let smoothed = LossSetup { smoothing: 0.1, mixup: false };
    check_fc_steps_with(b, "fc6", sgd(), 2, None, smoothed);
    let ratios = fc_step_ratios(b, "fc6", sgd(), 2, Rule::Torch, None, [smoothed, LossSetup::default()]);
    let worst = ratios.into_iter().map(|(_, r, _)| r).fold(0f64, f64::max);
    note!("conformance · smoothed backend against the one-hot reference: worst |Δ|/bound {worst:.3e} (must fail)");
    assert!(worst > 10.0, "the bounds cannot tell label smoothing 0.1 from none (worst ratio {worst})");
}

/// Two SGD steps on fc6–fc8 with mixed targets (mixup's λ·CE(labels) + (1 − λ)·CE(partners),
/// with label smoothing 0.1 as well) match the reference; checked against the unmixed reference
/// instead, they fail (so a backend ignoring the partners cannot pass).
pub fn mixup_steps_match_reference(b: &dyn Backend) {
    let mixed = LossSetup { smoothing: 0.1, mixup: true };
    check_fc_steps_with(b, "fc6", sgd(), 2, None, mixed);
    let ratios = fc_step_ratios(b, "fc6", sgd(), 2, Rule::Torch, None, [mixed, LossSetup { mixup: false, ..mixed }]);
    let worst = ratios.into_iter().map(|(_, r, _)| r).fold(0f64, f64::max);
    note!("conformance · mixed backend against the unmixed reference: worst |Δ|/bound {worst:.3e} (must fail)");
    assert!(worst > 10.0, "the bounds cannot tell mixed targets from plain ones (worst ratio {worst})");
}

/// Two Adam steps on fc7–fc8 (cut at fc6's output) match the reference.
pub fn adam_steps_match_reference(b: &dyn Backend) {
    check_fc_steps(b, "fc7", adam(), 2, None);
}

/// Train, restore the initial weights (`set_weights`), train again: the optimiser starts afresh
/// (buffers cleared, Adam's step count back to 0) on every backend, as in the reference.
pub fn restore_resets_the_optimizer(b: &dyn Backend) {
    check_fc_steps(b, "fc7", adam(), 3, Some(2));
}

/// The optimiser state and dropout position taken from a model and given to a new one built from
/// the same weights make the next steps bit-identical to the original model's (what resuming a
/// killed run relies on), for SGD with momentum and for Adam.
pub fn train_state_round_trips(b: &dyn Backend) {
    for opt in [sgd(), adam()] {
        let config = cfg("fc7").with_optimizer(opt);
        let mut a = b.build(&weights(), &config).unwrap();
        let x = |s: u64| HostTensor::new(vec![4, 4096], random(vec![4, 4096], 20 + s, 1.0).data.iter().map(|v| v.max(0.0)).collect()).unwrap();
        let labels = [2, 0, 4, 1];
        for s in 0..2 {
            a.train_step(&x(s), Stage::Cut, &labels, 0.01).unwrap();
        }
        let st = a.train_state().unwrap();
        assert_eq!(st.steps, 2);
        let expected = ["classifier.4.weight", "classifier.4.bias", "classifier.6.weight", "classifier.6.bias"]
            .iter()
            .flat_map(|p| crate::backend::TrainState::buffer_names(p, &opt.optimizer))
            .collect::<Vec<_>>();
        assert_eq!(
            st.buffers.keys().cloned().collect::<Vec<_>>(),
            {
                let mut e = expected.clone();
                e.sort();
                e
            },
            "{opt:?}: buffers"
        );
        let mut resumed = b.build(&a.weights().unwrap(), &config).unwrap();
        resumed.set_train_state(&st).unwrap();
        assert_eq!(resumed.train_state().unwrap(), st, "{opt:?}: state read back");
        for s in 2..4 {
            let (sa, sb) = (a.train_step(&x(s), Stage::Cut, &labels, 0.01).unwrap(), resumed.train_step(&x(s), Stage::Cut, &labels, 0.01).unwrap());
            assert_eq!(sa, sb, "{opt:?} step {s}: loss");
        }
        assert_eq!(a.weights().unwrap(), resumed.weights().unwrap(), "{opt:?}: weights after resuming");
        // A state for another optimiser or policy is refused, not half-applied.
        let mut other = b.build(&weights(), &cfg("fc8").with_optimizer(opt)).unwrap();
        assert!(other.set_train_state(&st).is_err(), "{opt:?}: fc7 state accepted by an fc8 model");
    }
}

/// The bounds are tight enough to reject Adam without bias correction and SGD without weight
/// decay (5e-4, a small term of the update).
pub fn wrong_update_rules_fail(b: &dyn Backend) {
    check_rejects(b, "fc7", adam(), Rule::AdamWithoutBiasCorrection);
    check_rejects(b, "fc8", sgd(), Rule::NoWeightDecay);
}

fn loss_of(w: &WeightSet, x: &Act, labels: &[u32]) -> f64 {
    reference::cross_entropy(&reference::forward(x, w, 4, 8), labels)
}

/// A conv5–fc8 step (autograd through conv5 and its max-pool) moves conv5 along the negative
/// gradient: the backend's gradient, at the coordinates where it is largest, against a central
/// finite difference of the f64 reference's loss.
///
/// Bound: the gradient passes through a chain of reductions (forward conv5, fc6, fc7, fc8; back
/// through fc8, fc7, fc6; conv5's weight gradient over batch × 13 × 13 positions), each adding at
/// most γ(K) of relative error (see [`reference`]), independent, so the gradient is within
/// √(Σγ(K)²)·max|g| of the exact one; a 0.1% error at the probed coordinates must exceed that.
/// Coordinates whose channel has a max-pool window or ReLU decided within rounding
/// (where an f32 implementation may legitimately route the gradient elsewhere) are not probed.
pub fn conv_step_follows_the_gradient(b: &dyn Backend) {
    let w0 = weights();
    let opt = OptimizerConfig { optimizer: Optimizer::Sgd { momentum: 0.0 }, weight_decay: 0.0, conv_lr_mult: 1.0 };
    let config = cfg("conv5").with_optimizer(opt).with_dropout(0.0);
    let x = HostTensor::new(vec![3, 256, 13, 13], random(vec![3, 256, 13, 13], 5, 1.0).data.iter().map(|v| v.max(0.0)).collect()).unwrap();
    let labels = [1, 4, 2];
    let lr = 1.0f32;
    let mut m = b.build(&w0, &config).unwrap();
    m.train_step(&x, Stage::Cut, &labels, lr).unwrap();
    let w1 = m.weights().unwrap();
    let name = LayerId::Conv5.weight_name();
    let (a, z) = (w0.get(&name).unwrap(), w1.get(&name).unwrap());
    let g: Vec<f64> = a.data.iter().zip(&z.data).map(|(a, z)| (*a as f64 - *z as f64) / lr as f64).collect();
    let gmax = g.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(gmax > 0.0, "conv5 did not move");
    // Finite-difference step: small enough that no ReLU or pooling decision flips unless it is
    // within `eps·max|x|` of flipping (those channels are excluded below).
    let eps = 1e-5f64;
    let xmax = x.data.iter().fold(0f32, |m, v| m.max(*v)) as f64;
    let ambiguous = ambiguous_conv5_channels(&x, &w0, eps * xmax * 9.0);
    let per_channel: usize = a.shape[1..].iter().product();
    let mut order: Vec<usize> = (0..g.len()).filter(|i| !ambiguous[i / per_channel]).collect();
    assert!(order.len() > g.len() / 2, "too many conv5 channels decided within rounding");
    order.sort_by(|i, j| g[*j].abs().total_cmp(&g[*i].abs()));
    let xa = Act::from_host(&x);
    let chain = [2304, 9216, 4096, 4096, 5, 4096, 4096, 3 * 13 * 13];
    // Independent rounding sources along the chain add in quadrature.
    let rho: f64 = chain.iter().map(|k| reference::gamma(*k).powi(2)).sum::<f64>().sqrt();
    let loss0 = loss_of(&w0, &xa, &labels);
    for &i in order.iter().take(4) {
        let probe = |sign: f64| {
            let mut w = w0.clone();
            let mut t = a.clone();
            t.data[i] = (a.data[i] as f64 + sign * eps) as f32;
            let moved = t.data[i] as f64;
            w.set(&name, t).unwrap();
            (loss_of(&w, &xa, &labels), moved)
        };
        let ((lp, wp), (lm, wm)) = (probe(1.0), probe(-1.0));
        let numeric = (lp - lm) / (wp - wm);
        // f64 rounding of the two losses, and f32 rounding of w1 in the backend's Δ.
        let noise = 64.0 * f64::EPSILON * loss0.abs() / (wp - wm) + 2.0 * reference::U * (a.data[i].abs() as f64) / lr as f64;
        let bound = rho * gmax + noise;
        let r = (g[i] - numeric).abs() / bound;
        record(r, (g[i] - numeric).abs() / numeric.abs().max(f64::MIN_POSITIVE));
        note!("conformance · conv5 gradient [{i}]: step {:e} vs finite difference {numeric:e}, |Δ|/bound {r:.3e}", g[i]);
        assert!(r <= 1.0, "conv5 gradient [{i}]: step {:e} vs finite difference {numeric:e} (bound {bound:e})", g[i]);
        // The check can fail: a gradient 0.1% off at these coordinates exceeds the bound.
        assert!(1e-3 * g[i].abs() > bound, "conv5 gradient [{i}]: the bound {bound:e} would not catch a 0.1% error");
    }
}

/// Channels of conv5 (on input `x`) with a ReLU or max-pool decision within `margin` plus the
/// f32 rounding bound of its inputs: the gradient there may legitimately differ by a whole term.
fn ambiguous_conv5_channels(x: &HostTensor, w: &WeightSet, margin: f64) -> Vec<bool> {
    let z = reference::conv5_preactivation(x, w);
    let (n, c, h, wd) = (z.value.shape[0], z.value.shape[1], z.value.shape[2], z.value.shape[3]);
    let mut out = vec![false; c];
    let (k, s) = crate::arch::MAXPOOL;
    let (ho, wo) = (crate::arch::pool_out(h), crate::arch::pool_out(wd));
    for r in 0..n {
        for (ch, ambiguous) in out.iter_mut().enumerate() {
            let base = (r * c + ch) * h * wd;
            for y in 0..ho {
                for xx in 0..wo {
                    let mut cells: Vec<(f64, f64)> = (0..k * k)
                        .map(|j| {
                            let idx = base + (y * s + j / k) * wd + xx * s + j % k;
                            (z.value.data[idx], z.bound.data[idx] + margin)
                        })
                        .collect();
                    cells.sort_by(|p, q| q.0.total_cmp(&p.0));
                    let (top, second) = (cells[0], cells[1]);
                    let kink = top.0.abs() <= top.1;
                    let tie = top.0 > 0.0 && top.0 - second.0.max(0.0) <= top.1 + second.1;
                    *ambiguous |= kink || tie;
                }
            }
        }
    }
    out
}

/// Saving and loading a checkpoint round-trips exactly, and the reloaded model gives
/// bit-identical logits.
pub fn checkpoint_round_trips(b: &dyn Backend) {
    let mut m = b.build(&weights(), &cfg("fc6")).unwrap();
    let x = random(vec![4, 9216], 3, 1.0);
    m.train_step(&x, Stage::Cut, &[0, 1, 2, 3], 0.01).unwrap();
    let w = m.weights().unwrap();
    let dir = tempfile_dir();
    let p = dir.join("ckpt.safetensors");
    w.save(&p).unwrap();
    let loaded = WeightSet::load_checkpoint(&p).unwrap();
    assert_eq!(loaded, w);
    let mut m2 = b.build(&loaded, &cfg("fc6")).unwrap();
    assert_eq!(m2.logits(&x, Stage::Cut).unwrap(), m.logits(&x, Stage::Cut).unwrap());
    // set_weights restores too.
    let mut m3 = b.build(&weights(), &cfg("fc6")).unwrap();
    m3.set_weights(&loaded).unwrap();
    assert_eq!(m3.logits(&x, Stage::Cut).unwrap(), m.logits(&x, Stage::Cut).unwrap());
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("alexnet-conformance-{}-{:x}", std::process::id(), rand::random::<u64>()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every freeze policy trains from images: finite loss, frozen layers bit-identical, every
/// trainable layer updated.
pub fn every_policy_trains(b: &dyn Backend) {
    let w0 = weights();
    let x = random(vec![2, 3, 224, 224], 4, 2.0);
    for name in FreezePolicy::NAMES {
        let config = cfg(name);
        let mut m = b.build(&w0, &config).unwrap();
        let s = m.train_step(&x, Stage::Image, &[1, 2], 0.05).unwrap();
        assert!(s.loss.is_finite(), "{name}: loss {}", s.loss);
        let w = m.weights().unwrap();
        for l in LayerId::ALL {
            let same = w.layer(l) == w0.layer(l);
            assert_eq!(same, !config.policy.is_trainable(l), "{name}: {l} {}", if same { "did not move" } else { "moved while frozen" });
        }
    }
}

/// The real pretrained weights on real photos match the reference at pool5.
pub fn real_weights_and_photos(b: &dyn Backend, weights_file: &Path, photos: &Path) {
    assert!(
        weights_file.exists(),
        "{} is missing: run `alexnet weights fetch` (or scripts/setup.sh) first, or set ALEXNET_WEIGHTS",
        weights_file.display()
    );
    let w = WeightSet::load_pretrained(weights_file, &AlexNetSpec::new(5), 0).unwrap();
    let x = sample_photos(photos, 2, &Preprocess::default());
    let want = reference::forward_bounded(&Bounded::exact(&x), &w, 0, 5);
    let mut m = b.build(&w, &cfg("fc6")).unwrap();
    let got = m.extract(&x).unwrap();
    assert_within("pool5 of real photos", &got, &want);
    // The ReLU's exact zeros agree too: an element may be zero on one side only where the
    // reference is within its rounding bound of zero.
    let ambiguous = want.value.data.iter().zip(&want.bound.data).filter(|(v, e)| v.abs() <= **e && **v != 0.0).count();
    let zeros = |it: &mut dyn Iterator<Item = bool>| it.filter(|z| *z).count();
    let (gz, wz) = (zeros(&mut got.data.iter().map(|v| *v == 0.0)), zeros(&mut want.value.data.iter().map(|v| *v == 0.0)));
    assert!(gz.abs_diff(wz) <= ambiguous, "pool5 of real photos: {gz} zeros, the reference has {wz} ({ambiguous} within rounding of 0)");
    assert!(wz > 0 && wz < want.value.data.len(), "pool5 of real photos: {wz} of {} zero", want.value.data.len());
}

/// The first photo (by name) of each of the first `n` class folders (by name) of `photos`,
/// preprocessed with `pre` (centre crop), as one batch.
pub fn sample_photos(photos: &Path, n: usize, pre: &Preprocess) -> HostTensor {
    let ds = crate::data::Dataset::scan(photos).unwrap_or_else(|e| panic!("{e}"));
    assert!(ds.classes.len() >= n, "{}: {} class folders, the check needs {n}", photos.display(), ds.classes.len());
    let rows: Vec<Vec<f32>> = (0..n)
        .map(|c| {
            let mut files: Vec<_> = ds.samples.iter().filter(|s| s.label == c).map(|s| &s.path).collect();
            files.sort();
            pre.views(files[0], &[View::Center]).unwrap_or_else(|e| panic!("{e}")).1.remove(0)
        })
        .collect();
    let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
    let side = pre.crop as usize;
    HostTensor::stack(&[3, side, side], &refs)
}

/// Instantiates the conformance suite for a backend expression, as `#[test]`s in a module.
/// An optional first argument names the module (e.g. `cuda`), for a second device.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:expr) => {
        $crate::conformance_tests!(conformance, $backend);
    };
    ($name:ident, $backend:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn backend() -> Box<dyn $crate::Backend> {
                Box::new($backend)
            }
            #[test]
            fn extract_matches_reference() {
                $crate::conformance::extract_matches_reference(&*backend());
            }
            #[test]
            fn logits_match_reference() {
                $crate::conformance::logits_match_reference(&*backend());
            }
            #[test]
            fn sgd_steps_match_reference() {
                $crate::conformance::sgd_steps_match_reference(&*backend());
            }
            #[test]
            fn label_smoothing_steps_match_reference() {
                $crate::conformance::label_smoothing_steps_match_reference(&*backend());
            }
            #[test]
            fn mixup_steps_match_reference() {
                $crate::conformance::mixup_steps_match_reference(&*backend());
            }
            #[test]
            fn adam_steps_match_reference() {
                $crate::conformance::adam_steps_match_reference(&*backend());
            }
            #[test]
            fn restore_resets_the_optimizer() {
                $crate::conformance::restore_resets_the_optimizer(&*backend());
            }
            #[test]
            fn train_state_round_trips() {
                $crate::conformance::train_state_round_trips(&*backend());
            }
            #[test]
            fn wrong_update_rules_fail() {
                $crate::conformance::wrong_update_rules_fail(&*backend());
            }
            #[test]
            fn conv_step_follows_the_gradient() {
                $crate::conformance::conv_step_follows_the_gradient(&*backend());
            }
            #[test]
            fn checkpoint_round_trips() {
                $crate::conformance::checkpoint_round_trips(&*backend());
            }
            #[test]
            fn every_policy_trains() {
                $crate::conformance::every_policy_trains(&*backend());
            }
            #[test]
            fn ops_match_reference() {
                $crate::conformance::net::ops_match_reference(&*backend());
            }
            #[test]
            fn alexnet_graph_matches_reference() {
                $crate::conformance::net::alexnet_graph_matches_reference(&*backend());
            }
            #[test]
            fn inception_matches_reference() {
                $crate::conformance::net::inception_matches_reference(&*backend());
            }
            #[test]
            fn inception_real_weights() {
                let weights = $crate::paths::default_inception_weights();
                let photos = $crate::conformance::flower_photos(env!("CARGO_MANIFEST_DIR"));
                $crate::conformance::net::inception_real_weights(&*backend(), &weights, &photos);
            }
            #[test]
            fn real_weights_and_photos() {
                let weights = $crate::paths::default_weights();
                let photos = $crate::conformance::flower_photos(env!("CARGO_MANIFEST_DIR"));
                $crate::conformance::real_weights_and_photos(&*backend(), &weights, &photos);
            }
        }
    };
}

/// `../shared/data/flower_photos` as seen from a crate of this workspace.
pub fn flower_photos(manifest_dir: &str) -> std::path::PathBuf {
    Path::new(manifest_dir).join("../../shared/data/flower_photos")
}

/// A folder of symlinks to the first `per_class` photos of each flower_photos class, inside
/// `dir` (the data set itself is never copied).
pub fn flower_subset(manifest_dir: &str, dir: &Path, per_class: usize) -> std::path::PathBuf {
    let src = flower_photos(manifest_dir);
    let root = dir.join("flowers");
    for class in ["daisy", "dandelion", "roses", "sunflowers", "tulips"] {
        let mut files: Vec<_> =
            std::fs::read_dir(src.join(class)).unwrap_or_else(|e| panic!("{}: {e}", src.join(class).display())).map(|e| e.unwrap().path()).collect();
        files.sort();
        std::fs::create_dir_all(root.join(class)).unwrap();
        for f in files.into_iter().take(per_class) {
            std::os::unix::fs::symlink(&f, root.join(class).join(f.file_name().unwrap())).unwrap();
        }
    }
    root
}

/// The default pretrained weights file, which tests need to exist.
pub fn pretrained_weights() -> std::path::PathBuf {
    let p = crate::paths::default_weights();
    assert!(p.exists(), "{} missing: run `alexnet weights fetch` (scripts/test.sh does) first", p.display());
    p
}
