//! `segloss train`, `predict` and `compare` end to end: tiny runs write their outputs, the
//! train -> predict -> eval workflow holds together, bad arguments fail clearly.

use std::path::Path;
use std::process::Command;

use ndarray::Array3;
use nifti::writer::WriterOptions;
use nifti::{IntoNdArray, NiftiHeader, NiftiObject, ReaderOptions};

fn segloss() -> Command {
    Command::new(env!("CARGO_BIN_EXE_segloss"))
}

#[test]
fn a_tiny_run_writes_metrics_checkpoints_and_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = segloss()
        .args([
            "train",
            "--size",
            "16",
            "--width",
            "4",
            "--depth",
            "2",
            "--epochs",
            "2",
            "--steps-per-epoch",
            "2",
            "--loss",
            "dice",
        ])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not a terminal: one plain line per epoch with the per-class validation Dice.
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("epoch")).count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("validation Dice [1: "), "{stdout}");
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(dir.path().join("model.bpk").is_file());
    assert!(dir.path().join("checkpoints/epoch-2.bpk").is_file());
}

#[test]
fn bad_arguments_fail_with_a_message_and_exit_code_2() {
    let out = segloss()
        .args(["train", "--loss", "dicey"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown loss `dicey`; choose one of: dice, gdl, dice-ce"),
        "{stderr}"
    );

    // A size too small for the built-in data is explained with the size given, the minimum and
    // why (not with an internal setting's name).
    for size in ["4", "8"] {
        let out = segloss().args(["train", "--size", size]).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "--size {size}: the built-in volumes must be at least 10 voxels on a side (their small spheres have a radius of up to 2.5 voxels"
            )) && !stderr.contains("sphere_radius"),
            "{stderr}"
        );
    }

    let out = segloss()
        .args(["train", "--size", "18", "--depth", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("must be divisible by 2^(depth - 1) = 4"),
        "{stderr}"
    );
}

/// A tiny run on the built-in data in `dir` (16^3 volumes, small network).
fn tiny_run(dir: &Path, loss: &str) {
    let out = segloss()
        .args([
            "train",
            "--size",
            "16",
            "--width",
            "4",
            "--depth",
            "2",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--loss",
            loss,
        ])
        .arg("--out")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_u8_labels(path: &Path) -> (Vec<u8>, Vec<u16>) {
    let obj = ReaderOptions::new().read_file(path).unwrap();
    let dims = obj.header().dim.to_vec();
    let data = obj.into_volume().into_ndarray::<u8>().unwrap();
    (data.iter().copied().collect(), dims)
}

#[test]
fn train_predict_eval_is_one_workflow_on_the_builtin_set_and_on_a_nifti_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    tiny_run(&run, "dice-ce");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["classes"], 4);
    assert_eq!(card["normalization"], "none");

    // The built-in validation set: images, predictions and references as NIfTI.
    let pred = dir.path().join("pred");
    let out = segloss()
        .arg("predict")
        .arg("--model")
        .arg(&run)
        .arg("--out")
        .arg(&pred)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("predicted 8 built-in validation volumes"),
        "{stdout}"
    );
    for sub in ["images", "predictions", "references"] {
        assert_eq!(
            std::fs::read_dir(pred.join(sub)).unwrap().count(),
            8,
            "{sub}"
        );
    }
    // ... which `segloss eval` scores without complaint (same geometry), one row per case and class.
    let out = segloss()
        .args(["eval", "--format", "csv", "--metrics", "dice"])
        .arg("--pred-dir")
        .arg(pred.join("predictions"))
        .arg("--ref-dir")
        .arg(pred.join("references"))
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{csv}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("valid-")).count(),
        8 * 3,
        "one row per case and label: {csv}"
    );

    // A NIfTI file in, a label map out: the same labels as the built-in prediction of that volume,
    // on the same grid.
    let single = dir.path().join("single.nii.gz");
    let out = segloss()
        .arg("predict")
        .arg("--model")
        .arg(&run)
        .arg("--out")
        .arg(&single)
        .arg(pred.join("images/valid-003.nii.gz"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, dims_a) = read_u8_labels(&single);
    let (b, dims_b) = read_u8_labels(&pred.join("predictions/valid-003.nii.gz"));
    assert_eq!(dims_a, dims_b);
    assert_eq!(a, b);
    let (reference, _) = read_u8_labels(&pred.join("references/valid-003.nii.gz"));
    assert_eq!(reference.len(), 16 * 16 * 16);
    assert!(reference.iter().all(|&l| l < 4) && a.iter().all(|&l| l < 4));
}

/// Writes `cases` built-in volumes as NIfTI images and label maps (nnU-Net names: `case_0000`
/// images, `case` labels), cropped to `shape_zyx`, with a non-unit spacing.
fn write_nifti_cases(images: &Path, labels: &Path, cases: usize, shape_zyx: [usize; 3]) {
    use segloss_train::data::{Split, SyntheticConfig};
    std::fs::create_dir_all(images).unwrap();
    std::fs::create_dir_all(labels).unwrap();
    let cfg = SyntheticConfig {
        size: 16,
        ..Default::default()
    };
    let [nz, ny, nx] = shape_zyx;
    for i in 0..cases {
        let v = cfg.volume(Split::Train, i);
        let at = |z: usize, y: usize, x: usize| (z * 16 + y) * 16 + x;
        let header = NiftiHeader {
            pixdim: [1.0, 0.8, 0.8, 1.5, 1.0, 1.0, 1.0, 1.0],
            ..NiftiHeader::default()
        };
        // Intensities scaled and shifted: training normalises them per volume.
        let img = Array3::from_shape_fn((nx, ny, nz), |(x, y, z)| {
            100.0 + 40.0 * v.image[at(z, y, x)]
        });
        let lab = Array3::from_shape_fn((nx, ny, nz), |(x, y, z)| v.labels[at(z, y, x)]);
        WriterOptions::new(images.join(format!("case{i}_0000.nii.gz")))
            .reference_header(&header)
            .write_nifti(&img)
            .unwrap();
        WriterOptions::new(labels.join(format!("case{i}.nii.gz")))
            .reference_header(&header)
            .write_nifti(&lab)
            .unwrap();
    }
}

#[test]
fn training_on_nifti_folders_then_predicting_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (images, labels) = (dir.path().join("imagesTr"), dir.path().join("labelsTr"));
    write_nifti_cases(&images, &labels, 3, [12, 16, 14]);
    let run = dir.path().join("run");
    let out = segloss()
        .args([
            "train",
            "--size",
            "8",
            "--width",
            "4",
            "--depth",
            "2",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--valid-fraction",
            "0.34",
        ])
        .arg("--images")
        .arg(&images)
        .arg("--labels")
        .arg(&labels)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("NIfTI images from"), "{stdout}");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["normalization"], "zscore");
    assert_eq!(card["classes"], 4);
    assert!(card["synthetic"].is_null());

    // Predict the whole folder: one label map per image, same grid (odd sizes are padded inside).
    let pred = dir.path().join("pred");
    let out = segloss()
        .arg("predict")
        .arg("--model")
        .arg(&run)
        .arg("--out")
        .arg(&pred)
        .arg(&images)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..3 {
        let p = ReaderOptions::new()
            .read_file(pred.join(format!("case{i}_0000.nii.gz")))
            .unwrap();
        let r = ReaderOptions::new()
            .read_file(labels.join(format!("case{i}.nii.gz")))
            .unwrap();
        assert_eq!(p.header().dim, r.header().dim);
        assert_eq!(p.header().pixdim[1..4], r.header().pixdim[1..4]);
    }
    // The built-in validation set is not there for a NIfTI-trained model.
    let out = segloss()
        .arg("predict")
        .arg("--model")
        .arg(&run)
        .arg("--out")
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("trained on NIfTI data"));
}

fn fails_with(args: &[&std::ffi::OsStr], expected: &str) {
    let out = segloss().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(expected),
        "{args:?}: expected `{expected}` in: {stderr}"
    );
}

#[test]
fn bad_data_and_model_arguments_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let os = |s: &str| std::ffi::OsString::from(s);
    let p = |p: &Path| p.as_os_str().to_owned();
    let missing = dir.path().join("nope");
    fails_with(
        &[
            &os("train"),
            &os("--images"),
            &p(&missing),
            &os("--labels"),
            &p(&missing),
        ],
        "--images: ",
    );
    fails_with(&[&os("train"), &os("--images"), &p(dir.path())], "--labels");

    // Image and label map of different shapes.
    let (images, labels) = (dir.path().join("i"), dir.path().join("l"));
    write_nifti_cases(&images, &labels, 2, [12, 16, 14]);
    let header = NiftiHeader::default();
    WriterOptions::new(labels.join("case1.nii.gz"))
        .reference_header(&header)
        .write_nifti(&Array3::<u8>::zeros((14, 16, 11)))
        .unwrap();
    let args = [
        os("train"),
        os("--size"),
        os("8"),
        os("--depth"),
        os("2"),
        os("--images"),
        p(&images),
        os("--labels"),
        p(&labels),
    ];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    fails_with(&refs, "has shape [14, 16, 12] but its label map");
    // An image without a label map.
    std::fs::remove_file(labels.join("case1.nii.gz")).unwrap();
    fails_with(&refs, "no label map for image");

    // predict: no model folder, unknown input, unknown device; compare: unknown loss.
    fails_with(
        &[
            &os("predict"),
            &os("--model"),
            &p(&missing),
            &os("--out"),
            &p(dir.path()),
        ],
        "model.json",
    );
    fails_with(
        &[&os("train"), &os("--device"), &os("tpu")],
        "unknown device `tpu`",
    );
    fails_with(
        &[&os("compare"), &os("--losses"), &os("dice,dicey")],
        "unknown loss `dicey`",
    );
}

#[test]
fn compare_writes_a_report_with_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = segloss()
        .args([
            "compare",
            "--losses",
            "dice,dice-ce",
            "--size",
            "16",
            "--width",
            "2",
            "--depth",
            "2",
            "--epochs",
            "2",
            "--steps-per-epoch",
            "1",
        ])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        report.contains(
            "| loss | large blob | medium ellipsoids | small spheres | mean | seconds per epoch |"
        ),
        "{report}"
    );
    assert!(
        report.contains("\n| dice |") && report.contains("\n| dice-ce |"),
        "{report}"
    );
    for png in ["validation_dice.png", "training_loss.png"] {
        let bytes = std::fs::read(dir.path().join(png)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{png}");
    }
    for loss in ["dice", "dice-ce"] {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(loss).join("metrics.csv"))
                .unwrap()
                .lines()
                .count(),
            3
        );
    }
    // The report is rebuilt from the runs' metrics.csv without training, identically: the runs
    // found in --out, described with the options they were trained with (their model.json),
    // whatever today's command line says.
    assert!(
        report.contains("(width 2, depth 2)") && report.contains("2 epochs of 1 Adam steps"),
        "{report}"
    );
    std::fs::remove_file(dir.path().join("report.md")).unwrap();
    let out = segloss()
        .args([
            "compare",
            "--report-only",
            "--size",
            "32",
            "--width",
            "8",
            "--epochs",
            "20",
            "--lr",
            "0.5",
        ])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rebuilt = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    // Same except the seconds per epoch, which the CSV keeps to the millisecond.
    let strip = |s: &str| {
        s.lines()
            .map(|l| l.rsplit_once(" | ").map_or(l, |(a, _)| a).to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&rebuilt), strip(&report));
    // Without runs there is nothing to rebuild from.
    fails_with(
        &[
            std::ffi::OsStr::new("compare"),
            std::ffi::OsStr::new("--report-only"),
            std::ffi::OsStr::new("--out"),
            dir.path().join("none").as_os_str(),
        ],
        "metrics.csv",
    );
}
