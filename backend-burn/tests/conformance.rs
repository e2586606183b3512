//! The shared conformance suite on burn's flex CPU backend.

alexnet_core::conformance_tests!(backend_burn::BurnBackend::cpu());

#[cfg(feature = "vulkan")]
alexnet_core::conformance_tests!(vulkan, backend_burn::BurnBackend::new(alexnet_core::DeviceSpec::Cuda(0)).expect("a GPU with a Vulkan driver"));
