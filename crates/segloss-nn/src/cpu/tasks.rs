//! Work splitting: chunks of output rows, a reusable scratch buffer per thread, and a pointer
//! that parallel chunks write through at disjoint places.

use std::cell::RefCell;

/// Floats of a column buffer per chunk: 256 Ki floats (1 MiB) keeps a chunk's columns in the
/// L2 cache of current CPUs while the product reads them.
const CHUNK_FLOATS: usize = 1 << 18;

/// Rows (of `row_len` floats each, `per_row` buffer floats per output float) per chunk, at
/// least 1.
pub(crate) fn rows_per_chunk(per_row: usize, row_len: usize) -> usize {
    (CHUNK_FLOATS / (per_row * row_len).max(1)).max(1)
}

/// `(batch, first row, end row)` of each chunk of `rows` rows per batch item.
pub(crate) fn chunks(batch: usize, rows: usize, per_chunk: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for b in 0..batch {
        let mut r = 0;
        while r < rows {
            let end = (r + per_chunk).min(rows);
            out.push((b, r, end));
            r = end;
        }
    }
    out
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch buffer of `len` floats (contents unspecified), reused by the thread
/// across calls so that the chunks do not allocate and fault in fresh pages each time.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on the same thread (not done by these kernels): a fresh buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// A mutable pointer shared by parallel chunks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);

impl SharedMut {
    /// The pointer (a method, so that closures capture the `Sync` wrapper, not the field).
    pub fn ptr(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the pointer is only written through at elements no other chunk writes (each use site
// says why its chunks are disjoint), and the buffer outlives the parallel loop that uses it.
unsafe impl Send for SharedMut {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedMut {}
