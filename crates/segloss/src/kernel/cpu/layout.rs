//! The kernel's units and shapes: block, tile and lane sizes, the output rows, the label types,
//! the target as slices and the problem sizes.

use crate::input::{Activation, TargetOf};
use crate::kernel::spec::{Pointwise, Spec};

/// The activation codes as const generic parameters take them ([`Activation::code`]).
pub(super) const SOFTMAX: u8 = Activation::SOFTMAX_CODE;
pub(super) const SIGMOID: u8 = Activation::SIGMOID_CODE;

/// Voxels per block, the unit of f64 accumulation (and of parallel work for the softmax; runs of
/// four blocks for the other activations).
pub const BLOCK: usize = 1024;
/// Voxels per tile: the softmax of a tile (`C x TILE` floats) stays in the L1 cache between the
/// passes over it.
pub(crate) const TILE: usize = 256;
/// Lanes of the f32 accumulators (one AVX2 vector).
pub(crate) const LANES: usize = 8;
/// Voxels per chunk of the pointwise sums' two loops (a multiple of `LANES`; on the stack).
pub(super) const POINTWISE_CHUNK: usize = 64;
/// Blocks per task for the element-wise activations: each class row is then read and written in
/// runs of `RUN * BLOCK` voxels (16 KiB), which the CPU's prefetchers follow better than runs of
/// one 4 KiB block. The softmax takes one block per task: it reads every class of a tile at once.
pub(super) const RUN: usize = 4;

/// Rows of the output with the pointwise term (the 4 overlap statistics, then 4 pointwise sums).
pub const ROWS_MAX: usize = 8;

/// Rows of the output: the overlap statistics, and the pointwise term's sums when asked for.
pub(super) fn rows(pointwise: bool) -> usize {
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
    pub(super) fn first(&self, spec: &Spec) -> usize {
        if spec.include_background { 0 } else { 1 }
    }
    /// Number of classes in the statistics.
    pub fn k(&self, spec: &Spec) -> usize {
        self.c - self.first(spec)
    }
    pub(super) fn blocks(&self) -> usize {
        self.n.div_ceil(BLOCK)
    }
}

/// One call's inputs: the logits (or saved activations: empty for the in-place backward), the
/// target, the mask, the sizes, the options and the pointwise term's `gamma` when wanted.
#[derive(Clone, Copy)]
pub(super) struct Problem<'a, L> {
    pub(super) x: &'a [f32],
    pub(super) t: TargetRef<'a, L>,
    pub(super) mask: Option<&'a [f32]>,
    pub(super) d: Dims,
    pub(super) spec: Spec,
    pub(super) pw: Option<Pointwise>,
}
