//! Compound losses: a Dice-family term plus a per-voxel term, `lambda_1 A + lambda_2 B`.
//!
//! Both terms see the same validated input (one shape check, one label check).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::cross_entropy::{CrossEntropyLoss, CrossEntropyLossConfig};
use super::dice::{DiceLoss, DiceLossConfig};
use super::focal::{FocalLoss, FocalLossConfig};
use super::generalized_dice::{GeneralizedDiceLoss, GeneralizedDiceLossConfig, WeightType};
use super::reduction::LossReduction;
use crate::error::{Check, ConfigError};
use crate::input::{Activation, Prepared, Target, prepare};
use crate::kernel::dispatch::fused_pointwise;
use crate::stats::{FusedTerm, OverlapStats, PointwiseSums, StatsOptions};

/// Configuration of a [`DiceCELoss`]; MONAI's `DiceCELoss` options.
#[derive(Config, Debug)]
pub struct DiceCELossConfig {
    /// Activation of the Dice term (the cross-entropy always reads the prediction as logits).
    pub activation: Activation,
    /// Keep class 0 in the Dice term (the cross-entropy always covers every class).
    #[config(default = true)]
    pub include_background: bool,
    /// V-Net squared denominator in the Dice term.
    #[config(default = false)]
    pub squared_pred: bool,
    /// Soft Jaccard instead of Dice.
    #[config(default = false)]
    pub jaccard: bool,
    /// Reduction of both terms.
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// Dice numerator smoothing, `>= 0`.
    #[config(default = 1e-5)]
    pub smooth_nr: f64,
    /// Dice denominator smoothing, `>= 0` (see [`DiceLossConfig::smooth_dr`] for 0).
    #[config(default = 1e-5)]
    pub smooth_dr: f64,
    /// Batch Dice.
    #[config(default = false)]
    pub batch: bool,
    /// Per-class weights, one per channel **including** background: the cross-entropy gets all of
    /// them, the Dice term drops the first when `include_background` is false (MONAI).
    pub weight: Option<Vec<f32>>,
    /// Weight of the Dice term, `>= 0`.
    #[config(default = 1.0)]
    pub lambda_dice: f64,
    /// Weight of the cross-entropy term, `>= 0`.
    #[config(default = 1.0)]
    pub lambda_ce: f64,
    /// Label smoothing of the cross-entropy, in `[0, 1]`.
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// Label value whose voxels count for nothing in both terms.
    pub ignore_index: Option<i64>,
    /// Check that label values lie in `[0, C)` (one reduction and one device sync per call).
    /// Unchecked, a label outside that range matches no class (its voxel's target is all zero).
    #[config(default = true)]
    pub validate_labels: bool,
}

impl DiceCELossConfig {
    fn parts(&self) -> (DiceLossConfig, CrossEntropyLossConfig) {
        let dice_weight = match (&self.weight, self.include_background) {
            (Some(w), false) if w.len() > 1 => Some(w[1..].to_vec()),
            (w, _) => w.clone(),
        };
        let dice = DiceLossConfig::new(self.activation)
            .with_include_background(self.include_background)
            .with_squared_pred(self.squared_pred)
            .with_jaccard(self.jaccard)
            .with_reduction(self.reduction)
            .with_smooth_nr(self.smooth_nr)
            .with_smooth_dr(self.smooth_dr)
            .with_batch(self.batch)
            .with_weight(dice_weight)
            .with_ignore_index(self.ignore_index)
            .with_validate_labels(self.validate_labels);
        let ce = CrossEntropyLossConfig::new()
            .with_weight(self.weight.clone())
            .with_label_smoothing(self.label_smoothing)
            .with_reduction(self.reduction)
            .with_ignore_index(self.ignore_index)
            .with_validate_labels(self.validate_labels);
        (dice, ce)
    }

    /// Checks every option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (dice, ce) = self.parts();
        Check { loss: "DiceCELoss" }.compound(
            [
                ("lambda_dice", self.lambda_dice),
                ("lambda_ce", self.lambda_ce),
            ],
            [dice.validate(), ce.validate()],
        )
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<DiceCELoss, ConfigError> {
        self.validate()?;
        let (dice, ce) = self.parts();
        Ok(DiceCELoss {
            dice: dice.try_init()?,
            ce: ce.try_init()?,
            lambda_dice: self.lambda_dice,
            lambda_ce: self.lambda_ce,
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> DiceCELoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// `lambda_dice Dice + lambda_ce CE`: the [`DiceLoss`] and the [`CrossEntropyLoss`] (binary
/// cross-entropy for a single channel) on the same logits. MONAI `DiceCELoss` 1.6.1; the default
/// loss of nnU-Net (Isensee et al. 2021), whose authors found Dice alone often trains worse.
///
/// With a dense multi-channel target the cross-entropy uses it as class probabilities (as
/// PyTorch and MONAI do), which for overlapping multi-label targets is not a per-channel BCE: use
/// [`DiceFocalLoss`] (sigmoid focal, `gamma = 0` is BCE) for multi-label training.
///
/// **Shapes**: prediction `[B, C, spatial...]`, target a label map or dense tensor; `forward` `[1]`;
/// [`forward_terms`](DiceCELoss::forward_terms) gives the two reduced terms before the lambdas.
/// No unreduced form: the Dice term is per (sample, class) and the cross-entropy per voxel over
/// all classes, with no common shape (MONAI 1.6.1's `DiceCELoss` refuses `reduction="none"`).
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use segloss::{Activation, DiceCELossConfig};
///
/// let device = Device::flex();
/// let logits = Tensor::<5>::random([1, 3, 4, 4, 4], Distribution::Normal(0.0, 1.0), &device);
/// let labels = Tensor::<5, Int>::zeros([1, 1, 4, 4, 4], &device);
/// let loss = DiceCELossConfig::new(Activation::Softmax).init();
/// assert!(loss.forward(logits, labels).into_scalar::<f32>() > 0.0);
/// ```
///
/// # Panics
/// As its two terms.
#[derive(Module, Debug)]
pub struct DiceCELoss {
    dice: DiceLoss,
    ce: CrossEntropyLoss,
    lambda_dice: f64,
    lambda_ce: f64,
}

impl DiceCELoss {
    /// The reduced loss `lambda_dice Dice + lambda_ce CE`, shape `[1]`.
    pub fn forward<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<1> {
        let (dice, ce) = self.forward_terms(prediction, target);
        dice.mul_scalar(self.lambda_dice) + ce.mul_scalar(self.lambda_ce)
    }

    /// The reduced Dice and cross-entropy terms, each `[1]`, before the lambdas (for logging).
    pub fn forward_terms<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> (Tensor<1>, Tensor<1>) {
        let prepared = prepare(
            "DiceCELoss",
            prediction,
            target.into(),
            self.dice.prepare_options(),
        );
        compound_terms("DiceCELoss", &prepared, &self.dice, &self.ce)
    }
}

/// Configuration of a [`DiceFocalLoss`]; MONAI's `DiceFocalLoss` options.
#[derive(Config, Debug)]
pub struct DiceFocalLossConfig {
    /// Activation of the Dice term.
    pub activation: Activation,
    /// Keep class 0 in both terms.
    #[config(default = true)]
    pub include_background: bool,
    /// V-Net squared denominator in the Dice term.
    #[config(default = false)]
    pub squared_pred: bool,
    /// Soft Jaccard instead of Dice.
    #[config(default = false)]
    pub jaccard: bool,
    /// Reduction of both terms.
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// Dice numerator smoothing, `>= 0`.
    #[config(default = 1e-5)]
    pub smooth_nr: f64,
    /// Dice denominator smoothing, `>= 0` (see [`DiceLossConfig::smooth_dr`] for 0).
    #[config(default = 1e-5)]
    pub smooth_dr: f64,
    /// Batch Dice.
    #[config(default = false)]
    pub batch: bool,
    /// Focal `gamma >= 0`.
    #[config(default = 2.0)]
    pub gamma: f64,
    /// Per-class weights of both terms (classes after background exclusion).
    pub weight: Option<Vec<f32>>,
    /// Weight of the Dice term, `>= 0`.
    #[config(default = 1.0)]
    pub lambda_dice: f64,
    /// Weight of the focal term, `>= 0`.
    #[config(default = 1.0)]
    pub lambda_focal: f64,
    /// Focal balancing factor (see [`FocalLossConfig::alpha`]).
    pub alpha: Option<Vec<f32>>,
    /// Softmax focal term. Off by default, as in MONAI, whose `DiceFocalLoss` always uses the
    /// sigmoid focal loss even with a softmax Dice (Project-MONAI/MONAI#8242); turn it on for
    /// multi-class training.
    #[config(default = false)]
    pub focal_use_softmax: bool,
    /// Label value whose voxels count for nothing in both terms.
    pub ignore_index: Option<i64>,
    /// Check that label values lie in `[0, C)` (one reduction and one device sync per call).
    /// Unchecked, a label outside that range matches no class (its voxel's target is all zero).
    #[config(default = true)]
    pub validate_labels: bool,
}

impl DiceFocalLossConfig {
    fn parts(&self) -> (DiceLossConfig, FocalLossConfig) {
        let dice = DiceLossConfig::new(self.activation)
            .with_include_background(self.include_background)
            .with_squared_pred(self.squared_pred)
            .with_jaccard(self.jaccard)
            .with_reduction(self.reduction)
            .with_smooth_nr(self.smooth_nr)
            .with_smooth_dr(self.smooth_dr)
            .with_batch(self.batch)
            .with_weight(self.weight.clone())
            .with_ignore_index(self.ignore_index)
            .with_validate_labels(self.validate_labels);
        let focal = FocalLossConfig::new()
            .with_include_background(self.include_background)
            .with_gamma(self.gamma)
            .with_alpha(self.alpha.clone())
            .with_weight(self.weight.clone())
            .with_reduction(self.reduction)
            .with_use_softmax(self.focal_use_softmax)
            .with_ignore_index(self.ignore_index)
            .with_validate_labels(self.validate_labels);
        (dice, focal)
    }

    /// Checks every option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (dice, focal) = self.parts();
        Check {
            loss: "DiceFocalLoss",
        }
        .compound(
            [
                ("lambda_dice", self.lambda_dice),
                ("lambda_focal", self.lambda_focal),
            ],
            [dice.validate(), focal.validate()],
        )
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<DiceFocalLoss, ConfigError> {
        self.validate()?;
        let (dice, focal) = self.parts();
        Ok(DiceFocalLoss {
            dice: dice.try_init()?,
            focal: focal.try_init()?,
            lambda_dice: self.lambda_dice,
            lambda_focal: self.lambda_focal,
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> DiceFocalLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// `lambda_dice Dice + lambda_focal Focal`: the [`DiceLoss`] and the [`FocalLoss`] on the same
/// logits and target (Zhu et al., "AnatomyNet", Medical Physics 2019; MONAI `DiceFocalLoss` 1.6.1).
///
/// **Shapes**: as [`DiceLoss`]; `forward` `[1]`; [`forward_terms`](DiceFocalLoss::forward_terms)
/// gives both reduced terms; [`forward_no_reduction`](DiceFocalLoss::forward_no_reduction)
/// `[B, C', spatial...]` as MONAI's `reduction="none"`.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use segloss::{Activation, DiceFocalLossConfig};
///
/// let device = Device::flex();
/// let logits = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
/// let target = Tensor::<4>::random([2, 3, 8, 8], Distribution::Bernoulli(0.2), &device);
/// let loss = DiceFocalLossConfig::new(Activation::Sigmoid).init();
/// assert!(loss.forward(logits, target).into_scalar::<f32>() > 0.0);
/// ```
///
/// # Panics
/// As its two terms.
#[derive(Module, Debug)]
pub struct DiceFocalLoss {
    dice: DiceLoss,
    focal: FocalLoss,
    lambda_dice: f64,
    lambda_focal: f64,
}

impl DiceFocalLoss {
    /// The reduced loss, shape `[1]`.
    pub fn forward<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<1> {
        let (dice, focal) = self.forward_terms(prediction, target);
        dice.mul_scalar(self.lambda_dice) + focal.mul_scalar(self.lambda_focal)
    }

    /// The reduced Dice and focal terms, each `[1]`, before the lambdas.
    pub fn forward_terms<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> (Tensor<1>, Tensor<1>) {
        let prepared = prepare(
            "DiceFocalLoss",
            prediction,
            target.into(),
            self.dice.prepare_options(),
        );
        compound_terms("DiceFocalLoss", &prepared, &self.dice, &self.focal)
    }

    /// The loss per (sample, class, voxel), `[B, C', spatial...]` (MONAI's `reduction="none"`):
    /// `lambda_dice` times the Dice loss of the voxel's (sample, class) (of its class with
    /// `batch`) plus `lambda_focal` times the voxel's focal loss; masked and ignored voxels 0.
    /// Its sum is not the reduced loss: the Dice term is repeated at every voxel.
    pub fn forward_no_reduction<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<D> {
        let prepared = prepare(
            "DiceFocalLoss",
            prediction,
            target.into(),
            self.dice.prepare_options(),
        );
        compound_per_voxel(
            &prepared,
            &self.dice,
            &self.focal,
            self.lambda_dice,
            self.lambda_focal,
        )
    }
}

/// Configuration of a [`GeneralizedDiceFocalLoss`]; MONAI's `GeneralizedDiceFocalLoss` options.
#[derive(Config, Debug)]
pub struct GeneralizedDiceFocalLossConfig {
    /// Activation of the Generalized Dice term.
    pub activation: Activation,
    /// Keep class 0 in both terms.
    #[config(default = true)]
    pub include_background: bool,
    /// Generalized Dice class-weight rule.
    #[config(default = "WeightType::Square")]
    pub w_type: WeightType,
    /// Reduction of both terms.
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// Numerator smoothing, `>= 0`.
    #[config(default = 1e-5)]
    pub smooth_nr: f64,
    /// Denominator smoothing, `>= 0` (see [`GeneralizedDiceLossConfig::smooth_dr`] for 0).
    #[config(default = 1e-5)]
    pub smooth_dr: f64,
    /// Batch Generalized Dice.
    #[config(default = false)]
    pub batch: bool,
    /// Focal `gamma >= 0`.
    #[config(default = 2.0)]
    pub gamma: f64,
    /// Per-class weights of the focal term.
    pub weight: Option<Vec<f32>>,
    /// Weight of the Generalized Dice term, `>= 0`.
    #[config(default = 1.0)]
    pub lambda_gdl: f64,
    /// Weight of the focal term, `>= 0`.
    #[config(default = 1.0)]
    pub lambda_focal: f64,
    /// Softmax focal term (MONAI: always sigmoid).
    #[config(default = false)]
    pub focal_use_softmax: bool,
    /// Label value whose voxels count for nothing in both terms.
    pub ignore_index: Option<i64>,
    /// Check that label values lie in `[0, C)` (one reduction and one device sync per call).
    /// Unchecked, a label outside that range matches no class (its voxel's target is all zero).
    #[config(default = true)]
    pub validate_labels: bool,
}

impl GeneralizedDiceFocalLossConfig {
    fn parts(&self) -> (GeneralizedDiceLossConfig, FocalLossConfig) {
        let gdl = GeneralizedDiceLossConfig::new(self.activation)
            .with_include_background(self.include_background)
            .with_w_type(self.w_type)
            .with_reduction(self.reduction)
            .with_smooth_nr(self.smooth_nr)
            .with_smooth_dr(self.smooth_dr)
            .with_batch(self.batch)
            .with_ignore_index(self.ignore_index)
            .with_validate_labels(self.validate_labels);
        let focal = FocalLossConfig::new()
            .with_include_background(self.include_background)
            .with_gamma(self.gamma)
            .with_weight(self.weight.clone())
            .with_reduction(self.reduction)
            .with_use_softmax(self.focal_use_softmax)
            .with_ignore_index(self.ignore_index)
            .with_validate_labels(self.validate_labels);
        (gdl, focal)
    }

    /// Checks every option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (gdl, focal) = self.parts();
        Check {
            loss: "GeneralizedDiceFocalLoss",
        }
        .compound(
            [
                ("lambda_gdl", self.lambda_gdl),
                ("lambda_focal", self.lambda_focal),
            ],
            [gdl.validate(), focal.validate()],
        )
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<GeneralizedDiceFocalLoss, ConfigError> {
        self.validate()?;
        let (gdl, focal) = self.parts();
        Ok(GeneralizedDiceFocalLoss {
            gdl: gdl.try_init()?,
            focal: focal.try_init()?,
            lambda_gdl: self.lambda_gdl,
            lambda_focal: self.lambda_focal,
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> GeneralizedDiceFocalLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// `lambda_gdl GDL + lambda_focal Focal`: the [`GeneralizedDiceLoss`] and the [`FocalLoss`]
/// (MONAI `GeneralizedDiceFocalLoss` 1.6.1).
///
/// **Shapes**: as [`GeneralizedDiceLoss`]; `forward` `[1]`;
/// [`forward_terms`](GeneralizedDiceFocalLoss::forward_terms) gives both reduced terms;
/// [`forward_no_reduction`](GeneralizedDiceFocalLoss::forward_no_reduction) `[B, C',
/// spatial...]` as MONAI's `reduction="none"`.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use segloss::{Activation, GeneralizedDiceFocalLossConfig};
///
/// let device = Device::flex();
/// let logits = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
/// let target = Tensor::<4>::random([2, 3, 8, 8], Distribution::Bernoulli(0.2), &device);
/// let loss = GeneralizedDiceFocalLossConfig::new(Activation::Sigmoid).init();
/// assert!(loss.forward(logits, target).into_scalar::<f32>() > 0.0);
/// ```
///
/// # Panics
/// As its two terms.
#[derive(Module, Debug)]
pub struct GeneralizedDiceFocalLoss {
    gdl: GeneralizedDiceLoss,
    focal: FocalLoss,
    lambda_gdl: f64,
    lambda_focal: f64,
}

impl GeneralizedDiceFocalLoss {
    /// The reduced loss, shape `[1]`.
    pub fn forward<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<1> {
        let (gdl, focal) = self.forward_terms(prediction, target);
        gdl.mul_scalar(self.lambda_gdl) + focal.mul_scalar(self.lambda_focal)
    }

    /// The reduced Generalized Dice and focal terms, each `[1]`, before the lambdas.
    pub fn forward_terms<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> (Tensor<1>, Tensor<1>) {
        let prepared = prepare(
            "GeneralizedDiceFocalLoss",
            prediction,
            target.into(),
            self.gdl.prepare_options(),
        );
        compound_terms(
            "GeneralizedDiceFocalLoss",
            &prepared,
            &self.gdl,
            &self.focal,
        )
    }

    /// The loss per (sample, class, voxel), `[B, C', spatial...]` (MONAI's `reduction="none"`):
    /// `lambda_gdl` times the Generalized Dice loss of the voxel's sample (of the batch with
    /// `batch`) plus `lambda_focal` times the voxel's focal loss of each class; masked and
    /// ignored voxels 0. Its sum is not the reduced loss: the Generalized Dice term is repeated
    /// at every voxel and class.
    pub fn forward_no_reduction<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<D> {
        let prepared = prepare(
            "GeneralizedDiceFocalLoss",
            prediction,
            target.into(),
            self.gdl.prepare_options(),
        );
        compound_per_voxel(
            &prepared,
            &self.gdl,
            &self.focal,
            self.lambda_gdl,
            self.lambda_focal,
        )
    }
}

/// The overlap term of a compound loss (Dice, Generalized Dice): per-(sample, class) values from
/// the fused pass's statistics or from a prepared input, and the reduction that makes them `[1]`.
trait OverlapTerm {
    fn reduction(&self) -> LossReduction;
    fn stats_options(&self) -> StatsOptions;
    fn loss_of_stats(&self, stats: OverlapStats) -> Tensor<2>;
    fn forward_prepared(&self, prepared: &Prepared) -> Tensor<2>;
}

/// The pointwise term of a compound loss (cross-entropy, focal): what the fused pass computes
/// for it (`None`: the pass cannot), and its reduced value from those sums or from a prepared
/// input.
trait PointwiseTerm {
    fn fused_term(&self, channels: usize) -> Option<FusedTerm>;
    fn loss_of_sums(&self, prepared: &Prepared, sums: &PointwiseSums) -> Tensor<1>;
    fn forward_prepared(&self, prepared: &Prepared) -> Tensor<1>;
}

macro_rules! overlap_term {
    ($t:ty) => {
        impl OverlapTerm for $t {
            fn reduction(&self) -> LossReduction {
                self.config().reduction
            }
            fn stats_options(&self) -> StatsOptions {
                <$t>::stats_options(self)
            }
            fn loss_of_stats(&self, stats: OverlapStats) -> Tensor<2> {
                <$t>::loss_of_stats(self, stats)
            }
            fn forward_prepared(&self, prepared: &Prepared) -> Tensor<2> {
                <$t>::forward_prepared(self, prepared)
            }
        }
    };
}
overlap_term!(DiceLoss);
overlap_term!(GeneralizedDiceLoss);

impl PointwiseTerm for CrossEntropyLoss {
    fn fused_term(&self, channels: usize) -> Option<FusedTerm> {
        Some(CrossEntropyLoss::fused_term(self, channels))
    }
    fn loss_of_sums(&self, prepared: &Prepared, sums: &PointwiseSums) -> Tensor<1> {
        CrossEntropyLoss::loss_of_sums(self, prepared, sums)
    }
    fn forward_prepared(&self, prepared: &Prepared) -> Tensor<1> {
        CrossEntropyLoss::forward_prepared(self, prepared)
    }
}

impl PointwiseTerm for FocalLoss {
    fn fused_term(&self, channels: usize) -> Option<FusedTerm> {
        FocalLoss::fused_term(self, channels)
    }
    fn loss_of_sums(&self, prepared: &Prepared, sums: &PointwiseSums) -> Tensor<1> {
        FocalLoss::loss_of_sums(self, prepared, sums)
    }
    fn forward_prepared(&self, prepared: &Prepared) -> Tensor<1> {
        FocalLoss::forward_prepared(self, prepared)
    }
}

/// The reduced overlap and pointwise terms of a compound loss, each `[1]`: both from one fused
/// pass over the logits where it runs (same activation, plain statistics, a fused device), else
/// each term on its own path.
fn compound_terms(
    loss: &str,
    prepared: &Prepared,
    overlap: &impl OverlapTerm,
    pointwise: &impl PointwiseTerm,
) -> (Tensor<1>, Tensor<1>) {
    let reduction = overlap.reduction();
    let fused = pointwise
        .fused_term(prepared.channels)
        .and_then(|term| fused_pointwise(loss, prepared, &overlap.stats_options(), term));
    match fused {
        Some((stats, sums)) => (
            reduction.apply(overlap.loss_of_stats(stats)),
            pointwise.loss_of_sums(prepared, &sums),
        ),
        None => (
            reduction.apply(overlap.forward_prepared(prepared)),
            pointwise.forward_prepared(prepared),
        ),
    }
}

/// The unreduced compound loss in the prediction's shape with `K` channels: the overlap term
/// per (sample, class) `[B or 1, K or 1]` repeated at every voxel, weighted, plus the weighted
/// focal term per voxel `[B, K, N]`; voxels the mask drops are 0 in both (as they are in the
/// focal term).
fn compound_per_voxel<const D: usize>(
    prepared: &Prepared,
    overlap: &impl OverlapTerm,
    focal: &FocalLoss,
    lambda_overlap: f64,
    lambda_focal: f64,
) -> Tensor<D> {
    let focal = focal.per_voxel(prepared);
    let [b, k, n] = focal.dims();
    let mut overlap = overlap
        .forward_prepared(prepared)
        .mul_scalar(lambda_overlap)
        .unsqueeze_dim::<3>(2)
        .expand([b, k, n]);
    if let Some(mask) = &prepared.mask {
        overlap = overlap * mask.clone().unsqueeze_dim::<3>(1);
    }
    let mut shape = prepared.prediction_shape();
    shape[1] = k;
    (overlap + focal.mul_scalar(lambda_focal))
        .reshape(<[usize; D]>::try_from(shape).expect("rank is D"))
}
