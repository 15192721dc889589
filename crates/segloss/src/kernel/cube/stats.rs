//! The overlap statistics on the CubeCL backends: the launches of [`super::kernels`]' forward and
//! backward, and the backend extension's implementation ([`FusedStatsOps`]).

use burn::backend::TensorMetadata;

use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeDim;

use crate::kernel::fused::FusedStatsOps;
use crate::kernel::spec::Spec;

use super::host::{
    ITEMS, Inputs, Target, chunk_grid, empty_like, f32_input, inputs, per_voxel, sum_partials,
    units,
};
use super::kernels;

fn flags(s: &Spec) -> kernels::Flags {
    kernels::Flags {
        act: s.act.code() as u32,
        first: u32::from(!s.include_background),
        squared: s.squared,
        difference: s.difference,
    }
}

/// The statistics `[4, B, K]` (no `grad`) or the gradient `[B, C, N]` (given the statistics'
/// gradient), as [`crate::kernel::cpu::forward`] / [`crate::kernel::cpu::backward`] define them.
fn run(
    x: CubeTensor,
    target: Target,
    mask: CubeTensor,
    grad: Option<CubeTensor>,
    s: Spec,
) -> CubeTensor {
    let Inputs {
        x,
        labels,
        dense,
        mask,
        label_type,
        dims: [b, c, n],
    } = inputs(x, target, mask);
    let k = c - usize::from(!s.include_background);
    let client = x.client.clone();
    let f = flags(&s);
    let labels_arg = labels.map(|l| l.into_tensor_arg());
    let dense_arg = dense.map(|d| d.into_tensor_arg());
    let mask_arg = mask.map(|m| m.into_tensor_arg());
    match grad {
        Some(grad) => {
            let grad = f32_input(grad, "statistics' gradient");
            assert_eq!(
                grad.shape().dims::<3>(),
                [4, b, k],
                "segloss: the statistics' gradient must be [4, B, K]"
            );
            let out = empty_like(&x, [b, c, n]);
            let (cube_count, cube_dim) = per_voxel(&x, b, n);
            kernels::grad_kernel::launch(
                &client,
                cube_count,
                cube_dim,
                x.into_tensor_arg(),
                labels_arg.into(),
                dense_arg.into(),
                mask_arg.into(),
                grad.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                f,
                label_type,
            );
            out
        }
        None => {
            let units = units(&x);
            let (chunks, cube_count) = chunk_grid(&x, b, n, units);
            let partial = empty_like(&x, [4 * b * k, chunks]);
            kernels::stats_kernel::launch(
                &client,
                cube_count,
                CubeDim::new_1d(units as u32),
                x.into_tensor_arg(),
                labels_arg.into(),
                dense_arg.into(),
                mask_arg.into(),
                partial.clone().into_tensor_arg(),
                f,
                units,
                ITEMS,
                label_type,
            );
            sum_partials(partial, [4, b, k], units)
        }
    }
}

impl FusedStatsOps for CubeBackend {
    fn overlap_stats_labels(
        logits: CubeTensor,
        labels: CubeTensor,
        mask: CubeTensor,
        spec: Spec,
    ) -> CubeTensor {
        run(logits, Target::Labels(labels), mask, None, spec)
    }

    fn overlap_stats_labels_backward(
        logits: CubeTensor,
        labels: CubeTensor,
        mask: CubeTensor,
        grad: CubeTensor,
        spec: Spec,
    ) -> CubeTensor {
        run(logits, Target::Labels(labels), mask, Some(grad), spec)
    }

    fn overlap_stats_dense(
        logits: CubeTensor,
        target: CubeTensor,
        mask: CubeTensor,
        spec: Spec,
    ) -> CubeTensor {
        run(logits, Target::Dense(target), mask, None, spec)
    }

    fn overlap_stats_dense_backward(
        logits: CubeTensor,
        target: CubeTensor,
        mask: CubeTensor,
        grad: CubeTensor,
        spec: Spec,
    ) -> CubeTensor {
        run(logits, Target::Dense(target), mask, Some(grad), spec)
    }
}
