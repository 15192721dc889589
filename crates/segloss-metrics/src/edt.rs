//! Exact Euclidean distance transform (Felzenszwalb & Huttenlocher), separable, parallel, with
//! anisotropic spacing.

use rayon::prelude::*;

use super::error::MetricsError;

/// Exact Euclidean distance from every voxel to the nearest `true` voxel of `features`, in
/// spacing units.
///
/// This is `scipy.ndimage.distance_transform_edt(~features, sampling=spacing)`: the squared
/// distance is computed one axis at a time with the lower envelope of parabolas of Felzenszwalb &
/// Huttenlocher ("Distance Transforms of Sampled Functions", Theory of Computing 8, 2012), which is
/// exact, linear in the number of voxels and honours a different spacing per axis. Lines are
/// processed in parallel (rayon); arithmetic is in `f64`, the intermediate grid of squared
/// distances in `f32` (half the memory), so distances carry a relative error below 1e-6 — MONAI
/// itself returns `float32` distances.
///
/// Without any feature voxel every distance is `f64::INFINITY`.
///
/// # Errors
/// [`MetricsError::Shape`] / [`MetricsError::Spacing`] as for
/// [`LabelVolume::new`](super::LabelVolume::new).
///
/// ```
/// use segloss_metrics::euclidean_distance_transform;
/// let mask = [true, false, false, false];
/// let d = euclidean_distance_transform(&mask, &[1, 4], &[1.0, 2.0])?;
/// assert_eq!(d, vec![0.0, 2.0, 4.0, 6.0]);
/// # Ok::<(), segloss_metrics::MetricsError>(())
/// ```
pub fn euclidean_distance_transform(
    features: &[bool],
    shape: &[usize],
    spacing: &[f64],
) -> Result<Vec<f64>, MetricsError> {
    // Validate through the volume type, so the rules and messages are the same.
    let vol = super::volume::LabelVolume::new(vec![0; features.len()], shape, spacing)?;
    let points: Vec<usize> = features
        .iter()
        .enumerate()
        .filter_map(|(i, &f)| f.then_some(i))
        .collect();
    let (unit, spacing) = in_units(vol.dims3(), vol.spacing3());
    let sq = squared_edt(vol.dims3(), spacing, &points, None);
    Ok(sq.into_iter().map(|d| f64::from(d).sqrt() * unit).collect())
}

/// The spacing as a multiple of a power of two `unit` near its largest value over the axes longer
/// than 1: `(unit, spacing / unit)`, that largest scaled spacing in `[1, 2)`.
///
/// The grid holds squared distances in `f32`, whose range (about 1e-38 to 3e38) the squares of a
/// spacing in metres or in ångströms would leave (spacing 1e-25 squared underflows to 0, so every
/// distance would read 0). Scaling by a power of two is exact, and the distances scale back
/// exactly: the distance transform is computed in these units and multiplied by `unit`.
pub(crate) fn in_units(dims: [usize; 3], spacing: [f64; 3]) -> (f64, [f64; 3]) {
    // Axes of length 1 (a 2D volume's padding axis) carry no distance: their spacing is ignored.
    let largest = (0..3)
        .filter(|&a| dims[a] > 1)
        .map(|a| spacing[a])
        .fold(0.0, f64::max);
    if largest == 0.0 {
        return (1.0, spacing);
    }
    let unit = 2f64.powi(largest.log2().floor() as i32);
    (unit, spacing.map(|s| s / unit))
}

/// Squared distances to the nearest of `features` (linear indices into a row-major `dims` grid).
/// An axis of length 1 contributes nothing, so 2D grids pass `[1, h, w]`.
///
/// With `queries`, only the values at those indices are guaranteed: the last pass (axis 0) skips
/// the lines that hold no query point, which saves much of the work for sparse boundaries.
pub(crate) fn squared_edt(
    dims: [usize; 3],
    spacing: [f64; 3],
    features: &[usize],
    queries: Option<&[usize]>,
) -> Vec<f32> {
    let mut grid = Vec::new();
    squared_edt_into(&mut grid, dims, spacing, features, queries);
    grid
}

/// [`squared_edt`] into `grid`, whose allocation is reused (the grid is refilled in parallel, so
/// the first touch of its pages is spread over the cores too).
pub(crate) fn squared_edt_into(
    grid: &mut Vec<f32>,
    dims: [usize; 3],
    spacing: [f64; 3],
    features: &[usize],
    queries: Option<&[usize]>,
) {
    let [nz, ny, nx] = dims;
    grid.clear();
    grid.par_extend((0..nz * ny * nx).into_par_iter().map(|_| f32::INFINITY));
    if features.is_empty() {
        return;
    }
    for &i in features {
        grid[i] = 0.0;
    }
    // Axis 2 (contiguous rows): distance to the nearest feature on the row, by two sweeps.
    let sx2 = spacing[2] * spacing[2];
    grid.par_chunks_mut(nx).for_each(|row| binary_row(row, sx2));
    // Axis 1: columns of each z-plane (a plane is contiguous and small enough for the cache).
    if ny > 1 {
        let sy2 = spacing[1] * spacing[1];
        grid.par_chunks_mut(ny * nx).for_each_init(
            || Lines::new(ny),
            |lines, plane| {
                for x in 0..nx {
                    for y in 0..ny {
                        lines.f[y] = f64::from(plane[y * nx + x]);
                    }
                    if lines.envelope(sy2) {
                        for y in 0..ny {
                            plane[y * nx + x] = lines.d[y] as f32;
                        }
                    }
                }
            },
        );
    }
    // Axis 0: for each y, copy the (z, x) block (nz rows of nx contiguous values) into a buffer,
    // transform its columns there, copy it back. Blocks of different y are disjoint.
    if nz > 1 {
        let sz2 = spacing[0] * spacing[0];
        // With queries: the z of the queries of each (y, x) line, by a counting sort.
        let per_line = queries.map(|q| QueryLines::new(q, ny * nx));
        let shared = SharedGrid(grid.as_mut_ptr());
        (0..ny).into_par_iter().for_each_init(
            || (Lines::new(nz), vec![0f32; nz * nx]),
            |(lines, block), y| {
                let zs = |x: usize| per_line.as_ref().map(|p| p.of(y * nx + x));
                if !(0..nx).any(|x| zs(x).is_none_or(|z| !z.is_empty())) {
                    return;
                }
                for z in 0..nz {
                    let src = (z * ny + y) * nx;
                    // SAFETY: src + nx <= grid.len(); only this task touches rows with this y.
                    unsafe { shared.read_row(src, &mut block[z * nx..(z + 1) * nx]) };
                }
                for x in 0..nx {
                    let wanted = zs(x);
                    if wanted.is_some_and(|z| z.is_empty()) {
                        continue;
                    }
                    for z in 0..nz {
                        lines.f[z] = f64::from(block[z * nx + x]);
                    }
                    match wanted {
                        // A few queries on the line: evaluate the minimum directly at them
                        // (a branch-free scan that is cheaper than the envelope there).
                        Some(wz) if wz.len() <= DIRECT_QUERIES => {
                            for &zq in wz {
                                let zq = zq as f64;
                                let mut best = f64::INFINITY;
                                for (zp, &fz) in lines.f.iter().enumerate() {
                                    let dz = zq - zp as f64;
                                    let c = sz2 * dz * dz + fz;
                                    best = if c < best { c } else { best };
                                }
                                block[zq as usize * nx + x] = best as f32;
                            }
                        }
                        _ => {
                            if lines.envelope(sz2) {
                                for z in 0..nz {
                                    block[z * nx + x] = lines.d[z] as f32;
                                }
                            }
                        }
                    }
                }
                for z in 0..nz {
                    let dst = (z * ny + y) * nx;
                    // SAFETY: as above.
                    unsafe { shared.write_row(dst, &block[z * nx..(z + 1) * nx]) };
                }
            },
        );
    }
}

/// Up to this many queries on a line of the last pass are evaluated directly (O(n) each) instead
/// of through the lower envelope (O(n) per line with a larger constant).
const DIRECT_QUERIES: usize = 16;

/// The query points of the last pass grouped by line: `z[start[l]..start[l + 1]]` are the axis-0
/// positions of the queries on line `l = y * nx + x`.
struct QueryLines {
    start: Vec<u32>,
    z: Vec<u32>,
}

impl QueryLines {
    fn new(queries: &[usize], lines: usize) -> Self {
        let mut start = vec![0u32; lines + 1];
        for &q in queries {
            start[q % lines + 1] += 1;
        }
        for l in 0..lines {
            start[l + 1] += start[l];
        }
        let mut fill = start.clone();
        let mut z = vec![0u32; queries.len()];
        for &q in queries {
            let l = q % lines;
            z[fill[l] as usize] = (q / lines) as u32;
            fill[l] += 1;
        }
        Self { start, z }
    }

    fn of(&self, line: usize) -> &[u32] {
        &self.z[self.start[line] as usize..self.start[line + 1] as usize]
    }
}

/// A raw pointer into the grid for the axis-0 pass, whose tasks write disjoint strided elements.
#[derive(Clone, Copy)]
struct SharedGrid(*mut f32);
// SAFETY: the pointer is only used by tasks that access disjoint elements, while the owning Vec
// is alive and not otherwise borrowed (see `squared_edt`).
unsafe impl Send for SharedGrid {}
// SAFETY: as for `Send`: a shared `SharedGrid` only copies the pointer.
unsafe impl Sync for SharedGrid {}

impl SharedGrid {
    /// Copies `out.len()` elements starting at `start` into `out`.
    ///
    /// # Safety
    /// `start + out.len()` in bounds and no concurrent writer of those elements.
    unsafe fn read_row(self, start: usize, out: &mut [f32]) {
        // SAFETY: in bounds and not written concurrently (the caller's contract); `out` is a
        // separate buffer, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.0.add(start), out.as_mut_ptr(), out.len()) }
    }
    /// Copies `row` to the elements starting at `start`.
    ///
    /// # Safety
    /// `start + row.len()` in bounds and no concurrent access to those elements.
    unsafe fn write_row(self, start: usize, row: &[f32]) {
        // SAFETY: in bounds and not accessed concurrently (the caller's contract); `row` is a
        // separate buffer, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), self.0.add(start), row.len()) }
    }
}

/// One row that holds 0 (feature) or infinity: squared distance to the nearest 0 on the row.
fn binary_row(row: &mut [f32], s2: f64) {
    let mut last: Option<usize> = None;
    // Forward sweep: distance (in voxels) to the last feature on the left, stored in the row.
    for (i, x) in row.iter_mut().enumerate() {
        if *x == 0.0 {
            last = Some(i);
        } else if let Some(l) = last {
            *x = (i - l) as f32;
        }
    }
    if last.is_none() {
        return;
    }
    // Backward sweep: take the nearer of the two sides, then square and scale.
    let mut next: Option<usize> = None;
    for (i, x) in row.iter_mut().enumerate().rev() {
        if *x == 0.0 {
            next = Some(i);
            continue;
        }
        let right = next.map_or(f32::INFINITY, |r| (r - i) as f32);
        let k = f64::from(x.min(right));
        *x = (k * k * s2) as f32;
    }
}

/// Work buffers of the 1D lower-envelope transform.
struct Lines {
    /// Input: squared distances so far (infinity where nothing is known).
    f: Vec<f64>,
    /// Output: squared distances after this axis.
    d: Vec<f64>,
    /// Envelope: position, `f` and `f + s2 q^2` of each parabola.
    v: Vec<f64>,
    fv: Vec<f64>,
    h: Vec<f64>,
    /// Left boundary of each parabola's interval as a fraction `zn / zd` (`zd > 0`), so that the
    /// construction needs no division.
    zn: Vec<f64>,
    zd: Vec<f64>,
}

impl Lines {
    fn new(n: usize) -> Self {
        Self {
            f: vec![0.0; n],
            d: vec![0.0; n],
            v: vec![0.0; n],
            fv: vec![0.0; n],
            h: vec![0.0; n],
            zn: vec![0.0; n + 1],
            zd: vec![1.0; n + 1],
        }
    }

    /// `d[q] = min_p s2 (q - p)^2 + f[p]` over the finite `f[p]`. Returns false (and leaves `d`
    /// alone) when every `f` is infinite, so the caller can skip writing the line back.
    fn envelope(&mut self, s2: f64) -> bool {
        let n = self.f.len();
        let f = &self.f[..n];
        let (v, fv, h) = (&mut self.v[..n], &mut self.fv[..n], &mut self.h[..n]);
        let (zn, zd) = (&mut self.zn[..n + 1], &mut self.zd[..n + 1]);
        let two_s2 = 2.0 * s2;
        // Number of parabolas in the envelope; the last one is at k - 1. Indices below stay
        // in bounds: k <= q + 1 <= n for v, fv, h and k <= n for zn, zd; j < k.
        let mut k = 0usize;
        for (q, &fq) in f.iter().enumerate() {
            if fq == f64::INFINITY {
                continue;
            }
            let qf = q as f64;
            let hq = fq + s2 * qf * qf;
            if k == 0 {
                v[0] = qf;
                fv[0] = fq;
                h[0] = hq;
                zn[0] = f64::NEG_INFINITY;
                zd[0] = 1.0;
                k = 1;
                continue;
            }
            // SAFETY: 1 <= k <= q < n (see above) for every get_unchecked in this block.
            unsafe {
                // Intersection with the last parabola, s = num / den with den > 0; drop the
                // parabolas that the new one hides (s <= their left boundary).
                let mut num = hq - h.get_unchecked(k - 1);
                let mut den = two_s2 * (qf - v.get_unchecked(k - 1));
                // zn[0] is -inf, so the loop stops before k reaches 0.
                while num * zd.get_unchecked(k - 1) <= zn.get_unchecked(k - 1) * den {
                    k -= 1;
                    num = hq - h.get_unchecked(k - 1);
                    den = two_s2 * (qf - v.get_unchecked(k - 1));
                }
                *v.get_unchecked_mut(k) = qf;
                *fv.get_unchecked_mut(k) = fq;
                *h.get_unchecked_mut(k) = hq;
                *zn.get_unchecked_mut(k) = num;
                *zd.get_unchecked_mut(k) = den;
            }
            k += 1;
        }
        if k == 0 {
            return false;
        }
        zn[k] = f64::INFINITY;
        zd[k] = 1.0;
        let mut j = 0usize;
        for (q, out) in self.d[..n].iter_mut().enumerate() {
            let qf = q as f64;
            // SAFETY: zn[k] / zd[k] is +inf, so j stays < k <= n.
            unsafe {
                while *zn.get_unchecked(j + 1) < qf * zd.get_unchecked(j + 1) {
                    j += 1;
                }
                let dq = qf - v.get_unchecked(j);
                *out = s2 * dq * dq + fv.get_unchecked(j);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute-force squared distances for comparison.
    fn brute(dims: [usize; 3], spacing: [f64; 3], features: &[usize]) -> Vec<f64> {
        let [_, ny, nx] = dims;
        let coord = |i: usize| [i / (ny * nx), (i / nx) % ny, i % nx];
        (0..dims.iter().product())
            .map(|i| {
                let a = coord(i);
                features
                    .iter()
                    .map(|&j| {
                        let b = coord(j);
                        (0..3)
                            .map(|k| ((a[k] as f64 - b[k] as f64) * spacing[k]).powi(2))
                            .sum::<f64>()
                    })
                    .fold(f64::INFINITY, f64::min)
            })
            .collect()
    }

    #[test]
    fn test_matches_brute_force_on_random_sparse_features() {
        // A small deterministic generator (no rand dependency needed).
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (dims, spacing) in [
            ([7, 9, 11], [1.0, 1.0, 1.0]),
            ([5, 12, 6], [2.5, 0.8, 0.3]),
            ([1, 13, 17], [1.0, 0.5, 3.0]),
            ([9, 1, 8], [0.7, 1.0, 1.3]),
        ] {
            let n: usize = dims.iter().product();
            for density in [1u64, 5, 40] {
                let features: Vec<usize> = (0..n).filter(|_| next() % 100 < density).collect();
                let fast = squared_edt(dims, spacing, &features, None);
                let slow = brute(dims, spacing, &features);
                for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
                    if b.is_infinite() {
                        assert!(a.is_infinite(), "voxel {i}: {a} vs inf");
                    } else {
                        assert!(
                            (f64::from(*a) - b).abs() <= 1e-5 * b.max(1.0),
                            "dims {dims:?} spacing {spacing:?} voxel {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn test_extreme_spacings_scale_exactly() {
        // Spacing 1e-25 squared underflows f32; 1e25 squared overflows it.
        let mask = [true, false, false, false, false];
        for s in [1e-25, 1e-12, 3.0, 1e12, 1e25] {
            // The length-1 axis's spacing (1 against 1e-25) carries no distance.
            for spacing in [[s, s], [1.0, s]] {
                let d = euclidean_distance_transform(&mask, &[1, 5], &spacing).unwrap();
                for (k, v) in d.iter().enumerate() {
                    let want = k as f64 * s;
                    assert!(
                        (v - want).abs() <= 1e-6 * want,
                        "spacing {spacing:?}: {v} vs {want}"
                    );
                }
            }
        }
        let (unit, scaled) = in_units([2, 2, 2], [1e-25, 3e-26, 1e-30]);
        assert_eq!(unit, 2f64.powi(-84));
        assert!((1.0..2.0).contains(&scaled[0]));
    }

    #[test]
    fn test_query_restricted_transform_is_exact_at_queries() {
        let (dims, spacing) = ([9, 8, 7], [1.5, 1.0, 0.5]);
        let features = [3, 100, 250, 400];
        // A few queries (direct evaluation) and a whole dense block (the envelope path).
        let sparse = vec![0, 57, 199, 311, 503];
        let dense: Vec<usize> = (0..9 * 8 * 7).filter(|i| i % 7 < 5).collect();
        let full = squared_edt(dims, spacing, &features, None);
        for queries in [sparse, dense] {
            let part = squared_edt(dims, spacing, &features, Some(&queries));
            for &q in &queries {
                assert!(
                    (full[q] - part[q]).abs() <= 1e-6 * full[q].max(1.0),
                    "query {q}"
                );
            }
        }
        // Lines with more than DIRECT_QUERIES queries go through the envelope.
        let (dims, features) = ([40, 3, 4], [5, 200, 333]);
        let all: Vec<usize> = (0..40 * 3 * 4).collect();
        let full = squared_edt(dims, spacing, &features, None);
        let part = squared_edt(dims, spacing, &features, Some(&all[..400]));
        for q in 0..400 {
            assert_eq!(full[q], part[q], "query {q}");
        }
    }

    #[test]
    fn test_no_feature_is_infinite() {
        let d = euclidean_distance_transform(&[false; 6], &[2, 3], &[1.0, 1.0]).unwrap();
        assert!(d.iter().all(|x| x.is_infinite()));
    }

    #[test]
    fn test_rejects_bad_spacing() {
        let err = euclidean_distance_transform(&[true; 4], &[2, 2], &[1.0, -1.0]).unwrap_err();
        assert!(
            err.to_string().contains("spacing must be finite and > 0"),
            "{err}"
        );
    }
}
