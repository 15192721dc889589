//! Times forward + backward of one loss on one shape, for `bench/compare_monai.py`.
//!
//! ```text
//! cargo run --release --example loss_bench -- LOSS SHAPE [--kernel auto|composed] [--iters N] [--device D] [--no-validate]
//!   LOSS   dice (softmax, label map, background excluded) | sigmoid-dice (multi-label) | gdl (softmax, label map)
//!          | wasserstein (Generalized Wasserstein Dice, label map, distance |i - j| / (C - 1); composed ops)
//!   SHAPE  BxCxS1xS2[xS3], e.g. 3x9x64x64x64
//!   D      flex (default) | wgpu | wgpu-cpu | wgpu-gpu (feature wgpu) | cuda (feature cuda)
//!   --no-validate  skip the label-range check (`validate_labels = false`), to time it apart
//! ```
//!
//! Prints one JSON line: the median and minimum time per forward + backward in milliseconds, the
//! memory-traffic floor measured in the same process (reading the logits and the target twice
//! and writing a gradient-sized buffer once, with plain copies and sums), and the peak resident
//! memory added by the first forward + backward beyond the inputs (the OS's peak-resident counter,
//! reset just before it). On a GPU device (wgpu, CUDA) a step ends with reading back the sum of
//! the gradient (so the time covers all the queued work), two untimed steps come first (kernel
//! compilation, autotuning), and the floor and peak memory, which are host measurements, are
//! `null`.

#[path = "support/device.rs"]
mod device;

use std::time::Instant;

use burn::tensor::{Distribution, Int, Tensor};
use segloss::{Activation, DiceLossConfig, GeneralizedDiceLossConfig, GeneralizedWassersteinDiceLossConfig, Kernel, Target, with_kernel};

/// A `/proc/self/status` field in KiB (`VmRSS`: resident now, `VmHWM`: peak resident).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak-resident counter (Linux: writing 5 to `/proc/self/clear_refs`).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: loss_bench LOSS SHAPE [--kernel auto|composed] [--iters N] [--device D] [--no-validate]";
    let loss = args.first().expect(usage).clone();
    let shape: Vec<usize> = args.get(1).expect(usage).split('x').map(|v| v.parse().expect("shape: BxCxS...")).collect();
    let mut kernel = Kernel::Auto;
    let mut iters = 10usize;
    let mut device_name = "flex".to_string();
    let mut validate = true;
    let mut i = 2;
    while i < args.len() {
        match args[i].as_str() {
            "--kernel" => {
                kernel = match args[i + 1].as_str() {
                    "composed" => Kernel::Composed,
                    _ => Kernel::Auto,
                };
                i += 2;
            }
            "--iters" => {
                iters = args[i + 1].parse().expect("--iters N");
                i += 2;
            }
            "--no-validate" => {
                validate = false;
                i += 1;
            }
            "--device" => {
                device_name = args[i + 1].clone();
                i += 2;
            }
            other => panic!("unknown argument {other}; {usage}"),
        }
    }
    let (b, c) = (shape[0], shape[1]);
    let n: usize = shape[2..].iter().product();
    let device = device::by_name(&device_name)
        .unwrap_or_else(|| panic!("unknown device {device_name:?}, or its feature (wgpu, cuda) is not compiled in"))
        .autodiff();
    let on_host = device_name == "flex";
    device.seed(1);
    let logits = Tensor::<3>::random([b, c, n], Distribution::Normal(0.0, 1.0), &device);
    let labels = Tensor::<2, Int>::random([b, n], Distribution::Uniform(0.0, c as f64), &device);
    let multi = (loss == "sigmoid-dice").then(|| Tensor::<3>::random([b, c, n], Distribution::Bernoulli(0.3), &device));
    let _ = (logits.to_data(), labels.to_data());

    let step = || {
        let x = logits.clone().require_grad();
        let value = match loss.as_str() {
            "dice" => DiceLossConfig::new(Activation::Softmax).with_include_background(false).with_validate_labels(validate).init().forward(x.clone(), Target::labels(labels.clone())),
            "sigmoid-dice" => DiceLossConfig::new(Activation::Sigmoid).init().forward(x.clone(), Target::dense(multi.clone().unwrap())),
            "gdl" => GeneralizedDiceLossConfig::new(Activation::Softmax).with_validate_labels(validate).init().forward(x.clone(), Target::labels(labels.clone())),
            "wasserstein" => {
                let dist = (0..c).map(|i| (0..c).map(|j| i.abs_diff(j) as f32 / (c - 1) as f32).collect()).collect();
                GeneralizedWassersteinDiceLossConfig::new(dist).with_validate_labels(validate).init().forward(x.clone(), Target::labels(labels.clone()))
            }
            other => panic!("unknown loss {other}"),
        };
        let grads = value.backward();
        let g = x.grad(&grads).expect("gradient");
        if on_host {
            std::hint::black_box(g);
        } else {
            // Waits for every queued kernel of the step.
            std::hint::black_box(g.sum().into_scalar::<f32>());
        }
    };

    // Peak memory of one forward + backward beyond what is resident before it (the inputs).
    reset_peak();
    let before = status_kib("VmRSS:");
    with_kernel(kernel, step);
    let peak_extra_mib = status_kib("VmHWM:").saturating_sub(before) as f64 / 1024.0;
    if !on_host {
        with_kernel(kernel, step);
    }
    let mut times = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        with_kernel(kernel, step);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());

    // The memory-traffic floor: read logits and target twice, write a gradient once (on the host).
    let mut floor = vec![0.0];
    if on_host {
        floor.clear();
    }
    let xs: Vec<f32> = if on_host { logits.to_data().try_to_vec().unwrap() } else { Vec::new() };
    // The target the loss reads: the label map, or the multi-label target of sigmoid-dice.
    let ls: Vec<i64> = if on_host && multi.is_none() { labels.to_data().iter::<i64>().collect() } else { Vec::new() };
    let ts: Vec<f32> = match &multi {
        Some(t) if on_host => t.to_data().try_to_vec().unwrap(),
        _ => Vec::new(),
    };
    let mut out = vec![0.0f32; xs.len()];
    for _ in 0..if on_host { iters.max(5) } else { 0 } {
        let t = Instant::now();
        let s1: f32 = xs.iter().sum::<f32>() + ls.iter().sum::<i64>() as f32 + ts.iter().sum::<f32>();
        out.copy_from_slice(&xs);
        let s2: f32 = ls.iter().sum::<i64>() as f32 + ts.iter().sum::<f32>();
        std::hint::black_box((s1, s2, &out));
        floor.push(t.elapsed().as_secs_f64() * 1e3);
    }
    floor.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let host = |v: f64| if on_host { format!("{v:.3}") } else { "null".to_string() };
    println!(
        "{{\"loss\": \"{loss}\", \"shape\": \"{}\", \"kernel\": \"{kernel:?}\", \"device\": \"{device_name}\", \"validate_labels\": {validate}, \"median_ms\": {:.3}, \"min_ms\": {:.3}, \"floor_ms\": {}, \"peak_extra_mib\": {}, \"gradient_mib\": {:.1}}}",
        args[1],
        times[times.len() / 2],
        times[0],
        host(floor[floor.len() / 2]),
        host(peak_extra_mib),
        (b * c * n * 4) as f64 / (1024.0 * 1024.0)
    );
}

