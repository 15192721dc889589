//! The losses, one file per family. Each is a `...Config` (`#[derive(Config)]`, validated in
//! `init`) that builds a `#[derive(Module)]` loss with `forward(prediction, target) -> Tensor<1>`
//! and an unreduced form.
//!
//! The Dice family (Dice, Jaccard, Tversky, Generalized Dice, MCC) is computed from
//! [`OverlapStats`](crate::OverlapStats); focal and cross-entropy are per-voxel losses; the
//! compound losses add one of each.

pub mod compound;
pub mod cross_entropy;
pub mod dice;
pub mod focal;
pub mod generalized_dice;
pub mod mcc;
pub mod reduction;
pub mod tversky;
pub mod wasserstein;

use burn::tensor::{Device, Tensor};

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
