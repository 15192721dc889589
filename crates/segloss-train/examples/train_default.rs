//! Trains on the built-in data with the default settings and prints each epoch
//! (`cargo run --release -p segloss-train --example train_default [LOSS] [EPOCHS]`).
use burn::tensor::Device;
use segloss_train::losses::LossKind;
use segloss_train::run::{Event, TrainConfig, train};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = TrainConfig { out_dir: std::env::temp_dir().join("segloss-train-default"), ..Default::default() };
    if let Some(l) = args.first() {
        cfg.loss = LossKind::parse(l).unwrap_or_else(|e| panic!("{e}"));
    }
    if let Some(e) = args.get(1) {
        cfg.epochs = e.parse().expect("EPOCHS");
    }
    let start = std::time::Instant::now();
    let device = Device::flex().autodiff();
    train(&cfg, &device, |e| {
        if let Event::Epoch(s) = e {
            println!(
                "epoch {:>2}  loss {:.4}  dice {:?}  mean {:.3}  {:.1}s (total {:.0}s)",
                s.epoch,
                s.train_loss,
                s.valid_dice.iter().map(|d| (d * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
                s.mean_foreground_dice(),
                s.seconds,
                start.elapsed().as_secs_f64()
            );
        }
    })
    .unwrap();
}
