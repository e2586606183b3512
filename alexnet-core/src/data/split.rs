//! Deterministic train/validation/test split by a hash of each image's relative path.

use crate::data::Sample;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which part of the data an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

/// Percentages for validation and test; the rest trains.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitConfig {
    pub val_percent: f64,
    pub test_percent: f64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self { val_percent: 10.0, test_percent: 10.0 }
    }
}

impl SplitConfig {
    /// Checks the percentages leave something to train on.
    pub fn validate(&self) -> Result<()> {
        let ok = |p: f64| (0.0..100.0).contains(&p);
        if !ok(self.val_percent) || !ok(self.test_percent) || self.val_percent + self.test_percent >= 100.0 {
            return Err(Error::Config(format!(
                "--val-percent {} and --test-percent {} must each be in [0, 100) and leave some training data",
                self.val_percent, self.test_percent
            )));
        }
        Ok(())
    }

    /// The split of one image. Depends only on its relative path, so adding or removing other
    /// photos never moves an image between splits.
    pub fn assign(&self, rel_path: &str) -> Split {
        // 10,000 buckets: percentages with two decimals are exact.
        let bucket = (xxhash_rust::xxh3::xxh3_64(rel_path.as_bytes()) % 10_000) as f64 / 100.0;
        if bucket < self.test_percent {
            Split::Test
        } else if bucket < self.test_percent + self.val_percent {
            Split::Val
        } else {
            Split::Train
        }
    }

    /// Indices of `samples` in `split`, in their original order.
    pub fn indices(&self, samples: &[Sample], split: Split) -> Vec<usize> {
        samples.iter().enumerate().filter(|(_, s)| self.assign(&s.rel) == split).map(|(i, _)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn samples(n: usize, offset: usize) -> Vec<Sample> {
        (offset..offset + n)
            .map(|i| Sample { path: PathBuf::from(format!("c/{i}.jpg")), rel: format!("c/{i}.jpg"), label: 0 })
            .collect()
    }

    #[test]
    fn deterministic_proportional_and_stable_under_additions() {
        let cfg = SplitConfig::default();
        let s = samples(5000, 0);
        let test = cfg.indices(&s, Split::Test);
        let val = cfg.indices(&s, Split::Val);
        assert_eq!(test, cfg.indices(&s, Split::Test));
        for (n, want) in [(test.len(), 500.0), (val.len(), 500.0)] {
            assert!((n as f64 - want).abs() < 70.0, "{n} vs {want}");
        }
        // Adding photos never moves the old ones.
        let mut more = s.clone();
        more.extend(samples(1000, 5000));
        for (i, x) in s.iter().enumerate() {
            assert_eq!(cfg.assign(&x.rel), cfg.assign(&more[i].rel));
        }
        assert!(SplitConfig { val_percent: 60.0, test_percent: 40.0 }.validate().is_err());
    }
}
