//! `segloss predict`: run a trained model on NIfTI images, or on the built-in validation set.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use segloss_train::dataset::stem;
use segloss_train::device::parse_device;
use segloss_train::predict::{predict_builtin_valid, predict_file};
use segloss_train::run::{ModelCard, load_model};

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
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn is_nifti_name(p: &Path) -> bool {
    stem(p).is_some()
}

/// Runs `segloss predict`.
pub fn run(args: &PredictArgs) -> Result<ExitCode> {
    let card = ModelCard::read(&args.model)?;
    let weights = args
        .weights
        .clone()
        .unwrap_or_else(|| args.model.join("model.bpk"));
    let device = parse_device(&args.device)?;
    let model = load_model(&weights, &card, &device)?;
    if args.inputs.is_empty() {
        let written = predict_builtin_valid(&model, &card, &args.out, &device)?;
        println!(
            "predicted {} built-in validation volumes: {}, with their images in {} and references in {}",
            written.volumes,
            written.predictions.display(),
            written.images.display(),
            written.references.display()
        );
        println!(
            "evaluate with: segloss eval --pred-dir {} --ref-dir {}",
            written.predictions.display(),
            written.references.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut files = Vec::new();
    for input in &args.inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("cannot list {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_nifti_name(p))
                .collect();
            if found.is_empty() {
                bail!(
                    "{}: no .nii or .nii.gz file in this folder",
                    input.display()
                );
            }
            found.sort();
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
    let single_file_out = files.len() == 1 && args.inputs[0].is_file() && is_nifti_name(&args.out);
    for file in &files {
        let out = if single_file_out {
            args.out.clone()
        } else {
            args.out.join(file.file_name().expect("a file"))
        };
        predict_file(&model, &card, file, &out, &device)?;
        println!("{} -> {}", file.display(), out.display());
    }
    Ok(ExitCode::SUCCESS)
}
