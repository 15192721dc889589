//! The gradient's buffer shared by parallel tasks that write disjoint rows of it.

#![allow(clippy::too_many_arguments)]

use std::mem::MaybeUninit;

use super::layout::Dims;

/// A raw pointer to the gradient output; blocks write disjoint ranges.
#[derive(Clone, Copy)]
pub(crate) struct DxPtr(pub(crate) *mut MaybeUninit<f32>);
unsafe impl Send for DxPtr {}
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
        debug_assert!(v0 + len <= d.n && b < d.b && c < d.c);
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
