//! The JSON run report: configuration, provenance, timings, learning curve and final metrics.

use crate::arch::LayerId;
use crate::cache::CacheStats;
use crate::metrics::EvalMetrics;
use crate::weights::LayerSource;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One point of the learning curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub step: usize,
    /// Fractional epoch (steps × batch / train size).
    pub epoch: f64,
    pub lr: f32,
    /// Mean training loss since the previous point.
    pub train_loss: f32,
    /// Training accuracy since the previous point (with dropout and augmentation on).
    pub train_accuracy: f64,
    pub val_accuracy: Option<f64>,
    pub test_accuracy: Option<f64>,
    /// Seconds of training (not evaluation) so far.
    pub train_seconds: f64,
}

/// Wall-clock figures of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Images run through the frozen prefix in this run (cache misses).
    pub extracted_images: usize,
    /// Crops run through the prefix (images × missing views).
    pub extracted_views: usize,
    pub extract_seconds: f64,
    pub extract_images_per_second: Option<f64>,
    pub extract_views_per_second: Option<f64>,
    pub train_seconds: f64,
    pub train_samples: usize,
    pub train_samples_per_second: f64,
    pub seconds_per_epoch: f64,
    pub eval_seconds: f64,
}

/// Split sizes and data warnings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    pub root: String,
    pub classes: Vec<String>,
    pub class_counts: Vec<usize>,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub warnings: Vec<String>,
    /// Files left out as unusable (`--skip-bad-images`), with the reason.
    pub skipped: Vec<SkippedFile>,
    /// Byte-identical files found (kept together in one split) and class conflicts among them.
    #[serde(default)]
    pub duplicates: DuplicateSummary,
    /// Seconds spent reading, hashing and checking every file before training.
    #[serde(default)]
    pub check_seconds: f64,
    /// Whether that check fully decoded every file (without the cache; with it, extraction does).
    #[serde(default)]
    pub check_decoded: bool,
}

/// A file left out of a run, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    pub path: String,
    pub reason: String,
}

/// Byte-identical images in the data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DuplicateSummary {
    /// Groups of two or more identical files.
    pub groups: usize,
    /// Files in those groups (every copy).
    pub files: usize,
    /// Groups whose copies are filed under more than one class: relative paths of each.
    pub class_conflicts: Vec<Vec<String>>,
    /// What was done with them: `skip` (every copy left out) or `keep`.
    pub on_conflict: crate::data::OnConflict,
}

/// Everything about one training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub tool: String,
    /// The pretrained network (`alexnet`, `inception-v3`).
    #[serde(default)]
    pub backbone: crate::backbone::Backbone,
    pub backend: String,
    pub device: String,
    pub policy: String,
    pub cut: String,
    pub config: serde_json::Value,
    pub weights_file: Option<String>,
    pub layers: BTreeMap<LayerId, LayerSource>,
    pub data: DataSummary,
    pub cache: Option<CacheSummary>,
    pub timings: Timings,
    pub curve: Vec<CurvePoint>,
    /// Step whose weights are the saved model: the best on validation, or the last
    /// (`config.train.select`).
    pub best_step: usize,
    pub val: EvalMetrics,
    /// Validation accuracy with the selection bias removed ([`crate::selection`]): each model's
    /// step chosen on one half of the validation set and scored on the other, both ways. `val`
    /// scores the chosen step on the set that chose it, which overstates it (keeping the last
    /// step chooses nothing, so there the two are equal). `None` without a
    /// validation set, or for runs resumed from checkpoints that lack the earlier points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_crossfit: Option<f64>,
    pub test: EvalMetrics,
    /// The cross-validation fold that was the test part (`experiment --folds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<crate::data::Fold>,
    /// Which repeat (seed offset) of its setting this run is (`experiment --repeats`; 0 alone).
    #[serde(default)]
    pub repeat: u64,
    /// The experiment's variant of the settings this run used (`experiment --vary`: `tta=flip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    /// An ensemble's members (`--ensemble N`, N ≥ 2), each alone and the ensemble of the first
    /// ones; empty for a single model. `val` and `test` are then the whole ensemble's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<crate::ensemble::MemberReport>,
    /// The head-first stage in front of this run's fine-tuning (`--head-first`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_first: Option<crate::head_first::HeadStage>,
}

impl RunReport {
    /// True when the run kept its last step's weights (`config.train.select`); reports written
    /// before the choice existed kept the best on validation.
    pub fn kept_last(&self) -> bool {
        let select = self.config.pointer("/train/select").and_then(|v| serde_json::from_value(v.clone()).ok());
        select == Some(crate::train::Select::Last)
    }

    /// The kept model's validation accuracy, or `None` for a run without a validation set
    /// (`--val-percent 0`), whose recorded accuracy of 0 means nothing.
    pub fn val_accuracy(&self) -> Option<f64> {
        (self.val.samples > 0).then_some(self.val.accuracy)
    }
}

/// Where the cache was and what it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheSummary {
    pub dir: String,
    pub views: u32,
    pub loaded_entries: usize,
    pub written_entries: usize,
    pub discarded_chunks: Vec<String>,
}

impl CacheSummary {
    /// From a cache's statistics.
    pub fn new(dir: &std::path::Path, views: u32, s: &CacheStats) -> Self {
        Self {
            dir: dir.display().to_string(),
            views,
            loaded_entries: s.loaded_entries,
            written_entries: s.written_entries,
            discarded_chunks: s.discarded_chunks.clone(),
        }
    }
}
