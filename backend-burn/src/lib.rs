//! # backend-burn
//!
//! The alexnet-core [`Backend`] on [burn](https://burn.dev) 0.23: its pure-Rust `flex` backend on
//! the CPU, and with the `vulkan` feature an NVIDIA (or other) GPU through wgpu/Vulkan. burn's
//! CUDA runtime is not offered: it links an LLVM bundle that its build script downloads from
//! GitHub, which machines that reach only the package registries cannot do.
//!
//! Frozen layers never enter burn's autodiff decorator, so no tape is recorded for them and they
//! have no gradient; trainable layers are autodiff leaves with `require_grad`, updated by
//! PyTorch's SGD/Adam written in burn tensor ops.

mod kernels;
mod model;

use alexnet_core::net::{Extractor, Graph, GraphExtractor};
use alexnet_core::{Backend, DeviceSpec, HostTensor, Model, ModelConfig, Result, WeightSet};
use burn::tensor::Device;
use std::collections::BTreeMap;

pub use kernels::{BurnKernels, BurnValue};
pub use model::BurnModel;

pub(crate) fn err(e: impl std::fmt::Display) -> alexnet_core::Error {
    alexnet_core::Error::backend("burn", e)
}

/// burn on one device.
#[derive(Clone)]
pub struct BurnBackend {
    device: Device,
    spec: DeviceSpec,
}

impl BurnBackend {
    /// The CPU backend (burn's `flex`).
    pub fn cpu() -> Self {
        Self { device: Device::flex(), spec: DeviceSpec::Cpu }
    }

    /// A backend on `spec`. `cuda:N` means the N-th discrete GPU, driven through Vulkan (feature
    /// `vulkan`); without the feature, or without a Vulkan driver, this says so.
    pub fn new(spec: DeviceSpec) -> Result<Self> {
        match spec {
            DeviceSpec::Cpu => Ok(Self::cpu()),
            #[cfg(feature = "vulkan")]
            DeviceSpec::Cuda(i) => {
                let device = Device::vulkan(burn::tensor::DeviceKind::DiscreteGpu(i));
                // burn opens the device lazily and panics if it cannot: probe it once here.
                let probe = device.clone();
                std::panic::catch_unwind(move || {
                    let t = burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &probe);
                    t.sum().into_scalar::<f32>()
                })
                .map_err(|_| err(format!("cuda:{i}: no Vulkan GPU {i} (is the NVIDIA Vulkan driver, libvulkan.so.1 and its ICD, installed?)")))?;
                Ok(Self { device, spec })
            }
            #[cfg(not(feature = "vulkan"))]
            DeviceSpec::Cuda(i) => Err(err(format!(
                "cuda:{i}: this backend-burn is built for the CPU only; build with `--features burn-vulkan` (GPU through \
                 Vulkan). burn's CUDA runtime does not build from the package registries alone (backend-burn/README.md)"
            ))),
        }
    }
}

impl Backend for BurnBackend {
    fn name(&self) -> &'static str {
        "burn"
    }

    fn device_name(&self) -> String {
        match self.spec {
            DeviceSpec::Cpu => "cpu (flex)".to_string(),
            DeviceSpec::Cuda(i) => format!("vulkan:{i}"),
        }
    }

    fn build(&self, weights: &WeightSet, cfg: &ModelConfig) -> Result<Box<dyn Model>> {
        Ok(Box::new(BurnModel::new(self.device.clone(), weights, cfg)?))
    }

    fn extractor(&self, graph: &Graph, cut: &str, weights: &BTreeMap<String, HostTensor>) -> Result<Box<dyn Extractor>> {
        Ok(Box::new(GraphExtractor::new(BurnKernels::new(&self.device), graph, cut, weights)?))
    }
}
