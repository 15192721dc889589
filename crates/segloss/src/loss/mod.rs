//! The losses, one file per family. Each is a `...Config` (`#[derive(Config)]`, validated in
//! `init`) that builds a `#[derive(Module)]` loss with `forward(prediction, target) -> Tensor<1>`
//! and an unreduced form.
//!
//! The Dice family (Dice, Jaccard, Tversky, Generalized Dice, MCC) is computed from
//! [`OverlapStats`](crate::OverlapStats); focal and cross-entropy are per-voxel losses; the
//! compound losses add one of each (the unified focal loss an asymmetric pair of them); deep supervision weighs any of them over the outputs of
//! several decoder levels. The distance-transform losses (Hausdorff DT, log Hausdorff DT,
//! boundary) weigh per-voxel terms with distance maps computed on the CPU; the clDice losses
//! compare soft skeletons (iterated soft erosions and openings).

/// The shell every overlap loss (Dice, Generalized Dice, Tversky, MCC) shares: `config()`,
/// `forward` (the reduction of `forward_no_reduction`), `forward_no_reduction` (its target
/// prepared, then the loss's own `forward_prepared`) and the preparation options from the
/// config's `ignore_index` and `validate_labels`. `$unreduced` documents the unreduced shape.
macro_rules! overlap_loss_shell {
    ($loss:ident, $config:ident, $unreduced:literal) => {
        impl $loss {
            /// The configuration this loss was built from.
            pub fn config(&self) -> &$config {
                &self.config
            }

            /// The reduced loss, shape `[1]`.
            pub fn forward<const D: usize>(
                &self,
                prediction: Tensor<D>,
                target: impl Into<Target>,
            ) -> Tensor<1> {
                self.config
                    .reduction
                    .apply(self.forward_no_reduction(prediction, target))
            }

            #[doc = $unreduced]
            pub fn forward_no_reduction<const D: usize>(
                &self,
                prediction: Tensor<D>,
                target: impl Into<Target>,
            ) -> Tensor<2> {
                let prepared = prepare(NAME, prediction, target.into(), self.prepare_options());
                self.forward_prepared(&prepared)
            }

            pub(crate) fn prepare_options(&self) -> PrepareOptions {
                PrepareOptions {
                    ignore_index: self.config.ignore_index,
                    validate_labels: self.config.validate_labels,
                }
            }
        }
    };
}

pub mod boundary;
pub mod cldice;
pub mod compound;
pub mod cross_entropy;
pub mod deep_supervision;
pub mod dice;
mod distance_map;
pub mod focal;
pub mod generalized_dice;
pub mod hausdorff_dt;
pub mod mcc;
pub mod reduction;
mod skeleton;
pub mod tversky;
pub mod unified_focal;
pub mod wasserstein;

use burn::tensor::{Device, Tensor};

use crate::input::{Activation, PrepareOptions, Prepared, Target, prepare};
use crate::stats::check_channels;

/// The inputs of a loss that sees the image as a whole (distance maps, soft skeletons): no ignore
/// index and no voxel mask, the activation applied, then the background dropped as MONAI does
/// (after the activation, so that a softmax still sees every class). Returns the prepared input,
/// the prediction `p` and the dense target `g`, both `[B, C', N]`, and `C'`.
///
/// # Panics
/// As [`prepare`]; on a voxel mask (`no_mask_why` says why the loss takes none); on the
/// single-channel settings [`check_channels`] refuses.
pub(crate) fn prepare_whole_image<const D: usize>(
    loss: &str,
    prediction: Tensor<D>,
    target: Target,
    activation: Activation,
    include_background: bool,
    validate_labels: bool,
    no_mask_why: &str,
) -> (Prepared, Tensor<3>, Tensor<3>, usize) {
    let options = PrepareOptions {
        ignore_index: None,
        validate_labels,
    };
    let prepared = prepare(loss, prediction, target, options);
    assert!(
        prepared.mask.is_none(),
        "{loss}: takes no voxel mask (MONAI's {loss} has none: {no_mask_why})"
    );
    let c = prepared.channels;
    check_channels(loss, c, activation, include_background);
    let mut p = activation.apply(prepared.logits.clone());
    let mut g = prepared.dense_target();
    let first = usize::from(!include_background);
    let k = c - first;
    if first == 1 {
        p = p.narrow(1, 1, k);
        g = g.narrow(1, 1, k);
    }
    (prepared, p, g, k)
}

/// `[1, k]` per-class weights: a single value applies to every class; otherwise there must be
/// exactly `k` values (the classes left after background exclusion).
pub(crate) fn class_weights(
    loss: &str,
    weight: &Option<Vec<f32>>,
    k: usize,
    what: &str,
    device: &Device,
) -> Option<Tensor<2>> {
    let w = weight.as_ref()?;
    let values = if w.len() == 1 {
        vec![w[0]; k]
    } else {
        assert!(
            w.len() == k,
            "{loss}: `weight` has {} values but the loss sees {k} classes ({what}); give one weight per class, or a single value for all",
            w.len()
        );
        w.clone()
    };
    Some(Tensor::<1>::from_floats(values.as_slice(), device).reshape([1, k]))
}
