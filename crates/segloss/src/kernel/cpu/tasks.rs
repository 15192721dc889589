//! Parallel tasks: rayon over the blocks, one scratch space per thread, results in task order.

use rayon::prelude::*;

use super::block::{Block, Work};
use super::dispatch::{Isa, run_block_with};
use super::layout::{Label, Problem};
use super::tile::with_scratch;

/// Runs `work` on every task `(sample, first block, blocks)` in parallel, with one scratch space
/// per thread; the tasks' results (their block sums for a forward) in task order.
pub(super) fn run_tasks<L: Label>(
    tasks: &[(usize, usize, usize)],
    p: &Problem<'_, L>,
    grad: &[f32],
    isa: Isa,
    work: Work,
) -> Vec<Vec<f64>> {
    let &Problem {
        x,
        t,
        mask,
        d,
        spec,
        pw,
    } = p;
    tasks
        .par_iter()
        .map(|&(b, blk, nblk)| {
            with_scratch(d, |s| {
                run_block_with(
                    isa,
                    &Block {
                        x,
                        t,
                        mask,
                        grad,
                        d,
                        spec,
                        b,
                        blk,
                        nblk,
                        pw,
                    },
                    s,
                    work,
                )
            })
        })
        .collect()
}
