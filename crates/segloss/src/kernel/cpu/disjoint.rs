//! The gradient's buffer shared by parallel tasks that write disjoint rows of it.

use std::mem::MaybeUninit;

use super::layout::Dims;

/// A raw pointer to an output of `B * C * N` floats that parallel tasks write in disjoint rows
/// `(b, c, v0..v0 + len)`: the one primitive behind every multi-threaded write of the kernels.
#[derive(Clone, Copy)]
pub(crate) struct DxPtr(pub(crate) *mut MaybeUninit<f32>);
// SAFETY: the pointer is only dereferenced through `row` / `row_init`, whose callers guarantee
// that no two threads hold the same elements; the buffer outlives the parallel section that
// shares the pointer (it is owned by the caller of the rayon scope).
unsafe impl Send for DxPtr {}
// SAFETY: as for `Send`: shared references to a `DxPtr` only copy the pointer.
unsafe impl Sync for DxPtr {}

impl DxPtr {
    /// Row `(b, c)` of the output over voxels `v0..v0 + len`.
    ///
    /// # Safety
    /// No other live reference may cover the same elements; the output has `B * C * N` elements.
    #[inline(always)]
    pub(crate) unsafe fn row<'a>(
        self,
        b: usize,
        c: usize,
        v0: usize,
        len: usize,
        d: Dims,
    ) -> &'a mut [MaybeUninit<f32>] {
        // A row costs at least a tile of work: the bounds check is negligible, and it keeps a
        // wrong row from writing outside the `B * C * N` output in release builds too.
        assert!(
            v0 + len <= d.n && b < d.b && c < d.c,
            "segloss kernel: row ({b}, {c}, {v0}..{}) outside [{}, {}, {}]",
            v0 + len,
            d.b,
            d.c,
            d.n
        );
        // SAFETY: in bounds of the `B * C * N` output (checked above); the caller guarantees that
        // no other live reference covers these elements.
        unsafe { std::slice::from_raw_parts_mut(self.0.add((b * d.c + c) * d.n + v0), len) }
    }

    /// [`row`](DxPtr::row) of an initialised buffer.
    ///
    /// # Safety
    /// As for `row`, and the elements are initialised.
    #[inline(always)]
    pub(crate) unsafe fn row_init<'a>(
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
