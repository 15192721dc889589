//! `segloss compare`: train the same network with several losses and write a report with plots.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use segloss_train::compare::{compare, previous_comparison_files};
use segloss_train::device::parse_device;
use segloss_train::losses::LossKind;

use crate::console;
use crate::train::{Progress, TrainOpts, check_opts, set_aside, stopped};

/// Options of `segloss compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Comma-separated losses to compare (dice, gdl, dice-ce, dice-focal, tversky, mcc, focal,
    /// ce, dice-cldice, dice-boundary, dice-hausdorff, unified-focal) [default: dice,gdl,dice-ce;
    /// with --report-only: every loss with a run in --out].
    #[arg(long, value_delimiter = ',', value_parser = crate::train::loss_kind)]
    pub losses: Option<Vec<LossKind>>,
    /// Output folder: report.md, validation_dice.png, training_loss.png and one run folder per
    /// loss [default: runs/compare]. A folder that holds a comparison is refused (see
    /// --overwrite), except the default one, whose previous comparison is moved to
    /// runs/compare.previous.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Do not train: rebuild report.md and the plots from the runs already in --out, each
    /// described with the settings it was trained with (from its model.json); the training
    /// options are not used.
    #[arg(long)]
    pub report_only: bool,
    #[command(flatten)]
    pub opts: TrainOpts,
}

/// Runs `segloss compare`.
pub fn run(args: &CompareArgs) -> Result<ExitCode> {
    let losses: Option<Vec<LossKind>> = args.losses.clone();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/compare"));
    if args.report_only {
        let runs = segloss_train::compare::report_only(&out, losses.as_deref())?;
        let names: Vec<&str> = runs.iter().map(|r| r.loss.name()).collect();
        console::say(format!(
            "rebuilt {} from the runs in {} ({})",
            out.join("report.md").display(),
            out.display(),
            names.join(", ")
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let losses = losses.unwrap_or_else(|| vec![LossKind::Dice, LossKind::Gdl, LossKind::DiceCe]);
    check_opts(&args.opts)?;
    let device = parse_device(&args.opts.device)?;
    if args.out.is_none()
        && !args.opts.overwrite
        && !previous_comparison_files(&out, &LossKind::ALL.map(|(_, l)| l)).is_empty()
    {
        set_aside(&out)?;
    }
    let base = args.opts.config(losses[0], out.clone());
    let names: Vec<&str> = losses.iter().map(|l| l.name()).collect();
    console::say(format!(
        "comparing {} losses ({}): each trains {}",
        losses.len(),
        names.join(", "),
        args.opts.describe(&base)
    ));
    let mut progress = Progress::new(
        losses.len() * base.epochs * base.steps_per_epoch,
        String::new(),
    );
    let outcome = compare(&base, &losses, &device.autodiff(), |loss, e| {
        progress.set_prefix(format!("{:>10}  ", loss.name()));
        progress.event(e)
    });
    progress.finish();
    let outcome = outcome?;
    if outcome.stopped {
        let done: Vec<String> = outcome
            .runs
            .iter()
            .map(|r| {
                format!(
                    "{} ({} of {} epochs)",
                    r.loss.name(),
                    r.epochs.len(),
                    base.epochs
                )
            })
            .collect();
        let what = if outcome.report_written {
            format!(
                "{} holds the report of {}; each run's files are in {}/<loss>",
                out.join("report.md").display(),
                done.join(", "),
                out.display()
            )
        } else {
            "before any run finished an epoch: no report was written".to_string()
        };
        return Ok(stopped(&what));
    }
    console::say("final validation Dice per class:");
    for r in &outcome.runs {
        let last = r.epochs.last().expect("at least one epoch");
        let dice: Vec<String> = last.valid_dice.iter().map(|d| format!("{d:.3}")).collect();
        console::say(format!(
            "  {:>10}  [{}]  mean {:.3}",
            r.loss.name(),
            dice.join(", "),
            last.mean_foreground_dice()
        ));
    }
    console::say(format!(
        "wrote {} with {} and {}",
        out.join("report.md").display(),
        out.join("validation_dice.png").display(),
        out.join("training_loss.png").display()
    ));
    Ok(ExitCode::SUCCESS)
}
