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
//! kernel in [`super::confusion`]), both on Flex and on the CubeCL backends (kernels in
//! `kernel::cube_pointwise` and `kernel::cube_confusion`) and built the same way: the recorded
//! forward saves what the backward starts from, on Flex the activations (the confusion matrix's
//! probabilities into the buffer that the backward turns into the gradient), on the CubeCL
//! backends the logits.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
use burn::tensor::{Device, Shape, Tensor};

use super::spec::{Pointwise, Spec};
use crate::input::{Activation, FlatTarget, TargetOf};

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
/// with focusing parameter `gamma` (the kernel's pointwise section, [`super::cpu`]); with
/// `without_background` the softmax term over channels `1..C` ([`super::cpu::Pointwise`]).
/// `activation`: 0 softmax, 1 sigmoid. A compound loss thus reads the logits once forward and
/// once backward. Flex and the CubeCL backends (kernel in `kernel::cube_pointwise`, with the
/// features `wgpu`, `cuda`); see [`supports_pointwise`].
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
    Shape::new([super::cpu::ROWS_MAX, logits[0], logits[1]])
}

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
    let device = logits.device();
    let mask = mask
        .unwrap_or_else(|| Tensor::<2>::empty([0, 0], &device))
        .into_dispatch();
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

/// The soft confusion matrix of the Generalized Wasserstein Dice loss, fused: from logits
/// `[B, C, N]` (softmax over the channels, applied on the fly), a target and a voxel mask `[B, N]`
/// (one with no elements means no mask), the output `[B, C, C + 1]` whose row `(b, k)` holds
/// `S[b, k, c] = sum_n m g_k p_c` for the `C` predicted classes `c`, then the target volume
/// `V[b, k] = sum_n m g_k` (kernel and formulas in [`super::confusion`]). The hand-written backward
/// writes the gradient with respect to the logits in one more pass; the volume column's gradient
/// is ignored (the volume does not depend on the logits). Flex and the CubeCL backends (kernel in
/// `kernel::cube_confusion`, with the features `wgpu`, `cuda`); see [`supports_confusion`].
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
    let device = logits.device();
    let mask = mask
        .unwrap_or_else(|| Tensor::<2>::empty([0, 0], &device))
        .into_dispatch();
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
    let device = logits.device();
    let mask = mask
        .unwrap_or_else(|| Tensor::<2>::empty([0, 0], &device))
        .into_dispatch();
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

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::TensorMetadata;
    use burn::backend::flex::{Flex, FlexTensor};
    use burn::tensor::{DType, TensorData};

    use super::super::cpu::{self, Dims, Label, TargetRef};
    use super::super::spec::{Pointwise, Spec};
    use super::super::{buffer, confusion};
    use super::{FusedConfusionOps, FusedPointwiseOps, FusedStatsOps};
    use crate::input::{Activation, TargetOf};

    fn floats(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
        assert_eq!(
            t.dtype(),
            DType::F32,
            "segloss's fused kernel computes in f32, got {:?}",
            t.dtype()
        );
        match t.as_slice::<f32>() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(
                t.to_contiguous()
                    .as_slice::<f32>()
                    .expect("contiguous f32")
                    .to_vec(),
            ),
        }
    }

    /// The target of one call: a label map or dense values.
    type Target<'a> = TargetOf<&'a FlexTensor, &'a FlexTensor>;

    /// What one call computes, from which input.
    enum Job<'a> {
        /// The forward's output from the logits.
        Stats(&'a [f32]),
        /// The forward's output and the activations `[B, C, N]` from the logits.
        Saving(&'a [f32]),
        /// The gradient `[B, C, N]` from the logits, given the output's gradient.
        Gradient(&'a [f32], &'a [f32]),
        /// The gradient written over the saved activations, given the output's gradient.
        InPlace(&'a mut [f32], &'a [f32]),
    }

    /// A computation over the target as a slice, for any label type.
    trait TargetJob {
        fn run<L: Label>(self, t: TargetRef<'_, L>, m: Option<&[f32]>) -> Vec<Vec<f32>>;
    }

    /// Runs `job` with the target as a slice: dense values, or labels as `i64` or `i32` (other
    /// integer types are converted). A mask with no elements means no mask.
    fn with_target(job: impl TargetJob, target: Target<'_>, mask: &FlexTensor) -> Vec<Vec<f32>> {
        let m = (mask.shape().num_elements() > 0).then(|| floats(mask));
        let m = m.as_deref();
        match target {
            Target::Dense(t) => job.run::<i64>(TargetRef::Dense(&floats(t)), m),
            Target::Labels(l) => {
                let l = l.to_contiguous();
                match l.dtype() {
                    DType::I64 => job.run(
                        TargetRef::Labels(l.as_slice::<i64>().expect("i64 labels")),
                        m,
                    ),
                    DType::I32 => job.run(
                        TargetRef::Labels(l.as_slice::<i32>().expect("i32 labels")),
                        m,
                    ),
                    _ => {
                        let v: Vec<i64> = l
                            .into_data()
                            .convert::<i64>()
                            .try_to_vec()
                            .expect("labels as i64");
                        job.run(TargetRef::Labels(&v), m)
                    }
                }
            }
        }
    }

    /// One call of the overlap statistics' kernel ([`cpu`]): the job, the sizes, the options and
    /// the pointwise term, when its rows are wanted.
    struct StatsJob<'a> {
        job: Job<'a>,
        d: Dims,
        s: Spec,
        pw: Option<Pointwise>,
    }

    impl TargetJob for StatsJob<'_> {
        fn run<L: Label>(self, t: TargetRef<'_, L>, m: Option<&[f32]>) -> Vec<Vec<f32>> {
            let StatsJob { job, d, s, pw } = self;
            match (job, pw) {
                (Job::Stats(x), None) => vec![cpu::forward(x, t, m, d, s)],
                (Job::Stats(x), Some(pw)) => vec![cpu::pointwise_forward(x, t, m, d, s, pw)],
                (Job::Saving(x), pw) => {
                    let (stats, p) = match pw {
                        None => cpu::forward_saving(x, t, m, d, s),
                        Some(pw) => cpu::pointwise_forward_saving(x, t, m, d, s, pw),
                    };
                    vec![stats, p]
                }
                (Job::Gradient(x, g), None) => vec![cpu::backward(x, t, m, g, d, s)],
                (Job::Gradient(x, g), Some(pw)) => {
                    vec![cpu::pointwise_backward(x, t, m, g, d, s, pw)]
                }
                (Job::InPlace(p, g), pw) => {
                    match pw {
                        None => cpu::backward_in_place(p, t, m, g, d, s),
                        Some(pw) => cpu::pointwise_backward_in_place(p, t, m, g, d, s, pw),
                    }
                    Vec::new()
                }
            }
        }
    }

    /// Runs the statistics' `job` (see [`with_target`]). `pw`: the pointwise term, when its rows
    /// are wanted.
    fn run(
        job: Job<'_>,
        target: Target<'_>,
        mask: &FlexTensor,
        d: Dims,
        s: Spec,
        pw: Option<Pointwise>,
    ) -> Vec<Vec<f32>> {
        with_target(StatsJob { job, d, s, pw }, target, mask)
    }

    /// One call of the confusion matrix's kernel ([`confusion`]).
    struct ConfusionJob<'a> {
        job: Job<'a>,
        d: Dims,
    }

    impl TargetJob for ConfusionJob<'_> {
        fn run<L: Label>(self, t: TargetRef<'_, L>, m: Option<&[f32]>) -> Vec<Vec<f32>> {
            let d = self.d;
            match self.job {
                Job::Stats(x) => vec![confusion::forward(x, t, m, d)],
                Job::Saving(x) => {
                    let (out, p) = confusion::forward_saving(x, t, m, d);
                    vec![out, p]
                }
                Job::Gradient(x, g) => vec![confusion::backward(x, t, m, g, d)],
                Job::InPlace(p, g) => {
                    confusion::backward_in_place(p, t, m, g, d);
                    Vec::new()
                }
            }
        }
    }

    fn dims(logits: &FlexTensor) -> Dims {
        let [b, c, n] = logits.shape().dims::<3>();
        Dims { b, c, n }
    }

    /// A kernel output as a tensor; a prediction-sized one returns to the buffer cache when
    /// dropped ([`super::super::buffer`]).
    fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
        FlexTensor::from_data(TensorData::from_bytes(
            buffer::into_bytes(values),
            shape,
            DType::F32,
        ))
    }

    /// Rows of the output: 4 overlap statistics, and 4 pointwise sums with `pw`.
    fn rows(pw: Option<Pointwise>) -> usize {
        if pw.is_some() { cpu::ROWS_MAX } else { 4 }
    }

    fn stats(
        logits: &FlexTensor,
        target: Target<'_>,
        mask: &FlexTensor,
        s: Spec,
        pw: Option<Pointwise>,
    ) -> FlexTensor {
        let d = dims(logits);
        let out = run(Job::Stats(&floats(logits)), target, mask, d, s, pw).remove(0);
        tensor(out, vec![rows(pw), d.b, d.k(&s)])
    }

    /// Whether the backward starts from the logits rather than saved activations: without an
    /// activation (they are the logits), and for the sigmoid's pointwise term (its gradient
    /// needs the logits, which the activations do not give back precisely where they saturate).
    fn keeps_logits(s: Spec, pw: Option<Pointwise>) -> bool {
        s.act == Activation::None || (pw.is_some() && s.act != Activation::Softmax)
    }

    /// The statistics and what the backward starts from: the activations, or the logits
    /// themselves without an activation.
    fn saving(
        logits: FlexTensor,
        target: Target<'_>,
        mask: &FlexTensor,
        s: Spec,
        pw: Option<Pointwise>,
    ) -> (FlexTensor, FlexTensor) {
        if keeps_logits(s, pw) {
            return (stats(&logits, target, mask, s, pw), logits);
        }
        let d = dims(&logits);
        let mut out = run(Job::Saving(&floats(&logits)), target, mask, d, s, pw);
        let p = out.pop().expect("activations");
        (
            tensor(out.pop().expect("statistics"), vec![rows(pw), d.b, d.k(&s)]),
            tensor(p, vec![d.b, d.c, d.n]),
        )
    }

    fn gradient(
        logits: &FlexTensor,
        target: Target<'_>,
        mask: &FlexTensor,
        grad: &FlexTensor,
        s: Spec,
        pw: Option<Pointwise>,
    ) -> FlexTensor {
        let d = dims(logits);
        let out = run(
            Job::Gradient(&floats(logits), &floats(grad)),
            target,
            mask,
            d,
            s,
            pw,
        )
        .remove(0);
        tensor(out, vec![d.b, d.c, d.n])
    }

    /// The gradient from what [`saving`] returned: in place over the activations when this call
    /// owns their buffer (the usual case: the backward step consumes its state), else on a copy.
    fn gradient_saved(
        saved: FlexTensor,
        target: Target<'_>,
        mask: &FlexTensor,
        grad: &FlexTensor,
        s: Spec,
        pw: Option<Pointwise>,
    ) -> FlexTensor {
        if keeps_logits(s, pw) {
            return gradient(&saved, target, mask, grad, s, pw);
        }
        let d = dims(&saved);
        let mut p = owned(saved);
        let len = d.b * d.c * d.n;
        let values = &mut p.try_storage_mut::<f32>().expect("a uniquely owned buffer")[..len];
        run(Job::InPlace(values, &floats(grad)), target, mask, d, s, pw);
        p
    }

    /// `saved` as a contiguous f32 buffer that this call owns, to be overwritten: itself when
    /// nothing else holds it (the usual case: the backward step consumes its state), else a copy.
    fn owned(saved: FlexTensor) -> FlexTensor {
        let d = dims(&saved);
        let len = d.b * d.c * d.n;
        if saved.layout().contiguous_offsets() == Some((0, len))
            && saved.dtype() == DType::F32
            && saved.is_unique()
        {
            saved
        } else {
            tensor(floats(&saved).into_owned(), vec![d.b, d.c, d.n])
        }
    }

    /// The confusion matrix `[B, C, C + 1]` of the logits.
    fn confusion_out(logits: &FlexTensor, target: Target<'_>, mask: &FlexTensor) -> FlexTensor {
        let d = dims(logits);
        let job = ConfusionJob {
            job: Job::Stats(&floats(logits)),
            d,
        };
        tensor(
            with_target(job, target, mask).remove(0),
            vec![d.b, d.c, d.c + 1],
        )
    }

    /// The confusion matrix and the probabilities, written in the same pass.
    fn confusion_saving(
        logits: FlexTensor,
        target: Target<'_>,
        mask: &FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let d = dims(&logits);
        let job = ConfusionJob {
            job: Job::Saving(&floats(&logits)),
            d,
        };
        let mut out = with_target(job, target, mask);
        let p = out.pop().expect("probabilities");
        (
            tensor(
                out.pop().expect("confusion matrix"),
                vec![d.b, d.c, d.c + 1],
            ),
            tensor(p, vec![d.b, d.c, d.n]),
        )
    }

    /// The gradient from the probabilities that [`confusion_saving`] returned, written over them
    /// when this call owns their buffer (see [`owned`]).
    fn confusion_gradient_saved(
        saved: FlexTensor,
        target: Target<'_>,
        mask: &FlexTensor,
        grad: &FlexTensor,
    ) -> FlexTensor {
        let d = dims(&saved);
        let mut p = owned(saved);
        let len = d.b * d.c * d.n;
        let values = &mut p.try_storage_mut::<f32>().expect("a uniquely owned buffer")[..len];
        let job = ConfusionJob {
            job: Job::InPlace(values, &floats(grad)),
            d,
        };
        with_target(job, target, mask);
        p
    }

    impl FusedStatsOps for Flex {
        fn overlap_stats_labels(
            logits: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
            spec: Spec,
        ) -> FlexTensor {
            stats(&logits, Target::Labels(&labels), &mask, spec, None)
        }

        fn overlap_stats_labels_backward(
            logits: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
            grad: FlexTensor,
            spec: Spec,
        ) -> FlexTensor {
            gradient(&logits, Target::Labels(&labels), &mask, &grad, spec, None)
        }

        fn overlap_stats_dense(
            logits: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
            spec: Spec,
        ) -> FlexTensor {
            stats(&logits, Target::Dense(&target), &mask, spec, None)
        }

        fn overlap_stats_dense_backward(
            logits: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
            grad: FlexTensor,
            spec: Spec,
        ) -> FlexTensor {
            gradient(&logits, Target::Dense(&target), &mask, &grad, spec, None)
        }

        fn overlap_stats_labels_saving(
            logits: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
            spec: Spec,
        ) -> (FlexTensor, FlexTensor) {
            saving(logits, Target::Labels(&labels), &mask, spec, None)
        }

        fn overlap_stats_labels_backward_saved(
            saved: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
            grad: FlexTensor,
            spec: Spec,
        ) -> FlexTensor {
            gradient_saved(saved, Target::Labels(&labels), &mask, &grad, spec, None)
        }

        fn overlap_stats_dense_saving(
            logits: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
            spec: Spec,
        ) -> (FlexTensor, FlexTensor) {
            saving(logits, Target::Dense(&target), &mask, spec, None)
        }

        fn overlap_stats_dense_backward_saved(
            saved: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
            grad: FlexTensor,
            spec: Spec,
        ) -> FlexTensor {
            gradient_saved(saved, Target::Dense(&target), &mask, &grad, spec, None)
        }
    }

    impl FusedPointwiseOps for Flex {
        fn pointwise_stats_labels(
            logits: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
            activation: Activation,
            pw: Pointwise,
        ) -> FlexTensor {
            stats(
                &logits,
                Target::Labels(&labels),
                &mask,
                Spec::plain(activation),
                Some(pw),
            )
        }

        fn pointwise_stats_dense(
            logits: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
            activation: Activation,
            pw: Pointwise,
        ) -> FlexTensor {
            stats(
                &logits,
                Target::Dense(&target),
                &mask,
                Spec::plain(activation),
                Some(pw),
            )
        }

        fn pointwise_stats_labels_saving(
            logits: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
            activation: Activation,
            pw: Pointwise,
        ) -> (FlexTensor, FlexTensor) {
            saving(
                logits,
                Target::Labels(&labels),
                &mask,
                Spec::plain(activation),
                Some(pw),
            )
        }

        fn pointwise_stats_dense_saving(
            logits: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
            activation: Activation,
            pw: Pointwise,
        ) -> (FlexTensor, FlexTensor) {
            saving(
                logits,
                Target::Dense(&target),
                &mask,
                Spec::plain(activation),
                Some(pw),
            )
        }

        fn pointwise_stats_labels_backward_saved(
            saved: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
            grad: FlexTensor,
            activation: Activation,
            pw: Pointwise,
        ) -> FlexTensor {
            gradient_saved(
                saved,
                Target::Labels(&labels),
                &mask,
                &grad,
                Spec::plain(activation),
                Some(pw),
            )
        }

        fn pointwise_stats_dense_backward_saved(
            saved: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
            grad: FlexTensor,
            activation: Activation,
            pw: Pointwise,
        ) -> FlexTensor {
            gradient_saved(
                saved,
                Target::Dense(&target),
                &mask,
                &grad,
                Spec::plain(activation),
                Some(pw),
            )
        }
    }

    impl FusedConfusionOps for Flex {
        fn confusion_labels(
            logits: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
        ) -> FlexTensor {
            confusion_out(&logits, Target::Labels(&labels), &mask)
        }

        fn confusion_dense(logits: FlexTensor, target: FlexTensor, mask: FlexTensor) -> FlexTensor {
            confusion_out(&logits, Target::Dense(&target), &mask)
        }

        fn confusion_labels_saving(
            logits: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
        ) -> (FlexTensor, FlexTensor) {
            confusion_saving(logits, Target::Labels(&labels), &mask)
        }

        fn confusion_dense_saving(
            logits: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
        ) -> (FlexTensor, FlexTensor) {
            confusion_saving(logits, Target::Dense(&target), &mask)
        }

        fn confusion_labels_backward_saved(
            saved: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
            grad: FlexTensor,
        ) -> FlexTensor {
            confusion_gradient_saved(saved, Target::Labels(&labels), &mask, &grad)
        }

        fn confusion_dense_backward_saved(
            saved: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
            grad: FlexTensor,
        ) -> FlexTensor {
            confusion_gradient_saved(saved, Target::Dense(&target), &mask, &grad)
        }
    }
}

/// The target the backward step keeps (never differentiated), as the inner backend's primitives.
type SavedTarget<B> = TargetOf<IntTensor<B>, FloatTensor<B>>;

/// One fused operation as the autodiff layer records it, by its options: the forward on the inner
/// backend, the same forward returning also what its backward starts from, and that backward.
/// The three operations ([`Spec`]: the statistics; `(Activation, Pointwise)`: with the pointwise
/// term; [`Confusion`]: the confusion matrix) share one recording ([`record`]) and one backward
/// step ([`FusedBackward`]).
trait Recorded<B: Backend>: Clone + Copy + Send + Sync + std::fmt::Debug + 'static {
    fn forward(self, x: FloatTensor<B>, t: SavedTarget<B>, mask: FloatTensor<B>) -> FloatTensor<B>;

    fn forward_saving(
        self,
        x: FloatTensor<B>,
        t: SavedTarget<B>,
        mask: FloatTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        saved: FloatTensor<B>,
        t: SavedTarget<B>,
        mask: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> FloatTensor<B>;
}

impl<B: FusedStatsOps> Recorded<B> for Spec {
    fn forward(self, x: FloatTensor<B>, t: SavedTarget<B>, mask: FloatTensor<B>) -> FloatTensor<B> {
        match t {
            TargetOf::Labels(l) => B::overlap_stats_labels(x, l, mask, self),
            TargetOf::Dense(d) => B::overlap_stats_dense(x, d, mask, self),
        }
    }

    fn forward_saving(
        self,
        x: FloatTensor<B>,
        t: SavedTarget<B>,
        mask: FloatTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        match t {
            TargetOf::Labels(l) => B::overlap_stats_labels_saving(x, l, mask, self),
            TargetOf::Dense(d) => B::overlap_stats_dense_saving(x, d, mask, self),
        }
    }

    fn backward(
        self,
        saved: FloatTensor<B>,
        t: SavedTarget<B>,
        mask: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> FloatTensor<B> {
        match t {
            TargetOf::Labels(l) => {
                B::overlap_stats_labels_backward_saved(saved, l, mask, grad, self)
            }
            TargetOf::Dense(d) => B::overlap_stats_dense_backward_saved(saved, d, mask, grad, self),
        }
    }
}

impl<B: FusedPointwiseOps> Recorded<B> for (Activation, Pointwise) {
    fn forward(self, x: FloatTensor<B>, t: SavedTarget<B>, mask: FloatTensor<B>) -> FloatTensor<B> {
        let (a, pw) = self;
        match t {
            TargetOf::Labels(l) => B::pointwise_stats_labels(x, l, mask, a, pw),
            TargetOf::Dense(d) => B::pointwise_stats_dense(x, d, mask, a, pw),
        }
    }

    fn forward_saving(
        self,
        x: FloatTensor<B>,
        t: SavedTarget<B>,
        mask: FloatTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let (a, pw) = self;
        match t {
            TargetOf::Labels(l) => B::pointwise_stats_labels_saving(x, l, mask, a, pw),
            TargetOf::Dense(d) => B::pointwise_stats_dense_saving(x, d, mask, a, pw),
        }
    }

    fn backward(
        self,
        saved: FloatTensor<B>,
        t: SavedTarget<B>,
        mask: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let (a, pw) = self;
        match t {
            TargetOf::Labels(l) => {
                B::pointwise_stats_labels_backward_saved(saved, l, mask, grad, a, pw)
            }
            TargetOf::Dense(d) => {
                B::pointwise_stats_dense_backward_saved(saved, d, mask, grad, a, pw)
            }
        }
    }
}

/// The confusion matrix's recording (it has no options).
#[derive(Debug, Clone, Copy)]
struct Confusion;

impl<B: FusedConfusionOps> Recorded<B> for Confusion {
    fn forward(self, x: FloatTensor<B>, t: SavedTarget<B>, mask: FloatTensor<B>) -> FloatTensor<B> {
        match t {
            TargetOf::Labels(l) => B::confusion_labels(x, l, mask),
            TargetOf::Dense(d) => B::confusion_dense(x, d, mask),
        }
    }

    fn forward_saving(
        self,
        x: FloatTensor<B>,
        t: SavedTarget<B>,
        mask: FloatTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        match t {
            TargetOf::Labels(l) => B::confusion_labels_saving(x, l, mask),
            TargetOf::Dense(d) => B::confusion_dense_saving(x, d, mask),
        }
    }

    fn backward(
        self,
        saved: FloatTensor<B>,
        t: SavedTarget<B>,
        mask: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> FloatTensor<B> {
        match t {
            TargetOf::Labels(l) => B::confusion_labels_backward_saved(saved, l, mask, grad),
            TargetOf::Dense(d) => B::confusion_dense_backward_saved(saved, d, mask, grad),
        }
    }
}

/// What the backward step keeps: what the forward saved for it (the activations on Flex, else the
/// logits), the target and mask as plain primitives, and the operation's options.
#[derive(Debug, Clone)]
struct SavedInputs<B: Backend, O> {
    saved: FloatTensor<B>,
    target: SavedTarget<B>,
    mask: FloatTensor<B>,
    op: O,
}

/// The backward step of a recorded fused operation `O`.
#[derive(Debug)]
struct FusedBackward<O>(std::marker::PhantomData<O>);

impl<B: Backend, O: Recorded<B>> Backward<B, 1> for FusedBackward<O> {
    type State = SavedInputs<B, O>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let s = ops.state;
        if let Some(node) = node {
            grads.register::<B>(node.id, s.op.backward(s.saved, s.target, s.mask, grad));
        }
    }
}

/// Runs the operation `op` on the inner backend and records its backward step when the logits
/// are tracked (then through the saving forward).
fn record<B: Backend, C: CheckpointStrategy, O: Recorded<B>>(
    logits: FloatTensor<Autodiff<B, C>>,
    target: SavedTarget<B>,
    mask: FloatTensor<Autodiff<B, C>>,
    op: O,
) -> FloatTensor<Autodiff<B, C>> {
    let node = logits.node();
    let mask = mask.into_primitive();
    let x = logits.into_primitive();
    match FusedBackward::<O>(std::marker::PhantomData)
        .prepare::<C>([node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, saved) = op.forward_saving(x, target.clone(), mask.clone());
            prep.finish(
                SavedInputs::<B, O> {
                    saved,
                    target,
                    mask,
                    op,
                },
                out,
            )
        }
        OpsKind::UnTracked(prep) => prep.finish(op.forward(x, target, mask)),
    }
}

/// The panic of an inner-backend method that the autodiff layer never calls.
const NOT_RECORDED: &str =
    "segloss: the saving forward is the inner backend's; the autodiff layer records its own";
/// The panic of a second derivative.
const NO_SECOND_DERIVATIVE: &str =
    "segloss: second derivatives of the fused operations are not supported";

impl<B: FusedStatsOps, C: CheckpointStrategy> FusedStatsOps for Autodiff<B, C> {
    fn overlap_stats_labels(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
        spec: Spec,
    ) -> FloatTensor<Self> {
        record::<B, C, _>(logits, TargetOf::Labels(labels), mask, spec)
    }

    fn overlap_stats_labels_backward(
        _: FloatTensor<Self>,
        _: IntTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: Spec,
    ) -> FloatTensor<Self> {
        unimplemented!("{NO_SECOND_DERIVATIVE}")
    }

    fn overlap_stats_dense(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        spec: Spec,
    ) -> FloatTensor<Self> {
        record::<B, C, _>(logits, TargetOf::Dense(target.into_primitive()), mask, spec)
    }

    fn overlap_stats_dense_backward(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: Spec,
    ) -> FloatTensor<Self> {
        unimplemented!("{NO_SECOND_DERIVATIVE}")
    }
}

impl<B: FusedPointwiseOps, C: CheckpointStrategy> FusedPointwiseOps for Autodiff<B, C> {
    fn pointwise_stats_labels(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
        activation: Activation,
        pw: Pointwise,
    ) -> FloatTensor<Self> {
        record::<B, C, _>(logits, TargetOf::Labels(labels), mask, (activation, pw))
    }

    fn pointwise_stats_dense(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        activation: Activation,
        pw: Pointwise,
    ) -> FloatTensor<Self> {
        let target = TargetOf::Dense(target.into_primitive());
        record::<B, C, _>(logits, target, mask, (activation, pw))
    }

    fn pointwise_stats_labels_saving(
        _: FloatTensor<Self>,
        _: IntTensor<Self>,
        _: FloatTensor<Self>,
        _: Activation,
        _: Pointwise,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!("{NOT_RECORDED}")
    }

    fn pointwise_stats_dense_saving(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: Activation,
        _: Pointwise,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!("{NOT_RECORDED}")
    }

    fn pointwise_stats_labels_backward_saved(
        _: FloatTensor<Self>,
        _: IntTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: Activation,
        _: Pointwise,
    ) -> FloatTensor<Self> {
        unimplemented!("{NO_SECOND_DERIVATIVE}")
    }

    fn pointwise_stats_dense_backward_saved(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: Activation,
        _: Pointwise,
    ) -> FloatTensor<Self> {
        unimplemented!("{NO_SECOND_DERIVATIVE}")
    }
}

impl<B: FusedConfusionOps, C: CheckpointStrategy> FusedConfusionOps for Autodiff<B, C> {
    fn confusion_labels(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        record::<B, C, _>(logits, TargetOf::Labels(labels), mask, Confusion)
    }

    fn confusion_dense(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let target = TargetOf::Dense(target.into_primitive());
        record::<B, C, _>(logits, target, mask, Confusion)
    }

    fn confusion_labels_saving(
        _: FloatTensor<Self>,
        _: IntTensor<Self>,
        _: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!("{NOT_RECORDED}")
    }

    fn confusion_dense_saving(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!("{NOT_RECORDED}")
    }

    fn confusion_labels_backward_saved(
        _: FloatTensor<Self>,
        _: IntTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        unimplemented!("{NO_SECOND_DERIVATIVE}")
    }

    fn confusion_dense_backward_saved(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        unimplemented!("{NO_SECOND_DERIVATIVE}")
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::flex::{Flex, FlexTensor};
    use burn::tensor::TensorData;

    use super::FusedStatsOps;
    use crate::input::Activation;
    use crate::kernel::spec::Spec;

    fn values(t: &FlexTensor) -> Vec<f32> {
        t.clone().into_data().try_to_vec::<f32>().unwrap()
    }

    /// The saved activations become the gradient in place when the backward owns them, and are
    /// copied (left intact) when something else still holds them; both equal the recomputing
    /// backward.
    #[test]
    fn saved_activations_are_only_overwritten_when_owned() {
        let (b, c, n) = (2, 3, 50);
        let x = FlexTensor::from_data(TensorData::new(
            (0..b * c * n)
                .map(|i| (i % 17) as f32 * 0.3 - 2.0)
                .collect::<Vec<f32>>(),
            [b, c, n],
        ));
        let labels = FlexTensor::from_data(TensorData::new(
            (0..b * n).map(|i| (i % c) as i64).collect::<Vec<i64>>(),
            [b, n],
        ));
        let mask = FlexTensor::from_data(TensorData::new(Vec::<f32>::new(), [0, 0]));
        let grad = FlexTensor::from_data(TensorData::new(
            (0..4 * b * c)
                .map(|i| i as f32 * 0.1 - 0.5)
                .collect::<Vec<f32>>(),
            [4, b, c],
        ));
        let spec = Spec {
            difference: true,
            ..Spec::plain(Activation::Softmax)
        };
        let plain = Flex::overlap_stats_labels(x.clone(), labels.clone(), mask.clone(), spec);
        let want = values(&Flex::overlap_stats_labels_backward(
            x.clone(),
            labels.clone(),
            mask.clone(),
            grad.clone(),
            spec,
        ));
        let (stats, saved) =
            Flex::overlap_stats_labels_saving(x.clone(), labels.clone(), mask.clone(), spec);
        assert_eq!(values(&stats), values(&plain));
        let probs = values(&saved);
        let held = saved.clone();
        let copied = Flex::overlap_stats_labels_backward_saved(
            saved,
            labels.clone(),
            mask.clone(),
            grad.clone(),
            spec,
        );
        assert_eq!(values(&copied), want);
        assert_eq!(
            values(&held),
            probs,
            "a shared buffer of activations was overwritten"
        );
        let in_place = Flex::overlap_stats_labels_backward_saved(held, labels, mask, grad, spec);
        assert_eq!(values(&in_place), want);
        // Without an activation the logits are what is saved, and they are never written.
        let (_, saved) = Flex::overlap_stats_labels_saving(
            x.clone(),
            FlexTensor::from_data(TensorData::new(vec![0i64; b * n], [b, n])),
            FlexTensor::from_data(TensorData::new(Vec::<f32>::new(), [0, 0])),
            Spec::plain(Activation::None),
        );
        assert_eq!(values(&saved), values(&x));
    }
}
