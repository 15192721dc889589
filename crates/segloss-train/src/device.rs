//! Choosing the device a run trains on, by name (the `--device` of the command line): segloss's
//! one device table, [`segloss::device`], with `anyhow` errors.

use anyhow::Result;
use burn::tensor::Device;

/// The device called `name` (without autodiff), from the table of [`segloss::device`]: `cpu`,
/// `wgpu`, `wgpu-cpu`, `wgpu-gpu` (feature `wgpu`), `cuda` or `cuda:N` (feature `cuda`).
///
/// # Errors
/// An unknown name (the message lists the known ones), or a backend this build was compiled
/// without (the message says which feature to build with).
pub fn parse_device(name: &str) -> Result<Device> {
    Ok(segloss::device::by_name(name)?)
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
