//! The layers on `Tensor`s: the fused kernels where they apply, Burn's own operations elsewhere.

use burn::backend::{Dispatch, DispatchDevice};
use burn::nn::conv::{Conv3d, ConvTranspose3d};
use burn::nn::{InstanceNorm, LeakyRelu, PaddingConfig3d};
use burn::tensor::module::{conv_transpose3d as burn_conv_transpose3d, conv3d as burn_conv3d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{DType, Device, Tensor, activation};

use crate::cpu::conv::Conv3dGeom;
use crate::cpu::norm::{NormGeom, NormParams};
use crate::cpu::transpose::UpGeom;
use crate::ops::NnOps;

/// Whether the fused layers run for tensors on `device` of type `dtype`: Flex (Burn's CPU
/// backend), with or without autodiff, in `f32`. Elsewhere the functions of this crate call
/// Burn's operations.
pub fn supports(device: &Device, dtype: DType) -> bool {
    let inner = if device.is_autodiff() {
        device.clone().inner()
    } else {
        device.clone()
    };
    dtype == DType::F32 && matches!(inner.as_dispatch(), DispatchDevice::Flex(_))
}

thread_local! {
    static FUSED_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many times this thread has called a fused layer (lets tests check which path ran;
/// per thread, so that tests running side by side do not count each other's calls).
#[doc(hidden)]
pub fn fused_calls() -> usize {
    FUSED_CALLS.with(|c| c.get())
}

fn count() {
    FUSED_CALLS.with(|c| c.set(c.get() + 1));
}

/// An absent parameter as the extension takes it: a tensor with no elements.
fn none_arg(device: &Device) -> Tensor<1> {
    Tensor::<1>::empty([0], device)
}

/// 3D convolution of `x` `[B, C_in, D, H, W]` with `weight` `[C_out, C_in / groups, kd, kh, kw]`
/// and `bias` `[C_out]`, as [`burn::tensor::module::conv3d`]: the fused kernel (im2col and a
/// matrix product per chunk of output rows, hand-written backward) where [`supports`] holds,
/// `groups` and `dilation` are 1 and the padding is symmetric, Burn's operation otherwise.
///
/// # Panics
/// As Burn's `conv3d` on bad shapes; the fused path names the channel or size mismatch.
pub fn conv3d(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<3>,
) -> Tensor<5> {
    let fused = supports(&x.device(), x.dtype())
        && options.groups == 1
        && options.dilation == [1; 3]
        && !options.is_asymmetric();
    if !fused {
        return burn_conv3d(x, weight, bias, options);
    }
    let geom = Conv3dGeom::new(x.dims(), weight.dims(), options.stride, options.padding)
        .unwrap_or_else(|e| panic!("{e}"));
    count();
    let bias = bias.unwrap_or_else(|| none_arg(&x.device()));
    Tensor::from_dispatch(<Dispatch as NnOps>::conv3d(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        geom,
    ))
}

/// Transposed 3D convolution of `x` `[B, C_in, D, H, W]` with `weight`
/// `[C_in, C_out / groups, kd, kh, kw]` and `bias` `[C_out]`, as
/// [`burn::tensor::module::conv_transpose3d`]: the fused kernel where [`supports`] holds and the
/// stride equals the kernel with no padding, no output padding, dilation and groups 1 (every
/// output voxel then comes from one input voxel), Burn's operation otherwise.
///
/// # Panics
/// As Burn's `conv_transpose3d` on bad shapes (the weight's input channels not the input's go
/// to Burn's operation, which names the mismatch).
pub fn conv_transpose3d(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: ConvTransposeOptions<3>,
) -> Tensor<5> {
    let [b, c_in, d, h, w] = x.dims();
    let [wc_in, c_out, kd, kh, kw] = weight.dims();
    let fused = supports(&x.device(), x.dtype())
        && options.stride == [kd, kh, kw]
        && options.padding == [0; 3]
        && options.padding_out == [0; 3]
        && options.dilation == [1; 3]
        && options.groups == 1
        && wc_in == c_in;
    if !fused {
        return burn_conv_transpose3d(x, weight, bias, options);
    }
    let geom = UpGeom {
        batch: b,
        c_in,
        c_out,
        input: [d, h, w],
        kernel: [kd, kh, kw],
    };
    count();
    let bias = bias.unwrap_or_else(|| none_arg(&x.device()));
    Tensor::from_dispatch(<Dispatch as NnOps>::conv_up3d(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        geom,
    ))
}

/// Instance normalisation of `x` `[B, C, ...]` (per sample and channel over the other axes,
/// biased variance plus `eps`, then `gamma x̂ + beta` per channel) followed by a leaky ReLU of
/// negative slope `slope`: Burn's `InstanceNorm` then `LeakyRelu`, in one fused pass with a
/// hand-written backward where [`supports`] holds, composed from Burn's operations otherwise.
/// `gamma`/`beta` `[C]`, `None` for 1 and 0.
///
/// # Panics
/// If `x` has fewer than 3 axes or `gamma`/`beta` do not have `C` values.
pub fn instance_norm_leaky_relu<const D: usize>(
    x: Tensor<D>,
    gamma: Option<Tensor<1>>,
    beta: Option<Tensor<1>>,
    eps: f64,
    slope: f64,
) -> Tensor<D> {
    assert!(
        D >= 3,
        "instance_norm_leaky_relu: the input needs [B, C, ...], got {D} axes"
    );
    let dims = x.dims();
    let (batch, channels) = (dims[0], dims[1]);
    for (name, p) in [("gamma", &gamma), ("beta", &beta)] {
        if let Some(p) = p {
            assert_eq!(
                p.dims()[0],
                channels,
                "instance_norm_leaky_relu: `{name}` has {} values for {channels} channels",
                p.dims()[0]
            );
        }
    }
    let voxels: usize = dims[2..].iter().product();
    if !supports(&x.device(), x.dtype()) {
        return composed_norm_leaky_relu(x, gamma, beta, eps, slope);
    }
    count();
    let device = x.device();
    let geom = NormGeom {
        batch,
        channels,
        voxels,
    };
    let params = NormParams {
        eps: eps as f32,
        slope: slope as f32,
    };
    let (y, _stats) = <Dispatch as NnOps>::norm_lrelu(
        x.reshape([batch, channels, voxels]).into_dispatch(),
        gamma.unwrap_or_else(|| none_arg(&device)).into_dispatch(),
        beta.unwrap_or_else(|| none_arg(&device)).into_dispatch(),
        geom,
        params,
    );
    Tensor::<3>::from_dispatch(y).reshape(dims)
}

/// Burn's instance norm (as `burn::nn::InstanceNorm` computes it) and leaky ReLU, composed.
fn composed_norm_leaky_relu<const D: usize>(
    x: Tensor<D>,
    gamma: Option<Tensor<1>>,
    beta: Option<Tensor<1>>,
    eps: f64,
    slope: f64,
) -> Tensor<D> {
    let dims = x.dims();
    let (batch, channels) = (dims[0], dims[1]);
    let voxels: usize = dims[2..].iter().product();
    let flat = x.reshape([batch, channels, voxels]);
    let centred = flat.clone() - flat.mean_dim(2);
    let var = centred.clone().square().mean_dim(2);
    let mut y = centred / var.add_scalar(eps).sqrt();
    if let Some(g) = gamma {
        y = y * g.reshape([1, channels, 1]);
    }
    if let Some(b) = beta {
        y = y + b.reshape([1, channels, 1]);
    }
    activation::leaky_relu(y, slope).reshape(dims)
}

/// [`Conv3d::forward`] through [`conv3d`]: the same weights and padding rule.
pub fn conv3d_layer(conv: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    let padding = match &conv.padding {
        PaddingConfig3d::Valid => [0; 3],
        PaddingConfig3d::Explicit(d, h, w) => [*d, *h, *w],
        // Burn's "same" padding is symmetric only for odd kernels at stride 1; leave the others
        // (and their panics) to Burn.
        PaddingConfig3d::Same
            if conv.stride == [1; 3] && conv.kernel_size.iter().all(|k| k % 2 == 1) =>
        {
            conv.kernel_size.map(|k| (k - 1) / 2)
        }
        PaddingConfig3d::Same => return conv.forward(x),
    };
    conv3d(
        x,
        conv.weight.val(),
        conv.bias.as_ref().map(|b| b.val()),
        ConvOptions::new(conv.stride, padding, conv.dilation, conv.groups),
    )
}

/// [`ConvTranspose3d::forward`] through [`conv_transpose3d`].
pub fn conv_transpose3d_layer(conv: &ConvTranspose3d, x: Tensor<5>) -> Tensor<5> {
    conv_transpose3d(
        x,
        conv.weight.val(),
        conv.bias.as_ref().map(|b| b.val()),
        ConvTransposeOptions::new(
            conv.stride,
            conv.padding,
            conv.padding_out,
            conv.dilation,
            conv.groups,
        ),
    )
}

/// `act.forward(norm.forward(x))` through [`instance_norm_leaky_relu`].
pub fn instance_norm_leaky_relu_layer<const D: usize>(
    norm: &InstanceNorm,
    act: &LeakyRelu,
    x: Tensor<D>,
) -> Tensor<D> {
    instance_norm_leaky_relu(
        x,
        norm.gamma.as_ref().map(|g| g.val()),
        norm.beta.as_ref().map(|b| b.val()),
        norm.epsilon,
        act.negative_slope,
    )
}
