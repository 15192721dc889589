//! Tiles: the per-thread scratch space, the softmax of a tile (with and without the
//! background), and the target and labels of a tile.

use std::mem::MaybeUninit;

use super::layout::{BLOCK, Dims, LANES, Label, ROWS_MAX, RUN, TILE, TargetRef};
use super::maths::{exp_poly, ln_poly};

// ---------------------------------------------------------------------------------------------
// Tiles and blocks.
// ---------------------------------------------------------------------------------------------

/// Per-thread scratch space: the exponentials (then probabilities) of a tile, and per-voxel rows.
pub(super) struct Scratch {
    /// The channels the per-class buffers have room for.
    pub(super) channels: usize,
    pub(super) e: Vec<f32>,
    pub(super) max: Vec<f32>,
    pub(super) r: Vec<f32>,
    pub(super) dot: Vec<f32>,
    pub(super) labels: Vec<f32>,
    pub(super) ones: Vec<f32>,
    /// `ln sum_c exp(x_c)` per voxel of a softmax tile (for the pointwise term).
    pub(super) lse: Vec<f32>,
    /// With a pointwise term without the background ([`Pointwise::without_background`]), per
    /// voxel of a tile: `z = x_0 - ln sum_{c >= 1} exp(x_c)`, `1 - p_0 = s(-z)`, `p_0 = s(z)`
    /// (or, in the forward, `(1 - p_0) / sum_{c >= 1} exp(x_c - max)`), and the second softmax's
    /// `sum_j q_j` in the backward.
    pub(super) z: Vec<f32>,
    pub(super) rest: Vec<f32>,
    pub(super) p0: Vec<f32>,
    pub(super) dot_fg: Vec<f32>,
    /// One class's probabilities over a tile (backward without the background).
    pub(super) probs: Vec<f32>,
    /// The pointwise term `h` of one class over a softmax tile.
    pub(super) h: Vec<f32>,
    /// The pointwise term's `q` of every class of a softmax tile (`C x TILE`), from the first
    /// pass of the backward to the second.
    pub(super) q: Vec<f32>,
    pub(super) sink: Vec<MaybeUninit<f32>>,
    /// Lane accumulators per (block of the run, class): the overlap statistics, then the
    /// pointwise term's rows.
    pub(super) acc: Vec<[[f32; LANES]; ROWS_MAX]>,
}

impl Scratch {
    pub(super) fn new(d: Dims) -> Self {
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
pub(super) fn with_scratch<R>(d: Dims, f: impl FnOnce(&mut Scratch) -> R) -> R {
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
pub(super) fn tile_lse<const FMA: bool>(r: &[f32], max: &[f32], lse: &mut [f32]) {
    for ((l, &r), &m) in lse.iter_mut().zip(r).zip(max) {
        *l = -ln_poly::<FMA>(r) + m;
    }
}

/// The split of one voxel's softmax into the background and the rest, from
/// `z = x_0 - ln sum_{c >= 1} exp(x_c)`: `(p_0, 1 - p_0) = (s(z), s(-z))`, both to full relative
/// precision (one `exp`).
#[inline(always)]
pub(super) fn background_split<const FMA: bool>(z: f32) -> (f32, f32) {
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
pub(super) fn softmax_tile_without_background<const FMA: bool>(
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
pub(super) fn tile_target<'a, L: Label, const LAB: bool>(
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
