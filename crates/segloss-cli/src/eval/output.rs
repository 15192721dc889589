//! Where a report goes while cases finish: the `-o` file, kept current so that an interrupted
//! run loses nothing it finished.
//!
//! * CSV: the header and `run:` row are written first (through a temporary file and a rename),
//!   then each case's rows (or its `failed:` row) are appended and flushed as the case
//!   finishes. At the end the file is replaced (again through a temporary file) by the whole
//!   report in case order with its summary, labelled partial after an interrupt.
//! * JSON: a JSON document cannot be appended to and stay valid, so the whole document is
//!   rewritten through a temporary file and a rename as cases finish: after every case, unless
//!   rewriting takes long compared to evaluating (then at most once per ten times the cost of
//!   the last rewrite, so that writing stays under a tenth of the run). The file is always a
//!   valid report with `"complete": false` until the last rewrite.
//! * Table: written once at the end (or after an interrupt); not resumable.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use segloss_metrics::files::write_bytes_atomically;

use crate::report::Format;

/// The `-o` file of a running evaluation.
pub struct Sink {
    path: PathBuf,
    format: Format,
    /// The CSV file, open for appending.
    csv: Option<File>,
    last_write: Instant,
    last_cost: Duration,
}

impl Sink {
    /// Starts the report at `path` with `start` (for CSV the header, the `run:` row and the
    /// rows of cases already done; for JSON a report of the cases already done). A table
    /// writes nothing until the end.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn start(path: &Path, format: Format, start: &str) -> Result<Sink> {
        let mut sink = Sink {
            path: path.to_path_buf(),
            format,
            csv: None,
            last_write: Instant::now(),
            last_cost: Duration::ZERO,
        };
        if format != Format::Table {
            sink.rewrite(start)?;
        }
        if format == Format::Csv {
            sink.csv = Some(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot append to the report {}", path.display()))?,
            );
        }
        Ok(sink)
    }

    /// Appends CSV rows (a case or a failure) and flushes them; nothing for other formats.
    ///
    /// # Errors
    /// The write fails (a full disk).
    pub fn append(&mut self, rows: &str) -> Result<()> {
        if let Some(file) = &mut self.csv {
            file.write_all(rows.as_bytes())
                .and_then(|()| file.flush())
                .with_context(|| format!("cannot append to the report {}", self.path.display()))?;
        }
        Ok(())
    }

    /// For JSON, rewrites the report with `render()` unless the last rewrite was less than ten
    /// times its own cost ago; nothing for other formats.
    ///
    /// # Errors
    /// The write fails.
    pub fn update(&mut self, render: impl FnOnce() -> String) -> Result<()> {
        if self.format == Format::Json && self.last_write.elapsed() >= self.last_cost * 10 {
            self.rewrite(&render())?;
        }
        Ok(())
    }

    /// Replaces the file with the final (or partial) report.
    ///
    /// # Errors
    /// The write fails; the file then holds what was written before.
    pub fn finish(mut self, report: &str) -> Result<()> {
        self.csv = None;
        self.rewrite(report)
    }

    fn rewrite(&mut self, text: &str) -> Result<()> {
        let started = Instant::now();
        write_bytes_atomically(&self.path, text)
            .with_context(|| format!("cannot write the report to {}", self.path.display()))?;
        self.last_cost = started.elapsed();
        self.last_write = Instant::now();
        Ok(())
    }
}
