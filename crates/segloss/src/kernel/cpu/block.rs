//! One task (a run of blocks of one sample): its forward sums and its gradient, tile by tile.

use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::disjoint::DxPtr;
use super::layout::{BLOCK, Dims, LANES, Label, ROWS_MAX, RUN, SOFTMAX, TILE, TargetRef, rows};
use super::maths::{aligned16, store_fence, target_at, upstream_at};
use super::pointwise::{
    class_grad_in_place_sigmoid_pw, class_grad_in_place_softmax_pw, class_pointwise_q,
    sigmoid_pointwise_sums, softmax_pointwise_sums, softmax_terms,
};
use super::rows::{class_activations, class_grad_in_place, class_probs_dot, class_sums};
use super::tile::{
    Scratch, background_split, softmax_tile, softmax_tile_without_background, tile_labels,
    tile_lse, tile_target,
};
use crate::input::Activation;
use crate::kernel::spec::{Pointwise, Spec};

/// One task: a run of blocks of one sample (one block for the softmax), specialised at run time
/// into the const-parameter variants.
pub(super) struct Block<'a, L> {
    pub(super) x: &'a [f32],
    pub(super) t: TargetRef<'a, L>,
    pub(super) mask: Option<&'a [f32]>,
    pub(super) grad: &'a [f32],
    pub(super) d: Dims,
    pub(super) spec: Spec,
    pub(super) b: usize,
    /// The first block of the run.
    pub(super) blk: usize,
    /// The number of blocks of the run.
    pub(super) nblk: usize,
    /// The pointwise term, when its sums are wanted (see the pointwise section).
    pub(super) pw: Option<Pointwise>,
}

impl<L: Label> Block<'_, L> {
    /// The tasks of a problem: `(sample, first block, blocks)` in sample and block order.
    pub(super) fn tasks(d: Dims, spec: &Spec) -> Vec<(usize, usize, usize)> {
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
    pub(super) fn span(&self) -> (usize, usize) {
        let n0 = self.blk * BLOCK;
        (n0, ((self.blk + self.nblk) * BLOCK).min(self.d.n) - n0)
    }

    /// Tiles of [`TILE`] voxels for the softmax, which needs every class of a voxel at once
    /// (L1-sized); the element-wise activations take the whole run as one tile.
    pub(super) fn tiles<const ACT: u8>(&self) -> impl Iterator<Item = (usize, usize)> {
        let (n0, len) = self.span();
        let tile = if ACT == SOFTMAX { TILE } else { len.max(1) };
        (n0..n0 + len)
            .step_by(tile)
            .map(move |v0| (v0, tile.min(n0 + len - v0)))
    }

    /// The mask of one tile (a row of ones without a mask: the `MASK = false` loops ignore it).
    pub(super) fn tile_mask<'s>(&'s self, v0: usize, len: usize, ones: &'s [f32]) -> &'s [f32] {
        match self.mask {
            Some(m) => &m[self.b * self.d.n + v0..][..len],
            None => &ones[..len],
        }
    }

    /// `[dI, dP, dE]` of channel `c` (zero for the background when it is not a class).
    pub(super) fn coef(&self, c: usize) -> [f32; 3] {
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
    pub(super) fn forward<
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
    pub(super) fn softmax_sums_pointwise<
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
    pub(super) fn forward_tile_without_background<
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
    pub(super) fn class_pass<
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
    pub(super) fn backward<
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
    pub(super) fn backward_in_place<
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
    pub(super) fn grad_tile<
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
    pub(super) fn grad_tile_without_background<
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
        // SAFETY: this task alone reads and writes the rows (b, c) over voxels v0..v0 + len,
        // which hold what the forward saved (and so for every `row_init` below).
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
            // SAFETY: as above, row (b, c) of this task's tile.
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
            // SAFETY: as above, row (b, c) of this task's tile.
            let q = unsafe { p.row_init(b, c, v0, len, d) };
            let (coef, big_q) = (self.coef(c), &s.q[c * TILE..][..len]);
            for i in 0..len {
                let (qi, pi) = (q[i], q[i] * rest[i]);
                let g = target_at::<LAB>(t[i], c as f32);
                let u = upstream_at::<false, MASK, false>(pi, g, m[i], coef);
                q[i] = pi * (u - dot[i]) + big_q[i] - qi * dot_fg[i];
            }
        }
        // SAFETY: as above; `z`, the earlier borrow of row (b, 0), is no longer used.
        let out = unsafe { p.row_init(b, 0, v0, len, d) };
        out.copy_from_slice(p0);
        class_grad_in_place::<0, LAB, false, MASK, false>(out, t0, 0.0, m, self.coef(0), dot);
    }

    /// The pointwise term's `gamma` (0 without the term).
    pub(super) fn gamma(&self) -> f32 {
        self.pw.map_or(0.0, |p| p.gamma)
    }

    /// Whether the pointwise term's softmax leaves the background out (see [`Pointwise`]).
    pub(super) fn pw_without_background(&self) -> bool {
        self.pw.is_some_and(|p| p.without_background)
    }

    /// The gradients `[a4, a5, a6, a7]` of the pointwise rows of channel `c` (every channel is a
    /// class when the pointwise term is on).
    pub(super) fn pw_coef(&self, c: usize) -> [f32; 4] {
        let (d, k) = (self.d, self.d.k(&self.spec));
        std::array::from_fn(|q| self.grad[((4 + q) * d.b + self.b) * k + c])
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
