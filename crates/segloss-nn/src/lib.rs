//! Fast CPU layers for 3D segmentation networks on [Burn](https://burn.dev): the 3D convolution,
//! the transposed convolution that upsamples by its kernel, and instance norm fused with a leaky
//! ReLU, each with a hand-written backward, as a Burn backend extension on Flex (Burn's CPU
//! backend) and its autodiff decorator. On other devices and for options the kernels do not
//! cover, the same functions call Burn's operations, so a network written with them runs
//! everywhere.
//!
//! Why: Burn Flex computes a 3D convolution's weight gradient as a convolution whose kernel is
//! the whole output gradient, and its forward builds im2col patches voxel by voxel; a U-Net
//! training step spent about 70% of its time there. Here each convolution is im2col (a shifted
//! copy per input row at stride 1) and one matrix product per chunk of output rows (the `gemm`
//! crate that Flex itself uses), in the forward and in both gradients.
//!
//! ```
//! use burn::nn::conv::Conv3dConfig;
//! use burn::nn::PaddingConfig3d;
//! use burn::tensor::{Device, Distribution, Tensor};
//!
//! let device = Device::flex();
//! let conv = Conv3dConfig::new([2, 4], [3, 3, 3])
//!     .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
//!     .init(&device);
//! let x = Tensor::<5>::random([1, 2, 6, 5, 7], Distribution::Default, &device);
//! let y = segloss_nn::conv3d_layer(&conv, x.clone());
//! let reference = conv.forward(x);
//! assert_eq!(y.dims(), [1, 4, 6, 5, 7]);
//! let diff: f32 = (y - reference).abs().max().into_scalar();
//! assert!(diff < 1e-5, "{diff}");
//! ```

mod api;
mod autodiff;
pub mod cpu;
mod flex;
pub mod ops;

pub use api::{
    conv_transpose3d, conv_transpose3d_layer, conv3d, conv3d_layer, fused_calls,
    instance_norm_leaky_relu, instance_norm_leaky_relu_layer, supports,
};
