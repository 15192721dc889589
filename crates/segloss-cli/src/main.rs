//! `segloss`: the command line of the segloss library.
//!
//! Subcommands live in their own modules over the `segloss-metrics` and `segloss-train`
//! libraries: `eval` compares label images with reference ones (`segloss-metrics` only),
//! `train` trains a 3D U-Net (built-in data or NIfTI folders), `predict` writes its label maps as
//! NIfTI, `compare` trains with several losses and writes a report with plots. The last three
//! need the feature `train` (on by default); without it (`--no-default-features`) the binary has
//! `eval` alone and does not depend on Burn.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "train")]
mod compare;
mod console;
mod eval;
mod exit;
#[cfg(feature = "train")]
mod predict;
mod report;
#[cfg(feature = "train")]
mod train;

/// Segmentation losses and metrics.
#[derive(Parser, Debug)]
#[command(name = "segloss", version, about)]
#[cfg_attr(
    not(feature = "train"),
    command(
        about = "The segloss command line without training (built without the feature `train`): evaluate segmentations (Dice, HD95, ASSD, NSD, ...) on NIfTI files"
    )
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Evaluate predicted label images against reference ones (Dice, IoU, HD, HD95, ASD, ASSD,
    /// NSD, ...), one pair or two folders matched by file name.
    #[command(after_long_help = exit::EXIT_CODES, after_help = exit::EXIT_CODES)]
    Eval(eval::EvalArgs),
    /// Train a 3D U-Net with a segloss loss on the built-in procedural dataset (default) or on
    /// NIfTI folders, writing model.json, metrics.csv, per-epoch checkpoints and the final model.
    #[cfg(feature = "train")]
    Train(train::TrainArgs),
    /// Predict label maps with a trained model: NIfTI images in, NIfTI label maps out (or the
    /// built-in validation set, with its references, ready for `segloss eval`).
    #[cfg(feature = "train")]
    Predict(predict::PredictArgs),
    /// Train the same network from the same seed with several losses and write report.md with
    /// plots of the training loss and the per-class validation Dice.
    #[cfg(feature = "train")]
    Compare(compare::CompareArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "train")]
    if matches!(
        cli.command,
        Command::Train(_) | Command::Predict(_) | Command::Compare(_)
    ) {
        keep_freed_memory();
    }
    console::install_interrupt_handler();
    let result = match cli.command {
        Command::Eval(args) => eval::run(&args),
        #[cfg(feature = "train")]
        Command::Train(args) => train::run(&args),
        #[cfg(feature = "train")]
        Command::Predict(args) => predict::run(&args),
        #[cfg(feature = "train")]
        Command::Compare(args) => compare::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::EXIT_USAGE)
        }
    }
}

/// Tells glibc's allocator to keep freed memory for reuse instead of handing it back to the
/// kernel: a training step frees and allocates the same tensors (up to tens of MiB each) every
/// step, and glibc's defaults (trim the heap above 128 KiB free, blocks over a dynamic threshold
/// mapped and unmapped each time) make the kernel fault in and zero those pages again at every
/// step. Blocks up to 32 MiB (glibc's largest threshold) stay on the heap, and the heap is
/// trimmed only beyond 1 GiB free. Other C libraries: nothing to do.
#[cfg(feature = "train")]
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread
    // exists, and a refused value (return 0) leaves glibc's default.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
