//! The MONAI conformance harness shared by `tests/conformance.rs` (Flex) and the GPU check
//! (`crates/segloss-gpu-check`, wgpu and CUDA): reading the reference cases, building each loss
//! from MONAI's options, running a case on a device and kernel, and comparing.
//!
//! Included with `#[path]` by both test targets, so not every item is used by each.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde_json::Value;

use segloss::*;

/// Relative tolerance on values and gradients (float32 against MONAI's float64).
pub const RTOL: f64 = 1e-4;
/// Absolute tolerance on values and gradients.
pub const ATOL: f64 = 1e-5;

struct Array {
    shape: Vec<usize>,
    data: Vec<f64>,
}

fn array(v: &Value) -> Array {
    let shape = v["shape"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap() as usize).collect();
    let data = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| match x {
            Value::Null => f64::NAN,
            Value::String(s) if s == "inf" => f64::INFINITY,
            Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
            other => other.as_f64().unwrap(),
        })
        .collect();
    Array { shape, data }
}

fn float<const D: usize>(a: &Array, device: &Device) -> Tensor<D> {
    let data: Vec<f32> = a.data.iter().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(data, a.shape.clone()), device)
}

fn ints<const D: usize>(a: &Array, device: &Device) -> Tensor<D, Int> {
    let data: Vec<i64> = a.data.iter().map(|&v| v as i64).collect();
    Tensor::from_data(TensorData::new(data, a.shape.clone()), device)
}

fn target(a: &Array, labels: bool, device: &Device) -> Target {
    macro_rules! by_rank {
        ($($r:literal),*) => {
            match a.shape.len() {
                $($r => if labels { Target::labels(ints::<$r>(a, device)) } else { Target::dense(float::<$r>(a, device)) },)*
                r => panic!("unsupported target rank {r}"),
            }
        };
    }
    by_rank!(2, 3, 4, 5, 6)
}

fn with_mask(t: Target, a: &Array, device: &Device) -> Target {
    match a.shape.len() {
        3 => t.with_mask(float::<3>(a, device)),
        4 => t.with_mask(float::<4>(a, device)),
        5 => t.with_mask(float::<5>(a, device)),
        r => panic!("unsupported mask rank {r}"),
    }
}

/// MONAI constructor options, read with their MONAI defaults; unknown options are an error.
struct Options<'a> {
    map: &'a serde_json::Map<String, Value>,
    used: std::cell::RefCell<Vec<&'static str>>,
}

impl<'a> Options<'a> {
    fn get(&self, k: &'static str) -> Option<&'a Value> {
        self.used.borrow_mut().push(k);
        self.map.get(k)
    }
    fn flag(&self, k: &'static str, default: bool) -> bool {
        self.get(k).map_or(default, |v| v.as_bool().unwrap())
    }
    fn num(&self, k: &'static str, default: f64) -> f64 {
        self.get(k).map_or(default, |v| v.as_f64().unwrap())
    }
    fn list(&self, k: &'static str) -> Option<Vec<f32>> {
        self.get(k).map(|v| match v {
            Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            x => vec![x.as_f64().unwrap() as f32],
        })
    }
    fn activation(&self) -> Activation {
        match (self.flag("softmax", false), self.flag("sigmoid", false)) {
            (true, _) => Activation::Softmax,
            (_, true) => Activation::Sigmoid,
            _ => Activation::None,
        }
    }
    fn reduction(&self) -> (LossReduction, bool) {
        match self.get("reduction").and_then(|v| v.as_str()).unwrap_or("mean") {
            "mean" => (LossReduction::Mean, false),
            "sum" => (LossReduction::Sum, false),
            "none" => (LossReduction::Mean, true),
            r => panic!("unknown reduction {r}"),
        }
    }
    fn unknown(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.map.keys().filter(|k| !used.contains(&k.as_str())).cloned().collect()
    }
}

enum Loss {
    Dice(DiceLoss),
    Gdl(GeneralizedDiceLoss),
    Tversky(TverskyLoss),
    Focal(FocalLoss),
    DiceCe(DiceCELoss),
    DiceFocal(DiceFocalLoss),
    GdlFocal(GeneralizedDiceFocalLoss),
    Wasserstein(GeneralizedWassersteinDiceLoss),
}

/// Builds our loss from a MONAI loss name and options. Returns (loss, unreduced?, labels?).
fn build(name: &str, o: &Options) -> Result<(Loss, bool, bool), String> {
    let (reduction, none) = o.reduction();
    let labels = o.flag("to_onehot_y", false);
    let bg = o.flag("include_background", true);
    let nr = o.num("smooth_nr", 1e-5);
    let dr = o.num("smooth_dr", 1e-5);
    let batch = o.flag("batch", false);
    let loss = match name {
        "DiceLoss" | "MaskedDiceLoss" => Loss::Dice(
            DiceLossConfig::new(o.activation())
                .with_include_background(bg)
                .with_squared_pred(o.flag("squared_pred", false))
                .with_jaccard(o.flag("jaccard", false))
                .with_reduction(reduction)
                .with_smooth_nr(nr)
                .with_smooth_dr(dr)
                .with_batch(batch)
                .with_weight(o.list("weight"))
                .with_soft_label(o.flag("soft_label", false))
                .with_ignore_index(o.get("ignore_index").map(|v| v.as_i64().unwrap()))
                .init(),
        ),
        "GeneralizedDiceLoss" => Loss::Gdl(
            GeneralizedDiceLossConfig::new(o.activation())
                .with_include_background(bg)
                .with_w_type(w_type(o))
                .with_reduction(reduction)
                .with_smooth_nr(nr)
                .with_smooth_dr(dr)
                .with_batch(batch)
                .with_soft_label(o.flag("soft_label", false))
                .init(),
        ),
        "TverskyLoss" => Loss::Tversky(
            TverskyLossConfig::new(o.activation())
                .with_include_background(bg)
                .with_alpha(o.num("alpha", 0.5))
                .with_beta(o.num("beta", 0.5))
                .with_reduction(reduction)
                .with_smooth_nr(nr)
                .with_smooth_dr(dr)
                .with_batch(batch)
                .with_soft_label(o.flag("soft_label", false))
                .init(),
        ),
        "FocalLoss" => Loss::Focal(
            FocalLossConfig::new()
                .with_include_background(bg)
                .with_gamma(o.num("gamma", 2.0))
                .with_alpha(o.list("alpha"))
                .with_weight(o.list("weight"))
                .with_reduction(reduction)
                .with_use_softmax(o.flag("use_softmax", false))
                .init(),
        ),
        "DiceCELoss" => Loss::DiceCe(
            DiceCELossConfig::new(o.activation())
                .with_include_background(bg)
                .with_squared_pred(o.flag("squared_pred", false))
                .with_jaccard(o.flag("jaccard", false))
                .with_reduction(reduction)
                .with_smooth_nr(nr)
                .with_smooth_dr(dr)
                .with_batch(batch)
                .with_weight(o.list("weight"))
                .with_lambda_dice(o.num("lambda_dice", 1.0))
                .with_lambda_ce(o.num("lambda_ce", 1.0))
                .with_label_smoothing(o.num("label_smoothing", 0.0))
                .init(),
        ),
        "DiceFocalLoss" => Loss::DiceFocal(
            DiceFocalLossConfig::new(o.activation())
                .with_include_background(bg)
                .with_squared_pred(o.flag("squared_pred", false))
                .with_jaccard(o.flag("jaccard", false))
                .with_reduction(reduction)
                .with_smooth_nr(nr)
                .with_smooth_dr(dr)
                .with_batch(batch)
                .with_gamma(o.num("gamma", 2.0))
                .with_weight(o.list("weight"))
                .with_alpha(o.list("alpha"))
                .with_lambda_dice(o.num("lambda_dice", 1.0))
                .with_lambda_focal(o.num("lambda_focal", 1.0))
                .init(),
        ),
        "GeneralizedDiceFocalLoss" => Loss::GdlFocal(
            GeneralizedDiceFocalLossConfig::new(o.activation())
                .with_include_background(bg)
                .with_w_type(w_type(o))
                .with_reduction(reduction)
                .with_smooth_nr(nr)
                .with_smooth_dr(dr)
                .with_batch(batch)
                .with_gamma(o.num("gamma", 2.0))
                .with_weight(o.list("weight"))
                .with_lambda_gdl(o.num("lambda_gdl", 1.0))
                .with_lambda_focal(o.num("lambda_focal", 1.0))
                .init(),
        ),
        "GeneralizedWassersteinDiceLoss" => {
            let m = o.get("dist_matrix").unwrap().as_array().unwrap();
            let m = m
                .iter()
                .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect())
                .collect();
            let mode = match o.get("weighting_mode").and_then(|v| v.as_str()).unwrap_or("default") {
                "GDL" => WassersteinWeighting::Gdl,
                _ => WassersteinWeighting::Default,
            };
            let cfg = GeneralizedWassersteinDiceLossConfig::new(m)
                .with_weighting_mode(mode)
                .with_reduction(reduction)
                .with_smooth_nr(nr)
                .with_smooth_dr(dr);
            return Ok((Loss::Wasserstein(cfg.init()), none, true));
        }
        other => return Err(format!("unknown loss {other}")),
    };
    let unknown = o.unknown();
    if !unknown.is_empty() {
        return Err(format!("options not understood by the harness: {unknown:?}"));
    }
    Ok((loss, none, labels))
}

fn w_type(o: &Options) -> WeightType {
    match o.get("w_type").and_then(|v| v.as_str()).unwrap_or("square") {
        "simple" => WeightType::Simple,
        "uniform" => WeightType::Uniform,
        _ => WeightType::Square,
    }
}

/// Runs a case on a rank-D prediction; returns (flattened output, flattened input gradient).
fn run<const D: usize>(loss: &Loss, none: bool, x: &Array, t: Target, device: &Device) -> (Vec<f64>, Vec<f64>) {
    let input: Tensor<D> = float::<D>(x, device).require_grad();
    let out: Tensor<1> = match (loss, none) {
        (Loss::Dice(l), true) => l.forward_no_reduction(input.clone(), t).reshape([-1]),
        (Loss::Dice(l), false) => l.forward(input.clone(), t),
        (Loss::Gdl(l), true) => l.forward_no_reduction(input.clone(), t).reshape([-1]),
        (Loss::Gdl(l), false) => l.forward(input.clone(), t),
        (Loss::Tversky(l), true) => l.forward_no_reduction(input.clone(), t).reshape([-1]),
        (Loss::Tversky(l), false) => l.forward(input.clone(), t),
        (Loss::Focal(l), true) => l.forward_no_reduction(input.clone(), t).reshape([-1]),
        (Loss::Focal(l), false) => l.forward(input.clone(), t),
        (Loss::DiceCe(l), _) => l.forward(input.clone(), t),
        (Loss::DiceFocal(l), _) => l.forward(input.clone(), t),
        (Loss::GdlFocal(l), _) => l.forward(input.clone(), t),
        (Loss::Wasserstein(l), true) => l.forward_no_reduction(input.clone(), t).reshape([-1]),
        (Loss::Wasserstein(l), false) => l.forward(input.clone(), t),
    };
    let grads = out.clone().sum().backward();
    let grad = input.grad(&grads).expect("the input is tracked");
    let to_vec = |t: TensorData| t.iter::<f64>().collect::<Vec<f64>>();
    (to_vec(out.into_data()), to_vec(grad.into_data()))
}

/// The largest absolute error, or (on failure) the element with the largest error relative to
/// its tolerance `ATOL + RTOL |MONAI|`.
fn compare(ours: &[f64], expected: &[f64]) -> Result<f64, String> {
    if ours.len() != expected.len() {
        return Err(format!("{} values, MONAI has {}", ours.len(), expected.len()));
    }
    let mut worst_abs = 0.0f64;
    let mut worst: Option<(f64, usize)> = None; // (error / tolerance, index)
    for (i, (&a, &e)) in ours.iter().zip(expected).enumerate() {
        let ratio = if e.is_nan() || a.is_nan() {
            if e.is_nan() == a.is_nan() { 0.0 } else { f64::INFINITY }
        } else {
            let err = (a - e).abs();
            worst_abs = worst_abs.max(err);
            err / (ATOL + RTOL * e.abs())
        };
        if ratio > 1.0 && worst.is_none_or(|(r, _)| ratio > r) {
            worst = Some((ratio, i));
        }
    }
    match worst {
        None => Ok(worst_abs),
        Some((_, i)) => Err(format!(
            "largest error at element {i} of {}: ours {}, MONAI {} (error {:.3e}, tolerance {:.1e})",
            ours.len(),
            ours[i],
            expected[i],
            (ours[i] - expected[i]).abs(),
            ATOL + RTOL * expected[i].abs()
        )),
    }
}

/// Largest difference between the fused and composed paths, relative to `max(1, |composed|)`.
pub const FUSED_VS_COMPOSED: f64 = 1e-5;

/// Runs `case` on the fused kernel on `fused_device` and on the composed path on Flex, compares
/// each with `reference` (the case itself, or the MONAI equivalent of a documented difference),
/// and the two with each other. Returns the largest error against MONAI and the largest
/// fused-composed difference.
pub fn check_case(loss_name: &str, case: &Value, reference: &Value, fused_device: &Device) -> Result<(f64, f64), String> {
    let flex = Device::flex().autodiff();
    let fused = run_case(loss_name, case, reference, Kernel::Auto, fused_device).map_err(|e| format!("fused path: {e}"))?;
    let composed = run_case(loss_name, case, reference, Kernel::Composed, &flex).map_err(|e| format!("composed path: {e}"))?;
    let mut diff = 0.0f64;
    for (a, b) in fused.1.iter().chain(&fused.2).zip(composed.1.iter().chain(&composed.2)) {
        if a.is_nan() && b.is_nan() {
            continue;
        }
        let d = (a - b).abs() / b.abs().max(1.0);
        if d.is_nan() || d > FUSED_VS_COMPOSED {
            return Err(format!("fused {a} vs composed {b} (difference {d:.2e})"));
        }
        diff = diff.max(d);
    }
    Ok((fused.0.max(composed.0), diff))
}

/// Runs one case on one kernel: (largest error against MONAI, values, gradient).
pub fn run_case(loss_name: &str, case: &Value, reference: &Value, kernel: Kernel, device: &Device) -> Result<(f64, Vec<f64>, Vec<f64>), String> {
    let opts = Options { map: case["options"].as_object().unwrap(), used: Default::default() };
    let (loss, none, labels) = build(loss_name, &opts)?;
    let x = array(&case["input"]);
    let mut t = target(&array(&case["target"]), labels, device);
    if let Some(m) = case.get("mask") {
        t = with_mask(t, &array(m), device);
    }
    let (out, grad) = with_kernel(kernel, || match x.shape.len() {
        3 => Ok(run::<3>(&loss, none, &x, t, device)),
        4 => Ok(run::<4>(&loss, none, &x, t, device)),
        5 => Ok(run::<5>(&loss, none, &x, t, device)),
        r => Err(format!("unsupported input rank {r}")),
    })?;
    let v = compare(&out, &array(&reference["expected"]).data).map_err(|e| format!("value: {e}"))?;
    let g = compare(&grad, &array(&reference["grad_input"]).data).map_err(|e| format!("gradient: {e}"))?;
    Ok((v.max(g), out, grad))
}


/// The outcome of running every reference case.
pub struct Summary {
    /// Number of cases.
    pub total: usize,
    /// `loss case: message` of each failing case.
    pub failed: Vec<String>,
    /// The cases checked against the MONAI result of an equivalent input (documented differences).
    pub differences: Vec<String>,
    /// Largest error against MONAI of the passing cases.
    pub worst: f64,
    /// Largest fused-composed difference of the passing cases.
    pub worst_kernel_diff: f64,
}

/// The reference directories: `SEGLOSS_REFERENCE_DIR` (one folder, or several joined like
/// `PATH`), or the MONAI fixtures of the `segloss` crate: the small cases (`fixtures/monai`) and
/// those at the scale of the fused kernel's tiles, blocks and runs (`fixtures/monai_kernel`).
pub fn reference_dirs() -> Vec<PathBuf> {
    match std::env::var_os("SEGLOSS_REFERENCE_DIR") {
        Some(dirs) => std::env::split_paths(&dirs).collect(),
        None => {
            let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../segloss/tests/fixtures");
            vec![fixtures.join("monai"), fixtures.join("monai_kernel")]
        }
    }
}

/// A reference file's JSON text: `*.json`, or gzipped `*.json.gz`.
fn read_reference_file(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if path.extension().is_some_and(|x| x == "gz") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text
    } else {
        String::from_utf8(bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

/// Runs every case of the `*.json` and `*.json.gz` files of `dirs` through [`check_case`] with
/// the fused kernel on `fused_device`.
pub fn run_all(dirs: &[PathBuf], fused_device: &Device) -> Summary {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let mut in_dir: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read reference directory {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".json") || n.ends_with(".json.gz"))
            })
            .collect();
        in_dir.sort();
        files.extend(in_dir);
    }
    let mut sets = Vec::new();
    for path in files {
        let text = read_reference_file(&path);
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match json.get("loss").and_then(|v| v.as_str()) {
            Some("metrics") | None => {}
            Some(_) => sets.push(json),
        }
    }
    // Documented differences from MONAI: a case `equivalent_of: X` holds MONAI's result on the
    // input that segloss's semantics make X equivalent to; X is checked against it instead.
    let mut equivalents = std::collections::HashMap::new();
    for set in &sets {
        for case in set["cases"].as_array().unwrap() {
            if let Some(of) = case.get("equivalent_of").and_then(|v| v.as_str()) {
                equivalents.insert((set["loss"].as_str().unwrap().to_string(), of.to_string()), case.clone());
            }
        }
    }
    let mut s = Summary { total: 0, failed: Vec::new(), differences: Vec::new(), worst: 0.0, worst_kernel_diff: 0.0 };
    for set in &sets {
        let loss_name = set["loss"].as_str().unwrap();
        for case in set["cases"].as_array().unwrap() {
            s.total += 1;
            let name = case["name"].as_str().unwrap_or("?").to_string();
            let reference = match equivalents.get(&(loss_name.to_string(), name.clone())) {
                Some(eq) => {
                    s.differences.push(format!("{loss_name} {name} (checked against {})", eq["name"].as_str().unwrap()));
                    eq
                }
                None => case,
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check_case(loss_name, case, reference, fused_device)
            }));
            match result {
                Ok(Ok((err, diff))) => {
                    s.worst = s.worst.max(err);
                    s.worst_kernel_diff = s.worst_kernel_diff.max(diff);
                }
                Ok(Err(msg)) => s.failed.push(format!("{loss_name} {name}: {msg}")),
                Err(p) => s.failed.push(format!("{loss_name} {name}: panicked: {}", panic_message(&*p))),
            }
        }
    }
    s
}

/// The text of a caught panic.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}
