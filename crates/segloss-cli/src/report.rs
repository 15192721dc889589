//! Rendering `segloss eval` results as a table, CSV or JSON, with a per-label summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use clap::ValueEnum;
use segloss::metrics::{
    Boundary, EmptyPolicy, LabelMetrics, MetricOptions, PercentileRule, WorstDistance,
};
use serde_json::{Value, json};

use crate::eval::{CaseSpec, Metric, Outcome};

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for reading
    Table,
    /// One row per case and label, then summary rows (`case` = `summary:<statistic>`)
    Csv,
    /// Options, cases, failures and summary; NaN is null, infinities are "inf"/"-inf"
    Json,
}

type Getter = Box<dyn Fn(&LabelMetrics, f64) -> f64>;

/// One reported value per label row; `gds` is per case and repeated on its label rows.
struct Column {
    name: String,
    in_table: bool,
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

fn dist(l: &LabelMetrics, f: impl Fn(&segloss::metrics::DistanceMetrics) -> f64) -> f64 {
    l.distances.as_ref().map_or(f64::NAN, f)
}

fn number_name(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

fn columns(metrics: &[Metric], o: &MetricOptions) -> Vec<Column> {
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

/// Per label: the values of every column over the successful cases, and how many cases had the
/// label empty in the prediction or the reference.
fn summary(
    cases: &[&(String, Vec<LabelMetrics>, f64)],
    cols: &[Column],
) -> BTreeMap<u16, Vec<Stats>> {
    let mut per_label: BTreeMap<u16, (Vec<Vec<f64>>, usize)> = BTreeMap::new();
    for (_, labels, gds) in cases {
        for l in labels {
            let entry = per_label
                .entry(l.label)
                .or_insert_with(|| (vec![Vec::new(); cols.len()], 0));
            for (vals, c) in entry.0.iter_mut().zip(cols) {
                vals.push((c.get)(l, *gds));
            }
            entry.1 += usize::from(l.pred_empty || l.ref_empty);
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

fn fmt_csv(x: f64) -> String {
    non_finite(x).map_or_else(|| format!("{x}"), str::to_string)
}

fn json_num(x: f64) -> Value {
    match non_finite(x) {
        Some("nan") => Value::Null,
        Some(text) => Value::String(text.into()),
        None => json!(x),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn empty_flag(l: &LabelMetrics) -> &'static str {
    match (l.pred_empty, l.ref_empty) {
        (false, false) => "",
        (true, false) => "pred",
        (false, true) => "ref",
        (true, true) => "both",
    }
}

/// Renders the report of all cases.
pub fn render(
    format: Format,
    specs: &[CaseSpec],
    outcomes: &[Outcome],
    metrics: &[Metric],
    options: &MetricOptions,
) -> String {
    let cols = columns(metrics, options);
    let done: Vec<(String, Vec<LabelMetrics>, f64)> = specs
        .iter()
        .zip(outcomes)
        .filter_map(|(s, o)| match o {
            Outcome::Done(m) => Some((s.name.clone(), m.labels.clone(), m.generalized_dice)),
            Outcome::Failed(_) => None,
        })
        .collect();
    let done_refs: Vec<&(String, Vec<LabelMetrics>, f64)> = done.iter().collect();
    let summ = summary(&done_refs, &cols);
    match format {
        Format::Table => table(&done, &summ, &cols, options),
        Format::Csv => csv(&done, &summ, &cols),
        Format::Json => json_report(specs, outcomes, &done, &summ, &cols, options),
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

fn table(
    done: &[(String, Vec<LabelMetrics>, f64)],
    summ: &BTreeMap<u16, Vec<Stats>>,
    cols: &[Column],
    o: &MetricOptions,
) -> String {
    let shown: Vec<(usize, &Column)> = cols
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
    for (name, labels, gds) in done {
        for l in labels {
            let mut r = vec![name.clone(), l.label.to_string()];
            r.extend(shown.iter().map(|(_, c)| fmt_table((c.get)(l, *gds))));
            r.push(empty_flag(l).to_string());
            rows.push(r);
        }
    }
    let mut out = format!("{}\n", describe(o));
    out.push_str(&aligned(&rows));
    if done.len() > 1 {
        let mut srows = vec![
            ["statistic", "label"]
                .iter()
                .map(|s| s.to_string())
                .chain(shown.iter().map(|(_, c)| c.name.clone()))
                .collect::<Vec<_>>(),
        ];
        for (label, st) in summ {
            type Pick = fn(&Stats) -> String;
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
        let _ = write!(
            out,
            "\nsummary over {} case(s) (NaN values left out of mean/std/median and counted):\n",
            done.len()
        );
        out.push_str(&aligned(&srows));
    }
    out
}

fn csv(
    done: &[(String, Vec<LabelMetrics>, f64)],
    summ: &BTreeMap<u16, Vec<Stats>>,
    cols: &[Column],
) -> String {
    let mut out = String::from("case,label,pred_empty,ref_empty,tp,fp,fn,tn");
    for c in cols {
        let _ = write!(out, ",{}", c.name);
    }
    out.push('\n');
    for (name, labels, gds) in done {
        for l in labels {
            let k = l.counts;
            let _ = write!(
                out,
                "{},{},{},{},{},{},{},{}",
                csv_field(name),
                l.label,
                l.pred_empty,
                l.ref_empty,
                k.tp,
                k.fp,
                k.fn_,
                k.tn
            );
            for c in cols {
                let _ = write!(out, ",{}", fmt_csv((c.get)(l, *gds)));
            }
            out.push('\n');
        }
    }
    type Pick = fn(&Stats) -> String;
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
            let _ = write!(out, "summary:{stat},{label},,,,,,");
            for s in st {
                let _ = write!(out, ",{}", pick(s));
            }
            out.push('\n');
        }
    }
    out
}

fn json_report(
    specs: &[CaseSpec],
    outcomes: &[Outcome],
    done: &[(String, Vec<LabelMetrics>, f64)],
    summ: &BTreeMap<u16, Vec<Stats>>,
    cols: &[Column],
    o: &MetricOptions,
) -> String {
    let cases: Vec<Value> = done
        .iter()
        .map(|(name, labels, gds)| {
            let labels: Vec<Value> = labels
                .iter()
                .map(|l| {
                    let metrics: serde_json::Map<String, Value> =
                        cols.iter().map(|c| (c.name.clone(), json_num((c.get)(l, *gds)))).collect();
                    json!({
                        "label": l.label,
                        "pred_empty": l.pred_empty,
                        "ref_empty": l.ref_empty,
                        "counts": {"tp": l.counts.tp, "fp": l.counts.fp, "fn": l.counts.fn_, "tn": l.counts.tn},
                        "metrics": metrics,
                    })
                })
                .collect();
            json!({"case": name, "generalized_dice": json_num(*gds), "labels": labels})
        })
        .collect();
    let failures: Vec<Value> = specs
        .iter()
        .zip(outcomes)
        .filter_map(|(s, o)| match o {
            Outcome::Failed(why) => Some(json!({"case": s.name, "error": why})),
            Outcome::Done(_) => None,
        })
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
    let doc = json!({
        "definitions": describe(o),
        "options": {
            "boundary": format!("{:?}", o.boundary),
            "percentile": o.percentile,
            "percentile_rule": format!("{:?}", o.percentile_rule),
            "nsd_tolerances": o.nsd_tolerances,
            "empty_policy": format!("{:?}", o.empty),
        },
        "cases": cases,
        "failures": failures,
        "summary": summary,
    });
    let mut s = serde_json::to_string_pretty(&doc).expect("JSON values serialize");
    s.push('\n');
    s
}
