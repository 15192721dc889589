//! The fused overlap-statistics operation as a Burn backend extension: a forward that returns the
//! statistics `[4, B, K]` straight from the logits and the target, and a hand-written backward
//! that writes the gradient with respect to the logits in one more pass (see [`super::cpu`]).
//!
//! When the logits are tracked, the autodiff decorator runs the `_saving` forward and keeps what
//! it returns for the backward: on Flex the activations, written in the forward's pass into the
//! buffer that the backward then overwrites with the gradient (no `exp` recomputed, the peak
//! memory unchanged); on the CubeCL backends the logits (recomputing is cheap on a GPU).
//!
//! Implemented for Flex (Burn's pure-Rust CPU backend, kernel in [`super::cpu`]), for Burn's CubeCL
//! backends with the `wgpu` or `cuda` feature (behind Burn's fusion; kernel in `kernel::cube`,
//! which exists with those features) and for their autodiff decorator. Other backends keep the composed path; [`supports`] tells which
//! applies to a device.
//!
//! Beside it: [`FusedPointwiseOps`], the same pass with the cross-entropy and focal sums, and
//! [`FusedConfusionOps`], the Generalized Wasserstein Dice loss's soft confusion matrix (CPU
//! kernel in [`super::cpu::confusion`]), both on Flex and on the CubeCL backends (kernels in
//! `kernel::cube::pointwise` and `kernel::cube::confusion`) and built the same way: the recorded
//! forward saves what the backward starts from, on Flex the activations (the confusion matrix's
//! probabilities into the buffer that the backward turns into the gradient), on the CubeCL
//! backends the logits.

mod api;
mod autodiff;
#[cfg(feature = "flex")]
mod flex;
pub(crate) mod ops;

pub use api::{
    calls, confusion, confusion_calls, overlap_stats, pointwise_calls, pointwise_stats, supports,
    supports_confusion, supports_pointwise,
};
pub use ops::{
    FusedConfusionOps, FusedPointwiseOps, FusedStatsOps, confusion_shape, pointwise_shape,
    stats_shape,
};
