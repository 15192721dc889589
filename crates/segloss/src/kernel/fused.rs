//! The fused overlap-statistics operation as a Burn backend extension: a forward that returns the
//! statistics `[4, B, K]` straight from the logits and the target, and a hand-written backward
//! that writes the gradient with respect to the logits in one more pass (see [`super::cpu`]).
//!
//! Implemented for Flex (Burn's pure-Rust CPU backend) and its autodiff decorator. Other backends
//! keep the composed path; [`supports`] tells which applies to a device.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, DispatchDevice, backend_extension};
use burn::tensor::{Device, Int, Tensor};

/// The fused statistics. `activation`: 0 softmax, 1 sigmoid, 2 none; a `mask` with no elements
/// means no mask. Outputs `[4, B, K]`.
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait FusedStatsOps: Backend {
    /// Statistics against a label map `[B, N]`.
    #[allow(clippy::too_many_arguments)]
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

/// Whether the fused operation runs on `device` (Flex, with or without autodiff).
pub fn supports(device: &Device) -> bool {
    let inner = if device.is_autodiff() { device.clone().inner() } else { device.clone() };
    match inner.as_dispatch() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => true,
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
    let act = match spec.act {
        super::cpu::Act::Softmax => 0,
        super::cpu::Act::Sigmoid => 1,
        super::cpu::Act::None => 2,
    };
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

    use super::super::cpu::{self, Act, Dims, Spec, TargetRef};
    use super::FusedStatsOps;

    fn spec(activation: u8, include_background: bool, squared: bool, difference: bool) -> Spec {
        let act = match activation {
            0 => Act::Softmax,
            1 => Act::Sigmoid,
            _ => Act::None,
        };
        Spec { act, include_background, squared, difference }
    }

    fn floats(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
        assert_eq!(t.dtype(), DType::F32, "segloss's fused kernel computes in f32, got {:?}", t.dtype());
        match t.as_slice::<f32>() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("contiguous f32").to_vec()),
        }
    }

    /// The mask's values, or `None` for the empty "no mask" tensor.
    fn optional(mask: &FlexTensor) -> Option<std::borrow::Cow<'_, [f32]>> {
        (mask.shape().num_elements() > 0).then(|| floats(mask))
    }

    /// Runs `f` on the label map as `i64` or `i32` (other integer types are converted).
    fn with_labels<R>(labels: &FlexTensor, f: impl FnOnce(TargetRef<'_, i64>, Option<TargetRef<'_, i32>>) -> R) -> R {
        let labels = labels.to_contiguous();
        match labels.dtype() {
            DType::I64 => f(TargetRef::Labels(labels.as_slice::<i64>().expect("i64 labels")), None),
            DType::I32 => f(TargetRef::Dense(&[]), Some(TargetRef::Labels(labels.as_slice::<i32>().expect("i32 labels")))),
            _ => {
                let data = labels.into_data().convert::<i64>();
                let v: Vec<i64> = data.try_to_vec().expect("labels as i64");
                f(TargetRef::Labels(&v), None)
            }
        }
    }

    fn dims(logits: &FlexTensor) -> Dims {
        let [b, c, n] = logits.shape().dims::<3>();
        Dims { b, c, n }
    }

    fn stats_tensor(v: Vec<f32>, d: Dims, s: &Spec) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(v, [4, d.b, d.k(s)]))
    }

    fn grad_tensor(v: Vec<f32>, d: Dims) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(v, [d.b, d.c, d.n]))
    }

    impl FusedStatsOps for Flex {
        fn overlap_stats_labels(logits: FlexTensor, labels: FlexTensor, mask: FlexTensor, activation: u8, include_background: bool, squared: bool, difference: bool) -> FlexTensor {
            let s = spec(activation, include_background, squared, difference);
            let d = dims(&logits);
            let x = floats(&logits);
            let m = optional(&mask);
            let m = m.as_deref();
            let out = with_labels(&labels, |l64, l32| match l32 {
                Some(l32) => cpu::forward(&x, l32, m, d, s),
                None => cpu::forward(&x, l64, m, d, s),
            });
            stats_tensor(out, d, &s)
        }

        fn overlap_stats_labels_backward(logits: FlexTensor, labels: FlexTensor, mask: FlexTensor, grad: FlexTensor, activation: u8, include_background: bool, squared: bool, difference: bool) -> FlexTensor {
            let s = spec(activation, include_background, squared, difference);
            let d = dims(&logits);
            let x = floats(&logits);
            let g = floats(&grad);
            let m = optional(&mask);
            let m = m.as_deref();
            let out = with_labels(&labels, |l64, l32| match l32 {
                Some(l32) => cpu::backward(&x, l32, m, &g, d, s),
                None => cpu::backward(&x, l64, m, &g, d, s),
            });
            grad_tensor(out, d)
        }

        fn overlap_stats_dense(logits: FlexTensor, target: FlexTensor, mask: FlexTensor, activation: u8, include_background: bool, squared: bool, difference: bool) -> FlexTensor {
            let s = spec(activation, include_background, squared, difference);
            let d = dims(&logits);
            let x = floats(&logits);
            let t = floats(&target);
            let m = optional(&mask);
            let out = cpu::forward::<i64>(&x, TargetRef::Dense(&t), m.as_deref(), d, s);
            stats_tensor(out, d, &s)
        }

        fn overlap_stats_dense_backward(logits: FlexTensor, target: FlexTensor, mask: FlexTensor, grad: FlexTensor, activation: u8, include_background: bool, squared: bool, difference: bool) -> FlexTensor {
            let s = spec(activation, include_background, squared, difference);
            let d = dims(&logits);
            let x = floats(&logits);
            let t = floats(&target);
            let g = floats(&grad);
            let m = optional(&mask);
            let out = cpu::backward::<i64>(&x, TargetRef::Dense(&t), m.as_deref(), &g, d, s);
            grad_tensor(out, d)
        }
    }
}

/// What the backward step keeps: the inputs (the target and mask as plain primitives, never
/// differentiated) and the options.
#[derive(Debug, Clone)]
struct SavedInputs<B: Backend> {
    logits: FloatTensor<B>,
    labels: Option<IntTensor<B>>,
    dense: Option<FloatTensor<B>>,
    mask: FloatTensor<B>,
    options: (u8, bool, bool, bool),
}

#[derive(Debug)]
struct FusedStatsBackward;

impl<B: FusedStatsOps> Backward<B, 1> for FusedStatsBackward {
    type State = SavedInputs<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let s = ops.state;
        let (a, bg, sq, diff) = s.options;
        if let Some(node) = node {
            let dx = match (s.labels, s.dense) {
                (Some(l), _) => B::overlap_stats_labels_backward(s.logits, l, s.mask, grad, a, bg, sq, diff),
                (None, Some(t)) => B::overlap_stats_dense_backward(s.logits, t, s.mask, grad, a, bg, sq, diff),
                (None, None) => unreachable!("a target is labels or dense"),
            };
            grads.register::<B>(node.id, dx);
        }
    }
}

impl<B: FusedStatsOps, C: CheckpointStrategy> FusedStatsOps for Autodiff<B, C> {
    fn overlap_stats_labels(logits: FloatTensor<Self>, labels: IntTensor<Self>, mask: FloatTensor<Self>, activation: u8, include_background: bool, squared: bool, difference: bool) -> FloatTensor<Self> {
        let node = logits.node();
        let mask = mask.into_primitive();
        let x = logits.into_primitive();
        let forward = |x, labels, mask| B::overlap_stats_labels(x, labels, mask, activation, include_background, squared, difference);
        match FusedStatsBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let state = SavedInputs::<B> {
                    logits: x.clone(),
                    labels: Some(labels.clone()),
                    dense: None,
                    mask: mask.clone(),
                    options: (activation, include_background, squared, difference),
                };
                prep.finish(state, forward(x, labels, mask))
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x, labels, mask)),
        }
    }

    fn overlap_stats_labels_backward(_: FloatTensor<Self>, _: IntTensor<Self>, _: FloatTensor<Self>, _: FloatTensor<Self>, _: u8, _: bool, _: bool, _: bool) -> FloatTensor<Self> {
        unimplemented!("segloss: second derivatives of the fused overlap statistics are not supported")
    }

    fn overlap_stats_dense(logits: FloatTensor<Self>, target: FloatTensor<Self>, mask: FloatTensor<Self>, activation: u8, include_background: bool, squared: bool, difference: bool) -> FloatTensor<Self> {
        let node = logits.node();
        let mask = mask.into_primitive();
        let target = target.into_primitive();
        let x = logits.into_primitive();
        let forward = |x, t, mask| B::overlap_stats_dense(x, t, mask, activation, include_background, squared, difference);
        match FusedStatsBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let state = SavedInputs::<B> {
                    logits: x.clone(),
                    labels: None,
                    dense: Some(target.clone()),
                    mask: mask.clone(),
                    options: (activation, include_background, squared, difference),
                };
                prep.finish(state, forward(x, target, mask))
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x, target, mask)),
        }
    }

    fn overlap_stats_dense_backward(_: FloatTensor<Self>, _: FloatTensor<Self>, _: FloatTensor<Self>, _: FloatTensor<Self>, _: u8, _: bool, _: bool, _: bool) -> FloatTensor<Self> {
        unimplemented!("segloss: second derivatives of the fused overlap statistics are not supported")
    }
}
