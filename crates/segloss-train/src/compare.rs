//! Comparing losses: the same network, data and seed trained with each loss, then a report
//! (`report.md`) with plots (`training_loss.png`, `validation_dice.png`) of how each one
//! optimises, the small structures drawn apart from the large ones.
//!
//! Each run writes its own folder (`<out>/<loss>`, see [`train`]); the report and the plots are
//! written whole ([`write_atomically`]). A comparison stopped by its caller still writes the
//! report of the epochs that finished, marking the runs cut short.

use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use plotters::coord::combinators::WithKeyPoints;
use plotters::coord::types::RangedCoordi32;
use plotters::prelude::*;

use crate::dataset::DataSource;
use crate::losses::LossKind;
use crate::model::ModelCard;
use crate::run::{
    EpochSummary, Event, RunEnd, TrainConfig, previous_run_files, read_metrics, train,
};
use segloss_metrics::files::{write_atomically, write_bytes_atomically};

/// One loss's run in a comparison.
#[derive(Debug, Clone)]
pub struct LossRun {
    /// The loss.
    pub loss: LossKind,
    /// Its finished epochs.
    pub epochs: Vec<EpochSummary>,
    /// Where its run was written (`<out>/<loss name>`).
    pub dir: PathBuf,
    /// The epochs it was to train; more than `epochs.len()` for a run that was stopped.
    pub planned_epochs: usize,
}

/// What [`compare`] did.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The runs with at least one finished epoch, in the order of the losses (the last one
    /// cut short when the comparison was stopped during it).
    pub runs: Vec<LossRun>,
    /// Whether the caller stopped the comparison.
    pub stopped: bool,
    /// The losses not trained (or without a finished epoch) because the comparison stopped.
    pub not_run: Vec<LossKind>,
    /// Whether `report.md` and the plots were written (not when no epoch finished).
    pub report_written: bool,
}

/// The report files of a comparison in `out`.
const REPORT_FILES: [&str; 3] = ["report.md", "training_loss.png", "validation_dice.png"];

/// The files of an earlier comparison in `out` for `losses`: its report and plots, and the run
/// files ([`previous_run_files`]) of each `<out>/<loss>`.
pub fn previous_comparison_files(out: &Path, losses: &[LossKind]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = REPORT_FILES
        .iter()
        .map(|f| out.join(f))
        .filter(|p| p.exists())
        .collect();
    for loss in losses {
        files.extend(previous_run_files(&out.join(loss.name())));
    }
    files
}

/// Trains `base` once per loss of `losses` (each into `base.out_dir/<loss name>`, same seed,
/// same data), then writes the report into `base.out_dir`. `on_event` sees each run's events
/// with the loss they belong to; returning [`ControlFlow::Break`] stops the comparison there
/// (the run in progress keeps its finished epochs, see [`train`]) and the report is written for
/// the epochs that finished.
///
/// # Errors
/// No loss or a repeated one; an output folder that holds an earlier comparison without
/// `base.overwrite` (checked before anything is trained; with it, the earlier report and runs
/// are deleted); a failing run; or a report that cannot be written.
pub fn compare(
    base: &TrainConfig,
    losses: &[LossKind],
    device: &Device,
    mut on_event: impl FnMut(LossKind, &Event) -> ControlFlow<()>,
) -> Result<Comparison> {
    if losses.is_empty() {
        bail!("compare: give at least one loss");
    }
    for (i, l) in losses.iter().enumerate() {
        if losses[..i].contains(l) {
            bail!("compare: the loss `{}` is listed twice", l.name());
        }
    }
    let previous = previous_comparison_files(&base.out_dir, losses);
    if !previous.is_empty() {
        if !base.overwrite {
            let names: Vec<String> = previous
                .iter()
                .map(|p| {
                    p.strip_prefix(&base.out_dir)
                        .unwrap_or(p)
                        .display()
                        .to_string()
                })
                .collect();
            bail!(
                "{} already holds a comparison ({}): refusing to replace it; choose another \
                 --out, or add --overwrite to delete it first",
                base.out_dir.display(),
                names.join(", ")
            );
        }
        for f in REPORT_FILES {
            let path = base.out_dir.join(f);
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot delete {}", path.display()))?;
            }
        }
    }
    let mut runs = Vec::new();
    let mut not_run = Vec::new();
    let mut stopped = false;
    for &loss in losses {
        if stopped {
            not_run.push(loss);
            continue;
        }
        let dir = base.out_dir.join(loss.name());
        let cfg = TrainConfig {
            loss,
            out_dir: dir.clone(),
            ..base.clone()
        };
        let outcome = train(&cfg, device, |e| on_event(loss, e))
            .with_context(|| format!("training with {}", loss.name()))?;
        stopped = outcome.end == RunEnd::Stopped;
        if outcome.epochs.is_empty() {
            not_run.push(loss);
        } else {
            runs.push(LossRun {
                loss,
                epochs: outcome.epochs,
                dir,
                planned_epochs: base.epochs,
            });
        }
    }
    let report_written = !runs.is_empty();
    if report_written {
        let mut description = describe(base);
        if !not_run.is_empty() {
            let names: Vec<&str> = not_run.iter().map(|l| l.name()).collect();
            write!(
                description,
                "\n\nThe comparison was stopped before {} finished an epoch: not in the report.",
                names.join(", ")
            )
            .unwrap();
        }
        write_report(&base.out_dir, &runs, &class_names(&base.data), &description)?;
    }
    Ok(Comparison {
        runs,
        stopped,
        not_run,
        report_written,
    })
}

/// Rebuilds the report of a comparison already run into `out` without training: after
/// changing the report, or from an interrupted comparison's finished epochs. `losses` chooses
/// the runs (`<out>/<loss>`); `None` takes every loss that has a run there. Each run is
/// described with the settings recorded in its `model.json` (how it was trained), not with
/// today's command line.
///
/// # Errors
/// No run found, a missing or malformed `metrics.csv` or `model.json` (named), or a report that
/// cannot be written.
pub fn report_only(out: &Path, losses: Option<&[LossKind]>) -> Result<Vec<LossRun>> {
    let losses: Vec<LossKind> = match losses {
        Some(l) => l.to_vec(),
        None => {
            let found: Vec<LossKind> = LossKind::ALL
                .iter()
                .map(|(_, l)| *l)
                .filter(|l| out.join(l.name()).join("metrics.csv").is_file())
                .collect();
            if found.is_empty() {
                bail!(
                    "no run to report in {}: no <loss>/metrics.csv there (is it a folder written by `segloss compare`?)",
                    out.display()
                );
            }
            found
        }
    };
    let mut runs = Vec::new();
    let mut configs = Vec::new();
    let mut names = Vec::new();
    for &loss in &losses {
        let dir = out.join(loss.name());
        let epochs = read_metrics(&dir.join("metrics.csv"))?;
        if epochs.is_empty() {
            bail!(
                "{}: no finished epoch to report",
                dir.join("metrics.csv").display()
            );
        }
        let card = ModelCard::read(&dir)?;
        let cfg = TrainConfig::from_card(&card, dir.clone());
        if names.is_empty()
            && let Some((config, _)) = &card.synthetic
        {
            names = (1..config.classes).map(|c| config.class_name(c)).collect();
        }
        runs.push(LossRun {
            loss,
            planned_epochs: cfg.as_ref().map_or(epochs.len(), |c| c.epochs),
            epochs,
            dir,
        });
        configs.push(cfg);
    }
    write_report(out, &runs, &names, &describe_runs(&runs, &configs))?;
    Ok(runs)
}

/// The description of runs trained with the settings `configs` (one per run; `None` where the
/// run's `model.json` does not record them): one sentence when they share their settings, one
/// per run otherwise.
fn describe_runs(runs: &[LossRun], configs: &[Option<TrainConfig>]) -> String {
    // Settings compared without the loss and the folder, which differ by design.
    let key = |c: &TrainConfig| describe(c);
    let first = configs.first().cloned().flatten();
    if let Some(first) = &first
        && configs
            .iter()
            .all(|c| c.as_ref().is_some_and(|c| key(c) == key(first)))
    {
        return describe(first);
    }
    let mut text = String::from("The runs were trained with different settings:\n");
    for (r, c) in runs.iter().zip(configs) {
        match c {
            Some(c) => writeln!(text, "\n- **{}**: {}", r.loss.name(), describe(c)).unwrap(),
            None => writeln!(
                text,
                "\n- **{}**: settings not recorded in {}",
                r.loss.name(),
                r.dir.join("model.json").display()
            )
            .unwrap(),
        }
    }
    text
}

/// Names of the foreground classes, for the report.
pub fn class_names(data: &DataSource) -> Vec<String> {
    match data {
        DataSource::Synthetic { config, .. } => {
            (1..config.classes).map(|c| config.class_name(c)).collect()
        }
        DataSource::Nifti { .. } => Vec::new(),
    }
}

fn describe(cfg: &TrainConfig) -> String {
    let data = match &cfg.data {
        DataSource::Synthetic {
            config,
            train_volumes,
            valid_volumes,
        } => format!(
            "the built-in data ({}^3 volumes, {} classes, noise {}, data seed {}; {train_volumes} training and {valid_volumes} validation volumes)",
            config.size, config.classes, config.noise, config.seed
        ),
        DataSource::Nifti {
            images,
            labels,
            valid_fraction,
            patch,
        } => format!(
            "NIfTI images from `{}` with labels from `{}` ({patch}^3 patches, {:.0}% of the cases for validation)",
            images.display(),
            labels.display(),
            valid_fraction * 100.0
        ),
    };
    format!(
        "A 3D U-Net (width {}, depth {}) trained from the same initial weights (seed {}) on {data}, {} epochs of {} Adam steps (batch {}, learning rate {}), once per loss.",
        cfg.base_width,
        cfg.depth,
        cfg.seed,
        cfg.epochs,
        cfg.steps_per_epoch,
        cfg.batch_size,
        cfg.learning_rate
    )
}

/// The first epoch at which a class's validation Dice reached `level`.
fn first_epoch_at(epochs: &[EpochSummary], class: usize, level: f64) -> Option<usize> {
    epochs
        .iter()
        .find(|e| e.valid_dice.get(class).is_some_and(|d| *d >= level))
        .map(|e| e.epoch)
}

/// The name of a run in the report's tables: its loss, and how far it got when it was stopped.
fn run_label(r: &LossRun) -> String {
    if r.epochs.len() < r.planned_epochs {
        format!(
            "{} (stopped after {} of {} epochs)",
            r.loss.name(),
            r.epochs.len(),
            r.planned_epochs
        )
    } else {
        r.loss.name().to_string()
    }
}

/// Writes `report.md`, `training_loss.png` and `validation_dice.png` into `out` for `runs`,
/// each file whole. `class_names` names the foreground classes (classes without a name are
/// called `class c`); `description` is the report's first paragraph.
///
/// # Errors
/// Runs without epochs or with different numbers of classes, or a file that cannot be written.
pub fn write_report(
    out: &Path,
    runs: &[LossRun],
    class_names: &[String],
    description: &str,
) -> Result<()> {
    let classes = runs
        .first()
        .and_then(|r| r.epochs.first())
        .map(|e| e.valid_dice.len())
        .context("compare: no epochs to report")?;
    if runs
        .iter()
        .any(|r| r.epochs.is_empty() || r.epochs.iter().any(|e| e.valid_dice.len() != classes))
    {
        bail!("compare: every run needs epochs with {classes} classes");
    }
    let name = |c: usize| {
        class_names
            .get(c)
            .cloned()
            .unwrap_or_else(|| format!("class {}", c + 1))
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let png = out.join("training_loss.png");
    write_atomically(&png, |temp| plot_training_loss(temp, &png, runs))?;
    let png = out.join("validation_dice.png");
    write_atomically(&png, |temp| {
        plot_validation_dice(temp, &png, runs, classes, &name)
    })?;

    let mut md = String::new();
    writeln!(md, "# Loss comparison\n\n{description}\n").unwrap();
    writeln!(
        md,
        "## Final validation Dice (pooled per class over the validation volumes)\n"
    )
    .unwrap();
    let mut header = String::from("| loss |");
    let mut rule = String::from("|---|");
    for c in 0..classes {
        write!(header, " {} |", name(c)).unwrap();
        rule.push_str("---|");
    }
    header.push_str(" mean | seconds per epoch |");
    rule.push_str("---|---|");
    writeln!(md, "{header}\n{rule}").unwrap();
    for r in runs {
        let last = r.epochs.last().expect("checked");
        let mut row = format!("| {} |", run_label(r));
        for d in &last.valid_dice {
            write!(row, " {d:.3} |").unwrap();
        }
        let secs = r.epochs.iter().map(|e| e.seconds).sum::<f64>() / r.epochs.len() as f64;
        write!(row, " {:.3} | {secs:.1} |", last.mean_foreground_dice()).unwrap();
        writeln!(md, "{row}").unwrap();
    }
    writeln!(md, "\n## First epoch with validation Dice >= 0.8\n").unwrap();
    let short = header.trim_end_matches(" seconds per epoch |");
    let short_rule = &rule[..rule.len() - 4];
    writeln!(md, "{short}\n{short_rule}").unwrap();
    for r in runs {
        let mut row = format!("| {} |", run_label(r));
        for c in 0..classes {
            match first_epoch_at(&r.epochs, c, 0.8) {
                Some(e) => write!(row, " {e} |").unwrap(),
                None => row.push_str(" never |"),
            }
        }
        let mean_at = r
            .epochs
            .iter()
            .find(|e| e.mean_foreground_dice() >= 0.8)
            .map_or("never".to_string(), |e| e.epoch.to_string());
        write!(row, " {mean_at} |").unwrap();
        writeln!(md, "{row}").unwrap();
    }
    writeln!(
        md,
        "\n## Curves\n\nValidation Dice per class over the epochs, one panel per class (the largest structure first, the smallest last):\n\n![validation Dice](validation_dice.png)\n\nTraining loss over the epochs, each divided by its first epoch's value (the losses have different scales):\n\n![training loss](training_loss.png)\n\nEach run's own curves are in `<loss>/metrics.csv`, its weights in `<loss>/model.bpk`."
    )
    .unwrap();
    write_bytes_atomically(&out.join("report.md"), md)
}

static FONT: Once = Once::new();

/// Registers the bundled DejaVu Sans as plotters' `sans-serif` (no system fonts needed).
fn register_font() {
    FONT.call_once(|| {
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            include_bytes!("../assets/DejaVuSans.ttf"),
        )
        .unwrap_or_else(|_| panic!("the bundled font is a valid TrueType file"));
    });
}

/// The "tab10" colours, one per loss.
fn colour(i: usize) -> RGBColor {
    const TAB10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = TAB10[i % TAB10.len()];
    RGBColor(r, g, b)
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot draw {}: {e}", path.display())
}

/// The epochs labelled on the plots' epoch axis for runs of up to `epochs` epochs, in order and
/// each once: every epoch up to 10, beyond that epoch 1 and the multiples of a round step (2, 5,
/// 10, 20, 50, ...) that keeps the labels at 11 or fewer.
pub fn epoch_ticks(epochs: usize) -> Vec<usize> {
    let epochs = epochs.max(1);
    let mut step = 1;
    let mut next = [2, 5, 10].into_iter().cycle();
    let mut scale = 1;
    while epochs / step > 10 {
        let m = next.next().expect("cycle");
        if m == 2 && step > 1 {
            scale *= 10;
        }
        step = m * scale;
    }
    let mut ticks = vec![1];
    ticks.extend((1..=epochs / step).map(|k| k * step).filter(|&e| e > 1));
    ticks
}

/// The epoch axis of the plots: from 1 to the last epoch (at least 2, so that the axis has a
/// length), labelled at [`epoch_ticks`] only.
fn epoch_axis(epochs: usize) -> WithKeyPoints<RangedCoordi32> {
    (1i32..epochs.max(2) as i32)
        .with_key_points(epoch_ticks(epochs).into_iter().map(|e| e as i32).collect())
}

/// Draws the legend (one coloured line and loss name per run) in `area`, a strip beside the
/// plots, so that it never covers a curve.
fn draw_legend(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    runs: &[LossRun],
    top: i32,
    path: &Path,
) -> Result<()> {
    for (i, r) in runs.iter().enumerate() {
        let y = top + 26 * i as i32;
        let c = colour(i);
        area.draw(&PathElement::new(vec![(8, y), (36, y)], c.stroke_width(3)))
            .map_err(|e| plot_err(path, e))?;
        area.draw(&Text::new(
            r.loss.name().to_string(),
            (44, y - 9),
            ("sans-serif", 17).into_font(),
        ))
        .map_err(|e| plot_err(path, e))?;
    }
    Ok(())
}

/// Width of the legend strip right of the plots, in pixels.
const LEGEND_WIDTH: u32 = 150;

/// Draws the training-loss plot into `file` (`path` is the name used in errors).
fn plot_training_loss(file: &Path, path: &Path, runs: &[LossRun]) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(file, (900 + LEGEND_WIDTH, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let (plot, legend) = root.split_horizontally(900);
    let epochs = runs.iter().map(|r| r.epochs.len()).max().unwrap_or(1);
    let rel = |r: &LossRun| -> Vec<(i32, f64)> {
        let first = r.epochs[0].train_loss;
        r.epochs
            .iter()
            .map(|e| {
                (
                    e.epoch as i32,
                    if first > 0.0 {
                        e.train_loss / first
                    } else {
                        0.0
                    },
                )
            })
            .collect()
    };
    let top = runs
        .iter()
        .flat_map(|r| rel(r).into_iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(&plot)
        .caption("Training loss (relative to epoch 1)", ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(epoch_axis(epochs), 0f64..top)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss / loss at epoch 1")
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (i, r) in runs.iter().enumerate() {
        chart
            .draw_series(LineSeries::new(rel(r), colour(i).stroke_width(2)))
            .map_err(|e| plot_err(path, e))?;
    }
    draw_legend(&legend, runs, 70, path)?;
    root.present().map_err(|e| plot_err(path, e))
}

/// Draws the validation-Dice panels into `file` (`path` is the name used in errors).
fn plot_validation_dice(
    file: &Path,
    path: &Path,
    runs: &[LossRun],
    classes: usize,
    name: &dyn Fn(usize) -> String,
) -> Result<()> {
    register_font();
    let panels_width = 420 * classes.max(1) as u32;
    let root = BitMapBackend::new(file, (panels_width + LEGEND_WIDTH, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let (plots, legend) = root.split_horizontally(panels_width);
    let panels = plots.split_evenly((1, classes.max(1)));
    let epochs = runs.iter().map(|r| r.epochs.len()).max().unwrap_or(1);
    for (c, panel) in panels.iter().enumerate() {
        let mut chart = ChartBuilder::on(panel)
            .caption(name(c), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(45)
            .build_cartesian_2d(epoch_axis(epochs), 0f64..1f64)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(if c == 0 { "validation Dice" } else { "" })
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for (i, r) in runs.iter().enumerate() {
            let points: Vec<(i32, f64)> = r
                .epochs
                .iter()
                .filter(|e| !e.valid_dice[c].is_nan())
                .map(|e| (e.epoch as i32, e.valid_dice[c]))
                .collect();
            chart
                .draw_series(LineSeries::new(points, colour(i).stroke_width(2)))
                .map_err(|e| plot_err(path, e))?;
        }
    }
    draw_legend(&legend, runs, 60, path)?;
    root.present().map_err(|e| plot_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(loss: LossKind, dice: &[[f64; 2]]) -> LossRun {
        LossRun {
            loss,
            epochs: dice
                .iter()
                .enumerate()
                .map(|(i, d)| EpochSummary {
                    epoch: i + 1,
                    train_loss: 1.0 / (i + 1) as f64,
                    valid_dice: d.to_vec(),
                    seconds: 2.0,
                })
                .collect(),
            dir: PathBuf::new(),
            planned_epochs: dice.len(),
        }
    }

    #[test]
    fn report_tables_and_plots_are_written() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let runs = [
            run(LossKind::Dice, &[[0.5, 0.0], [0.85, 0.1], [0.9, 0.2]]),
            run(LossKind::DiceCe, &[[0.6, 0.3], [0.9, 0.81], [0.95, 0.9]]),
        ];
        write_report(&dir, &runs, &["large".into(), "small".into()], "Two runs.").unwrap();
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(
            md.contains("| loss | large | small | mean | seconds per epoch |"),
            "{md}"
        );
        assert!(
            md.contains("| dice | 0.900 | 0.200 | 0.550 | 2.0 |"),
            "{md}"
        );
        // dice reaches 0.8 on the large class at epoch 2 and never on the small one.
        assert!(
            md.contains(
                "| loss | large | small | mean |\n|---|---|---|---|\n| dice | 2 | never | never |\n"
            ),
            "{md}"
        );
        assert!(md.contains("| dice-ce | 2 | 2 | 2 |\n"), "{md}");
        for png in ["training_loss.png", "validation_dice.png"] {
            let bytes = std::fs::read(dir.join(png)).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{png} is a PNG file");
            assert!(
                bytes.len() > 5_000,
                "{png} has content ({} bytes)",
                bytes.len()
            );
        }
        // A run cut short is named so in the tables.
        let mut short = run(LossKind::Gdl, &[[0.5, 0.1]]);
        short.planned_epochs = 3;
        write_report(&dir, &[runs[0].clone(), short], &[], "Stopped.").unwrap();
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(
            md.contains("| gdl (stopped after 1 of 3 epochs) | 0.500 | 0.100 |"),
            "{md}"
        );
    }

    #[test]
    fn the_epoch_axis_labels_each_epoch_once() {
        // 6 epochs: 1..6, each once (the old axis read "1 2 2 2 3 4 5 6").
        assert_eq!(epoch_ticks(6), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(epoch_ticks(1), vec![1]);
        assert_eq!(epoch_ticks(10), (1..=10).collect::<Vec<_>>());
        assert_eq!(epoch_ticks(20), vec![1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]);
        assert_eq!(
            epoch_ticks(50),
            vec![1, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
        );
        assert_eq!(epoch_ticks(11), vec![1, 2, 4, 6, 8, 10]);
        assert_eq!(
            epoch_ticks(101),
            vec![1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
        );
        assert_eq!(epoch_ticks(250), vec![1, 50, 100, 150, 200, 250]);
        for n in 1..500 {
            let t = epoch_ticks(n);
            assert!(t.windows(2).all(|w| w[0] < w[1]), "{n}: {t:?}");
            assert!(
                t.len() <= 11 && t[0] == 1 && *t.last().unwrap() <= n,
                "{n}: {t:?}"
            );
        }
        // The axis takes exactly those epochs as its labelled points.
        use plotters::coord::ranged1d::{BoldPoints, Ranged};
        let axis = epoch_axis(6);
        assert_eq!(axis.key_points(BoldPoints(100)), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn empty_or_repeated_loss_lists_are_refused() {
        let device = Device::flex().autodiff();
        let cfg = TrainConfig::default();
        let go_on = |_, _: &Event| ControlFlow::Continue(());
        let e = compare(&cfg, &[], &device, go_on).unwrap_err().to_string();
        assert_eq!(e, "compare: give at least one loss");
        let e = compare(&cfg, &[LossKind::Dice, LossKind::Dice], &device, go_on)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "compare: the loss `dice` is listed twice");
    }
}
