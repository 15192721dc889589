//! What the metrics compute and how: boundaries, percentiles, empty structures.

use crate::error::MetricsError;

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
    /// ([`percentile_area_weighted`](crate::percentile_area_weighted)).
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
    /// The length of the image diagonal in spacing units ([`LabelVolume::diagonal`](crate::LabelVolume::diagonal)).
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

/// Options of [`evaluate`](crate::evaluate). `MetricOptions::default()` is MONAI's behaviour with HD95 and NSD at
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

/// Class weights of the Generalized Dice score (MONAI `Weight`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GdsWeight {
    /// `w = 1 / |R|^2` (Sudre et al. 2017; MONAI's default).
    #[default]
    Square,
    /// `w = 1 / |R|`.
    Simple,
    /// `w = 1`.
    Uniform,
}
