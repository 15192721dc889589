//! The fused pointwise pass (cross-entropy, focal, with the overlap statistics) and the fused
//! confusion matrix (Generalized Wasserstein Dice) on a GPU backend against the composed path on
//! the same device: the losses' values and their gradients with respect to the logits, with
//! `Kernel::Auto` (the CubeCL kernels of `kernel::cube::pointwise` and `kernel::cube::confusion`)
//! and with `Kernel::Composed` (Burn operations, the losses' reference); and the same fused run
//! against the fused CPU kernels on Flex (the kernels' reference), more tightly.
//!
//! Inputs of kernel scale (B = 2, C = 4, 9 x 13 x 29 = 3393 voxels per sample: several cubes of
//! 1024 voxels and a partial last one), from fixed formulas; logits of scale 3 and of +-1e4
//! (saturated activations: finite values and gradients on both paths); label maps, label maps
//! with a voxel mask, dense soft targets with and without a mask. The pointwise term: the
//! softmax and the sigmoid, `gamma` 0, 2 and 1.5, with and without the background (softmax),
//! alone (focal loss) and with the Dice term (Dice + focal, Dice + cross-entropy). The confusion
//! matrix: both weightings.
//!
//! A second part calls the two fused operations directly (B = 2, C = 5, 3089 voxels per sample,
//! logits in [-6, 6) with some of +-1e4, labels outside `[0, C)` among the others) for every
//! option combination and compares the output and the gradient of the output weighted over every
//! element (every row's backward) on the GPU with the fused CPU kernels on Flex.
//!
//! The device is `SEGLOSS_GPU_DEVICE` (`wgpu` by default); without a usable adapter it prints why
//! and passes, unless `SEGLOSS_REQUIRE_WGPU=1`. Runs with its own `main` (`harness = false`) so the
//! summary is always shown.

use burn::tensor::{Device, Int, Tensor, TensorData};
use segloss::input::FlatTarget;
use segloss::kernel::fused::{confusion, confusion_calls, pointwise_calls, pointwise_stats};
use segloss::kernel::spec::Pointwise;
use segloss::{
    Activation, DiceCELossConfig, DiceFocalLossConfig, FocalLossConfig,
    GeneralizedWassersteinDiceLossConfig, Kernel, Target, WassersteinWeighting, with_kernel,
};

/// Loss values: `|fused - composed| <= VALUE_REL |composed| + VALUE_ABS`. Both paths add f32
/// sums over 6786 voxels in different orders (the fused kernel in a fixed tree, the composed
/// path through Burn's reductions).
const VALUE_REL: f64 = 1e-4;
const VALUE_ABS: f64 = 1e-5;
/// Gradients, element by element: `|fused - composed| <= GRAD_REL |composed| + GRAD_ABS g`, with
/// `g` the largest composed gradient of the case: the softmax's backward subtracts
/// `sum_j p_j u_j` from `u_c`, which cancels where one class holds nearly all the probability, on
/// both paths, to a few f32 roundoffs of the largest term.
const GRAD_REL: f64 = 1e-4;
const GRAD_ABS: f64 = 1e-4;
/// The fused kernels on the GPU against the same kernels on Flex (the CPU implementation, the
/// reference; f64 block sums): values to `KERNEL (|value| + 1)`, gradients to `KERNEL` of the
/// case's largest gradient.
const KERNEL: f64 = 1e-5;

const B: usize = 2;
const C: usize = 4;
const SPATIAL: [usize; 3] = [9, 13, 29];

fn main() {
    let name = std::env::var("SEGLOSS_GPU_DEVICE").unwrap_or_else(|_| "wgpu".to_string());
    let required = std::env::var("SEGLOSS_REQUIRE_WGPU").is_ok_and(|v| v == "1");
    let device = match segloss_gpu_check::device_named(&name)
        .and_then(|d| segloss_gpu_check::probe(&d).map(|a| (d, a)))
    {
        Ok(found) => found,
        Err(why) if required => {
            eprintln!(
                "gpu fused vs composed: {name}: no usable device ({why}), and SEGLOSS_REQUIRE_WGPU=1"
            );
            std::process::exit(1);
        }
        Err(why) => {
            println!("gpu fused vs composed: {name}: SKIPPED, no usable device: {why}");
            return;
        }
    };
    let (device, adapter) = device;
    let device = device.autodiff();
    assert!(
        segloss::kernel::fused::supports_pointwise(&device)
            && segloss::kernel::fused::supports_confusion(&device),
        "the fused pointwise pass or confusion matrix does not claim {device:?}"
    );

    let flex = Device::flex().autodiff();
    let (pointwise, confusion) = (pointwise_losses(), confusion_losses());
    let mut report = Report::default();
    for extreme in [false, true] {
        let inputs = (&Inputs::new(extreme, &device), &Inputs::new(extreme, &flex));
        for kind in TargetKind::ALL {
            for (what, loss) in &pointwise {
                let ran = compare(what, inputs, kind, pointwise_calls, loss, &mut report);
                report.pointwise_calls += ran;
            }
            for (what, loss) in &confusion {
                let ran = compare(what, inputs, kind, confusion_calls, loss, &mut report);
                report.confusion_calls += ran;
            }
        }
    }
    for f in &report.failed {
        println!("FAILED {f}");
    }
    println!(
        "{name} ({adapter}): {} cases fused vs composed, {} failed; largest value difference {:.2e} relative to max(1, |value|) (limit {VALUE_REL:.0e} rel + {VALUE_ABS:.0e}) in {}; largest gradient difference {:.2e} of the case's largest gradient (limit {GRAD_REL:.0e} rel + {GRAD_ABS:.0e} of it) in {}; fused on {name} vs fused on Flex: largest difference {:.2e} (limit {KERNEL:.0e}); {} fused pointwise and {} fused confusion calls",
        report.checked,
        report.failed.len(),
        report.worst_value.0,
        report.worst_value.1,
        report.worst_grad.0,
        report.worst_grad.1,
        report.worst_kernel,
        report.pointwise_calls,
        report.confusion_calls,
    );
    let (checked, op_failed, worst) = operation_cases(&device, &flex);
    for f in &op_failed {
        println!("FAILED {f}");
    }
    println!(
        "{name}: {checked} operation cases (B = 2, C = 5, N = 3089, every output row weighted), {} failed (fused on {name} vs fused on Flex, output and gradient, largest difference {worst:.2e} relative to max(1, |Flex value|), limit {KERNEL:.0e})",
        op_failed.len()
    );
    assert!(
        report.pointwise_calls > 0 && report.confusion_calls > 0,
        "the fused pointwise pass or confusion matrix never ran on {name}"
    );
    if !report.failed.is_empty() || !op_failed.is_empty() {
        std::process::exit(1);
    }
}

/// The fused operation of one operation case: the pointwise pass, or the confusion matrix.
#[derive(Clone, Copy, Debug)]
enum Operation {
    Pointwise {
        act: Activation,
        gamma: f32,
        without_background: bool,
    },
    Confusion,
}

/// The output of `op` and the gradient of `sum(output * w)` with respect to the logits, `w`
/// fixed weights of both signs over every output element (so that every row's backward runs),
/// on `device`.
fn operation_run(device: &Device, op: Operation, dense: bool, mask: bool) -> (Vec<f64>, Vec<f64>) {
    let (b, c, n) = (2usize, 5usize, 3089usize);
    // Logits in [-6, 6) with every 97th of +-1e4; labels in [0, C) with every 11th outside
    // (-1 or C: no class); a mask with zeros and fractions; a soft dense target.
    let x: Vec<f32> = (0..b * c * n)
        .map(|i| match i % 97 {
            0 => 1e4,
            48 => -1e4,
            _ => ((i * 7919 + 13) % 1201) as f32 / 100.0 - 6.0,
        })
        .collect();
    let l: Vec<i64> = (0..b * n)
        .map(|i| match i % 11 {
            0 => -1,
            5 => c as i64,
            _ => ((i * 31 + i / 7) % c) as i64,
        })
        .collect();
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
    let out = with_kernel(Kernel::Auto, || match op {
        Operation::Pointwise {
            act,
            gamma,
            without_background,
        } => pointwise_stats(
            x.clone(),
            target,
            mask,
            act,
            Pointwise {
                gamma,
                without_background,
            },
        ),
        Operation::Confusion => confusion(x.clone(), target, mask),
    });
    let dims = out.dims();
    let count = dims.iter().product::<usize>();
    let w: Vec<f32> = (0..count).map(|i| (i % 7) as f32 * 0.25 - 0.75).collect();
    let w = Tensor::<3>::from_data(TensorData::new(w, dims), device);
    let grads = (out.clone() * w).sum().backward();
    let g = x.grad(&grads).expect("the logits are tracked");
    let v = |d: TensorData| d.iter::<f64>().collect::<Vec<f64>>();
    (v(out.into_data()), v(g.into_data()))
}

/// Every option combination of the two operations, GPU against Flex: (cases, failures, largest
/// difference).
fn operation_cases(device: &Device, flex: &Device) -> (usize, Vec<String>, f64) {
    let mut ops = Vec::new();
    for gamma in [0.0, 2.0, 1.5] {
        for (act, without_background) in [
            (Activation::Softmax, false),
            (Activation::Softmax, true),
            (Activation::Sigmoid, false),
        ] {
            ops.push(Operation::Pointwise {
                act,
                gamma,
                without_background,
            });
        }
    }
    ops.push(Operation::Confusion);
    let (mut checked, mut failed, mut worst) = (0, Vec::new(), 0.0f64);
    for op in ops {
        for (dense, mask) in [(false, false), (false, true), (true, false), (true, true)] {
            checked += 1;
            let what = format!("{op:?}, dense {dense}, mask {mask}");
            let run = |d: &Device| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    operation_run(d, op, dense, mask)
                }))
            };
            let (gpu, cpu) = match (run(device), run(flex)) {
                (Ok(g), Ok(c)) => (g, c),
                (Err(_), _) | (_, Err(_)) => {
                    failed.push(format!("operation {what}: panicked"));
                    continue;
                }
            };
            let mut bad = None;
            for (part, (a, b)) in [("output", (&gpu.0, &cpu.0)), ("gradient", (&gpu.1, &cpu.1))] {
                for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                    let d = (x - y).abs() / y.abs().max(1.0);
                    if d.is_nan() || d > KERNEL {
                        bad.get_or_insert(format!("{part}[{i}]: gpu {x} vs Flex {y}"));
                    } else {
                        worst = worst.max(d);
                    }
                }
            }
            if let Some(b) = bad {
                failed.push(format!("operation {what}: {b}"));
            }
        }
    }
    (checked, failed, worst)
}

/// What the cases found.
#[derive(Default)]
struct Report {
    checked: usize,
    failed: Vec<String>,
    /// The largest passing differences, fused vs composed, and where.
    worst_value: (f64, String),
    worst_grad: (f64, String),
    /// The largest passing difference, fused on the GPU vs fused on Flex.
    worst_kernel: f64,
    pointwise_calls: usize,
    confusion_calls: usize,
}

/// The inputs of one logit scale.
struct Inputs {
    extreme: bool,
    logits: Vec<f32>,
    labels: Tensor<5, Int>,
    dense: Tensor<5>,
    mask: Tensor<5>,
    device: Device,
}

impl Inputs {
    fn new(extreme: bool, device: &Device) -> Self {
        let [z, y, x] = SPATIAL;
        let n = z * y * x;
        // Fixed formulas: logits spread over [-6, 6) or +-1e4, labels in [0, C), a soft target
        // in [0, 1], a mask of zeros, ones and fractions.
        let logits = (0..B * C * n)
            .map(|i| {
                let v = ((i * 7919 + 13) % 1201) as f32 / 100.0 - 6.0;
                if extreme {
                    if (i * 31 + i / 5) % 3 == 0 { -1e4 } else { 1e4 }
                } else {
                    v
                }
            })
            .collect();
        let labels: Vec<i64> = (0..B * n).map(|i| ((i * 31 + i / 7) % C) as i64).collect();
        let dense: Vec<f32> = (0..B * C * n)
            .map(|i| ((i * 4099) % 101) as f32 / 100.0)
            .collect();
        let mask: Vec<f32> = (0..B * n)
            .map(|i| [1.0, 0.0, 0.25, 1.0, 0.5][i % 5])
            .collect();
        Self {
            extreme,
            logits,
            labels: Tensor::from_data(TensorData::new(labels, [B, 1, z, y, x]), device),
            dense: Tensor::from_data(TensorData::new(dense, [B, C, z, y, x]), device),
            mask: Tensor::from_data(TensorData::new(mask, [B, 1, z, y, x]), device),
            device: device.clone(),
        }
    }

    fn target(&self, kind: TargetKind) -> Target {
        match kind {
            TargetKind::Labels => Target::labels(self.labels.clone()),
            TargetKind::LabelsMask => {
                Target::labels(self.labels.clone()).with_mask(self.mask.clone())
            }
            TargetKind::Dense => Target::dense(self.dense.clone()),
            TargetKind::DenseMask => Target::dense(self.dense.clone()).with_mask(self.mask.clone()),
        }
    }

    /// The loss's value and its gradient with respect to the logits, against target `kind`.
    fn run(&self, loss: &Loss<'_>, kind: TargetKind) -> (f64, Vec<f64>) {
        let [z, y, x] = SPATIAL;
        let logits = Tensor::<5>::from_data(
            TensorData::new(self.logits.clone(), [B, C, z, y, x]),
            &self.device,
        )
        .require_grad();
        let value = loss(logits.clone(), self.target(kind));
        let grads = value.backward();
        let g = logits.grad(&grads).expect("the logits are tracked");
        (
            value.into_scalar::<f64>(),
            g.into_data().iter::<f64>().collect(),
        )
    }
}

#[derive(Clone, Copy, Debug)]
enum TargetKind {
    Labels,
    LabelsMask,
    Dense,
    DenseMask,
}

impl TargetKind {
    const ALL: [TargetKind; 4] = [
        TargetKind::Labels,
        TargetKind::LabelsMask,
        TargetKind::Dense,
        TargetKind::DenseMask,
    ];
}

/// A loss as the cases run it: logits `[B, C, 9, 13, 29]` and a target to the reduced value.
type Loss<'a> = dyn Fn(Tensor<5>, Target) -> Tensor<1> + 'a;

/// One run's value and gradient, or the panic's message.
type Run = Result<(f64, Vec<f64>), String>;

fn run_caught(inputs: &Inputs, kernel: Kernel, loss: &Loss<'_>, kind: TargetKind) -> Run {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        with_kernel(kernel, || inputs.run(loss, kind))
    }))
    .map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// The largest difference of `a` from the reference `b` (values relative to `max(1, |b|)`,
/// gradients to the reference's largest gradient) if within `(rel, abs)` (see the constants),
/// else where it is not.
fn differences(
    (av, ag): &(f64, Vec<f64>),
    (bv, bg): &(f64, Vec<f64>),
    (value_rel, value_abs): (f64, f64),
    (grad_rel, grad_abs): (f64, f64),
) -> Result<(f64, (f64, usize)), String> {
    let dv = (av - bv).abs();
    if dv.is_nan() || dv > value_rel * bv.abs() + value_abs {
        return Err(format!("value {av} vs {bv}"));
    }
    let scale = bg.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut worst = (0.0f64, 0);
    for (i, (a, b)) in ag.iter().zip(bg).enumerate() {
        let d = (a - b).abs();
        if d.is_nan() || d > grad_rel * b.abs() + grad_abs * scale {
            return Err(format!("gradient[{i}] {a} vs {b} (largest {scale:.3e})"));
        }
        if scale > 0.0 && d / scale >= worst.0 {
            worst = (d / scale, i);
        }
    }
    Ok((dv / bv.abs().max(1.0), worst))
}

/// Runs `loss` fused and composed on the GPU, and fused on Flex, and compares the GPU's fused
/// run with the other two; `calls` counts the fused operation's runs, which must have run with
/// `Kernel::Auto` and never with `Kernel::Composed`. Returns the fused runs on the GPU.
fn compare(
    what: &str,
    (gpu, cpu): (&Inputs, &Inputs),
    kind: TargetKind,
    calls: fn() -> usize,
    loss: &Loss<'_>,
    report: &mut Report,
) -> usize {
    report.checked += 1;
    let what = format!(
        "{what} {kind:?}, logits {}",
        if gpu.extreme { "+-1e4" } else { "in [-6, 6)" }
    );
    let before = calls();
    let fused = run_caught(gpu, Kernel::Auto, loss, kind);
    let ran = calls() - before;
    let composed = run_caught(gpu, Kernel::Composed, loss, kind);
    if calls() != before + ran {
        report
            .failed
            .push(format!("{what}: Kernel::Composed ran the fused operation"));
    }
    if ran == 0 {
        report
            .failed
            .push(format!("{what}: the fused operation did not run"));
    }
    let on_flex = run_caught(cpu, Kernel::Auto, loss, kind);
    let (fused, composed, on_flex) = match (fused, composed, on_flex) {
        (Ok(f), Ok(c), Ok(x)) => (f, c, x),
        (Err(p), _, _) | (_, Err(p), _) | (_, _, Err(p)) => {
            report.failed.push(format!("{what}: panicked: {p}"));
            return ran;
        }
    };
    match differences(
        &fused,
        &composed,
        (VALUE_REL, VALUE_ABS),
        (GRAD_REL, GRAD_ABS),
    ) {
        Ok((dv, (dg, i))) => {
            if dv >= report.worst_value.0 {
                report.worst_value = (dv, what.clone());
            }
            if dg >= report.worst_grad.0 {
                report.worst_grad = (dg, format!("{what}, gradient[{i}]"));
            }
        }
        Err(e) => report
            .failed
            .push(format!("{what}: fused vs composed: {e}")),
    }
    match differences(&fused, &on_flex, (KERNEL, KERNEL), (0.0, KERNEL)) {
        Ok((dv, (dg, _))) => report.worst_kernel = report.worst_kernel.max(dv).max(dg),
        Err(e) => report
            .failed
            .push(format!("{what}: fused on the GPU vs fused on Flex: {e}")),
    }
    ran
}

/// The pointwise cases: (name, loss).
fn pointwise_losses() -> Vec<(String, Box<Loss<'static>>)> {
    let mut cases: Vec<(String, Box<Loss<'static>>)> = Vec::new();
    for gamma in [0.0, 2.0, 1.5] {
        for include_background in [true, false] {
            let loss = FocalLossConfig::new()
                .with_use_softmax(true)
                .with_gamma(gamma)
                .with_include_background(include_background)
                .init();
            cases.push((
                format!("focal softmax gamma {gamma} background {include_background}"),
                Box::new(move |x, t| loss.forward(x, t)),
            ));
        }
        let loss = FocalLossConfig::new()
            .with_use_softmax(false)
            .with_gamma(gamma)
            .init();
        cases.push((
            format!("focal sigmoid gamma {gamma}"),
            Box::new(move |x, t| loss.forward(x, t)),
        ));
    }
    let loss = DiceFocalLossConfig::new(Activation::Softmax)
        .with_focal_use_softmax(true)
        .with_include_background(false)
        .init();
    cases.push((
        "dice-focal softmax without background".to_string(),
        Box::new(move |x, t| loss.forward(x, t)),
    ));
    let loss = DiceFocalLossConfig::new(Activation::Sigmoid)
        .with_gamma(1.5)
        .init();
    cases.push((
        "dice-focal sigmoid gamma 1.5".to_string(),
        Box::new(move |x, t| loss.forward(x, t)),
    ));
    let loss = DiceCELossConfig::new(Activation::Softmax).init();
    cases.push((
        "dice-ce softmax".to_string(),
        Box::new(move |x, t| loss.forward(x, t)),
    ));
    cases
}

/// The confusion-matrix cases: (name, loss).
fn confusion_losses() -> Vec<(String, Box<Loss<'static>>)> {
    let distances: Vec<Vec<f32>> = (0..C)
        .map(|i| {
            (0..C)
                .map(|j| {
                    if i == j {
                        0.0
                    } else {
                        ((i * 7 + j * 3) % 5 + 1) as f32 / 5.0
                    }
                })
                .collect()
        })
        .collect();
    [WassersteinWeighting::Default, WassersteinWeighting::Gdl]
        .into_iter()
        .map(|weighting| {
            let loss = GeneralizedWassersteinDiceLossConfig::new(distances.clone())
                .with_weighting_mode(weighting)
                .init();
            let f: Box<Loss<'static>> = Box::new(move |x, t| loss.forward(x, t));
            (format!("wasserstein {weighting:?}"), f)
        })
        .collect()
}
