//! Focal loss (Lin et al. 2017) for dense prediction, sigmoid or softmax.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, log_softmax};

use super::class_weights;
use super::reduction::LossReduction;
use crate::error::{Check, ConfigError};
use crate::input::{Activation, PrepareOptions, Prepared, Target, prepare};
use crate::kernel::dispatch::fused_pointwise;
use crate::stats::{FusedTerm, PointwiseSums, StatsOptions};

const NAME: &str = "FocalLoss";

/// Configuration of a [`FocalLoss`]; MONAI's `FocalLoss` options.
#[derive(Config, Debug)]
pub struct FocalLossConfig {
    /// Keep class 0. Without it channel 0 is dropped *before* the activation, so with softmax
    /// the probabilities are normalised over the remaining channels (as MONAI does).
    #[config(default = true)]
    pub include_background: bool,
    /// Focusing parameter `gamma >= 0`; 0 gives (class-weighted) cross-entropy.
    #[config(default = 2.0)]
    pub gamma: f64,
    /// Balancing factor: one value `alpha` in `[0, 1]` (sigmoid: `alpha` for positives and
    /// `1 - alpha` for negatives; softmax: `1 - alpha` for class 0 and `alpha` for the others,
    /// unused without background, as in MONAI), or one value per class.
    pub alpha: Option<Vec<f32>>,
    /// Per-class weights multiplying the loss (one value for all classes, or one per class).
    pub weight: Option<Vec<f32>>,
    /// Reduction used by `forward`: `Mean` over every (sample, class, voxel); `Sum` adds the
    /// per-(sample, class) means over the voxels (MONAI's backward-compatible "sum").
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// Softmax focal loss (multi-class) instead of the sigmoid focal loss (multi-label).
    #[config(default = false)]
    pub use_softmax: bool,
    /// Label value whose voxels count for nothing.
    pub ignore_index: Option<i64>,
    /// Check that label values lie in `[0, C)` (one reduction and one device sync per call).
    /// Unchecked, a label outside that range matches no class (its voxel's target is all zero).
    #[config(default = true)]
    pub validate_labels: bool,
}

impl FocalLossConfig {
    /// Checks every option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = Check { loss: NAME };
        c.non_negative("gamma", self.gamma)?;
        if let Some(a) = &self.alpha {
            c.weights("alpha", a)?;
            for &v in a {
                c.in_range("alpha", v as f64, 0.0, 1.0)?;
            }
        }
        if let Some(w) = &self.weight {
            c.weights("weight", w)?;
        }
        Ok(())
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<FocalLoss, ConfigError> {
        self.validate()?;
        Ok(FocalLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> FocalLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Focal loss per voxel and class, from logits:
///
/// ```text
/// sigmoid: FL = -alpha_t (1 - p_t)^gamma log(p_t),  p_t = p if g = 1 else 1 - p  (computed as
///          exp(gamma logsigmoid(-x (2g - 1))) * BCEWithLogits(x, g), stable for any logit)
/// softmax: FL_c = -alpha_c (1 - p_c)^gamma g_c log(p_c)
/// ```
///
/// Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017; MONAI `FocalLoss` 1.6.1.
/// The prediction is always logits. A per-voxel loss: empty classes need no special rule.
///
/// **Shapes**: prediction `[B, C, spatial...]`, target a label map or dense ([`Target`]);
/// `forward` `[1]`; [`forward_no_reduction`](FocalLoss::forward_no_reduction) `[B, C', spatial...]`.
///
/// **Masks and ignored voxels** count for nothing; the mean divides by the number of counted
/// (voxel, class) pairs (MONAI divides by the voxels only, which makes ignoring one voxel
/// multiply the loss by `C`; see the README's list of differences).
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use segloss::FocalLossConfig;
///
/// let device = Device::flex();
/// let logits = Tensor::<4>::random([1, 2, 8, 8], Distribution::Normal(0.0, 3.0), &device);
/// let target = Tensor::<4>::random([1, 2, 8, 8], Distribution::Bernoulli(0.5), &device);
/// let loss = FocalLossConfig::new().with_gamma(2.0).init();
/// assert!(loss.forward(logits, target).into_scalar::<f32>() >= 0.0);
/// ```
///
/// # Panics
/// On mismatched shapes, labels out of range, a `weight` or `alpha` list of the wrong length.
#[derive(Module, Debug)]
pub struct FocalLoss {
    #[module(skip)]
    config: FocalLossConfig,
}

impl FocalLoss {
    /// The configuration this loss was built from.
    pub fn config(&self) -> &FocalLossConfig {
        &self.config
    }

    /// The reduced loss, shape `[1]`.
    pub fn forward<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<1> {
        let prepared = prepare(NAME, prediction, target.into(), self.prepare_options());
        self.forward_prepared(&prepared)
    }

    /// The loss per (sample, class, voxel), `[B, C', spatial...]`, masked voxels 0.
    pub fn forward_no_reduction<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<D> {
        let prepared = prepare(NAME, prediction, target.into(), self.prepare_options());
        let values = self.per_voxel(&prepared);
        let k = values.dims()[1];
        let mut shape = prepared.prediction_shape();
        shape[1] = k;
        values.reshape(<[usize; D]>::try_from(shape).expect("rank is D"))
    }

    pub(crate) fn prepare_options(&self) -> PrepareOptions {
        PrepareOptions {
            ignore_index: self.config.ignore_index,
            validate_labels: self.config.validate_labels,
        }
    }

    /// The pointwise term of the fused pass for this loss on `channels` channels, or `None` for
    /// a softmax over a single channel (refused or composed). Without the background the softmax
    /// term runs over channels `1..C` (MONAI drops the background before its softmax; with two
    /// channels that softmax is 1 everywhere and the loss 0).
    pub(crate) fn fused_term(&self, channels: usize) -> Option<FusedTerm> {
        let cfg = &self.config;
        if !cfg.include_background {
            assert!(
                channels > 1,
                "{NAME}: `include_background = false` would drop the only channel of a single-channel prediction"
            );
        }
        let (activation, without_background) = match cfg.use_softmax {
            true if channels > 1 => (Activation::Softmax, !cfg.include_background),
            true => return None,
            false => (Activation::Sigmoid, false),
        };
        Some(FusedTerm {
            activation,
            gamma: cfg.gamma,
            without_background,
        })
    }

    /// Reduced loss of a prepared input: from the fused pass where it runs (its overlap
    /// statistics unused), else composed.
    pub(crate) fn forward_prepared(&self, prepared: &Prepared) -> Tensor<1> {
        if let Some(term) = self.fused_term(prepared.channels) {
            let options =
                StatsOptions::for_loss(self.prepare_options(), term.activation, true, false, false);
            if let Some((_, sums)) = fused_pointwise(NAME, prepared, &options, term) {
                return self.loss_of_sums(prepared, &sums);
            }
        }
        let values = self.per_voxel(prepared);
        let [b, k, _] = values.dims();
        let eps = f32::EPSILON as f64;
        match (&prepared.mask, self.config.reduction) {
            (None, LossReduction::Mean) => values.mean(),
            (None, LossReduction::Sum) => values.mean_dim(2).sum(),
            (Some(m), LossReduction::Mean) => values
                .sum()
                .div(m.clone().sum().mul_scalar(k as f64).clamp_min(eps)),
            (Some(m), LossReduction::Sum) => {
                let counted = m.clone().sum_dim(1).reshape([b, 1, 1]).clamp_min(eps);
                (values.sum_dim(2) / counted).sum()
            }
        }
    }

    /// The reduced loss from the fused pass's pointwise sums (activation of
    /// [`FocalLoss::fused_term`]): per (sample, class) the focal sums
    /// with `alpha` (linear in the target for the sigmoid's scalar `alpha`, on the voxels with
    /// `g = 1` for its per-class `alpha`) and the class weights, then the reduction of
    /// [`FocalLossConfig::reduction`].
    pub(crate) fn loss_of_sums(&self, prepared: &Prepared, sums: &PointwiseSums) -> Tensor<1> {
        let first = usize::from(!self.config.include_background);
        let k = prepared.channels - first;
        let cols = |t: &Tensor<2>| t.clone().narrow(1, first, k);
        let kept = PointwiseSums {
            target_weighted: cols(&sums.target_weighted),
            plain: cols(&sums.plain),
            third: cols(&sums.third),
            fourth: cols(&sums.fourth),
        };
        self.reduce(prepared.batch, k, prepared.voxels, &prepared.mask, &kept)
    }

    /// The reduced loss from pointwise sums `[B, k]` over the `k` channels the loss keeps.
    fn reduce(
        &self,
        b: usize,
        k: usize,
        n: usize,
        mask: &Option<Tensor<2>>,
        sums: &PointwiseSums,
    ) -> Tensor<1> {
        let cfg = &self.config;
        let device = sums.plain.device();
        let per_class = match &cfg.alpha {
            Some(a) if a.len() > 1 => {
                class_weights(NAME, &Some(a.clone()), k, "alpha per class", &device)
            }
            _ => None,
        };
        let scalar = cfg
            .alpha
            .as_ref()
            .filter(|a| a.len() == 1)
            .map(|a| a[0] as f64);
        let mut values = if cfg.use_softmax {
            let f = sums.target_weighted.clone();
            match (scalar, per_class) {
                (Some(a), _) if cfg.include_background => {
                    let mut factors = vec![a as f32; k];
                    factors[0] = (1.0 - a) as f32;
                    f * Tensor::<1>::from_floats(factors.as_slice(), &device).reshape([1, k])
                }
                (_, Some(w)) => f * w,
                _ => f,
            }
        } else {
            let plain = sums.plain.clone();
            match (scalar, per_class) {
                (Some(a), _) => {
                    plain.mul_scalar(1.0 - a)
                        + sums.target_weighted.clone().mul_scalar(2.0 * a - 1.0)
                }
                (_, Some(w)) => plain + sums.third.clone() * w.sub_scalar(1.0),
                _ => plain,
            }
        };
        let what = if cfg.include_background {
            "all channels"
        } else {
            "background excluded"
        };
        if let Some(w) = class_weights(NAME, &cfg.weight, k, what, &device) {
            values = values * w;
        }
        let eps = f32::EPSILON as f64;
        match (mask, cfg.reduction) {
            (None, LossReduction::Mean) => values.sum().div_scalar((b * k * n) as f64),
            (None, LossReduction::Sum) => values.sum().div_scalar(n as f64),
            (Some(m), LossReduction::Mean) => values
                .sum()
                .div(m.clone().sum().mul_scalar(k as f64).clamp_min(eps)),
            (Some(m), LossReduction::Sum) => {
                let counted = m.clone().sum_dim(1).reshape([b, 1]).clamp_min(eps);
                (values / counted).sum()
            }
        }
    }

    /// `[B, C', N]` focal loss values, masked voxels 0.
    /// The loss per (sample, class, voxel) `[B, C', N]`, masked voxels 0.
    pub(crate) fn per_voxel(&self, prepared: &Prepared) -> Tensor<3> {
        let cfg = &self.config;
        let [b, c, n] = [prepared.batch, prepared.channels, prepared.voxels];
        let mut x = prepared.logits.clone();
        let mut g = prepared.dense_target();
        let mut k = c;
        if !cfg.include_background {
            assert!(
                c > 1,
                "{NAME}: `include_background = false` would drop the only channel of a single-channel prediction"
            );
            k = c - 1;
            x = x.narrow(1, 1, k);
            g = g.narrow(1, 1, k);
        }
        let device = x.device();
        let alpha = cfg.alpha.as_ref().map(|a| {
            if a.len() == 1 {
                None
            } else {
                class_weights(NAME, &Some(a.clone()), k, "alpha per class", &device)
            }
        });
        let gamma = cfg.gamma;
        let mut loss = if cfg.use_softmax {
            let ls = log_softmax(x, 1);
            let mut l = ls.clone().neg() * g.clone();
            if gamma != 0.0 {
                let base = ls.exp().neg().add_scalar(1.0).clamp_min(f32::MIN_POSITIVE);
                l = l * base.powf_scalar(gamma);
            }
            match (&cfg.alpha, alpha) {
                (Some(a), Some(None)) if cfg.include_background => {
                    let a = a[0];
                    let mut f = vec![a; k];
                    f[0] = 1.0 - a;
                    l * Tensor::<1>::from_floats(f.as_slice(), &device).reshape([1, k, 1])
                }
                (_, Some(Some(per_class))) => l * per_class.reshape([1, k, 1]),
                _ => l,
            }
        } else {
            // BCE with logits, stable: x - x g - logsigmoid(x).
            let mut l = x.clone() - x.clone() * g.clone() - log_sigmoid(x.clone());
            if gamma != 0.0 {
                let signed = g.clone().mul_scalar(2.0).sub_scalar(1.0);
                l = log_sigmoid(x.neg() * signed).mul_scalar(gamma).exp() * l;
            }
            match (&cfg.alpha, alpha) {
                (Some(a), Some(None)) => {
                    let a = a[0] as f64;
                    let factor = g.clone().mul_scalar(a)
                        + g.clone().neg().add_scalar(1.0).mul_scalar(1.0 - a);
                    l * factor
                }
                (_, Some(Some(per_class))) => {
                    let per_class = per_class.reshape([1, k, 1]).expand([b, k, n]);
                    let factor = per_class.mask_fill(g.clone().equal_elem(1.0).bool_not(), 1.0);
                    l * factor
                }
                _ => l,
            }
        };
        if let Some(m) = &prepared.mask {
            loss = loss * m.clone().reshape([b, 1, n]);
        }
        let what = if cfg.include_background {
            "all channels"
        } else {
            "background excluded"
        };
        if let Some(w) = class_weights(NAME, &cfg.weight, k, what, &device) {
            loss = loss * w.reshape([1, k, 1]);
        }
        loss
    }
}
