//! Stopping cleanly: Ctrl-C (SIGINT), SIGTERM (a scheduler's cancel) and a closed stdout.
//!
//! Long commands (`train`, `predict`, `compare`, folder `eval`) poll [`stop_requested`] at their
//! case, volume or epoch boundaries: the first signal lets the current unit finish and be saved,
//! then the command ends with everything before it written; a second signal ends the process at
//! once (exit 130). Progress lines go through [`say`]: when stdout is a pipe that its reader has
//! closed (`segloss train | head -1`), printing stops quietly, the command stops at the next
//! boundary as for a signal, and ends with [`EXIT_STDOUT_CLOSED`](crate::exit::EXIT_STDOUT_CLOSED) instead of panicking in
//! `println!`.

use crate::exit::{EXIT_INTERRUPTED, EXIT_STDOUT_CLOSED};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

static SIGNALS: AtomicU8 = AtomicU8::new(0);
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Installs the SIGINT / SIGTERM handler (once; later calls do nothing). The first signal asks
/// the running command to stop at its next boundary and says so on stderr; the second exits.
pub fn install_interrupt_handler() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    // Without a handler (another library installed one first) the default behaviour stays: the
    // signal ends the process, which is what the user gets from any other tool.
    let _ = ctrlc::set_handler(|| {
        if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!(
                "\ninterrupted: stopping after the current step with the results so far saved \
                 (interrupt again to quit at once)"
            );
        } else {
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    });
}

/// Whether the command should stop at its next boundary: a signal arrived or stdout was closed.
pub fn stop_requested() -> bool {
    SIGNALS.load(Ordering::SeqCst) > 0 || STDOUT_CLOSED.load(Ordering::SeqCst)
}

/// Whether stdout was found closed by its reader.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::SeqCst)
}

/// The exit status of a command that stopped because of [`stop_requested`], `None` when nothing
/// asked it to stop.
pub fn stop_status() -> Option<u8> {
    if SIGNALS.load(Ordering::SeqCst) > 0 {
        Some(EXIT_INTERRUPTED)
    } else if stdout_closed() {
        Some(EXIT_STDOUT_CLOSED)
    } else {
        None
    }
}

/// Writes `text` to stdout and flushes it. A closed pipe marks stdout closed (see
/// [`stop_requested`]) and is not an error; after that nothing more is printed.
///
/// # Errors
/// Any other write error (`> /dev/full`), with the text's purpose left to the caller.
pub fn write_stdout(text: &str) -> std::io::Result<()> {
    if stdout_closed() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::SeqCst);
            Ok(())
        }
        other => other,
    }
}

/// Prints a progress line (a newline is added) with [`write_stdout`]. Progress that cannot be
/// printed for another reason (a full disk behind `>`) is dropped with one warning on stderr:
/// losing a progress line must not lose the run. (Used by the training commands.)
#[cfg(feature = "train")]
pub fn say(line: impl std::fmt::Display) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = write_stdout(&format!("{line}\n"))
        && !WARNED.swap(true, Ordering::SeqCst)
    {
        eprintln!("warning: cannot print progress to stdout ({e}); going on without it");
    }
}
