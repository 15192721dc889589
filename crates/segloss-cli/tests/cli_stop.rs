//! `segloss train`, `predict` and `compare` when they are cut short or pointed at existing
//! files: a closed stdout, a full disk behind `>`, SIGINT, an output folder that holds an earlier
//! run, an output that is an input, a corrupt input among good ones, a diverging learning rate.
//! Each test runs the real binary on tiny settings.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

fn segloss() -> Command {
    Command::new(env!("CARGO_BIN_EXE_segloss"))
}

/// A tiny network on 16^3 built-in volumes, one step per epoch.
const TINY: [&str; 8] = [
    "--size",
    "16",
    "--width",
    "2",
    "--depth",
    "2",
    "--steps-per-epoch",
    "1",
];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `train` with [`TINY`] settings, `epochs` epochs, into `out`, plus `extra` arguments.
fn train_cmd(out: &Path, epochs: usize, extra: &[&str]) -> Command {
    let mut c = segloss();
    c.arg("train")
        .args(TINY)
        .args(["--epochs", &epochs.to_string(), "--loss", "dice"])
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

fn run_ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// The `metrics.csv` rows (epochs) of a run folder.
fn metric_rows(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .count()
        - 1
}

/// Checks that `run` holds exactly epochs 1..=k: k metric rows, checkpoints 1..=k, model.bpk.
fn holds_epochs(run: &Path, k: usize) {
    assert_eq!(metric_rows(run), k);
    assert!(run.join("model.bpk").is_file());
    for e in 1..=k {
        assert!(
            run.join(format!("checkpoints/epoch-{e}.bpk")).is_file(),
            "epoch {e}"
        );
    }
    assert!(
        !run.join(format!("checkpoints/epoch-{}.bpk", k + 1))
            .exists()
    );
    let temps: Vec<_> = std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".segloss-"))
        .collect();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
}

/// Spawns `c` with stdout piped, reads its first line, closes the pipe and waits: returns the
/// exit code and stderr.
fn first_line_then_close(mut c: Command) -> (Option<i32>, String, String) {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    drop(reader);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (child.wait().unwrap().code(), first, stderr)
}

#[test]
fn a_closed_stdout_stops_train_at_an_epoch_with_the_model_saved_and_exit_141() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // `segloss train | head -1`: 40 epochs planned, the pipe closes after the first line.
    let (code, first, stderr) = first_line_then_close(train_cmd(&run, 40, &[]));
    assert!(first.starts_with("training a 3D U-Net"), "{first}");
    assert_eq!(code, Some(141), "{stderr}");
    assert_eq!(stderr, "", "nothing on stderr");
    let k = metric_rows(&run);
    assert!((1..40).contains(&k), "stopped at an epoch boundary: {k}");
    holds_epochs(&run, k);
}

#[test]
fn a_full_disk_behind_stdout_only_loses_the_progress_lines() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = train_cmd(&run, 2, &[]).stdout(full).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stderr
            .matches("warning: cannot print progress to stdout")
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    holds_epochs(&run, 2);
}

/// Reads `child`'s stdout until a line starts with `prefix`.
fn wait_for_line(child: &mut Child, prefix: &str) -> BufReader<std::process::ChildStdout> {
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "no line starting with `{prefix}`"
        );
        if line.starts_with(prefix) {
            return reader;
        }
    }
}

fn interrupt(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn sigint_stops_train_and_compare_at_an_epoch_with_everything_before_it_saved() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut child = train_cmd(&run, 200, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = wait_for_line(&mut child, "epoch   1");
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    drop(reader);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let k = metric_rows(&run);
    assert!((1..200).contains(&k), "{k}");
    holds_epochs(&run, k);
    assert!(
        stderr.contains(&format!(
            "stopped: after epoch {k} of 200: {}/model.bpk is the model of epoch {k}",
            run.display()
        )),
        "{stderr}"
    );
    // The saved model predicts.
    run_ok({
        let mut c = segloss();
        c.arg("predict")
            .arg("--model")
            .arg(&run)
            .arg("--out")
            .arg(dir.path().join("pred"));
        c
    });

    // compare: interrupted during its first loss, the report of what finished is written.
    let cmp = dir.path().join("cmp");
    let mut child = segloss()
        .args(["compare", "--losses", "dice,dice-ce", "--epochs", "200"])
        .args(TINY)
        .arg("--out")
        .arg(&cmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = wait_for_line(&mut child, "      dice  epoch   1");
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    drop(reader);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("holds the report of dice ("), "{stderr}");
    let k = metric_rows(&cmp.join("dice"));
    holds_epochs(&cmp.join("dice"), k);
    assert!(!cmp.join("dice-ce").exists());
    let report = std::fs::read_to_string(cmp.join("report.md")).unwrap();
    assert!(
        report.contains(&format!("| dice (stopped after {k} of 200 epochs) |")),
        "{report}"
    );
    assert!(
        report.contains("stopped before dice-ce finished an epoch"),
        "{report}"
    );
    assert!(cmp.join("validation_dice.png").is_file());
}

#[test]
fn an_out_folder_with_a_run_is_refused_unless_overwrite_and_the_default_keeps_one_previous() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    run_ok(train_cmd(&run, 3, &[]));
    let model = std::fs::read(run.join("model.bpk")).unwrap();
    // Training again into it: refused, nothing touched.
    let out = train_cmd(&run, 1, &[]).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "already holds a training run (model.json, metrics.csv, model.bpk, checkpoints)"
        ) && stderr.contains("--overwrite"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(run.join("model.bpk")).unwrap(), model);
    holds_epochs(&run, 3);
    // --overwrite: the old run's files go first, so no epoch-2/3 checkpoints beside the new
    // one-epoch metrics.csv; other files in the folder stay.
    std::fs::write(run.join("notes.txt"), "mine").unwrap();
    run_ok(train_cmd(&run, 1, &["--overwrite"]));
    holds_epochs(&run, 1);
    assert!(run.join("notes.txt").is_file());

    // The default --out (runs/train), twice in a row: the second run keeps the first as
    // runs/train.previous.
    let train_default = || {
        let mut c = segloss();
        c.current_dir(dir.path())
            .arg("train")
            .args(TINY)
            .args(["--epochs", "1"]);
        c
    };
    run_ok(train_default());
    let first = std::fs::read(dir.path().join("runs/train/model.bpk")).unwrap();
    let out = run_ok(train_default());
    assert!(
        text(&out.stdout).contains("moved the previous run in runs/train to runs/train.previous"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read(dir.path().join("runs/train.previous/model.bpk")).unwrap(),
        first
    );
    holds_epochs(&dir.path().join("runs/train"), 1);
}

#[test]
fn a_diverging_learning_rate_stops_with_the_epoch_step_and_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    // Diverges in the first step: nothing finite to keep.
    let run = dir.path().join("run");
    let out = train_cmd(&run, 3, &["--lr", "1e30"]).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("training diverged at epoch 1, step 1: ")
            && stderr.contains("the learning rate 1e30 is probably too high: try a lower --lr")
            && stderr.contains("no epoch finished with finite values, so no model was saved"),
        "{stderr}"
    );
    assert!(!run.join("model.bpk").exists());
    assert!(!run.join("checkpoints/epoch-1.bpk").exists());
    assert_eq!(metric_rows(&run), 0, "no NaN row");

    // Diverges after the first epoch (weights grow by about the learning rate per Adam step
    // until the outputs overflow): the last finite epoch is kept as model.bpk, and said so.
    let run = dir.path().join("run2");
    let out = train_cmd(&run, 6, &["--lr", "3e11"]).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let k = metric_rows(&run);
    assert!((1..6).contains(&k), "{k}: {stderr}");
    assert!(
        stderr.contains(&format!("training diverged at epoch {}, step 1: ", k + 1))
            && stderr.contains(&format!(
                "kept {} (epoch {k}, the last with finite values) and saved it as {}",
                run.join(format!("checkpoints/epoch-{k}.bpk")).display(),
                run.join("model.bpk").display()
            )),
        "{stderr}"
    );
    holds_epochs(&run, k);
    assert_eq!(
        std::fs::read(run.join("model.bpk")).unwrap(),
        std::fs::read(run.join(format!("checkpoints/epoch-{k}.bpk"))).unwrap()
    );
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(!csv.contains("NaN") && !csv.contains("inf"), "{csv}");
}

#[test]
fn predict_refuses_clashing_outputs_and_goes_on_past_a_corrupt_image() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    run_ok(train_cmd(&run, 1, &[]));
    // Three images from the built-in validation set.
    let builtin = dir.path().join("builtin");
    run_ok({
        let mut c = segloss();
        c.arg("predict")
            .arg("--model")
            .arg(&run)
            .arg("--out")
            .arg(&builtin);
        c
    });
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        std::fs::copy(
            builtin.join(format!("images/valid-00{i}.nii.gz")),
            images.join(format!("{name}.nii.gz")),
        )
        .unwrap();
    }
    let predict = |args: &[&std::ffi::OsStr]| {
        let mut c = segloss();
        c.arg("predict").arg("--model").arg(&run).args(args);
        c.output().unwrap()
    };
    let a = images.join("a.nii.gz");
    let a_bytes = std::fs::read(&a).unwrap();

    // The output is the input: refused, the input untouched.
    let out = predict(&["--out".as_ref(), a.as_os_str(), a.as_os_str()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refusing to overwrite an input"),
        "{stderr}"
    );
    // The input folder as the output folder: refused too.
    let out = predict(&["--out".as_ref(), images.as_os_str(), images.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("refusing to overwrite an input"));
    assert_eq!(std::fs::read(&a).unwrap(), a_bytes);

    // Two inputs with the same file name from two folders: refused, both named.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(&a, other.join("a.nii.gz")).unwrap();
    let pred = dir.path().join("pred");
    let out = predict(&[
        "--out".as_ref(),
        pred.as_os_str(),
        a.as_os_str(),
        other.join("a.nii.gz").as_os_str(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} and {} would both be written to {}",
            a.display(),
            other.join("a.nii.gz").display(),
            pred.join("a.nii.gz").display()
        )),
        "{stderr}"
    );
    assert!(!pred.exists(), "nothing written");

    // A corrupt image among good ones: the others are predicted, the failure listed, exit 1.
    std::fs::write(images.join("b.nii.gz"), b"not a NIfTI file").unwrap();
    let out = predict(&["--out".as_ref(), pred.as_os_str(), images.as_os_str()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "1 of 3 images could not be predicted (the others were): {}",
            images.join("b.nii.gz").display()
        )),
        "{stderr}"
    );
    assert!(pred.join("a.nii.gz").is_file() && pred.join("c.nii.gz").is_file());
    assert!(!pred.join("b.nii.gz").exists());

    // A stdout already closed by its reader stops a folder prediction at the first volume
    // boundary: the first prediction is written whole, exit 141, nothing on stderr.
    std::fs::remove_file(images.join("b.nii.gz")).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = segloss()
        .arg("predict")
        .arg("--model")
        .arg(&run)
        .arg("--out")
        .arg(dir.path().join("pred2"))
        .arg(&images)
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!((out.status.code(), stderr.as_str()), (Some(141), ""));
    let written: Vec<_> = std::fs::read_dir(dir.path().join("pred2"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(written, ["a.nii.gz"]);
}

#[test]
fn compare_with_a_closed_stdout_stops_quietly_with_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let cmp = dir.path().join("cmp");
    let mut c = segloss();
    c.args(["compare", "--losses", "dice,dice-ce", "--epochs", "40"])
        .args(TINY)
        .arg("--out")
        .arg(&cmp);
    let (code, first, stderr) = first_line_then_close(c);
    assert!(first.starts_with("comparing 2 losses"), "{first}");
    assert_eq!(code, Some(141), "{stderr}");
    assert_eq!(stderr, "");
    assert!(cmp.join("report.md").is_file());
    holds_epochs(&cmp.join("dice"), metric_rows(&cmp.join("dice")));
}
