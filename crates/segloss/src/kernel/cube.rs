//! The fused overlap-statistics kernel for Burn's CubeCL backends (wgpu, CUDA): the same contract
//! as the CPU kernel of [`super::cpu`], written with CubeCL so that one source compiles to WGSL /
//! SPIR-V (wgpu, including Mesa's software Vulkan driver lavapipe) and to CUDA.
//!
//! **Forward** (statistics `[4, B, K]`), two launches:
//!
//! 1. `stats_kernel`: a grid of `(chunks, B)` cubes of `UNITS` units (256, or the device's
//!    limit). A cube covers `UNITS * ITEMS` consecutive voxels of one sample; unit `u` takes
//!    voxels `u, u + UNITS, ...` of it (neighbouring units read neighbouring voxels, so the loads
//!    coalesce). Per voxel it computes the softmax maximum and normaliser once, then, class by
//!    class, recomputes `p` from the logit, reads the target (a label map compared with the
//!    class, or the dense value) and the mask, and accumulates `I`, `P`, `G`, `E` in f32
//!    registers. The cube then adds its units' sums in shared memory (a fixed binary tree,
//!    no atomics) and writes one partial per (statistic, sample, class) to a buffer
//!    `[4 B K, chunks]`.
//! 2. `sum_rows_kernel`: one cube per row of that buffer adds its `chunks` partials (each unit a
//!    strided sequential sum, then the same tree), giving `[4, B, K]`.
//!
//! Nothing of the prediction's size is allocated: the partial buffer holds `4 B K` floats per
//! `UNITS * ITEMS` voxels.
//!
//! **Layout**: every tensor is indexed through its strides, not as a packed array. CubeCL's CUDA
//! runtime allocates tensors with their rows padded to an alignment, so even a contiguous
//! `[B, C, N]` has a row stride above `N` unless `N` happens to be a multiple of it (found on an
//! H200: 307 of 356 conformance cases were wrong through CUDA while wgpu packs its rows).
//!
//! **Backward** (`grad_kernel`): one unit per voxel `(b, n)` recomputes the activations of its
//! `C` channels and writes all `C` gradient values, with the formulas of [`super::cpu`].
//!
//! **Shared with the other CubeCL kernels** (the pointwise pass of `super::cube_pointwise`, the
//! confusion matrix of `super::cube_confusion`): the per-voxel helpers of the kernel module
//! (clamped `exp`, the softmax's maximum and normaliser, the activation, the target, label and
//! mask readers, the statistics' upstream gradient), the cube's tree sum, the row reduction
//! `sum_rows_kernel`, and on the host the input checks, the launch geometry and the reduction of
//! the partials. One copy of each, so that the kernels cannot drift apart.
//!
//! **Numerics**: everything is f32 (WGSL has no f64). A statistic of one (sample, class) is a
//! sequential sum of `ITEMS` values per unit, a binary tree of depth `log2 UNITS` per cube, a
//! sequential sum of `chunks / UNITS` cube partials per unit and a second tree: a summation depth
//! of `ITEMS + 2 log2 UNITS + N / (ITEMS UNITS^2)` for `N` voxels per sample, so a worst-case
//! relative error (non-negative terms) of that many units of roundoff, `2^-24` each: about
//! 1.3e-6 at 64^3 voxels, 2.4e-5 at 10^8 (typical errors are much smaller; the CPU kernel adds
//! its blocks in f64). The order of every addition is fixed by the launch geometry, so results
//! are deterministic for a given device. `exp` is the backend's, with its argument clamped to
//! `[-87.34, 88]` as in the CPU kernel (so logits of +-1e4 saturate; WGSL leaves an overflowing
//! `exp` undefined). No plane (subgroup) operations are used: software adapters
//! such as lavapipe run them disabled.

use burn::backend::TensorMetadata;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::{DType, Shape};

use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::{CubeCount, CubeDim, ElemType};

use super::fused::FusedStatsOps;
use super::spec::Spec;
use crate::input::TargetOf;

/// Voxels per unit in the forward kernel.
pub const ITEMS: usize = 4;
/// Units per cube (fewer where the device allows fewer; always a power of two).
pub const UNITS: usize = 256;

// The helpers read an optional input with `#[comptime] let x = match .. ; x`: the attribute on
// the binding resolves the option when the kernel is expanded, so the binding cannot go. They
// are `pub(crate)` because the pointwise and confusion kernels (`super::cube_pointwise`,
// `super::cube_confusion`) call them too.
#[allow(clippy::let_and_return)]
pub(super) mod kernels {
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
    pub(crate) fn label_value<I: Int>(
        labels: &ComptimeOption<&Tensor<I>>,
        b: usize,
        n: usize,
    ) -> f32 {
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
}

/// The target of one call: class indices `[B, N]` or per-class values `[B, C, N]`.
pub(super) type Target = TargetOf<CubeTensor, CubeTensor>;

/// The inputs of one launch, ready to be passed: contiguous, the floats checked to be f32.
pub(super) struct Inputs {
    /// The logits `[B, C, N]`.
    pub x: CubeTensor,
    /// The label map `[B, N]`, when the target is one.
    pub labels: Option<CubeTensor>,
    /// The dense target `[B, C, N]`, when the target is one.
    pub dense: Option<CubeTensor>,
    /// The voxel mask `[B, N]`, if any.
    pub mask: Option<CubeTensor>,
    /// The labels' element type (i32 without labels: the kernels are generic over it).
    pub label_type: ElemType,
    /// `[B, C, N]`.
    pub dims: [usize; 3],
}

/// Checks and prepares the inputs of a launch (a `mask` with no elements means no mask).
pub(super) fn inputs(x: CubeTensor, target: Target, mask: CubeTensor) -> Inputs {
    let x = f32_input(x, "prediction");
    let dims = x.shape().dims::<3>();
    let [b, c, n] = dims;
    assert!(
        b * c * n <= u32::MAX as usize,
        "segloss: the fused CubeCL kernel indexes with 32 bits; a prediction of {b} x {c} x {n} values is too large"
    );
    let mask = (mask.shape().num_elements() > 0).then(|| f32_input(mask, "mask"));
    let (labels, dense) = match target {
        Target::Labels(l) => (Some(into_contiguous(l)), None),
        Target::Dense(d) => (None, Some(f32_input(d, "target"))),
    };
    let label_type = dtype_to_storage_type(labels.as_ref().map_or(DType::I32, |l| l.dtype));
    for (what, t, want) in [
        ("label map", labels.as_ref(), vec![b, n]),
        ("target", dense.as_ref(), vec![b, c, n]),
        ("mask", mask.as_ref(), vec![b, n]),
    ] {
        if let Some(t) = t {
            assert_eq!(
                t.shape().to_vec(),
                want,
                "segloss: the fused CubeCL kernel's {what} does not match logits of shape {:?}",
                [b, c, n]
            );
        }
    }
    Inputs {
        x,
        labels,
        dense,
        mask,
        label_type,
        dims,
    }
}

/// `t` as a contiguous f32 tensor, or a panic naming `what` when it is of another float type.
pub(super) fn f32_input(t: CubeTensor, what: &str) -> CubeTensor {
    assert_eq!(
        t.dtype,
        DType::F32,
        "segloss's fused CubeCL kernel computes in f32, got {:?} for the {what}",
        t.dtype
    );
    into_contiguous(t)
}

fn flags(s: &Spec) -> kernels::Flags {
    kernels::Flags {
        act: s.act.code() as u32,
        first: u32::from(!s.include_background),
        squared: s.squared,
        difference: s.difference,
    }
}

/// The largest power of two `<= min(UNITS, the device's units per cube)`.
pub(super) fn units(t: &CubeTensor) -> usize {
    let max = (t.client.properties().hardware.max_units_per_cube as usize).clamp(1, UNITS);
    1 << max.ilog2()
}

/// The grid of a partial-sum launch over `b` samples of `n` voxels: `(chunks, B)` cubes of
/// `units` units taking `ITEMS` voxels each; panics where the device's grid is smaller.
pub(super) fn chunk_grid(t: &CubeTensor, b: usize, n: usize, units: usize) -> (usize, CubeCount) {
    let chunks = n.div_ceil(units * ITEMS);
    let max = t.client.properties().hardware.max_cube_count;
    assert!(
        chunks <= max.0 as usize && b <= max.1 as usize,
        "segloss: {b} samples of {n} voxels exceed this device's grid ({max:?} cubes of {} voxels)",
        units * ITEMS
    );
    (chunks, CubeCount::Static(chunks as u32, b as u32, 1))
}

/// An uninitialised f32 tensor of `shape` on `like`'s device.
pub(super) fn empty_like(like: &CubeTensor, shape: impl Into<Shape>) -> CubeTensor {
    empty_device_dtype(
        like.client.clone(),
        like.device.clone(),
        shape.into(),
        DType::F32,
    )
}

/// Adds the partial sums `[R, chunks]` row by row into `out` of shape `shape` (`R` its number
/// of elements, row `r` its element `r` in row-major order) with [`kernels::sum_rows_kernel`]:
/// one cube of `units` units per row.
pub(super) fn sum_partials(partial: CubeTensor, shape: [usize; 3], units: usize) -> CubeTensor {
    let client = partial.client.clone();
    let rows = partial.shape().dims::<2>()[0];
    debug_assert_eq!(rows, shape.iter().product::<usize>());
    let out = empty_like(&partial, shape);
    let cube_dim = CubeDim::new_1d(units as u32);
    // One cube per row (spread over the grid's dimensions where there are many).
    let cube_count = cubecl::calculate_cube_count_elemwise(&client, rows * units, cube_dim);
    kernels::sum_rows_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        partial.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        units,
    );
    out
}

/// The launch geometry of a kernel with one unit per voxel of `b` samples of `n` voxels.
pub(super) fn per_voxel(t: &CubeTensor, b: usize, n: usize) -> (CubeCount, CubeDim) {
    let cube_dim = CubeDim::new(&t.client, b * n);
    let cube_count = cubecl::calculate_cube_count_elemwise(&t.client, b * n, cube_dim);
    (cube_count, cube_dim)
}

/// The statistics `[4, B, K]` (no `grad`) or the gradient `[B, C, N]` (given the statistics'
/// gradient), as [`super::cpu::forward`] / [`super::cpu::backward`] define them.
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
