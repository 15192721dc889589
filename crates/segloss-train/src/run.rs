//! A training run on the built-in dataset: epochs of optimisation steps, per-class validation
//! Dice after each epoch, `metrics.csv`, checkpoints and the final model.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use crate::data::{Split, SyntheticConfig};
use crate::losses::LossKind;
use crate::train::adam_trainer;
use crate::unet::{UNet3d, UNet3dConfig};

/// Settings of a training run.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The procedural dataset.
    pub data: SyntheticConfig,
    /// Training volumes (indices `0..train_volumes` of the training split).
    pub train_volumes: usize,
    /// Validation volumes (indices `0..valid_volumes` of the validation split).
    pub valid_volumes: usize,
    /// Feature channels of the U-Net's first level.
    pub base_width: usize,
    /// Levels of the U-Net.
    pub depth: usize,
    /// The loss.
    pub loss: LossKind,
    /// Number of epochs.
    pub epochs: usize,
    /// Optimisation steps per epoch.
    pub steps_per_epoch: usize,
    /// Volumes per step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Seed of the weights and of the batch order.
    pub seed: u64,
    /// Where `metrics.csv`, `checkpoints/` and `model.bpk` go.
    pub out_dir: PathBuf,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: SyntheticConfig::default(),
            train_volumes: 32,
            valid_volumes: 8,
            base_width: 8,
            depth: 3,
            loss: LossKind::DiceCe,
            epochs: 10,
            steps_per_epoch: 16,
            batch_size: 2,
            learning_rate: 3e-3,
            seed: 1,
            out_dir: PathBuf::from("runs/default"),
        }
    }
}

/// What happened, for progress display.
#[derive(Debug, Clone)]
pub enum Event {
    /// One optimisation step finished.
    Step {
        /// Epoch, from 1.
        epoch: usize,
        /// Step within the epoch, from 1.
        step: usize,
        /// The loss before the step.
        loss: f32,
    },
    /// One epoch finished and was validated.
    Epoch(EpochSummary),
}

/// The results of one epoch.
#[derive(Debug, Clone)]
pub struct EpochSummary {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// Validation Dice per foreground class (classes 1..C), pooled over the validation volumes;
    /// NaN for a class absent from both prediction and reference.
    pub valid_dice: Vec<f64>,
    /// Wall-clock seconds of the epoch (training and validation).
    pub seconds: f64,
}

impl EpochSummary {
    /// Mean of the per-class validation Dice, NaN classes left out.
    pub fn mean_foreground_dice(&self) -> f64 {
        let v: Vec<f64> = self.valid_dice.iter().copied().filter(|d| !d.is_nan()).collect();
        if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
    }
}

/// The model's hard prediction (argmax over classes) for images `[B, 1, D, H, W]`: `[B, 1, D, H, W]`.
pub fn predict(model: &UNet3d, images: Tensor<5>) -> Tensor<5, Int> {
    model.forward(images).argmax(1)
}

/// Pooled per-class Dice of predictions against references (both label maps), classes 1..C.
pub fn foreground_dice(pred: &[i64], reference: &[i64], classes: usize) -> Vec<f64> {
    let mut inter = vec![0u64; classes];
    let mut sizes = vec![0u64; classes];
    for (&p, &r) in pred.iter().zip(reference) {
        sizes[p as usize] += 1;
        sizes[r as usize] += 1;
        if p == r {
            inter[p as usize] += 1;
        }
    }
    (1..classes)
        .map(|c| if sizes[c] == 0 { f64::NAN } else { 2.0 * inter[c] as f64 / sizes[c] as f64 })
        .collect()
}

/// Validation Dice of `model` on the first `volumes` validation volumes.
pub fn validate(model: &UNet3d, data: &SyntheticConfig, volumes: usize, device: &Device) -> Vec<f64> {
    let mut pred = Vec::new();
    let mut reference = Vec::new();
    for i in 0..volumes {
        let (x, y) = data.batch(Split::Valid, &[i], device);
        pred.extend(predict(model, x).into_data().iter::<i64>());
        reference.extend(y.into_data().iter::<i64>());
    }
    foreground_dice(&pred, &reference, data.classes)
}

/// The header of `metrics.csv` for `classes` classes.
fn csv_header(classes: usize) -> String {
    let mut h = String::from("epoch,train_loss");
    for c in 1..classes {
        write!(h, ",valid_dice_{c}").unwrap();
    }
    h.push_str(",mean_foreground_dice,seconds\n");
    h
}

fn csv_row(e: &EpochSummary) -> String {
    let mut r = format!("{},{:.6}", e.epoch, e.train_loss);
    for d in &e.valid_dice {
        write!(r, ",{d:.6}").unwrap();
    }
    writeln!(r, ",{:.6},{:.3}", e.mean_foreground_dice(), e.seconds).unwrap();
    r
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

/// What a run produced.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The trained model, without autodiff.
    pub model: UNet3d,
    /// One summary per epoch.
    pub epochs: Vec<EpochSummary>,
}

/// Trains a U-Net on the built-in dataset on `device` (an autodiff device), reporting progress
/// through `on_event`, and returns the trained model and the epochs' summaries. Writes `metrics.csv`,
/// `checkpoints/epoch-N.bpk` and `model.bpk` into `out_dir`.
///
/// # Errors
/// Invalid settings, or a file that cannot be written (named in the message).
pub fn train(cfg: &TrainConfig, device: &Device, mut on_event: impl FnMut(&Event)) -> Result<TrainOutcome, String> {
    cfg.data.validate()?;
    if cfg.train_volumes == 0 || cfg.valid_volumes == 0 || cfg.batch_size == 0 || cfg.epochs == 0 || cfg.steps_per_epoch == 0 {
        return Err("training: volumes, batch size, epochs and steps per epoch must all be at least 1".into());
    }
    let factor = 1usize << (cfg.depth.max(1) - 1);
    if !cfg.data.size.is_multiple_of(factor) {
        return Err(format!("training: the volume size {} must be divisible by 2^(depth - 1) = {factor}", cfg.data.size));
    }
    let checkpoints = cfg.out_dir.join("checkpoints");
    std::fs::create_dir_all(&checkpoints).map_err(|e| io_error(&checkpoints, e))?;
    let metrics_path = cfg.out_dir.join("metrics.csv");
    let mut csv = csv_header(cfg.data.classes);
    std::fs::write(&metrics_path, &csv).map_err(|e| io_error(&metrics_path, e))?;

    device.seed(cfg.seed);
    let model = UNet3dConfig::new(cfg.data.classes).with_base_width(cfg.base_width).with_depth(cfg.depth).init(device);
    let mut trainer = adam_trainer(model, cfg.loss, cfg.learning_rate);
    let valid_device = device.clone().inner();
    let mut summaries = Vec::new();
    let mut cursor = 0usize;
    for epoch in 1..=cfg.epochs {
        let start = Instant::now();
        let mut total = 0.0f64;
        for step in 1..=cfg.steps_per_epoch {
            let idx: Vec<usize> = (0..cfg.batch_size).map(|j| (cursor + j) % cfg.train_volumes).collect();
            cursor = (cursor + cfg.batch_size) % cfg.train_volumes;
            let (x, y) = cfg.data.batch(Split::Train, &idx, device);
            let loss = trainer.step(x, y);
            total += loss as f64;
            on_event(&Event::Step { epoch, step, loss });
        }
        let valid_model = trainer.valid_model();
        let valid_dice = validate(&valid_model, &cfg.data, cfg.valid_volumes, &valid_device);
        let ckpt = checkpoints.join(format!("epoch-{epoch}.bpk"));
        valid_model.save_file(&ckpt).map_err(|e| io_error(&ckpt, format!("{e:?}")))?;
        let summary = EpochSummary { epoch, train_loss: total / cfg.steps_per_epoch as f64, valid_dice, seconds: start.elapsed().as_secs_f64() };
        csv.push_str(&csv_row(&summary));
        std::fs::write(&metrics_path, &csv).map_err(|e| io_error(&metrics_path, e))?;
        on_event(&Event::Epoch(summary.clone()));
        summaries.push(summary);
    }
    let final_path = cfg.out_dir.join("model.bpk");
    let model = trainer.valid_model();
    model.clone().save_file(&final_path).map_err(|e| io_error(&final_path, format!("{e:?}")))?;
    Ok(TrainOutcome { model, epochs: summaries })
}

/// Loads a model saved by [`train`] (`model.bpk` or a checkpoint) for the given architecture.
///
/// # Errors
/// A missing or unreadable file, or one for another architecture.
pub fn load_model(path: &Path, classes: usize, base_width: usize, depth: usize, device: &Device) -> Result<UNet3d, String> {
    UNet3dConfig::new(classes)
        .with_base_width(base_width)
        .with_depth(depth)
        .init(device)
        .try_load_file(path)
        .map_err(|e| io_error(path, format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_run_writes_metrics_and_checkpoints_that_load_back_identically() {
        let dir = std::env::temp_dir().join(format!("segloss-train-test-{}", std::process::id()));
        let cfg = TrainConfig {
            data: SyntheticConfig { size: 16, ..Default::default() },
            train_volumes: 4,
            valid_volumes: 2,
            base_width: 4,
            depth: 2,
            epochs: 2,
            steps_per_epoch: 2,
            out_dir: dir.clone(),
            ..Default::default()
        };
        let device = Device::flex().autodiff();
        let mut steps = 0;
        let outcome = train(&cfg, &device, |e| {
            if matches!(e, Event::Step { .. }) {
                steps += 1
            }
        })
        .unwrap();
        assert_eq!(steps, 4);
        assert_eq!(outcome.epochs.len(), 2);
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "epoch,train_loss,valid_dice_1,valid_dice_2,valid_dice_3,mean_foreground_dice,seconds");
        assert_eq!(lines.len(), 3);
        assert!(lines[2].starts_with("2,"));

        // The trained model, the saved final model and the last checkpoint give identical
        // predictions (and identical logits).
        let plain = Device::flex();
        let (x, _) = cfg.data.batch(Split::Valid, &[0], &plain);
        let trained = outcome.model.to_device(&plain);
        let a = load_model(&dir.join("model.bpk"), 4, 4, 2, &plain).unwrap();
        let b = load_model(&dir.join("checkpoints/epoch-2.bpk"), 4, 4, 2, &plain).unwrap();
        let logits = |m: &UNet3d| -> Vec<f32> { m.forward(x.clone()).into_data().iter::<f32>().collect() };
        assert_eq!(logits(&trained), logits(&a));
        assert_eq!(logits(&a), logits(&b));
        let pa: Vec<i64> = predict(&a, x.clone()).into_data().iter::<i64>().collect();
        let pt: Vec<i64> = predict(&trained, x).into_data().iter::<i64>().collect();
        assert_eq!(pa, pt);
        // A missing file is an error that names it.
        let e = load_model(&dir.join("nope.bpk"), 4, 4, 2, &plain).unwrap_err();
        assert!(e.contains("nope.bpk"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn dice_is_pooled_per_class() {
        let pred = [0, 1, 1, 2, 2, 0];
        let reference = [0, 1, 2, 2, 2, 0];
        let d = foreground_dice(&pred, &reference, 4);
        assert!((d[0] - 2.0 / 3.0).abs() < 1e-12 && (d[1] - 0.8).abs() < 1e-12 && d[2].is_nan(), "{d:?}");
    }
}
