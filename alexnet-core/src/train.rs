//! The one training loop, driving any backend's [`Model`].

use crate::backend::{Model, Stage, TrainState};
use crate::checkpoint::{Checkpoint, Progress};
use crate::data::{Augment, Prefetcher, Preprocess, Tta, View};
use crate::metrics::{Confusion, EvalMetrics, argmax_rows};
use crate::observer::Observer;
use crate::report::CurvePoint;
use crate::tensor::HostTensor;
use crate::weights::WeightSet;
use crate::{Error, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Learning-rate schedule over the run's steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    /// Cosine decay from the base rate to 0 at the last step.
    Cosine,
    /// Multiply by `gamma` every `every` steps.
    Step {
        every: usize,
        gamma: f32,
    },
}

impl LrSchedule {
    /// Learning rate at `step` (0-based) of `total`.
    pub fn lr(&self, base: f32, step: usize, total: usize) -> f32 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Cosine => {
                let t = step as f32 / total.max(1) as f32;
                base * 0.5 * (1.0 + (std::f32::consts::PI * t).cos())
            }
            LrSchedule::Step { every, gamma } => base * gamma.powi((step / every.max(1)) as i32),
        }
    }
}

/// Which evaluation point's weights become the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Select {
    /// The point with the best validation accuracy (ties to the earlier one). Its validation
    /// score is the maximum of several noisy ones, so it overstates the model; see
    /// [`crate::selection`].
    #[default]
    BestVal,
    /// The last step's: with the cosine schedule it is the annealed end of training, and its
    /// validation score is unbiased (no choice was made on it). Over 5 folds for fc6–fc8 its
    /// validation accuracy beat the cross-fitted score of choosing the best point by 1.9 points
    /// (README, "Keeping the last step"), so it is training's default ([`DEFAULT_SELECT`]).
    Last,
}

impl Select {
    /// True for [`Select::BestVal`], left out of the JSON so files written before the choice
    /// existed (all best-on-validation) still match.
    pub fn is_best_val(&self) -> bool {
        *self == Select::BestVal
    }
}

/// Training's default [`Select`].
pub const DEFAULT_SELECT: Select = Select::Last;

/// The default SGD learning rate for AlexNet: 0.01, which beat the earlier 0.005 on validation
/// over 5 folds (+0.52 points, paired 95% interval 0.10–0.94; README, "Training recipe").
pub const DEFAULT_LR: f32 = 0.01;

/// The default number of passes over AlexNet's training images: 27 (about 1,000 steps of 64 on
/// flower_photos' folds). 16 (600 steps) beat 8 on validation over 5 folds (+0.81 points, paired
/// 95% interval 0.29–1.32), and 27 beat 16 over 5 folds × 2 seeds (+0.95, 0.38–1.52; README,
/// "More steps and fixed training views").
pub const DEFAULT_EPOCHS: usize = 27;

/// Loop settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Stops after this many steps, if sooner than `epochs`.
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub lr: f32,
    pub schedule: LrSchedule,
    /// Evaluate every this many steps; `None`: at the end of each epoch.
    pub eval_every: Option<usize>,
    /// Seeds shuffling and view choice.
    pub seed: u64,
    /// Mixup strength α (λ ~ Beta(α, α)) on the trained layers' input; 0 is off. Left out of
    /// the JSON when off, so configurations written before it existed still match.
    #[serde(default, skip_serializing_if = "crate::backend::is_zero")]
    pub mixup: f32,
    /// Which evaluation point's weights the run keeps. Files without it were written when every
    /// run kept the best on validation, so that is what a missing value means.
    #[serde(default, skip_serializing_if = "Select::is_best_val")]
    pub select: Select,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: DEFAULT_EPOCHS,
            max_steps: None,
            batch_size: 64,
            lr: DEFAULT_LR,
            schedule: LrSchedule::Cosine,
            eval_every: None,
            seed: 0,
            mixup: 0.0,
            select: DEFAULT_SELECT,
        }
    }
}

impl TrainConfig {
    /// Checks the numbers make sense: at least one step to run, a positive batch size, a finite
    /// positive learning rate, and evaluation at least every step.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.batch_size == 0 {
            return bad("batch size (--batch-size) must be at least 1".into());
        }
        if self.max_steps == Some(0) {
            return bad("the step budget (--steps) must be at least 1: 0 steps train nothing and leave no model to save".into());
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("epochs (--epochs) must be at least 1, or set a step budget (--steps)".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate (--lr) must be a finite number > 0, got {}", self.lr));
        }
        crate::mixup::check_alpha(self.mixup)?;
        if self.eval_every == Some(0) {
            return bad("evaluation interval (--eval-every) must be at least 1 step".into());
        }
        if let LrSchedule::Step { every, gamma } = self.schedule {
            if every == 0 || !(gamma.is_finite() && gamma > 0.0) {
                return bad(format!("step schedule needs every ≥ 1 and a finite gamma > 0, got every {every}, gamma {gamma}"));
            }
        }
        Ok(())
    }
}

/// A labelled evaluation or training set, as cached features or as image files.
#[derive(Clone)]
pub enum Inputs {
    /// Features at the cut; `views[i]` holds one or more cached views of sample `i`: training
    /// draws one at random, evaluation averages the first `tta.len()` (`tta`'s views, in order).
    Cached { feature_shape: Vec<usize>, views: Vec<Vec<Arc<[f32]>>>, labels: Vec<u32>, tta: Tta },
    /// Image files, preprocessed on the fly: random crops, flips and `augment` when training
    /// (a training set's `tta` other than `None` names fixed views drawn as often as a fresh
    /// random crop each), `tta`'s views when evaluating.
    Images { pre: Preprocess, paths: Vec<PathBuf>, labels: Vec<u32>, augment: Augment, tta: Tta },
}

impl Inputs {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            Inputs::Cached { labels, .. } | Inputs::Images { labels, .. } => labels.len(),
        }
    }

    /// True when there is no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No samples: a set that is never evaluated.
    pub fn none() -> Self {
        Inputs::Cached { feature_shape: vec![], views: vec![], labels: vec![], tta: Tta::None }
    }

    /// Labels, in sample order.
    pub fn labels(&self) -> &[u32] {
        match self {
            Inputs::Cached { labels, .. } | Inputs::Images { labels, .. } => labels,
        }
    }

    pub(crate) fn stage(&self) -> Stage {
        match self {
            Inputs::Cached { .. } => Stage::Cut,
            Inputs::Images { .. } => Stage::Image,
        }
    }

    /// Training batches of (inputs, labels) over `order`, from its `skip`-th batch on (resuming
    /// a run: the skipped batches' random view choices are drawn all the same); `seed` draws each
    /// sample's cached view, or its random crop, flip and jitter.
    pub(crate) fn batches(
        &self,
        order: Vec<usize>,
        batch: usize,
        seed: u64,
        skip: usize,
    ) -> Box<dyn Iterator<Item = Result<(HostTensor, Vec<u32>)>> + '_> {
        let skip = (skip * batch).min(order.len());
        match self {
            Inputs::Cached { feature_shape, views, labels, .. } => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                for &i in &order[..skip] {
                    rng.random_range(0..views[i].len());
                }
                let chunks: Vec<Vec<usize>> = order[skip..].chunks(batch).map(|c| c.to_vec()).collect();
                Box::new(chunks.into_iter().map(move |c| {
                    let rows: Vec<&[f32]> = c.iter().map(|&i| &views[i][rng.random_range(0..views[i].len())][..]).collect();
                    Ok((HostTensor::stack(feature_shape, &rows), c.iter().map(|&i| labels[i]).collect()))
                }))
            }
            Inputs::Images { pre, paths, labels, augment, tta } => {
                let (pre, shape) = (*pre, [3, pre.crop as usize, pre.crop as usize]);
                let fixed = if tta.is_centre_only() { &[][..] } else { tta.views() };
                let items: Vec<(PathBuf, u32, View)> = order[skip..]
                    .iter()
                    .map(|&i| {
                        let s = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        // With fixed views: one of them or a fresh random crop, equally likely.
                        let slot = (ChaCha8Rng::seed_from_u64(s ^ 0x5107).random_range(0..=fixed.len() as u32)) as usize;
                        let view = fixed.get(slot).copied().unwrap_or_else(|| augment.view(s));
                        (paths[i].clone(), labels[i], view)
                    })
                    .collect();
                let loader = Prefetcher::new(items, batch, 2, move |(p, l, v)| pre.views(p, &[*v]).map(|(_, mut c)| (c.remove(0), *l)));
                Box::new(loader.map(move |b| {
                    let b: Vec<(Vec<f32>, u32)> = b.into_iter().collect::<Result<_>>()?;
                    let rows: Vec<&[f32]> = b.iter().map(|(x, _)| x.as_slice()).collect();
                    Ok((HostTensor::stack(&shape, &rows), b.iter().map(|(_, l)| *l).collect()))
                }))
            }
        }
    }
}

impl Inputs {
    /// The test-time views averaged when evaluating.
    pub fn tta(&self) -> Tta {
        match self {
            Inputs::Cached { tta, .. } | Inputs::Images { tta, .. } => *tta,
        }
    }

    /// Evaluation batches of about `batch` rows: each sample's `tta` views as consecutive rows,
    /// with the samples' labels.
    fn eval_batches(&self, batch: usize) -> Box<dyn Iterator<Item = Result<(HostTensor, Vec<u32>)>> + '_> {
        let n = self.tta().len();
        let per_batch = (batch / n).max(1);
        match self {
            Inputs::Cached { feature_shape, views, labels, .. } => Box::new((0..labels.len()).step_by(per_batch).map(move |start| {
                let c = start..(start + per_batch).min(labels.len());
                let mut rows: Vec<&[f32]> = Vec::with_capacity(c.len() * n);
                for i in c.clone() {
                    let v = views[i].get(..n).ok_or_else(|| {
                        Error::Config(format!("sample {i} has {} cached view(s), test-time augmentation needs {n}", views[i].len()))
                    })?;
                    rows.extend(v.iter().map(|f| &f[..]));
                }
                Ok((HostTensor::stack(feature_shape, &rows), labels[c].to_vec()))
            })),
            Inputs::Images { pre, paths, labels, tta, .. } => {
                let (pre, shape, tta) = (*pre, [3, pre.crop as usize, pre.crop as usize], *tta);
                let items: Vec<(PathBuf, u32)> = paths.iter().cloned().zip(labels.iter().copied()).collect();
                let loader = Prefetcher::new(items, per_batch, 2, move |(p, l)| pre.views(p, tta.views()).map(|(_, c)| (c, *l)));
                Box::new(loader.map(move |b| {
                    let b: Vec<(Vec<Vec<f32>>, u32)> = b.into_iter().collect::<Result<_>>()?;
                    let rows: Vec<&[f32]> = b.iter().flat_map(|(v, _)| v.iter().map(|x| x.as_slice())).collect();
                    Ok((HostTensor::stack(&shape, &rows), b.iter().map(|(_, l)| *l).collect()))
                }))
            }
        }
    }
}

/// Averages the softmax of each consecutive group of `n` logit rows: one probability row per
/// sample (`[rows / n, classes]`), computed in f64.
pub fn mean_softmax(logits: &HostTensor, n: usize) -> HostTensor {
    let k = logits.row_len();
    let samples = logits.batch() / n.max(1);
    let mut out = vec![0f32; samples * k];
    for s in 0..samples {
        let mut acc = vec![0f64; k];
        for r in s * n..(s + 1) * n {
            add_softmax(&mut acc, logits.row(r));
        }
        for (o, a) in out[s * k..(s + 1) * k].iter_mut().zip(acc) {
            *o = (a / n as f64) as f32;
        }
    }
    HostTensor::new(vec![samples, k], out).expect("consistent shape")
}

/// Adds the softmax of one row of logits, computed in f64 (max-shifted), to `acc`.
pub(crate) fn add_softmax(acc: &mut [f64], row: &[f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b)) as f64;
    let exp: Vec<f64> = row.iter().map(|v| (*v as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    for (a, e) in acc.iter_mut().zip(exp) {
        *a += e / sum;
    }
}

/// Evaluates `model` (eval mode) on `inputs`: the centre crop, or with test-time augmentation
/// the average softmax over `inputs.tta()`'s views.
pub fn evaluate(model: &mut dyn Model, inputs: &Inputs, classes: usize, batch: usize) -> Result<EvalMetrics> {
    Ok(evaluate_with_probabilities(model, inputs, classes, batch)?.0)
}

/// The class probabilities `model` (eval mode) gives each sample of `inputs` (`[samples,
/// classes]`): the softmax of the centre crop, or its average over `inputs.tta()`'s views.
pub fn probabilities(model: &mut dyn Model, inputs: &Inputs, batch: usize) -> Result<HostTensor> {
    Ok(eval_pass(model, inputs, None, batch)?.1)
}

/// [`evaluate`] and [`probabilities`] in one pass over `inputs`.
pub fn evaluate_with_probabilities(model: &mut dyn Model, inputs: &Inputs, classes: usize, batch: usize) -> Result<(EvalMetrics, HostTensor)> {
    let (conf, probs) = eval_pass(model, inputs, Some(Confusion::new(classes)), batch)?;
    Ok((conf.expect("given").into(), probs))
}

/// Runs `inputs` through `model` once: the views' mean softmax per sample, and the confusion of
/// the predictions when `conf` is given (the arg-max of the logits for the centre crop alone, of
/// the mean softmax with test-time augmentation, as scores always were).
fn eval_pass(model: &mut dyn Model, inputs: &Inputs, mut conf: Option<Confusion>, batch: usize) -> Result<(Option<Confusion>, HostTensor)> {
    let n = inputs.tta().len();
    let (mut rows, mut classes) = (Vec::new(), 0);
    for b in inputs.eval_batches(batch) {
        let (x, labels) = b?;
        let logits = model.logits(&x, inputs.stage())?;
        let probs = mean_softmax(&logits, n);
        if let Some(conf) = conf.as_mut() {
            conf.add(&labels, &argmax_rows(if n == 1 { &logits } else { &probs }));
        }
        classes = probs.row_len();
        rows.extend_from_slice(&probs.data);
    }
    Ok((conf, HostTensor::new(vec![inputs.len(), classes], rows)?))
}

/// What a training run produced.
pub struct TrainOutcome {
    pub curve: Vec<CurvePoint>,
    /// The step whose weights were kept ([`TrainConfig::select`]).
    pub best_step: usize,
    /// The kept weights: at the best validation accuracy, or the last step's (always the last
    /// step's when there is no validation set).
    pub best: WeightSet,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub samples: usize,
    pub steps: usize,
    /// Validation probabilities at each evaluation point (`[samples, classes]`, in step order),
    /// for [`crate::selection::crossfit_accuracy`]; empty without a validation set, and missing
    /// points when resumed from a checkpoint written before they were kept.
    pub val_probs: Vec<HostTensor>,
    /// The scores of the kept weights at their evaluation point, so that nobody scores them
    /// again; `None` when that point was scored before a resume.
    pub kept_scores: Option<KeptScores>,
}

/// Validation and test metrics of the kept weights (`None` for an empty set).
#[derive(Debug, Clone)]
pub struct KeptScores {
    pub val: Option<EvalMetrics>,
    pub test: Option<EvalMetrics>,
}

impl TrainOutcome {
    /// Whether [`TrainOutcome::val_probs`] holds every evaluation point's validation
    /// probabilities (false after a resume from a checkpoint written before they were kept).
    pub fn val_probs_complete(&self) -> bool {
        self.val_probs.len() == self.curve.iter().filter(|c| c.val_accuracy.is_some()).count()
    }

    /// The validation probabilities at the best step (those of the saved weights), when kept.
    pub fn best_val_probs(&self) -> Option<&HostTensor> {
        let at = self.curve.iter().filter(|c| c.val_accuracy.is_some()).position(|c| c.step == self.best_step)?;
        self.val_probs_complete().then(|| &self.val_probs[at])
    }
}

/// Trains `model` on `train`, evaluating on `val` (model selection) and `test` (reported only,
/// never used to choose) at every evaluation point; ends with the weights `cfg.select` picks
/// (the best on validation, or the last step's).
pub fn train(
    model: &mut dyn Model,
    train: &Inputs,
    val: &Inputs,
    test: &Inputs,
    classes: usize,
    cfg: &TrainConfig,
    obs: &dyn Observer,
) -> Result<TrainOutcome> {
    train_resumable(model, train, val, test, classes, cfg, obs, None, None)
}

/// Saves a checkpoint: progress, current weights, best weights, optimiser state.
pub type SaveCheckpoint<'a> = dyn FnMut(&Progress, &WeightSet, &WeightSet, &TrainState) -> Result<()> + 'a;

/// [`train`], continuing from `resume` when given (the model built as for a fresh run), and
/// handing a checkpoint to `save` (when given) at every evaluation point. A run resumed from a checkpoint of
/// the same configuration ends bit-identical to one never interrupted: the data order is
/// replayed from the seed, the optimiser and dropout state are restored.
#[allow(clippy::too_many_arguments)]
pub fn train_resumable(
    model: &mut dyn Model,
    train: &Inputs,
    val: &Inputs,
    test: &Inputs,
    classes: usize,
    cfg: &TrainConfig,
    obs: &dyn Observer,
    resume: Option<Checkpoint>,
    mut save: Option<&mut SaveCheckpoint<'_>>,
) -> Result<TrainOutcome> {
    cfg.validate()?;
    if train.is_empty() {
        return Err(Error::Config("the training split is empty; lower --val-percent/--test-percent or add images".into()));
    }
    let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
    let total = match cfg.epochs {
        0 => cfg.max_steps.unwrap_or(0),
        e => (steps_per_epoch * e).min(cfg.max_steps.unwrap_or(usize::MAX)),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let shuffled = |rng: &mut ChaCha8Rng| {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(rng);
        (order, rng.random::<u64>())
    };
    let mut p = Progress {
        step: 0,
        total,
        epoch: 0,
        batch_in_epoch: 0,
        samples: 0,
        train_seconds: 0.0,
        eval_seconds: 0.0,
        curve: vec![],
        best_score: None,
        best_step: 0,
        val_probs: vec![],
    };
    let mut best: Option<WeightSet> = None;
    let mut kept_scores = None;
    let mut resuming = false;
    if let Some(c) = resume {
        if c.progress.total != total {
            return Err(Error::Config(format!("the checkpoint is for a run of {} steps, this one has {total}", c.progress.total)));
        }
        model.set_weights(&c.weights)?;
        model.set_train_state(&c.train_state)?;
        // Replay the data order of the epochs already finished.
        for _ in 1..c.progress.epoch {
            shuffled(&mut rng);
        }
        p = c.progress;
        best = Some(c.best);
        resuming = p.epoch > 0;
    }
    let (mut loss_sum, mut correct, mut seen, mut batches) = (0f64, 0usize, 0usize, 0usize);
    obs.begin("train", total as u64);
    obs.advance(p.step as u64);
    'outer: while p.step < total {
        let (order, epoch_seed) = shuffled(&mut rng);
        if !std::mem::take(&mut resuming) {
            p.epoch += 1;
            p.batch_in_epoch = 0;
        }
        let mut t0 = Instant::now();
        for b in train.batches(order, cfg.batch_size, epoch_seed, p.batch_in_epoch) {
            let (x, labels) = b?;
            let lr = cfg.schedule.lr(cfg.lr, p.step, total);
            let s = crate::mixup::step(model, &x, train.stage(), &labels, lr, cfg.mixup, cfg.seed, p.step)?;
            if !s.loss.is_finite() {
                return Err(Error::Config(format!(
                    "training diverged at step {} (loss {}); lower --lr (now {}) or fine-tune less deeply",
                    p.step, s.loss, cfg.lr
                )));
            }
            p.step += 1;
            p.batch_in_epoch += 1;
            p.samples += labels.len();
            loss_sum += s.loss as f64;
            correct += s.correct;
            seen += labels.len();
            batches += 1;
            obs.step(p.step, s.loss);
            obs.advance(1);
            let end_of_epoch = p.step % steps_per_epoch == 0;
            let due = match cfg.eval_every {
                Some(k) => p.step % k.max(1) == 0,
                None => end_of_epoch,
            } || p.step == total;
            if due {
                p.train_seconds += t0.elapsed().as_secs_f64();
                let te = Instant::now();
                let val_metrics = if val.is_empty() {
                    None
                } else {
                    let (metrics, probs) = evaluate_with_probabilities(model, val, classes, cfg.batch_size)?;
                    p.val_probs.push(probs);
                    Some(metrics)
                };
                let test_metrics = if test.is_empty() { None } else { Some(evaluate(model, test, classes, cfg.batch_size)?) };
                let (v, t) = (val_metrics.as_ref().map(|m| m.accuracy), test_metrics.as_ref().map(|m| m.accuracy));
                let point = CurvePoint {
                    step: p.step,
                    epoch: p.samples as f64 / train.len() as f64,
                    lr,
                    train_loss: (loss_sum / batches.max(1) as f64) as f32,
                    train_accuracy: correct as f64 / seen.max(1) as f64,
                    val_accuracy: v,
                    test_accuracy: t,
                    train_seconds: p.train_seconds,
                };
                obs.eval(&point);
                p.curve.push(point);
                (loss_sum, correct, seen, batches) = (0.0, 0, 0, 0);
                let better = match (cfg.select, v, p.best_score) {
                    (Select::BestVal, Some(v), Some(b)) => v > b,
                    _ => true,
                };
                if best.is_none() || better {
                    (p.best_score, p.best_step) = (v, p.step);
                    best = Some(model.weights()?);
                    kept_scores = Some(KeptScores { val: val_metrics, test: test_metrics });
                }
                p.eval_seconds += te.elapsed().as_secs_f64();
                if let Some(save) = save.as_mut() {
                    let best = best.as_ref().expect("set above");
                    // At a new best the current weights are the ones just read out.
                    let later;
                    let now = if p.best_step == p.step {
                        best
                    } else {
                        later = model.weights()?;
                        &later
                    };
                    save(&p, now, best, &model.train_state()?)?;
                }
                if p.step >= total {
                    break 'outer;
                }
                t0 = Instant::now();
                continue;
            }
            if p.step >= total {
                break 'outer;
            }
        }
        p.train_seconds += t0.elapsed().as_secs_f64();
    }
    obs.end();
    // validate() guarantees total ≥ 1 and the last step always evaluates; never panic regardless.
    let best = best.ok_or_else(|| Error::Config(format!("training ran {} step(s) without reaching an evaluation point", p.step)))?;
    model.set_weights(&best)?;
    Ok(TrainOutcome {
        curve: p.curve,
        best_step: p.best_step,
        best,
        train_seconds: p.train_seconds,
        eval_seconds: p.eval_seconds,
        samples: p.samples,
        steps: p.step,
        val_probs: p.val_probs,
        kept_scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::StepStats;
    use crate::freeze::FreezePolicy;

    /// A model for the loop's tests: with `echo` its logits are its input (the cached features
    /// themselves); anything else must never be reached (`Stub { echo: false }`: validation has
    /// to stop the run before the model is touched).
    struct Stub {
        echo: bool,
    }
    impl Model for Stub {
        fn policy(&self) -> FreezePolicy {
            FreezePolicy::default()
        }
        fn extract(&mut self, _: &HostTensor) -> Result<HostTensor> {
            unreachable!("extract")
        }
        fn train_step_with(&mut self, _: &HostTensor, _: Stage, _: crate::Targets<'_>, _: f32) -> Result<StepStats> {
            unreachable!("train_step")
        }
        fn logits(&mut self, x: &HostTensor, _: Stage) -> Result<HostTensor> {
            assert!(self.echo, "logits reached");
            Ok(x.clone())
        }
        fn weights(&self) -> Result<WeightSet> {
            unreachable!("weights")
        }
        fn set_weights(&mut self, _: &WeightSet) -> Result<()> {
            unreachable!("set_weights")
        }
        fn train_state(&self) -> Result<crate::backend::TrainState> {
            unreachable!("train_state")
        }
        fn set_train_state(&mut self, _: &crate::backend::TrainState) -> Result<()> {
            unreachable!("set_train_state")
        }
        fn synchronize(&self) -> Result<()> {
            Ok(())
        }
    }

    fn cached(n: usize) -> Inputs {
        Inputs::Cached { feature_shape: vec![2], views: vec![vec![Arc::from(vec![0f32; 2])]; n], labels: vec![0; n], tta: Tta::None }
    }

    #[test]
    fn bad_loop_settings_are_errors_naming_the_setting() {
        let ok = TrainConfig::default();
        ok.validate().unwrap();
        TrainConfig { epochs: 0, max_steps: Some(5), ..ok }.validate().unwrap();
        let cases = [
            (TrainConfig { max_steps: Some(0), ..ok }, "--steps"),
            (TrainConfig { epochs: 0, max_steps: None, ..ok }, "--epochs"),
            (TrainConfig { batch_size: 0, ..ok }, "--batch-size"),
            (TrainConfig { lr: 0.0, ..ok }, "--lr"),
            (TrainConfig { lr: -1e-3, ..ok }, "--lr"),
            (TrainConfig { lr: f32::NAN, ..ok }, "--lr"),
            (TrainConfig { lr: f32::INFINITY, ..ok }, "--lr"),
            (TrainConfig { eval_every: Some(0), ..ok }, "--eval-every"),
            (TrainConfig { mixup: -0.2, ..ok }, "--mixup"),
            (TrainConfig { mixup: f32::NAN, ..ok }, "--mixup"),
            (TrainConfig { schedule: LrSchedule::Step { every: 0, gamma: 0.1 }, ..ok }, "every"),
        ];
        for (cfg, flag) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{cfg:?}: {e}");
        }
    }

    #[test]
    fn a_zero_step_budget_is_an_error_not_a_panic() {
        let cfg = TrainConfig { max_steps: Some(0), ..Default::default() };
        let (tr, ev) = (cached(4), cached(2));
        let e = train(&mut Stub { echo: false }, &tr, &ev, &ev, 2, &cfg, &crate::observer::Silent).err().unwrap().to_string();
        assert!(e.contains("--steps") && e.contains("at least 1"), "{e}");
        let e = train(&mut Stub { echo: false }, &cached(0), &ev, &ev, 2, &TrainConfig::default(), &crate::observer::Silent);
        assert!(e.err().unwrap().to_string().contains("training split is empty"));
    }

    #[test]
    fn test_time_augmentation_averages_the_softmax_of_the_views() {
        // Sample 0 (class 1): the centre leans to class 0, the mirror strongly to class 1.
        // Sample 1 (class 0): both views say class 0.
        let v = |a: f32, b: f32| -> Arc<[f32]> { Arc::from(vec![a, b]) };
        let views = vec![vec![v(1.0, 0.0), v(0.0, 5.0)], vec![v(2.0, 0.0), v(1.0, 0.0)]];
        let inputs = |tta| Inputs::Cached { feature_shape: vec![2], views: views.clone(), labels: vec![1, 0], tta };
        for batch in [1, 2, 3, 64] {
            assert_eq!(evaluate(&mut Stub { echo: true }, &inputs(Tta::None), 2, batch).unwrap().accuracy, 0.5);
            assert_eq!(evaluate(&mut Stub { echo: true }, &inputs(Tta::Flip), 2, batch).unwrap().accuracy, 1.0);
        }
        // Not enough cached views for ten crops: an error, not a panic or a silent centre crop.
        let e = evaluate(&mut Stub { echo: true }, &inputs(Tta::TenCrop), 2, 64).unwrap_err().to_string();
        assert!(e.contains("needs 10"), "{e}");
        let p = mean_softmax(&HostTensor::new(vec![2, 2], vec![1.0, 0.0, 0.0, 5.0]).unwrap(), 2);
        let s = |a: f64, b: f64| a.exp() / (a.exp() + b.exp());
        assert!((p.data[0] as f64 - (s(1.0, 0.0) + s(0.0, 5.0)) / 2.0).abs() < 1e-7);
        assert!((p.data.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    /// A model whose only state is its step count, held in fc8's bias for `weights()`: its
    /// prediction is right (class 0) only after exactly `peak` steps.
    struct Peaks {
        steps: usize,
        peak: usize,
    }
    impl Peaks {
        fn spec() -> crate::AlexNetSpec {
            crate::AlexNetSpec::head(2, 224, crate::arch::HeadSpec { in_features: 2, hidden: 0 })
        }
    }
    impl Model for Peaks {
        fn policy(&self) -> FreezePolicy {
            FreezePolicy::default()
        }
        fn extract(&mut self, _: &HostTensor) -> Result<HostTensor> {
            unreachable!("extract")
        }
        fn train_step_with(&mut self, _: &HostTensor, _: Stage, t: crate::Targets<'_>, _: f32) -> Result<StepStats> {
            self.steps += 1;
            Ok(StepStats { loss: 1.0, correct: t.len() / 2 })
        }
        fn logits(&mut self, x: &HostTensor, _: Stage) -> Result<HostTensor> {
            let row = if self.steps == self.peak { [1.0, 0.0] } else { [0.0, 1.0] };
            HostTensor::new(vec![x.batch(), 2], row.repeat(x.batch()))
        }
        fn weights(&self) -> Result<WeightSet> {
            let mut w = WeightSet::initialised(&Self::spec(), 0);
            w.set(&crate::LayerId::Fc8.bias_name(), HostTensor::new(vec![2], vec![self.steps as f32, 0.0])?)?;
            Ok(w)
        }
        fn set_weights(&mut self, w: &WeightSet) -> Result<()> {
            self.steps = w.get(&crate::LayerId::Fc8.bias_name()).expect("fc8 bias").data[0] as usize;
            Ok(())
        }
        fn train_state(&self) -> Result<crate::backend::TrainState> {
            Ok(Default::default())
        }
        fn set_train_state(&mut self, _: &crate::backend::TrainState) -> Result<()> {
            Ok(())
        }
        fn synchronize(&self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_kept_weights_are_the_best_on_validation_or_the_last_steps() {
        let cfg = TrainConfig { epochs: 0, max_steps: Some(4), batch_size: 1, eval_every: Some(1), ..Default::default() };
        let (tr, val) = (cached(4), cached(2));
        for (select, kept) in [(Select::BestVal, 2), (Select::Last, 4)] {
            let mut model = Peaks { steps: 0, peak: 2 };
            let out = train(&mut model, &tr, &val, &Inputs::none(), 2, &TrainConfig { select, ..cfg }, &crate::observer::Silent).unwrap();
            assert_eq!((out.best_step, model.steps), (kept, kept), "{select:?}");
            let accuracy: Vec<_> = out.curve.iter().map(|c| c.val_accuracy.unwrap()).collect();
            assert_eq!(accuracy, [0.0, 1.0, 0.0, 0.0]);
            // The kept step's own scores come back, so the job need not score it again.
            let kept_scores = out.kept_scores.as_ref().expect("scored in this call");
            assert_eq!(kept_scores.val.as_ref().map(|m| (m.accuracy, m.samples)), Some((accuracy[kept - 1], 2)), "{select:?}");
            assert!(kept_scores.test.is_none());
        }
        // Files from before the choice existed kept the best on validation; the default keeps the last.
        let old: TrainConfig = serde_json::from_str(&serde_json::to_string(&TrainConfig { select: Select::BestVal, ..cfg }).unwrap()).unwrap();
        assert_eq!(old.select, Select::BestVal);
        assert!(!serde_json::to_string(&old).unwrap().contains("select"));
        assert!(serde_json::to_string(&TrainConfig::default()).unwrap().contains(r#""select":"last""#));
    }

    #[test]
    fn schedules() {
        assert_eq!(LrSchedule::Constant.lr(0.1, 7, 10), 0.1);
        assert_eq!(LrSchedule::Cosine.lr(0.1, 0, 10), 0.1);
        assert!(LrSchedule::Cosine.lr(0.1, 10, 10).abs() < 1e-9);
        assert!((LrSchedule::Cosine.lr(0.1, 5, 10) - 0.05).abs() < 1e-8);
        let step = LrSchedule::Step { every: 3, gamma: 0.5 };
        assert_eq!([0, 2, 3, 6].map(|s| step.lr(1.0, s, 10)), [1.0, 1.0, 0.5, 0.25]);
    }
}
