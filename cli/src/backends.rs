//! Picks a backend by name.

use alexnet_core::{Backend, DeviceSpec};
use anyhow::{bail, Result};

/// Backends compiled into this binary.
pub const AVAILABLE: &[&str] = &[
    #[cfg(feature = "candle")]
    "candle",
    #[cfg(feature = "tch")]
    "tch",
];

/// The backend called `name` on `device`.
pub fn make(name: &str, device: DeviceSpec) -> Result<Box<dyn Backend>> {
    match name {
        #[cfg(feature = "candle")]
        "candle" => Ok(Box::new(backend_candle::CandleBackend::new(device)?)),
        #[cfg(feature = "tch")]
        "tch" => Ok(Box::new(backend_tch::TchBackend::new(device)?)),
        #[cfg(not(feature = "tch"))]
        "tch" => bail!(
            "backend \"tch\" is not built into this binary (available: {}): build with `--features tch` and LIBTORCH set (scripts/setup-libtorch.sh)",
            AVAILABLE.join(", ")
        ),
        "burn" => bail!("backend \"burn\" has not landed yet (available: {})", AVAILABLE.join(", ")),
        _ => bail!("unknown backend {name:?}: expected one of candle, tch, burn (built in: {})", AVAILABLE.join(", ")),
    }
}
