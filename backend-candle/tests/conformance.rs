//! The shared conformance suite on candle: CPU always, CUDA with the `cuda` feature.

alexnet_core::conformance_tests!(backend_candle::CandleBackend::cpu());

#[cfg(feature = "cuda")]
alexnet_core::conformance_tests!(cuda, backend_candle::CandleBackend::new(alexnet_core::DeviceSpec::Cuda(0)).expect("a CUDA device"));
