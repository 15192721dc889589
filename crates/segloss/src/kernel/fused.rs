//! The fused overlap-statistics operation as a Burn backend extension: a forward that returns the
//! statistics `[4, B, K]` straight from the logits and the target, and a hand-written backward
//! that writes the gradient with respect to the logits in one more pass (see [`super::cpu`]).
//!
//! Implemented for Flex (Burn's pure-Rust CPU backend, kernel in [`super::cpu`]), for Burn's CubeCL
//! backends with the `wgpu` or `cuda` feature (behind Burn's fusion; kernel in [`super::cube`]) and
//! for their autodiff decorator. Other backends keep the composed path; [`supports`] tells which
//! applies to a device.

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
}

/// The shape of the statistics of logits `[B, C, N]`: `[4, B, K]`, `K = C` or `C - 1` without
/// the background (the output shape Burn's fusion records before the kernel runs).
pub fn stats_shape(logits: &Shape, include_background: &bool) -> Shape {
    let k = logits[1] - usize::from(!*include_background);
    Shape::new([4, logits[0], k])
}

/// Whether the fused operation runs on `device`, with or without autodiff: Flex (feature
/// `flex`), and the CubeCL devices, wgpu and CUDA (features `wgpu`, `cuda`).
pub fn supports(device: &Device) -> bool {
    let inner = if device.is_autodiff() { device.clone().inner() } else { device.clone() };
    match inner.as_dispatch() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => true,
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        DispatchDevice::Cube(_) => true,
        _ => false,
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

/// Fused statistics `[4, B, K]` of logits `[B, C, N]`.
pub fn overlap_stats(logits: Tensor<3>, target: FusedTarget, mask: Option<Tensor<2>>, spec: super::cpu::Spec) -> Tensor<3> {
    let act = spec.act.code();
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let device = logits.device();
    let mask = mask.unwrap_or_else(|| Tensor::<2>::empty([0, 0], &device)).into_dispatch();
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

    use super::super::cpu::{self, Act, Dims, Label, Spec, TargetRef};
    use super::FusedStatsOps;

    fn floats(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
        assert_eq!(t.dtype(), DType::F32, "segloss's fused kernel computes in f32, got {:?}", t.dtype());
        match t.as_slice::<f32>() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("contiguous f32").to_vec()),
        }
    }

    /// The target of one call: a label map or dense values.
    enum Target<'a> {
        Labels(&'a FlexTensor),
        Dense(&'a FlexTensor),
    }

    /// The statistics `[4, B, K]` (no `grad`) or the gradient `[B, C, N]` (given the statistics'
    /// gradient). A mask with no elements means no mask; labels run as `i64` or `i32` (other
    /// integer types are converted).
    fn run(logits: &FlexTensor, target: Target<'_>, mask: &FlexTensor, grad: Option<&FlexTensor>, s: Spec) -> FlexTensor {
        fn go<L: Label>(x: &[f32], t: TargetRef<'_, L>, m: Option<&[f32]>, g: Option<&[f32]>, d: Dims, s: Spec) -> Vec<f32> {
            match g {
                None => cpu::forward(x, t, m, d, s),
                Some(g) => cpu::backward(x, t, m, g, d, s),
            }
        }
        let [b, c, n] = logits.shape().dims::<3>();
        let d = Dims { b, c, n };
        let x = floats(logits);
        let m = (mask.shape().num_elements() > 0).then(|| floats(mask));
        let (m, g) = (m.as_deref(), grad.map(floats));
        let g = g.as_deref();
        let out = match target {
            Target::Dense(t) => go::<i64>(&x, TargetRef::Dense(&floats(t)), m, g, d, s),
            Target::Labels(l) => {
                let l = l.to_contiguous();
                match l.dtype() {
                    DType::I64 => go(&x, TargetRef::Labels(l.as_slice::<i64>().expect("i64 labels")), m, g, d, s),
                    DType::I32 => go(&x, TargetRef::Labels(l.as_slice::<i32>().expect("i32 labels")), m, g, d, s),
                    _ => {
                        let v: Vec<i64> = l.into_data().convert::<i64>().try_to_vec().expect("labels as i64");
                        go(&x, TargetRef::Labels(&v), m, g, d, s)
                    }
                }
            }
        };
        let shape = if grad.is_some() { vec![b, c, n] } else { vec![4, b, d.k(&s)] };
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    fn spec(activation: u8, include_background: bool, squared: bool, difference: bool) -> Spec {
        Spec { act: Act::from_code(activation), include_background, squared, difference }
    }

    impl FusedStatsOps for Flex {
        fn overlap_stats_labels(logits: FlexTensor, labels: FlexTensor, mask: FlexTensor, activation: u8, include_background: bool, squared: bool, difference: bool) -> FlexTensor {
            run(&logits, Target::Labels(&labels), &mask, None, spec(activation, include_background, squared, difference))
        }

        fn overlap_stats_labels_backward(logits: FlexTensor, labels: FlexTensor, mask: FlexTensor, grad: FlexTensor, activation: u8, include_background: bool, squared: bool, difference: bool) -> FlexTensor {
            run(&logits, Target::Labels(&labels), &mask, Some(&grad), spec(activation, include_background, squared, difference))
        }

        fn overlap_stats_dense(logits: FlexTensor, target: FlexTensor, mask: FlexTensor, activation: u8, include_background: bool, squared: bool, difference: bool) -> FlexTensor {
            run(&logits, Target::Dense(&target), &mask, None, spec(activation, include_background, squared, difference))
        }

        fn overlap_stats_dense_backward(logits: FlexTensor, target: FlexTensor, mask: FlexTensor, grad: FlexTensor, activation: u8, include_background: bool, squared: bool, difference: bool) -> FlexTensor {
            run(&logits, Target::Dense(&target), &mask, Some(&grad), spec(activation, include_background, squared, difference))
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
    fn forward(self, x: FloatTensor<B>, mask: FloatTensor<B>, (a, bg, sq, diff): Options) -> FloatTensor<B> {
        match self {
            SavedTarget::Labels(l) => B::overlap_stats_labels(x, l, mask, a, bg, sq, diff),
            SavedTarget::Dense(t) => B::overlap_stats_dense(x, t, mask, a, bg, sq, diff),
        }
    }

    fn backward(self, x: FloatTensor<B>, mask: FloatTensor<B>, grad: FloatTensor<B>, (a, bg, sq, diff): Options) -> FloatTensor<B> {
        match self {
            SavedTarget::Labels(l) => B::overlap_stats_labels_backward(x, l, mask, grad, a, bg, sq, diff),
            SavedTarget::Dense(t) => B::overlap_stats_dense_backward(x, t, mask, grad, a, bg, sq, diff),
        }
    }
}

/// What the backward step keeps: the inputs (the target and mask as plain primitives) and the options.
#[derive(Debug, Clone)]
struct SavedInputs<B: Backend> {
    logits: FloatTensor<B>,
    target: SavedTarget<B>,
    mask: FloatTensor<B>,
    options: Options,
}

#[derive(Debug)]
struct FusedStatsBackward;

impl<B: FusedStatsOps> Backward<B, 1> for FusedStatsBackward {
    type State = SavedInputs<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let s = ops.state;
        if let Some(node) = node {
            grads.register::<B>(node.id, s.target.backward(s.logits, s.mask, grad, s.options));
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
    match FusedStatsBackward.prepare::<C>([node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let state = SavedInputs::<B> { logits: x.clone(), target: target.clone(), mask: mask.clone(), options };
            prep.finish(state, target.forward(x, mask, options))
        }
        OpsKind::UnTracked(prep) => prep.finish(target.forward(x, mask, options)),
    }
}

impl<B: FusedStatsOps, C: CheckpointStrategy> FusedStatsOps for Autodiff<B, C> {
    fn overlap_stats_labels(logits: FloatTensor<Self>, labels: IntTensor<Self>, mask: FloatTensor<Self>, activation: u8, include_background: bool, squared: bool, difference: bool) -> FloatTensor<Self> {
        record::<B, C>(logits, SavedTarget::Labels(labels), mask, (activation, include_background, squared, difference))
    }

    fn overlap_stats_labels_backward(_: FloatTensor<Self>, _: IntTensor<Self>, _: FloatTensor<Self>, _: FloatTensor<Self>, _: u8, _: bool, _: bool, _: bool) -> FloatTensor<Self> {
        unimplemented!("segloss: second derivatives of the fused overlap statistics are not supported")
    }

    fn overlap_stats_dense(logits: FloatTensor<Self>, target: FloatTensor<Self>, mask: FloatTensor<Self>, activation: u8, include_background: bool, squared: bool, difference: bool) -> FloatTensor<Self> {
        record::<B, C>(logits, SavedTarget::Dense(target.into_primitive()), mask, (activation, include_background, squared, difference))
    }

    fn overlap_stats_dense_backward(_: FloatTensor<Self>, _: FloatTensor<Self>, _: FloatTensor<Self>, _: FloatTensor<Self>, _: u8, _: bool, _: bool, _: bool) -> FloatTensor<Self> {
        unimplemented!("segloss: second derivatives of the fused overlap statistics are not supported")
    }
}
