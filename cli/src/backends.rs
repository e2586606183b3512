//! Picks a backend by name.

use alexnet_core::{Backend, DeviceSpec};
use anyhow::{bail, Result};

/// Backends compiled into this binary.
pub const AVAILABLE: &[&str] = &[
    #[cfg(feature = "candle")]
    "candle",
    #[cfg(feature = "tch")]
    "tch",
    #[cfg(feature = "burn")]
    "burn",
];

/// The backend called `name` on `device`.
pub fn make(name: &str, device: DeviceSpec) -> Result<Box<dyn Backend>> {
    #[allow(unused_variables)] // used only by the arms of backends left out of this build
    let missing = |feature: &str, how: &str| {
        anyhow::anyhow!(
            "backend {name:?} is not built into this binary (available: {}): build with `--features {feature}`{how}",
            AVAILABLE.join(", ")
        )
    };
    match name {
        #[cfg(feature = "candle")]
        "candle" => Ok(Box::new(backend_candle::CandleBackend::new(device)?)),
        #[cfg(feature = "tch")]
        "tch" => Ok(Box::new(backend_tch::TchBackend::new(device)?)),
        #[cfg(feature = "burn")]
        "burn" => Ok(Box::new(backend_burn::BurnBackend::new(device)?)),
        #[cfg(not(feature = "candle"))]
        "candle" => Err(missing("candle", "")),
        #[cfg(not(feature = "tch"))]
        "tch" => Err(missing("tch", " and LIBTORCH set (scripts/setup-libtorch.sh)")),
        #[cfg(not(feature = "burn"))]
        "burn" => Err(missing("burn", "")),
        "all" => bail!("--backend all is for `experiment`; pick one of {} here", AVAILABLE.join(", ")),
        _ => bail!("unknown backend {name:?}: expected one of candle, tch, burn (built in: {})", AVAILABLE.join(", ")),
    }
}

/// `all` (every backend built in) or one backend.
pub fn make_many(name: &str, device: DeviceSpec) -> Result<Vec<Box<dyn Backend>>> {
    if name == "all" {
        AVAILABLE.iter().map(|n| make(n, device)).collect()
    } else {
        Ok(vec![make(name, device)?])
    }
}
