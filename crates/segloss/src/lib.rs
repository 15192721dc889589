//! # segloss
//!
//! Dice-family segmentation losses for [Burn](https://burn.dev) 0.22 that match MONAI, are bounded
//! where the maths says they are, and drop into a Burn training loop the way `burn::nn::loss` does.
//!
//! Every Dice-family loss is a small function of per-(sample, class) [overlap
//! statistics](OverlapStats): `I = sum p g`, `P = sum p`, `G = sum g` over the voxels. One
//! operation, [`overlap_stats`], computes them (activation, one-hot, masks and the ignore index
//! applied inside); the losses are a few lines of arithmetic on `[B, C]` tensors.
//!
//! | loss | MONAI name | paper |
//! |---|---|---|
//! | [`DiceLoss`] (Dice, V-Net squared, Jaccard, masked) | `DiceLoss`, `MaskedDiceLoss` | Milletari et al. 2016 |
//! | [`GeneralizedDiceLoss`] | `GeneralizedDiceLoss` | Sudre et al. 2017 |
//! | [`TverskyLoss`] | `TverskyLoss` | Salehi et al. 2017 |
//! | [`MccLoss`] | `MCCLoss` | Abhishek and Hamarneh 2021 |
//! | [`FocalLoss`] | `FocalLoss` | Lin et al. 2017 |
//! | [`CrossEntropyLoss`] | (PyTorch `CrossEntropyLoss`) | |
//! | [`DiceCELoss`], [`DiceFocalLoss`], [`GeneralizedDiceFocalLoss`] | same | |
//! | [`GeneralizedWassersteinDiceLoss`] | same | Fidon et al. 2017 |
//! | [`HausdorffDTLoss`], [`LogHausdorffDTLoss`] | same | Karimi and Salcudean 2019 |
//! | [`BoundaryLoss`] | `BoundaryLoss` | Kervadec et al. 2019 |
//! | [`SoftclDiceLoss`], [`SoftDiceclDiceLoss`] | same | Shit et al. 2021 |
//! | [`AsymmetricUnifiedFocalLoss`] (also multi-class, from logits) | same | Yeung et al. 2022 |
//!
//! Inputs: a prediction `[B, C, spatial...]` (2D, 3D, ...) and a [`Target`]: a label map
//! (`Tensor<D, Int>`, `[B, 1, spatial...]` or `[B, spatial...]`) or a dense one-hot /
//! multi-label / soft target (`Tensor<D>`, `[B, C, spatial...]`), optionally with a voxel mask.
//!
//! ## A training step
//!
//! ```
//! use burn::module::Module;
//! use burn::nn::conv::{Conv3d, Conv3dConfig};
//! use burn::nn::PaddingConfig3d;
//! use burn::optim::{AdamConfig, GradientsParams, Optimizer};
//! use burn::tensor::{Device, Distribution, Int, Tensor};
//! use segloss::{Activation, DiceLossConfig};
//!
//! let device = Device::flex().autodiff();
//! let mut model: Conv3d = Conv3dConfig::new([1, 3], [3, 3, 3])
//!     .with_padding(PaddingConfig3d::Same)
//!     .init(&device);
//! let mut optim = AdamConfig::new().init();
//! let loss_fn = DiceLossConfig::new(Activation::Softmax).with_include_background(false).init();
//!
//! let image = Tensor::<5>::random([2, 1, 8, 8, 8], Distribution::Normal(0.0, 1.0), &device);
//! let labels = Tensor::<5, Int>::random([2, 1, 8, 8, 8], Distribution::Uniform(0.0, 3.0), &device);
//!
//! let logits = model.forward(image);            // [2, 3, 8, 8, 8]
//! let loss = loss_fn.forward(logits, labels);   // [1], in [0, 1]
//! let grads = GradientsParams::from_grads(loss.backward(), &model);
//! model = optim.step(1e-3, model, grads);
//! # let _ = model.num_params();
//! ```
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod backend;
pub mod device;
pub mod error;
pub mod input;
pub mod kernel;
pub mod loss;
pub mod stats;

/// Segmentation metrics (Dice, IoU, Hausdorff, HD95, ASSD, NSD, ...): the crate
/// [`segloss_metrics`], which does not need Burn, re-exported here with its feature `burn` on so
/// that label volumes also come from Burn integer tensors:
///
/// ```
/// use burn::tensor::{Device, Int, Tensor, TensorData};
/// use segloss::metrics::LabelVolume;
/// let t = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1, 1, 2], [2, 2]), &Device::flex());
/// let v = LabelVolume::from_tensor(t, &[1.0, 1.0])?;
/// assert_eq!(v.labels(), &[0, 1, 1, 2]);
/// # Ok::<(), segloss::metrics::MetricsError>(())
/// ```
pub mod metrics {
    pub use segloss_metrics::*;
}

pub use error::ConfigError;
pub use input::{Activation, Target};
pub use kernel::{Kernel, overlap_stats, with_kernel};
pub use loss::boundary::{BoundaryLoss, BoundaryLossConfig};
pub use loss::cldice::{
    SoftDiceclDiceLoss, SoftDiceclDiceLossConfig, SoftclDiceLoss, SoftclDiceLossConfig,
};
pub use loss::compound::{
    DiceCELoss, DiceCELossConfig, DiceFocalLoss, DiceFocalLossConfig, GeneralizedDiceFocalLoss,
    GeneralizedDiceFocalLossConfig,
};
pub use loss::cross_entropy::{CrossEntropyLoss, CrossEntropyLossConfig};
pub use loss::deep_supervision::{
    DeepSupervisionLoss, DeepSupervisionLossConfig, DeepSupervisionWeighting,
};
pub use loss::dice::{DiceLoss, DiceLossConfig};
pub use loss::focal::{FocalLoss, FocalLossConfig};
pub use loss::generalized_dice::{GeneralizedDiceLoss, GeneralizedDiceLossConfig, WeightType};
pub use loss::hausdorff_dt::{
    HausdorffDTLoss, HausdorffDTLossConfig, LogHausdorffDTLoss, LogHausdorffDTLossConfig,
};
pub use loss::mcc::{MccLoss, MccLossConfig};
pub use loss::reduction::LossReduction;
pub use loss::tversky::{TverskyLoss, TverskyLossConfig};
pub use loss::unified_focal::{AsymmetricUnifiedFocalLoss, AsymmetricUnifiedFocalLossConfig};
pub use loss::wasserstein::{
    GeneralizedWassersteinDiceLoss, GeneralizedWassersteinDiceLossConfig, WassersteinWeighting,
};
pub use stats::{OverlapStats, StatsOptions};

/// The README's code blocks, compiled and run as doctests so they stay true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
