//! Comparing losses: the same network, data and seed trained with each loss, then a report
//! (`report.md`) with plots (`training_loss.png`, `validation_dice.png`) of how each one
//! optimises, the small structures drawn apart from the large ones.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use plotters::prelude::*;

use crate::dataset::DataSource;
use crate::losses::LossKind;
use crate::run::{EpochSummary, Event, TrainConfig, read_metrics, train};

/// One loss's run in a comparison.
#[derive(Debug, Clone)]
pub struct LossRun {
    /// The loss.
    pub loss: LossKind,
    /// Its epochs.
    pub epochs: Vec<EpochSummary>,
    /// Where its run was written (`<out>/<loss name>`).
    pub dir: PathBuf,
}

/// Trains `base` once per loss of `losses` (each into `base.out_dir/<loss name>`, same seed,
/// same data), then writes the report into `base.out_dir`. `on_event` sees each run's events
/// with the loss they belong to.
///
/// # Errors
/// No loss or a repeated one, a failing run, or a report that cannot be written.
pub fn compare(
    base: &TrainConfig,
    losses: &[LossKind],
    device: &Device,
    mut on_event: impl FnMut(LossKind, &Event),
) -> Result<Vec<LossRun>> {
    if losses.is_empty() {
        bail!("compare: give at least one loss");
    }
    for (i, l) in losses.iter().enumerate() {
        if losses[..i].contains(l) {
            bail!("compare: the loss `{}` is listed twice", l.name());
        }
    }
    let mut runs = Vec::new();
    for &loss in losses {
        let dir = base.out_dir.join(loss.name());
        let cfg = TrainConfig {
            loss,
            out_dir: dir.clone(),
            ..base.clone()
        };
        let outcome = train(&cfg, device, |e| on_event(loss, e))
            .with_context(|| format!("training with {}", loss.name()))?;
        runs.push(LossRun {
            loss,
            epochs: outcome.epochs,
            dir,
        });
    }
    write_report(
        &base.out_dir,
        &runs,
        &class_names(&base.data),
        &describe(base),
    )?;
    Ok(runs)
}

/// Rebuilds the report of a comparison already run into `base.out_dir` (one `<loss>/metrics.csv`
/// per loss) without training: after changing the report, or from an interrupted comparison's
/// finished runs.
///
/// # Errors
/// A missing or malformed `metrics.csv` (named), or a report that cannot be written.
pub fn report_only(base: &TrainConfig, losses: &[LossKind]) -> Result<Vec<LossRun>> {
    let runs = losses
        .iter()
        .map(|&loss| {
            let dir = base.out_dir.join(loss.name());
            let epochs = read_metrics(&dir.join("metrics.csv"))?;
            Ok(LossRun { loss, epochs, dir })
        })
        .collect::<Result<Vec<_>>>()?;
    write_report(
        &base.out_dir,
        &runs,
        &class_names(&base.data),
        &describe(base),
    )?;
    Ok(runs)
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

/// Writes `report.md`, `training_loss.png` and `validation_dice.png` into `out` for `runs`.
/// `class_names` names the foreground classes (classes without a name are called `class c`);
/// `description` is the report's first paragraph.
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
    plot_training_loss(&out.join("training_loss.png"), runs)?;
    plot_validation_dice(&out.join("validation_dice.png"), runs, classes, &name)?;

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
        let mut row = format!("| {} |", r.loss.name());
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
        let mut row = format!("| {} |", r.loss.name());
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
    let path = out.join("report.md");
    std::fs::write(&path, md).with_context(|| format!("cannot write {}", path.display()))
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

fn plot_err(path: &Path, e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow::anyhow!("cannot draw {}: {e:?}", path.display())
}

fn plot_training_loss(path: &Path, runs: &[LossRun]) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let epochs = runs.iter().map(|r| r.epochs.len()).max().unwrap_or(1);
    let rel = |r: &LossRun| -> Vec<(f64, f64)> {
        let first = r.epochs[0].train_loss;
        r.epochs
            .iter()
            .map(|e| {
                (
                    e.epoch as f64,
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
    let mut chart = ChartBuilder::on(&root)
        .caption("Training loss (relative to epoch 1)", ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(1f64..epochs.max(2) as f64, 0f64..top)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss / loss at epoch 1")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (i, r) in runs.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(rel(r), c.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?
            .label(r.loss.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}

fn plot_validation_dice(
    path: &Path,
    runs: &[LossRun],
    classes: usize,
    name: &dyn Fn(usize) -> String,
) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (420 * classes.max(1) as u32, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let panels = root.split_evenly((1, classes.max(1)));
    let epochs = runs.iter().map(|r| r.epochs.len()).max().unwrap_or(1);
    for (c, panel) in panels.iter().enumerate() {
        let mut chart = ChartBuilder::on(panel)
            .caption(name(c), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(45)
            .build_cartesian_2d(1f64..epochs.max(2) as f64, 0f64..1f64)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc(if c == 0 { "validation Dice" } else { "" })
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for (i, r) in runs.iter().enumerate() {
            let colour = colour(i);
            let points: Vec<(f64, f64)> = r
                .epochs
                .iter()
                .filter(|e| !e.valid_dice[c].is_nan())
                .map(|e| (e.epoch as f64, e.valid_dice[c]))
                .collect();
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(|e| plot_err(path, e))?
                .label(r.loss.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        if c == 0 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| plot_err(path, e))?;
        }
    }
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
        }
    }

    #[test]
    fn report_tables_and_plots_are_written() {
        let dir = std::env::temp_dir().join(format!("segloss-compare-{}", std::process::id()));
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
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn empty_or_repeated_loss_lists_are_refused() {
        let device = Device::flex().autodiff();
        let cfg = TrainConfig::default();
        let e = compare(&cfg, &[], &device, |_, _| {})
            .unwrap_err()
            .to_string();
        assert_eq!(e, "compare: give at least one loss");
        let e = compare(&cfg, &[LossKind::Dice, LossKind::Dice], &device, |_, _| {})
            .unwrap_err()
            .to_string();
        assert_eq!(e, "compare: the loss `dice` is listed twice");
    }
}
