//! The CPU kernels on plain `f32` slices (contiguous, row-major `[B, C, D, H, W]`): what the Flex
//! backend runs. Each convolution is written as im2col + a matrix product ([`gemm`]) over chunks
//! of output rows small enough for the column buffer to stay in cache; the transposed
//! convolution with `stride == kernel` as one matrix product per chunk and a scatter; instance
//! norm and leaky ReLU as one pass over each channel (plus one for its statistics).

/// Defines `fn $name(args) -> R` running `$body(args)`, compiled with AVX-512F where the CPU has
/// it (checked at run time) and for the baseline target elsewhere: the copies and per-voxel loops
/// of these kernels then move 16 floats per instruction. `$body` must be `#[inline(always)]` so
/// that it is compiled into each variant.
macro_rules! with_avx512 {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:path) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, checked on the line above.
                    return unsafe { avx512($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

pub mod conv;
mod matmul;
pub mod norm;
mod tasks;
pub mod transpose;
