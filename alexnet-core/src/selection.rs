//! Validation accuracy free of selection bias.
//!
//! With `--select best-val` the saved model is the one at the evaluation point with the best
//! validation accuracy, so that accuracy is the maximum of several noisy scores of one small set:
//! it overstates what the model does on new photos, and by more the more points there are.
//! Ensembles are hit twice (each member was chosen on the same set), which hid their gain on
//! validation (issue 13).
//!
//! The cross-fitted estimate removes the bias the way nested cross-validation does: split the
//! validation samples into two halves, choose each model's point on one half, score the chosen
//! point(s) on the other, and the other way round; add the hits of both. Every sample is scored
//! by a choice it took no part in. The estimate is slightly pessimistic (each choice saw half the
//! data) and uses only validation, so the test folds still never choose. It is also what showed
//! that keeping the last step (the default, `--select last`) beats choosing on validation here.

use crate::HostTensor;
use crate::metrics::argmax_rows;

/// The two halves of `n` validation samples: even and odd positions. The validation order comes
/// from the split's hash of each file's bytes, so parity is unrelated to content or class.
pub fn halves(n: usize) -> [Vec<usize>; 2] {
    [(0..n).step_by(2).collect(), (1..n).step_by(2).collect()]
}

/// Hits of `probs` (`[samples, classes]`) on the samples `rows`.
fn hits(probs: &HostTensor, labels: &[u32], rows: &[usize]) -> usize {
    let pred = argmax_rows(probs);
    rows.iter().filter(|&&i| pred[i] == labels[i]).count()
}

/// The first point with the most hits on `rows`: ties go to the earlier point, as in training.
fn choose(points: &[HostTensor], labels: &[u32], rows: &[usize]) -> usize {
    let mut best = (0, 0);
    for (i, p) in points.iter().enumerate() {
        let h = hits(p, labels, rows);
        if i == 0 || h > best.1 {
            best = (i, h);
        }
    }
    best.0
}

/// Cross-fitted validation accuracy of the ensemble of `members` (one model: a single member).
/// Each member is the list of its validation probabilities at its evaluation points
/// (`[samples, classes]` each, in step order). For each half, every member's point is chosen on
/// the other half, the chosen points' probabilities are averaged, and their arg-max is scored on
/// this half. `None` when a member has no point, the shapes disagree, or there are fewer than 2
/// samples.
pub fn crossfit_accuracy(members: &[&[HostTensor]], labels: &[u32]) -> Option<f64> {
    let n = labels.len();
    let consistent = |t: &HostTensor| t.batch() == n && t.shape.len() == 2;
    if n < 2 || members.is_empty() || members.iter().any(|m| m.is_empty() || !m.iter().all(consistent)) {
        return None;
    }
    let classes = members[0][0].row_len();
    if members.iter().flat_map(|m| m.iter()).any(|t| t.row_len() != classes) {
        return None;
    }
    let [a, b] = halves(n);
    let mut correct = 0;
    for (score_on, choose_on) in [(&a, &b), (&b, &a)] {
        let mut mean = HostTensor::zeros(vec![n, classes]);
        for m in members {
            let chosen = &m[choose(m, labels, choose_on)];
            for (s, p) in mean.data.iter_mut().zip(&chosen.data) {
                *s += p / members.len() as f32;
            }
        }
        correct += hits(&mean, labels, score_on);
    }
    Some(correct as f64 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probabilities that put 0.9 on each sample's predicted class (two classes).
    fn predicting(pred: &[u32]) -> HostTensor {
        let data = pred.iter().flat_map(|&p| if p == 0 { [0.9, 0.1] } else { [0.1, 0.9] }).collect();
        HostTensor::new(vec![pred.len(), 2], data).unwrap()
    }

    #[test]
    fn halves_cover_every_sample_once() {
        let [a, b] = halves(5);
        assert_eq!((a, b), (vec![0, 2, 4], vec![1, 3]));
    }

    #[test]
    fn a_model_that_never_changes_scores_its_accuracy() {
        let labels = [0, 1, 0, 1, 1, 0];
        let p = predicting(&[0, 1, 1, 1, 0, 0]);
        let points = [p.clone(), p.clone(), p];
        assert_eq!(crossfit_accuracy(&[&points], &labels), Some(4.0 / 6.0));
    }

    #[test]
    fn a_point_that_is_best_by_luck_on_one_half_is_not_credited() {
        // Eight samples, all of class 0. Point 0 is right on the even half only, point 1 on the
        // odd half only, point 2 on three of four of each: the best on the whole set is point 2
        // (6 of 8), the plain best-point score. Choosing on one half picks the point that is
        // perfect there, which is useless on the other half: the cross-fit sees it.
        let labels = [0u32; 8];
        let p0 = predicting(&[0, 1, 0, 1, 0, 1, 0, 1]);
        let p1 = predicting(&[1, 0, 1, 0, 1, 0, 1, 0]);
        let p2 = predicting(&[0, 0, 0, 0, 0, 0, 1, 1]);
        let points = [p0, p1, p2];
        let best_whole = points.iter().map(|p| hits(p, &labels, &(0..8).collect::<Vec<_>>())).max().unwrap();
        assert_eq!(best_whole, 6);
        // Choose on odd (point 1, perfect there) → score it on even: 0 of 4; choose on even
        // (point 0) → score on odd: 0 of 4.
        assert_eq!(crossfit_accuracy(&[&points], &labels), Some(0.0));
    }

    #[test]
    fn an_ensemble_averages_each_members_chosen_point() {
        // Two members, one point each: the ensemble's average decides, confident beats unsure.
        let labels = [0, 1];
        let m0 = [HostTensor::new(vec![2, 2], vec![0.6, 0.4, 0.6, 0.4]).unwrap()];
        let m1 = [HostTensor::new(vec![2, 2], vec![0.45, 0.55, 0.1, 0.9]).unwrap()];
        assert_eq!(crossfit_accuracy(&[&m0], &labels), Some(0.5));
        assert_eq!(crossfit_accuracy(&[&m1], &labels), Some(0.5));
        // Mean: [0.525, 0.475] → 0 (right), [0.35, 0.65] → 1 (right).
        assert_eq!(crossfit_accuracy(&[&m0, &m1], &labels), Some(1.0));
    }

    #[test]
    fn one_model_never_scores_above_its_best_point() {
        // Choosing on half A and scoring on half B adds up to at most the accuracy of A's choice
        // on the whole set, so never more than the best point's: the bias only goes one way.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200 {
            let (n, k, points) = (rng.random_range(2..40), rng.random_range(2..5), rng.random_range(1..8));
            let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..k as u32)).collect();
            let points: Vec<HostTensor> =
                (0..points).map(|_| HostTensor::new(vec![n, k], (0..n * k).map(|_| rng.random::<f32>()).collect()).unwrap()).collect();
            let all: Vec<usize> = (0..n).collect();
            let best = points.iter().map(|p| hits(p, &labels, &all)).max().unwrap() as f64 / n as f64;
            let c = crossfit_accuracy(&[&points], &labels).unwrap();
            assert!(c <= best, "{c} > {best}");
        }
    }

    #[test]
    fn missing_or_inconsistent_points_give_none() {
        let labels = [0, 1];
        let ok = [predicting(&[0, 1])];
        assert_eq!(crossfit_accuracy(&[], &labels), None);
        assert_eq!(crossfit_accuracy(&[&[]], &labels), None);
        assert_eq!(crossfit_accuracy(&[&[predicting(&[0, 1, 1])]], &labels), None);
        assert_eq!(crossfit_accuracy(&[&ok], &[0]), None);
        let three = [HostTensor::new(vec![2, 3], vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0]).unwrap()];
        assert_eq!(crossfit_accuracy(&[&ok, &three], &labels), None);
    }
}
