//! 3D transposed convolution whose stride equals its kernel, without padding (the U-Net's 2x
//! upsampling): every output voxel has exactly one input voxel, so the forward is one matrix
//! product per chunk of input rows, `[voxels, C_in] · [C_in, C_out * kd * kh * kw]`, scattered
//! to the output, and the backward the same product's two adjoints on the gathered gradient.

use rayon::prelude::*;

use super::conv::channel_sums;
use super::matmul::{View, gemm};
use super::tasks::{SharedMut, chunks, rows_per_chunk, with_scratch};

/// The sizes of one transposed convolution with `stride == kernel`: input
/// `[batch, c_in, input]`, weight `[c_in, c_out, kernel]`, output
/// `[batch, c_out, input * kernel]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpGeom {
    /// Batch size.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Input `[D, H, W]`.
    pub input: [usize; 3],
    /// Kernel (and stride) `[kd, kh, kw]`.
    pub kernel: [usize; 3],
}

impl UpGeom {
    /// The output's shape `[B, C_out, D * kd, H * kh, W * kw]`.
    pub fn output_shape(&self) -> [usize; 5] {
        let [d, h, w] = self.input;
        let [a, b, c] = self.kernel;
        [self.batch, self.c_out, d * a, h * b, w * c]
    }

    /// The input's shape.
    pub fn input_shape(&self) -> [usize; 5] {
        let [d, h, w] = self.input;
        [self.batch, self.c_in, d, h, w]
    }

    /// The weight's shape `[C_in, C_out, kd, kh, kw]`.
    pub fn weight_shape(&self) -> [usize; 5] {
        let [a, b, c] = self.kernel;
        [self.c_in, self.c_out, a, b, c]
    }

    fn taps(&self) -> usize {
        self.kernel.iter().product()
    }

    fn in_len(&self) -> usize {
        self.input.iter().product()
    }
}

/// Visits where the entries of a chunk's product buffer `[C_out * taps, (r1 - r0) * W]` (input
/// rows `[r0, r1)`, a row being the `W` voxels of one input `(z, y)`) go in the batch item's
/// output, one input row at a time: `f(buffer start, output start, output step, count)`.
fn for_each_run(g: &UpGeom, r0: usize, r1: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    let [_, h, w] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [od, oh, ow] = [g.input[0] * kd, h * kh, w * kw];
    let ncols = (r1 - r0) * w;
    let mut j = 0;
    for o in 0..g.c_out {
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    for r in r0..r1 {
                        let (z, y) = (r / h, r % h);
                        let out = ((o * od + z * kd + a) * oh + y * kh + b) * ow + e;
                        f(j * ncols + (r - r0) * w, out, kw, w);
                    }
                    j += 1;
                }
            }
        }
    }
}

/// The transposed convolution of `x` `[B, C_in, D, H, W]` with `w` `[C_in, C_out, kd, kh, kw]`
/// (stride = kernel, no padding) plus `bias` `[C_out]`.
///
/// # Panics
/// If a slice's length does not match `g`.
pub fn forward(g: &UpGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (taps, n) = (g.taps(), g.in_len());
    let j_len = g.c_out * taps;
    assert_eq!(
        x.len(),
        g.batch * g.c_in * n,
        "conv_transpose3d: input size"
    );
    assert_eq!(w.len(), g.c_in * j_len, "conv_transpose3d: weight size");
    let out_b = g.c_out * n * taps;
    let mut out = vec![0.0f32; g.batch * out_b];
    let dst = SharedMut(out.as_mut_ptr());
    let wi = g.input[2];
    let rows = g.input[0] * g.input[1];
    chunks(g.batch, rows, rows_per_chunk(j_len, wi))
        .into_par_iter()
        .for_each(|(b, r0, r1)| {
            let ncols = (r1 - r0) * wi;
            with_scratch(j_len * ncols, |buf| {
                let x_b = &x[b * g.c_in * n + r0 * wi..];
                // SAFETY: buf is j_len x ncols; x_b's view is ncols x c_in inside batch item
                // b's input; w is c_in x j_len.
                unsafe {
                    gemm(
                        ncols,
                        j_len,
                        g.c_in,
                        buf.as_mut_ptr(),
                        1,
                        ncols,
                        false,
                        View::new(x_b, 1, n),
                        View::new(w, j_len, 1),
                    );
                }
                for_each_run(g, r0, r1, |at, o_at, step, count| {
                    let v = bias.map_or(0.0, |bias| bias[(at / ncols) / taps]);
                    for i in 0..count {
                        // SAFETY: input rows [r0, r1) of batch item b map to output voxels no
                        // other chunk maps to (one input voxel per output voxel).
                        unsafe { *dst.ptr().add(b * out_b + o_at + i * step) = buf[at + i] + v };
                    }
                });
            })
        });
    out
}

/// The gradients with respect to the input, the weight and the bias of [`forward`], given the
/// input `x` and the output's gradient `grad`.
///
/// # Panics
/// If a slice's length does not match `g`.
pub fn backward(g: &UpGeom, x: &[f32], w: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (taps, n) = (g.taps(), g.in_len());
    let j_len = g.c_out * taps;
    let out_b = g.c_out * n * taps;
    assert_eq!(
        grad.len(),
        g.batch * out_b,
        "conv_transpose3d: gradient size"
    );
    assert_eq!(
        x.len(),
        g.batch * g.c_in * n,
        "conv_transpose3d: input size"
    );
    let mut dx = vec![0.0f32; g.batch * g.c_in * n];
    let dst = SharedMut(dx.as_mut_ptr());
    let wi = g.input[2];
    let rows = g.input[0] * g.input[1];
    let dw = chunks(g.batch, rows, rows_per_chunk(j_len, wi))
        .into_par_iter()
        .fold(
            || vec![0.0f32; g.c_in * j_len],
            |mut acc, (b, r0, r1)| {
                let ncols = (r1 - r0) * wi;
                with_scratch(j_len * ncols, |buf| {
                    let g_b = &grad[b * out_b..][..out_b];
                    for_each_run(g, r0, r1, |at, o_at, step, count| {
                        for i in 0..count {
                            buf[at + i] = g_b[o_at + i * step];
                        }
                    });
                    let off = b * g.c_in * n + r0 * wi;
                    // SAFETY: the input gradient's columns [r0 * wi, r1 * wi) of batch item b
                    // are this chunk's alone; buf is j_len x ncols, w c_in x j_len, x's view
                    // c_in x ncols inside batch item b, acc c_in x j_len.
                    unsafe {
                        gemm(
                            ncols,
                            g.c_in,
                            j_len,
                            dst.ptr().add(off),
                            1,
                            n,
                            false,
                            View::new(buf, 1, ncols),
                            View::new(w, 1, j_len),
                        );
                        gemm(
                            g.c_in,
                            j_len,
                            ncols,
                            acc.as_mut_ptr(),
                            j_len,
                            1,
                            true,
                            View::new(&x[off..], n, 1),
                            View::new(buf, 1, ncols),
                        );
                    }
                });
                acc
            },
        )
        .reduce(
            || vec![0.0f32; g.c_in * j_len],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    let db = channel_sums(grad, g.batch, g.c_out, n * taps);
    (dx, dw, db)
}
