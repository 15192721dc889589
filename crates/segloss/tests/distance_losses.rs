//! The distance-transform losses (Hausdorff DT, log Hausdorff DT, boundary): values and gradients
//! worked out by hand or from a brute-force distance, facts that follow from their definitions
//! (signs, perfect predictions, empty classes, the batch mean, symmetry), and the errors.
//! MONAI's own numbers are in the conformance cases (`tests/conformance.rs`).

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use segloss::*;

/// Runs `f`, expecting a panic, and returns its message.
fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let p = std::panic::catch_unwind(f).expect_err("expected a panic");
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w} (all: {got:?} vs {want:?})"
        );
    }
}

/// A loss as a closure over a 4D prediction and a dense target, returning the reduced value.
type LossFn = Box<dyn Fn(Tensor<4>, Tensor<4>) -> Tensor<1>>;

/// The three losses with one activation and background setting, as closures over a 4D
/// prediction and a dense target, returning the reduced value.
fn all_three(activation: Activation, include_background: bool) -> Vec<(&'static str, LossFn)> {
    let hd = HausdorffDTLossConfig::new(activation)
        .with_include_background(include_background)
        .init();
    let log = LogHausdorffDTLossConfig::new(activation)
        .with_include_background(include_background)
        .init();
    let bl = BoundaryLossConfig::new(activation)
        .with_include_background(include_background)
        .init();
    vec![
        ("HausdorffDTLoss", Box::new(move |p, t| hd.forward(p, t))),
        (
            "LogHausdorffDTLoss",
            Box::new(move |p, t| log.forward(p, t)),
        ),
        ("BoundaryLoss", Box::new(move |p, t| bl.forward(p, t))),
    ]
}

/// A 1 x 4 image, probabilities `p = [0.2, 0.6, 0.7, 0.4]` against `g = [0, 0, 1, 1]`. By hand:
/// the target's distances to the other side are `[2, 1, 1, 2]`, the thresholded prediction
/// `[0, 1, 1, 0]`'s are `[1, 1, 1, 1]`, and the target's signed map is `[2, 1, 0, -1]`.
#[test]
fn values_and_gradients_by_hand() {
    let device = Device::flex().autodiff();
    let p = || Tensor::<4>::from_data([[[[0.2f32, 0.6, 0.7, 0.4]]]], &device).require_grad();
    let g = Tensor::<4>::from_data([[[[0.0f32, 0.0, 1.0, 1.0]]]], &device);
    let sq_err = [0.04, 0.36, 0.09, 0.36];
    let err = [0.2, 0.6, -0.3, -0.6];
    for (alpha, weight) in [(1.0, [3.0, 2.0, 2.0, 3.0]), (2.0, [5.0, 2.0, 2.0, 5.0])] {
        let want: f64 = sq_err.iter().zip(&weight).map(|(e, w)| e * w).sum::<f64>() / 4.0;
        let want_grad: Vec<f64> = err
            .iter()
            .zip(&weight)
            .map(|(e, w)| 2.0 * e * w / 4.0)
            .collect();

        let x = p();
        let hd = HausdorffDTLossConfig::new(Activation::None)
            .with_alpha(alpha)
            .with_include_background(true)
            .init()
            .forward(x.clone(), g.clone());
        let grad = x.grad(&hd.backward()).unwrap();
        close(&values(hd), &[want], 1e-6, "HD value");
        close(&values(grad), &want_grad, 1e-6, "HD gradient");

        // log(1 + HD): gradient divided by 1 + HD.
        let x = p();
        let log = LogHausdorffDTLossConfig::new(Activation::None)
            .with_alpha(alpha)
            .with_include_background(true)
            .init()
            .forward(x.clone(), g.clone());
        let grad = x.grad(&log.backward()).unwrap();
        close(&values(log), &[(1.0 + want).ln()], 1e-6, "log HD value");
        let log_grad: Vec<f64> = want_grad.iter().map(|v| v / (1.0 + want)).collect();
        close(&values(grad), &log_grad, 1e-6, "log HD gradient");
    }

    // Boundary: (0.2 * 2 + 0.6 * 1 + 0.7 * 0 + 0.4 * -1) / 4, gradient phi / 4.
    let x = p();
    let bl = BoundaryLossConfig::new(Activation::None)
        .init()
        .forward(x.clone(), g.clone());
    let grad = x.grad(&bl.backward()).unwrap();
    close(&values(bl), &[0.15], 1e-6, "boundary value");
    close(
        &values(grad),
        &[0.5, 0.25, 0.0, -0.25],
        1e-6,
        "boundary gradient",
    );
}

/// Coordinates of linear index `i` in a row-major grid of shape `spatial`.
fn coords(mut i: usize, spatial: &[usize]) -> Vec<f64> {
    let mut c = vec![0.0; spatial.len()];
    for a in (0..spatial.len()).rev() {
        c[a] = (i % spatial[a]) as f64;
        i /= spatial[a];
    }
    c
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// One foreground voxel in a 3D volume, predicted with probability 0.8 there and 0.1 elsewhere:
/// both masks are that voxel, so both distance maps are the distance to it (1 at the voxel
/// itself, its distance to the background). Expected values from a direct distance computation.
#[test]
fn a_single_foreground_voxel() {
    let device = Device::flex();
    let spatial = [3usize, 4, 5];
    let n: usize = spatial.iter().product();
    let at = 27; // (1, 1, 2)
    let centre = coords(at, &spatial);
    let d: Vec<f64> = (0..n)
        .map(|i| {
            if i == at {
                1.0
            } else {
                distance(&coords(i, &spatial), &centre)
            }
        })
        .collect();
    let mut g = vec![0f32; n];
    g[at] = 1.0;
    let p: Vec<f32> = (0..n).map(|i| if i == at { 0.8 } else { 0.1 }).collect();
    let shape = [1, 1, 3, 4, 5];
    let pt = Tensor::<5>::from_data(TensorData::new(p.clone(), shape), &device);
    let gt = Tensor::<5>::from_data(TensorData::new(g.clone(), shape), &device);

    // HD = mean (p - g)^2 * 2 d^2.
    let want: f64 = (0..n)
        .map(|i| {
            let e = p[i] as f64 - g[i] as f64;
            e * e * 2.0 * d[i] * d[i]
        })
        .sum::<f64>()
        / n as f64;
    let hd = HausdorffDTLossConfig::new(Activation::None)
        .with_include_background(true)
        .init()
        .forward(pt.clone(), gt.clone());
    close(&values(hd), &[want], 1e-5, "HD");

    // Boundary: the voxel itself is on the boundary (phi = 1 - 1 = 0), the rest at distance d.
    let want: f64 = (0..n)
        .filter(|&i| i != at)
        .map(|i| p[i] as f64 * d[i])
        .sum::<f64>()
        / n as f64;
    let bl = BoundaryLossConfig::new(Activation::None)
        .init()
        .forward(pt, gt);
    close(&values(bl), &[want], 1e-5, "boundary");
}

/// A prediction equal to the target (one-hot probabilities, or logits of +-1e4 whose softmax is
/// exactly one-hot in f32) scores 0 for the Hausdorff losses with a zero, finite gradient; the
/// boundary loss is then at its minimum, `<= 0`, and its gradient finite.
#[test]
fn a_perfect_prediction() {
    let device = Device::flex().autodiff();
    let labels = Tensor::<4, Int>::random([2, 1, 9, 11], Distribution::Uniform(0.0, 3.0), &device);
    let one_hot: Tensor<4> = labels
        .clone()
        .expand([2, 3, 9, 11])
        .equal(
            Tensor::<1, Int>::arange(0..3, &device)
                .reshape([1, 3, 1, 1])
                .expand([2, 3, 9, 11]),
        )
        .float();
    let logits = one_hot.clone().mul_scalar(2e4).sub_scalar(1e4);
    for (prediction, activation) in [
        (one_hot.clone(), Activation::None),
        (logits.clone(), Activation::Softmax),
        (logits, Activation::Sigmoid),
    ] {
        for include_background in [true, false] {
            for (name, loss) in all_three(activation, include_background) {
                let x = prediction.clone().require_grad();
                let v = loss(x.clone(), one_hot.clone());
                let grad = values(x.grad(&v.backward()).unwrap());
                let v = values(v)[0];
                let what = format!("{name} {activation:?} background {include_background}");
                assert!(grad.iter().all(|g| g.is_finite()), "{what}: {grad:?}");
                if name == "BoundaryLoss" {
                    assert!(v <= 0.0, "{what}: {v}");
                } else {
                    assert_eq!(v, 0.0, "{what}");
                    assert!(grad.iter().all(|&g| g == 0.0), "{what}: {grad:?}");
                }
            }
        }
    }
}

/// The boundary loss of a perfect binary prediction is its minimum over probabilities: the mean
/// of the negative part of the target's signed map; the opposite prediction gets its maximum,
/// the mean of the positive part. Random probabilities lie between.
#[test]
fn boundary_loss_bounds() {
    let device = Device::flex();
    let g = Tensor::<4>::random([3, 2, 10, 12], Distribution::Bernoulli(0.4), &device);
    let loss = BoundaryLossConfig::new(Activation::None).init();
    let lowest = values(loss.forward_no_reduction(g.clone(), g.clone()));
    let opposite = g.clone().neg().add_scalar(1.0);
    let highest = values(loss.forward_no_reduction(opposite, g.clone()));
    for _ in 0..5 {
        let p = Tensor::<4>::random([3, 2, 10, 12], Distribution::Uniform(0.0, 1.0), &device);
        let v = values(loss.forward_no_reduction(p, g.clone()));
        for i in 0..v.len() {
            assert!(
                lowest[i] <= 0.0 && highest[i] >= 0.0,
                "{lowest:?} {highest:?}"
            );
            assert!(
                lowest[i] - 1e-6 <= v[i] && v[i] <= highest[i] + 1e-6,
                "{i}: {} <= {} <= {}",
                lowest[i],
                v[i],
                highest[i]
            );
        }
    }
}

/// A class that is absent from the target (and, for the Hausdorff losses, from the prediction
/// thresholded at 0.5), or that fills the whole image, has no boundary and so no distances: it
/// scores 0 with a zero gradient, whatever its soft probabilities. With `alpha = 0` its weight is
/// `0^0 + 0^0 = 2` (PyTorch's `0 ** 0 = 1`), so the Hausdorff loss is then twice the mean squared
/// error.
#[test]
fn classes_without_boundary_score_zero() {
    let device = Device::flex().autodiff();
    let spatial = [6, 7];
    let n = 42;
    // Channel 0 absent from the target, probabilities in [0.05, 0.45] (below the threshold);
    // channel 1 the whole image, probabilities in [0.55, 0.95].
    let p0: Vec<f32> = (0..n).map(|i| 0.05 + 0.4 * (i as f32 / n as f32)).collect();
    let p1: Vec<f32> = (0..n).map(|i| 0.55 + 0.4 * (i as f32 / n as f32)).collect();
    let p = [p0.clone(), p1.clone()].concat();
    let g = [vec![0f32; n], vec![1f32; n]].concat();
    let shape = [1, 2, spatial[0], spatial[1]];
    let prediction =
        || Tensor::<4>::from_data(TensorData::new(p.clone(), shape), &device).require_grad();
    let target = Tensor::<4>::from_data(TensorData::new(g.clone(), shape), &device);
    for (name, loss) in all_three(Activation::None, true) {
        let x = prediction();
        let v = loss(x.clone(), target.clone());
        let grad = values(x.grad(&v.backward()).unwrap());
        assert_eq!(values(v), vec![0.0], "{name}");
        assert!(grad.iter().all(|&g| g == 0.0), "{name}: {grad:?}");
    }
    // Boundary: even a prediction far from the target on an empty class costs nothing.
    let x = Tensor::<4>::ones(shape, &device);
    let v = BoundaryLossConfig::new(Activation::None)
        .init()
        .forward_no_reduction(x, target.clone());
    assert_eq!(values(v), vec![0.0, 0.0]);

    let mse = |q: &[f32], t: f32| -> f64 {
        q.iter()
            .map(|&x| (x as f64 - t as f64).powi(2))
            .sum::<f64>()
            / q.len() as f64
    };
    let v = HausdorffDTLossConfig::new(Activation::None)
        .with_alpha(0.0)
        .with_include_background(true)
        .init()
        .forward_no_reduction(prediction(), target);
    close(
        &values(v),
        &[2.0 * mse(&p0, 0.0), 2.0 * mse(&p1, 1.0)],
        1e-6,
        "alpha 0",
    );
}

/// 1 x 1 x 1 (and 1 x 1) images: every mask is empty or full, so no class has a boundary and
/// every loss is 0 with a zero gradient, from logits of +-1e4 too.
#[test]
fn one_voxel_images() {
    let device = Device::flex().autodiff();
    for scale in [1.0, 1e4] {
        let x = Tensor::<5>::from_data(
            [[[[[0.3f32]]], [[[-0.7]]]], [[[[2.0]]], [[[1.0]]]]],
            &device,
        )
        .mul_scalar(scale)
        .require_grad();
        let labels = Tensor::<5, Int>::from_data([[[[[1]]]], [[[[0]]]]], &device);
        let hd = HausdorffDTLossConfig::new(Activation::Softmax).init();
        let log = LogHausdorffDTLossConfig::new(Activation::Softmax).init();
        let bl = BoundaryLossConfig::new(Activation::Softmax).init();
        for (name, v) in [
            ("HausdorffDTLoss", hd.forward(x.clone(), labels.clone())),
            ("LogHausdorffDTLoss", log.forward(x.clone(), labels.clone())),
            ("BoundaryLoss", bl.forward(x.clone(), labels.clone())),
        ] {
            let grad = values(x.grad(&v.backward()).unwrap());
            assert_eq!(values(v), vec![0.0], "{name} scale {scale}");
            assert!(grad.iter().all(|&g| g == 0.0), "{name}: {grad:?}");
        }
    }
    let x = Tensor::<4>::from_data([[[[0.9f32]]]], &device);
    let t = Tensor::<4>::from_data([[[[1.0f32]]]], &device);
    for (name, loss) in all_three(Activation::Sigmoid, true) {
        assert_eq!(values(loss(x.clone(), t.clone())), vec![0.0], "{name}");
    }
}

/// Facts that hold whatever the distances are: a label map and its one-hot form give the same
/// values; `batch` gives the mean over the samples of the per-sample values (the distance maps
/// are per sample, and every sample has the same number of voxels); `forward` reduces
/// `forward_no_reduction` by the mean or the sum, and the log form takes `log(1 + .)` of the
/// reduced Hausdorff loss (not the mean of the logs); mirroring or transposing the image moves
/// the distances with it and changes no value; a 3D image one voxel deep is the 2D image.
#[test]
fn structural_facts() {
    let device = Device::flex();
    let [b, c, h, w] = [3, 4, 9, 10];
    let logits = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 2.0), &device);
    let labels = Tensor::<4, Int>::random([b, 1, h, w], Distribution::Uniform(0.0, 4.0), &device);
    let one_hot: Tensor<4> = labels
        .clone()
        .expand([b, c, h, w])
        .equal(
            Tensor::<1, Int>::arange(0..c as i64, &device)
                .reshape([1, c, 1, 1])
                .expand([b, c, h, w]),
        )
        .float();

    for alpha in [1.0, 2.0, 3.0] {
        for include_background in [true, false] {
            let k = if include_background { c } else { c - 1 };
            let hd = |batch: bool, reduction: LossReduction| {
                HausdorffDTLossConfig::new(Activation::Softmax)
                    .with_alpha(alpha)
                    .with_include_background(include_background)
                    .with_batch(batch)
                    .with_reduction(reduction)
                    .init()
            };
            let log = |reduction: LossReduction| {
                LogHausdorffDTLossConfig::new(Activation::Softmax)
                    .with_alpha(alpha)
                    .with_include_background(include_background)
                    .with_reduction(reduction)
                    .init()
            };
            let bl = |batch: bool, reduction: LossReduction| {
                BoundaryLossConfig::new(Activation::Softmax)
                    .with_include_background(include_background)
                    .with_batch(batch)
                    .with_reduction(reduction)
                    .init()
            };
            let m = LossReduction::Mean;
            let what = format!("alpha {alpha}, background {include_background}");

            for (name, per, per_dense, batched) in [
                (
                    "HD",
                    hd(false, m).forward_no_reduction(logits.clone(), labels.clone()),
                    hd(false, m).forward_no_reduction(logits.clone(), one_hot.clone()),
                    hd(true, m).forward_no_reduction(logits.clone(), labels.clone()),
                ),
                (
                    "boundary",
                    bl(false, m).forward_no_reduction(logits.clone(), labels.clone()),
                    bl(false, m).forward_no_reduction(logits.clone(), one_hot.clone()),
                    bl(true, m).forward_no_reduction(logits.clone(), labels.clone()),
                ),
            ] {
                assert_eq!(per.dims(), [b, k], "{name} {what}");
                assert_eq!(batched.dims(), [1, k], "{name} {what}");
                let per_v = values(per.clone());
                let want: Vec<f64> = per_dense
                    .into_data()
                    .iter::<f32>()
                    .map(|v| v as f64)
                    .collect();
                close(
                    &per_v,
                    &want,
                    1e-6,
                    &format!("{name} {what}: labels vs one-hot"),
                );
                let mean_over_samples: Vec<f64> = (0..k)
                    .map(|j| (0..b).map(|s| per_v[s * k + j] as f64).sum::<f64>() / b as f64)
                    .collect();
                close(
                    &values(batched),
                    &mean_over_samples,
                    1e-5,
                    &format!("{name} {what}: batch"),
                );
            }

            let per = values(hd(false, m).forward_no_reduction(logits.clone(), labels.clone()));
            let sum: f64 = per.iter().map(|&v| v as f64).sum();
            let mean = sum / per.len() as f64;
            let reduced = |r| values(hd(false, r).forward(logits.clone(), labels.clone()));
            close(&reduced(LossReduction::Mean), &[mean], 1e-5, &what);
            close(&reduced(LossReduction::Sum), &[sum], 1e-5, &what);
            let logged = |r| values(log(r).forward(logits.clone(), labels.clone()));
            close(&logged(LossReduction::Mean), &[mean.ln_1p()], 1e-5, &what);
            close(&logged(LossReduction::Sum), &[sum.ln_1p()], 1e-5, &what);
            let log_per = values(log(m).forward_no_reduction(logits.clone(), labels.clone()));
            let want: Vec<f64> = per.iter().map(|&v| (v as f64).ln_1p()).collect();
            close(&log_per, &want, 1e-6, &what);

            // Mirrored along both axes and transposed: the same values.
            let moved = |t: Tensor<4>| t.flip([2, 3]).swap_dims(2, 3);
            let moved_labels = labels.clone().flip([2, 3]).swap_dims(2, 3);
            close(
                &values(
                    hd(false, m).forward_no_reduction(moved(logits.clone()), moved_labels.clone()),
                ),
                &per.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                1e-5,
                &format!("HD {what}: mirrored"),
            );
            let bl_per = values(bl(false, m).forward_no_reduction(logits.clone(), labels.clone()));
            close(
                &values(bl(false, m).forward_no_reduction(moved(logits.clone()), moved_labels)),
                &bl_per.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                1e-5,
                &format!("boundary {what}: mirrored"),
            );

            // A 3D image one voxel deep.
            let deep = |t: Tensor<4>| t.unsqueeze_dim::<5>(2);
            let hd3 = HausdorffDTLossConfig::new(Activation::Softmax)
                .with_alpha(alpha)
                .with_include_background(include_background)
                .init()
                .forward_no_reduction(deep(logits.clone()), labels.clone().unsqueeze_dim::<5>(2));
            close(
                &values(hd3),
                &per.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                1e-6,
                &format!("HD {what}: 3D one deep"),
            );
        }
    }
}

/// Logits of +-1e4 (probabilities exactly 0 and 1 after the activation) give finite values and
/// gradients, and the Hausdorff losses are `>= 0` on random inputs.
#[test]
fn extreme_logits_and_signs() {
    let device = Device::flex().autodiff();
    let target = Tensor::<5>::random([2, 3, 6, 7, 5], Distribution::Bernoulli(0.3), &device);
    for scale in [1.0, 1e4] {
        let x = Tensor::<5>::random([2, 3, 6, 7, 5], Distribution::Normal(0.0, 1.0), &device)
            .mul_scalar(scale)
            .require_grad();
        for activation in [Activation::Sigmoid, Activation::Softmax] {
            let losses = [
                HausdorffDTLossConfig::new(activation)
                    .with_include_background(true)
                    .init()
                    .forward(x.clone(), target.clone()),
                LogHausdorffDTLossConfig::new(activation)
                    .init()
                    .forward(x.clone(), target.clone()),
                BoundaryLossConfig::new(activation)
                    .init()
                    .forward(x.clone(), target.clone()),
            ];
            for (i, v) in losses.into_iter().enumerate() {
                let grad = values(x.grad(&v.backward()).unwrap());
                let v = values(v)[0];
                let what = format!("loss {i}, {activation:?}, scale {scale}");
                assert!(v.is_finite(), "{what}: {v}");
                assert!(i == 2 || v >= 0.0, "{what}: {v}");
                assert!(grad.iter().all(|g| g.is_finite()), "{what}");
            }
        }
    }
}

#[test]
fn nan_input_gives_nan() {
    let device = Device::flex();
    let mut x = vec![0.2f32; 2 * 16];
    x[5] = f32::NAN;
    let x = Tensor::<4>::from_data(TensorData::new(x, [1, 2, 4, 4]), &device);
    // Class 1 the right half of the image, class 0 the rest: both have a boundary.
    let right: Vec<f32> = (0..16)
        .map(|i| if i % 4 >= 2 { 1.0 } else { 0.0 })
        .collect();
    let left: Vec<f32> = right.iter().map(|v| 1.0 - v).collect();
    let target = Tensor::<4>::from_data(
        TensorData::new([left, right].concat(), [1, 2, 4, 4]),
        &device,
    );
    for (name, loss) in all_three(Activation::Softmax, true) {
        assert!(
            values(loss(x.clone(), target.clone()))[0].is_nan(),
            "{name}"
        );
    }
}

#[test]
fn bad_alpha_is_refused() {
    for alpha in [-1.0, -1e-9, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let e = HausdorffDTLossConfig::new(Activation::Softmax)
            .with_alpha(alpha)
            .try_init()
            .unwrap_err();
        assert_eq!((e.loss, e.parameter), ("HausdorffDTLoss", "alpha"), "{e}");
        assert!(e.to_string().contains("finite and >= 0"), "{e}");
        let e = LogHausdorffDTLossConfig::new(Activation::Softmax)
            .with_alpha(alpha)
            .try_init()
            .unwrap_err();
        assert_eq!(
            (e.loss, e.parameter),
            ("LogHausdorffDTLoss", "alpha"),
            "{e}"
        );
        let msg = panic_message(|| {
            HausdorffDTLossConfig::new(Activation::Softmax)
                .with_alpha(alpha)
                .init();
        });
        assert!(
            msg.starts_with("HausdorffDTLoss: invalid `alpha`: must be finite and >= 0, got"),
            "{msg}"
        );
    }
    for alpha in [0.0, 0.5, 2.0, 7.0] {
        assert!(
            HausdorffDTLossConfig::new(Activation::Softmax)
                .with_alpha(alpha)
                .try_init()
                .is_ok()
        );
    }
    assert!(
        BoundaryLossConfig::new(Activation::Softmax)
            .try_init()
            .is_ok()
    );
}

#[test]
fn shapes_the_distance_transform_cannot_take_are_refused() {
    let device = Device::flex();
    let names = ["HausdorffDTLoss", "LogHausdorffDTLoss", "BoundaryLoss"];
    // 1D: [B, C, N].
    let x3 = Tensor::<3>::zeros([1, 2, 8], &device);
    let t3 = Tensor::<3>::zeros([1, 2, 8], &device);
    // 4D spatial: [B, C, 2, 2, 2, 2].
    let x6 = Tensor::<6>::zeros([1, 2, 2, 2, 2, 2], &device);
    let t6 = Tensor::<6>::zeros([1, 2, 2, 2, 2, 2], &device);
    let runs: [Box<dyn Fn() + std::panic::RefUnwindSafe + '_>; 6] = [
        Box::new(|| {
            HausdorffDTLossConfig::new(Activation::Softmax)
                .init()
                .forward(x3.clone(), t3.clone());
        }),
        Box::new(|| {
            LogHausdorffDTLossConfig::new(Activation::Softmax)
                .init()
                .forward(x3.clone(), t3.clone());
        }),
        Box::new(|| {
            BoundaryLossConfig::new(Activation::Softmax)
                .init()
                .forward(x3.clone(), t3.clone());
        }),
        Box::new(|| {
            HausdorffDTLossConfig::new(Activation::Softmax)
                .init()
                .forward(x6.clone(), t6.clone());
        }),
        Box::new(|| {
            LogHausdorffDTLossConfig::new(Activation::Softmax)
                .init()
                .forward_no_reduction(x6.clone(), t6.clone());
        }),
        Box::new(|| {
            BoundaryLossConfig::new(Activation::Softmax)
                .init()
                .forward_no_reduction(x6.clone(), t6.clone());
        }),
    ];
    for (i, f) in runs.iter().enumerate() {
        let msg = panic_message(f);
        let spatial = if i < 3 {
            "1 spatial axes"
        } else {
            "4 spatial axes"
        };
        assert!(
            msg.starts_with(names[i % 3]) && msg.contains("2D or 3D") && msg.contains(spatial),
            "{i}: {msg}"
        );
    }
}

#[test]
fn misuse_is_refused_with_a_message() {
    let device = Device::flex();
    let x = Tensor::<4>::zeros([2, 3, 5, 5], &device);
    let labels = Tensor::<4, Int>::zeros([2, 1, 5, 5], &device);
    // A prediction/target shape mismatch names both shapes.
    let msg = panic_message(|| {
        HausdorffDTLossConfig::new(Activation::Softmax)
            .init()
            .forward(x.clone(), Tensor::<4>::zeros([2, 3, 5, 4], &device));
    });
    assert!(
        msg.starts_with("HausdorffDTLoss") && msg.contains("[2, 3, 5, 4]"),
        "{msg}"
    );
    // Labels out of range.
    let msg = panic_message(|| {
        BoundaryLossConfig::new(Activation::Softmax)
            .init()
            .forward(x.clone(), labels.clone().add_scalar(3));
    });
    assert!(msg.starts_with("BoundaryLoss: label value 3"), "{msg}");
    // A voxel mask.
    let mask = Tensor::<4>::ones([2, 1, 5, 5], &device);
    type Case<'a> = (&'static str, Box<dyn Fn() + std::panic::RefUnwindSafe + 'a>);
    let cases: Vec<Case<'_>> = vec![
        (
            "HausdorffDTLoss",
            Box::new(|| {
                HausdorffDTLossConfig::new(Activation::Softmax)
                    .init()
                    .forward(
                        x.clone(),
                        Target::labels(labels.clone()).with_mask(mask.clone()),
                    );
            }),
        ),
        (
            "BoundaryLoss",
            Box::new(|| {
                BoundaryLossConfig::new(Activation::Softmax).init().forward(
                    x.clone(),
                    Target::labels(labels.clone()).with_mask(mask.clone()),
                );
            }),
        ),
    ];
    for (name, f) in cases {
        let msg = panic_message(&f);
        assert!(
            msg.starts_with(name) && msg.contains("takes no voxel mask"),
            "{msg}"
        );
    }
    // One channel: the default `include_background = false` of the Hausdorff losses would drop
    // it, and a softmax over it is constant.
    let one = Tensor::<4>::zeros([1, 1, 4, 4], &device);
    let msg = panic_message(|| {
        HausdorffDTLossConfig::new(Activation::Sigmoid)
            .init()
            .forward(one.clone(), one.clone());
    });
    assert!(msg.contains("would drop the only channel"), "{msg}");
    let msg = panic_message(|| {
        BoundaryLossConfig::new(Activation::Softmax)
            .init()
            .forward(one.clone(), one.clone());
    });
    assert!(msg.contains("softmax over a single channel"), "{msg}");
    // With the background kept, a single sigmoid channel works.
    let v = LogHausdorffDTLossConfig::new(Activation::Sigmoid)
        .with_include_background(true)
        .init()
        .forward(one.clone(), one);
    assert!(values(v)[0].is_finite());
}
