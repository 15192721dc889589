//! The soft confusion matrix of the Generalized Wasserstein Dice loss for Burn's CubeCL backends
//! (wgpu, CUDA): [`FusedConfusionOps`] with the contract of the CPU kernel of
//! [`crate::kernel::cpu::confusion`] (whose module docs give the formulas), built like the overlap statistics'
//! kernel of [`super`] and sharing its helpers.
//!
//! **Forward** (`[B, C, C + 1]`: `S[b, k, c] = sum_n m g_k p_c`, then `V[b, k] = sum_n m g_k`),
//! two launches: `confusion_kernel` over a grid of `(chunks, B)` cubes, each unit taking `ITEMS`
//! voxels `UNITS` apart, computes per voxel the softmax's maximum and normaliser once; then, column
//! by column (`C` predicted classes, then the volume with `p = 1`), the activation of its voxels,
//! and for the true classes in groups of 8 the products `m g_k p_c` summed in f32 registers; the
//! cube adds its units' sums with [`super`]'s fixed tree (8 rows at a time) and writes one
//! partial per entry; [`super`]'s row reduction adds the partials. A label outside `[0, C)`
//! matches no class (the CPU kernel's rule; a single-channel label map is one-hot too).
//!
//! **Backward**: `confusion_grad_kernel`, one unit per voxel, recomputes the softmax and writes
//! `dx_c = p_c (u_c - sum_j p_j u_j)` with `u_c = m sum_k g_k dS[b, k, c]` (a label map reads
//! `dS[b, y, c]` alone); the volume column's gradient is ignored.
//!
//! **What the saving forward keeps**: the logits (the trait's default `_saving`): a GPU
//! recomputes the softmax in the backward for less than the memory traffic of saving it.
//!
//! **Numerics**: f32 throughout, sums in the fixed order of [`super`] (deterministic for a
//! given device, the same error bound); `exp` with its argument clamped to the f32 range (logits
//! of +-1e4 saturate). No plane (subgroup) operations.

use burn::backend::TensorMetadata;
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeDim;

use super::host::{
    ITEMS, Inputs, Target, chunk_grid, empty_like, f32_input, inputs, per_voxel, sum_partials,
    units,
};
use crate::kernel::fused::FusedConfusionOps;

// `#[comptime] let` bindings: see `super::kernels`.
#[allow(clippy::let_and_return)]
mod kernels {
    use cubecl::prelude::*;

    use crate::kernel::cube::kernels::{
        exp_clamped, label_value, mask_value, softmax_norm, tree_sum,
    };

    /// The target of true class `k` at voxel `n` of sample `b`: the dense value, or the one-hot
    /// of the label `lab` (a label outside `[0, C)` matches no class).
    #[cube]
    fn target_of(
        dense: &ComptimeOption<&Tensor<f32>>,
        lab: f32,
        b: usize,
        k: usize,
        n: usize,
    ) -> f32 {
        #[comptime]
        let g = match dense {
            ComptimeOption::Some(d) => d[b * d.stride(0) + k * d.stride(1) + n * d.stride(2)],
            ComptimeOption::None => select(lab == f32::cast_from(k as u32), 1.0f32, 0.0f32),
        };
        g
    }

    /// Partial sums of one cube: `partial[(b C + k) (C + 1) + c, chunk]`.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn confusion_kernel<I: Int>(
        x: &Tensor<f32>,
        labels: ComptimeOption<&Tensor<I>>,
        dense: ComptimeOption<&Tensor<f32>>,
        mask: ComptimeOption<&Tensor<f32>>,
        partial: &mut Tensor<f32>,
        #[comptime] units: usize,
        #[comptime] items: usize,
        #[define(I)] _label_type: ElemType,
    ) {
        let c_count = x.shape(1);
        let n_count = x.shape(2);
        let chunk = CUBE_POS_X as usize;
        let b = CUBE_POS_Y as usize;
        let unit = UNIT_POS_X as usize;
        let start = chunk * units * items + unit;

        // Per voxel of this unit: softmax maximum and normaliser, label, mask (0 past the end).
        let mut mx = Array::<f32>::new(items);
        let mut inv = Array::<f32>::new(items);
        let mut lab = Array::<f32>::new(items);
        let mut w = Array::<f32>::new(items);
        let mut p = Array::<f32>::new(items);
        #[unroll]
        for i in 0..items {
            let n = start + i * units;
            mx[i] = 0.0f32;
            inv[i] = 1.0f32;
            lab[i] = 0.0f32;
            w[i] = 0.0f32;
            if n < n_count {
                w[i] = mask_value(&mask, b, n);
                lab[i] = label_value::<I>(&labels, b, n);
                let (m, r) = softmax_norm(x, b, n, c_count);
                mx[i] = m;
                inv[i] = r;
            }
        }

        let cols = c_count + 1;
        let groups = c_count.div_ceil(8usize);
        let mut sh = Shared::<[f32]>::new_slice(8 * units);
        // Column by column: the predicted classes, then the volume (`p = 1`).
        for c in 0..cols {
            #[unroll]
            for i in 0..items {
                let n = start + i * units;
                p[i] = 1.0f32;
                if c < c_count && n < n_count {
                    p[i] =
                        exp_clamped(x[b * x.stride(0) + c * x.stride(1) + n * x.stride(2)] - mx[i])
                            * inv[i];
                }
            }
            // The true classes, 8 at a time (one tree over the cube per group).
            for group in 0..groups {
                let k0 = group * 8;
                #[unroll]
                for r in 0..8usize {
                    let k = k0 + r;
                    let mut s = 0.0f32;
                    if k < c_count {
                        #[unroll]
                        for i in 0..items {
                            let n = start + i * units;
                            if n < n_count {
                                s += w[i] * target_of(&dense, lab[i], b, k, n) * p[i];
                            }
                        }
                    }
                    sh[r * units + unit] = s;
                }
                tree_sum(&mut sh, unit, units, 8usize);
                if unit == 0 {
                    #[unroll]
                    for r in 0..8usize {
                        let k = k0 + r;
                        if k < c_count {
                            let at = ((b * c_count + k) * cols + c) * partial.stride(0)
                                + chunk * partial.stride(1);
                            partial[at] = sh[r * units];
                        }
                    }
                }
                sync_cube();
            }
        }
    }

    /// `u_c = m sum_k g_k dS[b, k, c]` at voxel `n` of sample `b` (a label map: `m dS[b, y, c]`,
    /// 0 for a label outside `[0, C)`).
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn upstream(
        dense: &ComptimeOption<&Tensor<f32>>,
        grad: &Tensor<f32>,
        lab: f32,
        w: f32,
        b: usize,
        c: usize,
        n: usize,
        c_count: usize,
    ) -> f32 {
        #[comptime]
        let u = match dense {
            ComptimeOption::Some(d) => {
                let mut s = 0.0f32;
                for k in 0..c_count {
                    s += d[b * d.stride(0) + k * d.stride(1) + n * d.stride(2)]
                        * grad[b * grad.stride(0) + k * grad.stride(1) + c * grad.stride(2)];
                }
                w * s
            }
            ComptimeOption::None => {
                let mut v = 0.0f32;
                if lab >= 0.0f32 && lab < f32::cast_from(c_count as u32) {
                    let k = usize::cast_from(u32::cast_from(lab));
                    v = w * grad[b * grad.stride(0) + k * grad.stride(1) + c * grad.stride(2)];
                }
                v
            }
        };
        u
    }

    /// The gradient with respect to the logits from the gradient `[B, C, C + 1]` of the output,
    /// one unit per voxel.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn confusion_grad_kernel<I: Int>(
        x: &Tensor<f32>,
        labels: ComptimeOption<&Tensor<I>>,
        dense: ComptimeOption<&Tensor<f32>>,
        mask: ComptimeOption<&Tensor<f32>>,
        grad: &Tensor<f32>,
        out: &mut Tensor<f32>,
        #[define(I)] _label_type: ElemType,
    ) {
        let b_count = x.shape(0);
        let c_count = x.shape(1);
        let n_count = x.shape(2);
        let pos = ABSOLUTE_POS;
        if pos >= b_count * n_count {
            terminate!();
        }
        let b = pos / n_count;
        let n = pos % n_count;
        let w = mask_value(&mask, b, n);
        let lab = label_value::<I>(&labels, b, n);
        let row = b * x.stride(0) + n * x.stride(2);
        let (mx, inv) = softmax_norm(x, b, n, c_count);
        let mut dot = 0.0f32;
        for c in 0..c_count {
            let p = exp_clamped(x[row + c * x.stride(1)] - mx) * inv;
            dot += p * upstream(&dense, grad, lab, w, b, c, n, c_count);
        }
        for c in 0..c_count {
            let p = exp_clamped(x[row + c * x.stride(1)] - mx) * inv;
            let u = upstream(&dense, grad, lab, w, b, c, n, c_count);
            let at = b * out.stride(0) + c * out.stride(1) + n * out.stride(2);
            out[at] = p * (u - dot);
        }
    }
}

/// The output `[B, C, C + 1]` (no `grad`) or the gradient `[B, C, N]` given the output's
/// gradient.
fn run(x: CubeTensor, target: Target, mask: CubeTensor, grad: Option<CubeTensor>) -> CubeTensor {
    let Inputs {
        x,
        labels,
        dense,
        mask,
        label_type,
        dims: [b, c, n],
    } = inputs(x, target, mask);
    let client = x.client.clone();
    let labels_arg = labels.map(|l| l.into_tensor_arg());
    let dense_arg = dense.map(|d| d.into_tensor_arg());
    let mask_arg = mask.map(|m| m.into_tensor_arg());
    match grad {
        Some(grad) => {
            let grad = f32_input(grad, "confusion matrix's gradient");
            assert_eq!(
                grad.shape().dims::<3>(),
                [b, c, c + 1],
                "segloss: the gradient of the fused confusion matrix must be [B, C, C + 1]"
            );
            let out = empty_like(&x, [b, c, n]);
            let (cube_count, cube_dim) = per_voxel(&x, b, n);
            kernels::confusion_grad_kernel::launch(
                &client,
                cube_count,
                cube_dim,
                x.into_tensor_arg(),
                labels_arg.into(),
                dense_arg.into(),
                mask_arg.into(),
                grad.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                label_type,
            );
            out
        }
        None => {
            let units = units(&x);
            let (chunks, cube_count) = chunk_grid(&x, b, n, units);
            let partial = empty_like(&x, [b * c * (c + 1), chunks]);
            kernels::confusion_kernel::launch(
                &client,
                cube_count,
                CubeDim::new_1d(units as u32),
                x.into_tensor_arg(),
                labels_arg.into(),
                dense_arg.into(),
                mask_arg.into(),
                partial.clone().into_tensor_arg(),
                units,
                ITEMS,
                label_type,
            );
            sum_partials(partial, [b, c, c + 1], units)
        }
    }
}

/// The CubeCL backends keep the trait's default `_saving` forward, which saves the logits: the
/// backward recomputes the softmax from them.
impl FusedConfusionOps for CubeBackend {
    fn confusion_labels(logits: CubeTensor, labels: CubeTensor, mask: CubeTensor) -> CubeTensor {
        run(logits, Target::Labels(labels), mask, None)
    }

    fn confusion_dense(logits: CubeTensor, target: CubeTensor, mask: CubeTensor) -> CubeTensor {
        run(logits, Target::Dense(target), mask, None)
    }

    fn confusion_labels_backward_saved(
        saved: CubeTensor,
        labels: CubeTensor,
        mask: CubeTensor,
        grad: CubeTensor,
    ) -> CubeTensor {
        run(saved, Target::Labels(labels), mask, Some(grad))
    }

    fn confusion_dense_backward_saved(
        saved: CubeTensor,
        target: CubeTensor,
        mask: CubeTensor,
        grad: CubeTensor,
    ) -> CubeTensor {
        run(saved, Target::Dense(target), mask, Some(grad))
    }
}
