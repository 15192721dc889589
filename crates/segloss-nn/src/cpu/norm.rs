//! Instance normalisation followed by a leaky ReLU, per `(batch, channel)` over the voxels:
//!
//! `x̂ = (x - mean) / sqrt(var + eps)` (biased variance, as Burn's `InstanceNorm`),
//! `z = gamma x̂ + beta`, `y = z` where `z >= 0`, else `slope z` (Burn's `LeakyRelu`).
//!
//! The forward returns `y` and the per-channel `(mean, 1 / sqrt(var + eps))`; the backward
//! recomputes `x̂` and `z` from `x` and those two numbers, so nothing of the input's size is
//! kept beside `x`.

use rayon::prelude::*;

use super::conv::sum;

/// The sizes: input `[batch, channels, voxels]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NormGeom {
    /// Batch size.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Voxels per channel.
    pub voxels: usize,
}

/// The activation's slope below 0 and the norm's epsilon.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormParams {
    /// `eps` added to the variance.
    pub eps: f32,
    /// Leaky ReLU's slope for negative inputs.
    pub slope: f32,
}

/// Mean and `1 / sqrt(var + eps)` of one channel (two passes: the mean, then the squared
/// deviations, as Burn computes them).
#[inline(always)]
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len().max(1) as f32;
    let mean = sum(x) / n;
    let mut lanes = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let mut rest = 0.0f32;
    for v in chunks.remainder() {
        rest += (v - mean) * (v - mean);
    }
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += (v - mean) * (v - mean);
        }
    }
    let var = ((lanes.iter().map(|&l| l as f64).sum::<f64>() + rest as f64) / n as f64) as f32;
    (mean, 1.0 / (var + eps).sqrt())
}

/// One channel's backward: its statistics and parameters.
struct Channel {
    mean: f32,
    rstd: f32,
    gamma: f32,
    beta: f32,
    slope: f32,
}

/// Lanes of the blocks the loops below are written in (so that the compiler vectorises them).
const LANES: usize = 16;

impl Channel {
    /// `(dz, x̂)` of one voxel: the gradient through the leaky ReLU and the normalised input.
    #[inline(always)]
    fn dz(&self, x: f32, dy: f32) -> (f32, f32) {
        let xh = (x - self.mean) * self.rstd;
        let z = self.gamma * xh + self.beta;
        (dy * if z < 0.0 { self.slope } else { 1.0 }, xh)
    }

    /// `(Σ dz, Σ dz x̂)` over the channel, in `LANES` partial sums added up in `f64`.
    #[inline(always)]
    fn sums(&self, x: &[f32], dy: &[f32]) -> (f32, f32) {
        let (mut s0, mut s1) = ([0.0f32; LANES], [0.0f32; LANES]);
        let (xc, dyc) = (x.chunks_exact(LANES), dy.chunks_exact(LANES));
        let (mut r0, mut r1) = (0.0f64, 0.0f64);
        for (&x, &dy) in xc.remainder().iter().zip(dyc.remainder()) {
            let (d, xh) = self.dz(x, dy);
            r0 += d as f64;
            r1 += (d * xh) as f64;
        }
        for (x, dy) in xc.zip(dyc) {
            for i in 0..LANES {
                let (d, xh) = self.dz(x[i], dy[i]);
                s0[i] += d;
                s1[i] += d * xh;
            }
        }
        let total = |l: [f32; LANES], r: f64| (l.iter().map(|&v| v as f64).sum::<f64>() + r) as f32;
        (total(s0, r0), total(s1, r1))
    }

    /// `dx = gamma rstd (dz - mean(dz) - x̂ mean(dz x̂))` into `dx`.
    #[inline(always)]
    fn input_gradient(&self, x: &[f32], dy: &[f32], m_dz: f32, m_dzxh: f32, dx: &mut [f32]) {
        let k = self.gamma * self.rstd;
        for ((o, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            let (d, xh) = self.dz(x, dy);
            *o = k * (d - m_dz - xh * m_dzxh);
        }
    }
}

with_avx512! {
    /// One channel's backward: `dx` written, `(Σ dz, Σ dz x̂)` returned.
    fn channel_backward(ch: &Channel, x: &[f32], dy: &[f32], dx: &mut [f32]) -> (f32, f32)
        => channel_backward_body
}

#[inline(always)]
fn channel_backward_body(ch: &Channel, x: &[f32], dy: &[f32], dx: &mut [f32]) -> (f32, f32) {
    let (s_dz, s_dzxh) = ch.sums(x, dy);
    let inv_n = 1.0 / x.len().max(1) as f32;
    ch.input_gradient(x, dy, s_dz * inv_n, s_dzxh * inv_n, dx);
    (s_dz, s_dzxh)
}

/// `y` `[B, C, N]` and the statistics `[B, C, 2]` (mean, inverse standard deviation) of `x`
/// `[B, C, N]` with `gamma`, `beta` `[C]`.
///
/// # Panics
/// If a slice's length does not match `g`.
pub fn forward(
    g: &NormGeom,
    p: NormParams,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let n = g.voxels;
    assert_eq!(
        x.len(),
        g.batch * g.channels * n,
        "instance norm: input size"
    );
    assert_eq!(gamma.len(), g.channels, "instance norm: gamma size");
    assert_eq!(beta.len(), g.channels, "instance norm: beta size");
    let mut y = vec![0.0f32; x.len()];
    let mut stats = vec![0.0f32; g.batch * g.channels * 2];
    y.par_chunks_mut(n.max(1))
        .zip(x.par_chunks(n.max(1)))
        .zip(stats.par_chunks_mut(2))
        .enumerate()
        .for_each(|(bc, ((y, x), st))| {
            let c = bc % g.channels;
            let (mean, rstd) = forward_channel(x, y, gamma[c], beta[c], p);
            st[0] = mean;
            st[1] = rstd;
        });
    (y, stats)
}

with_avx512! {
    /// One channel's forward: its statistics, and `y` written; returns `(mean, rstd)`.
    fn forward_channel(x: &[f32], y: &mut [f32], gamma: f32, beta: f32, p: NormParams) -> (f32, f32)
        => forward_channel_body
}

#[inline(always)]
fn forward_channel_body(
    x: &[f32],
    y: &mut [f32],
    gamma: f32,
    beta: f32,
    p: NormParams,
) -> (f32, f32) {
    let (mean, rstd) = moments(x, p.eps);
    let (scale, shift) = (gamma * rstd, beta - gamma * rstd * mean);
    for (y, &x) in y.iter_mut().zip(x) {
        let z = x * scale + shift;
        *y = if z < 0.0 { z * p.slope } else { z };
    }
    (mean, rstd)
}

/// The gradients with respect to `x` `[B, C, N]`, `gamma` and `beta` `[C]` of [`forward`],
/// given the statistics it returned and the output's gradient `grad`.
///
/// With `dz = grad * (z < 0 ? slope : 1)`: `dbeta = Σ dz`, `dgamma = Σ dz x̂`,
/// `dx = gamma rstd (dz - mean(dz) - x̂ mean(dz x̂))`.
///
/// # Panics
/// If a slice's length does not match `g`.
pub fn backward(
    g: &NormGeom,
    p: NormParams,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    stats: &[f32],
    grad: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = g.voxels;
    assert_eq!(
        x.len(),
        g.batch * g.channels * n,
        "instance norm: input size"
    );
    assert_eq!(grad.len(), x.len(), "instance norm: gradient size");
    assert_eq!(
        stats.len(),
        g.batch * g.channels * 2,
        "instance norm: stats size"
    );
    let mut dx = vec![0.0f32; x.len()];
    let sums: Vec<(f32, f32)> = dx
        .par_chunks_mut(n.max(1))
        .zip(x.par_chunks(n.max(1)).zip(grad.par_chunks(n.max(1))))
        .zip(stats.par_chunks(2))
        .enumerate()
        .map(|(bc, ((dx, (x, dy)), st))| {
            let c = bc % g.channels;
            let (mean, rstd) = (st[0], st[1]);
            let ch = Channel {
                mean,
                rstd,
                gamma: gamma[c],
                beta: beta[c],
                slope: p.slope,
            };
            channel_backward(&ch, x, dy, dx)
        })
        .collect();
    let mut dgamma = vec![0.0f32; g.channels];
    let mut dbeta = vec![0.0f32; g.channels];
    for (bc, (s_dz, s_dzxh)) in sums.into_iter().enumerate() {
        dbeta[bc % g.channels] += s_dz;
        dgamma[bc % g.channels] += s_dzxh;
    }
    (dx, dgamma, dbeta)
}
