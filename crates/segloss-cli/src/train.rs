//! `segloss train`: train a 3D U-Net with a segloss loss on the built-in procedural dataset.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use burn::tensor::Device;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use segloss_train::data::SyntheticConfig;
use segloss_train::losses::LossKind;
use segloss_train::run::{Event, TrainConfig, train};

/// Options of `segloss train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The loss: dice, gdl, dice-ce, dice-focal, tversky, focal or ce.
    #[arg(long, default_value = "dice-ce")]
    pub loss: String,
    /// Number of epochs.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Optimisation steps per epoch.
    #[arg(long, default_value_t = 16)]
    pub steps_per_epoch: usize,
    /// Volumes per step.
    #[arg(long, default_value_t = 2)]
    pub batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Edge length of the built-in volumes, in voxels.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Feature channels of the U-Net's first level.
    #[arg(long, default_value_t = 8)]
    pub width: usize,
    /// Resolution levels of the U-Net.
    #[arg(long, default_value_t = 3)]
    pub depth: usize,
    /// Seed of the data, the weights and the batch order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output folder: metrics.csv, checkpoints/epoch-N.bpk and model.bpk.
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
}

/// Runs `segloss train`.
pub fn run(args: &TrainArgs) -> Result<ExitCode> {
    let loss = LossKind::parse(&args.loss).map_err(|e| anyhow!(e))?;
    let cfg = TrainConfig {
        data: SyntheticConfig { size: args.size, seed: args.seed, ..Default::default() },
        base_width: args.width,
        depth: args.depth,
        loss,
        epochs: args.epochs,
        steps_per_epoch: args.steps_per_epoch,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        seed: args.seed,
        out_dir: args.out.clone(),
        ..Default::default()
    };
    println!(
        "training a 3D U-Net (width {}, depth {}) with {} on the built-in data ({}^3 volumes, {} classes), {} epochs x {} steps, CPU (Flex)",
        cfg.base_width, cfg.depth, loss.name(), cfg.data.size, cfg.data.classes, cfg.epochs, cfg.steps_per_epoch
    );
    let bar = std::io::stdout().is_terminal().then(|| {
        let bar = ProgressBar::new((cfg.epochs * cfg.steps_per_epoch) as u64);
        bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} steps, {elapsed} {msg}").expect("a valid template"));
        bar
    });
    let device = Device::flex().autodiff();
    let outcome = train(&cfg, &device, |event| match event {
        Event::Step { epoch, loss, .. } => {
            if let Some(bar) = &bar {
                bar.inc(1);
                bar.set_message(format!("epoch {epoch}, loss {loss:.4}"));
            }
        }
        Event::Epoch(s) => {
            let dice: Vec<String> = s.valid_dice.iter().enumerate().map(|(c, d)| format!("{}: {d:.3}", c + 1)).collect();
            let line = format!(
                "epoch {:>3}  train loss {:.4}  validation Dice [{}]  mean {:.3}  ({:.1} s)",
                s.epoch,
                s.train_loss,
                dice.join(", "),
                s.mean_foreground_dice(),
                s.seconds
            );
            match &bar {
                Some(bar) => bar.println(line),
                None => println!("{line}"),
            }
        }
    })
    .map_err(|e| anyhow!(e))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let last = outcome.epochs.last().expect("at least one epoch");
    println!(
        "done: mean foreground validation Dice {:.3}; wrote {}, {} and {}",
        last.mean_foreground_dice(),
        cfg.out_dir.join("metrics.csv").display(),
        cfg.out_dir.join("checkpoints").display(),
        cfg.out_dir.join("model.bpk").display()
    );
    Ok(ExitCode::SUCCESS)
}
