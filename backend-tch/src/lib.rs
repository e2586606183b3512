//! # backend-tch
//!
//! The alexnet-core [`Backend`] on tch (libtorch): CPU, and CUDA when libtorch has it.

mod kernels;
mod model;

use alexnet_core::net::{Extractor, Graph, GraphExtractor};
use alexnet_core::{Backend, DeviceSpec, HostTensor, Model, ModelConfig, Result, WeightSet};
use std::collections::BTreeMap;

pub use kernels::TchKernels;
pub use model::TchModel;

pub(crate) fn err(e: impl std::fmt::Display) -> alexnet_core::Error {
    alexnet_core::Error::backend("tch", e)
}

/// tch on one device.
#[derive(Clone, Copy)]
pub struct TchBackend {
    device: tch::Device,
    spec: DeviceSpec,
}

/// The binary links only libtorch's CPU library, so its CUDA part would never be loaded and CUDA
/// would silently stay off: load it explicitly (fails cleanly on a CPU-only libtorch).
fn load_torch_cuda() -> Result<()> {
    let name = c"libtorch_cuda.so";
    // SAFETY: dlopen with a valid NUL-terminated name; the handle is kept for the process's life.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a valid C string or null right after a failed dlopen.
        let msg = unsafe {
            let e = libc::dlerror();
            if e.is_null() { "unknown error".to_string() } else { std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned() }
        };
        return Err(err(format!("cannot load libtorch_cuda.so ({msg}): this libtorch has no CUDA, or its lib/ folder is not on the library path")));
    }
    Ok(())
}

impl TchBackend {
    /// The CPU backend.
    pub fn cpu() -> Self {
        Self { device: tch::Device::Cpu, spec: DeviceSpec::Cpu }
    }

    /// A backend on `spec`; CUDA needs a CUDA libtorch and a GPU, and says so otherwise.
    pub fn new(spec: DeviceSpec) -> Result<Self> {
        let device = match spec {
            DeviceSpec::Cpu => tch::Device::Cpu,
            DeviceSpec::Cuda(i) => {
                load_torch_cuda()?;
                let n = tch::Cuda::device_count();
                if (i as i64) >= n {
                    return Err(err(format!("cuda:{i} requested but libtorch sees {n} CUDA device(s)")));
                }
                tch::Device::Cuda(i)
            }
        };
        Ok(Self { device, spec })
    }
}

impl Backend for TchBackend {
    fn name(&self) -> &'static str {
        "tch"
    }

    fn device_name(&self) -> String {
        self.spec.to_string()
    }

    fn build(&self, weights: &WeightSet, cfg: &ModelConfig) -> Result<Box<dyn Model>> {
        Ok(Box::new(TchModel::new(self.device, weights, cfg)?))
    }

    fn extractor(&self, graph: &Graph, cut: &str, weights: &BTreeMap<String, HostTensor>) -> Result<Box<dyn Extractor>> {
        Ok(Box::new(GraphExtractor::new(TchKernels::new(self.device), graph, cut, weights)?))
    }
}
