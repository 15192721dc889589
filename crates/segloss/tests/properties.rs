//! Property tests: bounds, perfect predictions and finite gradients, on random shapes and data.

use burn::tensor::{Device, Int, Tensor, TensorData};
use proptest::prelude::*;
use segloss::*;

/// Slack on the [0, 1] bounds for float32 rounding.
const BOUND_SLACK: f32 = 1e-5;
/// A perfect prediction must give a loss within this of 0 (smoothing is 1e-5 / 1e-5).
const PERFECT_TOL: f32 = 1e-4;

/// A named loss returning (per-class values, reduced value).
type Bounded = (
    &'static str,
    Box<dyn Fn(Tensor<5>, Target) -> (Vec<f32>, Vec<f32>)>,
);
/// A named loss of a rank-D prediction and a target.
type Named<const D: usize> = (&'static str, Box<dyn Fn(Tensor<D>, Target) -> Tensor<1>>);

#[derive(Debug, Clone)]
struct Case {
    shape: [usize; 5],
    probs: Vec<f32>,
    target: Vec<f32>,
    labels: Vec<i64>,
}

/// Random `[B, C, X, Y, Z]` probabilities, a binary or soft dense target, and a label map.
fn case(soft: bool) -> impl Strategy<Value = Case> {
    (1usize..3, 2usize..5, 1usize..5, 1usize..5, 1usize..4).prop_flat_map(move |(b, c, x, y, z)| {
        let n = b * c * x * y * z;
        let t = if soft {
            proptest::collection::vec(0.0f32..=1.0, n).boxed()
        } else {
            proptest::collection::vec(prop_oneof![Just(0.0f32), Just(1.0f32)], n).boxed()
        };
        (
            proptest::collection::vec(0.0f32..=1.0, n),
            t,
            proptest::collection::vec(0i64..c as i64, b * x * y * z),
        )
            .prop_map(move |(probs, target, labels)| Case {
                shape: [b, c, x, y, z],
                probs,
                target,
                labels,
            })
    })
}

fn tensors(c: &Case) -> (Tensor<5>, Tensor<5>, Tensor<5, Int>) {
    let device = Device::flex();
    let [b, _, x, y, z] = c.shape;
    (
        Tensor::from_data(TensorData::new(c.probs.clone(), c.shape), &device),
        Tensor::from_data(TensorData::new(c.target.clone(), c.shape), &device),
        Tensor::from_data(TensorData::new(c.labels.clone(), [b, 1, x, y, z]), &device),
    )
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn assert_unit(name: &str, v: &[f32]) -> Result<(), TestCaseError> {
    for &x in v {
        prop_assert!(
            (-BOUND_SLACK..=1.0 + BOUND_SLACK).contains(&x),
            "{name}: value {x} outside [0, 1] (all: {v:?})"
        );
    }
    Ok(())
}

/// Every unweighted Dice-family loss of the library, per class and reduced.
fn bounded_losses(soft_label: bool, batch: bool, bg: bool) -> Vec<Bounded> {
    let act = Activation::None;
    let dice = DiceLossConfig::new(act)
        .with_soft_label(soft_label)
        .with_batch(batch)
        .with_include_background(bg)
        .init();
    let vnet = DiceLossConfig::new(act)
        .with_squared_pred(true)
        .with_batch(batch)
        .with_include_background(bg)
        .init();
    let jac = DiceLossConfig::new(act)
        .with_jaccard(true)
        .with_soft_label(soft_label)
        .with_batch(batch)
        .with_include_background(bg)
        .init();
    let tv = TverskyLossConfig::new(act)
        .with_alpha(0.3)
        .with_beta(0.7)
        .with_soft_label(soft_label)
        .with_batch(batch)
        .with_include_background(bg)
        .init();
    let gdl = GeneralizedDiceLossConfig::new(act)
        .with_soft_label(soft_label)
        .with_batch(batch)
        .with_include_background(bg)
        .init();
    let gdl_simple = GeneralizedDiceLossConfig::new(act)
        .with_w_type(WeightType::Simple)
        .with_soft_label(soft_label)
        .with_batch(batch)
        .init();
    vec![
        (
            "dice",
            Box::new(move |p, t: Target| {
                (
                    values(dice.forward_no_reduction(p.clone(), t.clone())),
                    values(dice.forward(p, t)),
                )
            }),
        ),
        (
            "vnet",
            Box::new(move |p, t: Target| {
                (
                    values(vnet.forward_no_reduction(p.clone(), t.clone())),
                    values(vnet.forward(p, t)),
                )
            }),
        ),
        (
            "jaccard",
            Box::new(move |p, t: Target| {
                (
                    values(jac.forward_no_reduction(p.clone(), t.clone())),
                    values(jac.forward(p, t)),
                )
            }),
        ),
        (
            "tversky",
            Box::new(move |p, t: Target| {
                (
                    values(tv.forward_no_reduction(p.clone(), t.clone())),
                    values(tv.forward(p, t)),
                )
            }),
        ),
        (
            "gdl",
            Box::new(move |p, t: Target| {
                (
                    values(gdl.forward_no_reduction(p.clone(), t.clone())),
                    values(gdl.forward(p, t)),
                )
            }),
        ),
        (
            "gdl_simple",
            Box::new(move |p, t: Target| {
                (
                    values(gdl_simple.forward_no_reduction(p.clone(), t.clone())),
                    values(gdl_simple.forward(p, t)),
                )
            }),
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn losses_lie_in_unit_interval_binary(c in case(false), batch in any::<bool>(), bg in any::<bool>()) {
        let (p, g, labels) = tensors(&c);
        for (name, f) in bounded_losses(false, batch, bg) {
            let (per_class, reduced) = f(p.clone(), Target::dense(g.clone()));
            assert_unit(name, &per_class)?;
            assert_unit(name, &reduced)?;
            let (per_class, reduced) = f(p.clone(), Target::labels(labels.clone()));
            assert_unit(name, &per_class)?;
            assert_unit(name, &reduced)?;
        }
    }

    #[test]
    fn losses_lie_in_unit_interval_soft(c in case(true), batch in any::<bool>(), soft_label in any::<bool>()) {
        let (p, g, _) = tensors(&c);
        for (name, f) in bounded_losses(soft_label, batch, true) {
            let (per_class, reduced) = f(p.clone(), Target::dense(g.clone()));
            assert_unit(name, &per_class)?;
            assert_unit(name, &reduced)?;
        }
    }

    #[test]
    fn perfect_prediction_gives_zero(c in case(false), soft in any::<bool>(), batch in any::<bool>()) {
        // p = g: binary targets, or soft targets with the soft-label formulation.
        let target = if soft { c.probs.clone() } else { c.target.clone() };
        let device = Device::flex();
        let g = Tensor::<5>::from_data(TensorData::new(target, c.shape), &device);
        for (name, f) in bounded_losses(soft, batch, true) {
            if soft && name == "vnet" {
                continue; // V-Net's squared form is minimised at p = g only for binary g
            }
            let (per_class, reduced) = f(g.clone(), Target::dense(g.clone()));
            for v in per_class.iter().chain(&reduced) {
                prop_assert!(v.abs() <= PERFECT_TOL, "{name}: perfect prediction gives {v} (all: {per_class:?})");
            }
        }
    }

    #[test]
    fn gradients_finite_for_extreme_logits(c in case(false), scale in prop_oneof![Just(1e4f32), Just(-1e4f32), Just(1.0f32)]) {
        let device = Device::flex().autodiff();
        let [b, _, x, y, z] = c.shape;
        // Logits of +-1e4 with random signs: softmax and sigmoid saturate to exact 0 and 1.
        let logits: Vec<f32> = c.probs.iter().map(|&u| if u < 0.5 { -scale } else { scale }).collect();
        let labels = Tensor::<5, Int>::from_data(TensorData::new(c.labels.clone(), [b, 1, x, y, z]), &device);
        let dense = Tensor::<5>::from_data(TensorData::new(c.target.clone(), c.shape), &device);
        let losses: Vec<Named<5>> = vec![
            ("dice softmax", { let l = DiceLossConfig::new(Activation::Softmax).init(); let t = labels.clone(); Box::new(move |p, _| l.forward(p, t.clone())) }),
            ("dice sigmoid", { let l = DiceLossConfig::new(Activation::Sigmoid).with_squared_pred(true).init(); let t = dense.clone(); Box::new(move |p, _| l.forward(p, t.clone())) }),
            ("gdl softmax", { let l = GeneralizedDiceLossConfig::new(Activation::Softmax).init(); let t = labels.clone(); Box::new(move |p, _| l.forward(p, t.clone())) }),
            ("tversky sigmoid", { let l = TverskyLossConfig::new(Activation::Sigmoid).init(); let t = dense.clone(); Box::new(move |p, _| l.forward(p, t.clone())) }),
            ("focal sigmoid", { let l = FocalLossConfig::new().init(); let t = dense.clone(); Box::new(move |p, _| l.forward(p, t.clone())) }),
            ("focal softmax g=0.5", { let l = FocalLossConfig::new().with_use_softmax(true).with_gamma(0.5).init(); let t = labels.clone(); Box::new(move |p, _| l.forward(p, t.clone())) }),
            ("dice ce", { let l = DiceCELossConfig::new(Activation::Softmax).with_label_smoothing(0.1).init(); let t = labels.clone(); Box::new(move |p, _| l.forward(p, t.clone())) }),
            ("gwdl", { let c = c.shape[1]; let m = (0..c).map(|i| (0..c).map(|j| if i == j { 0.0 } else { 1.0 }).collect()).collect(); let l = GeneralizedWassersteinDiceLossConfig::new(m).init(); let t = labels.clone(); Box::new(move |p, _| l.forward(p, t.clone())) }),
        ];
        for (name, f) in losses {
            let p = Tensor::<5>::from_data(TensorData::new(logits.clone(), c.shape), &device).require_grad();
            let loss = f(p.clone(), Target::labels(labels.clone()));
            let v = values(loss.clone());
            prop_assert!(v.iter().all(|x| x.is_finite()), "{name}: loss {v:?} not finite");
            let grads = loss.backward();
            let g = values(p.grad(&grads).unwrap());
            prop_assert!(g.iter().all(|x| x.is_finite()), "{name}: gradient not finite");
        }
    }
}

/// Gradients stay finite (and the losses defined) for an empty class, an all-zero mask and
/// all-ignored voxels.
#[test]
fn gradients_finite_for_empty_classes_masks_and_ignored_voxels() {
    let device = Device::flex().autodiff();
    let logits = || {
        Tensor::<4>::from_data(
            [[
                [[2.0, -1.0], [0.5, 3.0]],
                [[-2.0, 1.0], [0.0, -3.0]],
                [[0.1, 0.2], [0.3, 0.4]],
            ]],
            &device,
        )
        .require_grad()
    };
    let labels = Tensor::<4, Int>::from_data([[[[0, 1], [1, 0]]]], &device); // class 2 empty
    let all_ignored = Tensor::<4, Int>::from_data([[[[255, 255], [255, 255]]]], &device);
    let zero_mask = Tensor::<4>::zeros([1, 1, 2, 2], &device);
    let targets: Vec<(&str, Target)> = vec![
        ("empty class", Target::labels(labels.clone())),
        (
            "all-zero mask",
            Target::labels(labels.clone()).with_mask(zero_mask),
        ),
        ("all ignored", Target::labels(all_ignored)),
    ];
    for (what, t) in targets {
        let losses: Vec<Named<4>> = vec![
            ("dice", {
                let l = DiceLossConfig::new(Activation::Softmax)
                    .with_ignore_index(Some(255))
                    .init();
                Box::new(move |p, t| l.forward(p, t))
            }),
            ("dice smooth 0", {
                let l = DiceLossConfig::new(Activation::Softmax)
                    .with_smooth_nr(0.0)
                    .with_ignore_index(Some(255))
                    .init();
                Box::new(move |p, t| l.forward(p, t))
            }),
            ("gdl", {
                let l = GeneralizedDiceLossConfig::new(Activation::Softmax)
                    .with_ignore_index(Some(255))
                    .init();
                Box::new(move |p, t| l.forward(p, t))
            }),
            ("gdl batch", {
                let l = GeneralizedDiceLossConfig::new(Activation::Softmax)
                    .with_batch(true)
                    .with_ignore_index(Some(255))
                    .init();
                Box::new(move |p, t| l.forward(p, t))
            }),
            ("tversky", {
                let l = TverskyLossConfig::new(Activation::Softmax)
                    .with_ignore_index(Some(255))
                    .init();
                Box::new(move |p, t| l.forward(p, t))
            }),
            ("focal", {
                let l = FocalLossConfig::new()
                    .with_use_softmax(true)
                    .with_ignore_index(Some(255))
                    .init();
                Box::new(move |p, t| l.forward(p, t))
            }),
            ("ce", {
                let l = CrossEntropyLossConfig::new()
                    .with_ignore_index(Some(255))
                    .init();
                Box::new(move |p, t| l.forward(p, t))
            }),
            ("dice ce", {
                let l = DiceCELossConfig::new(Activation::Softmax)
                    .with_ignore_index(Some(255))
                    .init();
                Box::new(move |p, t| l.forward(p, t))
            }),
        ];
        for (name, f) in losses {
            let p = logits();
            let loss = f(p.clone(), t.clone());
            let v = values(loss.clone());
            assert!(
                v.iter().all(|x| x.is_finite()),
                "{name} / {what}: loss {v:?}"
            );
            let g = values(p.grad(&loss.backward()).unwrap());
            assert!(
                g.iter().all(|x| x.is_finite()),
                "{name} / {what}: gradient {g:?}"
            );
        }
    }
}
