//! Analytic cases: boxes and balls with known distances, anisotropic spacing, single voxels and
//! empty structures, plus the percentile-rule case of the project's metric notes (§3.1).

use segloss_metrics::{
    Boundary, EmptyPolicy, LabelVolume, MetricOptions, PercentileRule, WorstDistance, evaluate,
};

/// A volume with label 1 on the half-open box `lo..hi` (row-major axes).
fn boxed(shape: [usize; 3], spacing: [f64; 3], lo: [usize; 3], hi: [usize; 3]) -> LabelVolume {
    let mut v = vec![0u16; shape.iter().product()];
    for z in lo[0]..hi[0] {
        for y in lo[1]..hi[1] {
            for x in lo[2]..hi[2] {
                v[(z * shape[1] + y) * shape[2] + x] = 1;
            }
        }
    }
    LabelVolume::new(v, &shape, &spacing).unwrap()
}

/// `|a - b| <= tol`, plus 1e-6 relative: distances pass through an `f32` squared-distance grid
/// (documented on `euclidean_distance_transform`), which keeps about 7 significant digits.
fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol + 1e-6 * b.abs()
}

#[test]
fn test_shifted_cube_anisotropic() {
    // Cube of side 8 shifted by 3 voxels along the last axis; spacing (2.0, 1.0, 0.7).
    let (shape, sp) = ([20, 20, 24], [2.0, 1.0, 0.7]);
    let r = boxed(shape, sp, [5, 5, 5], [13, 13, 13]);
    let p = boxed(shape, sp, [5, 5, 8], [13, 13, 16]);
    let res = evaluate(&p, &r, &MetricOptions::default()).unwrap();
    let l = &res.labels[0];
    assert!(close(l.dice, 5.0 / 8.0, 1e-12), "dice {}", l.dice);
    assert!(close(l.iou, 5.0 / 11.0, 1e-12), "iou {}", l.iou);
    let d = l.distances.as_ref().unwrap();
    // The far face of each cube is 3 voxels = 2.1 mm from the other cube's boundary.
    assert!(close(d.hausdorff, 3.0 * 0.7, 0.0), "hd {}", d.hausdorff);
    assert!(close(d.hausdorff_pred_to_ref, 2.1, 1e-9));
    assert!(close(d.hausdorff_ref_to_pred, 2.1, 1e-9));
    assert!(d.percentile_hausdorff <= d.hausdorff + 1e-12);
}

#[test]
fn test_grown_box_known_directed_hausdorff() {
    // Reference box 6x7x8, prediction grown by k = 2 voxels on every side; spacing (1.5, 0.8, 0.5).
    let (shape, sp) = ([16, 17, 18], [1.5, 0.8, 0.5]);
    let r = boxed(shape, sp, [5, 5, 5], [11, 12, 13]);
    let p = boxed(shape, sp, [3, 3, 3], [13, 14, 15]);
    for boundary in [Boundary::InnerVoxels, Boundary::Surfels] {
        let o = MetricOptions {
            boundary,
            nsd_tolerances: vec![0.99, 1.0],
            ..MetricOptions::default()
        };
        let d = evaluate(&p, &r, &o).unwrap().labels[0]
            .distances
            .clone()
            .unwrap();
        // Prediction corner to reference corner: every reference boundary point lies at least
        // 2 voxels further along each axis, so the nearest is the corner, 2 * |spacing| away.
        let diag = 2.0 * (1.5f64 * 1.5 + 0.8 * 0.8 + 0.5 * 0.5).sqrt();
        assert!(
            close(d.hausdorff_pred_to_ref, diag, 1e-9),
            "{boundary:?} {}",
            d.hausdorff_pred_to_ref
        );
        assert!(close(d.hausdorff, diag, 1e-9));
        // No boundary point is closer than 2 voxels along the finest axis (1 mm), and the x faces
        // are exactly that far apart: NSD is 0 just below 1 mm and positive at 1 mm.
        assert!(d.asd_ref_to_pred >= 1.0 - 1e-9 && d.hausdorff_ref_to_pred <= diag);
        assert_eq!(d.nsd[0], 0.0, "{boundary:?}");
        assert!(d.nsd[1] > 0.0, "{boundary:?}");
    }
}

#[test]
fn test_single_voxels() {
    let (shape, sp) = ([6, 7, 8], [2.0, 1.0, 0.5]);
    let r = boxed(shape, sp, [1, 1, 1], [2, 2, 2]);
    let same = evaluate(&r, &r, &MetricOptions::default()).unwrap();
    let l = &same.labels[0];
    assert_eq!((l.dice, l.iou), (1.0, 1.0));
    let d = l.distances.as_ref().unwrap();
    assert_eq!(
        (d.hausdorff, d.percentile_hausdorff, d.assd, d.nsd[0]),
        (0.0, 0.0, 0.0, 1.0)
    );
    // A single voxel at offset (1, 2, 3) voxels: every distance is |(2, 2, 1.5)| mm.
    let p = boxed(shape, sp, [2, 3, 4], [3, 4, 5]);
    let o = MetricOptions {
        nsd_tolerances: vec![3.0, 3.5],
        ..MetricOptions::default()
    };
    let res = evaluate(&p, &r, &o).unwrap();
    let d = res.labels[0].distances.as_ref().unwrap();
    let want = (4.0f64 + 4.0 + 2.25).sqrt();
    for v in [
        d.hausdorff,
        d.percentile_hausdorff,
        d.asd_pred_to_ref,
        d.asd_ref_to_pred,
        d.assd,
        d.masd,
    ] {
        assert!(close(v, want, 1e-12), "{v} vs {want}");
    }
    assert_eq!(d.nsd, vec![0.0, 1.0]);
    assert_eq!(res.labels[0].dice, 0.0);
}

#[test]
fn test_balls_distance_close_to_radius_difference() {
    // Concentric balls of radius 10 and 12 voxels, 1 mm: boundary distances are 2 +- quantisation.
    let n = 32usize;
    let ball = |radius: f64| {
        let mut v = vec![0u16; n * n * n];
        for z in 0..n {
            for y in 0..n {
                for x in 0..n {
                    let c = |i: usize| i as f64 - 15.5;
                    if c(z).powi(2) + c(y).powi(2) + c(x).powi(2) <= radius * radius {
                        v[(z * n + y) * n + x] = 1;
                    }
                }
            }
        }
        LabelVolume::new(v, &[n, n, n], &[1.0, 1.0, 1.0]).unwrap()
    };
    let (r, p) = (ball(10.0), ball(12.0));
    let l = evaluate(&p, &r, &MetricOptions::default()).unwrap().labels[0].clone();
    let d = l.distances.unwrap();
    assert!(
        d.hausdorff >= 1.5 && d.hausdorff <= 3.0,
        "hd {}",
        d.hausdorff
    );
    assert!(close(d.assd, 2.0, 0.35), "assd {}", d.assd);
    // Dice of nested balls: 2 * 10^3 / (10^3 + 12^3), within the voxelisation error.
    assert!(close(l.dice, 2000.0 / 2728.0, 0.03), "dice {}", l.dice);
}

#[test]
fn test_empty_structures_follow_policy_and_are_flagged() {
    let (shape, sp) = ([10, 10, 10], [1.0, 1.0, 1.0]);
    let some = boxed(shape, sp, [2, 2, 2], [5, 5, 5]);
    let none = LabelVolume::new(vec![0; 1000], &shape, &sp).unwrap();
    let labels = Some(vec![1]);
    let monai = MetricOptions {
        labels: labels.clone(),
        ..MetricOptions::default()
    };
    let worst = MetricOptions {
        labels,
        empty: EmptyPolicy::WorstCase(WorstDistance::Diagonal),
        ..MetricOptions::default()
    };
    // Empty prediction (missed structure).
    let l = &evaluate(&none, &some, &monai).unwrap().labels[0];
    assert!(l.pred_empty && !l.ref_empty);
    let d = l.distances.as_ref().unwrap();
    assert_eq!(
        (l.dice, d.hausdorff, d.assd, d.nsd[0]),
        (0.0, f64::INFINITY, f64::INFINITY, 0.0)
    );
    assert!(
        d.percentile_hausdorff.is_nan(),
        "MONAI gives NaN for HD95 of a missed structure"
    );
    let l = &evaluate(&none, &some, &worst).unwrap().labels[0];
    let d = l.distances.as_ref().unwrap();
    assert!(
        close(d.percentile_hausdorff, 300f64.sqrt(), 1e-12),
        "worst = image diagonal"
    );
    assert_eq!(l.dice, 0.0);
    // Empty reference (false positive only).
    let l = &evaluate(&some, &none, &monai).unwrap().labels[0];
    assert!(!l.pred_empty && l.ref_empty);
    assert!(l.dice.is_nan() && l.iou.is_nan());
    assert_eq!(l.distances.as_ref().unwrap().hausdorff, f64::INFINITY);
    let l = &evaluate(&some, &none, &worst).unwrap().labels[0];
    assert_eq!(l.dice, 0.0);
    // Both empty.
    let l = &evaluate(&none, &none, &monai).unwrap().labels[0];
    assert!(l.pred_empty && l.ref_empty);
    let d = l.distances.as_ref().unwrap();
    assert!(l.dice.is_nan() && d.hausdorff.is_nan() && d.nsd[0].is_nan());
    let fixed = MetricOptions {
        empty: EmptyPolicy::WorstCase(WorstDistance::Value(99.0)),
        ..worst.clone()
    };
    let l = &evaluate(&none, &none, &fixed).unwrap().labels[0];
    let d = l.distances.as_ref().unwrap();
    assert_eq!((l.dice, d.hausdorff, d.nsd[0]), (1.0, 0.0, 1.0));
    let l = &evaluate(&none, &some, &fixed).unwrap().labels[0];
    assert_eq!(l.distances.as_ref().unwrap().hausdorff, 99.0);
}

#[test]
fn test_percentile_rules_on_false_positive_cube() {
    // Notes §3.1 [run]: 60^3 grid, reference [10:40]^3, prediction = reference plus a separate
    // false-positive cube [45:54]^3. Reported: MetricsReloaded (max of directed, linear) 16.155,
    // DeepMind (surfels, area-weighted) 16.062, MedPy (pooled) 0.000.
    let (shape, sp) = ([60, 60, 60], [1.0, 1.0, 1.0]);
    let r = boxed(shape, sp, [10, 10, 10], [40, 40, 40]);
    let mut p = r.labels().to_vec();
    for z in 45..54 {
        for y in 45..54 {
            for x in 45..54 {
                p[(z * 60 + y) * 60 + x] = 1;
            }
        }
    }
    let p = LabelVolume::new(p, &shape, &sp).unwrap();
    let phd = |boundary, percentile_rule| {
        let o = MetricOptions {
            boundary,
            percentile_rule,
            ..MetricOptions::default()
        };
        evaluate(&p, &r, &o).unwrap().labels[0]
            .distances
            .clone()
            .unwrap()
            .percentile_hausdorff
    };
    let max = phd(Boundary::InnerVoxels, PercentileRule::MaxOfDirected);
    assert!(close(max, 16.155, 5e-4), "max of directed {max}");
    let pooled = phd(Boundary::InnerVoxels, PercentileRule::Pooled);
    assert!(close(pooled, 0.0, 5e-4), "pooled {pooled}");
    let dm = phd(Boundary::Surfels, PercentileRule::MaxOfDirected);
    assert!(close(dm, 16.062, 5e-4), "surfels {dm}");
    let mean = phd(Boundary::InnerVoxels, PercentileRule::MeanOfDirected);
    assert!(
        close(mean, 0.5 * max, 1e-9),
        "mean of directed {mean} (the other direction is 0)"
    );
}

#[test]
fn test_2d_rectangle_shift_along_anisotropic_axis() {
    let (h, w) = (12, 10);
    let rect = |y0: usize| {
        let mut v = vec![0u16; h * w];
        for y in y0..y0 + 4 {
            for x in 2..8 {
                v[y * w + x] = 2;
            }
        }
        LabelVolume::new(v, &[h, w], &[2.5, 0.4]).unwrap()
    };
    let res = evaluate(&rect(5), &rect(3), &MetricOptions::default()).unwrap();
    assert_eq!(res.labels.len(), 1);
    assert_eq!(res.labels[0].label, 2);
    let d = res.labels[0].distances.as_ref().unwrap();
    assert!(
        close(d.hausdorff, 5.0, 1e-12),
        "2 rows of 2.5 mm: {}",
        d.hausdorff
    );
}

#[test]
fn test_input_errors_name_the_problem() {
    let a = LabelVolume::new(vec![0; 8], &[2, 4], &[1.0, 1.0]).unwrap();
    let b = LabelVolume::new(vec![0; 8], &[4, 2], &[1.0, 1.0]).unwrap();
    let e = evaluate(&a, &b, &MetricOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("prediction has shape [2, 4] but reference has shape [4, 2]"),
        "{e}"
    );
    let c = LabelVolume::new(vec![0; 8], &[2, 4], &[1.0, 2.0]).unwrap();
    let e = evaluate(&a, &c, &MetricOptions::default()).unwrap_err();
    assert!(e.to_string().contains("spacing"), "{e}");
    let o = MetricOptions {
        percentile: 101.0,
        ..MetricOptions::default()
    };
    let e = evaluate(&a, &a, &o).unwrap_err();
    assert!(
        e.to_string()
            .contains("percentile must be in [0, 100], got 101"),
        "{e}"
    );
    let e = LabelVolume::new(vec![0; 7], &[2, 4], &[1.0, 1.0]).unwrap_err();
    assert!(e.to_string().contains("holds 8 voxels but 7 labels"), "{e}");
    let e = LabelVolume::from_i64(&[0, -1], &[1, 2], &[1.0, 1.0]).unwrap_err();
    assert!(
        e.to_string().contains("label -1 is outside 0..=65535"),
        "{e}"
    );
}

#[test]
fn test_distances_scale_with_any_spacing_unit() {
    // The shifted cube at spacings from 1e-25 to 1e25 times (2.0, 1.0, 0.7): every distance
    // metric scales by the same factor (squared distances of 1e-25 underflowed f32 and gave 0).
    let (shape, base) = ([20, 20, 24], [2.0, 1.0, 0.7]);
    let at = |k: f64| {
        let sp = base.map(|s| s * k);
        let r = boxed(shape, sp, [5, 5, 5], [13, 13, 13]);
        let p = boxed(shape, sp, [5, 5, 8], [13, 13, 16]);
        let o = MetricOptions {
            nsd_tolerances: vec![1.5 * k],
            ..MetricOptions::default()
        };
        evaluate(&p, &r, &o).unwrap().labels[0]
            .distances
            .clone()
            .unwrap()
    };
    let one = at(1.0);
    for k in [1e-25, 1e-9, 1e9, 1e25] {
        let d = at(k);
        for (name, got, want) in [
            ("hd", d.hausdorff, one.hausdorff),
            ("hd95", d.percentile_hausdorff, one.percentile_hausdorff),
            ("assd", d.assd, one.assd),
            ("masd", d.masd, one.masd),
        ] {
            assert!(
                close(got, want * k, 1e-9 * k),
                "spacing x{k}: {name} {got} vs {}",
                want * k
            );
        }
        assert!(close(d.nsd[0], one.nsd[0], 1e-12), "spacing x{k}: nsd");
    }
    assert!(one.hausdorff > 2.0);
}

#[test]
fn test_spacing_anisotropy_beyond_the_grid_is_refused() {
    let e = LabelVolume::new(vec![0; 8], &[2, 2, 2], &[1.0, 1.0, 1e-16]).unwrap_err();
    assert!(e.to_string().contains("times the smallest"), "{e}");
    assert!(LabelVolume::new(vec![0; 8], &[2, 2, 2], &[1e-20, 1e-20, 1e-34]).is_ok());
}
