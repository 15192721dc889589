//! # segloss-metrics
//!
//! Segmentation metrics over label volumes: overlap (Dice, IoU, precision, recall, specificity,
//! volume difference, Generalized Dice) and boundary distances (Hausdorff, percentile Hausdorff,
//! average surface distances, normalized surface Dice), MONAI-compatible by default.
//!
//! This crate does not depend on Burn: evaluating segmentations needs no tensor library, so
//! `segloss eval` builds without one. The `segloss` crate re-exports it as `segloss::metrics`
//! with the feature `burn` on, which adds `LabelVolume::from_tensor` for Burn integer tensors.
//!
//! Besides the metrics: [`nifti`] reads NIfTI-1/-2 label and intensity images (`.nii`,
//! `.nii.gz`) with their geometry and writes label maps, and [`files`] writes output files whole
//! (never over an input) and lists the NIfTI files of a folder.
//!
//! Everything here is plain Rust over [`LabelVolume`]s (2D or 3D, anisotropic spacing).
//! [`evaluate`] computes every metric of every requested label in one pass:
//!
//! 1. one parallel pass over both volumes counts TP/FP/FN/TN and finds the bounding box of each
//!    label ([`ConfusionCounts`]);
//! 2. per label (labels in parallel), both volumes are cropped to the union bounding box plus a
//!    one-voxel margin, the two boundaries are extracted ([`Boundary`]), and **one pair** of exact
//!    Euclidean distance transforms (Felzenszwalb-Huttenlocher, [`euclidean_distance_transform`])
//!    gives the distances of each boundary to the other, from which all distance metrics
//!    ([`DistanceMetrics`]) follow. Memory per label is a few bytes per voxel of its crop.
//!
//! # Definitions and defaults
//! The defaults reproduce MONAI 1.6.1 (`DiceMetric`, `MeanIoU`, `GeneralizedDiceScore`,
//! `HausdorffDistanceMetric`, `SurfaceDistanceMetric`, `SurfaceDiceMetric`):
//! inner boundary voxels (the mask minus its erosion by the face-connected cross), HD95 as the
//! maximum of the two directed 95th percentiles with linear interpolation, and NaN/inf for empty
//! structures as MONAI gives them. Other definitions are options: the pooled percentile of MedPy
//! ([`PercentileRule::Pooled`]), the mean of the directed percentiles (plastimatch), a
//! 26-connected boundary ([`Boundary::InnerVoxelsFull`]), and DeepMind `surface-distance`'s
//! surface elements with areas ([`Boundary::Surfels`], which MONAI's
//! `SurfaceDiceMetric(use_subvoxels=True)` also uses). Directed values are always reported.
//!
//! # Empty structures
//! See [`EmptyPolicy`]; every [`LabelMetrics`] says whether the label was empty in the
//! prediction and in the reference.
//!
//! ```
//! use segloss_metrics::{evaluate, LabelVolume, MetricOptions};
//! // Two 2D masks of label 1, the prediction shifted by one pixel.
//! let mut r = vec![0u16; 64];
//! let mut p = vec![0u16; 64];
//! for y in 2..6 { for x in 2..6 { r[y * 8 + x] = 1; p[y * 8 + x + 1] = 1; } }
//! let pred = LabelVolume::new(p, &[8, 8], &[1.0, 1.0])?;
//! let reference = LabelVolume::new(r, &[8, 8], &[1.0, 1.0])?;
//! let result = evaluate(&pred, &reference, &MetricOptions::default())?;
//! let label = &result.labels[0];
//! assert_eq!(label.label, 1);
//! assert_eq!(label.dice, 0.75);
//! assert_eq!(label.distances.as_ref().unwrap().hausdorff, 1.0);
//! # Ok::<(), segloss_metrics::MetricsError>(())
//! ```

#![warn(missing_docs)]

mod boundary;
mod distance;
mod edt;
pub mod files;
pub mod nifti;
mod overlap;
mod surfel_table;
mod volume;

use rayon::prelude::*;

pub use distance::{DistanceMetrics, percentile_area_weighted, percentile_linear};
pub use edt::euclidean_distance_transform;
pub use overlap::{ConfusionCounts, GdsWeight, generalized_dice, generalized_dice_per_label};
pub use volume::{LabelVolume, MAX_ANISOTROPY};

/// What went wrong with the input of a metric.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MetricsError {
    /// A shape is not 2D/3D, does not match the data, or the two volumes differ in shape.
    Shape(String),
    /// A spacing is not finite and > 0, has the wrong length, or the two volumes differ.
    Spacing(String),
    /// A label value cannot be represented (outside `0..=65535`).
    Label(String),
    /// An option is out of its range (percentile, tolerance, worst-case value).
    Option(String),
}

impl std::fmt::Display for MetricsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsError::Shape(m) => write!(f, "shape error: {m}"),
            MetricsError::Spacing(m) => write!(f, "spacing error: {m}"),
            MetricsError::Label(m) => write!(f, "label error: {m}"),
            MetricsError::Option(m) => write!(f, "invalid option: {m}"),
        }
    }
}

impl std::error::Error for MetricsError {}

/// Which points represent a label's boundary for the distance metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Boundary {
    /// Voxels of the mask with at least one face neighbour (6 in 3D, 4 in 2D) outside it: the mask
    /// XOR its binary erosion, as in MONAI (`get_mask_edges`), MedPy and MetricsReloaded.
    /// Every point weighs 1. The default.
    #[default]
    InnerVoxels,
    /// Voxels of the mask with any of their 26 (8 in 2D) neighbours outside it (a thinner
    /// boundary, like SimpleITK's `LabelContour(fullyConnected=True)` used by seg-metrics).
    InnerVoxelsFull,
    /// Surface elements on the corner grid (half a voxel off the voxel centres) weighted by their
    /// marching-cubes area (3D) or contour length (2D): DeepMind `surface-distance`
    /// (`compute_surface_distances`), MONAI `SurfaceDiceMetric(use_subvoxels=True)`. Means, NSD and
    /// percentiles are area-weighted; the percentile follows DeepMind's rule
    /// ([`percentile_area_weighted`]).
    Surfels,
}

/// How the two directed percentiles make the percentile Hausdorff distance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PercentileRule {
    /// `max(P_q(d_pr), P_q(d_rp))`: MONAI, MetricsReloaded, DeepMind. The default.
    #[default]
    MaxOfDirected,
    /// `P_q(d_pr ∪ d_rp)`, the percentile of both directions pooled: MedPy `hd95`, seg-metrics.
    Pooled,
    /// `(P_q(d_pr) + P_q(d_rp)) / 2`: plastimatch's "percent Hausdorff".
    MeanOfDirected,
}

/// The worst-case distance used by [`EmptyPolicy::WorstCase`] when exactly one volume is empty.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum WorstDistance {
    /// The length of the image diagonal in spacing units ([`LabelVolume::diagonal`]).
    #[default]
    Diagonal,
    /// A fixed value in spacing units.
    Value(f64),
}

/// What metrics give when a label is empty in the prediction (P), the reference (R) or both.
///
/// | metric | policy | P = R = ∅ | P ≠ ∅, R = ∅ | P = ∅, R ≠ ∅ |
/// |---|---|---|---|---|
/// | Dice, IoU, recall | `Monai` | NaN | NaN | 0 |
/// | | `WorstCase` | 1 | 0 | 0 |
/// | precision | `Monai` | NaN | 0 | NaN |
/// | | `WorstCase` | 1 | 0 | 0 |
/// | volume difference | `Monai` | NaN | NaN | -1 |
/// | | `WorstCase` | 0 | +inf | -1 |
/// | HD, directed HD, ASD, ASSD, MASD | `Monai` | NaN | inf | inf |
/// | | `WorstCase` | 0 | worst | worst |
/// | percentile HD (directed too) | `Monai` | NaN | NaN | NaN |
/// | | `WorstCase` | 0 | worst | worst |
/// | NSD | `Monai` | NaN | 0 | 0 |
/// | | `WorstCase` | 1 | 0 | 0 |
///
/// `Monai` is what MONAI 1.6.1 returns (its percentile HD is NaN when one side is empty, because
/// `torch.quantile` of infinities is NaN: a missed structure then drops out of a NaN-skipping mean;
/// Project-MONAI/MONAI#9095). `WorstCase` scores a missed or hallucinated structure as badly as
/// possible and a correctly absent one as perfect (the practice recommended in
/// AImageLab-zip/ToothFairy#5). Specificity is NaN under both when the image has no negatives.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum EmptyPolicy {
    /// MONAI-compatible NaN/inf values. The default.
    #[default]
    Monai,
    /// Worst value for one-sided emptiness, best value when both are empty.
    WorstCase(WorstDistance),
}

/// Options of [`evaluate`]. `MetricOptions::default()` is MONAI's behaviour with HD95 and NSD at
/// a 1.0 tolerance.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricOptions {
    /// Labels to evaluate, in this order. `None`: every label other than 0 present in either
    /// volume, ascending. A requested label absent from both volumes is reported as empty.
    pub labels: Option<Vec<u16>>,
    /// Whether to compute the distance metrics (the overlap metrics are always computed).
    pub distances: bool,
    /// The boundary model of the distance metrics.
    pub boundary: Boundary,
    /// The percentile of the percentile Hausdorff distance, in `[0, 100]` (default 95).
    pub percentile: f64,
    /// How the directed percentiles combine.
    pub percentile_rule: PercentileRule,
    /// NSD tolerances in spacing units, each finite and >= 0 (default `[1.0]`).
    pub nsd_tolerances: Vec<f64>,
    /// Values for empty structures.
    pub empty: EmptyPolicy,
    /// Class weights of the case-level Generalized Dice score.
    pub gds_weight: GdsWeight,
}

impl Default for MetricOptions {
    fn default() -> Self {
        Self {
            labels: None,
            distances: true,
            boundary: Boundary::default(),
            percentile: 95.0,
            percentile_rule: PercentileRule::default(),
            nsd_tolerances: vec![1.0],
            empty: EmptyPolicy::default(),
            gds_weight: GdsWeight::default(),
        }
    }
}

impl MetricOptions {
    /// Checks the ranges of the options.
    ///
    /// # Errors
    /// [`MetricsError::Option`] naming the option and the value.
    pub fn validate(&self) -> Result<(), MetricsError> {
        if !(0.0..=100.0).contains(&self.percentile) {
            return Err(MetricsError::Option(format!(
                "percentile must be in [0, 100], got {}",
                self.percentile
            )));
        }
        if let Some(t) = self
            .nsd_tolerances
            .iter()
            .find(|t| !(t.is_finite() && **t >= 0.0))
        {
            return Err(MetricsError::Option(format!(
                "NSD tolerances must be finite and >= 0, got {t}"
            )));
        }
        if let EmptyPolicy::WorstCase(WorstDistance::Value(v)) = self.empty
            && !(v.is_finite() && v >= 0.0)
        {
            return Err(MetricsError::Option(format!(
                "the worst-case distance must be finite and >= 0, got {v}"
            )));
        }
        Ok(())
    }
}

/// All metrics of one label of one case.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMetrics {
    /// The label value.
    pub label: u16,
    /// Voxel counts.
    pub counts: ConfusionCounts,
    /// Whether the label is absent from the prediction.
    pub pred_empty: bool,
    /// Whether the label is absent from the reference.
    pub ref_empty: bool,
    /// [`ConfusionCounts::dice`].
    pub dice: f64,
    /// [`ConfusionCounts::iou`].
    pub iou: f64,
    /// [`ConfusionCounts::precision`].
    pub precision: f64,
    /// [`ConfusionCounts::recall`].
    pub recall: f64,
    /// [`ConfusionCounts::specificity`].
    pub specificity: f64,
    /// [`ConfusionCounts::volume_difference`].
    pub volume_difference: f64,
    /// Distance metrics, `None` when [`MetricOptions::distances`] is false.
    pub distances: Option<DistanceMetrics>,
}

/// The metrics of one case (one prediction/reference pair).
#[derive(Debug, Clone, PartialEq)]
pub struct CaseMetrics {
    /// Per label, in the order of [`MetricOptions::labels`].
    pub labels: Vec<LabelMetrics>,
    /// Generalized Dice score over the evaluated labels ([`generalized_dice`]).
    pub generalized_dice: f64,
}

/// Computes every metric of every requested label of one case. See the [module docs](self).
///
/// # Errors
/// [`MetricsError::Shape`] when the volumes differ in shape, [`MetricsError::Spacing`] when they
/// differ in spacing (relative difference above 1e-6), [`MetricsError::Option`] for options out
/// of range.
pub fn evaluate(
    pred: &LabelVolume,
    reference: &LabelVolume,
    options: &MetricOptions,
) -> Result<CaseMetrics, MetricsError> {
    options.validate()?;
    if pred.shape() != reference.shape() {
        return Err(MetricsError::Shape(format!(
            "prediction has shape {:?} but reference has shape {:?}",
            pred.shape(),
            reference.shape()
        )));
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs());
    if !pred
        .spacing()
        .iter()
        .zip(reference.spacing())
        .all(|(a, b)| close(*a, *b))
    {
        return Err(MetricsError::Spacing(format!(
            "prediction has spacing {:?} but reference has spacing {:?}",
            pred.spacing(),
            reference.spacing()
        )));
    }
    let stats = overlap::label_stats(pred, reference);
    let labels: Vec<u16> = match &options.labels {
        Some(l) => l.clone(),
        None => (1..stats.len())
            .filter(|&l| stats[l].n_pred > 0 || stats[l].n_ref > 0)
            .map(|l| l as u16)
            .collect(),
    };
    let total = pred.labels().len() as u64;
    let empty_stats = overlap::LabelStats::default();
    let results: Vec<LabelMetrics> = labels
        .par_iter()
        .map(|&label| {
            let s = stats.get(label as usize).unwrap_or(&empty_stats);
            label_metrics(pred, reference, label, s, total, options)
        })
        .collect();
    let counts: Vec<ConfusionCounts> = results.iter().map(|r| r.counts).collect();
    Ok(CaseMetrics {
        generalized_dice: generalized_dice(&counts, options.gds_weight),
        labels: results,
    })
}

fn label_metrics(
    pred: &LabelVolume,
    reference: &LabelVolume,
    label: u16,
    s: &overlap::LabelStats,
    total: u64,
    o: &MetricOptions,
) -> LabelMetrics {
    let counts = s.counts(total);
    let (pred_empty, ref_empty) = (s.n_pred == 0, s.n_ref == 0);
    let distances = o.distances.then(|| {
        if pred_empty || ref_empty {
            return distance::empty_distance_metrics(
                pred_empty,
                ref_empty,
                o.empty,
                pred.diagonal(),
                &o.nsd_tolerances,
            );
        }
        let bbox = boundary::BBox::union(s.bbox_pred, s.bbox_ref).expect("non-empty label");
        let surfaces = boundary::surfaces(pred, reference, label, bbox, o.boundary);
        distance::distance_metrics(
            &surfaces,
            pred.spacing3(),
            o.percentile,
            o.percentile_rule,
            &o.nsd_tolerances,
        )
    });
    LabelMetrics {
        label,
        counts,
        pred_empty,
        ref_empty,
        dice: counts.dice(o.empty),
        iou: counts.iou(o.empty),
        precision: counts.precision(o.empty),
        recall: counts.recall(o.empty),
        specificity: counts.specificity(),
        volume_difference: counts.volume_difference(o.empty),
        distances,
    }
}
