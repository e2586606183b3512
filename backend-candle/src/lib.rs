//! # backend-candle
//!
//! The alexnet-core [`Backend`] on [candle](https://github.com/huggingface/candle): CPU always,
//! CUDA with the `cuda` feature. Frozen layers are plain tensors, so candle records no graph for
//! them and they get no gradient; trainable layers are `Var`s updated by the PyTorch-equivalent
//! optimisers in [`optim`].

mod kernels;
mod model;
pub mod optim;

use alexnet_core::net::{Extractor, Graph, GraphExtractor};
use alexnet_core::{Backend, DeviceSpec, HostTensor, Model, ModelConfig, Result, WeightSet};
use candle_core::Device;
use std::collections::BTreeMap;

pub use kernels::CandleKernels;
pub use model::CandleModel;

pub(crate) fn err(e: impl std::fmt::Display) -> alexnet_core::Error {
    alexnet_core::Error::backend("candle", e)
}

/// candle on one device.
#[derive(Clone)]
pub struct CandleBackend {
    device: Device,
    spec: DeviceSpec,
}

impl CandleBackend {
    /// The CPU backend.
    pub fn cpu() -> Self {
        Self { device: Device::Cpu, spec: DeviceSpec::Cpu }
    }

    /// A backend on `spec`. CUDA needs the `cuda` feature and a GPU; otherwise this says so.
    pub fn new(spec: DeviceSpec) -> Result<Self> {
        let device = match spec {
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda(i) => Device::new_cuda(i).map_err(|e| {
                err(format!("cannot open cuda:{i}: {e} (build with `--features cuda` on a machine with an NVIDIA GPU; see scripts/build-cuda.sh)"))
            })?,
        };
        Ok(Self { device, spec })
    }

    /// The candle device.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

impl Backend for CandleBackend {
    fn name(&self) -> &'static str {
        "candle"
    }

    fn device_name(&self) -> String {
        self.spec.to_string()
    }

    fn build(&self, weights: &WeightSet, cfg: &ModelConfig) -> Result<Box<dyn Model>> {
        Ok(Box::new(CandleModel::new(&self.device, weights, cfg)?))
    }

    fn extractor(&self, graph: &Graph, cut: &str, weights: &BTreeMap<String, HostTensor>) -> Result<Box<dyn Extractor>> {
        Ok(Box::new(GraphExtractor::new(CandleKernels::new(&self.device), graph, cut, weights)?))
    }
}
