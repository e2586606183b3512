//! Bad flags and bad inputs: each fails at once with a one-line error naming the flag or file,
//! the documented exit status (2: usage error found by clap or `args::validate`; 1: the input
//! itself is bad), no panic, and no work done (no cache, no weights fetch, no output folder).
//!
//! `ALEXNET_RELIABILITY_TABLE=FILE cargo test -p alexnet-cli --test reliability` also writes the
//! markdown table of README.md's "Reliability" section.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A folder with `classes` class folders of `per_class` small PNGs (20: no "few images" warning).
fn data(root: &Path, name: &str, classes: &[&str], per_class: usize) -> PathBuf {
    let dir = root.join(name);
    for (k, c) in classes.iter().enumerate() {
        std::fs::create_dir_all(dir.join(c)).unwrap();
        for i in 0..per_class {
            let img = image::RgbImage::from_fn(16, 12, |x, y| image::Rgb([(x * 16) as u8, (y * 20) as u8, (k * 100 + i) as u8]));
            img.save(dir.join(c).join(format!("{i}.png"))).unwrap();
        }
    }
    dir
}

/// A run folder with the given `model.json` (None: none) and a `model.safetensors` that is not one.
fn run_dir(root: &Path, name: &str, model_json: Option<&str>) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(j) = model_json {
        std::fs::write(dir.join("model.json"), j).unwrap();
    }
    std::fs::write(dir.join("model.safetensors"), b"not a checkpoint").unwrap();
    dir
}

fn model_json(classes: &str, crop: u32, policy: &str) -> String {
    format!(
        r#"{{"classes": {classes}, "preprocess": {{"resize": 256, "crop": {crop}, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}, "policy": "{policy}", "backend": "candle", "split": {{"val_percent": 10.0, "test_percent": 10.0}}}}"#
    )
}

struct Case {
    args: Vec<String>,
    status: i32,
    /// Text the `error:` line must contain (the flag, the file, the accepted range).
    want: &'static [&'static str],
}

#[test]
fn bad_flags_and_inputs_fail_fast_and_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let good = data(t, "data", &["cats", "dogs"], 20);
    data(t, "one-class", &["cats"], 20);
    let with_empty = data(t, "with-empty", &["cats", "dogs"], 20);
    std::fs::create_dir_all(with_empty.join("empty")).unwrap();
    std::fs::write(t.join("notes.txt"), "not a folder").unwrap();
    std::fs::write(t.join("junk.safetensors"), b"this is not safetensors").unwrap();
    let two = r#"["cats", "dogs"]"#;
    run_dir(t, "run", Some(&model_json(two, 224, "fc6")));
    run_dir(t, "run-corrupt", Some("{\"classes\": [\"cats\", "));
    run_dir(t, "run-1-class", Some(&model_json(r#"["cats"]"#, 224, "fc6")));
    run_dir(t, "run-bad-crop", Some(&model_json(two, 300, "fc6")));
    run_dir(t, "run-bad-policy", Some(&model_json(two, 224, "fc9")));
    run_dir(t, "run-no-json", None);
    run_dir(t, "run-other-classes", Some(&model_json(r#"["birds", "fish"]"#, 224, "fc6")));
    let no_weights = t.join("run-no-weights");
    std::fs::create_dir_all(&no_weights).unwrap();
    std::fs::write(no_weights.join("model.json"), model_json(two, 224, "fc6")).unwrap();
    std::fs::write(t.join("cat.png"), std::fs::read(good.join("cats/0.png")).unwrap()).unwrap();

    // Every job would start real work if its flags got through: random weights, freezing allowed,
    // cache and output inside the temporary folder.
    let job = |cmd: &str, extra: &[&str]| -> Vec<String> {
        let mut v = vec![cmd, "--data", "data", "--no-pretrained", "--allow-random-frozen"];
        if cmd != "extract" {
            v.extend(["--out", "out"]);
        }
        v.extend(extra);
        v.into_iter().map(String::from).collect()
    };
    let train = |extra: &[&str]| job("train", extra);
    let argv = |a: &[&str]| -> Vec<String> { a.iter().map(|s| s.to_string()).collect() };
    let globals = |g: &[&str], mut rest: Vec<String>| {
        let mut v = argv(g);
        v.append(&mut rest);
        v
    };
    let case = |args: Vec<String>, status, want| Case { args, status, want };
    let mut cases = vec![
        case(train(&["--steps", "0"]), 2, &["'--steps <STEPS>'", "≥ 1"][..]),
        case(train(&["--epochs", "0"]), 2, &["--epochs", "≥ 1"]),
        case(train(&["--batch-size", "0"]), 2, &["--batch-size", "≥ 1"]),
        case(train(&["--lr", "0"]), 2, &["--lr", "> 0"]),
        case(train(&["--lr", "-0.1"]), 2, &["--lr", "> 0"]),
        case(train(&["--lr", "nan"]), 2, &["--lr", "finite"]),
        case(train(&["--dropout", "1"]), 2, &["--dropout", "[0, 1)"]),
        case(train(&["--dropout", "-0.1"]), 2, &["--dropout", "[0, 1)"]),
        case(train(&["--momentum", "-0.5"]), 2, &["--momentum", "≥ 0"]),
        case(train(&["--weight-decay", "-1"]), 2, &["--weight-decay", "≥ 0"]),
        case(train(&["--conv-lr-mult", "-1"]), 2, &["--conv-lr-mult", "≥ 0"]),
        case(train(&["--crop", "100"]), 2, &["--crop", "between 223 and 254"]),
        case(train(&["--resize", "224", "--crop", "227"]), 2, &["--crop 227", "--resize 224"]),
        case(train(&["--resize", "0"]), 2, &["--resize", "≥ 1"]),
        case(train(&["--val-percent", "60", "--test-percent", "40"]), 2, &["--val-percent 60 + --test-percent 40", "under 100"]),
        case(train(&["--val-percent", "-5"]), 2, &["--val-percent", "[0, 100)"]),
        case(train(&["--test-percent", "100"]), 2, &["--test-percent", "[0, 100)"]),
        case(train(&["--cache-views", "0"]), 2, &["--cache-views", "from 1 to 1024"]),
        case(train(&["--cache-views", "2000"]), 2, &["--cache-views", "from 1 to 1024"]),
        case(train(&["--color-jitter", "1.5"]), 2, &["--color-jitter", "[0, 1]"]),
        case(train(&["--crop-scale", "1.5"]), 2, &["--crop-scale", "[0, 1]"]),
        case(train(&["--label-smoothing", "1"]), 2, &["--label-smoothing", "[0, 1)"]),
        case(train(&["--mixup", "-0.2"]), 2, &["--mixup", "≥ 0"]),
        case(train(&["--tta", "five-crop"]), 2, &["--tta", "five-crop"]),
        case(train(&["--extract-batch", "0"]), 2, &["--extract-batch", "≥ 1"]),
        case(train(&["--eval-every", "0"]), 2, &["--eval-every", "≥ 1"]),
        case(train(&["--finetune", "fc9"]), 2, &["--finetune", "fc8, fc7, fc6, conv5"]),
        case(train(&["--optimizer", "rmsprop"]), 2, &["--optimizer", "rmsprop"]),
        case(train(&["--backbone", "resnet"]), 2, &["--backbone", "resnet"]),
        case(train(&["--backbone", "inception-v3", "--crop", "224"]), 2, &["--crop", "use a crop of 299"]),
        case(globals(&["--backbone", "inception-v3"], train(&["--crop", "331"])), 2, &["--crop", "use a crop of 299 (up to 330)"]),
        case(train(&["--backbone", "inception-v3", "--finetune", "conv5"]), 2, &["--finetune conv5", "only its new head trains"]),
        case(train(&["--head-hidden", "256"]), 2, &["--head-hidden", "--backbone inception-v3"]),
        case(train(&["--backbone", "inception-v3"]), 2, &["--no-pretrained", "inception-v3", "needs its pretrained weights"]),
        case(job("experiment", &["--backbones", "alexnet,vgg"]), 2, &["--backbones", "vgg"]),
        case(job("experiment", &["--steps", "0"]), 2, &["--steps", "≥ 1"]),
        case(job("experiment", &["--folds", "1"]), 2, &["--folds", "≥ 2"]),
        case(job("experiment", &["--repeats", "0"]), 2, &["--repeats", "≥ 1"]),
        case(job("experiment", &["--no-cache-steps", "0"]), 2, &["--no-cache-steps", "≥ 1"]),
        case(job("experiment", &["--eval-every", "0"]), 2, &["--eval-every", "≥ 1"]),
        case(job("experiment", &["--policies", "fc6,conv9"]), 2, &["--policies", "conv9"]),
        case(job("experiment", &["--speedup-policy", "fc9"]), 2, &["--speedup-policy", "none or one of"]),
        case(job("lr-find", &["--start-lr", "1", "--end-lr", "0.1"]), 2, &["--start-lr 1", "--end-lr 0.1"]),
        case(job("lr-find", &["--steps", "1"]), 2, &["--steps", "at least 2"]),
        case(job("lr-find", &["--end-lr", "0"]), 2, &["--end-lr", "> 0"]),
        case(job("experiment", &["--vary", "tta"]), 2, &["--vary", "FLAG=V1,V2"]),
        case(job("experiment", &["--vary", "nope=1,2"]), 2, &["--vary", "no --nope"]),
        case(job("experiment", &["--vary", "folds=2,3"]), 2, &["--vary", "--folds", "cannot vary"]),
        case(job("experiment", &["--vary", "cache-f16=1,2"]), 2, &["--vary", "--cache-f16 takes no value"]),
        case(job("experiment", &["--vary", "tta=flip"]), 2, &["--vary", "at least two"]),
        case(job("experiment", &["--vary", "tta=none,five-crop"]), 2, &["--tta", "five-crop"]),
        case(job("experiment", &["--vary", "lr=0.01,-1"]), 2, &["--lr", "-1"]),
        case(job("experiment", &["--vary", "tta=flip", "--vary", "dropout=2"]), 2, &["--dropout", "2"]),
        case(globals(&["--backend", "nope"], train(&[])), 2, &["--backend", "nope"]),
        case(globals(&["--backend", "all"], train(&[])), 2, &["--backend all is for `experiment`"]),
        case(globals(&["--device", "gpu"], train(&[])), 2, &["--device", "cpu, cuda or cuda:N"]),
        case(globals(&["--device", "cuda:x"], train(&[])), 2, &["--device", "cuda:N"]),
        case(job("extract", &["--no-cache"]), 2, &["--no-cache"]),
        case(job("extract", &["--finetune", "all"]), 2, &["--finetune all", "nothing to cache"]),
        case(job("extract", &["--shard", "4/4"]), 2, &["--shard", "below N", "0/4 … 3/4"]),
        case(job("extract", &["--shard", "2"]), 2, &["--shard", "expected I/N"]),
        case(argv(&["eval", "--model", "run", "--data", "data", "--batch-size", "0"]), 2, &["--batch-size", "≥ 1"]),
        case(argv(&["predict", "--model", "run", "--top-k", "0", "cat.png"]), 2, &["--top-k", "≥ 1"]),
        // Bad inputs: the flags are fine, the files are not (exit status 1).
        case(argv(&["train", "--data", "missing", "--out", "out"]), 1, &["missing", "does not exist"]),
        case(argv(&["train", "--data", "notes.txt", "--out", "out"]), 1, &["notes.txt", "is not a folder"]),
        case(argv(&["train", "--data", "one-class", "--out", "out"]), 1, &["one-class", "found 1 class folder(s)", "at least two"]),
        case(argv(&["train", "--data", "with-empty", "--out", "out"]), 1, &["with-empty/empty", "no images"]),
        case(
            argv(&["train", "--data", "data", "--weights", "missing.safetensors", "--out", "out"]),
            1,
            &["--weights missing.safetensors", "no such file"],
        ),
        case(
            argv(&["train", "--data", "data", "--weights", "junk.safetensors", "--out", "out"]),
            1,
            &["junk.safetensors", "not a valid safetensors file"],
        ),
        case(argv(&["train", "--data", "data", "--no-pretrained", "--out", "notes.txt"]), 1, &["--out notes.txt", "not a folder"]),
        case(argv(&["eval", "--model", "no-run", "--data", "data"]), 1, &["--model no-run", "no such run folder"]),
        case(argv(&["eval", "--model", "run-no-json", "--data", "data"]), 1, &["run-no-json/model.json", "missing"]),
        case(argv(&["eval", "--model", "run-corrupt", "--data", "data"]), 1, &["run-corrupt/model.json", "not a valid model.json"]),
        case(argv(&["eval", "--model", "run-1-class", "--data", "data"]), 1, &["run-1-class/model.json", "1 class(es)"]),
        case(argv(&["eval", "--model", "run-bad-crop", "--data", "data"]), 1, &["run-bad-crop/model.json", "\"preprocess\"", "crop"]),
        case(argv(&["eval", "--model", "run-bad-policy", "--data", "data"]), 1, &["run-bad-policy/model.json", "\"policy\"", "fc9"]),
        case(argv(&["eval", "--model", "run-no-weights", "--data", "data"]), 1, &["run-no-weights/model.safetensors", "missing"]),
        case(argv(&["eval", "--model", "run-other-classes", "--data", "data"]), 1, &["class folder \"cats\"", "birds"]),
        case(argv(&["eval", "--model", "run", "--data", "data"]), 1, &["run/model.safetensors", "not a valid safetensors file"]),
        case(argv(&["predict", "--model", "run", "missing.jpg"]), 1, &["missing.jpg", "no such image file"]),
    ];
    if !cfg!(feature = "tch") {
        cases.push(case(globals(&["--backend", "tch"], train(&[])), 2, &["--backend tch", "not built into this binary", "--features tch"]));
    }

    let mut table = String::from("| command | stderr (the `error:` line) | exit |\n|---|---|---|\n");
    for c in &cases {
        let home = t.join("home");
        let out = Command::new(env!("CARGO_BIN_EXE_alexnet")).args(&c.args).current_dir(t).env("ALEXNET_HOME", &home).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let shown = format!("alexnet {}", c.args.join(" "));
        let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{shown}: no error line in {stderr}"));
        assert_eq!(out.status.code(), Some(c.status), "{shown}: {stderr}");
        assert!(!stderr.contains("panicked"), "{shown}: {stderr}");
        for w in c.want {
            assert!(error.contains(w), "{shown}: {w:?} not in {error:?}");
        }
        if c.status == 2 {
            // Usage errors come before anything else is printed.
            assert_eq!(stderr.lines().next(), Some(error), "{shown}: {stderr}");
        }
        // Nothing was started: no feature cache, no weights fetch, no output folder.
        assert!(!home.exists(), "{shown}: wrote {}", home.display());
        assert!(!t.join("out").exists() && !t.join("runs").exists(), "{shown}: made an output folder");
        assert!(out.stdout.is_empty(), "{shown}: {}", String::from_utf8_lossy(&out.stdout));
        // In the table "…" stands for the options that would let a job start real work.
        let short = shown
            .replace(" --data data --no-pretrained --allow-random-frozen --out out", " …")
            .replace(" --data data --no-pretrained --allow-random-frozen", " …");
        writeln!(table, "| `{}` | {} | {} |", short.replace('|', "\\|"), error.replace('|', "\\|"), c.status).unwrap();
    }
    assert!(cases.len() >= 50, "{} cases", cases.len());
    if let Some(p) = std::env::var_os("ALEXNET_RELIABILITY_TABLE") {
        std::fs::write(p, table).unwrap();
    }
}
