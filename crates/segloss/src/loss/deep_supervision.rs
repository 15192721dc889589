//! Deep supervision: one loss over the outputs of several decoder resolutions (MONAI's
//! `DeepSupervisionLoss`; nnU-Net's `DeepSupervisionWrapper` weights).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use crate::error::{Check, ConfigError};
use crate::input::Target;

const NAME: &str = "DeepSupervisionLoss";

/// How the levels of a [`DeepSupervisionLoss`] are weighted, level 0 being the full resolution.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum DeepSupervisionWeighting {
    /// `1` for every level (MONAI's `"same"`).
    Same,
    /// `max(0.5^l, 0.0625)`: 1, 0.5, 0.25, 0.125, 0.0625, 0.0625, ... (MONAI's `"exp"`, its
    /// default).
    Exp,
    /// 1 for level 0, 0.5 for every other (MONAI's `"two"`).
    Two,
    /// nnU-Net v2's: `1 / 2^l`, the lowest resolution's weight set to 0, then normalised to sum
    /// to 1 (with one level: 1; with two: 1, 0).
    NnUnet,
    /// `1 / 2^l` normalised to sum to 1, every level kept (nnU-Net's rule without zeroing the
    /// lowest resolution: with two levels 2/3, 1/3).
    Normalized,
}

/// Configuration of a [`DeepSupervisionLoss`]; MONAI's `DeepSupervisionLoss` options (its
/// inner `loss` is passed to [`DeepSupervisionLoss::forward`]).
#[derive(Config, Debug)]
pub struct DeepSupervisionLossConfig {
    /// The weighting rule, used when `weights` is absent or shorter than the number of levels.
    #[config(default = "DeepSupervisionWeighting::Exp")]
    pub weight_mode: DeepSupervisionWeighting,
    /// Explicit weights per level (MONAI's `weights`): used when at least as many as the
    /// levels (the first ones), each finite and `>= 0`.
    pub weights: Option<Vec<f32>>,
}

impl DeepSupervisionLossConfig {
    /// Checks every option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = Check { loss: NAME };
        match &self.weights {
            Some(w) => c.weights("weights", w),
            None => Ok(()),
        }
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<DeepSupervisionLoss, ConfigError> {
        self.validate()?;
        Ok(DeepSupervisionLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> DeepSupervisionLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A loss over the predictions of several decoder levels (Lee et al. 2015, "Deeply-Supervised
/// Nets"; as used by nnU-Net, Isensee et al. 2021):
///
/// ```text
/// loss = sum_l w_l * inner(prediction_l, target resampled to level l's spatial shape)
/// ```
///
/// Level 0 is the full resolution (the target's spatial shape); each next level halves (floor
/// or ceiling) or keeps each spatial axis of the one before, and halves at least one. The
/// target (label map or dense, with its voxel mask) is resampled by nearest-neighbour sampling
/// as MONAI does it ([`Target::resized_nearest`]); weights `w_l` come from
/// [`DeepSupervisionWeighting`] or the explicit `weights`. The value is the weighted sum of the
/// inner loss's `[1]` values; gradients flow to every level's prediction. Empty classes behave
/// at each level as the inner loss defines (a class can vanish from a coarse level's target).
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use segloss::{Activation, DeepSupervisionLossConfig, DeepSupervisionWeighting, DiceLossConfig};
///
/// let device = Device::flex();
/// let full = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
/// let half = Tensor::<4>::random([2, 3, 4, 4], Distribution::Normal(0.0, 1.0), &device);
/// let labels = Tensor::<4, Int>::random([2, 1, 8, 8], Distribution::Uniform(0.0, 3.0), &device);
/// let dice = DiceLossConfig::new(Activation::Softmax).init();
/// let ds = DeepSupervisionLossConfig::new()
///     .with_weight_mode(DeepSupervisionWeighting::NnUnet)
///     .init();
/// assert_eq!(ds.weights(2), vec![1.0, 0.0]); // nnU-Net: the lowest resolution weighs 0
/// assert_eq!(ds.weights(3), vec![2.0 / 3.0, 1.0 / 3.0, 0.0]);
/// let loss = ds.forward(vec![full, half], labels, |p, t| dice.forward(p, t));
/// assert_eq!(loss.dims(), [1]);
/// ```
#[derive(Module, Debug)]
pub struct DeepSupervisionLoss {
    #[module(skip)]
    config: DeepSupervisionLossConfig,
}

impl DeepSupervisionLoss {
    /// The configuration this loss was built from.
    pub fn config(&self) -> &DeepSupervisionLossConfig {
        &self.config
    }

    /// The weights of `levels` levels (at least one), as MONAI's `get_weights` (or nnU-Net's
    /// rule for [`DeepSupervisionWeighting::NnUnet`]).
    pub fn weights(&self, levels: usize) -> Vec<f32> {
        let levels = levels.max(1);
        if let Some(w) = self.config.weights.as_ref().filter(|w| w.len() >= levels) {
            return w[..levels].to_vec();
        }
        match self.config.weight_mode {
            DeepSupervisionWeighting::Same => vec![1.0; levels],
            DeepSupervisionWeighting::Exp => (0..levels)
                .map(|l| 0.5f32.powi(l as i32).max(0.0625))
                .collect(),
            DeepSupervisionWeighting::Two => (0..levels)
                .map(|l| if l == 0 { 1.0 } else { 0.5 })
                .collect(),
            DeepSupervisionWeighting::NnUnet | DeepSupervisionWeighting::Normalized => {
                let mut w: Vec<f64> = (0..levels).map(|l| 0.5f64.powi(l as i32)).collect();
                if levels > 1 && self.config.weight_mode == DeepSupervisionWeighting::NnUnet {
                    w[levels - 1] = 0.0;
                }
                let total: f64 = w.iter().sum();
                w.iter().map(|v| (v / total) as f32).collect()
            }
        }
    }

    /// The weighted sum over levels of `loss(prediction_l, target_l)`, shape `[1]`;
    /// `predictions[0]` `[B, C, spatial...]` is the full resolution, which the target's spatial
    /// shape must match (the inner loss checks the rest of the target's shape). A level of
    /// weight 0 is not computed.
    ///
    /// # Panics
    /// With no prediction, when the levels' batch or channel counts differ, when a level does
    /// not halve (or keep) each spatial axis of the one before and halve at least one, when
    /// the target's trailing axes are not level 0's spatial shape, or (from the inner loss) on
    /// anything it refuses.
    pub fn forward<const D: usize>(
        &self,
        predictions: Vec<Tensor<D>>,
        target: impl Into<Target>,
        loss: impl Fn(Tensor<D>, Target) -> Tensor<1>,
    ) -> Tensor<1> {
        let target = target.into();
        let shapes: Vec<Vec<usize>> = predictions.iter().map(|p| p.dims().to_vec()).collect();
        check_levels(&shapes, target.shape());
        let weights = self.weights(predictions.len());
        let mut total: Option<Tensor<1>> = None;
        for (l, (prediction, w)) in predictions.into_iter().zip(weights).enumerate() {
            if w == 0.0 {
                continue;
            }
            let t = if l == 0 {
                target.clone()
            } else {
                target.resized_nearest(&shapes[l][2..])
            };
            let term = loss(prediction, t).mul_scalar(w);
            total = Some(match total {
                Some(acc) => acc + term,
                None => term,
            });
        }
        total.expect("level 0 has a weight > 0 or another level does")
    }
}

/// Checks the levels' shapes against each other and the target (see
/// [`DeepSupervisionLoss::forward`]).
fn check_levels(shapes: &[Vec<usize>], target: &[usize]) {
    assert!(
        !shapes.is_empty(),
        "{NAME}: no prediction given (a list of one per decoder level, full resolution first)"
    );
    let first = &shapes[0];
    assert!(
        first.len() >= 3,
        "{NAME}: level 0 must be [batch, classes, spatial...], got shape {first:?}"
    );
    let spatial = &first[2..];
    assert!(
        target.len() > spatial.len() && target[target.len() - spatial.len()..] == *spatial,
        "{NAME}: the target's shape {target:?} does not end with level 0's spatial shape {spatial:?} (level 0 is the full resolution)"
    );
    for l in 1..shapes.len() {
        let (prev, cur) = (&shapes[l - 1], &shapes[l]);
        assert!(
            cur[..2] == prev[..2],
            "{NAME}: level {l} has shape {cur:?}, level {} {prev:?}: every level needs the same batch and channels",
            l - 1
        );
        let axis_ok = |(&p, &c): (&usize, &usize)| c == p || c == p / 2 || c == p.div_ceil(2);
        let halves = prev[2..].iter().zip(&cur[2..]).any(|(&p, &c)| c < p);
        assert!(
            prev[2..].iter().zip(&cur[2..]).all(axis_ok) && halves,
            "{NAME}: level {l}'s spatial shape {:?} does not halve level {}'s {:?}: each axis must be halved (rounded down or up) or kept, and at least one halved",
            &cur[2..],
            l - 1,
            &prev[2..]
        );
    }
}
