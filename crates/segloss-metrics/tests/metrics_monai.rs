//! Agreement with MONAI 1.6.1 on `tests/fixtures/metrics.json` (a copy of the project's
//! reference set `reference/monai/metrics.json`; provenance in `tests/fixtures/README.md`).
//!
//! Each case holds label volumes `(B, ...spatial)`, `num_classes`, `spacing` and MONAI's values
//! with shape `(B, C)`, background included. The generator
//! (`reference/tools/gen_reference.py::metric_cases`) called, per case:
//! `DiceMetric(include_background=True, ignore_empty=True/False)`, `MeanIoU`,
//! `GeneralizedDiceScore`, `HausdorffDistanceMetric(percentile=None/95)`,
//! `SurfaceDistanceMetric(symmetric=False/True)` and `SurfaceDiceMetric([1.0] * C)`, all with
//! `reduction="none"` and the case's spacing. `null` means NaN; `"inf"` infinity.

use segloss_metrics::{
    EmptyPolicy, GdsWeight, LabelVolume, MetricOptions, WorstDistance, evaluate,
    generalized_dice_per_label,
};
use serde_json::Value;

/// Relative tolerance of the issue (MONAI computes distances in float32), with an absolute floor
/// for values at 0.
const REL: f64 = 1e-4;
const ABS: f64 = 1e-6;

fn value(v: &Value) -> f64 {
    match v {
        Value::Null => f64::NAN,
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        other => other
            .as_f64()
            .unwrap_or_else(|| panic!("not a number: {other}")),
    }
}

fn agrees(got: f64, want: f64) -> bool {
    if want.is_nan() {
        return got.is_nan();
    }
    if want.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= REL * want.abs() + ABS
}

#[test]
fn test_all_metrics_agree_with_monai_reference_cases() {
    let text = include_str!("fixtures/metrics.json");
    let doc: Value = serde_json::from_str(text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 30);
    let mut checked = 0usize;
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let c = case["num_classes"].as_u64().unwrap() as u16;
        let spacing: Vec<f64> = case["spacing"]
            .as_array()
            .unwrap()
            .iter()
            .map(value)
            .collect();
        let shape: Vec<usize> = case["prediction"]["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let (b, spatial) = (shape[0], &shape[1..]);
        let n: usize = spatial.iter().product();
        let flat = |key: &str| -> Vec<i64> {
            case[key]["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| value(v) as i64)
                .collect()
        };
        let (p_all, r_all) = (flat("prediction"), flat("reference"));
        let labels: Vec<u16> = (0..c).collect();
        for bi in 0..b {
            let pred =
                LabelVolume::from_i64(&p_all[bi * n..(bi + 1) * n], spatial, &spacing).unwrap();
            let reference =
                LabelVolume::from_i64(&r_all[bi * n..(bi + 1) * n], spatial, &spacing).unwrap();
            let monai = MetricOptions {
                labels: Some(labels.clone()),
                ..MetricOptions::default()
            };
            let res = evaluate(&pred, &reference, &monai).unwrap();
            let keep = MetricOptions {
                labels: Some(labels.clone()),
                distances: false,
                empty: EmptyPolicy::WorstCase(WorstDistance::Diagonal),
                ..MetricOptions::default()
            };
            let res_keep = evaluate(&pred, &reference, &keep).unwrap();
            let counts: Vec<_> = res.labels.iter().map(|l| l.counts).collect();
            let gds = generalized_dice_per_label(&counts, GdsWeight::Square);
            for ci in 0..c as usize {
                let l = &res.labels[ci];
                let d = l.distances.as_ref().unwrap();
                let got = [
                    ("dice", l.dice),
                    ("dice_keep_empty", res_keep.labels[ci].dice),
                    ("iou", l.iou),
                    ("generalized_dice", gds[ci]),
                    ("hausdorff", d.hausdorff),
                    ("hausdorff95", d.percentile_hausdorff),
                    ("average_surface_distance", d.asd_pred_to_ref),
                    ("assd", d.assd),
                    ("surface_dice_1.0", d.nsd[0]),
                ];
                for (metric, g) in got {
                    let want = value(&case["expected"][metric]["data"][bi * c as usize + ci]);
                    checked += 1;
                    if !agrees(g, want) {
                        failures.push(format!(
                            "{name} b{bi} label {ci} {metric}: got {g}, MONAI {want}"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} values disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 700, "only {checked} values were compared");
}
