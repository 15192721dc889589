//! `segloss eval` end to end: the built binary on small NIfTI files written to a temp folder.

use std::path::{Path, PathBuf};

use ndarray::Array3;
use nifti::NiftiHeader;
use nifti::writer::WriterOptions;
use serde_json::Value;

mod common;
use common::{s, segloss, stderr, stdout};

/// Writes a label image; `f(z, y, x)` gives the label. `spacing` and `origin` are header order
/// (x, y, z).
fn write_labels(
    path: &Path,
    dims_zyx: [usize; 3],
    spacing_xyz: [f32; 3],
    origin_xyz: [f32; 3],
    f: impl Fn(usize, usize, usize) -> u8,
) {
    let [nz, ny, nx] = dims_zyx;
    let data = Array3::from_shape_fn((nx, ny, nz), |(x, y, z)| f(z, y, x));
    let header = NiftiHeader {
        pixdim: [
            1.0,
            spacing_xyz[0],
            spacing_xyz[1],
            spacing_xyz[2],
            1.0,
            1.0,
            1.0,
            1.0,
        ],
        sform_code: 1,
        srow_x: [spacing_xyz[0], 0.0, 0.0, origin_xyz[0]],
        srow_y: [0.0, spacing_xyz[1], 0.0, origin_xyz[1]],
        srow_z: [0.0, 0.0, spacing_xyz[2], origin_xyz[2]],
        ..NiftiHeader::default()
    };
    WriterOptions::new(path)
        .reference_header(&header)
        .write_nifti(&data)
        .unwrap();
}

/// Reference: label 1 on a box, label 2 on another; prediction: both shifted by `shift` along x.
fn write_pair(dir: &Path, name: &str, shift: usize) -> (PathBuf, PathBuf) {
    let r = dir.join(format!("ref_{name}.nii.gz"));
    let p = dir.join(format!("pred_{name}.nii.gz"));
    let label = move |s: usize| {
        move |z: usize, y: usize, x: usize| {
            if (2..6).contains(&z) && (2..7).contains(&y) && (2 + s..8 + s).contains(&x) {
                1
            } else if (7..10).contains(&z) && (3..6).contains(&y) && (3 + s..6 + s).contains(&x) {
                2
            } else {
                0
            }
        }
    };
    write_labels(&r, [12, 10, 14], [1.0, 1.0, 2.0], [0.0; 3], label(0));
    write_labels(&p, [12, 10, 14], [1.0, 1.0, 2.0], [0.0; 3], label(shift));
    (p, r)
}

#[test]
fn test_table_output_lists_every_metric_per_label() {
    let dir = tempfile::tempdir().unwrap();
    let (p, r) = write_pair(dir.path(), "a", 1);
    let out = segloss(&["eval", s(&p), s(&r)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let header = text.lines().nth(1).unwrap();
    for col in [
        "case",
        "label",
        "dice",
        "iou",
        "hd",
        "hd95",
        "asd_pred_to_ref",
        "assd",
        "nsd@1",
    ] {
        assert!(
            header.split_whitespace().any(|c| c == col),
            "missing column {col} in {header}"
        );
    }
    // Label 1: a 4x5x6 box shifted by one voxel along x: Dice = 2 * 4*5*5 / (2 * 4*5*6) = 5/6.
    let row = text
        .lines()
        .find(|l| l.starts_with("pred_a ") && l.split_whitespace().nth(1) == Some("1"))
        .unwrap();
    let dice: f64 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!((dice - 5.0 / 6.0).abs() < 1e-4, "{row}");
    // HD of a one-voxel shift along x is the x spacing, 1.0 (header order x, y, z).
    let cols: Vec<&str> = header.split_whitespace().collect();
    let hd_at = cols.iter().position(|c| *c == "hd").unwrap();
    let hd: f64 = row.split_whitespace().nth(hd_at).unwrap().parse().unwrap();
    assert_eq!(hd, 1.0, "{row}");
    assert!(
        text.starts_with("boundary: inner boundary voxels"),
        "definitions are echoed: {text}"
    );
}

#[test]
fn test_csv_output_has_rows_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (p, r) = write_pair(dir.path(), "a", 2);
    let out = segloss(&[
        "eval",
        s(&p),
        s(&r),
        "--format",
        "csv",
        "--metrics",
        "dice,hd95,nsd",
        "--nsd-tolerance",
        "1,2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "case,label,pred_empty,ref_empty,tp,fp,fn,tn,dice,hd95,hd95_pred_to_ref,hd95_ref_to_pred,nsd@1,nsd@2"
    );
    // The run: and end: rows (quoted JSON in the case field) are not split here.
    assert!(
        text.lines().nth(1).unwrap().starts_with("\"run:{"),
        "{text}"
    );
    assert!(
        text.lines().last().unwrap().starts_with("\"end:{"),
        "{text}"
    );
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with('"'))
        .map(|l| l.split(',').collect())
        .collect();
    assert!(rows.iter().all(|r| r.len() == 14), "{text}");
    let label1 = rows
        .iter()
        .find(|r| r[0] == "pred_a" && r[1] == "1")
        .unwrap();
    // 4x5x6 box shifted by 2: tp = 4*5*4.
    assert_eq!(label1[4], "80");
    let dice: f64 = label1[8].parse().unwrap();
    assert!((dice - 160.0 / 240.0).abs() < 1e-12);
    assert!(rows.iter().any(|r| r[0] == "summary:mean" && r[1] == "1"));
    assert!(rows.iter().any(|r| r[0] == "summary:nan" && r[1] == "2"));
}

#[test]
fn test_json_output_and_worst_case_policy_for_missing_label() {
    let dir = tempfile::tempdir().unwrap();
    let (p, r) = write_pair(dir.path(), "a", 0);
    let out = segloss(&[
        "eval",
        s(&p),
        s(&r),
        "--format",
        "json",
        "--labels",
        "1,3",
        "--empty",
        "worst",
        "--worst-distance",
        "50",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let labels = doc["cases"][0]["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 2);
    assert_eq!(labels[0]["label"], 1);
    assert_eq!(labels[0]["metrics"]["dice"], 1.0);
    assert_eq!(labels[0]["metrics"]["hd"], 0.0);
    // Label 3 is in neither volume: flagged, and scored as perfect under the worst-case policy.
    assert_eq!(labels[1]["pred_empty"], true);
    assert_eq!(labels[1]["ref_empty"], true);
    assert_eq!(labels[1]["metrics"]["dice"], 1.0);
    assert_eq!(doc["options"]["percentile"], 95.0);
    assert_eq!(doc["failures"].as_array().unwrap().len(), 0);
    // Under the default (MONAI) policy the same label is NaN, written as null.
    let out = segloss(&["eval", s(&p), s(&r), "--format", "json", "--labels", "3"]);
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let m = &doc["cases"][0]["labels"][0]["metrics"];
    assert!(m["dice"].is_null() && m["hd"].is_null(), "{m}");
    assert_eq!(doc["summary"][0]["metrics"]["dice"]["nan"], 1);
}

#[test]
fn test_folder_with_corrupt_file_and_missing_counterpart() {
    let dir = tempfile::tempdir().unwrap();
    let (pd, rd) = (dir.path().join("pred"), dir.path().join("ref"));
    std::fs::create_dir_all(&pd).unwrap();
    std::fs::create_dir_all(&rd).unwrap();
    let (p, r) = write_pair(dir.path(), "x", 1);
    for case in ["case1", "case2"] {
        std::fs::copy(&p, pd.join(format!("{case}.nii.gz"))).unwrap();
        std::fs::copy(&r, rd.join(format!("{case}.nii.gz"))).unwrap();
    }
    // A corrupt prediction and a prediction without reference.
    std::fs::write(pd.join("broken.nii.gz"), b"this is not a NIfTI file").unwrap();
    std::fs::copy(&r, rd.join("broken.nii.gz")).unwrap();
    std::fs::copy(&p, pd.join("lonely.nii.gz")).unwrap();
    // Two cases at a time (--jobs) must give the same report order.
    let out = segloss(&[
        "eval",
        "--pred-dir",
        s(&pd),
        "--ref-dir",
        s(&rd),
        "--format",
        "json",
        "--jobs",
        "2",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "some cases failed: {}",
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("broken.nii.gz"),
        "the corrupt file is named: {err}"
    );
    assert!(
        err.contains("no reference file for prediction") && err.contains("lonely.nii.gz"),
        "{err}"
    );
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let done: Vec<&str> = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["case"].as_str().unwrap())
        .collect();
    assert_eq!(
        done,
        ["case1", "case2"],
        "the other cases are still evaluated"
    );
    let failed: Vec<&str> = doc["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["case"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["broken", "lonely"]);
    // The summary covers the two good cases.
    assert_eq!(doc["summary"][0]["metrics"]["dice"]["n"], 2);
}

#[test]
fn test_mismatched_geometry_fails_unless_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r.nii");
    let shape_p = dir.path().join("shape.nii");
    let spacing_p = dir.path().join("spacing.nii");
    let origin_p = dir.path().join("origin.nii");
    let f = |z: usize, y: usize, x: usize| {
        u8::from((2..5).contains(&z) && (2..5).contains(&y) && (2..5).contains(&x))
    };
    write_labels(&r, [8, 8, 8], [1.0, 1.0, 1.0], [0.0; 3], f);
    write_labels(&shape_p, [8, 8, 9], [1.0, 1.0, 1.0], [0.0; 3], f);
    write_labels(&spacing_p, [8, 8, 8], [1.0, 1.0, 2.0], [0.0; 3], f);
    write_labels(&origin_p, [8, 8, 8], [1.0, 1.0, 1.0], [5.0, 0.0, 0.0], f);

    let out = segloss(&["eval", s(&shape_p), s(&r)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("shape differs"), "{}", stderr(&out));
    let out = segloss(&["eval", s(&shape_p), s(&r), "--ignore-geometry"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a different shape is never accepted"
    );

    let out = segloss(&["eval", s(&spacing_p), s(&r)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("spacing differs"), "{}", stderr(&out));
    let out = segloss(&["eval", s(&spacing_p), s(&r), "--ignore-spacing"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = segloss(&["eval", s(&origin_p), s(&r)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("origin differs"), "{}", stderr(&out));
    let out = segloss(&["eval", s(&origin_p), s(&r), "--ignore-position"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn test_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (p, r) = write_pair(dir.path(), "a", 1);
    // Unknown metric name (clap), bad percentile (library validation), missing folder.
    let out = segloss(&["eval", s(&p), s(&r), "--metrics", "dise"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("dice"),
        "suggests the right name: {}",
        stderr(&out)
    );
    let out = segloss(&["eval", s(&p), s(&r), "--percentile", "120"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("percentile must be in [0, 100], got 120"),
        "{}",
        stderr(&out)
    );
    let missing = dir.path().join("nope");
    let out = segloss(&[
        "eval",
        "--pred-dir",
        s(&missing),
        "--ref-dir",
        s(dir.path()),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read folder"),
        "{}",
        stderr(&out)
    );
    let out = segloss(&["eval", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("Exit codes:"),
        "exit codes are documented in --help"
    );
}

#[test]
fn test_output_file_and_surfel_option() {
    let dir = tempfile::tempdir().unwrap();
    let (p, r) = write_pair(dir.path(), "a", 1);
    let report = dir.path().join("report.json");
    let out = segloss(&[
        "eval",
        s(&p),
        s(&r),
        "--boundary",
        "surfels",
        "--format",
        "json",
        "-o",
        s(&report),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(doc["options"]["boundary"], "Surfels");
    let hd = doc["cases"][0]["labels"][0]["metrics"]["hd"]
        .as_f64()
        .unwrap();
    assert_eq!(hd, 1.0, "a one-voxel shift of 1 mm along x");
}
