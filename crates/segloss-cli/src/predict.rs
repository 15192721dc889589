//! `segloss predict`: run a trained model on NIfTI images, or on the built-in validation set.
//!
//! An input that cannot be predicted (unreadable, corrupt) does not stop the others: the
//! failures are listed at the end and the exit code is 1. Outputs are written whole, never over
//! an input, and two inputs that would write the same output are refused before anything runs.
//! An interrupt or a closed stdout stops between volumes (exit 130 / 141).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use segloss_metrics::files::{nifti_files, nifti_stem, refuse_input};
use segloss_train::device::parse_device;
use segloss_train::model::{ModelCard, load_model};
use segloss_train::predict::{predict_builtin_valid, predict_file};

use crate::console;
use crate::exit::EXIT_CASE_FAILED;
use crate::train::stopped;

/// Options of `segloss predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A run folder written by `segloss train` (model.json and model.bpk).
    #[arg(long)]
    pub model: PathBuf,
    /// Weights to use instead of the folder's model.bpk (e.g. checkpoints/epoch-5.bpk).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// NIfTI images (.nii / .nii.gz) or folders of them. Without any, the built-in validation
    /// volumes the model was trained against are predicted (models trained on built-in data).
    pub inputs: Vec<PathBuf>,
    /// Output: a folder (one label map per input, same file name; for the built-in set
    /// images/, predictions/ and references/ subfolders), or a file name when there is one
    /// input file.
    #[arg(long)]
    pub out: PathBuf,
    /// Where to run: cpu (default), wgpu, wgpu-cpu or cuda[:N] (GPU backends need a build with
    /// that feature).
    #[arg(long, default_value = "cpu", value_parser = crate::train::device_name)]
    pub device: String,
}

fn is_nifti_name(p: &Path) -> bool {
    nifti_stem(p).is_some()
}

/// The NIfTI files named by `inputs` (files, or folders whose `.nii` / `.nii.gz` files are
/// taken in name order).
fn input_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let found: Vec<PathBuf> = nifti_files(input)?
                .into_iter()
                .filter(|p| p.is_file())
                .collect();
            if found.is_empty() {
                bail!(
                    "{}: no .nii or .nii.gz file in this folder",
                    input.display()
                );
            }
            files.extend(found);
        } else if input.is_file() {
            if !is_nifti_name(input) {
                bail!(
                    "{}: not a NIfTI file name (.nii or .nii.gz)",
                    input.display()
                );
            }
            files.push(input.clone());
        } else {
            bail!("{}: no such file or folder", input.display());
        }
    }
    Ok(files)
}

/// The output path of each input: `out` itself for one input file and an `out` with a NIfTI
/// name, else `out/<input file name>`.
///
/// # Errors
/// Two inputs with the same output (the same file name from two folders, or one file given
/// twice), or an output that is one of the inputs; both are named.
pub fn output_paths(inputs: &[PathBuf], files: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    let single_file_out = files.len() == 1 && inputs[0].is_file() && is_nifti_name(out);
    let outputs: Vec<PathBuf> = files
        .iter()
        .map(|f| {
            if single_file_out {
                out.to_path_buf()
            } else {
                out.join(f.file_name().expect("a file"))
            }
        })
        .collect();
    let mut seen: HashMap<&Path, &Path> = HashMap::new();
    for (file, output) in files.iter().zip(&outputs) {
        if let Some(first) = seen.insert(output, file) {
            bail!(
                "{} and {} would both be written to {}: rename one, or predict them into \
                 different --out folders",
                first.display(),
                file.display(),
                output.display()
            );
        }
        refuse_input(output, files.iter().map(PathBuf::as_path))?;
    }
    Ok(outputs)
}

/// Runs `segloss predict`.
pub fn run(args: &PredictArgs) -> Result<ExitCode> {
    let card = ModelCard::read(&args.model)?;
    let weights = args
        .weights
        .clone()
        .unwrap_or_else(|| args.model.join("model.bpk"));
    let device = parse_device(&args.device)?;
    // Inputs and outputs are checked before the model is loaded and anything is written.
    let files = input_files(&args.inputs)?;
    let outputs = output_paths(&args.inputs, &files, &args.out)?;
    let model = load_model(&weights, &card, &device)?;
    if args.inputs.is_empty() {
        let written = predict_builtin_valid(&model, &card, &args.out, &device, |_| {
            if console::stop_requested() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        if written.volumes < written.planned {
            return Ok(stopped(&format!(
                "after {} of {} built-in validation volumes, each written whole in {}",
                written.volumes,
                written.planned,
                args.out.display()
            )));
        }
        console::say(format!(
            "predicted {} built-in validation volumes: {}, with their images in {} and references in {}",
            written.volumes,
            written.predictions.display(),
            written.images.display(),
            written.references.display()
        ));
        console::say(format!(
            "evaluate with: segloss eval --pred-dir {} --ref-dir {}",
            written.predictions.display(),
            written.references.display()
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = Vec::new();
    for (done, (file, out)) in files.iter().zip(&outputs).enumerate() {
        if console::stop_requested() {
            return Ok(stopped(&format!(
                "after {done} of {} images, each prediction written whole{}",
                files.len(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(" ({} failed)", failed.len())
                }
            )));
        }
        match predict_file(&model, &card, file, out, &device) {
            Ok(()) => console::say(format!("{} -> {}", file.display(), out.display())),
            Err(e) => {
                eprintln!("error: {e:#}");
                failed.push(file);
            }
        }
    }
    if !failed.is_empty() {
        let names: Vec<String> = failed.iter().map(|f| f.display().to_string()).collect();
        if failed.len() == files.len() {
            eprintln!("no image could be predicted: {}", names.join(", "));
        } else {
            eprintln!(
                "{} of {} images could not be predicted (the others were): {}",
                failed.len(),
                files.len(),
                names.join(", ")
            );
        }
        return Ok(ExitCode::from(EXIT_CASE_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}
