//! Reading a CSV or JSON report of `segloss eval` back (for `--resume` and `--merge`): its run
//! description, columns, cases and failures, with the numbers exactly as written.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use segloss_metrics::ConfusionCounts;
use serde_json::Value;

use crate::report::{CaseResult, END, Failure, Format, PARTIAL_SUMMARY, Row, RunInfo, SUMMARY};

/// A report read from a file.
#[derive(Debug)]
pub struct Stored {
    /// Its format (CSV or JSON).
    pub format: Format,
    /// Settings and extent of the run that wrote it.
    pub run: RunInfo,
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Evaluated cases, in file order.
    pub cases: Vec<CaseResult>,
    /// Failed cases.
    pub failures: Vec<Failure>,
    /// Whether the run finished (a final summary, not a partial one or none).
    pub complete: bool,
}

/// Reads a report written by `segloss eval --format csv|json`.
///
/// # Errors
/// The file cannot be read, or is not such a report (in words, naming the file and the line).
pub fn read(path: &Path) -> Result<Stored> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the report {}", path.display()))?;
    let stored = if text.trim_start().starts_with('{') {
        from_json(&text)
    } else {
        from_csv(&text)
    };
    stored.with_context(|| {
        format!(
            "{} is not a complete segloss eval CSV or JSON report",
            path.display()
        )
    })
}

impl Stored {
    /// Puts the values of every row in the order of `expected` (the columns of the current
    /// settings).
    ///
    /// # Errors
    /// The file's columns are not those (the differing names listed).
    pub fn align(&mut self, expected: &[String]) -> Result<()> {
        if self.columns.is_empty() && self.cases.iter().all(|c| c.rows.is_empty()) {
            self.columns = expected.to_vec();
            return Ok(());
        }
        let order: Option<Vec<usize>> = expected
            .iter()
            .map(|e| self.columns.iter().position(|c| c == e))
            .collect();
        let Some(order) = order.filter(|_| self.columns.len() == expected.len()) else {
            bail!(
                "its columns are {} where these settings give {}",
                self.columns.join(","),
                expected.join(",")
            );
        };
        for case in &mut self.cases {
            for row in &mut case.rows {
                row.values = order.iter().map(|&k| row.values[k]).collect();
            }
        }
        self.columns = expected.to_vec();
        Ok(())
    }
}

fn number(text: &str) -> Option<f64> {
    match text {
        "nan" => Some(f64::NAN),
        "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        t => t.parse().ok(),
    }
}

/// Splits CSV text into records of fields (RFC 4180, through the `csv` crate; records may have
/// different lengths). The last record is returned apart when the text does not end with a
/// newline (a write cut short).
fn records(text: &str) -> (Vec<Vec<String>>, Option<Vec<String>>) {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut out: Vec<Vec<String>> = reader
        .records()
        // Reading a `&[u8]` cannot fail but for invalid UTF-8, which a `&str` is not.
        .map(|r| {
            r.expect("CSV records of a string")
                .iter()
                .map(String::from)
                .collect()
        })
        .collect();
    let cut = !text.is_empty() && !text.ends_with('\n');
    let partial = if cut { out.pop() } else { None };
    (out, partial)
}

fn from_csv(text: &str) -> Result<Stored> {
    let (records, cut) = records(text);
    let mut it = records.into_iter().enumerate();
    let (_, header) = it.next().context("the file is empty")?;
    const FIXED: [&str; 8] = [
        "case",
        "label",
        "pred_empty",
        "ref_empty",
        "tp",
        "fp",
        "fn",
        "tn",
    ];
    if header.len() < FIXED.len() || header[..FIXED.len()] != FIXED {
        bail!("line 1 is not the header of a segloss eval CSV report");
    }
    let columns: Vec<String> = header[FIXED.len()..].to_vec();
    let (_, run_row) = it
        .next()
        .context("line 2 is missing (the run: row that says with which settings it was written)")?;
    let run = run_row[0]
        .strip_prefix("run:")
        .context("line 2 is not the run: row (written by segloss eval 0.1 before issue 17?)")?;
    let run = RunInfo::from_json(
        &serde_json::from_str::<Value>(run).map_err(|e| anyhow::anyhow!("line 2: {e}"))?,
    )
    .map_err(|e| anyhow::anyhow!("line 2: {e}"))?;
    let mut cases: Vec<CaseResult> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut complete = false;
    for (i, r) in it {
        let line = i + 1;
        let first = r.first().map(String::as_str).unwrap_or_default();
        if let Some(f) = first.strip_prefix("failed:") {
            let v: Value =
                serde_json::from_str(f).map_err(|e| anyhow::anyhow!("line {line}: {e}"))?;
            failures.push(Failure {
                case: v["case"].as_str().unwrap_or_default().to_string(),
                error: v["error"].as_str().unwrap_or_default().to_string(),
            });
            continue;
        }
        if let Some(end) = first
            .strip_prefix(END)
            .and_then(|rest| rest.strip_prefix(':'))
        {
            let v: Value =
                serde_json::from_str(end).map_err(|e| anyhow::anyhow!("line {line}: {e}"))?;
            complete = v["complete"] == true;
            continue;
        }
        if first.starts_with(SUMMARY) || first.starts_with(PARTIAL_SUMMARY) {
            continue;
        }
        if r.len() != FIXED.len() + columns.len() {
            bail!(
                "line {line} has {} fields, the header {}",
                r.len(),
                FIXED.len() + columns.len()
            );
        }
        let bad = |what: &str, v: &str| anyhow::anyhow!("line {line}: invalid {what} {v:?}");
        let int = |k: usize| r[k].parse::<u64>().map_err(|_| bad(FIXED[k], &r[k]));
        let flag = |k: usize| r[k].parse::<bool>().map_err(|_| bad(FIXED[k], &r[k]));
        let values = r[FIXED.len()..]
            .iter()
            .zip(&columns)
            .map(|(v, c)| number(v).ok_or_else(|| bad(c, v)))
            .collect::<Result<Vec<f64>>>()?;
        let row = Row {
            label: r[1].parse().map_err(|_| bad("label", &r[1]))?,
            pred_empty: flag(2)?,
            ref_empty: flag(3)?,
            counts: ConfusionCounts {
                tp: int(4)?,
                fp: int(5)?,
                fn_: int(6)?,
                tn: int(7)?,
            },
            values,
        };
        let gds = columns
            .iter()
            .position(|c| c == "gds")
            .map_or(f64::NAN, |k| row.values[k]);
        let k = *index.entry(first.to_string()).or_insert_with(|| {
            cases.push(CaseResult {
                name: first.to_string(),
                voxels: row.counts.tp + row.counts.fp + row.counts.fn_ + row.counts.tn,
                gds,
                rows: Vec::new(),
            });
            cases.len() - 1
        });
        cases[k].rows.push(row);
    }
    if cut.is_some() {
        // The last write was cut short: its case may lack rows; it is evaluated again.
        if let Some(last) = cases.pop() {
            eprintln!(
                "note: the report ends in the middle of a line (a write cut short); case {} is evaluated again",
                last.name
            );
        }
        complete = false;
    }
    Ok(Stored {
        format: Format::Csv,
        run,
        columns,
        cases,
        failures,
        complete,
    })
}

/// The number tokens of JSON text, in document order (strings skipped).
fn number_tokens(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                out.push(&text[start..i]);
            }
            _ => i += 1,
        }
    }
    out
}

/// Replaces the floating-point numbers of `v` (parsed from `text`) by the exact values of their
/// text: serde_json's default parser may be one unit in the last place off, which would make a
/// resumed or merged report differ from an uninterrupted one. Numbers are matched in document
/// order, which is the order of the parsed maps for reports this program wrote; when the
/// tokens do not line up (a file rewritten by another tool), `v` is left as parsed.
fn exact_floats(text: &str, v: &mut Value) {
    fn walk<'a>(
        v: &mut Value,
        tokens: &mut std::slice::Iter<'a, &'a str>,
        ok: &mut bool,
        apply: bool,
    ) {
        match v {
            Value::Number(n) => {
                let Some(t) = tokens.next() else {
                    *ok = false;
                    return;
                };
                if n.is_f64() {
                    match (t.parse::<f64>(), n.as_f64()) {
                        (Ok(exact), Some(parsed))
                            if (exact - parsed).abs() <= 1e-12 * exact.abs().max(parsed.abs()) =>
                        {
                            if apply && let Some(e) = serde_json::Number::from_f64(exact) {
                                *n = e;
                            }
                        }
                        _ => *ok = false,
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, tokens, ok, apply)),
            Value::Object(o) => o.values_mut().for_each(|x| walk(x, tokens, ok, apply)),
            _ => {}
        }
    }
    let tokens = number_tokens(text);
    let mut ok = true;
    walk(v, &mut tokens.iter(), &mut ok, false);
    if ok {
        walk(v, &mut tokens.iter(), &mut ok, true);
    }
}

fn from_json(text: &str) -> Result<Stored> {
    let mut doc: Value = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    exact_floats(text, &mut doc);
    let run = RunInfo::from_json(&doc["run"])
        .map_err(|e| anyhow::anyhow!("\"run\" (the settings it was written with): {e}"))?;
    let complete = doc["complete"].as_bool().unwrap_or(false) && doc["summary"].is_array();
    let mut columns: Vec<String> = Vec::new();
    let mut cases = Vec::new();
    let bad = |what: &str, v: &Value| anyhow::anyhow!("invalid {what} {v}");
    for c in doc["cases"].as_array().context("no \"cases\" list")? {
        let name = c["case"].as_str().ok_or_else(|| bad("case", &c["case"]))?;
        let mut rows = Vec::new();
        for l in c["labels"]
            .as_array()
            .ok_or_else(|| bad("labels", &c["labels"]))?
        {
            let metrics = l["metrics"]
                .as_object()
                .ok_or_else(|| bad("metrics", &l["metrics"]))?;
            let names: Vec<String> = metrics.keys().cloned().collect();
            if columns.is_empty() {
                columns = names;
            } else if columns != names {
                bail!("case {name}: the metrics differ from those of the other cases");
            }
            let values = metrics
                .iter()
                .map(|(k, v)| match v {
                    Value::Null => Ok(f64::NAN),
                    Value::String(s) => number(s).ok_or_else(|| bad(k, v)),
                    v => v.as_f64().ok_or_else(|| bad(k, v)),
                })
                .collect::<Result<Vec<f64>>>()?;
            let count = |k: &str| {
                l["counts"][k]
                    .as_u64()
                    .ok_or_else(|| bad(k, &l["counts"][k]))
            };
            rows.push(Row {
                label: l["label"]
                    .as_u64()
                    .and_then(|x| u16::try_from(x).ok())
                    .ok_or_else(|| bad("label", &l["label"]))?,
                pred_empty: l["pred_empty"].as_bool().unwrap_or(false),
                ref_empty: l["ref_empty"].as_bool().unwrap_or(false),
                counts: ConfusionCounts {
                    tp: count("tp")?,
                    fp: count("fp")?,
                    fn_: count("fn")?,
                    tn: count("tn")?,
                },
                values,
            });
        }
        cases.push(CaseResult {
            name: name.to_string(),
            voxels: c["voxels"]
                .as_u64()
                .ok_or_else(|| bad("voxels", &c["voxels"]))?,
            gds: match &c["generalized_dice"] {
                Value::Null => f64::NAN,
                v => v.as_f64().ok_or_else(|| bad("generalized_dice", v))?,
            },
            rows,
        });
    }
    let failures = doc["failures"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| Failure {
                    case: f["case"].as_str().unwrap_or_default().to_string(),
                    error: f["error"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Stored {
        format: Format::Json,
        run,
        columns,
        cases,
        failures,
        complete,
    })
}
