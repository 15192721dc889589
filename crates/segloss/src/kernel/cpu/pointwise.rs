//! The pointwise term (cross-entropy and focal): its per-voxel values, sums and gradients.

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::layout::{LANES, POINTWISE_CHUNK};
use super::maths::{exp_poly, ln_poly, madd, sigmoid_from, softplus, target_at, upstream_at};

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
pub(super) fn softmax_terms<const FOCAL: bool, const FMA: bool>(
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
pub(super) fn softmax_pointwise_sums<
    const LAB: bool,
    const MASK: bool,
    const FOCAL: bool,
    const FMA: bool,
>(
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
pub(super) fn sigmoid_pointwise_sums<
    const LAB: bool,
    const MASK: bool,
    const FOCAL: bool,
    const FMA: bool,
>(
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
pub(super) fn softmax_pointwise_q<
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
pub(super) fn class_pointwise_q<
    const LAB: bool,
    const MASK: bool,
    const FOCAL: bool,
    const FMA: bool,
>(
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
pub(super) fn class_grad_in_place_softmax_pw<const LAB: bool, const MASK: bool>(
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
pub(super) fn class_grad_in_place_sigmoid_pw<
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
