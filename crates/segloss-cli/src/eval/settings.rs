//! The settings that decide a report's numbers, under their command-line names: built from the
//! flags, written into every CSV and JSON report, read back and compared by `--resume` and
//! `--merge` (which refuse files written with other settings, naming the difference).

use anyhow::{Result, bail};
use clap::ValueEnum;
use segloss_metrics::nifti::GeometryTolerance;
use segloss_metrics::{
    Boundary, EmptyPolicy, GdsWeight, MetricOptions, PercentileRule, WorstDistance,
};
use serde_json::{Value, json};

use super::args::{BoundaryArg, EmptyArg, EvalArgs, RuleArg};
use crate::report::Metric;

/// Everything that changes the numbers of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Reported metrics, in report order.
    pub metrics: Vec<Metric>,
    /// `--labels`, without repeats; `None`: every label present.
    pub labels: Option<Vec<u16>>,
    /// `--nsd-tolerance`, without repeats.
    pub nsd_tolerance: Vec<f64>,
    /// `--percentile`.
    pub percentile: f64,
    /// `--percentile-rule`.
    pub percentile_rule: RuleArg,
    /// `--boundary`.
    pub boundary: BoundaryArg,
    /// `--empty`.
    pub empty: EmptyArg,
    /// `--worst-distance`.
    pub worst_distance: Option<f64>,
    /// `--ignore-spacing` (or `--ignore-geometry`).
    pub ignore_spacing: bool,
    /// `--ignore-position` (or `--ignore-geometry`).
    pub ignore_position: bool,
}

/// Removes repeated values (keeping the first), with a note on stderr naming them.
fn dedupe<T: PartialEq + Copy + std::fmt::Display>(flag: &str, values: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for v in values {
        if out.contains(v) {
            eprintln!("note: {flag} lists {v} more than once; it is evaluated once");
        } else {
            out.push(*v);
        }
    }
    out
}

fn name<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

fn parse<T: ValueEnum>(v: &Value, key: &str) -> Result<T> {
    let s = v[key].as_str().unwrap_or_default();
    T::from_str(s, false).map_err(|_| anyhow::anyhow!("invalid {key} {}", v[key]))
}

impl Settings {
    /// The settings of the command line (repeated labels and tolerances removed with a note).
    ///
    /// # Errors
    /// `--worst-distance` without `--empty worst`, or options out of range.
    pub fn from_args(args: &EvalArgs) -> Result<Settings> {
        let mut metrics = if args.metrics.is_empty() {
            Metric::all()
        } else {
            args.metrics.clone()
        };
        metrics.sort_by_key(|m| *m as usize);
        metrics.dedup();
        let s = Settings {
            metrics,
            labels: args.labels.as_ref().map(|l| dedupe("--labels", l)),
            nsd_tolerance: dedupe("--nsd-tolerance", &args.nsd_tolerance),
            percentile: args.percentile,
            percentile_rule: args.percentile_rule,
            boundary: args.boundary,
            empty: args.empty,
            worst_distance: args.worst_distance,
            ignore_spacing: args.ignore_spacing || args.ignore_geometry,
            ignore_position: args.ignore_position || args.ignore_geometry,
        };
        s.metric_options()?;
        Ok(s)
    }

    /// The library's options for these settings.
    ///
    /// # Errors
    /// `--worst-distance` without `--empty worst`, or options out of range.
    pub fn metric_options(&self) -> Result<MetricOptions> {
        let empty = match (self.empty, self.worst_distance) {
            (EmptyArg::Monai, None) => EmptyPolicy::Monai,
            (EmptyArg::Monai, Some(_)) => bail!("--worst-distance needs --empty worst"),
            (EmptyArg::Worst, None) => EmptyPolicy::WorstCase(WorstDistance::Diagonal),
            (EmptyArg::Worst, Some(v)) => EmptyPolicy::WorstCase(WorstDistance::Value(v)),
        };
        let options = MetricOptions {
            labels: self.labels.clone(),
            distances: self.metrics.iter().any(|m| m.is_distance()),
            boundary: match self.boundary {
                BoundaryArg::Voxels => Boundary::InnerVoxels,
                BoundaryArg::VoxelsFull => Boundary::InnerVoxelsFull,
                BoundaryArg::Surfels => Boundary::Surfels,
            },
            percentile: self.percentile,
            percentile_rule: match self.percentile_rule {
                RuleArg::Max => PercentileRule::MaxOfDirected,
                RuleArg::Pooled => PercentileRule::Pooled,
                RuleArg::Mean => PercentileRule::MeanOfDirected,
            },
            nsd_tolerances: self.nsd_tolerance.clone(),
            empty,
            gds_weight: GdsWeight::default(),
        };
        options.validate()?;
        Ok(options)
    }

    /// The geometry checks of these settings.
    pub fn tolerance(&self) -> GeometryTolerance {
        GeometryTolerance {
            ignore_spacing: self.ignore_spacing,
            ignore_position: self.ignore_position,
        }
    }

    /// The settings as written into reports, keys named as the flags (`nsd_tolerance` is
    /// `--nsd-tolerance`).
    pub fn to_json(&self) -> Value {
        json!({
            "metrics": self.metrics.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "labels": self.labels,
            "nsd_tolerance": self.nsd_tolerance,
            "percentile": self.percentile,
            "percentile_rule": name(&self.percentile_rule),
            "boundary": name(&self.boundary),
            "empty": name(&self.empty),
            "worst_distance": self.worst_distance,
            "ignore_spacing": self.ignore_spacing,
            "ignore_position": self.ignore_position,
        })
    }

    /// Reads [`Settings::to_json`] back.
    ///
    /// # Errors
    /// A field is missing or has a value no flag takes.
    pub fn from_json(v: &Value) -> Result<Settings> {
        let floats = |key: &str| -> Result<Vec<f64>> {
            v[key]
                .as_array()
                .and_then(|a| a.iter().map(Value::as_f64).collect())
                .ok_or_else(|| anyhow::anyhow!("invalid {key} {}", v[key]))
        };
        let metrics = v["metrics"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|m| Metric::from_str(m.as_str()?, false).ok())
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| anyhow::anyhow!("invalid metrics {}", v["metrics"]))?;
        let labels = match &v["labels"] {
            Value::Null => None,
            l => Some(
                l.as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|x| x.as_u64().and_then(|x| u16::try_from(x).ok()))
                            .collect::<Option<Vec<u16>>>()
                    })
                    .ok_or_else(|| anyhow::anyhow!("invalid labels {l}"))?,
            ),
        };
        let flag = |key: &str| {
            v[key]
                .as_bool()
                .ok_or_else(|| anyhow::anyhow!("invalid {key} {}", v[key]))
        };
        Ok(Settings {
            metrics,
            labels,
            nsd_tolerance: floats("nsd_tolerance")?,
            percentile: v["percentile"]
                .as_f64()
                .ok_or_else(|| anyhow::anyhow!("invalid percentile {}", v["percentile"]))?,
            percentile_rule: parse(v, "percentile_rule")?,
            boundary: parse(v, "boundary")?,
            empty: parse(v, "empty")?,
            worst_distance: v["worst_distance"].as_f64(),
            ignore_spacing: flag("ignore_spacing")?,
            ignore_position: flag("ignore_position")?,
        })
    }
}

/// The settings that differ between two reports' settings, as "--flag A (in X) vs B (in Y)"
/// phrases; empty when they agree.
pub fn differences(a: &Value, a_name: &str, b: &Value, b_name: &str) -> Vec<String> {
    let show = |key: &str, v: &Value| match (key, v) {
        ("labels", Value::Null) => "every label present".to_string(),
        ("worst_distance", Value::Null) => "the image diagonal".to_string(),
        (_, Value::Array(a)) => a
            .iter()
            .map(|x| x.to_string().trim_matches('"').to_string())
            .collect::<Vec<_>>()
            .join(","),
        (_, Value::String(s)) => s.clone(),
        (_, other) => other.to_string(),
    };
    let mut keys: Vec<&String> = a
        .as_object()
        .into_iter()
        .chain(b.as_object())
        .flat_map(|o| o.keys())
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a[k.as_str()] != b[k.as_str()])
        .map(|k| {
            format!(
                "--{} {} ({a_name}) vs {} ({b_name})",
                k.replace('_', "-"),
                show(k, &a[k.as_str()]),
                show(k, &b[k.as_str()])
            )
        })
        .collect()
}
