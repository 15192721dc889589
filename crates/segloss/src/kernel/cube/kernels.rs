//! The CubeCL device code of the overlap statistics: the per-voxel helpers that every CubeCL
//! kernel of segloss shares (clamped `exp`, the softmax's maximum and normaliser, the activation,
//! the target, label and mask readers, the tree sum), the forward (`stats_kernel`,
//! `sum_rows_kernel`) and the backward (`upstream`, `grad_kernel`).
//!
//! The helpers read an optional input with `#[comptime] let x = match .. ; x`: the attribute on
//! the binding resolves the option when the kernel is expanded, so the binding cannot go. They
//! are `pub(crate)` because the pointwise and confusion kernels (`super::pointwise`,
//! `super::confusion`) call them too.

#![allow(clippy::let_and_return)]

use cubecl::prelude::*;

/// Comptime description of one forward or backward launch.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) struct Flags {
    /// 0 softmax, 1 sigmoid, 2 none.
    pub act: u32,
    /// First class of the statistics (1 when the background is dropped).
    pub first: u32,
    pub squared: bool,
    pub difference: bool,
}

/// `exp` with the argument clamped to the f32 range, as the CPU kernel does.
#[cube]
pub(crate) fn exp_clamped(v: f32) -> f32 {
    v.clamp(-87.336_55f32, 88.0f32).exp()
}

/// The activation of logit `v` (with the voxel's softmax maximum `mx` and normaliser `inv`).
#[cube]
pub(crate) fn activate(v: f32, mx: f32, inv: f32, #[comptime] act: u32) -> f32 {
    let mut p = v;
    if act == 0 {
        p = exp_clamped(v - mx) * inv;
    } else if act == 1 {
        p = 1.0f32 / (1.0f32 + exp_clamped(-v));
    }
    p
}

/// The softmax maximum and the reciprocal of the normaliser of voxel `n` of sample `b`.
#[cube]
pub(crate) fn softmax_norm(x: &Tensor<f32>, b: usize, n: usize, c_count: usize) -> (f32, f32) {
    let mut mx = x[b * x.stride(0) + n * x.stride(2)];
    for c in 1..c_count {
        mx = mx.max(x[b * x.stride(0) + c * x.stride(1) + n * x.stride(2)]);
    }
    let mut sum = 0.0f32;
    for c in 0..c_count {
        sum += exp_clamped(x[b * x.stride(0) + c * x.stride(1) + n * x.stride(2)] - mx);
    }
    (mx, 1.0f32 / sum)
}

/// The target of class `c` at voxel `n` of sample `b`: the dense value, or the one-hot of the
/// label `lab` (the label value itself for a single channel).
#[cube]
pub(crate) fn target_value(
    dense: &ComptimeOption<&Tensor<f32>>,
    lab: f32,
    b: usize,
    c: usize,
    n: usize,
    c_count: usize,
) -> f32 {
    #[comptime]
    let g = match dense {
        ComptimeOption::Some(d) => d[b * d.stride(0) + c * d.stride(1) + n * d.stride(2)],
        ComptimeOption::None => {
            let mut one_hot = lab;
            if c_count > 1 {
                one_hot = select(lab == f32::cast_from(c as u32), 1.0f32, 0.0f32);
            }
            one_hot
        }
    };
    g
}

/// The label of voxel `n` of sample `b` as a float (through i32, as the CPU kernel converts).
#[cube]
pub(crate) fn label_value<I: Int>(labels: &ComptimeOption<&Tensor<I>>, b: usize, n: usize) -> f32 {
    #[comptime]
    let l = match labels {
        ComptimeOption::Some(l) => {
            f32::cast_from(i32::cast_from(l[b * l.stride(0) + n * l.stride(1)]))
        }
        ComptimeOption::None => 0.0f32,
    };
    l
}

/// The mask weight of voxel `n` of sample `b` (1 without a mask).
#[cube]
pub(crate) fn mask_value(mask: &ComptimeOption<&Tensor<f32>>, b: usize, n: usize) -> f32 {
    #[comptime]
    let w = match mask {
        ComptimeOption::Some(m) => m[b * m.stride(0) + n * m.stride(1)],
        ComptimeOption::None => 1.0f32,
    };
    w
}

/// Adds the `units` values of each of the `rows` rows of `sh` (row `q` at `q * units`) into
/// the row's first slot: a fixed binary tree over the cube's units, so the order of the
/// additions depends on the launch geometry only. Every unit of the cube must call it, after
/// writing its own slots (it synchronises the cube before and after each level).
#[cube]
pub(crate) fn tree_sum(
    sh: &mut Shared<[f32]>,
    unit: usize,
    #[comptime] units: usize,
    #[comptime] rows: usize,
) {
    sync_cube();
    // `runtime()`: a comptime value would be unrolled, not looped over.
    let mut stride = (units / 2).runtime();
    while stride > 0 {
        if unit < stride {
            #[unroll]
            for q in 0..rows {
                sh[q * units + unit] += sh[q * units + unit + stride];
            }
        }
        sync_cube();
        stride /= 2;
    }
}

/// Partial statistics of one cube: `partial[((q B + b) K + j), chunk]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn stats_kernel<I: Int>(
    x: &Tensor<f32>,
    labels: ComptimeOption<&Tensor<I>>,
    dense: ComptimeOption<&Tensor<f32>>,
    mask: ComptimeOption<&Tensor<f32>>,
    partial: &mut Tensor<f32>,
    #[comptime] flags: Flags,
    #[comptime] units: usize,
    #[comptime] items: usize,
    #[define(I)] _label_type: ElemType,
) {
    let b_count = x.shape(0);
    let c_count = x.shape(1);
    let n_count = x.shape(2);
    let k_count = c_count - flags.first as usize;
    let chunk = CUBE_POS_X as usize;
    let b = CUBE_POS_Y as usize;
    let unit = UNIT_POS_X as usize;
    let start = chunk * units * items + unit;

    // Per voxel of this unit: softmax maximum and normaliser, label, mask (0 past the end).
    let mut mx = Array::<f32>::new(items);
    let mut inv = Array::<f32>::new(items);
    let mut lab = Array::<f32>::new(items);
    let mut w = Array::<f32>::new(items);
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
            if flags.act == 0 {
                let (m, s) = softmax_norm(x, b, n, c_count);
                mx[i] = m;
                inv[i] = s;
            }
        }
    }

    let mut sh = Shared::<[f32]>::new_slice(4 * units);
    for j in 0..k_count {
        let c = j + flags.first as usize;
        let mut si = 0.0f32;
        let mut sp = 0.0f32;
        let mut sg = 0.0f32;
        let mut se = 0.0f32;
        #[unroll]
        for i in 0..items {
            let n = start + i * units;
            if n < n_count {
                let p = activate(
                    x[b * x.stride(0) + c * x.stride(1) + n * x.stride(2)],
                    mx[i],
                    inv[i],
                    flags.act,
                );
                let g = target_value(&dense, lab[i], b, c, n, c_count);
                let mp = w[i] * p;
                let mg = w[i] * g;
                si += mp * mg;
                if flags.squared {
                    sp += mp * mp;
                    sg += mg * mg;
                } else if flags.difference {
                    // The soft-label form's L1 norms (as the CPU kernel, `class_sums`).
                    sp += mp.abs();
                    sg += mg.abs();
                } else {
                    sp += mp;
                    sg += mg;
                }
                if flags.difference {
                    let d = mp - mg;
                    if flags.squared {
                        se += d * d;
                    } else {
                        se += d.abs();
                    }
                }
            }
        }
        sh[unit] = si;
        sh[units + unit] = sp;
        sh[2 * units + unit] = sg;
        sh[3 * units + unit] = se;
        tree_sum(&mut sh, unit, units, 4usize);
        if unit == 0 {
            #[unroll]
            for q in 0..4usize {
                let at = ((q * b_count + b) * k_count + j) * partial.stride(0)
                    + chunk * partial.stride(1);
                partial[at] = sh[q * units];
            }
        }
        sync_cube();
    }
}

/// `out[q, b, j] = sum_t partial[r, t]` with `r = (q B + b) K + j`, one cube per row.
#[cube(launch)]
pub(crate) fn sum_rows_kernel(
    partial: &Tensor<f32>,
    out: &mut Tensor<f32>,
    #[comptime] units: usize,
) {
    let rows = partial.shape(0);
    let b_count = out.shape(1);
    let k_count = out.shape(2);
    let chunks = partial.shape(1);
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let unit = UNIT_POS_X as usize;
    let mut s = 0.0f32;
    let mut t = unit;
    while t < chunks {
        s += partial[row * partial.stride(0) + t * partial.stride(1)];
        t += units;
    }
    let mut sh = Shared::<[f32]>::new_slice(units);
    sh[unit] = s;
    tree_sum(&mut sh, unit, units, 1usize);
    if unit == 0 {
        let at = (row / (b_count * k_count)) * out.stride(0)
            + ((row / k_count) % b_count) * out.stride(1)
            + (row % k_count) * out.stride(2);
        out[at] = sh[0];
    }
}

/// `u_c = d loss / d p_c` at one voxel (0 for a dropped background channel).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn upstream(
    grad: &Tensor<f32>,
    p: f32,
    g: f32,
    w: f32,
    b: usize,
    c: usize,
    #[comptime] flags: Flags,
) -> f32 {
    let mut u = 0.0f32;
    if c >= flags.first as usize {
        let j = c - flags.first as usize;
        let gi = grad[b * grad.stride(1) + j * grad.stride(2)];
        let gp = grad[grad.stride(0) + b * grad.stride(1) + j * grad.stride(2)];
        let mut ge = 0.0f32;
        if flags.difference {
            ge = grad[3 * grad.stride(0) + b * grad.stride(1) + j * grad.stride(2)];
        }
        let mp = w * p;
        let mg = w * g;
        let d = mp - mg;
        let sign = select(d > 0.0f32, 1.0f32, select(d < 0.0f32, -1.0f32, 0.0f32));
        let psign = select(mp > 0.0f32, 1.0f32, select(mp < 0.0f32, -1.0f32, 0.0f32));
        let mut v = gi * mg + gp + ge * sign;
        if flags.difference {
            v = gi * mg + gp * psign + ge * sign;
        }
        if flags.squared {
            v = gi * mg + gp * 2.0f32 * mp + ge * 2.0f32 * d;
        }
        u = w * v;
    }
    u
}

/// The gradient with respect to the logits, one unit per voxel.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn grad_kernel<I: Int>(
    x: &Tensor<f32>,
    labels: ComptimeOption<&Tensor<I>>,
    dense: ComptimeOption<&Tensor<f32>>,
    mask: ComptimeOption<&Tensor<f32>>,
    grad: &Tensor<f32>,
    out: &mut Tensor<f32>,
    #[comptime] flags: Flags,
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
    if flags.act == 0 {
        let (mx, inv) = softmax_norm(x, b, n, c_count);
        let mut dot = 0.0f32;
        for c in 0..c_count {
            let p = activate(
                x[b * x.stride(0) + c * x.stride(1) + n * x.stride(2)],
                mx,
                inv,
                flags.act,
            );
            let g = target_value(&dense, lab, b, c, n, c_count);
            dot += p * upstream(grad, p, g, w, b, c, flags);
        }
        for c in 0..c_count {
            let p = activate(
                x[b * x.stride(0) + c * x.stride(1) + n * x.stride(2)],
                mx,
                inv,
                flags.act,
            );
            let g = target_value(&dense, lab, b, c, n, c_count);
            let u = upstream(grad, p, g, w, b, c, flags);
            let at = b * out.stride(0) + c * out.stride(1) + n * out.stride(2);
            out[at] = p * (u - dot);
        }
    } else {
        for c in 0..c_count {
            let p = activate(
                x[b * x.stride(0) + c * x.stride(1) + n * x.stride(2)],
                0.0f32,
                1.0f32,
                flags.act,
            );
            let g = target_value(&dense, lab, b, c, n, c_count);
            let u = upstream(grad, p, g, w, b, c, flags);
            let mut d = u;
            if flags.act == 1 {
                d = u * p * (1.0f32 - p);
            }
            let at = b * out.stride(0) + c * out.stride(1) + n * out.stride(2);
            out[at] = d;
        }
    }
}
