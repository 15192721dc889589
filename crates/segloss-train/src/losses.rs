//! The losses a training run can use, by name (the `--loss` of the command line).

use burn::tensor::Tensor;
pub use segloss::DeepSupervisionWeighting;
use segloss::{
    Activation, AsymmetricUnifiedFocalLossConfig, BoundaryLossConfig, CrossEntropyLossConfig,
    DiceCELossConfig, DiceFocalLossConfig, DiceLossConfig, FocalLossConfig,
    GeneralizedDiceLossConfig, HausdorffDTLossConfig, MccLossConfig, SoftDiceclDiceLossConfig,
    Target, TverskyLossConfig,
};

/// Weight of the boundary term in `dice-boundary`. Kervadec et al. raise it from 0.01 by 0.01 an
/// epoch; a fixed 0.1 keeps the Dice term's gradient the larger one while the prediction is
/// far from the target (where the boundary term's distances are largest).
pub const BOUNDARY_WEIGHT: f64 = 0.1;
/// Weight of the Hausdorff DT term in `dice-hausdorff`: its values are squared distances (tens to
/// hundreds of voxels^2 early in training), so 0.01 keeps it on the Dice term's scale (Karimi and
/// Salcudean weigh it against Dice the same way).
pub const HAUSDORFF_WEIGHT: f64 = 0.01;

/// A loss for multi-class training from logits `[B, C, D, H, W]` and a label map `[B, 1, D, H, W]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// Soft Dice, softmax, background excluded.
    Dice,
    /// Generalized Dice (1/V^2 weights, normalised), softmax, background included.
    Gdl,
    /// Dice + cross-entropy (nnU-Net's default).
    DiceCe,
    /// Dice + softmax focal loss.
    DiceFocal,
    /// Tversky (alpha 0.3, beta 0.7: recall-leaning), softmax, background excluded.
    Tversky,
    /// Matthews correlation coefficient loss, softmax, background excluded.
    Mcc,
    /// Softmax focal loss alone.
    Focal,
    /// Cross-entropy alone.
    Ce,
    /// Soft Dice + soft clDice (alpha 0.5, 3 skeleton iterations), softmax, background excluded:
    /// for thin tubular structures.
    DiceClDice,
    /// Soft Dice + [`BOUNDARY_WEIGHT`] x boundary loss, softmax, background excluded.
    DiceBoundary,
    /// Soft Dice + [`HAUSDORFF_WEIGHT`] x Hausdorff distance-transform loss (alpha 2), softmax,
    /// background excluded.
    DiceHausdorff,
    /// Asymmetric unified focal loss (weight 0.5, gamma 0.5, delta 0.7), softmax over every
    /// class, background the suppressed class.
    UnifiedFocal,
}

impl LossKind {
    /// Every loss, with its command-line name.
    pub const ALL: [(&'static str, LossKind); 12] = [
        ("dice", LossKind::Dice),
        ("gdl", LossKind::Gdl),
        ("dice-ce", LossKind::DiceCe),
        ("dice-focal", LossKind::DiceFocal),
        ("tversky", LossKind::Tversky),
        ("mcc", LossKind::Mcc),
        ("focal", LossKind::Focal),
        ("ce", LossKind::Ce),
        ("dice-cldice", LossKind::DiceClDice),
        ("dice-boundary", LossKind::DiceBoundary),
        ("dice-hausdorff", LossKind::DiceHausdorff),
        ("unified-focal", LossKind::UnifiedFocal),
    ];

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown loss `{name}`; choose one of: {}", names.join(", "))
            })
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .expect("every kind is named")
    }

    /// The loss of `logits` against `labels` (a label map `[B, 1, D, H, W]`, as a tensor or a
    /// [`Target`]), shape `[1]`.
    pub fn compute(self, logits: Tensor<5>, labels: impl Into<Target>) -> Tensor<1> {
        let labels: Target = labels.into();
        let act = Activation::Softmax;
        let dice = || {
            DiceLossConfig::new(act)
                .with_include_background(false)
                .init()
        };
        match self {
            LossKind::Dice => dice().forward(logits, labels),
            LossKind::Gdl => GeneralizedDiceLossConfig::new(act)
                .with_normalize_weights(true)
                .init()
                .forward(logits, labels),
            LossKind::DiceCe => DiceCELossConfig::new(act)
                .with_include_background(false)
                .init()
                .forward(logits, labels),
            LossKind::DiceFocal => DiceFocalLossConfig::new(act)
                .with_include_background(false)
                .with_focal_use_softmax(true)
                .init()
                .forward(logits, labels),
            LossKind::Tversky => TverskyLossConfig::new(act)
                .with_include_background(false)
                .with_alpha(0.3)
                .with_beta(0.7)
                .init()
                .forward(logits, labels),
            LossKind::Mcc => MccLossConfig::new(act)
                .with_include_background(false)
                .init()
                .forward(logits, labels),
            LossKind::Focal => FocalLossConfig::new()
                .with_use_softmax(true)
                .init()
                .forward(logits, labels),
            LossKind::Ce => CrossEntropyLossConfig::new().init().forward(logits, labels),
            LossKind::DiceClDice => SoftDiceclDiceLossConfig::new(act)
                .with_include_background(false)
                .init()
                .forward(logits, labels),
            LossKind::DiceBoundary => {
                let boundary = BoundaryLossConfig::new(act)
                    .with_include_background(false)
                    .init()
                    .forward(logits.clone(), labels.clone());
                dice().forward(logits, labels) + boundary.mul_scalar(BOUNDARY_WEIGHT)
            }
            LossKind::DiceHausdorff => {
                let hd = HausdorffDTLossConfig::new(act)
                    .with_include_background(false)
                    .init()
                    .forward(logits.clone(), labels.clone());
                dice().forward(logits, labels) + hd.mul_scalar(HAUSDORFF_WEIGHT)
            }
            LossKind::UnifiedFocal => AsymmetricUnifiedFocalLossConfig::new(act)
                .init()
                .forward(logits, labels),
        }
    }
}

/// The deep-supervision weightings of `--ds-weights`, with their command-line names.
pub const DS_WEIGHTINGS: [(&str, DeepSupervisionWeighting); 5] = [
    ("normalized", DeepSupervisionWeighting::Normalized),
    ("nnunet", DeepSupervisionWeighting::NnUnet),
    ("exp", DeepSupervisionWeighting::Exp),
    ("same", DeepSupervisionWeighting::Same),
    ("two", DeepSupervisionWeighting::Two),
];

/// Parses a deep-supervision weighting's command-line name.
pub fn parse_ds_weighting(name: &str) -> Result<DeepSupervisionWeighting, String> {
    DS_WEIGHTINGS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, w)| *w)
        .ok_or_else(|| {
            let names: Vec<&str> = DS_WEIGHTINGS.iter().map(|(n, _)| *n).collect();
            format!(
                "unknown deep-supervision weighting `{name}`; choose one of: {}",
                names.join(", ")
            )
        })
}

/// The command-line name of a deep-supervision weighting.
pub fn ds_weighting_name(w: DeepSupervisionWeighting) -> &'static str {
    DS_WEIGHTINGS
        .iter()
        .find(|(_, x)| *x == w)
        .map(|(n, _)| *n)
        .expect("every weighting is named")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_listed() {
        for (name, kind) in LossKind::ALL {
            assert_eq!(LossKind::parse(name), Ok(kind));
            assert_eq!(kind.name(), name);
        }
        for (name, w) in DS_WEIGHTINGS {
            assert_eq!(parse_ds_weighting(name), Ok(w));
            assert_eq!(ds_weighting_name(w), name);
        }
        assert!(
            parse_ds_weighting("half")
                .unwrap_err()
                .contains("normalized, nnunet")
        );
        assert_eq!(
            LossKind::parse("dicey"),
            Err("unknown loss `dicey`; choose one of: dice, gdl, dice-ce, dice-focal, tversky, mcc, focal, ce, dice-cldice, dice-boundary, dice-hausdorff, unified-focal".to_string())
        );
    }
}
