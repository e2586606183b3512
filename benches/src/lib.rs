//! Shared set-up for the cross-backend benchmarks: which backends are built, and inputs.

use alexnet_core::{AlexNetSpec, Backend, FreezePolicy, HostTensor, ModelConfig, WeightSet};
use rand::{Rng, SeedableRng};

pub mod settings;
pub mod summary;

/// The backends the benches run, and those they do not with what would enable them.
pub struct Backends {
    pub run: Vec<Box<dyn Backend>>,
    /// (label as in bench ids, what enables it or why it failed).
    pub skipped: Vec<(String, String)>,
}

/// Every backend compiled into the benches (candle, burn; tch with the `tch` feature) on CPU, and
/// on the GPU too when `ALEXNET_BENCH_CUDA=1` (candle and tch on CUDA; burn through Vulkan with
/// the `vulkan` feature).
pub fn backends() -> Backends {
    let cuda = std::env::var("ALEXNET_BENCH_CUDA").is_ok_and(|v| v == "1");
    let mut run: Vec<Box<dyn Backend>> = vec![Box::new(backend_candle::CandleBackend::cpu())];
    let mut skipped = Vec::new();
    #[cfg(feature = "tch")]
    run.push(Box::new(backend_tch::TchBackend::cpu()));
    #[cfg(not(feature = "tch"))]
    skipped.push(("tch".to_string(), "build with `--features tch` (needs libtorch: LIBTORCH)".to_string()));
    run.push(Box::new(backend_burn::BurnBackend::cpu()));
    let env = "`ALEXNET_BENCH_CUDA=1`";
    if cuda {
        match backend_candle::CandleBackend::new(alexnet_core::DeviceSpec::Cuda(0)) {
            Ok(b) => run.push(Box::new(b)),
            Err(e) => skipped.push(("candle-cuda0".to_string(), format!("failed: {e}"))),
        }
        #[cfg(feature = "tch")]
        match backend_tch::TchBackend::new(alexnet_core::DeviceSpec::Cuda(0)) {
            Ok(b) => run.push(Box::new(b)),
            Err(e) => skipped.push(("tch-cuda0".to_string(), format!("failed: {e}"))),
        }
        #[cfg(not(feature = "tch"))]
        skipped.push(("tch-cuda0".to_string(), "`--features tch` with a CUDA libtorch".to_string()));
        #[cfg(feature = "vulkan")]
        match backend_burn::BurnBackend::new(alexnet_core::DeviceSpec::Cuda(0)) {
            Ok(b) => run.push(Box::new(b)),
            Err(e) => skipped.push(("burn-vulkan0".to_string(), format!("failed: {e}"))),
        }
        #[cfg(not(feature = "vulkan"))]
        skipped.push(("burn-vulkan0".to_string(), "`--features vulkan` (a Vulkan driver)".to_string()));
    } else {
        let candle = if cfg!(feature = "cuda") { env.to_string() } else { format!("`--features cuda` and {env}") };
        let tch = if cfg!(feature = "tch") { env.to_string() } else { format!("`--features tch` (CUDA libtorch) and {env}") };
        let burn = if cfg!(feature = "vulkan") { env.to_string() } else { format!("`--features vulkan` and {env}") };
        skipped.push(("candle-cuda0".to_string(), candle));
        skipped.push(("tch-cuda0".to_string(), tch));
        skipped.push(("burn-vulkan0".to_string(), burn));
    }
    Backends { run, skipped }
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
