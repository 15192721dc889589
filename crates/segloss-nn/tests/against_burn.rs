//! The fused layers against Burn's own operations on Flex with autodiff: values and the
//! gradients of every input, on random shapes (odd sizes, strides 1 and 2, channels 1 to 64,
//! batch 1 to 4), and Burn's path taken where the fused kernels do not apply.

use burn::tensor::module::{conv_transpose3d as burn_conv_transpose3d, conv3d as burn_conv3d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Device, Distribution, Tensor, TensorData, activation};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Largest difference allowed for the convolutions, relative to the largest magnitude of the
/// reference (f32 sums of up to 64 * 27 products in a different order).
const REL_TOL: f32 = 2e-5;
/// The same for instance norm: its statistics are summed in another order (eight lanes added
/// in f64) than Burn's mean, which moves `x - mean` by an ulp of the mean; over a channel of
/// two voxels whose variance is near `eps` that is 3.5e-5 of the output.
const NORM_TOL: f32 = 1e-4;

fn device() -> Device {
    Device::flex().autodiff()
}

fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<D> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_data(TensorData::new(v, shape), &device())
}

fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.clone().into_data().convert::<f32>().try_to_vec().unwrap()
}

/// Asserts that `got` matches `want` within [`REL_TOL`] of `want`'s largest magnitude.
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_close_within(what, got, want, REL_TOL);
}

fn assert_close_within(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let (i, diff) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0.0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    assert!(
        diff <= tol * scale && got.iter().all(|v| v.is_finite()),
        "{what}: largest difference {diff} at {i} (got {}, want {}), scale {scale}",
        got[i],
        want[i]
    );
}

/// An output's values and the gradient of each input.
type Outcome = (Vec<f32>, Vec<Vec<f32>>);

/// Runs `f` on fresh tracked copies of `inputs`, then the gradients of `sum(f(..) * r)` for a
/// fixed random `r`: `(output, gradient of each input)`.
fn run<const D: usize>(
    inputs: &[Tensor<D>],
    bias: Option<&Tensor<1>>,
    f: impl Fn(Vec<Tensor<D>>, Option<Tensor<1>>) -> Tensor<5>,
) -> Outcome {
    let calls = segloss_nn::fused_calls();
    let tracked: Vec<Tensor<D>> = inputs.iter().map(|t| t.clone().require_grad()).collect();
    let b = bias.map(|b| b.clone().require_grad());
    let y = f(tracked.clone(), b.clone());
    let r = random(y.dims(), 99);
    let grads = (y.clone() * r).sum().backward();
    FUSED_RAN.with(|c| c.set(segloss_nn::fused_calls() > calls));
    let mut g: Vec<Vec<f32>> = tracked
        .iter()
        .map(|t| values(&t.grad(&grads).expect("input gradient")))
        .collect();
    if let Some(b) = b {
        g.push(values(&b.grad(&grads).expect("bias gradient")));
    }
    (values(&y), g)
}

thread_local! {
    /// Whether the last [`run`] went through a fused layer.
    static FUSED_RAN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `fused` and `reference` through [`run`], checking that the first used the fused layer
/// (else the comparison would be Burn against Burn) and that the second did not.
fn compare<const D: usize>(
    inputs: &[Tensor<D>],
    bias: Option<&Tensor<1>>,
    fused: impl Fn(Vec<Tensor<D>>, Option<Tensor<1>>) -> Tensor<5>,
    reference: impl Fn(Vec<Tensor<D>>, Option<Tensor<1>>) -> Tensor<5>,
) -> (Outcome, Outcome) {
    let got = run(inputs, bias, fused);
    assert!(FUSED_RAN.with(|c| c.get()), "the fused layer did not run");
    let want = run(inputs, bias, reference);
    assert!(
        !FUSED_RAN.with(|c| c.get()),
        "the reference ran a fused layer"
    );
    (got, want)
}

fn check_conv(
    x: [usize; 5],
    c_out: usize,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [(usize, usize); 3],
    bias: bool,
    seed: u64,
) {
    let input = random(x, seed);
    let weight = random([c_out, x[1], kernel[0], kernel[1], kernel[2]], seed + 1);
    let b = bias.then(|| random([c_out], seed + 2));
    let options = ConvOptions::new_with_padding(stride, padding, [1; 3], 1);
    let ((y, g), (y_ref, g_ref)) = compare(
        &[input, weight],
        b.as_ref(),
        |t, b| segloss_nn::conv3d(t[0].clone(), t[1].clone(), b, options.clone()),
        |t, b| burn_conv3d(t[0].clone(), t[1].clone(), b, options.clone()),
    );
    let what = format!("conv3d x {x:?} c_out {c_out} k {kernel:?} s {stride:?} p {padding:?}");
    assert_close(&format!("{what}: output"), &y, &y_ref);
    for (i, name) in ["input", "weight", "bias"].iter().enumerate().take(g.len()) {
        assert_close(&format!("{what}: {name} gradient"), &g[i], &g_ref[i]);
    }
}

#[test]
fn conv3d_matches_burn_on_the_unets_shapes() {
    // 3x3x3, padding 1, stride 1 and 2, with and without bias, odd sizes.
    check_conv([2, 3, 7, 6, 5], 4, [3; 3], [1; 3], [(1, 1); 3], true, 1);
    check_conv([1, 4, 9, 8, 7], 8, [3; 3], [2; 3], [(1, 1); 3], true, 2);
    check_conv([3, 2, 5, 5, 5], 3, [3; 3], [1; 3], [(1, 1); 3], false, 3);
    // 1x1x1 head.
    check_conv([2, 8, 4, 6, 5], 4, [1; 3], [1; 3], [(0, 0); 3], true, 4);
}

#[test]
fn conv3d_matches_burn_on_random_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for case in 0..12u64 {
        let batch = rng.random_range(1..=4);
        let c_in = [1, 2, 3, 5, 8, 16, 33, 64][rng.random_range(0..8)];
        let c_out = [1, 2, 4, 7, 16, 64][rng.random_range(0..6)];
        let kernel = [0; 3].map(|_| rng.random_range(1..=3));
        let stride = [0; 3].map(|_| rng.random_range(1..=2));
        // Burn's conv3d takes symmetric padding only (so does the fused path).
        let padding = kernel.map(|k| {
            let p = rng.random_range(0..k);
            (p, p)
        });
        // Small volumes at many channels keep the reference's time down.
        let max = if c_in * c_out > 256 { 5 } else { 9 };
        let mut x = [batch, c_in, 0, 0, 0];
        for (i, k) in kernel.iter().enumerate() {
            x[2 + i] = rng.random_range(*k..=max);
        }
        check_conv(
            x,
            c_out,
            kernel,
            stride,
            padding,
            rng.random_bool(0.7),
            100 + case,
        );
    }
}

#[test]
fn conv3d_with_groups_or_dilation_is_burns() {
    // The fused kernel covers groups = dilation = 1; the others go to Burn (same values).
    let x = random([1, 4, 6, 6, 6], 5);
    let w = random([4, 2, 3, 3, 3], 6);
    let options = ConvOptions::new([1; 3], [2; 3], [2; 3], 2);
    let got = segloss_nn::conv3d(x.clone(), w.clone(), None, options.clone());
    let want = burn_conv3d(x, w, None, options);
    assert_close("grouped, dilated conv3d", &values(&got), &values(&want));
}

fn check_up(x: [usize; 5], c_out: usize, kernel: [usize; 3], bias: bool, seed: u64) {
    let input = random(x, seed);
    let weight = random([x[1], c_out, kernel[0], kernel[1], kernel[2]], seed + 1);
    let b = bias.then(|| random([c_out], seed + 2));
    let options = ConvTransposeOptions::new(kernel, [0; 3], [0; 3], [1; 3], 1);
    let ((y, g), (y_ref, g_ref)) = compare(
        &[input, weight],
        b.as_ref(),
        |t, b| segloss_nn::conv_transpose3d(t[0].clone(), t[1].clone(), b, options.clone()),
        |t, b| burn_conv_transpose3d(t[0].clone(), t[1].clone(), b, options.clone()),
    );
    let what = format!("conv_transpose3d x {x:?} c_out {c_out} k {kernel:?}");
    assert_close(&format!("{what}: output"), &y, &y_ref);
    for (i, name) in ["input", "weight", "bias"].iter().enumerate().take(g.len()) {
        assert_close(&format!("{what}: {name} gradient"), &g[i], &g_ref[i]);
    }
}

#[test]
fn conv_transpose3d_matches_burn() {
    check_up([2, 8, 4, 4, 4], 4, [2; 3], true, 10);
    check_up([1, 3, 3, 5, 7], 5, [2; 3], false, 11);
    check_up([3, 16, 2, 3, 2], 64, [2, 1, 3], true, 12);
    check_up([4, 1, 1, 1, 1], 1, [2; 3], true, 13);
}

#[test]
fn conv_transpose3d_with_padding_is_burns() {
    let x = random([1, 3, 4, 4, 4], 14);
    let w = random([3, 2, 3, 3, 3], 15);
    let options = ConvTransposeOptions::new([2; 3], [1; 3], [1; 3], [1; 3], 1);
    let got = segloss_nn::conv_transpose3d(x.clone(), w.clone(), None, options.clone());
    let want = burn_conv_transpose3d(x, w, None, options);
    assert_close("padded conv_transpose3d", &values(&got), &values(&want));
}

fn composed_norm(x: Tensor<5>, gamma: Tensor<1>, beta: Tensor<1>, slope: f64) -> Tensor<5> {
    let norm = burn::nn::InstanceNormConfig::new(x.dims()[1])
        .with_affine(true)
        .init(&x.device());
    let norm = burn::nn::InstanceNorm {
        gamma: Some(burn::module::Param::from_tensor(gamma)),
        beta: Some(burn::module::Param::from_tensor(beta)),
        ..norm
    };
    activation::leaky_relu(norm.forward(x), slope)
}

fn check_norm(x: [usize; 5], seed: u64, scale: f32) {
    let input = random(x, seed) * scale;
    let gamma = random([x[1]], seed + 1);
    let beta = random([x[1]], seed + 2);
    let ((y, g), (y_ref, g_ref)) = compare(
        &[input],
        None,
        |t, _| {
            segloss_nn::instance_norm_leaky_relu(
                t[0].clone(),
                Some(gamma.clone()),
                Some(beta.clone()),
                1e-5,
                0.01,
            )
        },
        |t, _| composed_norm(t[0].clone(), gamma.clone(), beta.clone(), 0.01),
    );
    assert_close_within(&format!("norm {x:?}: output"), &y, &y_ref, NORM_TOL);
    assert_close_within(
        &format!("norm {x:?}: input gradient"),
        &g[0],
        &g_ref[0],
        NORM_TOL,
    );
}

#[test]
fn instance_norm_leaky_relu_matches_burn() {
    check_norm([2, 4, 5, 6, 7], 20, 1.0);
    check_norm([1, 64, 3, 3, 3], 21, 100.0);
    check_norm([4, 1, 8, 8, 8], 22, 0.01);
    check_norm([3, 2, 1, 1, 2], 23, 1.0);
}

#[test]
fn instance_norm_parameter_gradients_match_burn() {
    let x = random([2, 3, 4, 5, 6], 30);
    let grads_of = |fused: bool| {
        let gamma = random([3], 31).require_grad();
        let beta = random([3], 32).require_grad();
        let y = if fused {
            segloss_nn::instance_norm_leaky_relu(
                x.clone(),
                Some(gamma.clone()),
                Some(beta.clone()),
                1e-5,
                0.2,
            )
        } else {
            composed_norm(x.clone(), gamma.clone(), beta.clone(), 0.2)
        };
        let grads = (y * random([2, 3, 4, 5, 6], 33)).sum().backward();
        (
            values(&gamma.grad(&grads).unwrap()),
            values(&beta.grad(&grads).unwrap()),
        )
    };
    let (g, b) = grads_of(true);
    let (g_ref, b_ref) = grads_of(false);
    assert_close_within("gamma gradient", &g, &g_ref, NORM_TOL);
    assert_close_within("beta gradient", &b, &b_ref, NORM_TOL);
}

#[test]
fn layers_run_without_autodiff_and_on_constant_channels() {
    // Plain Flex (no autodiff), and a constant channel (variance 0: x̂ = 0, output beta's).
    let device = Device::flex();
    let x = Tensor::<5>::ones([1, 2, 3, 3, 3], &device);
    let beta = Tensor::<1>::from_floats([0.5, -1.0], &device);
    let y = segloss_nn::instance_norm_leaky_relu(x, None, Some(beta), 1e-5, 0.01);
    let v = values(&y);
    assert!(v[..27].iter().all(|&a| (a - 0.5).abs() < 1e-6), "{v:?}");
    assert!(v[27..].iter().all(|&a| (a + 0.01).abs() < 1e-6), "{v:?}");
    let w = Tensor::<5>::random([2, 2, 3, 3, 3], Distribution::Default, &device);
    let x = Tensor::<5>::random([1, 2, 4, 4, 4], Distribution::Default, &device);
    let options = ConvOptions::new([1; 3], [1; 3], [1; 3], 1);
    let got = segloss_nn::conv3d(x.clone(), w.clone(), None, options.clone());
    assert_close(
        "plain Flex conv3d",
        &values(&got),
        &values(&burn_conv3d(x, w, None, options)),
    );
}

#[test]
#[should_panic(expected = "the weight takes 3 input channels, the input has 2")]
fn conv3d_names_a_channel_mismatch() {
    let _ = segloss_nn::conv3d(
        random([1, 2, 4, 4, 4], 1),
        random([4, 3, 3, 3, 3], 2),
        None,
        ConvOptions::new([1; 3], [1; 3], [1; 3], 1),
    );
}
