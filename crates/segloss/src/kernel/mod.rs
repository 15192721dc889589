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
//!   (CubeCL kernel in `cube_pointwise`), and, for the Generalized Wasserstein Dice loss,
//!   [`fused::FusedConfusionOps`]: the soft confusion matrix of a softmax against the target (CPU
//!   kernel in [`confusion`], CubeCL kernel in `cube_confusion`).
//!
//! [`Kernel::Auto`] (the default) takes the fused path wherever the device supports it.
pub mod buffer;
pub mod composed;
pub mod confusion;
pub mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube_confusion;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube_pointwise;
pub mod fused;

use std::cell::Cell;

/// Which implementation computes the overlap statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernel {
    /// The fused kernel where the backend has one, else the composed path.
    #[default]
    Auto,
    /// Always the composed Burn-operation path (every backend; the reference).
    Composed,
}

thread_local! {
    static KERNEL: Cell<Kernel> = const { Cell::new(Kernel::Auto) };
}

/// Runs `f` with the overlap statistics computed by `kernel` on this thread (then restores the
/// previous choice). Used to compare the fused and composed paths, and to benchmark them.
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use segloss::{Activation, DiceLossConfig, Kernel, with_kernel};
///
/// let device = Device::flex();
/// let x = Tensor::<4>::random([1, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
/// let y = Tensor::<4, Int>::zeros([1, 1, 8, 8], &device);
/// let loss = DiceLossConfig::new(Activation::Softmax).init();
/// let fused = loss.forward(x.clone(), y.clone()).into_scalar::<f32>();
/// let composed = with_kernel(Kernel::Composed, || loss.forward(x, y).into_scalar::<f32>());
/// assert!((fused - composed).abs() < 1e-5);
/// ```
pub fn with_kernel<R>(kernel: Kernel, f: impl FnOnce() -> R) -> R {
    let previous = KERNEL.with(|k| k.replace(kernel));
    struct Restore(Kernel);
    impl Drop for Restore {
        fn drop(&mut self) {
            KERNEL.with(|k| k.set(self.0));
        }
    }
    let _restore = Restore(previous);
    f()
}

/// The kernel choice in force on this thread.
pub fn current_kernel() -> Kernel {
    KERNEL.with(|k| k.get())
}
