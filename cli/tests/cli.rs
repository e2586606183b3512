//! The `alexnet` binary's scriptable contract, on a small subset of flower_photos.

use alexnet_core::conformance::{flower_subset, pretrained_weights};
use std::path::Path;
use std::process::Command;

fn alexnet(args: &[&str], home: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_alexnet")).args(args).env("ALEXNET_HOME", home).output().unwrap()
}

#[test]
fn train_eval_predict_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let data = flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), 8);
    let run = tmp.path().join("run");
    let w = pretrained_weights();
    let (d, r, wp) = (data.to_str().unwrap(), run.to_str().unwrap(), w.to_str().unwrap());
    let out = alexnet(
        &[
            "--backend",
            "candle",
            "train",
            "--data",
            d,
            "--finetune",
            "fc6",
            "--out",
            r,
            "--weights",
            wp,
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--cache-views",
            "1",
        ],
        tmp.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("fc6, fc7, fc8 start from a seeded random initialisation"), "{stderr}");
    for f in ["model.safetensors", "model.json", "report.json", "curve.png", "curve.svg", "confusion.png", "confusion.svg"] {
        assert!(run.join(f).metadata().map(|m| m.len() > 0).unwrap_or(false), "{f} missing");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["policy"], "fc6");
    assert_eq!(report["layers"]["conv1"]["source"], "pretrained");
    assert_eq!(report["layers"]["fc6"]["source"], "trained");

    // `eval --json`: every image of the folder; the plain line is the same accuracy to 4 decimals.
    let out = alexnet(&["eval", "--model", r, "--data", d, "--json"], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["samples"], 40);
    let acc = j["accuracy"].as_f64().unwrap();
    let correct: u64 = (0..5).map(|i| j["confusion"][i][i].as_u64().unwrap()).sum();
    assert_eq!(acc, correct as f64 / 40.0, "{j}");
    let out = alexnet(&["--backend", "candle", "eval", "--model", r, "--data", d], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().collect::<Vec<_>>(), [format!("accuracy: {acc:.4}"), "samples: 40".into()]);

    // --split test scores exactly the training run's test images, with its accuracy.
    let out = alexnet(&["eval", "--model", r, "--data", d, "--split", "test", "--json"], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["samples"], report["data"]["test"]);
    assert_eq!(j["accuracy"].as_f64().unwrap(), report["test"]["accuracy"].as_f64().unwrap());

    let img = std::fs::read_dir(data.join("tulips")).unwrap().next().unwrap().unwrap().path();
    let out = alexnet(&["predict", "--model", r, "--top-k", "2", img.to_str().unwrap()], tmp.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.matches('%').count() == 2, "{stdout}");
    // --top-k above the class count lists every class once, most probable first, summing to 1.
    let out = alexnet(&["predict", "--model", r, "--top-k", "9", "--json", img.to_str().unwrap()], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let top = j["top"].as_array().unwrap();
    let mut classes: Vec<&str> = top.iter().map(|t| t["class"].as_str().unwrap()).collect();
    let p: Vec<f64> = top.iter().map(|t| t["probability"].as_f64().unwrap()).collect();
    assert!(p.windows(2).all(|w| w[0] >= w[1]) && (p.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{p:?}");
    classes.sort();
    assert_eq!(classes, ["daisy", "dandelion", "roses", "sunflowers", "tulips"]);
}

/// `--backend all experiment`: every built backend at two depths, the cache timing, the table,
/// the JSON and both plots.
#[test]
fn experiment_compares_depths_and_backends() {
    let tmp = tempfile::tempdir().unwrap();
    let data = flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), 6);
    let out_dir = tmp.path().join("exp");
    let w = pretrained_weights();
    let (d, o, wp) = (data.to_str().unwrap(), out_dir.to_str().unwrap(), w.to_str().unwrap());
    let args = [
        "--backend",
        "all",
        "experiment",
        "--data",
        d,
        "--weights",
        wp,
        "--policies",
        "fc6,conv5",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--no-cache-steps",
        "2",
        "--batch-size",
        "6",
        "--cache-views",
        "1",
        "--out",
        o,
    ];
    let out = alexnet(&args, tmp.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["experiment.json", "experiment.md", "accuracy_vs_step.png", "accuracy_vs_step.svg", "accuracy_vs_time.png", "accuracy_vs_time.svg"] {
        assert!(out_dir.join(f).metadata().map(|m| m.len() > 0).unwrap_or(false), "{f} missing");
    }
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(out_dir.join("experiment.json")).unwrap()).unwrap();
    let runs = rep["runs"].as_array().unwrap();
    // Every backend built into the binary, in order: candle and burn by default (tch with its feature).
    let mut backends: Vec<&str> = runs.iter().map(|r| r["backend"].as_str().unwrap()).collect();
    backends.dedup();
    assert!(backends.starts_with(&["candle"]) && backends.contains(&"burn"), "{backends:?}");
    assert_eq!(runs.len(), 2 * backends.len(), "{stdout}");
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r["backend"], backends[i / 2]);
        assert_eq!(r["policy"], ["fc6", "conv5"][i % 2]);
        let steps: Vec<u64> = r["curve"].as_array().unwrap().iter().map(|p| p["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, [2, 4]);
        assert!(r["curve"][1]["test_accuracy"].as_f64().is_some());
    }
    let speed = rep["cache_speedups"].as_array().unwrap();
    assert_eq!(speed.len(), backends.len());
    for s in speed {
        assert_eq!(s["policy"], "fc6");
        // Speed itself is for benchmarks; here: both timings were taken and the ratio is theirs.
        let (c, u) = (s["cached_samples_per_second"].as_f64().unwrap(), s["uncached_samples_per_second"].as_f64().unwrap());
        assert!(c > 0.0 && u > 0.0 && (s["speedup"].as_f64().unwrap() - c / u).abs() < 1e-9, "{s}");
    }
    let md = std::fs::read_to_string(out_dir.join("experiment.md")).unwrap();
    assert!(md.contains("| candle | conv5 | conv5–fc8 |") && md.contains("| burn | fc6 | fc6–fc8 |"), "{md}");
    assert!(stdout.contains("cache speed-up"), "{stdout}");
}

#[test]
fn experiment_folds_and_repeats_give_spreads() {
    let tmp = tempfile::tempdir().unwrap();
    let data = flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), 6);
    let out_dir = tmp.path().join("exp");
    let w = pretrained_weights();
    let (d, o, wp) = (data.to_str().unwrap(), out_dir.to_str().unwrap(), w.to_str().unwrap());
    let args = [
        "experiment",
        "--data",
        d,
        "--weights",
        wp,
        "--policies",
        "fc6,fc8",
        "--allow-random-frozen",
        "--folds",
        "3",
        "--repeats",
        "2",
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--speedup-policy",
        "none",
        "--batch-size",
        "6",
        "--cache-views",
        "1",
        "--out",
        o,
    ];
    let out = alexnet(&args, tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(out_dir.join("experiment.json")).unwrap()).unwrap();
    let runs = rep["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2 * 3 * 2);
    // Per depth and repeat, the three test folds are disjoint and cover every image once.
    for policy in ["fc6", "fc8"] {
        for repeat in 0..2 {
            let mine: Vec<&serde_json::Value> = runs.iter().filter(|r| r["policy"] == policy && r["repeat"] == repeat).collect();
            let folds: Vec<u64> = mine.iter().map(|r| r["fold"]["index"].as_u64().unwrap()).collect();
            assert_eq!(folds, [0, 1, 2], "{policy} repeat {repeat}");
            let tested: u64 = mine.iter().map(|r| r["data"]["test"].as_u64().unwrap()).sum();
            let all =
                mine[0]["data"]["train"].as_u64().unwrap() + mine[0]["data"]["val"].as_u64().unwrap() + mine[0]["data"]["test"].as_u64().unwrap();
            assert_eq!(tested, all, "{policy} repeat {repeat}");
        }
    }
    // Repeats change the seeds (and so the cached views' cache folder).
    let seeds: Vec<u64> = runs.iter().take(2).map(|r| r["config"]["init_seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, [0, 1]);
    let md = std::fs::read_to_string(out_dir.join("experiment.md")).unwrap();
    assert!(md.contains("Accuracy over 3 test folds × 2 repeats"), "{md}");
    assert!(md.contains("| alexnet fc6 | 6 |") && md.contains("| alexnet fc8 | 6 |"), "{md}");
    assert!(md.contains("Paired differences to the setting with the best mean validation accuracy"), "{md}");
    assert!(md.contains("| fold 2/3, seed +1 |"), "{md}");
    for f in ["accuracy_vs_step.png", "accuracy_vs_time.svg"] {
        assert!(out_dir.join(f).metadata().map(|m| m.len() > 0).unwrap_or(false), "{f} missing");
    }
    let svg = std::fs::read_to_string(out_dir.join("accuracy_vs_step.svg")).unwrap();
    assert!(svg.contains("mean of 6, range shaded") && svg.contains("<polygon"), "no band in the plot");
    // The paired differences as a plot: one row per setting against the best, with intervals.
    let paired = std::fs::read_to_string(out_dir.join("paired.svg")).unwrap();
    assert!(paired.contains("against alexnet fc") && paired.contains("test (reported, never chosen by)"), "{paired}");
    assert!(out_dir.join("paired.png").metadata().map(|m| m.len() > 0).unwrap_or(false), "paired.png missing");
    // `--replot` redraws from experiment.json alone: no --data, no training.
    std::fs::remove_file(out_dir.join("experiment.md")).unwrap();
    let out = alexnet(&["experiment", "--replot", "--out", o], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(out_dir.join("experiment.md")).unwrap(), md);
    // Without --replot, --data stays required.
    let out = alexnet(&["experiment", "--out", o], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The recipe options end to end: colour jitter, label smoothing and mixup in training, test-time
/// augmentation cached for validation and test, kept in model.json for `eval` and `predict`;
/// `experiment --vary` runs one variant per value and pairs them fold by fold.
#[test]
fn recipe_options_and_experiment_variants() {
    let tmp = tempfile::tempdir().unwrap();
    let data = flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), 6);
    let run = tmp.path().join("run");
    let w = pretrained_weights();
    let (d, r, wp) = (data.to_str().unwrap(), run.to_str().unwrap(), w.to_str().unwrap());
    let common = ["--data", d, "--weights", wp, "--batch-size", "6", "--cache-views", "2", "--color-jitter", "0.3", "--crop-scale", "0.5"];
    let mut train = vec!["train", "--out", r, "--steps", "2", "--tta", "flip", "--label-smoothing", "0.1", "--mixup", "0.4"];
    train.extend(common);
    let out = alexnet(&train, tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("model.json")).unwrap()).unwrap();
    assert_eq!(info["tta"], "flip");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["config"]["model"]["label_smoothing"].as_f64().unwrap() as f32, 0.1);
    assert_eq!(report["config"]["augment"]["color_jitter"].as_f64().unwrap() as f32, 0.3);
    assert_eq!(report["config"]["augment"]["crop_scale"].as_f64().unwrap() as f32, 0.5);
    assert_eq!(report["config"]["train"]["mixup"].as_f64().unwrap() as f32, 0.4);
    // `eval` uses the model's test-time augmentation: the same test accuracy as training reported.
    let out = alexnet(&["eval", "--model", r, "--data", d, "--split", "test", "--json"], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["accuracy"].as_f64().unwrap(), report["test"]["accuracy"].as_f64().unwrap());
    for tta in ["none", "ten-crop"] {
        let out = alexnet(&["eval", "--model", r, "--data", d, "--split", "test", "--tta", tta], tmp.path());
        assert!(out.status.success(), "{tta}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let img = std::fs::read_dir(data.join("roses")).unwrap().next().unwrap().unwrap().path();
    let out = alexnet(&["predict", "--model", r, "--tta", "ten-crop", "--json", img.to_str().unwrap()], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The learning-rate range test: its curve, suggestions and plot.
    let lrf = tmp.path().join("lrf");
    let mut args = vec!["lr-find", "--out", lrf.to_str().unwrap(), "--steps", "8", "--start-lr", "1e-4", "--end-lr", "1", "--mixup", "0.2"];
    args.extend(common);
    let out = alexnet(&args, tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("steepest descent: lr") && stdout.contains("minimum / 10:"), "{stdout}");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(lrf.join("lr_find.json")).unwrap()).unwrap();
    assert_eq!(j["lr_find"]["config"]["mixup"].as_f64().unwrap() as f32, 0.2, "lr-find mixes as training would");
    let points = j["lr_find"]["points"].as_array().unwrap();
    assert!(!points.is_empty() && points.len() <= 8);
    let lrs: Vec<f64> = points.iter().map(|p| p["lr"].as_f64().unwrap()).collect();
    assert!((lrs[0] - 1e-4).abs() < 1e-9 && lrs.windows(2).all(|w| w[1] > w[0]), "{lrs:?}");
    assert!(lrf.join("lr_find.png").metadata().unwrap().len() > 0 && lrf.join("lr_find.svg").metadata().unwrap().len() > 0);

    let exp = tmp.path().join("exp");
    let mut args = vec!["experiment", "--out", exp.to_str().unwrap(), "--policies", "fc6", "--folds", "2", "--steps", "2", "--eval-every", "1"];
    // tta=ten-crop and label-smoothing=0 are the same settings (the defaults): run once, under both names.
    args.extend(["--speedup-policy", "none", "--vary", "tta=ten-crop,flip", "--vary", "label-smoothing=0"]);
    args.extend(common);
    let out = alexnet(&args, tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(exp.join("experiment.json")).unwrap()).unwrap();
    let runs = rep["runs"].as_array().unwrap();
    let recipes: Vec<&str> = runs.iter().map(|r| r["recipe"].as_str().unwrap()).collect();
    assert_eq!(recipes, ["tta=ten-crop = label-smoothing=0", "tta=ten-crop = label-smoothing=0", "tta=flip", "tta=flip"]);
    assert_eq!(runs[2]["config"]["tta"], "flip");
    // The variants train identically (same folds and seeds); only the evaluation differs.
    for fold in 0..2 {
        let loss = |r: &serde_json::Value| r["curve"].as_array().unwrap().iter().map(|p| p["train_loss"].as_f64().unwrap()).collect::<Vec<_>>();
        assert_eq!(loss(&runs[fold]), loss(&runs[2 + fold]), "fold {fold}");
    }
    // The same command again trains nothing: every run is taken from experiment.json.
    let again = alexnet(&args, tmp.path());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert_eq!(stderr.matches("reused, already in experiment.json").count(), 4, "{stderr}");
    let rep2: serde_json::Value = serde_json::from_slice(&std::fs::read(exp.join("experiment.json")).unwrap()).unwrap();
    assert_eq!(rep2["runs"], rep["runs"]);
    assert!(exp.join("experiment.previous.json").exists());
    let md = std::fs::read_to_string(exp.join("experiment.md")).unwrap();
    assert!(md.contains("| alexnet fc6 · tta=flip | 2 |") && md.contains("| alexnet fc6 · tta=ten-crop = label-smoothing=0 | 2 |"), "{md}");
    assert!(md.contains("best on validation"), "{md}");

    // Narrower experiments into the same folder, twice: their own runs (reused) in
    // experiment.json, every earlier run still kept in experiment.previous.json.
    let mut narrow = vec!["experiment", "--out", exp.to_str().unwrap(), "--policies", "fc6", "--folds", "2", "--steps", "2", "--eval-every", "1"];
    narrow.extend(["--speedup-policy", "none", "--tta", "flip"]);
    narrow.extend(common);
    for _ in 0..2 {
        let out = alexnet(&narrow, tmp.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(stderr.matches("reused, already in experiment.json").count(), 2, "{stderr}");
        let own: serde_json::Value = serde_json::from_slice(&std::fs::read(exp.join("experiment.json")).unwrap()).unwrap();
        assert_eq!(own["runs"].as_array().unwrap().len(), 2);
        let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(exp.join("experiment.previous.json")).unwrap()).unwrap();
        assert_eq!(kept["runs"].as_array().unwrap().len(), 4, "every run of the first experiment is kept");
    }
}

/// A learning curve's points (`--train-percent`) and a model trained on the whole training part
/// (`--val-percent 0`) as experiment variants: the training part shrinks or grows, test does not
/// move, and the variant without validation is compared on test only, never chosen.
#[test]
fn train_percent_and_no_validation_variants() {
    let tmp = tempfile::tempdir().unwrap();
    let data = flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), 8);
    let exp = tmp.path().join("exp");
    let w = pretrained_weights();
    let (d, e, wp) = (data.to_str().unwrap(), exp.to_str().unwrap(), w.to_str().unwrap());
    let args = [
        "experiment",
        "--data",
        d,
        "--weights",
        wp,
        "--out",
        e,
        "--policies",
        "fc6",
        "--folds",
        "2",
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--speedup-policy",
        "none",
        "--batch-size",
        "6",
        "--cache-views",
        "1",
        "--tta",
        "none",
        "--val-percent",
        "25",
        "--vary",
        "train-percent=100,50",
        "--vary",
        "val-percent=0",
    ];
    let out = alexnet(&args, tmp.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("--train-percent 50: ") && stderr.contains("sit out; validation and test are unchanged"), "{stderr}");
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(exp.join("experiment.json")).unwrap()).unwrap();
    let runs = rep["runs"].as_array().unwrap();
    let count = |recipe: &str, fold: u64, part: &str| {
        let r = runs.iter().find(|r| r["recipe"] == recipe && r["fold"]["index"] == fold).unwrap_or_else(|| panic!("{recipe} fold {fold}"));
        r["data"][part].as_u64().unwrap()
    };
    for fold in 0..2 {
        let part = |recipe, p| count(recipe, fold, p);
        assert!(part("train-percent=50", "train") < part("train-percent=100", "train"), "fold {fold}");
        assert_eq!(part("val-percent=0", "train"), part("train-percent=100", "train") + part("train-percent=100", "val"));
        assert_eq!(part("val-percent=0", "val"), 0);
        for r in ["train-percent=50", "val-percent=0"] {
            assert_eq!(part(r, "test"), part("train-percent=100", "test"), "{r} fold {fold}");
        }
        assert_eq!(part("train-percent=50", "val"), part("train-percent=100", "val"));
        let said =
            format!("--train-percent 50: {} of the {} training images train", part("train-percent=50", "train"), part("train-percent=100", "train"));
        assert!(stderr.contains(&said), "{said}\n{stderr}");
    }
    let md = std::fs::read_to_string(exp.join("experiment.md")).unwrap();
    assert!(md.contains("| alexnet fc6 · val-percent=0 | 2 | – (no validation set) |"), "{md}");
    // Compared with the best setting that has validation, on test alone.
    assert!(md.contains("| alexnet fc6 · val-percent=0 | alexnet fc6 · train-percent=") && md.contains("| – | – | – | – |"), "{md}");
    for bad in ["0", "101"] {
        let out = alexnet(&["train", "--data", d, "--train-percent", bad], tmp.path());
        assert_eq!(out.status.code(), Some(2), "--train-percent {bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("(0, 100]"));
    }
}

/// `--ensemble N`: N members on one extraction, saved as `model.json` + one weights file each;
/// `eval` and `predict` run them as one model with the training's scores; `experiment
/// --ensemble N` adds the table of the first k members.
#[test]
fn ensembles_train_evaluate_and_compare() {
    let tmp = tempfile::tempdir().unwrap();
    let data = flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), 6);
    let run = tmp.path().join("run");
    let w = pretrained_weights();
    let (d, r, wp) = (data.to_str().unwrap(), run.to_str().unwrap(), w.to_str().unwrap());
    let common = ["--data", d, "--weights", wp, "--batch-size", "6", "--cache-views", "1", "--tta", "flip"];
    let train = |members: &str| {
        let mut args = vec!["train", "--out", r, "--steps", "3", "--eval-every", "1", "--ensemble", members];
        args.extend(common);
        alexnet(&args, tmp.path())
    };
    let out = train("3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("ensemble member 2 (3 of 3; seeds +2000)"), "{stderr}");
    for f in ["model.safetensors", "model.member1.safetensors", "model.member2.safetensors", "ensemble.png", "ensemble.svg"] {
        assert!(run.join(f).metadata().map(|m| m.len() > 0).unwrap_or(false), "{f} missing");
    }
    let bytes = |f: &str| std::fs::read(run.join(f)).unwrap();
    assert_ne!(bytes("model.safetensors"), bytes("model.member1.safetensors"), "members have their own seeds");
    let info: serde_json::Value = serde_json::from_slice(&bytes("model.json")).unwrap();
    assert_eq!(info["ensemble"], 3);
    let report: serde_json::Value = serde_json::from_slice(&bytes("report.json")).unwrap();
    let members = report["members"].as_array().unwrap();
    let offsets: Vec<u64> = members.iter().map(|m| m["seed_offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [0, 1000, 2000]);
    // The run's scores are the whole ensemble's; member 0 alone is the first k = 1 ensemble.
    let last = &members[2];
    assert_eq!(last["ensemble_test_accuracy"], report["test"]["accuracy"]);
    assert_eq!(last["ensemble_val_accuracy"], report["val"]["accuracy"]);
    assert_eq!(members[0]["ensemble_test_accuracy"], members[0]["test_accuracy"]);
    assert_eq!(members[0]["ensemble_val_crossfit"], members[0]["val_crossfit"]);
    // Each member alone scores on validation what its curve shows at its best step.
    for m in members {
        let at_best = m["curve"].as_array().unwrap().iter().find(|p| p["step"] == m["best_step"]).unwrap();
        assert_eq!(at_best["val_accuracy"], m["val_accuracy"], "{m}");
    }
    assert!(members[0]["val_crossfit"].is_f64() && last["ensemble_val_crossfit"] == report["val_crossfit"], "{report}");
    // Members are chosen on validation alone: no test score along their curves.
    assert!(report["curve"].as_array().unwrap().iter().all(|p| p["test_accuracy"].is_null()));

    // `eval` runs the members as one model: the ensemble's test accuracy, as training reported.
    let out = alexnet(&["eval", "--model", r, "--data", d, "--split", "test", "--json"], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["samples"], report["data"]["test"]);
    assert_eq!(j["accuracy"].as_f64().unwrap(), report["test"]["accuracy"].as_f64().unwrap());
    let img = std::fs::read_dir(data.join("daisy")).unwrap().next().unwrap().unwrap().path();
    let out = alexnet(&["predict", "--model", r, "--top-k", "9", "--json", img.to_str().unwrap()], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p: f64 = j["top"].as_array().unwrap().iter().map(|t| t["probability"].as_f64().unwrap()).sum();
    assert!((p - 1.0).abs() < 1e-5, "{j}");

    // A smaller ensemble into the same folder leaves no stale member behind; a lost member file
    // is named before any work.
    let out = train("2");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(run.join("model.member1.safetensors").exists() && !run.join("model.member2.safetensors").exists());
    std::fs::remove_file(run.join("model.member1.safetensors")).unwrap();
    let out = alexnet(&["eval", "--model", r, "--data", d], tmp.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("model.member1.safetensors: missing"), "{stderr}");
    let out = train("0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--ensemble") && stderr.contains("from 1 to 16"), "{stderr}");

    // The experiment's table of the first k members, paired fold by fold, and its plot.
    let exp = tmp.path().join("exp");
    let mut args = vec!["experiment", "--out", exp.to_str().unwrap(), "--policies", "fc6", "--folds", "2", "--steps", "2", "--eval-every", "1"];
    // Validation of at least 2 photos a fold, which the cross-fitted score needs (two halves).
    args.extend(["--speedup-policy", "none", "--ensemble", "2", "--val-percent", "40"]);
    args.extend(common);
    let out = alexnet(&args, tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let md = std::fs::read_to_string(exp.join("experiment.md")).unwrap();
    assert!(md.contains("Ensembles of the first k members · alexnet fc6 (2 runs"), "{md}");
    assert!(md.contains("| test vs member 0 |") && md.contains("| test vs the k members alone |"), "{md}");
    assert!(md.contains("| val cross-fitted | cross-fitted val vs the k members alone |"), "{md}");
    // k = 2 is compared with both baselines (and on cross-fitted validation), k = 1 (member 0
    // itself) with neither.
    assert!(md.lines().any(|l| l.starts_with("| 2 | ") && l.matches(" to ").count() == 5), "{md}");
    assert!(md.lines().any(|l| l.starts_with("| 1 | ") && l.contains("| – | – | – | – |") && l.ends_with("| – |")), "{md}");
    for f in ["ensemble.png", "ensemble.svg", "accuracy_vs_step.png"] {
        assert!(exp.join(f).metadata().map(|m| m.len() > 0).unwrap_or(false), "{f} missing");
    }
}
