//! One class over one tile: the overlap statistics' lane sums, the activations, and the
//! gradient written in place.

use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::layout::{LANES, SIGMOID, SOFTMAX};
use super::maths::{act8, aligned16, lanes, madd, store8, target_at, upstream_at};

/// Adds one tile of one class to the lane accumulators `acc[statistic][lane]`; with `SAVE`, also
/// writes the activations to `out` (non-temporal stores where `out` is 16-byte aligned).
#[inline(always)]
pub(super) fn class_sums<
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
pub(super) fn class_activations<const ACT: u8, const FMA: bool, const STREAM: bool>(
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
pub(super) fn class_probs_dot<
    const LAB: bool,
    const SQ: bool,
    const MASK: bool,
    const DIFF: bool,
>(
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
pub(super) fn class_grad_in_place<
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
