//! The MONAI conformance harness (`crates/segloss-conformance`) is strict: hand-written cases and
//! files with something it does not understand must fail, naming it, instead of running with a
//! default or being skipped; and its comparisons accept only what MONAI gives (shapes, NaN,
//! infinities).

use segloss_conformance as monai;

use burn::tensor::Device;
use segloss::Kernel;
use serde_json::{Value, json};

/// A small case for `loss` with `options`: a [1, 2, 3] probability input, a label map (without
/// channel axis for the Wasserstein loss), placeholder results.
fn case(loss: &str, options: Value) -> Value {
    let target = if loss == "GeneralizedWassersteinDiceLoss" {
        json!({"shape": [1, 3], "data": [0, 1, 0]})
    } else {
        json!({"shape": [1, 1, 3], "data": [0, 1, 0]})
    };
    let input = json!({"shape": [1, 2, 3], "data": [0.75, 0.25, 0.5, 0.25, 0.75, 0.5]});
    let grad = json!({"shape": [1, 2, 3], "data": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]});
    if loss == monai::DEEP_SUPERVISION {
        // One level: lists `inputs` / `grad_inputs`.
        return json!({
            "name": "hand_written",
            "options": options,
            "inputs": [input],
            "target": target,
            "expected": {"shape": [], "data": [0.0]},
            "grad_inputs": [grad],
        });
    }
    json!({
        "name": "hand_written",
        "options": options,
        "input": input,
        "target": target,
        "expected": {"shape": [], "data": [0.0]},
        "grad_input": grad,
    })
}

/// The error the harness gives for `case` of `loss`; panics if it runs the case without one.
fn rejected(loss: &str, case: &Value) -> String {
    let device = Device::flex().autodiff();
    match monai::run_case(loss, case, case, Kernel::Auto, &device) {
        Err(e) => e,
        Ok(r) => panic!("{loss}: the harness ran {case} ({r:?}) instead of rejecting it"),
    }
}

/// The options every loss needs to be built at all (the Wasserstein loss's distance matrix).
fn base(loss: &str) -> serde_json::Map<String, Value> {
    let mut o = serde_json::Map::new();
    if loss == "GeneralizedWassersteinDiceLoss" {
        o.insert("dist_matrix".into(), json!([[0.0, 1.0], [1.0, 0.0]]));
    } else if loss == monai::DEEP_SUPERVISION {
        o.insert(
            "loss".into(),
            json!({"name": "DiceLoss", "options": {"to_onehot_y": true}}),
        );
    } else if loss != "FocalLoss" {
        o.insert("to_onehot_y".into(), json!(true));
    }
    o
}

#[test]
fn an_unknown_option_fails_for_every_loss() {
    for &loss in monai::LOSSES {
        let mut o = base(loss);
        o.insert("frobnicate".into(), json!(true));
        let e = rejected(loss, &case(loss, Value::Object(o)));
        assert!(
            e.contains("options not understood") && e.contains("frobnicate"),
            "{loss}: {e}"
        );
    }
}

#[test]
fn an_option_of_another_loss_fails() {
    // MONAI's Wasserstein loss takes neither `to_onehot_y` nor `batch`; the focal loss no `smooth_nr`;
    // MaskedDiceLoss no `ignore_index`.
    for (loss, k, v) in [
        ("GeneralizedWassersteinDiceLoss", "to_onehot_y", json!(true)),
        ("GeneralizedWassersteinDiceLoss", "batch", json!(false)),
        ("FocalLoss", "smooth_nr", json!(0.0)),
        ("MaskedDiceLoss", "ignore_index", json!(255)),
        ("GeneralizedDiceLoss", "weight", json!([1.0, 2.0])),
        ("HausdorffDTLoss", "smooth_nr", json!(1e-5)),
        ("LogHausdorffDTLoss", "ignore_index", json!(255)),
        ("BoundaryLoss", "alpha", json!(2.0)),
        // MONAI's `other_act` is a Python callable, which has no JSON form to map.
        ("HausdorffDTLoss", "other_act", json!("tanh")),
    ] {
        let mut o = base(loss);
        o.insert(k.into(), v);
        let e = rejected(loss, &case(loss, Value::Object(o)));
        assert!(
            e.contains("options not understood") && e.contains(k),
            "{loss} {k}: {e}"
        );
    }
}

#[test]
fn an_unknown_string_value_fails_instead_of_falling_back() {
    for (loss, k, v) in [
        ("GeneralizedDiceLoss", "w_type", "cubic"),
        ("GeneralizedDiceFocalLoss", "w_type", "Square"),
        ("GeneralizedWassersteinDiceLoss", "weighting_mode", "gdl"),
        ("DiceLoss", "reduction", "average"),
        ("FocalLoss", "reduction", "max"),
        ("GeneralizedWassersteinDiceLoss", "reduction", "batchmean"),
        ("BoundaryLoss", "reduction", "mean_batch"),
    ] {
        let mut o = base(loss);
        o.insert(k.into(), json!(v));
        let e = rejected(loss, &case(loss, Value::Object(o)));
        assert!(
            e.contains(k) && e.contains(v) && e.contains("is not one of"),
            "{loss} {k} = {v}: {e}"
        );
    }
}

#[test]
fn an_option_of_the_wrong_type_fails() {
    for (loss, k, v) in [
        ("DiceLoss", "batch", json!("yes")),
        ("TverskyLoss", "alpha", json!("0.3")),
        ("DiceLoss", "weight", json!({"a": 1})),
        ("DiceLoss", "ignore_index", json!(2.5)),
        ("GeneralizedDiceLoss", "w_type", json!(2)),
        ("HausdorffDTLoss", "alpha", json!("2")),
        (
            "GeneralizedWassersteinDiceLoss",
            "dist_matrix",
            json!([[0.0, "far"], [1.0, 0.0]]),
        ),
    ] {
        let mut o = base(loss);
        o.insert(k.into(), v.clone());
        let e = rejected(loss, &case(loss, Value::Object(o)));
        assert!(
            e.contains(&format!("option `{k}`")),
            "{loss} {k} = {v}: {e}"
        );
    }
}

#[test]
fn softmax_and_sigmoid_both_true_fail() {
    for loss in [
        "DiceLoss",
        "MaskedDiceLoss",
        "GeneralizedDiceLoss",
        "TverskyLoss",
        "DiceCELoss",
        "DiceFocalLoss",
        "GeneralizedDiceFocalLoss",
        "HausdorffDTLoss",
        "LogHausdorffDTLoss",
        "BoundaryLoss",
    ] {
        let mut o = base(loss);
        o.insert("softmax".into(), json!(true));
        o.insert("sigmoid".into(), json!(true));
        let e = rejected(loss, &case(loss, Value::Object(o)));
        assert!(
            e.contains("`softmax` and `sigmoid` are both true"),
            "{loss}: {e}"
        );
    }
}

#[test]
fn an_unknown_loss_fails_with_its_name() {
    // MONAI's structural-similarity loss: an image loss, not one segloss has.
    let e = rejected("SSIMLoss", &case("SSIMLoss", json!({})));
    assert!(e.contains("unknown loss \"SSIMLoss\""), "{e}");
}

#[test]
fn dice_ce_with_reduction_none_fails_as_not_supported() {
    // MONAI 1.6.1's DiceCELoss refuses it too; the Dice-focal compounds have an unreduced form
    // (their MONAI cases in fixtures/monai/compound_none_*.json run).
    let loss = "DiceCELoss";
    let mut o = base(loss);
    o.insert("reduction".into(), json!("none"));
    let e = rejected(loss, &case(loss, Value::Object(o)));
    assert!(e.contains("reduction \"none\" is not supported"), "{e}");
}

#[test]
fn segloss_refusing_the_options_fails_the_case() {
    let e = rejected(
        "DiceLoss",
        &case("DiceLoss", json!({"to_onehot_y": true, "smooth_dr": -1.0})),
    );
    assert!(
        e.contains("segloss refuses the options") && e.contains("smooth_dr"),
        "{e}"
    );
    for loss in ["HausdorffDTLoss", "LogHausdorffDTLoss"] {
        let e = rejected(
            loss,
            &case(loss, json!({"to_onehot_y": true, "alpha": -1.0})),
        );
        assert!(
            e.contains("segloss refuses the options") && e.contains(loss) && e.contains("alpha"),
            "{e}"
        );
    }
}

/// An option a case leaves out takes MONAI's default for that loss: `include_background` is
/// `false` for the Hausdorff DT losses and `true` for the boundary loss, `alpha` is 2. A MONAI
/// case that sets the default explicitly still passes without it, and fails with the opposite.
#[test]
fn absent_options_take_monais_defaults_for_the_distance_losses() {
    let device = Device::flex().autodiff();
    for (file, option, default) in [
        ("hausdorff_dt_loss.json", "include_background", json!(false)),
        (
            "log_hausdorff_dt_loss.json",
            "include_background",
            json!(false),
        ),
        ("boundary_loss.json", "include_background", json!(true)),
        ("hausdorff_dt_loss.json", "alpha", json!(2.0)),
        ("log_hausdorff_dt_loss.json", "alpha", json!(2.0)),
    ] {
        let path = format!("{}/tests/fixtures/monai/{file}", env!("CARGO_MANIFEST_DIR"));
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let loss = json["loss"].as_str().unwrap();
        // A case with the default whose value it changes: a reduced value that is not 0.
        let c = json["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["options"][option] == default && c["options"]["reduction"] != "none")
            .unwrap_or_else(|| panic!("{file}: no case with {option} = {default}"));
        let mut without = c.clone();
        without["options"].as_object_mut().unwrap().remove(option);
        monai::run_case(loss, &without, &without, Kernel::Auto, &device)
            .unwrap_or_else(|e| panic!("{file} without {option}: {e}"));
        let mut other = c.clone();
        other["options"][option] = match &default {
            Value::Bool(b) => json!(!b),
            _ => json!(3.0),
        };
        let e = rejected(loss, &other);
        assert!(
            e.starts_with("value") || e.starts_with("gradient"),
            "{file} {option}: {e}"
        );
    }
}

#[test]
fn unknown_or_malformed_case_fields_fail() {
    let mut c = case("DiceLoss", json!({"to_onehot_y": true}));
    c["tolerance"] = json!(1e-3);
    assert!(rejected("DiceLoss", &c).contains("case field `tolerance` not understood"));
    let mut c = case("DiceLoss", json!({"to_onehot_y": true}));
    c["mask"] = json!({"shape": [1, 1, 3], "data": [1, 1, 0]});
    assert!(rejected("DiceLoss", &c).contains("does not take"));
    let mut c = case("DiceLoss", json!({"to_onehot_y": true}));
    c.as_object_mut().unwrap().remove("grad_input");
    assert!(rejected("DiceLoss", &c).contains("no `grad_input`"));
    let mut c = case("DiceLoss", json!({"to_onehot_y": true}));
    c["input"]["data"] = json!([0.5, 0.5]);
    let e = rejected("DiceLoss", &c);
    assert!(e.contains("shape [1, 2, 3] (6 values) but 2 values"), "{e}");
    let mut c = case("DiceLoss", json!({"to_onehot_y": true}));
    c["expected"]["data"] = json!(["nan"]);
    let e = rejected("DiceLoss", &c);
    assert!(e.contains("not a number, null (NaN)"), "{e}");
    let mut c = case("DiceLoss", json!({"to_onehot_y": true}));
    c["target"]["data"] = json!([0, 0.5, 1]);
    let e = rejected("DiceLoss", &c);
    assert!(e.contains("not a class index"), "{e}");
}

#[test]
fn file_fields_are_checked() {
    let cases = json!([]);
    let ok = json!({"generator": "MONAI 1.6.1", "seed": 1, "loss": "DiceLoss", "cases": cases});
    assert!(matches!(monai::loss_set(&ok), Ok(Some(("DiceLoss", _)))));
    // Extra file-level fields are metadata (the shared format: "ignore fields you do not know"),
    // as in the smp / nnU-Net sets' `library`.
    let with_library = json!({"library": "smp 0.6.0", "loss": "DiceLoss", "cases": cases});
    assert!(matches!(
        monai::loss_set(&with_library),
        Ok(Some(("DiceLoss", _)))
    ));
    assert!(matches!(
        monai::loss_set(&json!({"loss": "metrics", "cases": [], "extra": 1})),
        Ok(None)
    ));
    for (file, want) in [
        (json!({"cases": []}), "no `loss` field"),
        (json!({"loss": 3, "cases": []}), "`loss` is 3"),
        (json!({"loss": "DiceLoss"}), "no `cases` field"),
        (json!({"loss": "DiceLoss", "cases": {"a": 1}}), "`cases` is"),
        (
            json!({"loss": "DiceLoss", "cases": [], "seed": "x"}),
            "`seed` is \"x\"",
        ),
        (
            json!({"loss": "DiceLoss", "cases": [], "generator": 1}),
            "`generator` is 1",
        ),
        (json!([1, 2]), "not a JSON object"),
    ] {
        let e = monai::loss_set(&file).expect_err(&file.to_string());
        assert!(e.contains(want), "{file}: {e}");
    }
}

#[test]
fn an_infinity_matches_only_the_same_infinity_and_nan_only_nan() {
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    assert!(monai::compare(&[inf, -inf, nan, 1.0], &[inf, -inf, nan, 1.0]).is_ok());
    for (ours, monai) in [
        (-inf, inf),
        (1e300, inf),
        (inf, 1.0),
        (nan, inf),
        (inf, nan),
        (0.0, nan),
        (nan, 0.0),
        (inf, -inf),
    ] {
        assert!(
            monai::compare(&[ours], &[monai]).is_err(),
            "ours {ours} accepted for MONAI {monai}"
        );
    }
    assert!(monai::compare(&[1.0, 2.0], &[1.0]).is_err());
}

/// The first `reduction = "none"` case of a fixture file.
fn fixture_case(file: &str) -> (String, Value) {
    let path = format!("{}/tests/fixtures/monai/{file}", env!("CARGO_MANIFEST_DIR"));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let loss = json["loss"].as_str().unwrap().to_string();
    let case = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["options"]["reduction"] == "none")
        .unwrap()
        .clone();
    (loss, case)
}

#[test]
fn shapes_are_compared_not_only_lengths() {
    let device = Device::flex().autodiff();
    for file in [
        "dice_loss.json",
        "generalized_dice_loss.json",
        "tversky_loss.json",
        "focal_loss.json",
        "generalized_wasserstein_dice_loss.json",
        "hausdorff_dt_loss.json",
        "log_hausdorff_dt_loss.json",
        "boundary_loss.json",
    ] {
        let (loss, c) = fixture_case(file);
        monai::run_case(&loss, &c, &c, Kernel::Auto, &device)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        // The same values with the expected loss flattened: same length, another shape.
        let mut flat = c.clone();
        let n = c["expected"]["data"].as_array().unwrap().len();
        flat["expected"]["shape"] = json!([n]);
        if flat["expected"]["shape"] != c["expected"]["shape"] {
            let e = rejected(&loss, &flat);
            assert!(e.starts_with("value shape"), "{file}: {e}");
        }
        let mut flat = c.clone();
        let n = c["grad_input"]["data"].as_array().unwrap().len();
        flat["grad_input"]["shape"] = json!([n]);
        let e = rejected(&loss, &flat);
        assert!(e.starts_with("gradient shape"), "{file}: {e}");
    }
}
