//! Which Burn backend a device runs on: the one place that asks, so that the input checks and the
//! kernels agree on it.

use burn::backend::DispatchDevice;
use burn::tensor::Device;

/// Whether segloss's fused kernels run on `device`, with or without autodiff: Flex (feature
/// `flex`) and the CubeCL devices, wgpu and CUDA (features `wgpu`, `cuda`).
pub(crate) fn has_fused_kernels(device: &Device) -> bool {
    match without_autodiff(device).as_dispatch() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => true,
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        DispatchDevice::Cube(_) => true,
        _ => false,
    }
}

/// Whether `device` is one of Burn's CubeCL devices (wgpu, CUDA; features `wgpu`, `cuda`), with
/// or without autodiff. Their full reductions run axis by axis (see `input::label_min_max`), and
/// their kernels recompute from the logits rather than saving activations.
pub(crate) fn is_cube(device: &Device) -> bool {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    {
        matches!(
            without_autodiff(device).as_dispatch(),
            DispatchDevice::Cube(_)
        )
    }
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    {
        let _ = device;
        false
    }
}

/// The backend device under `device`'s autodiff layer, if it has one.
fn without_autodiff(device: &Device) -> Device {
    if device.is_autodiff() {
        device.clone().inner()
    } else {
        device.clone()
    }
}
