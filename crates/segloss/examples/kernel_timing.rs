//! Times the CPU kernel alone (no Burn), for tuning: `cargo run --release --example kernel_timing
//! [-- FILTER]` (only the cases whose name contains FILTER, e.g. `sigmoid`).
//!
//! For the question's shape (3 x 9 x 64^3) and the benchmark's cases (softmax against a label
//! map, sigmoid against a dense multi-label target, identity), prints the best of 15 times of the
//! two ways to run a forward + backward: recomputing the activations in the backward
//! (`forward` + `backward`, the GPU kernels' way), and saving them in the forward's pass
//! (`forward_saving` + `backward_in_place`, what Flex runs when a backward is recorded); then the
//! softmax with the pointwise term (cross-entropy, focal, focal without the background, filter
//! `pointwise`), saving; then both ways for the confusion matrix of the Generalized Wasserstein
//! Dice loss (`kernel::cpu::confusion`, filter `confusion`).
use segloss::Activation;
use segloss::kernel::cpu::*;
use std::time::Instant;

/// Runs per measurement (the best is kept: the machines are shared).
const REPEAT: usize = 15;

fn best(mut f: impl FnMut()) -> f64 {
    (0..REPEAT)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let (b, c, n) = (3usize, 9usize, 64 * 64 * 64);
    let x: Vec<f32> = (0..b * c * n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let labels: Vec<i64> = (0..b * n).map(|i| ((i * 31) % c) as i64).collect();
    let dense: Vec<f32> = (0..b * c * n)
        .map(|i| if (i * 7) % 10 < 3 { 1.0 } else { 0.0 })
        .collect();
    let d = Dims { b, c, n };
    let cases = [
        (
            "softmax, label map",
            Activation::Softmax,
            TargetRef::Labels(&labels[..]),
        ),
        (
            "sigmoid, dense target",
            Activation::Sigmoid,
            TargetRef::Dense(&dense[..]),
        ),
        (
            "identity, label map",
            Activation::None,
            TargetRef::Labels(&labels[..]),
        ),
    ];
    let filter = std::env::args().nth(1).unwrap_or_default();
    for (name, act, t) in cases.into_iter().filter(|c| c.0.contains(filter.as_str())) {
        let spec = Spec {
            act,
            include_background: act == Activation::Sigmoid,
            squared: false,
            difference: false,
        };
        let g = vec![0.1f32; 4 * b * d.k(&spec)];
        let fwd = best(|| drop(std::hint::black_box(forward(&x, t, None, d, spec))));
        let bwd = best(|| drop(std::hint::black_box(backward(&x, t, None, &g, d, spec))));
        let mut line = format!("{name}: recompute {fwd:.1} + {bwd:.1} ms");
        if act != Activation::None {
            let (mut fs, mut bi) = (f64::MAX, f64::MAX);
            for _ in 0..REPEAT {
                let t0 = Instant::now();
                let (s, mut p) = forward_saving(&x, t, None, d, spec);
                fs = fs.min(t0.elapsed().as_secs_f64() * 1e3);
                let t0 = Instant::now();
                backward_in_place(&mut p, t, None, &g, d, spec);
                bi = bi.min(t0.elapsed().as_secs_f64() * 1e3);
                std::hint::black_box((s, p));
            }
            line += &format!("; saving {fs:.1} + {bi:.1} ms");
        }
        println!("{line}");
    }
    // The pointwise term beside the softmax statistics (the compound losses' and the
    // cross-entropy's and focal loss's pass), saving forward + in-place backward.
    let spec = Spec {
        act: Activation::Softmax,
        include_background: true,
        squared: false,
        difference: false,
    };
    let t = TargetRef::Labels(&labels[..]);
    let g = vec![0.1f32; 8 * b * c];
    for (name, pw) in [
        ("pointwise cross-entropy", Pointwise::new(0.0)),
        ("pointwise focal", Pointwise::new(2.0)),
        (
            "pointwise focal without background",
            Pointwise {
                gamma: 2.0,
                without_background: true,
            },
        ),
    ]
    .into_iter()
    .filter(|c| c.0.contains(filter.as_str()))
    {
        let (mut fs, mut bi) = (f64::MAX, f64::MAX);
        for _ in 0..REPEAT {
            let t0 = Instant::now();
            let (s, mut p) = pointwise_forward_saving(&x, t, None, d, spec, pw);
            fs = fs.min(t0.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            pointwise_backward_in_place(&mut p, t, None, &g, d, spec, pw);
            bi = bi.min(t0.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box((s, p));
        }
        println!("{name}: saving {fs:.1} + {bi:.1} ms");
    }
    // The Generalized Wasserstein Dice loss's confusion matrix (softmax against a label map), at
    // the question's shape and at 2 x 4 x 128^3, both ways.
    for (b, c, n) in [(3usize, 9usize, 64 * 64 * 64), (2, 4, 128 * 128 * 128)] {
        let name = format!("confusion {b}x{c}x{n}, label map");
        if !name.contains(filter.as_str()) {
            continue;
        }
        let x: Vec<f32> = (0..b * c * n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let labels: Vec<i64> = (0..b * n).map(|i| ((i * 31) % c) as i64).collect();
        let (d, t) = (Dims { b, c, n }, TargetRef::Labels(&labels[..]));
        let g = vec![0.1f32; b * c * (c + 1)];
        use segloss::kernel::cpu::confusion;
        let fwd = best(|| drop(std::hint::black_box(confusion::forward(&x, t, None, d))));
        let bwd = best(|| {
            drop(std::hint::black_box(confusion::backward(
                &x, t, None, &g, d,
            )))
        });
        let (mut fs, mut bi) = (f64::MAX, f64::MAX);
        for _ in 0..REPEAT {
            let t0 = Instant::now();
            let (s, mut p) = confusion::forward_saving(&x, t, None, d);
            fs = fs.min(t0.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            confusion::backward_in_place(&mut p, t, None, &g, d);
            bi = bi.min(t0.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box((s, p));
        }
        println!("{name}: recompute {fwd:.1} + {bwd:.1} ms; saving {fs:.1} + {bi:.1} ms");
    }
}
