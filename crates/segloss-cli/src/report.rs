//! The data of a `segloss eval` report and its rendering as a table, CSV or JSON, with a
//! per-label summary.
//!
//! This module knows nothing of how cases are found or evaluated (`eval` uses it, never the
//! other way round): a report is a list of [`CaseResult`]s (one [`Row`] of numbers per label,
//! already reduced to the reported [`Column`]s), the [`Failure`]s, and the [`RunInfo`] that
//! says with which settings, on which shard and how far the run got. The same types are read
//! back from CSV and JSON files by `eval --resume` and `eval --merge`, so that a resumed or
//! merged report holds exactly the numbers of an uninterrupted run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use clap::ValueEnum;
use segloss_metrics::{
    Boundary, CaseMetrics, ConfusionCounts, DistanceMetrics, EmptyPolicy, LabelMetrics,
    MetricOptions, PercentileRule, WorstDistance,
};
use serde_json::{Value, json};

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for reading
    Table,
    /// A `run:` row (the settings), one row per case and label, `failed:` rows, then summary
    /// rows (`case` = `summary:<statistic>`)
    Csv,
    /// Run settings, cases, failures and summary; NaN is null, infinities are "inf"/"-inf"
    Json,
}

/// A metric name on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Metric {
    /// Dice coefficient
    Dice,
    /// Intersection over union (Jaccard)
    Iou,
    /// TP / (TP + FP)
    Precision,
    /// TP / (TP + FN) (sensitivity)
    Recall,
    /// TN / (TN + FP)
    Specificity,
    /// (|P| - |R|) / |R|
    VolumeDifference,
    /// Generalized Dice score of the case (square weights)
    Gds,
    /// Hausdorff distance, symmetric and directed
    Hd,
    /// Percentile Hausdorff distance (--percentile), combined and directed
    Hd95,
    /// Average surface distance, both directions
    Asd,
    /// Average symmetric surface distance (pooled)
    Assd,
    /// Mean of the two directed average surface distances
    Masd,
    /// Normalized surface Dice at each --nsd-tolerance
    Nsd,
}

impl Metric {
    /// Whether the metric needs the distance transforms.
    pub fn is_distance(self) -> bool {
        matches!(
            self,
            Metric::Hd | Metric::Hd95 | Metric::Asd | Metric::Assd | Metric::Masd | Metric::Nsd
        )
    }

    /// Every metric, in report order.
    pub fn all() -> Vec<Metric> {
        Metric::value_variants().to_vec()
    }

    /// The name on the command line (`volume-difference`).
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

type Getter = Box<dyn Fn(&LabelMetrics, f64) -> f64>;

/// One reported value per label row; `gds` is per case and repeated on its label rows.
pub struct Column {
    /// Column name in the CSV header and JSON `metrics` (`dice`, `hd95_pred_to_ref`, `nsd@1`).
    pub name: String,
    /// Whether the table shows it (directed distances are left to CSV and JSON).
    pub in_table: bool,
    get: Getter,
}

fn col(
    name: impl Into<String>,
    in_table: bool,
    get: impl Fn(&LabelMetrics, f64) -> f64 + 'static,
) -> Column {
    Column {
        name: name.into(),
        in_table,
        get: Box::new(get),
    }
}

fn dist(l: &LabelMetrics, f: impl Fn(&DistanceMetrics) -> f64) -> f64 {
    l.distances.as_ref().map_or(f64::NAN, f)
}

fn number_name(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

/// The reported columns of `metrics` (in report order) under `o`.
pub fn columns(metrics: &[Metric], o: &MetricOptions) -> Vec<Column> {
    let mut cols = Vec::new();
    let p = format!("hd{}", number_name(o.percentile));
    for m in Metric::all().into_iter().filter(|m| metrics.contains(m)) {
        match m {
            Metric::Dice => cols.push(col("dice", true, |l, _| l.dice)),
            Metric::Iou => cols.push(col("iou", true, |l, _| l.iou)),
            Metric::Precision => cols.push(col("precision", true, |l, _| l.precision)),
            Metric::Recall => cols.push(col("recall", true, |l, _| l.recall)),
            Metric::Specificity => cols.push(col("specificity", true, |l, _| l.specificity)),
            Metric::VolumeDifference => {
                cols.push(col("volume_difference", true, |l, _| l.volume_difference))
            }
            Metric::Gds => cols.push(col("gds", true, |_, gds| gds)),
            Metric::Hd => {
                cols.push(col("hd", true, |l, _| dist(l, |d| d.hausdorff)));
                cols.push(col("hd_pred_to_ref", false, |l, _| {
                    dist(l, |d| d.hausdorff_pred_to_ref)
                }));
                cols.push(col("hd_ref_to_pred", false, |l, _| {
                    dist(l, |d| d.hausdorff_ref_to_pred)
                }));
            }
            Metric::Hd95 => {
                cols.push(col(p.clone(), true, |l, _| {
                    dist(l, |d| d.percentile_hausdorff)
                }));
                cols.push(col(format!("{p}_pred_to_ref"), false, |l, _| {
                    dist(l, |d| d.percentile_pred_to_ref)
                }));
                cols.push(col(format!("{p}_ref_to_pred"), false, |l, _| {
                    dist(l, |d| d.percentile_ref_to_pred)
                }));
            }
            Metric::Asd => {
                cols.push(col("asd_pred_to_ref", true, |l, _| {
                    dist(l, |d| d.asd_pred_to_ref)
                }));
                cols.push(col("asd_ref_to_pred", true, |l, _| {
                    dist(l, |d| d.asd_ref_to_pred)
                }));
            }
            Metric::Assd => cols.push(col("assd", true, |l, _| dist(l, |d| d.assd))),
            Metric::Masd => cols.push(col("masd", true, |l, _| dist(l, |d| d.masd))),
            Metric::Nsd => {
                for (i, t) in o.nsd_tolerances.iter().enumerate() {
                    cols.push(col(
                        format!("nsd@{}", number_name(*t)),
                        true,
                        move |l, _| dist(l, |d| d.nsd[i]),
                    ));
                }
            }
        }
    }
    cols
}

/// The reported numbers of one label of one case.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The label value.
    pub label: u16,
    /// Whether the label is absent from the prediction.
    pub pred_empty: bool,
    /// Whether the label is absent from the reference.
    pub ref_empty: bool,
    /// Voxel counts.
    pub counts: ConfusionCounts,
    /// One value per [`Column`], in column order.
    pub values: Vec<f64>,
}

impl Row {
    /// The row of `l` (a label of a case whose Generalized Dice is `gds`).
    pub fn of(l: &LabelMetrics, gds: f64, cols: &[Column]) -> Row {
        Row {
            label: l.label,
            pred_empty: l.pred_empty,
            ref_empty: l.ref_empty,
            counts: l.counts,
            values: cols.iter().map(|c| (c.get)(l, gds)).collect(),
        }
    }
}

/// The reported numbers of one evaluated case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    /// Case name (file name without .nii/.nii.gz).
    pub name: String,
    /// Voxels of the image (TP + FP + FN + TN of any label).
    pub voxels: u64,
    /// Generalized Dice score of the case.
    pub gds: f64,
    /// One row per label, in the order evaluated.
    pub rows: Vec<Row>,
}

impl CaseResult {
    /// The result of case `name` from its metrics.
    pub fn of(name: &str, voxels: u64, m: &CaseMetrics, cols: &[Column]) -> CaseResult {
        CaseResult {
            name: name.to_string(),
            voxels,
            gds: m.generalized_dice,
            rows: m
                .labels
                .iter()
                .map(|l| Row::of(l, m.generalized_dice, cols))
                .collect(),
        }
    }
}

/// A case that could not be evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Case name.
    pub case: String,
    /// Why, in words, naming the file.
    pub error: String,
}

/// What a report is a report of: the settings that produced its numbers and how much of the
/// run it holds. Written into every CSV (`run:` row) and JSON (`run`) report so that `--resume`
/// and `--merge` can refuse files written with other settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    /// The settings (metrics, labels, metric options, geometry tolerance) under their
    /// command-line names.
    pub settings: Value,
    /// `--shard I/N` as `(I, N)` (1-based), `None` for a whole run.
    pub shard: Option<(usize, usize)>,
    /// Cases this run (or shard) evaluates.
    pub cases: usize,
    /// Cases of the whole (unsharded) case list.
    pub cases_total: usize,
}

impl RunInfo {
    /// The JSON object written into reports.
    pub fn to_json(&self) -> Value {
        json!({
            "format": "segloss-eval/1",
            "settings": self.settings,
            "shard": self.shard.map(|(i, n)| format!("{i}/{n}")),
            "cases": self.cases,
            "cases_total": self.cases_total,
        })
    }

    /// Reads [`RunInfo::to_json`] back.
    ///
    /// # Errors
    /// A field is missing or malformed (named).
    pub fn from_json(v: &Value) -> Result<RunInfo, String> {
        if v["format"] != "segloss-eval/1" {
            return Err(format!(
                "unknown report format {} (expected \"segloss-eval/1\")",
                v["format"]
            ));
        }
        let count = |k: &str| {
            v[k].as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| format!("the run description has no valid \"{k}\""))
        };
        let shard = match &v["shard"] {
            Value::Null => None,
            Value::String(s) => Some(
                s.split_once('/')
                    .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
                    .ok_or_else(|| format!("invalid shard {s:?}"))?,
            ),
            other => return Err(format!("invalid shard {other}")),
        };
        if !v["settings"].is_object() {
            return Err("the run description has no settings".into());
        }
        Ok(RunInfo {
            settings: v["settings"].clone(),
            shard,
            cases: count("cases")?,
            cases_total: count("cases_total")?,
        })
    }
}

/// A report: what [`render`] writes and what `--resume` / `--merge` read back.
pub struct Report<'a> {
    /// The reported columns.
    pub columns: &'a [Column],
    /// The metric options (for the definitions echoed in the table and JSON).
    pub options: &'a MetricOptions,
    /// Settings and extent of the run.
    pub run: &'a RunInfo,
    /// Evaluated cases, in report order (sorted by name).
    pub cases: &'a [CaseResult],
    /// Cases that failed, sorted by name.
    pub failures: &'a [Failure],
    /// Whether every case of the run was attempted. A report written after an interrupt is not
    /// complete: its summary covers the cases so far and is labelled partial.
    pub complete: bool,
}

/// Summary statistics of one (label, metric) over the cases: NaN values are counted and left
/// out; infinities are kept (a mean with an infinity is infinite).
struct Stats {
    mean: f64,
    std: f64,
    median: f64,
    n: usize,
    nan: usize,
    empty: usize,
}

fn stats(values: &[f64], empty: usize) -> Stats {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    let n = v.len();
    let nan = values.len() - n;
    if n == 0 {
        return Stats {
            mean: f64::NAN,
            std: f64::NAN,
            median: f64::NAN,
            n,
            nan,
            empty,
        };
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let std = if mean.is_finite() {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt()
    } else {
        f64::NAN
    };
    v.sort_by(f64::total_cmp);
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    };
    Stats {
        mean,
        std,
        median,
        n,
        nan,
        empty,
    }
}

/// Per label: the statistics of every column over the cases, and how many cases had the label
/// empty in the prediction or the reference.
fn summary(cases: &[CaseResult], ncols: usize) -> BTreeMap<u16, Vec<Stats>> {
    let mut per_label: BTreeMap<u16, (Vec<Vec<f64>>, usize)> = BTreeMap::new();
    for case in cases {
        for r in &case.rows {
            let entry = per_label
                .entry(r.label)
                .or_insert_with(|| (vec![Vec::new(); ncols], 0));
            for (vals, v) in entry.0.iter_mut().zip(&r.values) {
                vals.push(*v);
            }
            entry.1 += usize::from(r.pred_empty || r.ref_empty);
        }
    }
    per_label
        .into_iter()
        .map(|(label, (vals, empty))| (label, vals.iter().map(|v| stats(v, empty)).collect()))
        .collect()
}

/// The text of a value that is not a finite number: "nan", "inf" or "-inf".
fn non_finite(x: f64) -> Option<&'static str> {
    if x.is_nan() {
        Some("nan")
    } else if x.is_infinite() {
        Some(if x > 0.0 { "inf" } else { "-inf" })
    } else {
        None
    }
}

fn fmt_table(x: f64) -> String {
    non_finite(x).map_or_else(|| format!("{x:.4}"), str::to_string)
}

/// A value as CSV writes it: the shortest text that reads back as the same `f64`, or
/// `nan`/`inf`/`-inf`.
pub fn fmt_csv(x: f64) -> String {
    non_finite(x).map_or_else(|| format!("{x}"), str::to_string)
}

/// A value as JSON writes it: a number, `null` for NaN, `"inf"`/`"-inf"`.
pub fn json_num(x: f64) -> Value {
    match non_finite(x) {
        Some("nan") => Value::Null,
        Some(text) => Value::String(text.into()),
        None => json!(x),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn empty_flag(r: &Row) -> &'static str {
    match (r.pred_empty, r.ref_empty) {
        (false, false) => "",
        (true, false) => "pred",
        (false, true) => "ref",
        (true, true) => "both",
    }
}

/// Renders a report.
pub fn render(format: Format, report: &Report) -> String {
    let summ = summary(report.cases, report.columns.len());
    match format {
        Format::Table => table(report, &summ),
        Format::Csv => csv(report, &summ),
        Format::Json => json_report(report, &summ),
    }
}

fn describe(o: &MetricOptions) -> String {
    let boundary = match o.boundary {
        Boundary::InnerVoxels => "inner boundary voxels (face-connected erosion, MONAI)",
        Boundary::InnerVoxelsFull => "inner boundary voxels (fully connected erosion)",
        Boundary::Surfels => "surface elements with areas (DeepMind surface-distance)",
    };
    let rule = match o.percentile_rule {
        PercentileRule::MaxOfDirected => "max of the directed percentiles",
        PercentileRule::Pooled => "percentile of both directions pooled",
        PercentileRule::MeanOfDirected => "mean of the directed percentiles",
    };
    let empty = match o.empty {
        EmptyPolicy::Monai => "MONAI (NaN/inf)".to_string(),
        EmptyPolicy::WorstCase(WorstDistance::Diagonal) => {
            "worst case (distance = image diagonal)".into()
        }
        EmptyPolicy::WorstCase(WorstDistance::Value(v)) => format!("worst case (distance = {v})"),
    };
    format!(
        "boundary: {boundary}; percentile {}: {rule}; empty structures: {empty}",
        number_name(o.percentile)
    )
}

/// "shard 2/3, " or nothing.
fn shard_text(run: &RunInfo) -> String {
    run.shard
        .map_or_else(String::new, |(i, n)| format!("shard {i}/{n}, "))
}

fn aligned(rows: &[Vec<String>]) -> String {
    let ncol = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..ncol)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c < 2 {
                    format!("{s:<w$}", w = widths[c])
                } else {
                    format!("{s:>w$}", w = widths[c])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

type Pick = fn(&Stats) -> String;

fn table(report: &Report, summ: &BTreeMap<u16, Vec<Stats>>) -> String {
    let shown: Vec<(usize, &Column)> = report
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.in_table)
        .collect();
    let mut rows = vec![
        ["case", "label"]
            .iter()
            .map(|s| s.to_string())
            .chain(shown.iter().map(|(_, c)| c.name.clone()))
            .chain(["empty".to_string()])
            .collect::<Vec<_>>(),
    ];
    for case in report.cases {
        for r in &case.rows {
            let mut row = vec![case.name.clone(), r.label.to_string()];
            row.extend(shown.iter().map(|(i, _)| fmt_table(r.values[*i])));
            row.push(empty_flag(r).to_string());
            rows.push(row);
        }
    }
    let mut out = format!("{}\n", describe(report.options));
    out.push_str(&aligned(&rows));
    if report.cases.len() > 1 || !report.complete {
        let mut srows = vec![
            ["statistic", "label"]
                .iter()
                .map(|s| s.to_string())
                .chain(shown.iter().map(|(_, c)| c.name.clone()))
                .collect::<Vec<_>>(),
        ];
        for (label, st) in summ {
            let picks: [(&str, Pick); 5] = [
                ("mean", |s| fmt_table(s.mean)),
                ("std", |s| fmt_table(s.std)),
                ("median", |s| fmt_table(s.median)),
                ("nan", |s| s.nan.to_string()),
                ("empty", |s| s.empty.to_string()),
            ];
            for (stat, pick) in picks {
                let mut r = vec![stat.to_string(), label.to_string()];
                r.extend(shown.iter().map(|(i, _)| pick(&st[*i])));
                srows.push(r);
            }
        }
        let scope = if report.complete {
            format!("{}{} case(s)", shard_text(report.run), report.cases.len())
        } else {
            format!(
                "{}{} case(s) evaluated before the run was interrupted; PARTIAL: {} of {} case(s) not attempted",
                shard_text(report.run),
                report.cases.len(),
                report
                    .run
                    .cases
                    .saturating_sub(report.cases.len() + report.failures.len()),
                report.run.cases
            )
        };
        let _ = write!(
            out,
            "\nsummary over {scope} (NaN values left out of mean/std/median and counted):\n"
        );
        out.push_str(&aligned(&srows));
    }
    out
}

/// The CSV header line and the `run:` row: the start of every CSV report.
pub fn csv_head(columns: &[Column], run: &RunInfo) -> String {
    let mut out = String::from("case,label,pred_empty,ref_empty,tp,fp,fn,tn");
    for c in columns {
        let _ = write!(out, ",{}", c.name);
    }
    out.push('\n');
    out.push_str(&csv_meta_row("run", &run.to_json(), columns.len()));
    out
}

/// A row whose `case` field is `<kind>:<JSON>` and whose other fields are empty.
fn csv_meta_row(kind: &str, v: &Value, ncols: usize) -> String {
    let mut out = csv_field(&format!("{kind}:{v}"));
    out.push_str(&",".repeat(7 + ncols));
    out.push('\n');
    out
}

/// The CSV rows of one case.
pub fn csv_case(case: &CaseResult) -> String {
    let mut out = String::new();
    for r in &case.rows {
        let k = r.counts;
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{}",
            csv_field(&case.name),
            r.label,
            r.pred_empty,
            r.ref_empty,
            k.tp,
            k.fp,
            k.fn_,
            k.tn
        );
        for v in &r.values {
            let _ = write!(out, ",{}", fmt_csv(*v));
        }
        out.push('\n');
    }
    out
}

/// The `failed:` row of a failed case.
pub fn csv_failure(f: &Failure, ncols: usize) -> String {
    csv_meta_row("failed", &json!({"case": f.case, "error": f.error}), ncols)
}

/// Prefix of the summary rows' `case` field in a complete report.
pub const SUMMARY: &str = "summary:";
/// Prefix of the summary rows' `case` field in a report written after an interrupt.
pub const PARTIAL_SUMMARY: &str = "partial_summary:";

fn csv(report: &Report, summ: &BTreeMap<u16, Vec<Stats>>) -> String {
    let mut out = csv_head(report.columns, report.run);
    for case in report.cases {
        out.push_str(&csv_case(case));
    }
    for f in report.failures {
        out.push_str(&csv_failure(f, report.columns.len()));
    }
    let prefix = if report.complete {
        SUMMARY
    } else {
        PARTIAL_SUMMARY
    };
    let picks: [(&str, Pick); 6] = [
        ("mean", |s| fmt_csv(s.mean)),
        ("std", |s| fmt_csv(s.std)),
        ("median", |s| fmt_csv(s.median)),
        ("n", |s| s.n.to_string()),
        ("nan", |s| s.nan.to_string()),
        ("empty", |s| s.empty.to_string()),
    ];
    for (label, st) in summ {
        for (stat, pick) in picks {
            let _ = write!(out, "{prefix}{stat},{label},,,,,,");
            for s in st {
                let _ = write!(out, ",{}", pick(s));
            }
            out.push('\n');
        }
    }
    out.push_str(&csv_meta_row(
        END,
        &json!({
            "complete": report.complete,
            "cases": report.cases.len(),
            "failures": report.failures.len(),
        }),
        report.columns.len(),
    ));
    out
}

/// Kind of the last row of a CSV report written whole (`end:{"complete": true, ...}`); a file
/// without it was cut short while cases were being appended.
pub const END: &str = "end";

fn json_report(report: &Report, summ: &BTreeMap<u16, Vec<Stats>>) -> String {
    let cols = report.columns;
    let cases: Vec<Value> = report
        .cases
        .iter()
        .map(|case| {
            let labels: Vec<Value> = case
                .rows
                .iter()
                .map(|r| {
                    let metrics: serde_json::Map<String, Value> = cols
                        .iter()
                        .zip(&r.values)
                        .map(|(c, v)| (c.name.clone(), json_num(*v)))
                        .collect();
                    json!({
                        "label": r.label,
                        "pred_empty": r.pred_empty,
                        "ref_empty": r.ref_empty,
                        "counts": {"tp": r.counts.tp, "fp": r.counts.fp, "fn": r.counts.fn_, "tn": r.counts.tn},
                        "metrics": metrics,
                    })
                })
                .collect();
            json!({"case": case.name, "voxels": case.voxels, "generalized_dice": json_num(case.gds), "labels": labels})
        })
        .collect();
    let failures: Vec<Value> = report
        .failures
        .iter()
        .map(|f| json!({"case": f.case, "error": f.error}))
        .collect();
    let summary: Vec<Value> = summ
        .iter()
        .map(|(label, st)| {
            let m: serde_json::Map<String, Value> = cols
                .iter()
                .zip(st)
                .map(|(c, s)| {
                    (
                        c.name.clone(),
                        json!({"mean": json_num(s.mean), "std": json_num(s.std), "median": json_num(s.median),
                               "n": s.n, "nan": s.nan}),
                    )
                })
                .collect();
            json!({"label": label, "empty_cases": st.first().map_or(0, |s| s.empty), "metrics": m})
        })
        .collect();
    let o = report.options;
    let mut doc = json!({
        "definitions": describe(o),
        "options": {
            "boundary": format!("{:?}", o.boundary),
            "percentile": o.percentile,
            "percentile_rule": format!("{:?}", o.percentile_rule),
            "nsd_tolerances": o.nsd_tolerances,
            "empty_policy": format!("{:?}", o.empty),
        },
        "run": report.run.to_json(),
        "complete": report.complete,
        "cases": cases,
        "failures": failures,
    });
    let key = if report.complete {
        "summary"
    } else {
        "partial_summary"
    };
    doc[key] = Value::Array(summary);
    let mut s = serde_json::to_string_pretty(&doc).expect("JSON values serialize");
    s.push('\n');
    s
}

/// Labels of every case, for filling in labels absent from a case (see
/// [`CaseResult::add_absent_labels`]).
pub fn labels_of(cases: &[CaseResult]) -> BTreeSet<u16> {
    cases
        .iter()
        .flat_map(|c| c.rows.iter().map(|r| r.label))
        .collect()
}

impl CaseResult {
    /// Adds a row for each label of `labels` the case has no row for, from
    /// `absent(label, gds)`: the row of a label empty in both images of a case whose
    /// Generalized Dice is `gds` (its TN is set to the case's voxels). Rows stay sorted by label.
    pub fn add_absent_labels(&mut self, labels: &BTreeSet<u16>, absent: impl Fn(u16, f64) -> Row) {
        let have: BTreeSet<u16> = self.rows.iter().map(|r| r.label).collect();
        let mut added = false;
        for &l in labels.difference(&have) {
            let mut row = absent(l, self.gds);
            row.counts.tn = self.voxels;
            self.rows.push(row);
            added = true;
        }
        if added {
            self.rows.sort_by_key(|r| r.label);
        }
    }
}
