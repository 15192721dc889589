//! Boundary-distance metrics of one label from one pair of distance transforms: Hausdorff,
//! percentile Hausdorff, average surface distances, normalized surface Dice.

use super::boundary::{Surface, Surfaces};
use super::edt::{in_units, squared_edt_into};
use super::options::{EmptyPolicy, PercentileRule, WorstDistance};

/// Distance metrics of one label. Every value is in spacing units (mm for NIfTI files) except the
/// NSD values, which are fractions in `[0, 1]`. "pred_to_ref" values are taken over the
/// prediction's boundary points, each measured to the nearest boundary point of the reference.
///
/// For empty structures see [`EmptyPolicy`]; [`LabelMetrics`](super::LabelMetrics) says which of
/// the two volumes was empty.
#[derive(Debug, Clone, PartialEq)]
pub struct DistanceMetrics {
    /// Hausdorff distance, `max(hausdorff_pred_to_ref, hausdorff_ref_to_pred)`.
    pub hausdorff: f64,
    /// Directed Hausdorff distance, largest prediction-to-reference distance.
    pub hausdorff_pred_to_ref: f64,
    /// Directed Hausdorff distance, largest reference-to-prediction distance.
    pub hausdorff_ref_to_pred: f64,
    /// Percentile Hausdorff distance (HD95 by default), combined by the [`PercentileRule`].
    pub percentile_hausdorff: f64,
    /// The percentile of the prediction-to-reference distances.
    pub percentile_pred_to_ref: f64,
    /// The percentile of the reference-to-prediction distances.
    pub percentile_ref_to_pred: f64,
    /// Average surface distance prediction to reference (MONAI `SurfaceDistanceMetric()`, MedPy
    /// `asd`, DeepMind's second value): `mean(d_pr)`, area-weighted for surfels.
    pub asd_pred_to_ref: f64,
    /// Average surface distance reference to prediction: `mean(d_rp)`.
    pub asd_ref_to_pred: f64,
    /// Average symmetric surface distance, pooled: `(sum d_pr + sum d_rp) / (n_pr + n_rp)`
    /// (MONAI `SurfaceDistanceMetric(symmetric=True)`, MedPy >= 0.5.2 `assd`; with surfels the
    /// sums and counts are area-weighted).
    pub assd: f64,
    /// Mean of the two directed averages, `(asd_pred_to_ref + asd_ref_to_pred) / 2`
    /// (MetricsReloaded `masd`, MedPy <= 0.4 `assd`).
    pub masd: f64,
    /// Normalized surface Dice at each tolerance of
    /// [`MetricOptions::nsd_tolerances`](super::MetricOptions::nsd_tolerances), in that order:
    /// `(#{d_pr <= tau} + #{d_rp <= tau}) / (n_pr + n_rp)` (Nikolov et al. 2021; MONAI
    /// `SurfaceDiceMetric`), area-weighted for surfels (DeepMind `compute_surface_dice_at_tolerance`,
    /// MONAI `use_subvoxels=True`).
    pub nsd: Vec<f64>,
}

/// Distances of one direction, with their weights (`None`: all 1).
struct Directed {
    d: Vec<f64>,
    w: Option<Vec<f64>>,
}

impl Directed {
    fn weight_sum(&self) -> f64 {
        self.w
            .as_ref()
            .map_or(self.d.len() as f64, |w| w.iter().sum())
    }
    fn weighted_sum(&self) -> f64 {
        match &self.w {
            None => self.d.iter().sum(),
            Some(w) => self.d.iter().zip(w).map(|(d, w)| d * w).sum(),
        }
    }
    fn weight_within(&self, tau: f64) -> f64 {
        match &self.w {
            None => self.d.iter().filter(|&&d| d <= tau).count() as f64,
            Some(w) => self
                .d
                .iter()
                .zip(w)
                .filter(|(d, _)| **d <= tau)
                .map(|(_, w)| w)
                .sum(),
        }
    }
    fn max(&self) -> f64 {
        self.d.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
    fn percentile(&self, q: f64) -> f64 {
        match &self.w {
            None => percentile_linear(&self.d, q),
            Some(w) => percentile_area_weighted(&self.d, w, q),
        }
    }
    fn concat(a: &Directed, b: &Directed) -> Directed {
        let d = a.d.iter().chain(&b.d).copied().collect();
        let w = match (&a.w, &b.w) {
            (Some(x), Some(y)) => Some(x.iter().chain(y).copied().collect()),
            _ => None,
        };
        Directed { d, w }
    }
}

/// The `q`-th percentile with linear interpolation between order statistics (`numpy.percentile`
/// and `torch.quantile` defaults): rank `q/100 * (n - 1)`. NaN for no values.
///
/// ```
/// use segloss_metrics::percentile_linear;
/// assert_eq!(percentile_linear(&[4.0, 1.0, 3.0, 2.0], 50.0), 2.5);
/// assert_eq!(percentile_linear(&[4.0, 1.0, 3.0, 2.0], 100.0), 4.0);
/// ```
pub fn percentile_linear(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    let rank = q / 100.0 * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let (_, lo_val, upper) = v.select_nth_unstable_by(lo, f64::total_cmp);
    let lo_val = *lo_val;
    let frac = rank - lo as f64;
    if frac == 0.0 || upper.is_empty() {
        return lo_val;
    }
    let hi_val = upper.iter().copied().fold(f64::INFINITY, f64::min);
    lo_val + (hi_val - lo_val) * frac
}

/// The area-weighted percentile of DeepMind's `compute_robust_hausdorff`: distances sorted
/// ascending, the first whose cumulative weight fraction reaches `q/100` (numpy `searchsorted`,
/// no interpolation). NaN for no values.
///
/// ```
/// use segloss_metrics::percentile_area_weighted;
/// // Weight fractions 0.25, 0.5, 1.0: the 50th percentile is the second distance.
/// assert_eq!(percentile_area_weighted(&[3.0, 1.0, 2.0], &[2.0, 1.0, 1.0], 50.0), 2.0);
/// ```
pub fn percentile_area_weighted(distances: &[f64], weights: &[f64], q: f64) -> f64 {
    if distances.is_empty() {
        return f64::NAN;
    }
    let mut pairs: Vec<(f64, f64)> = distances
        .iter()
        .copied()
        .zip(weights.iter().copied())
        .collect();
    pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let total: f64 = pairs.iter().map(|p| p.1).sum();
    let target = q / 100.0;
    let mut cum = 0.0;
    for (i, (d, w)) in pairs.iter().enumerate() {
        cum += w;
        if cum / total >= target {
            return *d;
        }
        if i + 1 == pairs.len() {
            return *d;
        }
    }
    unreachable!("the loop returns on its last element")
}

/// Distances from the points of `from` to the nearest point of `to`, from one EDT of `to`.
/// `grid` is a work buffer, reused between the two directions.
fn directed(
    grid: &mut Vec<f32>,
    dims: [usize; 3],
    spacing: [f64; 3],
    from: &Surface,
    to: &Surface,
) -> Directed {
    let (unit, scaled) = in_units(dims, spacing);
    squared_edt_into(grid, dims, scaled, &to.points, Some(&from.points));
    let d = from
        .points
        .iter()
        .map(|&i| f64::from(grid[i]).sqrt() * unit)
        .collect();
    Directed {
        d,
        w: from.weights.clone(),
    }
}

/// All distance metrics of one label whose prediction and reference are both non-empty.
pub(crate) fn distance_metrics(
    s: &Surfaces,
    spacing: [f64; 3],
    percentile: f64,
    rule: PercentileRule,
    tolerances: &[f64],
) -> DistanceMetrics {
    let mut grid = Vec::new();
    let pr = directed(&mut grid, s.dims, spacing, &s.pred, &s.reference);
    let rp = directed(&mut grid, s.dims, spacing, &s.reference, &s.pred);
    drop(grid);
    let (hpr, hrp) = (pr.max(), rp.max());
    let (ppr, prp) = (pr.percentile(percentile), rp.percentile(percentile));
    let phd = match rule {
        PercentileRule::MaxOfDirected => ppr.max(prp),
        PercentileRule::Pooled => Directed::concat(&pr, &rp).percentile(percentile),
        PercentileRule::MeanOfDirected => 0.5 * (ppr + prp),
    };
    let (wpr, wrp) = (pr.weight_sum(), rp.weight_sum());
    let (spr, srp) = (pr.weighted_sum(), rp.weighted_sum());
    let (apr, arp) = (spr / wpr, srp / wrp);
    DistanceMetrics {
        hausdorff: hpr.max(hrp),
        hausdorff_pred_to_ref: hpr,
        hausdorff_ref_to_pred: hrp,
        percentile_hausdorff: phd,
        percentile_pred_to_ref: ppr,
        percentile_ref_to_pred: prp,
        asd_pred_to_ref: apr,
        asd_ref_to_pred: arp,
        assd: (spr + srp) / (wpr + wrp),
        masd: 0.5 * (apr + arp),
        nsd: tolerances
            .iter()
            .map(|&t| (pr.weight_within(t) + rp.weight_within(t)) / (wpr + wrp))
            .collect(),
    }
}

/// Distance metrics of a label that is empty in the prediction, the reference or both.
pub(crate) fn empty_distance_metrics(
    pred_empty: bool,
    ref_empty: bool,
    policy: EmptyPolicy,
    diagonal: f64,
    tolerances: &[f64],
) -> DistanceMetrics {
    debug_assert!(pred_empty || ref_empty);
    let both = pred_empty && ref_empty;
    // (distance, percentile distance, nsd)
    let (d, p, nsd) = match policy {
        EmptyPolicy::Monai if both => (f64::NAN, f64::NAN, f64::NAN),
        // MONAI measures infinities: max and mean are inf, torch.quantile of infs is NaN.
        EmptyPolicy::Monai => (f64::INFINITY, f64::NAN, 0.0),
        EmptyPolicy::WorstCase(_) if both => (0.0, 0.0, 1.0),
        EmptyPolicy::WorstCase(w) => {
            let v = match w {
                WorstDistance::Diagonal => diagonal,
                WorstDistance::Value(v) => v,
            };
            (v, v, 0.0)
        }
    };
    DistanceMetrics {
        hausdorff: d,
        hausdorff_pred_to_ref: d,
        hausdorff_ref_to_pred: d,
        percentile_hausdorff: p,
        percentile_pred_to_ref: p,
        percentile_ref_to_pred: p,
        asd_pred_to_ref: d,
        asd_ref_to_pred: d,
        assd: d,
        masd: d,
        nsd: vec![nsd; tolerances.len()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_percentile_linear_matches_numpy_rule() {
        // numpy.percentile([1, 2, 3, 4, 10], 95) = 4 + 0.8 * 6 = 8.8
        assert!((percentile_linear(&[10.0, 1.0, 4.0, 2.0, 3.0], 95.0) - 8.8).abs() < 1e-12);
        assert_eq!(percentile_linear(&[7.0], 95.0), 7.0);
        assert!(percentile_linear(&[], 95.0).is_nan());
        assert_eq!(percentile_linear(&[3.0, 1.0], 0.0), 1.0);
    }

    #[test]
    fn test_percentile_area_weighted_searchsorted() {
        let d = [1.0, 2.0, 3.0, 4.0];
        let w = [1.0, 1.0, 1.0, 1.0];
        // Fractions 0.25, 0.5, 0.75, 1.0: first >= 0.95 is the last; first >= 0.5 is the second.
        assert_eq!(percentile_area_weighted(&d, &w, 95.0), 4.0);
        assert_eq!(percentile_area_weighted(&d, &w, 50.0), 2.0);
        assert_eq!(percentile_area_weighted(&d, &w, 0.0), 1.0);
    }
}
