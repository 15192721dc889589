//! Bad input never gives a silent wrong number: the messages name the problem.

use burn::tensor::{Device, Int, Tensor};
use segloss::*;

/// Runs `f`, expecting a panic, and returns its message.
fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let p = std::panic::catch_unwind(f).expect_err("expected a panic");
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap()
}

#[test]
fn invalid_config_values_name_loss_parameter_rule_and_value() {
    let e = DiceLossConfig::new(Activation::Softmax)
        .with_smooth_dr(-1.0)
        .try_init()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "DiceLoss: invalid `smooth_dr`: must be finite and >= 0, got -1"
    );
    let e = DiceLossConfig::new(Activation::Softmax)
        .with_smooth_nr(f64::NAN)
        .try_init()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "DiceLoss: invalid `smooth_nr`: must be finite and >= 0, got NaN"
    );
    let e = DiceLossConfig::new(Activation::Softmax)
        .with_weight(Some(vec![1.0, -0.5]))
        .try_init()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "DiceLoss: invalid `weight`: must be finite and >= 0 for every class, got -0.5 at class 1 (of [1.0, -0.5])"
    );
    let e = TverskyLossConfig::new(Activation::Sigmoid)
        .with_alpha(-0.1)
        .try_init()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "TverskyLoss: invalid `alpha`: must be finite and >= 0, got -0.1"
    );
    let e = FocalLossConfig::new()
        .with_gamma(-2.0)
        .try_init()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "FocalLoss: invalid `gamma`: must be finite and >= 0, got -2"
    );
    let e = FocalLossConfig::new()
        .with_alpha(Some(vec![1.5]))
        .try_init()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "FocalLoss: invalid `alpha`: must be in [0, 1], got 1.5"
    );
    let e = CrossEntropyLossConfig::new()
        .with_label_smoothing(1.5)
        .try_init()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "CrossEntropyLoss: invalid `label_smoothing`: must be in [0, 1], got 1.5"
    );
    let e = DiceCELossConfig::new(Activation::Softmax)
        .with_lambda_ce(-1.0)
        .try_init()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "DiceCELoss: invalid `lambda_ce`: must be finite and >= 0, got -1"
    );
    let e = DiceCELossConfig::new(Activation::Softmax)
        .with_smooth_dr(f64::NAN)
        .try_init()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "DiceCELoss: invalid `smooth_dr`: must be finite and >= 0, got NaN"
    );
    let e = GeneralizedDiceFocalLossConfig::new(Activation::Softmax)
        .with_lambda_gdl(f64::INFINITY)
        .try_init()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "GeneralizedDiceFocalLoss: invalid `lambda_gdl`: must be finite and >= 0, got inf"
    );
    let e = GeneralizedWassersteinDiceLossConfig::new(vec![vec![0.0, 1.0], vec![1.0]])
        .try_init()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "GeneralizedWassersteinDiceLoss: invalid `dist_matrix`: must be square (C x C), got row 1 has 1 entries for 2 rows"
    );
    let e = GeneralizedWassersteinDiceLossConfig::new(vec![vec![0.5, 1.0], vec![1.0, 0.0]])
        .try_init()
        .unwrap_err();
    assert!(e.to_string().contains("0 on the diagonal"), "{e}");
    // `init` panics with the same message.
    let msg = panic_message(|| {
        GeneralizedDiceLossConfig::new(Activation::Softmax)
            .with_smooth_dr(-1e-5)
            .init();
    });
    assert_eq!(
        msg,
        "GeneralizedDiceLoss: invalid `smooth_dr`: must be finite and >= 0, got -0.00001"
    );
}

#[test]
fn shape_mismatches_name_both_shapes() {
    let device = Device::flex();
    let loss = DiceLossConfig::new(Activation::Softmax).init();
    let p = Tensor::<5>::zeros([2, 3, 4, 4, 4], &device);
    let msg = panic_message(|| {
        loss.forward(p.clone(), Tensor::<5, Int>::zeros([2, 1, 4, 4, 5], &device));
    });
    assert!(
        msg.contains("[2, 3, 4, 4, 4]") && msg.contains("[2, 1, 4, 4, 5]"),
        "{msg}"
    );
    assert!(
        msg.starts_with("DiceLoss: the label map must have shape [B, 1, spatial...]"),
        "{msg}"
    );

    let loss = DiceLossConfig::new(Activation::Softmax).init();
    let msg = panic_message(|| {
        loss.forward(p.clone(), Tensor::<5>::zeros([2, 2, 4, 4, 4], &device));
    });
    assert_eq!(
        msg,
        "DiceLoss: the dense target must have the prediction's shape [2, 3, 4, 4, 4], got [2, 2, 4, 4, 4]"
    );
    // A label map passed as floats is pointed at Target::labels.
    let loss = DiceLossConfig::new(Activation::Softmax).init();
    let msg = panic_message(|| {
        loss.forward(p.clone(), Tensor::<5>::zeros([2, 1, 4, 4, 4], &device));
    });
    assert!(msg.contains("use Target::labels"), "{msg}");
    // A one-hot passed as Int is pointed at Target::dense.
    let loss = GeneralizedDiceLossConfig::new(Activation::Softmax).init();
    let msg = panic_message(|| {
        loss.forward(p.clone(), Tensor::<5, Int>::zeros([2, 3, 4, 4, 4], &device));
    });
    assert!(
        msg.starts_with("GeneralizedDiceLoss:") && msg.contains("use Target::dense"),
        "{msg}"
    );
    // A mask of the wrong size.
    let loss = TverskyLossConfig::new(Activation::Softmax).init();
    let msg = panic_message(|| {
        let t = Target::labels(Tensor::<5, Int>::zeros([2, 1, 4, 4, 4], &device))
            .with_mask(Tensor::<5>::ones([2, 1, 4, 4, 3], &device));
        loss.forward(p.clone(), t);
    });
    assert!(
        msg.starts_with("TverskyLoss: the voxel mask must have shape")
            && msg.contains("[2, 1, 4, 4, 3]"),
        "{msg}"
    );
    // Class weights of the wrong length.
    let loss = DiceLossConfig::new(Activation::Softmax)
        .with_weight(Some(vec![1.0, 2.0]))
        .init();
    let msg = panic_message(|| {
        loss.forward(p.clone(), Tensor::<5, Int>::zeros([2, 1, 4, 4, 4], &device));
    });
    assert_eq!(
        msg,
        "DiceLoss: `weight` has 2 values but the loss sees 3 classes (all channels); give one weight per class, or a single value for all"
    );
    // GWDL distance matrix vs channels.
    let loss =
        GeneralizedWassersteinDiceLossConfig::new(vec![vec![0.0, 1.0], vec![1.0, 0.0]]).init();
    let msg = panic_message(|| {
        loss.forward(p.clone(), Tensor::<4, Int>::zeros([2, 4, 4, 4], &device));
    });
    assert!(
        msg.contains("has 3 channels but `dist_matrix` is 2 x 2"),
        "{msg}"
    );
}

#[test]
fn labels_out_of_range_fail_clearly() {
    let device = Device::flex();
    let p = Tensor::<4>::zeros([1, 3, 2, 2], &device);
    let loss = DiceLossConfig::new(Activation::Softmax).init();
    let msg = panic_message(|| {
        loss.forward(
            p.clone(),
            Tensor::<4, Int>::from_data([[[[0, 1], [3, 2]]]], &device),
        );
    });
    assert_eq!(
        msg,
        "DiceLoss: label value 3 is outside the class range [0, 3) of a prediction with 3 channels (labels found span [0, 3]; ignore_index: none). Labels must be class indices, or set `ignore_index` for unlabelled voxels."
    );
    let msg = panic_message(|| {
        loss.forward(
            p.clone(),
            Tensor::<4, Int>::from_data([[[[0, -1], [1, 2]]]], &device),
        );
    });
    assert!(
        msg.contains("label value -1 is outside the class range [0, 3)"),
        "{msg}"
    );
    // The ignore index is allowed; other out-of-range values are not.
    let ignoring = DiceLossConfig::new(Activation::Softmax)
        .with_ignore_index(Some(255))
        .init();
    ignoring.forward(
        p.clone(),
        Tensor::<4, Int>::from_data([[[[0, 255], [1, 2]]]], &device),
    );
    let msg = panic_message(|| {
        ignoring.forward(
            p.clone(),
            Tensor::<4, Int>::from_data([[[[0, 255], [7, 2]]]], &device),
        );
    });
    assert!(
        msg.contains("label value 7") && msg.contains("ignore_index: 255"),
        "{msg}"
    );
    // Single channel: labels are 0/1.
    let binary = DiceLossConfig::new(Activation::Sigmoid).init();
    let msg = panic_message(|| {
        binary.forward(
            Tensor::<4>::zeros([1, 1, 2, 2], &device),
            Tensor::<4, Int>::from_data([[[[0, 1], [2, 1]]]], &device),
        );
    });
    assert!(
        msg.contains("(0 or 1 for a single-channel prediction)"),
        "{msg}"
    );
    // Cross-entropy and focal check too.
    let ce = CrossEntropyLossConfig::new().init();
    let msg = panic_message(|| {
        ce.forward(
            p.clone(),
            Tensor::<3, Int>::from_data([[[0, 1], [5, 2]]], &device),
        );
    });
    assert!(msg.starts_with("CrossEntropyLoss: label value 5"), "{msg}");
}

#[test]
fn single_channel_misuse_is_refused() {
    let device = Device::flex();
    let p = Tensor::<4>::zeros([1, 1, 2, 2], &device);
    let t = Tensor::<4>::zeros([1, 1, 2, 2], &device);
    let loss = DiceLossConfig::new(Activation::Softmax).init();
    let msg = panic_message(|| {
        loss.forward(p.clone(), t.clone());
    });
    assert!(
        msg.contains("softmax over a single channel is constant 1"),
        "{msg}"
    );
    let loss = DiceLossConfig::new(Activation::Sigmoid)
        .with_include_background(false)
        .init();
    let msg = panic_message(|| {
        loss.forward(p.clone(), t.clone());
    });
    assert!(msg.contains("would drop the only channel"), "{msg}");
}

#[test]
fn nan_input_gives_nan_not_a_number_that_looks_fine() {
    let device = Device::flex();
    let p = Tensor::<4>::from_data(
        [[[[f32::NAN, 0.0], [1.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]]]],
        &device,
    );
    let labels = Tensor::<4, Int>::from_data([[[[0, 1], [1, 0]]]], &device);
    for v in [
        DiceLossConfig::new(Activation::Softmax)
            .init()
            .forward(p.clone(), labels.clone()),
        GeneralizedDiceLossConfig::new(Activation::Softmax)
            .init()
            .forward(p.clone(), labels.clone()),
        FocalLossConfig::new()
            .with_use_softmax(true)
            .init()
            .forward(p.clone(), labels.clone()),
        CrossEntropyLossConfig::new()
            .init()
            .forward(p.clone(), labels.clone()),
    ] {
        assert!(v.into_scalar::<f32>().is_nan());
    }
    // 32 voxels per sample: full runs of 8, which the CPU kernel computes with SIMD code (the 4
    // voxels above go through its scalar tail), with the NaN inside one of them.
    let x: Vec<f32> = (0..64)
        .map(|i| {
            if i == 13 {
                f32::NAN
            } else {
                (i % 5) as f32 - 2.0
            }
        })
        .collect();
    let p = Tensor::<1>::from_floats(x.as_slice(), &device).reshape([1, 2, 32]);
    let dense =
        Tensor::<1>::from_floats([0.0f32, 1.0].repeat(32).as_slice(), &device).reshape([1, 2, 32]);
    let labels =
        Tensor::<1, Int>::from_ints([0, 1].repeat(16).as_slice(), &device).reshape([1, 32]);
    for (what, v) in [
        (
            "sigmoid",
            DiceLossConfig::new(Activation::Sigmoid)
                .init()
                .forward(p.clone(), Target::dense(dense)),
        ),
        (
            "softmax",
            DiceLossConfig::new(Activation::Softmax)
                .init()
                .forward(p.clone(), labels),
        ),
    ] {
        assert!(v.into_scalar::<f32>().is_nan(), "{what}");
    }
}

#[test]
fn one_voxel_volumes_and_single_foreground_voxels_work() {
    let device = Device::flex();
    // 1x1x1 volume, two classes, predicted perfectly.
    let p = Tensor::<5>::from_data([[[[[0.0f32]]], [[[1.0]]]]], &device);
    let labels = Tensor::<5, Int>::from_data([[[[[1]]]]], &device);
    let v = DiceLossConfig::new(Activation::None)
        .init()
        .forward_no_reduction(p, labels)
        .into_data();
    let v: Vec<f32> = v.iter::<f32>().collect();
    assert!(v.iter().all(|x| x.abs() < 1e-6), "{v:?}");
    // One foreground voxel in 4x4x4, predicted with probability 0.5: Dice = 2*0.5/(0.5+1).
    let mut probs = vec![0.0f32; 64];
    probs[21] = 0.5;
    let p = Tensor::<5>::from_data(
        burn::tensor::TensorData::new(probs, [1, 1, 4, 4, 4]),
        &device,
    );
    let mut lab = vec![0i64; 64];
    lab[21] = 1;
    let t =
        Tensor::<5, Int>::from_data(burn::tensor::TensorData::new(lab, [1, 1, 4, 4, 4]), &device);
    let v = DiceLossConfig::new(Activation::None)
        .with_smooth_nr(0.0)
        .with_smooth_dr(1e-12)
        .init()
        .forward(p, t)
        .into_scalar::<f32>();
    assert!((v - (1.0 - 1.0 / 1.5)).abs() < 1e-6, "{v}");
}

/// `smooth_dr = 0` is accepted by every Dice-family loss, as MONAI accepts it (its own tests use
/// it); negative, NaN and infinite values are still refused, naming the loss.
#[test]
fn smooth_dr_zero_is_accepted_and_invalid_values_are_not() {
    assert!(
        DiceLossConfig::new(Activation::Softmax)
            .with_smooth_dr(0.0)
            .try_init()
            .is_ok()
    );
    assert!(
        GeneralizedDiceLossConfig::new(Activation::Softmax)
            .with_smooth_dr(0.0)
            .try_init()
            .is_ok()
    );
    assert!(
        TverskyLossConfig::new(Activation::Softmax)
            .with_smooth_dr(0.0)
            .try_init()
            .is_ok()
    );
    assert!(
        DiceCELossConfig::new(Activation::Softmax)
            .with_smooth_dr(0.0)
            .try_init()
            .is_ok()
    );
    assert!(
        DiceFocalLossConfig::new(Activation::Sigmoid)
            .with_smooth_dr(0.0)
            .try_init()
            .is_ok()
    );
    assert!(
        GeneralizedDiceFocalLossConfig::new(Activation::Softmax)
            .with_smooth_dr(0.0)
            .try_init()
            .is_ok()
    );
    let gwdl = || GeneralizedWassersteinDiceLossConfig::new(vec![vec![0.0, 1.0], vec![1.0, 0.0]]);
    assert!(gwdl().with_smooth_dr(0.0).try_init().is_ok());
    for bad in [-1e-9, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let rule = "must be finite and >= 0";
        let errors = [
            DiceLossConfig::new(Activation::Softmax)
                .with_smooth_dr(bad)
                .try_init()
                .unwrap_err(),
            GeneralizedDiceLossConfig::new(Activation::Softmax)
                .with_smooth_dr(bad)
                .try_init()
                .unwrap_err(),
            TverskyLossConfig::new(Activation::Softmax)
                .with_smooth_dr(bad)
                .try_init()
                .unwrap_err(),
            DiceCELossConfig::new(Activation::Softmax)
                .with_smooth_dr(bad)
                .try_init()
                .unwrap_err(),
            DiceFocalLossConfig::new(Activation::Sigmoid)
                .with_smooth_dr(bad)
                .try_init()
                .unwrap_err(),
            GeneralizedDiceFocalLossConfig::new(Activation::Softmax)
                .with_smooth_dr(bad)
                .try_init()
                .unwrap_err(),
            gwdl().with_smooth_dr(bad).try_init().unwrap_err(),
        ];
        for e in errors {
            assert_eq!(e.parameter, "smooth_dr", "{e}");
            assert!(e.to_string().contains(rule), "{e}");
        }
    }
}

/// With `smooth_dr = 0` a class that is empty in the target and has nothing predicted divides 0
/// by 0: NaN with `smooth_nr = 0`, -inf with `smooth_nr > 0`, and a NaN gradient for that class,
/// exactly what MONAI 1.6.1 gives (`DiceLoss(to_onehot_y=True, smooth_nr=0, smooth_dr=0,
/// reduction="none")` on this input: `[[0.142857, nan], [0.058824, 0.142857]]`, and the gradient
/// NaN for sample 0, class 1; the reference cases `dice_empty_class_nan` / `_neg_inf` of
/// `fixtures/monai/smooth_dr_zero_dice_loss.json`). The other classes keep their values.
#[test]
fn smooth_dr_zero_empty_class_gives_nan_as_in_monai() {
    let device = Device::flex().autodiff();
    // Probabilities [B = 2, C = 2, N = 3]; class 1 of sample 0 is empty in the labels and in the prediction.
    let p = || {
        Tensor::<3>::from_data(
            [
                [[0.75f32, 0.5, 1.0], [0.0, 0.0, 0.0]],
                [[1.0, 0.25, 1.0], [0.0, 0.75, 0.0]],
            ],
            &device,
        )
        .require_grad()
    };
    let labels = || Tensor::<3, Int>::from_data([[[0i64, 0, 0]], [[0, 1, 0]]], &device);
    for (nr, empty) in [(0.0, f32::NAN), (1e-5, f32::NEG_INFINITY)] {
        let loss = DiceLossConfig::new(Activation::None)
            .with_smooth_nr(nr)
            .with_smooth_dr(0.0)
            .init();
        let x = p();
        let v = loss.forward_no_reduction(x.clone(), labels());
        let grads = v.clone().sum().backward();
        let v: Vec<f32> = v.into_data().iter::<f32>().collect();
        if empty.is_nan() {
            assert!(v[1].is_nan(), "smooth_nr {nr}: {v:?}");
        } else {
            assert_eq!(v[1], empty, "smooth_nr {nr}: {v:?}");
        }
        for (i, want) in [
            (0, 1.0 - 1.5 / 1.75),
            (2, 1.0 - 2.0 / 2.125),
            (3, 1.0 - 1.5 / 1.75),
        ] {
            assert!(
                (v[i] - want as f32).abs() < 1e-4,
                "smooth_nr {nr}: element {i} of {v:?}, MONAI {want}"
            );
        }
        let g: Vec<f32> = x.grad(&grads).unwrap().into_data().iter::<f32>().collect();
        // Layout [b][c][n]: sample 0 class 1 is elements 3..6, NaN; every other element is finite.
        for (i, gi) in g.iter().enumerate() {
            assert_eq!(
                gi.is_nan(),
                (3..6).contains(&i),
                "smooth_nr {nr}: gradient {g:?}"
            );
        }
        let reduced = loss.forward(p(), labels()).into_scalar::<f32>();
        assert!(
            if empty.is_nan() {
                reduced.is_nan()
            } else {
                reduced == empty
            },
            "smooth_nr {nr}: reduced {reduced}"
        );
    }
}

#[test]
fn unchecked_labels_out_of_range_match_no_class_on_both_paths() {
    // With validate_labels(false) a label outside [0, C) is not checked; it must not panic inside
    // a gather (the composed cross-entropy did), and both paths give it the same meaning: the
    // voxel matches no class, so it adds no target term and no weight to the mean's normaliser.
    let device = Device::flex();
    let logits = Tensor::<4>::from_data(
        [[
            [[0.3, -1.2], [2.0, 0.1]],
            [[1.1, 0.4], [-0.7, 0.9]],
            [[-0.5, 0.8], [0.2, -1.5]],
        ]],
        &device,
    );
    let bad = Tensor::<4, Int>::from_data([[[[0, -1], [2, 7]]]], &device);
    // The same voxels dropped by a mask: the reference meaning of "matches no class" for the
    // mean (its normaliser counts only the two in-range voxels).
    let good = Tensor::<4, Int>::from_data([[[[0, 0], [2, 0]]]], &device);
    let mask = Tensor::<4>::from_data([[[[1.0, 0.0], [1.0, 0.0]]]], &device);
    for weight in [None, Some(vec![0.5, 2.0, 1.5])] {
        let cfg = CrossEntropyLossConfig::new()
            .with_weight(weight.clone())
            .with_validate_labels(false);
        let loss = cfg.init();
        let want = loss
            .forward(
                logits.clone(),
                Target::labels(good.clone()).with_mask(mask.clone()),
            )
            .into_scalar::<f32>();
        for kernel in [Kernel::Auto, Kernel::Composed] {
            let got = with_kernel(kernel, || {
                loss.forward(logits.clone(), bad.clone())
                    .into_scalar::<f32>()
            });
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{kernel:?} weight {weight:?}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn a_batch_of_size_zero_is_refused_clearly_by_every_loss() {
    let device = Device::flex();
    let logits = || Tensor::<5>::zeros([0, 3, 2, 2, 2], &device);
    let labels = || Tensor::<5, Int>::zeros([0, 1, 2, 2, 2], &device);
    type Case<'a> = (&'static str, Box<dyn Fn() + std::panic::RefUnwindSafe + 'a>);
    let run: Vec<Case<'_>> = vec![
        (
            "DiceCELoss",
            Box::new(|| {
                DiceCELossConfig::new(Activation::Softmax)
                    .init()
                    .forward(logits(), labels());
            }),
        ),
        (
            "DiceFocalLoss",
            Box::new(|| {
                DiceFocalLossConfig::new(Activation::Softmax)
                    .init()
                    .forward(logits(), labels());
            }),
        ),
        (
            "GeneralizedDiceFocalLoss",
            Box::new(|| {
                GeneralizedDiceFocalLossConfig::new(Activation::Softmax)
                    .init()
                    .forward(logits(), labels());
            }),
        ),
        (
            "CrossEntropyLoss",
            Box::new(|| {
                CrossEntropyLossConfig::new()
                    .init()
                    .forward(logits(), labels());
            }),
        ),
        (
            "DiceLoss",
            Box::new(|| {
                DiceLossConfig::new(Activation::Softmax)
                    .init()
                    .forward(logits(), labels());
            }),
        ),
        (
            "HausdorffDTLoss",
            Box::new(|| {
                HausdorffDTLossConfig::new(Activation::Softmax)
                    .init()
                    .forward(logits(), labels());
            }),
        ),
        (
            "LogHausdorffDTLoss",
            Box::new(|| {
                LogHausdorffDTLossConfig::new(Activation::Softmax)
                    .init()
                    .forward(logits(), labels());
            }),
        ),
        (
            "BoundaryLoss",
            Box::new(|| {
                BoundaryLossConfig::new(Activation::Softmax)
                    .init()
                    .forward(logits(), labels());
            }),
        ),
    ];
    for (name, f) in run {
        let msg = panic_message(&f);
        assert!(
            msg.starts_with(name) && msg.contains("empty axis"),
            "{name}: {msg}"
        );
    }
}
