//! The overlap statistics from Burn tensor operations (every backend, autodiff by Burn).
//!
//! Memory: it materialises the probabilities, the one-hot target and their products
//! (a few tensors of the prediction's size).

use burn::tensor::Tensor;

use crate::input::Prepared;
use crate::stats::{OverlapStats, StatsOptions};

/// Composed-operation implementation of [`crate::overlap_stats`] on a prepared input.
pub(crate) fn overlap_stats(prepared: &Prepared, options: &StatsOptions) -> OverlapStats {
    let [b, c, n] = [prepared.batch, prepared.channels, prepared.voxels];
    let mut p = options.activation.apply(prepared.logits.clone());
    let mut g = prepared.dense_target();
    if let Some(m) = &prepared.mask {
        let m = m.clone().reshape([b, 1, n]);
        p = p * m.clone();
        g = g * m;
    }
    let mut k = c;
    if !options.include_background {
        k = c - 1;
        p = p.narrow(1, 1, k);
        g = g.narrow(1, 1, k);
    }
    let sum = |t: Tensor<3>| t.sum_dim(2).reshape([b, k]);
    let intersection = sum(p.clone() * g.clone());
    let difference = options.difference.then(|| {
        let d = p.clone() - g.clone();
        sum(if options.squared { d.square() } else { d.abs() })
    });
    // With the difference (soft labels), MONAI's L1 norms: the same values for probabilities and
    // targets in [0, 1], but the gradient of |p| at p = 0 is 0.
    let (prediction, target) = if options.squared {
        (sum(p.square()), sum(g.square()))
    } else if options.difference {
        (sum(p.abs()), sum(g.abs()))
    } else {
        (sum(p), sum(g))
    };
    OverlapStats {
        intersection,
        prediction,
        target,
        difference,
    }
}
