//! How per-(sample, class) or per-voxel loss values become one number.

use burn::config::Config;
use burn::tensor::Tensor;

/// The reduction of a loss's unreduced values to the `[1]` tensor that `forward` returns.
///
/// MONAI's `reduction="mean"` / `"sum"`; its `"none"` is each loss's `forward_no_reduction`.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum LossReduction {
    /// The mean over every unreduced value (samples and classes alike).
    Mean,
    /// The sum over every unreduced value.
    Sum,
}

impl LossReduction {
    /// Reduces `values` to shape `[1]`.
    pub fn apply<const D: usize>(self, values: Tensor<D>) -> Tensor<1> {
        match self {
            LossReduction::Mean => values.mean(),
            LossReduction::Sum => values.sum(),
        }
    }
}
