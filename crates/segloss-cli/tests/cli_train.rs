//! `segloss train`: a tiny run writes its outputs; bad arguments fail clearly.

use std::process::Command;

fn segloss() -> Command {
    Command::new(env!("CARGO_BIN_EXE_segloss"))
}

#[test]
fn a_tiny_run_writes_metrics_checkpoints_and_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = segloss()
        .args(["train", "--size", "16", "--width", "4", "--depth", "2", "--epochs", "2", "--steps-per-epoch", "2", "--loss", "dice"])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // Not a terminal: one plain line per epoch with the per-class validation Dice.
    assert_eq!(stdout.lines().filter(|l| l.starts_with("epoch")).count(), 2, "{stdout}");
    assert!(stdout.contains("validation Dice [1: "), "{stdout}");
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(dir.path().join("model.bpk").is_file());
    assert!(dir.path().join("checkpoints/epoch-2.bpk").is_file());
}

#[test]
fn bad_arguments_fail_with_a_message_and_exit_code_2() {
    let out = segloss().args(["train", "--loss", "dicey"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown loss `dicey`; choose one of: dice, gdl, dice-ce"), "{stderr}");

    let out = segloss().args(["train", "--size", "4"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`size` must be at least 8, got 4"), "{stderr}");

    let out = segloss().args(["train", "--size", "18", "--depth", "3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must be divisible by 2^(depth - 1) = 4"), "{stderr}");
}
