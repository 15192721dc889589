//! Choosing the device a run trains on, by name (the `--device` of the command line).

use anyhow::{Result, bail};
use burn::tensor::Device;

/// Device names [`parse_device`] accepts in this build.
pub fn device_names() -> Vec<&'static str> {
    let mut names = vec!["cpu"];
    if cfg!(feature = "wgpu") {
        names.extend(["wgpu", "wgpu-cpu"]);
    }
    if cfg!(feature = "cuda") {
        names.extend(["cuda", "cuda:N"]);
    }
    names
}

/// The device called `name` (without autodiff):
///
/// - `cpu`: Burn's Flex CPU backend (always available; uses every core through rayon);
/// - `wgpu`: the default wgpu adapter (a GPU through Vulkan, Metal or DirectX), needs the `wgpu`
///   feature; `wgpu-cpu`: wgpu's software adapter (Mesa lavapipe), for testing without a GPU;
/// - `cuda` or `cuda:N`: the CUDA GPU number N (default 0), needs the `cuda` feature.
///
/// # Errors
/// An unknown name, or a backend this build was compiled without (the message says which
/// feature to build with).
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => return Ok(Device::flex()),
        "wgpu" | "wgpu-cpu" => return wgpu(name == "wgpu-cpu"),
        _ => {}
    }
    if let Some(index) = name.strip_prefix("cuda") {
        let index = match index.strip_prefix(':') {
            Some(i) => i.parse::<usize>().map_err(|_| {
                anyhow::anyhow!("--device {name}: expected cuda:N with N a GPU number")
            })?,
            None if index.is_empty() => 0,
            None => bail!(
                "unknown device `{name}`; choose one of: {}",
                device_names().join(", ")
            ),
        };
        return cuda(index);
    }
    bail!(
        "unknown device `{name}`; choose one of: {}",
        device_names().join(", ")
    )
}

#[cfg(feature = "wgpu")]
fn wgpu(software: bool) -> Result<Device> {
    use burn::tensor::DeviceKind;
    Ok(Device::wgpu(if software {
        DeviceKind::Cpu
    } else {
        DeviceKind::DefaultDevice
    }))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(_software: bool) -> Result<Device> {
    bail!(
        "this build has no wgpu backend: rebuild with `--features wgpu` (e.g. `cargo run --release --features wgpu -p segloss-cli -- train --device wgpu`)"
    )
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<Device> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Result<Device> {
    bail!(
        "this build has no CUDA backend: rebuild with `--features cuda` (e.g. `cargo run --release --features cuda -p segloss-cli -- train --device cuda`)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_there_and_unknown_names_are_listed() {
        assert!(parse_device("cpu").is_ok());
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(
            e.starts_with("unknown device `tpu`; choose one of: cpu"),
            "{e}"
        );
        if !cfg!(feature = "cuda") {
            let e = parse_device("cuda:1").unwrap_err().to_string();
            assert!(e.contains("rebuild with `--features cuda`"), "{e}");
        }
        if !cfg!(feature = "wgpu") {
            let e = parse_device("wgpu").unwrap_err().to_string();
            assert!(e.contains("rebuild with `--features wgpu`"), "{e}");
        }
    }
}
