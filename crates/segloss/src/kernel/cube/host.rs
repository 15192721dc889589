//! The host side shared by the CubeCL kernels: the inputs of a launch (checked, contiguous),
//! the launch geometry and the reduction of the cubes' partial sums.

use burn::backend::TensorMetadata;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::{DType, Shape};

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::{CubeCount, CubeDim, ElemType};

use crate::input::TargetOf;

use super::kernels;

/// Voxels per unit in the forward kernel.
pub const ITEMS: usize = 4;
/// Units per cube (fewer where the device allows fewer; always a power of two).
pub const UNITS: usize = 256;

/// The target of one call: class indices `[B, N]` or per-class values `[B, C, N]`.
pub(super) type Target = TargetOf<CubeTensor, CubeTensor>;

/// The inputs of one launch, ready to be passed: contiguous, the floats checked to be f32.
pub(super) struct Inputs {
    /// The logits `[B, C, N]`.
    pub x: CubeTensor,
    /// The label map `[B, N]`, when the target is one.
    pub labels: Option<CubeTensor>,
    /// The dense target `[B, C, N]`, when the target is one.
    pub dense: Option<CubeTensor>,
    /// The voxel mask `[B, N]`, if any.
    pub mask: Option<CubeTensor>,
    /// The labels' element type (i32 without labels: the kernels are generic over it).
    pub label_type: ElemType,
    /// `[B, C, N]`.
    pub dims: [usize; 3],
}

/// Checks and prepares the inputs of a launch (a `mask` with no elements means no mask).
pub(super) fn inputs(x: CubeTensor, target: Target, mask: CubeTensor) -> Inputs {
    let x = f32_input(x, "prediction");
    let dims = x.shape().dims::<3>();
    let [b, c, n] = dims;
    assert!(
        b * c * n <= u32::MAX as usize,
        "segloss: the fused CubeCL kernel indexes with 32 bits; a prediction of {b} x {c} x {n} values is too large"
    );
    let mask = (mask.shape().num_elements() > 0).then(|| f32_input(mask, "mask"));
    let (labels, dense) = match target {
        Target::Labels(l) => (Some(into_contiguous(l)), None),
        Target::Dense(d) => (None, Some(f32_input(d, "target"))),
    };
    let label_type = dtype_to_storage_type(labels.as_ref().map_or(DType::I32, |l| l.dtype));
    for (what, t, want) in [
        ("label map", labels.as_ref(), vec![b, n]),
        ("target", dense.as_ref(), vec![b, c, n]),
        ("mask", mask.as_ref(), vec![b, n]),
    ] {
        if let Some(t) = t {
            assert_eq!(
                t.shape().to_vec(),
                want,
                "segloss: the fused CubeCL kernel's {what} does not match logits of shape {:?}",
                [b, c, n]
            );
        }
    }
    Inputs {
        x,
        labels,
        dense,
        mask,
        label_type,
        dims,
    }
}

/// `t` as a contiguous f32 tensor, or a panic naming `what` when it is of another float type.
pub(super) fn f32_input(t: CubeTensor, what: &str) -> CubeTensor {
    assert_eq!(
        t.dtype,
        DType::F32,
        "segloss's fused CubeCL kernel computes in f32, got {:?} for the {what}",
        t.dtype
    );
    into_contiguous(t)
}

/// The largest power of two `<= min(UNITS, the device's units per cube)`.
pub(super) fn units(t: &CubeTensor) -> usize {
    let max = (t.client.properties().hardware.max_units_per_cube as usize).clamp(1, UNITS);
    1 << max.ilog2()
}

/// The grid of a partial-sum launch over `b` samples of `n` voxels: `(chunks, B)` cubes of
/// `units` units taking `ITEMS` voxels each; panics where the device's grid is smaller.
pub(super) fn chunk_grid(t: &CubeTensor, b: usize, n: usize, units: usize) -> (usize, CubeCount) {
    let chunks = n.div_ceil(units * ITEMS);
    let max = t.client.properties().hardware.max_cube_count;
    assert!(
        chunks <= max.0 as usize && b <= max.1 as usize,
        "segloss: {b} samples of {n} voxels exceed this device's grid ({max:?} cubes of {} voxels)",
        units * ITEMS
    );
    (chunks, CubeCount::Static(chunks as u32, b as u32, 1))
}

/// An uninitialised f32 tensor of `shape` on `like`'s device.
pub(super) fn empty_like(like: &CubeTensor, shape: impl Into<Shape>) -> CubeTensor {
    empty_device_dtype(
        like.client.clone(),
        like.device.clone(),
        shape.into(),
        DType::F32,
    )
}

/// Adds the partial sums `[R, chunks]` row by row into `out` of shape `shape` (`R` its number
/// of elements, row `r` its element `r` in row-major order) with [`kernels::sum_rows_kernel`]:
/// one cube of `units` units per row.
pub(super) fn sum_partials(partial: CubeTensor, shape: [usize; 3], units: usize) -> CubeTensor {
    let client = partial.client.clone();
    let rows = partial.shape().dims::<2>()[0];
    debug_assert_eq!(rows, shape.iter().product::<usize>());
    let out = empty_like(&partial, shape);
    let cube_dim = CubeDim::new_1d(units as u32);
    // One cube per row (spread over the grid's dimensions where there are many).
    let cube_count = cubecl::calculate_cube_count_elemwise(&client, rows * units, cube_dim);
    kernels::sum_rows_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        partial.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        units,
    );
    out
}

/// The launch geometry of a kernel with one unit per voxel of `b` samples of `n` voxels.
pub(super) fn per_voxel(t: &CubeTensor, b: usize, n: usize) -> (CubeCount, CubeDim) {
    let cube_dim = CubeDim::new(&t.client, b * n);
    let cube_count = cubecl::calculate_cube_count_elemwise(&t.client, b * n, cube_dim);
    (cube_count, cube_dim)
}
