//! The exit statuses of every command, in one place (docs/cli.md lists them per command).

/// Exit status when every case was evaluated.
pub const EXIT_OK: u8 = 0;
/// Exit status when at least one case failed (and the others were reported).
pub const EXIT_CASE_FAILED: u8 = 1;
/// Exit status for a usage error: bad flags, a missing folder, nothing to evaluate, an output
/// that cannot be written.
pub const EXIT_USAGE: u8 = 2;
/// Exit status after an interrupt (SIGINT or SIGTERM) that stopped the command at a boundary,
/// the shell's convention for SIGINT (128 + 2).
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit status when stdout was closed by its reader and the command stopped at a boundary, the
/// shell's convention for SIGPIPE (128 + 13).
pub const EXIT_STDOUT_CLOSED: u8 = 141;

/// The exit codes, shown by `--help` (docs/cli.md has the same list).
pub const EXIT_CODES: &str = "\
Exit codes:
  0    every case was evaluated
  1    at least one case failed (unreadable or corrupt file, missing or ambiguous counterpart,
       different geometry, no label to evaluate); the failures are listed on stderr and in
       the CSV/JSON output, the other cases are reported as usual
  2    usage error: invalid flags, a folder that cannot be read, no case to evaluate, an
       output that is an input or cannot be written, a --resume or --merge file written with
       other settings, overlapping or missing shards
  130  interrupted (SIGINT or SIGTERM): stopped at a case boundary; every finished case is in
       the output, with a summary marked partial; run again with --resume to complete it
  141  stdout was closed by its reader before the report was written

Output: with -o FILE, CSV rows are appended as each case finishes and a JSON file is
rewritten whole; the summary is written at the end. Details, sharding and merging:
docs/cli.md.";
