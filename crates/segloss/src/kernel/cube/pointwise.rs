//! The fused pass with the pointwise term (cross-entropy, focal) for Burn's CubeCL backends (wgpu,
//! CUDA): [`FusedPointwiseOps`] with the contract of the CPU kernel's pointwise section
//! ([`crate::kernel::cpu`], "The pointwise term"), built like the overlap statistics' kernel of
//! [`super`] and sharing its helpers (activations, target, label and mask readers, the
//! cube's tree sum, the row reduction, the launch geometry).
//!
//! **Forward** (`[8, B, C]`: rows 0-3 the plain overlap statistics of every class, rows 4-7 the
//! pointwise sums), two launches as in [`super`]: `pointwise_kernel` over a grid of
//! `(chunks, B)` cubes, each unit taking `ITEMS` voxels `UNITS` apart, computes per voxel the
//! softmax's maximum and normaliser once (and, without the background, the second softmax over
//! channels `1..C` with its own maximum, `p_0 = s(z)`, `1 - p_0 = s(-z)`,
//! `z = x_0 - ln sum_{c >= 1} exp(x_c)`, as the CPU kernel splits it), then class by class the
//! activation, the target, and the eight sums in f32 registers; the cube adds its units' sums in
//! shared memory with a fixed tree and writes one partial per (row, sample, class); the row
//! reduction of [`super`] adds the partials.
//!
//! **Backward**: `pointwise_grad_kernel`, one unit per voxel, recomputes the activations from
//! the logits and writes the `C` gradient values from the `[8, B, C]` upstream gradient in one
//! launch: `dx_c = p_c (u_c - sum_j p_j u_j - sum_j q_j) + q_c` for the softmax (without the
//! background, the second softmax's terms as in [`crate::kernel::cpu`]'s `grad_tile_without_background`),
//! `u_c s_c (1 - s_c)` plus the pointwise derivative for the sigmoid.
//!
//! **What the saving forward keeps**: the logits (the trait's default `_saving`). A GPU
//! recomputes the activations in the backward for less than the memory traffic of saving them
//! (as [`super`]'s backward does), and the sigmoid's pointwise gradient needs the logits
//! anyway.
//!
//! **Numerics**: f32 throughout (WGSL has no f64), the same summation order and error bound as
//! [`super`] (fixed by the launch geometry: deterministic for a given device); `exp` with
//! its argument clamped to the f32 range, `1 - p` clamped to the smallest normal float in the
//! focal factor and `p` before its `ln` (as the CPU kernel's `focal_factor` and
//! `softmax_pointwise_q`), so logits of +-1e4 give finite values and gradients. `gamma = 0` and
//! `gamma = 2` are specialised when the kernel is compiled (no factor; a square instead of
//! `exp(gamma ln(1 - p))`). No plane (subgroup) operations.

use burn::backend::TensorMetadata;
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeDim;

use super::host::{
    ITEMS, Inputs, Target, chunk_grid, empty_like, f32_input, inputs, per_voxel, sum_partials,
    units,
};
use crate::input::Activation;
use crate::kernel::fused::FusedPointwiseOps;
use crate::kernel::spec::Pointwise;

/// Rows of the output: the 4 overlap statistics, then the 4 pointwise sums.
const ROWS: usize = crate::kernel::cpu::ROWS_MAX;

// `#[comptime] let` bindings in the shared helpers: see `super::kernels`.
#[allow(clippy::let_and_return)]
mod kernels {
    use cubecl::prelude::*;

    use crate::kernel::cube::kernels::{
        Flags, activate, exp_clamped, label_value, mask_value, softmax_norm, target_value,
        tree_sum, upstream,
    };

    /// The smallest normal f32, the floor of `1 - p` and `p` in the focal terms.
    const MIN_POSITIVE: f32 = f32::MIN_POSITIVE;

    /// Comptime description of one forward or backward launch.
    #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
    pub(crate) struct PwFlags {
        /// The overlap statistics' options (softmax 0 or sigmoid 1; every class, plain sums).
        pub stats: Flags,
        /// `gamma != 0`.
        pub focal: bool,
        /// `gamma == 2`: the focal factor is a square.
        pub square: bool,
        /// The softmax pointwise term over channels `1..C` (softmax only).
        pub without_background: bool,
    }

    /// `(1 - p)^gamma` and `1 - p`, clamped to the smallest normal float (`focal_factor`).
    #[cube]
    fn focal_factor(p: f32, gamma: f32, #[comptime] square: bool) -> (f32, f32) {
        let base = (1.0f32 - p).max(MIN_POSITIVE);
        let mut fac = base * base;
        if !square {
            fac = exp_clamped(gamma * base.ln());
        }
        (fac, base)
    }

    /// The softmax pointwise term `h = (1 - p)^gamma (-ln p)` of one voxel and class, with
    /// `-ln p = lse - x` (`lse = ln sum_c exp(x_c)` of the term's softmax) clamped at 0.
    #[cube]
    fn softmax_h(p: f32, x: f32, lse: f32, gamma: f32, #[comptime] flags: PwFlags) -> f32 {
        let v = lse - x;
        // Clamped at 0 from rounding; a NaN logit stays NaN.
        let nlp = select(v < 0.0f32, 0.0f32, v);
        let mut h = nlp;
        if flags.focal {
            let (fac, _base) = focal_factor(p, gamma, flags.square);
            h = fac * nlp;
        }
        h
    }

    /// `softplus(v) = ln(1 + exp(v))` and `exp(-|v|)`, stable for any `v`.
    #[cube]
    fn softplus(v: f32) -> (f32, f32) {
        let e = exp_clamped(-v.abs());
        (v.max(0.0f32) + (1.0f32 + e).ln(), e)
    }

    /// The sigmoid pointwise term `h = s(-x z)^gamma BCE(x, g)` (`z = 2 g - 1`) and
    /// `softplus(-x)` of one voxel and class.
    #[cube]
    fn sigmoid_h(x: f32, g: f32, gamma: f32, #[comptime] focal: bool) -> (f32, f32) {
        let (sp, _e) = softplus(x);
        let bce = sp - x * g;
        let mut h = bce;
        if focal {
            let (spz, _ez) = softplus(x * (2.0f32 * g - 1.0f32));
            h = exp_clamped(-gamma * spz) * bce;
        }
        (h, sp - x)
    }

    /// The softmax over channels `1..C` of voxel `n` of sample `b`, for the pointwise term without
    /// the background: its maximum, `1 / sum_{c >= 1} exp(x_c - max)`, `lse = ln sum_{c >= 1}
    /// exp(x_c)`, and `(p_0, 1 - p_0) = (s(z), s(-z))` with `z = x_0 - lse`, both to full relative
    /// precision (the first softmax is then `p_c = q_c (1 - p_0)` for `c >= 1`).
    #[cube]
    fn softmax_without_background(
        x: &Tensor<f32>,
        b: usize,
        n: usize,
        c_count: usize,
    ) -> (f32, f32, f32, f32, f32) {
        let at = b * x.stride(0) + n * x.stride(2);
        let mut mx = x[at + x.stride(1)];
        for c in 2..c_count {
            mx = mx.max(x[at + c * x.stride(1)]);
        }
        let mut sum = 0.0f32;
        for c in 1..c_count {
            sum += exp_clamped(x[at + c * x.stride(1)] - mx);
        }
        // The sum is at least 1 (the maximum's own term).
        let lse = sum.ln() + mx;
        let z = x[at] - lse;
        let e = exp_clamped(-z.abs());
        let big = 1.0f32 / (1.0f32 + e);
        let small = e * big;
        let p0 = select(z >= 0.0f32, big, small);
        let rest = select(z >= 0.0f32, small, big);
        (mx, 1.0f32 / sum, lse, p0, rest)
    }

    /// The gradient `a` of pointwise row `4 + q` for class `c` of sample `b`.
    #[cube]
    fn row_grad(grad: &Tensor<f32>, q: usize, b: usize, c: usize) -> f32 {
        grad[(4 + q) * grad.stride(0) + b * grad.stride(1) + c * grad.stride(2)]
    }

    /// The softmax pointwise `q` of one voxel and class from its probability
    /// (`softmax_pointwise_q`): `-m (a4 g + a5) (1 - p)^gamma (1 + gamma p (-ln p) / (1 - p))`.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn softmax_q(
        grad: &Tensor<f32>,
        p: f32,
        g: f32,
        w: f32,
        b: usize,
        c: usize,
        gamma: f32,
        #[comptime] flags: PwFlags,
    ) -> f32 {
        let coef = w * (row_grad(grad, 0usize, b, c) * g + row_grad(grad, 1usize, b, c));
        let mut q = -coef;
        if flags.focal {
            let (fac, base) = focal_factor(p, gamma, flags.square);
            let nlp = -(p.max(MIN_POSITIVE)).ln();
            q = -coef * fac * (1.0f32 + gamma * p * nlp / base);
        }
        q
    }

    /// The sigmoid pointwise gradient of one voxel and class from its logit `x` and sigmoid `s`
    /// (`sigmoid_pointwise_dx`).
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn sigmoid_dx(
        grad: &Tensor<f32>,
        x: f32,
        s: f32,
        g: f32,
        w: f32,
        b: usize,
        c: usize,
        gamma: f32,
        #[comptime] focal: bool,
    ) -> f32 {
        let coef = row_grad(grad, 0usize, b, c) * g
            + row_grad(grad, 1usize, b, c)
            + select(g == 1.0f32, row_grad(grad, 2usize, b, c), 0.0f32);
        let mut dh = s - g;
        if focal {
            let z = 2.0f32 * g - 1.0f32;
            let (spz, ez) = softplus(x * z);
            let (sp, _e) = softplus(x);
            let bce = sp - x * g;
            // s(x z) from `exp(-|x z|)`.
            let r = 1.0f32 / (1.0f32 + ez);
            let sz = select(x * z >= 0.0f32, r, ez * r);
            dh = exp_clamped(-gamma * spz) * ((s - g) - gamma * z * sz * bce);
        }
        w * (coef * dh + row_grad(grad, 3usize, b, c) * g * (s - 1.0f32))
    }

    /// Partial sums of one cube: `partial[((q B + b) C + c), chunk]` for the 8 rows `q`.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pointwise_kernel<I: Int>(
        x: &Tensor<f32>,
        labels: ComptimeOption<&Tensor<I>>,
        dense: ComptimeOption<&Tensor<f32>>,
        mask: ComptimeOption<&Tensor<f32>>,
        partial: &mut Tensor<f32>,
        gamma: f32,
        #[comptime] flags: PwFlags,
        #[comptime] units: usize,
        #[comptime] items: usize,
        #[define(I)] _label_type: ElemType,
    ) {
        let b_count = x.shape(0);
        let c_count = x.shape(1);
        let n_count = x.shape(2);
        let chunk = CUBE_POS_X as usize;
        let b = CUBE_POS_Y as usize;
        let unit = UNIT_POS_X as usize;
        let start = chunk * units * items + unit;

        // Per voxel of this unit: the softmax's maximum and normaliser (the second softmax's
        // without the background), `ln sum exp` of the pointwise term's softmax, `p_0` and
        // `(1 - p_0) / sum` without the background, label, mask (0 past the end).
        let mut mx = Array::<f32>::new(items);
        let mut inv = Array::<f32>::new(items);
        let mut lse = Array::<f32>::new(items);
        let mut p0 = Array::<f32>::new(items);
        let mut rest = Array::<f32>::new(items);
        let mut lab = Array::<f32>::new(items);
        let mut w = Array::<f32>::new(items);
        #[unroll]
        for i in 0..items {
            let n = start + i * units;
            mx[i] = 0.0f32;
            inv[i] = 1.0f32;
            lse[i] = 0.0f32;
            p0[i] = 0.0f32;
            rest[i] = 0.0f32;
            lab[i] = 0.0f32;
            w[i] = 0.0f32;
            if n < n_count {
                w[i] = mask_value(&mask, b, n);
                lab[i] = label_value::<I>(&labels, b, n);
                if flags.stats.act == 0 {
                    if flags.without_background {
                        let (m, r, l, p, om) = softmax_without_background(x, b, n, c_count);
                        mx[i] = m;
                        inv[i] = r;
                        lse[i] = l;
                        p0[i] = p;
                        rest[i] = om * r;
                    } else {
                        let (m, r) = softmax_norm(x, b, n, c_count);
                        mx[i] = m;
                        inv[i] = r;
                        lse[i] = m - r.ln();
                    }
                }
            }
        }

        let mut sh = Shared::<[f32]>::new_slice(8 * units);
        for c in 0..c_count {
            let mut s = Array::<f32>::new(8usize);
            #[unroll]
            for q in 0..8usize {
                s[q] = 0.0f32;
            }
            #[unroll]
            for i in 0..items {
                let n = start + i * units;
                if n < n_count {
                    let v = x[b * x.stride(0) + c * x.stride(1) + n * x.stride(2)];
                    let g = target_value(&dense, lab[i], b, c, n, c_count);
                    let mg = w[i] * g;
                    if flags.stats.act == 0 {
                        // `p` for the statistics, `q` for the pointwise term's softmax.
                        let mut p = p0[i];
                        let mut q = 0.0f32;
                        let mut pointwise = true;
                        if flags.without_background {
                            if c == 0 {
                                pointwise = false;
                            } else {
                                let e = exp_clamped(v - mx[i]);
                                p = e * rest[i];
                                q = e * inv[i];
                            }
                        } else {
                            p = exp_clamped(v - mx[i]) * inv[i];
                            q = p;
                        }
                        let mp = w[i] * p;
                        s[0] += mp * mg;
                        s[1] += mp;
                        s[2] += mg;
                        if pointwise {
                            let mh = w[i] * softmax_h(q, v, lse[i], gamma, flags);
                            s[4] += mh * g;
                            s[5] += mh;
                            s[6] += mg;
                        }
                    } else {
                        let p = activate(v, 0.0f32, 1.0f32, flags.stats.act);
                        let mp = w[i] * p;
                        s[0] += mp * mg;
                        s[1] += mp;
                        s[2] += mg;
                        let (h, d) = sigmoid_h(v, g, gamma, flags.focal);
                        let mh = w[i] * h;
                        s[4] += mh * g;
                        s[5] += mh;
                        s[6] += select(g == 1.0f32, mh, 0.0f32);
                        s[7] += mg * d;
                    }
                }
            }
            #[unroll]
            for q in 0..8usize {
                sh[q * units + unit] = s[q];
            }
            tree_sum(&mut sh, unit, units, 8usize);
            if unit == 0 {
                #[unroll]
                for q in 0..8usize {
                    let at = ((q * b_count + b) * c_count + c) * partial.stride(0)
                        + chunk * partial.stride(1);
                    partial[at] = sh[q * units];
                }
            }
            sync_cube();
        }
    }

    /// The gradient with respect to the logits from the gradient `[8, B, C]` of the output, one
    /// unit per voxel.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pointwise_grad_kernel<I: Int>(
        x: &Tensor<f32>,
        labels: ComptimeOption<&Tensor<I>>,
        dense: ComptimeOption<&Tensor<f32>>,
        mask: ComptimeOption<&Tensor<f32>>,
        grad: &Tensor<f32>,
        out: &mut Tensor<f32>,
        gamma: f32,
        #[comptime] flags: PwFlags,
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
        let orow = b * out.stride(0) + n * out.stride(2);
        if flags.stats.act == 0 {
            if flags.without_background {
                // dx_0 = p_0 (u_0 - dot), dx_c = p_c (u_c - dot) + Q_c - q_c sum_{j >= 1} Q_j,
                // dot = sum_j p_j u_j, p_c = q_c (1 - p_0).
                let (mx, inv, _lse, p0, om) = softmax_without_background(x, b, n, c_count);
                let g0 = target_value(&dense, lab, b, 0usize, n, c_count);
                let u0 = upstream(grad, p0, g0, w, b, 0usize, flags.stats);
                let mut dot = p0 * u0;
                let mut dot_fg = 0.0f32;
                for c in 1..c_count {
                    let q = exp_clamped(x[row + c * x.stride(1)] - mx) * inv;
                    let p = q * om;
                    let g = target_value(&dense, lab, b, c, n, c_count);
                    dot += p * upstream(grad, p, g, w, b, c, flags.stats);
                    dot_fg += softmax_q(grad, q, g, w, b, c, gamma, flags);
                }
                for c in 1..c_count {
                    let q = exp_clamped(x[row + c * x.stride(1)] - mx) * inv;
                    let p = q * om;
                    let g = target_value(&dense, lab, b, c, n, c_count);
                    let u = upstream(grad, p, g, w, b, c, flags.stats);
                    let big_q = softmax_q(grad, q, g, w, b, c, gamma, flags);
                    let at = orow + c * out.stride(1);
                    out[at] = p * (u - dot) + big_q - q * dot_fg;
                }
                out[orow] = p0 * (u0 - dot);
            } else {
                // dx_c = p_c (u_c - sum_j p_j u_j - sum_j q_j) + q_c.
                let (mx, inv) = softmax_norm(x, b, n, c_count);
                let mut dot = 0.0f32;
                for c in 0..c_count {
                    let p = exp_clamped(x[row + c * x.stride(1)] - mx) * inv;
                    let g = target_value(&dense, lab, b, c, n, c_count);
                    dot += p * upstream(grad, p, g, w, b, c, flags.stats);
                    dot += softmax_q(grad, p, g, w, b, c, gamma, flags);
                }
                for c in 0..c_count {
                    let p = exp_clamped(x[row + c * x.stride(1)] - mx) * inv;
                    let g = target_value(&dense, lab, b, c, n, c_count);
                    let u = upstream(grad, p, g, w, b, c, flags.stats);
                    let q = softmax_q(grad, p, g, w, b, c, gamma, flags);
                    let at = orow + c * out.stride(1);
                    out[at] = p * (u - dot) + q;
                }
            }
        } else {
            for c in 0..c_count {
                let v = x[row + c * x.stride(1)];
                let s = activate(v, 0.0f32, 1.0f32, flags.stats.act);
                let g = target_value(&dense, lab, b, c, n, c_count);
                let u = upstream(grad, s, g, w, b, c, flags.stats);
                let at = orow + c * out.stride(1);
                out[at] =
                    u * s * (1.0f32 - s) + sigmoid_dx(grad, v, s, g, w, b, c, gamma, flags.focal);
            }
        }
    }
}

/// The comptime flags of one call, after the checks of the CPU kernel's `check_sizes`.
fn pw_flags(act: Activation, pw: Pointwise, c: usize) -> kernels::PwFlags {
    let Pointwise {
        gamma,
        without_background,
    } = pw;
    assert!(
        act != Activation::None,
        "segloss kernel: the pointwise term needs the softmax or the sigmoid"
    );
    assert!(
        !without_background || (act == Activation::Softmax && c >= 2),
        "segloss kernel: a pointwise term without the background needs the softmax and at least 2 channels"
    );
    kernels::PwFlags {
        stats: super::kernels::Flags {
            act: u32::from(act.code()),
            first: 0,
            squared: false,
            difference: false,
        },
        focal: gamma != 0.0,
        square: gamma == 2.0,
        without_background,
    }
}

/// The output `[8, B, C]` (no `grad`) or the gradient `[B, C, N]` given the output's gradient.
fn run(
    x: CubeTensor,
    target: Target,
    mask: CubeTensor,
    grad: Option<CubeTensor>,
    activation: Activation,
    pw: Pointwise,
) -> CubeTensor {
    let Inputs {
        x,
        labels,
        dense,
        mask,
        label_type,
        dims: [b, c, n],
    } = inputs(x, target, mask);
    let f = pw_flags(activation, pw, c);
    let client = x.client.clone();
    let labels_arg = labels.map(|l| l.into_tensor_arg());
    let dense_arg = dense.map(|d| d.into_tensor_arg());
    let mask_arg = mask.map(|m| m.into_tensor_arg());
    match grad {
        Some(grad) => {
            let grad = f32_input(grad, "pointwise sums' gradient");
            assert_eq!(
                grad.shape().dims::<3>(),
                [ROWS, b, c],
                "segloss: the gradient of the fused pointwise sums must be [8, B, C]"
            );
            let out = empty_like(&x, [b, c, n]);
            let (cube_count, cube_dim) = per_voxel(&x, b, n);
            kernels::pointwise_grad_kernel::launch(
                &client,
                cube_count,
                cube_dim,
                x.into_tensor_arg(),
                labels_arg.into(),
                dense_arg.into(),
                mask_arg.into(),
                grad.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                pw.gamma,
                f,
                label_type,
            );
            out
        }
        None => {
            let units = units(&x);
            let (chunks, cube_count) = chunk_grid(&x, b, n, units);
            let partial = empty_like(&x, [ROWS * b * c, chunks]);
            kernels::pointwise_kernel::launch(
                &client,
                cube_count,
                CubeDim::new_1d(units as u32),
                x.into_tensor_arg(),
                labels_arg.into(),
                dense_arg.into(),
                mask_arg.into(),
                partial.clone().into_tensor_arg(),
                pw.gamma,
                f,
                units,
                ITEMS,
                label_type,
            );
            sum_partials(partial, [ROWS, b, c], units)
        }
    }
}

/// The CubeCL backends keep the trait's default `_saving` forward, which saves the logits: the
/// backward recomputes the activations from them.
impl FusedPointwiseOps for CubeBackend {
    fn pointwise_stats_labels(
        logits: CubeTensor,
        labels: CubeTensor,
        mask: CubeTensor,
        activation: Activation,
        pw: Pointwise,
    ) -> CubeTensor {
        run(logits, Target::Labels(labels), mask, None, activation, pw)
    }

    fn pointwise_stats_dense(
        logits: CubeTensor,
        target: CubeTensor,
        mask: CubeTensor,
        activation: Activation,
        pw: Pointwise,
    ) -> CubeTensor {
        run(logits, Target::Dense(target), mask, None, activation, pw)
    }

    fn pointwise_stats_labels_backward_saved(
        saved: CubeTensor,
        labels: CubeTensor,
        mask: CubeTensor,
        grad: CubeTensor,
        activation: Activation,
        pw: Pointwise,
    ) -> CubeTensor {
        run(
            saved,
            Target::Labels(labels),
            mask,
            Some(grad),
            activation,
            pw,
        )
    }

    fn pointwise_stats_dense_backward_saved(
        saved: CubeTensor,
        target: CubeTensor,
        mask: CubeTensor,
        grad: CubeTensor,
        activation: Activation,
        pw: Pointwise,
    ) -> CubeTensor {
        run(
            saved,
            Target::Dense(target),
            mask,
            Some(grad),
            activation,
            pw,
        )
    }
}
