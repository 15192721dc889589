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
#![warn(clippy::undocumented_unsafe_blocks)]

mod boundary;
mod distance;
mod edt;
mod error;
pub mod files;
pub mod nifti;
mod options;
mod overlap;
mod surfel_table;
mod volume;

use rayon::prelude::*;

pub use distance::{DistanceMetrics, percentile_area_weighted, percentile_linear};
pub use edt::euclidean_distance_transform;
pub use error::MetricsError;
pub use options::{Boundary, EmptyPolicy, GdsWeight, MetricOptions, PercentileRule, WorstDistance};
pub use overlap::{ConfusionCounts, generalized_dice, generalized_dice_per_label};
pub use volume::{LabelVolume, MAX_ANISOTROPY};

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
