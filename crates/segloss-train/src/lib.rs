//! Training 3D segmentation networks with segloss's losses.
//!
//! - [`data`]: a built-in procedural dataset of 3D volumes with classes of very different sizes
//!   (a large blob, medium shapes, small spheres of a few voxels) and noisy intensities,
//!   generated deterministically from a seed: no download needed.
//! - [`unet`]: a configurable 3D U-Net (Burn `Conv3d` / `ConvTranspose3d`, instance norm,
//!   strided convolutions for downsampling).
//! - [`dataset`]: where a run's data comes from (the built-in volumes, or folders of NIfTI images
//!   and label maps read by [`segloss_metrics::nifti`]), training batches and validation volumes.
//! - [`losses`], [`train`], [`run`]: the named losses, the optimisation step and a whole run
//!   (validation Dice, `metrics.csv`, checkpoints, `model.json`), used by `segloss train`.
//! - [`predict`]: label maps of whole volumes (NIfTI in and out, or the built-in validation set).
//! - [`compare`]: one run per loss and a report with plots (`segloss compare`).
//! - [`device`]: `cpu`, `wgpu`, `cuda` devices by name (GPU backends behind features).
//!
//! ```
//! use burn::tensor::Device;
//! use segloss_train::data::{Split, SyntheticConfig};
//! use segloss_train::unet::UNet3dConfig;
//!
//! let data = SyntheticConfig { size: 16, ..Default::default() };
//! let device = Device::flex();
//! let (images, labels) = data.batch(Split::Train, &[0, 1], &device); // [2, 1, 16, 16, 16] each
//! let net = UNet3dConfig::new(data.classes).with_base_width(4).with_depth(2).init(&device);
//! assert_eq!(net.forward(images).dims(), [2, 4, 16, 16, 16]);
//! assert_eq!(labels.dims(), [2, 1, 16, 16, 16]);
//! ```
#![warn(missing_docs)]

pub mod compare;
pub mod data;
pub mod dataset;
pub mod device;
pub mod losses;
pub mod model;
pub mod predict;
pub mod run;
pub mod train;
pub mod unet;
