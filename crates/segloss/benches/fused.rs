//! Forward + backward of the Dice-family losses, fused kernel against the composed path, on the
//! named shapes (`cargo bench -p segloss --bench fused`). Each sample is one forward and one
//! backward on Flex with autodiff, gradient with respect to the logits.
//!
//! On a GPU: `SEGLOSS_BENCH_DEVICE=wgpu cargo bench -p segloss --features wgpu --bench fused`
//! (`wgpu`, `wgpu-cpu`, `wgpu-gpu`; `cuda` with `--features cuda`). There each sample ends with
//! reading back the sum of the gradient, so that it covers the queued GPU work.

use burn::tensor::{Device, Distribution, Int, Tensor};
use divan::Bencher;
use segloss::{Activation, DiceLossConfig, GeneralizedDiceLossConfig, Kernel, Target, with_kernel};

fn main() {
    divan::main();
}

/// The named shapes: (name, B, C, spatial).
const SHAPES: &[(&str, usize, usize, &[usize])] = &[
    ("question_3x9x64^3", 3, 9, &[64, 64, 64]),
    ("2x4x128^3", 2, 4, &[128, 128, 128]),
    ("1x14x96^3", 1, 14, &[96, 96, 96]),
    ("2d_16x4x512^2", 16, 4, &[512, 512]),
];
const NAMES: &[&str] = &[
    "question_3x9x64^3",
    "2x4x128^3",
    "1x14x96^3",
    "2d_16x4x512^2",
];

#[derive(Clone, Copy, Debug)]
enum Dice {
    Softmax,
    SigmoidMultiLabel,
    Generalized,
}

struct Inputs {
    logits: Tensor<3>,
    labels: Tensor<2, Int>,
    multi_label: Tensor<3>,
}

/// `SEGLOSS_BENCH_DEVICE`, `flex` by default.
fn device_name() -> String {
    std::env::var("SEGLOSS_BENCH_DEVICE").unwrap_or_else(|_| "flex".to_string())
}

/// The device of `SEGLOSS_BENCH_DEVICE`.
fn device() -> Device {
    let name = device_name();
    segloss::device::by_name(&name).unwrap_or_else(|e| panic!("SEGLOSS_BENCH_DEVICE: {e}"))
}

fn inputs(name: &str) -> Inputs {
    let &(_, b, c, spatial) = SHAPES.iter().find(|s| s.0 == name).expect("a named shape");
    let n: usize = spatial.iter().product();
    let device = device().autodiff();
    device.seed(7);
    Inputs {
        logits: Tensor::random([b, c, n], Distribution::Normal(0.0, 1.0), &device),
        labels: Tensor::<2, Int>::random([b, n], Distribution::Uniform(0.0, c as f64), &device),
        multi_label: Tensor::random([b, c, n], Distribution::Bernoulli(0.3), &device),
    }
}

/// One forward + backward: softmax Dice (label map, background excluded), sigmoid multi-label
/// Dice, or softmax Generalized Dice (label map).
fn step(loss: Dice, x: &Inputs) {
    let logits = x.logits.clone().require_grad();
    let value = match loss {
        Dice::Softmax => DiceLossConfig::new(Activation::Softmax)
            .with_include_background(false)
            .init()
            .forward(logits.clone(), Target::labels(x.labels.clone())),
        Dice::SigmoidMultiLabel => DiceLossConfig::new(Activation::Sigmoid)
            .init()
            .forward(logits.clone(), Target::dense(x.multi_label.clone())),
        Dice::Generalized => GeneralizedDiceLossConfig::new(Activation::Softmax)
            .init()
            .forward(logits.clone(), Target::labels(x.labels.clone())),
    };
    let grads = value.backward();
    let grad = logits.grad(&grads).expect("gradient");
    if device_name() == "flex" {
        divan::black_box(grad);
    } else {
        divan::black_box(grad.sum().into_scalar::<f32>());
    }
}

fn run(bencher: Bencher, shape: &str, loss: Dice, kernel: Kernel) {
    let x = inputs(shape);
    bencher.bench_local(|| with_kernel(kernel, || step(loss, &x)));
}

#[divan::bench(args = NAMES, sample_count = 5, sample_size = 1)]
fn softmax_dice_fused(b: Bencher, shape: &str) {
    run(b, shape, Dice::Softmax, Kernel::Auto);
}

#[divan::bench(args = NAMES, sample_count = 2, sample_size = 1)]
fn softmax_dice_composed(b: Bencher, shape: &str) {
    run(b, shape, Dice::Softmax, Kernel::Composed);
}

#[divan::bench(args = NAMES, sample_count = 5, sample_size = 1)]
fn sigmoid_dice_fused(b: Bencher, shape: &str) {
    run(b, shape, Dice::SigmoidMultiLabel, Kernel::Auto);
}

#[divan::bench(args = NAMES, sample_count = 2, sample_size = 1)]
fn sigmoid_dice_composed(b: Bencher, shape: &str) {
    run(b, shape, Dice::SigmoidMultiLabel, Kernel::Composed);
}

#[divan::bench(args = NAMES, sample_count = 5, sample_size = 1)]
fn generalized_dice_fused(b: Bencher, shape: &str) {
    run(b, shape, Dice::Generalized, Kernel::Auto);
}

#[divan::bench(args = NAMES, sample_count = 2, sample_size = 1)]
fn generalized_dice_composed(b: Bencher, shape: &str) {
    run(b, shape, Dice::Generalized, Kernel::Composed);
}
