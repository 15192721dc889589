//! The soft confusion matrix of a softmax against a target, for the Generalized Wasserstein Dice
//! loss: a CPU kernel built like [`crate::kernel::cpu`] (rayon over blocks of voxels, the softmax of a
//! 256-voxel tile kept in the L1 cache, AVX2 + FMA detected at run time, SSE2 otherwise).
//!
//! **Forward** ([`forward`]): with `p = softmax(x)` over the `C` channels of logits `[B, C, N]`,
//! `m` the voxel mask `[B, N]` (1 without one) and `g` the target (one-hot from a label map
//! `[B, N]`, or the values of a dense target `[B, C, N]`), per sample `b`, true class `k` and
//! predicted class `c`:
//!
//! ```text
//! S[b, k, c] = sum_n m_n g_k,n p_c,n        V[b, k] = sum_n m_n g_k,n
//! ```
//!
//! in one pass over the logits, the softmax applied on the fly and the one-hot read from the
//! label map (no one-hot or probability tensor is built). Output `[B, C, C + 1]`: row `(b, k)`
//! holds `S[b, k, 0..C]`, then `V[b, k]`. A label outside `[0, C)` matches no class. Per tile the
//! target weights `w_k = m g_k` and the probabilities are laid out class by class, and `S` grows
//! as the small matrix product `W P^T`: `C * C` multiply-adds per voxel, vectorised over 8 voxels
//! (register blocks of 2 true by 4 predicted classes in the AVX2 code).
//!
//! **Backward**: given `dS`, the gradient `[B, C, C + 1]` of the output (its `V` column is
//! ignored: `V` does not depend on the logits), per voxel `n` of sample `b`
//!
//! ```text
//! u_c  = m_n sum_k g_k,n dS[b, k, c]      (label map: m_n dS[b, y_n, c], 0 for a label outside [0, C))
//! dx_c = p_c (u_c - sum_j p_j u_j)
//! ```
//!
//! For a label map the AVX2 code looks `dS[b, ., c]` up with a lane permutation indexed by the
//! labels (`C <= 16`; beyond that, lane by lane). As in [`crate::kernel::cpu`], [`backward`] recomputes
//! `p` from the logits, while [`forward_saving`] writes `p` in the forward's pass into a buffer of
//! the gradient's size (streaming stores) and [`backward_in_place`] turns that buffer into the
//! gradient; both give the same gradient bit for bit. Flex runs the saving pair whenever a
//! backward is recorded, as for the overlap statistics: the memory traffic costs less than the
//! `exp` it saves (`examples/kernel_timing.rs confusion` times both; the figures are in
//! `docs/performance-history.md`); the peak memory is the same.
//!
//! **Numerics**: sums run over blocks of [`BLOCK`] voxels with 8 f32 lane accumulators per entry;
//! block totals are added in f64 in block order, so the result does not depend on the number of
//! threads. The softmax is [`crate::kernel::cpu`]'s (the polynomial `exp` clamped to the float32 range:
//! logits of +-1e4 saturate instead of overflowing).

// The block functions take the problem and the block position as plain arguments so that they
// inline into the SIMD-specialised entry points.
#![allow(clippy::too_many_arguments)]

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::block::Work;
use super::check_inputs;
use super::disjoint::DxPtr;
use super::dispatch::Isa;
use super::layout::{BLOCK, Dims, LANES, Label, TILE, TargetRef};
use super::maths::{aligned16, madd, store_fence, store8};
use super::tile::{softmax_tile, tile_labels};
use crate::kernel::buffer::{assume_init, uninit};

/// Columns of a row of the output: the `C` predicted classes, then the volume.
fn cols(d: Dims) -> usize {
    d.c + 1
}

/// Per-thread scratch space for one tile.
struct Scratch {
    /// `exp(x - max)`, then the probabilities, class by class (`C x TILE`).
    e: Vec<f32>,
    /// The target weights `m g_k` (forward) or the upstream gradients `u_c` (backward),
    /// class by class (`C x TILE`).
    w: Vec<f32>,
    max: Vec<f32>,
    r: Vec<f32>,
    dot: Vec<f32>,
    labels: Vec<f32>,
    ones: Vec<f32>,
    /// Per voxel of a label map: the offset of its class's row in `dS` (0 for a label outside
    /// `[0, C)`), and its mask (0 for such a label).
    row: Vec<u32>,
    mv: Vec<f32>,
    /// Lane accumulators of the block, `[C][C + 1]`.
    acc: Vec<[f32; LANES]>,
}

impl Scratch {
    fn new(d: Dims) -> Self {
        Self {
            e: vec![0.0; d.c * TILE],
            w: vec![0.0; d.c * TILE],
            max: vec![0.0; TILE],
            r: vec![0.0; TILE],
            dot: vec![0.0; TILE],
            labels: vec![0.0; TILE],
            ones: vec![1.0; TILE],
            row: vec![0; TILE],
            mv: vec![0.0; TILE],
            acc: vec![[0.0; LANES]; d.c * cols(d)],
        }
    }
}

/// Adds `W P^T` of one tile to the lane accumulators: `acc[k * (C + 1) + c][l] += w_k,i p_c,i`
/// for the voxels `i = l, l + 8, ...` below `len8` (a multiple of 8; rows of `w` and `p` are
/// `TILE` apart, zero-padded up to `len8`). Each lane takes its voxels in order, so the AVX2 code
/// gives the same sums bit for bit as the lane-wise form with FMA.
#[inline(always)]
fn confusion_tile<const FMA: bool>(
    w: &[f32],
    p: &[f32],
    c: usize,
    len8: usize,
    acc: &mut [[f32; LANES]],
) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is true only in code compiled for AVX2 + FMA and run after checking the
        // CPU has them (`run_block_avx2`).
        unsafe { avx2::confusion_tile(w, p, c, len8, acc) };
        return;
    }
    let c1 = c + 1;
    for k in 0..c {
        let wk = &w[k * TILE..][..len8];
        for j in 0..c {
            let pj = &p[j * TILE..][..len8];
            let mut a = acc[k * c1 + j];
            for (wg, pg) in wk.chunks_exact(LANES).zip(pj.chunks_exact(LANES)) {
                for l in 0..LANES {
                    a[l] = madd::<FMA>(wg[l], pg[l], a[l]);
                }
            }
            acc[k * c1 + j] = a;
        }
    }
}

/// The forward's matrix product in AVX2 + FMA intrinsics, in register blocks: the lane-wise
/// form's accumulators did not stay in registers.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{LANES, TILE};
    use std::arch::x86_64::*;

    /// [`super::confusion_tile`] in blocks of up to 2 true by 4 predicted classes (8
    /// accumulators, 2 weight and 4 probability loads per 8 multiply-adds).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA, and the caller is compiled with them (`run_block_avx2`).
    #[inline(always)]
    pub(super) unsafe fn confusion_tile(
        w: &[f32],
        p: &[f32],
        c: usize,
        len8: usize,
        acc: &mut [[f32; LANES]],
    ) {
        let c1 = c + 1;
        assert!(
            len8.is_multiple_of(LANES)
                && len8 <= TILE
                && w.len() >= c * TILE
                && p.len() >= c * TILE
                && acc.len() >= c * c1
        );
        let mut k0 = 0;
        while k0 < c {
            let kb = (c - k0).min(2);
            let mut c0 = 0;
            while c0 < c {
                let cb = (c - c0).min(4);
                // SAFETY: the caller's contract; the block lies inside the checked sizes.
                unsafe {
                    match (kb, cb) {
                        (2, 4) => block::<2, 4>(w, p, k0, c0, c1, len8, acc),
                        (2, 3) => block::<2, 3>(w, p, k0, c0, c1, len8, acc),
                        (2, 2) => block::<2, 2>(w, p, k0, c0, c1, len8, acc),
                        (2, _) => block::<2, 1>(w, p, k0, c0, c1, len8, acc),
                        (_, 4) => block::<1, 4>(w, p, k0, c0, c1, len8, acc),
                        (_, 3) => block::<1, 3>(w, p, k0, c0, c1, len8, acc),
                        (_, 2) => block::<1, 2>(w, p, k0, c0, c1, len8, acc),
                        _ => block::<1, 1>(w, p, k0, c0, c1, len8, acc),
                    }
                }
                c0 += cb;
            }
            k0 += kb;
        }
    }

    /// The upstream gradients of a label map's tile, `u[j * TILE + i] = mv_i dS[y_i, j]` with
    /// `mv_i = m_i` for a label `y_i` in `[0, C)` and 0 otherwise, for the full runs of 8 voxels
    /// of `labels` (as floats); returns how many voxels it took. The row `dS[., j]` of `C <= 16`
    /// entries sits in two vectors, looked up by the labels with a lane permutation (the same
    /// product as the lane-wise form, so the same values bit for bit).
    ///
    /// # Safety
    /// As for [`confusion_tile`], and `c <= 16`.
    #[inline(always)]
    pub(super) unsafe fn upstream_labels(
        ds: &[f32],
        c: usize,
        labels: &[f32],
        m: &[f32],
        u: &mut [f32],
    ) -> usize {
        let (c1, len) = (c + 1, labels.len());
        let full = len - len % LANES;
        assert!(c <= 16 && ds.len() >= c * c1 && m.len() >= len && u.len() >= c * TILE);
        assert!(len <= TILE);
        // SAFETY: the caller's contract; loads and stores of 8 floats at `i + 8 <= full <= len`
        // (of `labels`, `m`, and row `j < C` of `u`, TILE apart).
        unsafe {
            let mut lo = [_mm256_setzero_ps(); 16];
            let mut hi = [_mm256_setzero_ps(); 16];
            for j in 0..c {
                let col = |k: usize| if k < c { ds[k * c1 + j] } else { 0.0 };
                lo[j] = _mm256_setr_ps(
                    col(0),
                    col(1),
                    col(2),
                    col(3),
                    col(4),
                    col(5),
                    col(6),
                    col(7),
                );
                hi[j] = _mm256_setr_ps(
                    col(8),
                    col(9),
                    col(10),
                    col(11),
                    col(12),
                    col(13),
                    col(14),
                    col(15),
                );
            }
            let (up, top, seven) = (
                u.as_mut_ptr(),
                _mm256_set1_epi32(c as i32),
                _mm256_set1_epi32(7),
            );
            let mut i = 0;
            while i < full {
                let y = _mm256_cvttps_epi32(_mm256_loadu_ps(labels.as_ptr().add(i)));
                let inside = _mm256_andnot_si256(
                    _mm256_cmpgt_epi32(_mm256_setzero_si256(), y),
                    _mm256_cmpgt_epi32(top, y),
                );
                let mv = _mm256_and_ps(
                    _mm256_loadu_ps(m.as_ptr().add(i)),
                    _mm256_castsi256_ps(inside),
                );
                let upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(y, seven));
                for j in 0..c {
                    let mut v = _mm256_permutevar8x32_ps(lo[j], y);
                    if c > 8 {
                        v = _mm256_blendv_ps(v, _mm256_permutevar8x32_ps(hi[j], y), upper);
                    }
                    _mm256_storeu_ps(up.add(j * TILE + i), _mm256_mul_ps(mv, v));
                }
                i += LANES;
            }
        }
        full
    }

    /// Accumulates true classes `k0..k0 + KB` against predicted classes `c0..c0 + CB`.
    ///
    /// # Safety
    /// As for [`confusion_tile`], and `k0 + KB`, `c0 + CB` are at most `C`, `len8 <= TILE`.
    // Index loops: each index addresses several arrays and pointer offsets at once.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn block<const KB: usize, const CB: usize>(
        w: &[f32],
        p: &[f32],
        k0: usize,
        c0: usize,
        c1: usize,
        len8: usize,
        acc: &mut [[f32; LANES]],
    ) {
        // SAFETY: the caller's contract; loads of 8 floats at `row * TILE + i` with
        // `i + 8 <= len8 <= TILE` and rows below C; accumulators below C * (C + 1).
        unsafe {
            let (wp, pp) = (w.as_ptr(), p.as_ptr());
            let mut a = [[_mm256_setzero_ps(); CB]; KB];
            for j in 0..KB {
                for q in 0..CB {
                    a[j][q] = _mm256_loadu_ps(acc[(k0 + j) * c1 + c0 + q].as_ptr());
                }
            }
            let mut wv = [_mm256_setzero_ps(); KB];
            let mut i = 0;
            while i < len8 {
                for j in 0..KB {
                    wv[j] = _mm256_loadu_ps(wp.add((k0 + j) * TILE + i));
                }
                for q in 0..CB {
                    let pv = _mm256_loadu_ps(pp.add((c0 + q) * TILE + i));
                    for j in 0..KB {
                        a[j][q] = _mm256_fmadd_ps(wv[j], pv, a[j][q]);
                    }
                }
                i += LANES;
            }
            for j in 0..KB {
                for q in 0..CB {
                    _mm256_storeu_ps(acc[(k0 + j) * c1 + c0 + q].as_mut_ptr(), a[j][q]);
                }
            }
        }
    }
}

/// Writes one row of a tile's probabilities to the saved buffer: streaming stores where `out` is
/// 16-byte aligned (the values are read again only by the backward), plain ones for the tail.
#[inline(always)]
fn save_row(src: &[f32], out: &mut [MaybeUninit<f32>]) {
    let len = out.len();
    let full = len - len % LANES;
    let nt = aligned16(out);
    for (s, o) in src[..full]
        .chunks_exact(LANES)
        .zip(out[..full].chunks_exact_mut(LANES))
    {
        let v: &[f32; LANES] = s.try_into().expect("8 floats");
        if nt {
            store8::<true>(o, v);
        } else {
            store8::<false>(o, v);
        }
    }
    for (o, &v) in out[full..].iter_mut().zip(&src[full..len]) {
        o.write(v);
    }
}

/// One task: one block of voxels of one sample.
struct Block<'a, L> {
    x: &'a [f32],
    t: TargetRef<'a, L>,
    mask: Option<&'a [f32]>,
    /// `dS` `[B, C, C + 1]` (backward only).
    grad: &'a [f32],
    d: Dims,
    b: usize,
    blk: usize,
}

impl<L: Label> Block<'_, L> {
    /// The tasks of a problem, `(sample, block)`, in sample and block order.
    fn tasks(d: Dims) -> Vec<(usize, usize)> {
        let blocks = d.n.div_ceil(BLOCK);
        (0..d.b)
            .flat_map(|b| (0..blocks).map(move |blk| (b, blk)))
            .collect()
    }

    /// The block's tiles, `(first voxel, length)`.
    fn tiles(&self) -> impl Iterator<Item = (usize, usize)> {
        let n0 = self.blk * BLOCK;
        let end = (n0 + BLOCK).min(self.d.n);
        (n0..end)
            .step_by(TILE)
            .map(move |v0| (v0, TILE.min(end - v0)))
    }

    /// The mask of one tile (ones without a mask).
    fn tile_mask<'s>(&'s self, v0: usize, len: usize, ones: &'s [f32]) -> &'s [f32] {
        match self.mask {
            Some(m) => &m[self.b * self.d.n + v0..][..len],
            None => &ones[..len],
        }
    }

    /// Row `c` of the dense target over one tile.
    fn dense_row(&self, c: usize, v0: usize, len: usize) -> &[f32] {
        match self.t {
            TargetRef::Dense(v) => &v[(self.b * self.d.c + c) * self.d.n + v0..][..len],
            TargetRef::Labels(_) => unreachable!("a dense target"),
        }
    }

    /// The block's sums `[C][C + 1]` in f64 (lanes added at the end); with `save`, the
    /// probabilities written to the buffer too.
    #[inline(always)]
    fn forward<const LAB: bool, const FMA: bool>(
        &self,
        s: &mut Scratch,
        save: Option<DxPtr>,
    ) -> Vec<f64> {
        let (d, b) = (self.d, self.b);
        let (c, c1) = (d.c, cols(d));
        s.acc.fill([0.0; LANES]);
        for (v0, len) in self.tiles() {
            let len8 = len.next_multiple_of(LANES);
            softmax_tile::<FMA>(self.x, d, b, v0, len, &mut s.e, &mut s.max, &mut s.r);
            // The probabilities, zero-padded to a multiple of 8 (the padding meets zero weights;
            // zeros rather than stale values, which could be a previous sample's NaN).
            for j in 0..c {
                let e = &mut s.e[j * TILE..][..len8];
                for (e, &r) in e.iter_mut().zip(&s.r[..len]) {
                    *e *= r;
                }
                e[len..].fill(0.0);
                if let Some(save) = save {
                    // SAFETY: this task alone writes row (b, j) over these voxels.
                    save_row(&e[..len], unsafe { save.row(b, j, v0, len, d) });
                }
            }
            let m = self.tile_mask(v0, len, &s.ones);
            if LAB {
                tile_labels(self.t, d, b, v0, len, &mut s.labels);
            }
            for k in 0..c {
                let w = &mut s.w[k * TILE..][..len8];
                if LAB {
                    let kf = k as f32;
                    for ((w, &y), &m) in w.iter_mut().zip(&s.labels[..len]).zip(m) {
                        *w = if y == kf { m } else { 0.0 };
                    }
                } else {
                    for ((w, &g), &m) in w.iter_mut().zip(self.dense_row(k, v0, len)).zip(m) {
                        *w = m * g;
                    }
                }
                w[len..].fill(0.0);
                let a = &mut s.acc[k * c1 + c];
                for wg in w.chunks_exact(LANES) {
                    for l in 0..LANES {
                        a[l] += wg[l];
                    }
                }
            }
            confusion_tile::<FMA>(&s.w, &s.e, c, len8, &mut s.acc);
        }
        if save.is_some() {
            store_fence();
        }
        s.acc
            .iter()
            .map(|a| a.iter().map(|&v| v as f64).sum())
            .collect()
    }

    /// Writes the block's gradient into `dx`: tile by tile, the probabilities into the tile's
    /// rows of `dx` (recomputed from the logits), then [`Block::grad_tile`] over them.
    #[inline(always)]
    fn backward<const LAB: bool, const FMA: bool>(&self, s: &mut Scratch, dx: DxPtr) {
        let (d, b) = (self.d, self.b);
        for (v0, len) in self.tiles() {
            softmax_tile::<FMA>(self.x, d, b, v0, len, &mut s.e, &mut s.max, &mut s.r);
            for j in 0..d.c {
                // SAFETY: this task alone writes row (b, j) over voxels v0..v0 + len.
                let out = unsafe { dx.row(b, j, v0, len, d) };
                for ((o, &e), &r) in out.iter_mut().zip(&s.e[j * TILE..][..len]).zip(&s.r) {
                    o.write(e * r);
                }
            }
            self.grad_tile::<LAB, FMA>(s, dx, v0, len);
        }
    }

    /// Turns the saved probabilities of the block (in `p`) into the gradient, in place.
    #[inline(always)]
    fn backward_in_place<const LAB: bool, const FMA: bool>(&self, s: &mut Scratch, p: DxPtr) {
        for (v0, len) in self.tiles() {
            self.grad_tile::<LAB, FMA>(s, p, v0, len);
        }
    }

    /// Turns the probabilities of one tile (`len` voxels from `v0`, in `p`) into the gradient:
    /// `u` into the scratch rows, `sum_j p_j u_j` per voxel, then `p_c (u_c - sum)`.
    #[inline(always)]
    fn grad_tile<const LAB: bool, const FMA: bool>(
        &self,
        s: &mut Scratch,
        p: DxPtr,
        v0: usize,
        len: usize,
    ) {
        let (d, b) = (self.d, self.b);
        let (c, c1) = (d.c, cols(d));
        let ds = &self.grad[b * c * c1..][..c * c1];
        let m = self.tile_mask(v0, len, &s.ones);
        if LAB {
            tile_labels(self.t, d, b, v0, len, &mut s.labels);
            // The full runs of 8: a lane permutation per class with AVX2 (C <= 16); the rest
            // lane by lane.
            #[allow(unused_mut)]
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if FMA && c <= 16 {
                // SAFETY: `FMA` is true only in code compiled for AVX2 + FMA and run after
                // checking the CPU has them (`run_block_avx2`); `c <= 16`.
                done = unsafe { avx2::upstream_labels(ds, c, &s.labels[..len], m, &mut s.w) };
            }
            let top = c as f32;
            for (((row, mv), &y), &m) in s.row[done..len]
                .iter_mut()
                .zip(&mut s.mv[done..len])
                .zip(&s.labels[done..len])
                .zip(&m[done..])
            {
                let inside = y >= 0.0 && y < top;
                *row = if inside { y as u32 * c1 as u32 } else { 0 };
                *mv = if inside { m } else { 0.0 };
            }
            for j in 0..c {
                let u = &mut s.w[j * TILE..][done..len];
                let col = &ds[j..];
                for ((u, &row), &mv) in u.iter_mut().zip(&s.row[done..len]).zip(&s.mv[done..len]) {
                    *u = mv * col[row as usize];
                }
            }
        } else {
            for j in 0..c {
                let u = &mut s.w[j * TILE..][..len];
                u.fill(0.0);
                for k in 0..c {
                    let coef = ds[k * c1 + j];
                    for (u, &g) in u.iter_mut().zip(self.dense_row(k, v0, len)) {
                        *u = madd::<FMA>(g, coef, *u);
                    }
                }
                for (u, &m) in u.iter_mut().zip(m) {
                    *u *= m;
                }
            }
        }
        let dot = &mut s.dot[..len];
        dot.fill(0.0);
        for j in 0..c {
            // SAFETY: this task alone reads and writes row (b, j) over voxels v0..v0 + len,
            // which holds the probabilities written before.
            let row = unsafe { p.row_init(b, j, v0, len, d) };
            for ((dot, &p), &u) in dot.iter_mut().zip(&*row).zip(&s.w[j * TILE..][..len]) {
                *dot = madd::<FMA>(p, u, *dot);
            }
        }
        for j in 0..c {
            // SAFETY: as above.
            let row = unsafe { p.row_init(b, j, v0, len, d) };
            for ((p, &u), &dot) in row.iter_mut().zip(&s.w[j * TILE..][..len]).zip(&*dot) {
                *p *= u - dot;
            }
        }
    }
}

/// Runs one block of work with the const parameters matching its target.
#[inline(always)]
fn run_block<L: Label, const FMA: bool>(
    blk: &Block<'_, L>,
    s: &mut Scratch,
    work: Work,
) -> Vec<f64> {
    #[inline(always)]
    fn leaf<L: Label, const LAB: bool, const FMA: bool>(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        match work {
            Work::Forward(save) => blk.forward::<LAB, FMA>(s, save),
            Work::Backward(dx) => {
                blk.backward::<LAB, FMA>(s, dx);
                Vec::new()
            }
            Work::BackwardInPlace(p) => {
                blk.backward_in_place::<LAB, FMA>(s, p);
                Vec::new()
            }
        }
    }
    if matches!(blk.t, TargetRef::Labels(_)) {
        leaf::<L, true, FMA>(blk, s, work)
    } else {
        leaf::<L, false, FMA>(blk, s, work)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_block_avx2<L: Label>(blk: &Block<'_, L>, s: &mut Scratch, work: Work) -> Vec<f64> {
    run_block::<L, true>(blk, s, work)
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

/// One call's inputs: the logits (empty for the in-place backward), the target, the mask, the
/// sizes and `dS` (empty for a forward).
#[derive(Clone, Copy)]
struct Problem<'a, L> {
    x: &'a [f32],
    t: TargetRef<'a, L>,
    mask: Option<&'a [f32]>,
    grad: &'a [f32],
    d: Dims,
}

impl<L: Label> Problem<'_, L> {
    /// Runs `work` on every task in parallel, one scratch space per thread; the tasks' results
    /// (their block sums for a forward) in task order.
    fn run(&self, isa: Isa, work: Work) -> Vec<Vec<f64>> {
        let &Problem {
            x,
            t,
            mask,
            grad,
            d,
        } = self;
        Block::<L>::tasks(d)
            .par_iter()
            .map_init(
                || Scratch::new(d),
                |s, &(b, blk)| {
                    let block = Block {
                        x,
                        t,
                        mask,
                        grad,
                        d,
                        b,
                        blk,
                    };
                    run_block_with(isa, &block, s, work)
                },
            )
            .collect()
    }

    /// Checks the sizes of the target, the mask and `what` (`x` values), and of `dS` when
    /// `backward`.
    fn check(&self, what: &str, x: usize, backward: bool) {
        let d = self.d;
        assert!(d.c >= 1, "segloss kernel: the logits have no channel");
        check_inputs(what, x, self.t, self.mask, d);
        if backward {
            let want = d.b * d.c * cols(d);
            assert_eq!(
                self.grad.len(),
                want,
                "segloss kernel: the confusion matrix's gradient has {} values, expected B * C * (C + 1) = {want}",
                self.grad.len()
            );
        }
    }

    fn forward(&self, save: Option<DxPtr>, isa: Isa) -> Vec<f32> {
        let d = self.d;
        self.check("the logits", self.x.len(), false);
        let per = d.c * cols(d);
        let mut out = vec![0.0f64; d.b * per];
        // Block totals added in f64 in block order (the order does not depend on the threads).
        for (&(b, _), sums) in Block::<L>::tasks(d)
            .iter()
            .zip(self.run(isa, Work::Forward(save)))
        {
            for (o, v) in out[b * per..(b + 1) * per].iter_mut().zip(sums) {
                *o += v;
            }
        }
        out.into_iter().map(|v| v as f32).collect()
    }

    fn forward_saving(&self, isa: Isa) -> (Vec<f32>, Vec<f32>) {
        let d = self.d;
        let mut p = uninit(d.b * d.c * d.n);
        let out = self.forward(Some(DxPtr(p.as_mut_ptr())), isa);
        // SAFETY: the blocks cover every (b, c, n) exactly once (every sample, every block, every
        // tile of a block, every channel of a tile), so every element has been written.
        (out, unsafe { assume_init(p) })
    }

    fn backward(&self, isa: Isa) -> Vec<f32> {
        let d = self.d;
        self.check("the logits", self.x.len(), true);
        let mut dx = uninit(d.b * d.c * d.n);
        self.run(isa, Work::Backward(DxPtr(dx.as_mut_ptr())));
        // SAFETY: the blocks cover every (b, c, n) exactly once, so every element has been written.
        unsafe { assume_init(dx) }
    }

    fn backward_in_place(&self, p: &mut [f32], isa: Isa) {
        self.check("the probabilities", p.len(), true);
        let ptr = DxPtr(p.as_mut_ptr().cast::<MaybeUninit<f32>>());
        self.run(isa, Work::BackwardInPlace(ptr));
    }
}

/// The soft confusion matrix and the target volumes `[B, C, C + 1]` of logits `x` `[B, C, N]`
/// (softmax over the channels) against `t`, weighted by `mask` `[B, N]`: row `(b, k)` holds
/// `S[b, k, c] = sum_n m g_k p_c` for `c < C`, then `V[b, k] = sum_n m g_k` (module docs).
///
/// # Panics
/// If a slice's length does not match `d` (the message names it), or `d.c` is 0.
pub fn forward<L: Label>(
    x: &[f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    d: Dims,
) -> Vec<f32> {
    Problem {
        x,
        t,
        mask,
        grad: &[],
        d,
    }
    .forward(None, Isa::Best)
}

/// [`forward`], and the probabilities `p` `[B, C, N]` written in the same pass, for
/// [`backward_in_place`].
///
/// # Panics
/// As [`forward`].
pub fn forward_saving<L: Label>(
    x: &[f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    d: Dims,
) -> (Vec<f32>, Vec<f32>) {
    Problem {
        x,
        t,
        mask,
        grad: &[],
        d,
    }
    .forward_saving(Isa::Best)
}

/// The gradient with respect to the logits `[B, C, N]`, given the gradient `grad` `[B, C, C + 1]`
/// of [`forward`]'s output (the volume column's is ignored).
///
/// # Panics
/// If a slice's length does not match `d` (the message names it), or `d.c` is 0.
pub fn backward<L: Label>(
    x: &[f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    grad: &[f32],
    d: Dims,
) -> Vec<f32> {
    Problem {
        x,
        t,
        mask,
        grad,
        d,
    }
    .backward(Isa::Best)
}

/// [`backward`] written over the probabilities `p` that [`forward_saving`] returned (no logits
/// read, no `exp` recomputed, nothing allocated).
///
/// # Panics
/// As [`backward`].
pub fn backward_in_place<L: Label>(
    p: &mut [f32],
    t: TargetRef<'_, L>,
    mask: Option<&[f32]>,
    grad: &[f32],
    d: Dims,
) {
    Problem {
        x: &[],
        t,
        mask,
        grad,
        d,
    }
    .backward_in_place(p, Isa::Best)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in `[0, 1)`.
    fn noise(i: usize, seed: usize) -> f32 {
        let v = (i as u64 + 1)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(seed as u64 * 0xbf58_476d_1ce4_e5b9);
        ((v ^ (v >> 29)).wrapping_mul(0x94d0_49bb_1331_11eb) >> 40) as f32 / (1u64 << 24) as f32
    }

    /// The output `[B, C, C + 1]` and the gradient `[B, C, N]` for `dS`, in f64 voxel by voxel
    /// from the formulas of the module docs (`g(b, k, n)` the target, `m(b, n)` the mask).
    fn reference(
        x: &[f32],
        g: &dyn Fn(usize, usize, usize) -> f64,
        m: &dyn Fn(usize, usize) -> f64,
        ds: &[f32],
        d: Dims,
    ) -> (Vec<f64>, Vec<f64>) {
        let (c, c1) = (d.c, d.c + 1);
        let mut out = vec![0.0f64; d.b * c * c1];
        let mut dx = vec![0.0f64; d.b * c * d.n];
        for b in 0..d.b {
            for n in 0..d.n {
                let xs: Vec<f64> = (0..c).map(|j| x[(b * c + j) * d.n + n] as f64).collect();
                let max = xs.iter().cloned().fold(f64::MIN, f64::max);
                let sum: f64 = xs.iter().map(|v| (v - max).exp()).sum();
                let p: Vec<f64> = xs.iter().map(|v| (v - max).exp() / sum).collect();
                let w = m(b, n);
                let mut u = vec![0.0f64; c];
                for k in 0..c {
                    let gk = w * g(b, k, n);
                    for j in 0..c {
                        out[(b * c + k) * c1 + j] += gk * p[j];
                        u[j] += gk * ds[(b * c + k) * c1 + j] as f64;
                    }
                    out[(b * c + k) * c1 + c] += gk;
                }
                let dot: f64 = (0..c).map(|j| p[j] * u[j]).sum();
                for j in 0..c {
                    dx[(b * c + j) * d.n + n] = p[j] * (u[j] - dot);
                }
            }
        }
        (out, dx)
    }

    /// Logits of scale 4, with every 97th value at +-1e4 when `extreme`.
    fn logits(d: Dims, extreme: bool) -> Vec<f32> {
        (0..d.b * d.c * d.n)
            .map(|i| {
                if extreme && i % 97 == 0 {
                    if i % 2 == 0 { 1e4 } else { -1e4 }
                } else {
                    noise(i, 1) * 8.0 - 4.0
                }
            })
            .collect()
    }

    /// Both instruction sets against the f64 reference: label maps (i64 with labels outside
    /// `[0, C)`, which match no class, and i32) and soft dense targets, with and without a mask;
    /// shapes with one voxel, odd lengths (tails of tiles and of 8-voxel runs), several blocks,
    /// `C` from 2 to 17 (every register block shape of the AVX2 code and its remainders); logits
    /// of +-1e4. Tolerance: 1e-5 relative for the sums (1 as the floor), 1e-5 of the largest
    /// `dS` for the gradient; and the two instruction sets within 2e-6 of each other.
    #[test]
    fn both_instruction_sets_match_the_f64_reference() {
        let shapes = [
            (1usize, 2usize, 1usize),
            (3, 2, 37),
            (2, 3, BLOCK + 13),
            (1, 5, 2 * TILE + 7),
            (3, 9, 2 * BLOCK + 301),
            (1, 14, 777),
            (2, 17, 301),
        ];
        for (b, c, n) in shapes {
            let d = Dims { b, c, n };
            let x = logits(d, true);
            // Every 11th label outside [0, C): -1, C or 100.
            let l64: Vec<i64> = (0..b * n)
                .map(|i| match i % 33 {
                    0 => -1,
                    11 => c as i64,
                    22 => 100,
                    _ => (noise(i, 2) * c as f32) as i64,
                })
                .collect();
            let l32: Vec<i32> = (0..b * n)
                .map(|i| (noise(i, 3) * c as f32) as i32)
                .collect();
            let dense: Vec<f32> = (0..b * c * n).map(|i| noise(i, 4)).collect();
            let mask: Vec<f32> = (0..b * n)
                .map(|i| if i % 5 == 0 { 0.0 } else { noise(i, 5) })
                .collect();
            let ds: Vec<f32> = (0..b * c * (c + 1))
                .map(|i| noise(i, 6) * 2.0 - 1.0)
                .collect();
            let ds_max = ds.iter().fold(0.0f32, |a, v| a.max(v.abs())) as f64;
            for target in 0..3 {
                for masked in [false, true] {
                    let m = |bb: usize, nn: usize| {
                        if masked {
                            mask[bb * n + nn] as f64
                        } else {
                            1.0
                        }
                    };
                    let one_hot = |y: i64, k: usize| f64::from(y == k as i64);
                    let g64 = |bb: usize, k: usize, nn: usize| one_hot(l64[bb * n + nn], k);
                    let g32 = |bb: usize, k: usize, nn: usize| one_hot(l32[bb * n + nn] as i64, k);
                    let gd = |bb: usize, k: usize, nn: usize| dense[(bb * c + k) * n + nn] as f64;
                    let g: &dyn Fn(usize, usize, usize) -> f64 = match target {
                        0 => &g64,
                        1 => &g32,
                        _ => &gd,
                    };
                    let (want, want_dx) = reference(&x, g, &m, &ds, d);
                    let what = format!("{b}x{c}x{n} target {target} masked {masked}");
                    let mask = masked.then_some(&mask[..]);
                    let mut results = Vec::new();
                    for isa in [Isa::Best, Isa::Baseline] {
                        fn run<L: Label>(p: Problem<'_, L>, isa: Isa) -> (Vec<f32>, Vec<f32>) {
                            (p.forward(None, isa), p.backward(isa))
                        }
                        let problem = |t| Problem {
                            x: &x,
                            t,
                            mask,
                            grad: &ds,
                            d,
                        };
                        let (out, dx) = match target {
                            0 => run(problem(TargetRef::Labels(&l64)), isa),
                            1 => run(
                                Problem {
                                    x: &x,
                                    t: TargetRef::Labels(&l32),
                                    mask,
                                    grad: &ds,
                                    d,
                                },
                                isa,
                            ),
                            _ => run(problem(TargetRef::Dense(&dense)), isa),
                        };
                        assert_eq!((out.len(), dx.len()), (want.len(), want_dx.len()));
                        for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
                            assert!(
                                got.is_finite()
                                    && (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                                "{what} {isa:?}: output [{i}] {got} vs {want}"
                            );
                        }
                        for (i, (&got, &want)) in dx.iter().zip(&want_dx).enumerate() {
                            assert!(
                                got.is_finite() && (got as f64 - want).abs() <= 1e-5 * ds_max,
                                "{what} {isa:?}: gradient [{i}] {got} vs {want}"
                            );
                        }
                        results.push((out, dx));
                    }
                    let (best, base) = (&results[0], &results[1]);
                    for (g, w) in best.0.iter().zip(&base.0) {
                        assert!(
                            (g - w).abs() <= 2e-6 * w.abs().max(1.0),
                            "{what}: output {g} vs baseline {w}"
                        );
                    }
                    for (g, w) in best.1.iter().zip(&base.1) {
                        assert!(
                            (g - w).abs() <= 2e-6 * ds_max as f32,
                            "{what}: gradient {g} vs baseline {w}"
                        );
                    }
                }
            }
        }
    }

    /// The saving forward gives the same output as the plain one and saves the probabilities,
    /// and the in-place backward gives the same gradient as the recomputing one, bit for bit;
    /// the results do not depend on the number of threads (several blocks per sample, the last
    /// one short).
    #[test]
    fn saved_probabilities_and_thread_count_give_the_same_results() {
        let (b, c, n) = (2usize, 6usize, 3 * BLOCK + 2 * TILE + 45);
        let d = Dims { b, c, n };
        let x = logits(d, false);
        let labels: Vec<i64> = (0..b * n)
            .map(|i| (noise(i, 7) * c as f32) as i64)
            .collect();
        let dense: Vec<f32> = (0..b * c * n).map(|i| noise(i, 8)).collect();
        let mask: Vec<f32> = (0..b * n).map(|i| noise(i, 9)).collect();
        let ds: Vec<f32> = (0..b * c * (c + 1)).map(|i| noise(i, 10) - 0.5).collect();
        for t in [TargetRef::Labels(&labels[..]), TargetRef::Dense(&dense[..])] {
            for mask in [None, Some(&mask[..])] {
                let run = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    pool.install(|| {
                        let (out, mut p) = forward_saving(&x, t, mask, d);
                        let probs = p.clone();
                        backward_in_place(&mut p, t, mask, &ds, d);
                        (
                            forward(&x, t, mask, d),
                            out,
                            backward(&x, t, mask, &ds, d),
                            p,
                            probs,
                        )
                    })
                };
                let one = run(1);
                assert_eq!(one.0, one.1, "saving forward");
                assert_eq!(one.2, one.3, "in-place backward");
                for (i, &p) in one.4.iter().enumerate().step_by(53) {
                    let (bb, v) = (i / (c * n), i % n);
                    let xs: Vec<f64> = (0..c).map(|j| x[(bb * c + j) * n + v] as f64).collect();
                    let max = xs.iter().cloned().fold(f64::MIN, f64::max);
                    let sum: f64 = xs.iter().map(|u| (u - max).exp()).sum();
                    let want = (x[i] as f64 - max).exp() / sum;
                    assert!(
                        (p as f64 - want).abs() <= 1e-6 * want.max(1e-3),
                        "p {p} vs {want}"
                    );
                }
                assert_eq!(one, run(2));
                assert_eq!(one, run(3));
            }
        }
    }

    /// Saturated logits give finite sums whose rows add up to the volumes, and a finite gradient.
    #[test]
    fn logits_of_1e4_stay_finite() {
        let (b, c, n) = (1usize, 4usize, 300usize);
        let d = Dims { b, c, n };
        let x: Vec<f32> = (0..b * c * n)
            .map(|i| match i % 3 {
                0 => 1e4,
                1 => -1e4,
                _ => 0.0,
            })
            .collect();
        let labels: Vec<i32> = (0..n as i32).map(|i| i % c as i32).collect();
        let ds: Vec<f32> = (0..c * (c + 1)).map(|i| i as f32 * 0.1 - 1.0).collect();
        let out = forward(&x, TargetRef::Labels(&labels), None, d);
        for k in 0..c {
            let row = &out[k * (c + 1)..][..c + 1];
            let total: f32 = row[..c].iter().sum();
            assert!(row.iter().all(|v| v.is_finite()), "{row:?}");
            assert!((total - row[c]).abs() <= 1e-3, "{row:?}");
        }
        let dx = backward(&x, TargetRef::Labels(&labels), None, &ds, d);
        assert!(dx.iter().all(|v| v.is_finite()));
    }

    #[test]
    #[should_panic(
        expected = "the confusion matrix's gradient has 6 values, expected B * C * (C + 1) = 12"
    )]
    fn a_gradient_of_the_wrong_size_is_named() {
        let d = Dims { b: 2, c: 2, n: 3 };
        backward(
            &[0.0; 12],
            TargetRef::Labels(&[0i64; 6]),
            None,
            &[0.0; 6],
            d,
        );
    }
}
