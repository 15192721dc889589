//! `segloss eval`: metrics of predicted label images against reference ones.
//!
//! The run: find the cases ([`cases`]), keep this shard's, skip those already in the output
//! (`--resume`, read back by [`stored`]), evaluate the others on `--jobs` threads ([`jobs`])
//! while the main thread writes each finished case to the output ([`output`]), then write the
//! whole report with its summary ([`crate::report`]). A signal stops at the next case boundary
//! with every finished case written and the summary marked partial. `--merge` ([`merge`])
//! rebuilds one report from the outputs of `--shard` runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use segloss_metrics::files;
use segloss_metrics::nifti::GeometryTolerance;
use segloss_metrics::{CaseMetrics, MetricOptions};

use crate::console;
pub use crate::report::Metric;
use crate::report::{self, CaseResult, Column, Failure, Format, Report, Row, RunInfo};

pub mod cases;
pub mod jobs;
pub mod merge;
pub mod output;
pub mod settings;
pub mod stored;

use cases::{CaseSpec, Shard, Side};
use settings::Settings;

/// Exit status when every case was evaluated.
pub const EXIT_OK: u8 = 0;
/// Exit status when at least one case failed (and the others were reported).
pub const EXIT_CASE_FAILED: u8 = 1;
/// Exit status for a usage error: bad flags, a missing folder, nothing to evaluate, an output
/// that cannot be written.
pub const EXIT_USAGE: u8 = 2;

/// The exit codes, shown by `--help` (docs/cli.md has the same list).
pub const EXIT_CODES: &str = "\
Exit codes:
  0    every case was evaluated
  1    at least one case failed (unreadable or corrupt file, missing or ambiguous counterpart,
       different geometry, no label to evaluate); the failures are listed on stderr and in
       the CSV/JSON output, the other cases are reported as usual
  2    usage error: invalid flags, a folder that cannot be read, no case to evaluate, an
       output that is an input or cannot be written, a --resume or --merge file written with
       other settings, overlapping or missing shards
  130  interrupted (SIGINT or SIGTERM): stopped at a case boundary; every finished case is in
       the output, with a summary marked partial; run again with --resume to complete it
  141  stdout was closed by its reader before the report was written

Output: with -o FILE, CSV rows are appended as each case finishes and a JSON file is
rewritten whole; the summary is written at the end. Details, sharding and merging:
docs/cli.md.";

/// Arguments of `segloss eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Predicted label image (.nii or .nii.gz).
    #[arg(
        required_unless_present_any = ["pred_dir", "merge"],
        requires = "reference",
        conflicts_with = "merge"
    )]
    pub prediction: Option<PathBuf>,
    /// Reference (ground-truth) label image on the same grid.
    pub reference: Option<PathBuf>,
    /// Folder of predicted label images, matched to --ref-dir by case name (file name without
    /// .nii/.nii.gz).
    #[arg(long, requires = "ref_dir", conflicts_with_all = ["prediction", "merge"])]
    pub pred_dir: Option<PathBuf>,
    /// Folder of reference label images.
    #[arg(long, requires = "pred_dir")]
    pub ref_dir: Option<PathBuf>,
    /// Labels to evaluate, comma-separated [default: every non-zero label present; in a
    /// folder, every label present in any case]
    #[arg(long, value_delimiter = ',', conflicts_with = "merge")]
    pub labels: Option<Vec<u16>>,
    /// Metrics to report, comma-separated [default: all]
    #[arg(long, value_delimiter = ',', value_enum, conflicts_with = "merge")]
    pub metrics: Vec<Metric>,
    /// NSD tolerance(s) in spacing units (mm), comma-separated or repeated.
    #[arg(
        long = "nsd-tolerance",
        value_delimiter = ',',
        default_value = "1.0",
        conflicts_with = "merge"
    )]
    pub nsd_tolerance: Vec<f64>,
    /// Percentile of the percentile Hausdorff distance.
    #[arg(long, default_value_t = 95.0, conflicts_with = "merge")]
    pub percentile: f64,
    /// How the two directed percentiles combine.
    #[arg(long, value_enum, default_value_t = RuleArg::Max, conflicts_with = "merge")]
    pub percentile_rule: RuleArg,
    /// Boundary model of the distance metrics.
    #[arg(long, value_enum, default_value_t = BoundaryArg::Voxels, conflicts_with = "merge")]
    pub boundary: BoundaryArg,
    /// Values for labels empty in the prediction and/or the reference.
    #[arg(long, value_enum, default_value_t = EmptyArg::Monai, conflicts_with = "merge")]
    pub empty: EmptyArg,
    /// Worst-case distance for `--empty worst` [default: the image diagonal]
    #[arg(long, conflicts_with = "merge")]
    pub worst_distance: Option<f64>,
    /// Output format [default: from the -o file's extension (.csv, .json), else table]
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Write the report to this file instead of stdout (never one of the input files). CSV and
    /// JSON files are kept current as cases finish.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Keep the cases already in the -o file (CSV or JSON, written with the same settings) and
    /// evaluate only the others; without the file, start from nothing.
    #[arg(long, requires = "output", conflicts_with = "merge")]
    pub resume: bool,
    /// Evaluate only shard I of N (1-based) of the sorted case list: case k (from 0) belongs to
    /// shard k mod N + 1. Combine the shards' outputs with --merge.
    #[arg(long, value_name = "I/N", requires = "pred_dir")]
    pub shard: Option<Shard>,
    /// Combine the CSV or JSON outputs of all the --shard runs of one evaluation into one
    /// report (settings taken from the files; overlapping, missing or unfinished shards and
    /// shards written with other settings are refused).
    #[arg(long, num_args = 1.., value_name = "SHARD_OUTPUT")]
    pub merge: Vec<PathBuf>,
    /// Accept a different voxel spacing (the reference's is used for distances).
    #[arg(long, conflicts_with = "merge")]
    pub ignore_spacing: bool,
    /// Accept a different origin and orientation.
    #[arg(long, conflicts_with = "merge")]
    pub ignore_position: bool,
    /// Both --ignore-spacing and --ignore-position.
    #[arg(long, conflicts_with = "merge")]
    pub ignore_geometry: bool,
    /// Cases evaluated at the same time (each case also uses all cores); capped by the cores
    /// and by the memory available for the largest case, with a note on stderr.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// Never show the progress bar (it is shown for folders when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// `--percentile-rule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuleArg {
    /// Max of the two directed percentiles (MONAI, MetricsReloaded, DeepMind)
    Max,
    /// Percentile of both directions pooled (MedPy hd95, seg-metrics)
    Pooled,
    /// Mean of the two directed percentiles (plastimatch)
    Mean,
}

/// `--boundary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BoundaryArg {
    /// Inner boundary voxels, face-connected erosion (MONAI, MedPy)
    Voxels,
    /// Inner boundary voxels, fully connected (26-neighbour) erosion
    VoxelsFull,
    /// Surface elements weighted by area (DeepMind surface-distance, MONAI use_subvoxels)
    Surfels,
}

/// `--empty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmptyArg {
    /// NaN/inf where MONAI gives them
    Monai,
    /// Worst value when one side is empty (distance: --worst-distance or the image diagonal),
    /// best value when both are
    Worst,
}

/// The report format: `--format`, else the `-o` file's extension, else a table.
pub fn output_format(format: Option<Format>, output: Option<&Path>) -> Format {
    format.unwrap_or_else(|| {
        match output
            .and_then(|p| p.extension())
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => Format::Csv,
            Some("json") => Format::Json,
            _ => Format::Table,
        }
    })
}

/// Writes a finished report to `-o` (through a temporary file) or stdout.
///
/// # Errors
/// The report cannot be written.
pub fn write_report(output: Option<&Path>, text: &str) -> Result<()> {
    match output {
        Some(path) => files::write_bytes_atomically(path, text),
        None => console::write_stdout(text)
            .map_err(|e| anyhow::anyhow!("cannot write the report to stdout: {e}")),
    }
}

/// Adds rows for labels absent from both images of a case when labels are not given: every
/// case then has a row for every label found in any case (with `--empty worst` the best
/// values, with `--empty monai` NaN), so that a summary "over N cases" is over N values. Cases
/// left without any row fail: there is no label to evaluate.
///
/// # Errors
/// The library cannot score an absent label (not expected).
pub fn add_absent_labels(
    cases: &mut Vec<CaseResult>,
    failures: &mut Vec<Failure>,
    settings: &Settings,
    options: &MetricOptions,
    cols: &[Column],
) -> Result<()> {
    if settings.labels.is_none() {
        let labels: BTreeSet<u16> = report::labels_of(cases);
        let mut template = Vec::new();
        for &l in &labels {
            template.push((l, cases::absent_label(l, options)?));
        }
        for case in cases.iter_mut() {
            case.add_absent_labels(&labels, |l, gds| {
                let m = &template
                    .iter()
                    .find(|(k, _)| *k == l)
                    .expect("a template per label")
                    .1;
                Row::of(m, gds, cols)
            });
        }
    }
    cases.retain(|c| {
        if c.rows.is_empty() {
            let f = Failure {
                case: c.name.clone(),
                error:
                    "no label other than 0 in either image: nothing to evaluate (give --labels L \
                        to score a label absent from both)"
                        .into(),
            };
            eprintln!("error: case {}: {}", f.case, f.error);
            failures.push(f);
        }
        !c.rows.is_empty()
    });
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    failures.sort_by(|a, b| a.case.cmp(&b.case));
    Ok(())
}

/// Runs `segloss eval`.
///
/// # Errors
/// Usage errors (exit code 2); per-case failures are not errors but make the exit code 1.
pub fn run(args: &EvalArgs) -> Result<ExitCode> {
    if !args.merge.is_empty() {
        return merge::run(args);
    }
    let settings = Settings::from_args(args)?;
    let options = settings.metric_options()?;
    let cols = report::columns(&settings.metrics, &options);
    let col_names: Vec<String> = cols.iter().map(|c| c.name.clone()).collect();
    let format = output_format(args.format, args.output.as_deref());
    let folder = args.pred_dir.is_some();
    let all_cases = match (
        &args.pred_dir,
        &args.ref_dir,
        &args.prediction,
        &args.reference,
    ) {
        (Some(p), Some(r), _, _) => cases::folder_cases(p, r)?,
        (None, None, Some(p), Some(r)) => vec![CaseSpec {
            name: cases::case_name(p),
            prediction: Side::File(p.clone()),
            reference: Side::File(r.clone()),
        }],
        _ => bail!("give either PREDICTION REFERENCE or --pred-dir and --ref-dir"),
    };
    if let Some(out) = &args.output {
        files::refuse_input(out, all_cases.iter().flat_map(CaseSpec::files))?;
    }
    if args.resume && format == Format::Table {
        bail!("--resume needs a CSV or JSON output (--format csv|json, or -o FILE.csv|.json)");
    }
    let cases_total = all_cases.len();
    let planned = match args.shard {
        Some(s) => s.select(all_cases),
        None => all_cases,
    };
    let run = RunInfo {
        settings: settings.to_json(),
        shard: args.shard.map(|s| (s.index, s.count)),
        cases: planned.len(),
        cases_total,
    };
    if planned.is_empty() {
        eprintln!(
            "note: shard {} has no case ({cases_total} case(s) in all)",
            args.shard
                .map_or(String::new(), |s| format!("{}/{}", s.index, s.count))
        );
    }

    let mut done: Vec<CaseResult> = match (&args.output, args.resume) {
        (Some(path), true) => resume(path, format, &run, &col_names, &planned)?,
        _ => Vec::new(),
    };
    let skip: BTreeSet<&str> = done.iter().map(|c| c.name.as_str()).collect();
    let pending: Vec<&CaseSpec> = planned
        .iter()
        .filter(|c| !skip.contains(c.name.as_str()))
        .collect();
    if args.resume && !done.is_empty() {
        eprintln!(
            "resuming: {} of {} case(s) already in the report, {} to evaluate",
            done.len(),
            planned.len(),
            pending.len()
        );
    }

    let requested = usize::from(args.jobs);
    let jobs = if requested > 1 {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let per_case = jobs::per_case_memory(&pending, options.distances);
        let (n, why) = jobs::cap(requested, cores, jobs::available_memory(), per_case);
        if let Some(why) = why {
            eprintln!("note: {why}");
        }
        n
    } else {
        1
    };

    let mut sink = match &args.output {
        Some(path) => {
            let start = match format {
                Format::Csv => {
                    let mut s = report::csv_head(&cols, &run);
                    for case in &done {
                        s.push_str(&report::csv_case(case));
                    }
                    s
                }
                _ => report::render(
                    format,
                    &Report {
                        columns: &cols,
                        options: &options,
                        run: &run,
                        cases: &done,
                        failures: &[],
                        complete: false,
                    },
                ),
            };
            Some(output::Sink::start(path, format, &start)?)
        }
        None => None,
    };

    let show_progress =
        folder && !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut failures: Vec<Failure> = Vec::new();
    run_cases(
        &pending,
        &options,
        settings.tolerance(),
        jobs,
        show_progress,
        |case, outcome| {
            match outcome {
                Ok((metrics, voxels)) => {
                    let result = CaseResult::of(&case.name, voxels, &metrics, &cols);
                    if let Some(sink) = &mut sink {
                        sink.append(&report::csv_case(&result))?;
                    }
                    done.push(result);
                }
                Err(e) => {
                    let f = Failure {
                        case: case.name.clone(),
                        error: format!("{e:#}"),
                    };
                    eprintln!("error: case {}: {}", f.case, f.error);
                    if let Some(sink) = &mut sink {
                        sink.append(&report::csv_failure(&f, cols.len()))?;
                    }
                    failures.push(f);
                }
            }
            if let Some(sink) = &mut sink {
                sink.update(|| {
                    report::render(
                        Format::Json,
                        &Report {
                            columns: &cols,
                            options: &options,
                            run: &run,
                            cases: &done,
                            failures: &failures,
                            complete: false,
                        },
                    )
                })?;
            }
            Ok(())
        },
    )?;

    let complete = done.len() + failures.len() == planned.len();
    add_absent_labels(&mut done, &mut failures, &settings, &options, &cols)?;
    let text = report::render(
        format,
        &Report {
            columns: &cols,
            options: &options,
            run: &run,
            cases: &done,
            failures: &failures,
            complete,
        },
    );
    match sink {
        Some(sink) => sink.finish(&text)?,
        None => write_report(None, &text)?,
    }
    if !complete {
        let attempted = done.len() + failures.len();
        eprintln!(
            "stopped after {attempted} of {} case(s); the report holds them with a partial summary{}",
            planned.len(),
            args.output
                .as_ref()
                .map(|p| format!(
                    " (resume with the same command and --resume -o {})",
                    p.display()
                ))
                .unwrap_or_default()
        );
        return Ok(ExitCode::from(
            console::stop_status().unwrap_or(console::EXIT_INTERRUPTED),
        ));
    }
    if let Some(code) = console::stop_status().filter(|_| console::stdout_closed()) {
        return Ok(ExitCode::from(code));
    }
    if !failures.is_empty() {
        eprintln!("{} of {} case(s) failed", failures.len(), planned.len());
        return Ok(ExitCode::from(EXIT_CASE_FAILED));
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// The cases already in the `-o` file of a `--resume`d run, checked against this run.
fn resume(
    path: &Path,
    format: Format,
    run: &RunInfo,
    col_names: &[String],
    planned: &[CaseSpec],
) -> Result<Vec<CaseResult>> {
    if !path.exists() {
        eprintln!(
            "note: {} does not exist yet: nothing to resume, evaluating every case",
            path.display()
        );
        return Ok(Vec::new());
    }
    let mut stored = stored::read(path)?;
    let file = path.display();
    if stored.format != format {
        bail!(
            "cannot resume {file}: it is a {:?} report but this run writes {:?} (--format, or the -o extension)",
            stored.format,
            format
        );
    }
    let diff = settings::differences(&stored.run.settings, "in the file", &run.settings, "now");
    if !diff.is_empty() {
        bail!(
            "cannot resume {file}: it was written with other settings: {}; run with the same flags, or write to another file",
            diff.join("; ")
        );
    }
    let shard = |s: Option<(usize, usize)>| {
        s.map_or("no --shard".to_string(), |(i, n)| {
            format!("--shard {i}/{n}")
        })
    };
    if stored.run.shard != run.shard {
        bail!(
            "cannot resume {file}: it was written with {}, this run has {}",
            shard(stored.run.shard),
            shard(run.shard)
        );
    }
    if stored.run.cases_total != run.cases_total {
        bail!(
            "cannot resume {file}: it was written for {} case(s) in all, the folders now hold {}",
            stored.run.cases_total,
            run.cases_total
        );
    }
    stored
        .align(col_names)
        .map_err(|e| anyhow::anyhow!("cannot resume {file}: {e}"))?;
    let names: BTreeSet<&str> = planned.iter().map(|c| c.name.as_str()).collect();
    if let Some(c) = stored
        .cases
        .iter()
        .find(|c| !names.contains(c.name.as_str()))
    {
        bail!(
            "cannot resume {file}: it holds case {}, which is not among the cases of this run",
            c.name
        );
    }
    // Failed cases are evaluated again (the file may have been fixed).
    Ok(stored.cases)
}

/// Evaluates `cases` on `jobs` threads and hands each outcome to `on_done` on this thread, in
/// the order they finish. Workers stop taking cases when a stop is requested (a signal) or
/// `on_done` fails (its error is returned).
fn run_cases(
    cases: &[&CaseSpec],
    options: &MetricOptions,
    tolerance: GeometryTolerance,
    jobs: usize,
    show_progress: bool,
    mut on_done: impl FnMut(&CaseSpec, Result<(CaseMetrics, u64)>) -> Result<()>,
) -> Result<()> {
    let bar = if show_progress {
        let bar = ProgressBar::new(cases.len() as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} cases, {elapsed} {msg}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::scope(|s| {
        for _ in 0..jobs.min(cases.len()) {
            let tx = tx.clone();
            let (next, abort) = (&next, &abort);
            s.spawn(move || {
                while !console::stop_requested() && !abort.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(case) = cases.get(i) else { break };
                    let outcome = cases::evaluate_case(case, options, tolerance);
                    if tx.send((i, outcome)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (i, outcome) in rx {
            bar.inc(1);
            if let Err(e) = on_done(cases[i], outcome) {
                abort.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    });
    bar.finish_and_clear();
    result
}
