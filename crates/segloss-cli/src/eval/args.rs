//! The options of `segloss eval`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::cases::Shard;
use crate::report::{Format, Metric};

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
