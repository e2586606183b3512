//! Accuracy, per-class accuracy and the confusion matrix.

use crate::Targets;
use crate::tensor::HostTensor;
use serde::{Deserialize, Serialize};

/// Arg-max of each row of `[N, C]` logits.
pub fn argmax_rows(logits: &HostTensor) -> Vec<u32> {
    (0..logits.batch())
        .map(|i| {
            let row = logits.row(i);
            let mut best = 0;
            for (j, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = j;
                }
            }
            best as u32
        })
        .collect()
}

/// The label-smoothed target of class `j` for a sample of class `y` among `k`:
/// (1 − ε)·[j = y] + ε/k.
pub fn smoothed_target(j: usize, y: usize, k: usize, smoothing: f64) -> f64 {
    (1.0 - smoothing) * f64::from(j == y) + smoothing / k as f64
}

/// Mean softmax cross-entropy of `[N, C]` logits against `targets` (label-smoothed by
/// `smoothing`; 0 is one-hot; mixed when the batch was), and its gradient with respect to the
/// logits (`(softmax − target) / N`, row-major). Computed in f64 for stability.
pub fn cross_entropy(logits: &HostTensor, targets: Targets<'_>, smoothing: f32) -> (f64, Vec<f32>) {
    let (n, k) = (logits.batch(), logits.row_len());
    let eps = smoothing as f64;
    let mut loss = 0f64;
    let mut grad = vec![0f32; n * k];
    for i in 0..targets.len() {
        let row = logits.row(i);
        let max = row.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b)) as f64;
        let lse = row.iter().map(|v| (*v as f64 - max).exp()).sum::<f64>().ln() + max;
        for (j, t) in targets.row(i, k, eps).into_iter().enumerate() {
            loss += t * (lse - row[j] as f64);
            grad[i * k + j] = (((row[j] as f64 - lse).exp() - t) / n as f64) as f32;
        }
    }
    (loss / n.max(1) as f64, grad)
}

/// A confusion matrix: `counts[true][predicted]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub counts: Vec<Vec<u64>>,
}

impl Confusion {
    /// An empty matrix for `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self { counts: vec![vec![0; classes]; classes] }
    }

    /// Records predictions against labels.
    pub fn add(&mut self, labels: &[u32], predicted: &[u32]) {
        for (t, p) in labels.iter().zip(predicted) {
            self.counts[*t as usize][*p as usize] += 1;
        }
    }

    /// Number of samples recorded.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Fraction predicted correctly (0 when empty).
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.counts.len()).map(|i| self.counts[i][i]).sum();
        correct as f64 / self.total().max(1) as f64
    }

    /// Recall of each class (`None` for a class with no samples).
    pub fn per_class(&self) -> Vec<Option<f64>> {
        self.counts
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let n: u64 = row.iter().sum();
                (n > 0).then(|| row[i] as f64 / n as f64)
            })
            .collect()
    }
}

/// Metrics of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub accuracy: f64,
    pub per_class_accuracy: Vec<Option<f64>>,
    pub confusion: Confusion,
    pub samples: u64,
}

impl EvalMetrics {
    /// The 95% Wilson score interval of the accuracy, as a binomial proportion of `samples`
    /// (how far the score could move on another draw of as many test images).
    pub fn interval95(&self) -> (f64, f64) {
        wilson95(self.accuracy, self.samples)
    }
}

/// The 95% Wilson score interval of a proportion `p` of `n` trials (z = 1.96); (0, 1) for n = 0.
pub fn wilson95(p: f64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, n) = (1.959_964, n as f64);
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / (1.0 + z * z / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Mean, sample standard deviation and the 95% Student-t interval of the mean of `n` values
/// (several folds or repeats of one setting).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 for one value.
    pub sd: f64,
    /// 95% interval of the mean, `mean ± t(0.975, n−1)·sd/√n`; the whole line for one value.
    pub ci95: (f64, f64),
}

impl Spread {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Some(Self { n, mean, sd: 0.0, ci95: (f64::NEG_INFINITY, f64::INFINITY) });
        }
        let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        let half = t975(n - 1) * sd / (n as f64).sqrt();
        Some(Self { n, mean, sd, ci95: (mean - half, mean + half) })
    }

    /// Whether the interval excludes 0 (for a spread of paired differences: a real difference).
    pub fn excludes_zero(&self) -> bool {
        self.ci95.0 > 0.0 || self.ci95.1 < 0.0
    }
}

/// Student's t 0.975 quantile with `df` degrees of freedom (tables to 30, then the
/// Cornish–Fisher expansion to second order, within 2·10⁻⁴ of the exact value there).
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    let z: f64 = 1.959_964;
    match df {
        0 => f64::INFINITY,
        1..=30 => T[df - 1],
        _ => {
            let d = df as f64;
            z + (z.powi(3) + z) / (4.0 * d) + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * d * d)
        }
    }
}

impl From<Confusion> for EvalMetrics {
    fn from(c: Confusion) -> Self {
        Self { accuracy: c.accuracy(), per_class_accuracy: c.per_class(), samples: c.total(), confusion: c }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_matches_published_values() {
        // Newcombe (1998), Table I: 81 of 263 → 0.2553–0.3662.
        let (lo, hi) = wilson95(81.0 / 263.0, 263);
        assert!((lo - 0.2553).abs() < 5e-4 && (hi - 0.3662).abs() < 5e-4, "{lo} {hi}");
        // 348 of 378 (92.06%): about ±2.7 points, asymmetric towards 50%.
        let (lo, hi) = wilson95(348.0 / 378.0, 378);
        assert!(lo < 0.9206 && hi > 0.9206 && (hi - lo) > 0.05 && (hi - lo) < 0.06, "{lo} {hi}");
        assert_eq!(wilson95(1.0, 0), (0.0, 1.0));
    }

    #[test]
    fn spread_and_t_interval() {
        // Five folds: mean 0.88, sd 0.01 (the values are 0.88 ± √(2·0.0001)…): by hand.
        let v = [0.87, 0.88, 0.89, 0.875, 0.885];
        let s = Spread::of(&v).unwrap();
        assert!((s.mean - 0.88).abs() < 1e-12);
        let sd = (v.iter().map(|x| (x - 0.88f64).powi(2)).sum::<f64>() / 4.0).sqrt();
        assert!((s.sd - sd).abs() < 1e-12);
        let half = 2.776 * sd / 5f64.sqrt();
        assert!((s.ci95.0 - (0.88 - half)).abs() < 1e-12 && (s.ci95.1 - (0.88 + half)).abs() < 1e-12);
        assert!(s.excludes_zero());
        assert!(!Spread::of(&[-0.01, 0.02, 0.0]).unwrap().excludes_zero());
        assert!(Spread::of(&[]).is_none());
        assert!(!Spread::of(&[0.9]).unwrap().excludes_zero(), "one value says nothing about the spread");
        // The expansion continues the table (exact t(0.975, ·): 31 → 2.0395, 40 → 2.0211, 120 → 1.9799).
        for (df, t) in [(31, 2.0395), (40, 2.0211), (120, 1.9799)] {
            assert!((t975(df) - t).abs() < 2e-4, "t975({df}) = {}", t975(df));
        }
        assert!(t975(31) < t975(30) && t975(1000) > 1.96);
    }

    #[test]
    fn confusion_accuracy_and_recall() {
        let logits = HostTensor::new(vec![4, 3], vec![0., 1., 0., 5., 0., 0., 0., 0., 1., 0., 2., 1.]).unwrap();
        let pred = argmax_rows(&logits);
        assert_eq!(pred, vec![1, 0, 2, 1]);
        let mut c = Confusion::new(3);
        c.add(&[1, 0, 1, 1], &pred);
        assert_eq!(c.accuracy(), 0.75);
        assert_eq!(c.per_class(), vec![Some(1.0), Some(2.0 / 3.0), None]);
        assert_eq!(c.counts[1][2], 1);
    }

    #[test]
    fn cross_entropy_and_its_gradient() {
        let logits = HostTensor::new(vec![2, 2], vec![0.0, 0.0, 2.0, 0.0]).unwrap();
        let (loss, grad) = cross_entropy(&logits, Targets::hard(&[0, 1]), 0.0);
        let p = 1.0 / (1.0 + (-2f64).exp()); // softmax of the 2 in row 2
        assert!((loss - (2f64.ln() + -(1.0 - p).ln()) / 2.0).abs() < 1e-12);
        assert_eq!(grad[0], -0.25);
        assert!((grad[3] as f64 - (1.0 - p - 1.0) / 2.0).abs() < 1e-7);
        assert!((grad.iter().sum::<f32>()).abs() < 1e-7);
        // Smoothing 0.2 over 2 classes: targets 0.9 / 0.1.
        let (smooth, grad) = cross_entropy(&logits, Targets::hard(&[0, 1]), 0.2);
        let want = (2f64.ln() - 0.9 * (1.0 - p).ln() - 0.1 * p.ln()) / 2.0;
        assert!((smooth - want).abs() < 1e-8, "{smooth} vs {want}"); // ε = 0.2f32
        assert!((grad[3] as f64 - (1.0 - p - 0.9) / 2.0).abs() < 1e-7);
        assert!((grad[0] as f64 - (0.5 - 0.9) / 2.0).abs() < 1e-7);
        assert!((grad.iter().sum::<f32>()).abs() < 1e-7);
        // Mixed: λ·CE(labels) + (1 − λ)·CE(partners), its gradient the same combination.
        let mix = Targets { labels: &[0, 1], mix: Some(crate::mixup::Mix { partners: &[1, 1], lambda: 0.75 }) };
        let (mixed, mgrad) = cross_entropy(&logits, mix, 0.2);
        let (other, ograd) = cross_entropy(&logits, Targets::hard(&[1, 1]), 0.2);
        assert!((mixed - (0.75 * smooth + 0.25 * other)).abs() < 1e-12);
        for ((m, g), o) in mgrad.iter().zip(&grad).zip(&ograd) {
            assert!((m - (0.75 * g + 0.25 * o)).abs() < 1e-7);
        }
    }
}
