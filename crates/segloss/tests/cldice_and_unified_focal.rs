//! The clDice losses and the asymmetric unified focal loss: facts that follow from their
//! definitions (perfect predictions, bounds, what a broken tube costs), the unified focal loss's
//! multi-class generalisation against its formula written out voxel by voxel, its activations,
//! and the errors. MONAI's own numbers are in the conformance cases (`tests/conformance.rs`).

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

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

/// A 3D volume `[1, 2, h, w, d]` of probabilities: a straight tube with a 3x3 cross-section
/// along the first axis (class 1) and its background (class 0). The slices in `gap` (a range of
/// the first axis) are left out of it, and in the slices of `thin` its four corner voxels.
fn tube(
    h: usize,
    w: usize,
    d: usize,
    gap: std::ops::Range<usize>,
    thin: std::ops::Range<usize>,
) -> Vec<f32> {
    let mut fg = vec![0f32; h * w * d];
    let (cy, cz) = (w / 2, d / 2);
    for x in 0..h {
        for y in cy - 1..=cy + 1 {
            for z in cz - 1..=cz + 1 {
                let corner = y != cy && z != cz;
                if !(gap.contains(&x) || corner && thin.contains(&x)) {
                    fg[(x * w + y) * d + z] = 1.0;
                }
            }
        }
    }
    let bg: Vec<f32> = fg.iter().map(|v| 1.0 - v).collect();
    [bg, fg].concat()
}

fn volume(values: Vec<f32>, shape: [usize; 5]) -> Tensor<5> {
    Tensor::from_data(TensorData::new(values, shape), &Device::flex())
}

#[test]
fn cldice_of_a_perfect_prediction_is_zero() {
    let shape = [1, 2, 16, 7, 7];
    let t = tube(16, 7, 7, 0..0, 0..0);
    let loss = SoftclDiceLossConfig::new(Activation::None).init();
    let v = scalar(loss.forward(volume(t.clone(), shape), volume(t, shape)));
    // 1 - 2 / (2 + smooth) with both ratios 1.
    assert!((v - (1.0 - 2.0 / 2.0001)).abs() < 1e-6, "{v}");
}

/// The reason clDice exists: two predictions that each miss 36 voxels of a tube (the same Dice),
/// one by cutting it in two, the other by thinning it; the cut loses a stretch of the centre
/// line and clDice charges it many times more than the thinning.
#[test]
fn cldice_charges_a_broken_tube_far_more_than_a_thinned_one() {
    let shape = [1, 2, 24, 7, 7];
    let target = volume(tube(24, 7, 7, 0..0, 0..0), shape);
    let broken = volume(tube(24, 7, 7, 10..14, 0..0), shape);
    let thinned = volume(tube(24, 7, 7, 0..0, 5..14), shape);
    let cl = SoftclDiceLossConfig::new(Activation::None)
        .with_include_background(false)
        .init();
    let dice = DiceLossConfig::new(Activation::None)
        .with_include_background(false)
        .init();
    let d_broken = scalar(dice.forward(broken.clone(), target.clone()));
    let d_thinned = scalar(dice.forward(thinned.clone(), target.clone()));
    assert!(
        (d_broken - d_thinned).abs() < 1e-6,
        "Dice {d_broken} vs {d_thinned}"
    );
    let cl_broken = scalar(cl.forward(broken, target.clone()));
    let cl_thinned = scalar(cl.forward(thinned, target));
    assert!(
        cl_broken > 0.05 && cl_broken > 5.0 * cl_thinned,
        "clDice: broken {cl_broken}, thinned {cl_thinned}"
    );
}

#[test]
fn cldice_losses_lie_in_zero_one_and_have_finite_gradients() {
    let device = Device::flex().autodiff();
    for (shape, logit) in [
        ([2, 3, 9, 8, 7], 1.0),
        ([1, 2, 1, 1, 1], 1.0),
        ([2, 3, 5, 4, 6], 1e4),
    ] {
        let x =
            Tensor::<5>::random(shape, Distribution::Normal(0.0, logit), &device).require_grad();
        let labels = Tensor::<5, Int>::random(
            [shape[0], 1, shape[2], shape[3], shape[4]],
            Distribution::Uniform(0.0, shape[1] as f64),
            &device,
        );
        for include_background in [true, false] {
            let cl = SoftclDiceLossConfig::new(Activation::Softmax)
                .with_include_background(include_background)
                .with_iterations(2)
                .init()
                .forward(x.clone(), labels.clone());
            let both = SoftDiceclDiceLossConfig::new(Activation::Softmax)
                .with_include_background(include_background)
                .init()
                .forward(x.clone(), labels.clone());
            for (name, v) in [("clDice", cl), ("Dice + clDice", both)] {
                let grads = v.backward();
                let value = v.into_scalar::<f32>() as f64;
                assert!(
                    (0.0..=1.0).contains(&value),
                    "{name} {value} at {shape:?}, logits x{logit}"
                );
                let g: Vec<f32> = x.grad(&grads).unwrap().into_data().iter().collect();
                assert!(
                    g.iter().all(|v| v.is_finite()),
                    "{name}: gradient not finite"
                );
            }
        }
    }
}

#[test]
fn cldice_refuses_what_it_cannot_compute() {
    let zero = SoftclDiceLossConfig::new(Activation::Softmax)
        .with_iterations(0)
        .try_init()
        .unwrap_err();
    assert_eq!(
        (zero.loss, zero.parameter),
        ("SoftclDiceLoss", "iterations")
    );
    let smooth = SoftDiceclDiceLossConfig::new(Activation::Softmax)
        .with_smooth(0.0)
        .try_init()
        .unwrap_err();
    assert_eq!(
        (smooth.loss, smooth.parameter),
        ("SoftDiceclDiceLoss", "smooth")
    );
    let alpha = SoftDiceclDiceLossConfig::new(Activation::Softmax)
        .with_alpha(1.5)
        .try_init()
        .unwrap_err();
    assert!(alpha.to_string().contains("alpha"), "{alpha}");

    let device = Device::flex();
    let msg = panic_message(|| {
        let x = Tensor::<3>::zeros([1, 2, 8], &device);
        let y = Tensor::<3, Int>::zeros([1, 1, 8], &device);
        SoftclDiceLossConfig::new(Activation::Softmax)
            .init()
            .forward(x, y);
    });
    assert!(
        msg.contains("SoftclDiceLoss") && msg.contains("2D or 3D") && msg.contains("[1, 2, 8]"),
        "{msg}"
    );
    let msg = panic_message(|| {
        let x = Tensor::<4>::zeros([1, 2, 8, 8], &device);
        let y = Tensor::<4, Int>::zeros([1, 1, 8, 8], &device);
        let m = Tensor::<4>::ones([1, 1, 8, 8], &device);
        SoftclDiceLossConfig::new(Activation::Softmax)
            .init()
            .forward(x, Target::labels(y).with_mask(m));
    });
    assert!(msg.contains("mask"), "{msg}");
}

/// The unified focal loss written out voxel by voxel for `C` classes of probabilities `p[b][c][v]`
/// and labels `y[b][v]` (the formula of [`AsymmetricUnifiedFocalLoss`]'s documentation).
fn unified_focal_by_hand(
    p: &[Vec<Vec<f64>>],
    y: &[Vec<usize>],
    weight: f64,
    gamma: f64,
    delta: f64,
) -> f64 {
    let eps = 1e-7;
    let (b, c) = (p.len(), p[0].len());
    let n = y[0].len();
    let mut total = 0.0;
    for (ps, ys) in p.iter().zip(y) {
        for (k, pk) in ps.iter().enumerate() {
            let (mut af, mut tp, mut fn_, mut fp) = (0.0, 0.0, 0.0, 0.0);
            for (q, &label) in pk.iter().zip(ys) {
                let q = q.clamp(eps, 1.0 - eps);
                let g = if label == k { 1.0 } else { 0.0 };
                let ce = -g * q.ln();
                af += if k == 0 {
                    (1.0 - delta) * (1.0 - q).powf(gamma) * ce
                } else {
                    delta * ce
                };
                tp += g * q;
                fn_ += g * (1.0 - q);
                fp += (1.0 - g) * q;
            }
            let ti = (tp + eps) / (tp + delta * fn_ + (1.0 - delta) * fp + eps);
            let aft = if k == 0 {
                1.0 - ti
            } else {
                (1.0 - ti).powf(1.0 - gamma)
            };
            total += weight * af / n as f64 + (1.0 - weight) * aft;
        }
    }
    total / (b * c) as f64
}

#[test]
fn unified_focal_multiclass_matches_its_formula() {
    let device = Device::flex();
    let (b, c, h, w) = (2, 4, 5, 6);
    let logits = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 2.0), &device);
    let labels = Tensor::<4, Int>::random([b, 1, h, w], Distribution::Uniform(0.0, 4.0), &device);
    let probs = burn::tensor::activation::softmax(logits.clone(), 1);
    let pv: Vec<f64> = probs.clone().into_data().iter::<f64>().collect();
    let yv: Vec<i64> = labels.clone().into_data().iter::<i64>().collect();
    let n = h * w;
    let p: Vec<Vec<Vec<f64>>> = (0..b)
        .map(|s| {
            (0..c)
                .map(|k| pv[(s * c + k) * n..(s * c + k + 1) * n].to_vec())
                .collect()
        })
        .collect();
    let y: Vec<Vec<usize>> = (0..b)
        .map(|s| yv[s * n..(s + 1) * n].iter().map(|&v| v as usize).collect())
        .collect();
    for (weight, gamma, delta) in [(0.5, 0.5, 0.7), (0.3, 0.2, 0.6), (1.0, 0.0, 0.5)] {
        let want = unified_focal_by_hand(&p, &y, weight, gamma, delta);
        let cfg = |a| {
            AsymmetricUnifiedFocalLossConfig::new(a)
                .with_weight(weight)
                .with_gamma(gamma)
                .with_delta(delta)
                .init()
        };
        let from_probs = scalar(cfg(Activation::None).forward(probs.clone(), labels.clone()));
        let from_logits = scalar(cfg(Activation::Softmax).forward(logits.clone(), labels.clone()));
        for got in [from_probs, from_logits] {
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + want),
                "{got} vs {want} (weight {weight}, gamma {gamma}, delta {delta})"
            );
        }
    }
}

/// A single foreground logit with sigmoid is the two-class loss on `[1 - s, s]`.
#[test]
fn unified_focal_sigmoid_channel_is_the_binary_form() {
    let device = Device::flex();
    let x = Tensor::<5>::random([2, 1, 4, 5, 3], Distribution::Normal(0.0, 3.0), &device);
    let y = Tensor::<5, Int>::random([2, 1, 4, 5, 3], Distribution::Uniform(0.0, 2.0), &device);
    let s = burn::tensor::activation::sigmoid(x.clone());
    let two = Tensor::cat(vec![s.clone().neg().add_scalar(1.0), s], 1);
    let a = scalar(
        AsymmetricUnifiedFocalLossConfig::new(Activation::Sigmoid)
            .init()
            .forward(x, y.clone()),
    );
    let b = scalar(
        AsymmetricUnifiedFocalLossConfig::new(Activation::None)
            .init()
            .forward(two, y),
    );
    assert!((a - b).abs() < 1e-6, "{a} vs {b}");
}

#[test]
fn unified_focal_bounds_and_perfect_prediction() {
    let device = Device::flex().autodiff();
    // Every class present in every sample (an absent class costs its Tversky term, see the docs).
    let (b, c, n) = (2usize, 3usize, 120usize);
    let labels: Vec<i64> = (0..b * n).map(|i| ((i * 7 + i / 11) % c) as i64).collect();
    let onehot: Vec<f32> = (0..b * c * n)
        .map(|i| {
            let (s, k, v) = (i / (c * n), i / n % c, i % n);
            if labels[s * n + v] == k as i64 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let y = Tensor::<3, Int>::from_data(TensorData::new(labels, [b, 1, n]), &device);
    let onehot = Tensor::<3>::from_data(TensorData::new(onehot, [b, c, n]), &device);
    let loss = AsymmetricUnifiedFocalLossConfig::new(Activation::None).init();
    let perfect = scalar(loss.forward(onehot, y.clone()));
    assert!(
        (0.0..1e-2).contains(&perfect),
        "perfect prediction: {perfect}"
    );
    let upper = 0.5 * -(1e-7f64).ln() + 0.5;
    for scale in [1.0, 1e4] {
        let x = Tensor::<3>::random([b, c, n], Distribution::Normal(0.0, scale), &device)
            .require_grad();
        let v = AsymmetricUnifiedFocalLossConfig::new(Activation::Softmax)
            .init()
            .forward(x.clone(), y.clone());
        let grads = v.backward();
        let v = v.into_scalar::<f32>() as f64;
        assert!(
            v > perfect && v <= upper,
            "{v} outside ({perfect}, {upper}]"
        );
        let g: Vec<f32> = x.grad(&grads).unwrap().into_data().iter().collect();
        assert!(
            g.iter().all(|v| v.is_finite()),
            "gradient not finite at logits x{scale}"
        );
    }
}

/// An ignored voxel's prediction does not change the loss (MONAI zeroes it before the clamp).
#[test]
fn unified_focal_ignores_ignored_voxels() {
    let device = Device::flex();
    let mut labels: Vec<i64> = (0..2 * 30).map(|i| (i * 7 % 3) as i64).collect();
    labels[4] = 255;
    labels[41] = 255;
    let y = Tensor::<3, Int>::from_data(TensorData::new(labels, [2, 1, 30]), &device);
    let x = Tensor::<3>::random([2, 3, 30], Distribution::Normal(0.0, 1.0), &device);
    let bumped = x.clone().slice_assign(
        [0..1, 0..3, 4..5],
        Tensor::from_data(TensorData::new(vec![9.0f32, -9.0, 3.0], [1, 3, 1]), &device),
    );
    let loss = AsymmetricUnifiedFocalLossConfig::new(Activation::Softmax)
        .with_ignore_index(Some(255))
        .init();
    let a = scalar(loss.forward(x, y.clone()));
    let b = scalar(loss.forward(bumped, y));
    assert_eq!(a, b);
}

#[test]
fn unified_focal_refuses_what_it_cannot_compute() {
    for (cfg, parameter) in [
        (
            AsymmetricUnifiedFocalLossConfig::new(Activation::None).with_gamma(1.5),
            "gamma",
        ),
        (
            AsymmetricUnifiedFocalLossConfig::new(Activation::None).with_delta(-0.1),
            "delta",
        ),
        (
            AsymmetricUnifiedFocalLossConfig::new(Activation::None).with_weight(2.0),
            "weight",
        ),
        (
            AsymmetricUnifiedFocalLossConfig::new(Activation::None).with_epsilon(0.0),
            "epsilon",
        ),
    ] {
        let e = cfg.try_init().unwrap_err();
        assert_eq!(
            (e.loss, e.parameter),
            ("AsymmetricUnifiedFocalLoss", parameter)
        );
    }
    let device = Device::flex();
    let msg = panic_message(|| {
        let x = Tensor::<4>::zeros([1, 3, 4, 4], &device);
        let y = Tensor::<4, Int>::zeros([1, 1, 4, 4], &device);
        AsymmetricUnifiedFocalLossConfig::new(Activation::Sigmoid)
            .init()
            .forward(x, y);
    });
    assert!(
        msg.contains("sigmoid") && msg.contains("3 channels"),
        "{msg}"
    );
    let msg = panic_message(|| {
        let x = Tensor::<4>::zeros([1, 1, 4, 4], &device);
        let y = Tensor::<4, Int>::zeros([1, 1, 4, 4], &device);
        AsymmetricUnifiedFocalLossConfig::new(Activation::Softmax)
            .init()
            .forward(x, y);
    });
    assert!(msg.contains("single channel"), "{msg}");
}
