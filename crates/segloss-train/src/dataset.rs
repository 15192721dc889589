//! Where training data comes from: the built-in procedural volumes, or a folder of NIfTI images
//! with a folder of label maps.
//!
//! A [`DataSource`] (light: settings and paths) is loaded by [`DataSource::load`] into a
//! [`Dataset`], which hands out training batches `[B, 1, P, P, P]` and whole validation volumes.
//!
//! ## NIfTI folders
//! Every `.nii` / `.nii.gz` file of the image folder is a case; its label map is the file of the
//! same name in the label folder (the nnU-Net channel suffix `_0000` of an image name is also
//! accepted: `case_0000.nii.gz` pairs with `case.nii.gz`). Images are z-score normalised per
//! volume (mean 0, standard deviation 1 over the volume), as nnU-Net does for non-CT data. The
//! last `valid_fraction` of the cases (sorted by name, at least one) are kept apart for
//! validation. Training takes random `P^3` patches at the images' own resolution (no
//! resampling: spacing is kept); a third of them are centred on a random foreground voxel so that
//! small structures are seen often. Volumes smaller than a patch are padded with background.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use nifti::NiftiHeader;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::{Split, SyntheticConfig};
use segloss_metrics::files::{self, nifti_stem};
use segloss_metrics::nifti::{read_image, read_label_image};

/// Where the training data comes from (recorded in a run's `model.json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum DataSource {
    /// The built-in procedural dataset (no download).
    Synthetic {
        /// Its settings.
        config: SyntheticConfig,
        /// Training volumes: indices `0..train_volumes` of the training split.
        train_volumes: usize,
        /// Validation volumes: indices `0..valid_volumes` of the validation split.
        valid_volumes: usize,
    },
    /// A folder of images and a folder of label maps (see the module docs).
    Nifti {
        /// Folder of intensity images.
        images: PathBuf,
        /// Folder of label maps (same file names).
        labels: PathBuf,
        /// Fraction of the cases kept for validation (`0 < f < 1`; at least one case).
        valid_fraction: f64,
        /// Edge length of the cubic training patches, in voxels.
        patch: usize,
    },
}

impl Default for DataSource {
    fn default() -> Self {
        DataSource::Synthetic {
            config: SyntheticConfig::default(),
            train_volumes: 32,
            valid_volumes: 8,
        }
    }
}

/// One NIfTI case in memory.
#[derive(Clone)]
pub struct Case {
    /// The image's file name without extension.
    pub name: String,
    /// Normalised intensities, row-major `[z, y, x]`.
    pub image: Vec<f32>,
    /// Labels, same layout.
    pub labels: Vec<u8>,
    /// `[z, y, x]`.
    pub shape: [usize; 3],
    /// Indices of the foreground (label > 0) voxels, for foreground-centred patches.
    pub foreground: Vec<usize>,
    /// The image header (geometry of predictions written for this case).
    pub header: NiftiHeader,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case")
            .field("name", &self.name)
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

/// Loaded training data.
#[derive(Debug, Clone)]
pub enum Dataset {
    /// The procedural volumes, generated on demand.
    Synthetic {
        /// Settings.
        config: SyntheticConfig,
        /// Number of training volumes.
        train_volumes: usize,
        /// Number of validation volumes.
        valid_volumes: usize,
    },
    /// NIfTI cases in memory.
    Nifti {
        /// Training cases.
        train: Vec<Case>,
        /// Validation cases.
        valid: Vec<Case>,
        /// Number of classes (largest label + 1, at least 2).
        classes: usize,
        /// Patch edge length.
        patch: usize,
    },
}

/// A validation volume: image `[1, 1, D, H, W]` and its labels (row-major).
pub struct ValidVolume {
    /// Name (`valid-003` or the NIfTI case name).
    pub name: String,
    /// The image, on the requested device.
    pub image: Tensor<5>,
    /// Reference labels, `D * H * W` of them.
    pub labels: Vec<u8>,
}

impl DataSource {
    /// Loads the data (NIfTI files are read and checked here).
    ///
    /// # Errors
    /// Invalid settings; a missing or empty folder; an image without a label map; a file that
    /// cannot be read; an image and label map of different shapes; labels above 255; a single
    /// class. Messages name the file and both shapes where relevant.
    pub fn load(&self) -> Result<Dataset> {
        match self {
            DataSource::Synthetic {
                config,
                train_volumes,
                valid_volumes,
            } => {
                config.validate().map_err(anyhow::Error::msg)?;
                if *train_volumes == 0 || *valid_volumes == 0 {
                    bail!(
                        "synthetic data: the numbers of training and validation volumes must be at least 1"
                    );
                }
                Ok(Dataset::Synthetic {
                    config: config.clone(),
                    train_volumes: *train_volumes,
                    valid_volumes: *valid_volumes,
                })
            }
            DataSource::Nifti {
                images,
                labels,
                valid_fraction,
                patch,
            } => load_nifti(images, labels, *valid_fraction, *patch),
        }
    }
}

/// The NIfTI files of `dir` that are files (broken links left out), sorted; `what` names the flag.
fn nifti_files(dir: &Path, what: &str) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("{what}: {} is not a folder", dir.display());
    }
    let files: Vec<PathBuf> = files::nifti_files(dir)
        .with_context(|| what.to_string())?
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    if files.is_empty() {
        bail!("{what}: no .nii or .nii.gz file in {}", dir.display());
    }
    Ok(files)
}

fn load_nifti(images: &Path, labels: &Path, valid_fraction: f64, patch: usize) -> Result<Dataset> {
    if !(valid_fraction > 0.0 && valid_fraction < 1.0) {
        bail!("--valid-fraction must be in (0, 1), got {valid_fraction}");
    }
    if patch < 4 {
        bail!("the patch size must be at least 4 voxels, got {patch}");
    }
    let image_files = nifti_files(images, "--images")?;
    let label_files = nifti_files(labels, "--labels")?;
    if image_files.len() < 2 {
        bail!(
            "--images: {} holds one case; training needs at least two (one is kept for validation)",
            images.display()
        );
    }
    let mut cases = Vec::new();
    for path in &image_files {
        let name = nifti_stem(path).expect("a NIfTI name");
        let label_name = name.strip_suffix("_0000").unwrap_or(&name);
        let label_path = label_files
            .iter()
            .find(|p| {
                let stem = nifti_stem(p);
                stem.as_deref() == Some(&name) || stem.as_deref() == Some(label_name)
            })
            .with_context(|| {
                format!(
                    "--labels: no label map for image {} (expected {}/{name}.nii.gz)",
                    path.display(),
                    labels.display()
                )
            })?;
        let image = read_image(path)?;
        let label = read_label_image(label_path)?;
        if image.geometry.dims != label.geometry.dims {
            bail!(
                "image {} has shape {:?} but its label map {} has shape {:?} (x, y, z)",
                path.display(),
                image.geometry.dims,
                label_path.display(),
                label.geometry.dims
            );
        }
        let labels: Vec<u8> = label
            .volume
            .labels()
            .iter()
            .map(|&l| {
                u8::try_from(l).map_err(|_| {
                    anyhow::anyhow!("{}: label {l} is above 255", label_path.display())
                })
            })
            .collect::<Result<_>>()?;
        let shape = image.shape_zyx();
        let foreground = labels
            .iter()
            .enumerate()
            .filter(|(_, l)| **l > 0)
            .map(|(i, _)| i)
            .collect();
        cases.push(Case {
            name,
            image: zscore(&image.data),
            labels,
            shape,
            foreground,
            header: image.header,
        });
    }
    let classes = cases
        .iter()
        .flat_map(|c| c.labels.iter())
        .copied()
        .max()
        .unwrap_or(0) as usize
        + 1;
    if classes < 2 {
        bail!("--labels: every label map is all background (0); there is nothing to learn");
    }
    let n_valid =
        ((cases.len() as f64 * valid_fraction).round() as usize).clamp(1, cases.len() - 1);
    let valid = cases.split_off(cases.len() - n_valid);
    Ok(Dataset::Nifti {
        train: cases,
        valid,
        classes,
        patch,
    })
}

/// Per-volume z-score normalisation (a constant image becomes zeros).
pub fn zscore(values: &[f32]) -> Vec<f32> {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let std = var.sqrt();
    let scale = if std > 0.0 { 1.0 / std } else { 0.0 };
    values
        .iter()
        .map(|&v| ((v as f64 - mean) * scale) as f32)
        .collect()
}

impl Dataset {
    /// Number of classes, background included.
    pub fn classes(&self) -> usize {
        match self {
            Dataset::Synthetic { config, .. } => config.classes,
            Dataset::Nifti { classes, .. } => *classes,
        }
    }

    /// Edge length of the training volumes or patches.
    pub fn patch(&self) -> usize {
        match self {
            Dataset::Synthetic { config, .. } => config.size,
            Dataset::Nifti { patch, .. } => *patch,
        }
    }

    /// Number of validation volumes.
    pub fn valid_len(&self) -> usize {
        match self {
            Dataset::Synthetic { valid_volumes, .. } => *valid_volumes,
            Dataset::Nifti { valid, .. } => valid.len(),
        }
    }

    /// The training batch of optimisation step `step` (counted from 0 over the whole run):
    /// images `[B, 1, P, P, P]` and labels `[B, 1, P, P, P]`. Deterministic in `(seed, step)`.
    pub fn train_batch(
        &self,
        step: usize,
        batch: usize,
        seed: u64,
        device: &Device,
    ) -> (Tensor<5>, Tensor<5, Int>) {
        match self {
            Dataset::Synthetic {
                config,
                train_volumes,
                ..
            } => {
                let idx: Vec<usize> = (0..batch)
                    .map(|j| (step * batch + j) % train_volumes)
                    .collect();
                config.batch(Split::Train, &idx, device)
            }
            Dataset::Nifti { train, patch, .. } => {
                let mut rng = ChaCha8Rng::seed_from_u64(
                    seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                let p = *patch;
                let mut images = Vec::with_capacity(batch * p * p * p);
                let mut labels = Vec::with_capacity(batch * p * p * p);
                for j in 0..batch {
                    let case = &train[(step * batch + j) % train.len()];
                    let (img, lab) = random_patch(case, p, &mut rng);
                    images.extend(img);
                    labels.extend(lab.into_iter().map(i64::from));
                }
                (
                    Tensor::from_data(TensorData::new(images, [batch, 1, p, p, p]), device),
                    Tensor::from_data(TensorData::new(labels, [batch, 1, p, p, p]), device),
                )
            }
        }
    }

    /// Validation volume `i` (`i < valid_len()`), whole, image on `device`.
    pub fn valid_volume(&self, i: usize, device: &Device) -> ValidVolume {
        match self {
            Dataset::Synthetic { config, .. } => {
                let v = config.volume(Split::Valid, i);
                let n = v.size;
                ValidVolume {
                    name: format!("valid-{i:03}"),
                    image: Tensor::from_data(TensorData::new(v.image, [1, 1, n, n, n]), device),
                    labels: v.labels,
                }
            }
            Dataset::Nifti { valid, .. } => {
                let c = &valid[i];
                let [d, h, w] = c.shape;
                ValidVolume {
                    name: c.name.clone(),
                    image: Tensor::from_data(
                        TensorData::new(c.image.clone(), [1, 1, d, h, w]),
                        device,
                    ),
                    labels: c.labels.clone(),
                }
            }
        }
    }
}

/// A `p^3` patch of `case` (image, labels); a third of the time centred on a foreground voxel.
fn random_patch(case: &Case, p: usize, rng: &mut ChaCha8Rng) -> (Vec<f32>, Vec<u8>) {
    let [d, h, w] = case.shape;
    let centre_on_fg = rng.random_range(0..3) == 0;
    let fg = (centre_on_fg && !case.foreground.is_empty())
        .then(|| case.foreground[rng.random_range(0..case.foreground.len())]);
    // Start of the patch along each axis (may be negative or past the end: padded).
    let start: [isize; 3] = match fg {
        Some(i) => {
            let c = [i / (h * w), (i / w) % h, i % w];
            [0, 1, 2].map(|a| c[a] as isize - (p / 2) as isize)
        }
        None => [d, h, w].map(|n| {
            if n > p {
                rng.random_range(0..=(n - p)) as isize
            } else {
                -(((p - n) / 2) as isize)
            }
        }),
    };
    let mut img = vec![0.0f32; p * p * p];
    let mut lab = vec![0u8; p * p * p];
    for z in 0..p {
        let sz = start[0] + z as isize;
        if sz < 0 || sz >= d as isize {
            continue;
        }
        for y in 0..p {
            let sy = start[1] + y as isize;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            for x in 0..p {
                let sx = start[2] + x as isize;
                if sx < 0 || sx >= w as isize {
                    continue;
                }
                let src = (sz as usize * h + sy as usize) * w + sx as usize;
                img[(z * p + y) * p + x] = case.image[src];
                lab[(z * p + y) * p + x] = case.labels[src];
            }
        }
    }
    (img, lab)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(shape: [usize; 3]) -> Case {
        let n = shape.iter().product();
        Case {
            name: "c".into(),
            image: (0..n).map(|i| i as f32).collect(),
            labels: (0..n).map(|i| u8::from(i == n / 2)).collect(),
            shape,
            foreground: vec![n / 2],
            header: NiftiHeader::default(),
        }
    }

    #[test]
    fn patches_are_copied_from_the_volume_and_padded_outside() {
        let c = case([5, 6, 7]);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut saw_fg = false;
        for _ in 0..30 {
            let (img, lab) = random_patch(&c, 8, &mut rng);
            // Every voxel is either padding (0) or a voxel of the volume with its own label.
            for (v, l) in img.iter().zip(&lab) {
                assert!(*v == 0.0 || (*v as usize) < c.image.len());
                if *l == 1 {
                    assert_eq!(*v as usize, c.image.len() / 2);
                    saw_fg = true;
                }
            }
        }
        assert!(
            saw_fg,
            "foreground-centred patches contain the single foreground voxel"
        );
    }

    #[test]
    fn zscore_has_zero_mean_and_unit_variance() {
        let z = zscore(&[1.0, 2.0, 3.0, 4.0]);
        let mean: f32 = z.iter().sum::<f32>() / 4.0;
        let var: f32 = z.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5, "{z:?}");
        assert_eq!(zscore(&[5.0; 3]), vec![0.0; 3]);
    }
}
