//! End-to-end job on a small subset of ../shared/data/flower_photos with the candle backend:
//! training reduces the loss, the cache is reused, and anything that changes the features
//! (weights, crop) or damages the cache triggers re-extraction.

use alexnet_core::conformance::{flower_subset, pretrained_weights};
use alexnet_core::data::{OnConflict, Tta};
use alexnet_core::job::{JobConfig, prepare, run};
use alexnet_core::observer::Silent;
use alexnet_core::train::Inputs;
use alexnet_core::train::LrSchedule;
use alexnet_core::{FreezePolicy, WeightSet};
use backend_candle::CandleBackend;
use std::path::{Path, PathBuf};

const PER_CLASS: usize = 10;

fn config(data: &Path, cache: &Path, weights: &Path) -> JobConfig {
    let mut cfg = JobConfig::new(data);
    cfg.weights = Some(weights.to_path_buf());
    cfg.split.val_percent = 20.0;
    cfg.split.test_percent = 20.0;
    cfg.cache.root = cache.to_path_buf();
    cfg.cache.views = 2;
    // One view per evaluated image: the cache counts below assume it.
    cfg.tta = Tta::None;
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
    // Choosing on one half and scoring on the other never beats scoring the choice on the set
    // that made it (selection::crossfit_accuracy's bound).
    let crossfit = r1.val_crossfit.expect("every evaluation point's validation probabilities were kept");
    assert!(crossfit <= r1.val.accuracy, "cross-fitted {crossfit} above the chosen step's {}", r1.val.accuracy);

    // Second run: everything from the cache, same result.
    let (r2, _) = run(&backend, &cfg, &Silent).unwrap();
    let c2 = r2.cache.as_ref().unwrap();
    assert_eq!((c2.loaded_entries, c2.written_entries), (2 * train + others, 0));
    assert_eq!(r2.timings.extracted_images, 0);
    assert_eq!(r2.test.accuracy, r1.test.accuracy);
    assert_eq!(r2.curve.last().unwrap().train_loss, last);

    // A truncated chunk is detected, discarded and rebuilt; results are unchanged. (Before any
    // other view is cached: chunks are also flushed by time, so under load a later run's
    // chunk, holding only entries this run does not need, could be the one picked.)
    let chunk = std::fs::read_dir(&c1.dir).unwrap().map(|e| e.unwrap().path()).next().unwrap();
    let bytes = std::fs::read(&chunk).unwrap();
    std::fs::write(&chunk, &bytes[..bytes.len() / 3]).unwrap();
    let (r6, _) = run(&backend, &cfg, &Silent).unwrap();
    let c6 = r6.cache.as_ref().unwrap();
    assert_eq!(c6.discarded_chunks.len(), 1, "{:?}", c6.discarded_chunks);
    assert!(c6.written_entries > 0);
    assert_eq!(r6.test.accuracy, r1.test.accuracy);

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

    // Fixed training views (here the mirrored centre): new entries for the training images
    // alone, every other view loaded.
    let mut fixed = more.clone();
    fixed.train_fixed_views = Tta::Flip;
    let (r3f, _) = run(&backend, &fixed, &Silent).unwrap();
    let c3f = r3f.cache.as_ref().unwrap();
    assert_eq!((c3f.loaded_entries, c3f.written_entries), (3 * train + others, train));
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
    let best = &best[0];
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
    assert!(r.data.skipped[0].path.ends_with("zz-broken.jpg"), "{:?}", r.data.skipped);

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

/// The first photo (sorted) of a class folder of the subset (a symlink into flower_photos).
fn first_photo(data: &Path, class: &str) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data.join(class)).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v.remove(0)
}

/// Adds four bad files to the subset: empty, text named .jpg, the first half of a real photo,
/// and a real photo whose frame header says height 0 (well-formed, but no decoder takes it).
fn add_bad_files(data: &Path) -> Vec<PathBuf> {
    let photo = std::fs::read(first_photo(data, "tulips")).unwrap();
    let mut undecodable = std::fs::read(first_photo(data, "dandelion")).unwrap();
    // The last SOF marker is the main image's (FF never precedes C0/C2 in entropy-coded data).
    let sof = undecodable.windows(2).rposition(|w| w[0] == 0xFF && (w[1] == 0xC0 || w[1] == 0xC2)).unwrap();
    undecodable[sof + 5..sof + 7].copy_from_slice(&[0, 0]);
    let bad: Vec<(PathBuf, Vec<u8>)> = vec![
        (data.join("roses/zz-empty.jpg"), vec![]),
        (data.join("daisy/zz-text.jpg"), b"this is a text file, not a photo\n".to_vec()),
        (data.join("tulips/zz-truncated.jpg"), photo[..photo.len() / 2].to_vec()),
        (data.join("sunflowers/zz-undecodable.jpg"), undecodable),
    ];
    for (p, bytes) in &bad {
        std::fs::write(p, bytes).unwrap();
    }
    bad.into_iter().map(|(p, _)| p).collect()
}

#[test]
fn every_bad_image_is_listed_at_once_or_skipped_on_every_path() {
    let tmp = tempfile::tempdir().unwrap();
    let data = flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), PER_CLASS);
    let bad = add_bad_files(&data);
    let weights = pretrained_weights();
    let backend = CandleBackend::cpu();
    let mut base = config(&data, &tmp.path().join("cache"), &weights);
    base.train.max_steps = Some(1);
    base.cache.views = 1;
    let mut uncached = base.clone();
    uncached.cache.enabled = false;
    let mut all = base.clone();
    all.model.policy = "all".parse().unwrap();
    for (name, cfg) in [("cache", base), ("--no-cache", uncached), ("--finetune all", all)] {
        // Without --skip-bad-images: one error naming every bad file, with its reason.
        let err = run(&backend, &cfg, &Silent).err().unwrap().to_string();
        for p in &bad {
            assert!(err.contains(&p.display().to_string()), "{name}: {} missing from {err}", p.display());
        }
        for why in ["empty file", "not a JPEG or PNG", "truncated JPEG", "width or height is set to zero"] {
            assert!(err.contains(why), "{name}: {why:?} missing from {err}");
        }
        assert!(err.starts_with("4 image file(s) cannot be used") && err.contains("--skip-bad-images"), "{name}: {err}");
        // With it: all four left out, listed in the report with the reason, the rest trains.
        let mut skip = cfg.clone();
        skip.skip_bad_images = true;
        let (r, _) = run(&backend, &skip, &Silent).unwrap();
        let mut skipped: Vec<&str> = r.data.skipped.iter().map(|s| s.path.as_str()).collect();
        skipped.sort();
        let mut want: Vec<String> = bad.iter().map(|p| p.display().to_string()).collect();
        want.sort();
        assert_eq!(skipped, want, "{name}");
        for s in &r.data.skipped {
            assert!(!s.reason.is_empty() && !s.reason.contains("--skip-bad-images"), "{name}: {s:?}");
        }
        assert_eq!(r.data.train + r.data.val + r.data.test, 5 * PER_CLASS, "{name}");
        assert_eq!(r.data.class_counts, vec![PER_CLASS; 5], "{name}");
        assert_eq!(r.cache.is_some(), name == "cache", "{name}");
        assert_eq!(r.data.check_decoded, name != "cache", "{name}");
    }
}

/// The split (by name) of each path in a prepared job; uncached, so the inputs are image paths.
fn splits_of(p: &alexnet_core::job::Prepared) -> Vec<(&'static str, PathBuf, u32)> {
    let mut out = vec![];
    for (name, inputs) in [("train", &p.train), ("val", &p.val), ("test", &p.test)] {
        let Inputs::Images { paths, labels, .. } = inputs else { panic!("cached inputs") };
        out.extend(paths.iter().zip(labels).map(|(p, l)| (name, p.clone(), *l)));
    }
    out
}

#[test]
fn identical_photos_share_a_split_and_cross_class_copies_are_skipped_or_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let data = flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), PER_CLASS);
    let weights = pretrained_weights();
    let backend = CandleBackend::cpu();
    let mut cfg = config(&data, &tmp.path().join("cache"), &weights);
    cfg.cache.enabled = false;
    let split = cfg.split;
    // A copy of a daisy photo under daisy, named so that its own path would put it in another
    // split than the original: the copies must still land together.
    let orig = first_photo(&data, "daisy");
    let orig_rel = format!("daisy/{}", orig.file_name().unwrap().to_str().unwrap());
    let name = (0..).map(|k| format!("zz-copy-{k}.jpg")).find(|n| split.assign(&format!("daisy/{n}")) != split.assign(&orig_rel)).unwrap();
    let copy = data.join("daisy").join(&name);
    std::fs::copy(&orig, &copy).unwrap();
    // A dandelion photo filed under roses too.
    let dand = first_photo(&data, "dandelion");
    let cross = data.join("roses/zz-also-dandelion.jpg");
    std::fs::copy(&dand, &cross).unwrap();

    let p = prepare(&backend, &cfg, &Silent).unwrap();
    let s = splits_of(&p);
    let find = |path: &Path| s.iter().find(|(_, q, _)| q == path).map(|(n, _, l)| (*n, *l));
    let (a, b) = (find(&orig).unwrap(), find(&copy).unwrap());
    assert_eq!(a.0, b.0, "identical files in different splits");
    assert_eq!(p.data.duplicates.groups, 2);
    assert_eq!(p.data.duplicates.files, 4);
    let conflict = vec![format!("dandelion/{}", dand.file_name().unwrap().to_str().unwrap()), "roses/zz-also-dandelion.jpg".into()];
    assert_eq!(p.data.duplicates.class_conflicts, vec![conflict.clone()]);
    // Default: both labelled copies left out, with a warning naming them, and reported.
    assert_eq!(p.data.duplicates.on_conflict, OnConflict::Skip);
    assert!(find(&dand).is_none() && find(&cross).is_none());
    assert_eq!(s.len(), 5 * PER_CLASS + 2 - 2);
    let w = p.data.warnings.iter().find(|w| w.contains("more than one class")).expect("a conflict warning");
    assert!(w.contains(&conflict[0]) && w.contains(&conflict[1]), "{w}");
    let skipped: Vec<&str> = p.data.skipped.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(skipped, vec![dand.display().to_string(), cross.display().to_string()]);

    // --on-conflict keep: both copies, each with its folder's label, in one split.
    cfg.on_conflict = OnConflict::Keep;
    let p = prepare(&backend, &cfg, &Silent).unwrap();
    let s = splits_of(&p);
    let find = |path: &Path| s.iter().find(|(_, q, _)| q == path).map(|(n, _, l)| (*n, *l));
    let (d, r) = (find(&dand).unwrap(), find(&cross).unwrap());
    assert_eq!(d.0, r.0);
    assert_eq!((d.1, r.1), (1, 2), "labels dandelion and roses");
    assert!(p.data.skipped.is_empty());
    assert_eq!(s.len(), 5 * PER_CLASS + 2);
    assert_eq!(p.data.duplicates.class_conflicts, vec![conflict]);
}

/// Each sample's cached views, per split (what training reads).
fn cached_views(p: &alexnet_core::job::Prepared) -> Vec<Vec<Vec<std::sync::Arc<[f32]>>>> {
    [&p.train, &p.val, &p.test]
        .iter()
        .map(|i| match i {
            Inputs::Cached { views, .. } => views.clone(),
            Inputs::Images { .. } => panic!("not cached"),
        })
        .collect()
}

#[test]
fn two_shards_fill_the_same_cache_as_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), PER_CLASS);
    let weights = pretrained_weights();
    let backend = CandleBackend::cpu();
    let sharded = config(&data, &tmp.path().join("sharded"), &weights);
    let mut written = 0;
    for index in 0..2 {
        let mut cfg = sharded.clone();
        cfg.shard = Some(alexnet_core::data::Shard { index, count: 2 });
        let p = prepare(&backend, &cfg, &Silent).unwrap();
        let n = p.data.train + p.data.val + p.data.test;
        assert!(n > 0 && n < 5 * PER_CLASS, "shard {index}/2 has {n} of {} images", 5 * PER_CLASS);
        let c = p.cache.unwrap();
        assert_eq!(c.loaded_entries, written, "shard {index}/2 should see only the other shard's entries");
        written += c.written_entries;
    }
    // The shards together cover everything: a whole job on their cache computes nothing.
    let after = prepare(&backend, &sharded, &Silent).unwrap();
    let c = after.cache.as_ref().unwrap();
    assert_eq!((c.loaded_entries, c.written_entries), (written, 0));
    // Entry for entry what one unsharded run computes. Batches are composed differently, which
    // changes no value: every crop's features are computed independently of the others in a batch.
    let one = prepare(&backend, &config(&data, &tmp.path().join("one"), &weights), &Silent).unwrap();
    assert_eq!(one.cache.as_ref().unwrap().written_entries, written);
    assert!(cached_views(&after) == cached_views(&one), "sharded and unsharded caches differ");
}
