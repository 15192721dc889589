//! The end of an evaluation (a run or a merge): labels absent from both images, the report's
//! format and where it goes.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;
use segloss_metrics::MetricOptions;
use segloss_metrics::files;

use super::cases;
use super::settings::Settings;
use crate::console;
use crate::report::{self, CaseResult, Column, Failure, Format, Row};

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
