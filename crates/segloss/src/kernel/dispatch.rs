//! Where the overlap statistics are computed: the fused kernel where the device has one and the
//! thread has not chosen the composed path ([`super::choice`]), else Burn operations
//! ([`super::composed`]).

use burn::tensor::Tensor;

use super::choice::{Kernel, current_kernel};
use super::spec::{Pointwise, Spec};
use super::{composed, fused};
use crate::input::{Activation, PrepareOptions, Prepared, Target, prepare};
use crate::stats::{FusedTerm, OverlapStats, PointwiseSums, StatsOptions, check_channels};

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
    // `prepare` hands every input over in f32, the fused kernel's type.
    if current_kernel() == Kernel::Composed || !fused::supports(&prepared.logits.device()) {
        return composed::overlap_stats(prepared, options);
    }
    let spec = Spec {
        act: options.activation,
        include_background: options.include_background,
        squared: options.squared,
        difference: options.difference,
    };
    let stats = fused::overlap_stats(
        prepared.logits.clone(),
        prepared.target.clone(),
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
    check_channels(
        loss,
        prepared.channels,
        options.activation,
        options.include_background,
    );
    // The fused pass has the plain sums only (the V-Net squared sums and the soft-label
    // difference take two passes: the statistics, then the pointwise term alone).
    if term.activation == Activation::None
        || options.squared
        || options.difference
        || options.activation != term.activation
        || current_kernel() == Kernel::Composed
        || !fused::supports_pointwise(&prepared.logits.device())
    {
        return None;
    }
    let out = fused::pointwise_stats(
        prepared.logits.clone(),
        prepared.target.clone(),
        prepared.mask.clone(),
        term.activation,
        Pointwise {
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
