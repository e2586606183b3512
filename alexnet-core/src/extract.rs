//! Filling the feature cache: run the frozen prefix once per image view that is not cached yet.

use crate::backend::Model;
use crate::cache::FeatureCache;
use crate::data::check::BadFile;
use crate::data::{Prefetcher, Preprocess, Sample};
use crate::observer::Observer;
use crate::tensor::HostTensor;
use crate::{Error, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::time::Instant;

/// What [`fill_cache`] did.
#[derive(Debug, Clone, Default)]
pub struct FillOutcome {
    /// Images decoded and run through the prefix.
    pub extracted_images: usize,
    /// Views computed.
    pub extracted_views: usize,
    pub seconds: f64,
    /// Files that could not be decoded, with the reason; nothing of them is cached.
    pub bad: Vec<BadFile>,
}

/// Hashes every sample's bytes (in parallel), as the cache keys images by content.
pub fn content_hashes(samples: &[Sample]) -> Result<Vec<u128>> {
    samples.par_iter().map(|s| std::fs::read(&s.path).map(|b| xxhash_rust::xxh3::xxh3_128(&b)).map_err(|e| Error::io(&s.path, e))).collect()
}

/// Why a file failed, without the path or advice (the caller lists it by path).
fn reason(e: &Error) -> String {
    match e {
        Error::Image { msg, .. } => msg.clone(),
        Error::Io { source, .. } => format!("cannot read: {source}"),
        e => e.to_string(),
    }
}

/// Makes sure the views `views[i]` (cache view indices) of every sample `i` are cached, computing the missing ones
/// with `model`'s frozen prefix in batches of about `batch` crops. `hashes[i]` is sample `i`'s
/// content hash ([`crate::data::check_files`]); `None` leaves it out. Byte-identical files are
/// computed once. A file that fails to decode does not stop the fill: every one is collected in
/// [`FillOutcome::bad`] and the caller decides; finished chunks are on disk either way.
#[allow(clippy::too_many_arguments)]
pub fn fill_cache(
    model: &mut dyn Model,
    cache: &mut FeatureCache,
    samples: &[Sample],
    hashes: &[Option<u128>],
    views: &[Vec<u32>],
    pre: &Preprocess,
    batch: usize,
    obs: &dyn Observer,
) -> Result<FillOutcome> {
    let start = Instant::now();
    let mut out = FillOutcome::default();
    // (sample indices sharing the content, path, hash, missing views)
    let mut todo: Vec<(Vec<usize>, std::path::PathBuf, u128, Vec<u32>)> = Vec::new();
    let mut by_hash: HashMap<u128, usize> = HashMap::new();
    for (i, s) in samples.iter().enumerate() {
        let Some(h) = hashes[i] else { continue };
        let missing: Vec<u32> = views[i].iter().copied().filter(|v| cache.get(h, *v).is_none()).collect();
        match by_hash.get(&h) {
            Some(&t) => {
                todo[t].0.push(i);
                // Copies in different splits may want different views: compute the union.
                for v in missing {
                    if !todo[t].3.contains(&v) {
                        todo[t].3.push(v);
                    }
                }
            }
            None => {
                by_hash.insert(h, todo.len());
                todo.push((vec![i], s.path.clone(), h, missing));
            }
        }
    }
    todo.retain(|t| !t.3.is_empty());
    if todo.is_empty() {
        return Ok(out);
    }
    obs.begin("extract", todo.len() as u64);
    let max_views = todo.iter().map(|t| t.3.len()).max().unwrap_or(1);
    let images_per_batch = (batch / max_views).max(1);
    let (pre_c, key) = (*pre, cache.key().clone());
    let loader = Prefetcher::new(todo, images_per_batch, 2, move |(ix, path, hash, missing)| {
        let views: Vec<_> = missing.iter().map(|v| key.view(*hash, *v)).collect();
        let r = pre_c.views(path, &views).map(|(_, crops)| crops);
        (ix.clone(), *hash, missing.clone(), r)
    });
    let item_shape = [3, pre.crop as usize, pre.crop as usize];
    for batch in loader {
        let mut rows: Vec<Vec<f32>> = Vec::new();
        let mut ids: Vec<(u128, u32)> = Vec::new();
        let n_images = batch.len();
        for (ix, hash, missing, r) in batch {
            match r {
                Ok(crops) => {
                    ids.extend(missing.iter().map(|v| (hash, *v)));
                    rows.extend(crops);
                }
                Err(e) => {
                    let why = reason(&e);
                    out.bad.extend(ix.iter().map(|i| BadFile { index: *i, path: samples[*i].path.clone(), reason: why.clone() }));
                }
            }
        }
        out.extracted_views += rows.len();
        if !rows.is_empty() {
            let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
            let feats = model.extract(&HostTensor::stack(&item_shape, &refs))?;
            for (k, (h, v)) in ids.into_iter().enumerate() {
                cache.insert(h, v, feats.row(k).to_vec())?;
            }
            cache.flush_if_due()?;
        }
        out.extracted_images += n_images;
        obs.advance(n_images as u64);
    }
    cache.flush()?;
    obs.end();
    out.bad.sort_by_key(|b| b.index);
    out.seconds = start.elapsed().as_secs_f64();
    Ok(out)
}
