//! The run folder: trained weights plus what is needed to use them (classes, preprocessing).

use alexnet_core::data::{Preprocess, SplitConfig};
use alexnet_core::WeightSet;
use anyhow::{Context, Result};
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
}

/// Model file names inside a run folder.
pub const WEIGHTS: &str = "model.safetensors";
pub const INFO: &str = "model.json";

/// Loads a run folder (or the model.safetensors inside one).
pub fn load(path: &Path) -> Result<(WeightSet, ModelInfo)> {
    let dir: PathBuf = if path.is_dir() { path.to_path_buf() } else { path.parent().unwrap_or(Path::new(".")).to_path_buf() };
    let info_path = dir.join(INFO);
    let info: ModelInfo = serde_json::from_slice(
        &std::fs::read(&info_path).with_context(|| format!("{}: not a run folder written by `alexnet train`", info_path.display()))?,
    )
    .with_context(|| format!("{} is not valid", info_path.display()))?;
    let weights = WeightSet::load_checkpoint(&dir.join(WEIGHTS))?;
    anyhow::ensure!(
        weights.spec().num_classes == info.classes.len(),
        "{}: the model has {} outputs but model.json lists {} classes",
        dir.display(),
        weights.spec().num_classes,
        info.classes.len()
    );
    Ok((weights, info))
}

/// Writes the model and its info atomically into `dir`.
pub fn save(dir: &Path, weights: &WeightSet, info: &ModelInfo) -> Result<()> {
    weights.save(&dir.join(WEIGHTS))?;
    alexnet_core::write_atomic(&dir.join(INFO), &serde_json::to_vec_pretty(info)?)?;
    Ok(())
}
