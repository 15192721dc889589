//! Confusion counts and overlap metrics (Dice, IoU, precision, recall, specificity, volume
//! difference, Generalized Dice), all from one pass over the two volumes.

use rayon::prelude::*;

use super::boundary::BBox;
use super::options::{EmptyPolicy, GdsWeight};
use super::volume::LabelVolume;

/// Voxel counts of one label: true positives (in both), false positives (prediction only), false
/// negatives (reference only) and true negatives (in neither).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfusionCounts {
    /// Voxels labelled in both volumes.
    pub tp: u64,
    /// Voxels labelled in the prediction only.
    pub fp: u64,
    /// Voxels labelled in the reference only (`fn` is a keyword).
    pub fn_: u64,
    /// Voxels labelled in neither.
    pub tn: u64,
}

/// Fills `num / den`, or applies the empty-structure rule when `den == 0`.
fn ratio(num: u64, den: u64, undefined: f64) -> f64 {
    if den == 0 {
        undefined
    } else {
        num as f64 / den as f64
    }
}

impl ConfusionCounts {
    /// Voxels of the label in the prediction, `tp + fp`.
    pub fn pred_volume(&self) -> u64 {
        self.tp + self.fp
    }

    /// Voxels of the label in the reference, `tp + fn`.
    pub fn ref_volume(&self) -> u64 {
        self.tp + self.fn_
    }

    /// The value an overlap score takes when the reference is empty: NaN (MONAI's
    /// `ignore_empty=True`), or under [`EmptyPolicy::WorstCase`] 1 when the prediction is empty too
    /// and 0 otherwise (MONAI's `ignore_empty=False`).
    fn empty_ref_score(&self, policy: EmptyPolicy) -> f64 {
        match policy {
            EmptyPolicy::Monai => f64::NAN,
            EmptyPolicy::WorstCase(_) => f64::from(u8::from(self.pred_volume() == 0)),
        }
    }

    /// Dice = 2 TP / (2 TP + FP + FN) (Dice 1945, Sørensen 1948; MONAI `DiceMetric`). Empty
    /// reference: see [`EmptyPolicy`] (MONAI default NaN).
    pub fn dice(&self, policy: EmptyPolicy) -> f64 {
        if self.ref_volume() == 0 {
            return self.empty_ref_score(policy);
        }
        2.0 * self.tp as f64 / (2 * self.tp + self.fp + self.fn_) as f64
    }

    /// IoU (Jaccard) = TP / (TP + FP + FN) (MONAI `MeanIoU`). Empty reference: as [`Self::dice`].
    pub fn iou(&self, policy: EmptyPolicy) -> f64 {
        if self.ref_volume() == 0 {
            return self.empty_ref_score(policy);
        }
        self.tp as f64 / (self.tp + self.fp + self.fn_) as f64
    }

    /// Precision (positive predictive value) = TP / (TP + FP). Empty prediction: NaN, or under
    /// [`EmptyPolicy::WorstCase`] 1 if the reference is empty too, else 0.
    pub fn precision(&self, policy: EmptyPolicy) -> f64 {
        let undefined = match policy {
            EmptyPolicy::Monai => f64::NAN,
            EmptyPolicy::WorstCase(_) => f64::from(u8::from(self.ref_volume() == 0)),
        };
        ratio(self.tp, self.pred_volume(), undefined)
    }

    /// Recall (sensitivity) = TP / (TP + FN). Empty reference: as [`Self::dice`].
    pub fn recall(&self, policy: EmptyPolicy) -> f64 {
        ratio(self.tp, self.ref_volume(), self.empty_ref_score(policy))
    }

    /// Specificity = TN / (TN + FP). NaN under every policy when the reference label covers the
    /// whole image (no negatives).
    pub fn specificity(&self) -> f64 {
        ratio(self.tn, self.tn + self.fp, f64::NAN)
    }

    /// Relative volume difference = (|P| - |R|) / |R|, signed (MedPy `ravd`). Empty reference:
    /// NaN, or under [`EmptyPolicy::WorstCase`] 0 if the prediction is empty too, else +inf.
    pub fn volume_difference(&self, policy: EmptyPolicy) -> f64 {
        let (p, r) = (self.pred_volume() as f64, self.ref_volume() as f64);
        if r == 0.0 {
            return match policy {
                EmptyPolicy::Monai => f64::NAN,
                EmptyPolicy::WorstCase(_) if p == 0.0 => 0.0,
                EmptyPolicy::WorstCase(_) => f64::INFINITY,
            };
        }
        (p - r) / r
    }
}

/// Per-label weights; a label with an empty reference (infinite weight) takes the largest finite
/// weight of the others, or 1 when there is none (MONAI `compute_generalized_dice`).
fn gds_weights(counts: &[ConfusionCounts], weight: GdsWeight) -> Vec<f64> {
    let mut w: Vec<f64> = counts
        .iter()
        .map(|c| {
            let r = c.ref_volume() as f64;
            match weight {
                GdsWeight::Square => 1.0 / (r * r),
                GdsWeight::Simple => 1.0 / r,
                GdsWeight::Uniform => 1.0,
            }
        })
        .collect();
    let max_finite = w
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(0.0, f64::max);
    let fill = if max_finite > 0.0 { max_finite } else { 1.0 };
    for x in w.iter_mut().filter(|x| x.is_infinite()) {
        *x = fill;
    }
    w
}

/// Generalized Dice score of one case over the given labels (Sudre et al., "Generalised Dice
/// overlap as a deep learning loss function for highly unbalanced segmentations", DLMIA 2017;
/// MONAI `GeneralizedDiceScore(sum_over_classes=True)`):
///
/// ```text
/// GDS = 2 * sum_l w_l TP_l / sum_l w_l (|P_l| + |R_l|)
/// ```
///
/// An empty denominator (every label empty in both volumes) gives 1.
///
/// ```
/// use segloss_metrics::{generalized_dice, ConfusionCounts, GdsWeight};
/// let c = [ConfusionCounts { tp: 3, fp: 1, fn_: 0, tn: 4 }];
/// assert!((generalized_dice(&c, GdsWeight::Square) - 6.0 / 7.0).abs() < 1e-12);
/// ```
pub fn generalized_dice(counts: &[ConfusionCounts], weight: GdsWeight) -> f64 {
    let w = gds_weights(counts, weight);
    let num: f64 = counts.iter().zip(&w).map(|(c, w)| w * c.tp as f64).sum();
    let den: f64 = counts
        .iter()
        .zip(&w)
        .map(|(c, w)| w * (c.pred_volume() + c.ref_volume()) as f64)
        .sum();
    if den == 0.0 { 1.0 } else { 2.0 * num / den }
}

/// Generalized Dice per label, MONAI's `GeneralizedDiceScore(reduction="none")`
/// (`sum_over_classes=False`): `2 w_l TP_l / (w_l (|P_l| + |R_l|))`, which is the Dice of each
/// label with an empty reference scored 1 (empty prediction too) or 0.
pub fn generalized_dice_per_label(counts: &[ConfusionCounts], weight: GdsWeight) -> Vec<f64> {
    let w = gds_weights(counts, weight);
    counts
        .iter()
        .zip(&w)
        .map(|(c, w)| {
            let den = w * (c.pred_volume() + c.ref_volume()) as f64;
            if den == 0.0 {
                f64::from(u8::from(w * c.pred_volume() as f64 == 0.0))
            } else {
                2.0 * w * c.tp as f64 / den
            }
        })
        .collect()
}

/// Per-label statistics of one pass: counts and bounding boxes.
#[derive(Debug, Clone, Default)]
pub(crate) struct LabelStats {
    pub n_pred: u64,
    pub n_ref: u64,
    pub tp: u64,
    pub bbox_pred: Option<BBox>,
    pub bbox_ref: Option<BBox>,
}

impl LabelStats {
    pub(crate) fn counts(&self, total: u64) -> ConfusionCounts {
        ConfusionCounts {
            tp: self.tp,
            fp: self.n_pred - self.tp,
            fn_: self.n_ref - self.tp,
            tn: total - self.n_pred - self.n_ref + self.tp,
        }
    }

    fn merge(&mut self, o: &LabelStats) {
        self.n_pred += o.n_pred;
        self.n_ref += o.n_ref;
        self.tp += o.tp;
        self.bbox_pred = BBox::union(self.bbox_pred, o.bbox_pred);
        self.bbox_ref = BBox::union(self.bbox_ref, o.bbox_ref);
    }
}

fn grow(b: &mut Option<BBox>, z: usize, y: usize, x0: usize, x1: usize) {
    let nb = BBox {
        lo: [z, y, x0],
        hi: [z + 1, y + 1, x1],
    };
    *b = BBox::union(*b, Some(nb));
}

/// One parallel pass over both volumes: counts and bounding boxes of every label value up to the
/// largest present, indexed by label.
pub(crate) fn label_stats(pred: &LabelVolume, reference: &LabelVolume) -> Vec<LabelStats> {
    let max_label = pred
        .labels()
        .par_iter()
        .chain(reference.labels().par_iter())
        .copied()
        .max()
        .unwrap_or(0) as usize;
    let [_, ny, nx] = pred.dims3();
    let rows = pred.labels().len() / nx;
    let min_len = (rows / (4 * rayon::current_num_threads())).max(1);
    pred.labels()
        .par_chunks(nx)
        .zip(reference.labels().par_chunks(nx))
        .enumerate()
        .with_min_len(min_len)
        .fold(
            || vec![LabelStats::default(); max_label + 1],
            |mut acc, (row, (p, r))| {
                let (z, y) = (row / ny, row % ny);
                // Runs where both labels stay the same (rows are mostly long runs of
                // background): one table update per run instead of per voxel.
                let mut i = 0;
                while i < p.len() {
                    let (a, b) = (p[i], r[i]);
                    let mut j = i + 1;
                    while j < p.len() && p[j] == a && r[j] == b {
                        j += 1;
                    }
                    let len = (j - i) as u64;
                    let sa = &mut acc[a as usize];
                    sa.n_pred += len;
                    sa.tp += if a == b { len } else { 0 };
                    grow(&mut sa.bbox_pred, z, y, i, j);
                    let sb = &mut acc[b as usize];
                    sb.n_ref += len;
                    grow(&mut sb.bbox_ref, z, y, i, j);
                    i = j;
                }
                acc
            },
        )
        .reduce(
            || vec![LabelStats::default(); max_label + 1],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    x.merge(y);
                }
                a
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_counts_and_bboxes() {
        let p = LabelVolume::new(vec![0, 1, 1, 2, 0, 1], &[2, 3], &[1.0, 1.0]).unwrap();
        let r = LabelVolume::new(vec![1, 1, 0, 2, 2, 0], &[2, 3], &[1.0, 1.0]).unwrap();
        let s = label_stats(&p, &r);
        assert_eq!(s.len(), 3);
        assert_eq!(
            s[1].counts(6),
            ConfusionCounts {
                tp: 1,
                fp: 2,
                fn_: 1,
                tn: 2
            }
        );
        assert_eq!(
            s[2].counts(6),
            ConfusionCounts {
                tp: 1,
                fp: 0,
                fn_: 1,
                tn: 4
            }
        );
        assert_eq!(
            s[1].bbox_pred,
            Some(BBox {
                lo: [0, 0, 1],
                hi: [1, 2, 3]
            })
        );
        assert_eq!(
            s[2].bbox_ref,
            Some(BBox {
                lo: [0, 1, 0],
                hi: [1, 2, 2]
            })
        );
    }

    #[test]
    fn test_overlap_values_and_empty_rules() {
        let c = ConfusionCounts {
            tp: 3,
            fp: 1,
            fn_: 2,
            tn: 10,
        };
        assert!((c.dice(EmptyPolicy::Monai) - 6.0 / 9.0).abs() < 1e-15);
        assert!((c.iou(EmptyPolicy::Monai) - 0.5).abs() < 1e-15);
        assert!((c.precision(EmptyPolicy::Monai) - 0.75).abs() < 1e-15);
        assert!((c.recall(EmptyPolicy::Monai) - 0.6).abs() < 1e-15);
        assert!((c.specificity() - 10.0 / 11.0).abs() < 1e-15);
        assert!((c.volume_difference(EmptyPolicy::Monai) + 0.2).abs() < 1e-15);
        let worst = EmptyPolicy::WorstCase(crate::options::WorstDistance::Diagonal);
        let fp_only = ConfusionCounts {
            tp: 0,
            fp: 4,
            fn_: 0,
            tn: 5,
        };
        assert!(fp_only.dice(EmptyPolicy::Monai).is_nan());
        assert_eq!(fp_only.dice(worst), 0.0);
        assert_eq!(fp_only.volume_difference(worst), f64::INFINITY);
        let none = ConfusionCounts {
            tp: 0,
            fp: 0,
            fn_: 0,
            tn: 9,
        };
        assert!(none.iou(EmptyPolicy::Monai).is_nan());
        assert_eq!(none.iou(worst), 1.0);
        assert_eq!(none.precision(worst), 1.0);
        let missed = ConfusionCounts {
            tp: 0,
            fp: 0,
            fn_: 3,
            tn: 6,
        };
        assert_eq!(missed.dice(EmptyPolicy::Monai), 0.0);
        assert!(missed.precision(EmptyPolicy::Monai).is_nan());
        assert_eq!(missed.precision(worst), 0.0);
    }

    #[test]
    fn test_generalized_dice_weights() {
        // Label 0: |R| = 2, label 1: |R| = 0 (takes the max finite weight 1/4).
        let c = [
            ConfusionCounts {
                tp: 2,
                fp: 0,
                fn_: 0,
                tn: 2,
            },
            ConfusionCounts {
                tp: 0,
                fp: 2,
                fn_: 0,
                tn: 2,
            },
        ];
        let gds = generalized_dice(&c, GdsWeight::Square);
        assert!((gds - (2.0 * 0.25 * 2.0) / (0.25 * 4.0 + 0.25 * 2.0)).abs() < 1e-12);
        assert_eq!(
            generalized_dice_per_label(&c, GdsWeight::Square),
            vec![1.0, 0.0]
        );
    }
}
