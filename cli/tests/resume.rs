//! Training survives a kill: `alexnet train` is SIGKILLed once during feature extraction and once
//! during training, rerun with the same command each time, and ends with a model bit-identical
//! to an uninterrupted run's; an ensemble killed in its second member resumes both members.

use alexnet_core::conformance::{flower_subset, pretrained_weights};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tests run one at a time, so the reported times are not inflated by each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Run {
    data: PathBuf,
    weights: PathBuf,
    home: PathBuf,
}

impl Run {
    fn command(&self, out: &Path, cache: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_alexnet"));
        let s = |p: &Path| p.to_str().unwrap().to_string();
        c.args(["--backend", "candle", "train", "--data", &s(&self.data), "--weights", &s(&self.weights)])
            .args(["--finetune", "fc6", "--steps", "12", "--eval-every", "3", "--batch-size", "8", "--cache-views", "4"])
            .args(["--extract-batch", "8", "--cache-dir", &s(cache), "--out", &s(out)])
            // Mixup's draws come from the seed and step, so a resumed run mixes the same.
            .args(["--mixup", "0.4"])
            .env("ALEXNET_HOME", &self.home)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    fn finish(&self, out: &Path, cache: &Path) -> (String, f64) {
        let t = Instant::now();
        let o = self.command(out, cache).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{stderr}");
        (stderr, t.elapsed().as_secs_f64())
    }
}

/// Waits (polling) until `ready` holds, then SIGKILLs the child; panics if it exits first.
fn kill_when(mut child: Child, what: &str, ready: impl Fn() -> bool) -> f64 {
    let t = Instant::now();
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the run ended ({status}) before {what}: {err}");
        }
        assert!(t.elapsed() < Duration::from_secs(600), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no handler runs, nothing is flushed
    child.wait().unwrap();
    t.elapsed().as_secs_f64()
}

fn chunks(cache: &Path) -> usize {
    walk(cache).iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("chunk-")).count()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    rd.flatten().flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
}

#[test]
fn killed_twice_resumes_to_the_same_model_bit_for_bit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let run = Run { data: flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), 20), weights: pretrained_weights(), home: tmp.path().to_path_buf() };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (cache_a, cache_b) = (tmp.path().join("cache-a"), tmp.path().join("cache-b"));
    let (_, t_whole) = run.finish(&a, &cache_a);
    assert!(!a.join("checkpoint.safetensors").exists(), "a finished run leaves no checkpoint");

    // Kill 1: during extraction, as soon as the first chunk of features is on disk.
    let t1 = kill_when(run.command(&b, &cache_b).spawn().unwrap(), "the first cache chunk", || chunks(&cache_b) > 0);
    let kept = chunks(&cache_b);
    // Kill 2: during training, as soon as the first checkpoint is on disk.
    let ckpt = b.join("checkpoint.safetensors");
    let t2 = kill_when(run.command(&b, &cache_b).spawn().unwrap(), "the first checkpoint", || ckpt.exists());
    assert!(!b.join("model.safetensors").exists(), "the second kill came after the run had finished");
    let (stderr, t3) = run.finish(&b, &cache_b);
    assert!(stderr.contains("continuing it") && stderr.contains("resuming from step"), "{stderr}");
    assert!(!ckpt.exists(), "the completed run removed its checkpoint");
    assert!(chunks(&cache_b) > kept, "the first kill came after extraction had finished");

    let model = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(model(&a) == model(&b), "the resumed model differs from the uninterrupted one");
    let report = |d: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(d.join("report.json")).unwrap()).unwrap() };
    let (ra, rb) = (report(&a), report(&b));
    // The cross-fitted validation needs every evaluation point's probabilities: the resumed
    // run has the ones before the kill from its checkpoint.
    assert!(ra["val_crossfit"].is_f64(), "{}", ra["val_crossfit"]);
    for k in ["best_step", "val", "val_crossfit", "test"] {
        assert_eq!(ra[k], rb[k], "{k}");
    }
    let accuracies = |r: &serde_json::Value| -> Vec<(serde_json::Value, serde_json::Value, serde_json::Value)> {
        r["curve"].as_array().unwrap().iter().map(|p| (p["step"].clone(), p["train_loss"].clone(), p["val_accuracy"].clone())).collect()
    };
    assert_eq!(accuracies(&ra), accuracies(&rb), "learning curves");
    eprintln!(
        "uninterrupted {t_whole:.1}s; interrupted: killed after {t1:.1}s ({kept} cache chunk(s) kept), then after {t2:.1}s (first checkpoint), finished in {t3:.1}s; \
         time lost to the two kills (restarts and redone work): {:.1}s",
        t1 + t2 + t3 - t_whole
    );
}

#[test]
fn a_checkpoint_of_other_settings_is_refused_naming_the_difference() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let run = Run { data: flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), 6), weights: pretrained_weights(), home: tmp.path().to_path_buf() };
    let (out, cache) = (tmp.path().join("run"), tmp.path().join("cache"));
    let ckpt = out.join("checkpoint.safetensors");
    kill_when(run.command(&out, &cache).spawn().unwrap(), "the first checkpoint", || ckpt.exists());
    let o = run.command(&out, &cache).args(["--lr", "0.02"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("train.lr: 0.01 → 0.02") && stderr.contains("--restart"), "{stderr}");
    // --restart discards it and runs afresh to the end.
    let o = run.command(&out, &cache).args(["--lr", "0.02", "--restart"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && stderr.contains("discarded the checkpoint"), "{stderr}");
    assert!(out.join("model.safetensors").exists() && !ckpt.exists());
}

/// An ensemble killed while its second member trains continues from both members' checkpoints
/// (the first one's finished, the second one's last) to the same members an uninterrupted run
/// saves, bit for bit.
#[test]
fn an_ensemble_killed_in_its_second_member_resumes_to_the_same_members() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let run = Run { data: flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), 6), weights: pretrained_weights(), home: tmp.path().to_path_buf() };
    let (a, b, cache) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("cache"));
    let ensemble = |out: &Path| {
        let mut c = run.command(out, &cache);
        c.args(["--ensemble", "2"]);
        c
    };
    let o = ensemble(&a).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Member 1 checkpoints beside member 0's, whose checkpoint is then at its last step.
    let second = b.join("checkpoint.member1.safetensors");
    kill_when(ensemble(&b).spawn().unwrap(), "the second member's first checkpoint", || second.exists());
    assert!(!b.join("model.safetensors").exists(), "the kill came after the run had finished");
    let o = ensemble(&b).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("resuming from step 12 of 12") && stderr.matches("resuming from step").count() == 2, "{stderr}");
    for f in ["checkpoint.safetensors", "checkpoint.member1.safetensors"] {
        assert!(!b.join(f).exists(), "the completed run removed {f}");
    }
    for f in ["model.safetensors", "model.member1.safetensors"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs from the uninterrupted run's");
    }
    let report = |d: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(d.join("report.json")).unwrap()).unwrap() };
    // Everything but the timings (train_seconds along the members' curves).
    let scores = |d: &Path| -> serde_json::Value {
        let mut r = report(d);
        for m in r["members"].as_array_mut().unwrap() {
            m["curve"].as_array_mut().unwrap().iter_mut().for_each(|p| p["train_seconds"] = serde_json::Value::Null);
        }
        assert!(r["val_crossfit"].is_f64() && r["members"][1]["ensemble_val_crossfit"].is_f64(), "{r}");
        serde_json::json!([r["members"], r["val"], r["val_crossfit"], r["test"]])
    };
    assert_eq!(scores(&a), scores(&b));
}

/// `--head-first`: the head stage (fc6–fc8 on pool5 features) and then conv5–fc8; killed in the
/// deep stage, the rerun skips the finished head stage and ends with the uninterrupted model.
#[test]
fn a_head_first_run_killed_in_its_deep_stage_resumes_to_the_same_model() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let run = Run { data: flower_subset(env!("CARGO_MANIFEST_DIR"), tmp.path(), 6), weights: pretrained_weights(), home: tmp.path().to_path_buf() };
    let (a, b, cache) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("cache"));
    let deep = |out: &Path| {
        let mut c = run.command(out, &cache);
        // The later --finetune replaces the earlier.
        c.args(["--finetune", "conv5", "--head-first", "6"]);
        c
    };
    let o = deep(&a).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("head first: training fc6–fc8 alone for 6 steps, then fine-tuning conv5–fc8"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        (report["policy"].as_str(), report["head_first"]["policy"].as_str(), report["head_first"]["steps"].as_u64()),
        (Some("conv5"), Some("fc6"), Some(6))
    );
    assert_eq!(report["layers"]["conv5"]["source"], "trained");
    // The deep stage's first checkpoint is written once the head stage is done.
    let deep_checkpoint = b.join("checkpoint.safetensors");
    kill_when(deep(&b).spawn().unwrap(), "the deep stage's first checkpoint", || deep_checkpoint.exists());
    assert!(b.join("checkpoint.head.safetensors").exists() && !b.join("model.safetensors").exists(), "the kill came after the deep stage");
    let o = deep(&b).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // The head stage resumes at its end, the deep stage where it was killed.
    assert!(stderr.contains("resuming from step 6 of 6") && stderr.matches("resuming from step").count() == 2, "{stderr}");
    for f in ["checkpoint.safetensors", "checkpoint.head.safetensors"] {
        assert!(!b.join(f).exists(), "the completed run removed {f}");
    }
    assert!(std::fs::read(a.join("model.safetensors")).unwrap() == std::fs::read(b.join("model.safetensors")).unwrap(), "the resumed model differs");
    let resumed: serde_json::Value = serde_json::from_slice(&std::fs::read(b.join("report.json")).unwrap()).unwrap();
    let scores = |r: &serde_json::Value| serde_json::json!([r["head_first"]["val_accuracy"], r["head_first"]["test_accuracy"], r["val"], r["test"]]);
    assert_eq!(scores(&report), scores(&resumed));
}
