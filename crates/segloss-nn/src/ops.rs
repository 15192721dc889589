//! The layers as a Burn backend extension ([`NnOps`]): each forward with its hand-written
//! backward, on Flex (kernels in [`crate::cpu`]) and under Burn's autodiff decorator.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};

use crate::cpu::conv::Conv3dGeom;
use crate::cpu::norm::{NormGeom, NormParams};
use crate::cpu::transpose::UpGeom;

/// The fused layers. A bias, `gamma` or `beta` with no elements stands for none (a bias of 0,
/// `gamma` 1, `beta` 0).
#[backend_extension(Flex, Autodiff)]
pub trait NnOps: Backend {
    /// 3D convolution `[B, C_in, D, H, W]` -> `[B, C_out, D', H', W']` (see
    /// [`crate::cpu::conv::forward`]).
    fn conv3d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        geom: Conv3dGeom,
    ) -> FloatTensor<Self>;

    /// The convolution's gradient with respect to its input.
    fn conv3d_backward_input(
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geom: Conv3dGeom,
    ) -> FloatTensor<Self>;

    /// The convolution's gradients with respect to its weight and its bias.
    fn conv3d_backward_weight(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geom: Conv3dGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Transposed 3D convolution with stride equal to the kernel and no padding (see
    /// [`crate::cpu::transpose::forward`]).
    fn conv_up3d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        geom: UpGeom,
    ) -> FloatTensor<Self>;

    /// The transposed convolution's gradients with respect to its input, weight and bias.
    fn conv_up3d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geom: UpGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Instance norm and leaky ReLU of `x` `[B, C, N]`: the output and the statistics
    /// `[B, C, 2]` (see [`crate::cpu::norm::forward`]).
    fn norm_lrelu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        geom: NormGeom,
        params: NormParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Its gradients with respect to `x`, `gamma` and `beta`.
    #[allow(clippy::too_many_arguments)]
    fn norm_lrelu_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geom: NormGeom,
        params: NormParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}
