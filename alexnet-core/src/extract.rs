//! Filling the feature cache: run the frozen prefix once per image view that is not cached yet.

use crate::backend::Model;
use crate::cache::FeatureCache;
use crate::data::{Prefetcher, Preprocess, Sample};
use crate::observer::Observer;
use crate::tensor::HostTensor;
use crate::{Error, Result};
use rayon::prelude::*;
use std::time::Instant;

/// What [`fill_cache`] did.
#[derive(Debug, Clone, Default)]
pub struct FillOutcome {
    /// Content hash of each sample, `None` for a file skipped as undecodable.
    pub hashes: Vec<Option<u128>>,
    /// Images decoded and run through the prefix.
    pub extracted_images: usize,
    /// Views computed.
    pub extracted_views: usize,
    pub seconds: f64,
    /// Skipped files, with the reason.
    pub skipped: Vec<String>,
}

/// Hashes every sample's bytes (in parallel), as the cache keys images by content.
pub fn content_hashes(samples: &[Sample]) -> Result<Vec<u128>> {
    samples.par_iter().map(|s| std::fs::read(&s.path).map(|b| xxhash_rust::xxh3::xxh3_128(&b)).map_err(|e| Error::io(&s.path, e))).collect()
}

/// Makes sure views `0..views[i]` of every sample `i` are cached, computing the missing ones
/// with `model`'s frozen prefix in batches of about `batch` crops. Undecodable files are an error
/// naming the file, or, with `skip_bad`, skipped and listed.
#[allow(clippy::too_many_arguments)]
pub fn fill_cache(
    model: &mut dyn Model,
    cache: &mut FeatureCache,
    samples: &[Sample],
    views: &[u32],
    pre: &Preprocess,
    batch: usize,
    skip_bad: bool,
    obs: &dyn Observer,
) -> Result<FillOutcome> {
    let start = Instant::now();
    let hashes = content_hashes(samples)?;
    let mut out = FillOutcome { hashes: hashes.iter().copied().map(Some).collect(), ..Default::default() };
    let todo: Vec<(usize, std::path::PathBuf, u128, Vec<u32>)> = samples
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let missing: Vec<u32> = (0..views[i]).filter(|v| cache.get(hashes[i], *v).is_none()).collect();
            (!missing.is_empty()).then(|| (i, s.path.clone(), hashes[i], missing))
        })
        .collect();
    if todo.is_empty() {
        return Ok(out);
    }
    obs.begin("extract", todo.len() as u64);
    let max_views = todo.iter().map(|t| t.3.len()).max().unwrap_or(1);
    let images_per_batch = (batch / max_views).max(1);
    let (pre_c, key) = (*pre, cache.key().clone());
    let loader = Prefetcher::new(todo, images_per_batch, 2, move |(i, path, hash, missing)| {
        let views: Vec<_> = missing.iter().map(|v| key.view(*hash, *v)).collect();
        let r = pre_c.views(path, &views).map(|(_, crops)| crops);
        (*i, *hash, missing.clone(), r)
    });
    let item_shape = [3, pre.crop as usize, pre.crop as usize];
    for batch in loader {
        let mut rows: Vec<Vec<f32>> = Vec::new();
        let mut ids: Vec<(u128, u32)> = Vec::new();
        let n_images = batch.len();
        for (i, hash, missing, r) in batch {
            match r {
                Ok(crops) => {
                    ids.extend(missing.iter().map(|v| (hash, *v)));
                    rows.extend(crops);
                }
                Err(e) if skip_bad => {
                    obs.message(&format!("skipping: {e}"));
                    out.skipped.push(e.to_string());
                    out.hashes[i] = None;
                }
                Err(e) => return Err(e),
            }
        }
        out.extracted_views += rows.len();
        if !rows.is_empty() {
            let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
            let feats = model.extract(&HostTensor::stack(&item_shape, &refs))?;
            for (k, (h, v)) in ids.into_iter().enumerate() {
                cache.insert(h, v, feats.row(k).to_vec())?;
            }
        }
        out.extracted_images += n_images;
        obs.advance(n_images as u64);
    }
    cache.flush()?;
    obs.end();
    out.seconds = start.elapsed().as_secs_f64();
    Ok(out)
}
