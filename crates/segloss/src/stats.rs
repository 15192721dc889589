//! Overlap statistics: the one operation under every Dice-family loss.
//!
//! For a prediction `x` `[B, C, N]`, its probabilities `p = act(x)`, a target `g` `[B, C, N]` and
//! voxel weights `m` `[B, N]` (mask times ignore mask, 1 when absent), the statistics per
//! (sample, class) are
//!
//! | field | value |
//! |---|---|
//! | [`intersection`](OverlapStats::intersection) | `I = sum_n m p g` |
//! | [`prediction`](OverlapStats::prediction) | `P = sum_n m p` (or `sum_n (m p)^2` when squared) |
//! | [`target`](OverlapStats::target) | `G = sum_n m g` (or `sum_n (m g)^2` when squared) |
//! | [`difference`](OverlapStats::difference) | `E = sum_n abs(m p - m g)` (or its square), only when asked for (soft labels) |
//!
//! Dice is `(2I + s_nr) / (P + G + s_dr)`; Jaccard, Tversky and Generalized Dice are other ratios
//! of the same sums. Everything a loss does after this (background exclusion aside, which happens
//! here), batch sums, weights, reductions, is arithmetic on `[B, C]` tensors.
//!
//! How the statistics are computed is the business of [`crate::kernel`] (a fused kernel where the
//! backend has one, Burn tensor operations elsewhere; [`crate::overlap_stats`] computes them);
//! the losses only see [`OverlapStats`].

use burn::tensor::Tensor;

use crate::input::{Activation, PrepareOptions};

/// Which statistics to compute, and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsOptions {
    /// The activation applied to the prediction.
    pub activation: Activation,
    /// Keep channel 0. When `false`, channel 0 is dropped after the activation (so softmax still
    /// normalises over every class) and the statistics have `C - 1` columns.
    pub include_background: bool,
    /// The V-Net denominator (Milletari et al. 2016): `P = sum p^2`, `G = sum g^2`, `E = sum (p - g)^2`.
    pub squared: bool,
    /// Also compute `E` (needed by the soft-label formulation).
    pub difference: bool,
    /// Label value (or MONAI sentinel) whose voxels count for nothing.
    pub ignore_index: Option<i64>,
    /// Check that label values lie in `[0, C)` (one min/max reduction and one device sync).
    pub validate_labels: bool,
}

impl StatsOptions {
    /// The options of a Dice-family loss: its statistics settings and its input options.
    pub(crate) fn for_loss(
        input: PrepareOptions,
        activation: Activation,
        include_background: bool,
        squared: bool,
        difference: bool,
    ) -> Self {
        Self {
            activation,
            include_background,
            squared,
            difference,
            ignore_index: input.ignore_index,
            validate_labels: input.validate_labels,
        }
    }

    /// Defaults: the given activation, background included, plain sums, no `E`, no ignore index,
    /// labels validated.
    pub fn new(activation: Activation) -> Self {
        Self {
            activation,
            include_background: true,
            squared: false,
            difference: false,
            ignore_index: None,
            validate_labels: true,
        }
    }
}

/// Per-(sample, class) overlap statistics, each `[B, C']` with `C' = C` or `C - 1` without background.
#[derive(Debug, Clone)]
pub struct OverlapStats {
    /// `I = sum p g`.
    pub intersection: Tensor<2>,
    /// `P = sum p` (or `sum p^2`).
    pub prediction: Tensor<2>,
    /// `G = sum g` (or `sum g^2`).
    pub target: Tensor<2>,
    /// `E = sum |p - g|` (or `sum (p - g)^2`), when asked for.
    pub difference: Option<Tensor<2>>,
}

impl OverlapStats {
    /// Sums every statistic over the batch: `[B, C']` becomes `[1, C']` (MONAI's `batch=True`).
    pub fn sum_batch(self) -> Self {
        Self {
            intersection: self.intersection.sum_dim(0),
            prediction: self.prediction.sum_dim(0),
            target: self.target.sum_dim(0),
            difference: self.difference.map(|d| d.sum_dim(0)),
        }
    }

    /// The true-positive mass `tp`: `I`, or with `soft` the soft-label form `(P + G - E) / 2`
    /// (Wang et al. 2023), equal to `I` for binary targets and probabilities in `[0, 1]`.
    ///
    /// # Panics
    /// If `soft` and `E` was not computed.
    pub fn true_positive(&self, soft: bool) -> Tensor<2> {
        if soft {
            let e = self
                .difference
                .clone()
                .expect("the soft-label form needs the difference statistic");
            (self.prediction.clone() + self.target.clone() - e).div_scalar(2.0)
        } else {
            self.intersection.clone()
        }
    }
}

/// The pointwise term's sums per (sample, class) from the fused pass, each `[B, C]` (every
/// class, background included), with `m` the mask, `g` the target and `h` the pointwise loss of
/// one voxel and class (the CPU kernel's pointwise section, [`crate::kernel::cpu`]):
///
/// | field | softmax (`h = (1 - p)^gamma (-ln p)`) | sigmoid (`h = s(-x z)^gamma BCE(x, g)`) |
/// |---|---|---|
/// | `target_weighted` | `sum m g h` | `sum m g h` |
/// | `plain` | `sum m h` | `sum m h` |
/// | `third` | `sum m g` | `sum m [g = 1] h` |
/// | `fourth` | 0 | `sum m g softplus(-x)` |
///
/// Class weights, `alpha` and label smoothing are linear in these sums, so the losses apply
/// them to the `[B, C]` tensors.
#[derive(Debug, Clone)]
pub(crate) struct PointwiseSums {
    pub target_weighted: Tensor<2>,
    pub plain: Tensor<2>,
    pub third: Tensor<2>,
    pub fourth: Tensor<2>,
}

/// The pointwise term of a fused pass, as a loss asks for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FusedTerm {
    /// The term's activation; the pass computes one, so it must be the statistics'.
    pub activation: Activation,
    /// The focusing parameter (0: cross-entropy).
    pub gamma: f64,
    /// The softmax term normalised over channels `1..C` only (MONAI's softmax focal loss without
    /// the background); channel 0's sums are then 0.
    pub without_background: bool,
}

/// Refuses the single-channel settings that MONAI warns about and then silently ignores.
pub(crate) fn check_channels(
    loss: &str,
    channels: usize,
    activation: Activation,
    include_background: bool,
) {
    if channels == 1 {
        assert!(
            activation != Activation::Softmax,
            "{loss}: softmax over a single channel is constant 1; use Activation::Sigmoid for a single-channel (binary) prediction"
        );
        assert!(
            include_background,
            "{loss}: `include_background = false` would drop the only channel of a single-channel prediction"
        );
    }
}
