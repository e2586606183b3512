//! Shared set-up for the cross-backend benchmarks: which backends are built, and inputs.

use alexnet_core::{AlexNetSpec, Backend, FreezePolicy, HostTensor, ModelConfig, WeightSet};
use rand::{Rng, SeedableRng};

/// Every backend compiled into the benches (candle, burn; tch with the `tch` feature) on CPU, and
/// on the GPU too when `ALEXNET_BENCH_CUDA=1` (candle and tch on CUDA; burn through Vulkan with
/// the `vulkan` feature).
pub fn backends() -> Vec<Box<dyn Backend>> {
    let cuda = std::env::var("ALEXNET_BENCH_CUDA").is_ok_and(|v| v == "1");
    let mut v: Vec<Box<dyn Backend>> = vec![Box::new(backend_candle::CandleBackend::cpu())];
    #[cfg(feature = "tch")]
    v.push(Box::new(backend_tch::TchBackend::cpu()));
    v.push(Box::new(backend_burn::BurnBackend::cpu()));
    if cuda {
        match backend_candle::CandleBackend::new(alexnet_core::DeviceSpec::Cuda(0)) {
            Ok(b) => v.push(Box::new(b)),
            Err(e) => eprintln!("skipping candle on CUDA: {e}"),
        }
        #[cfg(feature = "tch")]
        match backend_tch::TchBackend::new(alexnet_core::DeviceSpec::Cuda(0)) {
            Ok(b) => v.push(Box::new(b)),
            Err(e) => eprintln!("skipping tch on CUDA: {e}"),
        }
        #[cfg(feature = "vulkan")]
        match backend_burn::BurnBackend::new(alexnet_core::DeviceSpec::Cuda(0)) {
            Ok(b) => v.push(Box::new(b)),
            Err(e) => eprintln!("skipping burn on the GPU: {e}"),
        }
    }
    v
}

/// A bench id part naming backend and device (`candle`, `candle-cuda0`).
pub fn label(b: &dyn Backend) -> String {
    let d = b.device_name();
    if d.starts_with("cpu") { b.name().to_string() } else { format!("{}-{}", b.name(), d.replace(':', "")) }
}

/// Seeded-random weights for a 5-class AlexNet (speed does not depend on the values).
pub fn weights() -> WeightSet {
    WeightSet::initialised(&AlexNetSpec::new(5), 0)
}

/// A model config for `policy` with default optimiser and dropout.
pub fn config(policy: &str) -> ModelConfig {
    ModelConfig::new(policy.parse::<FreezePolicy>().expect("valid policy"))
}

/// Uniform random input of `shape`.
pub fn random(shape: Vec<usize>, seed: u64) -> HostTensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    HostTensor { shape, data: (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() }
}

/// Labels 0..5 cycling.
pub fn labels(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| i % 5).collect()
}
