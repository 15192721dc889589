//! segloss's MONAI conformance cases through the fused CubeCL kernels on a GPU backend (the
//! overlap statistics, the pass with the pointwise term for the cross-entropy, focal and compound
//! cases, the confusion matrix for the Generalized Wasserstein cases): every case's value and
//! input gradient against MONAI (the tolerances of `segloss`'s `tests/conformance.rs`), and
//! against the composed path on Flex to 1e-5.
//!
//! Most reference cases are small (one cube of the kernel each; those of `fixtures/monai_kernel`
//! have several thousand voxels per sample), so a second part compares the fused statistics and
//! their gradient on the GPU with the fused CPU kernel on Flex (f64 block sums) on inputs of
//! several thousand voxels per sample, where the kernel's multi-cube reduction and partial last
//! cube run, for every option combination, to 1e-5.
//!
//! The device is `SEGLOSS_GPU_DEVICE` (`wgpu` by default; see the crate docs). Without a usable
//! adapter or driver it prints why and that it was skipped, and passes, unless
//! `SEGLOSS_REQUIRE_WGPU=1` (CI sets it), which turns the skip into a failure.
//! Runs with its own `main` (`harness = false`) so the summary is always shown.

use segloss_conformance as monai;

use burn::tensor::{Int, Tensor, TensorData};
use segloss::Activation;
use segloss::input::FlatTarget;
use segloss::kernel::fused::overlap_stats;
use segloss::kernel::spec::Spec;
use segloss::{Kernel, with_kernel};

/// Reports that there is no usable device and exits: failing when one is required.
fn skip(name: &str, required: bool, why: &str) -> ! {
    if required {
        eprintln!("gpu conformance: {name}: no usable device ({why}), and SEGLOSS_REQUIRE_WGPU=1");
        std::process::exit(1);
    }
    println!(
        "gpu conformance: {name}: SKIPPED, no usable device: {why} (set SEGLOSS_REQUIRE_WGPU=1 to fail instead)"
    );
    std::process::exit(0);
}

fn main() {
    let name = std::env::var("SEGLOSS_GPU_DEVICE").unwrap_or_else(|_| "wgpu".to_string());
    let required = std::env::var("SEGLOSS_REQUIRE_WGPU").is_ok_and(|v| v == "1");
    let device = match segloss_gpu_check::device_named(&name) {
        Ok(d) => d,
        Err(e) => skip(&name, required, &e),
    };
    let adapter = match segloss_gpu_check::probe(&device) {
        Ok(a) => a,
        Err(e) => skip(&name, required, &e),
    };
    let device = device.autodiff();
    assert!(
        segloss::kernel::fused::supports(&device),
        "the fused kernel does not claim {device:?}"
    );

    let dirs = monai::reference_dirs();
    let calls_before = segloss::kernel::fused::calls();
    let pointwise_before = segloss::kernel::fused::pointwise_calls();
    let confusion_before = segloss::kernel::fused::confusion_calls();
    let s = monai::run_all(&dirs, &device);
    let calls = segloss::kernel::fused::calls() - calls_before;
    let pointwise_calls = segloss::kernel::fused::pointwise_calls() - pointwise_before;
    let confusion_calls = segloss::kernel::fused::confusion_calls() - confusion_before;
    for f in &s.failed {
        println!("FAILED {f}");
    }
    println!(
        "{name} ({adapter}): {} cases, {} failed (values and gradients vs MONAI, largest passing error {:.2e}; fused on {name} vs composed on Flex, largest difference {:.2e}, limit {:.0e}; {calls} fused calls, of which {pointwise_calls} with the pointwise term and {confusion_calls} of the confusion matrix)",
        s.total,
        s.failed.len(),
        s.worst,
        s.worst_kernel_diff,
        monai::FUSED_VS_COMPOSED
    );
    let (checked, large_failed, worst_large) = large_cases(&device);
    for f in &large_failed {
        println!("FAILED {f}");
    }
    println!(
        "{name}: {checked} larger inputs (B = 2, C = 5, N = 3089), {} failed (fused on {name} vs fused on Flex, statistics and gradient, largest difference {worst_large:.2e}, limit {LARGE_LIMIT:.0e})",
        large_failed.len()
    );
    assert!(s.total > 0, "no reference case found in {dirs:?}");
    assert!(calls > 0, "the fused path never ran on {name}");
    // The cross-entropy, focal and compound cases run the fused pointwise pass, the Generalized
    // Wasserstein cases the fused confusion matrix: a silent fallback to the composed path fails.
    assert!(
        pointwise_calls > 0,
        "the fused pointwise pass never ran on {name}"
    );
    assert!(
        confusion_calls > 0,
        "the fused confusion matrix never ran on {name}"
    );
    if !s.failed.is_empty() || !large_failed.is_empty() {
        std::process::exit(1);
    }
}

/// Largest difference, relative to `max(1, |Flex value|)`, between the GPU and the CPU kernel.
const LARGE_LIMIT: f64 = 1e-5;

/// The statistics `[4, B, K]` and the gradient of `sum(stats * weights)` with respect to the
/// logits, on `device` (with autodiff), for one option combination.
fn stats_and_grad(
    device: &burn::tensor::Device,
    spec: Spec,
    dense: bool,
    mask: bool,
) -> (Vec<f64>, Vec<f64>) {
    let (b, c, n) = (2usize, 5usize, 3089usize);
    // Deterministic inputs from fixed formulas: logits in [-6, 6) (probabilities in [0, 1]
    // without an activation, as the losses expect), labels in [0, C), a mask with zeros and
    // fractions, a soft dense target.
    let (scale, shift) = if spec.act == Activation::None {
        (1200.0, 0.0)
    } else {
        (100.0, 6.0)
    };
    let x: Vec<f32> = (0..b * c * n)
        .map(|i| ((i * 7919 + 13) % 1201) as f32 / scale - shift)
        .collect();
    let l: Vec<i64> = (0..b * n).map(|i| ((i * 31 + i / 7) % c) as i64).collect();
    let m: Vec<f32> = (0..b * n)
        .map(|i| [1.0, 0.0, 0.25, 1.0, 0.5][i % 5])
        .collect();
    let t: Vec<f32> = (0..b * c * n)
        .map(|i| ((i * 4099) % 101) as f32 / 100.0)
        .collect();
    let x = Tensor::<3>::from_data(TensorData::new(x, [b, c, n]), device).require_grad();
    let target = if dense {
        FlatTarget::Dense(Tensor::from_data(TensorData::new(t, [b, c, n]), device))
    } else {
        FlatTarget::Labels(Tensor::<2, Int>::from_data(
            TensorData::new(l, [b, n]),
            device,
        ))
    };
    let mask = mask.then(|| Tensor::<2>::from_data(TensorData::new(m, [b, n]), device));
    let stats = with_kernel(Kernel::Auto, || {
        overlap_stats(x.clone(), target, mask, spec)
    });
    let [_, _, k] = stats.dims();
    let w: Vec<f32> = (0..4 * b * k)
        .map(|i| (i % 7) as f32 * 0.25 - 0.75)
        .collect();
    let w = Tensor::<3>::from_data(TensorData::new(w, [4, b, k]), device);
    let grads = (stats.clone() * w).sum().backward();
    let g = x.grad(&grads).expect("the logits are tracked");
    let v = |d: TensorData| d.iter::<f64>().collect::<Vec<f64>>();
    (v(stats.into_data()), v(g.into_data()))
}

/// Every option combination on the larger input, GPU against Flex: (combinations, failures,
/// largest difference).
fn large_cases(device: &burn::tensor::Device) -> (usize, Vec<String>, f64) {
    let flex = burn::tensor::Device::flex().autodiff();
    let (mut checked, mut failed, mut worst) = (0, Vec::new(), 0.0f64);
    for act in [Activation::Softmax, Activation::Sigmoid, Activation::None] {
        for include_background in [true, false] {
            for squared in [false, true] {
                for (dense, mask) in [(false, false), (false, true), (true, false), (true, true)] {
                    let spec = Spec {
                        act,
                        include_background,
                        squared,
                        difference: true,
                    };
                    checked += 1;
                    let what = format!(
                        "{act:?}, background {include_background}, squared {squared}, dense {dense}, mask {mask}"
                    );
                    let run = |d: &burn::tensor::Device| {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            stats_and_grad(d, spec, dense, mask)
                        }))
                    };
                    let (gpu, cpu) = match (run(device), run(&flex)) {
                        (Ok(g), Ok(c)) => (g, c),
                        (Err(p), _) | (_, Err(p)) => {
                            failed.push(format!(
                                "larger input ({what}): panicked: {}",
                                monai::panic_message(&*p)
                            ));
                            continue;
                        }
                    };
                    let mut bad = None;
                    for (part, (a, b)) in [
                        ("statistics", (&gpu.0, &cpu.0)),
                        ("gradient", (&gpu.1, &cpu.1)),
                    ] {
                        for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                            let d = (x - y).abs() / y.abs().max(1.0);
                            if d.is_nan() || d > LARGE_LIMIT {
                                bad.get_or_insert(format!(
                                    "{part}[{i}]: {name} {x} vs Flex {y}",
                                    name = "gpu"
                                ));
                            } else {
                                worst = worst.max(d);
                            }
                        }
                    }
                    if let Some(b) = bad {
                        failed.push(format!("larger input ({what}): {b}"));
                    }
                }
            }
        }
    }
    (checked, failed, worst)
}
