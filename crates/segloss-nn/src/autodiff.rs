//! [`NnOps`] under Burn's autodiff decorator: each layer records one backward step that calls
//! the inner backend's hand-written backward, computing only the gradients some parent needs.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend};

use crate::cpu::conv::Conv3dGeom;
use crate::cpu::norm::{NormGeom, NormParams};
use crate::cpu::transpose::UpGeom;
use crate::ops::NnOps;

/// The panic of a second derivative.
const NO_SECOND_DERIVATIVE: &str =
    "segloss-nn: second derivatives of the fused layers are not supported";

/// What a layer's backward step keeps: its three inputs (input, weight or gamma, bias or beta)
/// as inner-backend primitives, what the forward saved beside its output, and the sizes.
#[derive(Debug, Clone)]
struct Saved<B: Backend, G> {
    inputs: [FloatTensor<B>; 3],
    extra: Option<FloatTensor<B>>,
    geom: G,
}

/// One recorded layer: its geometry type knows the backward.
trait Layer<B: Backend>: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// The gradients of the three inputs that are `wanted`, from the output's gradient.
    fn gradients(
        saved: Saved<B, Self>,
        grad: FloatTensor<B>,
        wanted: [bool; 3],
    ) -> [Option<FloatTensor<B>>; 3];
}

impl<B: NnOps> Layer<B> for Conv3dGeom {
    fn gradients(
        s: Saved<B, Self>,
        grad: FloatTensor<B>,
        wanted: [bool; 3],
    ) -> [Option<FloatTensor<B>>; 3] {
        let [x, w, _] = s.inputs;
        let dx = wanted[0].then(|| B::conv3d_backward_input(w, grad.clone(), s.geom));
        let (dw, db) = if wanted[1] || wanted[2] {
            let (dw, db) = B::conv3d_backward_weight(x, grad, s.geom);
            (Some(dw), Some(db))
        } else {
            (None, None)
        };
        [dx, dw, db]
    }
}

impl<B: NnOps> Layer<B> for UpGeom {
    fn gradients(
        s: Saved<B, Self>,
        grad: FloatTensor<B>,
        _wanted: [bool; 3],
    ) -> [Option<FloatTensor<B>>; 3] {
        let [x, w, _] = s.inputs;
        let (dx, dw, db) = B::conv_up3d_backward(x, w, grad, s.geom);
        [Some(dx), Some(dw), Some(db)]
    }
}

impl<B: NnOps> Layer<B> for (NormGeom, NormParams) {
    fn gradients(
        s: Saved<B, Self>,
        grad: FloatTensor<B>,
        _wanted: [bool; 3],
    ) -> [Option<FloatTensor<B>>; 3] {
        let [x, gamma, beta] = s.inputs;
        let stats = s.extra.expect("the norm's forward saves its statistics");
        let (geom, params) = s.geom;
        let (dx, dg, db) = B::norm_lrelu_backward(x, gamma, beta, stats, grad, geom, params);
        [Some(dx), Some(dg), Some(db)]
    }
}

/// The backward step of a recorded layer `G`.
#[derive(Debug)]
struct LayerBackward<G>(std::marker::PhantomData<G>);

impl<B: Backend, G: Layer<B>> Backward<B, 3> for LayerBackward<G> {
    type State = Saved<B, G>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let wanted = ops.parents.each_ref().map(Option::is_some);
        let out = G::gradients(ops.state, grad, wanted);
        for (node, g) in ops.parents.into_iter().zip(out) {
            if let (Some(node), Some(g)) = (node, g) {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

/// Runs `forward` on the inner backend's primitives and records the layer's backward step when
/// any input is tracked. `forward` returns the output and what the backward needs beside the
/// inputs.
fn record<B: Backend, C: CheckpointStrategy, G: Layer<B>>(
    inputs: [FloatTensor<Autodiff<B, C>>; 3],
    geom: G,
    forward: impl FnOnce([FloatTensor<B>; 3]) -> (FloatTensor<B>, Option<FloatTensor<B>>),
) -> FloatTensor<Autodiff<B, C>> {
    let nodes = inputs.each_ref().map(|t| t.node());
    let prims = inputs.map(|t| t.into_primitive());
    match LayerBackward::<G>(std::marker::PhantomData)
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, extra) = forward(prims.clone());
            prep.finish(
                Saved {
                    inputs: prims,
                    extra,
                    geom,
                },
                out,
            )
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(prims).0),
    }
}

impl<B: NnOps, C: CheckpointStrategy> NnOps for Autodiff<B, C> {
    fn conv3d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        geom: Conv3dGeom,
    ) -> FloatTensor<Self> {
        record::<B, C, _>([x, weight, bias], geom, |[x, w, b]| {
            (<B as NnOps>::conv3d(x, w, b, geom), None)
        })
    }

    fn conv3d_backward_input(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: Conv3dGeom,
    ) -> FloatTensor<Self> {
        unimplemented!("{NO_SECOND_DERIVATIVE}")
    }

    fn conv3d_backward_weight(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: Conv3dGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!("{NO_SECOND_DERIVATIVE}")
    }

    fn conv_up3d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        geom: UpGeom,
    ) -> FloatTensor<Self> {
        record::<B, C, _>([x, weight, bias], geom, |[x, w, b]| {
            (B::conv_up3d(x, w, b, geom), None)
        })
    }

    fn conv_up3d_backward(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: UpGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!("{NO_SECOND_DERIVATIVE}")
    }

    fn norm_lrelu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        geom: NormGeom,
        params: NormParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // The statistics are an output of the inner operation only; the autodiff layer hands
        // back an untracked copy of them beside the recorded output.
        let mut stats = None;
        let y = record::<B, C, _>([x, gamma, beta], (geom, params), |[x, g, b]| {
            let (y, s) = B::norm_lrelu(x, g, b, geom, params);
            stats = Some(s.clone());
            (y, Some(s))
        });
        let stats = stats.expect("the forward ran");
        (y, <Autodiff<B, C> as AutodiffBackend>::from_inner(stats))
    }

    fn norm_lrelu_backward(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: NormGeom,
        _: NormParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!("{NO_SECOND_DERIVATIVE}")
    }
}
