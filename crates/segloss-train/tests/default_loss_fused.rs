//! `segloss train`'s default loss (Dice + cross-entropy) runs as one fused pass over the logits
//! on the CPU (Flex): the Dice statistics and the cross-entropy sums come from the same kernel
//! call, forward and backward, and give the composed path's value and gradient.
//! (One test in its own binary, so that no other test moves the call counters meanwhile.)

use burn::tensor::{Device, Distribution, Int, Tensor};
use segloss::kernel::fused::{calls, pointwise_calls};
use segloss::{Kernel, with_kernel};
use segloss_train::losses::LossKind;

#[test]
fn the_default_loss_is_one_fused_pass() {
    let default = segloss_train::run::TrainConfig::default().loss;
    assert_eq!(
        default,
        LossKind::DiceCe,
        "the test is about the trainer's default loss"
    );
    let device = Device::flex().autodiff();
    let x = Tensor::<5>::random(
        [2, 4, 9, 7, 5],
        Distribution::Normal(0.0, 2.0),
        &Device::flex(),
    );
    let labels =
        Tensor::<5, Int>::random([2, 1, 9, 7, 5], Distribution::Uniform(0.0, 4.0), &device);
    let run = |kernel| {
        with_kernel(kernel, || {
            let logits = Tensor::<5>::from_data(x.to_data(), &device).require_grad();
            let (before, pw_before) = (calls(), pointwise_calls());
            let loss = default.compute(logits.clone(), labels.clone());
            let grads = loss.backward();
            let grad: Vec<f32> = logits
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            (
                loss.into_scalar::<f32>(),
                grad,
                calls() - before,
                pointwise_calls() - pw_before,
            )
        })
    };
    let (value, grad, fused_calls, pointwise) = run(Kernel::Auto);
    assert_eq!(
        (fused_calls, pointwise),
        (1, 1),
        "one fused call, with the pointwise term"
    );
    let (want, want_grad, composed_calls, _) = run(Kernel::Composed);
    assert_eq!(composed_calls, 0);
    assert!(
        (value - want).abs() <= 1e-5 * want.abs().max(1.0),
        "fused {value} vs composed {want}"
    );
    let scale = want_grad.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    for (i, (a, b)) in grad.iter().zip(&want_grad).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * scale,
            "gradient [{i}]: fused {a} vs composed {b}"
        );
    }
}
