//! `segloss`: the command line of the segloss library.
//!
//! Subcommands live in their own modules over the `segloss` and `segloss-train` libraries:
//! `train` trains a 3D U-Net (built-in data or NIfTI folders), `predict` writes its label maps
//! as NIfTI, `eval` compares label images with reference ones, `compare` trains with several
//! losses and writes a report with plots.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod compare;
mod console;
mod eval;
mod predict;
mod report;
mod train;

/// Segmentation losses and metrics.
#[derive(Parser, Debug)]
#[command(name = "segloss", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Evaluate predicted label images against reference ones (Dice, IoU, HD, HD95, ASD, ASSD,
    /// NSD, ...), one pair or two folders matched by file name.
    #[command(after_long_help = eval::EXIT_CODES, after_help = eval::EXIT_CODES)]
    Eval(eval::EvalArgs),
    /// Train a 3D U-Net with a segloss loss on the built-in procedural dataset (default) or on
    /// NIfTI folders, writing model.json, metrics.csv, per-epoch checkpoints and the final model.
    Train(train::TrainArgs),
    /// Predict label maps with a trained model: NIfTI images in, NIfTI label maps out (or the
    /// built-in validation set, with its references, ready for `segloss eval`).
    Predict(predict::PredictArgs),
    /// Train the same network from the same seed with several losses and write report.md with
    /// plots of the training loss and the per-class validation Dice.
    Compare(compare::CompareArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    console::install_interrupt_handler();
    let result = match cli.command {
        Command::Eval(args) => eval::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Predict(args) => predict::run(&args),
        Command::Compare(args) => compare::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(eval::EXIT_USAGE)
        }
    }
}
