//! [`NnOps`] on Flex: the CPU kernels on the tensors' slices.

use std::borrow::Cow;

use burn::backend::TensorMetadata;
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::{DType, TensorData};

use crate::cpu::conv::{self, Conv3dGeom};
use crate::cpu::norm::{self, NormGeom, NormParams};
use crate::cpu::transpose::{self, UpGeom};
use crate::ops::NnOps;

/// The tensor's values, contiguous (borrowed when they already are).
///
/// # Panics
/// If the tensor is not `f32` (the kernels compute in `f32`; [`crate::supports`] sends other
/// float types to Burn's operations).
fn floats(t: &FlexTensor) -> Cow<'_, [f32]> {
    assert_eq!(
        t.dtype(),
        DType::F32,
        "segloss-nn: the fused layers compute in f32, got {:?}",
        t.dtype()
    );
    match t.as_slice::<f32>() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(
            t.to_contiguous()
                .as_slice::<f32>()
                .expect("contiguous f32")
                .to_vec(),
        ),
    }
}

/// Values of an optional parameter (none when it has no elements).
fn optional(t: &FlexTensor) -> Option<Cow<'_, [f32]>> {
    (t.shape().num_elements() > 0).then(|| floats(t))
}

fn tensor(values: Vec<f32>, shape: impl Into<Vec<usize>>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.into()))
}

/// `gamma`/`beta` of `channels` values, `fill` where the tensor has none.
fn affine(t: &FlexTensor, channels: usize, fill: f32) -> Cow<'_, [f32]> {
    optional(t).unwrap_or_else(|| Cow::Owned(vec![fill; channels]))
}

impl NnOps for Flex {
    fn conv3d(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, geom: Conv3dGeom) -> FlexTensor {
        let b = optional(&bias);
        let out = conv::forward(&geom, &floats(&x), &floats(&weight), b.as_deref());
        tensor(out, geom.output_shape())
    }

    fn conv3d_backward_input(weight: FlexTensor, grad: FlexTensor, geom: Conv3dGeom) -> FlexTensor {
        let dx = conv::backward_input(&geom, &floats(&weight), &floats(&grad));
        tensor(dx, geom.input_shape())
    }

    fn conv3d_backward_weight(
        x: FlexTensor,
        grad: FlexTensor,
        geom: Conv3dGeom,
    ) -> (FlexTensor, FlexTensor) {
        let (dw, db) = conv::backward_weight(&geom, &floats(&x), &floats(&grad));
        (tensor(dw, geom.weight_shape()), tensor(db, [geom.c_out]))
    }

    fn conv_up3d(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, geom: UpGeom) -> FlexTensor {
        let b = optional(&bias);
        let out = transpose::forward(&geom, &floats(&x), &floats(&weight), b.as_deref());
        tensor(out, geom.output_shape())
    }

    fn conv_up3d_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        geom: UpGeom,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (dx, dw, db) =
            transpose::backward(&geom, &floats(&x), &floats(&weight), &floats(&grad));
        (
            tensor(dx, geom.input_shape()),
            tensor(dw, geom.weight_shape()),
            tensor(db, [geom.c_out]),
        )
    }

    fn norm_lrelu(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        geom: NormGeom,
        params: NormParams,
    ) -> (FlexTensor, FlexTensor) {
        let (gm, bt) = (
            affine(&gamma, geom.channels, 1.0),
            affine(&beta, geom.channels, 0.0),
        );
        let (y, stats) = norm::forward(&geom, params, &floats(&x), &gm, &bt);
        (
            tensor(y, [geom.batch, geom.channels, geom.voxels]),
            tensor(stats, [geom.batch, geom.channels, 2]),
        )
    }

    fn norm_lrelu_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        stats: FlexTensor,
        grad: FlexTensor,
        geom: NormGeom,
        params: NormParams,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (gm, bt) = (
            affine(&gamma, geom.channels, 1.0),
            affine(&beta, geom.channels, 0.0),
        );
        let (dx, dg, db) = norm::backward(
            &geom,
            params,
            &floats(&x),
            &gm,
            &bt,
            &floats(&stats),
            &floats(&grad),
        );
        (
            tensor(dx, [geom.batch, geom.channels, geom.voxels]),
            tensor(dg, [geom.channels]),
            tensor(db, [geom.channels]),
        )
    }
}
