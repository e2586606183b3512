//! # alexnet-core
//!
//! Backend-agnostic transfer learning with an ImageNet-pretrained AlexNet: the layer graph
//! ([`arch`]), freeze policy ([`freeze`]), weights and their provenance ([`weights`]), the data
//! pipeline ([`data`]), the on-disk feature cache ([`cache`]), the backend traits ([`backend`]),
//! one training loop ([`train`]) and the end-to-end job ([`job`]). Backends (candle, tch, burn)
//! implement [`backend::Backend`] in their own crates.

pub mod arch;
mod atomic;
pub mod backbone;
pub mod backend;
pub mod cache;
pub mod checkpoint;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod data;
pub mod ensemble;
mod error;
pub mod experiment;
pub mod extract;
pub mod freeze;
pub mod head_first;
pub mod inception_import;
pub mod job;
mod lpips;
pub mod lr_find;
pub mod metrics;
pub mod mixup;
pub mod net;
pub mod observer;
pub mod paths;
#[cfg(any(test, feature = "conformance"))]
pub mod reference;
pub mod report;
pub mod selection;
pub mod tensor;
pub mod torchscript;
pub mod train;
pub mod weights;

pub use arch::{AlexNetSpec, LayerId};
pub use backend::{Backend, DeviceSpec, DropoutMasks, Model, ModelConfig, Optimizer, OptimizerConfig, Stage, StepStats, TrainState};
pub use error::{Error, Result};
pub use freeze::FreezePolicy;
pub use mixup::Targets;
pub use tensor::HostTensor;
pub use weights::{LayerSource, WeightSet};

/// Tells glibc's allocator to keep freed memory for reuse instead of unmapping it. A training step
/// allocates and frees buffers the size of fc6's weight (150 MB); by default each is a fresh
/// `mmap`, whose page faults cost about a third of a cached step on a 2-core machine. Binaries
/// (the CLI, the benches) call this once at start; peak memory then stays reserved. No-op outside
/// glibc.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    atomic::write(path, bytes)
}
