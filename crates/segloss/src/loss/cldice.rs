//! clDice (Shit et al. 2021) for tubular structures: the soft clDice loss and its sum with the
//! soft Dice loss.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::dice::{DiceLoss, DiceLossConfig};
use super::prepare_whole_image;
use super::reduction::LossReduction;
use super::skeleton::{check_skeleton_rank, soft_skeleton};
use crate::error::{Check, ConfigError};
use crate::input::{Activation, Target};

const NAME: &str = "SoftclDiceLoss";
const DICE_NAME: &str = "SoftDiceclDiceLoss";

/// Configuration of a [`SoftclDiceLoss`]; MONAI 1.6.1's `SoftclDiceLoss` options and defaults.
#[derive(Config, Debug)]
pub struct SoftclDiceLossConfig {
    /// Activation applied to the prediction (MONAI `softmax` / `sigmoid`; [`Activation::None`]
    /// for probabilities, MONAI's default).
    pub activation: Activation,
    /// Soft-skeleton iterations (MONAI `iter_`), at least 1. The skeleton reaches structures up
    /// to about `iterations` voxels in radius: set it to the radius of the thickest tube.
    #[config(default = 3)]
    pub iterations: usize,
    /// Added to the numerators of the topology precision and sensitivity.
    #[config(default = 1.0)]
    pub smooth_nr: f64,
    /// Added to their denominators.
    #[config(default = 1.0)]
    pub smooth_dr: f64,
    /// Added to the denominator of their harmonic mean, `> 0`.
    #[config(default = 1e-4)]
    pub smooth: f64,
    /// Keep class 0. When `false` channel 0 is dropped after the activation.
    #[config(default = true)]
    pub include_background: bool,
    /// Reduction over the samples used by `forward`.
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// Check that label maps hold class indices in `[0, C)` (one reduction and one device sync
    /// per call). Unchecked, a label outside that range matches no class.
    #[config(default = true)]
    pub validate_labels: bool,
}

impl SoftclDiceLossConfig {
    /// Checks every option, naming the loss, the parameter, the rule and the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_cldice_options(
            NAME,
            self.iterations,
            self.smooth_nr,
            self.smooth_dr,
            self.smooth,
        )
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<SoftclDiceLoss, ConfigError> {
        self.validate()?;
        Ok(SoftclDiceLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> SoftclDiceLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The options clDice shares between its two losses.
fn check_cldice_options(
    loss: &'static str,
    iterations: usize,
    smooth_nr: f64,
    smooth_dr: f64,
    smooth: f64,
) -> Result<(), ConfigError> {
    let c = Check { loss };
    // MONAI accepts `iter_ = 0`; its "skeleton" is then only the residue of one opening (the
    // voxels a 3-voxel-wide probe removes), blind to any structure wider than that.
    c.rule(
        iterations >= 1,
        "iterations",
        "at least 1 (MONAI's `iter_`: with 0 the soft skeleton is only one opening's residue and sees no structure wider than 3 voxels)",
        format!("{iterations}"),
    )?;
    c.non_negative("smooth_nr", smooth_nr)?;
    c.non_negative("smooth_dr", smooth_dr)?;
    c.rule(
        smooth.is_finite() && smooth > 0.0,
        "smooth",
        "finite and > 0",
        format!("{smooth}"),
    )
}

/// Soft clDice loss per sample:
///
/// ```text
/// Tprec = (sum S(p) g + smooth_nr) / (sum S(p) + smooth_dr)     topology precision
/// Tsens = (sum S(g) p + smooth_nr) / (sum S(g) + smooth_dr)     topology sensitivity
/// clDice = 1 - 2 Tprec Tsens / (Tprec + Tsens + smooth)
/// ```
///
/// with `p` the prediction after the activation, `g` the target, sums over the classes kept and
/// every voxel of the sample, and `S` the soft skeleton: `iterations` soft erosions (the minimum
/// over the 3-voxel cross), each followed by an opening whose residue is added to the skeleton
/// (MONAI's `soft_skel`). The skeleton of the prediction must lie inside the target (precision)
/// and the target's skeleton inside the prediction (sensitivity): a break in a thin vessel costs
/// a whole stretch of centre line, where the Dice loss sees a few voxels. Shit et al., "clDice -
/// a Novel Topology-Preserving Loss Function for Tubular Structure Segmentation", CVPR 2021;
/// MONAI `SoftclDiceLoss` 1.6.1, whose gradient this matches, ties included (the skeleton's
/// maxima and minima break ties as PyTorch's pooling does). Only the prediction's skeleton
/// carries a gradient; the target's is a constant.
///
/// **Range**: `[0, 1]` for probabilities in `[0, 1]` and a binary target (up to `smooth`): 0
/// when both skeletons lie inside the other mask.
/// **Empty classes**: a sample whose kept classes are all empty in the target has `Tsens = 1`
/// (`smooth_nr / smooth_dr`); with the defaults the loss stays finite whatever the input.
/// **Shapes**: prediction `[B, C, H, W]` or `[B, C, H, W, D]` (2D or 3D, as in MONAI), target a
/// label map or dense ([`Target`]); `forward` `[1]`;
/// [`forward_no_reduction`](SoftclDiceLoss::forward_no_reduction) `[B]`.
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use segloss::{Activation, SoftclDiceLossConfig};
///
/// let device = Device::flex();
/// let logits = Tensor::<5>::random([2, 3, 8, 8, 8], Distribution::Normal(0.0, 1.0), &device);
/// let labels = Tensor::<5, Int>::random([2, 1, 8, 8, 8], Distribution::Uniform(0.0, 3.0), &device);
/// let loss = SoftclDiceLossConfig::new(Activation::Softmax)
///     .with_include_background(false)
///     .init();
/// assert_eq!(loss.forward_no_reduction(logits.clone(), labels.clone()).dims(), [2]);
/// let value = loss.forward(logits, labels).into_scalar::<f32>();
/// assert!((0.0..=1.0).contains(&value));
/// ```
///
/// # Panics
/// On a prediction that is not 2D or 3D, mismatched shapes, labels out of range, a voxel mask
/// ([`Target::with_mask`]: MONAI's loss takes none, and a masked voxel would still shape its
/// neighbours' skeleton), softmax over one channel, or `include_background = false` with a
/// single-channel prediction.
#[derive(Module, Debug)]
pub struct SoftclDiceLoss {
    #[module(skip)]
    config: SoftclDiceLossConfig,
}

impl SoftclDiceLoss {
    /// The configuration this loss was built from.
    pub fn config(&self) -> &SoftclDiceLossConfig {
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

    /// The loss per sample, shape `[B]`.
    pub fn forward_no_reduction<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<1> {
        let c = &self.config;
        cldice_per_sample(
            NAME,
            prediction,
            target.into(),
            ClDiceTerms {
                activation: c.activation,
                iterations: c.iterations,
                smooth_nr: c.smooth_nr,
                smooth_dr: c.smooth_dr,
                smooth: c.smooth,
                include_background: c.include_background,
                validate_labels: c.validate_labels,
            },
        )
    }
}

/// The options of one clDice evaluation.
struct ClDiceTerms {
    activation: Activation,
    iterations: usize,
    smooth_nr: f64,
    smooth_dr: f64,
    smooth: f64,
    include_background: bool,
    validate_labels: bool,
}

/// clDice per sample `[B]` (see [`SoftclDiceLoss`]).
fn cldice_per_sample<const D: usize>(
    loss: &str,
    prediction: Tensor<D>,
    target: Target,
    o: ClDiceTerms,
) -> Tensor<1> {
    check_skeleton_rank(loss, &prediction.dims());
    let (prepared, p, g, k) = prepare_whole_image(
        loss,
        prediction,
        target,
        o.activation,
        o.include_background,
        o.validate_labels,
        "a masked voxel would still shape its neighbours' skeleton",
    );
    let b = prepared.batch;
    let mut dims = [0usize; D];
    dims[0] = b;
    dims[1] = k;
    dims[2..].copy_from_slice(&prepared.spatial);
    let p: Tensor<D> = p.reshape(dims);
    let g: Tensor<D> = g.reshape(dims);
    let skel_p = soft_skeleton(p.clone(), o.iterations);
    let skel_g = soft_skeleton(g.clone(), o.iterations);
    let per_sample = |t: Tensor<D>| t.reshape([b as i32, -1]).sum_dim(1).reshape([b]);
    let tprec = (per_sample(skel_p.clone() * g).add_scalar(o.smooth_nr))
        / per_sample(skel_p).add_scalar(o.smooth_dr);
    let tsens = (per_sample(skel_g.clone() * p).add_scalar(o.smooth_nr))
        / per_sample(skel_g).add_scalar(o.smooth_dr);
    let harmonic =
        (tprec.clone() * tsens.clone()).mul_scalar(2.0) / (tprec + tsens).add_scalar(o.smooth);
    harmonic.neg().add_scalar(1.0)
}

/// Configuration of a [`SoftDiceclDiceLoss`]; MONAI 1.6.1's `SoftDiceclDiceLoss` options and
/// defaults.
#[derive(Config, Debug)]
pub struct SoftDiceclDiceLossConfig {
    /// Activation applied to the prediction (MONAI `softmax` / `sigmoid`; [`Activation::None`]
    /// for probabilities, MONAI's default).
    pub activation: Activation,
    /// Soft-skeleton iterations of the clDice term (MONAI `iter_`), at least 1.
    #[config(default = 3)]
    pub iterations: usize,
    /// Weight of the clDice term: `(1 - alpha) Dice + alpha clDice`, in `[0, 1]`.
    #[config(default = 0.5)]
    pub alpha: f64,
    /// Added to the numerators of both terms (MONAI passes it to its `DiceLoss` too).
    #[config(default = 1.0)]
    pub smooth_nr: f64,
    /// Added to the denominators of both terms.
    #[config(default = 1.0)]
    pub smooth_dr: f64,
    /// Added to the denominator of clDice's harmonic mean, `> 0`.
    #[config(default = 1e-4)]
    pub smooth: f64,
    /// Keep class 0 (both terms). When `false` channel 0 is dropped after the activation.
    #[config(default = true)]
    pub include_background: bool,
    /// Reduction of each term (the Dice term over samples and classes, clDice over samples).
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// Check that label maps hold class indices in `[0, C)`.
    #[config(default = true)]
    pub validate_labels: bool,
}

impl SoftDiceclDiceLossConfig {
    /// Checks every option, naming the loss, the parameter, the rule and the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Check { loss: DICE_NAME }.in_range("alpha", self.alpha, 0.0, 1.0)?;
        check_cldice_options(
            DICE_NAME,
            self.iterations,
            self.smooth_nr,
            self.smooth_dr,
            self.smooth,
        )
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<SoftDiceclDiceLoss, ConfigError> {
        self.validate()?;
        let dice = DiceLossConfig::new(self.activation)
            .with_include_background(self.include_background)
            .with_smooth_nr(self.smooth_nr)
            .with_smooth_dr(self.smooth_dr)
            .with_reduction(self.reduction)
            .with_validate_labels(self.validate_labels)
            .try_init()
            .map_err(|e| ConfigError {
                loss: DICE_NAME,
                ..e
            })?;
        Ok(SoftDiceclDiceLoss {
            config: self.clone(),
            dice,
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> SoftDiceclDiceLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The soft Dice loss plus the soft clDice loss:
///
/// ```text
/// loss = (1 - alpha) Dice + alpha clDice
/// ```
///
/// with [`DiceLoss`] per (sample, class) (same activation, background and
/// smoothing; `smooth_nr = smooth_dr = 1` by default, as MONAI passes them) and
/// [`SoftclDiceLoss`] per sample, each reduced with `reduction` before the sum. Shit et al.,
/// CVPR 2021 (their recommended form: Dice keeps the volume right, clDice the connectivity);
/// MONAI `SoftDiceclDiceLoss` 1.6.1.
///
/// **Range**: `[0, 1]` for probabilities and binary targets. **Empty classes**: as the two
/// terms (a class empty in target and prediction gives Dice 0 with the default smoothing).
/// **Shapes**: as [`SoftclDiceLoss`]; `forward` `[1]`. There is no unreduced form: the two terms
/// have different shapes (MONAI's `reduction="none"` broadcasts `[B, C', 1...]` against `[B]`
/// into a shape that means nothing).
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use segloss::{Activation, SoftDiceclDiceLossConfig};
///
/// let device = Device::flex();
/// let logits = Tensor::<4>::random([2, 2, 16, 16], Distribution::Normal(0.0, 1.0), &device);
/// let labels = Tensor::<4, Int>::random([2, 1, 16, 16], Distribution::Uniform(0.0, 2.0), &device);
/// let loss = SoftDiceclDiceLossConfig::new(Activation::Softmax)
///     .with_alpha(0.3)
///     .init();
/// let value = loss.forward(logits, labels).into_scalar::<f32>();
/// assert!((0.0..=1.0).contains(&value));
/// ```
///
/// # Panics
/// As [`SoftclDiceLoss`].
#[derive(Module, Debug)]
pub struct SoftDiceclDiceLoss {
    #[module(skip)]
    config: SoftDiceclDiceLossConfig,
    dice: DiceLoss,
}

impl SoftDiceclDiceLoss {
    /// The configuration this loss was built from.
    pub fn config(&self) -> &SoftDiceclDiceLossConfig {
        &self.config
    }

    /// The reduced loss, shape `[1]`.
    pub fn forward<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<1> {
        let c = &self.config;
        let target = target.into();
        let cldice = cldice_per_sample(
            DICE_NAME,
            prediction.clone(),
            target.clone(),
            ClDiceTerms {
                activation: c.activation,
                iterations: c.iterations,
                smooth_nr: c.smooth_nr,
                smooth_dr: c.smooth_dr,
                smooth: c.smooth,
                include_background: c.include_background,
                validate_labels: c.validate_labels,
            },
        );
        let dice = self.dice.forward(prediction, target);
        dice.mul_scalar(1.0 - c.alpha) + c.reduction.apply(cldice).mul_scalar(c.alpha)
    }
}
