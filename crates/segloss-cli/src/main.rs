//! `segloss`: the command line of the segloss library.
//!
//! Subcommands live in their own modules; `eval` compares predicted label images with reference
//! ones (see `segloss eval --help`); `train` trains a 3D U-Net on the built-in data.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod eval;
mod nifti_io;
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
    /// Train a 3D U-Net with a segloss loss on the built-in procedural dataset (CPU), writing
    /// metrics.csv, per-epoch checkpoints and the final model.
    Train(train::TrainArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Eval(args) => eval::run(&args),
        Command::Train(args) => train::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(eval::EXIT_USAGE)
        }
    }
}
