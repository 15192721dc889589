//! Device selection for segloss's GPU checks (`tests/gpu_conformance.rs`).
//!
//! `SEGLOSS_GPU_DEVICE` names the device the fused CubeCL kernel is checked on:
//!
//! | value | device |
//! |---|---|
//! | `wgpu` (default) | `Device::wgpu(DeviceKind::DefaultDevice)`: the adapter wgpu prefers (a software one such as lavapipe where there is nothing else) |
//! | `wgpu-cpu` | `Device::wgpu(DeviceKind::Cpu)`: a software adapter (Mesa's lavapipe or llvmpipe) |
//! | `wgpu-gpu` | `Device::wgpu(DeviceKind::DiscreteGpu(0))` |
//! | `cuda` | `Device::cuda(0)` (needs the `cuda` feature) |

use burn::tensor::Device;

/// The device named by `name` (see the crate docs; `segloss::device` holds the one table), or
/// why there is none in this build. The CPU is refused: this crate checks the GPU kernels.
pub fn device_named(name: &str) -> Result<Device, String> {
    if matches!(name, "cpu" | "flex") {
        return Err(format!(
            "{name:?} is the CPU: name a GPU device (wgpu, wgpu-cpu, wgpu-gpu, cuda)"
        ));
    }
    segloss::device::by_name(name).map_err(|e| e.to_string())
}

/// Opens `device` and runs one small operation on it: `Ok` with the device's own name (the
/// adapter or GPU, as its runtime reports it), or `Err` with the reason it cannot run (no adapter,
/// no driver), caught from the backend's panic.
pub fn probe(device: &Device) -> Result<String, String> {
    let device = device.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(move || {
        let x = burn::tensor::Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
        let sum: f32 = x.sum().into_scalar();
        assert_eq!(sum, 6.0, "the device computes 1 + 2 + 3 = {sum}");
        match device.identity() {
            Some(id) => format!("{} [{}]", id.name, id.fingerprint),
            None => format!("{device:?}"),
        }
    });
    std::panic::set_hook(previous);
    result.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}
