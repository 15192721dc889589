//! Conformance with MONAI 1.6.1: every reference case, values and input gradients.
//!
//! Reads `tests/fixtures/monai/*.json` (small cases) and `tests/fixtures/monai_kernel/*.json.gz`
//! (cases at the scale of the fused kernel's tiles, blocks and runs), or the directories named by
//! `SEGLOSS_REFERENCE_DIR`, and prints `conformance: N cases, M failed`, naming each failing case
//! with its largest error.
//! Every case runs on the fused kernel and on the composed path on Flex; both are compared with
//! MONAI and with each other. (The same cases on wgpu and CUDA: `crates/segloss-gpu-check`.)
//! Runs with its own `main` (`harness = false` in Cargo.toml) so the summary is always shown.

use segloss_conformance as monai;

use burn::tensor::Device;

/// A custom test harness (`harness = false`), so that the summary line is always printed.
fn main() {
    let dirs = monai::reference_dirs();
    let calls_before = segloss::kernel::fused::calls();
    let s = monai::run_all(&dirs, &Device::flex().autodiff());
    for d in &s.differences {
        println!("documented difference: {d}");
    }
    for f in &s.failed {
        println!("FAILED {f}");
    }
    println!(
        "conformance: {} cases, {} failed ({} documented differences; largest passing error {:.2e})",
        s.total,
        s.failed.len(),
        s.differences.len(),
        s.worst
    );
    let calls = segloss::kernel::fused::calls() - calls_before;
    println!(
        "fused vs composed: {calls} fused calls, largest difference {:.2e} (limit {:.0e} where the composed path is the closer to MONAI)",
        s.worst_kernel_diff,
        monai::FUSED_VS_COMPOSED
    );
    assert!(s.total > 0, "no reference case found in {dirs:?}");
    assert!(calls > 0, "the fused path never ran");
    if !s.failed.is_empty() {
        std::process::exit(1);
    }
}
