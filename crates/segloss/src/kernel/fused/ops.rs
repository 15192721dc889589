//! The three fused operations as Burn backend extensions ([`FusedStatsOps`],
//! [`FusedPointwiseOps`], [`FusedConfusionOps`]) and their output shapes.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, backend_extension};
use burn::tensor::Shape;

use crate::input::Activation;
use crate::kernel::spec::{Pointwise, Spec};

/// The fused statistics. `activation`: 0 softmax, 1 sigmoid, 2 none; a `mask` with no elements
/// means no mask. Outputs `[4, B, K]`.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Fusion: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait FusedStatsOps: Backend {
    /// Statistics against a label map `[B, N]`.
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = logits, shape = stats_shape(logits, spec))]
    fn overlap_stats_labels(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
        #[fusion(scalar = spec.key())] spec: Spec,
    ) -> FloatTensor<Self>;

    /// Gradient of [`overlap_stats_labels`](FusedStatsOps::overlap_stats_labels) with respect to the logits.
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = logits, shape = logits)]
    fn overlap_stats_labels_backward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        #[fusion(scalar = spec.key())] spec: Spec,
    ) -> FloatTensor<Self>;

    /// Statistics against a dense target `[B, C, N]`.
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = logits, shape = stats_shape(logits, spec))]
    fn overlap_stats_dense(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        #[fusion(scalar = spec.key())] spec: Spec,
    ) -> FloatTensor<Self>;

    /// Gradient of [`overlap_stats_dense`](FusedStatsOps::overlap_stats_dense) with respect to the logits.
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = logits, shape = logits)]
    fn overlap_stats_dense_backward(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        #[fusion(scalar = spec.key())] spec: Spec,
    ) -> FloatTensor<Self>;

    /// [`overlap_stats_labels`](FusedStatsOps::overlap_stats_labels) for a recorded backward: also
    /// returns the tensor the backward starts from. Flex returns the activations (written in the
    /// same pass, into the buffer that the backward turns into the gradient, so the backward
    /// neither reads the logits nor recomputes `exp`); the default returns the logits.
    #[allow(clippy::too_many_arguments)]
    #[fusion(default)]
    fn overlap_stats_labels_saving(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
        #[fusion(scalar = spec.key())] spec: Spec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let stats = Self::overlap_stats_labels(logits.clone(), labels, mask, spec);
        (stats, logits)
    }

    /// The gradient with respect to the logits, from what
    /// [`overlap_stats_labels_saving`](FusedStatsOps::overlap_stats_labels_saving) saved.
    #[allow(clippy::too_many_arguments)]
    #[fusion(default)]
    fn overlap_stats_labels_backward_saved(
        saved: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        #[fusion(scalar = spec.key())] spec: Spec,
    ) -> FloatTensor<Self> {
        Self::overlap_stats_labels_backward(saved, labels, mask, grad, spec)
    }

    /// [`overlap_stats_labels_saving`](FusedStatsOps::overlap_stats_labels_saving) against a dense target.
    #[allow(clippy::too_many_arguments)]
    #[fusion(default)]
    fn overlap_stats_dense_saving(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        #[fusion(scalar = spec.key())] spec: Spec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let stats = Self::overlap_stats_dense(logits.clone(), target, mask, spec);
        (stats, logits)
    }

    /// [`overlap_stats_labels_backward_saved`](FusedStatsOps::overlap_stats_labels_backward_saved) against a dense target.
    #[allow(clippy::too_many_arguments)]
    #[fusion(default)]
    fn overlap_stats_dense_backward_saved(
        saved: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        #[fusion(scalar = spec.key())] spec: Spec,
    ) -> FloatTensor<Self> {
        Self::overlap_stats_dense_backward(saved, target, mask, grad, spec)
    }
}

/// The shape of the statistics of logits `[B, C, N]`: `[4, B, K]`, `K = C` or `C - 1` without
/// the background (the output shape Burn's fusion records before the kernel runs).
pub fn stats_shape(logits: &Shape, spec: &Spec) -> Shape {
    let k = logits[1] - usize::from(!spec.include_background);
    Shape::new([4, logits[0], k])
}

/// The overlap statistics of every class and the pointwise term's sums (cross-entropy, focal)
/// in one pass over the logits: `[8, B, C]`, rows 0-3 as [`FusedStatsOps`] with the background
/// included and the plain sums (no squared sums, no difference), rows 4-7 the pointwise sums
/// with focusing parameter `gamma` (the kernel's pointwise section, [`crate::kernel::cpu`]); with
/// `without_background` the softmax term over channels `1..C` ([`crate::kernel::cpu::Pointwise`]).
/// `activation`: 0 softmax, 1 sigmoid. A compound loss thus reads the logits once forward and
/// once backward. Flex and the CubeCL backends (kernel in `kernel::cube::pointwise`, with the
/// features `wgpu`, `cuda`); see [`supports_pointwise`](super::supports_pointwise).
#[backend_extension(
    Flex: cfg(feature = "flex"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Fusion: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait FusedPointwiseOps: Backend {
    /// Against a label map `[B, N]`.
    #[fusion(dtype = logits, shape = pointwise_shape(logits))]
    fn pointwise_stats_labels(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
        #[fusion(scalar = activation.code())] activation: Activation,
        #[fusion(scalar = pw.key())] pw: Pointwise,
    ) -> FloatTensor<Self>;

    /// Against a dense target `[B, C, N]`.
    #[fusion(dtype = logits, shape = pointwise_shape(logits))]
    fn pointwise_stats_dense(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        #[fusion(scalar = activation.code())] activation: Activation,
        #[fusion(scalar = pw.key())] pw: Pointwise,
    ) -> FloatTensor<Self>;

    /// [`pointwise_stats_labels`](FusedPointwiseOps::pointwise_stats_labels) for a recorded
    /// backward, with what the backward starts from. Flex returns the softmax's activations, or
    /// the logits for the sigmoid (whose pointwise gradient reads them); the default returns the
    /// logits (the CubeCL backends: their backward recomputes the activations).
    #[fusion(default)]
    fn pointwise_stats_labels_saving(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
        #[fusion(scalar = activation.code())] activation: Activation,
        #[fusion(scalar = pw.key())] pw: Pointwise,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let out = Self::pointwise_stats_labels(logits.clone(), labels, mask, activation, pw);
        (out, logits)
    }

    /// [`pointwise_stats_labels_saving`](FusedPointwiseOps::pointwise_stats_labels_saving) against a dense target.
    #[fusion(default)]
    fn pointwise_stats_dense_saving(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        #[fusion(scalar = activation.code())] activation: Activation,
        #[fusion(scalar = pw.key())] pw: Pointwise,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let out = Self::pointwise_stats_dense(logits.clone(), target, mask, activation, pw);
        (out, logits)
    }

    /// The gradient with respect to the logits, from what the `_saving` forward returned and
    /// the gradient `[8, B, C]` of its output.
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = saved, shape = saved)]
    fn pointwise_stats_labels_backward_saved(
        saved: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        #[fusion(scalar = activation.code())] activation: Activation,
        #[fusion(scalar = pw.key())] pw: Pointwise,
    ) -> FloatTensor<Self>;

    /// [`pointwise_stats_labels_backward_saved`](FusedPointwiseOps::pointwise_stats_labels_backward_saved) against a dense target.
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = saved, shape = saved)]
    fn pointwise_stats_dense_backward_saved(
        saved: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        #[fusion(scalar = activation.code())] activation: Activation,
        #[fusion(scalar = pw.key())] pw: Pointwise,
    ) -> FloatTensor<Self>;
}

/// The shape of the fused pointwise output of logits `[B, C, N]`: `[8, B, C]` (the output shape
/// Burn's fusion records before the kernel runs).
pub fn pointwise_shape(logits: &Shape) -> Shape {
    Shape::new([crate::kernel::cpu::ROWS_MAX, logits[0], logits[1]])
}

/// The soft confusion matrix of the Generalized Wasserstein Dice loss, fused: from logits
/// `[B, C, N]` (softmax over the channels, applied on the fly), a target and a voxel mask `[B, N]`
/// (one with no elements means no mask), the output `[B, C, C + 1]` whose row `(b, k)` holds
/// `S[b, k, c] = sum_n m g_k p_c` for the `C` predicted classes `c`, then the target volume
/// `V[b, k] = sum_n m g_k` (kernel and formulas in [`crate::kernel::cpu::confusion`]). The hand-written backward
/// writes the gradient with respect to the logits in one more pass; the volume column's gradient
/// is ignored (the volume does not depend on the logits). Flex and the CubeCL backends (kernel in
/// `kernel::cube::confusion`, with the features `wgpu`, `cuda`); see [`supports_confusion`](super::supports_confusion).
#[backend_extension(
    Flex: cfg(feature = "flex"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Fusion: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait FusedConfusionOps: Backend {
    /// Against a label map `[B, N]` (a label outside `[0, C)` matches no class).
    #[fusion(dtype = logits, shape = confusion_shape(logits))]
    fn confusion_labels(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// Against a dense target `[B, C, N]`.
    #[fusion(dtype = logits, shape = confusion_shape(logits))]
    fn confusion_dense(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// [`confusion_labels`](FusedConfusionOps::confusion_labels) for a recorded backward, with
    /// what the backward starts from: on Flex the probabilities, written in the same pass into
    /// the buffer that the backward turns into the gradient; the default returns the logits (the
    /// CubeCL backends: their backward recomputes the softmax).
    #[fusion(default)]
    fn confusion_labels_saving(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        (Self::confusion_labels(logits.clone(), labels, mask), logits)
    }

    /// [`confusion_labels_saving`](FusedConfusionOps::confusion_labels_saving) against a dense target.
    #[fusion(default)]
    fn confusion_dense_saving(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        (Self::confusion_dense(logits.clone(), target, mask), logits)
    }

    /// The gradient `[B, C, N]` with respect to the logits, from what the `_saving` forward
    /// returned and the gradient `[B, C, C + 1]` of its output.
    #[fusion(dtype = saved, shape = saved)]
    fn confusion_labels_backward_saved(
        saved: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// [`confusion_labels_backward_saved`](FusedConfusionOps::confusion_labels_backward_saved) against a dense target.
    #[fusion(dtype = saved, shape = saved)]
    fn confusion_dense_backward_saved(
        saved: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The shape of the fused confusion matrix of logits `[B, C, N]`: `[B, C, C + 1]` (the output
/// shape Burn's fusion records before the kernel runs).
pub fn confusion_shape(logits: &Shape) -> Shape {
    Shape::new([logits[0], logits[1], logits[1] + 1])
}
