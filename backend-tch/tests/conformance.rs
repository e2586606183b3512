//! The shared conformance suite on tch: CPU always, cuda:0 with the `cuda` feature.

alexnet_core::conformance_tests!(backend_tch::TchBackend::cpu());

#[cfg(feature = "cuda")]
alexnet_core::conformance_tests!(cuda, backend_tch::TchBackend::new(alexnet_core::DeviceSpec::Cuda(0)).expect("a CUDA device and a CUDA libtorch"));
