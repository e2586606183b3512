//! Picks a backend by name.

use alexnet_core::{Backend, DeviceSpec};
use anyhow::{bail, Result};

/// Backends compiled into this binary.
pub const AVAILABLE: &[&str] = &[
    #[cfg(feature = "candle")]
    "candle",
];

/// The backend called `name` on `device`.
pub fn make(name: &str, device: DeviceSpec) -> Result<Box<dyn Backend>> {
    match name {
        #[cfg(feature = "candle")]
        "candle" => Ok(Box::new(backend_candle::CandleBackend::new(device)?)),
        "tch" | "burn" => bail!(
            "backend {name:?} is not built into this binary (available: {}); it has not landed yet",
            AVAILABLE.join(", ")
        ),
        _ => bail!("unknown backend {name:?}: expected one of candle, tch, burn (built in: {})", AVAILABLE.join(", ")),
    }
}
