//! Scalar and lane-wise maths of the kernel: `exp`, `ln`, the sigmoid and softplus as
//! branch-free polynomials, the activation and upstream factors of 8 lanes, and the (streaming)
//! stores.

use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::layout::{LANES, SIGMOID, SOFTMAX};

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
pub(super) fn exp_parts<const FMA: bool, const NEG: bool>(x: f32) -> (f32, f32) {
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
pub(super) fn ln_poly<const FMA: bool>(x: f32) -> f32 {
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
pub(super) fn softplus<const FMA: bool>(x: f32) -> (f32, f32) {
    let e = exp_poly::<FMA>(-x.abs());
    (x.max(0.0) + ln_poly::<FMA>(1.0 + e), e)
}

/// The logistic sigmoid from `x`'s sign and `e = exp(-|x|)`: `1 / (1 + e)` or `e / (1 + e)`.
#[inline(always)]
pub(super) fn sigmoid_from(x: f32, e: f32) -> f32 {
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
pub(super) fn act8<const ACT: u8, const FMA: bool>(
    src: &[f32; LANES],
    r: &[f32; LANES],
) -> [f32; LANES] {
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
pub(super) fn lanes(s: &[f32], i: usize) -> [f32; LANES] {
    std::array::from_fn(|l| s.get(i + l).copied().unwrap_or(0.0))
}

/// The target of one voxel and class: one-hot from a label, or the given value.
#[inline(always)]
pub(super) fn target_at<const LAB: bool>(t: f32, class: f32) -> f32 {
    if LAB {
        if t == class { 1.0 } else { 0.0 }
    } else {
        t
    }
}

/// `u = d loss / d p` at one voxel from the gradients `[dI, dP, dE]` of its class's statistics.
#[inline(always)]
pub(super) fn upstream_at<const SQ: bool, const MASK: bool, const DIFF: bool>(
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
