//! `segloss compare`: train the same network with several losses and write a report with plots.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use segloss_train::compare::compare;
use segloss_train::device::parse_device;
use segloss_train::losses::LossKind;

use crate::train::{Progress, TrainOpts, check_opts};

/// Options of `segloss compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Comma-separated losses to compare (dice, gdl, dice-ce, dice-focal, tversky, focal, ce).
    #[arg(long, default_value = "dice,gdl,dice-ce", value_delimiter = ',')]
    pub losses: Vec<String>,
    /// Output folder: report.md, validation_dice.png, training_loss.png and one run folder per
    /// loss.
    #[arg(long, default_value = "runs/compare")]
    pub out: PathBuf,
    /// Do not train: rebuild report.md and the plots from the runs already in --out (the same
    /// options as the comparison that wrote them).
    #[arg(long)]
    pub report_only: bool,
    #[command(flatten)]
    pub opts: TrainOpts,
}

/// Runs `segloss compare`.
pub fn run(args: &CompareArgs) -> Result<ExitCode> {
    let losses: Vec<LossKind> = args
        .losses
        .iter()
        .map(|l| LossKind::parse(l.trim()))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    check_opts(&args.opts)?;
    if args.report_only {
        let base = args.opts.config(losses[0], args.out.clone());
        segloss_train::compare::report_only(&base, &losses)?;
        println!(
            "rebuilt {} from the runs in {}",
            args.out.join("report.md").display(),
            args.out.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let device = parse_device(&args.opts.device)?;
    let base = args.opts.config(losses[0], args.out.clone());
    let names: Vec<&str> = losses.iter().map(|l| l.name()).collect();
    println!(
        "comparing {} losses ({}): each trains {}",
        losses.len(),
        names.join(", "),
        args.opts.describe(&base)
    );
    let mut progress = Progress::new(
        losses.len() * base.epochs * base.steps_per_epoch,
        String::new(),
    );
    let runs = compare(&base, &losses, &device.autodiff(), |loss, e| {
        progress.set_prefix(format!("{:>10}  ", loss.name()));
        progress.event(e);
    })?;
    progress.finish();
    println!("final validation Dice per class:");
    for r in &runs {
        let last = r.epochs.last().expect("at least one epoch");
        let dice: Vec<String> = last.valid_dice.iter().map(|d| format!("{d:.3}")).collect();
        println!(
            "  {:>10}  [{}]  mean {:.3}",
            r.loss.name(),
            dice.join(", "),
            last.mean_foreground_dice()
        );
    }
    println!(
        "wrote {} with {} and {}",
        args.out.join("report.md").display(),
        args.out.join("validation_dice.png").display(),
        args.out.join("training_loss.png").display()
    );
    Ok(ExitCode::SUCCESS)
}
