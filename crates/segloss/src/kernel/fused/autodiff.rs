//! The fused operations under Burn's autodiff decorator: one recording and one backward step
//! for the three operations, the backward being the inner backend's hand-written one.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend};

use super::ops::{FusedConfusionOps, FusedPointwiseOps, FusedStatsOps};
use crate::input::{Activation, TargetOf};
use crate::kernel::spec::{Pointwise, Spec};

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
