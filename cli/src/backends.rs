//! Picks a backend by name.

use alexnet_core::{Backend, DeviceSpec};
use anyhow::{Result, bail};

/// Backends compiled into this binary.
pub const AVAILABLE: &[&str] = &[
    #[cfg(feature = "candle")]
    "candle",
    #[cfg(feature = "tch")]
    "tch",
    #[cfg(feature = "burn")]
    "burn",
];

/// Why backend `name` is not in this binary, and how to build it in.
pub fn not_built(name: &str) -> String {
    let how = match name {
        "tch" => " and LIBTORCH set (scripts/setup-libtorch.sh)",
        _ => "",
    };
    format!("not built into this binary (available: {}): build with `--features {name}`{how}", AVAILABLE.join(", "))
}

/// The backend called `name` on `device`. `args::validate` has already refused names that are
/// unknown or not built in, with a usage error; these errors are for library-style callers.
pub fn make(name: &str, device: DeviceSpec) -> Result<Box<dyn Backend>> {
    match name {
        #[cfg(feature = "candle")]
        "candle" => Ok(Box::new(backend_candle::CandleBackend::new(device)?)),
        #[cfg(feature = "tch")]
        "tch" => Ok(Box::new(backend_tch::TchBackend::new(device)?)),
        #[cfg(feature = "burn")]
        "burn" => Ok(Box::new(backend_burn::BurnBackend::new(device)?)),
        _ if ["candle", "tch", "burn"].contains(&name) => bail!("backend {name:?} is {}", not_built(name)),
        "all" => bail!("--backend all is for `experiment`; pick one of {} here", AVAILABLE.join(", ")),
        _ => bail!("unknown backend {name:?}: expected one of candle, tch, burn (built in: {})", AVAILABLE.join(", ")),
    }
}

/// `all` (every backend built in) or one backend.
pub fn make_many(name: &str, device: DeviceSpec) -> Result<Vec<Box<dyn Backend>>> {
    if name == "all" { AVAILABLE.iter().map(|n| make(n, device)).collect() } else { Ok(vec![make(name, device)?]) }
}
