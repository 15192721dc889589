//! Files: writing output files so that they cannot destroy inputs or be left half written, and
//! finding NIfTI files by name ([`nifti_stem`], [`nifti_files`]).
//!
//! Every file segloss writes goes through [`write_atomically`]: the content is written to a
//! temporary file beside the destination (same folder, so the final step is a rename on one file
//! system) and renamed over the destination only once complete. A run that fails, panics or is
//! interrupted leaves either the old file or the new one, never a truncated mix; the temporary
//! file is removed when the write fails. [`refuse_input`] refuses an output path that names one
//! of the command's inputs (the same file, through any path or symbolic link).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Writes `path` through a temporary file in the same folder: `write` receives the temporary
/// file's path (its name ends with the destination's file name, so extensions such as `.nii.gz`
/// that select the encoding are kept), and the file is renamed to `path` when `write` returns
/// `Ok`. On an error the temporary file is deleted and `path` is untouched.
///
/// # Errors
/// The destination's folder cannot hold a new file, `write` fails (its error is returned with
/// the destination named), or the rename fails.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} does not name a file", path.display()))?;
    let temp = tempfile::Builder::new()
        .prefix(".segloss-")
        .suffix(&format!("-{}", name.to_string_lossy()))
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    write(temp.path()).with_context(|| format!("cannot write {}", path.display()))?;
    temp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// [`write_atomically`] for content already in memory.
///
/// # Errors
/// As [`write_atomically`].
pub fn write_bytes_atomically(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    write_atomically(path, |temp| {
        std::fs::write(temp, bytes.as_ref()).map_err(anyhow::Error::from)
    })
}

/// Refuses an output path that is one of `inputs` (compared as files: through symbolic links,
/// `..` and different spellings of one path). An output that does not exist yet is never an
/// input.
///
/// # Errors
/// `output` is one of `inputs`; the message names both.
pub fn refuse_input<'a>(output: &Path, inputs: impl IntoIterator<Item = &'a Path>) -> Result<()> {
    let Ok(out) = output.canonicalize() else {
        return Ok(());
    };
    for input in inputs {
        if input.canonicalize().is_ok_and(|i| i == out) {
            bail!(
                "the output {} is the input {}: refusing to overwrite an input (choose another output path)",
                output.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// The name of a NIfTI file without its extension, `case` for `case.nii.gz` and `case.nii` (the
/// case name by which images, label maps and predictions are paired), or `None` for a name with
/// neither extension. A name that is not UTF-8 is read with its invalid bytes replaced (U+FFFD).
pub fn nifti_stem(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy();
    name.strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
        .map(str::to_string)
}

/// The NIfTI files of the folder `dir` (the entries whose name has a [`nifti_stem`]), sorted by
/// path. Sub-folders are skipped; symbolic links count, broken ones too (reading one fails with
/// its name, so a caller that reports it can; [`Path::is_file`] leaves them out).
///
/// # Errors
/// `dir` cannot be read (it does not exist, is not a folder, or is not readable).
pub fn nifti_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let cannot = || format!("cannot read folder {}", dir.display());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(cannot)? {
        let path = entry.with_context(cannot)?.path();
        if nifti_stem(&path).is_some() && !path.is_dir() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.csv");
        std::fs::write(&path, "old").unwrap();
        let err = write_atomically(&path, |temp| {
            std::fs::write(temp, "half")?;
            bail!("disk full")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("disk full"), "{err:#}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_bytes_atomically(&path, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_temporary_keeps_the_extension() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.nii.gz");
        write_atomically(&path, |temp| {
            assert!(temp.to_string_lossy().ends_with("-a.nii.gz"));
            assert_eq!(temp.parent(), Some(dir.path()));
            std::fs::write(temp, "x").map_err(Into::into)
        })
        .unwrap();
        assert!(path.exists());
    }

    #[test]
    fn nifti_names_lose_their_extension_and_other_names_have_none() {
        assert_eq!(
            nifti_stem(Path::new("a/case.nii.gz")).as_deref(),
            Some("case")
        );
        assert_eq!(
            nifti_stem(Path::new("case_0000.nii")).as_deref(),
            Some("case_0000")
        );
        assert_eq!(nifti_stem(Path::new("case.nii.gz.bak")), None);
        assert_eq!(nifti_stem(Path::new("case.gz")), None);
        assert_eq!(nifti_stem(Path::new("/")), None);
    }

    #[test]
    fn a_folder_lists_its_nifti_files_sorted_without_sub_folders() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.nii.gz", "a.nii", "notes.txt"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        std::fs::create_dir(dir.path().join("c.nii")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join("d.nii.gz")).unwrap();
        let names: Vec<String> = nifti_files(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let mut expected = vec!["a.nii", "b.nii.gz"];
        if cfg!(unix) {
            expected.push("d.nii.gz");
        }
        assert_eq!(names, expected);
        let err = nifti_files(&dir.path().join("missing")).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read folder "),
            "{err:#}"
        );
    }

    #[test]
    fn an_output_that_is_an_input_is_refused_through_other_spellings() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("img.nii.gz");
        std::fs::write(&input, "x").unwrap();
        let other = dir.path().join("sub/../img.nii.gz");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let err = refuse_input(&other, [input.as_path()]).unwrap_err();
        assert!(err.to_string().contains("refusing to overwrite an input"));
        #[cfg(unix)]
        {
            let link = dir.path().join("link.nii.gz");
            std::os::unix::fs::symlink(&input, &link).unwrap();
            assert!(refuse_input(&link, [input.as_path()]).is_err());
        }
        assert!(refuse_input(&dir.path().join("new.nii.gz"), [input.as_path()]).is_ok());
        assert!(refuse_input(&dir.path().join("sub"), [input.as_path()]).is_ok());
    }
}
