//! Mixup (Zhang et al., 2018): each training input becomes a convex combination of itself and
//! another sample of the batch, and the loss the same combination of the two labels' losses.
//! On a cached policy the inputs are the frozen layers' features (pool5 for fc6–fc8), so it
//! acts as mixup of the trained layers' input, as manifold mixup does.

use crate::backend::{Model, Stage, StepStats};
use crate::metrics::smoothed_target;
use crate::tensor::HostTensor;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};

/// What a training step's loss is measured against: each sample's label, and with mixup a
/// partner label and the weight λ of the sample's own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Targets<'a> {
    /// Each sample's class; accuracy during training counts against these.
    pub labels: &'a [u32],
    /// Mixup's partner labels and weight, if the inputs were mixed.
    pub mix: Option<Mix<'a>>,
}

/// The second half of a mixed batch's targets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix<'a> {
    /// The label of the sample mixed into each input.
    pub partners: &'a [u32],
    /// Weight of each input's own sample, in [0.5, 1]; its partner has 1 − λ.
    pub lambda: f32,
}

impl<'a> Targets<'a> {
    /// Plain labels, no mixing.
    pub fn hard(labels: &'a [u32]) -> Self {
        Self { labels, mix: None }
    }

    /// The label sets and their weights: `[(labels, 1)]`, or `[(labels, λ), (partners, 1 − λ)]`.
    /// Cross-entropy is linear in its target, so a mixed loss is this weighted sum of plain ones.
    pub fn weighted(&self) -> Vec<(&'a [u32], f32)> {
        match self.mix {
            None => vec![(self.labels, 1.0)],
            Some(m) => vec![(self.labels, m.lambda), (m.partners, 1.0 - m.lambda)],
        }
    }

    /// Sample `i`'s target distribution over `k` classes, label-smoothed by `smoothing`.
    pub fn row(&self, i: usize, k: usize, smoothing: f64) -> Vec<f64> {
        let mut t = vec![0.0; k];
        for (labels, w) in self.weighted() {
            for (j, t) in t.iter_mut().enumerate() {
                *t += w as f64 * smoothed_target(j, labels[i] as usize, k, smoothing);
            }
        }
        t
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Checks every label set has one label per row of a batch of `n`, each below `classes`.
    pub fn check(&self, n: usize, classes: usize) -> crate::Result<()> {
        for (labels, _) in self.weighted() {
            if labels.len() != n {
                return Err(crate::Error::Config(format!("{} labels for a batch of {n}", labels.len())));
            }
            if let Some(l) = labels.iter().find(|l| **l as usize >= classes) {
                return Err(crate::Error::Config(format!("label {l} is out of range for {classes} classes")));
            }
        }
        Ok(())
    }
}

/// Checks a mixup strength: a finite number ≥ 0 (0 is off).
pub fn check_alpha(alpha: f32) -> crate::Result<()> {
    if alpha.is_finite() && alpha >= 0.0 {
        return Ok(());
    }
    Err(crate::Error::Config(format!("mixup strength (--mixup) must be a finite number ≥ 0 (0: off), got {alpha}")))
}

/// A mixed batch: the inputs, and each sample's partner with the shared weight λ.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixed {
    pub x: HostTensor,
    pub partners: Vec<u32>,
    pub lambda: f32,
}

/// Mixes a batch with strength `alpha` > 0, drawn from `seed` alone (so a resumed run draws the
/// same): λ ~ Beta(α, α) folded into [0.5, 1] so each input stays closer to its own sample, and
/// the partners a random permutation of the batch, as in the paper's implementation.
pub fn mix(x: &HostTensor, labels: &[u32], alpha: f32, seed: u64) -> Mixed {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let lambda = match Beta::new(alpha as f64, alpha as f64) {
        Ok(beta) => {
            let l = beta.sample(&mut rng) as f32;
            l.max(1.0 - l)
        }
        Err(_) => 1.0,
    };
    let n = labels.len();
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rng);
    let row = x.row_len();
    let mut data = Vec::with_capacity(x.data.len());
    for (i, &j) in perm.iter().enumerate() {
        let (a, b) = (&x.data[i * row..(i + 1) * row], &x.data[j * row..(j + 1) * row]);
        data.extend(a.iter().zip(b).map(|(a, b)| lambda * a + (1.0 - lambda) * b));
    }
    Mixed { x: HostTensor { shape: x.shape.clone(), data }, partners: perm.iter().map(|&j| labels[j]).collect(), lambda }
}

/// One training step of `model` on a batch entering at `stage`, mixed with strength `alpha`
/// when it is above 0; the draws come from `seed` and `step` alone, so a resumed run mixes the
/// same. The one place the training loop and the learning-rate range test take a step.
#[allow(clippy::too_many_arguments)]
pub(crate) fn step(
    model: &mut dyn Model,
    x: &HostTensor,
    stage: Stage,
    labels: &[u32],
    lr: f32,
    alpha: f32,
    seed: u64,
    step: usize,
) -> crate::Result<StepStats> {
    if alpha <= 0.0 {
        return model.train_step(x, stage, labels, lr);
    }
    let m = mix(x, labels, alpha, seed ^ (step as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    model.train_step_with(&m.x, stage, Targets { labels, mix: Some(Mix { partners: &m.partners, lambda: m.lambda }) }, lr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_mix_two_smoothed_one_hots() {
        let (labels, partners) = ([0u32, 2], [1u32, 2]);
        let t = Targets { labels: &labels, mix: Some(Mix { partners: &partners, lambda: 0.75 }) };
        let r = t.row(0, 3, 0.0);
        assert!((r[0] - 0.75).abs() < 1e-7 && (r[1] - 0.25).abs() < 1e-7 && r[2] == 0.0);
        // Mixed with its own class: the plain (smoothed) target.
        let r = t.row(1, 3, 0.3);
        assert!((r[2] - 0.8).abs() < 1e-7 && (r[0] - 0.1).abs() < 1e-7);
        assert!((t.row(0, 3, 0.3).iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(Targets::hard(&labels).weighted(), vec![(&labels[..], 1.0)]);
        assert!(t.check(2, 3).is_ok());
        assert!(t.check(3, 3).unwrap_err().to_string().contains("2 labels for a batch of 3"));
        assert!(t.check(2, 2).unwrap_err().to_string().contains("label 2"));
    }

    #[test]
    fn mix_is_seeded_convex_and_pairs_rows_with_their_partners() {
        let x = HostTensor { shape: vec![4, 3], data: (0..12).map(|v| v as f32).collect() };
        let labels = [0, 1, 2, 3];
        let m = mix(&x, &labels, 0.4, 7);
        assert_eq!(m, mix(&x, &labels, 0.4, 7));
        assert!((0.5..=1.0).contains(&m.lambda));
        assert!((0..16).any(|s| mix(&x, &labels, 0.4, s).lambda != m.lambda));
        let mut seen = m.partners.clone();
        seen.sort();
        assert_eq!(seen, labels, "partners are a permutation of the batch");
        for (i, &p) in m.partners.iter().enumerate() {
            for c in 0..3 {
                let want = m.lambda * x.data[i * 3 + c] + (1.0 - m.lambda) * x.data[p as usize * 3 + c];
                assert_eq!(m.x.data[i * 3 + c], want);
            }
        }
    }
}
