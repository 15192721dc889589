//! Generalized Wasserstein Dice loss (Fidon et al. 2017).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};

use super::reduction::LossReduction;
use crate::error::{Check, ConfigError};
use crate::input::{PrepareOptions, Prepared, Target, prepare};
use crate::kernel::choice::{Kernel, current_kernel};
use crate::kernel::fused;

const NAME: &str = "GeneralizedWassersteinDiceLoss";

/// How the Generalized Wasserstein Dice loss weights the classes of the true-positive term.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum WassersteinWeighting {
    /// As in the paper: `alpha_0 = 0` for the background, 1 for every other class.
    Default,
    /// Generalized-Dice-like: `alpha_k = 1 / (G_k + 1)` with `G_k` the class's voxel count per sample.
    Gdl,
}

/// Configuration of a [`GeneralizedWassersteinDiceLoss`]; MONAI's `GeneralizedWassersteinDiceLoss`.
#[derive(Config, Debug)]
pub struct GeneralizedWassersteinDiceLossConfig {
    /// The `C x C` distance between classes, row-major, non-negative, zero on the diagonal, not
    /// all zero. It is divided by its largest entry (MONAI), so only ratios matter.
    pub dist_matrix: Vec<Vec<f32>>,
    /// The class weighting of the true positives.
    #[config(default = "WassersteinWeighting::Default")]
    pub weighting_mode: WassersteinWeighting,
    /// Reduction used by `forward`.
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// Added to the numerator, `>= 0`.
    #[config(default = 1e-5)]
    pub smooth_nr: f64,
    /// Added to the denominator (MONAI `smooth_dr`), `>= 0`. With 0 (accepted, as MONAI does) the
    /// denominator `2 TP + total Wasserstein error` of a sample is 0 only when both terms are: no
    /// true-positive weight (e.g. every voxel background with the default weighting) and a
    /// prediction exactly equal to the labels, which a softmax reaches in float32 only for
    /// extreme logits; that sample's loss is then NaN (`smooth_nr = 0`) or -inf, as in MONAI 1.6.1.
    #[config(default = 1e-5)]
    pub smooth_dr: f64,
    /// Label value whose voxels count for nothing.
    pub ignore_index: Option<i64>,
    /// Check that label values lie in `[0, C)` (one reduction and one device sync per call).
    /// Unchecked, a label outside that range matches no class (its voxel's target is all zero).
    #[config(default = true)]
    pub validate_labels: bool,
}

impl GeneralizedWassersteinDiceLossConfig {
    /// Checks every option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = Check { loss: NAME };
        let m = &self.dist_matrix;
        let k = m.len();
        c.rule(
            k >= 2,
            "dist_matrix",
            "a C x C matrix with C >= 2",
            format!("{k} rows"),
        )?;
        for (i, row) in m.iter().enumerate() {
            c.rule(
                row.len() == k,
                "dist_matrix",
                "square (C x C)",
                format!("row {i} has {} entries for {k} rows", row.len()),
            )?;
            for (j, &v) in row.iter().enumerate() {
                c.rule(
                    v.is_finite() && v >= 0.0,
                    "dist_matrix",
                    "finite and >= 0",
                    format!("{v} at ({i}, {j})"),
                )?;
            }
            c.rule(
                row[i] == 0.0,
                "dist_matrix",
                "0 on the diagonal (a class is at distance 0 from itself)",
                format!("{} at ({i}, {i})", row[i]),
            )?;
        }
        let max = m.iter().flatten().fold(0.0f32, |a, &b| a.max(b));
        c.rule(
            max > 0.0,
            "dist_matrix",
            "not all zero",
            "an all-zero matrix".into(),
        )?;
        c.non_negative("smooth_nr", self.smooth_nr)?;
        c.non_negative("smooth_dr", self.smooth_dr)
    }

    /// Builds the loss, or returns the first invalid option.
    pub fn try_init(&self) -> Result<GeneralizedWassersteinDiceLoss, ConfigError> {
        self.validate()?;
        Ok(GeneralizedWassersteinDiceLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// With the [`ConfigError`] message when an option is invalid.
    pub fn init(&self) -> GeneralizedWassersteinDiceLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Generalized Wasserstein Dice loss per sample. With `p = softmax(x)`, the normalised distance
/// matrix `M` and the Wasserstein error of a voxel `W_n = sum_c M[y_n, c] p_c,n`:
///
/// ```text
/// tp  = sum_n alpha_{y_n} (1 - W_n)
/// den = 2 tp + sum_n W_n              (Default)
///     = sum_n alpha_{y_n} (2 - W_n)   (Gdl)
/// loss = 1 - (2 tp + s_nr) / (den + s_dr)
/// ```
///
/// Computed from the soft confusion matrix `S[k, c] = sum_n m_n g_k,n p_c,n` (`g` the one-hot or
/// dense target, `m` the voxel mask: a user mask times the `ignore_index` mask) and the target
/// volumes `V_k = sum_n m_n g_k,n`: the voxels of class `k` have the total error
/// `E_k = sum_c M[k, c] S[k, c]`, so `tp = sum_k alpha_k (V_k - E_k)`, and the rest is arithmetic
/// on `[B, C]` tensors. On Flex and on the CubeCL backends (wgpu, CUDA), `S` and `V` come from one
/// fused operation ([`FusedConfusionOps`](crate::kernel::fused::FusedConfusionOps), CPU kernel
/// in [`kernel::cpu::confusion`](crate::kernel::cpu::confusion), CubeCL kernel in `kernel::cube::confusion`):
/// one pass over the logits with the softmax applied on the fly and the one-hot read from the
/// label map, and a hand-written backward that writes the gradient in one more pass, so nothing of
/// the prediction's size is allocated but the gradient. On the other backends, and under [`with_kernel`](crate::with_kernel)`(Kernel::Composed, ..)`,
/// from Burn operations (the softmax, the dense target, one batched matrix product); no
/// `[B, C, C, N]` tensor is built on either path. Fidon et al., "Generalised Wasserstein Dice Score
/// for Imbalanced Multi-class Segmentation using Holistic Convolutional Networks", BrainLes 2017;
/// MONAI `GeneralizedWassersteinDiceLoss` 1.6.1. A dense (one-hot or soft) target is also
/// accepted and gives the expected error under the target distribution.
///
/// **Shapes**: logits `[B, C, spatial...]` (softmax applied inside), label map `[B, spatial...]` or
/// `[B, 1, spatial...]`; `forward` `[1]`; `forward_no_reduction` `[B, 1]`.
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use segloss::GeneralizedWassersteinDiceLossConfig;
///
/// let device = Device::flex();
/// let m = vec![vec![0.0, 1.0, 1.0], vec![1.0, 0.0, 0.5], vec![1.0, 0.5, 0.0]];
/// let loss = GeneralizedWassersteinDiceLossConfig::new(m).init();
/// let logits = Tensor::<4>::random([2, 3, 6, 6], Distribution::Normal(0.0, 1.0), &device);
/// let labels = Tensor::<3, Int>::zeros([2, 6, 6], &device);
/// let v = loss.forward(logits, labels).into_scalar::<f32>();
/// assert!((0.0..=1.0).contains(&v));
/// ```
///
/// # Panics
/// On mismatched shapes, labels out of range, or a prediction whose channel count is not the
/// distance matrix's size.
#[derive(Module, Debug)]
pub struct GeneralizedWassersteinDiceLoss {
    #[module(skip)]
    config: GeneralizedWassersteinDiceLossConfig,
}

impl GeneralizedWassersteinDiceLoss {
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

    /// The loss per sample, `[B, 1]`.
    pub fn forward_no_reduction<const D: usize>(
        &self,
        prediction: Tensor<D>,
        target: impl Into<Target>,
    ) -> Tensor<2> {
        let cfg = &self.config;
        let prepared = prepare(
            NAME,
            prediction,
            target.into(),
            PrepareOptions {
                ignore_index: cfg.ignore_index,
                validate_labels: cfg.validate_labels,
            },
        );
        let [b, c] = [prepared.batch, prepared.channels];
        let k = cfg.dist_matrix.len();
        assert!(
            c == k,
            "{NAME}: the prediction has {c} channels but `dist_matrix` is {k} x {k} (shape {:?})",
            prepared.prediction_shape()
        );
        let device = prepared.logits.device();
        let max = cfg
            .dist_matrix
            .iter()
            .flatten()
            .fold(0.0f32, |a, &v| a.max(v));
        let flat: Vec<f32> = cfg.dist_matrix.iter().flatten().map(|v| v / max).collect();
        let m = Tensor::<1>::from_floats(flat.as_slice(), &device).reshape([1, c, c]);

        // The soft confusion matrix [B, C(true), C(pred)] and the target volume [B, C].
        let (confusion, volume) = if fusable(&device) {
            let out = fused::confusion(
                prepared.logits.clone(),
                prepared.target.clone(),
                prepared.mask.clone(),
            );
            (
                out.clone().narrow(2, 0, c),
                out.narrow(2, c, 1).reshape([b, c]),
            )
        } else {
            composed_confusion(&prepared)
        };
        let error = (confusion * m).sum_dim(2).reshape([b, c]); // sum over voxels of class k of W_n
        let alpha = match cfg.weighting_mode {
            WassersteinWeighting::Default => {
                let mut a = vec![1.0f32; c];
                a[0] = 0.0;
                Tensor::<1>::from_floats(a.as_slice(), &device).reshape([1, c])
            }
            WassersteinWeighting::Gdl => volume.clone().add_scalar(1.0).recip(),
        };
        let tp = (alpha.clone() * (volume.clone() - error.clone())).sum_dim(1);
        let den = match cfg.weighting_mode {
            WassersteinWeighting::Default => tp.clone().mul_scalar(2.0) + error.sum_dim(1),
            WassersteinWeighting::Gdl => (alpha * (volume.mul_scalar(2.0) - error)).sum_dim(1),
        };
        let num = tp.mul_scalar(2.0).add_scalar(cfg.smooth_nr);
        num.div(den.add_scalar(cfg.smooth_dr)).neg().add_scalar(1.0)
    }
}

/// Whether the fused confusion matrix runs on `device` with the kernel chosen now.
fn fusable(device: &Device) -> bool {
    current_kernel() != Kernel::Composed && fused::supports_confusion(device)
}

/// The soft confusion matrix `[B, C, C]` and the target volume `[B, C]` from Burn operations
/// (every backend; the reference for the fused operation): the softmax and the masked dense
/// target `g` materialised, then `g p^T`.
fn composed_confusion(prepared: &Prepared) -> (Tensor<3>, Tensor<2>) {
    let [b, c, n] = [prepared.batch, prepared.channels, prepared.voxels];
    let p = softmax(prepared.logits.clone(), 1);
    let mut g = prepared.dense_target();
    if let Some(mask) = &prepared.mask {
        g = g * mask.clone().reshape([b, 1, n]);
    }
    let volume = g.clone().sum_dim(2).reshape([b, c]);
    // On the CubeCL backends one predicted class at a time, with element-wise products and sums:
    // Burn's CUDA backend may run an f32 matmul on TF32 tensor cores, which moved this loss by up
    // to 5.5e-5 on an H200. Elsewhere a matmul: the element-wise form took 2.7x the time and
    // 2.3x the memory on Flex (forward + backward at 3 x 9 x 64^3, 665 vs 246 ms, 332 vs 143 MiB).
    let confusion = if crate::backend::is_cube(&p.device()) {
        Tensor::cat(
            (0..c)
                .map(|l| (g.clone() * p.clone().narrow(1, l, 1)).sum_dim(2))
                .collect(),
            2,
        )
    } else {
        g.matmul(p.swap_dims(1, 2))
    };
    (confusion, volume)
}
