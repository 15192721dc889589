//! Hausdorff distance-transform losses (Karimi and Salcudean 2019): [`HausdorffDTLoss`] and its
//! logarithm [`LogHausdorffDTLoss`].

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Tensor, TensorData};

use super::distance_map::{check_spatial_rank, per_mask, read_masks};
use super::prepare_whole_image;
use super::reduction::LossReduction;
use crate::error::{Check, ConfigError};
use crate::input::{Activation, Target};

const NAME: &str = "HausdorffDTLoss";
const LOG_NAME: &str = "LogHausdorffDTLoss";

/// Configuration of a [`HausdorffDTLoss`]; MONAI's `HausdorffDTLoss` options (MONAI's defaults,
/// including `include_background = false`).
#[derive(Config, Debug)]
pub struct HausdorffDTLossConfig {
    /// Activation applied to the prediction before the loss and before its threshold at 0.5
    /// (MONAI `softmax` / `sigmoid`; [`Activation::None`] for probabilities).
    pub activation: Activation,
    /// Exponent of the distances, finite and `>= 0` (MONAI's default 2; Karimi and Salcudean
    /// use 2 as well). With 0 every voxel's weight is `0^0 + 0^0 = 2` (as in PyTorch, whose
    /// `0 ** 0` is 1), which makes the loss twice the mean squared error.
    #[config(default = 2.0)]
    pub alpha: f64,
    /// Keep class 0. MONAI's default for this loss is `false` (channel 0 dropped after the
    /// activation); a single-channel prediction needs `true` (see [`HausdorffDTLoss`]'s panics).
    #[config(default = false)]
    pub include_background: bool,
    /// Reduction used by `forward`.
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// Average over the batch and the voxels together, one value per class; otherwise one value
    /// per (sample, class). The distance maps are per sample either way (as in MONAI).
    #[config(default = false)]
    pub batch: bool,
    /// Check that label maps hold class indices in `[0, C)` (one reduction and one device sync
    /// per call). Unchecked, a label outside that range matches no class.
    #[config(default = true)]
    pub validate_labels: bool,
}

impl HausdorffDTLossConfig {
    /// Checks every option: `alpha` finite and `>= 0`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_alpha(NAME, self.alpha)
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<HausdorffDTLoss, ConfigError> {
        self.validate()?;
        Ok(HausdorffDTLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> HausdorffDTLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Configuration of a [`LogHausdorffDTLoss`]; MONAI's `LogHausdorffDTLoss` options, the same as
/// [`HausdorffDTLossConfig`]'s (see there for each option's meaning).
#[derive(Config, Debug)]
pub struct LogHausdorffDTLossConfig {
    /// Activation applied to the prediction (as [`HausdorffDTLossConfig::activation`]).
    pub activation: Activation,
    /// Exponent of the distances, finite and `>= 0` (as [`HausdorffDTLossConfig::alpha`]).
    #[config(default = 2.0)]
    pub alpha: f64,
    /// Keep class 0; MONAI's default `false` (as [`HausdorffDTLossConfig::include_background`]).
    #[config(default = false)]
    pub include_background: bool,
    /// Reduction used by `forward`, applied before the logarithm.
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// One value per class over the whole batch (as [`HausdorffDTLossConfig::batch`]).
    #[config(default = false)]
    pub batch: bool,
    /// Check that label maps hold class indices in `[0, C)` (as
    /// [`HausdorffDTLossConfig::validate_labels`]).
    #[config(default = true)]
    pub validate_labels: bool,
}

impl LogHausdorffDTLossConfig {
    /// Checks every option: `alpha` finite and `>= 0`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_alpha(LOG_NAME, self.alpha)
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<LogHausdorffDTLoss, ConfigError> {
        self.validate()?;
        Ok(LogHausdorffDTLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> LogHausdorffDTLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The options of the Hausdorff term, which the logarithm is taken of.
    fn hausdorff(&self) -> HausdorffDTLossConfig {
        HausdorffDTLossConfig {
            activation: self.activation,
            alpha: self.alpha,
            include_background: self.include_background,
            reduction: self.reduction,
            batch: self.batch,
            validate_labels: self.validate_labels,
        }
    }
}

/// `alpha` is finite and `>= 0`: a negative exponent makes the zero distances of voxels without
/// a distance (maps without an interface) infinite, and NaN or infinity has no meaning.
fn validate_alpha(loss: &'static str, alpha: f64) -> Result<(), ConfigError> {
    Check { loss }.non_negative("alpha", alpha)
}

/// Hausdorff distance-transform loss per (sample, class):
///
/// ```text
/// HD = mean over voxels of (p - g)^2 (d_p^alpha + d_g^alpha)
/// ```
///
/// with `p` the prediction after the activation, `g` the target, and `d_p`, `d_g` the distance
/// maps of the prediction thresholded at `p > 0.5` and of the target thresholded at `g > 0.5`:
/// each voxel's Euclidean distance (in voxels) to the nearest voxel on the other side of the
/// mask's boundary (a foreground voxel's distance to the background, a background voxel's to the
/// foreground; MONAI's `distance_transform_edt(fg) + distance_transform_edt(~fg)`). Errors far
/// from either boundary weigh most, which is what brings the Hausdorff distance down. Karimi and
/// Salcudean, "Reducing the Hausdorff Distance in Medical Image Segmentation with Convolutional
/// Neural Networks", IEEE TMI 39(2), 2020 (arXiv 2019); MONAI `HausdorffDTLoss` 1.6.1.
///
/// The distance maps are constants (computed on the CPU with segloss's exact Euclidean distance
/// transform from masks read back once per forward, then uploaded; MONAI computes them under
/// `no_grad`): the gradient flows through `(p - g)^2` only. One forward costs one device
/// synchronisation and four distance transforms per (sample, class).
///
/// **Range**: `>= 0`; 0 for a perfect prediction (`p = g`).
/// **Empty classes**: a map that is all background or all foreground (after its threshold) has
/// no boundary and gets no distances (0, as in MONAI), so a class absent from the target and
/// from the thresholded prediction scores 0 (with `alpha > 0`) whatever its soft probabilities,
/// with a zero gradient; absent from one of the two, the other map's distances weigh the error.
/// **Shapes**: prediction `[B, C, H, W]` or `[B, C, H, W, D]` (2D or 3D, as in MONAI), target a
/// label map or dense ([`Target`]); `forward` `[1]`;
/// [`forward_no_reduction`](HausdorffDTLoss::forward_no_reduction) `[B, C']` (`[1, C']` with
/// `batch`), `C' = C` or `C - 1` without background (MONAI's `[B, C', 1, 1(, 1)]`).
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use segloss::{Activation, HausdorffDTLossConfig};
///
/// let device = Device::flex();
/// let logits = Tensor::<4>::random([2, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
/// let labels = Tensor::<4, Int>::random([2, 1, 16, 16], Distribution::Uniform(0.0, 3.0), &device);
/// let loss = HausdorffDTLossConfig::new(Activation::Softmax).init();
/// let value = loss.forward(logits, labels).into_scalar::<f32>();
/// assert!(value >= 0.0);
/// ```
///
/// # Panics
/// On a prediction that is not 2D or 3D (`[B, C, H, W]` or `[B, C, H, W, D]`), mismatched
/// shapes, labels out of range, a voxel mask ([`Target::with_mask`]: this loss takes none, as in
/// MONAI: which voxels the distance transform would see is undefined), softmax over one channel,
/// or `include_background = false` (the default) with a single-channel prediction (MONAI warns
/// and keeps the channel; set `include_background` to `true` for a binary prediction).
#[derive(Module, Debug)]
pub struct HausdorffDTLoss {
    #[module(skip)]
    config: HausdorffDTLossConfig,
}

impl HausdorffDTLoss {
    /// The configuration this loss was built from.
    pub fn config(&self) -> &HausdorffDTLossConfig {
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

    /// The loss per (sample, class) `[B, C']`, or per class `[1, C']` with `batch`.
    pub fn forward_no_reduction<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<2> {
        per_class(NAME, &self.config, prediction, target.into())
    }
}

/// The logarithm of the Hausdorff distance-transform loss, `log(1 + HD)` with `HD` the
/// [`HausdorffDTLoss`] after its reduction (or per (sample, class) in
/// [`forward_no_reduction`](LogHausdorffDTLoss::forward_no_reduction)): MONAI
/// `LogHausdorffDTLoss` 1.6.1, which damps the large values of the squared distances. Computed as
/// `log1p`, exact for small losses where `log(1 + x)` rounds.
///
/// Everything else (distance maps, thresholds, empty classes, shapes, panics) is the
/// [`HausdorffDTLoss`]'s. **Range**: `>= 0`; 0 for a perfect prediction.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use segloss::{Activation, LogHausdorffDTLossConfig};
///
/// let device = Device::flex();
/// let logits = Tensor::<5>::random([1, 2, 8, 8, 8], Distribution::Normal(0.0, 1.0), &device);
/// let target = Tensor::<5>::random([1, 2, 8, 8, 8], Distribution::Bernoulli(0.3), &device);
/// let loss = LogHausdorffDTLossConfig::new(Activation::Sigmoid)
///     .with_include_background(true)
///     .init();
/// assert_eq!(loss.forward_no_reduction(logits.clone(), target.clone()).dims(), [1, 2]);
/// assert!(loss.forward(logits, target).into_scalar::<f32>() >= 0.0);
/// ```
///
/// # Panics
/// As [`HausdorffDTLoss`].
#[derive(Module, Debug)]
pub struct LogHausdorffDTLoss {
    #[module(skip)]
    config: LogHausdorffDTLossConfig,
}

impl LogHausdorffDTLoss {
    /// The configuration this loss was built from.
    pub fn config(&self) -> &LogHausdorffDTLossConfig {
        &self.config
    }

    /// The reduced loss `log(1 + reduction(HD))`, shape `[1]`.
    pub fn forward<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<1> {
        let hd = per_class(
            LOG_NAME,
            &self.config.hausdorff(),
            prediction,
            target.into(),
        );
        self.config.reduction.apply(hd).log1p()
    }

    /// `log(1 + HD)` per (sample, class) `[B, C']`, or per class `[1, C']` with `batch`.
    pub fn forward_no_reduction<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<2> {
        per_class(
            LOG_NAME,
            &self.config.hausdorff(),
            prediction,
            target.into(),
        )
        .log1p()
    }
}

/// The Hausdorff DT loss per (sample, class) `[B, C']` (`[1, C']` with `batch`), for the loss
/// named `loss` (in panic messages).
fn per_class<const D: usize>(
    loss: &'static str,
    cfg: &HausdorffDTLossConfig,
    prediction: Tensor<D>,
    target: Target,
) -> Tensor<2> {
    check_spatial_rank(loss, &prediction.dims());
    let (prepared, p, g, k) = prepare_whole_image(
        loss,
        prediction,
        target,
        cfg.activation,
        cfg.include_background,
        cfg.validate_labels,
        "which voxels the distance transform would see is undefined",
    );
    let [b, n] = [prepared.batch, prepared.voxels];

    // The prediction's and the target's masks of each sample side by side, [B, 2k, N], read
    // back in one transfer.
    let masks = read_masks(Tensor::cat(
        vec![p.clone().greater_elem(0.5), g.clone().greater_elem(0.5)],
        1,
    ));
    let alpha = cfg.alpha;
    // d^alpha per map; a map without a boundary has distances 0, so 0^alpha (1 when alpha = 0,
    // as PyTorch's `0 ** 0`, else 0), exactly what MONAI's zero-filled map gives.
    let powered = per_mask(
        &masks,
        n,
        &prepared.spatial,
        |_, distances, out| match distances {
            Some(d) => {
                for (o, d) in out.iter_mut().zip(d) {
                    *o = d.powf(alpha) as f32;
                }
            }
            None => out.fill(0f64.powf(alpha) as f32),
        },
    );
    // weight = d_p^alpha + d_g^alpha: sample s's prediction maps are rows s * 2k .. s * 2k + k,
    // its target maps the k rows after them.
    let mut weight = Vec::with_capacity(b * k * n);
    for sample in powered.chunks(2 * k * n) {
        let (pred, targ) = sample.split_at(k * n);
        weight.extend(pred.iter().zip(targ).map(|(a, b)| a + b));
    }
    let device = p.device();
    let weight = Tensor::<3>::from_data(TensorData::new(weight, [b, k, n]), &device);

    let diff = p - g;
    let weighted = diff.clone() * diff * weight;
    if cfg.batch {
        weighted
            .sum_dim(2)
            .sum_dim(0)
            .reshape([1, k])
            .div_scalar((b * n) as f64)
    } else {
        weighted.mean_dim(2).reshape([b, k])
    }
}
