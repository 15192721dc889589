//! The optimisation step.

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Int, Tensor};

use crate::losses::LossKind;
use crate::unet::UNet3d;

/// A model and its Adam optimiser.
pub struct Trainer {
    /// The network being trained (on an autodiff device).
    pub model: UNet3d,
    optim: ModuleOptimizer,
    /// The loss it is trained with.
    pub loss: LossKind,
    /// Learning rate.
    pub learning_rate: f64,
}

/// A [`Trainer`] with Adam.
pub fn adam_trainer(model: UNet3d, loss: LossKind, learning_rate: f64) -> Trainer {
    Trainer {
        model,
        optim: AdamConfig::new().init(),
        loss,
        learning_rate,
    }
}

impl Trainer {
    /// One optimisation step on a batch (images `[B, 1, D, H, W]`, labels `[B, 1, D, H, W]`);
    /// returns the loss before the step.
    pub fn step(&mut self, images: Tensor<5>, labels: Tensor<5, Int>) -> f32 {
        let logits = self.model.forward(images);
        let loss = self.loss.compute(logits, labels);
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
            let mut trainer = adam_trainer(model, kind, 1e-2);
            let first = trainer.step(images.clone(), labels.clone());
            let mut last = first;
            for _ in 0..5 {
                last = trainer.step(images.clone(), labels.clone());
            }
            assert!(last < first, "{name}: loss went from {first} to {last}");
        }
    }
}
