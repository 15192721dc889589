use super::layout::RUN;
use super::maths::{exp_parts, exp_poly, ln_poly};
use super::*;

/// The same statistics and gradient, bit for bit, on 1, 2 and 3 threads.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    // Several tasks per sample for both kinds of task (one block for the softmax, runs of
    // `RUN` blocks for the sigmoid), the last one short.
    let (b, c, n) = (2usize, 5usize, 2 * RUN * BLOCK + 3 * BLOCK + 17);
    let x: Vec<f32> = (0..b * c * n)
        .map(|i| ((i * 7919) % 1000) as f32 / 97.0 - 5.0)
        .collect();
    let l: Vec<i64> = (0..b * n).map(|i| ((i * 31) % c) as i64).collect();
    let m: Vec<f32> = (0..b * n)
        .map(|i| if i % 7 == 0 { 0.0 } else { 1.0 })
        .collect();
    let d = Dims { b, c, n };
    for act in [Activation::Softmax, Activation::Sigmoid] {
        let spec = Spec {
            act,
            include_background: false,
            squared: false,
            difference: true,
        };
        let grad: Vec<f32> = (0..4 * b * (c - 1))
            .map(|i| i as f32 * 0.01 - 0.1)
            .collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (stats, mut p) = forward_saving(&x, TargetRef::Labels(&l), Some(&m), d, spec);
                backward_in_place(&mut p, TargetRef::Labels(&l), Some(&m), &grad, d, spec);
                (
                    forward(&x, TargetRef::Labels(&l), Some(&m), d, spec),
                    stats,
                    backward(&x, TargetRef::Labels(&l), Some(&m), &grad, d, spec),
                    p,
                )
            })
        };
        let one = run(1);
        assert_eq!(one.0, one.1, "{act:?}");
        assert_eq!(one.2, one.3, "{act:?}");
        assert_eq!(one, run(2), "{act:?}");
        assert_eq!(one, run(3), "{act:?}");
    }
}

/// The AVX2 + FMA code (where the CPU has it) against the baseline code, which runs the same
/// formulas lane by lane without fused multiply-adds: every activation and option, logits up
/// to +-1e4, a row length that leaves a tail of 8. Tolerance: 2e-6 relative for the
/// statistics (the same sums, with products rounded once or twice), 2e-6 of the largest
/// gradient value for the gradients.
#[test]
fn simd_code_matches_the_baseline_code() {
    let (b, c, n) = (2usize, 3usize, RUN * BLOCK + 2 * BLOCK + 13);
    // The offset keeps every sigmoid away from the dense target's values (0, 1/4, ..., 1)
    // by far more than rounding: at p = g the gradient of |p - g| jumps, and rounding
    // alone would pick the side.
    let x: Vec<f32> = (0..b * c * n)
        .map(|i| {
            if i % 997 == 0 {
                if i % 2 == 0 { 1e4 } else { -1e4 }
            } else {
                ((i * 7919) % 1013) as f32 / 61.0 - 8.013
            }
        })
        .collect();
    let l: Vec<i64> = (0..b * n).map(|i| ((i * 31 + i / 7) % c) as i64).collect();
    let dense: Vec<f32> = (0..b * c * n)
        .map(|i| ((i * 13) % 5) as f32 / 4.0)
        .collect();
    let m: Vec<f32> = (0..b * n).map(|i| ((i * 17) % 3) as f32 / 2.0).collect();
    let d = Dims { b, c, n };
    let close = |got: &[f32], want: &[f32], rel: bool, what: &str| {
        let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let tol = if rel {
                2e-6 * w.abs().max(1e-3)
            } else {
                2e-6 * scale
            };
            assert!(
                g.is_finite() && (g - w).abs() <= tol,
                "{what}: [{i}] {g} vs baseline {w}"
            );
        }
    };
    for act in [Activation::Softmax, Activation::Sigmoid, Activation::None] {
        for f in 0..32 {
            let (include_background, squared, difference, masked, labels) =
                (f & 1 == 0, f & 2 != 0, f & 4 != 0, f & 8 != 0, f & 16 != 0);
            let spec = Spec {
                act,
                include_background,
                squared,
                difference,
            };
            let t = if labels {
                TargetRef::Labels(&l)
            } else {
                TargetRef::Dense(&dense)
            };
            let mask = masked.then_some(&m[..]);
            let grad: Vec<f32> = (0..4 * b * d.k(&spec))
                .map(|i| i as f32 * 0.013 - 0.2)
                .collect();
            let what = format!("{spec:?} masked {masked} labels {labels}");
            let problem = Problem {
                x: &x,
                t,
                mask,
                d,
                spec,
                pw: None,
            };
            let stats = |isa| forward_impl(&problem, None, isa);
            close(
                &stats(Isa::Best),
                &stats(Isa::Baseline),
                true,
                &format!("{what}: statistics"),
            );
            let dx = |isa| backward_impl(&problem, &grad, isa);
            close(
                &dx(Isa::Best),
                &dx(Isa::Baseline),
                false,
                &format!("{what}: gradient"),
            );
            if act != Activation::None {
                let saved = |isa| {
                    let mut p = vec![0.0f32; b * c * n];
                    let stats = forward_impl(&problem, Some(DxPtr(p.as_mut_ptr().cast())), isa);
                    backward_in_place_impl(&mut p, &Problem { x: &[], ..problem }, &grad, isa);
                    (stats, p)
                };
                let (best, base) = (saved(Isa::Best), saved(Isa::Baseline));
                close(
                    &best.0,
                    &base.0,
                    true,
                    &format!("{what}: saving statistics"),
                );
                close(
                    &best.1,
                    &base.1,
                    false,
                    &format!("{what}: in-place gradient"),
                );
            }
        }
    }
}

/// Every option combination, on a size whose rows are 16-byte aligned (streaming stores) and
/// on one whose rows are not: the saving forward gives the same statistics as the plain one,
/// the activations it saves are the activations, and the in-place backward gives the same
/// gradient as the recomputing one, bit for bit, on 1 and 3 threads.
#[test]
fn saved_activations_give_the_same_results() {
    let pools: Vec<_> = [1, 3]
        .map(|n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        })
        .into();
    for (b, c, n) in [
        (2usize, 4usize, 2 * BLOCK + 40),
        (1, 3, BLOCK + 13),
        (2, 1, 301),
    ] {
        let x: Vec<f32> = (0..b * c * n)
            .map(|i| ((i * 7919) % 1013) as f32 / 61.0 - 8.0)
            .collect();
        let l: Vec<i32> = (0..b * n)
            .map(|i| ((i * 31 + i / 7) % c.max(2)) as i32 % (c as i32).max(2))
            .collect();
        let l: Vec<i32> = if c == 1 {
            l.iter().map(|&v| v.min(1)).collect()
        } else {
            l
        };
        let dense: Vec<f32> = (0..b * c * n)
            .map(|i| ((i * 13) % 5) as f32 / 4.0)
            .collect();
        let m: Vec<f32> = (0..b * n)
            .map(|i| if i % 5 == 0 { 0.0 } else { 1.0 })
            .collect();
        let d = Dims { b, c, n };
        for act in [Activation::Softmax, Activation::Sigmoid] {
            for (include_background, squared, difference, masked, labels) in (0..32).map(|f| {
                (
                    f & 1 == 0 || c == 1,
                    f & 2 != 0,
                    f & 4 != 0,
                    f & 8 != 0,
                    f & 16 != 0,
                )
            }) {
                let spec = Spec {
                    act,
                    include_background,
                    squared,
                    difference,
                };
                let t = if labels {
                    TargetRef::Labels(&l)
                } else {
                    TargetRef::Dense(&dense)
                };
                let mask = masked.then_some(&m[..]);
                let grad: Vec<f32> = (0..4 * b * d.k(&spec))
                    .map(|i| i as f32 * 0.013 - 0.2)
                    .collect();
                let what = format!("{act:?} {spec:?} masked {masked} labels {labels} {b}x{c}x{n}");
                let stats = forward(&x, t, mask, d, spec);
                let dx = backward(&x, t, mask, &grad, d, spec);
                for pool in &pools {
                    let (saved_stats, mut p) =
                        pool.install(|| forward_saving(&x, t, mask, d, spec));
                    assert_eq!(saved_stats, stats, "{what}");
                    for bb in 0..b {
                        for i in (0..n).step_by(37) {
                            let xs: Vec<f32> = (0..c).map(|cc| x[(bb * c + cc) * n + i]).collect();
                            for (cc, v) in xs.iter().enumerate() {
                                let want = match act {
                                    Activation::Softmax => {
                                        let max = xs.iter().fold(f32::MIN, |a, &v| a.max(v));
                                        (v - max).exp()
                                            / xs.iter().map(|&u| (u - max).exp()).sum::<f32>()
                                    }
                                    _ => 1.0 / (1.0 + (-v).exp()),
                                };
                                let got = p[(bb * c + cc) * n + i];
                                assert!(
                                    (got - want).abs() <= 1e-6 * want.max(1e-3),
                                    "{what}: p {got} vs {want}"
                                );
                            }
                        }
                    }
                    pool.install(|| backward_in_place(&mut p, t, mask, &grad, d, spec));
                    assert_eq!(p, dx, "{what}");
                }
            }
        }
    }
}

/// The pointwise rows against the formulas of the pointwise section evaluated in f64 voxel
/// by voxel, for the softmax and the sigmoid, gamma 0 and 2, label maps and soft dense
/// targets, with a mask; logits up to +-1e4 (saturated probabilities) included.
#[test]
fn pointwise_rows_match_the_formulas() {
    let (b, c, n) = (2usize, 3usize, RUN * BLOCK + BLOCK + 29);
    let x: Vec<f32> = (0..b * c * n)
        .map(|i| {
            if i % 641 == 0 {
                if i % 2 == 0 { 1e4 } else { -1e4 }
            } else {
                ((i * 7919) % 1013) as f32 / 83.0 - 6.0
            }
        })
        .collect();
    let l: Vec<i64> = (0..b * n).map(|i| ((i * 31 + i / 7) % c) as i64).collect();
    let dense: Vec<f32> = (0..b * c * n)
        .map(|i| ((i * 13) % 5) as f32 / 4.0)
        .collect();
    let m: Vec<f32> = (0..b * n).map(|i| ((i * 17) % 3) as f32 / 2.0).collect();
    let d = Dims { b, c, n };
    let sp = |v: f64| v.max(0.0) + (-v.abs()).exp().ln_1p();
    for act in [Activation::Softmax, Activation::Sigmoid] {
        for gamma in [0.0f32, 2.0] {
            for labels in [true, false] {
                let spec = Spec {
                    act,
                    include_background: true,
                    squared: false,
                    difference: false,
                };
                let t = if labels {
                    TargetRef::Labels(&l)
                } else {
                    TargetRef::Dense(&dense)
                };
                let got = pointwise_forward(&x, t, Some(&m), d, spec, Pointwise::new(gamma));
                let mut want = vec![0.0f64; 8 * b * c];
                for bb in 0..b {
                    for i in 0..n {
                        let xs: Vec<f64> =
                            (0..c).map(|cc| x[(bb * c + cc) * n + i] as f64).collect();
                        let max = xs.iter().cloned().fold(f64::MIN, f64::max);
                        let lse = xs.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                        let w = m[bb * n + i] as f64;
                        for cc in 0..c {
                            let g = if labels {
                                f64::from(l[bb * n + i] == cc as i64)
                            } else {
                                dense[(bb * c + cc) * n + i] as f64
                            };
                            let xv = xs[cc];
                            let (h, third, fourth) = match act {
                                Activation::Softmax => {
                                    let nlp = lse + max - xv;
                                    let p = (-nlp).exp();
                                    (
                                        (1.0 - p).max(f32::MIN_POSITIVE as f64).powf(gamma as f64)
                                            * nlp,
                                        w * g,
                                        0.0,
                                    )
                                }
                                _ => {
                                    let bce = sp(xv) - xv * g;
                                    let h =
                                        (-(gamma as f64) * sp(xv * (2.0 * g - 1.0))).exp() * bce;
                                    (h, if g == 1.0 { w * h } else { 0.0 }, w * g * sp(-xv))
                                }
                            };
                            for (q, v) in [w * g * h, w * h, third, fourth].into_iter().enumerate()
                            {
                                want[((4 + q) * b + bb) * c + cc] += v;
                            }
                        }
                    }
                }
                for (q, (g, w)) in got.iter().zip(&want).enumerate().skip(4 * b * c) {
                    let tol = 2e-5 * w.abs().max(1.0);
                    assert!(
                        ((*g as f64) - w).abs() <= tol,
                        "{act:?} gamma {gamma} labels {labels}: row {} [{q}] {g} vs {w}",
                        q / (b * c)
                    );
                }
            }
        }
    }
}

/// The pointwise gradient against central differences of the pointwise rows (f64 sums of the
/// f32 kernel on a small problem), every row's gradient at once, softmax and sigmoid, gamma
/// 0 and 1.5, with a mask and soft targets; and the softmax's in-place backward equals its
/// recomputing one.
#[test]
fn pointwise_gradient_matches_finite_differences() {
    let (b, c, n) = (1usize, 3usize, 40usize);
    let x: Vec<f32> = (0..b * c * n)
        .map(|i| ((i * 7919) % 1013) as f32 / 250.0 - 2.0)
        .collect();
    let dense: Vec<f32> = (0..b * c * n)
        .map(|i| ((i * 13) % 5) as f32 / 4.0)
        .collect();
    let m: Vec<f32> = (0..b * n).map(|i| 0.5 + (i % 2) as f32 / 2.0).collect();
    let d = Dims { b, c, n };
    let grad: Vec<f32> = (0..8 * b * c)
        .map(|i| {
            if i < 4 * b * c {
                0.0
            } else {
                0.3 + 0.1 * (i % 5) as f32
            }
        })
        .collect();
    for act in [Activation::Softmax, Activation::Sigmoid] {
        for gamma in [0.0f32, 1.5] {
            let spec = Spec {
                act,
                include_background: true,
                squared: false,
                difference: false,
            };
            let t = TargetRef::<i64>::Dense(&dense);
            let objective = |x: &[f32]| -> f64 {
                pointwise_forward(x, t, Some(&m), d, spec, Pointwise::new(gamma))
                    .iter()
                    .zip(&grad)
                    .map(|(v, g)| *v as f64 * *g as f64)
                    .sum()
            };
            let dx = pointwise_backward(&x, t, Some(&m), &grad, d, spec, Pointwise::new(gamma));
            for i in (0..x.len()).step_by(7) {
                let h = 1e-2f32;
                let (mut hi, mut lo) = (x.clone(), x.clone());
                hi[i] += h;
                lo[i] -= h;
                let fd = (objective(&hi) - objective(&lo)) / (2.0 * h as f64);
                assert!(
                    (dx[i] as f64 - fd).abs() <= 1e-3 + 5e-3 * fd.abs(),
                    "{act:?} gamma {gamma}: dx[{i}] {} vs finite difference {fd}",
                    dx[i]
                );
            }
            if act == Activation::Softmax {
                let (_, mut p) =
                    pointwise_forward_saving(&x, t, Some(&m), d, spec, Pointwise::new(gamma));
                pointwise_backward_in_place(
                    &mut p,
                    t,
                    Some(&m),
                    &grad,
                    d,
                    spec,
                    Pointwise::new(gamma),
                );
                for (a, b) in p.iter().zip(&dx) {
                    assert!(
                        (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                        "in place {a} vs recomputed {b}"
                    );
                }
            }
        }
    }
}

/// The pointwise term without the background ([`Pointwise::without_background`]): the
/// overlap rows as the plain softmax pass gives them, the pointwise rows against the f64
/// formulas with the softmax over channels `1..C` (channel 0's rows 0), including voxels
/// where channel 0 dominates by 1e4 (the second softmax is then still exact) and where it
/// is far below; label maps and dense targets, with a mask.
#[test]
fn pointwise_rows_without_the_background() {
    let (b, c, n) = (2usize, 4usize, BLOCK + 301);
    let x: Vec<f32> = (0..b * c * n)
        .map(|i| {
            let (ch, v) = ((i / n) % c, i % n);
            match (ch, v % 97) {
                (0, 5) => 1e4,
                (0, 9) => -1e4,
                (2, 11) => 1e4,
                _ => ((i * 7919) % 1013) as f32 / 83.0 - 6.0,
            }
        })
        .collect();
    let l: Vec<i64> = (0..b * n).map(|i| ((i * 31 + i / 7) % c) as i64).collect();
    let dense: Vec<f32> = (0..b * c * n)
        .map(|i| ((i * 13) % 5) as f32 / 4.0)
        .collect();
    let m: Vec<f32> = (0..b * n).map(|i| ((i * 17) % 3) as f32 / 2.0).collect();
    let d = Dims { b, c, n };
    let spec = Spec {
        act: Activation::Softmax,
        include_background: true,
        squared: false,
        difference: false,
    };
    for gamma in [0.0f32, 2.0] {
        for labels in [true, false] {
            let t = if labels {
                TargetRef::Labels(&l)
            } else {
                TargetRef::Dense(&dense)
            };
            let pw = Pointwise {
                gamma,
                without_background: true,
            };
            let got = pointwise_forward(&x, t, Some(&m), d, spec, pw);
            let plain = pointwise_forward(&x, t, Some(&m), d, spec, Pointwise::new(gamma));
            for (i, (a, w)) in got.iter().zip(&plain).enumerate().take(4 * b * c) {
                assert!(
                    (a - w).abs() <= 2e-5 * w.abs().max(1.0),
                    "gamma {gamma} labels {labels}: overlap [{i}] {a} vs {w}"
                );
            }
            let mut want = vec![0.0f64; 4 * b * c];
            for bb in 0..b {
                for i in 0..n {
                    let xs: Vec<f64> = (1..c).map(|cc| x[(bb * c + cc) * n + i] as f64).collect();
                    let max = xs.iter().cloned().fold(f64::MIN, f64::max);
                    let lse = xs.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
                    let w = m[bb * n + i] as f64;
                    for cc in 1..c {
                        let g = if labels {
                            f64::from(l[bb * n + i] == cc as i64)
                        } else {
                            dense[(bb * c + cc) * n + i] as f64
                        };
                        let nlp = lse - xs[cc - 1];
                        let q = (-nlp).exp();
                        let h = (1.0 - q).max(f32::MIN_POSITIVE as f64).powf(gamma as f64) * nlp;
                        for (r, v) in [w * g * h, w * h, w * g, 0.0].into_iter().enumerate() {
                            want[(r * b + bb) * c + cc] += v;
                        }
                    }
                }
            }
            for (i, (g, w)) in got[4 * b * c..].iter().zip(&want).enumerate() {
                assert!(
                    ((*g as f64) - w).abs() <= 2e-5 * w.abs().max(1.0),
                    "gamma {gamma} labels {labels}: pointwise row {} [{i}] {g} vs {w}",
                    i / (b * c)
                );
            }
        }
    }
}

/// The gradient with a pointwise term without the background against central differences
/// of all eight rows weighted at once (the overlap rows' gradient included: it runs through
/// `p_c = q_c (1 - p_0)` there), label map and dense target, gamma 0 and 1.5; the in-place
/// backward equals the recomputing one; and where channel 0 dominates by 1e4 the gradient
/// stays finite.
#[test]
fn pointwise_gradient_without_the_background() {
    let (b, c, n) = (1usize, 4usize, 37usize);
    let x: Vec<f32> = (0..b * c * n)
        .map(|i| ((i * 7919) % 1013) as f32 / 250.0 - 2.0)
        .collect();
    let l: Vec<i64> = (0..b * n).map(|i| ((i * 5 + i / 3) % c) as i64).collect();
    let dense: Vec<f32> = (0..b * c * n)
        .map(|i| ((i * 13) % 5) as f32 / 4.0)
        .collect();
    let m: Vec<f32> = (0..b * n).map(|i| 0.5 + (i % 2) as f32 / 2.0).collect();
    let d = Dims { b, c, n };
    let grad: Vec<f32> = (0..8 * b * c)
        .map(|i| {
            if (4..8).contains(&i) {
                0.0
            } else {
                0.3 - 0.07 * (i % 7) as f32
            }
        })
        .collect();
    let spec = Spec {
        act: Activation::Softmax,
        include_background: true,
        squared: false,
        difference: false,
    };
    for gamma in [0.0f32, 1.5] {
        for labels in [true, false] {
            let t = if labels {
                TargetRef::Labels(&l)
            } else {
                TargetRef::Dense(&dense)
            };
            let pw = Pointwise {
                gamma,
                without_background: true,
            };
            let objective = |x: &[f32]| -> f64 {
                pointwise_forward(x, t, Some(&m), d, spec, pw)
                    .iter()
                    .zip(&grad)
                    .map(|(v, g)| *v as f64 * *g as f64)
                    .sum()
            };
            let dx = pointwise_backward(&x, t, Some(&m), &grad, d, spec, pw);
            for i in 0..x.len() {
                let h = 1e-2f32;
                let (mut hi, mut lo) = (x.clone(), x.clone());
                hi[i] += h;
                lo[i] -= h;
                let fd = (objective(&hi) - objective(&lo)) / (2.0 * h as f64);
                assert!(
                    (dx[i] as f64 - fd).abs() <= 1e-3 + 5e-3 * fd.abs(),
                    "gamma {gamma} labels {labels}: dx[{i}] {} vs finite difference {fd}",
                    dx[i]
                );
            }
            let (_, mut p) = pointwise_forward_saving(&x, t, Some(&m), d, spec, pw);
            pointwise_backward_in_place(&mut p, t, Some(&m), &grad, d, spec, pw);
            assert_eq!(
                p, dx,
                "gamma {gamma} labels {labels}: in place vs recomputed"
            );
            let mut big = x.clone();
            big[..n].iter_mut().step_by(3).for_each(|v| *v = 1e4);
            let dx = pointwise_backward(&big, t, Some(&m), &grad, d, spec, pw);
            assert!(dx.iter().all(|v| v.is_finite()), "gamma {gamma}: {dx:?}");
        }
    }
}

#[test]
fn ln_matches_std_over_the_float_range() {
    let mut worst = 0.0f64;
    let mut v = f32::MIN_POSITIVE;
    while v < 1e38 {
        for x in [v, v * 1.000_37, v * 1.414, v * 0.7072]
            .into_iter()
            .filter(|&x| x >= f32::MIN_POSITIVE)
        {
            let want = (x as f64).ln();
            let got = ln_f32(x) as f64;
            worst = worst.max((got - want).abs() / want.abs().max(1.0));
            let fma = ln_poly::<true>(x) as f64;
            worst = worst.max((fma - want).abs() / want.abs().max(1.0));
        }
        v *= 1.013;
    }
    assert!(worst < 3e-7, "error {worst} (relative, absolute below 1)");
    assert_eq!(ln_f32(1.0), 0.0);
    assert!(ln_f32(f32::NAN).is_nan());
}

#[test]
#[should_panic(expected = "the label map has 10 values, expected B * N = 12")]
fn a_slice_of_the_wrong_size_is_named() {
    let d = Dims { b: 2, c: 3, n: 6 };
    let spec = Spec {
        act: Activation::Softmax,
        include_background: true,
        squared: false,
        difference: false,
    };
    forward(&[0.0; 36], TargetRef::Labels(&[0i64; 10]), None, d, spec);
}

#[test]
fn exp_matches_std_over_the_float_range() {
    let (mut worst, mut worst_fma) = (0.0f64, 0.0f64);
    let mut x = -87.0f32;
    while x < 88.0 {
        let e = (x as f64).exp();
        worst = worst.max(((exp_f32(x) as f64 - e) / e).abs());
        worst_fma = worst_fma.max(((exp_poly::<true>(x) as f64 - e) / e).abs());
        // exp(-x) with the negation folded in, as the sigmoid computes it.
        for neg in [exp_parts::<false, true>(-x), exp_parts::<true, true>(-x)] {
            worst = worst.max(((neg.0 as f64 * neg.1 as f64 - e) / e).abs());
        }
        x += 0.00137;
    }
    assert!(worst < 3e-7, "relative error {worst}");
    assert!(worst_fma < 3e-7, "relative error with FMA {worst_fma}");
    assert_eq!(exp_f32(-1e4), exp_f32(-87.336_55));
    assert!(exp_f32(1e4).is_finite());
    assert!(exp_f32(f32::NAN).is_nan());
    let neg = |x: f32| {
        let (y, pow2) = exp_parts::<false, true>(x);
        y * pow2
    };
    assert_eq!(neg(1e4), exp_f32(-87.336_55));
    assert!(neg(-1e4).is_finite() && neg(f32::NAN).is_nan());
}
