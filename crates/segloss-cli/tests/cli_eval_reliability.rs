//! `segloss eval` under the conditions of issue 17: outputs that would overwrite inputs, labels
//! absent from both images under `--empty worst`, interrupts (a real SIGINT) and `--resume`,
//! `--shard` / `--merge`, `--jobs` caps, file pairing, repeated options and I/O errors. Every
//! test runs the built binary on small NIfTI files written to a temporary folder.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ndarray::Array3;
use nifti::NiftiHeader;
use nifti::writer::WriterOptions;
use serde_json::Value;

mod common;
use common::{s, segloss, stderr, stdout};

/// Writes a label image of shape `[nz, ny, nx]` with 1 mm voxels; `f(z, y, x)` gives the label.
fn write_labels(path: &Path, dims_zyx: [usize; 3], f: impl Fn(usize, usize, usize) -> u8) {
    let [nz, ny, nx] = dims_zyx;
    let data = Array3::from_shape_fn((nx, ny, nz), |(x, y, z)| f(z, y, x));
    let header = NiftiHeader {
        pixdim: [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        sform_code: 1,
        srow_x: [1.0, 0.0, 0.0, 0.0],
        srow_y: [0.0, 1.0, 0.0, 0.0],
        srow_z: [0.0, 0.0, 1.0, 0.0],
        ..NiftiHeader::default()
    };
    WriterOptions::new(path)
        .reference_header(&header)
        .write_nifti(&data)
        .unwrap();
}

/// A box of `label` over x in `x0..x1` (z, y fixed at 2..6), background elsewhere.
fn boxes(parts: &[(u8, usize, usize)]) -> impl Fn(usize, usize, usize) -> u8 + '_ {
    move |z, y, x| {
        for &(label, x0, x1) in parts {
            if (2..6).contains(&z) && (2..6).contains(&y) && (x0..x1).contains(&x) {
                return label;
            }
        }
        0
    }
}

const DIMS: [usize; 3] = [8, 8, 24];

/// Writes case `name` into `pred/` and `ref/`: label 1 on x 2..8 in the reference, shifted by
/// `shift` in the prediction; with `label2`, label 2 on x 12..18 shifted by 2*`shift`.
fn write_case(dir: &Path, name: &str, shift: usize, label2: bool) {
    let (pd, rd) = (dir.join("pred"), dir.join("ref"));
    std::fs::create_dir_all(&pd).unwrap();
    std::fs::create_dir_all(&rd).unwrap();
    let r: Vec<(u8, usize, usize)> = if label2 {
        vec![(1, 2, 8), (2, 12, 18)]
    } else {
        vec![(1, 2, 8)]
    };
    let p: Vec<(u8, usize, usize)> = if label2 {
        vec![
            (1, 2 + shift, 8 + shift),
            (2, 12 + 2 * shift, 18 + 2 * shift),
        ]
    } else {
        vec![(1, 2 + shift, 8 + shift)]
    };
    write_labels(&rd.join(format!("{name}.nii.gz")), DIMS, boxes(&r));
    write_labels(&pd.join(format!("{name}.nii.gz")), DIMS, boxes(&p));
}

fn folder_args<'a>(dir: &'a Path, extra: &[&'a str]) -> Vec<String> {
    let mut v = vec![
        "eval".to_string(),
        "--pred-dir".into(),
        s(&dir.join("pred")).into(),
        "--ref-dir".into(),
        s(&dir.join("ref")).into(),
    ];
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

fn eval_folder(dir: &Path, extra: &[&str]) -> Output {
    let args = folder_args(dir, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    segloss(&refs)
}

/// The case rows of a CSV report (not the run:, failed:, summary or end: rows).
fn csv_case_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip(1)
        .filter(|l| !l.starts_with('"') && !l.contains("summary:") && !l.starts_with("end:"))
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn an_output_that_is_an_input_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), "a", 1, false);
    let pred = dir.path().join("pred/a.nii.gz");
    let reference = dir.path().join("ref/a.nii.gz");
    let before = std::fs::read(&pred).unwrap();
    let out = segloss(&["eval", s(&pred), s(&reference), "-o", s(&pred)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("refusing to overwrite an input") && err.matches("a.nii.gz").count() >= 2,
        "names the output and the input: {err}"
    );
    assert_eq!(std::fs::read(&pred).unwrap(), before, "the input is intact");
    // Any file of the folders, through another spelling of its path.
    let other = dir.path().join("pred/../ref/a.nii.gz");
    let out = eval_folder(dir.path(), &["-o", s(&other)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("refusing to overwrite an input"));
    assert!(
        std::fs::read(&reference)
            .unwrap()
            .starts_with(&[0x1f, 0x8b])
    );
    // A report file is written whole, with no temporary left beside it.
    let report = dir.path().join("report.csv");
    let out = eval_folder(dir.path(), &["-o", s(&report)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".segloss-")),
        "{names:?}"
    );
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(
        text.starts_with("case,label,"),
        "-o x.csv writes CSV: {text}"
    );
}

#[test]
fn labels_absent_from_both_images_get_rows_and_count_in_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    // Label 2 in cases a and b (Dice 4/6 and 0), absent from both images of c.
    write_case(dir.path(), "a", 1, true);
    write_case(dir.path(), "b", 6, true);
    write_case(dir.path(), "c", 1, false);
    let out = eval_folder(dir.path(), &["--empty", "worst", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let c = &doc["cases"][2];
    assert_eq!(c["case"], "c");
    let l2 = &c["labels"][1];
    assert_eq!(l2["label"], 2);
    assert_eq!(l2["pred_empty"], true);
    assert_eq!(l2["ref_empty"], true);
    assert_eq!(
        l2["metrics"]["dice"], 1.0,
        "the best value under --empty worst"
    );
    assert_eq!(l2["metrics"]["hd"], 0.0);
    assert_eq!(l2["counts"]["tn"], 8 * 8 * 24);
    let s2 = &doc["summary"][1];
    assert_eq!(s2["label"], 2);
    assert_eq!(
        s2["metrics"]["dice"]["n"], 3,
        "the mean is over the 3 cases"
    );
    let mean = s2["metrics"]["dice"]["mean"].as_f64().unwrap();
    // Dice of a 6-voxel-long box shifted by 2 voxels: 4/6; by 12: 0; absent from both: 1.
    assert!(
        (mean - (4.0 / 6.0 + 0.0 + 1.0) / 3.0).abs() < 1e-12,
        "{mean}"
    );
    // Under MONAI's policy the absent label is NaN: counted, not averaged.
    let out = eval_folder(dir.path(), &["--format", "json"]);
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(doc["cases"][2]["labels"][1]["metrics"]["dice"].is_null());
    assert_eq!(doc["summary"][1]["metrics"]["dice"]["n"], 2);
    assert_eq!(doc["summary"][1]["metrics"]["dice"]["nan"], 1);

    // One pair, every requested label absent from both: its rows, with the best values.
    let (p, r) = (
        dir.path().join("pred/c.nii.gz"),
        dir.path().join("ref/c.nii.gz"),
    );
    let out = segloss(&["eval", s(&p), s(&r), "--labels", "2,3", "--empty", "worst"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("c ")).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows.iter()
            .all(|r| r.ends_with("both") && r.contains("1.0000")),
        "{text}"
    );
    // One pair with no label at all and no --labels: an error, not an empty table.
    let empty = dir.path().join("empty.nii.gz");
    write_labels(&empty, DIMS, |_, _, _| 0);
    let out = segloss(&["eval", s(&empty), s(&empty), "--empty", "worst"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("no label other than 0 in either image"),
        "{}",
        stderr(&out)
    );
}

/// A case whose prediction is a named pipe: reading it blocks until the test writes the file
/// into the pipe, which holds the run at a known case.
fn make_fifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

/// Polls `cond` every 10 ms for up to 60 s.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Opens the pipe `path` for writing without blocking: this succeeds only once a reader has it
/// open (`ENXIO` before), which tells the test that segloss is reading the held case.
fn open_writer_if_read(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    #[cfg(target_os = "linux")]
    const O_NONBLOCK: i32 = 0o4000;
    #[cfg(not(target_os = "linux"))]
    const O_NONBLOCK: i32 = 0x4;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
        .ok()
}

/// Writes `bytes` to a non-blocking pipe, waiting while it is full.
fn write_pipe(pipe: &mut std::fs::File, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match pipe.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("cannot write to the pipe: {e}"),
        }
    }
}

/// Runs a folder eval (`--jobs 1`, cases in name order) whose case `m_hold` has a pipe as its
/// prediction. Once segloss is reading that pipe (every earlier case done), checks that the
/// output already holds them (`has_cases`: streamed, not written at the end), sends SIGINT,
/// waits until the handler has seen it, then lets the held case finish: the run must stop at
/// the boundary after it. No fixed sleeps: each step waits for the previous one's evidence.
/// Returns the exit code and stderr.
fn interrupt_run(
    dir: &Path,
    report: &Path,
    format: &str,
    has_cases: impl Fn(&str) -> bool,
) -> (Option<i32>, String) {
    let held = dir.join("pred/m_hold.nii.gz");
    let content = std::fs::read(dir.join("ref/m_hold.nii.gz")).unwrap();
    std::fs::remove_file(&held).unwrap();
    make_fifo(&held);
    let args = folder_args(dir, &["--format", format, "-o", s(report)]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_segloss"))
        .args(&args[..])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(err).lines() {
            let line = line.unwrap();
            if line.contains("interrupted") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut pipe = None;
    wait_for("segloss to read the held case", || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("segloss ended before the held case: {status}");
        }
        pipe = open_writer_if_read(&held);
        pipe.is_some()
    });
    let text = std::fs::read_to_string(report).unwrap();
    assert!(
        has_cases(&text),
        "the finished cases are already in the output: {text}"
    );
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the handler reports the interrupt");
    // Now let the held case finish: the run stops at the boundary after it.
    let mut pipe = pipe.unwrap();
    write_pipe(&mut pipe, &content);
    drop(pipe);
    let status = child.wait().unwrap();
    let err = reader.join().unwrap();
    std::fs::remove_file(&held).unwrap();
    std::fs::write(&held, &content).unwrap();
    (status.code(), err)
}

/// Cases a00..a09 and z00..z04 (label 1 shifted by 0..3) and m_hold between them (a perfect
/// prediction), all evaluated in name order with --jobs 1.
fn write_interrupt_cases(dir: &Path) {
    for k in 0..10 {
        write_case(dir, &format!("a{k:02}"), k % 4, k % 3 == 0);
    }
    for k in 0..5 {
        write_case(dir, &format!("z{k:02}"), k % 4, false);
    }
    write_case(dir, "m_hold", 0, false);
}

#[test]
fn sigint_keeps_the_finished_cases_and_resume_completes_the_csv() {
    let dir = tempfile::tempdir().unwrap();
    write_interrupt_cases(dir.path());
    let full = dir.path().join("full.csv");
    let out = eval_folder(dir.path(), &["-o", s(&full)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let full_text = std::fs::read_to_string(&full).unwrap();

    let report = dir.path().join("report.csv");
    let (code, err) = interrupt_run(dir.path(), &report, "csv", |t| {
        (0..10).all(|k| t.contains(&format!("\na{k:02},")))
    });
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("--resume"), "says how to complete it: {err}");
    let text = std::fs::read_to_string(&report).unwrap();
    let names: std::collections::BTreeSet<String> = csv_case_rows(&text)
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let expected: Vec<String> = (0..10)
        .map(|k| format!("a{k:02}"))
        .chain(["m_hold".to_string()])
        .collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        expected,
        "every finished case, the held one included, and none after it"
    );
    assert!(text.contains("\npartial_summary:mean,1,"), "{text}");
    assert!(!text.contains("\nsummary:"), "no final summary: {text}");
    // The finished rows hold the numbers of an uninterrupted run.
    for row in text
        .lines()
        .filter(|l| l.starts_with('a') || l.starts_with("m_"))
    {
        assert!(full_text.contains(&format!("\n{row}\n")), "{row}");
    }

    let out = eval_folder(dir.path(), &["-o", s(&report), "--resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("11 of 16 case(s) already in the report, 5 to evaluate"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&report).unwrap(),
        full_text,
        "the resumed report is the uninterrupted one"
    );
    // Resuming with other settings is refused, naming the difference.
    let out = eval_folder(
        dir.path(),
        &["-o", s(&report), "--resume", "--boundary", "surfels"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--boundary voxels (in the file) vs surfels (now)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&report).unwrap(), full_text);
}

#[test]
fn sigint_keeps_a_valid_partial_json_and_resume_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    write_interrupt_cases(dir.path());
    let full = dir.path().join("full.json");
    let out = eval_folder(dir.path(), &["-o", s(&full)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let full_doc: Value = serde_json::from_str(&std::fs::read_to_string(&full).unwrap()).unwrap();
    assert_eq!(full_doc["complete"], true);

    let report = dir.path().join("report.json");
    let (code, err) = interrupt_run(dir.path(), &report, "json", |t| {
        serde_json::from_str::<Value>(t)
            .is_ok_and(|d| d["cases"].as_array().is_some_and(|c| !c.is_empty()))
    });
    assert_eq!(code, Some(130), "{err}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(doc["complete"], false);
    assert!(doc["summary"].is_null() && doc["partial_summary"].is_array());
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 11);
    assert_eq!(cases[10]["case"], "m_hold");
    assert_eq!(cases[3], full_doc["cases"][3]);

    let out = eval_folder(dir.path(), &["-o", s(&report), "--resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(doc, full_doc);
}

#[test]
fn three_shards_merged_equal_one_run() {
    let dir = tempfile::tempdir().unwrap();
    for k in 0..7 {
        write_case(dir.path(), &format!("c{k}"), k % 3, k % 2 == 0);
    }
    // A prediction without reference: a failure that the merge must carry.
    std::fs::copy(
        dir.path().join("pred/c0.nii.gz"),
        dir.path().join("pred/lonely.nii.gz"),
    )
    .unwrap();
    for ext in ["csv", "json"] {
        let full = dir.path().join(format!("full.{ext}"));
        let out = eval_folder(dir.path(), &["--empty", "worst", "-o", s(&full)]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let mut shards = Vec::new();
        for i in 1..=3 {
            let path = dir.path().join(format!("shard{i}.{ext}"));
            let shard = format!("{i}/3");
            let out = eval_folder(
                dir.path(),
                &["--empty", "worst", "--shard", &shard, "-o", s(&path)],
            );
            assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
            shards.push(path);
        }
        let merged = dir.path().join(format!("merged.{ext}"));
        let mut args = vec!["eval", "--merge"];
        args.extend(shards.iter().map(|p| s(p)));
        args.extend(["-o", s(&merged)]);
        let out = segloss(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "a failed case: {}",
            stderr(&out)
        );
        assert_eq!(
            std::fs::read_to_string(&merged).unwrap(),
            std::fs::read_to_string(&full).unwrap(),
            "same rows, failures and summary ({ext})"
        );
        // A missing shard and a shard given twice are refused.
        let out = segloss(&["eval", "--merge", s(&shards[0]), s(&shards[1])]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("shard(s) 3/3 missing"),
            "{}",
            stderr(&out)
        );
        let out = segloss(&[
            "eval",
            "--merge",
            s(&shards[0]),
            s(&shards[0]),
            s(&shards[2]),
        ]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("are both shard 1/3"),
            "{}",
            stderr(&out)
        );
    }
    // A shard cut short (killed while appending: no summary, no end: row) is refused.
    let s1 = dir.path().join("shard1.csv");
    let s2 = dir.path().join("shard2.csv");
    let cut = dir.path().join("cut3.csv");
    let text = std::fs::read_to_string(dir.path().join("shard3.csv")).unwrap();
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("summary:") && !l.starts_with("\"end:"))
        .collect();
    std::fs::write(&cut, rows.join("\n") + "\n").unwrap();
    let out = segloss(&["eval", "--merge", s(&s1), s(&s2), s(&cut)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("shard 3/3 did not finish") && stderr(&out).contains("--resume"),
        "{}",
        stderr(&out)
    );
    // Metric options come from the files: giving them with --merge is an error.
    let out = segloss(&["eval", "--merge", s(&s1), "--labels", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
    // A shard written with other settings is refused, naming the setting and the files.
    let other = dir.path().join("other3.csv");
    let out = eval_folder(dir.path(), &["--shard", "3/3", "-o", s(&other)]);
    assert!(matches!(out.status.code(), Some(0 | 1)));
    let out = segloss(&["eval", "--merge", s(&s1), s(&s2), s(&other)]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("--empty worst") && err.contains("other3.csv"),
        "{err}"
    );
    // Shard numbers are validated.
    for (bad, words) in [
        ("0/3", "numbered from 1"),
        ("4/3", "does not exist"),
        ("2", "not of the form I/N"),
        ("1/0", "shard count"),
    ] {
        let out = eval_folder(dir.path(), &["--shard", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(stderr(&out).contains(words), "{bad}: {}", stderr(&out));
    }
}

#[test]
fn jobs_beyond_the_cores_are_lowered_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), "a", 1, false);
    write_case(dir.path(), "b", 2, false);
    let out = eval_folder(dir.path(), &["--jobs", "65535", "--format", "csv"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("--jobs 65535 lowered to") && err.contains("core(s)"),
        "{err}"
    );
    assert_eq!(csv_case_rows(&stdout(&out)).len(), 2);
}

#[test]
fn files_pair_by_case_name_and_ambiguous_or_broken_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), "a", 1, false);
    // pred/b.nii pairs with ref/b.nii.gz.
    write_case(dir.path(), "b", 1, false);
    let pd = dir.path().join("pred");
    write_labels(&pd.join("b.nii"), DIMS, boxes(&[(1, 3, 9)]));
    std::fs::remove_file(pd.join("b.nii.gz")).unwrap();
    let out = eval_folder(dir.path(), &["--format", "csv"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows = csv_case_rows(&stdout(&out));
    assert_eq!(
        rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    // a.nii beside a.nii.gz: one failed case naming both files.
    write_labels(&pd.join("a.nii"), DIMS, boxes(&[(1, 3, 9)]));
    // A dangling symbolic link: named as such, with its target.
    let target = dir.path().join("gone.nii.gz");
    std::os::unix::fs::symlink(&target, pd.join("c.nii.gz")).unwrap();
    std::fs::copy(
        dir.path().join("ref/a.nii.gz"),
        dir.path().join("ref/c.nii.gz"),
    )
    .unwrap();
    let out = eval_folder(dir.path(), &["--format", "csv"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("several prediction files have this case name")
            && err.contains("a.nii and ")
            && err.contains("a.nii.gz"),
        "{err}"
    );
    assert!(
        err.contains("is a broken symbolic link") && err.contains("gone.nii.gz"),
        "{err}"
    );
    let rows = csv_case_rows(&stdout(&out));
    assert_eq!(
        rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        ["b"],
        "no two rows named a"
    );
}

#[test]
fn repeated_labels_and_tolerances_are_evaluated_once() {
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), "a", 1, true);
    let (p, r) = (
        dir.path().join("pred/a.nii.gz"),
        dir.path().join("ref/a.nii.gz"),
    );
    let out = segloss(&[
        "eval",
        s(&p),
        s(&r),
        "--labels",
        "1,1,2",
        "--nsd-tolerance",
        "1,1.0,2",
        "--format",
        "csv",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("--labels lists 1 more than once"), "{err}");
    assert!(
        err.contains("--nsd-tolerance lists 1 more than once"),
        "{err}"
    );
    let text = stdout(&out);
    let header = text.lines().next().unwrap();
    assert_eq!(header.matches("nsd@1").count(), 1, "{header}");
    assert!(header.ends_with("nsd@1,nsd@2"), "{header}");
    let labels: Vec<String> = csv_case_rows(&text)
        .into_iter()
        .map(|r| r[1].clone())
        .collect();
    assert_eq!(labels, ["1", "2"]);
}

#[test]
fn a_truncated_file_is_reported_in_words() {
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), "a", 1, false);
    let p = dir.path().join("pred/a.nii.gz");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let out = segloss(&["eval", s(&p), s(&dir.path().join("ref/a.nii.gz"))]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("a.nii.gz"), "{err}");
    for debug in ["Custom {", "kind:", "UnexpectedEof", "Io("] {
        assert!(!err.contains(debug), "no debug dump: {err}");
    }
}

#[test]
fn a_broken_or_foreign_resume_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), "a", 1, false);
    let report = dir.path().join("r.csv");
    std::fs::write(&report, "name,score\nx,1\n").unwrap();
    let out = eval_folder(dir.path(), &["-o", s(&report), "--resume"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not a complete segloss eval CSV or JSON report"),
        "{}",
        stderr(&out)
    );
    let out = eval_folder(
        dir.path(),
        &["--format", "table", "-o", s(&report), "--resume"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--resume needs a CSV or JSON output"));
    // --resume without the file starts from nothing.
    let fresh = dir.path().join("fresh.csv");
    let out = eval_folder(dir.path(), &["-o", s(&fresh), "--resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        csv_case_rows(&std::fs::read_to_string(&fresh).unwrap()).len(),
        1
    );
}

#[test]
fn a_closed_stdout_ends_with_141() {
    let dir = tempfile::tempdir().unwrap();
    write_case(dir.path(), "a", 1, false);
    let reference = dir.path().join("ref/a.nii.gz");
    // The prediction is a pipe, so the run waits until stdout is closed before it can print.
    let held = dir.path().join("held.nii.gz");
    make_fifo(&held);
    let mut child = Command::new(env!("CARGO_BIN_EXE_segloss"))
        .args(["eval", s(&held), s(&reference)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut pipe = None;
    wait_for("segloss to read the held case", || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("segloss ended before reading its input: {status}");
        }
        pipe = open_writer_if_read(&held);
        pipe.is_some()
    });
    let mut pipe = pipe.unwrap();
    write_pipe(
        &mut pipe,
        &std::fs::read(dir.path().join("pred/a.nii.gz")).unwrap(),
    );
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn a_csv_cut_in_the_middle_of_a_line_is_resumed() {
    let dir = tempfile::tempdir().unwrap();
    for k in 0..4 {
        write_case(dir.path(), &format!("c{k}"), k % 3, true);
    }
    let report = dir.path().join("r.csv");
    let out = eval_folder(dir.path(), &["-o", s(&report)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let full = std::fs::read_to_string(&report).unwrap();
    // As a SIGKILL during an append would leave it: no summary, the last row half written.
    let kept: Vec<&str> = full
        .lines()
        .filter(|l| !l.contains("summary:") && !l.starts_with("\"end:"))
        .collect();
    let mut cut = kept.join("\n");
    cut.truncate(cut.len() - 20);
    std::fs::write(&report, &cut).unwrap();
    let out = eval_folder(dir.path(), &["-o", s(&report), "--resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("case c3 is evaluated again") && err.contains("3 of 4 case(s) already"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&report).unwrap(), full);
}
