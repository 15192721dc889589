//! One safe-to-call shape of the `gemm` crate's product: `dst (+)= lhs · rhs` over strided views.

/// A read-only strided matrix view: element `(i, j)` at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl View {
    pub fn new(data: &[f32], rs: usize, cs: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            rs: rs as isize,
            cs: cs as isize,
        }
    }
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` when `accumulate`), `lhs` `m x k`, `rhs` `k x n`,
/// `dst` `m x n` at `dst + i * dst_rs + j * dst_cs`, on the calling thread (the callers run
/// their chunks in parallel).
///
/// # Safety
/// Every element the views and `dst` address for those sizes must be inside live allocations,
/// `dst`'s elements written by no other thread during the call and not aliased by `lhs`/`rhs`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the caller's contract is gemm's: in-bounds views and an exclusive destination.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}
