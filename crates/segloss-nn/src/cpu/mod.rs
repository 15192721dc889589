//! The CPU kernels on plain `f32` slices (contiguous, row-major `[B, C, D, H, W]`): what the Flex
//! backend runs. Each convolution is written as im2col + a matrix product ([`gemm`]) over chunks
//! of output rows small enough for the column buffer to stay in cache; the transposed
//! convolution with `stride == kernel` as one matrix product per chunk and a scatter; instance
//! norm and leaky ReLU as one pass over each channel (plus one for its statistics).

pub mod conv;
mod matmul;
pub mod norm;
mod tasks;
pub mod transpose;
