//! `segloss eval` on the real MNI tissue pair against MONAI 1.6.1's values in
//! `crates/segloss-metrics/tests/fixtures/expected_metrics.json` (provenance in the README next
//! to it).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../segloss-metrics/tests/fixtures")
}

#[test]
fn test_mni_pair_matches_monai_expected_metrics() {
    let dir = fixtures();
    let out = Command::new(env!("CARGO_BIN_EXE_segloss"))
        .arg("eval")
        .arg(dir.join("mni_tissue_prediction.nii.gz"))
        .arg(dir.join("mni_tissue_reference.nii.gz"))
        .args(["--format", "json", "--labels", "1,2"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected_metrics.json")).unwrap())
            .unwrap();
    let want = &expected["mni_tissue"]["monai_1.6.1"];
    let labels = doc["cases"][0]["labels"].as_array().unwrap();
    let pairs = [
        ("dice", "dice"),
        ("iou", "iou"),
        ("hausdorff", "hd"),
        ("hausdorff95", "hd95"),
        ("assd", "assd"),
        ("surface_dice_1mm", "nsd@1"),
    ];
    let mut failures = Vec::new();
    for (monai, ours) in pairs {
        for (i, label) in labels.iter().enumerate() {
            let w = want[monai][i].as_f64().unwrap();
            let g = label["metrics"][ours].as_f64().unwrap();
            // MONAI returns float32: 1e-4 relative.
            if (g - w).abs() > 1e-4 * w.abs() {
                failures.push(format!("label {} {monai}: segloss {g}, MONAI {w}", i + 1));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
