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
//! backend has one, Burn tensor operations elsewhere); the losses only see
//! [`OverlapStats`].

use burn::tensor::Tensor;

use crate::input::{Activation, PrepareOptions, Prepared, Target, prepare};

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

/// Computes the overlap statistics of `prediction` `[B, C, spatial...]` against `target`.
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use segloss::{Activation, StatsOptions, overlap_stats};
///
/// let device = Device::flex();
/// let probs = Tensor::<3>::from_data([[[0.9, 0.2, 0.0], [0.1, 0.8, 1.0]]], &device); // [1, 2, 3]
/// let labels = Tensor::<2, Int>::from_data([[0, 1, 1]], &device); // [1, 3]
/// let s = overlap_stats(probs, labels, &StatsOptions::new(Activation::None));
/// let i: Vec<f32> = s.intersection.into_data().to_vec().unwrap();
/// assert!((i[0] - 0.9).abs() < 1e-6 && (i[1] - 1.8).abs() < 1e-6);
/// ```
///
/// # Panics
/// On mismatched shapes, labels out of range (see [`Target`]), softmax over one channel, or
/// dropping the background of a single-channel prediction.
pub fn overlap_stats<const D: usize>(
    prediction: Tensor<D>,
    target: impl Into<Target>,
    options: &StatsOptions,
) -> OverlapStats {
    let prepared = prepare(
        "overlap_stats",
        prediction,
        target.into(),
        PrepareOptions {
            ignore_index: options.ignore_index,
            validate_labels: options.validate_labels,
        },
    );
    prepared_stats("overlap_stats", &prepared, options)
}

/// The statistics of an already prepared input.
pub(crate) fn prepared_stats(
    loss: &str,
    prepared: &Prepared,
    options: &StatsOptions,
) -> OverlapStats {
    check_channels(
        loss,
        prepared.channels,
        options.activation,
        options.include_background,
    );
    use crate::kernel::{Kernel, cpu, current_kernel, fused};
    // `prepare` hands every input over in f32, the fused kernel's type.
    if current_kernel() == Kernel::Composed || !fused::supports(&prepared.logits.device()) {
        return crate::kernel::composed::overlap_stats(prepared, options);
    }
    let spec = cpu::Spec {
        act: match options.activation {
            Activation::Softmax => cpu::Act::Softmax,
            Activation::Sigmoid => cpu::Act::Sigmoid,
            Activation::None => cpu::Act::None,
        },
        include_background: options.include_background,
        squared: options.squared,
        difference: options.difference,
    };
    let stats = fused::overlap_stats(
        prepared.logits.clone(),
        fused_target(prepared),
        prepared.mask.clone(),
        spec,
    );
    let [_, b, k] = stats.dims();
    let part = |q: usize| stats.clone().narrow(0, q, 1).reshape([b, k]);
    OverlapStats {
        intersection: part(0),
        prediction: part(1),
        target: part(2),
        difference: options.difference.then(|| part(3)),
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

/// The overlap statistics of `options` and the sums of the pointwise term `term` in one fused
/// pass over the logits, or `None` where that pass does not apply: the composed kernel is
/// chosen, the device has no fused pointwise operation, the pointwise activation differs from
/// the statistics' (the pass computes one activation), or the statistics are squared or include
/// the difference.
pub(crate) fn fused_pointwise(
    loss: &str,
    prepared: &Prepared,
    options: &StatsOptions,
    term: FusedTerm,
) -> Option<(OverlapStats, PointwiseSums)> {
    use crate::kernel::{Kernel, cpu, current_kernel, fused};
    check_channels(
        loss,
        prepared.channels,
        options.activation,
        options.include_background,
    );
    let act = match term.activation {
        Activation::Softmax => cpu::Act::Softmax,
        Activation::Sigmoid => cpu::Act::Sigmoid,
        Activation::None => return None,
    };
    // The fused pass has the plain sums only (the V-Net squared sums and the soft-label
    // difference take two passes: the statistics, then the pointwise term alone).
    if options.squared
        || options.difference
        || options.activation != term.activation
        || current_kernel() == Kernel::Composed
        || !fused::supports_pointwise(&prepared.logits.device())
    {
        return None;
    }
    let spec = cpu::Spec {
        act,
        include_background: true,
        squared: options.squared,
        difference: options.difference,
    };
    let out = fused::pointwise_stats(
        prepared.logits.clone(),
        fused_target(prepared),
        prepared.mask.clone(),
        spec,
        cpu::Pointwise {
            gamma: term.gamma as f32,
            without_background: term.without_background,
        },
    );
    let [_, b, c] = out.dims();
    let part = |q: usize| out.clone().narrow(0, q, 1).reshape([b, c]);
    let first = usize::from(!options.include_background);
    let stat = |q: usize| part(q).narrow(1, first, c - first);
    let stats = OverlapStats {
        intersection: stat(0),
        prediction: stat(1),
        target: stat(2),
        difference: options.difference.then(|| stat(3)),
    };
    Some((
        stats,
        PointwiseSums {
            target_weighted: part(4),
            plain: part(5),
            third: part(6),
            fourth: part(7),
        },
    ))
}

/// The prepared target as the fused operations take it.
pub(crate) fn fused_target(prepared: &Prepared) -> crate::kernel::fused::FusedTarget {
    use crate::kernel::fused::FusedTarget;
    match (&prepared.labels, &prepared.dense) {
        (Some(l), _) => FusedTarget::Labels(l.clone()),
        (None, Some(d)) => FusedTarget::Dense(d.clone()),
        (None, None) => unreachable!("a target is labels or dense"),
    }
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
