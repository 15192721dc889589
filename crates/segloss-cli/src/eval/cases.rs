//! Finding the cases of `segloss eval`: pairing two folders by case name, splitting the sorted
//! case list into shards, and evaluating one case.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use segloss_metrics::files::{nifti_files, nifti_stem};
use segloss_metrics::nifti::{GeometryTolerance, check_geometry, read_label_image};
use segloss_metrics::{CaseMetrics, LabelVolume, MetricOptions, evaluate};

/// One prediction/reference pair to evaluate; a missing or ambiguous side is a failure.
#[derive(Debug, Clone)]
pub struct CaseSpec {
    /// Case name (file name without .nii/.nii.gz).
    pub name: String,
    /// The prediction side.
    pub prediction: Side,
    /// The reference side.
    pub reference: Side,
}

/// What a folder holds for one side of a case.
#[derive(Debug, Clone)]
pub enum Side {
    /// The file.
    File(PathBuf),
    /// No file of that name.
    Missing,
    /// A symbolic link whose target does not exist.
    BrokenLink(PathBuf, PathBuf),
    /// Several files with the same case name (`a.nii` and `a.nii.gz`).
    Ambiguous(Vec<PathBuf>),
}

impl CaseSpec {
    /// The files of the case that exist (for refusing an output that is one of them).
    pub fn files(&self) -> Vec<&Path> {
        [&self.prediction, &self.reference]
            .into_iter()
            .flat_map(|s| match s {
                Side::File(p) => vec![p.as_path()],
                Side::Ambiguous(ps) => ps.iter().map(PathBuf::as_path).collect(),
                Side::BrokenLink(..) | Side::Missing => Vec::new(),
            })
            .collect()
    }
}

/// The case name of a file: its name without `.nii.gz` or `.nii` ([`nifti_stem`], as
/// `segloss train` pairs images with labels), or its whole name for another extension.
pub fn case_name(path: &Path) -> String {
    nifti_stem(path).unwrap_or_else(|| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}

/// The NIfTI files of a folder ([`nifti_files`]) by case name. Symbolic links count, broken ones
/// too (they fail their case with the target named); folders and other files are skipped.
fn nifti_files_by_case(dir: &Path) -> Result<BTreeMap<String, Side>> {
    let mut files: BTreeMap<String, Side> = BTreeMap::new();
    for path in nifti_files(dir)? {
        let side = if path.exists() {
            Side::File(path.clone())
        } else {
            // `exists` follows links: a link to nothing.
            let target = std::fs::read_link(&path).unwrap_or_default();
            Side::BrokenLink(path.clone(), target)
        };
        let key = case_name(&path);
        let merged = match files.remove(&key) {
            None => side,
            Some(previous) => {
                let mut all = match previous {
                    Side::Ambiguous(ps) => ps,
                    Side::File(p) | Side::BrokenLink(p, _) => vec![p],
                    Side::Missing => Vec::new(),
                };
                all.push(path);
                all.sort();
                Side::Ambiguous(all)
            }
        };
        files.insert(key, merged);
    }
    Ok(files)
}

/// Pairs the NIfTI files of two folders by case name (`a.nii` with `a.nii.gz`), sorted by
/// name; a file without counterpart is a case that fails.
///
/// # Errors
/// A folder cannot be read, or neither holds a NIfTI file.
pub fn folder_cases(pred_dir: &Path, ref_dir: &Path) -> Result<Vec<CaseSpec>> {
    let mut preds = nifti_files_by_case(pred_dir)?;
    let mut refs = nifti_files_by_case(ref_dir)?;
    let mut names: Vec<String> = preds.keys().chain(refs.keys()).cloned().collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        bail!(
            "no .nii or .nii.gz file in {} or {}",
            pred_dir.display(),
            ref_dir.display()
        );
    }
    Ok(names
        .into_iter()
        .map(|name| CaseSpec {
            prediction: preds.remove(&name).unwrap_or(Side::Missing),
            reference: refs.remove(&name).unwrap_or(Side::Missing),
            name,
        })
        .collect())
}

/// `--shard I/N`: shard `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 1-based index, `1..=count`.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let usage = "use --shard I/N with 1 <= I <= N, e.g. --shard 1/4 ... --shard 4/4";
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not of the form I/N; {usage}"))?;
        let parse = |x: &str, what: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| format!("{what} {x:?} in {s:?} is not a whole number; {usage}"))
        };
        let (index, count) = (parse(i, "the shard index")?, parse(n, "the shard count")?);
        if count == 0 {
            return Err(format!("the shard count in {s:?} is 0; {usage}"));
        }
        if index == 0 {
            return Err(format!(
                "shards are numbered from 1, got {s:?}; {usage} (with a Slurm array --array=1-{count}, pass $SLURM_ARRAY_TASK_ID)"
            ));
        }
        if index > count {
            return Err(format!(
                "shard {index} of {count} does not exist in {s:?}; {usage}"
            ));
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// The cases of this shard: case `k` of the sorted list (from 0) goes to shard
    /// `k mod N + 1`, a split that depends only on the sorted names.
    pub fn select(self, cases: Vec<CaseSpec>) -> Vec<CaseSpec> {
        cases
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % self.count + 1 == self.index)
            .map(|(_, c)| c)
            .collect()
    }
}

fn side_path<'a>(side: &'a Side, what: &str, other: &Side) -> Result<&'a Path> {
    match side {
        Side::File(p) => Ok(p),
        Side::Missing => {
            let other_what = if what == "prediction" {
                "reference"
            } else {
                "prediction"
            };
            match other {
                Side::File(p) | Side::BrokenLink(p, _) => {
                    bail!("no {what} file for {other_what} {}", p.display())
                }
                _ => bail!("no {what} file"),
            }
        }
        Side::BrokenLink(link, target) => bail!(
            "the {what} {} is a broken symbolic link: its target {} does not exist",
            link.display(),
            target.display()
        ),
        Side::Ambiguous(paths) => bail!(
            "several {what} files have this case name: {} (keep one of them)",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    }
}

/// Evaluates one case: its metrics and the voxel count of its images.
///
/// # Errors
/// A side is missing, broken or ambiguous, a file cannot be read, or the geometries differ.
pub fn evaluate_case(
    case: &CaseSpec,
    options: &MetricOptions,
    tol: GeometryTolerance,
) -> Result<(CaseMetrics, u64)> {
    let pred_path = side_path(&case.prediction, "prediction", &case.reference)?;
    let ref_path = side_path(&case.reference, "reference", &case.prediction)?;
    // Decompression is single-threaded: read the two files at the same time.
    let (pred, reference) = std::thread::scope(|s| {
        let p = s.spawn(|| read_label_image(pred_path));
        let r = read_label_image(ref_path);
        (p.join().expect("the reader thread panicked"), r)
    });
    let (pred, reference) = (pred?, reference?);
    check_geometry(&pred.geometry, &reference.geometry, tol)
        .with_context(|| format!("{} and {}", pred_path.display(), ref_path.display()))?;
    let voxels = reference.volume.labels().len() as u64;
    let pred_volume = pred.volume.with_spacing(reference.volume.spacing())?;
    Ok((evaluate(&pred_volume, &reference.volume, options)?, voxels))
}

/// The metrics of `label` when it is absent from both images (TN still to be set), from the
/// library under `options` (so that `--empty` decides them, as for any other label).
///
/// # Errors
/// Never in practice (a 1-voxel volume is valid).
pub fn absent_label(label: u16, options: &MetricOptions) -> Result<segloss_metrics::LabelMetrics> {
    let empty = LabelVolume::new(vec![0], &[1, 1, 1], &[1.0, 1.0, 1.0])?;
    let options = MetricOptions {
        labels: Some(vec![label]),
        ..options.clone()
    };
    let m = evaluate(&empty, &empty, &options)?;
    m.labels
        .into_iter()
        .next()
        .context("the library returned no row for a requested label")
}
