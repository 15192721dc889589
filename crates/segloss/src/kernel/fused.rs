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
use burn::backend::{Autodiff, Backend, Dispatch, DispatchDevice, backend_extension};
use burn::tensor::{Device, Int, Shape, Tensor};

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
    #[fusion(dtype = logits, shape = stats_shape(logits, include_background))]
    fn overlap_stats_labels(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
        activation: u8,
        include_background: bool,
        squared: bool,
        difference: bool,
    ) -> FloatTensor<Self>;

    /// Gradient of [`overlap_stats_labels`](FusedStatsOps::overlap_stats_labels) with respect to the logits.
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = logits, shape = logits)]
    fn overlap_stats_labels_backward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        activation: u8,
        include_background: bool,
        squared: bool,
        difference: bool,
    ) -> FloatTensor<Self>;

    /// Statistics against a dense target `[B, C, N]`.
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = logits, shape = stats_shape(logits, include_background))]
    fn overlap_stats_dense(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        activation: u8,
        include_background: bool,
        squared: bool,
        difference: bool,
    ) -> FloatTensor<Self>;

    /// Gradient of [`overlap_stats_dense`](FusedStatsOps::overlap_stats_dense) with respect to the logits.
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = logits, shape = logits)]
    fn overlap_stats_dense_backward(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        activation: u8,
        include_background: bool,
        squared: bool,
        difference: bool,
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
        activation: u8,
        include_background: bool,
        squared: bool,
        difference: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let stats = Self::overlap_stats_labels(
            logits.clone(),
            labels,
            mask,
            activation,
            include_background,
            squared,
            difference,
        );
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
        activation: u8,
        include_background: bool,
        squared: bool,
        difference: bool,
    ) -> FloatTensor<Self> {
        Self::overlap_stats_labels_backward(
            saved,
            labels,
            mask,
            grad,
            activation,
            include_background,
            squared,
            difference,
        )
    }

    /// [`overlap_stats_labels_saving`](FusedStatsOps::overlap_stats_labels_saving) against a dense target.
    #[allow(clippy::too_many_arguments)]
    #[fusion(default)]
    fn overlap_stats_dense_saving(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        activation: u8,
        include_background: bool,
        squared: bool,
        difference: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let stats = Self::overlap_stats_dense(
            logits.clone(),
            target,
            mask,
            activation,
            include_background,
            squared,
            difference,
        );
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
        activation: u8,
        include_background: bool,
        squared: bool,
        difference: bool,
    ) -> FloatTensor<Self> {
        Self::overlap_stats_dense_backward(
            saved,
            target,
            mask,
            grad,
            activation,
            include_background,
            squared,
            difference,
        )
    }
}

/// The shape of the statistics of logits `[B, C, N]`: `[4, B, K]`, `K = C` or `C - 1` without
/// the background (the output shape Burn's fusion records before the kernel runs).
pub fn stats_shape(logits: &Shape, include_background: &bool) -> Shape {
    let k = logits[1] - usize::from(!*include_background);
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
        activation: u8,
        gamma: f32,
        without_background: bool,
    ) -> FloatTensor<Self>;

    /// Against a dense target `[B, C, N]`.
    #[fusion(dtype = logits, shape = pointwise_shape(logits))]
    fn pointwise_stats_dense(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        activation: u8,
        gamma: f32,
        without_background: bool,
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
        activation: u8,
        gamma: f32,
        without_background: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let out = Self::pointwise_stats_labels(
            logits.clone(),
            labels,
            mask,
            activation,
            gamma,
            without_background,
        );
        (out, logits)
    }

    /// [`pointwise_stats_labels_saving`](FusedPointwiseOps::pointwise_stats_labels_saving) against a dense target.
    #[fusion(default)]
    fn pointwise_stats_dense_saving(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        activation: u8,
        gamma: f32,
        without_background: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let out = Self::pointwise_stats_dense(
            logits.clone(),
            target,
            mask,
            activation,
            gamma,
            without_background,
        );
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
        activation: u8,
        gamma: f32,
        without_background: bool,
    ) -> FloatTensor<Self>;

    /// [`pointwise_stats_labels_backward_saved`](FusedPointwiseOps::pointwise_stats_labels_backward_saved) against a dense target.
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = saved, shape = saved)]
    fn pointwise_stats_dense_backward_saved(
        saved: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        activation: u8,
        gamma: f32,
        without_background: bool,
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

/// Fused statistics and pointwise sums `[8, B, C]` of logits `[B, C, N]` (softmax or sigmoid;
/// the plain statistics of `spec`'s activation over every class, the pointwise term `pw`).
pub fn pointwise_stats(
    logits: Tensor<3>,
    target: FusedTarget,
    mask: Option<Tensor<2>>,
    spec: super::cpu::Spec,
    pw: super::cpu::Pointwise,
) -> Tensor<3> {
    let act = spec.act.code();
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    POINTWISE_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let device = logits.device();
    let mask = mask
        .unwrap_or_else(|| Tensor::<2>::empty([0, 0], &device))
        .into_dispatch();
    let out = match target {
        FusedTarget::Labels(l) => <Dispatch as FusedPointwiseOps>::pointwise_stats_labels(
            logits.into_dispatch(),
            l.into_dispatch(),
            mask,
            act,
            pw.gamma,
            pw.without_background,
        ),
        FusedTarget::Dense(t) => <Dispatch as FusedPointwiseOps>::pointwise_stats_dense(
            logits.into_dispatch(),
            t.into_dispatch(),
            mask,
            act,
            pw.gamma,
            pw.without_background,
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
pub fn confusion(logits: Tensor<3>, target: FusedTarget, mask: Option<Tensor<2>>) -> Tensor<3> {
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    CONFUSION_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let device = logits.device();
    let mask = mask
        .unwrap_or_else(|| Tensor::<2>::empty([0, 0], &device))
        .into_dispatch();
    let out = match target {
        FusedTarget::Labels(l) => <Dispatch as FusedConfusionOps>::confusion_labels(
            logits.into_dispatch(),
            l.into_dispatch(),
            mask,
        ),
        FusedTarget::Dense(t) => <Dispatch as FusedConfusionOps>::confusion_dense(
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
    match without_autodiff(device).as_dispatch() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => true,
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        DispatchDevice::Cube(_) => true,
        _ => false,
    }
}

/// Whether `device` is one of Burn's CubeCL devices (wgpu, CUDA; features `wgpu`, `cuda`), with
/// or without autodiff. Their full reductions run axis by axis (see `input::label_min_max`).
pub(crate) fn is_cube(device: &Device) -> bool {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    {
        matches!(
            without_autodiff(device).as_dispatch(),
            DispatchDevice::Cube(_)
        )
    }
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    {
        let _ = device;
        false
    }
}

/// The backend device under `device`'s autodiff layer, if it has one.
fn without_autodiff(device: &Device) -> Device {
    if device.is_autodiff() {
        device.clone().inner()
    } else {
        device.clone()
    }
}

/// The target of the fused operation.
pub enum FusedTarget {
    /// Class indices `[B, N]`.
    Labels(Tensor<2, Int>),
    /// Per-class values `[B, C, N]`.
    Dense(Tensor<3>),
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
    target: FusedTarget,
    mask: Option<Tensor<2>>,
    spec: super::cpu::Spec,
) -> Tensor<3> {
    let act = spec.act.code();
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let device = logits.device();
    let mask = mask
        .unwrap_or_else(|| Tensor::<2>::empty([0, 0], &device))
        .into_dispatch();
    let out = match target {
        FusedTarget::Labels(l) => <Dispatch as FusedStatsOps>::overlap_stats_labels(
            logits.into_dispatch(),
            l.into_dispatch(),
            mask,
            act,
            spec.include_background,
            spec.squared,
            spec.difference,
        ),
        FusedTarget::Dense(t) => <Dispatch as FusedStatsOps>::overlap_stats_dense(
            logits.into_dispatch(),
            t.into_dispatch(),
            mask,
            act,
            spec.include_background,
            spec.squared,
            spec.difference,
        ),
    };
    Tensor::from_dispatch(out)
}

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::TensorMetadata;
    use burn::backend::flex::{Flex, FlexTensor};
    use burn::tensor::{DType, TensorData};

    use super::super::cpu::{self, Act, Dims, Label, Pointwise, Spec, TargetRef};
    use super::super::{buffer, confusion};
    use super::{FusedConfusionOps, FusedPointwiseOps, FusedStatsOps};

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
    enum Target<'a> {
        Labels(&'a FlexTensor),
        Dense(&'a FlexTensor),
    }

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
        s.act == Act::None || (pw.is_some() && s.act != Act::Softmax)
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

    fn spec(activation: u8, include_background: bool, squared: bool, difference: bool) -> Spec {
        Spec {
            act: Act::from_code(activation),
            include_background,
            squared,
            difference,
        }
    }

    impl FusedStatsOps for Flex {
        fn overlap_stats_labels(
            logits: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
            activation: u8,
            include_background: bool,
            squared: bool,
            difference: bool,
        ) -> FlexTensor {
            stats(
                &logits,
                Target::Labels(&labels),
                &mask,
                spec(activation, include_background, squared, difference),
                None,
            )
        }

        fn overlap_stats_labels_backward(
            logits: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
            grad: FlexTensor,
            activation: u8,
            include_background: bool,
            squared: bool,
            difference: bool,
        ) -> FlexTensor {
            gradient(
                &logits,
                Target::Labels(&labels),
                &mask,
                &grad,
                spec(activation, include_background, squared, difference),
                None,
            )
        }

        fn overlap_stats_dense(
            logits: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
            activation: u8,
            include_background: bool,
            squared: bool,
            difference: bool,
        ) -> FlexTensor {
            stats(
                &logits,
                Target::Dense(&target),
                &mask,
                spec(activation, include_background, squared, difference),
                None,
            )
        }

        fn overlap_stats_dense_backward(
            logits: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
            grad: FlexTensor,
            activation: u8,
            include_background: bool,
            squared: bool,
            difference: bool,
        ) -> FlexTensor {
            gradient(
                &logits,
                Target::Dense(&target),
                &mask,
                &grad,
                spec(activation, include_background, squared, difference),
                None,
            )
        }

        fn overlap_stats_labels_saving(
            logits: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
            activation: u8,
            include_background: bool,
            squared: bool,
            difference: bool,
        ) -> (FlexTensor, FlexTensor) {
            saving(
                logits,
                Target::Labels(&labels),
                &mask,
                spec(activation, include_background, squared, difference),
                None,
            )
        }

        fn overlap_stats_labels_backward_saved(
            saved: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
            grad: FlexTensor,
            activation: u8,
            include_background: bool,
            squared: bool,
            difference: bool,
        ) -> FlexTensor {
            gradient_saved(
                saved,
                Target::Labels(&labels),
                &mask,
                &grad,
                spec(activation, include_background, squared, difference),
                None,
            )
        }

        fn overlap_stats_dense_saving(
            logits: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
            activation: u8,
            include_background: bool,
            squared: bool,
            difference: bool,
        ) -> (FlexTensor, FlexTensor) {
            saving(
                logits,
                Target::Dense(&target),
                &mask,
                spec(activation, include_background, squared, difference),
                None,
            )
        }

        fn overlap_stats_dense_backward_saved(
            saved: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
            grad: FlexTensor,
            activation: u8,
            include_background: bool,
            squared: bool,
            difference: bool,
        ) -> FlexTensor {
            gradient_saved(
                saved,
                Target::Dense(&target),
                &mask,
                &grad,
                spec(activation, include_background, squared, difference),
                None,
            )
        }
    }

    impl FusedPointwiseOps for Flex {
        fn pointwise_stats_labels(
            logits: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
            activation: u8,
            gamma: f32,
            without_background: bool,
        ) -> FlexTensor {
            stats(
                &logits,
                Target::Labels(&labels),
                &mask,
                spec(activation, true, false, false),
                Some(Pointwise {
                    gamma,
                    without_background,
                }),
            )
        }

        fn pointwise_stats_dense(
            logits: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
            activation: u8,
            gamma: f32,
            without_background: bool,
        ) -> FlexTensor {
            stats(
                &logits,
                Target::Dense(&target),
                &mask,
                spec(activation, true, false, false),
                Some(Pointwise {
                    gamma,
                    without_background,
                }),
            )
        }

        fn pointwise_stats_labels_saving(
            logits: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
            activation: u8,
            gamma: f32,
            without_background: bool,
        ) -> (FlexTensor, FlexTensor) {
            saving(
                logits,
                Target::Labels(&labels),
                &mask,
                spec(activation, true, false, false),
                Some(Pointwise {
                    gamma,
                    without_background,
                }),
            )
        }

        fn pointwise_stats_dense_saving(
            logits: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
            activation: u8,
            gamma: f32,
            without_background: bool,
        ) -> (FlexTensor, FlexTensor) {
            saving(
                logits,
                Target::Dense(&target),
                &mask,
                spec(activation, true, false, false),
                Some(Pointwise {
                    gamma,
                    without_background,
                }),
            )
        }

        fn pointwise_stats_labels_backward_saved(
            saved: FlexTensor,
            labels: FlexTensor,
            mask: FlexTensor,
            grad: FlexTensor,
            activation: u8,
            gamma: f32,
            without_background: bool,
        ) -> FlexTensor {
            gradient_saved(
                saved,
                Target::Labels(&labels),
                &mask,
                &grad,
                spec(activation, true, false, false),
                Some(Pointwise {
                    gamma,
                    without_background,
                }),
            )
        }

        fn pointwise_stats_dense_backward_saved(
            saved: FlexTensor,
            target: FlexTensor,
            mask: FlexTensor,
            grad: FlexTensor,
            activation: u8,
            gamma: f32,
            without_background: bool,
        ) -> FlexTensor {
            gradient_saved(
                saved,
                Target::Dense(&target),
                &mask,
                &grad,
                spec(activation, true, false, false),
                Some(Pointwise {
                    gamma,
                    without_background,
                }),
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

/// The target the backward step keeps (never differentiated).
#[derive(Debug, Clone)]
enum SavedTarget<B: Backend> {
    Labels(IntTensor<B>),
    Dense(FloatTensor<B>),
}

/// The options of one call: activation code, include background, squared, difference.
type Options = (u8, bool, bool, bool);

impl<B: FusedStatsOps> SavedTarget<B> {
    fn forward(
        self,
        x: FloatTensor<B>,
        mask: FloatTensor<B>,
        (a, bg, sq, diff): Options,
    ) -> FloatTensor<B> {
        match self {
            SavedTarget::Labels(l) => B::overlap_stats_labels(x, l, mask, a, bg, sq, diff),
            SavedTarget::Dense(t) => B::overlap_stats_dense(x, t, mask, a, bg, sq, diff),
        }
    }

    fn forward_saving(
        self,
        x: FloatTensor<B>,
        mask: FloatTensor<B>,
        (a, bg, sq, diff): Options,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        match self {
            SavedTarget::Labels(l) => B::overlap_stats_labels_saving(x, l, mask, a, bg, sq, diff),
            SavedTarget::Dense(t) => B::overlap_stats_dense_saving(x, t, mask, a, bg, sq, diff),
        }
    }

    fn backward(
        self,
        saved: FloatTensor<B>,
        mask: FloatTensor<B>,
        grad: FloatTensor<B>,
        (a, bg, sq, diff): Options,
    ) -> FloatTensor<B> {
        match self {
            SavedTarget::Labels(l) => {
                B::overlap_stats_labels_backward_saved(saved, l, mask, grad, a, bg, sq, diff)
            }
            SavedTarget::Dense(t) => {
                B::overlap_stats_dense_backward_saved(saved, t, mask, grad, a, bg, sq, diff)
            }
        }
    }
}

/// What the backward step keeps: what the forward saved for it (the activations on Flex, else the
/// logits), the target and mask as plain primitives, and the options.
#[derive(Debug, Clone)]
struct SavedInputs<B: Backend> {
    saved: FloatTensor<B>,
    target: SavedTarget<B>,
    mask: FloatTensor<B>,
    options: Options,
}

#[derive(Debug)]
struct FusedStatsBackward;

impl<B: FusedStatsOps> Backward<B, 1> for FusedStatsBackward {
    type State = SavedInputs<B>;

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
            grads.register::<B>(node.id, s.target.backward(s.saved, s.mask, grad, s.options));
        }
    }
}

/// Runs the forward on the inner backend and records the backward step when the logits are tracked.
fn record<B: FusedStatsOps, C: CheckpointStrategy>(
    logits: FloatTensor<Autodiff<B, C>>,
    target: SavedTarget<B>,
    mask: FloatTensor<Autodiff<B, C>>,
    options: Options,
) -> FloatTensor<Autodiff<B, C>> {
    let node = logits.node();
    let mask = mask.into_primitive();
    let x = logits.into_primitive();
    match FusedStatsBackward
        .prepare::<C>([node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (stats, saved) = target.clone().forward_saving(x, mask.clone(), options);
            prep.finish(
                SavedInputs::<B> {
                    saved,
                    target,
                    mask,
                    options,
                },
                stats,
            )
        }
        OpsKind::UnTracked(prep) => prep.finish(target.forward(x, mask, options)),
    }
}

impl<B: FusedStatsOps, C: CheckpointStrategy> FusedStatsOps for Autodiff<B, C> {
    fn overlap_stats_labels(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
        activation: u8,
        include_background: bool,
        squared: bool,
        difference: bool,
    ) -> FloatTensor<Self> {
        record::<B, C>(
            logits,
            SavedTarget::Labels(labels),
            mask,
            (activation, include_background, squared, difference),
        )
    }

    fn overlap_stats_labels_backward(
        _: FloatTensor<Self>,
        _: IntTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: u8,
        _: bool,
        _: bool,
        _: bool,
    ) -> FloatTensor<Self> {
        unimplemented!(
            "segloss: second derivatives of the fused overlap statistics are not supported"
        )
    }

    fn overlap_stats_dense(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        activation: u8,
        include_background: bool,
        squared: bool,
        difference: bool,
    ) -> FloatTensor<Self> {
        record::<B, C>(
            logits,
            SavedTarget::Dense(target.into_primitive()),
            mask,
            (activation, include_background, squared, difference),
        )
    }

    fn overlap_stats_dense_backward(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: u8,
        _: bool,
        _: bool,
        _: bool,
    ) -> FloatTensor<Self> {
        unimplemented!(
            "segloss: second derivatives of the fused overlap statistics are not supported"
        )
    }
}

/// The options of one pointwise call: activation code, gamma, without the background.
type PointwiseOptions = (u8, f32, bool);

impl<B: FusedPointwiseOps> SavedTarget<B> {
    fn pointwise(
        self,
        x: FloatTensor<B>,
        mask: FloatTensor<B>,
        (a, gamma, bg): PointwiseOptions,
    ) -> FloatTensor<B> {
        match self {
            SavedTarget::Labels(l) => B::pointwise_stats_labels(x, l, mask, a, gamma, bg),
            SavedTarget::Dense(t) => B::pointwise_stats_dense(x, t, mask, a, gamma, bg),
        }
    }

    fn pointwise_saving(
        self,
        x: FloatTensor<B>,
        mask: FloatTensor<B>,
        (a, gamma, bg): PointwiseOptions,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        match self {
            SavedTarget::Labels(l) => B::pointwise_stats_labels_saving(x, l, mask, a, gamma, bg),
            SavedTarget::Dense(t) => B::pointwise_stats_dense_saving(x, t, mask, a, gamma, bg),
        }
    }

    fn pointwise_backward(
        self,
        saved: FloatTensor<B>,
        mask: FloatTensor<B>,
        grad: FloatTensor<B>,
        (a, gamma, bg): PointwiseOptions,
    ) -> FloatTensor<B> {
        match self {
            SavedTarget::Labels(l) => {
                B::pointwise_stats_labels_backward_saved(saved, l, mask, grad, a, gamma, bg)
            }
            SavedTarget::Dense(t) => {
                B::pointwise_stats_dense_backward_saved(saved, t, mask, grad, a, gamma, bg)
            }
        }
    }
}

/// What the pointwise backward step keeps (as [`SavedInputs`]).
#[derive(Debug, Clone)]
struct SavedPointwise<B: Backend> {
    saved: FloatTensor<B>,
    target: SavedTarget<B>,
    mask: FloatTensor<B>,
    options: PointwiseOptions,
}

#[derive(Debug)]
struct FusedPointwiseBackward;

impl<B: FusedPointwiseOps> Backward<B, 1> for FusedPointwiseBackward {
    type State = SavedPointwise<B>;

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
            grads.register::<B>(
                node.id,
                s.target
                    .pointwise_backward(s.saved, s.mask, grad, s.options),
            );
        }
    }
}

fn record_pointwise<B: FusedPointwiseOps, C: CheckpointStrategy>(
    logits: FloatTensor<Autodiff<B, C>>,
    target: SavedTarget<B>,
    mask: FloatTensor<Autodiff<B, C>>,
    options: PointwiseOptions,
) -> FloatTensor<Autodiff<B, C>> {
    let node = logits.node();
    let mask = mask.into_primitive();
    let x = logits.into_primitive();
    match FusedPointwiseBackward
        .prepare::<C>([node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (stats, saved) = target.clone().pointwise_saving(x, mask.clone(), options);
            prep.finish(
                SavedPointwise::<B> {
                    saved,
                    target,
                    mask,
                    options,
                },
                stats,
            )
        }
        OpsKind::UnTracked(prep) => prep.finish(target.pointwise(x, mask, options)),
    }
}

impl<B: FusedPointwiseOps, C: CheckpointStrategy> FusedPointwiseOps for Autodiff<B, C> {
    fn pointwise_stats_labels(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
        activation: u8,
        gamma: f32,
        without_background: bool,
    ) -> FloatTensor<Self> {
        record_pointwise::<B, C>(
            logits,
            SavedTarget::Labels(labels),
            mask,
            (activation, gamma, without_background),
        )
    }

    fn pointwise_stats_dense(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        activation: u8,
        gamma: f32,
        without_background: bool,
    ) -> FloatTensor<Self> {
        record_pointwise::<B, C>(
            logits,
            SavedTarget::Dense(target.into_primitive()),
            mask,
            (activation, gamma, without_background),
        )
    }

    fn pointwise_stats_labels_saving(
        _: FloatTensor<Self>,
        _: IntTensor<Self>,
        _: FloatTensor<Self>,
        _: u8,
        _: f32,
        _: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!(
            "segloss: the saving forward is the inner backend's; the autodiff layer records its own"
        )
    }

    fn pointwise_stats_dense_saving(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: u8,
        _: f32,
        _: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!(
            "segloss: the saving forward is the inner backend's; the autodiff layer records its own"
        )
    }

    fn pointwise_stats_labels_backward_saved(
        _: FloatTensor<Self>,
        _: IntTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: u8,
        _: f32,
        _: bool,
    ) -> FloatTensor<Self> {
        unimplemented!("segloss: second derivatives of the fused pointwise sums are not supported")
    }

    fn pointwise_stats_dense_backward_saved(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: u8,
        _: f32,
        _: bool,
    ) -> FloatTensor<Self> {
        unimplemented!("segloss: second derivatives of the fused pointwise sums are not supported")
    }
}

impl<B: FusedConfusionOps> SavedTarget<B> {
    fn confusion(self, x: FloatTensor<B>, mask: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            SavedTarget::Labels(l) => B::confusion_labels(x, l, mask),
            SavedTarget::Dense(t) => B::confusion_dense(x, t, mask),
        }
    }

    fn confusion_saving(
        self,
        x: FloatTensor<B>,
        mask: FloatTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        match self {
            SavedTarget::Labels(l) => B::confusion_labels_saving(x, l, mask),
            SavedTarget::Dense(t) => B::confusion_dense_saving(x, t, mask),
        }
    }

    fn confusion_backward(
        self,
        saved: FloatTensor<B>,
        mask: FloatTensor<B>,
        grad: FloatTensor<B>,
    ) -> FloatTensor<B> {
        match self {
            SavedTarget::Labels(l) => B::confusion_labels_backward_saved(saved, l, mask, grad),
            SavedTarget::Dense(t) => B::confusion_dense_backward_saved(saved, t, mask, grad),
        }
    }
}

/// What the confusion matrix's backward step keeps (as [`SavedInputs`]).
#[derive(Debug, Clone)]
struct SavedConfusion<B: Backend> {
    saved: FloatTensor<B>,
    target: SavedTarget<B>,
    mask: FloatTensor<B>,
}

#[derive(Debug)]
struct FusedConfusionBackward;

impl<B: FusedConfusionOps> Backward<B, 1> for FusedConfusionBackward {
    type State = SavedConfusion<B>;

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
            grads.register::<B>(node.id, s.target.confusion_backward(s.saved, s.mask, grad));
        }
    }
}

fn record_confusion<B: FusedConfusionOps, C: CheckpointStrategy>(
    logits: FloatTensor<Autodiff<B, C>>,
    target: SavedTarget<B>,
    mask: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let node = logits.node();
    let mask = mask.into_primitive();
    let x = logits.into_primitive();
    match FusedConfusionBackward
        .prepare::<C>([node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, saved) = target.clone().confusion_saving(x, mask.clone());
            prep.finish(
                SavedConfusion::<B> {
                    saved,
                    target,
                    mask,
                },
                out,
            )
        }
        OpsKind::UnTracked(prep) => prep.finish(target.confusion(x, mask)),
    }
}

impl<B: FusedConfusionOps, C: CheckpointStrategy> FusedConfusionOps for Autodiff<B, C> {
    fn confusion_labels(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        record_confusion::<B, C>(logits, SavedTarget::Labels(labels), mask)
    }

    fn confusion_dense(
        logits: FloatTensor<Self>,
        target: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        record_confusion::<B, C>(logits, SavedTarget::Dense(target.into_primitive()), mask)
    }

    fn confusion_labels_saving(
        _: FloatTensor<Self>,
        _: IntTensor<Self>,
        _: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!(
            "segloss: the saving forward is the inner backend's; the autodiff layer records its own"
        )
    }

    fn confusion_dense_saving(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!(
            "segloss: the saving forward is the inner backend's; the autodiff layer records its own"
        )
    }

    fn confusion_labels_backward_saved(
        _: FloatTensor<Self>,
        _: IntTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        unimplemented!(
            "segloss: second derivatives of the fused confusion matrix are not supported"
        )
    }

    fn confusion_dense_backward_saved(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        unimplemented!(
            "segloss: second derivatives of the fused confusion matrix are not supported"
        )
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::flex::{Flex, FlexTensor};
    use burn::tensor::TensorData;

    use super::FusedStatsOps;

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
        let plain = Flex::overlap_stats_labels(
            x.clone(),
            labels.clone(),
            mask.clone(),
            0,
            true,
            false,
            true,
        );
        let want = values(&Flex::overlap_stats_labels_backward(
            x.clone(),
            labels.clone(),
            mask.clone(),
            grad.clone(),
            0,
            true,
            false,
            true,
        ));
        let (stats, saved) = Flex::overlap_stats_labels_saving(
            x.clone(),
            labels.clone(),
            mask.clone(),
            0,
            true,
            false,
            true,
        );
        assert_eq!(values(&stats), values(&plain));
        let probs = values(&saved);
        let held = saved.clone();
        let copied = Flex::overlap_stats_labels_backward_saved(
            saved,
            labels.clone(),
            mask.clone(),
            grad.clone(),
            0,
            true,
            false,
            true,
        );
        assert_eq!(values(&copied), want);
        assert_eq!(
            values(&held),
            probs,
            "a shared buffer of activations was overwritten"
        );
        let in_place = Flex::overlap_stats_labels_backward_saved(
            held, labels, mask, grad, 0, true, false, true,
        );
        assert_eq!(values(&in_place), want);
        // Without an activation the logits are what is saved, and they are never written.
        let (_, saved) = Flex::overlap_stats_labels_saving(
            x.clone(),
            FlexTensor::from_data(TensorData::new(vec![0i64; b * n], [b, n])),
            FlexTensor::from_data(TensorData::new(Vec::<f32>::new(), [0, 0])),
            2,
            true,
            false,
            false,
        );
        assert_eq!(values(&saved), values(&x));
    }
}
