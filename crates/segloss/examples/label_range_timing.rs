//! Times the label-range check's reduction three ways on one device, in one process: a plain
//! `min()` / `max()` of the `[B, N]` label map (what the check does on Flex), the two-stage form
//! it uses on the CubeCL backends (the flattened map as rows of 1024 labels reduced in parallel,
//! then the row results), and the same with the map grouped as 1024 rows of `len / 1024` labels
//! reduced across rows ("columns").
//!
//! ```text
//! cargo run --release --example label_range_timing -- SHAPE [--device D] [--iters N]
//!   SHAPE  BxN, e.g. 2x2097152 (two 128^3 label maps)
//!   D      flex (default) | wgpu | wgpu-cpu | wgpu-gpu (feature wgpu) | cuda (feature cuda)
//! ```
//!
//! Each timed call ends with reading the two values back (as the check does). Prints one JSON
//! line with the medians in milliseconds (and fails if the forms disagree).

use std::time::Instant;

use burn::tensor::{Distribution, Int, Tensor};

fn plain(l: &Tensor<2, Int>) -> Vec<i64> {
    Tensor::cat(vec![l.clone().min(), l.clone().max()], 0)
        .into_data()
        .iter::<i64>()
        .collect()
}

fn two_stage(l: &Tensor<2, Int>, columns: bool) -> Vec<i64> {
    const ROW: usize = 1024;
    let len = l.shape().num_elements();
    let rows = len / ROW;
    let flat = l.clone().reshape([len]);
    let (mut lows, mut highs) = if columns {
        let body = flat.clone().slice(0..rows * ROW).reshape([ROW, rows]);
        (
            vec![body.clone().min_dim(0).reshape([rows])],
            vec![body.max_dim(0).reshape([rows])],
        )
    } else {
        let body = flat.clone().slice(0..rows * ROW).reshape([rows, ROW]);
        (
            vec![body.clone().min_dim(1).reshape([rows])],
            vec![body.max_dim(1).reshape([rows])],
        )
    };
    if rows * ROW < len {
        lows.push(flat.clone().slice(rows * ROW..len));
        highs.push(flat.slice(rows * ROW..len));
    }
    Tensor::cat(
        vec![Tensor::cat(lows, 0).min(), Tensor::cat(highs, 0).max()],
        0,
    )
    .into_data()
    .iter::<i64>()
    .collect()
}

fn median_ms(iters: usize, f: impl Fn() -> Vec<i64>) -> (f64, Vec<i64>) {
    // Two untimed calls: kernel compilation and autotuning on GPU backends.
    f();
    let out = f();
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            std::hint::black_box(f());
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (t[t.len() / 2], out)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: label_range_timing BxN [--device D] [--iters N]";
    let dims: Vec<usize> = args
        .first()
        .expect(usage)
        .split('x')
        .map(|v| v.parse().expect(usage))
        .collect();
    assert_eq!(dims.len(), 2, "{usage}");
    let (mut device_name, mut iters) = ("flex".to_string(), 10usize);
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--device" => device_name = args[i + 1].clone(),
            "--iters" => iters = args[i + 1].parse().expect(usage),
            other => panic!("unknown argument {other}; {usage}"),
        }
        i += 2;
    }
    let device = segloss::device::by_name(&device_name).unwrap_or_else(|e| panic!("{e}"));
    device.seed(1);
    let labels =
        Tensor::<2, Int>::random([dims[0], dims[1]], Distribution::Uniform(0.0, 4.0), &device);
    let (plain_ms, a) = median_ms(iters, || plain(&labels));
    let (two_ms, b) = median_ms(iters, || two_stage(&labels, false));
    let (col_ms, c) = median_ms(iters, || two_stage(&labels, true));
    assert!(a == b && a == c, "the forms disagree: {a:?} {b:?} {c:?}");
    println!(
        "{{\"shape\": \"{}\", \"device\": \"{device_name}\", \"plain_ms\": {plain_ms:.3}, \"rows_ms\": {two_ms:.3}, \"columns_ms\": {col_ms:.3}, \"range\": {a:?}}}",
        args[0]
    );
}
