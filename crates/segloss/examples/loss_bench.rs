//! Times forward + backward of one loss on one shape, for `bench/compare_monai.py`.
//!
//! ```text
//! cargo run --release --example loss_bench -- LOSS SHAPE [--kernel auto|composed] [--iters N] [--device D] [--no-validate]
//!   LOSS   one of LOSSES below
//!   SHAPE  BxCxS1xS2[xS3], e.g. 3x9x64x64x64
//!   D      flex (default) | wgpu | wgpu-cpu | wgpu-gpu (feature wgpu) | cuda (feature cuda)
//!   --no-validate  skip the label-range check (`validate_labels = false`), to time it apart
//! ```
//!
//! Every loss is built with the defaults of its config except what its entry in [`LOSSES`] says;
//! `bench/compare_monai.py` configures MONAI's class identically. All take the logits `[B, C, N]`
//! and a label map `[B, N]` (integer labels uniform in `0..C`), except `sigmoid-dice`, whose
//! target is a dense multi-label `[B, C, N]` (each entry 1 with probability 0.3).
//!
//! Prints one JSON line: the median and minimum time per forward + backward in milliseconds, the
//! memory-traffic floor measured in the same process, and the peak resident memory added by the
//! first full-size forward + backward beyond the inputs (the OS's peak-resident counter, reset just
//! before it), after one step on a 64-voxel input that loads the code and starts the threads. On a GPU device (wgpu, CUDA) a step ends with reading back the sum of the gradient (so
//! the time covers all the queued work), two untimed steps come first (kernel compilation,
//! autotuning), and the floor and peak memory, which are host measurements, are `null`.
//!
//! **The floor** is the time to move the bytes any implementation of the loss must move: read the
//! logits and the target once for the forward and once more for the backward, and write a
//! gradient-sized buffer once (`floor_bytes`; the target counted at the size the loss reads it,
//! `target_bytes_per_voxel`). It runs on rayon's pool, the same `RAYON_NUM_THREADS` threads as
//! the loss (`floor_threads`), over 256 KiB chunks: the reads are wrapping `u32` sums of the raw
//! bits, which the compiler vectorises and unrolls into independent accumulators (integer adds
//! are associative, unlike an `f32` `iter().sum()`, which is one chain of dependent adds and
//! bound by the add latency rather than by memory); the write is a `copy_from_slice` of the
//! logits into a buffer allocated and touched beforehand (so the floor pays no page faults, while
//! a loss allocating its gradient does). `floor_gb_s` is `floor_bytes` over the floor's median
//! time: the bandwidth the machine gave.

use std::hint::black_box;
use std::time::Instant;

use burn::tensor::{Distribution, Int, Tensor};
use rayon::prelude::*;
use segloss::{
    Activation, AsymmetricUnifiedFocalLossConfig, BoundaryLossConfig, CrossEntropyLossConfig,
    DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, FocalLossConfig,
    GeneralizedDiceFocalLossConfig, GeneralizedDiceLossConfig,
    GeneralizedWassersteinDiceLossConfig, HausdorffDTLossConfig, Kernel, LogHausdorffDTLossConfig,
    MccLossConfig, SoftDiceclDiceLossConfig, SoftclDiceLossConfig, Target, TverskyLossConfig,
    with_kernel,
};

/// Every loss by name, with its configuration (options not named keep their defaults, which are
/// MONAI's).
const LOSSES: [(&str, &str); 17] = [
    (
        "dice",
        "DiceLoss: softmax, label map, include_background false",
    ),
    (
        "sigmoid-dice",
        "DiceLoss: sigmoid, dense multi-label target",
    ),
    ("gdl", "GeneralizedDiceLoss: softmax, label map"),
    (
        "tversky",
        "TverskyLoss: softmax, label map, include_background false, alpha 0.3, beta 0.7",
    ),
    (
        "mcc",
        "MCCLoss: softmax, label map, include_background false",
    ),
    (
        "dice-ce",
        "DiceCELoss: softmax, label map, include_background false",
    ),
    (
        "dice-focal",
        "DiceFocalLoss: softmax, label map, include_background false, focal_use_softmax",
    ),
    (
        "gdl-focal",
        "GeneralizedDiceFocalLoss: softmax, label map, focal_use_softmax",
    ),
    ("focal", "FocalLoss: use_softmax, label map"),
    ("ce", "CrossEntropyLoss: label map"),
    (
        "wasserstein",
        "GeneralizedWassersteinDiceLoss: label map, distance |i - j| / (C - 1)",
    ),
    (
        "cldice",
        "SoftclDiceLoss: softmax, label map, include_background false, iter 3",
    ),
    (
        "dice-cldice",
        "SoftDiceclDiceLoss: softmax, label map, include_background false, iter 3, alpha 0.5",
    ),
    (
        "hausdorff",
        "HausdorffDTLoss: softmax, label map, include_background false, alpha 2",
    ),
    (
        "log-hausdorff",
        "LogHausdorffDTLoss: softmax, label map, include_background false, alpha 2",
    ),
    (
        "boundary",
        "BoundaryLoss: softmax, label map, include_background false",
    ),
    (
        "unified-focal",
        "AsymmetricUnifiedFocalLoss: two-class probabilities (softmax taken before), label map",
    ),
];

/// The losses that read the image's spatial shape (soft skeletons, distance transforms): they
/// get the logits `[B, C, spatial...]` and a label map `[B, 1, spatial...]` instead of the
/// flattened `[B, C, N]` and `[B, N]` (the same data; a reshape is a view).
const SPATIAL: [&str; 5] = [
    "cldice",
    "dice-cldice",
    "hausdorff",
    "log-hausdorff",
    "boundary",
];

/// `labels` `[B, N]` as a label map `[B, 1, spatial...]` (2 or 3 spatial axes).
fn spatial_labels(labels: Tensor<2, Int>, spatial: &[usize]) -> Target {
    let b = labels.dims()[0];
    match *spatial {
        [h, w] => Target::labels(labels.reshape([b, 1, h, w])),
        [h, w, d] => Target::labels(labels.reshape([b, 1, h, w, d])),
        _ => panic!("the spatial losses take 2D or 3D shapes, got {spatial:?}"),
    }
}

/// Runs `f` on the logits `[B, C, N]` reshaped to the target's shape `[B, 1, spatial...]`.
fn on_image(
    x: Tensor<3>,
    t: Target,
    f4: &dyn Fn(Tensor<4>, Target) -> Tensor<1>,
    f5: &dyn Fn(Tensor<5>, Target) -> Tensor<1>,
) -> Tensor<1> {
    let [b, c, _] = x.dims();
    match *t.shape() {
        [_, _, h, w] => f4(x.reshape([b, c, h, w]), t),
        [_, _, h, w, d] => f5(x.reshape([b, c, h, w, d]), t),
        ref s => panic!("a spatial loss needs a [B, 1, spatial...] label map, got {s:?}"),
    }
}

/// Bytes per chunk of the floor's parallel loops.
const CHUNK: usize = 1 << 16;

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

/// The raw bytes of a tensor's data as 32-bit words (every dtype used here is 4 or 8 bytes).
fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

/// Reads every word, in parallel chunks; a wrapping integer sum, which vectorises.
fn read_all(w: &[u32]) -> u32 {
    w.par_chunks(CHUNK / 4)
        .map(|c| c.iter().fold(0u32, |a, &v| a.wrapping_add(v)))
        .reduce(|| 0, u32::wrapping_add)
}

/// Writes `out` from `src`, in parallel chunks.
fn copy_all(out: &mut [u32], src: &[u32]) {
    out.par_chunks_mut(CHUNK / 4)
        .zip(src.par_chunks(CHUNK / 4))
        .for_each(|(o, s)| o.copy_from_slice(s));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names: Vec<&str> = LOSSES.iter().map(|(n, _)| *n).collect();
    let usage = format!(
        "usage: loss_bench LOSS SHAPE [--kernel auto|composed] [--iters N] [--device D] [--no-validate]; LOSS one of {}",
        names.join(", ")
    );
    let loss = args.first().unwrap_or_else(|| panic!("{usage}")).clone();
    if !names.contains(&loss.as_str()) {
        panic!("unknown loss {loss:?}; {usage}");
    }
    let shape: Vec<usize> = args
        .get(1)
        .unwrap_or_else(|| panic!("{usage}"))
        .split('x')
        .map(|v| v.parse().expect("shape: BxCxS..."))
        .collect();
    assert!(
        shape.len() >= 3,
        "shape: BxCxS... (at least one spatial dimension)"
    );
    let mut kernel = Kernel::Auto;
    let mut iters = 10usize;
    let mut device_name = "flex".to_string();
    let mut validate = true;
    let mut i = 2;
    let value = |i: usize| {
        args.get(i + 1)
            .unwrap_or_else(|| panic!("{} needs a value; {usage}", args[i]))
            .clone()
    };
    while i < args.len() {
        match args[i].as_str() {
            "--kernel" => {
                kernel = match value(i).as_str() {
                    "composed" => Kernel::Composed,
                    "auto" => Kernel::Auto,
                    other => panic!("--kernel {other:?}: auto or composed"),
                };
                i += 2;
            }
            "--iters" => {
                iters = value(i).parse().expect("--iters N");
                assert!(iters > 0, "--iters N with N >= 1");
                i += 2;
            }
            "--no-validate" => {
                validate = false;
                i += 1;
            }
            "--device" => {
                device_name = value(i);
                i += 2;
            }
            other => panic!("unknown argument {other}; {usage}"),
        }
    }
    let (b, c) = (shape[0], shape[1]);
    let n: usize = shape[2..].iter().product();
    let device = segloss::device::by_name(&device_name)
        .unwrap_or_else(|e| panic!("{e}"))
        .autodiff();
    let on_host = matches!(device_name.as_str(), "flex" | "cpu");
    device.seed(1);
    // The unified focal loss takes probabilities (MONAI's only form): the softmax of the logits.
    let probabilities = |x: Tensor<3>| {
        if loss == "unified-focal" {
            burn::tensor::activation::softmax(x, 1)
        } else {
            x
        }
    };
    let logits = probabilities(Tensor::<3>::random(
        [b, c, n],
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    let labels = Tensor::<2, Int>::random([b, n], Distribution::Uniform(0.0, c as f64), &device);
    let multi = (loss == "sigmoid-dice")
        .then(|| Tensor::<3>::random([b, c, n], Distribution::Bernoulli(0.3), &device));
    let logits_data = logits.to_data();
    // The target the loss reads: the label map, or the multi-label target of sigmoid-dice.
    let target_data = match &multi {
        Some(t) => t.to_data(),
        None => labels.to_data(),
    };

    let act = Activation::Softmax;
    let spatial_loss = SPATIAL.contains(&loss.as_str());
    if loss == "unified-focal" {
        assert!(
            c == 2,
            "unified-focal: MONAI's form takes two classes, got {c}"
        );
    }
    let target = || match &multi {
        Some(t) => Target::dense(t.clone()),
        None if spatial_loss => spatial_labels(labels.clone(), &shape[2..]),
        None => Target::labels(labels.clone()),
    };
    // Builds the boxed forward of a spatial loss `$l` (a loss value with a generic `forward`).
    macro_rules! spatial {
        ($l:expr) => {{
            let l = $l;
            let l2 = l.clone();
            Box::new(move |x: Tensor<3>, t: Target| {
                on_image(x, t, &|x, t| l.forward(x, t), &|x, t| l2.forward(x, t))
            })
        }};
    }
    // The loss, built once: logits and target in, the reduced loss `[1]` out.
    let forward: Box<dyn Fn(Tensor<3>, Target) -> Tensor<1>> = match loss.as_str() {
        "dice" => {
            let l = DiceLossConfig::new(act)
                .with_include_background(false)
                .with_validate_labels(validate)
                .init();
            Box::new(move |x, t| l.forward(x, t))
        }
        "sigmoid-dice" => {
            let l = DiceLossConfig::new(Activation::Sigmoid).init();
            Box::new(move |x, t| l.forward(x, t))
        }
        "gdl" => {
            let l = GeneralizedDiceLossConfig::new(act)
                .with_validate_labels(validate)
                .init();
            Box::new(move |x, t| l.forward(x, t))
        }
        "tversky" => {
            let l = TverskyLossConfig::new(act)
                .with_include_background(false)
                .with_alpha(0.3)
                .with_beta(0.7)
                .with_validate_labels(validate)
                .init();
            Box::new(move |x, t| l.forward(x, t))
        }
        "mcc" => {
            let l = MccLossConfig::new(act)
                .with_include_background(false)
                .with_validate_labels(validate)
                .init();
            Box::new(move |x, t| l.forward(x, t))
        }
        "dice-ce" => {
            let l = DiceCELossConfig::new(act)
                .with_include_background(false)
                .with_validate_labels(validate)
                .init();
            Box::new(move |x, t| l.forward(x, t))
        }
        "dice-focal" => {
            let l = DiceFocalLossConfig::new(act)
                .with_include_background(false)
                .with_focal_use_softmax(true)
                .with_validate_labels(validate)
                .init();
            Box::new(move |x, t| l.forward(x, t))
        }
        "gdl-focal" => {
            let l = GeneralizedDiceFocalLossConfig::new(act)
                .with_focal_use_softmax(true)
                .with_validate_labels(validate)
                .init();
            Box::new(move |x, t| l.forward(x, t))
        }
        "focal" => {
            let l = FocalLossConfig::new()
                .with_use_softmax(true)
                .with_validate_labels(validate)
                .init();
            Box::new(move |x, t| l.forward(x, t))
        }
        "ce" => {
            let l = CrossEntropyLossConfig::new()
                .with_validate_labels(validate)
                .init();
            Box::new(move |x, t| l.forward(x, t))
        }
        "wasserstein" => {
            let dist = (0..c)
                .map(|i| {
                    (0..c)
                        .map(|j| i.abs_diff(j) as f32 / (c - 1) as f32)
                        .collect()
                })
                .collect();
            let l = GeneralizedWassersteinDiceLossConfig::new(dist)
                .with_validate_labels(validate)
                .init();
            Box::new(move |x, t| l.forward(x, t))
        }
        "cldice" => spatial!(
            SoftclDiceLossConfig::new(act)
                .with_include_background(false)
                .with_validate_labels(validate)
                .init()
        ),
        "dice-cldice" => spatial!(
            SoftDiceclDiceLossConfig::new(act)
                .with_include_background(false)
                .with_validate_labels(validate)
                .init()
        ),
        "hausdorff" => spatial!(
            HausdorffDTLossConfig::new(act)
                .with_include_background(false)
                .with_validate_labels(validate)
                .init()
        ),
        "log-hausdorff" => spatial!(
            LogHausdorffDTLossConfig::new(act)
                .with_include_background(false)
                .with_validate_labels(validate)
                .init()
        ),
        "boundary" => spatial!(
            BoundaryLossConfig::new(act)
                .with_include_background(false)
                .with_validate_labels(validate)
                .init()
        ),
        "unified-focal" => {
            // MONAI's loss takes probabilities: both are given the softmax of the logits, taken
            // outside the timed step (see `probabilities` below).
            let l = AsymmetricUnifiedFocalLossConfig::new(Activation::None)
                .with_validate_labels(validate)
                .init();
            Box::new(move |x, t| l.forward(x, t))
        }
        other => unreachable!("{other} is checked above"),
    };

    let step_on = |logits: &Tensor<3>, target: Target| {
        let x = logits.clone().require_grad();
        let grads = forward(x.clone(), target).backward();
        let g = x.grad(&grads).expect("gradient");
        if on_host {
            black_box(g);
        } else {
            // Waits for every queued kernel of the step.
            black_box(g.sum().into_scalar::<f32>());
        }
    };
    let step = || step_on(&logits, target());

    // One step of the same loss on a small input (64 voxels per sample) first: it loads the code
    // the step runs and starts the thread pool, which the OS counts as resident memory but which
    // does not grow with the input (compare_monai.py does the same in MONAI's process).
    let small_n = n.min(64);
    let small_logits = probabilities(Tensor::<3>::random(
        [b, c, small_n],
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    let small_spatial: &[usize] = if shape.len() == 4 {
        &[8, 8]
    } else {
        &[4, 4, 4]
    };
    let small_target = || match &multi {
        None if spatial_loss => spatial_labels(
            Tensor::<2, Int>::random([b, small_n], Distribution::Uniform(0.0, c as f64), &device),
            small_spatial,
        ),
        Some(_) => Target::dense(Tensor::<3>::random(
            [b, c, small_n],
            Distribution::Bernoulli(0.3),
            &device,
        )),
        None => Target::labels(Tensor::<2, Int>::random(
            [b, small_n],
            Distribution::Uniform(0.0, c as f64),
            &device,
        )),
    };
    with_kernel(kernel, || step_on(&small_logits, small_target()));

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
    times.sort_by(|a, b| a.total_cmp(b));

    // The memory-traffic floor (see the module docs): forward reads logits and target, backward
    // reads them again and writes the gradient.
    let target_bytes_per_voxel = target_data.as_bytes().len() as f64 / (b * n) as f64;
    let floor_bytes = 2 * (logits_data.as_bytes().len() + target_data.as_bytes().len())
        + logits_data.as_bytes().len();
    let mut floor = Vec::new();
    if on_host {
        let xs = words(logits_data.as_bytes());
        let ts = words(target_data.as_bytes());
        let mut out = vec![1u32; xs.len()];
        for _ in 0..iters.max(5) {
            let t = Instant::now();
            let fwd = read_all(black_box(&xs)).wrapping_add(read_all(black_box(&ts)));
            let bwd = read_all(black_box(&ts)).wrapping_add(read_all(black_box(&xs)));
            copy_all(&mut out, black_box(&xs));
            black_box((fwd, bwd, &out));
            floor.push(t.elapsed().as_secs_f64() * 1e3);
        }
        floor.sort_by(|a, b| a.total_cmp(b));
    }
    let floor_ms = floor.get(floor.len() / 2).copied();
    let num = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
    println!(
        "{{\"loss\": \"{loss}\", \"shape\": \"{}\", \"kernel\": \"{kernel:?}\", \"device\": \"{device_name}\", \"validate_labels\": {validate}, \"median_ms\": {:.3}, \"min_ms\": {:.3}, \"floor_ms\": {}, \"floor_threads\": {}, \"floor_bytes\": {floor_bytes}, \"floor_gb_s\": {}, \"target_bytes_per_voxel\": {target_bytes_per_voxel}, \"peak_extra_mib\": {}, \"gradient_mib\": {:.1}}}",
        args[1],
        times[times.len() / 2],
        times[0],
        num(floor_ms),
        if on_host {
            rayon::current_num_threads().to_string()
        } else {
            "null".to_string()
        },
        num(floor_ms.map(|ms| floor_bytes as f64 / (ms * 1e6))),
        num(on_host.then_some(peak_extra_mib)),
        (b * c * n * 4) as f64 / (1024.0 * 1024.0)
    );
}
