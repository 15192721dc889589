//! Times each CPU kernel of one layer shape: the forward, the input gradient and the weight
//! gradient of a 3x3x3 convolution, and the rate in GFLOP/s (2 flops per multiply-add).
//!
//! usage: cargo run --release -p segloss-nn --example layer_bench -- B C_IN C_OUT SIZE STRIDE [ITERS]

use std::time::Instant;

use segloss_nn::cpu::conv::{self, Conv3dGeom};

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("sizes are integers"))
        .collect();
    let [b, ci, co, n, s] = [a[0], a[1], a[2], a[3], a[4]];
    let iters = a.get(5).copied().unwrap_or(10);
    let g = Conv3dGeom::new([b, ci, n, n, n], [co, ci, 3, 3, 3], [s; 3], [(1, 1); 3]).unwrap();
    let x: Vec<f32> = (0..b * ci * n * n * n)
        .map(|i| (i % 7) as f32 * 0.1)
        .collect();
    let w: Vec<f32> = (0..co * ci * 27).map(|i| (i % 5) as f32 * 0.1).collect();
    let out = g.output.iter().product::<usize>();
    let dy: Vec<f32> = (0..b * co * out).map(|i| (i % 3) as f32 * 0.1).collect();
    let flops = 2.0 * (b * out * co * ci * 27) as f64;
    let time = |name: &str, f: &mut dyn FnMut()| {
        f();
        let mut t = Vec::new();
        for _ in 0..iters {
            let start = Instant::now();
            f();
            t.push(start.elapsed().as_secs_f64());
        }
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = t[t.len() / 2];
        println!(
            "{name:>16}: {:8.3} ms  {:6.1} GFLOP/s",
            med * 1e3,
            flops / med / 1e9
        );
    };
    time("forward", &mut || {
        std::hint::black_box(conv::forward(&g, &x, &w, None));
    });
    time("backward_input", &mut || {
        std::hint::black_box(conv::backward_input(&g, &w, &dy));
    });
    time("backward_weight", &mut || {
        std::hint::black_box(conv::backward_weight(&g, &x, &dy));
    });
}
