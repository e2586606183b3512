//! On-disk cache of frozen-prefix features.
//!
//! A cache lives in `<root>/<cut>-<key id>/`, where the key id hashes everything that changes the
//! features: the frozen layers' weight values, the cut point, the preprocessing and the
//! augmentation seed. Inside, entries are keyed by (image content hash, view), so renamed photos
//! still hit and new photos only add entries. Entries are stored in chunk files (safetensors,
//! f32 or f16) written atomically as extraction goes, so an interrupted extraction resumes where
//! it stopped. A chunk that is truncated, corrupt (checksum) or from another key is reported,
//! deleted and rebuilt; it is never used.

use crate::data::{Augment, Preprocess, Tta, View};
use crate::{Error, Result, atomic};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Storage precision of cached features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CacheDtype {
    #[default]
    F32,
    /// Half the disk and memory; features round to ~3 significant digits.
    F16,
}

/// Everything that determines the cached features besides the image itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheKey {
    /// Bumped when the on-disk layout changes.
    pub format: u32,
    /// Content hash of the frozen layers' parameters.
    pub weights_hash: String,
    /// Cut point name (`pool5`, `conv4`, …).
    pub cut: String,
    /// Per-sample feature shape at the cut.
    pub feature_shape: Vec<usize>,
    pub preprocess: Preprocess,
    /// Seeds the augmented views (view ≥ 1).
    pub view_seed: u64,
    pub dtype: CacheDtype,
    /// Scale and colour jitter of the augmented views; left out of the key when off, so caches
    /// written before they existed keep their folder.
    #[serde(default, skip_serializing_if = "Augment::is_off")]
    pub augment: Augment,
}

impl CacheKey {
    /// Current on-disk format.
    pub const FORMAT: u32 = 1;

    /// Short id naming the cache folder.
    pub fn id(&self) -> String {
        let json = serde_json::to_string(self).expect("key serialises");
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(json.as_bytes()))
    }

    /// Floats per cached entry.
    pub fn feature_len(&self) -> usize {
        self.feature_shape.iter().product()
    }

    /// The view behind view index `v` of an image: 0 is the centre crop, indices from
    /// [`TTA_VIEW_BASE`](crate::data::TTA_VIEW_BASE) the fixed test-time views, others augmented
    /// crops seeded by the key's seed, the image's content and `v` (the same across runs).
    pub fn view(&self, content_hash: u128, v: u32) -> View {
        if v == 0 {
            return View::Center;
        }
        if let Some(fixed) = Tta::view_of_index(v) {
            return fixed;
        }
        let mut bytes = self.view_seed.to_le_bytes().to_vec();
        bytes.extend_from_slice(&content_hash.to_le_bytes());
        bytes.extend_from_slice(&v.to_le_bytes());
        self.augment.view(xxhash_rust::xxh3::xxh3_64(&bytes))
    }
}

/// What opening and filling the cache did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CacheStats {
    /// Entries found on disk when opened.
    pub loaded_entries: usize,
    /// Chunk files found unusable (truncated, corrupt, foreign) and deleted.
    pub discarded_chunks: Vec<String>,
    /// Entries computed and written in this run.
    pub written_entries: usize,
}

type EntryId = (u128, u32);
/// A chunk's entries as read from disk.
type ChunkEntries = Vec<(EntryId, Arc<[f32]>)>;

/// A feature cache folder, loaded into memory.
pub struct FeatureCache {
    dir: PathBuf,
    key: CacheKey,
    entries: HashMap<EntryId, Arc<[f32]>>,
    pending: Vec<(EntryId, Arc<[f32]>)>,
    /// When the oldest pending entry was added.
    pending_since: Option<std::time::Instant>,
    chunk_entries: usize,
    pub stats: CacheStats,
}

/// Pending entries reach disk at least this often, so a killed extraction loses at most a few
/// seconds of work however large a chunk may grow.
pub const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl FeatureCache {
    /// Opens (creating if needed) the cache for `key` under `root`, loading every valid chunk.
    pub fn open(root: &Path, key: CacheKey) -> Result<Self> {
        let dir = root.join(format!("{}-{}", key.cut, key.id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let chunk_entries = (8 << 20) / (key.feature_len() * 4).max(1); // ~8 MiB per chunk
        let mut cache = Self {
            dir,
            key,
            entries: HashMap::new(),
            pending: Vec::new(),
            pending_since: None,
            chunk_entries: chunk_entries.clamp(16, 4096),
            stats: CacheStats::default(),
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&cache.dir)
            .map_err(|e| Error::io(&cache.dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        for f in files {
            match cache.read_chunk(&f) {
                Ok(rows) => {
                    cache.stats.loaded_entries += rows.len();
                    cache.entries.extend(rows);
                }
                Err(msg) => {
                    // Never use a damaged chunk: drop it so its entries are recomputed.
                    std::fs::remove_file(&f).map_err(|e| Error::io(&f, e))?;
                    cache.stats.discarded_chunks.push(format!("{}: {msg}", f.display()));
                }
            }
        }
        Ok(cache)
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key this cache was opened with.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Number of entries available (on disk or pending).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Cached features of view `v` of the image with this content hash.
    pub fn get(&self, content_hash: u128, v: u32) -> Option<&Arc<[f32]>> {
        self.entries.get(&(content_hash, v))
    }

    /// Adds an entry; it reaches disk with the next chunk ([`FeatureCache::flush_if_due`],
    /// [`FeatureCache::flush`]).
    pub fn insert(&mut self, content_hash: u128, v: u32, features: Vec<f32>) -> Result<()> {
        if features.len() != self.key.feature_len() {
            return Err(Error::Cache {
                path: self.dir.clone(),
                msg: format!("entry has {} floats, expected {}", features.len(), self.key.feature_len()),
            });
        }
        let features = match self.key.dtype {
            CacheDtype::F32 => features,
            // Keep memory identical to what a later run reads back from disk.
            CacheDtype::F16 => features.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect(),
        };
        let features: Arc<[f32]> = features.into();
        self.entries.insert((content_hash, v), features.clone());
        self.pending.push(((content_hash, v), features));
        self.pending_since.get_or_insert_with(std::time::Instant::now);
        Ok(())
    }

    /// Writes the pending entries as a chunk if a chunk's worth is pending or the oldest is
    /// [`FLUSH_AFTER`] old. Extraction calls it between batches, so a resumed extraction
    /// batches the remaining images exactly as an uninterrupted one would.
    pub fn flush_if_due(&mut self) -> Result<()> {
        match self.pending_since {
            Some(t) if self.pending.len() >= self.chunk_entries || t.elapsed() >= FLUSH_AFTER => self.flush(),
            _ => Ok(()),
        }
    }

    /// Writes pending entries as one new chunk file, atomically.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_since = None;
        let ids: Vec<String> = pending.iter().map(|((h, v), _)| format!("{h:032x}:{v}")).collect();
        let data: Vec<u8> = match self.key.dtype {
            CacheDtype::F32 => pending.iter().flat_map(|(_, f)| f.iter().flat_map(|v| v.to_le_bytes())).collect(),
            CacheDtype::F16 => pending.iter().flat_map(|(_, f)| f.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes())).collect(),
        };
        let mut shape = vec![pending.len()];
        shape.extend_from_slice(&self.key.feature_shape);
        let dtype = match self.key.dtype {
            CacheDtype::F32 => Dtype::F32,
            CacheDtype::F16 => Dtype::F16,
        };
        let view = safetensors::tensor::TensorView::new(dtype, shape, &data).expect("consistent view");
        let ids_json = serde_json::to_string(&ids).expect("ids serialise");
        let mut meta = HashMap::new();
        meta.insert("entries".to_string(), ids_json.clone());
        meta.insert("key".to_string(), serde_json::to_string(&self.key).expect("key serialises"));
        meta.insert("checksum".to_string(), format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&data)));
        let bytes =
            safetensors::serialize([("features", view)], Some(meta)).map_err(|e| Error::Cache { path: self.dir.clone(), msg: e.to_string() })?;
        let name = format!("chunk-{:016x}.safetensors", xxhash_rust::xxh3::xxh3_64(ids_json.as_bytes()));
        atomic::write(&self.dir.join(name), &bytes)?;
        self.stats.written_entries += pending.len();
        Ok(())
    }

    fn read_chunk(&self, path: &Path) -> std::result::Result<ChunkEntries, String> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("truncated or not safetensors ({e})"))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| e.to_string())?;
        let meta = header.metadata().clone().unwrap_or_default();
        let key: CacheKey = meta.get("key").and_then(|k| serde_json::from_str(k).ok()).ok_or("no cache key in header")?;
        if key != self.key {
            return Err("written for another cache key".into());
        }
        let ids: Vec<String> = meta.get("entries").and_then(|e| serde_json::from_str(e).ok()).ok_or("no entry list")?;
        let t = st.tensor("features").map_err(|e| e.to_string())?;
        let data = t.data();
        if meta.get("checksum") != Some(&format!("{:016x}", xxhash_rust::xxh3::xxh3_64(data))) {
            return Err("checksum mismatch (corrupt data)".into());
        }
        let floats: Vec<f32> = match t.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            d => return Err(format!("unexpected dtype {d:?}")),
        };
        let n = self.key.feature_len();
        if floats.len() != ids.len() * n {
            return Err("entry count does not match the data".into());
        }
        ids.iter()
            .zip(floats.chunks_exact(n))
            .map(|(id, f)| {
                let (h, v) = id.split_once(':').ok_or("bad entry id")?;
                let h = u128::from_str_radix(h, 16).map_err(|e| e.to_string())?;
                let v = v.parse::<u32>().map_err(|e| e.to_string())?;
                Ok(((h, v), Arc::from(f)))
            })
            .collect()
    }
}

impl Drop for FeatureCache {
    fn drop(&mut self) {
        // Best effort: keep finished work even if the caller forgot to flush or bailed out early.
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u64) -> CacheKey {
        CacheKey {
            format: CacheKey::FORMAT,
            weights_hash: "abc".into(),
            cut: "pool5".into(),
            feature_shape: vec![2, 3],
            preprocess: Preprocess::default(),
            view_seed: seed,
            dtype: CacheDtype::F32,
            augment: Augment::default(),
        }
    }

    #[test]
    fn round_trips_and_is_keyed() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut c = FeatureCache::open(d.path(), key(1)).unwrap();
            c.insert(7, 0, vec![1., 2., 3., 4., 5., 6.]).unwrap();
            c.insert(7, 1, vec![0.5; 6]).unwrap();
            assert!(c.insert(8, 0, vec![1.0]).is_err());
            c.flush().unwrap();
            assert_eq!(c.stats.written_entries, 2);
        }
        let c = FeatureCache::open(d.path(), key(1)).unwrap();
        assert_eq!(c.stats.loaded_entries, 2);
        assert_eq!(c.get(7, 0).map(|f| &f[..]), Some(&[1., 2., 3., 4., 5., 6.][..]));
        assert!(c.get(7, 2).is_none());
        // Any change of key is another folder: nothing reused.
        assert!(FeatureCache::open(d.path(), key(2)).unwrap().is_empty());
        let mut k = key(1);
        k.preprocess.crop = 227;
        assert_ne!(k.id(), key(1).id());
        assert_eq!(key(1).view(5, 0), View::Center);
        assert_ne!(key(1).view(5, 1), key(1).view(5, 2));
        assert_eq!(key(1).view(5, crate::data::TTA_VIEW_BASE + 1), Tta::Flip.views()[1]);
        // Colour jitter is another folder, but leaves the id of a key without it unchanged.
        let mut jittered = key(1);
        jittered.augment.color_jitter = 0.4;
        assert_ne!(jittered.id(), key(1).id());
        assert!(!serde_json::to_string(&key(1)).unwrap().contains("augment"));
        assert_eq!(
            jittered.view(5, 1),
            View::Augmented {
                seed: match key(1).view(5, 1) {
                    View::Augmented { seed, .. } => seed,
                    v => panic!("{v:?}"),
                },
                color: 0.4,
                scale: 0.0
            }
        );
        // So is scale jitter, and the two together are a third.
        let mut scaled = key(1);
        scaled.augment.crop_scale = 0.35;
        let mut both = scaled.clone();
        both.augment.color_jitter = 0.4;
        let ids = [key(1).id(), jittered.id(), scaled.id(), both.id()];
        assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), 4, "{ids:?}");
        assert!(!serde_json::to_string(&jittered).unwrap().contains("crop_scale"), "a jittered key reads as before");
        assert!(matches!(both.view(5, 1), View::Augmented { color: 0.4, scale: 0.35, .. }));
    }

    #[test]
    fn truncated_and_corrupt_chunks_are_discarded_not_used() {
        let d = tempfile::tempdir().unwrap();
        let dir = {
            let mut c = FeatureCache::open(d.path(), key(1)).unwrap();
            c.insert(1, 0, vec![1.0; 6]).unwrap();
            c.flush().unwrap();
            c.insert(2, 0, vec![2.0; 6]).unwrap();
            c.flush().unwrap();
            c.dir().to_path_buf()
        };
        let mut chunks: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        chunks.sort();
        let b0 = std::fs::read(&chunks[0]).unwrap();
        std::fs::write(&chunks[0], &b0[..b0.len() - 5]).unwrap(); // truncated
        let mut b1 = std::fs::read(&chunks[1]).unwrap();
        *b1.last_mut().unwrap() ^= 0x40; // bit flip in the data
        std::fs::write(&chunks[1], &b1).unwrap();
        let c = FeatureCache::open(d.path(), key(1)).unwrap();
        assert!(c.is_empty());
        assert_eq!(c.stats.discarded_chunks.len(), 2);
        assert!(c.stats.discarded_chunks.iter().any(|m| m.contains("truncated")));
        assert!(c.stats.discarded_chunks.iter().any(|m| m.contains("checksum")));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn f16_storage_reads_back_what_was_served() {
        let d = tempfile::tempdir().unwrap();
        let mut k = key(1);
        k.dtype = CacheDtype::F16;
        let served = {
            let mut c = FeatureCache::open(d.path(), k.clone()).unwrap();
            c.insert(9, 0, vec![0.1, 1.0 / 3.0, 2.5, -7.25, 1e-3, 100.0]).unwrap();
            c.get(9, 0).unwrap().to_vec()
        };
        let c = FeatureCache::open(d.path(), k).unwrap();
        assert_eq!(&c.get(9, 0).unwrap()[..], served.as_slice());
        // What was served is the f16 value, not the f32 one that went in.
        assert_eq!(served[1], half::f16::from_f32(1.0 / 3.0).to_f32());
        assert_ne!(served[1], 1.0 / 3.0);
    }
}
