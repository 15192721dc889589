//! The distance maps of the distance-transform losses ([`HausdorffDTLoss`](crate::HausdorffDTLoss),
//! [`LogHausdorffDTLoss`](crate::LogHausdorffDTLoss), [`BoundaryLoss`](crate::BoundaryLoss)).
//!
//! MONAI computes them with scipy's `distance_transform_edt` on binary masks (a prediction or a
//! target thresholded at 0.5), under `torch.no_grad()`: they are constants of the loss, and no
//! gradient flows through them. Here the masks are formed on the loss's device, read back to the
//! CPU in one transfer per forward, transformed with segloss's own exact Euclidean distance
//! transform ([`segloss_metrics::euclidean_distance_transform`], unit spacing, as MONAI's
//! losses use), and the maps go back to the device as one constant tensor.

use burn::tensor::{Bool, Tensor};
use rayon::prelude::*;
use segloss_metrics::euclidean_distance_transform;

/// Checks that a prediction of shape `shape` (`[B, C, spatial...]`) has 2 or 3 spatial axes, the
/// shapes the distance transform takes (MONAI's distance-transform losses take `BNHW` and `BNHWD`
/// only).
///
/// # Panics
/// Otherwise, naming the loss and the shape.
pub(crate) fn check_spatial_rank(loss: &str, shape: &[usize]) {
    let spatial = shape.len().saturating_sub(2);
    assert!(
        (2..=3).contains(&spatial),
        "{loss}: the distance transform takes 2D or 3D images: the prediction must be [B, C, H, W] or [B, C, H, W, D], got shape {shape:?} ({spatial} spatial axes)"
    );
}

/// Reads binary masks `[B, K, N]` back to the CPU, row-major, in one transfer.
pub(crate) fn read_masks(masks: Tensor<3, Bool>) -> Vec<bool> {
    // Burn stores booleans as bytes or as u32 words depending on the backend; reading them as
    // `u8` converts either form to 0 / 1.
    masks.into_data().iter::<u8>().map(|v| v != 0).collect()
}

/// For each voxel of `mask` (row-major, of shape `spatial`, 2D or 3D), the Euclidean distance
/// in voxels to the nearest voxel on the other side of the mask's interface: for a foreground
/// (`true`) voxel the nearest background voxel, for a background voxel the nearest foreground
/// voxel. This is MONAI's `distance_transform_edt(fg) + distance_transform_edt(~fg)`: each of the
/// two transforms is 0 on the side the other one measures. Every value is `>= 1`.
///
/// `None` when the mask has no interface (all foreground or all background): one of the two
/// distances would then be undefined (no voxel to measure it to), and MONAI gives such a map no
/// distances at all (it leaves it 0).
pub(crate) fn interface_distances(mask: &[bool], spatial: &[usize]) -> Option<Vec<f64>> {
    let foreground = mask.iter().filter(|&&m| m).count();
    if foreground == 0 || foreground == mask.len() {
        return None;
    }
    let background: Vec<bool> = mask.iter().map(|&m| !m).collect();
    let spacing = vec![1.0; spatial.len()];
    let edt = |features: &[bool]| {
        euclidean_distance_transform(features, spatial, &spacing)
            .unwrap_or_else(|e| panic!("segloss: distance transform of a {spatial:?} mask: {e}"))
    };
    // Distance to the nearest background voxel (0 on the background) and to the nearest
    // foreground voxel (0 on the foreground).
    let to_background = edt(&background);
    let to_foreground = edt(mask);
    Some(
        mask.iter()
            .zip(to_background.into_iter().zip(to_foreground))
            .map(|(&m, (to_bg, to_fg))| if m { to_bg } else { to_fg })
            .collect(),
    )
}

/// Applies `map` to each of the `masks.len() / n` masks of `n` voxels (of shape `spatial`), in
/// parallel, with the mask and its [`interface_distances`]; `map` writes that mask's `n` values
/// into the slice it is given. Returns the values, mask after mask.
pub(crate) fn per_mask(
    masks: &[bool],
    n: usize,
    spatial: &[usize],
    map: impl Fn(&[bool], Option<Vec<f64>>, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; masks.len()];
    out.par_chunks_mut(n)
        .zip(masks.par_chunks(n))
        .for_each(|(values, mask)| map(mask, interface_distances(mask, spatial), values));
    out
}

#[cfg(test)]
mod tests {
    use super::interface_distances;

    /// A small deterministic generator (64-bit LCG), so the masks need no dependency.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Coordinates of linear index `i` in a row-major grid of shape `spatial`.
    fn coords(mut i: usize, spatial: &[usize]) -> Vec<i64> {
        let mut c = vec![0i64; spatial.len()];
        for a in (0..spatial.len()).rev() {
            c[a] = (i % spatial[a]) as i64;
            i /= spatial[a];
        }
        c
    }

    /// The distance from each voxel to the nearest voxel of the other side, by trying every pair.
    fn brute_force(mask: &[bool], spatial: &[usize]) -> Vec<f64> {
        (0..mask.len())
            .map(|i| {
                let ci = coords(i, spatial);
                (0..mask.len())
                    .filter(|&j| mask[j] != mask[i])
                    .map(|j| {
                        let cj = coords(j, spatial);
                        let sq: i64 = ci.iter().zip(&cj).map(|(a, b)| (a - b) * (a - b)).sum();
                        (sq as f64).sqrt()
                    })
                    .fold(f64::INFINITY, f64::min)
            })
            .collect()
    }

    #[test]
    fn interface_distances_match_brute_force_on_random_masks() {
        let mut rng = Lcg(20261201);
        let shapes: [&[usize]; 6] = [
            &[5, 7],
            &[1, 9],
            &[8, 1],
            &[4, 5, 6],
            &[1, 3, 7],
            &[6, 2, 1],
        ];
        let mut checked = 0;
        for spatial in shapes {
            let n: usize = spatial.iter().product();
            // From a single voxel of foreground to a nearly full mask.
            for density in [0.02, 0.1, 0.5, 0.9, 0.98] {
                for _ in 0..4 {
                    let mask: Vec<bool> = (0..n).map(|_| rng.next() < density).collect();
                    let got = interface_distances(&mask, spatial);
                    let fg = mask.iter().filter(|&&m| m).count();
                    if fg == 0 || fg == n {
                        assert!(got.is_none(), "{spatial:?}: no interface, got {got:?}");
                        continue;
                    }
                    let got = got.expect("the mask has an interface");
                    let want = brute_force(&mask, spatial);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-6 * w,
                            "{spatial:?} voxel {i}: {g} vs brute force {w} (mask {mask:?})"
                        );
                        assert!(*g >= 1.0, "{spatial:?} voxel {i}: {g} < 1");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 60, "only {checked} masks had an interface");
    }

    #[test]
    fn masks_without_interface_have_no_distances() {
        for spatial in [&[3usize, 4][..], &[1, 1], &[1, 1, 1], &[2, 2, 2]] {
            let n: usize = spatial.iter().product();
            assert_eq!(interface_distances(&vec![false; n], spatial), None);
            assert_eq!(interface_distances(&vec![true; n], spatial), None);
        }
    }

    /// One foreground voxel in the middle of a 5 x 5 image: it lies 1 from the background, and
    /// every background voxel lies its own distance from the centre.
    #[test]
    fn a_single_foreground_voxel() {
        let mut mask = vec![false; 25];
        mask[12] = true;
        let d = interface_distances(&mask, &[5, 5]).unwrap();
        for (i, v) in d.iter().enumerate() {
            let (y, x) = ((i / 5) as f64 - 2.0, (i % 5) as f64 - 2.0);
            let want = if i == 12 { 1.0 } else { (y * y + x * x).sqrt() };
            assert!((v - want).abs() < 1e-9, "voxel {i}: {v} vs {want}");
        }
    }
}
