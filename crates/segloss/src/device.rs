//! Devices by name: the one table behind the command line's `--device`, the benchmark programs
//! and the GPU checks.
//!
//! | name | device | needs |
//! |---|---|---|
//! | `cpu` (or `flex`) | Burn's Flex CPU backend, every core through rayon | feature `flex` (default) |
//! | `wgpu` | the adapter wgpu prefers (a GPU through Vulkan, Metal or DirectX; a software one where there is nothing else) | feature `wgpu` |
//! | `wgpu-cpu` | wgpu's software adapter (Mesa's lavapipe or llvmpipe), for testing without a GPU | feature `wgpu` |
//! | `wgpu-gpu` | the first discrete GPU through wgpu | feature `wgpu` |
//! | `cuda`, `cuda:N` | CUDA GPU number `N` (default 0) | feature `cuda` |
//!
//! ```
//! let device = segloss::device::by_name("cpu").unwrap();
//! assert!(!device.is_autodiff());
//! let e = segloss::device::by_name("tpu").unwrap_err();
//! assert!(e.to_string().starts_with("unknown device `tpu`; choose one of: cpu"));
//! ```

use burn::tensor::Device;

/// Why [`by_name`] gave no device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// No device has this name (the known names of this build follow).
    Unknown {
        /// The name asked for.
        name: String,
        /// The names this build accepts.
        known: Vec<&'static str>,
    },
    /// A device of a backend this build was compiled without.
    NotCompiled {
        /// The name asked for.
        name: String,
        /// The cargo feature that adds the backend.
        feature: &'static str,
    },
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceError::Unknown { name, known } => write!(
                f,
                "unknown device `{name}`; choose one of: {}",
                known.join(", ")
            ),
            DeviceError::NotCompiled { name, feature } => write!(
                f,
                "this build has no {feature} backend for `{name}`: rebuild with `--features {feature}` (e.g. `cargo run --release --features {feature} -p segloss-cli -- train --device {name}`)"
            ),
        }
    }
}

impl std::error::Error for DeviceError {}

/// The device names this build accepts (`cuda:N` stands for any GPU number).
pub fn names() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "flex") {
        names.extend(["cpu", "flex"]);
    }
    if cfg!(feature = "wgpu") {
        names.extend(["wgpu", "wgpu-cpu", "wgpu-gpu"]);
    }
    if cfg!(feature = "cuda") {
        names.extend(["cuda", "cuda:N"]);
    }
    names
}

/// The device called `name` (without autodiff; see the module's table).
///
/// # Errors
/// [`DeviceError::Unknown`] for a name not in the table (or `cuda:` followed by other than a
/// number), [`DeviceError::NotCompiled`] for a device whose backend this build lacks.
pub fn by_name(name: &str) -> Result<Device, DeviceError> {
    match name {
        "cpu" | "flex" => {
            #[cfg(feature = "flex")]
            return Ok(Device::flex());
            #[cfg(not(feature = "flex"))]
            return Err(not_compiled(name, "flex"));
        }
        "wgpu" | "wgpu-cpu" | "wgpu-gpu" => {
            #[cfg(feature = "wgpu")]
            return Ok(Device::wgpu(match name {
                "wgpu-cpu" => burn::tensor::DeviceKind::Cpu,
                "wgpu-gpu" => burn::tensor::DeviceKind::DiscreteGpu(0),
                _ => burn::tensor::DeviceKind::DefaultDevice,
            }));
            #[cfg(not(feature = "wgpu"))]
            return Err(not_compiled(name, "wgpu"));
        }
        _ => {}
    }
    let index = match name.strip_prefix("cuda") {
        Some("") => Some(0),
        Some(rest) => rest.strip_prefix(':').and_then(|i| i.parse::<usize>().ok()),
        None => None,
    };
    match index {
        Some(_index) => {
            #[cfg(feature = "cuda")]
            return Ok(Device::cuda(_index));
            #[cfg(not(feature = "cuda"))]
            return Err(not_compiled(name, "cuda"));
        }
        None => Err(DeviceError::Unknown {
            name: name.to_string(),
            known: names(),
        }),
    }
}

/// The error for a device of a backend this build lacks.
#[cfg_attr(
    all(feature = "flex", feature = "wgpu", feature = "cuda"),
    allow(dead_code)
)]
fn not_compiled(name: &str, feature: &'static str) -> DeviceError {
    DeviceError::NotCompiled {
        name: name.to_string(),
        feature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_and_errors_say_what_is_missing() {
        assert!(by_name("cpu").is_ok() && by_name("flex").is_ok());
        for bad in ["tpu", "cuda:x", "cuda1", "CPU", ""] {
            assert!(
                matches!(by_name(bad), Err(DeviceError::Unknown { .. })),
                "{bad:?} was accepted"
            );
        }
        let e = by_name("tpu").unwrap_err().to_string();
        assert!(
            e.starts_with("unknown device `tpu`; choose one of: cpu, flex"),
            "{e}"
        );
        if !cfg!(feature = "cuda") {
            let e = by_name("cuda:1").unwrap_err().to_string();
            assert!(e.contains("rebuild with `--features cuda`"), "{e}");
        }
        if !cfg!(feature = "wgpu") {
            let e = by_name("wgpu-gpu").unwrap_err().to_string();
            assert!(e.contains("rebuild with `--features wgpu`"), "{e}");
        }
    }
}
