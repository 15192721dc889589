//! The fused overlap-statistics kernel for CPUs: plain Rust over slices, vectorised by the compiler
//! (AVX2/FMA when the CPU has them, detected at run time; SSE2 otherwise) and parallel with rayon.
//!
//! **Forward**: one pass over the logits computes, per (sample, class), `I = sum m p m g`,
//! `P = sum m p` (or `(m p)^2`), `G = sum m g` (or `(m g)^2`) and `E = sum |m p - m g|` (or its
//! square), with the activation applied on the fly and the one-hot target read from the label
//! map: no probability, one-hot or product tensor is built. Output `[4, B, K]`.
//!
//! **Backward**: one more pass recomputes `p` and writes `d loss / d x` from the incoming
//! gradients of `I`, `P`, `E` (the target is not differentiated):
//!
//! ```text
//! u_c  = m (dI_c m g_c + dP_c (1 or 2 m p_c) + dE_c (sign(m p_c - m g_c) or 2 (m p_c - m g_c)))
//! dx_c = p_c (u_c - sum_j p_j u_j)   (softmax)     u_c p_c (1 - p_c)   (sigmoid)     u_c   (none)
//! ```
//!
//! **Numerics**: sums run over blocks of [`BLOCK`] voxels with 8 independent f32 accumulators per
//! statistic, block totals are added in f64, in block order: the result does not depend on the
//! number of threads. `exp` is a Cephes-style polynomial (relative error about 2e-7) clamped to
//! the float32 range, so logits of +-1e4 saturate instead of overflowing.

// The block functions take the problem (slices, sizes, options) and the block position as plain
// arguments so that they inline into the SIMD-specialised entry points.
#![allow(clippy::too_many_arguments)]

use rayon::prelude::*;

/// Voxels per block (the unit of parallel work and of f64 accumulation).
pub const BLOCK: usize = 1024;
const LANES: usize = 8;

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

/// `exp` with the polynomial in fused multiply-adds when `FMA` (only inside FMA-enabled code).
#[inline(always)]
fn exp_poly<const FMA: bool>(x: f32) -> f32 {
    #[inline(always)]
    fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
        if FMA { a.mul_add(b, c) } else { a * b + c }
    }
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.336_55, 88.0);
    let t = x * LOG2E + ROUND;
    let fx = t - ROUND;
    let r = x - fx * C1 - fx * C2;
    let mut y = 1.987_569_1e-4;
    y = madd::<FMA>(y, r, 1.398_199_9e-3);
    y = madd::<FMA>(y, r, 8.333_452e-3);
    y = madd::<FMA>(y, r, 4.166_579_6e-2);
    y = madd::<FMA>(y, r, 0.166_666_65);
    y = madd::<FMA>(y, r, 0.5);
    y = madd::<FMA>(y * r, r, r + 1.0);
    // t = 1.5 * 2^23 + n exactly, so n sits in the low mantissa bits (integer ops vectorise,
    // unlike a saturating float-to-int cast).
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let pow2 = f32::from_bits((n.wrapping_add(127) << 23) as u32);
    y * pow2
}

/// Activations of one block: `p[c * BLOCK + i]` for the `len` voxels starting at `n0` of sample `b`.
#[inline(always)]
fn activate<const FMA: bool>(x: &[f32], d: Dims, spec: &Spec, b: usize, n0: usize, len: usize, p: &mut [f32], scratch: &mut [f32]) {
    let base = b * d.c * d.n + n0;
    match spec.act {
        Act::None => {
            for c in 0..d.c {
                p[c * BLOCK..c * BLOCK + len].copy_from_slice(&x[base + c * d.n..base + c * d.n + len]);
            }
        }
        Act::Sigmoid => {
            for c in 0..d.c {
                let src = &x[base + c * d.n..base + c * d.n + len];
                for (o, &v) in p[c * BLOCK..c * BLOCK + len].iter_mut().zip(src) {
                    *o = 1.0 / (1.0 + exp_poly::<FMA>(-v));
                }
            }
        }
        Act::Softmax => {
            let (mx, sum) = scratch.split_at_mut(BLOCK);
            let (mx, sum) = (&mut mx[..len], &mut sum[..len]);
            mx.copy_from_slice(&x[base..base + len]);
            for c in 1..d.c {
                let src = &x[base + c * d.n..base + c * d.n + len];
                for (m, &v) in mx.iter_mut().zip(src) {
                    *m = m.max(v);
                }
            }
            sum.fill(0.0);
            for c in 0..d.c {
                let src = &x[base + c * d.n..base + c * d.n + len];
                let out = &mut p[c * BLOCK..c * BLOCK + len];
                for i in 0..len {
                    let e = exp_poly::<FMA>(src[i] - mx[i]);
                    out[i] = e;
                    sum[i] += e;
                }
            }
            for s in sum.iter_mut() {
                *s = 1.0 / *s;
            }
            for c in 0..d.c {
                for (o, &r) in p[c * BLOCK..c * BLOCK + len].iter_mut().zip(sum.iter()) {
                    *o *= r;
                }
            }
        }
    }
}

/// The target of channel `c` over one block, into `g`.
#[inline(always)]
fn target_block<L: Label>(t: TargetRef<'_, L>, d: Dims, b: usize, c: usize, n0: usize, len: usize, labels: &[f32], g: &mut [f32]) {
    match t {
        TargetRef::Dense(v) => {
            let base = (b * d.c + c) * d.n + n0;
            g[..len].copy_from_slice(&v[base..base + len]);
        }
        TargetRef::Labels(_) if d.c == 1 => g[..len].copy_from_slice(&labels[..len]),
        TargetRef::Labels(_) => {
            let cf = c as f32;
            for (o, &l) in g[..len].iter_mut().zip(&labels[..len]) {
                *o = if l == cf { 1.0 } else { 0.0 };
            }
        }
    }
}

#[inline(always)]
fn labels_block<L: Label>(t: TargetRef<'_, L>, d: Dims, b: usize, n0: usize, len: usize, out: &mut [f32]) {
    if let TargetRef::Labels(l) = t {
        for (o, &v) in out[..len].iter_mut().zip(&l[b * d.n + n0..b * d.n + n0 + len]) {
            *o = v.to_f32();
        }
    }
}

/// Per-block scratch space.
struct Scratch {
    p: Vec<f32>,
    g: Vec<f32>,
    labels: Vec<f32>,
    aux: Vec<f32>,
}

impl Scratch {
    fn new(c: usize) -> Self {
        Self { p: vec![0.0; c * BLOCK], g: vec![0.0; BLOCK], labels: vec![0.0; BLOCK], aux: vec![0.0; 2 * BLOCK] }
    }
}

/// `[sum m p m g, sum m p, sum m g, sum |m p - m g|]` (squared with `SQ`) over one block, with
/// `LANES` independent f32 accumulators per statistic (vectorised), returned in f64.
#[inline(always)]
fn accumulate<const SQ: bool, const MASK: bool>(p: &[f32], g: &[f32], m: &[f32], mp: &mut [f32], mg: &mut [f32], diff: bool) -> [f64; 4] {
    let (p, g) = if MASK {
        let len = p.len();
        for ((o, &a), &w) in mp[..len].iter_mut().zip(p).zip(m) {
            *o = a * w;
        }
        for ((o, &a), &w) in mg[..len].iter_mut().zip(g).zip(m) {
            *o = a * w;
        }
        (&mp[..len], &mg[..len])
    } else {
        (p, g)
    };
    let i = lane_sum(p, g, |a, b| a * b);
    let (pp, gg) = if SQ { (lane_sum(p, p, |a, b| a * b), lane_sum(g, g, |a, b| a * b)) } else { (lane_sum(p, p, |a, _| a), lane_sum(g, g, |a, _| a)) };
    let e = match (diff, SQ) {
        (false, _) => 0.0,
        (true, true) => lane_sum(p, g, |a, b| (a - b) * (a - b)),
        (true, false) => lane_sum(p, g, |a, b| (a - b).abs()),
    };
    [i, pp, gg, e]
}

/// `sum_i f(a_i, b_i)` with `LANES` independent f32 accumulators (vectorised), returned in f64.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l]);
        }
    }
    for (l, (&x, &y)) in ar.iter().zip(br).enumerate() {
        acc[l] += f(x, y);
    }
    acc.iter().map(|&v| v as f64).sum()
}

/// Sums of one block: `[4][K]` in f64.
#[inline(always)]
fn forward_block<L: Label, const FMA: bool>(x: &[f32], t: TargetRef<'_, L>, mask: Option<&[f32]>, d: Dims, spec: &Spec, b: usize, blk: usize, s: &mut Scratch) -> Vec<f64> {
    let n0 = blk * BLOCK;
    let len = BLOCK.min(d.n - n0);
    let k = d.k(spec);
    let first = d.first(spec);
    activate::<FMA>(x, d, spec, b, n0, len, &mut s.p, &mut s.aux);
    labels_block(t, d, b, n0, len, &mut s.labels);
    let m = mask.map(|m| &m[b * d.n + n0..b * d.n + n0 + len]);
    let mut out = vec![0.0f64; 4 * k];
    for (j, c) in (first..d.c).enumerate() {
        target_block(t, d, b, c, n0, len, &s.labels, &mut s.g);
        let p = &s.p[c * BLOCK..c * BLOCK + len];
        let g = &s.g[..len];
        let (mp, mg) = s.aux.split_at_mut(BLOCK);
        let sums = match (spec.squared, m) {
            (false, None) => accumulate::<false, false>(p, g, p, mp, mg, spec.difference),
            (false, Some(m)) => accumulate::<false, true>(p, g, m, mp, mg, spec.difference),
            (true, None) => accumulate::<true, false>(p, g, p, mp, mg, spec.difference),
            (true, Some(m)) => accumulate::<true, true>(p, g, m, mp, mg, spec.difference),
        };
        for (q, v) in sums.into_iter().enumerate() {
            out[q * k + j] = v;
        }
    }
    if !spec.difference {
        out[3 * k..].fill(0.0);
    }
    out
}

/// `u = d loss / d p` over one block from the gradients `[dI, dP, dE]` of one class's statistics.
#[inline(always)]
fn upstream<const SQ: bool, const MASK: bool>(p: &[f32], g: &[f32], m: &[f32], [gi, gp, ge]: [f32; 3], u: &mut [f32]) {
    for i in 0..p.len() {
        let w = if MASK { m[i] } else { 1.0 };
        let (mp, mg) = (w * p[i], w * g[i]);
        let diff = mp - mg;
        let v = if SQ {
            gi * mg + gp * 2.0 * mp + ge * 2.0 * diff
        } else {
            let sign = if diff > 0.0 { 1.0 } else if diff < 0.0 { -1.0 } else { 0.0 };
            gi * mg + gp + ge * sign
        };
        u[i] = if MASK { w * v } else { v };
    }
}

/// Gradient of one block, written into `dx` (the `[C, len]` block of sample `b`, rows strided by `N`).
#[inline(always)]
fn backward_block<L: Label, const FMA: bool>(
    x: &[f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    grad: &[f32],
    d: Dims,
    spec: &Spec,
    b: usize,
    blk: usize,
    s: &mut Scratch,
    u: &mut [f32],
    dx: DxPtr,
) {
    let n0 = blk * BLOCK;
    let len = BLOCK.min(d.n - n0);
    let k = d.k(spec);
    let first = d.first(spec);
    activate::<FMA>(x, d, spec, b, n0, len, &mut s.p, &mut s.aux);
    labels_block(t, d, b, n0, len, &mut s.labels);
    let m = mask.map(|m| &m[b * d.n + n0..b * d.n + n0 + len]);
    if first == 1 {
        u[..len].fill(0.0);
    }
    for (j, c) in (first..d.c).enumerate() {
        target_block(t, d, b, c, n0, len, &s.labels, &mut s.g);
        let gi = grad[b * k + j];
        let gp = grad[(d.b + b) * k + j];
        let ge = if spec.difference { grad[(3 * d.b + b) * k + j] } else { 0.0 };
        let p = &s.p[c * BLOCK..c * BLOCK + len];
        let g = &s.g[..len];
        let uc = &mut u[c * BLOCK..c * BLOCK + len];
        let coef = [gi, gp, ge];
        match (spec.squared, m) {
            (false, None) => upstream::<false, false>(p, g, p, coef, uc),
            (false, Some(m)) => upstream::<false, true>(p, g, m, coef, uc),
            (true, None) => upstream::<true, false>(p, g, p, coef, uc),
            (true, Some(m)) => upstream::<true, true>(p, g, m, coef, uc),
        }
    }
    match spec.act {
        Act::None => {
            for c in 0..d.c {
                dx.write(b, c, n0, &u[c * BLOCK..c * BLOCK + len], d);
            }
        }
        Act::Sigmoid => {
            for c in 0..d.c {
                let p = &s.p[c * BLOCK..c * BLOCK + len];
                let uc = &mut u[c * BLOCK..c * BLOCK + len];
                for (v, &pi) in uc.iter_mut().zip(p) {
                    *v *= pi * (1.0 - pi);
                }
                dx.write(b, c, n0, uc, d);
            }
        }
        Act::Softmax => {
            let dot = &mut s.aux[..len];
            dot.fill(0.0);
            for c in 0..d.c {
                let p = &s.p[c * BLOCK..c * BLOCK + len];
                let uc = &u[c * BLOCK..c * BLOCK + len];
                for i in 0..len {
                    dot[i] += p[i] * uc[i];
                }
            }
            for c in 0..d.c {
                let p = &s.p[c * BLOCK..c * BLOCK + len];
                let uc = &mut u[c * BLOCK..c * BLOCK + len];
                for i in 0..len {
                    uc[i] = p[i] * (uc[i] - dot[i]);
                }
                dx.write(b, c, n0, uc, d);
            }
        }
    }
}

/// A raw pointer to the gradient output; blocks write disjoint ranges.
#[derive(Clone, Copy)]
struct DxPtr(*mut f32);
unsafe impl Send for DxPtr {}
unsafe impl Sync for DxPtr {}

impl DxPtr {
    #[inline(always)]
    fn write(self, b: usize, c: usize, n0: usize, src: &[f32], d: Dims) {
        let offset = (b * d.c + c) * d.n + n0;
        // SAFETY: every (b, c, block) range is written by exactly one task, the output has
        // B * C * N elements and `n0 + src.len() <= N`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.0.add(offset), src.len()) }
    }
}

macro_rules! with_best_simd {
    ($name:ident, $avx:ident, $body:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx<L: Label>($($arg: $ty),*) -> $ret {
            $body::<L, true>($($arg),*)
        }
        fn $name<L: Label>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features the function is compiled for.
                return unsafe { $avx($($arg),*) };
            }
            $body::<L, false>($($arg),*)
        }
    };
}

with_best_simd!(forward_block_best, forward_block_avx2, forward_block,
    (x: &[f32], t: TargetRef<'_, L>, mask: Option<&[f32]>, d: Dims, spec: &Spec, b: usize, blk: usize, s: &mut Scratch) -> Vec<f64>);
with_best_simd!(backward_block_best, backward_block_avx2, backward_block,
    (x: &[f32], t: TargetRef<'_, L>, mask: Option<&[f32]>, grad: &[f32], d: Dims, spec: &Spec, b: usize, blk: usize, s: &mut Scratch, u: &mut [f32], dx: DxPtr) -> ());

/// The statistics `[4, B, K]` (I, P, G, E; E is 0 unless `spec.difference`).
pub fn forward<L: Label>(x: &[f32], t: TargetRef<'_, L>, mask: Option<&[f32]>, d: Dims, spec: Spec) -> Vec<f32> {
    assert_eq!(x.len(), d.b * d.c * d.n);
    let k = d.k(&spec);
    let blocks = d.blocks();
    let partial: Vec<Vec<f64>> = (0..d.b * blocks)
        .into_par_iter()
        .map_init(|| Scratch::new(d.c), |s, task| forward_block_best(x, t, mask, d, &spec, task / blocks, task % blocks, s))
        .collect();
    let mut out = vec![0.0f64; 4 * d.b * k];
    for (task, sums) in partial.iter().enumerate() {
        let b = task / blocks;
        for q in 0..4 {
            for j in 0..k {
                out[(q * d.b + b) * k + j] += sums[q * k + j];
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

/// The gradient with respect to the logits `[B, C, N]`, given the gradient of the statistics `[4, B, K]`.
pub fn backward<L: Label>(x: &[f32], t: TargetRef<'_, L>, mask: Option<&[f32]>, grad: &[f32], d: Dims, spec: Spec) -> Vec<f32> {
    assert_eq!(grad.len(), 4 * d.b * d.k(&spec));
    // Every element is written by exactly one block, so the buffer is not zeroed first (that
    // would be one more pass over B * C * N floats).
    let len = d.b * d.c * d.n;
    let mut dx: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { dx.set_len(len) };
    let ptr = DxPtr(dx.as_mut_ptr().cast::<f32>());
    let blocks = d.blocks();
    (0..d.b * blocks).into_par_iter().for_each_init(
        || (Scratch::new(d.c), vec![0.0f32; d.c * BLOCK]),
        |(s, u), task| backward_block_best(x, t, mask, grad, d, &spec, task / blocks, task % blocks, s, u, ptr),
    );
    // SAFETY: the blocks cover every (b, c, n) exactly once (n0 = blk * BLOCK for blk < ceil(N /
    // BLOCK), every c, every b), so every element has been written; MaybeUninit<f32> and f32
    // have the same layout.
    let mut dx = std::mem::ManuallyDrop::new(dx);
    unsafe { Vec::from_raw_parts(dx.as_mut_ptr().cast::<f32>(), dx.len(), dx.capacity()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same statistics and gradient, bit for bit, on 1, 2 and 3 threads.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (b, c, n) = (2usize, 5usize, 3 * BLOCK + 17);
        let x: Vec<f32> = (0..b * c * n).map(|i| ((i * 7919) % 1000) as f32 / 97.0 - 5.0).collect();
        let l: Vec<i64> = (0..b * n).map(|i| ((i * 31) % c) as i64).collect();
        let m: Vec<f32> = (0..b * n).map(|i| if i % 7 == 0 { 0.0 } else { 1.0 }).collect();
        let d = Dims { b, c, n };
        let spec = Spec { act: Act::Softmax, include_background: false, squared: false, difference: true };
        let grad: Vec<f32> = (0..4 * b * (c - 1)).map(|i| i as f32 * 0.01 - 0.1).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                (forward(&x, TargetRef::Labels(&l), Some(&m), d, spec), backward(&x, TargetRef::Labels(&l), Some(&m), &grad, d, spec))
            })
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }

    #[test]
    fn exp_matches_std_over_the_float_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, e) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((a - e) / e).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(exp_f32(-1e4), exp_f32(-87.336_55));
        assert!(exp_f32(1e4).is_finite());
        assert!(exp_f32(f32::NAN).is_nan());
    }
}
