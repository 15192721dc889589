//! `segloss eval`: metrics of predicted label images against reference ones.
//!
//! The run: find the cases ([`cases`]), keep this shard's, skip those already in the output
//! (`--resume`, read back by [`stored`]), evaluate the others on `--jobs` threads ([`jobs`])
//! while the main thread writes each finished case to the output ([`output`]), then write the
//! whole report with its summary ([`crate::report`]). A signal stops at the next case boundary
//! with every finished case written and the summary marked partial. `--merge` ([`merge`])
//! rebuilds one report from the outputs of `--shard` runs.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use segloss_metrics::files;
use segloss_metrics::nifti::GeometryTolerance;
use segloss_metrics::{CaseMetrics, MetricOptions};

use crate::console;
use crate::exit::{EXIT_CASE_FAILED, EXIT_OK};
use crate::report::{self, CaseResult, Failure, Format, Report, RunInfo};

pub mod args;
pub mod cases;
pub mod finish;
pub mod jobs;
pub mod merge;
pub mod output;
pub mod settings;
pub mod stored;

pub use args::EvalArgs;
use cases::{CaseSpec, Side};
use finish::{add_absent_labels, output_format, write_report};
use settings::Settings;

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
            console::stop_status().unwrap_or(crate::exit::EXIT_INTERRUPTED),
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
