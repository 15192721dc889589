//! Tversky loss (Salehi et al. 2017).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::reduction::LossReduction;
use crate::error::{Check, ConfigError};
use crate::input::{Activation, PrepareOptions, Prepared, Target, prepare};
use crate::kernel::dispatch::prepared_stats;
use crate::stats::StatsOptions;

const NAME: &str = "TverskyLoss";

/// Configuration of a [`TverskyLoss`]; MONAI's `TverskyLoss` options.
#[derive(Config, Debug)]
pub struct TverskyLossConfig {
    /// Activation applied to the prediction.
    pub activation: Activation,
    /// Keep class 0.
    #[config(default = true)]
    pub include_background: bool,
    /// Weight of false positives, `>= 0`.
    #[config(default = 0.5)]
    pub alpha: f64,
    /// Weight of false negatives, `>= 0`.
    #[config(default = 0.5)]
    pub beta: f64,
    /// Reduction used by `forward`.
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// Added to the numerator, `>= 0`.
    #[config(default = 1e-5)]
    pub smooth_nr: f64,
    /// Added to the denominator (MONAI `smooth_dr`), `>= 0`. With 0 (accepted, as MONAI does) a
    /// (sample, class) whose denominator `tp + alpha fp + beta fn` is 0, e.g. empty in the target
    /// with nothing predicted (`P = G = 0`, possible with [`Activation::None`] or masked / ignored
    /// voxels, not after a softmax or sigmoid), gives NaN with `smooth_nr = 0` (0 / 0) and -inf with
    /// `smooth_nr > 0`, and a NaN gradient for that class, as in MONAI 1.6.1; the reduced loss is
    /// then NaN or -inf.
    #[config(default = 1e-5)]
    pub smooth_dr: f64,
    /// Sum the statistics over the batch before the ratio.
    #[config(default = false)]
    pub batch: bool,
    /// The soft-label formulation of `tp` (see [`DiceLossConfig::soft_label`](crate::DiceLossConfig)).
    #[config(default = false)]
    pub soft_label: bool,
    /// Label value whose voxels count for nothing.
    pub ignore_index: Option<i64>,
    /// Check that label values lie in `[0, C)` (one reduction and one device sync per call).
    /// Unchecked, a label outside that range matches no class (its voxel's target is all zero).
    #[config(default = true)]
    pub validate_labels: bool,
}

impl TverskyLossConfig {
    /// Checks every option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = Check { loss: NAME };
        c.non_negative("alpha", self.alpha)?;
        c.non_negative("beta", self.beta)?;
        c.non_negative("smooth_nr", self.smooth_nr)?;
        c.non_negative("smooth_dr", self.smooth_dr)
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<TverskyLoss, ConfigError> {
        self.validate()?;
        Ok(TverskyLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> TverskyLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Tversky loss per (sample, class):
///
/// ```text
/// 1 - (tp + s_nr) / (tp + alpha fp + beta fn + s_dr),   fp = P - tp,  fn = G - tp
/// ```
///
/// from the [`OverlapStats`](crate::OverlapStats). `alpha = beta = 0.5` is Dice, `alpha = beta = 1`
/// Jaccard; `beta > alpha` favours recall (small structures). Salehi et al., "Tversky loss function
/// for image segmentation using 3D fully convolutional deep networks", MLMI 2017; MONAI
/// `TverskyLoss` 1.6.1.
///
/// **Range**: in `[0, 1]` for probabilities and targets in `[0, 1]` when `alpha + beta = 1` or more.
/// **Empty classes**: `1 - s_nr / (alpha P + s_dr)`, as for Dice.
/// **Shapes**: `forward` `[1]`; [`forward_no_reduction`](TverskyLoss::forward_no_reduction)
/// `[B, C']` (`[1, C']` with `batch`).
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use segloss::{Activation, TverskyLossConfig};
///
/// let device = Device::flex();
/// let logits = Tensor::<4>::random([1, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
/// let target = Tensor::<4>::random([1, 3, 8, 8], Distribution::Bernoulli(0.3), &device);
/// let loss = TverskyLossConfig::new(Activation::Sigmoid).with_alpha(0.3).with_beta(0.7).init();
/// assert!(loss.forward(logits, target).into_scalar::<f32>() <= 1.0);
/// ```
///
/// # Panics
/// As [`DiceLoss`](crate::DiceLoss).
#[derive(Module, Debug)]
pub struct TverskyLoss {
    #[module(skip)]
    config: TverskyLossConfig,
}

overlap_loss_shell!(
    TverskyLoss,
    TverskyLossConfig,
    "The loss per (sample, class) `[B, C']`, or `[1, C']` with `batch`."
);

impl TverskyLoss {
    fn forward_prepared(&self, prepared: &Prepared) -> Tensor<2> {
        let cfg = &self.config;
        let options = StatsOptions::for_loss(
            self.prepare_options(),
            cfg.activation,
            cfg.include_background,
            false,
            cfg.soft_label,
        );
        let mut stats = prepared_stats(NAME, prepared, &options);
        if cfg.batch {
            stats = stats.sum_batch();
        }
        let tp = stats.true_positive(cfg.soft_label);
        let fp = stats.prediction - tp.clone();
        let fn_ = stats.target - tp.clone();
        let numerator = tp.clone().add_scalar(cfg.smooth_nr);
        let denominator = tp + fp.mul_scalar(cfg.alpha) + fn_.mul_scalar(cfg.beta);
        numerator
            .div(denominator.add_scalar(cfg.smooth_dr))
            .neg()
            .add_scalar(1.0)
    }
}
