//! The fused overlap-statistics kernel for CPUs, parallel with rayon. The hot loops are written
//! twice: with AVX2 + FMA intrinsics (module `avx2`, taken when the CPU has both, detected at run
//! time: `Isa`) and as plain Rust over slices that the compiler vectorises for the target's
//! baseline (SSE2 on x86-64), which the tests compare with the intrinsics.
//!
//! **Forward** ([`forward`]): one pass over the logits computes, per (sample, class),
//! `I = sum m p m g`, `P = sum m p` (or `(m p)^2`), `G = sum m g` (or `(m g)^2`) and
//! `E = sum |m p - m g|` (or its square), with the activation applied on the fly and the one-hot
//! target read from the label map: no one-hot or product tensor is built. Output `[4, B, K]`.
//! For the softmax the voxels are taken in tiles of 256: the softmax of a tile (`C x 256` floats)
//! stays in the L1 cache from the pass that finds the maximum to the one that adds the class
//! sums. The element-wise activations (sigmoid, none) go class by class over runs of 4096 voxels,
//! so that each row is read and written in long runs.
//!
//! **Backward**: writes `d loss / d x` from the incoming gradients of `I`, `P`, `E` (the target
//! is not differentiated):
//!
//! ```text
//! u_c  = m (dI_c m g_c + dP_c (1 or 2 m p_c) + dE_c (sign(m p_c - m g_c) or 2 (m p_c - m g_c)))
//!        (with E, unsquared, P = sum |m p|: dP_c sign(m p_c) instead of dP_c, as MONAI's L1 norms)
//! dx_c = p_c (u_c - sum_j p_j u_j)   (softmax)     u_c p_c (1 - p_c)   (sigmoid)     u_c   (none)
//! ```
//!
//! Two ways to get `p` there, with the same results bit for bit:
//! - [`backward`] recomputes it from the logits (one more `exp` per element), tile by tile into
//!   the gradient's rows, then runs the same in-place step as below;
//! - [`forward_saving`] writes `p` during the forward's pass into a buffer of the gradient's size
//!   (streaming stores: the lines are not read first), and [`backward_in_place`] turns that
//!   buffer into the gradient. On CPUs `exp` costs more than the memory traffic it saves
//!   (`examples/kernel_timing.rs` times both), so Flex runs this way whenever a backward is
//!   recorded; the peak memory is the same, the gradient's buffer is just allocated at the
//!   forward (from [`super::buffer`], which reuses it across steps).
//!
//! **Numerics**: sums run over blocks of [`BLOCK`] voxels with 8 independent f32 accumulators per
//! statistic, block totals are added in f64, in block order: the result does not depend on the
//! number of threads. `exp` is a degree-5 minimax polynomial after Cody-Waite range reduction
//! (relative error below 3e-7), clamped to the float32 range, so logits of +-1e4 saturate instead
//! of overflowing; the sigmoid's division is a reciprocal estimate refined by a Newton step where
//! the CPU has FMA (relative error about 2e-7).

// The block functions take the problem (slices, sizes, options) and the block position as plain
// arguments so that they inline into the SIMD-specialised entry points.

#![allow(clippy::too_many_arguments)]

#[cfg(target_arch = "x86_64")]
mod avx2;
mod block;
pub mod confusion;
mod disjoint;
mod dispatch;
mod layout;
mod maths;
mod pointwise;
mod rows;
mod tasks;
#[cfg(test)]
mod tests;
mod tile;

use std::mem::MaybeUninit;

use super::buffer::{assume_init, uninit};
pub use super::spec::{Pointwise, Spec};
use crate::input::Activation;
use block::{Block, Work};
use disjoint::DxPtr;
use dispatch::Isa;
pub use layout::{BLOCK, Dims, Label, ROWS_MAX, TargetRef};
use layout::{Problem, rows};
pub use maths::{exp_f32, ln_f32};
use tasks::run_tasks;

/// Checks the sizes of a call's slices against `d` (and of the statistics' gradient), naming
/// the one that does not fit.
fn check_sizes<L: Label>(
    what: &str,
    x: usize,
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    grad: Option<&[f32]>,
    d: Dims,
    spec: &Spec,
    pw: Option<Pointwise>,
) {
    if let Some(pw) = pw {
        assert!(
            spec.include_background,
            "segloss kernel: the pointwise term covers every class; compute the statistics with include_background"
        );
        assert!(
            spec.act != Activation::None,
            "segloss kernel: the pointwise term needs the softmax or the sigmoid"
        );
        assert!(
            !spec.squared && !spec.difference,
            "segloss kernel: the pointwise term comes with the plain statistics (no squared sums, no difference)"
        );
        assert!(
            !pw.without_background || (spec.act == Activation::Softmax && d.c >= 2),
            "segloss kernel: a pointwise term without the background needs the softmax and at least 2 channels"
        );
    }
    check_inputs(what, x, t, mask, d);
    if let Some(g) = grad {
        let rows = rows(pw.is_some());
        let k = rows * d.b * d.k(spec);
        assert_eq!(
            g.len(),
            k,
            "segloss kernel: the statistics' gradient has {} values, expected {rows} * B * K = {k}",
            g.len()
        );
    }
}

/// Checks the lengths of the logits (or activations, `what`, `x` values), the target and the
/// mask against `d`, naming the one that does not fit.
pub(crate) fn check_inputs<L: Label>(
    what: &str,
    x: usize,
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    d: Dims,
) {
    let n = d.b * d.c * d.n;
    assert_eq!(
        x, n,
        "segloss kernel: {what} has {x} values, expected B * C * N = {} * {} * {} = {n}",
        d.b, d.c, d.n
    );
    match t {
        TargetRef::Labels(l) => assert_eq!(
            l.len(),
            d.b * d.n,
            "segloss kernel: the label map has {} values, expected B * N = {}",
            l.len(),
            d.b * d.n
        ),
        TargetRef::Dense(v) => assert_eq!(
            v.len(),
            n,
            "segloss kernel: the dense target has {} values, expected B * C * N = {n}",
            v.len()
        ),
    }
    if let Some(m) = mask {
        assert_eq!(
            m.len(),
            d.b * d.n,
            "segloss kernel: the mask has {} values, expected B * N = {}",
            m.len(),
            d.b * d.n
        );
    }
}

/// The statistics `[4, B, K]` (I, P, G, E; E is 0 unless `spec.difference`).
///
/// # Panics
/// If a slice's length does not match `d` (the message names it).
pub fn forward<L: Label>(
    x: &[f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    d: Dims,
    spec: Spec,
) -> Vec<f32> {
    forward_impl(
        &Problem {
            x,
            t,
            mask,
            d,
            spec,
            pw: None,
        },
        None,
        Isa::Best,
    )
}

/// The statistics, as [`forward`], and the activations `p` `[B, C, N]` (written in the same pass),
/// for [`backward_in_place`].
///
/// # Panics
/// With `Activation::None` (the activations are the logits: use [`forward`] and [`backward`]), or if a
/// slice's length does not match `d`.
pub fn forward_saving<L: Label>(
    x: &[f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    d: Dims,
    spec: Spec,
) -> (Vec<f32>, Vec<f32>) {
    assert!(
        spec.act != Activation::None,
        "segloss kernel: the activations of Activation::None are the logits; nothing to save"
    );
    saving_impl(&Problem {
        x,
        t,
        mask,
        d,
        spec,
        pw: None,
    })
}

fn saving_impl<L: Label>(p: &Problem<'_, L>) -> (Vec<f32>, Vec<f32>) {
    let d = p.d;
    let mut out = uninit(d.b * d.c * d.n);
    let stats = forward_impl(p, Some(DxPtr(out.as_mut_ptr())), Isa::Best);
    // SAFETY: the blocks cover every (b, c, n) exactly once (every sample, every block of voxels,
    // every tile of a block, every channel of a tile), so every element has been written.
    (stats, unsafe { assume_init(out) })
}

fn forward_impl<L: Label>(p: &Problem<'_, L>, save: Option<DxPtr>, isa: Isa) -> Vec<f32> {
    let &Problem {
        x,
        t,
        mask,
        d,
        spec,
        pw,
    } = p;
    check_sizes("the logits", x.len(), t, mask, None, d, &spec, pw);
    let (k, rows) = (d.k(&spec), rows(pw.is_some()));
    let tasks = Block::<L>::tasks(d, &spec);
    let partial = run_tasks(&tasks, p, &[], isa, Work::Forward(save));
    // Block totals added in f64 in block order (the order does not depend on the threads).
    let mut out = vec![0.0f64; rows * d.b * k];
    for (&(b, _, _), sums) in tasks.iter().zip(&partial) {
        for sums in sums.chunks_exact(rows * k) {
            for q in 0..rows {
                for j in 0..k {
                    out[(q * d.b + b) * k + j] += sums[q * k + j];
                }
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

/// The gradient with respect to the logits, as [`backward`], written over the activations `p`
/// that [`forward_saving`] returned (no logits read, no activation recomputed, nothing allocated).
///
/// # Panics
/// If a slice's length does not match `d`.
pub fn backward_in_place<L: Label>(
    p: &mut [f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    grad: &[f32],
    d: Dims,
    spec: Spec,
) {
    backward_in_place_impl(
        p,
        &Problem {
            x: &[],
            t,
            mask,
            d,
            spec,
            pw: None,
        },
        grad,
        Isa::Best,
    )
}

fn backward_in_place_impl<L: Label>(
    p: &mut [f32],
    problem: &Problem<'_, L>,
    grad: &[f32],
    isa: Isa,
) {
    let &Problem {
        t,
        mask,
        d,
        spec,
        pw,
        ..
    } = problem;
    check_sizes(
        "the activations",
        p.len(),
        t,
        mask,
        Some(grad),
        d,
        &spec,
        pw,
    );
    assert!(
        pw.is_none() || spec.act == Activation::Softmax,
        "segloss kernel: the sigmoid's pointwise gradient needs the logits; use the recomputing backward"
    );
    let ptr = DxPtr(p.as_mut_ptr().cast::<MaybeUninit<f32>>());
    run_tasks(
        &Block::<L>::tasks(d, &spec),
        problem,
        grad,
        isa,
        Work::BackwardInPlace(ptr),
    );
}

/// The gradient with respect to the logits `[B, C, N]`, given the gradient of the statistics `[4, B, K]`.
///
/// # Panics
/// If a slice's length does not match `d`.
pub fn backward<L: Label>(
    x: &[f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    grad: &[f32],
    d: Dims,
    spec: Spec,
) -> Vec<f32> {
    backward_impl(
        &Problem {
            x,
            t,
            mask,
            d,
            spec,
            pw: None,
        },
        grad,
        Isa::Best,
    )
}

/// The overlap statistics and the pointwise term's sums `[8, B, C]` (see the pointwise section:
/// rows 0-3 as [`forward`] over every channel, rows 4-7 the sums of the pointwise term `pw`).
///
/// # Panics
/// Without `spec.include_background` (the statistics are computed for every class; the caller
/// drops the background's), with `Activation::None`, with `pw.without_background` and the sigmoid or
/// one channel, or if a slice's length does not match `d`.
pub fn pointwise_forward<L: Label>(
    x: &[f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    d: Dims,
    spec: Spec,
    pw: Pointwise,
) -> Vec<f32> {
    forward_impl(
        &Problem {
            x,
            t,
            mask,
            d,
            spec,
            pw: Some(pw),
        },
        None,
        Isa::Best,
    )
}

/// [`pointwise_forward`] and the activations, for [`pointwise_backward_in_place`] (softmax).
///
/// # Panics
/// As [`pointwise_forward`], and for an activation other than the softmax (the sigmoid's
/// pointwise gradient reads the logits: use [`pointwise_backward`]).
pub fn pointwise_forward_saving<L: Label>(
    x: &[f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    d: Dims,
    spec: Spec,
    pw: Pointwise,
) -> (Vec<f32>, Vec<f32>) {
    assert!(
        spec.act == Activation::Softmax,
        "segloss kernel: only the softmax's pointwise gradient runs from saved activations"
    );
    saving_impl(&Problem {
        x,
        t,
        mask,
        d,
        spec,
        pw: Some(pw),
    })
}

/// The gradient with respect to the logits given the gradient `[8, B, C]` of
/// [`pointwise_forward`]'s output.
///
/// # Panics
/// As [`pointwise_forward`].
pub fn pointwise_backward<L: Label>(
    x: &[f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    grad: &[f32],
    d: Dims,
    spec: Spec,
    pw: Pointwise,
) -> Vec<f32> {
    backward_impl(
        &Problem {
            x,
            t,
            mask,
            d,
            spec,
            pw: Some(pw),
        },
        grad,
        Isa::Best,
    )
}

/// [`pointwise_backward`] written over the activations of [`pointwise_forward_saving`].
///
/// # Panics
/// As [`pointwise_forward_saving`].
pub fn pointwise_backward_in_place<L: Label>(
    p: &mut [f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    grad: &[f32],
    d: Dims,
    spec: Spec,
    pw: Pointwise,
) {
    backward_in_place_impl(
        p,
        &Problem {
            x: &[],
            t,
            mask,
            d,
            spec,
            pw: Some(pw),
        },
        grad,
        Isa::Best,
    )
}

fn backward_impl<L: Label>(problem: &Problem<'_, L>, grad: &[f32], isa: Isa) -> Vec<f32> {
    let &Problem {
        x,
        t,
        mask,
        d,
        spec,
        pw,
    } = problem;
    check_sizes("the logits", x.len(), t, mask, Some(grad), d, &spec, pw);
    let mut dx = uninit(d.b * d.c * d.n);
    let ptr = DxPtr(dx.as_mut_ptr());
    run_tasks(
        &Block::<L>::tasks(d, &spec),
        problem,
        grad,
        isa,
        Work::Backward(ptr),
    );
    // SAFETY: the blocks cover every (b, c, n) exactly once, so every element has been written.
    unsafe { assume_init(dx) }
}
