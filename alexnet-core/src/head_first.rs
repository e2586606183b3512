//! Head first, then deeper (`--head-first STEPS`): before fine-tuning pretrained layers, train
//! the layers without pretrained weights (fc6–fc8 with the conv-only weights here) alone, on
//! cached features of the frozen pretrained ones, then fine-tune the deeper policy from there.
//!
//! Why: a deep policy that starts with random fc6/fc7 sends their noisy gradients into the
//! pretrained conv layers for its first hundreds of steps, and those steps are the expensive,
//! uncached ones. Training the new layers first (cheap: cached features) and then fine-tuning
//! everything is "linear probing, then fine-tuning" (Kumar et al., ICLR 2022, who show it
//! distorts the pretrained features less) and Keras' transfer-learning recipe; it lets the deep
//! stage be short.

use crate::arch::{AlexNetSpec, LayerId};
use crate::backend::Backend;
use crate::freeze::FreezePolicy;
use crate::job::{JobConfig, run};
use crate::observer::Observer;
use crate::weights::WeightSet;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the head-first stage did, recorded in the run's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadStage {
    /// The policy it trained (`fc6`: fc6–fc8).
    pub policy: String,
    pub steps: usize,
    /// Its model's accuracy on validation and test: the deep stage's starting point, and on a
    /// fold the paired comparison with the head alone.
    pub val_accuracy: f64,
    pub test_accuracy: f64,
    pub train_seconds: f64,
    pub extract_seconds: f64,
}

/// The layers without pretrained weights (always fc8), as the policy that trains exactly them.
pub fn new_layers(weights: &WeightSet) -> FreezePolicy {
    FreezePolicy::from_layer(LayerId::ALL.into_iter().find(|l| !weights.is_learned(*l)).unwrap_or(LayerId::Fc8))
}

/// The head policy of `cfg`'s weights, read from the weights file alone (before any data).
pub fn head_policy(cfg: &JobConfig) -> Result<FreezePolicy> {
    // The class count only sizes fc8, which is never pretrained.
    let spec = AlexNetSpec::new(2).with_crop_size(cfg.preprocess.crop as usize);
    let weights = match &cfg.weights {
        Some(path) => WeightSet::load_pretrained(path, &spec, cfg.init_seed)?,
        None => WeightSet::initialised(&spec, cfg.init_seed),
    };
    Ok(new_layers(&weights))
}

/// True when `policy` fine-tunes layers in front of `head`'s: only then is there a deeper stage.
pub fn goes_deeper(policy: FreezePolicy, head: FreezePolicy) -> bool {
    policy.first_trainable() < head.first_trainable()
}

/// Refuses `--head-first` with settings it cannot combine with (checked by
/// [`JobConfig::validate`]).
pub fn check_settings(cfg: &JobConfig) -> Result<()> {
    let bad = |msg: String| Err(Error::Config(msg));
    if cfg.head_first == 0 {
        return Ok(());
    }
    if cfg.ensemble > 1 {
        return bad("--head-first with --ensemble is not supported: train the ensemble's members one by one, or leave one of the two out".into());
    }
    if cfg.backbone != crate::backbone::Backbone::AlexNet {
        return bad(format!(
            "--head-first is for fine-tuning AlexNet deeper than its new layers; {} trains only its head, so leave --head-first out",
            cfg.backbone
        ));
    }
    Ok(())
}

/// Refuses `--head-first` where the weights leave nothing to do after it, naming the flag and
/// the fix; returns the head's policy.
pub fn check(cfg: &JobConfig) -> Result<FreezePolicy> {
    let bad = |msg: String| Err(Error::Config(msg));
    let head = head_policy(cfg)?;
    if head == FreezePolicy::all() {
        return bad("--head-first trains the new layers on features of the pretrained ones, but no layer is pretrained (give --weights, or leave --head-first out)".into());
    }
    let policy = cfg.model.policy;
    if !goes_deeper(policy, head) {
        return bad(format!(
            "--head-first trains {} first, but --finetune {policy} trains nothing deeper; use a deeper --finetune (e.g. all), or leave --head-first out",
            head.trained_span()
        ));
    }
    Ok(head)
}

/// The head stage's job: `cfg` with the head's policy and `cfg.head_first` steps, its own
/// checkpoint file beside the deep stage's.
pub fn stage_config(cfg: &JobConfig, head: FreezePolicy) -> JobConfig {
    let steps = cfg.head_first;
    let mut stage = cfg.clone();
    stage.head_first = 0;
    stage.model.policy = head;
    stage.train.max_steps = Some(steps);
    // Enough epochs that the step budget ends the stage.
    stage.train.epochs = steps;
    stage.train.eval_every = cfg.train.eval_every.map(|e| e.min(steps));
    stage.checkpoint = cfg.checkpoint.as_deref().map(checkpoint_file);
    stage
}

/// `checkpoint.safetensors` → `checkpoint.head.safetensors`.
pub fn checkpoint_file(path: &Path) -> PathBuf {
    let stem = path.file_stem().map_or_else(|| "checkpoint".into(), |s| s.to_string_lossy().into_owned());
    match path.extension() {
        Some(ext) => path.with_file_name(format!("{stem}.head.{}", ext.to_string_lossy())),
        None => path.with_file_name(format!("{stem}.head")),
    }
}

/// Runs the head stage of `cfg` (checked by [`check`]) and returns its trained weights, the deep
/// stage's start, with its summary.
pub fn run_stage(backend: &dyn Backend, cfg: &JobConfig, head: FreezePolicy, obs: &dyn Observer) -> Result<(WeightSet, HeadStage)> {
    let stage = stage_config(cfg, head);
    obs.message(&format!(
        "head first: training {} alone for {} steps, then fine-tuning {} from that head for --steps",
        head.trained_span(),
        cfg.head_first,
        cfg.model.policy.trained_span()
    ));
    let (report, mut weights) = run(backend, &stage, obs)?;
    let weights = weights.pop().ok_or_else(|| Error::Config("the head stage returned no model".into()))?;
    obs.message(&format!(
        "head first: {} after {} steps: val {:.2}%, test {:.2}%; now fine-tuning {}",
        head.trained_span(),
        cfg.head_first,
        100.0 * report.val.accuracy,
        100.0 * report.test.accuracy,
        cfg.model.policy.trained_span()
    ));
    let summary = HeadStage {
        policy: head.to_string(),
        steps: cfg.head_first,
        val_accuracy: report.val.accuracy,
        test_accuracy: report.test.accuracy,
        train_seconds: report.timings.train_seconds,
        extract_seconds: report.timings.extract_seconds,
    };
    Ok((weights, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::LayerSource;

    #[test]
    fn the_head_is_the_layers_without_pretrained_weights() {
        let spec = AlexNetSpec::new(5);
        let mut w = WeightSet::initialised(&spec, 0);
        assert_eq!(new_layers(&w), FreezePolicy::all());
        for l in [LayerId::Conv1, LayerId::Conv2, LayerId::Conv3, LayerId::Conv4, LayerId::Conv5] {
            w.set_source(l, LayerSource::Pretrained { file: "conv.safetensors".into() });
        }
        let head = new_layers(&w);
        assert_eq!(head, FreezePolicy::from_layer(LayerId::Fc6));
        assert!(goes_deeper(FreezePolicy::all(), head));
        assert!(goes_deeper(FreezePolicy::from_layer(LayerId::Conv5), head));
        assert!(!goes_deeper(head, head));
        assert!(!goes_deeper(FreezePolicy::from_layer(LayerId::Fc7), head));
    }

    #[test]
    fn the_stage_trains_the_head_for_its_steps_with_its_own_checkpoint() {
        let mut cfg = JobConfig::new("photos");
        cfg.model.policy = FreezePolicy::all();
        cfg.head_first = 300;
        cfg.train.eval_every = Some(1000);
        cfg.checkpoint = Some(PathBuf::from("runs/x/checkpoint.safetensors"));
        let head = FreezePolicy::from_layer(LayerId::Fc6);
        let s = stage_config(&cfg, head);
        assert_eq!((s.model.policy, s.head_first, s.train.max_steps, s.train.eval_every), (head, 0, Some(300), Some(300)));
        assert_eq!(s.checkpoint.as_deref(), Some(Path::new("runs/x/checkpoint.head.safetensors")));
        // Everything else is the deep stage's recipe.
        assert_eq!((s.train.lr, s.train.seed, s.cache.clone(), s.preprocess), (cfg.train.lr, cfg.train.seed, cfg.cache.clone(), cfg.preprocess));
    }

    #[test]
    fn head_first_where_it_cannot_apply_is_an_error_naming_the_fix() {
        let mut cfg = JobConfig::new("photos");
        cfg.head_first = 100;
        // No weights: nothing is pretrained, so there is no head to train first.
        cfg.model.policy = FreezePolicy::all();
        let e = check(&cfg).unwrap_err().to_string();
        assert!(e.contains("--head-first") && e.contains("--weights"), "{e}");
        // Conv-only weights (as fetched): fc6–fc8 are the head; fc6 fine-tuning has no deeper stage.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("conv.safetensors");
        let w = WeightSet::initialised(&AlexNetSpec::new(5), 7);
        let conv = w.tensors().iter().filter(|(n, _)| n.starts_with("features.")).map(|(n, t)| (n.clone(), t.clone())).collect();
        std::fs::write(&file, crate::weights::write_safetensors(&conv, Default::default()).unwrap()).unwrap();
        cfg.weights = Some(file);
        assert_eq!(check(&cfg).unwrap(), FreezePolicy::from_layer(LayerId::Fc6));
        cfg.model.policy = FreezePolicy::from_layer(LayerId::Fc6);
        let e = check(&cfg).unwrap_err().to_string();
        assert!(e.contains("fc6–fc8") && e.contains("--finetune fc6") && e.contains("deeper"), "{e}");
        cfg.model.policy = FreezePolicy::all();
        assert!(cfg.validate().is_ok());
        cfg.ensemble = 3;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("--head-first") && e.contains("--ensemble"), "{e}");
    }
}
