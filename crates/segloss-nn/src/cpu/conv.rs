//! 3D convolution (groups 1, dilation 1, any kernel, stride and padding): forward, gradient with
//! respect to the input and with respect to the weight and bias.
//!
//! Each works on chunks of output rows (an output row: the `W_out` voxels of one `(z, y)`): the
//! chunk's im2col columns `[C_in * kd * kh * kw, rows * W_out]` (row `(c, a, b, e)` holds the
//! input voxel each output voxel sees through kernel tap `(a, b, e)` of channel `c`, 0 in the
//! padding) go through one matrix product with the weight `[C_out, C_in * kd * kh * kw]`, read
//! where it lies. With stride 1 an im2col row is a shifted copy of an input row, so building it
//! costs a `memcpy`.

use rayon::prelude::*;

use super::matmul::{View, gemm};
use super::tasks::{SharedMut, chunks, rows_per_chunk, with_scratch};

/// The sizes of one 3D convolution: input `[batch, c_in, input]`, weight
/// `[c_out, c_in, kernel]`, output `[batch, c_out, output]`, `pad` the padding before each
/// spatial axis (the padding after only changes `output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv3dGeom {
    /// Batch size.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Input `[D, H, W]`.
    pub input: [usize; 3],
    /// Kernel `[kd, kh, kw]`.
    pub kernel: [usize; 3],
    /// Stride per axis.
    pub stride: [usize; 3],
    /// Zero padding before each axis.
    pub pad: [usize; 3],
    /// Output `[D, H, W]`: `(input + pad_before + pad_after - kernel) / stride + 1`.
    pub output: [usize; 3],
}

impl Conv3dGeom {
    /// The geometry of input `x` `[B, C_in, D, H, W]` and weight `w` `[C_out, C_in, kd, kh, kw]`
    /// with `stride` and `padding` `(before, after)` per axis.
    ///
    /// # Errors
    /// If the channels disagree, a stride is 0, or the kernel is larger than the padded input.
    pub fn new(
        x: [usize; 5],
        w: [usize; 5],
        stride: [usize; 3],
        padding: [(usize, usize); 3],
    ) -> Result<Self, String> {
        if w[1] != x[1] {
            return Err(format!(
                "conv3d: the weight takes {} input channels, the input has {}",
                w[1], x[1]
            ));
        }
        let mut output = [0; 3];
        for i in 0..3 {
            let padded = x[2 + i] + padding[i].0 + padding[i].1;
            if stride[i] == 0 || w[2 + i] == 0 || w[2 + i] > padded {
                return Err(format!(
                    "conv3d: kernel {:?} with stride {:?} does not fit the padded input {:?}",
                    &w[2..],
                    stride,
                    &x[2..]
                ));
            }
            output[i] = (padded - w[2 + i]) / stride[i] + 1;
        }
        Ok(Self {
            batch: x[0],
            c_in: x[1],
            c_out: w[0],
            input: [x[2], x[3], x[4]],
            kernel: [w[2], w[3], w[4]],
            stride,
            pad: [padding[0].0, padding[1].0, padding[2].0],
            output,
        })
    }

    /// Rows of the im2col matrix (and columns of the weight matrix): `c_in * kd * kh * kw`.
    pub fn k_len(&self) -> usize {
        self.c_in * self.kernel.iter().product::<usize>()
    }

    fn in_len(&self) -> usize {
        self.input.iter().product()
    }

    fn out_len(&self) -> usize {
        self.output.iter().product()
    }

    /// Output rows `(z, y)` per batch item.
    fn rows(&self) -> usize {
        self.output[0] * self.output[1]
    }

    /// The output `[B, C_out, D, H, W]`'s shape.
    pub fn output_shape(&self) -> [usize; 5] {
        let [d, h, w] = self.output;
        [self.batch, self.c_out, d, h, w]
    }

    /// The input's shape.
    pub fn input_shape(&self) -> [usize; 5] {
        let [d, h, w] = self.input;
        [self.batch, self.c_in, d, h, w]
    }

    /// The weight's shape.
    pub fn weight_shape(&self) -> [usize; 5] {
        let [d, h, w] = self.kernel;
        [self.c_out, self.c_in, d, h, w]
    }

    /// Output voxels `[lo, hi)` along an axis whose input index `o * stride + tap - pad` is
    /// inside `[0, size)`.
    fn valid(out: usize, size: usize, stride: usize, pad: usize, tap: usize) -> (usize, usize) {
        let lo = if pad > tap {
            (pad - tap).div_ceil(stride)
        } else {
            0
        };
        let hi = if size + pad > tap {
            ((size + pad - tap - 1) / stride + 1).min(out)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// Input index of output index `o` through tap `tap` along axis `axis`, if inside.
    fn source(&self, axis: usize, o: usize, tap: usize) -> Option<usize> {
        let i = (o * self.stride[axis] + tap).checked_sub(self.pad[axis])?;
        (i < self.input[axis]).then_some(i)
    }
}

/// Visits, for output rows `[r0, r1)` of one batch item, every im2col row's segment of each
/// output row: `f(col_index, out_row_start_in_chunk, input_row_start, lo, hi)` where the segment
/// `[lo, hi)` of the output row reads the input row from `input_row_start` with the stride, and
/// the rest of the output row is padding. `input_row_start` is `None` when the whole output row
/// is padding.
fn for_each_segment(
    g: &Conv3dGeom,
    r0: usize,
    r1: usize,
    mut f: impl FnMut(usize, usize, Option<usize>, usize, usize),
) {
    let [_, h, w] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [_, ho, wo] = g.output;
    let d = g.input[0];
    let mut k = 0;
    for c in 0..g.c_in {
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    let (lo, hi) = Conv3dGeom::valid(wo, w, g.stride[2], g.pad[2], e);
                    for r in r0..r1 {
                        let (oz, oy) = (r / ho, r % ho);
                        let at = (r - r0) * wo;
                        let src = match (g.source(0, oz, a), g.source(1, oy, b)) {
                            (Some(iz), Some(iy)) if lo < hi => {
                                let ix = lo * g.stride[2] + e - g.pad[2];
                                Some(((c * d + iz) * h + iy) * w + ix)
                            }
                            _ => None,
                        };
                        f(k, at, src, lo, hi);
                    }
                    k += 1;
                }
            }
        }
    }
}

/// Writes the im2col columns of output rows `[r0, r1)` of one batch item `x` `[C_in, D, H, W]`
/// into `col` `[k_len, (r1 - r0) * W_out]`.
fn im2col(g: &Conv3dGeom, x: &[f32], r0: usize, r1: usize, col: &mut [f32]) {
    let wo = g.output[2];
    let ncols = (r1 - r0) * wo;
    let s = g.stride[2];
    for_each_segment(g, r0, r1, |k, at, src, lo, hi| {
        let out = &mut col[k * ncols + at..][..wo];
        match src {
            None => out.fill(0.0),
            Some(i) => {
                out[..lo].fill(0.0);
                out[hi..].fill(0.0);
                if s == 1 {
                    out[lo..hi].copy_from_slice(&x[i..i + hi - lo]);
                } else {
                    for (j, o) in out[lo..hi].iter_mut().enumerate() {
                        *o = x[i + j * s];
                    }
                }
            }
        }
    });
}

/// The adjoint of [`im2col`]: adds each column entry to the input voxel it was read from.
fn col2im(g: &Conv3dGeom, col: &[f32], r0: usize, r1: usize, dx: &mut [f32]) {
    let wo = g.output[2];
    let ncols = (r1 - r0) * wo;
    let s = g.stride[2];
    for_each_segment(g, r0, r1, |k, at, src, lo, hi| {
        if let Some(i) = src {
            let seg = &col[k * ncols + at + lo..k * ncols + at + hi];
            if s == 1 {
                for (d, v) in dx[i..i + seg.len()].iter_mut().zip(seg) {
                    *d += v;
                }
            } else {
                for (j, v) in seg.iter().enumerate() {
                    dx[i + j * s] += v;
                }
            }
        }
    });
}

fn check_len(what: &str, got: usize, want: usize) {
    assert_eq!(
        got, want,
        "conv3d: {what} has {got} values, its shape needs {want}"
    );
}

/// The convolution of `x` `[B, C_in, D, H, W]` with `w` `[C_out, C_in, kd, kh, kw]` plus `bias`
/// `[C_out]`: `[B, C_out, D_out, H_out, W_out]`.
///
/// # Panics
/// If a slice's length does not match `g`.
pub fn forward(g: &Conv3dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    check_len("the input", x.len(), g.batch * g.c_in * g.in_len());
    check_len("the weight", w.len(), g.c_out * g.k_len());
    if let Some(b) = bias {
        check_len("the bias", b.len(), g.c_out);
    }
    let (k, wo, out_len, x_len) = (g.k_len(), g.output[2], g.out_len(), g.c_in * g.in_len());
    let mut out = vec![0.0f32; g.batch * g.c_out * out_len];
    let dst = SharedMut(out.as_mut_ptr());
    let per_chunk = rows_per_chunk(k, wo);
    chunks(g.batch, g.rows(), per_chunk)
        .into_par_iter()
        .for_each(|(b, r0, r1)| {
            let ncols = (r1 - r0) * wo;
            with_scratch(k * ncols, |col| {
                im2col(g, &x[b * x_len..][..x_len], r0, r1, col);
                let at = b * g.c_out * out_len + r0 * wo;
                // SAFETY: this chunk's output columns [r0 * wo, r1 * wo) of batch item b, for
                // each output channel, are written by this chunk only; all inside `out`.
                unsafe {
                    let dst = dst.ptr().add(at);
                    if let Some(bias) = bias {
                        for (o, &v) in bias.iter().enumerate() {
                            std::slice::from_raw_parts_mut(dst.add(o * out_len), ncols).fill(v);
                        }
                    }
                    gemm(
                        ncols,
                        g.c_out,
                        k,
                        dst,
                        1,
                        out_len,
                        bias.is_some(),
                        View::new(col, 1, ncols),
                        View::new(w, 1, k),
                    );
                }
            })
        });
    out
}

/// The gradient with respect to the input `[B, C_in, D, H, W]` of [`forward`], given the
/// output's gradient `grad` `[B, C_out, D_out, H_out, W_out]`.
///
/// Chunks of output planes scatter into overlapping input planes, so they run in two waves
/// (even chunks, then odd ones), each chunk at least as thick as keeps two chunks of a wave
/// apart.
///
/// # Panics
/// If a slice's length does not match `g`.
pub fn backward_input(g: &Conv3dGeom, w: &[f32], grad: &[f32]) -> Vec<f32> {
    check_len("the weight", w.len(), g.c_out * g.k_len());
    check_len("the gradient", grad.len(), g.batch * g.c_out * g.out_len());
    let (k, ho, wo, out_len, x_len) = (
        g.k_len(),
        g.output[1],
        g.output[2],
        g.out_len(),
        g.c_in * g.in_len(),
    );
    let mut dx = vec![0.0f32; g.batch * x_len];
    let dst = SharedMut(dx.as_mut_ptr());
    // Two chunks of the same wave are one chunk of `planes` apart: their input planes are
    // disjoint when kernel <= stride * (planes + 1).
    let [kd, sd] = [g.kernel[0], g.stride[0]];
    let planes = kd.div_ceil(sd).saturating_sub(1).max(1);
    let slabs = chunks(g.batch, g.output[0], planes);
    let rows_chunk = rows_per_chunk(k, wo);
    for wave in 0..2 {
        slabs
            .par_iter()
            .filter(|&&(_, z0, _)| (z0 / planes) % 2 == wave)
            .for_each(|&(b, z0, z1)| {
                // SAFETY: the chunks of one wave add into disjoint input planes of batch item
                // b (see above); this chunk's slice is batch item b's input gradient.
                let dx_b =
                    unsafe { std::slice::from_raw_parts_mut(dst.ptr().add(b * x_len), x_len) };
                let g_b = &grad[b * g.c_out * out_len..][..g.c_out * out_len];
                let mut r0 = z0 * ho;
                while r0 < z1 * ho {
                    let r1 = (r0 + rows_chunk).min(z1 * ho);
                    let ncols = (r1 - r0) * wo;
                    with_scratch(k * ncols, |col| {
                        // SAFETY: col is k x ncols, w is c_out x k, the gradient's columns
                        // [r0 * wo, r1 * wo) are inside each channel's plane.
                        unsafe {
                            gemm(
                                k,
                                ncols,
                                g.c_out,
                                col.as_mut_ptr(),
                                ncols,
                                1,
                                false,
                                View::new(w, 1, k),
                                View::new(&g_b[r0 * wo..], out_len, 1),
                            );
                        }
                        col2im(g, col, r0, r1, dx_b);
                    });
                    r0 = r1;
                }
            });
    }
    dx
}

/// The gradients with respect to the weight `[C_out, C_in, kd, kh, kw]` and the bias `[C_out]`
/// of [`forward`], given the input `x` and the output's gradient `grad`.
///
/// # Panics
/// If a slice's length does not match `g`.
pub fn backward_weight(g: &Conv3dGeom, x: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    check_len("the input", x.len(), g.batch * g.c_in * g.in_len());
    check_len("the gradient", grad.len(), g.batch * g.c_out * g.out_len());
    let (k, wo, out_len, x_len) = (g.k_len(), g.output[2], g.out_len(), g.c_in * g.in_len());
    let per_chunk = rows_per_chunk(k, wo);
    let dw = chunks(g.batch, g.rows(), per_chunk)
        .into_par_iter()
        .fold(
            || vec![0.0f32; g.c_out * k],
            |mut acc, (b, r0, r1)| {
                let ncols = (r1 - r0) * wo;
                with_scratch(k * ncols, |col| {
                    im2col(g, &x[b * x_len..][..x_len], r0, r1, col);
                    let g_b = &grad[b * g.c_out * out_len + r0 * wo..];
                    // SAFETY: acc is c_out x k; the gradient view's rows are the output
                    // channels' columns [r0 * wo, r1 * wo) of batch item b, col is k x ncols.
                    unsafe {
                        gemm(
                            g.c_out,
                            k,
                            ncols,
                            acc.as_mut_ptr(),
                            k,
                            1,
                            true,
                            View::new(g_b, out_len, 1),
                            View::new(col, 1, ncols),
                        );
                    }
                });
                acc
            },
        )
        .reduce(
            || vec![0.0f32; g.c_out * k],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    (dw, channel_sums(grad, g.batch, g.c_out, out_len))
}

/// Per channel, the sum over the batch and the voxels of `t` `[B, C, N]` (a bias's gradient).
pub(crate) fn channel_sums(t: &[f32], batch: usize, channels: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; channels];
    for b in 0..batch {
        for (c, o) in out.iter_mut().enumerate() {
            *o += sum(&t[(b * channels + c) * n..][..n]);
        }
    }
    out
}

/// A sum in eight lanes (vectorised by the compiler), added up in `f64`.
pub(crate) fn sum(v: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    (lanes.iter().map(|&l| l as f64).sum::<f64>() + rest as f64) as f32
}
