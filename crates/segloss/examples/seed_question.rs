//! The question that started segloss, answered in code.
//!
//! A forum post: "3D multi-class (multi-label) segmentation, logits `3 x 9 x 64 x 64 x 64`. My Dice
//! is 1.9 and my Generalized Dice is 1.0013. Aren't these supposed to be in [0, 1]? And how do I
//! use them in training?"
//!
//! Run with `cargo run --release --example seed_question`.

use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{PaddingConfig3d, Relu};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor};
use segloss::{Activation, DiceLossConfig, GeneralizedDiceLossConfig};

fn scalar(t: Tensor<1>) -> f32 {
    t.into_scalar::<f32>()
}

fn main() {
    let device = Device::flex();
    device.seed(2024);
    let (b, c, s) = (3, 9, 64);
    println!(
        "The forum's setting: logits {b} x {c} x {s}^3 (standard normal), a random multi-label binary target (density 0.5).\n"
    );
    let logits = Tensor::<5>::random([b, c, s, s, s], Distribution::Normal(0.0, 1.0), &device);
    let multi_label = Tensor::<5>::random([b, c, s, s, s], Distribution::Bernoulli(0.5), &device);
    let label_map = Tensor::<5, Int>::random(
        [b, 1, s, s, s],
        Distribution::Uniform(0.0, c as f64),
        &device,
    );

    let vnet = DiceLossConfig::new(Activation::Softmax)
        .with_squared_pred(true)
        .init();
    let dice = DiceLossConfig::new(Activation::Softmax).init();
    let gdl = GeneralizedDiceLossConfig::new(Activation::Softmax).init();

    println!("Correct losses (softmax over the 9 channels, mean over samples and classes):");
    println!("  target            V-Net Dice   Dice     Generalized Dice");
    for (name, t) in [
        ("multi-label", segloss::Target::dense(multi_label.clone())),
        ("label map", segloss::Target::labels(label_map)),
    ] {
        let v = scalar(vnet.forward(logits.clone(), t.clone()));
        let d = scalar(dice.forward(logits.clone(), t.clone()));
        let g = scalar(gdl.forward(logits.clone(), t));
        println!("  {name:<16}  {v:.4}       {d:.4}   {g:.4}      (all in [0, 1])");
    }

    println!("\nThe forum's two wrong numbers, reproduced:");
    // Wrong number 1: per-class V-Net Dice *scores* summed over the 9 classes, divided by B only.
    let per_class_loss = vnet.forward_no_reduction(logits.clone(), multi_label.clone()); // [B, C]
    let per_class_dice = per_class_loss.neg().add_scalar(1.0);
    let mean_class_dice = scalar(per_class_dice.clone().mean());
    let forum_dice = scalar(per_class_dice.sum().div_scalar(b as f64));
    println!(
        "  \"Dice\" = {forum_dice:.3}: the per-class Dice (about {mean_class_dice:.2} each) summed over {c} classes and divided by the batch size {b} only (mean over both gives {mean_class_dice:.3})."
    );
    // Wrong number 2: the forum's inner GDL function called on raw logits: no softmax.
    let on_logits = forum_generalized_dice(logits.clone(), multi_label.clone());
    let on_probs = forum_generalized_dice(
        burn::tensor::activation::softmax(logits.clone(), 1),
        multi_label.clone(),
    );
    println!(
        "  \"Generalized Dice\" = {on_logits:.4}: the inner function called on raw logits, skipping the softmax, so the \"probabilities\" are negative and the overlap is noise around 0 (with softmax it is {on_probs:.2})."
    );
    let normalized = GeneralizedDiceLossConfig::new(Activation::Softmax)
        .with_normalize_weights(true)
        .init();
    let monai_gdl = scalar(gdl.forward(logits.clone(), multi_label.clone()));
    let norm_gdl = scalar(normalized.forward(logits.clone(), multi_label));
    println!(
        "  Note: MONAI's GDL ({monai_gdl:.2} above) adds its 1e-5 smoothing to sums weighted by 1/G^2, which here are about 1e-5 themselves;"
    );
    println!(
        "  GeneralizedDiceLossConfig::with_normalize_weights(true) keeps the smoothing negligible: {norm_gdl:.4}."
    );
    println!(
        "  segloss makes the activation a required choice (Activation::Softmax / Sigmoid / None) so this cannot happen silently."
    );

    train(&device);
}

/// The forum's Generalized Dice: statistics summed over the batch, `w = 1 / (G^2 + eps)`, no
/// smoothing, applied to whatever it is given (it expects probabilities).
fn forum_generalized_dice(probabilities: Tensor<5>, target: Tensor<5>) -> f32 {
    let s = segloss::overlap_stats(
        probabilities,
        target,
        &segloss::StatsOptions::new(Activation::None),
    )
    .sum_batch();
    let w = s.target.clone().square().add_scalar(1e-6).recip();
    let numerator = (s.intersection * w.clone()).sum().mul_scalar(2.0);
    let denominator = ((s.prediction + s.target) * w).sum();
    1.0 - scalar(numerator.div(denominator))
}

/// A tiny 3D network trained for a few steps with the Dice loss: how to use it in training.
fn train(device: &Device) {
    println!(
        "\nTraining a tiny 3D network with DiceLoss (softmax, background excluded) on a toy volume:"
    );
    let device = device.clone().autodiff();
    let (b, c, s) = (2, 3, 16);
    // Labels: three slabs along x; the image is the label plus noise.
    let x = Tensor::<1, Int>::arange(0..s as i64, &device)
        .reshape([1, 1, s, 1, 1])
        .expand([b, 1, s, s, s]);
    let labels = x
        .div_scalar(((s as i64) + c as i64 - 1) / c as i64)
        .clamp(0, c as i64 - 1);
    let image = labels.clone().float().div_scalar((c - 1) as f64)
        + Tensor::<5>::random([b, 1, s, s, s], Distribution::Normal(0.0, 0.3), &device);

    let mut model = TinyNet {
        conv1: Conv3dConfig::new([1, 8], [3, 3, 3])
            .with_padding(PaddingConfig3d::Same)
            .init(&device),
        conv2: Conv3dConfig::new([8, c], [1, 1, 1]).init(&device),
        relu: Relu::new(),
    };
    let mut optim = AdamConfig::new().init();
    let loss_fn = DiceLossConfig::new(Activation::Softmax)
        .with_include_background(false)
        .init();
    for step in 0..=30 {
        let logits = model.forward(image.clone()); // [B, C, 16, 16, 16]
        let loss = loss_fn.forward(logits, labels.clone());
        if step % 5 == 0 {
            println!(
                "  step {step:>2}: Dice loss {:.4}",
                loss.clone().into_scalar::<f32>()
            );
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-2, model, grads);
    }
    println!(
        "  ({} parameters; the loss falls as the network learns the three slabs)",
        model.num_params()
    );
}

#[derive(Module, Debug)]
struct TinyNet {
    conv1: Conv3d,
    conv2: Conv3d,
    relu: Relu,
}

impl TinyNet {
    fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        self.conv2.forward(self.relu.forward(self.conv1.forward(x)))
    }
}
