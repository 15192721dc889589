//! `segloss train`: train a 3D U-Net with a segloss loss on the built-in procedural dataset or
//! on NIfTI folders. The options shared with `segloss compare` live in [`TrainOpts`].
//!
//! Progress goes through [`console::say`]: a closed stdout (`segloss train | head -1`) or an
//! interrupt stops the run at the next step, with the last finished epoch saved (exit 141 or
//! 130); a full disk behind `>` only loses the progress lines.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use segloss_train::data::SyntheticConfig;
use segloss_train::dataset::DataSource;
use segloss_train::device::parse_device;
use segloss_train::losses::{
    DeepSupervisionWeighting, LossKind, ds_weighting_name, parse_ds_weighting,
};
use segloss_train::run::{EpochSummary, Event, RunEnd, TrainConfig, previous_run_files, train};

use crate::console;

/// The defaults, from the library's [`TrainConfig::default`] (one source of truth).
fn defaults() -> TrainConfig {
    TrainConfig::default()
}

fn default_size() -> usize {
    SyntheticConfig::default().size
}

/// Options of a training run (shared by `train` and `compare`).
#[derive(Args, Debug, Clone)]
pub struct TrainOpts {
    /// Number of epochs.
    #[arg(long, default_value_t = defaults().epochs)]
    pub epochs: usize,
    /// Optimisation steps per epoch.
    #[arg(long, default_value_t = defaults().steps_per_epoch)]
    pub steps_per_epoch: usize,
    /// Volumes (or patches) per step.
    #[arg(long, default_value_t = defaults().batch_size)]
    pub batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = defaults().learning_rate)]
    pub lr: f64,
    /// Edge length of the built-in volumes, or of the training patches cut from NIfTI images, in
    /// voxels (a multiple of 2^(depth - 1)).
    #[arg(long, default_value_t = default_size())]
    pub size: usize,
    /// Feature channels of the U-Net's first level (doubled at each level down).
    #[arg(long, default_value_t = defaults().base_width)]
    pub width: usize,
    /// Resolution levels of the U-Net.
    #[arg(long, default_value_t = defaults().depth)]
    pub depth: usize,
    /// Seed of the weights and the batch order.
    #[arg(long, default_value_t = defaults().seed)]
    pub seed: u64,
    /// Built-in data only: add a class, a thin curved tube (radius about 1 voxel) across each
    /// volume, the kind of structure (vessels, airways) that clDice-type losses are for.
    #[arg(long, conflicts_with = "images")]
    pub tube: bool,
    /// Deep supervision: the U-Net gets a 1x1x1 head on every decoder level, and the loss is
    /// the weighted sum of the loss at each level against the labels resampled to it
    /// (nearest-neighbour, as MONAI's DeepSupervisionLoss). Weights: --ds-weights.
    #[arg(long)]
    pub deep_supervision: bool,
    /// Deep-supervision weights per level l (0 = full resolution): normalized (1/2^l scaled to
    /// sum 1, the default), nnunet (the same with the lowest level's weight 0, as nnU-Net v2),
    /// exp (max(1/2^l, 1/16), MONAI's default), same (1), two (1, then 0.5).
    #[arg(long, default_value = "normalized", value_parser = parse_ds_weighting, requires = "deep_supervision")]
    pub ds_weights: DeepSupervisionWeighting,
    /// Folder of NIfTI training images (.nii / .nii.gz); needs --labels. Without it, the
    /// built-in procedural data is used.
    #[arg(long, requires = "labels")]
    pub images: Option<PathBuf>,
    /// Folder of NIfTI label maps, one per image, same file names (`case_0000.nii.gz` images
    /// pair with `case.nii.gz` labels too).
    #[arg(long, requires = "images")]
    pub labels: Option<PathBuf>,
    /// Fraction of the NIfTI cases kept for validation (the last ones by name; at least one).
    #[arg(long, default_value_t = 0.2)]
    pub valid_fraction: f64,
    /// Where to train: cpu (default), wgpu, wgpu-cpu (software Vulkan), wgpu-gpu or cuda[:N];
    /// the GPU backends need a build with `--features wgpu` or `--features cuda`.
    #[arg(long, default_value = "cpu", value_parser = device_name)]
    pub device: String,
    /// Replace the run already in --out: its model.json, metrics.csv, model.bpk and
    /// checkpoints/ are deleted before training (other files there are kept). Without it, an
    /// --out that holds a run is refused; the default --out instead keeps its previous run as
    /// <out>.previous.
    #[arg(long)]
    pub overwrite: bool,
}

impl TrainOpts {
    /// The library's run settings for these options (loss and output folder set by the caller).
    pub fn config(&self, loss: LossKind, out: PathBuf) -> TrainConfig {
        let data = match (&self.images, &self.labels) {
            (Some(images), Some(labels)) => DataSource::Nifti {
                images: images.clone(),
                labels: labels.clone(),
                valid_fraction: self.valid_fraction,
                patch: self.size,
            },
            _ => match DataSource::default() {
                DataSource::Synthetic {
                    config,
                    train_volumes,
                    valid_volumes,
                } => DataSource::Synthetic {
                    config: SyntheticConfig {
                        size: self.size,
                        classes: config.classes + usize::from(self.tube),
                        tube: self.tube,
                        ..config
                    },
                    train_volumes,
                    valid_volumes,
                },
                other => other,
            },
        };
        TrainConfig {
            data,
            base_width: self.width,
            depth: self.depth,
            loss,
            deep_supervision: self.deep_supervision.then_some(self.ds_weights),
            epochs: self.epochs,
            steps_per_epoch: self.steps_per_epoch,
            batch_size: self.batch_size,
            learning_rate: self.lr,
            seed: self.seed,
            out_dir: out,
            overwrite: self.overwrite,
        }
    }

    /// A one-line description of the run for the terminal (without the loss).
    pub fn describe(&self, cfg: &TrainConfig) -> String {
        let data = match &cfg.data {
            DataSource::Synthetic { config, .. } => {
                format!(
                    "the built-in data ({}^3 volumes, {} classes)",
                    config.size, config.classes
                )
            }
            DataSource::Nifti { images, patch, .. } => {
                format!("NIfTI images from {} ({patch}^3 patches)", images.display())
            }
        };
        let ds = match cfg.deep_supervision {
            Some(w) => format!(", deep supervision ({} weights)", ds_weighting_name(w)),
            None => String::new(),
        };
        format!(
            "a 3D U-Net (width {}, depth {}{ds}) on {data}, {} epochs x {} steps of {} on {}",
            cfg.base_width, cfg.depth, cfg.epochs, cfg.steps_per_epoch, cfg.batch_size, self.device
        )
    }
}

/// `--loss`: a loss by its command-line name ([`LossKind::parse`]), so that clap refuses an
/// unknown one with the names to choose from.
pub fn loss_kind(name: &str) -> Result<LossKind, String> {
    LossKind::parse(name.trim())
}

/// `--device`: a device name that this build can open (`segloss::device`'s table), checked when
/// the arguments are read; the device itself is made when the command runs.
pub fn device_name(name: &str) -> Result<String, String> {
    parse_device(name)
        .map(|_| name.to_string())
        .map_err(|e| e.to_string())
}

/// Options of `segloss train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The loss: dice, gdl, dice-ce, dice-focal, tversky, mcc, focal, ce, dice-cldice,
    /// dice-boundary, dice-hausdorff or unified-focal.
    #[arg(long, default_value = "dice-ce", value_parser = loss_kind)]
    pub loss: LossKind,
    /// Output folder: model.json, metrics.csv, checkpoints/epoch-N.bpk and model.bpk
    /// [default: runs/train]. A folder that holds a run is refused (see --overwrite), except
    /// the default one, whose previous run is moved to runs/train.previous.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub opts: TrainOpts,
}

/// The line printed after each epoch.
pub fn epoch_line(s: &EpochSummary) -> String {
    let dice: Vec<String> = s
        .valid_dice
        .iter()
        .enumerate()
        .map(|(c, d)| format!("{}: {d:.3}", c + 1))
        .collect();
    format!(
        "epoch {:>3}  train loss {:.4}  validation Dice [{}]  mean {:.3}  ({:.1} s)",
        s.epoch,
        s.train_loss,
        dice.join(", "),
        s.mean_foreground_dice(),
        s.seconds
    )
}

/// Progress display: a bar on a terminal, plain lines per epoch otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    prefix: String,
}

impl Progress {
    /// A display for `steps` optimisation steps; `prefix` starts each epoch line.
    pub fn new(steps: usize, prefix: String) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::new(steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps, {elapsed} (eta {eta}) {msg}",
                )
                .expect("a valid template"),
            );
            bar
        });
        Self { bar, prefix }
    }

    /// Sets the text that starts each epoch line.
    pub fn set_prefix(&mut self, prefix: String) {
        self.prefix = prefix;
    }

    /// Shows one event; asks to stop ([`ControlFlow::Break`]) when an interrupt arrived or
    /// stdout was closed ([`console::stop_requested`]).
    pub fn event(&self, event: &Event) -> ControlFlow<()> {
        match event {
            Event::Step { epoch, loss, .. } => {
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                    bar.set_message(format!("epoch {epoch}, loss {loss:.4}"));
                }
            }
            Event::Epoch(s) => {
                let line = format!("{}{}", self.prefix, epoch_line(s));
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => console::say(line),
                }
            }
        }
        if console::stop_requested() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// Removes the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Checks the options that the library would only find after loading data, in the words of
/// the command line.
pub fn check_opts(opts: &TrainOpts) -> Result<()> {
    for (flag, dir) in [("--images", &opts.images), ("--labels", &opts.labels)] {
        if let Some(dir) = dir
            && !dir.is_dir()
        {
            bail!("{flag}: {} is not a folder", dir.display());
        }
    }
    if opts.images.is_none() {
        let data = SyntheticConfig::default();
        let min = data.min_size();
        if opts.size < min {
            bail!(
                "--size {}: the built-in volumes must be at least {min} voxels on a side (their \
                 small spheres have a radius of up to {} voxels and need a volume at least 4 \
                 radii wide); the default is {}",
                opts.size,
                data.sphere_radius[1],
                data.size
            );
        }
    }
    Ok(())
}

/// The folder an earlier run in the default output folder `out` is moved to.
pub fn previous_folder(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".previous");
    PathBuf::from(name)
}

/// Moves the folder `out` aside to [`previous_folder`] (replacing an older one there), so that
/// the default output folder can be trained into again without destroying the run in it; says
/// so on stdout.
///
/// # Errors
/// A folder that cannot be moved or an older copy that cannot be deleted (named).
pub fn set_aside(out: &Path) -> Result<()> {
    let to = previous_folder(out);
    if to.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&to)
            .with_context(|| format!("cannot delete the older run in {}", to.display()))?;
    }
    std::fs::rename(out, &to)
        .with_context(|| format!("cannot move {} to {}", out.display(), to.display()))?;
    console::say(format!(
        "moved the previous run in {} to {} (the default --out keeps one earlier run; give --out \
         to keep more, or --overwrite to replace it)",
        out.display(),
        to.display()
    ));
    Ok(())
}

/// The exit code of a command stopped at a boundary (130 interrupt, 141 closed stdout); `what`
/// says what was saved and is printed on stderr after an interrupt (not after a closed stdout,
/// which ends the command quietly).
pub fn stopped(what: &str) -> ExitCode {
    let code = console::stop_status().unwrap_or(crate::exit::EXIT_INTERRUPTED);
    if code == crate::exit::EXIT_INTERRUPTED {
        eprintln!("stopped: {what}");
    }
    ExitCode::from(code)
}

/// Runs `segloss train`.
pub fn run(args: &TrainArgs) -> Result<ExitCode> {
    let loss = args.loss;
    check_opts(&args.opts)?;
    let device = parse_device(&args.opts.device)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/train"));
    if args.out.is_none() && !args.opts.overwrite && !previous_run_files(&out).is_empty() {
        set_aside(&out)?;
    }
    let cfg = args.opts.config(loss, out);
    console::say(format!(
        "training {} with {}",
        args.opts.describe(&cfg),
        loss.name()
    ));
    let progress = Progress::new(cfg.epochs * cfg.steps_per_epoch, String::new());
    let start = std::time::Instant::now();
    let outcome = train(&cfg, &device.autodiff(), |e| progress.event(e));
    progress.finish();
    let outcome = outcome?;
    let dir = cfg.out_dir.display();
    if outcome.end == RunEnd::Stopped {
        let what = match outcome.epochs.last() {
            Some(last) => format!(
                "after epoch {} of {}: {dir}/model.bpk is the model of epoch {}, with {dir}/metrics.csv and {dir}/checkpoints/epoch-1..{}.bpk",
                last.epoch, cfg.epochs, last.epoch, last.epoch
            ),
            None => format!(
                "before the first epoch finished: no model was saved (only {dir}/model.json and an empty {dir}/metrics.csv)"
            ),
        };
        return Ok(stopped(&what));
    }
    let last = outcome.epochs.last().expect("at least one epoch");
    console::say(format!(
        "done in {:.0} s: mean foreground validation Dice {:.3}; wrote {} (curves), {} and {}",
        start.elapsed().as_secs_f64(),
        last.mean_foreground_dice(),
        cfg.out_dir.join("metrics.csv").display(),
        cfg.out_dir.join("checkpoints").display(),
        cfg.out_dir.join("model.bpk").display()
    ));
    console::say(format!(
        "next: segloss predict --model {} --out {}",
        cfg.out_dir.display(),
        cfg.out_dir.join("predict").display()
    ));
    Ok(ExitCode::SUCCESS)
}
