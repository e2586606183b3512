//! Resumable training. At every evaluation point the loop's state — trainable weights, the
//! best-so-far weights, the optimiser's buffers and step count, the dropout generator's position,
//! the data order's position and the learning curve — goes into one safetensors file, written
//! atomically. A killed run started again from it ends bit-identical to an uninterrupted one.

use crate::arch::LayerId;
use crate::backend::TrainState;
use crate::report::CurvePoint;
use crate::weights::{WeightSet, parse_safetensors, write_safetensors};
use crate::{Error, Result, atomic};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Where the training loop stands: enough to replay its data order and continue its curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Steps taken.
    pub step: usize,
    /// The run's step budget (a resumed run must have the same).
    pub total: usize,
    /// Epochs begun (the data order is reshuffled at each).
    pub epoch: usize,
    /// Batches of the current epoch already trained on.
    pub batch_in_epoch: usize,
    /// Samples trained on.
    pub samples: usize,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub curve: Vec<CurvePoint>,
    /// Validation accuracy of the best point so far (`None` without a validation set).
    pub best_score: Option<f64>,
    pub best_step: usize,
    /// Validation probabilities at each evaluation point so far (stored as the tensor
    /// `val_probs`, `[points, samples, classes]`, not in the JSON).
    #[serde(skip)]
    pub val_probs: Vec<crate::HostTensor>,
}

/// A checkpoint read back: loop progress, current and best weights, optimiser state.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub progress: Progress,
    pub weights: WeightSet,
    pub best: WeightSet,
    pub train_state: TrainState,
}

const KIND: &str = "alexnet-rs training checkpoint v1";

/// The tensor holding [`Progress::val_probs`] (absent in checkpoints written before it existed:
/// the resumed run then reports no cross-fitted validation accuracy).
const VAL_PROBS: &str = "val_probs";

/// Writes a checkpoint atomically. Only the `trainable` layers' weights are stored (the frozen
/// ones come from the run's weights file); `config` (the job's configuration as JSON) is stored
/// so a resume with other settings is refused with the difference named.
pub fn save(
    path: &Path,
    config: &str,
    trainable: &[LayerId],
    progress: &Progress,
    weights: &WeightSet,
    best: &WeightSet,
    state: &TrainState,
) -> Result<()> {
    let mut tensors = BTreeMap::new();
    let best_is_current = progress.best_step == progress.step;
    for id in trainable {
        for name in [id.weight_name(), id.bias_name()] {
            tensors.insert(format!("weights/{name}"), weights.get(&name).expect("trainable parameter").clone());
            if !best_is_current {
                tensors.insert(format!("best/{name}"), best.get(&name).expect("trainable parameter").clone());
            }
        }
    }
    for (name, t) in &state.buffers {
        tensors.insert(format!("optim/{name}"), t.clone());
    }
    if let Some(first) = progress.val_probs.first() {
        let mut shape = vec![progress.val_probs.len()];
        shape.extend_from_slice(&first.shape);
        let data = progress.val_probs.iter().flat_map(|t| t.data.iter().copied()).collect();
        tensors.insert(VAL_PROBS.to_string(), crate::HostTensor::new(shape, data)?);
    }
    let mut meta = HashMap::new();
    meta.insert("alexnet.kind".to_string(), KIND.to_string());
    meta.insert("alexnet.config".to_string(), config.to_string());
    meta.insert("alexnet.progress".to_string(), serde_json::to_string(progress).map_err(|e| Error::Config(e.to_string()))?);
    meta.insert("alexnet.optimizer_steps".to_string(), state.steps.to_string());
    meta.insert("alexnet.dropout_position".to_string(), state.dropout_position.to_string());
    // The run folder appears with the first checkpoint, not before the job has started well.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    atomic::write(path, &write_safetensors(&tensors, meta)?)
}

/// The configuration a checkpoint was written with (JSON), to compare before any work. Reads
/// only the file's header, not its (hundreds of MB of) tensors.
pub fn stored_config(path: &Path) -> Result<String> {
    use std::io::Read;
    let bad = |msg: String| Error::Checkpoint { path: path.to_path_buf(), msg };
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| bad("too short for a safetensors file; delete it to start the run afresh".into()))?;
    let len = u64::from_le_bytes(len);
    let mut header = Vec::new();
    f.take(len).read_to_end(&mut header).map_err(|e| Error::io(path, e))?;
    let header: serde_json::Value = (header.len() as u64 == len)
        .then(|| serde_json::from_slice(&header).ok())
        .flatten()
        .ok_or_else(|| bad("not a valid safetensors header; delete it to start the run afresh".into()))?;
    let meta = &header["__metadata__"];
    if meta["alexnet.kind"].as_str() != Some(KIND) {
        return Err(bad("not a training checkpoint of this tool (delete it, or choose another --out)".into()));
    }
    meta["alexnet.config"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| bad("metadata alexnet.config missing; delete it to start the run afresh".into()))
}

fn parse(path: &Path, bytes: &[u8]) -> Result<crate::weights::Parsed> {
    let bad = |msg: String| Error::Checkpoint { path: path.to_path_buf(), msg };
    let (tensors, meta) = parse_safetensors(bytes).map_err(|e| bad(format!("{e}; delete it to start the run afresh")))?;
    if meta.get("alexnet.kind").map(String::as_str) != Some(KIND) {
        return Err(bad("not a training checkpoint of this tool (delete it, or choose another --out)".into()));
    }
    for k in ["alexnet.config", "alexnet.progress", "alexnet.optimizer_steps", "alexnet.dropout_position"] {
        if !meta.contains_key(k) {
            return Err(bad(format!("metadata {k} missing; delete it to start the run afresh")));
        }
    }
    Ok((tensors, meta))
}

/// Reads a checkpoint onto `base` (the run's initial weights): the trainable layers are replaced
/// from the file, with names and shapes checked.
pub fn load(path: &Path, base: &WeightSet, trainable: &[LayerId]) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (mut tensors, meta) = parse(path, &bytes)?;
    let bad = |msg: String| Error::Checkpoint { path: path.to_path_buf(), msg };
    let mut progress: Progress = serde_json::from_str(&meta["alexnet.progress"]).map_err(|e| bad(format!("progress: {e}")))?;
    if let Some(t) = tensors.remove(VAL_PROBS) {
        let point = t
            .shape
            .get(1..)
            .filter(|s| s.len() == 2)
            .ok_or_else(|| bad(format!("{VAL_PROBS} has shape {:?}, not [points, samples, classes]", t.shape)))?;
        progress.val_probs = (0..t.batch()).map(|i| crate::HostTensor::new(point.to_vec(), t.row(i).to_vec())).collect::<Result<_>>()?;
    }
    let steps = meta["alexnet.optimizer_steps"].parse().map_err(|e| bad(format!("optimizer steps: {e}")))?;
    let dropout_position = meta["alexnet.dropout_position"].parse().map_err(|e| bad(format!("dropout position: {e}")))?;
    let best_is_current = progress.best_step == progress.step;
    let mut weights = base.clone();
    let mut best = base.clone();
    for id in trainable {
        let mut take = |prefix: &str| -> Result<[crate::HostTensor; 2]> {
            let mut get = |n: String| tensors.remove(&format!("{prefix}/{n}")).ok_or_else(|| bad(format!("{prefix}/{n} missing")));
            Ok([get(id.weight_name())?, get(id.bias_name())?])
        };
        let [w, b] = take("weights")?;
        weights.set_trained(*id, w, b).map_err(|e| bad(e.to_string()))?;
        if !best_is_current {
            let [w, b] = take("best")?;
            best.set_trained(*id, w, b).map_err(|e| bad(e.to_string()))?;
        }
    }
    if best_is_current {
        best = weights.clone();
    }
    let mut buffers = BTreeMap::new();
    for (name, t) in tensors {
        match name.strip_prefix("optim/") {
            Some(n) => {
                buffers.insert(n.to_string(), t);
            }
            None => return Err(bad(format!("unexpected tensor {name} (a checkpoint of another fine-tune depth?)"))),
        }
    }
    Ok(Checkpoint { progress, weights, best, train_state: TrainState { steps, dropout_position, buffers } })
}

/// The top-level settings that differ between two configurations (JSON objects), as
/// `key: old → new`, for the message that refuses a resume with other settings.
pub fn config_differences(stored: &str, current: &str) -> Vec<String> {
    let (a, b): (serde_json::Value, serde_json::Value) = match (serde_json::from_str(stored), serde_json::from_str(current)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return vec!["the stored configuration cannot be read".into()],
    };
    let mut out = Vec::new();
    diff("", &a, &b, &mut out);
    out
}

fn diff(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let null = serde_json::Value::Null;
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                diff(&p, x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
            }
        }
        _ if a != b => out.push(format!("{prefix}: {a} → {b}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostTensor;
    use crate::arch::AlexNetSpec;

    fn progress(step: usize, best_step: usize) -> Progress {
        Progress {
            step,
            total: 10,
            epoch: 2,
            batch_in_epoch: 1,
            samples: 40,
            train_seconds: 1.25,
            eval_seconds: 0.5,
            curve: vec![],
            best_score: Some(0.75),
            best_step,
            // Two evaluation points' validation probabilities (2 samples, 3 classes).
            val_probs: (0..2).map(|i| HostTensor::new(vec![2, 3], (0..6).map(|j| (i * 6 + j) as f32 / 16.0).collect()).unwrap()).collect(),
        }
    }

    #[test]
    fn round_trips_exactly_and_refuses_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("checkpoint.safetensors");
        let base = WeightSet::initialised(&AlexNetSpec::new(3), 1);
        let mut now = base.clone();
        let mut best = base.clone();
        let t = |v: f32, shape: Vec<usize>| HostTensor { data: vec![v; shape.iter().product()], shape };
        now.set_trained(LayerId::Fc8, t(0.5, vec![3, 4096]), t(0.25, vec![3])).unwrap();
        best.set_trained(LayerId::Fc8, t(-0.5, vec![3, 4096]), t(1.0, vec![3])).unwrap();
        let mut buffers = BTreeMap::new();
        buffers.insert("classifier.6.bias.momentum_buffer".to_string(), t(0.125, vec![3]));
        let state = TrainState { steps: 4, dropout_position: 1 << 70, buffers };
        for (step, best_step) in [(4, 2), (4, 4)] {
            save(&p, "{\"a\":1}", &[LayerId::Fc8], &progress(step, best_step), &now, &best, &state).unwrap();
            let c = load(&p, &base, &[LayerId::Fc8]).unwrap();
            assert_eq!(c.progress, progress(step, best_step));
            assert_eq!(c.weights.layer(LayerId::Fc8), now.layer(LayerId::Fc8));
            assert_eq!(c.weights.layer(LayerId::Fc7), base.layer(LayerId::Fc7));
            let want_best = if step == best_step { &now } else { &best };
            assert_eq!(c.best.layer(LayerId::Fc8), want_best.layer(LayerId::Fc8));
            assert_eq!(c.train_state, state);
            assert_eq!(stored_config(&p).unwrap(), "{\"a\":1}");
        }
        // A weights file is not a checkpoint; nor is garbage.
        base.save(&dir.path().join("w.safetensors")).unwrap();
        let e = load(&dir.path().join("w.safetensors"), &base, &[LayerId::Fc8]).unwrap_err().to_string();
        assert!(e.contains("not a training checkpoint"), "{e}");
        let e = stored_config(&dir.path().join("w.safetensors")).unwrap_err().to_string();
        assert!(e.contains("not a training checkpoint"), "{e}");
        std::fs::write(&p, b"garbage").unwrap();
        for e in [load(&p, &base, &[LayerId::Fc8]).unwrap_err().to_string(), stored_config(&p).unwrap_err().to_string()] {
            assert!(e.contains("checkpoint.safetensors") && e.contains("delete it"), "{e}");
        }
    }

    #[test]
    fn config_differences_name_the_changed_settings() {
        let d = config_differences(r#"{"train":{"lr":0.005,"batch_size":64},"seed":0}"#, r#"{"train":{"lr":0.01,"batch_size":64},"seed":0}"#);
        assert_eq!(d, vec!["train.lr: 0.005 → 0.01".to_string()]);
        assert!(config_differences(r#"{"a":[1,2]}"#, r#"{"a":[1,2]}"#).is_empty());
    }
}
