//! Times the CPU kernel alone (no Burn), for tuning: `cargo run --release --example kernel_timing`.
use segloss::kernel::cpu::*;
use std::time::Instant;
fn main() {
    let (b, c, n) = (3usize, 9usize, 64 * 64 * 64);
    let x: Vec<f32> = (0..b * c * n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let l: Vec<i64> = (0..b * n).map(|i| ((i * 31) % c) as i64).collect();
    let d = Dims { b, c, n };
    for act in [Act::Softmax, Act::Sigmoid, Act::None] {
        let spec = Spec { act, include_background: false, squared: false, difference: false };
        let g = vec![0.1f32; 4 * b * (c - 1)];
        let (mut tf, mut tb) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let t = Instant::now();
            let s = forward(&x, TargetRef::Labels(&l), None, d, spec);
            tf = tf.min(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let dx = backward(&x, TargetRef::Labels(&l), None, &g, d, spec);
            tb = tb.min(t.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box((s, dx));
        }
        let mut out = vec![0.0f32; x.len()];
        let t = Instant::now();
        out.copy_from_slice(&x);
        let copy = t.elapsed().as_secs_f64() * 1e3;
        println!("{act:?}: forward {tf:.1} ms, backward {tb:.1} ms, copy {copy:.1} ms");
    }
}
