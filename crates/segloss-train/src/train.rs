//! The optimisation step.

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Int, Tensor};
use segloss::{DeepSupervisionLoss, DeepSupervisionLossConfig, DeepSupervisionWeighting};

use crate::losses::LossKind;
use crate::unet::UNet3d;

/// A model and its Adam optimiser.
pub struct Trainer {
    /// The network being trained (on an autodiff device).
    pub model: UNet3d,
    optim: ModuleOptimizer,
    /// The loss it is trained with.
    pub loss: LossKind,
    /// Deep supervision: the loss over every decoder level's logits, weighted so.
    pub deep_supervision: Option<DeepSupervisionLoss>,
    /// Learning rate.
    pub learning_rate: f64,
}

/// A [`Trainer`] with Adam; with `deep_supervision`, the model must have been built with
/// deep-supervision heads (or have a single decoder level).
pub fn adam_trainer(
    model: UNet3d,
    loss: LossKind,
    deep_supervision: Option<DeepSupervisionWeighting>,
    learning_rate: f64,
) -> Trainer {
    Trainer {
        model,
        optim: AdamConfig::new().init(),
        loss,
        deep_supervision: deep_supervision
            .map(|w| DeepSupervisionLossConfig::new().with_weight_mode(w).init()),
        learning_rate,
    }
}

impl Trainer {
    /// One optimisation step on a batch (images `[B, 1, D, H, W]`, labels `[B, 1, D, H, W]`);
    /// returns the loss before the step.
    pub fn step(&mut self, images: Tensor<5>, labels: Tensor<5, Int>) -> f32 {
        let kind = self.loss;
        let loss = match &self.deep_supervision {
            Some(ds) => ds.forward(self.model.forward_levels(images), labels, |p, t| {
                kind.compute(p, t)
            }),
            None => kind.compute(self.model.forward(images), labels),
        };
        let value = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        let model = self.model.clone();
        self.model = self.optim.step(self.learning_rate, model, grads);
        value
    }

    /// The model without autodiff, for evaluation.
    pub fn valid_model(&self) -> UNet3d {
        self.model.valid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Split, SyntheticConfig};
    use crate::unet::UNet3dConfig;
    use burn::tensor::Device;

    /// Each loss decreases on a fixed batch after a few steps.
    #[test]
    fn training_steps_decrease_every_loss_on_a_fixed_batch() {
        let device = Device::flex().autodiff();
        let data = SyntheticConfig {
            size: 16,
            ..Default::default()
        };
        let (images, labels) = data.batch(Split::Train, &[0, 1], &device);
        for (name, kind) in LossKind::ALL {
            device.seed(3);
            let model = UNet3dConfig::new(data.classes)
                .with_base_width(4)
                .with_depth(2)
                .init(&device);
            let mut trainer = adam_trainer(model, kind, None, 1e-2);
            let first = trainer.step(images.clone(), labels.clone());
            let mut last = first;
            for _ in 0..5 {
                last = trainer.step(images.clone(), labels.clone());
            }
            assert!(last < first, "{name}: loss went from {first} to {last}");
        }
    }

    /// Deep supervision trains every level: the loss decreases, and the lower level's head
    /// moves (it gets a gradient) where its weight is not 0, and stays where it is 0.
    #[test]
    fn deep_supervision_steps_decrease_the_loss_and_train_the_heads_they_weigh() {
        let device = Device::flex().autodiff();
        let data = SyntheticConfig {
            size: 16,
            ..Default::default()
        };
        let (images, labels) = data.batch(Split::Train, &[0, 1], &device);
        let net = UNet3dConfig::new(data.classes)
            .with_base_width(4)
            .with_depth(3)
            .with_deep_supervision(true);
        let head = |t: &Trainer| -> Vec<f32> { t.model.ds_head_weights()[0].clone() };
        for (weighting, moves) in [
            (DeepSupervisionWeighting::Normalized, true),
            (DeepSupervisionWeighting::NnUnet, false),
        ] {
            device.seed(3);
            let mut trainer =
                adam_trainer(net.init(&device), LossKind::DiceCe, Some(weighting), 1e-2);
            let before = head(&trainer);
            let first = trainer.step(images.clone(), labels.clone());
            let mut last = first;
            for _ in 0..5 {
                last = trainer.step(images.clone(), labels.clone());
            }
            assert!(
                last < first,
                "{weighting:?}: loss went from {first} to {last}"
            );
            assert_eq!(head(&trainer) != before, moves, "{weighting:?}");
        }
    }
}
