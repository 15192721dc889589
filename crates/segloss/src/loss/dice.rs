//! Soft Dice loss (Sørensen-Dice), its V-Net squared form and the soft Jaccard loss.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::class_weights;
use super::reduction::LossReduction;
use crate::error::{Check, ConfigError};
use crate::input::{Activation, PrepareOptions, Prepared, Target, prepare};
use crate::kernel::dispatch::prepared_stats;
use crate::stats::{OverlapStats, StatsOptions};

const NAME: &str = "DiceLoss";

/// Configuration of a [`DiceLoss`]; MONAI's `DiceLoss` / `MaskedDiceLoss` options.
///
/// The activation is required: choosing between softmax (multi-class), sigmoid (multi-label) and
/// probabilities is the most common source of wrong Dice values, so there is no silent default.
#[derive(Config, Debug)]
pub struct DiceLossConfig {
    /// Activation applied to the prediction (MONAI `softmax` / `sigmoid`).
    pub activation: Activation,
    /// Keep class 0 in the loss. When `false` channel 0 is dropped after the activation.
    #[config(default = true)]
    pub include_background: bool,
    /// V-Net denominator `sum p^2 + sum g^2` (Milletari et al. 2016) instead of `sum p + sum g`.
    #[config(default = false)]
    pub squared_pred: bool,
    /// Soft Jaccard (IoU) loss instead of Dice.
    #[config(default = false)]
    pub jaccard: bool,
    /// Reduction used by `forward`.
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// Added to the numerator (MONAI `smooth_nr`), `>= 0`.
    #[config(default = 1e-5)]
    pub smooth_nr: f64,
    /// Added to the denominator (MONAI `smooth_dr`), `>= 0`. With 0 (accepted, as MONAI does) a
    /// (sample, class) whose denominator is 0, i.e. empty in the target with nothing predicted
    /// (`P + G = 0`, possible with [`Activation::None`] or masked / ignored voxels, not after a
    /// softmax or sigmoid), gives NaN with `smooth_nr = 0` (0 / 0) and -inf with `smooth_nr > 0`,
    /// and a NaN gradient for that class, as in MONAI 1.6.1; the reduced loss is then NaN or -inf.
    /// Every other class is well-defined (an empty class with `P > 0` gives `1 - smooth_nr / P`).
    #[config(default = 1e-5)]
    pub smooth_dr: f64,
    /// Sum the statistics over the batch before the ratio ("batch Dice"); otherwise one Dice per sample.
    #[config(default = false)]
    pub batch: bool,
    /// Per-class weights multiplying each class's loss (one value, or one per class left after
    /// background exclusion), each `>= 0`. The weighted values are averaged, not divided by the
    /// sum of weights (MONAI). With a single class left (a one-channel prediction, or two
    /// channels without background) the weight is not applied, as in MONAI: class weights balance
    /// classes against each other.
    pub weight: Option<Vec<f32>>,
    /// The soft-label formulation (Wang et al. 2023, MONAI `soft_label`): `tp = (P + G - |p - g|) / 2`,
    /// minimised at `p = g` for soft targets too; identical to the classic form for binary targets.
    #[config(default = false)]
    pub soft_label: bool,
    /// Label value whose voxels count for nothing (e.g. 255 for unlabelled voxels); for dense
    /// targets MONAI's rule: an index inside `[0, C)` ignores that class's voxels, any other value
    /// the voxels whose channels are all zero.
    pub ignore_index: Option<i64>,
    /// Check that label maps hold class indices in `[0, C)` (costs one min/max reduction and one
    /// device synchronisation per call); turn off in a tight GPU loop once the data is trusted.
    /// Unchecked, a label outside that range matches no class (its voxel's target is all zero).
    #[config(default = true)]
    pub validate_labels: bool,
}

impl DiceLossConfig {
    /// Checks every option, naming the loss, the parameter, the rule and the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = Check { loss: NAME };
        c.non_negative("smooth_nr", self.smooth_nr)?;
        c.non_negative("smooth_dr", self.smooth_dr)?;
        if let Some(w) = &self.weight {
            c.weights("weight", w)?;
        }
        Ok(())
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<DiceLoss, ConfigError> {
        self.validate()?;
        Ok(DiceLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> DiceLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Soft Dice loss per (sample, class):
///
/// ```text
/// Dice:    1 - (2 tp + s_nr) / (P + G + s_dr)
/// Jaccard: 1 - (2 tp + s_nr) / (2 (P + G - tp) + s_dr)
/// ```
///
/// with `tp = sum p g` (or the soft-label form), `P = sum p`, `G = sum g` (squared with
/// `squared_pred`) over the voxels, per sample, or over the batch too with `batch`
/// ([`OverlapStats`]).
/// Milletari et al., "V-Net", 3DV 2016; Sudre et al. 2017 for the multi-class soft Dice; MONAI
/// `DiceLoss` 1.6.1 (whose numbers it matches, see the README's conformance section).
///
/// **Shapes**: prediction `[B, C, spatial...]`; target a label map or dense tensor ([`Target`]).
/// `forward` returns `[1]`; [`forward_no_reduction`](DiceLoss::forward_no_reduction) returns
/// `[B, C']` (`[1, C']` with `batch`), `C' = C` or `C - 1` without background.
///
/// **Range**: for probabilities and targets in `[0, 1]` and no weights, every value is in `[0, 1]`.
///
/// **Empty classes** (no target voxel in a sample): the class's loss is
/// `1 - s_nr / (P + s_dr)`: 0 when nothing is predicted either (NaN or -inf with `s_dr = 0`, see
/// [`DiceLossConfig::smooth_dr`]), close to 1 (with almost no gradient) as soon as some
/// probability mass is predicted. Batch Dice avoids most empty classes.
///
/// **Mask**: [`Target::with_mask`] multiplies probabilities and target by the mask after the
/// activation (MONAI 1.6.1 `MaskedDiceLoss`), so masked voxels count for nothing.
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use segloss::{Activation, DiceLossConfig};
///
/// let device = Device::flex();
/// let logits = Tensor::<5>::random([2, 3, 4, 4, 4], Distribution::Normal(0.0, 1.0), &device);
/// let labels = Tensor::<5, Int>::zeros([2, 1, 4, 4, 4], &device);
/// let loss = DiceLossConfig::new(Activation::Softmax).with_include_background(false).init();
/// let value = loss.forward(logits, labels).into_scalar::<f32>();
/// assert!((0.0..=1.0).contains(&value));
/// ```
///
/// # Panics
/// On mismatched shapes (naming both), label values outside `[0, C)` that are not the ignore
/// index (when `validate_labels`), a `weight` list whose length is not the number of classes,
/// softmax over a single channel.
#[derive(Module, Debug)]
pub struct DiceLoss {
    #[module(skip)]
    config: DiceLossConfig,
}

overlap_loss_shell!(
    DiceLoss,
    DiceLossConfig,
    "The loss per (sample, class), `[B, C']`, or per class `[1, C']` with `batch`."
);

impl DiceLoss {
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
            cfg.squared_pred,
            cfg.soft_label,
        )
    }

    /// The loss per (sample, class) from the statistics of [`DiceLoss::stats_options`].
    pub(crate) fn loss_of_stats(&self, mut stats: OverlapStats) -> Tensor<2> {
        let cfg = &self.config;
        if cfg.batch {
            stats = stats.sum_batch();
        }
        let tp = stats.true_positive(cfg.soft_label);
        let pg = stats.prediction + stats.target;
        let numerator = tp.clone().mul_scalar(2.0).add_scalar(cfg.smooth_nr);
        let denominator = if cfg.jaccard {
            (pg - tp).mul_scalar(2.0)
        } else {
            pg
        }
        .add_scalar(cfg.smooth_dr);
        let f = numerator.div(denominator).neg().add_scalar(1.0);
        let k = f.dims()[1];
        let what = if cfg.include_background {
            "all channels"
        } else {
            "background excluded"
        };
        // As in MONAI, class weights balance classes against each other: with a single class
        // left there is nothing to balance and the weight is not applied.
        match class_weights(NAME, &cfg.weight, k, what, &f.device()) {
            Some(w) if k > 1 => f * w,
            _ => f,
        }
    }
}
