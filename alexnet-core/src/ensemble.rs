//! Ensembles: several models of one setting, trained with different seeds (initialisation of
//! the new layers, shuffling, dropout) on the same cached features, whose softmax outputs are
//! averaged. fc6 and fc7 start from random weights here (no pretrained ones exist), so members
//! differ in what they learn and their errors partly cancel.

use crate::backend::{Model, Stage, StepStats, TrainState};
use crate::freeze::FreezePolicy;
use crate::metrics::{Confusion, EvalMetrics, argmax_rows};
use crate::tensor::HostTensor;
use crate::weights::WeightSet;
use crate::{Error, Result, Targets};
use serde::{Deserialize, Serialize};

/// The most members an ensemble may have (`--ensemble`).
pub const MAX_MEMBERS: u32 = 16;

/// Seed offset between members: member `m` adds `m × MEMBER_SEED_STRIDE` to the initialisation,
/// shuffling and dropout seeds. Far from the `+1, +2, …` of `experiment --repeats`, so no member
/// of one repeat trains with another repeat's seeds.
pub const MEMBER_SEED_STRIDE: u64 = 1000;

/// One member: a single model, the default (`#[serde(default = ...)]` of a member count).
pub fn one_member() -> u32 {
    1
}

/// A single model: member counts of 1 are left out of JSON, so files from before ensembles
/// existed still match (`#[serde(skip_serializing_if = ...)]`).
pub fn is_one_member(n: &u32) -> bool {
    *n == 1
}

/// The file of ensemble member `m` given member 0's `path`: `path` itself for member 0, else
/// `member{m}` before the extension (`model.safetensors` → `model.member1.safetensors`).
pub fn member_file(path: &std::path::Path, m: u32) -> std::path::PathBuf {
    if m == 0 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let name = match path.extension() {
        Some(ext) => format!("{stem}.member{m}.{}", ext.to_string_lossy()),
        None => format!("{stem}.member{m}"),
    };
    path.with_file_name(name)
}

/// The seed offset of member `m`.
pub fn member_seed_offset(m: u32) -> u64 {
    u64::from(m) * MEMBER_SEED_STRIDE
}

/// One member of a trained ensemble, and the ensemble of the members up to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberReport {
    /// 0-based; member 0 has the run's own seeds.
    pub member: u32,
    /// Added to the run's seeds ([`member_seed_offset`]).
    pub seed_offset: u64,
    /// Step whose weights are the member (the best on validation, or the last).
    pub best_step: usize,
    /// The member's learning curve (validation only: test is scored once, at the end).
    pub curve: Vec<crate::report::CurvePoint>,
    /// The member alone.
    pub val_accuracy: f64,
    pub test_accuracy: f64,
    /// Members 0..=member averaged.
    pub ensemble_val_accuracy: f64,
    pub ensemble_test_accuracy: f64,
    /// The member alone, and members 0..=member averaged, on validation with the selection
    /// bias removed ([`crate::selection::crossfit_accuracy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_crossfit: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble_val_crossfit: Option<f64>,
}

/// Per-sample class probabilities summed over members, for scoring ensembles of the first k.
#[derive(Debug, Clone)]
pub struct ProbabilitySum {
    classes: usize,
    sum: Vec<f64>,
    members: u32,
}

impl ProbabilitySum {
    pub fn new(samples: usize, classes: usize) -> Self {
        Self { classes, sum: vec![0.0; samples * classes], members: 0 }
    }

    /// Adds one member's probabilities (`[samples, classes]`).
    pub fn add(&mut self, probs: &HostTensor) -> Result<()> {
        if probs.len() != self.sum.len() {
            return Err(Error::Config(format!("{} probabilities for an ensemble expecting {}", probs.len(), self.sum.len())));
        }
        for (s, p) in self.sum.iter_mut().zip(&probs.data) {
            *s += f64::from(*p);
        }
        self.members += 1;
        Ok(())
    }

    /// The members' mean probabilities so far.
    pub fn mean(&self) -> HostTensor {
        let n = f64::from(self.members.max(1));
        let data = self.sum.iter().map(|s| (s / n) as f32).collect();
        HostTensor::new(vec![self.sum.len() / self.classes.max(1), self.classes], data).expect("consistent shape")
    }

    /// Accuracy, per-class accuracy and confusion of the arg-max of the mean against `labels`.
    pub fn metrics(&self, labels: &[u32]) -> EvalMetrics {
        let mut conf = Confusion::new(self.classes);
        conf.add(labels, &argmax_rows(&self.mean()));
        conf.into()
    }
}

/// Trained members as one inference [`Model`]: its logits are the log of the members' mean
/// softmax, so a softmax of them (and test-time augmentation's average over views) gives the
/// ensemble's probabilities, and their arg-max its prediction.
pub struct Ensemble {
    members: Vec<Box<dyn Model>>,
    shared_prefix: bool,
}

impl Ensemble {
    /// `members` (at least one). With `shared_prefix` their frozen prefixes are identical
    /// (the same pretrained layers under the same policy): images run it once, through member 0,
    /// and every member continues from its output.
    pub fn new(members: Vec<Box<dyn Model>>, shared_prefix: bool) -> Result<Self> {
        if members.is_empty() {
            return Err(Error::Config("an ensemble needs at least one member".into()));
        }
        Ok(Self { members, shared_prefix })
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Never true: an ensemble has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn not_trainable(what: &str) -> Error {
        Error::Config(format!("an ensemble is trained member by member, not as one model ({what})"))
    }
}

/// Row-wise log of the mean softmax of `logits` (each `[N, C]`), in f64.
pub fn log_mean_softmax(logits: &[HostTensor]) -> Result<HostTensor> {
    let first = logits.first().ok_or_else(|| Error::Config("no logits to average".into()))?;
    let (n, k) = (first.batch(), first.row_len());
    if let Some(l) = logits.iter().find(|l| l.shape != first.shape) {
        return Err(Error::Config(format!("members disagree on the logits' shape: {:?} and {:?}", first.shape, l.shape)));
    }
    let mut out = vec![0f32; n * k];
    for i in 0..n {
        let mut acc = vec![0f64; k];
        for l in logits {
            crate::train::add_softmax(&mut acc, l.row(i));
        }
        for (o, a) in out[i * k..(i + 1) * k].iter_mut().zip(acc) {
            // A probability that underflowed stays the smallest, not −∞ (keeps later sums finite).
            *o = (a / logits.len() as f64).max(f64::MIN_POSITIVE).ln() as f32;
        }
    }
    HostTensor::new(vec![n, k], out)
}

impl Model for Ensemble {
    fn policy(&self) -> FreezePolicy {
        self.members[0].policy()
    }

    fn extract(&mut self, images: &HostTensor) -> Result<HostTensor> {
        self.members[0].extract(images)
    }

    fn train_step_with(&mut self, _: &HostTensor, _: Stage, _: Targets<'_>, _: f32) -> Result<StepStats> {
        Err(Self::not_trainable("train_step"))
    }

    fn logits(&mut self, x: &HostTensor, stage: Stage) -> Result<HostTensor> {
        let (input, stage) = match (stage, self.shared_prefix) {
            (Stage::Image, true) => (std::borrow::Cow::Owned(self.members[0].extract(x)?), Stage::Cut),
            _ => (std::borrow::Cow::Borrowed(x), stage),
        };
        let all = self.members.iter_mut().map(|m| m.logits(&input, stage)).collect::<Result<Vec<_>>>()?;
        log_mean_softmax(&all)
    }

    fn weights(&self) -> Result<WeightSet> {
        Err(Self::not_trainable("weights: each member has its own"))
    }

    fn set_weights(&mut self, _: &WeightSet) -> Result<()> {
        Err(Self::not_trainable("set_weights"))
    }

    fn train_state(&self) -> Result<TrainState> {
        Err(Self::not_trainable("train_state"))
    }

    fn set_train_state(&mut self, _: &TrainState) -> Result<()> {
        Err(Self::not_trainable("set_train_state"))
    }

    fn synchronize(&self) -> Result<()> {
        self.members.iter().try_for_each(|m| m.synchronize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::mean_softmax;

    /// Logits are the input times a per-member factor; extraction negates (to see it ran once).
    struct Scale {
        factor: f32,
        extracted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }
    impl Model for Scale {
        fn policy(&self) -> FreezePolicy {
            FreezePolicy::default()
        }
        fn extract(&mut self, x: &HostTensor) -> Result<HostTensor> {
            self.extracted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(HostTensor::new(x.shape.clone(), x.data.iter().map(|v| -v).collect()).unwrap())
        }
        fn train_step_with(&mut self, _: &HostTensor, _: Stage, _: Targets<'_>, _: f32) -> Result<StepStats> {
            unreachable!()
        }
        fn logits(&mut self, x: &HostTensor, stage: Stage) -> Result<HostTensor> {
            let x = if stage == Stage::Image { self.extract(x)? } else { x.clone() };
            Ok(HostTensor::new(x.shape.clone(), x.data.iter().map(|v| v * self.factor).collect()).unwrap())
        }
        fn weights(&self) -> Result<WeightSet> {
            unreachable!()
        }
        fn set_weights(&mut self, _: &WeightSet) -> Result<()> {
            unreachable!()
        }
        fn train_state(&self) -> Result<TrainState> {
            unreachable!()
        }
        fn set_train_state(&mut self, _: &TrainState) -> Result<()> {
            unreachable!()
        }
        fn synchronize(&self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_ensemble_predicts_the_mean_of_its_members_softmax() {
        let x = HostTensor::new(vec![2, 3], vec![1.0, 0.0, -1.0, 0.5, 2.0, 0.0]).unwrap();
        for shared in [false, true] {
            let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let member = |factor| Box::new(Scale { factor, extracted: count.clone() }) as Box<dyn Model>;
            let mut e = Ensemble::new(vec![member(1.0), member(3.0), member(-2.0)], shared).unwrap();
            let got = mean_softmax(&e.logits(&x, Stage::Image).unwrap(), 1);
            // By hand: the members' softmax of the extracted (negated) input, averaged.
            let neg = HostTensor::new(x.shape.clone(), x.data.iter().map(|v| -v).collect()).unwrap();
            let want: Vec<f32> = (0..6)
                .map(|i| {
                    let p = |f: f32| mean_softmax(&HostTensor::new(neg.shape.clone(), neg.data.iter().map(|v| v * f).collect()).unwrap(), 1).data[i];
                    (p(1.0) + p(3.0) + p(-2.0)) / 3.0
                })
                .collect();
            for (g, w) in got.data.iter().zip(&want) {
                assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
            }
            // The shared prefix runs once for the three members; otherwise once per member.
            assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), if shared { 1 } else { 3 });
            assert!(e.train_step(&x, Stage::Cut, &[0, 1], 0.1).unwrap_err().to_string().contains("member by member"));
        }
        assert!(Ensemble::new(vec![], false).is_err());
    }

    #[test]
    fn probability_sums_score_the_first_k_members() {
        let labels = [0, 1];
        let mut s = ProbabilitySum::new(2, 2);
        // Member 0 gets sample 1 wrong; member 1 is confident and right on both.
        s.add(&HostTensor::new(vec![2, 2], vec![0.9, 0.1, 0.6, 0.4]).unwrap()).unwrap();
        assert_eq!(s.metrics(&labels).accuracy, 0.5);
        s.add(&HostTensor::new(vec![2, 2], vec![0.6, 0.4, 0.1, 0.9]).unwrap()).unwrap();
        assert_eq!(s.metrics(&labels).accuracy, 1.0);
        assert!((s.mean().data[2] - 0.35).abs() < 1e-7);
        assert!(s.add(&HostTensor::new(vec![1, 2], vec![0.5, 0.5]).unwrap()).is_err());
        assert_eq!(member_seed_offset(0), 0);
        assert_eq!(member_seed_offset(2), 2 * MEMBER_SEED_STRIDE);
    }

    #[test]
    fn member_files_sit_beside_member_0s() {
        let p = std::path::Path::new("run/checkpoint.safetensors");
        assert_eq!(member_file(p, 0), p);
        assert_eq!(member_file(p, 3), std::path::Path::new("run/checkpoint.member3.safetensors"));
        assert_eq!(member_file(std::path::Path::new("run/model.safetensors"), 1), std::path::Path::new("run/model.member1.safetensors"));
        assert_eq!(member_file(std::path::Path::new("ckpt"), 1), std::path::Path::new("ckpt.member1"));
    }
}
