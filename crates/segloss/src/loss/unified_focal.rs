//! The asymmetric unified focal loss (Yeung et al. 2022): an asymmetric focal loss plus an
//! asymmetric focal Tversky loss, background suppressed and foreground enhanced.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::reduction::LossReduction;
use crate::error::{Check, ConfigError};
use crate::input::{Activation, PrepareOptions, Target, prepare};

const NAME: &str = "AsymmetricUnifiedFocalLoss";

/// Configuration of an [`AsymmetricUnifiedFocalLoss`]; MONAI 1.6.1's
/// `AsymmetricUnifiedFocalLoss` options and defaults, generalised to any number of classes and
/// to logits.
#[derive(Config, Debug)]
pub struct AsymmetricUnifiedFocalLossConfig {
    /// [`Activation::None`]: the prediction holds probabilities (MONAI's only form);
    /// [`Activation::Softmax`]: logits of `C >= 2` classes; [`Activation::Sigmoid`]: the logit
    /// of a single foreground channel.
    pub activation: Activation,
    /// Weight of the focal term: `weight AF + (1 - weight) AFT`, in `[0, 1]`.
    #[config(default = 0.5)]
    pub weight: f64,
    /// Focal exponent, in `[0, 1]`: the background's cross-entropy is scaled by `(1 - p_0)^gamma`
    /// and each foreground class's Tversky term raised to `1 - gamma`.
    #[config(default = 0.5)]
    pub gamma: f64,
    /// Weight of the foreground against the background, in `[0, 1]`: the focal term weighs the
    /// foreground's cross-entropy by `delta` and the background's by `1 - delta`; the Tversky
    /// index weighs false negatives by `delta` and false positives by `1 - delta`.
    #[config(default = 0.7)]
    pub delta: f64,
    /// Probabilities are clamped to `[epsilon, 1 - epsilon]`, which also smooths the Tversky
    /// index; in `(0, 0.5)`.
    #[config(default = 1e-7)]
    pub epsilon: f64,
    /// Reduction of the per-(sample, class) values used by `forward`. MONAI 1.6.1 returns the
    /// mean whatever its `reduction` (its two terms are means already): that is
    /// [`LossReduction::Mean`] here.
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// Label value whose voxels count as neither background nor foreground (MONAI's
    /// `ignore_index`: their prediction and target are set to 0 before the clamp).
    pub ignore_index: Option<i64>,
    /// Check that label maps hold class indices in `[0, C)` (one reduction and one device sync
    /// per call). Unchecked, a label outside that range matches no class.
    #[config(default = true)]
    pub validate_labels: bool,
}

impl AsymmetricUnifiedFocalLossConfig {
    /// Checks every option, naming the loss, the parameter, the rule and the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = Check { loss: NAME };
        c.in_range("weight", self.weight, 0.0, 1.0)?;
        c.in_range("gamma", self.gamma, 0.0, 1.0)?;
        c.in_range("delta", self.delta, 0.0, 1.0)?;
        c.rule(
            self.epsilon > 0.0 && self.epsilon < 0.5,
            "epsilon",
            "in (0, 0.5)",
            format!("{}", self.epsilon),
        )
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<AsymmetricUnifiedFocalLoss, ConfigError> {
        self.validate()?;
        Ok(AsymmetricUnifiedFocalLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> AsymmetricUnifiedFocalLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Asymmetric unified focal loss, per (sample, class `c`):
///
/// ```text
/// loss_c = weight AF_c + (1 - weight) AFT_c
/// AF_0  = (1 - delta) mean_v (1 - p_0)^gamma (-g_0 ln p_0)      background: suppressed
/// AF_c  = delta mean_v (-g_c ln p_c)                             foreground, c >= 1
/// TI_c  = (TP_c + eps) / (TP_c + delta FN_c + (1 - delta) FP_c + eps)
/// AFT_0 = 1 - TI_0                                               background
/// AFT_c = (1 - TI_c)^(1 - gamma)                                 foreground: enhanced
/// ```
///
/// with `p` the probabilities clamped to `[eps, 1 - eps]`, `g` the one-hot target, means over the
/// voxels `v` and `TP = sum g p`, `FN = sum g (1 - p)`, `FP = sum (1 - g) p`. Yeung et al.,
/// "Unified Focal loss: Generalising Dice and cross entropy-based losses to handle class
/// imbalanced medical image segmentation", Computerized Medical Imaging and Graphics 95, 2022;
/// MONAI `AsymmetricUnifiedFocalLoss` 1.6.1.
///
/// **Beyond MONAI.** MONAI takes two classes of probabilities only (a single channel `p` is
/// read as `[1 - p, p]`). Here class 0 is the background and *every* other class a foreground
/// class, each with the foreground's terms, as the paper's asymmetric form treats the rare
/// classes; on two classes this is MONAI's loss exactly. The prediction may also be logits:
/// [`Activation::Softmax`] over `C >= 2` classes, or [`Activation::Sigmoid`] for a single
/// foreground channel (read as `[1 - sigmoid(x), sigmoid(x)]`). Multi-label targets (a voxel in
/// several foreground classes) are outside the loss's definition and refused with sigmoid.
///
/// **Range**: `[0, weight (-ln eps) + (1 - weight)]` (about 16 with the default `eps`); 0 only
/// for a perfect prediction with `eps -> 0`. **Empty classes**: as in MONAI, the clamp comes
/// before the sums, so a class absent from the target has `TP = 0` and `FP >= N eps`, and
/// `TI <= 1 / (1 + (1 - delta) N)`: it costs nearly its whole Tversky term however little of it
/// is predicted (in a two-class patch without foreground, the foreground term cannot go to 0).
/// Keep patches that hold every class, or give such classes little weight.
/// **Shapes**: prediction `[B, C, spatial...]` (any number of spatial axes), target a label map
/// or dense ([`Target`]), optionally masked ([`Target::with_mask`]: a masked voxel counts as an
/// ignored one); `forward` `[1]`;
/// [`forward_no_reduction`](AsymmetricUnifiedFocalLoss::forward_no_reduction) `[B, C]` (`[B, 2]`
/// for a single channel), whose mean is MONAI's value.
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use segloss::{Activation, AsymmetricUnifiedFocalLossConfig};
///
/// let device = Device::flex();
/// // Four classes from logits, which MONAI's loss cannot take.
/// let logits = Tensor::<5>::random([2, 4, 8, 8, 8], Distribution::Normal(0.0, 1.0), &device);
/// let labels = Tensor::<5, Int>::random([2, 1, 8, 8, 8], Distribution::Uniform(0.0, 4.0), &device);
/// let loss = AsymmetricUnifiedFocalLossConfig::new(Activation::Softmax).init();
/// assert_eq!(loss.forward_no_reduction(logits.clone(), labels.clone()).dims(), [2, 4]);
/// assert!(loss.forward(logits, labels).into_scalar::<f32>() > 0.0);
/// ```
///
/// # Panics
/// On mismatched shapes, labels out of range, softmax over a single channel, or sigmoid over
/// more than one channel.
#[derive(Module, Debug)]
pub struct AsymmetricUnifiedFocalLoss {
    #[module(skip)]
    config: AsymmetricUnifiedFocalLossConfig,
}

impl AsymmetricUnifiedFocalLoss {
    /// The configuration this loss was built from.
    pub fn config(&self) -> &AsymmetricUnifiedFocalLossConfig {
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

    /// The loss per (sample, class) `[B, C]` (`[B, 2]` for a single-channel prediction).
    pub fn forward_no_reduction<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<2> {
        let cfg = &self.config;
        let options = PrepareOptions {
            ignore_index: cfg.ignore_index,
            validate_labels: cfg.validate_labels,
        };
        let prepared = prepare(NAME, prediction, target.into(), options);
        let [b, c, n] = [prepared.batch, prepared.channels, prepared.voxels];
        match cfg.activation {
            Activation::Softmax => assert!(
                c >= 2,
                "{NAME}: softmax over a single channel is constant 1; use Activation::Sigmoid for a single foreground logit"
            ),
            Activation::Sigmoid => assert!(
                c == 1,
                "{NAME}: sigmoid takes a single foreground channel ([B, 1, ...]), got {c} channels: the loss's classes exclude each other (channel 0 is the background), so use Activation::Softmax"
            ),
            Activation::None => {}
        }
        let mut p = cfg.activation.apply(prepared.logits.clone());
        let mut g = prepared.dense_target();
        // One channel is the foreground's probability: MONAI reads it as [1 - p, p].
        let c = if c == 1 {
            p = Tensor::cat(vec![p.clone().neg().add_scalar(1.0), p], 1);
            g = Tensor::cat(vec![g.clone().neg().add_scalar(1.0), g], 1);
            2
        } else {
            c
        };
        // MONAI zeroes the prediction and the target of ignored voxels, then clamps.
        if let Some(m) = &prepared.mask {
            let m = m.clone().reshape([b, 1, n]);
            p = p * m.clone();
            g = g * m;
        }
        let eps = cfg.epsilon;
        let p = p.clamp(eps, 1.0 - eps);
        let (delta, gamma) = (cfg.delta, cfg.gamma);

        // Focal term: per-voxel cross-entropy, the background's scaled down.
        let ce = g.clone() * p.clone().log().neg();
        let back = p
            .clone()
            .narrow(1, 0, 1)
            .neg()
            .add_scalar(1.0)
            .powf_scalar(gamma)
            * ce.clone().narrow(1, 0, 1);
        let af_back = back.mean_dim(2).reshape([b, 1]).mul_scalar(1.0 - delta);
        let af_fore = ce
            .narrow(1, 1, c - 1)
            .mean_dim(2)
            .reshape([b, c - 1])
            .mul_scalar(delta);

        // Focal Tversky term.
        let tp = (g.clone() * p.clone()).sum_dim(2).reshape([b, c]);
        let fn_ = (g.clone() * p.clone().neg().add_scalar(1.0))
            .sum_dim(2)
            .reshape([b, c]);
        let fp = (g.neg().add_scalar(1.0) * p).sum_dim(2).reshape([b, c]);
        let ti = tp.clone().add_scalar(eps)
            / (tp + fn_.mul_scalar(delta) + fp.mul_scalar(1.0 - delta)).add_scalar(eps);
        let miss = ti.neg().add_scalar(1.0);
        let aft_back = miss.clone().narrow(1, 0, 1);
        let aft_fore = miss.narrow(1, 1, c - 1).powf_scalar(1.0 - gamma);

        let w = cfg.weight;
        let back = af_back.mul_scalar(w) + aft_back.mul_scalar(1.0 - w);
        let fore = af_fore.mul_scalar(w) + aft_fore.mul_scalar(1.0 - w);
        Tensor::cat(vec![back, fore], 1)
    }
}
