//! The cross-backend conformance suite, written once and instantiated by every backend crate
//! with [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! alexnet_core::conformance_tests!(backend_candle::CandleBackend::cpu());
//! ```
//!
//! Each backend is checked against [`crate::reference`], a plain f64 implementation, so any two
//! backends that pass agree with each other within twice the stated tolerance.
//! Tolerance: relative 1e-4 (of the largest reference magnitude) for features and logits;
//! relative 1e-3 for parameter updates (differences of nearly equal numbers).

use crate::arch::{AlexNetSpec, LayerId};
use crate::backend::{Backend, DropoutMasks, ModelConfig, Optimizer, OptimizerConfig, Stage};
use crate::data::{Preprocess, View};
use crate::freeze::FreezePolicy;
use crate::reference::{self, Act};
use crate::tensor::HostTensor;
use crate::weights::WeightSet;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;

/// Relative tolerance for activations and logits.
pub const TOL_ACT: f32 = 1e-4;
/// Relative tolerance for parameter updates.
pub const TOL_UPDATE: f32 = 1e-3;

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

fn assert_close(what: &str, got: &HostTensor, want: &HostTensor, tol: f32) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    let d = got.max_rel_diff(want);
    assert!(d <= tol, "{what}: max relative difference {d:e} > {tol:e}");
}

/// Features at every cut (pool1 … pool5) match the reference.
pub fn extract_matches_reference(b: &dyn Backend) {
    let w = weights();
    let x = random(vec![2, 3, 224, 224], 1, 2.0);
    let mut act = Act::from_host(&x);
    for (i, layer) in [LayerId::Conv2, LayerId::Conv3, LayerId::Conv4, LayerId::Conv5, LayerId::Fc6].iter().enumerate() {
        act = reference::forward(&act, &w, i, i + 1);
        let mut m = b.build(&w, &ModelConfig::new(FreezePolicy::from_layer(*layer))).unwrap();
        let got = m.extract(&x).unwrap();
        assert_close(&format!("features before {layer}"), &got, &act.to_host(), TOL_ACT);
    }
}

/// Logits, from images and from cached features, match the reference (evaluation mode).
pub fn logits_match_reference(b: &dyn Backend) {
    let w = weights();
    let x = random(vec![2, 3, 224, 224], 2, 2.0);
    let pool5 = reference::forward(&Act::from_host(&x), &w, 0, 5);
    let want = reference::forward(&pool5, &w, 5, 8).to_host();
    let mut m = b.build(&w, &cfg("fc6")).unwrap();
    assert_close("logits from images", &m.logits(&x, Stage::Image).unwrap(), &want, TOL_ACT);
    assert_close("logits from pool5", &m.logits(&pool5.to_host(), Stage::Cut).unwrap(), &want, TOL_ACT);
}

fn updates(before: &WeightSet, after: &WeightSet, layer: LayerId) -> [HostTensor; 2] {
    [layer.weight_name(), layer.bias_name()].map(|n| {
        let (a, b) = (before.get(&n).unwrap(), after.get(&n).unwrap());
        HostTensor { shape: a.shape.clone(), data: b.data.iter().zip(&a.data).map(|(b, a)| b - a).collect() }
    })
}

fn check_fc_steps(b: &dyn Backend, policy: &str, opt: OptimizerConfig, steps: usize) {
    let w0 = weights();
    let config = cfg(policy).with_optimizer(opt);
    let mut m = b.build(&w0, &config).unwrap();
    let mut reference_w = w0.clone();
    let mut masks = DropoutMasks::new(config.seed, config.dropout);
    let mut state = BTreeMap::new();
    let cut = w0.spec().input_shape(config.policy.first_trainable());
    let mut prev_backend = w0.clone();
    for s in 0..steps {
        let mut shape = vec![4];
        shape.extend(&cut);
        let x = random(shape, 10 + s as u64, 1.0).data.iter().map(|v| v.max(0.0)).collect();
        let x = HostTensor::new([vec![4], cut.clone()].concat(), x).unwrap();
        let labels = [0, 3, 1, 3];
        let lr = 0.01;
        let prev_ref = reference_w.clone();
        let got = m.train_step(&x, Stage::Cut, &labels, lr).unwrap();
        let want = reference::fc_train_step(&mut reference_w, &config, &mut masks, &mut state, &x, &labels, lr);
        assert!(
            ((got.loss as f64 - want) / want).abs() < 1e-4,
            "{policy} step {s}: loss {} vs reference {want}",
            got.loss
        );
        let now = m.weights().unwrap();
        for layer in config.policy.trainable() {
            let [gw, gb] = updates(&prev_backend, &now, layer);
            let [rw, rb] = updates(&prev_ref, &reference_w, layer);
            assert!(rw.data.iter().any(|v| *v != 0.0), "reference update of {layer} is zero");
            assert_close(&format!("{policy} step {s}: update of {layer}.weight"), &gw, &rw, TOL_UPDATE);
            assert_close(&format!("{policy} step {s}: update of {layer}.bias"), &gb, &rb, TOL_UPDATE);
        }
        for layer in config.policy.frozen() {
            assert_eq!(now.layer(layer), w0.layer(layer), "frozen {layer} changed");
        }
        prev_backend = now;
    }
}

/// Two SGD-momentum steps with weight decay and dropout on fc6–fc8 match the reference: same
/// loss, same parameter updates, frozen layers bit-identical.
pub fn sgd_steps_match_reference(b: &dyn Backend) {
    check_fc_steps(b, "fc6", OptimizerConfig::default(), 2);
}

/// Two Adam steps on fc7–fc8 (cut at fc6's output) match the reference.
pub fn adam_steps_match_reference(b: &dyn Backend) {
    // A larger eps keeps the update well-conditioned where a gradient is near zero (with 1e-8,
    // f32 rounding in such a gradient decides the size and sign of its update).
    let adam = OptimizerConfig { optimizer: Optimizer::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-4 }, weight_decay: 1e-3, conv_lr_mult: 0.1 };
    check_fc_steps(b, "fc7", adam, 2);
}

fn loss_of(m: &mut dyn crate::Model, x: &HostTensor, labels: &[u32]) -> f64 {
    crate::metrics::cross_entropy(&m.logits(x, Stage::Cut).unwrap(), labels).0
}

/// A conv5–fc8 step (autograd through conv5 and its max-pool) moves conv5 along the negative
/// gradient: checked against a central finite difference of the loss.
pub fn conv_step_follows_the_gradient(b: &dyn Backend) {
    let w0 = weights();
    let opt = OptimizerConfig { optimizer: Optimizer::Sgd { momentum: 0.0 }, weight_decay: 0.0, conv_lr_mult: 1.0 };
    let config = cfg("conv5").with_optimizer(opt).with_dropout(0.0);
    let x = HostTensor::new(vec![3, 256, 13, 13], random(vec![3, 256, 13, 13], 5, 1.0).data.iter().map(|v| v.max(0.0)).collect()).unwrap();
    let labels = [1, 4, 2];
    let lr = 1.0;
    let mut m = b.build(&w0, &config).unwrap();
    let loss0 = m.train_step(&x, Stage::Cut, &labels, lr).unwrap().loss as f64;
    let w1 = m.weights().unwrap();
    // g = −Δ/lr for conv5's weight; step along d = ε·g/|g|∞ and compare the loss change.
    let name = LayerId::Conv5.weight_name();
    let (a, z) = (w0.get(&name).unwrap(), w1.get(&name).unwrap());
    let g: Vec<f64> = a.data.iter().zip(&z.data).map(|(a, z)| (*a as f64 - *z as f64) / lr as f64).collect();
    let gmax = g.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(gmax > 0.0, "conv5 did not move");
    let eps = 1e-4 / gmax;
    let probe = |sign: f64| {
        let mut w = w0.clone();
        let t = HostTensor { shape: a.shape.clone(), data: a.data.iter().zip(&g).map(|(p, g)| (*p as f64 + sign * eps * g) as f32).collect() };
        w.set(&name, t).unwrap();
        let mut pm = b.build(&w, &config).unwrap();
        loss_of(pm.as_mut(), &x, &labels)
    };
    let numeric = (probe(1.0) - probe(-1.0)) / (2.0 * eps);
    let analytic: f64 = g.iter().map(|v| v * v).sum();
    assert!(
        ((numeric - analytic) / analytic).abs() < 0.05,
        "conv5 gradient: finite difference {numeric:e} vs step {analytic:e} (loss {loss0})"
    );
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
    let pre = Preprocess::default();
    let files = ["daisy", "roses"].map(|c| {
        let mut f: Vec<_> = std::fs::read_dir(photos.join(c)).unwrap().map(|e| e.unwrap().path()).collect();
        f.sort();
        f[0].clone()
    });
    let rows: Vec<Vec<f32>> = files.iter().map(|f| pre.views(f, &[View::Center]).unwrap().1.remove(0)).collect();
    let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
    let x = HostTensor::stack(&[3, 224, 224], &refs);
    let want = reference::forward(&Act::from_host(&x), &w, 0, 5).to_host();
    let mut m = b.build(&w, &cfg("fc6")).unwrap();
    let got = m.extract(&x).unwrap();
    assert_close("pool5 of real photos", &got, &want, TOL_ACT);
    // Pretrained features are sparse and non-trivial.
    let zeros = got.data.iter().filter(|v| **v == 0.0).count() as f64 / got.len() as f64;
    assert!(zeros > 0.2 && zeros < 0.99, "pool5 zero fraction {zeros}");
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
            fn adam_steps_match_reference() {
                $crate::conformance::adam_steps_match_reference(&*backend());
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
        let mut files: Vec<_> = std::fs::read_dir(src.join(class))
            .unwrap_or_else(|e| panic!("{}: {e}", src.join(class).display()))
            .map(|e| e.unwrap().path())
            .collect();
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
