//! Where alexnet-rs keeps its files by default.

use std::path::PathBuf;

/// `$ALEXNET_HOME`, else `$XDG_CACHE_HOME/alexnet-rs`, else `~/.cache/alexnet-rs`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("ALEXNET_HOME") {
        return PathBuf::from(h);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("alexnet-rs")
}

/// The pretrained weights used when none are named: `$ALEXNET_WEIGHTS`, else the file that
/// `alexnet weights fetch` writes, `<home>/weights/alexnet-imagenet-conv.safetensors`.
pub fn default_weights() -> PathBuf {
    std::env::var_os("ALEXNET_WEIGHTS").map(PathBuf::from).unwrap_or_else(|| home().join("weights").join("alexnet-imagenet-conv.safetensors"))
}

/// The Inception-v3 weights that `alexnet weights fetch --backbone inception-v3` writes:
/// `<home>/weights/inception-v3-fid.safetensors` (batch-norm folded; the original TorchScript
/// archive is kept beside it as [`default_inception_torchscript`]).
pub fn default_inception_weights() -> PathBuf {
    home().join("weights").join("inception-v3-fid.safetensors")
}

/// The FID TorchScript archive kept next to [`default_inception_weights`]:
/// `<home>/weights/inception-v3-fid.pt` (an independent oracle for the tch backend).
pub fn default_inception_torchscript() -> PathBuf {
    home().join("weights").join("inception-v3-fid.pt")
}
