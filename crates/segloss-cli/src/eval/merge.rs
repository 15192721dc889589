//! `segloss eval --merge A.csv B.csv ... -o all.csv`: one report from the outputs of the
//! `--shard I/N` runs of one evaluation, with the same rows and summary as a run without
//! shards.
//!
//! Refused, naming the files: outputs written with different settings, files that are not
//! shard outputs or belong to different splits (another N, another case list), a shard given
//! twice or missing, a shard that did not finish (interrupted: complete it with `--resume`),
//! and a case present in two files.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use segloss_metrics::files;

use super::args::EvalArgs;
use super::finish::{add_absent_labels, output_format, write_report};
use super::settings::{self, Settings};
use super::stored::{self, Stored};
use crate::exit::{EXIT_CASE_FAILED, EXIT_OK};
use crate::report::{self, Report, RunInfo};

/// Runs `segloss eval --merge`.
///
/// # Errors
/// A file cannot be read or the files do not make one complete evaluation (exit code 2).
pub fn run(args: &EvalArgs) -> Result<ExitCode> {
    let paths: &[PathBuf] = &args.merge;
    if let Some(out) = &args.output {
        files::refuse_input(out, paths.iter().map(PathBuf::as_path))?;
    }
    let mut shards: Vec<(String, Stored)> = Vec::new();
    for p in paths {
        shards.push((p.display().to_string(), stored::read(p)?));
    }
    let (first_name, first) = &shards[0];
    let settings = Settings::from_json(&first.run.settings)
        .map_err(|e| anyhow::anyhow!("{first_name}: invalid settings: {e:#}"))?;
    let options = settings.metric_options()?;
    let cols = report::columns(&settings.metrics, &options);
    let col_names: Vec<String> = cols.iter().map(|c| c.name.clone()).collect();
    let count = first.run.shard.map(|(_, n)| n);
    let total = first.run.cases_total;

    let mut by_index: BTreeMap<usize, &str> = BTreeMap::new();
    for (name, s) in &shards {
        let diff = settings::differences(&first.run.settings, first_name, &s.run.settings, name);
        if !diff.is_empty() {
            bail!(
                "cannot merge: {first_name} and {name} were written with different settings: {}",
                diff.join("; ")
            );
        }
        let Some((i, n)) = s.run.shard else {
            bail!("cannot merge {name}: it was not written with --shard I/N");
        };
        if Some(n) != count || s.run.cases_total != total {
            bail!(
                "cannot merge: {first_name} is one of {} shards of {total} case(s), {name} one of {n} shards of {} case(s): they come from different splits",
                count.unwrap_or(0),
                s.run.cases_total
            );
        }
        if let Some(other) = by_index.insert(i, name) {
            bail!("cannot merge: {other} and {name} are both shard {i}/{n}");
        }
        if !s.complete {
            bail!(
                "cannot merge {name}: shard {i}/{n} did not finish ({} of its {} case(s) in it); complete it with the same command and --resume",
                s.cases.len() + s.failures.len(),
                s.run.cases
            );
        }
        if s.cases.len() + s.failures.len() != s.run.cases {
            bail!(
                "cannot merge {name}: shard {i}/{n} should hold {} case(s) but holds {}",
                s.run.cases,
                s.cases.len() + s.failures.len()
            );
        }
    }
    let n = count.unwrap_or(0);
    let missing: Vec<String> = (1..=n)
        .filter(|i| !by_index.contains_key(i))
        .map(|i| format!("{i}/{n}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "cannot merge: shard(s) {} missing (give the outputs of all {n} shards)",
            missing.join(", ")
        );
    }

    let mut cases = Vec::new();
    let mut failures = Vec::new();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for (name, mut s) in shards {
        s.align(&col_names)
            .map_err(|e| anyhow::anyhow!("cannot merge {name}: {e}"))?;
        let names = s
            .cases
            .iter()
            .map(|c| c.name.clone())
            .chain(s.failures.iter().map(|f| f.case.clone()));
        for case in names {
            if let Some(other) = owner.insert(case.clone(), name.clone()) {
                bail!("cannot merge: case {case} is in both {other} and {name}");
            }
        }
        cases.extend(s.cases);
        failures.extend(s.failures);
    }
    if owner.len() != total {
        bail!(
            "cannot merge: the shards hold {} case(s), the split was of {total}",
            owner.len()
        );
    }
    for f in &failures {
        eprintln!("error: case {}: {}", f.case, f.error);
    }
    add_absent_labels(&mut cases, &mut failures, &settings, &options, &cols)?;
    let run = RunInfo {
        settings: settings.to_json(),
        shard: None,
        cases: total,
        cases_total: total,
    };
    let format = output_format(args.format, args.output.as_deref());
    let text = report::render(
        format,
        &Report {
            columns: &cols,
            options: &options,
            run: &run,
            cases: &cases,
            failures: &failures,
            complete: true,
        },
    );
    write_report(args.output.as_deref(), &text)?;
    if let Some(code) = crate::console::stop_status() {
        return Ok(ExitCode::from(code));
    }
    if !failures.is_empty() {
        eprintln!("{} of {total} case(s) failed", failures.len());
        return Ok(ExitCode::from(EXIT_CASE_FAILED));
    }
    Ok(ExitCode::from(EXIT_OK))
}
