//! Devices by name for the benchmark programs (`examples/loss_bench.rs`, `benches/fused.rs`, and
//! `segloss-gpu-check`, which include this file): `flex`, and with the `wgpu` feature `wgpu`
//! (the adapter wgpu prefers), `wgpu-cpu` (a software adapter such as lavapipe), `wgpu-gpu`
//! (the first discrete GPU), with the `cuda` feature `cuda` (GPU 0).

use burn::tensor::Device;

/// The device called `name`, or `None` for an unknown name or one whose feature is not compiled in.
pub fn by_name(name: &str) -> Option<Device> {
    match name {
        "flex" => Some(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Some(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "wgpu")]
        "wgpu-cpu" => Some(Device::wgpu(burn::tensor::DeviceKind::Cpu)),
        #[cfg(feature = "wgpu")]
        "wgpu-gpu" => Some(Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(0))),
        #[cfg(feature = "cuda")]
        "cuda" => Some(Device::cuda(0)),
        _ => None,
    }
}
