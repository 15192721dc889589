//! Generalized Dice loss (Sudre et al. 2017).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::reduction::LossReduction;
use crate::error::{Check, ConfigError};
use crate::input::{Activation, PrepareOptions, Prepared, Target, prepare};
use crate::kernel::dispatch::prepared_stats;
use crate::stats::{OverlapStats, StatsOptions};

const NAME: &str = "GeneralizedDiceLoss";

/// How the class weights of the Generalized Dice loss are derived from the reference volume
/// `G_c = sum g` of each class (MONAI `w_type`).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum WeightType {
    /// `w_c = 1 / G_c^2` (Sudre et al.'s choice, the default).
    Square,
    /// `w_c = 1 / G_c`.
    Simple,
    /// `w_c = 1`.
    Uniform,
}

/// Configuration of a [`GeneralizedDiceLoss`]; MONAI's `GeneralizedDiceLoss` options.
#[derive(Config, Debug)]
pub struct GeneralizedDiceLossConfig {
    /// Activation applied to the prediction.
    pub activation: Activation,
    /// Keep class 0.
    #[config(default = true)]
    pub include_background: bool,
    /// The class-weight rule.
    #[config(default = "WeightType::Square")]
    pub w_type: WeightType,
    /// Reduction used by `forward`.
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// Added to the numerator, `>= 0`.
    #[config(default = 1e-5)]
    pub smooth_nr: f64,
    /// Added to the denominator (MONAI `smooth_dr`), `>= 0`. With 0 (accepted, as MONAI does) a
    /// sample (the batch, with `batch`) whose classes are all empty in the target has all weights
    /// 0 and a denominator of 0: its loss is NaN with `smooth_nr = 0` (0 / 0) and -inf with
    /// `smooth_nr > 0`, with a NaN gradient for that sample, as in MONAI 1.6.1 (the reduced loss is
    /// then NaN or -inf). A single empty class is well-defined: it takes the largest weight of the
    /// other classes.
    #[config(default = 1e-5)]
    pub smooth_dr: f64,
    /// Sum the statistics (and compute the weights) over the whole batch; otherwise per sample.
    #[config(default = false)]
    pub batch: bool,
    /// The soft-label formulation of `tp` (see [`DiceLossConfig::soft_label`](crate::DiceLossConfig)).
    #[config(default = false)]
    pub soft_label: bool,
    /// Label value whose voxels count for nothing (see [`DiceLossConfig::ignore_index`](crate::DiceLossConfig)).
    pub ignore_index: Option<i64>,
    /// Check that label values lie in `[0, C)` (one reduction and one device sync per call).
    /// Unchecked, a label outside that range matches no class (its voxel's target is all zero).
    #[config(default = true)]
    pub validate_labels: bool,
    /// Divide the class weights by their sum (per sample, or over the batch) before the ratio.
    /// The ratio is unchanged but for the smoothing terms, which MONAI adds to the *weighted*
    /// sums: with `1 / G^2` weights on a 64^3 volume those sums are about 1e-5, the size of the
    /// default smoothing, which then pulls the loss far from the unsmoothed value (0.73 instead
    /// of 0.82 in the `seed_question` example). Off by default to match MONAI.
    #[config(default = false)]
    pub normalize_weights: bool,
}

impl GeneralizedDiceLossConfig {
    /// Checks every option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = Check { loss: NAME };
        c.non_negative("smooth_nr", self.smooth_nr)?;
        c.non_negative("smooth_dr", self.smooth_dr)
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<GeneralizedDiceLoss, ConfigError> {
        self.validate()?;
        Ok(GeneralizedDiceLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> GeneralizedDiceLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Generalized Dice loss, one value per sample (or one for the batch):
///
/// ```text
/// 1 - (2 sum_c w_c tp_c + s_nr) / (sum_c w_c (P_c + G_c) + s_dr)
/// ```
///
/// with the [`OverlapStats`] `tp`, `P`, `G` per class and `w_c` from
/// [`WeightType`]. Sudre et al., "Generalised Dice overlap as a deep learning loss function for
/// highly unbalanced segmentations", DLMIA 2017; MONAI `GeneralizedDiceLoss` 1.6.1.
///
/// **Empty classes**: a class with `G_c = 0` would get an infinite weight; as in MONAI it gets
/// the largest finite weight of its sample (of the batch with `batch`), so an absent class still
/// penalises false positives without dominating. A sample whose classes are all empty has all
/// weights 0 and loss `1 - s_nr / s_dr` (0 with the defaults; NaN or -inf with `s_dr = 0`, see
/// [`GeneralizedDiceLossConfig::smooth_dr`]).
///
/// **Range**: in `[0, 1]` for probabilities and targets in `[0, 1]`.
///
/// **Shapes**: `forward` returns `[1]`; [`forward_no_reduction`](GeneralizedDiceLoss::forward_no_reduction)
/// returns `[B, 1]` (`[1, 1]` with `batch`).
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use segloss::{Activation, GeneralizedDiceLossConfig};
///
/// let device = Device::flex();
/// let logits = Tensor::<4>::random([2, 4, 8, 8], Distribution::Normal(0.0, 1.0), &device);
/// let labels = Tensor::<4, Int>::random([2, 1, 8, 8], Distribution::Uniform(0.0, 4.0), &device);
/// let loss = GeneralizedDiceLossConfig::new(Activation::Softmax).init();
/// let value = loss.forward(logits, labels).into_scalar::<f32>();
/// assert!((0.0..=1.0).contains(&value));
/// ```
///
/// # Panics
/// As [`DiceLoss`](crate::DiceLoss): mismatched shapes, labels out of range, softmax over one channel.
#[derive(Module, Debug)]
pub struct GeneralizedDiceLoss {
    #[module(skip)]
    config: GeneralizedDiceLossConfig,
}

overlap_loss_shell!(
    GeneralizedDiceLoss,
    GeneralizedDiceLossConfig,
    "The loss per sample `[B, 1]`, or `[1, 1]` with `batch`."
);

impl GeneralizedDiceLoss {
    pub(crate) fn forward_prepared(&self, prepared: &Prepared) -> Tensor<2> {
        self.loss_of_stats(prepared_stats(NAME, prepared, &self.stats_options()))
    }

    /// The statistics this loss needs.
    pub(crate) fn stats_options(&self) -> StatsOptions {
        let cfg = &self.config;
        StatsOptions::for_loss(
            self.prepare_options(),
            cfg.activation,
            cfg.include_background,
            false,
            cfg.soft_label,
        )
    }

    /// The loss per sample (or `[1, 1]` with `batch`) from the statistics of
    /// [`GeneralizedDiceLoss::stats_options`].
    pub(crate) fn loss_of_stats(&self, mut stats: OverlapStats) -> Tensor<2> {
        let cfg = &self.config;
        if cfg.batch {
            stats = stats.sum_batch();
        }
        let tp = stats.true_positive(cfg.soft_label);
        let volume = stats.target.clone().detach();
        let denominator = stats.prediction + stats.target;
        let w = match cfg.w_type {
            WeightType::Simple => volume.recip(),
            WeightType::Square => volume.clone().mul(volume).recip(),
            WeightType::Uniform => volume.ones_like(),
        };
        // Classes absent from the reference: infinite weight -> the largest finite weight of the
        // sample (of the batch with `batch`, where there is one row).
        let infinite = w.clone().is_inf();
        let finite = w.mask_fill(infinite.clone(), 0.0);
        let largest = finite.clone().max_dim(1);
        let mut w = finite + infinite.float() * largest;
        if cfg.normalize_weights {
            let total = w.clone().sum_dim(1);
            w = w / total.clamp_min(f32::MIN_POSITIVE as f64);
        }
        let numerator = (tp * w.clone())
            .sum_dim(1)
            .mul_scalar(2.0)
            .add_scalar(cfg.smooth_nr);
        let denominator = (denominator * w).sum_dim(1).add_scalar(cfg.smooth_dr);
        numerator.div(denominator).neg().add_scalar(1.0)
    }
}
