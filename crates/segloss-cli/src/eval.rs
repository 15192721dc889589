//! `segloss eval`: metrics of predicted label images against reference ones.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use segloss::metrics::{
    Boundary, CaseMetrics, EmptyPolicy, MetricOptions, PercentileRule, WorstDistance, evaluate,
};

use crate::report::{self, Format};
use segloss_train::nifti::{GeometryTolerance, check_geometry, read_label_image};

/// Exit status when every case was evaluated.
pub const EXIT_OK: u8 = 0;
/// Exit status when at least one case failed (and the others were reported).
pub const EXIT_CASE_FAILED: u8 = 1;
/// Exit status for a usage error: bad flags, a missing folder, nothing to evaluate, an output
/// that cannot be written.
pub const EXIT_USAGE: u8 = 2;

/// The exit codes, shown by `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  every case was evaluated
  1  at least one case failed (unreadable or corrupt file, missing counterpart, different
     geometry); the failures are listed on stderr and in the JSON output, the other cases are
     reported as usual
  2  usage error: invalid flags, a folder that cannot be read, no case to evaluate, an output
     file that cannot be written";

/// Arguments of `segloss eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Predicted label image (.nii or .nii.gz).
    #[arg(required_unless_present = "pred_dir", requires = "reference")]
    pub prediction: Option<PathBuf>,
    /// Reference (ground-truth) label image on the same grid.
    pub reference: Option<PathBuf>,
    /// Folder of predicted label images, matched to --ref-dir by file name.
    #[arg(long, requires = "ref_dir", conflicts_with = "prediction")]
    pub pred_dir: Option<PathBuf>,
    /// Folder of reference label images.
    #[arg(long, requires = "pred_dir")]
    pub ref_dir: Option<PathBuf>,
    /// Labels to evaluate, comma-separated [default: every non-zero label present]
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<u16>>,
    /// Metrics to report, comma-separated [default: all]
    #[arg(long, value_delimiter = ',', value_enum)]
    pub metrics: Vec<Metric>,
    /// NSD tolerance(s) in spacing units (mm), comma-separated or repeated.
    #[arg(long = "nsd-tolerance", value_delimiter = ',', default_value = "1.0")]
    pub nsd_tolerance: Vec<f64>,
    /// Percentile of the percentile Hausdorff distance.
    #[arg(long, default_value_t = 95.0)]
    pub percentile: f64,
    /// How the two directed percentiles combine.
    #[arg(long, value_enum, default_value_t = RuleArg::Max)]
    pub percentile_rule: RuleArg,
    /// Boundary model of the distance metrics.
    #[arg(long, value_enum, default_value_t = BoundaryArg::Voxels)]
    pub boundary: BoundaryArg,
    /// Values for labels empty in the prediction and/or the reference.
    #[arg(long, value_enum, default_value_t = EmptyArg::Monai)]
    pub empty: EmptyArg,
    /// Worst-case distance for `--empty worst` [default: the image diagonal]
    #[arg(long)]
    pub worst_distance: Option<f64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write the report to this file instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Accept a different voxel spacing (the reference's is used for distances).
    #[arg(long)]
    pub ignore_spacing: bool,
    /// Accept a different origin and orientation.
    #[arg(long)]
    pub ignore_position: bool,
    /// Both --ignore-spacing and --ignore-position.
    #[arg(long)]
    pub ignore_geometry: bool,
    /// Cases evaluated at the same time (each case also uses all cores); memory grows with it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// Never show the progress bar (it is shown for folders when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
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

/// One prediction/reference pair to evaluate; a missing side is a failure.
pub struct CaseSpec {
    /// Case name (file name without .nii/.nii.gz).
    pub name: String,
    /// The prediction file, if found.
    pub prediction: Option<PathBuf>,
    /// The reference file, if found.
    pub reference: Option<PathBuf>,
}

/// Result of one case.
pub enum Outcome {
    /// Metrics of the case.
    Done(CaseMetrics),
    /// Why the case could not be evaluated.
    Failed(String),
}

/// Runs `segloss eval`.
///
/// # Errors
/// Usage errors (exit code 2); per-case failures are not errors but make the exit code 1.
pub fn run(args: &EvalArgs) -> Result<ExitCode> {
    let metrics = if args.metrics.is_empty() {
        Metric::all()
    } else {
        args.metrics.clone()
    };
    let options = metric_options(args, &metrics)?;
    let cases = match (
        &args.pred_dir,
        &args.ref_dir,
        &args.prediction,
        &args.reference,
    ) {
        (Some(p), Some(r), _, _) => folder_cases(p, r)?,
        (None, None, Some(p), Some(r)) => vec![CaseSpec {
            name: case_name(p),
            prediction: Some(p.clone()),
            reference: Some(r.clone()),
        }],
        _ => bail!("give either PREDICTION REFERENCE or --pred-dir and --ref-dir"),
    };
    let tolerance = GeometryTolerance {
        ignore_spacing: args.ignore_spacing || args.ignore_geometry,
        ignore_position: args.ignore_position || args.ignore_geometry,
    };
    let show_progress =
        args.pred_dir.is_some() && !args.no_progress && std::io::stderr().is_terminal();
    let outcomes = run_cases(
        &cases,
        &options,
        tolerance,
        usize::from(args.jobs),
        show_progress,
    );

    let mut failed = 0;
    for (case, outcome) in cases.iter().zip(&outcomes) {
        if let Outcome::Failed(why) = outcome {
            failed += 1;
            eprintln!("error: case {}: {why}", case.name);
        }
    }
    let text = report::render(args.format, &cases, &outcomes, &metrics, &options);
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write the report to {}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (e.g. `| head`) is not an error.
            if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Err(e).context("cannot write the report to stdout");
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} case(s) failed", cases.len());
        return Ok(ExitCode::from(EXIT_CASE_FAILED));
    }
    Ok(ExitCode::from(EXIT_OK))
}

fn metric_options(args: &EvalArgs, metrics: &[Metric]) -> Result<MetricOptions> {
    let empty = match (args.empty, args.worst_distance) {
        (EmptyArg::Monai, None) => EmptyPolicy::Monai,
        (EmptyArg::Monai, Some(_)) => bail!("--worst-distance needs --empty worst"),
        (EmptyArg::Worst, None) => EmptyPolicy::WorstCase(WorstDistance::Diagonal),
        (EmptyArg::Worst, Some(v)) => EmptyPolicy::WorstCase(WorstDistance::Value(v)),
    };
    let options = MetricOptions {
        labels: args.labels.clone(),
        distances: metrics.iter().any(|m| m.is_distance()),
        boundary: match args.boundary {
            BoundaryArg::Voxels => Boundary::InnerVoxels,
            BoundaryArg::VoxelsFull => Boundary::InnerVoxelsFull,
            BoundaryArg::Surfels => Boundary::Surfels,
        },
        percentile: args.percentile,
        percentile_rule: match args.percentile_rule {
            RuleArg::Max => PercentileRule::MaxOfDirected,
            RuleArg::Pooled => PercentileRule::Pooled,
            RuleArg::Mean => PercentileRule::MeanOfDirected,
        },
        nsd_tolerances: args.nsd_tolerance.clone(),
        empty,
        gds_weight: Default::default(),
    };
    options.validate()?;
    Ok(options)
}

fn case_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
        .unwrap_or(&name)
        .to_string()
}

fn nifti_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read folder {}", dir.display()))?
            .path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.is_file() && (name.ends_with(".nii") || name.ends_with(".nii.gz")) {
            files.push((name, path));
        }
    }
    files.sort();
    Ok(files)
}

/// Pairs the NIfTI files of two folders by file name; a file without counterpart is a case that
/// fails.
fn folder_cases(pred_dir: &Path, ref_dir: &Path) -> Result<Vec<CaseSpec>> {
    let preds = nifti_files(pred_dir)?;
    let refs = nifti_files(ref_dir)?;
    let mut names: Vec<&String> = preds.iter().chain(&refs).map(|(n, _)| n).collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        bail!(
            "no .nii or .nii.gz file in {} or {}",
            pred_dir.display(),
            ref_dir.display()
        );
    }
    let find = |files: &[(String, PathBuf)], n: &str| {
        files.iter().find(|(m, _)| m == n).map(|(_, p)| p.clone())
    };
    Ok(names
        .into_iter()
        .map(|n| CaseSpec {
            name: case_name(Path::new(n)),
            prediction: find(&preds, n),
            reference: find(&refs, n),
        })
        .collect())
}

fn run_cases(
    cases: &[CaseSpec],
    options: &MetricOptions,
    tolerance: GeometryTolerance,
    jobs: usize,
    show_progress: bool,
) -> Vec<Outcome> {
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
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new((0..cases.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(cases.len()).max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let outcome = match evaluate_case(case, options, tolerance) {
                        Ok(m) => Outcome::Done(m),
                        Err(e) => Outcome::Failed(format!("{e:#}")),
                    };
                    bar.inc(1);
                    results.lock().expect("a worker panicked")[i] = Some(outcome);
                }
            });
        }
    });
    bar.finish_and_clear();
    results
        .into_inner()
        .expect("a worker panicked")
        .into_iter()
        .map(|o| o.expect("every case is evaluated"))
        .collect()
}

fn evaluate_case(
    case: &CaseSpec,
    options: &MetricOptions,
    tol: GeometryTolerance,
) -> Result<CaseMetrics> {
    let (pred_path, ref_path) = match (&case.prediction, &case.reference) {
        (Some(p), Some(r)) => (p, r),
        (Some(p), None) => bail!("no reference file for prediction {}", p.display()),
        (None, Some(r)) => bail!("no prediction file for reference {}", r.display()),
        (None, None) => unreachable!("a case comes from at least one file"),
    };
    // Decompression is single-threaded: read the two files at the same time.
    let (pred, reference) = std::thread::scope(|s| {
        let p = s.spawn(|| read_label_image(pred_path));
        let r = read_label_image(ref_path);
        (p.join().expect("the reader thread panicked"), r)
    });
    let (pred, reference) = (pred?, reference?);
    check_geometry(&pred.geometry, &reference.geometry, tol)
        .with_context(|| format!("{} and {}", pred_path.display(), ref_path.display()))?;
    let pred_volume = pred.volume.with_spacing(reference.volume.spacing())?;
    Ok(evaluate(&pred_volume, &reference.volume, options)?)
}
