//! The fused operations on `Tensor`s: which devices run them, the calls, and how many ran.

use burn::backend::Dispatch;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{Device, Tensor};

use super::ops::{FusedConfusionOps, FusedPointwiseOps, FusedStatsOps};
use crate::input::{Activation, FlatTarget};
use crate::kernel::spec::{Pointwise, Spec};

/// Whether the fused pointwise operation ([`FusedPointwiseOps`]) runs on `device`, with or
/// without autodiff: Flex (feature `flex`), and the CubeCL devices, wgpu and CUDA (features
/// `wgpu`, `cuda`). Elsewhere the losses compose the pointwise term from Burn operations beside
/// the fused overlap statistics.
pub fn supports_pointwise(device: &Device) -> bool {
    supports(device)
}

/// Fused statistics and pointwise sums `[8, B, C]` of logits `[B, C, N]` under `activation`
/// (softmax or sigmoid): the plain statistics of every class ([`Spec::plain`]) and the
/// pointwise term `pw`.
pub fn pointwise_stats(
    logits: Tensor<3>,
    target: FlatTarget,
    mask: Option<Tensor<2>>,
    activation: Activation,
    pw: Pointwise,
) -> Tensor<3> {
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    POINTWISE_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mask = mask_arg(mask, &logits);
    let out = match target {
        FlatTarget::Labels(l) => <Dispatch as FusedPointwiseOps>::pointwise_stats_labels(
            logits.into_dispatch(),
            l.into_dispatch(),
            mask,
            activation,
            pw,
        ),
        FlatTarget::Dense(t) => <Dispatch as FusedPointwiseOps>::pointwise_stats_dense(
            logits.into_dispatch(),
            t.into_dispatch(),
            mask,
            activation,
            pw,
        ),
    };
    Tensor::from_dispatch(out)
}

/// Whether the fused confusion matrix ([`FusedConfusionOps`]) runs on `device`, with or without
/// autodiff: Flex (feature `flex`), and the CubeCL devices, wgpu and CUDA (features `wgpu`,
/// `cuda`). Elsewhere the Generalized Wasserstein Dice loss composes it from Burn operations.
pub fn supports_confusion(device: &Device) -> bool {
    supports(device)
}

/// The soft confusion matrix and target volumes `[B, C, C + 1]` of logits `[B, C, N]` (see
/// [`FusedConfusionOps`]), against `target`, weighted by `mask` `[B, N]`.
///
/// # Panics
/// Where [`supports_confusion`] is false, or if the shapes do not match (the kernel names the
/// input).
pub fn confusion(logits: Tensor<3>, target: FlatTarget, mask: Option<Tensor<2>>) -> Tensor<3> {
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    CONFUSION_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mask = mask_arg(mask, &logits);
    let out = match target {
        FlatTarget::Labels(l) => <Dispatch as FusedConfusionOps>::confusion_labels(
            logits.into_dispatch(),
            l.into_dispatch(),
            mask,
        ),
        FlatTarget::Dense(t) => <Dispatch as FusedConfusionOps>::confusion_dense(
            logits.into_dispatch(),
            t.into_dispatch(),
            mask,
        ),
    };
    Tensor::from_dispatch(out)
}

/// Whether the fused operation runs on `device`, with or without autodiff: Flex (feature
/// `flex`), and the CubeCL devices, wgpu and CUDA (features `wgpu`, `cuda`).
pub fn supports(device: &Device) -> bool {
    crate::backend::has_fused_kernels(device)
}

static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many times the fused operation has run in this process (lets tests check which path ran).
#[doc(hidden)]
pub fn calls() -> usize {
    CALLS.load(std::sync::atomic::Ordering::Relaxed)
}

static POINTWISE_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many of [`calls`] were the fused pass with the pointwise term ([`pointwise_stats`]).
#[doc(hidden)]
pub fn pointwise_calls() -> usize {
    POINTWISE_CALLS.load(std::sync::atomic::Ordering::Relaxed)
}

static CONFUSION_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many of [`calls`] were the fused confusion matrix ([`confusion`]).
#[doc(hidden)]
pub fn confusion_calls() -> usize {
    CONFUSION_CALLS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Fused statistics `[4, B, K]` of logits `[B, C, N]`.
pub fn overlap_stats(
    logits: Tensor<3>,
    target: FlatTarget,
    mask: Option<Tensor<2>>,
    spec: Spec,
) -> Tensor<3> {
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mask = mask_arg(mask, &logits);
    let out = match target {
        FlatTarget::Labels(l) => <Dispatch as FusedStatsOps>::overlap_stats_labels(
            logits.into_dispatch(),
            l.into_dispatch(),
            mask,
            spec,
        ),
        FlatTarget::Dense(t) => <Dispatch as FusedStatsOps>::overlap_stats_dense(
            logits.into_dispatch(),
            t.into_dispatch(),
            mask,
            spec,
        ),
    };
    Tensor::from_dispatch(out)
}

/// The mask as the extension takes it: a tensor with no elements stands for no mask.
fn mask_arg(mask: Option<Tensor<2>>, logits: &Tensor<3>) -> FloatTensor<Dispatch> {
    mask.unwrap_or_else(|| Tensor::<2>::empty([0, 0], &logits.device()))
        .into_dispatch()
}
