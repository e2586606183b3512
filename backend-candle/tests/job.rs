//! End-to-end job on a small subset of ../shared/data/flower_photos with the candle backend:
//! training reduces the loss, the cache is reused, and anything that changes the features
//! (weights, crop) or damages the cache triggers re-extraction.

use alexnet_core::conformance::{flower_subset, pretrained_weights};
use alexnet_core::job::{JobConfig, run};
use alexnet_core::observer::Silent;
use alexnet_core::train::LrSchedule;
use alexnet_core::{FreezePolicy, WeightSet};
use backend_candle::CandleBackend;
use std::path::Path;

const PER_CLASS: usize = 10;

fn config(data: &Path, cache: &Path, weights: &Path) -> JobConfig {
    let mut cfg = JobConfig::new(data);
    cfg.weights = Some(weights.to_path_buf());
    cfg.split.val_percent = 20.0;
    cfg.split.test_percent = 20.0;
    cfg.cache.root = cache.to_path_buf();
    cfg.cache.views = 2;
    cfg.train.batch_size = 8;
    cfg.train.epochs = 4;
    cfg.train.lr = 0.01;
    cfg.train.schedule = LrSchedule::Constant;
    cfg.train.eval_every = Some(3);
    cfg.extract_batch = 16;
    cfg
}

#[test]
fn trains_reuses_and_invalidates_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let data = flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), PER_CLASS);
    let cache = tmp.path().join("cache");
    let weights = pretrained_weights();
    let backend = CandleBackend::cpu();
    let cfg = config(&data, &cache, &weights);

    let (r1, _) = run(&backend, &cfg, &Silent).unwrap();
    let (train, others) = (r1.data.train, r1.data.val + r1.data.test);
    assert_eq!(train + others, 5 * PER_CLASS);
    let c1 = r1.cache.as_ref().unwrap();
    assert_eq!((c1.loaded_entries, c1.written_entries), (0, 2 * train + others));
    assert_eq!(r1.timings.extracted_images, 5 * PER_CLASS);
    let first = r1.curve.first().unwrap().train_loss;
    let last = r1.curve.last().unwrap().train_loss;
    assert!(last < 0.7 * first, "loss did not fall: {first} → {last}");
    assert!(r1.curve.iter().any(|p| p.train_accuracy > 0.8), "{:?}", r1.curve);

    // Second run: everything from the cache, same result.
    let (r2, _) = run(&backend, &cfg, &Silent).unwrap();
    let c2 = r2.cache.as_ref().unwrap();
    assert_eq!((c2.loaded_entries, c2.written_entries), (2 * train + others, 0));
    assert_eq!(r2.timings.extracted_images, 0);
    assert_eq!(r2.test.accuracy, r1.test.accuracy);
    assert_eq!(r2.curve.last().unwrap().train_loss, last);

    // More views: only the new ones are computed.
    let mut more = cfg.clone();
    more.cache.views = 3;
    let (r3, _) = run(&backend, &more, &Silent).unwrap();
    assert_eq!(r3.cache.as_ref().unwrap().written_entries, train);

    // A different crop size is another cache.
    let mut crop = cfg.clone();
    crop.preprocess.crop = 227;
    let (r4, _) = run(&backend, &crop, &Silent).unwrap();
    assert_eq!(r4.cache.as_ref().unwrap().loaded_entries, 0);
    assert_ne!(r4.cache.as_ref().unwrap().dir, c1.dir);

    // Different frozen weights are another cache.
    let mut w = WeightSet::load_pretrained(&weights, &alexnet_core::AlexNetSpec::new(1000), 0).unwrap();
    let mut conv1 = w.get("features.0.bias").unwrap().clone();
    conv1.data[0] += 0.5;
    w.set("features.0.bias", conv1).unwrap();
    let changed = tmp.path().join("changed.safetensors");
    w.save(&changed).unwrap();
    let mut other = cfg.clone();
    other.weights = Some(changed);
    let (r5, _) = run(&backend, &other, &Silent).unwrap();
    assert_eq!(r5.cache.as_ref().unwrap().loaded_entries, 0);

    // A truncated chunk is detected, discarded and rebuilt; results are unchanged.
    let chunk = std::fs::read_dir(&c1.dir).unwrap().map(|e| e.unwrap().path()).next().unwrap();
    let bytes = std::fs::read(&chunk).unwrap();
    std::fs::write(&chunk, &bytes[..bytes.len() / 3]).unwrap();
    let (r6, _) = run(&backend, &cfg, &Silent).unwrap();
    let c6 = r6.cache.as_ref().unwrap();
    assert_eq!(c6.discarded_chunks.len(), 1, "{:?}", c6.discarded_chunks);
    assert!(c6.written_entries > 0);
    assert_eq!(r6.test.accuracy, r1.test.accuracy);
}

#[test]
fn conv5_and_uncached_runs_train() {
    let tmp = tempfile::tempdir().unwrap();
    let data = flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), PER_CLASS);
    let weights = pretrained_weights();
    let backend = CandleBackend::cpu();
    let mut cfg = config(&data, &tmp.path().join("cache"), &weights);
    cfg.train.epochs = 1;
    cfg.train.max_steps = Some(3);
    cfg.cache.views = 1;
    cfg.model.policy = "conv5".parse::<FreezePolicy>().unwrap();
    let (r, best) = run(&backend, &cfg, &Silent).unwrap();
    assert_eq!(r.cut, "conv4");
    assert!(r.cache.is_some());
    let w0 = WeightSet::load_pretrained(&weights, best.spec(), 0).unwrap();
    assert_eq!(best.layer(alexnet_core::LayerId::Conv4), w0.layer(alexnet_core::LayerId::Conv4));
    assert_ne!(best.layer(alexnet_core::LayerId::Conv5), w0.layer(alexnet_core::LayerId::Conv5));

    cfg.model.policy = FreezePolicy::default();
    cfg.cache.enabled = false;
    let (r, _) = run(&backend, &cfg, &Silent).unwrap();
    assert!(r.cache.is_none());
    assert_eq!(r.timings.train_samples, r.data.train.min(3 * 8));
    assert!(r.curve.last().unwrap().train_loss.is_finite());
}

#[test]
fn bad_inputs_fail_clearly_or_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), PER_CLASS);
    let weights = pretrained_weights();
    let backend = CandleBackend::cpu();
    let bad = data.join("roses/zz-broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 truncated jpeg").unwrap();
    let mut cfg = config(&data, &tmp.path().join("cache"), &weights);
    cfg.train.max_steps = Some(1);
    let err = run(&backend, &cfg, &Silent).err().unwrap().to_string();
    assert!(err.contains("zz-broken.jpg") && err.contains("--skip-bad-images"), "{err}");
    // Work done before the failure is kept: the next run only extracts what is missing.
    cfg.skip_bad_images = true;
    let (r, _) = run(&backend, &cfg, &Silent).unwrap();
    assert!(r.cache.as_ref().unwrap().loaded_entries > 0, "features extracted before the error were lost");
    assert_eq!(r.data.skipped.len(), 1);
    assert!(r.data.skipped[0].contains("zz-broken.jpg"));

    let wrong = tmp.path().join("wrong.safetensors");
    std::fs::write(&wrong, b"not weights").unwrap();
    cfg.weights = Some(wrong);
    let err = run(&backend, &cfg, &Silent).err().unwrap().to_string();
    assert!(err.contains("wrong.safetensors"), "{err}");

    std::fs::create_dir_all(data.join("empty")).unwrap();
    cfg.weights = Some(weights);
    let err = run(&backend, &cfg, &Silent).err().unwrap().to_string();
    assert!(err.contains("empty") && err.contains("no images"), "{err}");

    cfg.model.policy = "fc7".parse().unwrap();
    std::fs::remove_dir(data.join("empty")).unwrap();
    let err = run(&backend, &cfg, &Silent).err().unwrap().to_string();
    assert!(err.contains("no pretrained weights"), "{err}");
}
