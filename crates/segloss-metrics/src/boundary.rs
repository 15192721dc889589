//! Boundaries of one label: inner boundary voxels (MONAI, MedPy, MetricsReloaded) or surface
//! elements with areas on the corner grid (DeepMind `surface-distance`).

use rayon::prelude::*;

use super::options::Boundary;
use super::surfel_table::{contour_length_table, surface_area_table};
use super::volume::LabelVolume;

/// Axis-aligned bounding box, inclusive-exclusive, in volume coordinates `[z, y, x]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BBox {
    pub lo: [usize; 3],
    pub hi: [usize; 3],
}

impl BBox {
    pub(crate) fn union(a: Option<BBox>, b: Option<BBox>) -> Option<BBox> {
        match (a, b) {
            (Some(a), Some(b)) => Some(BBox {
                lo: [0, 1, 2].map(|i| a.lo[i].min(b.lo[i])),
                hi: [0, 1, 2].map(|i| a.hi[i].max(b.hi[i])),
            }),
            (a, None) => a,
            (None, b) => b,
        }
    }
}

/// The points of one surface on the distance grid, with their weights (surfel areas or contour
/// lengths; `None` for voxel boundaries, where every point weighs 1).
#[derive(Debug, Default)]
pub(crate) struct Surface {
    pub points: Vec<usize>,
    pub weights: Option<Vec<f64>>,
}

/// Both surfaces of one label on a common grid (`dims`), cropped to the union bounding box plus
/// the one-voxel margin the boundary needs.
pub(crate) struct Surfaces {
    pub dims: [usize; 3],
    pub pred: Surface,
    pub reference: Surface,
}

/// Extracts the two surfaces of `label` inside `bbox` (the union bounding box of the label in
/// both volumes). Voxels outside the image count as background, as in MONAI (zero padding) and
/// scipy's `binary_erosion` (border value 0).
pub(crate) fn surfaces(
    pred: &LabelVolume,
    reference: &LabelVolume,
    label: u16,
    bbox: BBox,
    boundary: Boundary,
) -> Surfaces {
    let active = active_axes(pred);
    // The crop: bbox plus one voxel on each side of every active axis.
    let mut origin = [0isize; 3];
    let mut dims = [1usize; 3];
    for a in 0..3 {
        let m = usize::from(active[a]);
        origin[a] = bbox.lo[a] as isize - m as isize;
        dims[a] = bbox.hi[a] - bbox.lo[a] + 2 * m;
    }
    let mp = crop_mask(pred, label, origin, dims);
    let mr = crop_mask(reference, label, origin, dims);
    match boundary {
        Boundary::InnerVoxels => Surfaces {
            dims,
            pred: inner_voxels(&mp, dims, active, false),
            reference: inner_voxels(&mr, dims, active, false),
        },
        Boundary::InnerVoxelsFull => Surfaces {
            dims,
            pred: inner_voxels(&mp, dims, active, true),
            reference: inner_voxels(&mr, dims, active, true),
        },
        Boundary::Surfels => {
            let cdims = [0, 1, 2].map(|a| if active[a] { dims[a] - 1 } else { 1 });
            let sp = pred.spacing3();
            let table: Vec<f64> = if active[0] {
                surface_area_table(sp).to_vec()
            } else {
                contour_length_table([sp[1], sp[2]]).to_vec()
            };
            Surfaces {
                dims: cdims,
                pred: surfels(&mp, dims, cdims, active, &table),
                reference: surfels(&mr, dims, cdims, active, &table),
            }
        }
    }
}

fn active_axes(v: &LabelVolume) -> [bool; 3] {
    [v.ndim() == 3, true, true]
}

/// `label == volume` over the crop, 0 outside the image.
fn crop_mask(vol: &LabelVolume, label: u16, origin: [isize; 3], dims: [usize; 3]) -> Vec<u8> {
    let [vz, vy, vx] = vol.dims3();
    let data = vol.labels();
    let mut out = vec![0u8; dims.iter().product()];
    // Range of crop x that lies inside the image.
    let x0 = (-origin[2]).max(0) as usize;
    let x1 = ((vx as isize - origin[2]).min(dims[2] as isize)).max(0) as usize;
    out.par_chunks_mut(dims[1] * dims[2])
        .enumerate()
        .for_each(|(cz, plane)| {
            let z = origin[0] + cz as isize;
            if z < 0 || z >= vz as isize {
                return;
            }
            for cy in 0..dims[1] {
                let y = origin[1] + cy as isize;
                if y < 0 || y >= vy as isize {
                    continue;
                }
                let src = (z as usize * vy + y as usize) * vx;
                let dst = cy * dims[2];
                for cx in x0..x1 {
                    let x = (origin[2] + cx as isize) as usize;
                    plane[dst + cx] = u8::from(data[src + x] == label);
                }
            }
        });
    out
}

/// Mask voxels with a background neighbour: face neighbours (6 in 3D, 4 in 2D: the erosion by
/// `scipy.ndimage.generate_binary_structure(ndim, 1)` that MONAI and MedPy use), or all 26 (8)
/// neighbours when `full`. The crop margin guarantees every mask voxel has all its neighbours
/// inside the crop.
fn inner_voxels(mask: &[u8], dims: [usize; 3], active: [bool; 3], full: bool) -> Surface {
    let [_, ny, nx] = dims;
    let strides = [ny * nx, nx, 1];
    let mut offsets: Vec<isize> = Vec::new();
    let r = |a: usize| if active[a] { -1isize..=1 } else { 0isize..=0 };
    for dz in r(0) {
        for dy in r(1) {
            for dx in r(2) {
                let nonzero = [dz, dy, dx].iter().filter(|d| **d != 0).count();
                if nonzero == 0 || (!full && nonzero > 1) {
                    continue;
                }
                offsets.push(dz * strides[0] as isize + dy * strides[1] as isize + dx);
            }
        }
    }
    let (sz, sy) = (strides[0], strides[1]);
    let zact = active[0];
    let is_edge = |i: usize| {
        if full {
            offsets
                .iter()
                .any(|&o| mask[(i as isize + o) as usize] == 0)
        } else {
            // Face neighbours only: direct strided checks (the common case, MONAI's erosion).
            mask[i - 1] == 0
                || mask[i + 1] == 0
                || mask[i - sy] == 0
                || mask[i + sy] == 0
                || (zact && (mask[i - sz] == 0 || mask[i + sz] == 0))
        }
    };
    // Planes in parallel; concatenated in order, so points stay sorted by index.
    let per_plane: Vec<Vec<usize>> = mask
        .par_chunks(sz)
        .enumerate()
        .map(|(cz, plane)| {
            let base = cz * sz;
            plane
                .iter()
                .enumerate()
                .filter(|&(j, &m)| m != 0 && is_edge(base + j))
                .map(|(j, _)| base + j)
                .collect()
        })
        .collect();
    let points = per_plane.concat();
    Surface {
        points,
        weights: None,
    }
}

/// Corner points whose 2x2x2 (2x2) neighbourhood is neither empty nor full, with the area (length)
/// of their surfel. Corner `c` sits between voxels `c` and `c + 1` of the crop along each active
/// axis; the neighbour code weights voxel offset `d` by `2^(7 - (4 d0 + 2 d1 + d2))` in 3D and
/// `2^(3 - (2 d1 + d2))` in 2D (DeepMind's correlation kernel).
fn surfels(
    mask: &[u8],
    dims: [usize; 3],
    cdims: [usize; 3],
    active: [bool; 3],
    table: &[f64],
) -> Surface {
    let [_, ny, nx] = dims;
    let full = table.len() - 1;
    let mut taps: Vec<(usize, usize)> = Vec::new(); // (offset into mask, bit weight)
    let zr = if active[0] { 0..2 } else { 0..1 };
    for dz in zr {
        for dy in 0..2 {
            for dx in 0..2 {
                let bit = if active[0] {
                    7 - (4 * dz + 2 * dy + dx)
                } else {
                    3 - (2 * dy + dx)
                };
                taps.push(((dz * ny + dy) * nx + dx, 1 << bit));
            }
        }
    }
    let per_plane: Vec<(Vec<usize>, Vec<f64>)> = (0..cdims[0])
        .into_par_iter()
        .map(|cz| {
            let (mut points, mut weights) = (Vec::new(), Vec::new());
            for cy in 0..cdims[1] {
                let base = (cz * ny + cy) * nx;
                for cx in 0..cdims[2] {
                    let b = base + cx;
                    let code: usize = taps
                        .iter()
                        .map(|&(o, w)| usize::from(mask[b + o]) * w)
                        .sum();
                    if code != 0 && code != full {
                        points.push((cz * cdims[1] + cy) * cdims[2] + cx);
                        weights.push(table[code]);
                    }
                }
            }
            (points, weights)
        })
        .collect();
    let points = per_plane.iter().flat_map(|p| p.0.iter().copied()).collect();
    let weights = per_plane.iter().flat_map(|p| p.1.iter().copied()).collect();
    Surface {
        points,
        weights: Some(weights),
    }
}
