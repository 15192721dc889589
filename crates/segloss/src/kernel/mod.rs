//! How the overlap statistics and their gradient are computed.
//!
//! - [`composed`] builds them from Burn tensor operations: it runs on every backend, Burn's
//!   autodiff differentiates it, and it is the reference the fused kernels are tested against.
//! - [`fused`] is a Burn backend extension with a hand-written backward, running the CPU kernel
//!   of [`cpu`] on Flex and the CubeCL kernel of `cube` on wgpu and CUDA (features `wgpu`,
//!   `cuda`): no one-hot or product tensor is built, and nothing of the prediction's size is
//!   allocated but the gradient (on Flex, when a backward is recorded, the forward writes the
//!   activations into the gradient's buffer so that the backward does not recompute them).
//!   Beside it, [`fused::FusedPointwiseOps`], the same pass with the cross-entropy and focal sums
//!   (CubeCL kernel in `cube::pointwise`), and, for the Generalized Wasserstein Dice loss,
//!   [`fused::FusedConfusionOps`]: the soft confusion matrix of a softmax against the target (CPU
//!   kernel in [`cpu::confusion`], CubeCL kernel in `cube::confusion`).
//!
//! [`Kernel::Auto`] (the default) takes the fused path wherever the device supports it.
pub mod buffer;
pub mod choice;
pub mod composed;
pub mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;
pub mod dispatch;
pub mod fused;
pub mod spec;

pub use choice::{Kernel, current_kernel, with_kernel};
pub use dispatch::overlap_stats;
