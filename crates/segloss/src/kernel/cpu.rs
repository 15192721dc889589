//! The fused overlap-statistics kernel for CPUs: plain Rust over slices, vectorised by the compiler
//! (AVX2/FMA when the CPU has them, detected at run time; SSE2 otherwise) and parallel with rayon.
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
//! dx_c = p_c (u_c - sum_j p_j u_j)   (softmax)     u_c p_c (1 - p_c)   (sigmoid)     u_c   (none)
//! ```
//!
//! Two ways to get `p` there, with the same results bit for bit:
//! - [`backward`] recomputes it from the logits (one more `exp` per element), tile by tile into
//!   the gradient's rows, then runs the same in-place step as below;
//! - [`forward_saving`] writes `p` during the forward's pass into a buffer of the gradient's size
//!   (streaming stores: the lines are not read first), and [`backward_in_place`] turns that
//!   buffer into the gradient. On CPUs `exp` costs more than the memory traffic it saves (about
//!   1.2 ns per element and thread on the development machine, where the backward drops from
//!   10 ms to 3.5 ms at 3 x 9 x 64^3), so Flex runs this way whenever a backward is recorded;
//!   the peak memory is the same, the gradient's buffer is just allocated at the forward.
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

/// Voxels per block, the unit of f64 accumulation (and of parallel work for the softmax; runs of
/// four blocks for the other activations).
pub const BLOCK: usize = 1024;
/// Voxels per tile: the softmax of a tile (`C x TILE` floats) stays in the L1 cache between the
/// passes over it.
const TILE: usize = 256;
const LANES: usize = 8;
const _: () = assert!(BLOCK.is_multiple_of(TILE) && TILE.is_multiple_of(LANES));

/// The activation, as the kernels encode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Softmax across channels.
    Softmax,
    /// Element-wise sigmoid.
    Sigmoid,
    /// Identity.
    None,
}

impl Act {
    /// The activation as the backend extension passes it: 0 softmax, 1 sigmoid, 2 none.
    pub fn code(self) -> u8 {
        match self {
            Act::Softmax => 0,
            Act::Sigmoid => 1,
            Act::None => 2,
        }
    }

    /// The inverse of [`code`](Act::code) (any other value is `None`).
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => Act::Softmax,
            1 => Act::Sigmoid,
            _ => Act::None,
        }
    }
}

/// What to compute.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The activation applied to the logits.
    pub act: Act,
    /// Keep channel 0 in the statistics.
    pub include_background: bool,
    /// Squared sums (V-Net) for `P`, `G` and `E`.
    pub squared: bool,
    /// Compute `E` (otherwise it is returned as 0).
    pub difference: bool,
}

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

/// The target: a label map `[B, N]` or dense values `[B, C, N]`.
#[derive(Clone, Copy)]
pub enum TargetRef<'a, L> {
    /// Class indices `[B, N]` (0/1 values with a single channel).
    Labels(&'a [L]),
    /// Per-class values `[B, C, N]`.
    Dense(&'a [f32]),
}

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
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `exp` with the polynomial in fused multiply-adds when `FMA` (only inside FMA-enabled code).
#[inline(always)]
fn exp_poly<const FMA: bool>(x: f32) -> f32 {
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
        0 => std::array::from_fn(|l| src[l] * r[l]),
        1 => sigmoid8::<FMA>(src),
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
    let v = if SQ {
        let v = gi * mg + 2.0 * gp * mp;
        if DIFF { v + 2.0 * ge * (mp - mg) } else { v }
    } else {
        let v = gi * mg + gp;
        if DIFF {
            let diff = mp - mg;
            let sign = if diff > 0.0 {
                1.0
            } else if diff < 0.0 {
                -1.0
            } else {
                0.0
            };
            v + ge * sign
        } else {
            v
        }
    };
    if MASK { w * v } else { v }
}

/// Writes 8 floats that will not be read again soon: with `NT`, as non-temporal stores (the
/// cache lines are not read first); the caller checks once per row that the destination is
/// 16-byte aligned (`aligned16`), which then holds for every run of 8 floats of the row.
#[inline(always)]
fn store8<const NT: bool>(out: &mut [MaybeUninit<f32>], v: &[f32; LANES]) {
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
fn aligned16(out: &[MaybeUninit<f32>]) -> bool {
    cfg!(target_arch = "x86_64") && (out.as_ptr() as usize).is_multiple_of(16)
}

/// Orders this thread's non-temporal stores before anything it does next (the end of its task).
#[inline(always)]
fn store_fence() {
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
    use super::{LANES, MaybeUninit};
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
                    0 => _mm256_mul_ps(ld(src, i), ld(r, i)),
                    1 => sigmoid(ld(src, i)),
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
                } else {
                    _mm256_add_ps(ap, mp)
                };
                ag = if SQ {
                    _mm256_fmadd_ps(mg, mg, ag)
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
        a[1][l] = if SQ {
            madd::<FMA>(mp, mp, a[1][l])
        } else {
            a[1][l] + mp
        };
        a[2][l] = if SQ {
            madd::<FMA>(mg, mg, a[2][l])
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
            0 => pi * (u - dot[i]),
            1 => u * pi * (1.0 - pi),
            _ => u,
        };
    }
}

// ---------------------------------------------------------------------------------------------
// Tiles and blocks.
// ---------------------------------------------------------------------------------------------

/// Per-thread scratch space: the exponentials (then probabilities) of a tile, and per-voxel rows.
struct Scratch {
    e: Vec<f32>,
    max: Vec<f32>,
    r: Vec<f32>,
    dot: Vec<f32>,
    labels: Vec<f32>,
    ones: Vec<f32>,
    sink: Vec<MaybeUninit<f32>>,
    acc: Vec<[[f32; LANES]; 4]>,
}

impl Scratch {
    fn new(d: Dims) -> Self {
        // A tile is a whole run of blocks for the element-wise activations (see `Block::tiles`).
        let row = || vec![0.0; RUN * BLOCK];
        Self {
            e: vec![0.0; d.c * TILE],
            max: row(),
            r: row(),
            dot: row(),
            labels: row(),
            ones: vec![1.0; RUN * BLOCK],
            sink: vec![MaybeUninit::uninit(); BLOCK],
            acc: vec![[[0.0; LANES]; 4]; RUN * d.c],
        }
    }
}

/// Softmax of one tile (`len` voxels from voxel `v0` of sample `b`): `e[c * TILE + i] = exp(x -
/// max)` and `r[i] = 1 / sum_c e`.
#[inline(always)]
fn softmax_tile<const FMA: bool>(
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
fn tile_labels<L: Label>(
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
}

/// Blocks per task for the element-wise activations: each class row is then read and written in
/// runs of `RUN * BLOCK` voxels (16 KiB), which the CPU's prefetchers follow better than runs of
/// one 4 KiB block (forward and backward of the sigmoid at 3 x 9 x 64^3 each about 1.1x faster in
/// a prototype). The softmax takes one block per task: it reads every class of a tile at once.
const RUN: usize = 4;

impl<L: Label> Block<'_, L> {
    /// The tasks of a problem: `(sample, first block, blocks)` in sample and block order.
    fn tasks(d: Dims, spec: &Spec) -> Vec<(usize, usize, usize)> {
        let (blocks, run) = (d.blocks(), if spec.act == Act::Softmax { 1 } else { RUN });
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
        let tile = if ACT == 0 { TILE } else { len.max(1) };
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
        const FMA: bool,
    >(
        &self,
        s: &mut Scratch,
        save: Option<DxPtr>,
    ) -> Vec<f64> {
        let (d, b, x) = (self.d, self.b, self.x);
        let k = d.k(&self.spec);
        s.acc[..self.nblk * k].fill([[0.0; LANES]; 4]);
        if ACT == 0 {
            // Tile by tile, every class of a tile while its softmax is in the L1 cache.
            for (v0, len) in self.tiles::<ACT>() {
                tile_labels(self.t, d, b, v0, len, &mut s.labels);
                softmax_tile::<FMA>(x, d, b, v0, len, &mut s.e, &mut s.max, &mut s.r);
                let m = self.tile_mask(v0, len, &s.ones);
                for c in 0..d.c {
                    let t = tile_target::<L, LAB>(self.t, d, b, c, v0, len, &s.labels);
                    self.class_pass::<ACT, LAB, SQ, MASK, DIFF, FMA>(
                        save,
                        &mut s.acc,
                        &mut s.sink,
                        c,
                        v0,
                        &s.e[c * TILE..][..len],
                        &s.r[..len],
                        t,
                        m,
                    );
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
                }
            }
        }
        if save.is_some() {
            store_fence();
        }
        let mut out = vec![0.0f64; self.nblk * 4 * k];
        for (i, out) in out.chunks_exact_mut(4 * k).enumerate() {
            for (j, acc) in s.acc[i * k..(i + 1) * k].iter().enumerate() {
                for q in 0..4 {
                    out[q * k + j] = acc[q].iter().map(|&v| v as f64).sum();
                }
            }
        }
        out
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
        acc: &mut [[[f32; LANES]; 4]],
        sink: &mut [MaybeUninit<f32>],
        c: usize,
        v0: usize,
        src: &[f32],
        r: &[f32],
        t: &[f32],
        m: &[f32],
    ) {
        let j = c.checked_sub(self.d.first(&self.spec));
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
                        &mut acc[j],
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
                        &mut acc[j],
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
        const FMA: bool,
    >(
        &self,
        s: &mut Scratch,
        dx: DxPtr,
    ) {
        let (d, b, x) = (self.d, self.b, self.x);
        for (v0, len) in self.tiles::<ACT>() {
            if ACT == 0 {
                softmax_tile::<FMA>(x, d, b, v0, len, &mut s.e, &mut s.max, &mut s.r);
            }
            for c in 0..d.c {
                let (src, r) = if ACT == 0 {
                    (&s.e[c * TILE..][..len], &s.r[..len])
                } else {
                    (&x[(b * d.c + c) * d.n + v0..][..len], &s.ones[..len])
                };
                // SAFETY: this task alone writes row (b, c) over voxels v0..v0 + len.
                class_activations::<ACT, FMA, false>(src, r, unsafe { dx.row(b, c, v0, len, d) });
            }
            self.grad_tile::<ACT, LAB, SQ, MASK, DIFF>(s, dx, v0, len);
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
    >(
        &self,
        s: &mut Scratch,
        p: DxPtr,
    ) {
        for (v0, len) in self.tiles::<ACT>() {
            self.grad_tile::<ACT, LAB, SQ, MASK, DIFF>(s, p, v0, len);
        }
    }

    /// Turns the activations of one tile (`len` voxels from `v0`, in `p`) into the gradient.
    #[inline(always)]
    fn grad_tile<
        const ACT: u8,
        const LAB: bool,
        const SQ: bool,
        const MASK: bool,
        const DIFF: bool,
    >(
        &self,
        s: &mut Scratch,
        p: DxPtr,
        v0: usize,
        len: usize,
    ) {
        let (d, b) = (self.d, self.b);
        tile_labels(self.t, d, b, v0, len, &mut s.labels);
        let m = self.tile_mask(v0, len, &s.ones);
        if ACT == 0 {
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
            }
        }
        for c in 0..d.c {
            let t = tile_target::<L, LAB>(self.t, d, b, c, v0, len, &s.labels);
            // SAFETY: as above.
            let row = unsafe { p.row_init(b, c, v0, len, d) };
            class_grad_in_place::<ACT, LAB, SQ, MASK, DIFF>(
                row,
                t,
                c as f32,
                m,
                self.coef(c),
                &s.dot,
            );
        }
    }
}

/// A raw pointer to the gradient output; blocks write disjoint ranges.
#[derive(Clone, Copy)]
struct DxPtr(*mut MaybeUninit<f32>);
unsafe impl Send for DxPtr {}
unsafe impl Sync for DxPtr {}

impl DxPtr {
    /// Row `(b, c)` of the output over voxels `v0..v0 + len`.
    ///
    /// # Safety
    /// No other live reference may cover the same elements; the output has `B * C * N` elements.
    #[inline(always)]
    unsafe fn row<'a>(
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
    unsafe fn row_init<'a>(
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
enum Work {
    /// The sums, and the probabilities written to the buffer when given.
    Forward(Option<DxPtr>),
    /// The gradient, recomputing the activation from the logits.
    Backward(DxPtr),
    /// The gradient, in place over the saved probabilities.
    BackwardInPlace(DxPtr),
}

/// Runs one block of work with the const parameters matching its options. The `if`s select one
/// of the 48 variants (activation 3 x label map 2 x squared 2 x mask 2 x difference 2).
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
        const FMA: bool,
    >(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        match work {
            Work::Forward(save) => blk.forward::<ACT, LAB, SQ, MASK, DIFF, FMA>(s, save),
            Work::BackwardInPlace(p) => {
                blk.backward_in_place::<ACT, LAB, SQ, MASK, DIFF>(s, p);
                Vec::new()
            }
            Work::Backward(dx) => {
                blk.backward::<ACT, LAB, SQ, MASK, DIFF, FMA>(s, dx);
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
            leaf::<L, ACT, LAB, SQ, MASK, true, FMA>(blk, s, work)
        } else {
            leaf::<L, ACT, LAB, SQ, MASK, false, FMA>(blk, s, work)
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
    match blk.spec.act {
        Act::Softmax => labels::<L, 0, FMA>(blk, s, work),
        Act::Sigmoid => labels::<L, 1, FMA>(blk, s, work),
        Act::None => labels::<L, 2, FMA>(blk, s, work),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_block_avx2<L: Label>(blk: &Block<'_, L>, s: &mut Scratch, work: Work) -> Vec<f64> {
    run_block::<L, true>(blk, s, work)
}

/// The instruction set a call runs with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Isa {
    /// The best the CPU has (AVX2 + FMA, detected at run time, else the baseline).
    Best,
    /// The target's baseline (SSE2 on x86-64): what runs on CPUs without AVX2 + FMA, and what
    /// the tests compare the AVX2 code with.
    #[cfg_attr(not(test), allow(dead_code))]
    Baseline,
}

/// [`run_block`] compiled for the instruction set `isa` asks for.
fn run_block_with<L: Label>(isa: Isa, blk: &Block<'_, L>, s: &mut Scratch, work: Work) -> Vec<f64> {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Best
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
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
    x: &[f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    grad: &[f32],
    d: Dims,
    spec: Spec,
    isa: Isa,
    work: Work,
) -> Vec<Vec<f64>> {
    tasks
        .par_iter()
        .map_init(
            || Scratch::new(d),
            |s, &(b, blk, nblk)| {
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
                    },
                    s,
                    work,
                )
            },
        )
        .collect()
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
    if let Some(g) = grad {
        let k = 4 * d.b * d.k(spec);
        assert_eq!(
            g.len(),
            k,
            "segloss kernel: the statistics' gradient has {} values, expected 4 * B * K = {k}",
            g.len()
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
    forward_impl(x, t, mask, d, spec, None, Isa::Best)
}

/// The statistics, as [`forward`], and the activations `p` `[B, C, N]` (written in the same pass),
/// for [`backward_in_place`].
///
/// # Panics
/// With `Act::None` (the activations are the logits: use [`forward`] and [`backward`]), or if a
/// slice's length does not match `d`.
pub fn forward_saving<L: Label>(
    x: &[f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    d: Dims,
    spec: Spec,
) -> (Vec<f32>, Vec<f32>) {
    assert!(
        spec.act != Act::None,
        "segloss kernel: the activations of Act::None are the logits; nothing to save"
    );
    let mut p = uninit(d.b * d.c * d.n);
    let stats = forward_impl(x, t, mask, d, spec, Some(DxPtr(p.as_mut_ptr())), Isa::Best);
    // SAFETY: the blocks cover every (b, c, n) exactly once (every sample, every block of voxels,
    // every tile of a block, every channel of a tile), so every element has been written.
    (stats, unsafe { assume_init(p) })
}

fn forward_impl<L: Label>(
    x: &[f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    d: Dims,
    spec: Spec,
    save: Option<DxPtr>,
    isa: Isa,
) -> Vec<f32> {
    check_sizes("the logits", x.len(), t, mask, None, d, &spec);
    let k = d.k(&spec);
    let tasks = Block::<L>::tasks(d, &spec);
    let partial = run_tasks(&tasks, x, t, mask, &[], d, spec, isa, Work::Forward(save));
    // Block totals added in f64 in block order (the order does not depend on the threads).
    let mut out = vec![0.0f64; 4 * d.b * k];
    for (&(b, _, _), sums) in tasks.iter().zip(&partial) {
        for sums in sums.chunks_exact(4 * k) {
            for q in 0..4 {
                for j in 0..k {
                    out[(q * d.b + b) * k + j] += sums[q * k + j];
                }
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

/// A buffer of `len` floats, not initialised (every element is written by exactly one block, so
/// it is not zeroed first: that would be one more pass over `B * C * N` floats).
fn uninit(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v: Vec<MaybeUninit<f32>> = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { v.set_len(len) };
    huge_pages(&mut v);
    v
}

/// Asks Linux to back a large fresh buffer with 2 MiB pages where it can (transparent huge
/// pages in `madvise` mode): a 64 MiB gradient then costs 32 page faults instead of 16384, which
/// took as long as the kernel's own work on the development machine. Advice only: nothing
/// changes where the kernel declines.
fn huge_pages(v: &mut [MaybeUninit<f32>]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let (start, end) = (
            v.as_ptr() as usize,
            v.as_ptr() as usize + std::mem::size_of_val(v),
        );
        let (lo, hi) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if hi >= lo + HUGE {
            // SAFETY: [lo, hi) lies inside the buffer this function borrows mutably; MADV_HUGEPAGE
            // only changes how the kernel backs the pages, not their contents.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

/// # Safety
/// Every element of `v` has been written.
unsafe fn assume_init(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: MaybeUninit<f32> and f32 have the same layout; the caller guarantees initialisation.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
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
    backward_in_place_impl(p, t, mask, grad, d, spec, Isa::Best)
}

fn backward_in_place_impl<L: Label>(
    p: &mut [f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    grad: &[f32],
    d: Dims,
    spec: Spec,
    isa: Isa,
) {
    check_sizes("the activations", p.len(), t, mask, Some(grad), d, &spec);
    let ptr = DxPtr(p.as_mut_ptr().cast::<MaybeUninit<f32>>());
    run_tasks(
        &Block::<L>::tasks(d, &spec),
        &[],
        t,
        mask,
        grad,
        d,
        spec,
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
    backward_impl(x, t, mask, grad, d, spec, Isa::Best)
}

fn backward_impl<L: Label>(
    x: &[f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    grad: &[f32],
    d: Dims,
    spec: Spec,
    isa: Isa,
) -> Vec<f32> {
    check_sizes("the logits", x.len(), t, mask, Some(grad), d, &spec);
    let mut dx = uninit(d.b * d.c * d.n);
    let ptr = DxPtr(dx.as_mut_ptr());
    run_tasks(
        &Block::<L>::tasks(d, &spec),
        x,
        t,
        mask,
        grad,
        d,
        spec,
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
        for act in [Act::Softmax, Act::Sigmoid] {
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
        for act in [Act::Softmax, Act::Sigmoid, Act::None] {
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
                let stats = |isa| forward_impl(&x, t, mask, d, spec, None, isa);
                close(
                    &stats(Isa::Best),
                    &stats(Isa::Baseline),
                    true,
                    &format!("{what}: statistics"),
                );
                let dx = |isa| backward_impl(&x, t, mask, &grad, d, spec, isa);
                close(
                    &dx(Isa::Best),
                    &dx(Isa::Baseline),
                    false,
                    &format!("{what}: gradient"),
                );
                if act != Act::None {
                    let saved = |isa| {
                        let mut p = vec![0.0f32; b * c * n];
                        let stats = forward_impl(
                            &x,
                            t,
                            mask,
                            d,
                            spec,
                            Some(DxPtr(p.as_mut_ptr().cast())),
                            isa,
                        );
                        backward_in_place_impl(&mut p, t, mask, &grad, d, spec, isa);
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
            for act in [Act::Softmax, Act::Sigmoid] {
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
                                        Act::Softmax => {
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

    #[test]
    #[should_panic(expected = "the label map has 10 values, expected B * N = 12")]
    fn a_slice_of_the_wrong_size_is_named() {
        let d = Dims { b: 2, c: 3, n: 6 };
        let spec = Spec {
            act: Act::Softmax,
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
