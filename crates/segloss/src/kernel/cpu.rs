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

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::buffer::{assume_init, uninit};
pub use super::spec::{Pointwise, Spec};
use crate::input::{Activation, TargetOf};

/// The activation codes as const generic parameters take them ([`Activation::code`]).
const SOFTMAX: u8 = Activation::SOFTMAX_CODE;
const SIGMOID: u8 = Activation::SIGMOID_CODE;

/// Voxels per block, the unit of f64 accumulation (and of parallel work for the softmax; runs of
/// four blocks for the other activations).
pub const BLOCK: usize = 1024;
/// Voxels per tile: the softmax of a tile (`C x TILE` floats) stays in the L1 cache between the
/// passes over it.
pub(crate) const TILE: usize = 256;
/// Lanes of the f32 accumulators (one AVX2 vector).
pub(crate) const LANES: usize = 8;
/// Voxels per chunk of the pointwise sums' two loops (a multiple of `LANES`; on the stack).
const POINTWISE_CHUNK: usize = 64;
/// Rows of the output with the pointwise term (the 4 overlap statistics, then 4 pointwise sums).
pub const ROWS_MAX: usize = 8;

/// Rows of the output: the overlap statistics, and the pointwise term's sums when asked for.
fn rows(pointwise: bool) -> usize {
    if pointwise { ROWS_MAX } else { 4 }
}
const _: () = assert!(BLOCK.is_multiple_of(TILE) && TILE.is_multiple_of(LANES));

/// Label maps in the integer types Burn backends use.
pub trait Label: Copy + Send + Sync {
    /// The label as a float (class indices are small integers, exact in f32).
    fn to_f32(self) -> f32;
}
impl Label for i64 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        // Validated labels are small class indices; through i32 the conversion vectorises.
        self as i32 as f32
    }
}
impl Label for i32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
}

/// The target as the kernel reads it: class indices `[B, N]` (0/1 values with a single
/// channel) or per-class values `[B, C, N]`.
pub type TargetRef<'a, L> = TargetOf<&'a [L], &'a [f32]>;

/// Problem sizes.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    /// Batch size.
    pub b: usize,
    /// Channels of the logits.
    pub c: usize,
    /// Voxels per sample.
    pub n: usize,
}

impl Dims {
    fn first(&self, spec: &Spec) -> usize {
        if spec.include_background { 0 } else { 1 }
    }
    /// Number of classes in the statistics.
    pub fn k(&self, spec: &Spec) -> usize {
        self.c - self.first(spec)
    }
    fn blocks(&self) -> usize {
        self.n.div_ceil(BLOCK)
    }
}

/// `exp(x)` for f32, branch-free so that loops over it vectorise. Cephes `expf` polynomial.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    exp_poly::<false>(x)
}

/// `a b + c`, fused when `FMA` (only inside FMA-enabled code).
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `exp` with the polynomial in fused multiply-adds when `FMA` (only inside FMA-enabled code).
#[inline(always)]
pub(crate) fn exp_poly<const FMA: bool>(x: f32) -> f32 {
    let (y, pow2) = exp_parts::<FMA, false>(x);
    y * pow2
}

/// `exp(x)` (or `exp(-x)` with `NEG`, the negation folded into the range reduction) as
/// `y * 2^n`, returned as `(y, 2^n)` so that a caller can fuse the product with an addition.
#[inline(always)]
fn exp_parts<const FMA: bool, const NEG: bool>(x: f32) -> (f32, f32) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    const LO: f32 = -87.336_55;
    const HI: f32 = 88.0;
    // The argument a = x (or -x) is clamped to [LO, HI]; t = a log2(e) rounded, r = a - t ln 2.
    let x = if NEG {
        x.clamp(-HI, -LO)
    } else {
        x.clamp(LO, HI)
    };
    let t = madd::<FMA>(x, if NEG { -LOG2E } else { LOG2E }, ROUND);
    let fx = t - ROUND;
    let r = if NEG {
        madd::<FMA>(fx, -C2, madd::<FMA>(-fx, C1, -x))
    } else {
        madd::<FMA>(fx, -C2, madd::<FMA>(fx, -C1, x))
    };
    // exp(r) on |r| <= ln(2) / 2 as 1 + r + r^2 q(r), q of degree 3: minimax coefficients for the
    // relative error (1.0e-7 in exact arithmetic, 2e-7 evaluated in f32).
    let mut y = 8.314_719e-3;
    y = madd::<FMA>(y, r, 4.189_020_8e-2);
    y = madd::<FMA>(y, r, 0.166_670_9);
    y = madd::<FMA>(y, r, 0.499_992_3);
    y = madd::<FMA>(y, r, 1.0);
    y = madd::<FMA>(y, r, 1.0);
    // t = 1.5 * 2^23 + n exactly, so n sits in the low mantissa bits (integer ops vectorise,
    // unlike a saturating float-to-int cast).
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    (y, f32::from_bits((n.wrapping_add(127) << 23) as u32))
}

/// `ln(x)` for finite `x >= f32::MIN_POSITIVE`, branch-free so that loops over it vectorise:
/// Cephes `logf` (the mantissa reduced to `[sqrt(1/2), sqrt(2))`, a degree-8 polynomial, `ln 2`
/// in two parts), relative error below 2e-7. Callers clamp the argument away from 0.
#[inline(always)]
fn ln_poly<const FMA: bool>(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let bits = x.to_bits();
    let exponent = ((bits >> 23) & 0xff) as i32 - 126;
    // The mantissa as a value in [0.5, 1).
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    let small = m < SQRT_HALF;
    let e = (exponent - small as i32) as f32;
    let f = if small { m + m - 1.0 } else { m - 1.0 };
    let z = f * f;
    let mut y = 7.037_683_6e-2;
    y = madd::<FMA>(y, f, -1.151_461e-1);
    y = madd::<FMA>(y, f, 1.167_699_9e-1);
    y = madd::<FMA>(y, f, -1.242_014_1e-1);
    y = madd::<FMA>(y, f, 1.424_932_3e-1);
    y = madd::<FMA>(y, f, -1.666_805_8e-1);
    y = madd::<FMA>(y, f, 2.000_071_4e-1);
    y = madd::<FMA>(y, f, -2.499_999_4e-1);
    y = madd::<FMA>(y, f, 3.333_333e-1);
    y = y * f * z;
    y = madd::<FMA>(e, -2.121_944_4e-4, y);
    y = madd::<FMA>(z, -0.5, y);
    let ln = madd::<FMA>(e, 0.693_359_4, f + y);
    // A NaN stays NaN (the bit manipulation above would turn it into a finite value).
    if x.is_nan() { x } else { ln }
}

/// `ln(x)` for `x >= f32::MIN_POSITIVE` (see `ln_poly`).
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    ln_poly::<false>(x)
}

/// `softplus(x) = ln(1 + exp(x))` and `exp(-|x|)`, stable for any `x`:
/// `max(x, 0) + ln(1 + exp(-|x|))`.
#[inline(always)]
fn softplus<const FMA: bool>(x: f32) -> (f32, f32) {
    let e = exp_poly::<FMA>(-x.abs());
    (x.max(0.0) + ln_poly::<FMA>(1.0 + e), e)
}

/// The logistic sigmoid from `x`'s sign and `e = exp(-|x|)`: `1 / (1 + e)` or `e / (1 + e)`.
#[inline(always)]
fn sigmoid_from(x: f32, e: f32) -> f32 {
    let r = 1.0 / (1.0 + e);
    if x >= 0.0 { r } else { e * r }
}

// ---------------------------------------------------------------------------------------------
// Per-voxel formulas. Every loop below is a plain loop over slices of one tile whose body is one
// of these inlined functions, specialised by const parameters so that it vectorises:
// `ACT` the activation code (0 softmax: `src` holds exp(x - max) and `r` 1 / sum; 1 sigmoid,
// 2 none: `src` holds the logits), `LAB` the target is a label map compared with the class index
// (otherwise `t` holds the target values), `SQ` squared sums, `MASK` a voxel mask, `DIFF` the
// difference statistic `E` is wanted, `FMA` fused multiply-adds in the exp polynomial.
// ---------------------------------------------------------------------------------------------

/// The activations of 8 voxels of one class. The sigmoid's division is a reciprocal estimate
/// refined by one Newton step where the CPU has FMA (relative error about 2e-7, like `exp`): an
/// AVX division costs as much as the whole `exp` on some CPUs.
#[inline(always)]
fn act8<const ACT: u8, const FMA: bool>(src: &[f32; LANES], r: &[f32; LANES]) -> [f32; LANES] {
    match ACT {
        SOFTMAX => std::array::from_fn(|l| src[l] * r[l]),
        SIGMOID => sigmoid8::<FMA>(src),
        _ => *src,
    }
}

/// The sigmoid of 8 logits, `1 / (1 + exp(-x))`: with FMA, [`avx2::sigmoid`] (the reciprocal an
/// `rcp` estimate refined by a Newton step); else [`exp_parts`] and a division.
#[inline(always)]
fn sigmoid8<const FMA: bool>(src: &[f32; LANES]) -> [f32; LANES] {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        use std::arch::x86_64::*;
        let mut out = [0.0f32; LANES];
        // SAFETY: `FMA` is true only in code compiled for AVX2 + FMA and run after checking the
        // CPU has them (`run_block_avx2`); the loads and stores cover 8 floats.
        unsafe {
            _mm256_storeu_ps(
                out.as_mut_ptr(),
                avx2::sigmoid(_mm256_loadu_ps(src.as_ptr())),
            )
        };
        return out;
    }
    std::array::from_fn(|l| {
        let (y, pow2) = exp_parts::<FMA, true>(src[l]);
        1.0 / madd::<FMA>(y, pow2, 1.0)
    })
}

/// Up to 8 values of `s` from `i`, padded with zeros (the tail of a tile goes through the same
/// 8-lane code as the rest, so every voxel's activation is computed the same way).
#[inline(always)]
fn lanes(s: &[f32], i: usize) -> [f32; LANES] {
    std::array::from_fn(|l| s.get(i + l).copied().unwrap_or(0.0))
}

/// The target of one voxel and class: one-hot from a label, or the given value.
#[inline(always)]
fn target_at<const LAB: bool>(t: f32, class: f32) -> f32 {
    if LAB {
        if t == class { 1.0 } else { 0.0 }
    } else {
        t
    }
}

/// `u = d loss / d p` at one voxel from the gradients `[dI, dP, dE]` of its class's statistics.
#[inline(always)]
fn upstream_at<const SQ: bool, const MASK: bool, const DIFF: bool>(
    p: f32,
    g: f32,
    w: f32,
    [gi, gp, ge]: [f32; 3],
) -> f32 {
    let (mp, mg) = if MASK { (w * p, w * g) } else { (p, g) };
    let sign = |v: f32| {
        if v > 0.0 {
            1.0
        } else if v < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    let v = if SQ {
        let v = gi * mg + 2.0 * gp * mp;
        if DIFF { v + 2.0 * ge * (mp - mg) } else { v }
    } else if DIFF {
        // The soft-label form's `P = sum |m p|` (see `class_sums`).
        gi * mg + gp * sign(mp) + ge * sign(mp - mg)
    } else {
        gi * mg + gp
    };
    if MASK { w * v } else { v }
}

/// Writes 8 floats that will not be read again soon: with `NT`, as non-temporal stores (the
/// cache lines are not read first); the caller checks once per row that the destination is
/// 16-byte aligned (`aligned16`), which then holds for every run of 8 floats of the row.
#[inline(always)]
pub(crate) fn store8<const NT: bool>(out: &mut [MaybeUninit<f32>], v: &[f32; LANES]) {
    #[cfg(target_arch = "x86_64")]
    if NT {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        assert!(out.len() == LANES);
        debug_assert!(aligned16(out));
        // SAFETY: `out` holds 8 writable floats (checked above) at a 16-byte aligned address
        // (the caller's check); SSE is part of x86-64. The stores are ordered before the task
        // ends by `store_fence`.
        unsafe {
            let dst = out.as_mut_ptr().cast::<f32>();
            _mm_stream_ps(dst, _mm_loadu_ps(v.as_ptr()));
            _mm_stream_ps(dst.add(4), _mm_loadu_ps(v.as_ptr().add(4)));
        }
        return;
    }
    for (o, &p) in out.iter_mut().zip(v) {
        o.write(p);
    }
}

/// Whether non-temporal stores can write `out` 8 floats at a time (x86-64, 16-byte aligned).
#[inline(always)]
pub(crate) fn aligned16(out: &[MaybeUninit<f32>]) -> bool {
    cfg!(target_arch = "x86_64") && (out.as_ptr() as usize).is_multiple_of(16)
}

/// Orders this thread's non-temporal stores before anything it does next (the end of its task).
#[inline(always)]
pub(crate) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// The forward's inner loop in AVX2 + FMA intrinsics: the operations of [`sigmoid8`] and of
/// `class_sums`' per-voxel sums, in the same order (the same results bit for bit as the lane-wise
/// form compiled with FMA), written by hand because the compiler's vectorisation of the lane-wise
/// form reloaded the accumulators from the stack and rebuilt the target's vector lane by lane on
/// every run of 8 voxels.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{LANES, MaybeUninit, SIGMOID, SOFTMAX};
    use std::arch::x86_64::*;

    /// `v` in every lane.
    ///
    /// # Safety
    /// As for [`sigmoid`].
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_set1_ps(v) }
    }

    /// `1 / (1 + exp(-x))`: [`super::exp_parts`] with the negation folded in (the same
    /// operations), then `rcp` refined by a Newton step, `e + e (1 - d e)`: the relative error of
    /// the estimate (below 1.5 * 2^-12) squared.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA, and the caller is compiled with them (`run_block_avx2`).
    #[inline(always)]
    pub(super) unsafe fn sigmoid(x: __m256) -> __m256 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const C1: f32 = 0.693_359_4;
        const C2: f32 = -2.121_944_4e-4;
        const ROUND: f32 = 12_582_912.0;
        const LO: f32 = -87.336_55;
        const HI: f32 = 88.0;
        // SAFETY: the caller's contract.
        unsafe {
            // x clamped to [-HI, -LO] (a NaN stays NaN: it is the second operand).
            let x = _mm256_min_ps(splat(-LO), _mm256_max_ps(splat(-HI), x));
            let t = _mm256_fmadd_ps(x, splat(-LOG2E), splat(ROUND));
            let fx = _mm256_sub_ps(t, splat(ROUND));
            // r = -x - fx ln 2 in two steps: (-fx C1 - x) - fx C2.
            let r = _mm256_fmadd_ps(fx, splat(-C2), _mm256_fnmsub_ps(fx, splat(C1), x));
            let mut y = _mm256_fmadd_ps(splat(8.314_719e-3), r, splat(4.189_020_8e-2));
            y = _mm256_fmadd_ps(y, r, splat(0.166_670_9));
            y = _mm256_fmadd_ps(y, r, splat(0.499_992_3));
            y = _mm256_fmadd_ps(y, r, splat(1.0));
            y = _mm256_fmadd_ps(y, r, splat(1.0));
            let n = _mm256_sub_epi32(
                _mm256_castps_si256(t),
                _mm256_set1_epi32(ROUND.to_bits() as i32),
            );
            let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_add_epi32(n, _mm256_set1_epi32(127)),
                23,
            ));
            let d = _mm256_fmadd_ps(y, pow2, splat(1.0));
            let e = _mm256_rcp_ps(d);
            _mm256_fmadd_ps(e, _mm256_fnmadd_ps(d, e, splat(1.0)), e)
        }
    }

    /// [`super::class_sums`] over the full runs of 8 voxels of a tile; returns how many voxels it
    /// took.
    ///
    /// # Safety
    /// As for [`sigmoid`]; with `NT`, `out` is 16-byte aligned (non-temporal stores).
    #[inline(always)]
    pub(super) unsafe fn class_sums<
        const ACT: u8,
        const LAB: bool,
        const SQ: bool,
        const MASK: bool,
        const DIFF: bool,
        const SAVE: bool,
        const NT: bool,
    >(
        src: &[f32],
        r: &[f32],
        t: &[f32],
        class: f32,
        m: &[f32],
        acc: &mut [[f32; LANES]; 4],
        out: &mut [MaybeUninit<f32>],
    ) -> usize {
        let len = src.len();
        let full = len - len % LANES;
        assert!(r.len() >= len && t.len() >= len && m.len() >= len && (!SAVE || out.len() >= len));
        // SAFETY: the caller's contract for the instructions; every load and store below is at
        // an offset `i + 8 <= full <= len` of a slice at least `len` long (asserted above).
        unsafe {
            let ld = |s: &[f32], i: usize| _mm256_loadu_ps(s.as_ptr().add(i));
            let [mut ai, mut ap, mut ag, mut ae] = acc.map(|a| _mm256_loadu_ps(a.as_ptr()));
            let (cls, one, sign) = (splat(class), splat(1.0), splat(-0.0));
            let mut i = 0;
            while i < full {
                let p = match ACT {
                    SOFTMAX => _mm256_mul_ps(ld(src, i), ld(r, i)),
                    SIGMOID => sigmoid(ld(src, i)),
                    _ => ld(src, i),
                };
                if SAVE {
                    let dst = out.as_mut_ptr().add(i).cast::<f32>();
                    if NT {
                        _mm_stream_ps(dst, _mm256_castps256_ps128(p));
                        _mm_stream_ps(dst.add(4), _mm256_extractf128_ps(p, 1));
                    } else {
                        _mm256_storeu_ps(dst, p);
                    }
                }
                let g = if LAB {
                    _mm256_and_ps(_mm256_cmp_ps(ld(t, i), cls, _CMP_EQ_OQ), one)
                } else {
                    ld(t, i)
                };
                let (mp, mg) = if MASK {
                    let w = ld(m, i);
                    (_mm256_mul_ps(w, p), _mm256_mul_ps(w, g))
                } else {
                    (p, g)
                };
                ai = _mm256_fmadd_ps(mp, mg, ai);
                ap = if SQ {
                    _mm256_fmadd_ps(mp, mp, ap)
                } else if DIFF {
                    _mm256_add_ps(ap, _mm256_andnot_ps(sign, mp))
                } else {
                    _mm256_add_ps(ap, mp)
                };
                ag = if SQ {
                    _mm256_fmadd_ps(mg, mg, ag)
                } else if DIFF {
                    _mm256_add_ps(ag, _mm256_andnot_ps(sign, mg))
                } else {
                    _mm256_add_ps(ag, mg)
                };
                if DIFF {
                    let diff = _mm256_sub_ps(mp, mg);
                    ae = if SQ {
                        _mm256_fmadd_ps(diff, diff, ae)
                    } else {
                        _mm256_add_ps(ae, _mm256_andnot_ps(sign, diff))
                    };
                }
                i += LANES;
            }
            for (a, v) in acc.iter_mut().zip([ai, ap, ag, ae]) {
                _mm256_storeu_ps(a.as_mut_ptr(), v);
            }
        }
        full
    }

    /// [`class_sums`] (softmax, plain sums) and [`pointwise_sums`] (softmax rows) of one class
    /// over the full runs of 8 voxels of a tile in one loop, sharing the loads of the target and
    /// the mask: `acc` rows 0-2 the overlap statistics of `p = src r`, rows 4-6 the pointwise
    /// sums of the terms `h`; with `SAVE`, `p` written to `out`, or with `SPLIT` `src rs` (the
    /// second softmax of a term without the background). The same operations in the same order
    /// as the two apart (the same results bit for bit). Returns how many voxels it took.
    ///
    /// # Safety
    /// As for [`sigmoid`]; with `NT`, `out` is 16-byte aligned (non-temporal stores).
    #[inline(always)]
    pub(super) unsafe fn softmax_sums_pointwise<
        const LAB: bool,
        const MASK: bool,
        const SAVE: bool,
        const NT: bool,
        const SPLIT: bool,
    >(
        src: &[f32],
        r: &[f32],
        rs: &[f32],
        h: &[f32],
        t: &[f32],
        class: f32,
        m: &[f32],
        acc: &mut [[f32; LANES]; super::ROWS_MAX],
        out: &mut [MaybeUninit<f32>],
    ) -> usize {
        let len = src.len();
        let full = len - len % LANES;
        assert!(
            r.len() >= len
                && (!SPLIT || rs.len() >= len)
                && h.len() >= len
                && t.len() >= len
                && m.len() >= len
                && (!SAVE || out.len() >= len)
        );
        // SAFETY: the caller's contract for the instructions; every load and store below is at
        // an offset `i + 8 <= full <= len` of a slice at least `len` long (asserted above).
        unsafe {
            let ld = |s: &[f32], i: usize| _mm256_loadu_ps(s.as_ptr().add(i));
            let [mut ai, mut ap, mut ag, _, mut a4, mut a5, mut a6, _] =
                acc.map(|a| _mm256_loadu_ps(a.as_ptr()));
            let (cls, one) = (splat(class), splat(1.0));
            let mut i = 0;
            while i < full {
                let e = ld(src, i);
                let p = _mm256_mul_ps(e, ld(r, i));
                if SAVE {
                    let v = if SPLIT {
                        _mm256_mul_ps(e, ld(rs, i))
                    } else {
                        p
                    };
                    let dst = out.as_mut_ptr().add(i).cast::<f32>();
                    if NT {
                        _mm_stream_ps(dst, _mm256_castps256_ps128(v));
                        _mm_stream_ps(dst.add(4), _mm256_extractf128_ps(v, 1));
                    } else {
                        _mm256_storeu_ps(dst, v);
                    }
                }
                let g = if LAB {
                    _mm256_and_ps(_mm256_cmp_ps(ld(t, i), cls, _CMP_EQ_OQ), one)
                } else {
                    ld(t, i)
                };
                let (mp, mg, mh) = if MASK {
                    let w = ld(m, i);
                    (
                        _mm256_mul_ps(w, p),
                        _mm256_mul_ps(w, g),
                        _mm256_mul_ps(w, ld(h, i)),
                    )
                } else {
                    (p, g, ld(h, i))
                };
                ai = _mm256_fmadd_ps(mp, mg, ai);
                ap = _mm256_add_ps(ap, mp);
                ag = _mm256_add_ps(ag, mg);
                a4 = _mm256_fmadd_ps(mh, g, a4);
                a5 = _mm256_add_ps(a5, mh);
                a6 = _mm256_add_ps(a6, mg);
                i += LANES;
            }
            for (q, v) in [(0, ai), (1, ap), (2, ag), (4, a4), (5, a5), (6, a6)] {
                _mm256_storeu_ps(acc[q].as_mut_ptr(), v);
            }
        }
        full
    }

    /// The pointwise term's lane sums over the full runs of 8 voxels of a chunk, given the
    /// term `h` (and for the sigmoid `d = softplus(x) - x`): `acc[0] += m h g`, `acc[1] += m h`,
    /// then `acc[2] += m g` (softmax) or `acc[2] += m [g = 1] h`, `acc[3] += m g d` (`SIG`).
    /// Returns how many voxels it took. The same operations in the same order as the lane-wise
    /// form, which the compiler kept scalar with the accumulators on the stack.
    ///
    /// # Safety
    /// As for [`sigmoid`].
    #[inline(always)]
    pub(super) unsafe fn pointwise_sums<const LAB: bool, const MASK: bool, const SIG: bool>(
        h: &[f32],
        d: &[f32],
        t: &[f32],
        class: f32,
        m: &[f32],
        acc: &mut [[f32; LANES]],
    ) -> usize {
        let len = h.len();
        let full = len - len % LANES;
        assert!(t.len() >= len && m.len() >= len && (!SIG || d.len() >= len) && acc.len() >= 4);
        // SAFETY: the caller's contract for the instructions; every load is at an offset
        // `i + 8 <= full <= len` of a slice at least `len` long (asserted above).
        unsafe {
            let ld = |s: &[f32], i: usize| _mm256_loadu_ps(s.as_ptr().add(i));
            let [mut a0, mut a1, mut a2, mut a3] =
                std::array::from_fn(|q| _mm256_loadu_ps(acc[q].as_ptr()));
            let (cls, one) = (splat(class), splat(1.0));
            let mut i = 0;
            while i < full {
                let g = if LAB {
                    _mm256_and_ps(_mm256_cmp_ps(ld(t, i), cls, _CMP_EQ_OQ), one)
                } else {
                    ld(t, i)
                };
                let w = if MASK { ld(m, i) } else { one };
                let (mh, mg) = if MASK {
                    (_mm256_mul_ps(w, ld(h, i)), _mm256_mul_ps(w, g))
                } else {
                    (ld(h, i), g)
                };
                a0 = _mm256_fmadd_ps(mh, g, a0);
                a1 = _mm256_add_ps(a1, mh);
                if SIG {
                    let is_one = _mm256_cmp_ps(g, one, _CMP_EQ_OQ);
                    a2 = _mm256_add_ps(a2, _mm256_and_ps(is_one, mh));
                    a3 = _mm256_fmadd_ps(mg, ld(d, i), a3);
                } else {
                    a2 = _mm256_add_ps(a2, mg);
                }
                i += LANES;
            }
            for (q, v) in [a0, a1, a2, a3].into_iter().enumerate() {
                _mm256_storeu_ps(acc[q].as_mut_ptr(), v);
            }
        }
        full
    }
}

/// Adds one tile of one class to the lane accumulators `acc[statistic][lane]`; with `SAVE`, also
/// writes the activations to `out` (non-temporal stores where `out` is 16-byte aligned).
#[inline(always)]
fn class_sums<
    const ACT: u8,
    const LAB: bool,
    const SQ: bool,
    const MASK: bool,
    const DIFF: bool,
    const FMA: bool,
    const SAVE: bool,
>(
    src: &[f32],
    r: &[f32],
    t: &[f32],
    class: f32,
    m: &[f32],
    acc: &mut [[f32; LANES]; 4],
    out: &mut [MaybeUninit<f32>],
) {
    let nt = SAVE && aligned16(out);
    let len = src.len();
    let (r, t, m, out) = (&r[..len], &t[..len], &m[..len], &mut out[..len]);
    // One voxel's contributions, added to lane `l` of the accumulators `a`: m p m g, m p or
    // (m p)^2, m g or (m g)^2, |m p - m g| or its square.
    #[inline(always)]
    fn add<const SQ: bool, const MASK: bool, const DIFF: bool, const FMA: bool>(
        a: &mut [[f32; LANES]; 4],
        l: usize,
        p: f32,
        g: f32,
        w: f32,
    ) {
        let (mp, mg) = if MASK { (w * p, w * g) } else { (p, g) };
        a[0][l] = madd::<FMA>(mp, mg, a[0][l]);
        // The soft-label form sums |m p| and |m g| (MONAI's L1 norms; the same values for
        // probabilities and targets in [0, 1], but the gradient of |p| at p = 0 is 0).
        a[1][l] = if SQ {
            madd::<FMA>(mp, mp, a[1][l])
        } else if DIFF {
            a[1][l] + mp.abs()
        } else {
            a[1][l] + mp
        };
        a[2][l] = if SQ {
            madd::<FMA>(mg, mg, a[2][l])
        } else if DIFF {
            a[2][l] + mg.abs()
        } else {
            a[2][l] + mg
        };
        if DIFF {
            let diff = mp - mg;
            a[3][l] = if SQ {
                madd::<FMA>(diff, diff, a[3][l])
            } else {
                a[3][l] + diff.abs()
            };
        }
    }
    let full = len - len % LANES;
    // The full runs of 8: AVX2 intrinsics with FMA (the same operations), else lane by lane.
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is true only in code compiled for AVX2 + FMA and run after checking the
        // CPU has them (`run_block_avx2`); non-temporal stores (`nt`) only where `out` is
        // 16-byte aligned.
        done = unsafe {
            if nt {
                avx2::class_sums::<ACT, LAB, SQ, MASK, DIFF, SAVE, true>(
                    src, r, t, class, m, acc, out,
                )
            } else {
                avx2::class_sums::<ACT, LAB, SQ, MASK, DIFF, SAVE, false>(
                    src, r, t, class, m, acc, out,
                )
            }
        };
    }
    let mut a = *acc;
    if done < full {
        let chunks = src
            .chunks_exact(LANES)
            .zip(r.chunks_exact(LANES))
            .zip(t.chunks_exact(LANES))
            .zip(m.chunks_exact(LANES))
            .zip(out.chunks_exact_mut(LANES));
        for ((((sc, rc), tc), mc), oc) in chunks {
            let p = act8::<ACT, FMA>(sc.try_into().unwrap(), rc.try_into().unwrap());
            if nt {
                store8::<true>(oc, &p);
            } else if SAVE {
                store8::<false>(oc, &p);
            }
            for l in 0..LANES {
                add::<SQ, MASK, DIFF, FMA>(&mut a, l, p[l], target_at::<LAB>(tc[l], class), mc[l]);
            }
        }
    }
    let p = act8::<ACT, FMA>(&lanes(src, full), &lanes(r, full));
    for i in full..len {
        if SAVE {
            out[i].write(p[i - full]);
        }
        add::<SQ, MASK, DIFF, FMA>(
            &mut a,
            i - full,
            p[i - full],
            target_at::<LAB>(t[i], class),
            m[i],
        );
    }
    *acc = a;
}

/// Writes the activations of one tile of one class to `out`: with `STREAM` for the saving forward
/// (a channel outside the sums; the values are read again only by the backward), else with plain
/// stores for the recomputing backward, which reads them back at once.
#[inline(always)]
fn class_activations<const ACT: u8, const FMA: bool, const STREAM: bool>(
    src: &[f32],
    r: &[f32],
    out: &mut [MaybeUninit<f32>],
) {
    let len = src.len();
    let (r, out) = (&r[..len], &mut out[..len]);
    let nt = STREAM && aligned16(out);
    for ((sc, rc), oc) in src
        .chunks_exact(LANES)
        .zip(r.chunks_exact(LANES))
        .zip(out.chunks_exact_mut(LANES))
    {
        let p = act8::<ACT, FMA>(sc.try_into().unwrap(), rc.try_into().unwrap());
        if nt {
            store8::<true>(oc, &p);
        } else {
            store8::<false>(oc, &p);
        }
    }
    let full = len - len % LANES;
    let p = act8::<ACT, FMA>(&lanes(src, full), &lanes(r, full));
    for i in full..len {
        out[i].write(p[i - full]);
    }
}

/// Softmax backward, first pass over the activations of one class of a tile: adds `p u` to `dot`.
#[inline(always)]
fn class_probs_dot<const LAB: bool, const SQ: bool, const MASK: bool, const DIFF: bool>(
    p: &[f32],
    t: &[f32],
    class: f32,
    m: &[f32],
    coef: [f32; 3],
    dot: &mut [f32],
) {
    let len = p.len();
    let (t, m, dot) = (&t[..len], &m[..len], &mut dot[..len]);
    for i in 0..len {
        dot[i] +=
            p[i] * upstream_at::<SQ, MASK, DIFF>(p[i], target_at::<LAB>(t[i], class), m[i], coef);
    }
}

/// Backward in place over the activations of one class of a tile: `p` becomes `p (u - dot)`
/// (softmax, `ACT = 0`), `u p (1 - p)` (sigmoid) or `u` (identity).
#[inline(always)]
fn class_grad_in_place<
    const ACT: u8,
    const LAB: bool,
    const SQ: bool,
    const MASK: bool,
    const DIFF: bool,
>(
    p: &mut [f32],
    t: &[f32],
    class: f32,
    m: &[f32],
    coef: [f32; 3],
    dot: &[f32],
) {
    let len = p.len();
    let (t, m, dot) = (&t[..len], &m[..len], &dot[..len]);
    for i in 0..len {
        let pi = p[i];
        let u = upstream_at::<SQ, MASK, DIFF>(pi, target_at::<LAB>(t[i], class), m[i], coef);
        p[i] = match ACT {
            SOFTMAX => pi * (u - dot[i]),
            SIGMOID => u * pi * (1.0 - pi),
            _ => u,
        };
    }
}

// ---------------------------------------------------------------------------------------------
// The pointwise term (cross-entropy and focal). With `Work` carrying a pointwise `gamma`, every
// class gets four more sums beside its overlap statistics, from the same pass over the logits;
// the losses combine them with their class weights, `alpha` and label smoothing as arithmetic on
// `[B, C]` tensors, so that none of those options reaches the kernel. Per voxel and class, with
// `m` the mask, `g` the target and `h` the pointwise loss:
//
// softmax: h = (1 - p)^gamma (-ln p)       rows: sum m g h, sum m h, sum m g, 0
// sigmoid: h = s(-x z)^gamma BCE(x, g)     rows: sum m g h, sum m h, sum m [g = 1] h, sum m g softplus(-x)
//          z = 2 g - 1, BCE(x, g) = softplus(x) - x g (MONAI's sigmoid focal loss; gamma 0 is BCE)
//
// Gradients, given the gradients `a4..a7` of the four rows:
// softmax: q_c = -m (a4 g + a5) (1 - p)^gamma (1 + gamma p (-ln p) / (1 - p)), and the softmax
//          step becomes dx_c = p_c (u_c - sum_j p_j u_j - sum_j q_j) + q_c
// sigmoid: dx += m (a4 g + a5 + a6 [g = 1]) dh/dx + m a7 g (s - 1),
//          dh/dx = s(-x z)^gamma ((s - g) - gamma z s(x z) BCE)
// ---------------------------------------------------------------------------------------------

/// `(1 - p)^gamma` and `1 - p`, clamped to the smallest normal float (as the composed path does,
/// so that `ln` stays finite and the derivative's division by `1 - p` is defined). `SQUARE`:
/// `gamma` is 2 (MONAI's default), a product instead of an `exp` and a `ln`.
#[inline(always)]
fn focal_factor<const FOCAL: bool, const SQUARE: bool, const FMA: bool>(
    p: f32,
    gamma: f32,
) -> (f32, f32) {
    let base = (1.0 - p).max(f32::MIN_POSITIVE);
    (
        if SQUARE {
            base * base
        } else if FOCAL {
            exp_poly::<FMA>(gamma * ln_poly::<FMA>(base))
        } else {
            1.0
        },
        base,
    )
}

/// The softmax pointwise term of one voxel. A function, not a closure: a closure is compiled
/// without the caller's `target_feature`s when it is not inlined, and its `mul_add` became a call
/// to the software `fmaf` (half the time of a softmax focal step went there).
#[inline(always)]
fn softmax_term<const FOCAL: bool, const SQUARE: bool, const FMA: bool>(
    x: f32,
    e: f32,
    r: f32,
    lse: f32,
    gamma: f32,
) -> f32 {
    // Clamped at 0 from rounding; a NaN logit stays NaN (unlike `f32::max`).
    let v = lse - x;
    let nlp = if v < 0.0 { 0.0 } else { v };
    if FOCAL {
        focal_factor::<true, SQUARE, FMA>(e * r, gamma).0 * nlp
    } else {
        nlp
    }
}

/// The softmax pointwise term `h` of one class over a run of voxels (`x` the logits, `e`
/// `exp(x - max)`, `r` `1 / sum`, `lse` `ln sum_c exp(x_c)` per voxel), into `h`: a plain loop,
/// which vectorises however long the focal factor's `ln` and `exp` make it.
#[inline(always)]
fn softmax_terms<const FOCAL: bool, const FMA: bool>(
    x: &[f32],
    e: &[f32],
    r: &[f32],
    lse: &[f32],
    gamma: f32,
    h: &mut [f32],
) {
    let n = x.len();
    let (e, r, lse, h) = (&e[..n], &r[..n], &lse[..n], &mut h[..n]);
    // `gamma = 2` decided once, outside the loop that vectorises.
    if FOCAL && gamma == 2.0 {
        for j in 0..n {
            h[j] = softmax_term::<true, true, FMA>(x[j], e[j], r[j], lse[j], gamma);
        }
    } else {
        for j in 0..n {
            h[j] = softmax_term::<FOCAL, false, FMA>(x[j], e[j], r[j], lse[j], gamma);
        }
    }
}

/// Softmax pointwise sums of one class over one tile (see [`softmax_terms`] for the inputs);
/// adds to `acc[0..4]`.
#[inline(always)]
fn softmax_pointwise_sums<const LAB: bool, const MASK: bool, const FOCAL: bool, const FMA: bool>(
    x: &[f32],
    e: &[f32],
    r: &[f32],
    lse: &[f32],
    t: &[f32],
    class: f32,
    m: &[f32],
    gamma: f32,
    acc: &mut [[f32; LANES]],
) {
    let len = x.len();
    let (e, r, lse, t, m) = (&e[..len], &r[..len], &lse[..len], &t[..len], &m[..len]);
    let mut a: [[f32; LANES]; 3] = [acc[0], acc[1], acc[2]];
    // Voxel `i` adds to lane `i % 8`, run by run of 8 so that the lanes vectorise.
    #[inline(always)]
    fn add<const FMA: bool>(a: &mut [[f32; LANES]; 3], l: usize, h: f32, g: f32, w: f32) {
        let (mh, mg) = (w * h, w * g);
        a[0][l] = madd::<FMA>(mh, g, a[0][l]);
        a[1][l] += mh;
        a[2][l] += mg;
    }
    // Two loops per chunk: the terms, then the lane sums (one loop doing both stayed scalar
    // with the focal factor).
    let mut h = [0.0f32; POINTWISE_CHUNK];
    for start in (0..len).step_by(POINTWISE_CHUNK) {
        let n = POINTWISE_CHUNK.min(len - start);
        let span = start..start + n;
        softmax_terms::<FOCAL, FMA>(
            &x[span.clone()],
            &e[span.clone()],
            &r[span.clone()],
            &lse[span.clone()],
            gamma,
            &mut h,
        );
        let (t, m) = (&t[span.clone()], &m[span]);
        // `start` is a multiple of 8, so voxel `start + j` adds to lane `j % 8`.
        let full = n - n % LANES;
        #[allow(unused_mut)]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if FMA {
            let mut rows = [a[0], a[1], a[2], [0.0; LANES]];
            // SAFETY: `FMA` is true only in code compiled for AVX2 + FMA and run after checking
            // the CPU has them (`run_block_avx2`).
            done = unsafe {
                avx2::pointwise_sums::<LAB, MASK, false>(&h[..n], &[], t, class, m, &mut rows)
            };
            a.copy_from_slice(&rows[..3]);
        }
        for j0 in (done..full).step_by(LANES) {
            for l in 0..LANES {
                let j = j0 + l;
                let w = if MASK { m[j] } else { 1.0 };
                add::<FMA>(&mut a, l, h[j], target_at::<LAB>(t[j], class), w);
            }
        }
        for j in full..n {
            let w = if MASK { m[j] } else { 1.0 };
            add::<FMA>(&mut a, j - full, h[j], target_at::<LAB>(t[j], class), w);
        }
    }
    acc[..3].copy_from_slice(&a);
}

/// Sigmoid pointwise sums of one class over a run of logits `x`; adds to `acc[0..4]`.
#[inline(always)]
fn sigmoid_pointwise_sums<const LAB: bool, const MASK: bool, const FOCAL: bool, const FMA: bool>(
    x: &[f32],
    t: &[f32],
    class: f32,
    m: &[f32],
    gamma: f32,
    acc: &mut [[f32; LANES]],
) {
    let len = x.len();
    let (t, m) = (&t[..len], &m[..len]);
    let mut a: [[f32; LANES]; 4] = [acc[0], acc[1], acc[2], acc[3]];
    // The term `h` and `softplus(x) - x` of one voxel (a function, not a closure: see
    // `softmax_pointwise_sums`), in a plain loop per chunk; then the lane sums, voxel `i` adding
    // to lane `i % 8`, run by run of 8 so that the lanes vectorise.
    #[inline(always)]
    fn term<const LAB: bool, const FOCAL: bool, const FMA: bool>(
        x: f32,
        t: f32,
        class: f32,
        gamma: f32,
    ) -> (f32, f32) {
        let (sp, _) = softplus::<FMA>(x);
        let g = target_at::<LAB>(t, class);
        let bce = madd::<FMA>(-x, g, sp);
        let h = if FOCAL {
            let (spz, _) = softplus::<FMA>(x * (2.0 * g - 1.0));
            exp_poly::<FMA>(-gamma * spz) * bce
        } else {
            bce
        };
        (h, sp - x)
    }
    #[inline(always)]
    fn add<const FMA: bool>(a: &mut [[f32; LANES]; 4], l: usize, h: f32, d: f32, g: f32, w: f32) {
        let (mh, mg) = (w * h, w * g);
        a[0][l] = madd::<FMA>(mh, g, a[0][l]);
        a[1][l] += mh;
        a[2][l] += if g == 1.0 { mh } else { 0.0 };
        a[3][l] = madd::<FMA>(mg, d, a[3][l]);
    }
    let (mut h, mut d) = ([0.0f32; POINTWISE_CHUNK], [0.0f32; POINTWISE_CHUNK]);
    for start in (0..len).step_by(POINTWISE_CHUNK) {
        let n = POINTWISE_CHUNK.min(len - start);
        let (x, t, m) = (
            &x[start..start + n],
            &t[start..start + n],
            &m[start..start + n],
        );
        for j in 0..n {
            (h[j], d[j]) = term::<LAB, FOCAL, FMA>(x[j], t[j], class, gamma);
        }
        // `start` is a multiple of 8, so voxel `start + j` adds to lane `j % 8`.
        let full = n - n % LANES;
        #[allow(unused_mut)]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if FMA {
            // SAFETY: as in `softmax_pointwise_sums`.
            done = unsafe {
                avx2::pointwise_sums::<LAB, MASK, true>(&h[..n], &d[..n], t, class, m, &mut a)
            };
        }
        for j0 in (done..full).step_by(LANES) {
            for l in 0..LANES {
                let j = j0 + l;
                let w = if MASK { m[j] } else { 1.0 };
                add::<FMA>(&mut a, l, h[j], d[j], target_at::<LAB>(t[j], class), w);
            }
        }
        for j in full..n {
            let w = if MASK { m[j] } else { 1.0 };
            add::<FMA>(
                &mut a,
                j - full,
                h[j],
                d[j],
                target_at::<LAB>(t[j], class),
                w,
            );
        }
    }
    acc[..4].copy_from_slice(&a);
}

/// Softmax pointwise `q` of one voxel and class from its probability (see the section's notes).
#[inline(always)]
fn softmax_pointwise_q<
    const LAB: bool,
    const MASK: bool,
    const FOCAL: bool,
    const SQUARE: bool,
    const FMA: bool,
>(
    p: f32,
    t: f32,
    class: f32,
    w: f32,
    [a4, a5, ..]: [f32; 4],
    gamma: f32,
) -> f32 {
    let g = target_at::<LAB>(t, class);
    let c = if MASK {
        w * madd::<FMA>(a4, g, a5)
    } else {
        madd::<FMA>(a4, g, a5)
    };
    if FOCAL {
        let (fac, base) = focal_factor::<true, SQUARE, FMA>(p, gamma);
        let nlp = -ln_poly::<FMA>(p.max(f32::MIN_POSITIVE));
        -c * fac * (1.0 + gamma * p * nlp / base)
    } else {
        -c
    }
}

/// Sigmoid pointwise gradient of one voxel and class from its logit `x` and sigmoid `s`.
#[inline(always)]
fn sigmoid_pointwise_dx<const LAB: bool, const MASK: bool, const FOCAL: bool, const FMA: bool>(
    x: f32,
    s: f32,
    t: f32,
    class: f32,
    w: f32,
    [a4, a5, a6, a7]: [f32; 4],
    gamma: f32,
) -> f32 {
    let g = target_at::<LAB>(t, class);
    let coef = madd::<FMA>(a4, g, a5) + if g == 1.0 { a6 } else { 0.0 };
    let dh = if FOCAL {
        let z = 2.0 * g - 1.0;
        let (spz, ez) = softplus::<FMA>(x * z);
        let (sp, _) = softplus::<FMA>(x);
        let bce = madd::<FMA>(-x, g, sp);
        exp_poly::<FMA>(-gamma * spz) * ((s - g) - gamma * z * sigmoid_from(x * z, ez) * bce)
    } else {
        s - g
    };
    let v = madd::<FMA>(coef, dh, a7 * g * (s - 1.0));
    if MASK { w * v } else { v }
}

/// Softmax backward with the pointwise term, first pass: writes `q` of one class over a tile
/// into `q` (kept for the second pass: its `ln` and `exp` are computed once) and adds it to `dot`.
#[inline(always)]
fn class_pointwise_q<const LAB: bool, const MASK: bool, const FOCAL: bool, const FMA: bool>(
    p: &[f32],
    t: &[f32],
    class: f32,
    m: &[f32],
    pw: [f32; 4],
    gamma: f32,
    q: &mut [f32],
    dot: &mut [f32],
) {
    let len = p.len();
    let (t, m, q, dot) = (&t[..len], &m[..len], &mut q[..len], &mut dot[..len]);
    // `gamma = 2` decided once, outside the loop that vectorises.
    if FOCAL && gamma == 2.0 {
        for i in 0..len {
            q[i] = softmax_pointwise_q::<LAB, MASK, true, true, FMA>(
                p[i], t[i], class, m[i], pw, gamma,
            );
        }
    } else {
        for i in 0..len {
            q[i] = softmax_pointwise_q::<LAB, MASK, FOCAL, false, FMA>(
                p[i], t[i], class, m[i], pw, gamma,
            );
        }
    }
    for i in 0..len {
        dot[i] += q[i];
    }
}

/// Softmax backward in place with the pointwise term: `p` becomes `p (u - dot) + q`, where
/// `dot` holds `sum_j p_j u_j + sum_j q_j` and `q` this class's term from the first pass.
#[inline(always)]
fn class_grad_in_place_softmax_pw<const LAB: bool, const MASK: bool>(
    p: &mut [f32],
    t: &[f32],
    class: f32,
    m: &[f32],
    coef: [f32; 3],
    q: &[f32],
    dot: &[f32],
) {
    let len = p.len();
    let (t, m, q, dot) = (&t[..len], &m[..len], &q[..len], &dot[..len]);
    for i in 0..len {
        let pi = p[i];
        let u = upstream_at::<false, MASK, false>(pi, target_at::<LAB>(t[i], class), m[i], coef);
        p[i] = pi * (u - dot[i]) + q[i];
    }
}

/// Sigmoid backward in place with the pointwise term, from the logits `x` of the same voxels.
#[inline(always)]
fn class_grad_in_place_sigmoid_pw<
    const LAB: bool,
    const SQ: bool,
    const MASK: bool,
    const DIFF: bool,
    const FOCAL: bool,
    const FMA: bool,
>(
    p: &mut [f32],
    x: &[f32],
    t: &[f32],
    class: f32,
    m: &[f32],
    coef: [f32; 3],
    pw: [f32; 4],
    gamma: f32,
) {
    let len = p.len();
    let (x, t, m) = (&x[..len], &t[..len], &m[..len]);
    for i in 0..len {
        let s = p[i];
        let u = upstream_at::<SQ, MASK, DIFF>(s, target_at::<LAB>(t[i], class), m[i], coef);
        p[i] = u * s * (1.0 - s)
            + sigmoid_pointwise_dx::<LAB, MASK, FOCAL, FMA>(x[i], s, t[i], class, m[i], pw, gamma);
    }
}

// ---------------------------------------------------------------------------------------------
// Tiles and blocks.
// ---------------------------------------------------------------------------------------------

/// Per-thread scratch space: the exponentials (then probabilities) of a tile, and per-voxel rows.
struct Scratch {
    /// The channels the per-class buffers have room for.
    channels: usize,
    e: Vec<f32>,
    max: Vec<f32>,
    r: Vec<f32>,
    dot: Vec<f32>,
    labels: Vec<f32>,
    ones: Vec<f32>,
    /// `ln sum_c exp(x_c)` per voxel of a softmax tile (for the pointwise term).
    lse: Vec<f32>,
    /// With a pointwise term without the background ([`Pointwise::without_background`]), per
    /// voxel of a tile: `z = x_0 - ln sum_{c >= 1} exp(x_c)`, `1 - p_0 = s(-z)`, `p_0 = s(z)`
    /// (or, in the forward, `(1 - p_0) / sum_{c >= 1} exp(x_c - max)`), and the second softmax's
    /// `sum_j q_j` in the backward.
    z: Vec<f32>,
    rest: Vec<f32>,
    p0: Vec<f32>,
    dot_fg: Vec<f32>,
    /// One class's probabilities over a tile (backward without the background).
    probs: Vec<f32>,
    /// The pointwise term `h` of one class over a softmax tile.
    h: Vec<f32>,
    /// The pointwise term's `q` of every class of a softmax tile (`C x TILE`), from the first
    /// pass of the backward to the second.
    q: Vec<f32>,
    sink: Vec<MaybeUninit<f32>>,
    /// Lane accumulators per (block of the run, class): the overlap statistics, then the
    /// pointwise term's rows.
    acc: Vec<[[f32; LANES]; ROWS_MAX]>,
}

impl Scratch {
    fn new(d: Dims) -> Self {
        // A tile is a whole run of blocks for the element-wise activations (see `Block::tiles`).
        let row = || vec![0.0; RUN * BLOCK];
        Self {
            channels: d.c,
            e: vec![0.0; d.c * TILE],
            max: row(),
            r: row(),
            dot: row(),
            labels: row(),
            ones: vec![1.0; RUN * BLOCK],
            lse: row(),
            z: row(),
            rest: row(),
            p0: row(),
            dot_fg: row(),
            probs: row(),
            h: vec![0.0; TILE],
            q: vec![0.0; d.c * TILE],
            sink: vec![MaybeUninit::uninit(); BLOCK],
            acc: vec![[[0.0; LANES]; ROWS_MAX]; RUN * d.c],
        }
    }
}

thread_local! {
    /// This thread's scratch space, kept from call to call: a fresh one per rayon job was a
    /// few hundred KiB allocated and zeroed dozens of times per call.
    static SCRATCH: std::cell::RefCell<Option<Scratch>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's scratch space, made (again) when it has fewer than `d.c` channels.
/// Nothing is carried from one task to the next: every task writes what it reads first.
fn with_scratch<R>(d: Dims, f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| {
        // A task never starts another on this thread while it holds the scratch (no rayon call
        // inside a block), so the borrow is never taken twice.
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|s| s.channels < d.c) {
            *slot = Some(Scratch::new(d));
        }
        f(slot.as_mut().expect("made above"))
    })
}

/// Softmax of one tile (`len` voxels from voxel `v0` of sample `b`): `e[c * TILE + i] = exp(x -
/// max)` and `r[i] = 1 / sum_c e`.
#[inline(always)]
pub(crate) fn softmax_tile<const FMA: bool>(
    x: &[f32],
    d: Dims,
    b: usize,
    v0: usize,
    len: usize,
    e: &mut [f32],
    max: &mut [f32],
    r: &mut [f32],
) {
    let row = |c: usize| &x[(b * d.c + c) * d.n + v0..][..len];
    let (max, r) = (&mut max[..len], &mut r[..len]);
    max.copy_from_slice(row(0));
    for c in 1..d.c {
        for (m, &v) in max.iter_mut().zip(row(c)) {
            *m = m.max(v);
        }
    }
    r.fill(0.0);
    for c in 0..d.c {
        let e = &mut e[c * TILE..c * TILE + len];
        for (((e, sum), &v), &m) in e.iter_mut().zip(r.iter_mut()).zip(row(c)).zip(max.iter()) {
            *e = exp_poly::<FMA>(v - m);
            *sum += *e;
        }
    }
    for v in r.iter_mut() {
        *v = 1.0 / *v;
    }
}

/// `ln sum_c exp(x_c)` of a softmax tile from `r = 1 / sum_c exp(x_c - max)` and `max` (for the
/// pointwise term).
#[inline(always)]
fn tile_lse<const FMA: bool>(r: &[f32], max: &[f32], lse: &mut [f32]) {
    for ((l, &r), &m) in lse.iter_mut().zip(r).zip(max) {
        *l = -ln_poly::<FMA>(r) + m;
    }
}

/// The split of one voxel's softmax into the background and the rest, from
/// `z = x_0 - ln sum_{c >= 1} exp(x_c)`: `(p_0, 1 - p_0) = (s(z), s(-z))`, both to full relative
/// precision (one `exp`).
#[inline(always)]
fn background_split<const FMA: bool>(z: f32) -> (f32, f32) {
    let e = exp_poly::<FMA>(-z.abs());
    let big = 1.0 / (1.0 + e);
    let small = e * big;
    if z >= 0.0 { (big, small) } else { (small, big) }
}

/// The softmax of one tile for a pointwise term without the background ([`Pointwise`]): the
/// second softmax, over channels `1..C`, is computed directly (its own maximum, so that it stays
/// exact when channel 0 dominates by more than the float range) and the first derived from it:
/// `p_c = q_c (1 - p_0)` for `c >= 1` and `p_0 = s(z)`, `z = x_0 - ln sum_{c >= 1} exp(x_c)`.
/// Writes `e[c * TILE + i] = exp(x_c - max)` for `c >= 1` and `e[i] = p_0`; `max`, `r = 1 / sum`
/// and `lse = ln sum exp(x_c)` of channels `1..C`; `z`; and `rest = (1 - p_0) r`, so that `e_c rest` is
/// `p_c`.
#[inline(always)]
fn softmax_tile_without_background<const FMA: bool>(
    x: &[f32],
    d: Dims,
    b: usize,
    v0: usize,
    len: usize,
    s: &mut Scratch,
) {
    let row = |c: usize| &x[(b * d.c + c) * d.n + v0..][..len];
    let (max, r, lse) = (&mut s.max[..len], &mut s.r[..len], &mut s.lse[..len]);
    max.copy_from_slice(row(1));
    for c in 2..d.c {
        for (m, &v) in max.iter_mut().zip(row(c)) {
            *m = m.max(v);
        }
    }
    r.fill(0.0);
    for c in 1..d.c {
        let e = &mut s.e[c * TILE..c * TILE + len];
        for (((e, sum), &v), &m) in e.iter_mut().zip(r.iter_mut()).zip(row(c)).zip(max.iter()) {
            *e = exp_poly::<FMA>(v - m);
            *sum += *e;
        }
    }
    let (x0, z, rest) = (row(0), &mut s.z[..len], &mut s.rest[..len]);
    let p0 = &mut s.e[..len];
    // Short loops, each of which vectorises (one loop doing all of it stayed scalar).
    for i in 0..len {
        // The sum is at least 1 (the maximum's own term).
        lse[i] = ln_poly::<FMA>(r[i]) + max[i];
    }
    for i in 0..len {
        r[i] = 1.0 / r[i];
        z[i] = x0[i] - lse[i];
    }
    for i in 0..len {
        let (p, q) = background_split::<FMA>(z[i]);
        p0[i] = p;
        rest[i] = q * r[i];
    }
}

/// The target values of channel `c` over one tile (`t`, compared with `class` when `LAB`), given
/// the tile's labels as floats in `labels`.
#[inline(always)]
fn tile_target<'a, L: Label, const LAB: bool>(
    t: TargetRef<'a, L>,
    d: Dims,
    b: usize,
    c: usize,
    v0: usize,
    len: usize,
    labels: &'a [f32],
) -> &'a [f32] {
    match t {
        TargetRef::Dense(v) if !LAB => &v[(b * d.c + c) * d.n + v0..][..len],
        _ => &labels[..len],
    }
}

/// Converts the labels of one tile to floats (nothing for a dense target).
#[inline(always)]
pub(crate) fn tile_labels<L: Label>(
    t: TargetRef<'_, L>,
    d: Dims,
    b: usize,
    v0: usize,
    len: usize,
    out: &mut [f32],
) {
    if let TargetRef::Labels(l) = t {
        for (o, &v) in out[..len].iter_mut().zip(&l[b * d.n + v0..][..len]) {
            *o = v.to_f32();
        }
    }
}

/// One task: a run of blocks of one sample (one block for the softmax), specialised at run time
/// into the const-parameter variants.
struct Block<'a, L> {
    x: &'a [f32],
    t: TargetRef<'a, L>,
    mask: Option<&'a [f32]>,
    grad: &'a [f32],
    d: Dims,
    spec: Spec,
    b: usize,
    /// The first block of the run.
    blk: usize,
    /// The number of blocks of the run.
    nblk: usize,
    /// The pointwise term, when its sums are wanted (see the pointwise section).
    pw: Option<Pointwise>,
}

/// Blocks per task for the element-wise activations: each class row is then read and written in
/// runs of `RUN * BLOCK` voxels (16 KiB), which the CPU's prefetchers follow better than runs of
/// one 4 KiB block (forward and backward of the sigmoid at 3 x 9 x 64^3 each about 1.1x faster in
/// a prototype). The softmax takes one block per task: it reads every class of a tile at once.
const RUN: usize = 4;

impl<L: Label> Block<'_, L> {
    /// The tasks of a problem: `(sample, first block, blocks)` in sample and block order.
    fn tasks(d: Dims, spec: &Spec) -> Vec<(usize, usize, usize)> {
        let (blocks, run) = (
            d.blocks(),
            if spec.act == Activation::Softmax {
                1
            } else {
                RUN
            },
        );
        (0..d.b)
            .flat_map(|b| {
                (0..blocks)
                    .step_by(run)
                    .map(move |blk| (b, blk, run.min(blocks - blk)))
            })
            .collect()
    }

    /// The run's voxels, `(start, length)`.
    fn span(&self) -> (usize, usize) {
        let n0 = self.blk * BLOCK;
        (n0, ((self.blk + self.nblk) * BLOCK).min(self.d.n) - n0)
    }

    /// Tiles of [`TILE`] voxels for the softmax, which needs every class of a voxel at once
    /// (L1-sized); the element-wise activations take the whole run as one tile.
    fn tiles<const ACT: u8>(&self) -> impl Iterator<Item = (usize, usize)> {
        let (n0, len) = self.span();
        let tile = if ACT == SOFTMAX { TILE } else { len.max(1) };
        (n0..n0 + len)
            .step_by(tile)
            .map(move |v0| (v0, tile.min(n0 + len - v0)))
    }

    /// The mask of one tile (a row of ones without a mask: the `MASK = false` loops ignore it).
    fn tile_mask<'s>(&'s self, v0: usize, len: usize, ones: &'s [f32]) -> &'s [f32] {
        match self.mask {
            Some(m) => &m[self.b * self.d.n + v0..][..len],
            None => &ones[..len],
        }
    }

    /// `[dI, dP, dE]` of channel `c` (zero for the background when it is not a class).
    fn coef(&self, c: usize) -> [f32; 3] {
        let (d, first) = (self.d, self.d.first(&self.spec));
        if c < first {
            return [0.0; 3];
        }
        let (k, j) = (d.k(&self.spec), c - first);
        let at = |q: usize| self.grad[(q * d.b + self.b) * k + j];
        [at(0), at(1), if self.spec.difference { at(3) } else { 0.0 }]
    }

    /// The sums `[4][K]` in f64 of each block of the run, one after the other (lanes added in
    /// f64 at the end of each block).
    #[inline(always)]
    fn forward<
        const ACT: u8,
        const LAB: bool,
        const SQ: bool,
        const MASK: bool,
        const DIFF: bool,
        const PW: bool,
        const FOCAL: bool,
        const FMA: bool,
    >(
        &self,
        s: &mut Scratch,
        save: Option<DxPtr>,
    ) -> Vec<f64> {
        let (d, b, x) = (self.d, self.b, self.x);
        let k = d.k(&self.spec);
        s.acc[..self.nblk * k].fill([[0.0; LANES]; ROWS_MAX]);
        if ACT == SOFTMAX {
            // Tile by tile, every class of a tile while its softmax is in the L1 cache.
            for (v0, len) in self.tiles::<ACT>() {
                tile_labels(self.t, d, b, v0, len, &mut s.labels);
                if PW && self.pw_without_background() {
                    self.forward_tile_without_background::<LAB, MASK, FOCAL, FMA>(s, save, v0, len);
                    continue;
                }
                softmax_tile::<FMA>(x, d, b, v0, len, &mut s.e, &mut s.max, &mut s.r);
                if PW {
                    tile_lse::<FMA>(&s.r[..len], &s.max[..len], &mut s.lse[..len]);
                }
                let m = self.tile_mask(v0, len, &s.ones);
                for c in 0..d.c {
                    let t = tile_target::<L, LAB>(self.t, d, b, c, v0, len, &s.labels);
                    let e = &s.e[c * TILE..][..len];
                    // The pointwise term covers every class (`include_background` is checked):
                    // with AVX2, the full runs of 8 in one loop with the statistics.
                    let done = if PW {
                        let xs = &x[(b * d.c + c) * d.n + v0..][..len];
                        self.softmax_sums_pointwise::<LAB, MASK, FOCAL, false, FMA>(
                            (e, &s.r[..len], &s.r[..len], &s.lse[..len]),
                            &mut s.h,
                            &mut s.acc[c],
                            &mut s.sink,
                            save,
                            c,
                            v0,
                            xs,
                            t,
                            m,
                        )
                    } else {
                        0
                    };
                    self.class_pass::<ACT, LAB, SQ, MASK, DIFF, FMA>(
                        save,
                        &mut s.acc,
                        &mut s.sink,
                        c,
                        v0 + done,
                        &e[done..],
                        &s.r[done..len],
                        &t[done..],
                        &m[done..],
                    );
                    if PW {
                        let xs = &x[(b * d.c + c) * d.n + v0..][done..len];
                        let (r, lse) = (&s.r[done..len], &s.lse[done..len]);
                        softmax_pointwise_sums::<LAB, MASK, FOCAL, FMA>(
                            xs,
                            &e[done..],
                            r,
                            lse,
                            &t[done..],
                            c as f32,
                            &m[done..],
                            self.gamma(),
                            &mut s.acc[c][4..],
                        );
                    }
                }
            }
        } else {
            // Class by class over the whole run, block by block for the sums.
            let (n0, len) = self.span();
            tile_labels(self.t, d, b, n0, len, &mut s.labels);
            let m = self.tile_mask(n0, len, &s.ones);
            for c in 0..d.c {
                let t = tile_target::<L, LAB>(self.t, d, b, c, n0, len, &s.labels);
                let xs = &x[(b * d.c + c) * d.n + n0..][..len];
                for (i, o) in (0..len).step_by(BLOCK).enumerate() {
                    let l = BLOCK.min(len - o);
                    self.class_pass::<ACT, LAB, SQ, MASK, DIFF, FMA>(
                        save,
                        &mut s.acc[i * k..],
                        &mut s.sink,
                        c,
                        n0 + o,
                        &xs[o..o + l],
                        &s.ones[..l],
                        &t[o..o + l],
                        &m[o..o + l],
                    );
                    if PW {
                        let acc = &mut s.acc[i * k + c][4..];
                        sigmoid_pointwise_sums::<LAB, MASK, FOCAL, FMA>(
                            &xs[o..o + l],
                            &t[o..o + l],
                            c as f32,
                            &m[o..o + l],
                            self.gamma(),
                            acc,
                        );
                    }
                }
            }
        }
        if save.is_some() {
            store_fence();
        }
        let rows = rows(PW);
        let mut out = vec![0.0f64; self.nblk * rows * k];
        for (i, out) in out.chunks_exact_mut(rows * k).enumerate() {
            for (j, acc) in s.acc[i * k..(i + 1) * k].iter().enumerate() {
                for q in 0..rows {
                    out[q * k + j] = acc[q].iter().map(|&v| v as f64).sum();
                }
            }
        }
        out
    }

    /// The statistics and pointwise sums of softmax class `c` over the full runs of 8 voxels of
    /// the tile from `v0` in one AVX2 loop ([`avx2::softmax_sums_pointwise`]), the activations
    /// saved with `save`; returns how many voxels it took (0 without AVX2 + FMA: the caller does
    /// the rest apart).
    #[inline(always)]
    fn softmax_sums_pointwise<
        const LAB: bool,
        const MASK: bool,
        const FOCAL: bool,
        const SPLIT: bool,
        const FMA: bool,
    >(
        &self,
        (e, r, rs, lse): (&[f32], &[f32], &[f32], &[f32]),
        h: &mut [f32],
        acc: &mut [[f32; LANES]; ROWS_MAX],
        sink: &mut [MaybeUninit<f32>],
        save: Option<DxPtr>,
        c: usize,
        v0: usize,
        xs: &[f32],
        t: &[f32],
        m: &[f32],
    ) -> usize {
        #[cfg(target_arch = "x86_64")]
        if FMA {
            let len = xs.len();
            let full = len - len % LANES;
            let (e, r, rs) = (&e[..full], &r[..full], &rs[..full]);
            softmax_terms::<FOCAL, FMA>(&xs[..full], e, rs, &lse[..full], self.gamma(), h);
            let h = &h[..full];
            let (t, m) = (&t[..full], &m[..full]);
            // SAFETY: `FMA` is true only in code compiled for AVX2 + FMA and run after checking
            // the CPU has them (`run_block_avx2`); this task alone writes row (b, c) over these
            // voxels; non-temporal stores only where the row is 16-byte aligned.
            return unsafe {
                match save {
                    Some(save) => {
                        let out = save.row(self.b, c, v0, full, self.d);
                        if aligned16(out) {
                            avx2::softmax_sums_pointwise::<LAB, MASK, true, true, SPLIT>(
                                e, r, rs, h, t, c as f32, m, acc, out,
                            )
                        } else {
                            avx2::softmax_sums_pointwise::<LAB, MASK, true, false, SPLIT>(
                                e, r, rs, h, t, c as f32, m, acc, out,
                            )
                        }
                    }
                    None => avx2::softmax_sums_pointwise::<LAB, MASK, false, false, SPLIT>(
                        e, r, rs, h, t, c as f32, m, acc, sink,
                    ),
                }
            };
        }
        let _ = (e, r, rs, lse, h, acc, sink, save, c, v0, xs, t, m);
        0
    }

    /// One softmax tile of the forward with a pointwise term without the background: the overlap
    /// statistics of every class from the softmax over every channel, the pointwise sums of
    /// channels `1..C` from the softmax over those; with `save`, what the backward starts from:
    /// `z` (see [`softmax_tile_without_background`]) in channel 0's row, `q_c` in the others.
    #[inline(always)]
    fn forward_tile_without_background<
        const LAB: bool,
        const MASK: bool,
        const FOCAL: bool,
        const FMA: bool,
    >(
        &self,
        s: &mut Scratch,
        save: Option<DxPtr>,
        v0: usize,
        len: usize,
    ) {
        let (d, b, x) = (self.d, self.b, self.x);
        softmax_tile_without_background::<FMA>(x, d, b, v0, len, s);
        let m = self.tile_mask(v0, len, &s.ones);
        for c in 0..d.c {
            let t = tile_target::<L, LAB>(self.t, d, b, c, v0, len, &s.labels);
            let e = &s.e[c * TILE..][..len];
            // Classes 1..C with AVX2: the full runs of 8 in one loop (statistics of `e rest`,
            // pointwise sums of `q = e r`, `q` saved).
            let done = if c > 0 {
                let xs = &x[(b * d.c + c) * d.n + v0..][..len];
                self.softmax_sums_pointwise::<LAB, MASK, FOCAL, true, FMA>(
                    (e, &s.rest[..len], &s.r[..len], &s.lse[..len]),
                    &mut s.h,
                    &mut s.acc[c],
                    &mut s.sink,
                    save,
                    c,
                    v0,
                    xs,
                    t,
                    m,
                )
            } else {
                0
            };
            let span = done..len;
            let r = if c == 0 {
                &s.ones[span.clone()]
            } else {
                &s.rest[span.clone()]
            };
            self.class_pass::<0, LAB, false, MASK, false, FMA>(
                None,
                &mut s.acc,
                &mut s.sink,
                c,
                v0 + done,
                &e[span.clone()],
                r,
                &t[span.clone()],
                &m[span.clone()],
            );
            if let Some(save) = save {
                // SAFETY: this task alone writes row (b, c) over these voxels.
                let out = unsafe { save.row(b, c, v0 + done, len - done, d) };
                let (src, r) = if c == 0 {
                    (&s.z[span.clone()], &s.ones[span.clone()])
                } else {
                    (&e[span.clone()], &s.r[span.clone()])
                };
                class_activations::<0, FMA, true>(src, r, out);
            }
            if c > 0 {
                let xs = &x[(b * d.c + c) * d.n + v0..][span.clone()];
                let (r, lse) = (&s.r[span.clone()], &s.lse[span.clone()]);
                softmax_pointwise_sums::<LAB, MASK, FOCAL, FMA>(
                    xs,
                    &e[span.clone()],
                    r,
                    lse,
                    &t[span.clone()],
                    c as f32,
                    &m[span],
                    self.gamma(),
                    &mut s.acc[c][4..],
                );
            }
        }
    }

    /// One class of the forward over the voxels from `v0` (as many as `src` holds) into the
    /// accumulators `acc[K]` of one block; with `save`, the activations written too.
    #[inline(always)]
    fn class_pass<
        const ACT: u8,
        const LAB: bool,
        const SQ: bool,
        const MASK: bool,
        const DIFF: bool,
        const FMA: bool,
    >(
        &self,
        save: Option<DxPtr>,
        acc: &mut [[[f32; LANES]; ROWS_MAX]],
        sink: &mut [MaybeUninit<f32>],
        c: usize,
        v0: usize,
        src: &[f32],
        r: &[f32],
        t: &[f32],
        m: &[f32],
    ) {
        let j = c.checked_sub(self.d.first(&self.spec));
        fn stats(acc: &mut [[f32; LANES]; ROWS_MAX]) -> &mut [[f32; LANES]; 4] {
            (&mut acc[..4]).try_into().expect("4 rows")
        }
        match save {
            Some(save) => {
                // SAFETY: this task alone writes row (b, c) over these voxels.
                let out = unsafe { save.row(self.b, c, v0, src.len(), self.d) };
                match j {
                    Some(j) => class_sums::<ACT, LAB, SQ, MASK, DIFF, FMA, true>(
                        src,
                        r,
                        t,
                        c as f32,
                        m,
                        stats(&mut acc[j]),
                        out,
                    ),
                    None => class_activations::<ACT, FMA, true>(src, r, out),
                }
            }
            None => {
                if let Some(j) = j {
                    class_sums::<ACT, LAB, SQ, MASK, DIFF, FMA, false>(
                        src,
                        r,
                        t,
                        c as f32,
                        m,
                        stats(&mut acc[j]),
                        sink,
                    );
                }
            }
        }
    }

    /// Writes the block's gradient into `dx`: tile by tile, the activations into the tile's rows
    /// of `dx` (recomputed from the logits), then [`Block::grad_tile`] over them.
    #[inline(always)]
    fn backward<
        const ACT: u8,
        const LAB: bool,
        const SQ: bool,
        const MASK: bool,
        const DIFF: bool,
        const PW: bool,
        const FOCAL: bool,
        const FMA: bool,
    >(
        &self,
        s: &mut Scratch,
        dx: DxPtr,
    ) {
        let (d, b, x) = (self.d, self.b, self.x);
        for (v0, len) in self.tiles::<ACT>() {
            if ACT == SOFTMAX && PW && self.pw_without_background() {
                // What the saving forward writes: `z` in channel 0's row, `q_c` in the others.
                softmax_tile_without_background::<FMA>(x, d, b, v0, len, s);
                for c in 0..d.c {
                    let (src, r) = if c == 0 {
                        (&s.z[..len], &s.ones[..len])
                    } else {
                        (&s.e[c * TILE..][..len], &s.r[..len])
                    };
                    // SAFETY: this task alone writes row (b, c) over voxels v0..v0 + len.
                    class_activations::<0, FMA, false>(src, r, unsafe { dx.row(b, c, v0, len, d) });
                }
                self.grad_tile::<ACT, LAB, SQ, MASK, DIFF, PW, FOCAL, FMA>(s, dx, v0, len);
                continue;
            }
            if ACT == SOFTMAX {
                softmax_tile::<FMA>(x, d, b, v0, len, &mut s.e, &mut s.max, &mut s.r);
            }
            for c in 0..d.c {
                let (src, r) = if ACT == SOFTMAX {
                    (&s.e[c * TILE..][..len], &s.r[..len])
                } else {
                    (&x[(b * d.c + c) * d.n + v0..][..len], &s.ones[..len])
                };
                // SAFETY: this task alone writes row (b, c) over voxels v0..v0 + len.
                class_activations::<ACT, FMA, false>(src, r, unsafe { dx.row(b, c, v0, len, d) });
            }
            self.grad_tile::<ACT, LAB, SQ, MASK, DIFF, PW, FOCAL, FMA>(s, dx, v0, len);
        }
    }

    /// Turns the saved activations of the block (in `p`) into the gradient, in place.
    #[inline(always)]
    fn backward_in_place<
        const ACT: u8,
        const LAB: bool,
        const SQ: bool,
        const MASK: bool,
        const DIFF: bool,
        const PW: bool,
        const FOCAL: bool,
        const FMA: bool,
    >(
        &self,
        s: &mut Scratch,
        p: DxPtr,
    ) {
        for (v0, len) in self.tiles::<ACT>() {
            self.grad_tile::<ACT, LAB, SQ, MASK, DIFF, PW, FOCAL, FMA>(s, p, v0, len);
        }
    }

    /// Turns the activations of one tile (`len` voxels from `v0`, in `p`) into the gradient;
    /// with `PW` the pointwise term's too (`FOCAL`: `gamma != 0`).
    #[inline(always)]
    fn grad_tile<
        const ACT: u8,
        const LAB: bool,
        const SQ: bool,
        const MASK: bool,
        const DIFF: bool,
        const PW: bool,
        const FOCAL: bool,
        const FMA: bool,
    >(
        &self,
        s: &mut Scratch,
        p: DxPtr,
        v0: usize,
        len: usize,
    ) {
        let (d, b) = (self.d, self.b);
        let gamma = self.gamma();
        tile_labels(self.t, d, b, v0, len, &mut s.labels);
        if ACT == SOFTMAX && PW && self.pw_without_background() {
            self.grad_tile_without_background::<LAB, MASK, FOCAL, FMA>(s, p, v0, len);
            return;
        }
        let m = self.tile_mask(v0, len, &s.ones);
        if ACT == SOFTMAX {
            s.dot[..len].fill(0.0);
            for c in 0..d.c {
                let t = tile_target::<L, LAB>(self.t, d, b, c, v0, len, &s.labels);
                // SAFETY: this task alone reads and writes row (b, c) over voxels v0..v0 + len,
                // which holds the activations written before.
                let row = unsafe { p.row_init(b, c, v0, len, d) };
                class_probs_dot::<LAB, SQ, MASK, DIFF>(
                    row,
                    t,
                    c as f32,
                    m,
                    self.coef(c),
                    &mut s.dot,
                );
                if PW {
                    class_pointwise_q::<LAB, MASK, FOCAL, FMA>(
                        row,
                        t,
                        c as f32,
                        m,
                        self.pw_coef(c),
                        gamma,
                        &mut s.q[c * TILE..],
                        &mut s.dot,
                    );
                }
            }
        }
        for c in 0..d.c {
            let t = tile_target::<L, LAB>(self.t, d, b, c, v0, len, &s.labels);
            // SAFETY: as above.
            let row = unsafe { p.row_init(b, c, v0, len, d) };
            match (PW, ACT) {
                (true, 0) => class_grad_in_place_softmax_pw::<LAB, MASK>(
                    row,
                    t,
                    c as f32,
                    m,
                    self.coef(c),
                    &s.q[c * TILE..],
                    &s.dot,
                ),
                (true, 1) => {
                    let x = &self.x[(b * d.c + c) * d.n + v0..][..len];
                    class_grad_in_place_sigmoid_pw::<LAB, SQ, MASK, DIFF, FOCAL, FMA>(
                        row,
                        x,
                        t,
                        c as f32,
                        m,
                        self.coef(c),
                        self.pw_coef(c),
                        gamma,
                    )
                }
                _ => class_grad_in_place::<ACT, LAB, SQ, MASK, DIFF>(
                    row,
                    t,
                    c as f32,
                    m,
                    self.coef(c),
                    &s.dot,
                ),
            }
        }
    }

    /// [`Block::grad_tile`] for a softmax tile with a pointwise term without the background, from
    /// `z` in channel 0's row and `q_c` in the others (the tile's labels already converted):
    ///
    /// ```text
    /// dx_0 = p_0 (u_0 - sum_j p_j u_j)
    /// dx_c = p_c (u_c - sum_j p_j u_j) + Q_c - q_c sum_{j >= 1} Q_j     (c >= 1, p_c = q_c (1 - p_0))
    /// ```
    ///
    /// with `u` the overlap statistics' upstream and `Q` the pointwise term's (`softmax_pointwise_q`
    /// of `q`).
    #[inline(always)]
    fn grad_tile_without_background<
        const LAB: bool,
        const MASK: bool,
        const FOCAL: bool,
        const FMA: bool,
    >(
        &self,
        s: &mut Scratch,
        p: DxPtr,
        v0: usize,
        len: usize,
    ) {
        let (d, b, gamma) = (self.d, self.b, self.gamma());
        let m = self.tile_mask(v0, len, &s.ones);
        // SAFETY (every `row_init` below): this task alone reads and writes row (b, c) over
        // voxels v0..v0 + len, which holds what the forward saved.
        let z = unsafe { p.row_init(b, 0, v0, len, d) };
        let (p0, rest) = (&mut s.p0[..len], &mut s.rest[..len]);
        for i in 0..len {
            (p0[i], rest[i]) = background_split::<FMA>(z[i]);
        }
        let (dot, dot_fg) = (&mut s.dot[..len], &mut s.dot_fg[..len]);
        dot.fill(0.0);
        dot_fg.fill(0.0);
        let t0 = tile_target::<L, LAB>(self.t, d, b, 0, v0, len, &s.labels);
        class_probs_dot::<LAB, false, MASK, false>(p0, t0, 0.0, m, self.coef(0), dot);
        for c in 1..d.c {
            let t = tile_target::<L, LAB>(self.t, d, b, c, v0, len, &s.labels);
            let q = unsafe { p.row_init(b, c, v0, len, d) };
            let probs = &mut s.probs[..len];
            for i in 0..len {
                probs[i] = q[i] * rest[i];
            }
            class_probs_dot::<LAB, false, MASK, false>(probs, t, c as f32, m, self.coef(c), dot);
            class_pointwise_q::<LAB, MASK, FOCAL, FMA>(
                q,
                t,
                c as f32,
                m,
                self.pw_coef(c),
                gamma,
                &mut s.q[c * TILE..],
                dot_fg,
            );
        }
        for c in 1..d.c {
            let t = tile_target::<L, LAB>(self.t, d, b, c, v0, len, &s.labels);
            let q = unsafe { p.row_init(b, c, v0, len, d) };
            let (coef, big_q) = (self.coef(c), &s.q[c * TILE..][..len]);
            for i in 0..len {
                let (qi, pi) = (q[i], q[i] * rest[i]);
                let g = target_at::<LAB>(t[i], c as f32);
                let u = upstream_at::<false, MASK, false>(pi, g, m[i], coef);
                q[i] = pi * (u - dot[i]) + big_q[i] - qi * dot_fg[i];
            }
        }
        let out = unsafe { p.row_init(b, 0, v0, len, d) };
        out.copy_from_slice(p0);
        class_grad_in_place::<0, LAB, false, MASK, false>(out, t0, 0.0, m, self.coef(0), dot);
    }

    /// The pointwise term's `gamma` (0 without the term).
    fn gamma(&self) -> f32 {
        self.pw.map_or(0.0, |p| p.gamma)
    }

    /// Whether the pointwise term's softmax leaves the background out (see [`Pointwise`]).
    fn pw_without_background(&self) -> bool {
        self.pw.is_some_and(|p| p.without_background)
    }

    /// The gradients `[a4, a5, a6, a7]` of the pointwise rows of channel `c` (every channel is a
    /// class when the pointwise term is on).
    fn pw_coef(&self, c: usize) -> [f32; 4] {
        let (d, k) = (self.d, self.d.k(&self.spec));
        std::array::from_fn(|q| self.grad[((4 + q) * d.b + self.b) * k + c])
    }
}

/// A raw pointer to the gradient output; blocks write disjoint ranges.
#[derive(Clone, Copy)]
pub(crate) struct DxPtr(pub(crate) *mut MaybeUninit<f32>);
unsafe impl Send for DxPtr {}
unsafe impl Sync for DxPtr {}

impl DxPtr {
    /// Row `(b, c)` of the output over voxels `v0..v0 + len`.
    ///
    /// # Safety
    /// No other live reference may cover the same elements; the output has `B * C * N` elements.
    #[inline(always)]
    pub(crate) unsafe fn row<'a>(
        self,
        b: usize,
        c: usize,
        v0: usize,
        len: usize,
        d: Dims,
    ) -> &'a mut [MaybeUninit<f32>] {
        debug_assert!(v0 + len <= d.n && b < d.b && c < d.c);
        unsafe { std::slice::from_raw_parts_mut(self.0.add((b * d.c + c) * d.n + v0), len) }
    }

    /// [`row`](DxPtr::row) of an initialised buffer.
    ///
    /// # Safety
    /// As for `row`, and the elements are initialised.
    #[inline(always)]
    pub(crate) unsafe fn row_init<'a>(
        self,
        b: usize,
        c: usize,
        v0: usize,
        len: usize,
        d: Dims,
    ) -> &'a mut [f32] {
        // SAFETY: MaybeUninit<f32> and f32 have the same layout; the caller guarantees the rest.
        unsafe { &mut *(self.row(b, c, v0, len, d) as *mut [MaybeUninit<f32>] as *mut [f32]) }
    }
}

/// What a task computes: its sums, or its gradient.
#[derive(Clone, Copy)]
pub(crate) enum Work {
    /// The sums, and the probabilities written to the buffer when given.
    Forward(Option<DxPtr>),
    /// The gradient, recomputing the activation from the logits.
    Backward(DxPtr),
    /// The gradient, in place over the saved probabilities.
    BackwardInPlace(DxPtr),
}

/// Runs one block of work with the const parameters matching its options. The `if`s select one
/// of the 80 variants (activation 3 x label map 2 x squared 2 x mask 2 x difference 2, and the
/// pointwise term on or off for the softmax and the sigmoid).
#[inline(always)]
fn run_block<L: Label, const FMA: bool>(
    blk: &Block<'_, L>,
    s: &mut Scratch,
    work: Work,
) -> Vec<f64> {
    #[inline(always)]
    fn leaf<
        L: Label,
        const ACT: u8,
        const LAB: bool,
        const SQ: bool,
        const MASK: bool,
        const DIFF: bool,
        const PW: bool,
        const FOCAL: bool,
        const FMA: bool,
    >(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        match work {
            Work::Forward(save) => blk.forward::<ACT, LAB, SQ, MASK, DIFF, PW, FOCAL, FMA>(s, save),
            Work::BackwardInPlace(p) => {
                blk.backward_in_place::<ACT, LAB, SQ, MASK, DIFF, PW, FOCAL, FMA>(s, p);
                Vec::new()
            }
            Work::Backward(dx) => {
                blk.backward::<ACT, LAB, SQ, MASK, DIFF, PW, FOCAL, FMA>(s, dx);
                Vec::new()
            }
        }
    }
    #[inline(always)]
    fn diff<
        L: Label,
        const ACT: u8,
        const LAB: bool,
        const SQ: bool,
        const MASK: bool,
        const FMA: bool,
    >(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        if blk.spec.difference {
            leaf::<L, ACT, LAB, SQ, MASK, true, false, false, FMA>(blk, s, work)
        } else {
            leaf::<L, ACT, LAB, SQ, MASK, false, false, false, FMA>(blk, s, work)
        }
    }
    // The pointwise term (softmax or sigmoid, plain sums: checked by the entry points) takes its
    // own few variants, so that it does not multiply the others.
    #[inline(always)]
    fn pointwise<L: Label, const ACT: u8, const LAB: bool, const MASK: bool, const FMA: bool>(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        if blk.gamma() == 0.0 {
            leaf::<L, ACT, LAB, false, MASK, false, true, false, FMA>(blk, s, work)
        } else {
            leaf::<L, ACT, LAB, false, MASK, false, true, true, FMA>(blk, s, work)
        }
    }
    #[inline(always)]
    fn pointwise_mask<L: Label, const ACT: u8, const LAB: bool, const FMA: bool>(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        if blk.mask.is_some() {
            pointwise::<L, ACT, LAB, true, FMA>(blk, s, work)
        } else {
            pointwise::<L, ACT, LAB, false, FMA>(blk, s, work)
        }
    }
    #[inline(always)]
    fn pointwise_labels<L: Label, const ACT: u8, const FMA: bool>(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        if matches!(blk.t, TargetRef::Labels(_)) && blk.d.c > 1 {
            pointwise_mask::<L, ACT, true, FMA>(blk, s, work)
        } else {
            pointwise_mask::<L, ACT, false, FMA>(blk, s, work)
        }
    }
    #[inline(always)]
    fn mask<L: Label, const ACT: u8, const LAB: bool, const SQ: bool, const FMA: bool>(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        if blk.mask.is_some() {
            diff::<L, ACT, LAB, SQ, true, FMA>(blk, s, work)
        } else {
            diff::<L, ACT, LAB, SQ, false, FMA>(blk, s, work)
        }
    }
    #[inline(always)]
    fn squared<L: Label, const ACT: u8, const LAB: bool, const FMA: bool>(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        if blk.spec.squared {
            mask::<L, ACT, LAB, true, FMA>(blk, s, work)
        } else {
            mask::<L, ACT, LAB, false, FMA>(blk, s, work)
        }
    }
    #[inline(always)]
    fn labels<L: Label, const ACT: u8, const FMA: bool>(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        // A single-channel label map holds the 0/1 target itself.
        if matches!(blk.t, TargetRef::Labels(_)) && blk.d.c > 1 {
            squared::<L, ACT, true, FMA>(blk, s, work)
        } else {
            squared::<L, ACT, false, FMA>(blk, s, work)
        }
    }
    match (blk.spec.act, blk.pw.is_some()) {
        (Activation::Softmax, true) => pointwise_labels::<L, SOFTMAX, FMA>(blk, s, work),
        (Activation::Sigmoid, true) => pointwise_labels::<L, SIGMOID, FMA>(blk, s, work),
        (Activation::Softmax, false) => labels::<L, SOFTMAX, FMA>(blk, s, work),
        (Activation::Sigmoid, false) => labels::<L, SIGMOID, FMA>(blk, s, work),
        (Activation::None, _) => labels::<L, { Activation::NONE_CODE }, FMA>(blk, s, work),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_block_avx2<L: Label>(blk: &Block<'_, L>, s: &mut Scratch, work: Work) -> Vec<f64> {
    run_block::<L, true>(blk, s, work)
}

/// The instruction set a call runs with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Isa {
    /// The best the CPU has (AVX2 + FMA, detected at run time, else the baseline).
    Best,
    /// The target's baseline (SSE2 on x86-64): what runs on CPUs without AVX2 + FMA, and what
    /// the tests compare the AVX2 code with.
    #[cfg_attr(not(test), allow(dead_code))]
    Baseline,
}

impl Isa {
    /// Whether a call with this choice runs the AVX2 + FMA code: asked for (`Best`) and the CPU
    /// has both (detected at run time).
    pub(crate) fn avx2_fma(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self == Isa::Best
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }
}

/// [`run_block`] compiled for the instruction set `isa` asks for.
fn run_block_with<L: Label>(isa: Isa, blk: &Block<'_, L>, s: &mut Scratch, work: Work) -> Vec<f64> {
    #[cfg(target_arch = "x86_64")]
    if isa.avx2_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { run_block_avx2(blk, s, work) };
    }
    let _ = isa;
    run_block::<L, false>(blk, s, work)
}

/// Runs `work` on every task `(sample, first block, blocks)` in parallel, with one scratch space
/// per thread; the tasks' results (their block sums for a forward) in task order.
fn run_tasks<L: Label>(
    tasks: &[(usize, usize, usize)],
    p: &Problem<'_, L>,
    grad: &[f32],
    isa: Isa,
    work: Work,
) -> Vec<Vec<f64>> {
    let &Problem {
        x,
        t,
        mask,
        d,
        spec,
        pw,
    } = p;
    tasks
        .par_iter()
        .map(|&(b, blk, nblk)| {
            with_scratch(d, |s| {
                run_block_with(
                    isa,
                    &Block {
                        x,
                        t,
                        mask,
                        grad,
                        d,
                        spec,
                        b,
                        blk,
                        nblk,
                        pw,
                    },
                    s,
                    work,
                )
            })
        })
        .collect()
}

/// One call's inputs: the logits (or saved activations: empty for the in-place backward), the
/// target, the mask, the sizes, the options and the pointwise term's `gamma` when wanted.
#[derive(Clone, Copy)]
struct Problem<'a, L> {
    x: &'a [f32],
    t: TargetRef<'a, L>,
    mask: Option<&'a [f32]>,
    d: Dims,
    spec: Spec,
    pw: Option<Pointwise>,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The same statistics and gradient, bit for bit, on 1, 2 and 3 threads.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // Several tasks per sample for both kinds of task (one block for the softmax, runs of
        // `RUN` blocks for the sigmoid), the last one short.
        let (b, c, n) = (2usize, 5usize, 2 * RUN * BLOCK + 3 * BLOCK + 17);
        let x: Vec<f32> = (0..b * c * n)
            .map(|i| ((i * 7919) % 1000) as f32 / 97.0 - 5.0)
            .collect();
        let l: Vec<i64> = (0..b * n).map(|i| ((i * 31) % c) as i64).collect();
        let m: Vec<f32> = (0..b * n)
            .map(|i| if i % 7 == 0 { 0.0 } else { 1.0 })
            .collect();
        let d = Dims { b, c, n };
        for act in [Activation::Softmax, Activation::Sigmoid] {
            let spec = Spec {
                act,
                include_background: false,
                squared: false,
                difference: true,
            };
            let grad: Vec<f32> = (0..4 * b * (c - 1))
                .map(|i| i as f32 * 0.01 - 0.1)
                .collect();
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let (stats, mut p) =
                        forward_saving(&x, TargetRef::Labels(&l), Some(&m), d, spec);
                    backward_in_place(&mut p, TargetRef::Labels(&l), Some(&m), &grad, d, spec);
                    (
                        forward(&x, TargetRef::Labels(&l), Some(&m), d, spec),
                        stats,
                        backward(&x, TargetRef::Labels(&l), Some(&m), &grad, d, spec),
                        p,
                    )
                })
            };
            let one = run(1);
            assert_eq!(one.0, one.1, "{act:?}");
            assert_eq!(one.2, one.3, "{act:?}");
            assert_eq!(one, run(2), "{act:?}");
            assert_eq!(one, run(3), "{act:?}");
        }
    }

    /// The AVX2 + FMA code (where the CPU has it) against the baseline code, which runs the same
    /// formulas lane by lane without fused multiply-adds: every activation and option, logits up
    /// to +-1e4, a row length that leaves a tail of 8. Tolerance: 2e-6 relative for the
    /// statistics (the same sums, with products rounded once or twice), 2e-6 of the largest
    /// gradient value for the gradients.
    #[test]
    fn simd_code_matches_the_baseline_code() {
        let (b, c, n) = (2usize, 3usize, RUN * BLOCK + 2 * BLOCK + 13);
        // The offset keeps every sigmoid away from the dense target's values (0, 1/4, ..., 1)
        // by far more than rounding: at p = g the gradient of |p - g| jumps, and rounding
        // alone would pick the side.
        let x: Vec<f32> = (0..b * c * n)
            .map(|i| {
                if i % 997 == 0 {
                    if i % 2 == 0 { 1e4 } else { -1e4 }
                } else {
                    ((i * 7919) % 1013) as f32 / 61.0 - 8.013
                }
            })
            .collect();
        let l: Vec<i64> = (0..b * n).map(|i| ((i * 31 + i / 7) % c) as i64).collect();
        let dense: Vec<f32> = (0..b * c * n)
            .map(|i| ((i * 13) % 5) as f32 / 4.0)
            .collect();
        let m: Vec<f32> = (0..b * n).map(|i| ((i * 17) % 3) as f32 / 2.0).collect();
        let d = Dims { b, c, n };
        let close = |got: &[f32], want: &[f32], rel: bool, what: &str| {
            let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                let tol = if rel {
                    2e-6 * w.abs().max(1e-3)
                } else {
                    2e-6 * scale
                };
                assert!(
                    g.is_finite() && (g - w).abs() <= tol,
                    "{what}: [{i}] {g} vs baseline {w}"
                );
            }
        };
        for act in [Activation::Softmax, Activation::Sigmoid, Activation::None] {
            for f in 0..32 {
                let (include_background, squared, difference, masked, labels) =
                    (f & 1 == 0, f & 2 != 0, f & 4 != 0, f & 8 != 0, f & 16 != 0);
                let spec = Spec {
                    act,
                    include_background,
                    squared,
                    difference,
                };
                let t = if labels {
                    TargetRef::Labels(&l)
                } else {
                    TargetRef::Dense(&dense)
                };
                let mask = masked.then_some(&m[..]);
                let grad: Vec<f32> = (0..4 * b * d.k(&spec))
                    .map(|i| i as f32 * 0.013 - 0.2)
                    .collect();
                let what = format!("{spec:?} masked {masked} labels {labels}");
                let problem = Problem {
                    x: &x,
                    t,
                    mask,
                    d,
                    spec,
                    pw: None,
                };
                let stats = |isa| forward_impl(&problem, None, isa);
                close(
                    &stats(Isa::Best),
                    &stats(Isa::Baseline),
                    true,
                    &format!("{what}: statistics"),
                );
                let dx = |isa| backward_impl(&problem, &grad, isa);
                close(
                    &dx(Isa::Best),
                    &dx(Isa::Baseline),
                    false,
                    &format!("{what}: gradient"),
                );
                if act != Activation::None {
                    let saved = |isa| {
                        let mut p = vec![0.0f32; b * c * n];
                        let stats = forward_impl(&problem, Some(DxPtr(p.as_mut_ptr().cast())), isa);
                        backward_in_place_impl(&mut p, &Problem { x: &[], ..problem }, &grad, isa);
                        (stats, p)
                    };
                    let (best, base) = (saved(Isa::Best), saved(Isa::Baseline));
                    close(
                        &best.0,
                        &base.0,
                        true,
                        &format!("{what}: saving statistics"),
                    );
                    close(
                        &best.1,
                        &base.1,
                        false,
                        &format!("{what}: in-place gradient"),
                    );
                }
            }
        }
    }

    /// Every option combination, on a size whose rows are 16-byte aligned (streaming stores) and
    /// on one whose rows are not: the saving forward gives the same statistics as the plain one,
    /// the activations it saves are the activations, and the in-place backward gives the same
    /// gradient as the recomputing one, bit for bit, on 1 and 3 threads.
    #[test]
    fn saved_activations_give_the_same_results() {
        let pools: Vec<_> = [1, 3]
            .map(|n| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap()
            })
            .into();
        for (b, c, n) in [
            (2usize, 4usize, 2 * BLOCK + 40),
            (1, 3, BLOCK + 13),
            (2, 1, 301),
        ] {
            let x: Vec<f32> = (0..b * c * n)
                .map(|i| ((i * 7919) % 1013) as f32 / 61.0 - 8.0)
                .collect();
            let l: Vec<i32> = (0..b * n)
                .map(|i| ((i * 31 + i / 7) % c.max(2)) as i32 % (c as i32).max(2))
                .collect();
            let l: Vec<i32> = if c == 1 {
                l.iter().map(|&v| v.min(1)).collect()
            } else {
                l
            };
            let dense: Vec<f32> = (0..b * c * n)
                .map(|i| ((i * 13) % 5) as f32 / 4.0)
                .collect();
            let m: Vec<f32> = (0..b * n)
                .map(|i| if i % 5 == 0 { 0.0 } else { 1.0 })
                .collect();
            let d = Dims { b, c, n };
            for act in [Activation::Softmax, Activation::Sigmoid] {
                for (include_background, squared, difference, masked, labels) in (0..32).map(|f| {
                    (
                        f & 1 == 0 || c == 1,
                        f & 2 != 0,
                        f & 4 != 0,
                        f & 8 != 0,
                        f & 16 != 0,
                    )
                }) {
                    let spec = Spec {
                        act,
                        include_background,
                        squared,
                        difference,
                    };
                    let t = if labels {
                        TargetRef::Labels(&l)
                    } else {
                        TargetRef::Dense(&dense)
                    };
                    let mask = masked.then_some(&m[..]);
                    let grad: Vec<f32> = (0..4 * b * d.k(&spec))
                        .map(|i| i as f32 * 0.013 - 0.2)
                        .collect();
                    let what =
                        format!("{act:?} {spec:?} masked {masked} labels {labels} {b}x{c}x{n}");
                    let stats = forward(&x, t, mask, d, spec);
                    let dx = backward(&x, t, mask, &grad, d, spec);
                    for pool in &pools {
                        let (saved_stats, mut p) =
                            pool.install(|| forward_saving(&x, t, mask, d, spec));
                        assert_eq!(saved_stats, stats, "{what}");
                        for bb in 0..b {
                            for i in (0..n).step_by(37) {
                                let xs: Vec<f32> =
                                    (0..c).map(|cc| x[(bb * c + cc) * n + i]).collect();
                                for (cc, v) in xs.iter().enumerate() {
                                    let want = match act {
                                        Activation::Softmax => {
                                            let max = xs.iter().fold(f32::MIN, |a, &v| a.max(v));
                                            (v - max).exp()
                                                / xs.iter().map(|&u| (u - max).exp()).sum::<f32>()
                                        }
                                        _ => 1.0 / (1.0 + (-v).exp()),
                                    };
                                    let got = p[(bb * c + cc) * n + i];
                                    assert!(
                                        (got - want).abs() <= 1e-6 * want.max(1e-3),
                                        "{what}: p {got} vs {want}"
                                    );
                                }
                            }
                        }
                        pool.install(|| backward_in_place(&mut p, t, mask, &grad, d, spec));
                        assert_eq!(p, dx, "{what}");
                    }
                }
            }
        }
    }

    /// The pointwise rows against the formulas of the pointwise section evaluated in f64 voxel
    /// by voxel, for the softmax and the sigmoid, gamma 0 and 2, label maps and soft dense
    /// targets, with a mask; logits up to +-1e4 (saturated probabilities) included.
    #[test]
    fn pointwise_rows_match_the_formulas() {
        let (b, c, n) = (2usize, 3usize, RUN * BLOCK + BLOCK + 29);
        let x: Vec<f32> = (0..b * c * n)
            .map(|i| {
                if i % 641 == 0 {
                    if i % 2 == 0 { 1e4 } else { -1e4 }
                } else {
                    ((i * 7919) % 1013) as f32 / 83.0 - 6.0
                }
            })
            .collect();
        let l: Vec<i64> = (0..b * n).map(|i| ((i * 31 + i / 7) % c) as i64).collect();
        let dense: Vec<f32> = (0..b * c * n)
            .map(|i| ((i * 13) % 5) as f32 / 4.0)
            .collect();
        let m: Vec<f32> = (0..b * n).map(|i| ((i * 17) % 3) as f32 / 2.0).collect();
        let d = Dims { b, c, n };
        let sp = |v: f64| v.max(0.0) + (-v.abs()).exp().ln_1p();
        for act in [Activation::Softmax, Activation::Sigmoid] {
            for gamma in [0.0f32, 2.0] {
                for labels in [true, false] {
                    let spec = Spec {
                        act,
                        include_background: true,
                        squared: false,
                        difference: false,
                    };
                    let t = if labels {
                        TargetRef::Labels(&l)
                    } else {
                        TargetRef::Dense(&dense)
                    };
                    let got = pointwise_forward(&x, t, Some(&m), d, spec, Pointwise::new(gamma));
                    let mut want = vec![0.0f64; 8 * b * c];
                    for bb in 0..b {
                        for i in 0..n {
                            let xs: Vec<f64> =
                                (0..c).map(|cc| x[(bb * c + cc) * n + i] as f64).collect();
                            let max = xs.iter().cloned().fold(f64::MIN, f64::max);
                            let lse = xs.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                            let w = m[bb * n + i] as f64;
                            for cc in 0..c {
                                let g = if labels {
                                    f64::from(l[bb * n + i] == cc as i64)
                                } else {
                                    dense[(bb * c + cc) * n + i] as f64
                                };
                                let xv = xs[cc];
                                let (h, third, fourth) = match act {
                                    Activation::Softmax => {
                                        let nlp = lse + max - xv;
                                        let p = (-nlp).exp();
                                        (
                                            (1.0 - p)
                                                .max(f32::MIN_POSITIVE as f64)
                                                .powf(gamma as f64)
                                                * nlp,
                                            w * g,
                                            0.0,
                                        )
                                    }
                                    _ => {
                                        let bce = sp(xv) - xv * g;
                                        let h = (-(gamma as f64) * sp(xv * (2.0 * g - 1.0))).exp()
                                            * bce;
                                        (h, if g == 1.0 { w * h } else { 0.0 }, w * g * sp(-xv))
                                    }
                                };
                                for (q, v) in
                                    [w * g * h, w * h, third, fourth].into_iter().enumerate()
                                {
                                    want[((4 + q) * b + bb) * c + cc] += v;
                                }
                            }
                        }
                    }
                    for (q, (g, w)) in got.iter().zip(&want).enumerate().skip(4 * b * c) {
                        let tol = 2e-5 * w.abs().max(1.0);
                        assert!(
                            ((*g as f64) - w).abs() <= tol,
                            "{act:?} gamma {gamma} labels {labels}: row {} [{q}] {g} vs {w}",
                            q / (b * c)
                        );
                    }
                }
            }
        }
    }

    /// The pointwise gradient against central differences of the pointwise rows (f64 sums of the
    /// f32 kernel on a small problem), every row's gradient at once, softmax and sigmoid, gamma
    /// 0 and 1.5, with a mask and soft targets; and the softmax's in-place backward equals its
    /// recomputing one.
    #[test]
    fn pointwise_gradient_matches_finite_differences() {
        let (b, c, n) = (1usize, 3usize, 40usize);
        let x: Vec<f32> = (0..b * c * n)
            .map(|i| ((i * 7919) % 1013) as f32 / 250.0 - 2.0)
            .collect();
        let dense: Vec<f32> = (0..b * c * n)
            .map(|i| ((i * 13) % 5) as f32 / 4.0)
            .collect();
        let m: Vec<f32> = (0..b * n).map(|i| 0.5 + (i % 2) as f32 / 2.0).collect();
        let d = Dims { b, c, n };
        let grad: Vec<f32> = (0..8 * b * c)
            .map(|i| {
                if i < 4 * b * c {
                    0.0
                } else {
                    0.3 + 0.1 * (i % 5) as f32
                }
            })
            .collect();
        for act in [Activation::Softmax, Activation::Sigmoid] {
            for gamma in [0.0f32, 1.5] {
                let spec = Spec {
                    act,
                    include_background: true,
                    squared: false,
                    difference: false,
                };
                let t = TargetRef::<i64>::Dense(&dense);
                let objective = |x: &[f32]| -> f64 {
                    pointwise_forward(x, t, Some(&m), d, spec, Pointwise::new(gamma))
                        .iter()
                        .zip(&grad)
                        .map(|(v, g)| *v as f64 * *g as f64)
                        .sum()
                };
                let dx = pointwise_backward(&x, t, Some(&m), &grad, d, spec, Pointwise::new(gamma));
                for i in (0..x.len()).step_by(7) {
                    let h = 1e-2f32;
                    let (mut hi, mut lo) = (x.clone(), x.clone());
                    hi[i] += h;
                    lo[i] -= h;
                    let fd = (objective(&hi) - objective(&lo)) / (2.0 * h as f64);
                    assert!(
                        (dx[i] as f64 - fd).abs() <= 1e-3 + 5e-3 * fd.abs(),
                        "{act:?} gamma {gamma}: dx[{i}] {} vs finite difference {fd}",
                        dx[i]
                    );
                }
                if act == Activation::Softmax {
                    let (_, mut p) =
                        pointwise_forward_saving(&x, t, Some(&m), d, spec, Pointwise::new(gamma));
                    pointwise_backward_in_place(
                        &mut p,
                        t,
                        Some(&m),
                        &grad,
                        d,
                        spec,
                        Pointwise::new(gamma),
                    );
                    for (a, b) in p.iter().zip(&dx) {
                        assert!(
                            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                            "in place {a} vs recomputed {b}"
                        );
                    }
                }
            }
        }
    }

    /// The pointwise term without the background ([`Pointwise::without_background`]): the
    /// overlap rows as the plain softmax pass gives them, the pointwise rows against the f64
    /// formulas with the softmax over channels `1..C` (channel 0's rows 0), including voxels
    /// where channel 0 dominates by 1e4 (the second softmax is then still exact) and where it
    /// is far below; label maps and dense targets, with a mask.
    #[test]
    fn pointwise_rows_without_the_background() {
        let (b, c, n) = (2usize, 4usize, BLOCK + 301);
        let x: Vec<f32> = (0..b * c * n)
            .map(|i| {
                let (ch, v) = ((i / n) % c, i % n);
                match (ch, v % 97) {
                    (0, 5) => 1e4,
                    (0, 9) => -1e4,
                    (2, 11) => 1e4,
                    _ => ((i * 7919) % 1013) as f32 / 83.0 - 6.0,
                }
            })
            .collect();
        let l: Vec<i64> = (0..b * n).map(|i| ((i * 31 + i / 7) % c) as i64).collect();
        let dense: Vec<f32> = (0..b * c * n)
            .map(|i| ((i * 13) % 5) as f32 / 4.0)
            .collect();
        let m: Vec<f32> = (0..b * n).map(|i| ((i * 17) % 3) as f32 / 2.0).collect();
        let d = Dims { b, c, n };
        let spec = Spec {
            act: Activation::Softmax,
            include_background: true,
            squared: false,
            difference: false,
        };
        for gamma in [0.0f32, 2.0] {
            for labels in [true, false] {
                let t = if labels {
                    TargetRef::Labels(&l)
                } else {
                    TargetRef::Dense(&dense)
                };
                let pw = Pointwise {
                    gamma,
                    without_background: true,
                };
                let got = pointwise_forward(&x, t, Some(&m), d, spec, pw);
                let plain = pointwise_forward(&x, t, Some(&m), d, spec, Pointwise::new(gamma));
                for (i, (a, w)) in got.iter().zip(&plain).enumerate().take(4 * b * c) {
                    assert!(
                        (a - w).abs() <= 2e-5 * w.abs().max(1.0),
                        "gamma {gamma} labels {labels}: overlap [{i}] {a} vs {w}"
                    );
                }
                let mut want = vec![0.0f64; 4 * b * c];
                for bb in 0..b {
                    for i in 0..n {
                        let xs: Vec<f64> =
                            (1..c).map(|cc| x[(bb * c + cc) * n + i] as f64).collect();
                        let max = xs.iter().cloned().fold(f64::MIN, f64::max);
                        let lse = xs.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
                        let w = m[bb * n + i] as f64;
                        for cc in 1..c {
                            let g = if labels {
                                f64::from(l[bb * n + i] == cc as i64)
                            } else {
                                dense[(bb * c + cc) * n + i] as f64
                            };
                            let nlp = lse - xs[cc - 1];
                            let q = (-nlp).exp();
                            let h =
                                (1.0 - q).max(f32::MIN_POSITIVE as f64).powf(gamma as f64) * nlp;
                            for (r, v) in [w * g * h, w * h, w * g, 0.0].into_iter().enumerate() {
                                want[(r * b + bb) * c + cc] += v;
                            }
                        }
                    }
                }
                for (i, (g, w)) in got[4 * b * c..].iter().zip(&want).enumerate() {
                    assert!(
                        ((*g as f64) - w).abs() <= 2e-5 * w.abs().max(1.0),
                        "gamma {gamma} labels {labels}: pointwise row {} [{i}] {g} vs {w}",
                        i / (b * c)
                    );
                }
            }
        }
    }

    /// The gradient with a pointwise term without the background against central differences
    /// of all eight rows weighted at once (the overlap rows' gradient included: it runs through
    /// `p_c = q_c (1 - p_0)` there), label map and dense target, gamma 0 and 1.5; the in-place
    /// backward equals the recomputing one; and where channel 0 dominates by 1e4 the gradient
    /// stays finite.
    #[test]
    fn pointwise_gradient_without_the_background() {
        let (b, c, n) = (1usize, 4usize, 37usize);
        let x: Vec<f32> = (0..b * c * n)
            .map(|i| ((i * 7919) % 1013) as f32 / 250.0 - 2.0)
            .collect();
        let l: Vec<i64> = (0..b * n).map(|i| ((i * 5 + i / 3) % c) as i64).collect();
        let dense: Vec<f32> = (0..b * c * n)
            .map(|i| ((i * 13) % 5) as f32 / 4.0)
            .collect();
        let m: Vec<f32> = (0..b * n).map(|i| 0.5 + (i % 2) as f32 / 2.0).collect();
        let d = Dims { b, c, n };
        let grad: Vec<f32> = (0..8 * b * c)
            .map(|i| {
                if (4..8).contains(&i) {
                    0.0
                } else {
                    0.3 - 0.07 * (i % 7) as f32
                }
            })
            .collect();
        let spec = Spec {
            act: Activation::Softmax,
            include_background: true,
            squared: false,
            difference: false,
        };
        for gamma in [0.0f32, 1.5] {
            for labels in [true, false] {
                let t = if labels {
                    TargetRef::Labels(&l)
                } else {
                    TargetRef::Dense(&dense)
                };
                let pw = Pointwise {
                    gamma,
                    without_background: true,
                };
                let objective = |x: &[f32]| -> f64 {
                    pointwise_forward(x, t, Some(&m), d, spec, pw)
                        .iter()
                        .zip(&grad)
                        .map(|(v, g)| *v as f64 * *g as f64)
                        .sum()
                };
                let dx = pointwise_backward(&x, t, Some(&m), &grad, d, spec, pw);
                for i in 0..x.len() {
                    let h = 1e-2f32;
                    let (mut hi, mut lo) = (x.clone(), x.clone());
                    hi[i] += h;
                    lo[i] -= h;
                    let fd = (objective(&hi) - objective(&lo)) / (2.0 * h as f64);
                    assert!(
                        (dx[i] as f64 - fd).abs() <= 1e-3 + 5e-3 * fd.abs(),
                        "gamma {gamma} labels {labels}: dx[{i}] {} vs finite difference {fd}",
                        dx[i]
                    );
                }
                let (_, mut p) = pointwise_forward_saving(&x, t, Some(&m), d, spec, pw);
                pointwise_backward_in_place(&mut p, t, Some(&m), &grad, d, spec, pw);
                assert_eq!(
                    p, dx,
                    "gamma {gamma} labels {labels}: in place vs recomputed"
                );
                let mut big = x.clone();
                big[..n].iter_mut().step_by(3).for_each(|v| *v = 1e4);
                let dx = pointwise_backward(&big, t, Some(&m), &grad, d, spec, pw);
                assert!(dx.iter().all(|v| v.is_finite()), "gamma {gamma}: {dx:?}");
            }
        }
    }

    #[test]
    fn ln_matches_std_over_the_float_range() {
        let mut worst = 0.0f64;
        let mut v = f32::MIN_POSITIVE;
        while v < 1e38 {
            for x in [v, v * 1.000_37, v * 1.414, v * 0.7072]
                .into_iter()
                .filter(|&x| x >= f32::MIN_POSITIVE)
            {
                let want = (x as f64).ln();
                let got = ln_f32(x) as f64;
                worst = worst.max((got - want).abs() / want.abs().max(1.0));
                let fma = ln_poly::<true>(x) as f64;
                worst = worst.max((fma - want).abs() / want.abs().max(1.0));
            }
            v *= 1.013;
        }
        assert!(worst < 3e-7, "error {worst} (relative, absolute below 1)");
        assert_eq!(ln_f32(1.0), 0.0);
        assert!(ln_f32(f32::NAN).is_nan());
    }

    #[test]
    #[should_panic(expected = "the label map has 10 values, expected B * N = 12")]
    fn a_slice_of_the_wrong_size_is_named() {
        let d = Dims { b: 2, c: 3, n: 6 };
        let spec = Spec {
            act: Activation::Softmax,
            include_background: true,
            squared: false,
            difference: false,
        };
        forward(&[0.0; 36], TargetRef::Labels(&[0i64; 10]), None, d, spec);
    }

    #[test]
    fn exp_matches_std_over_the_float_range() {
        let (mut worst, mut worst_fma) = (0.0f64, 0.0f64);
        let mut x = -87.0f32;
        while x < 88.0 {
            let e = (x as f64).exp();
            worst = worst.max(((exp_f32(x) as f64 - e) / e).abs());
            worst_fma = worst_fma.max(((exp_poly::<true>(x) as f64 - e) / e).abs());
            // exp(-x) with the negation folded in, as the sigmoid computes it.
            for neg in [exp_parts::<false, true>(-x), exp_parts::<true, true>(-x)] {
                worst = worst.max(((neg.0 as f64 * neg.1 as f64 - e) / e).abs());
            }
            x += 0.00137;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert!(worst_fma < 3e-7, "relative error with FMA {worst_fma}");
        assert_eq!(exp_f32(-1e4), exp_f32(-87.336_55));
        assert!(exp_f32(1e4).is_finite());
        assert!(exp_f32(f32::NAN).is_nan());
        let neg = |x: f32| {
            let (y, pow2) = exp_parts::<false, true>(x);
            y * pow2
        };
        assert_eq!(neg(1e4), exp_f32(-87.336_55));
        assert!(neg(-1e4).is_finite() && neg(f32::NAN).is_nan());
    }
}
