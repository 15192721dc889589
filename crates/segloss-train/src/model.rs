//! A trained model on disk: its description `model.json` ([`ModelCard`]), its weights, and
//! loading and saving them. Shared by training ([`crate::run`]) and inference
//! ([`crate::predict`]), which do not import each other.

use std::path::Path;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::SyntheticConfig;
use crate::dataset::DataSource;
use crate::unet::{UNet3d, UNet3dConfig};
use segloss_metrics::files::write_atomically;

/// What a trained model is, written next to it as `model.json` so that `segloss predict` can
/// rebuild the network and prepare its input the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Classes, background included (the network's output channels).
    pub classes: usize,
    /// Feature channels of the first level.
    pub base_width: usize,
    /// Levels.
    pub depth: usize,
    /// Input normalisation: `"none"` (built-in data) or `"zscore"` (per volume, NIfTI data).
    pub normalization: String,
    /// The loss it was trained with.
    pub loss: String,
    /// The built-in dataset it was trained on, if any (with its number of validation volumes),
    /// so that `segloss predict` can regenerate the validation set.
    pub synthetic: Option<(SyntheticConfig, usize)>,
    /// How it was trained (data, epochs, steps, batch, learning rate, seed), so that a report
    /// made later (`segloss compare --report-only`) describes the run as it was trained.
    /// `None` in `model.json` files written before this field existed.
    #[serde(default)]
    pub training: Option<TrainingRecord>,
    /// Deep supervision's weighting (its `--ds-weights` name), when trained with it: the
    /// network then has a head per decoder level, which its weights file holds. `None` without
    /// (and in `model.json` files written before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deep_supervision: Option<String>,
}

/// The settings a run was trained with, as recorded in its `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// The training data.
    pub data: DataSource,
    /// Planned number of epochs (`metrics.csv` has one row per epoch that finished).
    pub epochs: usize,
    /// Optimisation steps per epoch.
    pub steps_per_epoch: usize,
    /// Volumes (or patches) per step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Seed of the weights and of the batch order.
    pub seed: u64,
}

impl ModelCard {
    /// Reads `model.json` from a run folder.
    ///
    /// # Errors
    /// A missing or malformed file (named).
    pub fn read(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join("model.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (is {} a folder written by `segloss train`?)",
                path.display(),
                run_dir.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid model description", path.display()))
    }

    /// The network architecture.
    pub fn unet(&self) -> UNet3dConfig {
        UNet3dConfig::new(self.classes)
            .with_base_width(self.base_width)
            .with_depth(self.depth)
            .with_deep_supervision(self.deep_supervision.is_some())
    }
}

/// Saves `model` to `path` whole (through a temporary file).
///
/// # Errors
/// A file that cannot be written (named).
pub fn save_model(model: &UNet3d, path: &Path) -> Result<()> {
    write_atomically(path, |temp| {
        model
            .clone()
            .save_file(temp)
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
}

/// Loads a trained model: `weights` (`model.bpk` or a checkpoint) for the architecture of `card`.
///
/// # Errors
/// A missing or unreadable file, or one for another architecture (named).
pub fn load_model(weights: &Path, card: &ModelCard, device: &Device) -> Result<UNet3d> {
    card.unet()
        .init(device)
        .try_load_file(weights)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", weights.display()))
}
