//! What a fused pass computes: the overlap statistics' options ([`Spec`]) and the pointwise
//! term beside them ([`Pointwise`]), shared by the CPU and CubeCL kernels and the backend
//! extension that carries them.

use crate::input::Activation;

/// What to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// The activation applied to the logits.
    pub act: Activation,
    /// Keep channel 0 in the statistics.
    pub include_background: bool,
    /// Squared sums (V-Net) for `P`, `G` and `E`.
    pub squared: bool,
    /// Compute `E` (otherwise it is returned as 0).
    pub difference: bool,
}

/// The pointwise term of a fused pass (the pointwise section): cross-entropy (`gamma = 0`) or
/// focal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pointwise {
    /// The focusing parameter (0: cross-entropy).
    pub gamma: f32,
    /// The softmax term normalised over channels `1..C` only, as MONAI's softmax focal loss
    /// without the background computes it (`softmax(x[1..C])` against the one-hot of the labels
    /// restricted to those channels); channel 0's pointwise sums are then 0. The overlap
    /// statistics keep the softmax over every channel. Softmax only, `C >= 2`.
    pub without_background: bool,
}

impl Spec {
    /// The plain statistics of every class (no squared sums, no difference) under `act`: what
    /// the pass with the pointwise term computes beside it.
    pub fn plain(act: Activation) -> Self {
        Self {
            act,
            include_background: true,
            squared: false,
            difference: false,
        }
    }

    /// The options as one number, distinct for distinct options: how Burn's fusion tells two
    /// recorded calls apart.
    pub fn key(&self) -> u32 {
        u32::from(self.act.code())
            | u32::from(self.include_background) << 8
            | u32::from(self.squared) << 9
            | u32::from(self.difference) << 10
    }
}

impl Pointwise {
    /// The term over every channel with focusing parameter `gamma`.
    pub fn new(gamma: f32) -> Self {
        Self {
            gamma,
            without_background: false,
        }
    }

    /// The term as one number, distinct for distinct terms (the bits of `gamma` and the
    /// background flag): how Burn's fusion tells two recorded calls apart.
    pub fn key(&self) -> u64 {
        u64::from(self.gamma.to_bits()) << 1 | u64::from(self.without_background)
    }
}
