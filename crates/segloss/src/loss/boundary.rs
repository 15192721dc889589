//! Boundary loss (Kervadec et al. 2019) for highly unbalanced segmentation.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Tensor, TensorData};

use super::distance_map::{check_spatial_rank, per_mask, read_masks};
use super::prepare_whole_image;
use super::reduction::LossReduction;
use crate::error::ConfigError;
use crate::input::{Activation, Target};

const NAME: &str = "BoundaryLoss";

/// Configuration of a [`BoundaryLoss`]; MONAI's `BoundaryLoss` options.
#[derive(Config, Debug)]
pub struct BoundaryLossConfig {
    /// Activation applied to the prediction (MONAI `softmax` / `sigmoid`; [`Activation::None`]
    /// for probabilities).
    pub activation: Activation,
    /// Keep class 0. When `false` channel 0 is dropped after the activation.
    #[config(default = true)]
    pub include_background: bool,
    /// Reduction used by `forward`.
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// Average the per-sample values over the batch, one value per class (MONAI's `batch`: the
    /// distance maps stay per sample).
    #[config(default = false)]
    pub batch: bool,
    /// Check that label maps hold class indices in `[0, C)` (one reduction and one device sync
    /// per call). Unchecked, a label outside that range matches no class.
    #[config(default = true)]
    pub validate_labels: bool,
}

impl BoundaryLossConfig {
    /// Checks every option. Every value of this config's options is valid (it has no numeric
    /// option), so this never fails; it is here so that every loss config reads alike.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<BoundaryLoss, ConfigError> {
        self.validate()?;
        Ok(BoundaryLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> BoundaryLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Boundary loss per (sample, class):
///
/// ```text
/// BL = (1 / N) sum over voxels of p * phi_g
/// phi_g = 1 - d(v, background)   inside the target (g > 0.5): 0 on its boundary, negative deeper
///         d(v, foreground)       outside: the distance to the target, >= 1
/// ```
///
/// with `p` the prediction after the activation, `N` the number of voxels and `d` the Euclidean
/// distance in voxels (MONAI's signed map `-(edt(fg) - 1)` inside, `edt(~fg)` outside). It
/// integrates the prediction against the target's signed distance map, so probability outside
/// the target costs its distance to it and probability deep inside earns a reward: a loss on the
/// interface between regions rather than on the regions, which stays informative for tiny
/// structures. Kervadec et al., "Boundary loss for highly unbalanced segmentation", MIDL 2019
/// (Medical Image Analysis 67, 2021); MONAI `BoundaryLoss` 1.6.1. Only the target has a
/// distance map (the prediction is not thresholded); it is a constant (computed on the CPU with
/// segloss's exact Euclidean distance transform, from the target read back once per forward),
/// so the gradient is `phi_g / N` times the activation's derivative. The paper pairs it with a
/// regional loss such as Dice; this is the boundary term alone.
///
/// **Range**: not bounded below by 0: negative where the prediction lies inside the target,
/// positive where it lies outside. For probabilities in `[0, 1]` it lies between the means over
/// the voxels of `min(phi_g, 0)` (reached by `p = 1` exactly where `phi_g < 0`) and of
/// `max(phi_g, 0)` (reached by `p = 1` exactly where `phi_g > 0`).
/// **Empty classes**: a class all background or all foreground in the target has no boundary:
/// its map is 0 and so are its loss and gradient (as in MONAI).
/// **Shapes**: prediction `[B, C, H, W]` or `[B, C, H, W, D]` (2D or 3D, as in MONAI), target a
/// label map or dense ([`Target`]); `forward` `[1]`;
/// [`forward_no_reduction`](BoundaryLoss::forward_no_reduction) `[B, C']` (`[1, C']` with
/// `batch`; MONAI's `[C']`), `C' = C` or `C - 1` without background.
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use segloss::{Activation, BoundaryLossConfig};
///
/// let device = Device::flex();
/// let logits = Tensor::<5>::random([2, 3, 8, 8, 8], Distribution::Normal(0.0, 1.0), &device);
/// let labels = Tensor::<5, Int>::random([2, 1, 8, 8, 8], Distribution::Uniform(0.0, 3.0), &device);
/// let loss = BoundaryLossConfig::new(Activation::Softmax)
///     .with_include_background(false)
///     .init();
/// let per_class = loss.forward_no_reduction(logits, labels);
/// assert_eq!(per_class.dims(), [2, 2]);
/// ```
///
/// # Panics
/// On a prediction that is not 2D or 3D (`[B, C, H, W]` or `[B, C, H, W, D]`), mismatched
/// shapes, labels out of range, a voxel mask ([`Target::with_mask`]: this loss takes none, as in
/// MONAI), softmax over one channel, or `include_background = false` with a single-channel
/// prediction.
#[derive(Module, Debug)]
pub struct BoundaryLoss {
    #[module(skip)]
    config: BoundaryLossConfig,
}

impl BoundaryLoss {
    /// The configuration this loss was built from.
    pub fn config(&self) -> &BoundaryLossConfig {
        &self.config
    }

    /// The reduced loss, shape `[1]`.
    pub fn forward<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<1> {
        self.config
            .reduction
            .apply(self.forward_no_reduction(prediction, target))
    }

    /// The loss per (sample, class) `[B, C']`, or per class `[1, C']` (the mean over the
    /// samples) with `batch`.
    pub fn forward_no_reduction<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<2> {
        let cfg = &self.config;
        check_spatial_rank(NAME, &prediction.dims());
        let (prepared, p, g, k) = prepare_whole_image(
            NAME,
            prediction,
            target.into(),
            cfg.activation,
            cfg.include_background,
            cfg.validate_labels,
            "which voxels the distance transform would see is undefined",
        );
        let [b, n] = [prepared.batch, prepared.voxels];

        let masks = read_masks(g.greater_elem(0.5));
        // A map without a boundary stays 0 (MONAI skips it).
        let signed = per_mask(&masks, n, &prepared.spatial, |mask, distances, out| {
            if let Some(d) = distances {
                for ((o, &inside), d) in out.iter_mut().zip(mask).zip(d) {
                    *o = if inside { 1.0 - d } else { d } as f32;
                }
            }
        });
        let device = p.device();
        let signed = Tensor::<3>::from_data(TensorData::new(signed, [b, k, n]), &device);
        let per_sample = (p * signed).sum_dim(2).reshape([b, k]).div_scalar(n as f64);
        if cfg.batch {
            per_sample.mean_dim(0)
        } else {
            per_sample
        }
    }
}
