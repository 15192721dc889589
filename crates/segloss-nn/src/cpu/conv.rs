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

/// For output rows `[r0, r1)` of one batch item: for every input channel `c` and kernel taps
/// `(a, b)`, each output row's source input row (or `None` where it falls in the padding),
/// calling `f(first im2col row of (c, a, b), offset of the output row in the chunk, source)`;
/// the `kw` im2col rows of taps `e` that follow read the same input row, shifted.
fn for_each_source(
    g: &Conv3dGeom,
    r0: usize,
    r1: usize,
    mut f: impl FnMut(usize, usize, Option<usize>),
) {
    let [d, h, w] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [_, ho, wo] = g.output;
    for c in 0..g.c_in {
        for a in 0..kd {
            for b in 0..kh {
                let k = ((c * kd + a) * kh + b) * kw;
                for r in r0..r1 {
                    let (oz, oy) = (r / ho, r % ho);
                    let src = match (g.source(0, oz, a), g.source(1, oy, b)) {
                        (Some(iz), Some(iy)) => Some(((c * d + iz) * h + iy) * w),
                        _ => None,
                    };
                    f(k, (r - r0) * wo, src);
                }
            }
        }
    }
}

/// The valid output range `[lo, hi)` of each kernel tap `e` along W and the input index of
/// `lo` (relative to the input row).
fn w_ranges(g: &Conv3dGeom) -> Vec<(usize, usize, usize)> {
    (0..g.kernel[2])
        .map(|e| {
            let (lo, hi) = Conv3dGeom::valid(g.output[2], g.input[2], g.stride[2], g.pad[2], e);
            (lo, hi, (lo * g.stride[2] + e).saturating_sub(g.pad[2]))
        })
        .collect()
}

/// `dst = src` in blocks of 16 (kept inline: the rows are short, and a `memcpy` call per row
/// cost more than the copy).
#[inline(always)]
fn copy(dst: &mut [f32], src: &[f32]) {
    let src = &src[..dst.len()];
    let mut d = dst.chunks_exact_mut(16);
    let mut s = src.chunks_exact(16);
    for (d, s) in (&mut d).zip(&mut s) {
        let block: [f32; 16] = s.try_into().expect("16 values");
        d.copy_from_slice(&block);
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// `dst += src`, vectorised by the compiler.
#[inline(always)]
fn add(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// Writes the im2col columns of output rows `[r0, r1)` of one batch item `x` `[C_in, D, H, W]`
/// into `col` `[k_len, (r1 - r0) * W_out]`.
fn im2col(g: &Conv3dGeom, x: &[f32], r0: usize, r1: usize, col: &mut [f32]) {
    if g.stride[1] == 1 && g.stride[2] == 1 && g.output[2] == g.input[2] {
        return im2col_rows_aligned(g, x, r0, r1, col);
    }
    let wo = g.output[2];
    let ncols = (r1 - r0) * wo;
    let s = g.stride[2];
    let ranges = w_ranges(g);
    for_each_source(g, r0, r1, |k, at, src| {
        for (e, &(lo, hi, ix)) in ranges.iter().enumerate() {
            let out = &mut col[(k + e) * ncols + at..][..wo];
            match src {
                Some(row) if lo < hi => {
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    let from = row + ix;
                    if s == 1 {
                        copy(&mut out[lo..hi], &x[from..]);
                    } else {
                        for (j, o) in out[lo..hi].iter_mut().enumerate() {
                            *o = x[from + j * s];
                        }
                    }
                }
                _ => out.fill(0.0),
            }
        }
    });
}

with_avx512! {
    /// [`im2col`] where output rows are as long as input rows and both strides within a plane
    /// are 1: then for each im2col row and output plane the valid output rows read consecutive
    /// input rows, so the run is one shifted block copy of the input plane, followed by zeroing
    /// the padding column(s) of each row (the copy wrapped them around from the neighbouring row).
    fn im2col_rows_aligned(g: &Conv3dGeom, x: &[f32], r0: usize, r1: usize, col: &mut [f32])
        => im2col_rows_aligned_body
}

#[inline(always)]
fn im2col_rows_aligned_body(g: &Conv3dGeom, x: &[f32], r0: usize, r1: usize, col: &mut [f32]) {
    let [d, h, w] = g.input;
    let [kd, kh, _] = g.kernel;
    let [_, ho, wo] = g.output;
    let ncols = (r1 - r0) * wo;
    let ranges = w_ranges(g);
    let mut k = 0;
    for c in 0..g.c_in {
        for a in 0..kd {
            for b in 0..kh {
                // Output rows whose input row (y + b - pad_h) is inside the plane.
                let (lo_y, hi_y) = Conv3dGeom::valid(ho, h, 1, g.pad[1], b);
                for (e, &(lo, hi, _)) in ranges.iter().enumerate() {
                    let dst_k = &mut col[k * ncols..][..ncols];
                    k += 1;
                    let mut r = r0;
                    while r < r1 {
                        let oz = r / ho;
                        let (y0, y1) = (r - oz * ho, (r1 - oz * ho).min(ho));
                        let run = &mut dst_k[(r - r0) * wo..(r - r0 + y1 - y0) * wo];
                        r += y1 - y0;
                        let (ya, yb) = (lo_y.clamp(y0, y1), hi_y.clamp(y0, y1));
                        let iz = g.source(0, oz, a);
                        let Some(iz) = iz.filter(|_| ya < yb && lo < hi) else {
                            run.fill(0.0);
                            continue;
                        };
                        run[..(ya - y0) * wo].fill(0.0);
                        run[(yb - y0) * wo..].fill(0.0);
                        let block = &mut run[(ya - y0) * wo..(yb - y0) * wo];
                        // Output (y, xo) reads input (y + b - pad_h, xo + e - pad_w): one offset
                        // for the whole block, clipped at the input's two ends.
                        let first = ((c * d + iz) * h + ya + b - g.pad[1]) * w;
                        let (start, skip) = match (first + e).checked_sub(g.pad[2]) {
                            Some(start) => (start, 0),
                            None => (0, g.pad[2] - first - e),
                        };
                        let len = (block.len() - skip).min(x.len() - start);
                        block[..skip].fill(0.0);
                        copy(&mut block[skip..skip + len], &x[start..start + len]);
                        block[skip + len..].fill(0.0);
                        // The padding columns got the neighbouring rows' values: zero them.
                        for row in block.chunks_exact_mut(wo) {
                            row[..lo].fill(0.0);
                            row[hi..].fill(0.0);
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each column entry to the input voxel it was read from.
fn col2im(g: &Conv3dGeom, col: &[f32], r0: usize, r1: usize, dx: &mut [f32]) {
    let wo = g.output[2];
    let ncols = (r1 - r0) * wo;
    let s = g.stride[2];
    let ranges = w_ranges(g);
    for_each_source(g, r0, r1, |k, at, src| {
        let Some(row) = src else { return };
        for (e, &(lo, hi, ix)) in ranges.iter().enumerate() {
            if lo >= hi {
                continue;
            }
            let seg = &col[(k + e) * ncols + at + lo..(k + e) * ncols + at + hi];
            let from = row + ix;
            if s == 1 {
                add(&mut dx[from..from + seg.len()], seg);
            } else {
                for (j, v) in seg.iter().enumerate() {
                    dx[from + j * s] += v;
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
/// At stride 1 (padding below the kernel) this is the forward convolution of `grad` with the
/// flipped, transposed kernel: its matrix product sums over `C_out * taps`, where
/// the scatter below sums over `C_out` only, which keeps the product efficient. Otherwise the
/// columns `W^T grad` are formed chunk by chunk and scattered back (col2im).
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
    if let Some((flipped_geom, flipped)) = flipped(g, w) {
        return forward(&flipped_geom, grad, &flipped, None);
    }
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

/// At stride 1 with `pad <= kernel - 1` on every axis: the convolution whose forward is the
/// input gradient of `g`, and its weight `W'[c, o, a, b, e] = W[o, c, kd-1-a, kh-1-b, kw-1-e]`
/// (padding `kernel - 1 - pad`, input and output sizes swapped).
fn flipped(g: &Conv3dGeom, w: &[f32]) -> Option<(Conv3dGeom, Vec<f32>)> {
    if g.stride != [1; 3] || (0..3).any(|i| g.pad[i] + 1 > g.kernel[i]) {
        return None;
    }
    // Full padding reaches back to the input's size only if the forward's trailing padding was
    // the leading one (symmetric), which the output size tells.
    let pad = [0, 1, 2].map(|i| g.kernel[i] - 1 - g.pad[i]);
    if (0..3).any(|i| g.output[i] + 2 * pad[i] + 1 != g.input[i] + g.kernel[i]) {
        return None;
    }
    let [kd, kh, kw] = g.kernel;
    let taps = kd * kh * kw;
    let mut out = vec![0.0f32; w.len()];
    for o in 0..g.c_out {
        for c in 0..g.c_in {
            let src = &w[(o * g.c_in + c) * taps..][..taps];
            let dst = &mut out[(c * g.c_out + o) * taps..][..taps];
            for (t, v) in src.iter().enumerate() {
                dst[taps - 1 - t] = *v;
            }
        }
    }
    let geom = Conv3dGeom {
        batch: g.batch,
        c_in: g.c_out,
        c_out: g.c_in,
        input: g.output,
        kernel: g.kernel,
        stride: [1; 3],
        pad,
        output: g.input,
    };
    Some((geom, out))
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
    let dw_t = chunks(g.batch, g.rows(), per_chunk)
        .into_par_iter()
        .fold(
            || vec![0.0f32; g.c_out * k],
            |mut acc, (b, r0, r1)| {
                let ncols = (r1 - r0) * wo;
                with_scratch(k * ncols + ncols * g.c_out, |buf| {
                    let (col, dy) = buf.split_at_mut(k * ncols);
                    im2col(g, &x[b * x_len..][..x_len], r0, r1, col);
                    // The chunk's output gradient transposed, `[ncols, C_out]`: the product's
                    // left operand with its `C_out` rows contiguous, which gemm reads as it is.
                    // (Given `[C_out, ncols]`, or with the product oriented the other way, gemm
                    // first transposes an operand into a packed copy, padded to 64 rows.)
                    for o in 0..g.c_out {
                        let src = &grad[(b * g.c_out + o) * out_len + r0 * wo..][..ncols];
                        for (i, v) in src.iter().enumerate() {
                            dy[i * g.c_out + o] = *v;
                        }
                    }
                    // SAFETY: acc is the weight gradient transposed, k x c_out column-major
                    // (entry (o, kk) at kk * c_out + o); dy is ncols x c_out, col k x ncols.
                    unsafe {
                        gemm(
                            g.c_out,
                            k,
                            ncols,
                            acc.as_mut_ptr(),
                            1,
                            g.c_out,
                            true,
                            View::new(dy, 1, g.c_out),
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
    let mut dw = vec![0.0f32; g.c_out * k];
    for (kk, row) in dw_t.chunks_exact(g.c_out).enumerate() {
        for (o, v) in row.iter().enumerate() {
            dw[o * k + kk] = *v;
        }
    }
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
