//! Training on a GPU backend: the 3D U-Net of `segloss-train` with a segloss loss on the wgpu
//! device (`SEGLOSS_GPU_DEVICE`, default `wgpu`; lavapipe in CI). The same weights give the same
//! loss on wgpu as on Flex (to 1e-3 relative: convolutions sum in another order; the weights go
//! through a saved record, as a checkpoint would), and a few Adam
//! steps on wgpu decrease it. Skipped, with the reason printed, where no adapter opens, unless
//! `SEGLOSS_REQUIRE_WGPU=1`.

use burn::module::Module;
use burn::tensor::Device;
use segloss_train::data::{Split, SyntheticConfig};
use segloss_train::losses::LossKind;
use segloss_train::train::adam_trainer;
use segloss_train::unet::UNet3dConfig;

fn main() {
    let name = std::env::var("SEGLOSS_GPU_DEVICE").unwrap_or_else(|_| "wgpu".to_string());
    let required = std::env::var("SEGLOSS_REQUIRE_WGPU").is_ok_and(|v| v == "1");
    let device = match segloss_gpu_check::device_named(&name)
        .and_then(|d| segloss_gpu_check::probe(&d).map(|a| (d, a)))
    {
        Ok(found) => found,
        Err(why) if required => {
            eprintln!("gpu training: {name}: no usable device ({why}), and SEGLOSS_REQUIRE_WGPU=1");
            std::process::exit(1);
        }
        Err(why) => {
            println!("gpu training: {name}: SKIPPED, no usable device: {why}");
            return;
        }
    };
    let (gpu, adapter) = device;
    let gpu = gpu.autodiff();
    let cpu = Device::flex();
    let data = SyntheticConfig {
        size: 16,
        ..Default::default()
    };
    cpu.seed(3);
    let model = UNet3dConfig::new(data.classes)
        .with_base_width(4)
        .with_depth(2)
        .init(&cpu);

    // The loss of these weights on Flex; then the same weights, through a saved record, on the GPU.
    let (x, y) = data.batch(Split::Train, &[0, 1], &cpu);
    let on_cpu: f32 = LossKind::DiceCe.compute(model.forward(x), y).into_scalar();
    let path =
        std::env::temp_dir().join(format!("segloss-gpu-training-{}.bpk", std::process::id()));
    model.save_file(&path).expect("the record is written");
    let model = UNet3dConfig::new(data.classes)
        .with_base_width(4)
        .with_depth(2)
        .init(&gpu)
        .try_load_file(&path)
        .expect("the record loads on the GPU device");

    // The first step reports the loss before it, with the same weights: the same loss as on
    // Flex; then Adam steps on the GPU decrease it.
    let (x, y) = data.batch(Split::Train, &[0, 1], &gpu);
    let mut trainer = adam_trainer(model, LossKind::DiceCe, None, 1e-2);
    let first = trainer.step(x.clone(), y.clone());
    let rel = (first - on_cpu).abs() / on_cpu.abs();
    assert!(
        rel < 1e-3,
        "dice-ce of the same network: {first} on {name}, {on_cpu} on Flex"
    );
    let on_gpu = first;
    let mut last = first;
    for _ in 0..4 {
        last = trainer.step(x.clone(), y.clone());
    }
    // The record is read lazily: removed only once training is done.
    std::fs::remove_file(&path).ok();
    assert!(
        last < first,
        "the loss went from {first} to {last} in 5 steps on {name}"
    );
    println!(
        "gpu training: {name} ({adapter}): dice-ce {on_gpu:.6} (Flex {on_cpu:.6}, relative difference {rel:.1e}); 5 Adam steps: {first:.4} -> {last:.4}"
    );
}
