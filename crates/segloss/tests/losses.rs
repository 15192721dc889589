//! Analytic checks of loss values worked out by hand (independent of MONAI's reference cases).

use burn::tensor::{Device, Int, Tensor, TensorData};
use segloss::*;

const TOL: f32 = 1e-6;

fn scalar(t: Tensor<1>) -> f32 {
    t.into_scalar::<f32>()
}

/// probabilities [1, 2, 4] and labels [1, 4]: class 1 covers voxels 2 and 3.
fn example() -> (Tensor<3>, Tensor<2, Int>) {
    let device = Device::flex();
    let p = Tensor::<3>::from_data([[[0.9, 0.6, 0.3, 0.0], [0.1, 0.4, 0.7, 1.0]]], &device);
    let y = Tensor::<2, Int>::from_data([[0, 0, 1, 1]], &device);
    (p, y)
}

#[test]
fn dice_jaccard_tversky_by_hand() {
    let (p, y) = example();
    // class 1: I = 1.7, P = 2.2, G = 2. Dice loss = 1 - 3.4 / 4.2.
    let none = |c: DiceLossConfig| {
        c.with_smooth_nr(0.0)
            .with_smooth_dr(1e-12)
            .with_include_background(false)
            .init()
    };
    let d = scalar(none(DiceLossConfig::new(Activation::None)).forward(p.clone(), y.clone()));
    assert!((d - (1.0 - 3.4 / 4.2)).abs() < TOL, "{d}");
    // Jaccard: 1 - I / (P + G - I) = 1 - 1.7 / 2.5.
    let j = scalar(
        none(DiceLossConfig::new(Activation::None).with_jaccard(true))
            .forward(p.clone(), y.clone()),
    );
    assert!((j - (1.0 - 1.7 / 2.5)).abs() < TOL, "{j}");
    // V-Net: P2 = 0.01 + 0.16 + 0.49 + 1 = 1.66, G2 = 2: 1 - 3.4 / 3.66.
    let v = scalar(
        none(DiceLossConfig::new(Activation::None).with_squared_pred(true))
            .forward(p.clone(), y.clone()),
    );
    assert!((v - (1.0 - 3.4 / 3.66)).abs() < TOL, "{v}");
    // Tversky 0.3/0.7: fp = 0.5, fn = 0.3: 1 - 1.7 / (1.7 + 0.15 + 0.21).
    let t = TverskyLossConfig::new(Activation::None)
        .with_alpha(0.3)
        .with_beta(0.7)
        .with_smooth_nr(0.0)
        .with_smooth_dr(1e-12)
        .with_include_background(false)
        .init();
    let t = scalar(t.forward(p, y));
    assert!((t - (1.0 - 1.7 / 2.06)).abs() < TOL, "{t}");
}

#[test]
fn generalized_dice_by_hand_and_weight_normalisation() {
    let (p, y) = example();
    // class 0: I = 1.5, P+G = 1.8 + 2; class 1: I = 1.7, P+G = 4.2. G = 2 for both: w = 1/4.
    let expected = 1.0 - 2.0 * (1.5 + 1.7) / (3.8 + 4.2);
    for normalize in [false, true] {
        let l = GeneralizedDiceLossConfig::new(Activation::None)
            .with_smooth_nr(0.0)
            .with_smooth_dr(1e-12)
            .with_normalize_weights(normalize)
            .init();
        let v = scalar(l.forward(p.clone(), y.clone()));
        assert!(
            (v - expected).abs() < TOL,
            "normalize {normalize}: {v} vs {expected}"
        );
    }
    // With MONAI's default smoothing the weighted sums (w = 1/4) are much larger than 1e-5, so
    // normalising changes the value only slightly...
    let default = scalar(
        GeneralizedDiceLossConfig::new(Activation::None)
            .init()
            .forward(p.clone(), y.clone()),
    );
    assert!((default - expected).abs() < 1e-4, "{default}");
    // ...but on a large volume the 1/G^2 weights make them tiny and the smoothing dominates,
    // unless the weights are normalised.
    let device = Device::flex();
    let n = 200_000usize;
    let probs: Vec<f32> = (0..2 * n)
        .map(|i| if i < n { 0.75 } else { 0.25 })
        .collect();
    let labels: Vec<i64> = (0..n).map(|i| (i % 2) as i64).collect();
    let big_p = Tensor::<3>::from_data(TensorData::new(probs, [1, 2, n]), &device);
    let big_y = Tensor::<2, Int>::from_data(TensorData::new(labels, [1, n]), &device);
    // Each class: G = n/2, I = (0.75 or 0.25) n/2, P = (0.75 or 0.25) n: ratio 2 (I0 + I1) / (P0 + P1 + G0 + G1) = 0.5.
    let normalised = GeneralizedDiceLossConfig::new(Activation::None)
        .with_normalize_weights(true)
        .init();
    let v = scalar(normalised.forward(big_p.clone(), big_y.clone()));
    assert!((v - 0.5).abs() < 1e-4, "{v}");
    let monai = scalar(
        GeneralizedDiceLossConfig::new(Activation::None)
            .init()
            .forward(big_p, big_y),
    );
    assert!(
        monai < 0.45,
        "MONAI's smoothing pulls the value below 0.5, got {monai}"
    );
}

#[test]
fn batch_dice_pools_the_batch() {
    let device = Device::flex();
    // Sample 0 has class 1, sample 1 has none: per-sample Dice penalises the empty sample's
    // false positives with a near-1 loss, batch Dice pools them.
    let p = Tensor::<3>::from_data([[[0.0, 1.0]], [[0.5, 0.5]]], &device); // [2, 1, 2]
    let g = Tensor::<3>::from_data([[[0.0, 1.0]], [[0.0, 0.0]]], &device);
    let cfg = DiceLossConfig::new(Activation::None)
        .with_smooth_nr(0.0)
        .with_smooth_dr(1e-12);
    let per_sample: Vec<f32> = cfg
        .init()
        .forward_no_reduction(p.clone(), g.clone())
        .into_data()
        .iter::<f32>()
        .collect();
    assert!(
        per_sample[0].abs() < TOL && (per_sample[1] - 1.0).abs() < TOL,
        "{per_sample:?}"
    );
    let batch: Vec<f32> = cfg
        .with_batch(true)
        .init()
        .forward_no_reduction(p, g)
        .into_data()
        .iter::<f32>()
        .collect();
    // I = 1, P = 2, G = 1: 1 - 2/3.
    assert_eq!(batch.len(), 1);
    assert!((batch[0] - 1.0 / 3.0).abs() < TOL, "{batch:?}");
}

#[test]
fn ignore_index_and_mask_are_the_same_mechanism() {
    let device = Device::flex();
    let logits = Tensor::<3>::from_data(
        [[
            [1.0, -2.0, 0.5, 3.0],
            [0.0, 1.0, -1.0, 2.0],
            [2.0, 0.0, 0.0, -1.0],
        ]],
        &device,
    );
    let with_ignored = Tensor::<2, Int>::from_data([[0, 255, 2, 1]], &device);
    let zeroed = Tensor::<2, Int>::from_data([[0, 0, 2, 1]], &device);
    let mask = Tensor::<2>::from_data([[1.0, 0.0, 1.0, 1.0]], &device);
    for (name, a, b) in [
        (
            "dice",
            DiceLossConfig::new(Activation::Softmax)
                .with_ignore_index(Some(255))
                .init()
                .forward(logits.clone(), with_ignored.clone()),
            DiceLossConfig::new(Activation::Softmax).init().forward(
                logits.clone(),
                Target::labels(zeroed.clone()).with_mask(mask.clone()),
            ),
        ),
        (
            "ce",
            CrossEntropyLossConfig::new()
                .with_ignore_index(Some(255))
                .init()
                .forward(logits.clone(), with_ignored.clone()),
            CrossEntropyLossConfig::new().init().forward(
                logits.clone(),
                Target::labels(zeroed.clone()).with_mask(mask.clone()),
            ),
        ),
    ] {
        let (a, b) = (scalar(a), scalar(b));
        assert!((a - b).abs() < TOL, "{name}: {a} vs {b}");
    }
    // Dropping the voxel altogether gives the same Dice.
    let kept = Tensor::<3>::from_data(
        [[[1.0, 0.5, 3.0], [0.0, -1.0, 2.0], [2.0, 0.0, -1.0]]],
        &device,
    );
    let kept_y = Tensor::<2, Int>::from_data([[0, 2, 1]], &device);
    let a = scalar(
        DiceLossConfig::new(Activation::Softmax)
            .with_ignore_index(Some(255))
            .init()
            .forward(logits, with_ignored),
    );
    let b = scalar(
        DiceLossConfig::new(Activation::Softmax)
            .init()
            .forward(kept, kept_y),
    );
    assert!((a - b).abs() < TOL, "{a} vs {b}");
}

#[test]
fn single_channel_binary_fused_and_composed_agree() {
    let device = Device::flex().autodiff();
    let logits = Tensor::<4>::from_data([[[[2.0, -1.0, 0.5], [3.0, -2.0, 0.0]]]], &device); // [1, 1, 2, 3]
    let labels = Tensor::<4, Int>::from_data([[[[1, 0, 1], [1, 0, 0]]]], &device);
    let dense = labels.clone().float();
    for squared in [false, true] {
        let loss = DiceLossConfig::new(Activation::Sigmoid)
            .with_squared_pred(squared)
            .init();
        let run = |kernel: Kernel, target: Target| {
            with_kernel(kernel, || {
                let x = logits.clone().require_grad();
                let v = loss.forward(x.clone(), target);
                let g: Vec<f32> = x
                    .grad(&v.backward())
                    .unwrap()
                    .into_data()
                    .iter::<f32>()
                    .collect();
                (v.into_scalar::<f32>(), g)
            })
        };
        let reference = run(Kernel::Composed, Target::dense(dense.clone()));
        for (name, r) in [
            (
                "fused labels",
                run(Kernel::Auto, Target::labels(labels.clone())),
            ),
            (
                "fused dense",
                run(Kernel::Auto, Target::dense(dense.clone())),
            ),
            (
                "composed labels",
                run(Kernel::Composed, Target::labels(labels.clone())),
            ),
        ] {
            assert!(
                (r.0 - reference.0).abs() < 1e-6,
                "{name} squared={squared}: {} vs {}",
                r.0,
                reference.0
            );
            for (a, b) in r.1.iter().zip(&reference.1) {
                assert!(
                    (a - b).abs() < 1e-6,
                    "{name} squared={squared}: gradient {:?} vs {:?}",
                    r.1,
                    reference.1
                );
            }
        }
    }
}

#[test]
fn non_f32_predictions_are_computed_in_f32() {
    let device = Device::flex();
    let logits = Tensor::<3>::from_data([[[2.0f32, -1.0, 0.5], [0.0, 1.0, -1.0]]], &device)
        .cast(burn::tensor::DType::F64);
    assert_eq!(logits.dtype(), burn::tensor::DType::F64);
    let labels = Tensor::<2, Int>::from_data([[0, 1, 1]], &device);
    let reference = Tensor::<3>::from_data([[[2.0f32, -1.0, 0.5], [0.0, 1.0, -1.0]]], &device);
    let pairs = [
        (
            "dice",
            DiceLossConfig::new(Activation::Softmax)
                .init()
                .forward(logits.clone(), labels.clone()),
            DiceLossConfig::new(Activation::Softmax)
                .init()
                .forward(reference.clone(), labels.clone()),
        ),
        (
            "gdl",
            GeneralizedDiceLossConfig::new(Activation::Softmax)
                .init()
                .forward(logits.clone(), labels.clone()),
            GeneralizedDiceLossConfig::new(Activation::Softmax)
                .init()
                .forward(reference.clone(), labels.clone()),
        ),
        (
            "dice-ce",
            DiceCELossConfig::new(Activation::Softmax)
                .init()
                .forward(logits.clone(), labels.clone()),
            DiceCELossConfig::new(Activation::Softmax)
                .init()
                .forward(reference.clone(), labels.clone()),
        ),
    ];
    for (name, a, b) in pairs {
        let (a, b) = (a.into_scalar::<f64>(), b.into_scalar::<f64>());
        assert!((a - b).abs() < 1e-6, "{name}: {a} vs {b}");
    }
    // The gradient comes back in the prediction's own type.
    let ad = Device::flex().autodiff();
    let x = Tensor::<3>::from_data([[[2.0f32, -1.0, 0.5], [0.0, 1.0, -1.0]]], &ad)
        .cast(burn::tensor::DType::F64)
        .require_grad();
    let y = Tensor::<2, Int>::from_data([[0, 1, 1]], &ad);
    let grads = DiceLossConfig::new(Activation::Softmax)
        .init()
        .forward(x.clone(), y)
        .backward();
    let g = x.grad(&grads).unwrap();
    assert_eq!(g.dtype(), burn::tensor::DType::F64);
    assert!(
        g.into_data()
            .iter::<f64>()
            .all(|v| v.is_finite() && v != 0.0)
    );
}

#[test]
fn softmax_focal_without_background_fused_matches_composed() {
    // MONAI's softmax focal loss without the background normalises over channels 1..C; the fused
    // path runs the pass over those channels alone (labels shifted, class 0 matching none).
    // Kernel scale (tiles, several tasks), label maps with ignored voxels and dense targets, a
    // voxel mask, per-class alpha and weights, gamma 0 and 2, both reductions, and DiceFocal.
    use burn::tensor::Distribution;
    let device = Device::flex().autodiff();
    let [b, c, z, y, x] = [2, 4, 9, 17, 23];
    let logits = Tensor::<5>::random([b, c, z, y, x], Distribution::Normal(0.0, 3.0), &device);
    let raw = Tensor::<5>::random([b, 1, z, y, x], Distribution::Uniform(0.0, 4.4), &device);
    let labels = raw.int().clamp(0, 4); // 4 = ignored below
    let clean = labels.clone().clamp(0, 3);
    let dense = Tensor::<5>::random([b, c, z, y, x], Distribution::Uniform(0.0, 1.0), &device);
    let mask = Tensor::<5>::random([b, 1, z, y, x], Distribution::Bernoulli(0.8), &device);
    let run = |kernel: Kernel, f: &dyn Fn(Tensor<5>) -> Tensor<1>| {
        with_kernel(kernel, || {
            let xg = logits.clone().require_grad();
            let v = f(xg.clone());
            let g: Vec<f32> = xg
                .grad(&v.backward())
                .unwrap()
                .into_data()
                .iter::<f32>()
                .collect();
            (v.into_scalar::<f32>(), g)
        })
    };
    let focal = |gamma: f64, alpha: Option<Vec<f32>>, reduction: LossReduction| {
        FocalLossConfig::new()
            .with_use_softmax(true)
            .with_include_background(false)
            .with_gamma(gamma)
            .with_alpha(alpha)
            .with_weight(Some(vec![0.5, 2.0, 1.0]))
            .with_reduction(reduction)
            .with_ignore_index(Some(4))
            .init()
    };
    type Case<'a> = (&'a str, Box<dyn Fn(Tensor<5>) -> Tensor<1> + 'a>);
    let mut checked = 0;
    for gamma in [0.0, 2.0] {
        for alpha in [None, Some(vec![0.2, 0.3, 0.5])] {
            for reduction in [LossReduction::Mean, LossReduction::Sum] {
                let loss = focal(gamma, alpha.clone(), reduction);
                let cases: Vec<Case<'_>> = vec![
                    ("labels", Box::new(|x| loss.forward(x, labels.clone()))),
                    (
                        "labels + mask",
                        Box::new(|x| {
                            loss.forward(x, Target::labels(clean.clone()).with_mask(mask.clone()))
                        }),
                    ),
                    (
                        "dense",
                        Box::new(|x| loss.forward(x, Target::dense(dense.clone()))),
                    ),
                ];
                for (name, f) in cases {
                    let (fv, fg) = run(Kernel::Auto, &*f);
                    let (cv, cg) = run(Kernel::Composed, &*f);
                    let what = format!("{name} gamma {gamma} alpha {alpha:?} {reduction:?}");
                    // 3e-5: the composed path's `1 - exp(ln p)` cancels where p is near 1
                    // (logits of scale 3); the f64 check below shows the fused value closer.
                    assert!(
                        (fv - cv).abs() <= 3e-5 * cv.abs().max(1e-3),
                        "{what}: value {fv} vs {cv}"
                    );
                    let scale = cg.iter().fold(0f32, |m, v| m.max(v.abs()));
                    for (i, (a, r)) in fg.iter().zip(&cg).enumerate() {
                        assert!(
                            (a - r).abs() <= 1e-4 * scale,
                            "{what}: gradient {i}: {a} vs {r} (largest {scale})"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 24);
    // The dense, gamma 2, no-alpha, mean case in f64: q = softmax over channels 1..C.
    let xs: Vec<f32> = logits.clone().into_data().iter::<f32>().collect();
    let gs: Vec<f32> = dense.clone().into_data().iter::<f32>().collect();
    let n = z * y * x;
    let w = [0.5f64, 2.0, 1.0];
    let mut total = 0.0f64;
    for bi in 0..b {
        for v in 0..n {
            let at = |ch: usize| (bi * c + ch) * n + v;
            let m = (1..c).map(|ch| xs[at(ch)] as f64).fold(f64::MIN, f64::max);
            let s: f64 = (1..c).map(|ch| (xs[at(ch)] as f64 - m).exp()).sum();
            for ch in 1..c {
                let lnq = xs[at(ch)] as f64 - m - s.ln();
                let q = lnq.exp();
                total += w[ch - 1] * gs[at(ch)] as f64 * -lnq * (1.0 - q).powi(2);
            }
        }
    }
    let exact = total / (b * (c - 1) * n) as f64;
    let loss = focal(2.0, None, LossReduction::Mean);
    let f = |x: Tensor<5>| loss.forward(x, Target::dense(dense.clone()));
    let (fv, _) = run(Kernel::Auto, &f);
    let (cv, _) = run(Kernel::Composed, &f);
    let (fe, ce) = ((fv as f64 - exact).abs(), (cv as f64 - exact).abs());
    assert!(
        fe <= 2e-6 * exact && fe <= ce.max(1e-7 * exact),
        "f64 {exact}: fused {fv} (error {fe:e}), composed {cv} (error {ce:e})"
    );
    let before = segloss::kernel::fused::pointwise_calls();
    let dice_focal = DiceFocalLossConfig::new(Activation::Softmax)
        .with_include_background(false)
        .init();
    let (fv, _) = run(Kernel::Auto, &|x| dice_focal.forward(x, clean.clone()));
    assert!(
        segloss::kernel::fused::pointwise_calls() > before,
        "DiceFocal without background took the composed focal"
    );
    let (cv, _) = run(Kernel::Composed, &|x| dice_focal.forward(x, clean.clone()));
    assert!((fv - cv).abs() <= 1e-5 * cv.abs(), "DiceFocal {fv} vs {cv}");
}

/// One forward + backward of `f` on `logits` with `kernel`: the value and the gradient.
fn value_and_gradient<const D: usize>(
    kernel: Kernel,
    logits: &Tensor<D>,
    f: &dyn Fn(Tensor<D>) -> Tensor<1>,
) -> (f32, Vec<f32>) {
    with_kernel(kernel, || {
        let x = logits.clone().require_grad();
        let v = f(x.clone());
        let g: Vec<f32> = x
            .grad(&v.backward())
            .unwrap()
            .into_data()
            .iter::<f32>()
            .collect();
        (v.into_scalar::<f32>(), g)
    })
}

/// A `C x C` distance matrix, zero on the diagonal, not symmetric.
fn distances(c: usize) -> Vec<Vec<f32>> {
    (0..c)
        .map(|i| {
            (0..c)
                .map(|j| {
                    if i == j {
                        0.0
                    } else {
                        ((i * 7 + j * 3) % 5 + 1) as f32 / 5.0
                    }
                })
                .collect()
        })
        .collect()
}

#[test]
fn wasserstein_fused_matches_composed() {
    // The fused confusion matrix (Kernel::Auto on Flex) against the composed path: values to
    // 1e-4 relative plus 1e-5 absolute, gradients to 1e-4 relative plus 1e-6 absolute (the
    // softmax's backward takes `sum_j p_j u_j` from `u_c`, which cancels where one class holds
    // nearly all the probability, on both paths: about 1e-7 apart at a single voxel, where
    // `u = d loss / d p` is of order 1; gradients here are 1e-5 and larger),
    // on shapes with one voxel, odd voxel counts (tails of 256-voxel tiles and of 8-voxel runs)
    // and several 1024-voxel blocks, B = 1..3, C = 2..14; label maps with ignore_index, a voxel
    // mask, dense targets with and without ignore_index; both weightings; logits of scale 3 and
    // of +-1e4 (finite values and gradients).
    // The call counter is global: this is the only test of this binary that runs the loss, so
    // that it can check that the composed path does not call the fused operation.
    use burn::tensor::Distribution;
    let calls = segloss::kernel::fused::confusion_calls;
    // Without autodiff too.
    let loss = GeneralizedWassersteinDiceLossConfig::new(distances(3)).init();
    let flex = Device::flex();
    let x = Tensor::<4>::random([2, 3, 5, 7], Distribution::Normal(0.0, 2.0), &flex);
    let y = Tensor::<3, Int>::random([2, 5, 7], Distribution::Uniform(0.0, 2.999), &flex);
    let before = calls();
    let fused = scalar(loss.forward(x.clone(), y.clone()));
    assert_eq!(
        calls(),
        before + 1,
        "the fused path did not run without autodiff"
    );
    let composed = with_kernel(Kernel::Composed, || scalar(loss.forward(x, y)));
    assert_eq!(calls(), before + 1, "Kernel::Composed ran the fused path");
    assert!(
        (fused - composed).abs() <= 1e-4 * composed.abs() + 1e-5,
        "{fused} vs {composed}"
    );

    let device = Device::flex().autodiff();
    let shapes: [(usize, usize, [usize; 3]); 6] = [
        (1, 2, [1, 1, 1]),
        (2, 3, [5, 7, 9]),
        (3, 5, [3, 17, 23]),
        (1, 9, [9, 17, 23]),
        (2, 14, [4, 11, 13]),
        (3, 4, [1, 1, 37]),
    ];
    let mut checked = 0;
    for (b, c, [z, y, x]) in shapes {
        let normal = Tensor::<5>::random([b, c, z, y, x], Distribution::Normal(0.0, 3.0), &device);
        let signs = Tensor::<5>::random([b, c, z, y, x], Distribution::Uniform(-1.0, 1.0), &device);
        let extreme = signs.sign().mul_scalar(1e4);
        // Labels in 0..=C, where C is the ignore index below.
        let raw = Tensor::<5>::random(
            [b, 1, z, y, x],
            Distribution::Uniform(0.0, c as f64 + 0.999),
            &device,
        )
        .int()
        .clamp(0, c as i64);
        let clean = raw.clone().clamp(0, c as i64 - 1);
        let dense = Tensor::<5>::random([b, c, z, y, x], Distribution::Uniform(0.0, 1.0), &device);
        let mask = Tensor::<5>::random([b, 1, z, y, x], Distribution::Bernoulli(0.7), &device);
        for weighting in [WassersteinWeighting::Default, WassersteinWeighting::Gdl] {
            let config = GeneralizedWassersteinDiceLossConfig::new(distances(c))
                .with_weighting_mode(weighting);
            let plain = config.init();
            let ignoring = config.clone().with_ignore_index(Some(c as i64)).init();
            let ignoring_class = config.clone().with_ignore_index(Some(1)).init();
            type Case<'a> = (&'a str, Box<dyn Fn(Tensor<5>) -> Tensor<1> + 'a>);
            let cases: Vec<Case<'_>> = vec![
                ("labels", Box::new(|x| plain.forward(x, clean.clone()))),
                (
                    "labels + ignore_index",
                    Box::new(|x| ignoring.forward(x, raw.clone())),
                ),
                (
                    "labels + mask",
                    Box::new(|x| {
                        plain.forward(x, Target::labels(clean.clone()).with_mask(mask.clone()))
                    }),
                ),
                (
                    "dense",
                    Box::new(|x| plain.forward(x, Target::dense(dense.clone()))),
                ),
                (
                    "dense + ignore_index + mask",
                    Box::new(|x| {
                        ignoring_class
                            .forward(x, Target::dense(dense.clone()).with_mask(mask.clone()))
                    }),
                ),
            ];
            for (name, f) in &cases {
                for (scale, logits) in [("scale 3", &normal), ("+-1e4", &extreme)] {
                    let what = format!("{b}x{c}x{z}x{y}x{x} {weighting:?} {name} {scale}");
                    let before = calls();
                    let (fv, fg) = value_and_gradient(Kernel::Auto, logits, &**f);
                    assert_eq!(
                        calls(),
                        before + 1,
                        "{what}: the fused confusion matrix did not run"
                    );
                    let (cv, cg) = value_and_gradient(Kernel::Composed, logits, &**f);
                    assert_eq!(
                        calls(),
                        before + 1,
                        "{what}: the composed path ran the fused operation"
                    );
                    assert!(
                        fv.is_finite() && (fv - cv).abs() <= 1e-4 * cv.abs() + 1e-5,
                        "{what}: value {fv} vs composed {cv}"
                    );
                    assert_eq!(fg.len(), b * c * z * y * x, "{what}");
                    assert!(
                        scale == "+-1e4" || z * y * x == 1 || cg.iter().any(|v| v.abs() > 1e-5),
                        "{what}: no gradient to compare"
                    );
                    for (i, (a, r)) in fg.iter().zip(&cg).enumerate() {
                        assert!(
                            a.is_finite() && (a - r).abs() <= 1e-4 * r.abs() + 1e-6,
                            "{what}: gradient {i}: {a} vs composed {r}"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 6 * 2 * 5 * 2);
}

/// MCC by hand on the example (class 1 of 4 voxels): tp = I = 1.7, fp = P - I = 0.5,
/// fn = G - I = 0.3, tn = M - P - G + I = 4 - 2.2 - 2 + 1.7 = 1.5; MCC = (1.7 * 1.5 - 0.5 * 0.3)
/// / sqrt(2.2 * 2 * 1.8 * 2) = 2.4 / sqrt(15.84). A perfect prediction scores 0 (MONAI's rule for
/// fp = fn = 0), the inverted one 2 (MCC = -1); masked voxels are in none of the four counts.
#[test]
fn mcc_by_hand_perfect_inverted_and_masked() {
    let (p, y) = example();
    let device = Device::flex();
    let loss = MccLossConfig::new(Activation::None)
        .with_include_background(false)
        .with_smooth_dr(0.0)
        .init();
    let want = 1.0 - 2.4 / 15.84f32.sqrt();
    let got = scalar(loss.forward(p.clone(), y.clone()));
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");

    let onehot = Tensor::<3>::from_data([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]], &device);
    let perfect = scalar(loss.forward(onehot.clone(), y.clone()));
    assert_eq!(perfect, 0.0);
    let inverted = onehot.neg().add_scalar(1.0);
    let worst = scalar(loss.forward(inverted, y.clone()));
    assert!((worst - 2.0).abs() < 1e-6, "{worst}");

    // Masking voxel 0 (tn 0.9 -> its (1 - p)(1 - g) = 0.9 * 1 leaves): tp 1.7, fp 0.5 - 0.1 = 0.4,
    // fn 0.3, tn 1.5 - 0.9 = 0.6, M = 3.
    let mask = Tensor::<2>::from_data([[0.0, 1.0, 1.0, 1.0]], &device);
    let masked = scalar(loss.forward(p, Target::labels(y).with_mask(mask)));
    let (tp, fp, fn_, tn) = (1.7f32, 0.4f32, 0.3f32, 0.6f32);
    let want =
        1.0 - (tp * tn - fp * fn_) / ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
    assert!((masked - want).abs() < 1e-5, "{masked} vs {want}");
}
