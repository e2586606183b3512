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

/// Percentages for validation and test; the rest trains. With a [`Fold`], the fold is the test
/// part and `val_percent` is the share of the remaining images held out for validation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitConfig {
    pub val_percent: f64,
    pub test_percent: f64,
    /// K-fold cross-validation: this fold is the test part (`test_percent` is then unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<Fold>,
    /// The share of the training part that trains (`--train-percent`), picked by a third
    /// independent hash so that a smaller share is a subset of a larger one: learning curves
    /// (would more photos help?). Validation and test are unchanged. 100, the default, is left
    /// out of the JSON, so configs written before it read the same.
    #[serde(default = "all_of_it", skip_serializing_if = "is_all_of_it")]
    pub train_percent: f64,
}

fn all_of_it() -> f64 {
    100.0
}

fn is_all_of_it(p: &f64) -> bool {
    *p == 100.0
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self { val_percent: 10.0, test_percent: 10.0, fold: None, train_percent: 100.0 }
    }
}

/// Fold `index` of `count` disjoint test folds (`experiment --folds K`): the images whose split
/// bucket (the same path hash as the split, 10,000 buckets) lies in the fold's `1/count` of the
/// bucket range. Fold 0 of 10 is exactly the default 10% test split. Validation is carved from
/// the other folds by a second, independent hash, so every fold trains and selects the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    pub index: u32,
    pub count: u32,
}

impl std::fmt::Display for Fold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The seed of the hash that carves validation from the training folds ("VALID").
const VAL_SEED: u64 = 0x0056_414c_4944;
/// The seed of the hash that picks `--train-percent` of the training part ("TRAIN").
const TRAIN_SEED: u64 = 0x0054_5241_494e;

impl SplitConfig {
    /// Checks the percentages: each in [0, 100), and together under 100 so something trains;
    /// `--train-percent` in (0, 100].
    pub fn validate(&self) -> Result<()> {
        if !(self.train_percent > 0.0 && self.train_percent <= 100.0) {
            return Err(Error::Config(format!(
                "--train-percent {} must be in (0, 100]: the share of the training part that trains",
                self.train_percent
            )));
        }
        for (flag, p) in [("--val-percent", self.val_percent), ("--test-percent", self.test_percent)] {
            if !(0.0..100.0).contains(&p) {
                return Err(Error::Config(format!("{flag} {p} must be in [0, 100)")));
            }
        }
        if let Some(f) = self.fold {
            if f.count < 2 || f.index >= f.count {
                return Err(Error::Config(format!("fold {f}: needs at least 2 folds (--folds K ≥ 2) and an index below K")));
            }
            return Ok(());
        }
        let sum = self.val_percent + self.test_percent;
        if sum >= 100.0 {
            return Err(Error::Config(format!(
                "--val-percent {} + --test-percent {} = {sum} leaves no training data; together they must be under 100",
                self.val_percent, self.test_percent
            )));
        }
        Ok(())
    }

    /// The split of one image. Depends only on its relative path, so adding or removing other
    /// photos never moves an image between splits.
    pub fn assign(&self, rel_path: &str) -> Split {
        // 10,000 buckets: percentages with two decimals are exact.
        let raw = xxhash_rust::xxh3::xxh3_64(rel_path.as_bytes()) % 10_000;
        if let Some(f) = self.fold {
            if raw * f.count as u64 / 10_000 == f.index as u64 {
                return Split::Test;
            }
            let second = (xxhash_rust::xxh3::xxh3_64_with_seed(rel_path.as_bytes(), VAL_SEED) % 10_000) as f64 / 100.0;
            return if second < self.val_percent { Split::Val } else { Split::Train };
        }
        let bucket = raw as f64 / 100.0;
        if bucket < self.test_percent {
            Split::Test
        } else if bucket < self.test_percent + self.val_percent {
            Split::Val
        } else {
            Split::Train
        }
    }

    /// Whether a training image (by its relative path or group key) is among the
    /// `train_percent` that train; always true at 100.
    pub fn trains(&self, rel_path: &str) -> bool {
        self.train_percent >= 100.0
            || (xxhash_rust::xxh3::xxh3_64_with_seed(rel_path.as_bytes(), TRAIN_SEED) % 10_000) as f64 / 100.0 < self.train_percent
    }

    /// Indices of `samples` in `split`, in their original order.
    pub fn indices(&self, samples: &[Sample], split: Split) -> Vec<usize> {
        samples.iter().enumerate().filter(|(_, s)| self.assign(&s.rel) == split).map(|(i, _)| i).collect()
    }

    /// The split of every sample, keeping byte-identical files together: a group of files with
    /// the same content hash goes where the smallest relative path of the group goes, so no image
    /// is both trained on and tested. A file without duplicates goes by its own path, as
    /// [`SplitConfig::assign`]; adding photos moves no old one, except an old file that gains an
    /// identical copy with a smaller path. `hashes[i]` is `None` for files not hashed (bad).
    pub fn assign_samples(&self, samples: &[Sample], hashes: &[Option<u128>]) -> Vec<Split> {
        group_keys(samples, hashes).into_iter().map(|k| self.assign(k)).collect()
    }
}

/// The relative path that decides where each sample goes: its own, or for a group of
/// byte-identical files (same `hashes[i]`) the smallest path of the group, so copies go together.
pub fn group_keys<'a>(samples: &'a [Sample], hashes: &[Option<u128>]) -> Vec<&'a str> {
    let mut key: std::collections::HashMap<u128, &str> = std::collections::HashMap::new();
    for (s, h) in samples.iter().zip(hashes) {
        if let Some(h) = h {
            let k = key.entry(*h).or_insert(&s.rel);
            if s.rel.as_str() < *k {
                *k = &s.rel;
            }
        }
    }
    samples.iter().zip(hashes).map(|(s, h)| h.map_or(s.rel.as_str(), |h| key[&h])).collect()
}

/// The `index`-th of `count` disjoint slices of a data set (`extract --shard I/N`), by the same
/// path hash as the split: every image (and all its byte-identical copies) is in exactly one
/// shard, whatever else is in the folder, so N processes fill one feature cache without overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// 0-based: `0/4` … `3/4` (Kubernetes' JOB_COMPLETION_INDEX; Slurm's array task id from 0).
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Whether the image whose group key ([`group_keys`]) is `key` belongs to this shard.
    pub fn contains(&self, key: &str) -> bool {
        // Seed "SHARD", not the split's hash, so shards are not aligned with splits.
        xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), 0x0053_4841_5244) % self.count as u64 == self.index as u64
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/N` with 0 ≤ I < N.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("{s:?}: expected I/N, e.g. 0/4 (shard I of N, counting from 0)"))?;
        let (index, count) = match (i.trim().parse::<u32>(), n.trim().parse::<u32>()) {
            (Ok(i), Ok(n)) => (i, n),
            _ => return Err(format!("{s:?}: expected I/N with whole numbers, e.g. 0/4")),
        };
        if count == 0 || index >= count {
            return Err(format!("{s:?}: the index counts from 0 and must be below N (0/{n} … {}/{n})", count.max(1) - 1, n = count.max(1)));
        }
        Ok(Self { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn samples(n: usize, offset: usize) -> Vec<Sample> {
        (offset..offset + n).map(|i| Sample { path: PathBuf::from(format!("c/{i}.jpg")), rel: format!("c/{i}.jpg"), label: 0 }).collect()
    }

    #[test]
    fn deterministic_proportional_and_stable_under_additions() {
        let cfg = SplitConfig::default();
        let s = samples(5000, 0);
        let test = cfg.indices(&s, Split::Test);
        let val = cfg.indices(&s, Split::Val);
        let train = cfg.indices(&s, Split::Train);
        // A partition: every sample in exactly one split.
        let mut all: Vec<usize> = test.iter().chain(&val).chain(&train).copied().collect();
        all.sort();
        assert_eq!(all, (0..5000).collect::<Vec<_>>());
        // 10% each: binomial(5000, 0.1) has sd 21, so ±65 is 3 sd.
        for (n, want) in [(test.len(), 500.0), (val.len(), 500.0)] {
            assert!((n as f64 - want).abs() < 65.0, "{n} vs {want}");
        }
        // Adding photos never moves the old ones: the split of the larger set, restricted to the
        // old samples, is the old split (whatever the new samples do to the proportions).
        let mut more = samples(1000, 5000);
        more.extend(s.iter().cloned()); // new ones first, so indices shift too
        let old_rels: std::collections::HashSet<&str> = s.iter().map(|x| x.rel.as_str()).collect();
        for split in [Split::Train, Split::Val, Split::Test] {
            let old: Vec<&str> = cfg.indices(&s, split).into_iter().map(|i| s[i].rel.as_str()).collect();
            let kept: Vec<&str> = cfg.indices(&more, split).into_iter().map(|i| more[i].rel.as_str()).filter(|r| old_rels.contains(r)).collect();
            assert_eq!(kept, old, "{split:?}");
        }
        // The assignment is the hash of the relative path, pinned: changing it would move images
        // between splits (and make `eval --split test` disagree with old runs).
        let pinned: Vec<Split> = (0..16).map(|i| cfg.assign(&format!("daisy/{i}.jpg"))).collect();
        assert_eq!(pinned, PINNED);
        // The path, not the file name, decides: the same name in two classes lands independently.
        assert!((0..200).any(|i| cfg.assign(&format!("a/{i}.jpg")) != cfg.assign(&format!("b/{i}.jpg"))));
        // Percentages shift bucket boundaries monotonically: more test never shrinks the test set.
        let wider = SplitConfig { val_percent: 10.0, test_percent: 20.0, ..SplitConfig::default() };
        let wider_test = wider.indices(&s, Split::Test);
        assert!(test.iter().all(|i| wider_test.contains(i)) && wider_test.len() > test.len());
    }

    #[test]
    fn identical_files_share_a_split_and_unique_ones_keep_theirs() {
        let cfg = SplitConfig::default();
        let s = samples(400, 0);
        // No duplicates: exactly the per-path split.
        let unique: Vec<Option<u128>> = (0..400).map(|i| Some(i as u128)).collect();
        let by_path: Vec<Split> = s.iter().map(|x| cfg.assign(&x.rel)).collect();
        assert_eq!(cfg.assign_samples(&s, &unique), by_path);
        // Every 10th file is a copy of file 0 (hash 0): all of them follow c/0.jpg, the smallest
        // path of the group; files with no hash (bad) go by their path.
        let mut hashes = unique.clone();
        for i in (10..400).step_by(10) {
            hashes[i] = Some(0);
        }
        hashes[7] = None;
        let got = cfg.assign_samples(&s, &hashes);
        for i in 0..400 {
            let want = if i % 10 == 0 { by_path[0] } else { by_path[i] };
            assert_eq!(got[i], want, "{i}");
        }
        // The copies do not all share c/0.jpg's split by chance.
        assert!((10..400).step_by(10).any(|i| by_path[i] != by_path[0]));
        // Order of the samples does not matter: the key is the smallest path, not the first seen.
        let (mut rs, mut rh) = (s.clone(), hashes.clone());
        rs.reverse();
        rh.reverse();
        let mut back = cfg.assign_samples(&rs, &rh);
        back.reverse();
        assert_eq!(back, got);
    }

    #[test]
    fn shards_partition_the_data_and_keep_copies_together() {
        let s = samples(3000, 0);
        let mut hashes: Vec<Option<u128>> = (0..3000).map(|i| Some(i as u128)).collect();
        for i in (7..3000).step_by(7) {
            hashes[i] = Some(3); // copies of c/3.jpg
        }
        let keys = group_keys(&s, &hashes);
        let shards: Vec<Shard> = (0..4).map(|i| format!("{i}/4").parse().unwrap()).collect();
        let owner = |k: &str| {
            let owners: Vec<usize> = (0..4).filter(|j| shards[*j].contains(k)).collect();
            assert_eq!(owners.len(), 1, "{k} is in shards {owners:?}");
            owners[0]
        };
        let mut sizes = [0usize; 4];
        for (i, k) in keys.iter().enumerate() {
            sizes[owner(k)] += 1;
            if i % 7 == 0 && i > 0 {
                assert_eq!(owner(k), owner(keys[3]), "copy {i} left c/3.jpg's shard");
            }
        }
        // The copies do not share a shard by chance: by their own paths they would scatter.
        assert!((7..3000).step_by(7).any(|i| owner(&s[i].rel) != owner(keys[3])));
        // 3000 − 428 copies over 4 shards: none empty, none above half.
        assert!(sizes.iter().all(|n| *n > 300 && *n < 1500), "{sizes:?}");
        for (bad, why) in [("4/4", "below N"), ("1/0", "below N"), ("a/2", "whole numbers"), ("3", "I/N"), ("-1/2", "whole numbers")] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!("2/3".parse::<Shard>().unwrap().to_string(), "2/3");
    }

    use Split::{Test as Te, Train as Tr, Val as Va};
    /// `daisy/0.jpg` … `daisy/15.jpg` under the default 10/10 split (xxh3-64 of the path).
    const PINNED: [Split; 16] = [Tr, Tr, Tr, Va, Tr, Tr, Va, Tr, Tr, Tr, Tr, Tr, Va, Te, Tr, Tr];

    #[test]
    fn folds_partition_the_test_part_and_fold_0_of_10_is_the_default_test_split() {
        let s = samples(5000, 0);
        let fold = |index, count| SplitConfig { fold: Some(Fold { index, count }), ..SplitConfig::default() };
        let mut tested = vec![0; s.len()];
        for k in 0..5 {
            let cfg = fold(k, 5);
            cfg.validate().unwrap();
            let test = cfg.indices(&s, Split::Test);
            // 20% each: binomial(5000, 0.2) has sd 28, ±100 is over 3 sd.
            assert!((test.len() as f64 - 1000.0).abs() < 100.0, "fold {k}: {} test", test.len());
            for i in test {
                tested[i] += 1;
            }
            // Validation is 10% of the rest, by the second hash.
            let val = cfg.indices(&s, Split::Val).len() as f64;
            assert!((val - 400.0).abs() < 70.0, "fold {k}: {val} val");
        }
        assert!(tested.iter().all(|n| *n == 1), "every image is tested in exactly one fold");
        let default = SplitConfig::default();
        assert_eq!(fold(0, 10).indices(&s, Split::Test), default.indices(&s, Split::Test));
        for bad in [fold(5, 5), fold(0, 1)] {
            assert!(bad.validate().unwrap_err().to_string().contains("--folds"));
        }
    }

    #[test]
    fn train_percent_picks_nested_subsets_of_the_training_part_only() {
        let s = samples(5000, 0);
        let at = |p: f64| SplitConfig { train_percent: p, ..SplitConfig::default() };
        let training = |cfg: &SplitConfig| -> Vec<usize> { cfg.indices(&s, Split::Train).into_iter().filter(|i| cfg.trains(&s[*i].rel)).collect() };
        let all = training(&at(100.0));
        assert_eq!(all, SplitConfig::default().indices(&s, Split::Train));
        let (half, most) = (training(&at(50.0)), training(&at(90.0)));
        // About the share asked for (binomial: 4,000 images, sd under 1 point).
        for (got, p) in [(&half, 0.5), (&most, 0.9)] {
            let share = got.len() as f64 / all.len() as f64;
            assert!((share - p).abs() < 0.03, "{share} for {p}");
        }
        // Nested: a learning curve adds photos, it never swaps them.
        assert!(half.iter().all(|i| most.contains(i)) && most.iter().all(|i| all.contains(i)));
        // Independent of the validation carve and the test part, which do not move.
        for split in [Split::Val, Split::Test] {
            assert_eq!(at(50.0).indices(&s, split), SplitConfig::default().indices(&s, split));
        }
        // The default is left out of the JSON, and old JSON reads as 100.
        assert!(!serde_json::to_string(&SplitConfig::default()).unwrap().contains("train_percent"));
        let old: SplitConfig = serde_json::from_str(r#"{"val_percent": 10.0, "test_percent": 10.0}"#).unwrap();
        assert_eq!(old, SplitConfig::default());
        for bad in [0.0, -1.0, 100.5, f64::NAN] {
            let e = at(bad).validate().unwrap_err().to_string();
            assert!(e.contains("--train-percent") && e.contains("(0, 100]"), "{e}");
        }
    }

    #[test]
    fn validate_names_the_flags() {
        SplitConfig::default().validate().unwrap();
        SplitConfig { val_percent: 0.0, test_percent: 0.0, ..SplitConfig::default() }.validate().unwrap();
        SplitConfig { val_percent: 49.5, test_percent: 50.0, ..SplitConfig::default() }.validate().unwrap();
        let sum = SplitConfig { val_percent: 60.0, test_percent: 40.0, ..SplitConfig::default() }.validate().unwrap_err().to_string();
        assert!(sum.contains("--val-percent 60 + --test-percent 40") && sum.contains("under 100"), "{sum}");
        for (cfg, flag) in [
            (SplitConfig { val_percent: -5.0, test_percent: 10.0, ..SplitConfig::default() }, "--val-percent -5"),
            (SplitConfig { val_percent: 10.0, test_percent: 100.0, ..SplitConfig::default() }, "--test-percent 100"),
            (SplitConfig { val_percent: f64::NAN, test_percent: 10.0, ..SplitConfig::default() }, "--val-percent NaN"),
        ] {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(flag) && e.contains("[0, 100)"), "{e}");
        }
    }
}
