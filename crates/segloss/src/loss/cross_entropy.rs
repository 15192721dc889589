//! Cross-entropy for dense prediction (PyTorch's `CrossEntropyLoss` / `BCEWithLogitsLoss` semantics).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, log_softmax};

use super::class_weights;
use super::reduction::LossReduction;
use crate::error::{Check, ConfigError};
use crate::input::{Activation, PrepareOptions, Prepared, Target, TargetOf, prepare};
use crate::kernel::dispatch::fused_pointwise;
use crate::stats::{FusedTerm, PointwiseSums, StatsOptions};

const NAME: &str = "CrossEntropyLoss";

/// Configuration of a [`CrossEntropyLoss`].
#[derive(Config, Debug)]
pub struct CrossEntropyLossConfig {
    /// Per-class weights (one per channel, background included), each `>= 0`. With a single
    /// channel this is the positive-class weight of the binary cross-entropy (`pos_weight`).
    pub weight: Option<Vec<f32>>,
    /// Label smoothing `eps` in `[0, 1]`: the target becomes `(1 - eps) g + eps / C`.
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// Reduction used by `forward`.
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// Label value whose voxels count for nothing.
    pub ignore_index: Option<i64>,
    /// Check that label values lie in `[0, C)` (one reduction and one device sync per call).
    /// Unchecked, a label outside that range matches no class (its voxel's target is all zero).
    #[config(default = true)]
    pub validate_labels: bool,
}

impl CrossEntropyLossConfig {
    /// Checks every option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = Check { loss: NAME };
        c.in_range("label_smoothing", self.label_smoothing, 0.0, 1.0)?;
        if let Some(w) = &self.weight {
            c.weights("weight", w)?;
        }
        Ok(())
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<CrossEntropyLoss, ConfigError> {
        self.validate()?;
        Ok(CrossEntropyLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> CrossEntropyLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Cross-entropy between logits `[B, C, spatial...]` and a target, per voxel:
///
/// - label map: `-(1 - eps) w_y log p_y - (eps / C) sum_c w_c log p_c`, `p = softmax(x)`; the mean
///   divides by `sum w_y` over the counted voxels (PyTorch's weighted mean);
/// - dense target (class probabilities): `-sum_c w_c t_c log p_c` with `t = (1 - eps) g + eps / C`;
///   the mean divides by the number of counted voxels;
/// - a single channel: binary cross-entropy with logits, `-(w g log s(x) + (1 - g) log s(-x))`,
///   `w` the positive weight; mean over counted voxels.
///
/// Masked and ignored voxels count for nothing. PyTorch `nn.CrossEntropyLoss` /
/// `nn.BCEWithLogitsLoss` (MONAI's `DiceCELoss` partner).
///
/// **Shapes**: `forward` `[1]`; [`forward_no_reduction`](CrossEntropyLoss::forward_no_reduction)
/// `[B, 1, spatial...]` (one value per voxel).
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use segloss::CrossEntropyLossConfig;
///
/// let device = Device::flex();
/// let logits = Tensor::<3>::from_data([[[2.0, 0.0], [0.0, 2.0]]], &device); // [1, 2, 2]
/// let labels = Tensor::<2, Int>::from_data([[0, 1]], &device);
/// let ce = CrossEntropyLossConfig::new().init().forward(logits, labels).into_scalar::<f32>();
/// assert!((ce - (1.0f32 + (-2.0f32).exp()).ln()).abs() < 1e-6);
/// ```
///
/// # Panics
/// On mismatched shapes, labels out of range, a `weight` list whose length is not `C`.
#[derive(Module, Debug)]
pub struct CrossEntropyLoss {
    #[module(skip)]
    config: CrossEntropyLossConfig,
}

impl CrossEntropyLoss {
    /// The configuration this loss was built from.
    pub fn config(&self) -> &CrossEntropyLossConfig {
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

    /// The loss per voxel, `[B, 1, spatial...]` (masked voxels 0; weights applied, not normalised).
    pub fn forward_no_reduction<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<D> {
        let prepared = prepare(NAME, prediction, target.into(), self.prepare_options());
        let (values, _) = self.per_voxel(&prepared);
        let mut shape = prepared.prediction_shape();
        shape[1] = 1;
        values.reshape(<[usize; D]>::try_from(shape).expect("rank is D"))
    }

    pub(crate) fn prepare_options(&self) -> PrepareOptions {
        PrepareOptions {
            ignore_index: self.config.ignore_index,
            validate_labels: self.config.validate_labels,
        }
    }

    /// The activation of the cross-entropy of `channels` channels: the softmax, or the sigmoid
    /// of the binary cross-entropy for a single channel.
    pub(crate) fn activation(channels: usize) -> Activation {
        if channels == 1 {
            Activation::Sigmoid
        } else {
            Activation::Softmax
        }
    }

    /// The pointwise term of the fused pass for this loss on `channels` channels.
    pub(crate) fn fused_term(&self, channels: usize) -> FusedTerm {
        FusedTerm {
            activation: Self::activation(channels),
            gamma: 0.0,
            without_background: false,
        }
    }

    /// Reduced loss of a prepared input: from the fused pass where it runs (its overlap
    /// statistics unused), else composed.
    pub(crate) fn forward_prepared(&self, prepared: &Prepared) -> Tensor<1> {
        let term = self.fused_term(prepared.channels);
        let options =
            StatsOptions::for_loss(self.prepare_options(), term.activation, true, false, false);
        if let Some((_, sums)) = fused_pointwise(NAME, prepared, &options, term) {
            return self.loss_of_sums(prepared, &sums);
        }
        let (values, normaliser) = self.per_voxel(prepared);
        match self.config.reduction {
            LossReduction::Mean => values
                .sum()
                .div(normaliser.clamp_min(f32::MIN_POSITIVE as f64)),
            LossReduction::Sum => values.sum(),
        }
    }

    /// The reduced loss from the fused pass's pointwise sums (`gamma = 0`, the activation of
    /// [`CrossEntropyLoss::activation`]): the per-voxel formula of the type's docs summed per
    /// class, `(1 - eps) sum m g (-ln p) + (eps / C) sum m (-ln p)` weighted by class, and the
    /// weighted mean's normaliser `sum_c w_c sum m g_c` (label map) or `sum m` (dense target);
    /// for a single channel `sum m BCE + (w - 1) sum m g softplus(-x)`.
    pub(crate) fn loss_of_sums(&self, prepared: &Prepared, sums: &PointwiseSums) -> Tensor<1> {
        let cfg = &self.config;
        let [b, c, n] = [prepared.batch, prepared.channels, prepared.voxels];
        let device = sums.plain.device();
        let counted = || match &prepared.mask {
            Some(m) => m.clone().sum(),
            None => Tensor::<1>::from_floats([(b * n) as f32], &device),
        };
        let (total, normaliser) = if c == 1 {
            let positive = self.positive_weight();
            (
                sums.plain.clone().sum() + sums.fourth.clone().sum().mul_scalar(positive - 1.0),
                counted(),
            )
        } else {
            let eps = cfg.label_smoothing;
            let per_class = sums.target_weighted.clone().mul_scalar(1.0 - eps)
                + sums.plain.clone().mul_scalar(eps / c as f64);
            let weights = class_weights(
                NAME,
                &cfg.weight,
                c,
                "all channels, background included",
                &device,
            );
            let weighted = |t: Tensor<2>| match &weights {
                Some(w) => (t * w.clone()).sum(),
                None => t.sum(),
            };
            let normaliser = if prepared.target.is_labels() {
                weighted(sums.third.clone())
            } else {
                counted()
            };
            (weighted(per_class), normaliser)
        };
        match cfg.reduction {
            LossReduction::Mean => total.div(normaliser.clamp_min(f32::MIN_POSITIVE as f64)),
            LossReduction::Sum => total,
        }
    }

    /// The positive-class weight of the binary cross-entropy (a single-channel prediction):
    /// the one `weight`, or 1.
    ///
    /// # Panics
    /// If `weight` holds more than one value.
    fn positive_weight(&self) -> f64 {
        match &self.config.weight {
            Some(w) => {
                assert!(
                    w.len() == 1,
                    "{NAME}: a single-channel prediction takes one positive-class `weight`, got {}",
                    w.len()
                );
                w[0] as f64
            }
            None => 1.0,
        }
    }

    /// Per-voxel values `[B, N]` and the normaliser of the mean (`[1]`).
    fn per_voxel(&self, prepared: &Prepared) -> (Tensor<2>, Tensor<1>) {
        let cfg = &self.config;
        let [b, c, n] = [prepared.batch, prepared.channels, prepared.voxels];
        let x = prepared.logits.clone();
        let device = x.device();
        let eps = cfg.label_smoothing;
        let counted = prepared
            .mask
            .clone()
            .unwrap_or_else(|| Tensor::ones([b, n], &device));

        if c == 1 {
            let g = prepared.dense_target().reshape([b, n]);
            let x = x.reshape([b, n]);
            let positive = self.positive_weight();
            let l = (g.clone() * log_sigmoid(x.clone())).mul_scalar(positive)
                + (g.neg().add_scalar(1.0) * log_sigmoid(x.neg()));
            let values = l.neg() * counted.clone();
            return (values, counted.sum());
        }

        let ls = log_softmax(x, 1);
        let weights = class_weights(
            NAME,
            &cfg.weight,
            c,
            "all channels, background included",
            &device,
        );
        if let TargetOf::Labels(labels) = &prepared.target {
            // Unvalidated labels outside [0, C) match no class, as in the fused kernel and the
            // one-hot of the other losses: their voxels get no target term and no weight. The
            // index is clamped so that `gather` never reads outside the tensor.
            let (index, in_range) = if cfg.validate_labels {
                (labels.clone(), None)
            } else {
                let inside = labels
                    .clone()
                    .greater_equal_elem(0)
                    .bool_and(labels.clone().lower_elem(c as i64));
                (labels.clone().clamp(0, c as i64 - 1), Some(inside.float()))
            };
            let index = index.reshape([b, 1, n]);
            let picked = ls.clone().gather(1, index.clone()).reshape([b, n]);
            let counted_target = match in_range {
                Some(inside) => counted.clone() * inside,
                None => counted.clone(),
            };
            let w_y = match &weights {
                Some(w) => {
                    w.clone()
                        .reshape([c])
                        .select(0, index.reshape([b * n]))
                        .reshape([b, n])
                        * counted_target
                }
                None => counted_target,
            };
            let mut values = (picked * w_y.clone()).neg();
            if eps > 0.0 {
                let all = match &weights {
                    Some(w) => ls * w.clone().reshape([1, c, 1]),
                    None => ls,
                };
                let smooth = all.sum_dim(1).reshape([b, n]).neg() * counted;
                values = values.mul_scalar(1.0 - eps) + smooth.mul_scalar(eps / c as f64);
            }
            (values, w_y.sum())
        } else {
            let g = prepared.dense_target();
            let t = if eps > 0.0 {
                g.mul_scalar(1.0 - eps).add_scalar(eps / c as f64)
            } else {
                g
            };
            let mut terms = ls * t;
            if let Some(w) = &weights {
                terms = terms * w.clone().reshape([1, c, 1]);
            }
            let values = terms.sum_dim(1).reshape([b, n]).neg() * counted.clone();
            (values, counted.sum())
        }
    }
}
