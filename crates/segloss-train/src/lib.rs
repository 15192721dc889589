//! Training 3D segmentation networks with segloss's losses.
//!
//! - [`data`]: a built-in procedural dataset of 3D volumes with classes of very different sizes
//!   (a large blob, medium shapes, small spheres of a few voxels) and noisy intensities,
//!   generated deterministically from a seed: no download needed.
//! - [`unet`]: a configurable 3D U-Net (Burn `Conv3d` / `ConvTranspose3d`, instance norm,
//!   strided convolutions for downsampling).
#![warn(missing_docs)]

pub mod data;
pub mod unet;
pub mod losses;
pub mod train;
pub mod run;
