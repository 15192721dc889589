//! From run-time options to compiled variants: the const-parameter ladder and the
//! instruction-set dispatch (AVX2 + FMA where the CPU has it, else the baseline).

use super::block::{Block, Work};
use super::layout::{Label, SIGMOID, SOFTMAX, TargetRef};
use super::tile::Scratch;
use crate::input::Activation;

/// Runs one block of work with the const parameters matching its options. The `if`s select one
/// of the 80 variants (activation 3 x label map 2 x squared 2 x mask 2 x difference 2, and the
/// pointwise term on or off for the softmax and the sigmoid).
#[inline(always)]
fn run_block<L: Label, const FMA: bool>(
    blk: &Block<'_, L>,
    s: &mut Scratch,
    work: Work,
) -> Vec<f64> {
    #[inline(always)]
    fn leaf<
        L: Label,
        const ACT: u8,
        const LAB: bool,
        const SQ: bool,
        const MASK: bool,
        const DIFF: bool,
        const PW: bool,
        const FOCAL: bool,
        const FMA: bool,
    >(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        match work {
            Work::Forward(save) => blk.forward::<ACT, LAB, SQ, MASK, DIFF, PW, FOCAL, FMA>(s, save),
            Work::BackwardInPlace(p) => {
                blk.backward_in_place::<ACT, LAB, SQ, MASK, DIFF, PW, FOCAL, FMA>(s, p);
                Vec::new()
            }
            Work::Backward(dx) => {
                blk.backward::<ACT, LAB, SQ, MASK, DIFF, PW, FOCAL, FMA>(s, dx);
                Vec::new()
            }
        }
    }
    #[inline(always)]
    fn diff<
        L: Label,
        const ACT: u8,
        const LAB: bool,
        const SQ: bool,
        const MASK: bool,
        const FMA: bool,
    >(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        if blk.spec.difference {
            leaf::<L, ACT, LAB, SQ, MASK, true, false, false, FMA>(blk, s, work)
        } else {
            leaf::<L, ACT, LAB, SQ, MASK, false, false, false, FMA>(blk, s, work)
        }
    }
    // The pointwise term (softmax or sigmoid, plain sums: checked by the entry points) takes its
    // own few variants, so that it does not multiply the others.
    #[inline(always)]
    fn pointwise<L: Label, const ACT: u8, const LAB: bool, const MASK: bool, const FMA: bool>(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        if blk.gamma() == 0.0 {
            leaf::<L, ACT, LAB, false, MASK, false, true, false, FMA>(blk, s, work)
        } else {
            leaf::<L, ACT, LAB, false, MASK, false, true, true, FMA>(blk, s, work)
        }
    }
    #[inline(always)]
    fn pointwise_mask<L: Label, const ACT: u8, const LAB: bool, const FMA: bool>(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        if blk.mask.is_some() {
            pointwise::<L, ACT, LAB, true, FMA>(blk, s, work)
        } else {
            pointwise::<L, ACT, LAB, false, FMA>(blk, s, work)
        }
    }
    #[inline(always)]
    fn pointwise_labels<L: Label, const ACT: u8, const FMA: bool>(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        if matches!(blk.t, TargetRef::Labels(_)) && blk.d.c > 1 {
            pointwise_mask::<L, ACT, true, FMA>(blk, s, work)
        } else {
            pointwise_mask::<L, ACT, false, FMA>(blk, s, work)
        }
    }
    #[inline(always)]
    fn mask<L: Label, const ACT: u8, const LAB: bool, const SQ: bool, const FMA: bool>(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        if blk.mask.is_some() {
            diff::<L, ACT, LAB, SQ, true, FMA>(blk, s, work)
        } else {
            diff::<L, ACT, LAB, SQ, false, FMA>(blk, s, work)
        }
    }
    #[inline(always)]
    fn squared<L: Label, const ACT: u8, const LAB: bool, const FMA: bool>(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        if blk.spec.squared {
            mask::<L, ACT, LAB, true, FMA>(blk, s, work)
        } else {
            mask::<L, ACT, LAB, false, FMA>(blk, s, work)
        }
    }
    #[inline(always)]
    fn labels<L: Label, const ACT: u8, const FMA: bool>(
        blk: &Block<'_, L>,
        s: &mut Scratch,
        work: Work,
    ) -> Vec<f64> {
        // A single-channel label map holds the 0/1 target itself.
        if matches!(blk.t, TargetRef::Labels(_)) && blk.d.c > 1 {
            squared::<L, ACT, true, FMA>(blk, s, work)
        } else {
            squared::<L, ACT, false, FMA>(blk, s, work)
        }
    }
    match (blk.spec.act, blk.pw.is_some()) {
        (Activation::Softmax, true) => pointwise_labels::<L, SOFTMAX, FMA>(blk, s, work),
        (Activation::Sigmoid, true) => pointwise_labels::<L, SIGMOID, FMA>(blk, s, work),
        (Activation::Softmax, false) => labels::<L, SOFTMAX, FMA>(blk, s, work),
        (Activation::Sigmoid, false) => labels::<L, SIGMOID, FMA>(blk, s, work),
        (Activation::None, _) => labels::<L, { Activation::NONE_CODE }, FMA>(blk, s, work),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn run_block_avx2<L: Label>(
    blk: &Block<'_, L>,
    s: &mut Scratch,
    work: Work,
) -> Vec<f64> {
    run_block::<L, true>(blk, s, work)
}

/// The instruction set a call runs with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Isa {
    /// The best the CPU has (AVX2 + FMA, detected at run time, else the baseline).
    Best,
    /// The target's baseline (SSE2 on x86-64): what runs on CPUs without AVX2 + FMA, and what
    /// the tests compare the AVX2 code with.
    #[cfg_attr(not(test), allow(dead_code))]
    Baseline,
}

impl Isa {
    /// Whether a call with this choice runs the AVX2 + FMA code: asked for (`Best`) and the CPU
    /// has both (detected at run time).
    pub(crate) fn avx2_fma(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self == Isa::Best
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }
}

/// [`run_block`] compiled for the instruction set `isa` asks for.
pub(super) fn run_block_with<L: Label>(
    isa: Isa,
    blk: &Block<'_, L>,
    s: &mut Scratch,
    work: Work,
) -> Vec<f64> {
    #[cfg(target_arch = "x86_64")]
    if isa.avx2_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { run_block_avx2(blk, s, work) };
    }
    let _ = isa;
    run_block::<L, false>(blk, s, work)
}
