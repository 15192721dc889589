//! Matthews correlation coefficient loss (Abhishek and Hamarneh 2021).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::reduction::LossReduction;
use crate::error::{Check, ConfigError};
use crate::input::{Activation, PrepareOptions, Prepared, Target, prepare};
use crate::kernel::dispatch::prepared_stats;
use crate::stats::StatsOptions;

const NAME: &str = "MCCLoss";

/// Configuration of an [`MccLoss`]; MONAI's `MCCLoss` options.
#[derive(Config, Debug)]
pub struct MccLossConfig {
    /// Activation applied to the prediction.
    pub activation: Activation,
    /// Keep class 0.
    #[config(default = true)]
    pub include_background: bool,
    /// Reduction used by `forward`.
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// Added to the numerator, `>= 0` (MONAI's default 0).
    #[config(default = 0.0)]
    pub smooth_nr: f64,
    /// Added under the denominator's square root, `>= 0` (MONAI's default 1e-5). With 0, a
    /// (sample, class) whose prediction or target is all 0 or all 1 (but not both equal) gives
    /// 0 / 0 = NaN, as in MONAI.
    #[config(default = 1e-5)]
    pub smooth_dr: f64,
    /// Sum the confusion counts over the batch before the coefficient.
    #[config(default = false)]
    pub batch: bool,
    /// Label value whose voxels count for nothing (they are in none of the four counts).
    pub ignore_index: Option<i64>,
    /// Check that label values lie in `[0, C)` (one reduction and one device sync per call).
    /// Unchecked, a label outside that range matches no class (its voxel's target is all zero).
    #[config(default = true)]
    pub validate_labels: bool,
}

impl MccLossConfig {
    /// Checks every option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = Check { loss: NAME };
        c.non_negative("smooth_nr", self.smooth_nr)?;
        c.non_negative("smooth_dr", self.smooth_dr)
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<MccLoss, ConfigError> {
        self.validate()?;
        Ok(MccLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> MccLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Matthews correlation coefficient loss per (sample, class), `1 - MCC` with
///
/// ```text
/// MCC = (tp tn - fp fn + s_nr) / sqrt((tp + fp)(tp + fn)(tn + fp)(tn + fn) + s_dr)
/// tp = I,  fp = P - I,  fn = G - I,  tn = M - P - G + I
/// ```
///
/// from the soft confusion counts of the [`OverlapStats`](crate::OverlapStats) (`I = sum p g`,
/// `P = sum p`, `G = sum g`) and `M`, the number of voxels counted (every voxel, or the sum of
/// the voxel mask: a masked or ignored voxel is in none of the four counts); `tn = sum (1 - p)
/// (1 - g)` written through the statistics, so the fused kernels compute it. Unlike Dice and
/// Tversky it rewards true negatives, which helps where the background dominates. A (sample,
/// class) with `fp = fn = 0` (a perfect prediction, including a class absent from both) scores 0,
/// as in MONAI, where the formula would give about 1. Abhishek and Hamarneh, "Matthews
/// Correlation Coefficient Loss for Deep Convolutional Networks: Application to Skin Lesion
/// Segmentation", ISBI 2021; MONAI `MCCLoss` 1.6.1.
///
/// **Range**: in `[0, 2]` for probabilities and targets in `[0, 1]` (MCC is in `[-1, 1]`).
/// **Empty classes**: 0 when nothing is predicted either; 1 (MCC 0, no gradient through the
/// target side) when something is.
/// **Shapes**: `forward` `[1]`; [`forward_no_reduction`](MccLoss::forward_no_reduction) `[B, C']`
/// (`[1, C']` with `batch`), `C' = C` or `C - 1` without background.
/// **Precision**: the counts are f32 sums and the denominator's product of four counts is formed
/// in f32, as in MONAI: it overflows past about `4e9` voxels per (sample, class), or per class
/// with `batch`.
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use segloss::{Activation, MccLossConfig};
///
/// let device = Device::flex();
/// let logits = Tensor::<5>::random([2, 3, 4, 4, 4], Distribution::Normal(0.0, 1.0), &device);
/// let labels = Tensor::<5, Int>::random([2, 1, 4, 4, 4], Distribution::Uniform(0.0, 3.0), &device);
/// let loss = MccLossConfig::new(Activation::Softmax).init();
/// let value = loss.forward(logits, labels).into_scalar::<f32>();
/// assert!((0.0..=2.0).contains(&value));
/// ```
///
/// # Panics
/// As [`DiceLoss`](crate::DiceLoss): mismatched shapes, labels out of range, softmax over one
/// channel, dropping the background of a single-channel prediction.
#[derive(Module, Debug)]
pub struct MccLoss {
    #[module(skip)]
    config: MccLossConfig,
}

overlap_loss_shell!(
    MccLoss,
    MccLossConfig,
    "The loss per (sample, class) `[B, C']`, or `[1, C']` with `batch`."
);

impl MccLoss {
    fn forward_prepared(&self, prepared: &Prepared) -> Tensor<2> {
        let cfg = &self.config;
        let options = StatsOptions::for_loss(
            self.prepare_options(),
            cfg.activation,
            cfg.include_background,
            false,
            false,
        );
        let mut stats = prepared_stats(NAME, prepared, &options);
        let device = stats.intersection.device();
        // Voxels counted per sample, [B, 1].
        let mut counted = match &prepared.mask {
            Some(mask) => mask.clone().sum_dim(1),
            None => Tensor::<2>::full([prepared.batch, 1], prepared.voxels as f64, &device),
        };
        if cfg.batch {
            stats = stats.sum_batch();
            counted = counted.sum_dim(0);
        }
        let k = stats.intersection.dims()[1];
        let counted = counted.repeat_dim(1, k);
        let (tp, p, g) = (stats.intersection, stats.prediction, stats.target);
        let fp = p.clone() - tp.clone();
        let fn_ = g.clone() - tp.clone();
        let tn = counted.clone() - p.clone() - g.clone() + tp.clone();
        let numerator = (tp * tn - fp.clone() * fn_.clone()).add_scalar(cfg.smooth_nr);
        // (tp + fp)(tp + fn)(tn + fp)(tn + fn) = P G (M - G)(M - P).
        let denominator = (p.clone() * g.clone() * (counted.clone() - g) * (counted - p))
            .add_scalar(cfg.smooth_dr)
            .sqrt();
        let score = numerator.div(denominator).neg().add_scalar(1.0);
        // MONAI: fp = fn = 0 is a perfect prediction, whose formula would read about 1.
        let perfect = fp.equal_elem(0.0).bool_and(fn_.equal_elem(0.0));
        score.mask_fill(perfect, 0.0)
    }
}
