//! Conformance of a backend's primitive ops ([`crate::net::Kernels`], reached through
//! [`Backend::extractor`]) against the f64 reference kernels, op by op and on whole networks.

use super::worst_ratio;
use crate::Backend;
use crate::data::Preprocess;
use crate::net::reference::{RefTensor, Reference};
use crate::net::{Graph, GraphBuilder, InputSpec, Plan, Pool, inception_v3};
use crate::tensor::HostTensor;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;

fn images(n: usize, c: usize, side: usize, seed: u64) -> HostTensor {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    HostTensor { shape: vec![n, c, side, side], data: (0..n * c * side * side).map(|_| r.random_range(-2.0..2.0)).collect() }
}

/// The backend's and the reference's features of `x` at `cut`, checked element by element
/// against the reference's f32 rounding bound; returns (worst |Δ|/bound, max |Δ| / max |ref|).
pub fn check_graph(b: &dyn Backend, what: &str, g: &Graph, cut: &str, weights: &BTreeMap<String, HostTensor>, x: &HostTensor) -> (f64, f64) {
    let got = b.extractor(g, cut, weights).unwrap().extract(x).unwrap();
    let want = reference_features(g, cut, weights, x);
    assert_eq!(got.shape, want.shape, "{what}: shape");
    let r = worst_ratio(&got.data, &want.value, &want.bound);
    let rel = super::relative_error(&got.data, &want.value);
    super::record(r, rel);
    note!("conformance · {what}: worst |Δ|/bound {r:.3e}, max |Δ|/max|ref| {rel:.3e}");
    assert!(r <= 1.0, "{what}: a difference exceeds its f32 rounding bound (worst |Δ|/bound {r:e}, relative {rel:e})");
    (r, rel)
}

/// The f64 reference's features (flattened per sample) with their bounds.
pub fn reference_features(g: &Graph, cut: &str, weights: &BTreeMap<String, HostTensor>, x: &HostTensor) -> RefTensor {
    let plan = Plan::new(g, cut).unwrap();
    plan.check_weights(weights).unwrap();
    let params: BTreeMap<String, RefTensor> =
        plan.graph.params_upto(plan.output).iter().map(|p| (p.name.clone(), ref_upload(&weights[&p.name]))).collect();
    let mut y = plan.run(&Reference, &params, ref_upload(x)).unwrap();
    let n = y.shape[0];
    y.shape = vec![n, y.value.len() / n];
    y
}

fn ref_upload(t: &HostTensor) -> RefTensor {
    use crate::net::Kernels;
    Reference.upload(t).unwrap()
}

/// Every op with the options the described networks use, and some they do not yet (groups,
/// ceil mode, padding counted in averages, asymmetric kernels and padding, convs without bias).
pub fn ops_match_reference(b: &dyn Backend) {
    let input = InputSpec { channels: 4, size: 17, mean: [0.0; 3], std: [1.0; 3] };
    let mut gb = GraphBuilder::new("ops", input);
    let c1 = gb.conv_grouped("grouped", 0, 6, (3, 5), 2, (1, 2), 2, true, true).unwrap(); // 6×9×9
    let m1 = gb.max_pool("max_ceil", c1, Pool { ceil_mode: true, ..Pool::new(3, 2).with_padding(1) }).unwrap(); // 5×5
    let a1 = gb.avg_pool("avg_excl", c1, Pool::new(3, 2).with_padding(1).excluding_pad()).unwrap();
    let a2 = gb.avg_pool("avg_incl_ceil", c1, Pool { ceil_mode: true, ..Pool::new(3, 2).with_padding(1) }).unwrap();
    let c2 = gb.conv("no_bias", a1, 5, (1, 1), 1, (0, 0), false, false).unwrap();
    let c3 = gb.conv("tall", m1, 3, (7, 1), 1, (3, 0), true, true).unwrap();
    let m2 = gb.max_pool("max_s1", a2, Pool::new(3, 1).with_padding(1)).unwrap();
    let cat = gb.concat("concat", &[c2, c3, m2]).unwrap();
    let f = gb.flatten("flatten", cat);
    let l1 = gb.linear("fc1", f, 16, true).unwrap();
    let l2 = gb.linear("fc2", l1, 3, false).unwrap();
    gb.cut("concat", cat);
    gb.cut("out", l2);
    let g = gb.finish().unwrap();
    let w = g.seeded_params(3);
    let x = images(2, 4, 17, 4);
    check_graph(b, "ops up to concat", &g, "concat", &w, &x);
    check_graph(b, "ops through linear", &g, "out", &w, &x);
}

/// AlexNet's description on the backend's primitive ops matches the reference at pool5.
pub fn alexnet_graph_matches_reference(b: &dyn Backend) {
    let spec = crate::AlexNetSpec::new(5);
    let g = crate::net::alexnet(&spec).unwrap();
    let w = crate::WeightSet::initialised(&spec, 42);
    check_graph(b, "alexnet graph, pool5", &g, "pool5", w.tensors(), &images(2, 3, 224, 5));
}

/// Inception-v3's description (seeded weights) matches the reference at the 2048-d bottleneck.
pub fn inception_matches_reference(b: &dyn Backend) {
    let g = inception_v3(299).unwrap();
    let w = g.seeded_params(11);
    let (_, rel) = check_graph(b, "inception-v3 pool3 (seeded weights)", &g, "pool3", &w, &images(1, 3, 299, 6));
    assert!(rel < 1e-4, "inception-v3: relative error {rel:e} ≥ 1e-4");
}

/// The real Inception-v3 weights (`alexnet weights fetch --backbone inception-v3`) on two real
/// photos, preprocessed as the tool does, match the reference at pool3.
pub fn inception_real_weights(b: &dyn Backend, weights_file: &Path, photos: &Path) {
    assert!(weights_file.exists(), "{} is missing: run `alexnet weights fetch --backbone inception-v3` first", weights_file.display());
    let w = crate::inception_import::read_inception_safetensors(weights_file).unwrap();
    let g = inception_v3(299).unwrap();
    let x = super::sample_photos(photos, 2, &inception_preprocess());
    let (_, rel) = check_graph(b, "inception-v3 pool3, real weights and photos", &g, "pool3", &w.tensors, &x);
    assert!(rel < 1e-4, "inception-v3 real weights: relative error {rel:e} ≥ 1e-4");
}

/// Inception-v3's preprocessing: shorter side to 299, centre 299 crop, (x − 128)/128.
pub fn inception_preprocess() -> Preprocess {
    let m = crate::net::INCEPTION_MEAN_STD;
    Preprocess { resize: 299, crop: 299, mean: [m; 3], std: [m; 3] }
}
