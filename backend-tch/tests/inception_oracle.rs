//! An independent oracle for the Inception-v3 description and its weight import: libtorch runs
//! the original FID TorchScript archive (`tch::CModule`, its own conv + batch-norm, nothing
//! folded, nothing described by us) on real photos, and the described network on tch's kernels
//! must give the same 2048-d features. The conformance suite checks every backend against the
//! f64 reference on the same photos, so all three meet this oracle through it.

use alexnet_core::conformance::net::{inception_preprocess, reference_features};
use alexnet_core::conformance::sample_photos;
use alexnet_core::net::inception_v3;
use alexnet_core::{Backend, paths};

#[test]
fn described_inception_matches_the_torchscript_archive() {
    let (pt, st) = (paths::default_inception_torchscript(), paths::default_inception_weights());
    assert!(pt.exists() && st.exists(), "{} / {} missing: run `alexnet weights fetch --backbone inception-v3` first", pt.display(), st.display());
    let photos = alexnet_core::conformance::flower_photos(env!("CARGO_MANIFEST_DIR"));
    let x = sample_photos(&photos, 3, &inception_preprocess());
    let input = tch::Tensor::from_slice(&x.data).view([3, 3, 299, 299]);
    let module = tch::CModule::load(&pt).unwrap();
    let oracle = tch::no_grad(|| module.forward_ts(&[input])).unwrap();
    let oracle: Vec<f32> = Vec::<f32>::try_from(oracle.flatten(0, -1)).unwrap();

    let w = alexnet_core::inception_import::read_inception_safetensors(&st).unwrap();
    let g = inception_v3(299).unwrap();
    let ours = backend_tch::TchBackend::cpu().extractor(&g, "pool3", &w.tensors).unwrap().extract(&x).unwrap();
    let reference = reference_features(&g, "pool3", &w.tensors, &x);
    assert_eq!((ours.shape.clone(), oracle.len()), (vec![3, 2048], 3 * 2048));
    let scale = oracle.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let rel = |a: &[f64]| a.iter().zip(&oracle).fold(0f64, |m, (a, o)| m.max((a - *o as f64).abs())) / scale;
    let (r_ours, r_ref) = (rel(&ours.data.iter().map(|v| *v as f64).collect::<Vec<_>>()), rel(&reference.value));
    eprintln!("inception oracle: tch kernels vs TorchScript {r_ours:.3e}, f64 reference vs TorchScript {r_ref:.3e} (max |Δ| / max |feature|)");
    assert!(r_ours < 1e-4 && r_ref < 1e-4, "described Inception-v3 differs from the TorchScript archive: {r_ours:e} (tch), {r_ref:e} (reference)");
    // Features of different photos differ: the comparison is not between constants.
    assert!(oracle[..2048].iter().zip(&oracle[2048..4096]).any(|(a, b)| (a - b).abs() > 0.1));
}
