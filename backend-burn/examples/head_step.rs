//! Times the cached-head training step (fc6–fc8 on pool5 features, batch 64) in isolation, for
//! profiling (`perf record target/release/examples/head_step`). The criterion bench
//! `alexnet/head_step/burn/b64` is the measurement of record.

use alexnet_core::{AlexNetSpec, Backend, FreezePolicy, HostTensor, LayerId, ModelConfig, Stage, WeightSet};
use std::time::Instant;

fn main() {
    alexnet_core::retain_freed_memory();
    let steps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let w = WeightSet::initialised(&AlexNetSpec::new(5), 0);
    let b = backend_burn::BurnBackend::cpu();
    let mut m = b.build(&w, &ModelConfig::new(FreezePolicy::from_layer(LayerId::Fc6))).unwrap();
    let x = HostTensor::new(vec![64, 9216], (0..64 * 9216).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect()).unwrap();
    let y: Vec<u32> = (0..64).map(|i| i % 5).collect();
    m.train_step(&x, Stage::Cut, &y, 1e-3).unwrap();
    let t = Instant::now();
    for _ in 0..steps {
        m.train_step(&x, Stage::Cut, &y, 1e-3).unwrap();
    }
    let s = t.elapsed().as_secs_f64() / steps as f64;
    println!("{:.3} s/step, {:.1} samples/s", s, 64.0 / s);
}
