//! The forward's inner loop in AVX2 + FMA intrinsics: the operations of [`sigmoid8`] and of
//! `class_sums`' per-voxel sums, in the same order (the same results bit for bit as the lane-wise
//! form compiled with FMA), written by hand because the compiler's vectorisation of the lane-wise
//! form reloaded the accumulators from the stack and rebuilt the target's vector lane by lane on
//! every run of 8 voxels.

use std::mem::MaybeUninit;

use super::layout::{LANES, ROWS_MAX, SIGMOID, SOFTMAX};
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
    acc: &mut [[f32; LANES]; ROWS_MAX],
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
