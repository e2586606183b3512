//! The learning-rate range test (Smith 2017; fastai's `lr_find`): train for a few steps while
//! the learning rate grows exponentially, record the smoothed loss, and suggest the rate where
//! it falls fastest.

use crate::backend::Model;
use crate::observer::Observer;
use crate::train::Inputs;
use crate::{Error, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Range-test settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrFindConfig {
    /// First learning rate.
    pub start: f32,
    /// Last learning rate (reached at the last step unless the loss diverges first).
    pub end: f32,
    /// Steps from `start` to `end`, the rate multiplied by the same factor each step.
    pub steps: usize,
    pub batch_size: usize,
    /// Seeds the order of the training samples and the choice of cached views.
    pub seed: u64,
    /// Stop once the smoothed loss exceeds this multiple of its minimum (fastai: 4).
    pub divergence: f64,
    /// Mixup strength, as training's (`--mixup`; 0 is off, and left out of the JSON).
    #[serde(default, skip_serializing_if = "crate::backend::is_zero")]
    pub mixup: f32,
}

impl Default for LrFindConfig {
    fn default() -> Self {
        Self { start: 1e-6, end: 1.0, steps: 100, batch_size: 64, seed: 0, divergence: 4.0, mixup: 0.0 }
    }
}

impl LrFindConfig {
    pub fn new(start: f32, end: f32, steps: usize) -> Self {
        Self { start, end, steps, ..Default::default() }
    }

    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Mixes the batches as training with `--mixup alpha` would, so the loss is the one it sees.
    pub fn with_mixup(mut self, alpha: f32) -> Self {
        self.mixup = alpha;
        self
    }

    /// Checks the range (0 < start < end, finite), at least 2 steps and a batch of 1 or more.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(self.start.is_finite() && self.end.is_finite() && self.start > 0.0 && self.start < self.end) {
            return bad(format!("--start-lr {} must be below --end-lr {}, both finite and > 0", self.start, self.end));
        }
        if self.steps < 2 {
            return bad(format!("the range test needs at least 2 steps (--steps), got {}", self.steps));
        }
        crate::mixup::check_alpha(self.mixup)?;
        if self.batch_size == 0 {
            return bad("batch size (--batch-size) must be at least 1".into());
        }
        if !(self.divergence.is_finite() && self.divergence > 1.0) {
            return bad(format!("the divergence factor must be > 1, got {}", self.divergence));
        }
        Ok(())
    }

    /// The learning rate of step `i`.
    pub fn lr(&self, i: usize) -> f32 {
        let t = i as f64 / (self.steps - 1).max(1) as f64;
        (self.start as f64 * (self.end as f64 / self.start as f64).powf(t)) as f32
    }
}

/// One step of the test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrPoint {
    pub lr: f32,
    /// The batch's loss at this rate.
    pub loss: f32,
    /// Exponential moving average of the loss (β = 0.98, bias-corrected), as fastai plots.
    pub smoothed: f64,
}

/// What the test found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LrFindReport {
    pub config: LrFindConfig,
    pub points: Vec<LrPoint>,
    /// The rate where the smoothed loss falls fastest against log(lr) (fastai's "steepest"),
    /// ignoring the first and last tenth of the points; `None` when the loss never fell.
    pub steepest: Option<f32>,
    /// The rate of the lowest smoothed loss, divided by 10 (fastai's "minimum/10").
    pub min_over_10: Option<f32>,
    /// True when the loss diverged before `end`.
    pub stopped_early: bool,
}

/// Runs the range test on `model` (which it trains: build a fresh one for real training).
pub fn lr_find(model: &mut dyn Model, train: &Inputs, cfg: &LrFindConfig, obs: &dyn Observer) -> Result<LrFindReport> {
    cfg.validate()?;
    if train.is_empty() {
        return Err(Error::Config("the training split is empty; lower --val-percent/--test-percent or add images".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut points = Vec::with_capacity(cfg.steps);
    let (beta, mut avg, mut best) = (0.98f64, 0f64, f64::INFINITY);
    let mut stopped_early = false;
    obs.begin("lr-find", cfg.steps as u64);
    'outer: loop {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng);
        let seed = rand::Rng::random::<u64>(&mut rng);
        for b in train.batches(order, cfg.batch_size, seed, 0) {
            let (x, labels) = b?;
            let i = points.len();
            let lr = cfg.lr(i);
            let s = crate::mixup::step(model, &x, train.stage(), &labels, lr, cfg.mixup, cfg.seed, i)?;
            let loss = s.loss as f64;
            avg = beta * avg + (1.0 - beta) * if loss.is_finite() { loss } else { f64::MAX.sqrt() };
            let smoothed = avg / (1.0 - beta.powi(i as i32 + 1));
            points.push(LrPoint { lr, loss: s.loss, smoothed });
            obs.advance(1);
            best = best.min(smoothed);
            if !loss.is_finite() || (i > 0 && smoothed > cfg.divergence * best) {
                stopped_early = points.len() < cfg.steps;
                break 'outer;
            }
            if points.len() == cfg.steps {
                break 'outer;
            }
        }
    }
    obs.end();
    let (steepest, min_over_10) = suggest(&points);
    Ok(LrFindReport { config: *cfg, points, steepest, min_over_10, stopped_early })
}

/// fastai's two suggestions from the smoothed curve: steepest descent against log(lr), and the
/// minimum's rate over 10.
fn suggest(points: &[LrPoint]) -> (Option<f32>, Option<f32>) {
    let n = points.len();
    if n < 3 {
        return (None, None);
    }
    let (lo, hi) = (n / 10, n - n / 10);
    let steepest = (lo.max(1)..hi.max(2).min(n))
        .map(|i| {
            let slope = (points[i].smoothed - points[i - 1].smoothed) / ((points[i].lr as f64).ln() - (points[i - 1].lr as f64).ln());
            (i, slope)
        })
        .filter(|(_, s)| s.is_finite() && *s < 0.0)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| points[i].lr);
    let min = points.iter().filter(|p| p.smoothed.is_finite()).min_by(|a, b| a.smoothed.total_cmp(&b.smoothed)).map(|p| p.lr / 10.0);
    (steepest, min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_grows_geometrically_from_start_to_end() {
        let c = LrFindConfig::new(1e-4, 1.0, 5);
        let lrs: Vec<f32> = (0..5).map(|i| c.lr(i)).collect();
        assert!((lrs[0] - 1e-4).abs() < 1e-10 && (lrs[4] - 1.0).abs() < 1e-6);
        assert!((lrs[2] - 1e-2).abs() < 1e-7, "{lrs:?}");
    }

    #[test]
    fn bad_ranges_are_errors_naming_the_flag() {
        LrFindConfig::default().validate().unwrap();
        for (c, flag) in [
            (LrFindConfig::new(1.0, 1e-3, 100), "--start-lr"),
            (LrFindConfig::new(0.0, 1.0, 100), "--start-lr"),
            (LrFindConfig::new(1e-5, f32::INFINITY, 100), "--end-lr"),
            (LrFindConfig::new(1e-5, 1.0, 1), "--steps"),
            (LrFindConfig::new(1e-5, 1.0, 10).with_batch_size(0), "--batch-size"),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{c:?}: {e}");
        }
    }

    #[test]
    fn suggestions_find_the_steepest_fall_and_the_minimum() {
        // A loss that is flat, falls fastest around lr = 1e-2, bottoms out at 1e-1, then rises.
        let c = LrFindConfig::new(1e-5, 10.0, 61);
        let points: Vec<LrPoint> = (0..61)
            .map(|i| {
                let x = (c.lr(i) as f64).log10();
                let smoothed = 2.0 - 1.5 / (1.0 + (-(x + 2.0) * 4.0).exp()) + if x > -1.0 { (x + 1.0).powi(2) } else { 0.0 };
                LrPoint { lr: c.lr(i), loss: smoothed as f32, smoothed }
            })
            .collect();
        let (steep, min) = suggest(&points);
        let steep = steep.unwrap();
        assert!((steep.log10() + 2.0).abs() < 0.15, "steepest at {steep}");
        let min = min.unwrap();
        assert!(((min * 10.0).log10() + 1.0).abs() < 0.3, "minimum at {}", min * 10.0);
        // A loss that only rises has no steepest descent.
        let rising: Vec<LrPoint> = (0..20).map(|i| LrPoint { lr: c.lr(i), loss: i as f32, smoothed: i as f64 }).collect();
        assert_eq!(suggest(&rising).0, None);
    }
}
