//! The fused overlap-statistics kernel for Burn's CubeCL backends (wgpu, CUDA): the same contract
//! as the CPU kernel of [`crate::kernel::cpu`], written with CubeCL so that one source compiles to WGSL /
//! SPIR-V (wgpu, including Mesa's software Vulkan driver lavapipe) and to CUDA.
//!
//! **Forward** (statistics `[4, B, K]`), two launches:
//!
//! 1. `stats_kernel`: a grid of `(chunks, B)` cubes of `UNITS` units (256, or the device's
//!    limit). A cube covers `UNITS * ITEMS` consecutive voxels of one sample; unit `u` takes
//!    voxels `u, u + UNITS, ...` of it (neighbouring units read neighbouring voxels, so the loads
//!    coalesce). Per voxel it computes the softmax maximum and normaliser once, then, class by
//!    class, recomputes `p` from the logit, reads the target (a label map compared with the
//!    class, or the dense value) and the mask, and accumulates `I`, `P`, `G`, `E` in f32
//!    registers. The cube then adds its units' sums in shared memory (a fixed binary tree,
//!    no atomics) and writes one partial per (statistic, sample, class) to a buffer
//!    `[4 B K, chunks]`.
//! 2. `sum_rows_kernel`: one cube per row of that buffer adds its `chunks` partials (each unit a
//!    strided sequential sum, then the same tree), giving `[4, B, K]`.
//!
//! Nothing of the prediction's size is allocated: the partial buffer holds `4 B K` floats per
//! `UNITS * ITEMS` voxels.
//!
//! **Layout**: every tensor is indexed through its strides, not as a packed array. CubeCL's CUDA
//! runtime allocates tensors with their rows padded to an alignment, so even a contiguous
//! `[B, C, N]` has a row stride above `N` unless `N` happens to be a multiple of it (found on an
//! H200: 307 of 356 conformance cases were wrong through CUDA while wgpu packs its rows).
//!
//! **Backward** (`grad_kernel`): one unit per voxel `(b, n)` recomputes the activations of its
//! `C` channels and writes all `C` gradient values, with the formulas of [`crate::kernel::cpu`].
//!
//! **Shared with the other CubeCL kernels** (the pointwise pass of `super::pointwise`, the
//! confusion matrix of `super::confusion`): the per-voxel helpers of the kernel module
//! (clamped `exp`, the softmax's maximum and normaliser, the activation, the target, label and
//! mask readers, the statistics' upstream gradient), the cube's tree sum, the row reduction
//! `sum_rows_kernel`, and on the host the input checks, the launch geometry and the reduction of
//! the partials. One copy of each, so that the kernels cannot drift apart.
//!
//! **Numerics**: everything is f32 (WGSL has no f64). A statistic of one (sample, class) is a
//! sequential sum of `ITEMS` values per unit, a binary tree of depth `log2 UNITS` per cube, a
//! sequential sum of `chunks / UNITS` cube partials per unit and a second tree: a summation depth
//! of `ITEMS + 2 log2 UNITS + N / (ITEMS UNITS^2)` for `N` voxels per sample, so a worst-case
//! relative error (non-negative terms) of that many units of roundoff, `2^-24` each: about
//! 1.3e-6 at 64^3 voxels, 2.4e-5 at 10^8 (typical errors are much smaller; the CPU kernel adds
//! its blocks in f64). The order of every addition is fixed by the launch geometry, so results
//! are deterministic for a given device. `exp` is the backend's, with its argument clamped to
//! `[-87.34, 88]` as in the CPU kernel (so logits of +-1e4 saturate; WGSL leaves an overflowing
//! `exp` undefined). No plane (subgroup) operations are used: software adapters
//! such as lavapipe run them disabled.

pub(crate) mod confusion;
mod host;
pub(crate) mod kernels;
pub(crate) mod pointwise;
mod stats;

pub use host::{ITEMS, UNITS};
