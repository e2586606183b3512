//! The reference experiment: fine-tune at several depths (and on several backends) with the same
//! data, split, weights and step budget, record accuracy against step and wall time, and time the
//! feature cache against running the frozen layers at every step.

use crate::backend::Backend;
use crate::data::Fold;
use crate::freeze::FreezePolicy;
use crate::job::{JobConfig, run};
use crate::metrics::Spread;
use crate::observer::Observer;
use crate::report::RunReport;
use crate::weights::{LayerSource, WeightSet};
use crate::{Error, LayerId, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// What to compare.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentConfig {
    /// Data, weights, split, preprocessing, optimiser and cache settings shared by every run; the
    /// policy and step budget are set per run.
    pub base: JobConfig,
    /// Fine-tune depths, in the order they are run.
    pub policies: Vec<FreezePolicy>,
    /// Training steps per run.
    pub steps: usize,
    /// Evaluate (val and test) every this many steps.
    pub eval_every: usize,
    /// The policy whose cached and uncached step speeds are compared; `None` skips it.
    pub no_cache_policy: Option<FreezePolicy>,
    /// Steps of the uncached timing run (the speed settles after a few steps).
    pub no_cache_steps: usize,
    /// Other backbones to compare, each a complete job (its weights, preprocessing and head);
    /// they run after the AlexNet depths with the same step budget and evaluation points.
    #[serde(default)]
    pub backbone_jobs: Vec<JobConfig>,
    /// Run the AlexNet depths (`policies`); off when only other backbones are compared.
    #[serde(default = "yes")]
    pub alexnet: bool,
    /// K-fold cross-validation: every setting runs K times, fold k of K the test part each time
    /// (validation carved from the rest); 0 uses the configured split once.
    #[serde(default)]
    pub folds: u32,
    /// Runs per setting (and fold) with seeds offset by 0, 1, …: initialisation, shuffling,
    /// cached views and dropout all change.
    #[serde(default = "one")]
    pub repeats: u64,
    /// Names this configuration's variant of the settings (`experiment --vary`), recorded in
    /// each run's report so variants are compared side by side.
    #[serde(default)]
    pub recipe: Option<String>,
}

fn yes() -> bool {
    true
}

fn one() -> u64 {
    1
}

impl ExperimentConfig {
    /// The article's comparison: fc6, conv5, conv4 and all, for `steps` steps each; fc7 and fc8
    /// first when `weights` holds pretrained fc6/fc7 (freezing random layers would be meaningless).
    pub fn new(base: JobConfig, weights: Option<&WeightSet>, steps: usize) -> Self {
        Self {
            base,
            policies: default_policies(weights),
            steps,
            eval_every: (steps / 10).max(1),
            no_cache_policy: Some(FreezePolicy::from_layer(LayerId::Fc6)),
            no_cache_steps: 20,
            backbone_jobs: vec![],
            alexnet: true,
            folds: 0,
            repeats: 1,
            recipe: None,
        }
    }

    /// Each setting's runs: (test fold, repeat), folds outermost.
    pub fn variants(&self) -> Vec<(Option<Fold>, u64)> {
        let folds: Vec<Option<Fold>> =
            if self.folds == 0 { vec![None] } else { (0..self.folds).map(|index| Some(Fold { index, count: self.folds })).collect() };
        folds.into_iter().flat_map(|f| (0..self.repeats).map(move |r| (f, r))).collect()
    }
}

/// `job` as run `repeat` on `fold`: the fold as its test part, every seed offset by `repeat`.
fn with_variant(mut job: JobConfig, fold: Option<Fold>, repeat: u64) -> JobConfig {
    job.split.fold = fold;
    job.init_seed += repeat;
    job.model.seed += repeat;
    job.train.seed += repeat;
    job.cache.view_seed += repeat;
    job
}

impl ExperimentConfig {
    /// Checks the budget (steps, evaluation interval and timing steps at least 1), that there is a
    /// depth to run, and the shared job settings, before any run starts.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: &str| Err(Error::Config(msg.into()));
        if self.steps == 0 {
            return bad("steps per depth (--steps) must be at least 1");
        }
        if self.eval_every == 0 {
            return bad("evaluation interval (--eval-every) must be at least 1 step");
        }
        if self.no_cache_steps == 0 && self.no_cache_policy.is_some_and(|p| p.has_frozen_prefix()) {
            return bad("uncached timing steps (--no-cache-steps) must be at least 1 (or --speedup-policy none)");
        }
        if self.alexnet && self.policies.is_empty() {
            return bad("no fine-tune depth to run (--policies is empty)");
        }
        if !self.alexnet && self.backbone_jobs.is_empty() {
            return bad("nothing to run: no AlexNet depth and no other backbone");
        }
        if self.folds == 1 {
            return bad("--folds 1 leaves nothing to train on: use K ≥ 2 folds, or leave --folds out for the one split");
        }
        if self.repeats == 0 {
            return bad("--repeats must be at least 1");
        }
        self.base.validate()?;
        if self.alexnet && self.base.head_first > 0 {
            let head = crate::head_first::head_policy(&self.base)?;
            if !self.policies.iter().any(|p| crate::head_first::goes_deeper(*p, head)) {
                return Err(Error::Config(format!(
                    "--head-first trains {} first, but none of the depths (--policies) fine-tunes deeper; add one (e.g. all), or leave --head-first out",
                    head.trained_span()
                )));
            }
        }
        for j in &self.backbone_jobs {
            j.validate()?;
        }
        job_for(self, &self.base, self.policies.first().copied().unwrap_or_default(), self.steps, true).train.validate()
    }
}

/// fc6, conv5, conv4, all; with fc8 and fc7 in front when fc6 and fc7 are pretrained.
pub fn default_policies(weights: Option<&WeightSet>) -> Vec<FreezePolicy> {
    let pretrained = |l| weights.and_then(|w| w.source(l)).is_some_and(|s| matches!(s, LayerSource::Pretrained { .. }));
    let mut out = vec![];
    if pretrained(LayerId::Fc6) && pretrained(LayerId::Fc7) {
        out.extend([FreezePolicy::from_layer(LayerId::Fc8), FreezePolicy::from_layer(LayerId::Fc7)]);
    }
    out.extend([
        FreezePolicy::from_layer(LayerId::Fc6),
        FreezePolicy::from_layer(LayerId::Conv5),
        FreezePolicy::from_layer(LayerId::Conv4),
        FreezePolicy::all(),
    ]);
    out
}

/// One backend's cached against uncached training speed for one policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheSpeedup {
    pub backend: String,
    pub device: String,
    pub policy: String,
    pub cached_samples_per_second: f64,
    pub uncached_samples_per_second: f64,
    /// Cached over uncached step speed.
    pub speedup: f64,
    /// Seconds the cache took to fill in this experiment (0 when it was already on disk).
    pub extract_seconds: f64,
    /// Crops per second through the frozen layers while filling (incl. decoding), when filled here.
    pub extract_views_per_second: Option<f64>,
}

/// Everything the experiment measured: one report per (backend, policy), and the cache timings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentReport {
    pub tool: String,
    pub steps: usize,
    pub eval_every: usize,
    pub batch_size: usize,
    /// Test folds per setting (0: the one configured split) and repeats per fold.
    #[serde(default)]
    pub folds: u32,
    #[serde(default = "one")]
    pub repeats: u64,
    pub runs: Vec<RunReport>,
    pub cache_speedups: Vec<CacheSpeedup>,
}

/// Runs the experiment on each backend in turn. `obs` sees every run's progress; `on_run` gets
/// each report as it finishes (so a caller can save partial results).
pub fn run_experiment(
    backends: &[&dyn Backend],
    cfg: &ExperimentConfig,
    obs: &dyn Observer,
    on_run: &mut dyn FnMut(&ExperimentReport),
) -> Result<ExperimentReport> {
    run_experiment_reusing(backends, cfg, &[], obs, on_run)
}

/// A finished run of `job` on `backend` among `done`: same backend, device and configuration
/// (as the report records it: `serde_json::to_value`, whose numbers survive a round trip
/// through an `experiment.json` exactly).
fn finished<'a>(done: &'a [RunReport], backend: &dyn Backend, job: &JobConfig) -> Option<&'a RunReport> {
    let want = serde_json::to_value(job).ok()?;
    done.iter().find(|r| r.backend == backend.name() && r.device == backend.device_name() && current_form(&r.config) == want)
}

/// The runs of `first`, then those of `second` whose settings (backend, device and
/// configuration) none before them has: each measured run kept once, the first copy winning.
pub fn union_of_runs(first: &[RunReport], second: &[RunReport]) -> Vec<RunReport> {
    let mut seen: Vec<(&str, &str, serde_json::Value)> = vec![];
    let mut out = vec![];
    for r in first.iter().chain(second) {
        let id = (r.backend.as_str(), r.device.as_str(), current_form(&r.config));
        if !seen.contains(&id) {
            seen.push(id);
            out.push(r.clone());
        }
    }
    out
}

/// A recorded configuration as today's build writes it: read back as a [`JobConfig`] and
/// written again. Reports from builds that wrote settings now left out at their defaults
/// (`"tta": "none"`, `"label_smoothing": 0.0`) then match the same settings; a
/// configuration this build cannot read stays as it was (and matches nothing new).
fn current_form(config: &serde_json::Value) -> serde_json::Value {
    serde_json::from_value::<JobConfig>(config.clone()).ok().and_then(|c| serde_json::to_value(c).ok()).unwrap_or_else(|| config.clone())
}

/// [`run_experiment`], taking a run's report from `done` (an earlier, interrupted or
/// overlapping experiment) instead of training again when one has exactly its settings.
pub fn run_experiment_reusing(
    backends: &[&dyn Backend],
    cfg: &ExperimentConfig,
    done: &[RunReport],
    obs: &dyn Observer,
    on_run: &mut dyn FnMut(&ExperimentReport),
) -> Result<ExperimentReport> {
    cfg.validate()?;
    let mut rep = ExperimentReport {
        tool: format!("alexnet-rs {}", env!("CARGO_PKG_VERSION")),
        steps: cfg.steps,
        eval_every: cfg.eval_every,
        batch_size: cfg.base.train.batch_size,
        folds: cfg.folds,
        repeats: cfg.repeats,
        runs: vec![],
        cache_speedups: vec![],
    };
    let variants = cfg.variants();
    // `--head-first` applies to the depths that fine-tune deeper than the new layers; the
    // others (fc6 with conv-only weights) run as they are.
    let head = if cfg.alexnet && cfg.base.head_first > 0 { Some(crate::head_first::head_policy(&cfg.base)?) } else { None };
    let job_for = |cfg: &ExperimentConfig, base: &JobConfig, policy: FreezePolicy, steps: usize, cache: bool| {
        let mut job = job_for(cfg, base, policy, steps, cache);
        if head.is_some_and(|h| !crate::head_first::goes_deeper(policy, h)) {
            job.head_first = 0;
        }
        job
    };
    let recipe = cfg.recipe.as_ref().map_or(String::new(), |r| format!(" · {r}"));
    let label = |fold: Option<Fold>, r: u64| {
        let run = match (fold, cfg.repeats > 1) {
            (None, false) => String::new(),
            (None, true) => format!(" · repeat {}/{}", r + 1, cfg.repeats),
            (Some(f), false) => format!(" · test fold {f}"),
            (Some(f), true) => format!(" · test fold {f}, repeat {}/{}", r + 1, cfg.repeats),
        };
        format!("{recipe}{run}")
    };
    // A run of `job` (repeat `r`): taken from `done` when it holds one with these settings.
    let run_or_reuse = |backend: &dyn Backend, job: &JobConfig, what: &str, r: u64| -> Result<RunReport> {
        let mut report = match finished(done, backend, job) {
            Some(d) => {
                obs.message(&format!("{what}: reused, already in experiment.json or experiment.previous.json"));
                d.clone()
            }
            None => {
                obs.message(what);
                run(backend, job, obs)?.0
            }
        };
        report.repeat = r;
        report.recipe = cfg.recipe.clone();
        Ok(report)
    };
    for backend in backends {
        let policies: &[FreezePolicy] = if cfg.alexnet { &cfg.policies } else { &[] };
        for policy in policies {
            for &(fold, r) in &variants {
                let job = with_variant(job_for(cfg, &cfg.base, *policy, cfg.steps, true), fold, r);
                let what = format!("experiment: {} · fine-tune {policy} · {} steps{}", backend.name(), cfg.steps, label(fold, r));
                rep.runs.push(run_or_reuse(*backend, &job, &what, r)?);
                on_run(&rep);
            }
        }
        for job in &cfg.backbone_jobs {
            for &(fold, r) in &variants {
                let job = with_variant(job_for(cfg, job, job.model.policy, cfg.steps, true), fold, r);
                let what = format!("experiment: {} · {} · new head · {} steps{}", backend.name(), job.backbone, cfg.steps, label(fold, r));
                rep.runs.push(run_or_reuse(*backend, &job, &what, r)?);
                on_run(&rep);
            }
        }
        if let Some(policy) = cfg.no_cache_policy.filter(|p| cfg.alexnet && p.has_frozen_prefix()) {
            let cached = match rep.runs.iter().find(|r| r.backend == backend.name() && r.policy == policy.to_string()) {
                Some(r) => r.clone(),
                None => run(*backend, &job_for(cfg, &cfg.base, policy, cfg.no_cache_steps, true), obs)?.0,
            };
            obs.message(&format!("experiment: {} · fine-tune {policy} without the cache · {} steps", backend.name(), cfg.no_cache_steps));
            let (uncached, _) = run(*backend, &job_for(cfg, &cfg.base, policy, cfg.no_cache_steps, false), obs)?;
            let (c, u) = (cached.timings.train_samples_per_second, uncached.timings.train_samples_per_second);
            rep.cache_speedups.push(CacheSpeedup {
                backend: backend.name().to_string(),
                device: backend.device_name(),
                policy: policy.to_string(),
                cached_samples_per_second: c,
                uncached_samples_per_second: u,
                speedup: c / u.max(1e-12),
                extract_seconds: cached.timings.extract_seconds,
                extract_views_per_second: cached.timings.extract_views_per_second,
            });
            on_run(&rep);
        }
    }
    Ok(rep)
}

fn job_for(cfg: &ExperimentConfig, base: &JobConfig, policy: FreezePolicy, steps: usize, cache: bool) -> JobConfig {
    let mut job = base.clone();
    job.model.policy = policy;
    job.cache.enabled = cache;
    job.train.max_steps = Some(steps);
    // Enough epochs that the step budget, not the epoch count, ends the run.
    job.train.epochs = steps;
    job.train.eval_every = Some(if cache { cfg.eval_every.max(1) } else { steps });
    job
}

/// The runs of one setting (backbone, backend, fine-tune depth, recipe) over folds and repeats,
/// and the spread of their validation and test accuracies.
#[derive(Debug, Clone)]
pub struct Group<'a> {
    pub backbone: String,
    pub backend: String,
    pub policy: String,
    pub recipe: Option<String>,
    /// Steps of the head stage in front of the fine-tuning (`--head-first`), if any.
    pub head_first: Option<usize>,
    pub runs: Vec<&'a RunReport>,
    /// Test accuracy (of each run's kept step) over the runs.
    pub spread: Spread,
    /// Validation accuracy of the selected model over the runs: what settings are chosen by;
    /// `None` when a run had no validation images (`--val-percent 0`: trained on all of the
    /// training part, so it cannot be chosen, only compared on test).
    pub val_spread: Option<Spread>,
    /// Cross-fitted validation accuracy over the runs ([`crate::selection`]), when every run
    /// has it.
    pub crossfit_spread: Option<Spread>,
    /// All test images of all runs pooled: correct / total (with folds, every image once).
    pub pooled: (u64, u64),
}

impl Group<'_> {
    /// `alexnet fc6` (`alexnet fc6 · tta=flip` for a recipe), or `tch · alexnet fc6` when
    /// several backends ran.
    pub fn label(&self, with_backend: bool) -> String {
        let mut what = format!("{} {}", self.backbone, self.policy);
        if let Some(h) = self.head_first {
            what = format!("{what} · head first {h}");
        }
        if let Some(r) = &self.recipe {
            what = format!("{what} · {r}");
        }
        if with_backend { format!("{} · {what}", self.backend) } else { what }
    }
}

/// One setting's paired difference to its backend's reference setting (the best on
/// validation): accuracy differences (fractions; positive means better than the reference) over
/// the runs both have, fold by fold and seed by seed.
#[derive(Debug, Clone)]
pub struct Paired {
    /// The setting's label ([`Group::label`]).
    pub setting: String,
    /// The reference setting's label.
    pub reference: String,
    /// Validation difference, when both have a validation set.
    pub val: Option<Spread>,
    /// Cross-fitted validation difference, when both have it for every run.
    pub crossfit: Option<Spread>,
    /// Whether the reference was chosen on cross-fitted validation (else on plain validation).
    pub chosen_by_crossfit: bool,
    /// Test difference (reported, never chosen by).
    pub test: Spread,
}

/// A run's place among its setting's runs, for matching runs across settings.
fn variant(r: &RunReport) -> (Option<Fold>, u64) {
    (r.fold, r.repeat)
}

impl ExperimentReport {
    /// The runs grouped by setting, in the order the settings first ran.
    pub fn groups(&self) -> Vec<Group<'_>> {
        let head = |r: &RunReport| r.head_first.as_ref().map(|h| h.steps);
        let mut by_setting: Vec<Vec<&RunReport>> = Vec::new();
        for r in &self.runs {
            match by_setting.iter_mut().find(|g| {
                g[0].backbone == r.backbone
                    && g[0].backend == r.backend
                    && g[0].policy == r.policy
                    && g[0].recipe == r.recipe
                    && head(g[0]) == head(r)
            }) {
                Some(g) => g.push(r),
                None => by_setting.push(vec![r]),
            }
        }
        by_setting
            .into_iter()
            .map(|runs| {
                let acc: Vec<f64> = runs.iter().map(|r| r.test.accuracy).collect();
                let val: Option<Vec<f64>> = runs.iter().map(|r| r.val_accuracy()).collect();
                let pooled = runs.iter().fold((0, 0), |(c, n), r| (c + (r.test.accuracy * r.test.samples as f64).round() as u64, n + r.test.samples));
                Group {
                    backbone: runs[0].backbone.to_string(),
                    backend: runs[0].backend.clone(),
                    policy: runs[0].policy.clone(),
                    recipe: runs[0].recipe.clone(),
                    head_first: head(runs[0]),
                    spread: Spread::of(&acc).expect("a group has a run"),
                    val_spread: val.and_then(|v| Spread::of(&v)),
                    crossfit_spread: runs.iter().map(|r| r.val_crossfit).collect::<Option<Vec<f64>>>().and_then(|v| Spread::of(&v)),
                    pooled,
                    runs,
                }
            })
            .collect()
    }

    /// What the runs of a setting spread over: "5 test folds", "3 repeats (seeds) on one
    /// split", "5 test folds × 2 repeats".
    pub fn spread_over(&self) -> String {
        match (self.folds, self.repeats) {
            (0, r) => format!("{r} repeats (seeds) on one split"),
            (k, 1) => format!("{k} test folds"),
            (k, r) => format!("{k} test folds × {r} repeats"),
        }
    }

    /// Each setting's paired difference to the setting of its backend with the best mean
    /// validation accuracy (cross-fitted when every choosable setting of the backend has it),
    /// matched fold by fold and seed by seed. Settings without a validation set, or with fewer
    /// runs than the backend's most, are compared but never chosen; a setting with fewer than two
    /// matched runs has no interval and is left out.
    pub fn paired(&self) -> Vec<Paired> {
        let groups = self.groups();
        let several = groups.iter().any(|g| g.backend != groups[0].backend);
        let mut out = Vec::new();
        for backend in groups.iter().map(|g| g.backend.as_str()).collect::<std::collections::BTreeSet<_>>() {
            let mine: Vec<&Group> = groups.iter().filter(|g| g.backend == backend).collect();
            // Chosen by the cross-fitted validation accuracy when every choosable setting has
            // it (free of the bias that favours settings with more or noisier evaluation points).
            // A setting still missing runs (an interrupted experiment) is compared but never
            // chosen: its mean is over other folds than the rest's.
            let complete = mine.iter().map(|g| g.runs.len()).max().unwrap_or(0);
            let choosable: Vec<&Group> = mine.iter().copied().filter(|g| g.val_spread.is_some() && g.runs.len() == complete).collect();
            let crossfit = choosable.iter().all(|g| g.crossfit_spread.is_some());
            let score = |g: &Group| match (crossfit, g.crossfit_spread, g.val_spread) {
                (true, Some(c), _) => c.mean,
                (false, _, Some(v)) => v.mean,
                _ => f64::NEG_INFINITY,
            };
            let Some(best) = choosable.iter().max_by(|a, b| score(a).total_cmp(&score(b))) else { continue };
            for g in mine.iter().filter(|g| !std::ptr::eq(**g, *best)) {
                let paired = |acc: fn(&RunReport) -> Option<f64>| -> Option<Spread> {
                    let diffs: Vec<f64> = g
                        .runs
                        .iter()
                        .filter_map(|r| best.runs.iter().find(|b| variant(b) == variant(r)).and_then(|b| Some(acc(r)? - acc(b)?)))
                        .collect();
                    Spread::of(&diffs).filter(|d| d.n > 1)
                };
                let Some(test) = paired(|r| Some(r.test.accuracy)) else { continue };
                out.push(Paired {
                    setting: g.label(several),
                    reference: best.label(several),
                    // Validation only where both have it; cross-fitted only where both settings
                    // have it for every run.
                    val: paired(RunReport::val_accuracy).filter(|_| g.val_spread.is_some()),
                    crossfit: paired(|r| r.val_crossfit).filter(|_| g.crossfit_spread.is_some() && best.crossfit_spread.is_some()),
                    chosen_by_crossfit: crossfit,
                    test,
                });
            }
        }
        out
    }

    /// The spread of each setting over folds/repeats, then each setting's paired difference to
    /// the setting of its backend with the best mean validation accuracy (matched fold by fold,
    /// seed by seed), in validation and in test accuracy, with 95% intervals. Settings are
    /// chosen on validation; the test columns only report.
    fn spread_tables(&self, s: &mut String) {
        let groups = self.groups();
        if groups.iter().all(|g| g.runs.len() < 2) {
            return;
        }
        let several = groups.iter().any(|g| g.backend != groups[0].backend);
        let how = self.spread_over();
        let pct = |sp: &Spread| if sp.n > 1 { format!("{:.2}–{:.2}%", 100.0 * sp.ci95.0, 100.0 * sp.ci95.1) } else { "–".into() };
        let runs = || groups.iter().flat_map(|g| g.runs.iter());
        let kept = match (runs().all(|r| r.kept_last()), runs().any(|r| r.kept_last())) {
            (true, _) => "the one at its last step",
            (false, false) => "the one at its best validation point",
            (false, true) => "the one its `--select` kept: the last step, or the best validation point",
        };
        let _ = writeln!(s, "\nAccuracy over {how} (each run's model is {kept}):\n");
        let _ = writeln!(
            s,
            "| setting | runs | val mean (95% interval) | val cross-fitted (95% interval) | test mean | test sd | test 95% interval of the mean | pooled test images |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for g in &groups {
            let sp = g.spread;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.2}% | {:.2} | {} | {:.2}% ({} of {}) |",
                g.label(several),
                sp.n,
                g.val_spread.map_or("– (no validation set)".into(), |v| format!("{:.2}% ({})", 100.0 * v.mean, pct(&v))),
                g.crossfit_spread.map_or("–".into(), |c| format!("{:.2}% ({})", 100.0 * c.mean, pct(&c))),
                100.0 * sp.mean,
                100.0 * sp.sd,
                pct(&sp),
                100.0 * g.pooled.0 as f64 / g.pooled.1.max(1) as f64,
                g.pooled.0,
                g.pooled.1
            );
        }
        let cell = |d: &Spread| {
            format!(
                "{:+.2} ({:+.2} to {:+.2}) | {}",
                100.0 * d.mean,
                100.0 * d.ci95.0,
                100.0 * d.ci95.1,
                if d.excludes_zero() { "yes" } else { "no" }
            )
        };
        let rows: Vec<String> = self
            .paired()
            .iter()
            .map(|p| {
                let (v, c) = (p.val.map_or("– | –".into(), |v| cell(&v)), p.crossfit.map_or("– | –".into(), |c| cell(&c)));
                format!("| {} | {} | {v} | {c} | {} |", p.setting, p.reference, cell(&p.test))
            })
            .collect();
        if !rows.is_empty() {
            let _ = writeln!(
                s,
                "\nPaired differences to the setting with the best mean validation accuracy (cross-fitted where every setting of the backend has it; same folds and seeds; points of accuracy, 95% interval):\n"
            );
            let _ = writeln!(
                s,
                "| setting | best on validation | val difference | significant | cross-fitted val difference | significant | test difference | significant |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
            for r in rows {
                let _ = writeln!(s, "{r}");
            }
        }
    }

    /// For each setting trained as an ensemble: the accuracy of the ensemble of its first k
    /// members, k = 1 … N, over its runs, paired run by run with two baselines: member 0 alone
    /// (the single model of the run's own seeds) and the mean of the same k members alone (what
    /// one of them is worth on average, so a lucky or unlucky member 0 does not decide).
    fn ensemble_tables(&self, s: &mut String) {
        use crate::ensemble::MemberReport;
        type Acc = fn(&MemberReport) -> f64;
        let groups = self.groups();
        let several = groups.iter().any(|g| g.backend != groups[0].backend);
        // A paired difference in points with its 95% interval, marked when it excludes zero.
        let cell = |d: &Spread| {
            let mark = if d.excludes_zero() { ", **significant**" } else { "" };
            format!("{:+.2} ({:+.2} to {:+.2}){mark}", 100.0 * d.mean, 100.0 * d.ci95.0, 100.0 * d.ci95.1)
        };
        for g in groups.iter().filter(|g| g.runs.iter().all(|r| !r.members.is_empty())) {
            let k = g.runs.iter().map(|r| r.members.len()).min().unwrap_or(0);
            let _ = writeln!(
                s,
                "\nEnsembles of the first k members · {} ({} runs; k = 1 is member 0 alone; points of accuracy, paired run by run, 95% interval):\n",
                g.label(several),
                g.runs.len()
            );
            // Cross-fitted validation (free of the best-step choice's bias) where every run has it.
            let crossfit = g.runs.iter().all(|r| r.members.iter().all(|m| m.val_crossfit.is_some() && m.ensemble_val_crossfit.is_some()));
            let _ = writeln!(
                s,
                "| k | val mean (95% interval) | test mean (95% interval) | val vs member 0 | test vs member 0 | val vs the k members alone | test vs the k members alone |{}",
                if crossfit { " val cross-fitted | cross-fitted val vs the k members alone |" } else { "" }
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|{}", if crossfit { "---|---|" } else { "" });
            let interval = |sp: &Spread| if sp.n > 1 { format!("{:.2}–{:.2}", 100.0 * sp.ci95.0, 100.0 * sp.ci95.1) } else { "–".into() };
            for i in 0..k {
                // Per run: the ensemble of members 0..=i, member 0 alone, and members 0..=i alone on average.
                let spread = |f: &dyn Fn(&RunReport) -> f64| Spread::of(&g.runs.iter().map(|r| f(r)).collect::<Vec<_>>()).expect("a run");
                let together = |r: &RunReport, e: Acc| e(&r.members[i]);
                let alone = |r: &RunReport, a: Acc| r.members[..=i].iter().map(a).sum::<f64>() / (i + 1) as f64;
                let (ev, et): (Acc, Acc) = (|m| m.ensemble_val_accuracy, |m| m.ensemble_test_accuracy);
                let (av, at): (Acc, Acc) = (|m| m.val_accuracy, |m| m.test_accuracy);
                let (sv, st) = (spread(&|r| together(r, ev)), spread(&|r| together(r, et)));
                let vs = |d: Spread| if i == 0 || d.n < 2 { "–".to_string() } else { cell(&d) };
                let extra = if crossfit {
                    let (ec, ac): (Acc, Acc) = (|m| m.ensemble_val_crossfit.unwrap_or(0.0), |m| m.val_crossfit.unwrap_or(0.0));
                    let sc = spread(&|r| together(r, ec));
                    format!(" {:.2}% ({}) | {} |", 100.0 * sc.mean, interval(&sc), vs(spread(&|r| together(r, ec) - alone(r, ac))))
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "| {} | {:.2}% ({}) | {:.2}% ({}) | {} | {} | {} | {} |{extra}",
                    i + 1,
                    100.0 * sv.mean,
                    interval(&sv),
                    100.0 * st.mean,
                    interval(&st),
                    vs(spread(&|r| together(r, ev) - av(&r.members[0]))),
                    vs(spread(&|r| together(r, et) - at(&r.members[0]))),
                    vs(spread(&|r| together(r, ev) - alone(r, av))),
                    vs(spread(&|r| together(r, et) - alone(r, at))),
                );
            }
        }
    }

    /// A markdown table: per run, the kept model's test accuracy, the best test accuracy seen, and
    /// the times; then the spread over folds/repeats and the cache speed-ups.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| backbone | backend | fine-tune | trains | run | test acc. (kept model; 95% interval) | best test seen | steps | train s | samples/s | cache fill s | extraction crops/s |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.runs {
            let policy: FreezePolicy = r.policy.parse().unwrap_or_default();
            // An ensemble's members are not scored on test along the way.
            let best_seen = r.curve.iter().filter_map(|p| p.test_accuracy).reduce(f64::max).map_or("–".into(), |a| format!("{:.2}%", 100.0 * a));
            let steps = r.curve.last().map(|p| p.step).unwrap_or(0);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.2}% ({:.1}–{:.1}) | {} | {} | {:.0} | {:.1} | {} | {} |",
                r.backbone,
                r.backend,
                match &r.head_first {
                    Some(h) => format!("{} (head first: {} steps of {})", r.policy, h.steps, h.policy),
                    None => r.policy.clone(),
                },
                policy.trained_span(),
                {
                    let run = match (r.fold, self.repeats > 1) {
                        (None, false) => "–".to_string(),
                        (None, true) => format!("seed +{}", r.repeat),
                        (Some(f), false) => format!("fold {f}"),
                        (Some(f), true) => format!("fold {f}, seed +{}", r.repeat),
                    };
                    match &r.recipe {
                        Some(recipe) => format!("{recipe} · {run}"),
                        None => run,
                    }
                },
                100.0 * r.test.accuracy,
                100.0 * r.test.interval95().0,
                100.0 * r.test.interval95().1,
                best_seen,
                steps,
                r.timings.train_seconds,
                r.timings.train_samples_per_second,
                if r.cache.is_some() { format!("{:.0}", r.timings.extract_seconds) } else { "no cache".into() },
                r.timings.extract_views_per_second.map_or("–".into(), |v| format!("{v:.1}")),
            );
        }
        self.spread_tables(&mut s);
        self.ensemble_tables(&mut s);
        if !self.cache_speedups.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(s, "| backend | fine-tune | cached samples/s | uncached samples/s | cache speed-up |");
            let _ = writeln!(s, "|---|---|---|---|---|");
            for c in &self.cache_speedups {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.1} | {:.1} | {:.1}× |",
                    c.backend, c.policy, c.cached_samples_per_second, c.uncached_samples_per_second, c.speedup
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::AlexNetSpec;

    fn names(p: &[FreezePolicy]) -> Vec<String> {
        p.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn default_depths_follow_the_weights() {
        let mut w = WeightSet::initialised(&AlexNetSpec::new(5), 0);
        assert_eq!(names(&default_policies(None)), ["fc6", "conv5", "conv4", "all"]);
        for l in [LayerId::Conv1, LayerId::Conv2, LayerId::Conv3, LayerId::Conv4, LayerId::Conv5] {
            w.set_source(l, LayerSource::Pretrained { file: "conv.safetensors".into() });
        }
        assert_eq!(names(&default_policies(Some(&w))), ["fc6", "conv5", "conv4", "all"]);
        // Freezing fc6/fc7 only makes sense when they are pretrained.
        w.set_source(LayerId::Fc6, LayerSource::Pretrained { file: "full.safetensors".into() });
        w.set_source(LayerId::Fc7, LayerSource::Pretrained { file: "full.safetensors".into() });
        assert_eq!(names(&default_policies(Some(&w))), ["fc8", "fc7", "fc6", "conv5", "conv4", "all"]);
    }

    #[test]
    fn recorded_defaults_written_out_still_match() {
        // The centre view alone: what a configuration without `tta` means.
        let job = JobConfig { tta: crate::data::Tta::None, ..JobConfig::new("data") };
        let want = serde_json::to_value(&job).unwrap();
        // An earlier build wrote these settings out at their defaults.
        let mut old = want.clone();
        old["tta"] = "none".into();
        old["augment"] = serde_json::json!({ "color_jitter": 0.0 });
        old["model"]["label_smoothing"] = 0.0.into();
        assert_ne!(old, want);
        assert_eq!(current_form(&old), want);
        // A setting that differs still differs.
        let mut other = old.clone();
        other["model"]["label_smoothing"] = 0.1.into();
        assert_ne!(current_form(&other), want);
        // Something unreadable is compared as it is.
        let junk = serde_json::json!({ "data": 3 });
        assert_eq!(current_form(&junk), junk);
    }

    /// A last-step run of `recipe` on `fold` of 5 with these accuracies (100 images each).
    fn fake_run(recipe: &str, fold: u32, val: f64, test: f64) -> RunReport {
        let metrics = |accuracy| crate::metrics::EvalMetrics {
            accuracy,
            per_class_accuracy: vec![],
            confusion: crate::metrics::Confusion::new(2),
            samples: 100,
        };
        RunReport {
            tool: "test".into(),
            backbone: Default::default(),
            backend: "candle".into(),
            device: "cpu".into(),
            policy: "fc6".into(),
            cut: "pool5".into(),
            config: serde_json::json!({ "train": { "select": "last" } }),
            weights_file: None,
            layers: Default::default(),
            data: Default::default(),
            cache: None,
            timings: Default::default(),
            curve: vec![],
            best_step: 0,
            val: metrics(val),
            val_crossfit: Some(val),
            test: metrics(test),
            fold: Some(Fold { index: fold, count: 5 }),
            repeat: 0,
            recipe: Some(recipe.into()),
            members: vec![],
            head_first: None,
        }
    }

    #[test]
    fn paired_differences_use_the_best_complete_setting() {
        let mut runs = Vec::new();
        for fold in 0..5 {
            let f = fold as f64 / 100.0;
            runs.push(fake_run("a", fold, 0.80 + f, 0.70 + f));
            // b is 2 points better on validation and 1 on test, on every fold.
            runs.push(fake_run("b", fold, 0.82 + f, 0.71 + f));
        }
        // c ran on two folds only (interrupted), where it scores highest: compared, never chosen.
        runs.push(fake_run("c", 0, 0.99, 0.60));
        runs.push(fake_run("c", 1, 0.97, 0.62));
        let rep =
            ExperimentReport { tool: "test".into(), steps: 10, eval_every: 10, batch_size: 8, folds: 5, repeats: 1, runs, cache_speedups: vec![] };
        let paired = rep.paired();
        assert_eq!(
            paired.iter().map(|p| (p.setting.as_str(), p.reference.as_str())).collect::<Vec<_>>(),
            [("alexnet fc6 · a", "alexnet fc6 · b"), ("alexnet fc6 · c", "alexnet fc6 · b")]
        );
        let a = &paired[0];
        assert!(a.chosen_by_crossfit);
        let (val, test) = (a.val.unwrap(), a.test);
        assert_eq!((val.n, test.n), (5, 5));
        assert!((val.mean + 0.02).abs() < 1e-12 && (test.mean + 0.01).abs() < 1e-12);
        // Identical differences on every fold: no spread, so significant.
        assert!(val.excludes_zero() && test.excludes_zero());
        // c is paired on its own two folds: +17.0 and +14.0 points of validation.
        let c = &paired[1];
        assert_eq!(c.test.n, 2);
        assert!((c.val.unwrap().mean - 0.155).abs() < 1e-12, "{:?}", c.val);
        assert!(rep.markdown().contains("| alexnet fc6 · c | alexnet fc6 · b | +15.50"), "{}", rep.markdown());
    }

    #[test]
    fn runs_are_budgeted_by_steps() {
        let cfg = ExperimentConfig::new(JobConfig::new("data"), None, 120);
        assert_eq!(cfg.eval_every, 12);
        let job = job_for(&cfg, &cfg.base, FreezePolicy::from_layer(LayerId::Conv5), 120, true);
        assert_eq!((job.train.max_steps, job.train.eval_every, job.cache.enabled), (Some(120), Some(12), true));
        assert_eq!(job.model.policy.to_string(), "conv5");
        let timing = job_for(&cfg, &cfg.base, FreezePolicy::default(), 20, false);
        assert_eq!((timing.train.max_steps, timing.train.eval_every, timing.cache.enabled), (Some(20), Some(20), false));
    }

    #[test]
    fn bad_budgets_fail_before_any_run() {
        let ok = ExperimentConfig::new(JobConfig::new("data"), None, 120);
        ok.validate().unwrap();
        let mut none = ok.clone();
        (none.no_cache_steps, none.no_cache_policy) = (0, None);
        none.validate().unwrap();
        type Change = fn(&mut ExperimentConfig);
        let cases: [(Change, &str); 5] = [
            (|c| c.steps = 0, "--steps"),
            (|c| c.eval_every = 0, "--eval-every"),
            (|c| c.no_cache_steps = 0, "--no-cache-steps"),
            (|c| c.policies.clear(), "--policies"),
            (|c| c.base.train.lr = -1.0, "--lr"),
        ];
        for (change, flag) in cases {
            let mut c = ok.clone();
            change(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{flag}: {e}");
            // run_experiment refuses before touching a backend (there is none here) or the data.
            let e = run_experiment(&[], &c, &crate::observer::Silent, &mut |_| panic!("no run")).err().unwrap().to_string();
            assert!(e.contains(flag), "{flag}: {e}");
        }
    }
}
