//! The soft skeleton of clDice (Shit et al. 2021), as MONAI 1.6.1's `soft_skel` computes it:
//! iterated soft erosions (minimum over the 3-voxel cross along each axis) and openings (an
//! erosion then a 3x3(x3) maximum), composed from Burn tensor operations so that autodiff
//! differentiates it.
//!
//! PyTorch's max pooling sends the gradient of a window to the *first* maximal element in the
//! window's row-major order, and `torch.min(a, b)` splits it in halves where `a == b`. Soft
//! skeletons are full of such ties (an erosion copies one voxel's value to its neighbours, the
//! following dilation finds the copies again), so the gradient matches MONAI only if the ties are
//! broken the same way: every maximum and minimum here selects its operand with masks computed
//! from the values (constants of the graph), the earliest operand winning a tie, and the binary
//! minimum weighs tied operands by one half each. The 3x3(x3) maximum is separable: taken along
//! the last axis first, then the middle, then the first, each earliest-wins, it selects the
//! window's earliest maximum in row-major order, as PyTorch does. Windows that cross the border
//! see only the voxels inside (PyTorch pads with -inf): here the border voxel is repeated, which
//! gives the same value and sends the gradient to the same voxel.

use burn::tensor::Tensor;
use burn::tensor::activation::relu;

/// Checks that a prediction of shape `shape` (`[B, C, spatial...]`) has 2 or 3 spatial axes, the
/// shapes the soft skeleton takes (MONAI's `soft_erode` / `soft_dilate` take `BCHW` and `BCHWD`).
///
/// # Panics
/// Otherwise, naming the loss and the shape.
pub(crate) fn check_skeleton_rank(loss: &str, shape: &[usize]) {
    let spatial = shape.len().saturating_sub(2);
    assert!(
        (2..=3).contains(&spatial),
        "{loss}: the soft skeleton takes 2D or 3D images: the prediction must be [B, C, H, W] or [B, C, H, W, D], got shape {shape:?} ({spatial} spatial axes)"
    );
}

/// The soft skeleton of `img` (`[B, C, spatial...]`, 2 or 3 spatial axes, values in `[0, 1]`)
/// after `iterations` erosions: MONAI's `soft_skel(img, iter_)`.
pub(crate) fn soft_skeleton<const D: usize>(img: Tensor<D>, iterations: usize) -> Tensor<D> {
    // `soft_open(img)` erodes `img`, and the loop's first step erodes it again: MONAI computes
    // that erosion twice, here it is shared (same values, same graph, same gradient).
    let mut eroded = soft_erode(img.clone());
    let mut skel = relu(img - soft_dilate(eroded.clone()));
    for _ in 0..iterations {
        let img = eroded;
        eroded = soft_erode(img.clone());
        let delta = relu(img - soft_dilate(eroded.clone()));
        skel = skel.clone() + relu(delta.clone() - skel * delta);
    }
    skel
}

/// The minimum over the 3-voxel cross: the 3-voxel minimum along each spatial axis, then the
/// minimum of those (MONAI's `soft_erode`).
pub(crate) fn soft_erode<const D: usize>(img: Tensor<D>) -> Tensor<D> {
    let mut out = extreme3(img.clone(), 2, Extreme::Min);
    for axis in 3..D {
        out = minimum(out, extreme3(img.clone(), axis, Extreme::Min));
    }
    out
}

/// The maximum over the 3x3(x3) neighbourhood (MONAI's `soft_dilate`).
pub(crate) fn soft_dilate<const D: usize>(img: Tensor<D>) -> Tensor<D> {
    (2..D)
        .rev()
        .fold(img, |acc, axis| extreme3(acc, axis, Extreme::Max))
}

#[derive(Clone, Copy)]
enum Extreme {
    Min,
    Max,
}

/// The minimum or maximum of each voxel and its two neighbours along `axis`; a tie goes to the
/// earliest of the three (see the module's note on gradients).
fn extreme3<const D: usize>(x: Tensor<D>, axis: usize, which: Extreme) -> Tensor<D> {
    let n = x.dims()[axis];
    if n == 1 {
        return x;
    }
    let prev = Tensor::cat(
        vec![
            x.clone().narrow(axis, 0, 1),
            x.clone().narrow(axis, 0, n - 1),
        ],
        axis,
    );
    let next = Tensor::cat(
        vec![
            x.clone().narrow(axis, 1, n - 1),
            x.clone().narrow(axis, n - 1, 1),
        ],
        axis,
    );
    // `a` wins over `b` (ties included), as a 0/1 float constant.
    let wins = |a: &Tensor<D>, b: &Tensor<D>| match which {
        Extreme::Max => a.clone().greater_equal(b.clone()).float(),
        Extreme::Min => a.clone().lower_equal(b.clone()).float(),
    };
    let take_prev = wins(&prev, &x) * wins(&prev, &next);
    let not_prev = take_prev.clone().neg().add_scalar(1.0);
    let take_x = not_prev.clone() * wins(&x, &next);
    let take_next = not_prev - take_x.clone();
    prev * take_prev + x * take_x + next * take_next
}

/// The element-wise minimum, its gradient split in halves where `a == b` (PyTorch's
/// `torch.min(a, b)`).
fn minimum<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    let lower = a.clone().lower(b.clone()).float();
    let tie = a.clone().equal(b.clone()).float();
    let wa = lower + tie.mul_scalar(0.5);
    let wb = wa.clone().neg().add_scalar(1.0);
    a * wa + b * wb
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    /// The erosion and the dilation against a direct loop over each voxel's neighbourhood.
    #[test]
    fn erode_and_dilate_match_their_definitions() {
        let device = Device::flex();
        let (h, w, d) = (4usize, 5usize, 3usize);
        let x: Vec<f32> = (0..h * w * d)
            .map(|i| ((i * 37 + 11) % 17) as f32 / 16.0)
            .collect();
        let t = Tensor::<5>::from_data(TensorData::new(x.clone(), [1, 1, h, w, d]), &device);
        let at = |i: isize, j: isize, k: isize| -> Option<f32> {
            let ok = (0..h as isize).contains(&i)
                && (0..w as isize).contains(&j)
                && (0..d as isize).contains(&k);
            ok.then(|| x[(i as usize * w + j as usize) * d + k as usize])
        };
        let mut eroded = Vec::new();
        let mut dilated = Vec::new();
        for i in 0..h as isize {
            for j in 0..w as isize {
                for k in 0..d as isize {
                    let cross = [
                        (-1, 0, 0),
                        (1, 0, 0),
                        (0, -1, 0),
                        (0, 1, 0),
                        (0, 0, -1),
                        (0, 0, 1),
                    ];
                    let e = cross
                        .iter()
                        .filter_map(|(a, b, c)| at(i + a, j + b, k + c))
                        .fold(at(i, j, k).unwrap(), f32::min);
                    eroded.push(e);
                    let mut m = f32::MIN;
                    for a in -1..=1 {
                        for b in -1..=1 {
                            for c in -1..=1 {
                                if let Some(v) = at(i + a, j + b, k + c) {
                                    m = m.max(v);
                                }
                            }
                        }
                    }
                    dilated.push(m);
                }
            }
        }
        assert_eq!(values(soft_erode(t.clone())), eroded);
        assert_eq!(values(soft_dilate(t)), dilated);
    }

    /// A solid bar's skeleton lies on its centre line: a 5-wide bar in 2D after enough
    /// iterations has skeleton 1 on the middle row and 0 on the rows next to the border.
    #[test]
    fn skeleton_of_a_bar_is_its_centre_line() {
        let device = Device::flex();
        let (h, w) = (9usize, 12usize);
        let x: Vec<f32> = (0..h * w)
            .map(|i| if (2..7).contains(&(i / w)) { 1.0 } else { 0.0 })
            .collect();
        let t = Tensor::<4>::from_data(TensorData::new(x, [1, 1, h, w]), &device);
        let skel = values(soft_skeleton(t, 3));
        // Away from the bar's ends, the centre row (4) is on the skeleton, the others are not.
        for col in 3..w - 3 {
            for row in 0..h {
                let want = if row == 4 { 1.0 } else { 0.0 };
                assert_eq!(skel[row * w + col], want, "row {row}, column {col}");
            }
        }
    }
}
