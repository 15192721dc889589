//! Which implementation computes the overlap statistics on this thread ([`Kernel`]).

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
