//! The run folder: trained weights plus what is needed to use them (classes, preprocessing).

use alexnet_core::backbone::Backbone;
use alexnet_core::data::{Preprocess, SplitConfig};
use alexnet_core::{AlexNetSpec, FreezePolicy, WeightSet};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `model.json`: how to feed and read the model in `model.safetensors`.
#[derive(Serialize, Deserialize)]
pub struct ModelInfo {
    pub classes: Vec<String>,
    pub preprocess: Preprocess,
    pub policy: String,
    pub backend: String,
    /// The split used in training, so `eval --split test` scores the same images.
    #[serde(default)]
    pub split: SplitConfig,
    /// The pretrained network the model is built on.
    #[serde(default)]
    pub backbone: Backbone,
    /// A frozen described backbone's weights file (the trained head alone is in model.safetensors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone_weights: Option<PathBuf>,
    /// Test-time augmentation the model was selected with (`eval` and `predict` use it).
    #[serde(default)]
    pub tta: alexnet_core::data::Tta,
    /// Ensemble members (`train --ensemble N`): member 0 in `model.safetensors`, member m in
    /// `model.member{m}.safetensors`; their softmax is averaged.
    #[serde(default = "alexnet_core::ensemble::one_member", skip_serializing_if = "alexnet_core::ensemble::is_one_member")]
    pub ensemble: u32,
}

/// The weights file of ensemble member `m` in the run folder `dir` (member 0: [`WEIGHTS`]).
pub fn member_weights(dir: &Path, m: u32) -> PathBuf {
    alexnet_core::ensemble::member_file(&dir.join(WEIGHTS), m)
}

/// Model file names inside a run folder.
pub const WEIGHTS: &str = "model.safetensors";
/// The training checkpoint of a run in progress (removed when the run completes).
pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const INFO: &str = "model.json";

/// A run folder whose `model.json` was read and checked; the weights are loaded separately
/// ([`RunDir::weights`]), so cheap checks come before reading a 230 MB file.
pub struct RunDir {
    pub dir: PathBuf,
    pub info: ModelInfo,
}

impl ModelInfo {
    /// What is wrong with this `model.json`, if anything: the same checks as the flags that
    /// produced it (at least two distinct, non-empty class names; a crop that fits the resize and
    /// gives AlexNet a 6×6 pool5; usable normalisation; a known fine-tune depth; a valid split).
    fn check(&self) -> std::result::Result<(), String> {
        let n = self.classes.len();
        if n < 2 {
            return Err(format!("\"classes\" lists {n} class(es); a model has at least 2"));
        }
        if let Some(i) = self.classes.iter().position(|c| c.is_empty()) {
            return Err(format!("\"classes\"[{i}] is empty"));
        }
        let mut sorted: Vec<&String> = self.classes.iter().collect();
        sorted.sort();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("\"classes\" lists {:?} twice", w[0]));
        }
        let p = &self.preprocess;
        p.validate().map_err(|e| format!("\"preprocess\": {}", plain(e)))?;
        match self.backbone.frozen_graph(p.crop as usize).map_err(|e| format!("\"preprocess\": {}", plain(e)))? {
            None => AlexNetSpec::new(n).with_crop_size(p.crop as usize).validate().map_err(|e| format!("\"preprocess\": {}", plain(e)))?,
            Some(_) if self.backbone_weights.is_none() => return Err(format!("\"backbone_weights\": missing; a {} model needs them", self.backbone)),
            Some(_) => {}
        }
        self.policy.parse::<FreezePolicy>().map_err(|e| format!("\"policy\": {}", plain(e)))?;
        self.split.validate().map_err(|e| format!("\"split\": {}", plain(e)))?;
        if !(1..=alexnet_core::ensemble::MAX_MEMBERS).contains(&self.ensemble) {
            return Err(format!("\"ensemble\": {} members; a model has 1 to {}", self.ensemble, alexnet_core::ensemble::MAX_MEMBERS));
        }
        Ok(())
    }
}

fn plain(e: alexnet_core::Error) -> String {
    match e {
        alexnet_core::Error::Config(m) | alexnet_core::Error::Freeze(m) => m,
        e => e.to_string(),
    }
}

impl RunDir {
    /// Opens a run folder (or the model.safetensors inside one) and checks its `model.json`.
    pub fn open(path: &Path) -> Result<Self> {
        let dir: PathBuf = if path.is_dir() {
            path.to_path_buf()
        } else if path.exists() {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            bail!("--model {}: no such run folder (give a folder written by `alexnet train`)", path.display());
        };
        let info_path = dir.join(INFO);
        let bytes = match std::fs::read(&info_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("{}: missing; --model must be a run folder written by `alexnet train` ({INFO} + {WEIGHTS})", info_path.display())
            }
            Err(e) => return Err(e).with_context(|| info_path.display().to_string()),
        };
        let info: ModelInfo =
            serde_json::from_slice(&bytes).with_context(|| format!("{}: not a valid {INFO} written by `alexnet train`", info_path.display()))?;
        if let Err(msg) = info.check() {
            bail!("{}: {msg}", info_path.display());
        }
        for m in 0..info.ensemble {
            let weights = member_weights(&dir, m);
            if !weights.is_file() {
                let what = if info.ensemble == 1 { "no trained weights".to_string() } else { format!("{} ensemble members", info.ensemble) };
                bail!("{}: missing; the run folder has {INFO} with {what}", weights.display());
            }
        }
        Ok(Self { dir, info })
    }

    /// Loads every member's weights (one for a single model), each checked as [`RunDir::member`].
    pub fn members(&self) -> Result<Vec<WeightSet>> {
        (0..self.info.ensemble).map(|m| self.member(m)).collect()
    }

    /// Loads `model.safetensors` (member 0) and checks it is the network `model.json` describes.
    pub fn weights(&self) -> Result<WeightSet> {
        self.member(0)
    }

    /// Loads member `m`'s weights and checks they are the network `model.json` describes.
    pub fn member(&self, m: u32) -> Result<WeightSet> {
        let path = member_weights(&self.dir, m);
        let w = WeightSet::load_checkpoint(&path)?;
        let (spec, info) = (w.spec(), &self.info);
        if spec.num_classes != info.classes.len() {
            bail!("{}: the model has {} outputs but {INFO} lists {} classes", path.display(), spec.num_classes, info.classes.len());
        }
        if spec.crop_size != info.preprocess.crop as usize {
            bail!(
                "{}: the model was built for {}×{} crops but {INFO} says crop {}",
                path.display(),
                spec.crop_size,
                spec.crop_size,
                info.preprocess.crop
            );
        }
        Ok(w)
    }
}

/// Writes the model (every member of an ensemble) and its info atomically into `dir`; member
/// files of an earlier, larger ensemble in `dir` are removed.
pub fn save(dir: &Path, members: &[WeightSet], info: &ModelInfo) -> Result<Vec<PathBuf>> {
    if members.len() != info.ensemble as usize {
        bail!("{} member weight sets for a model.json of {} members", members.len(), info.ensemble);
    }
    let mut written = vec![];
    for (m, w) in members.iter().enumerate() {
        let path = member_weights(dir, m as u32);
        w.save(&path)?;
        written.push(path);
    }
    for m in info.ensemble..=alexnet_core::ensemble::MAX_MEMBERS {
        let stale = member_weights(dir, m);
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| stale.display().to_string()),
            _ => {}
        }
    }
    alexnet_core::write_atomic(&dir.join(INFO), &serde_json::to_vec_pretty(info)?)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ModelInfo {
        ModelInfo {
            classes: vec!["daisy".into(), "roses".into()],
            preprocess: Preprocess::default(),
            policy: "fc6".into(),
            backend: "candle".into(),
            split: SplitConfig::default(),
            backbone: Backbone::AlexNet,
            backbone_weights: None,
            tta: Default::default(),
            ensemble: 1,
        }
    }

    #[test]
    fn model_json_checks_name_what_is_wrong() {
        info().check().unwrap();
        type Change = fn(&mut ModelInfo);
        let cases: [(Change, &str); 9] = [
            (|i| i.classes.truncate(1), "lists 1 class(es)"),
            (|i| i.classes[1] = String::new(), "\"classes\"[1] is empty"),
            (|i| i.classes[1] = "daisy".into(), "\"daisy\" twice"),
            (|i| i.preprocess.crop = 300, "--crop"),
            (|i| i.preprocess = Preprocess { resize: 100, crop: 100, ..Default::default() }, "pool5"),
            (|i| i.policy = "fc9".into(), "\"policy\": unknown --finetune value \"fc9\""),
            (|i| i.split.test_percent = 100.0, "\"split\": --test-percent 100"),
            (|i| i.ensemble = 0, "\"ensemble\": 0 members"),
            (|i| i.ensemble = 17, "\"ensemble\": 17 members"),
        ];
        for (change, want) in cases {
            let mut i = info();
            change(&mut i);
            let e = i.check().unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
