//! The MONAI conformance harness shared by `segloss`'s `tests/conformance.rs` (Flex) and the GPU
//! check (`crates/segloss-gpu-check`, wgpu and CUDA): reading the reference cases, building each loss
//! from MONAI's options, running a case on a device and kernel, and comparing.
//!
//! **Strict.** Anything the harness does not understand fails the case (or the file) with a
//! message naming it, instead of being skipped or replaced by a default: an unknown loss name, an
//! option the loss does not take in MONAI 1.6.1 or that the harness does not map, an option value
//! of the wrong type, an unknown string value (`reduction`, `w_type`, `weighting_mode`), `softmax`
//! and `sigmoid` both true, a case or file field it does not know, an array whose data does not
//! fill its shape, a `reduction = "none"` case of `DiceCELoss` (MONAI 1.6.1 refuses it too), an
//! `equivalent_of` naming no case. Values and gradients are compared element by
//! element and by shape: the loss's shape in MONAI's convention (see `monai_value_shape`) and
//! the gradient's shape must equal the expected shapes; NaN only matches NaN and an infinity only
//! the same infinity.
#![warn(missing_docs)]

use std::cell::RefCell;
use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde_json::{Map, Value};

use segloss::*;

/// Relative tolerance on values and gradients (float32 against MONAI's float64).
pub const RTOL: f64 = 1e-4;
/// Absolute tolerance on values and gradients.
pub const ATOL: f64 = 1e-5;

/// The fields a case may have; any other fails the case.
pub const CASE_FIELDS: &[&str] = &[
    "name",
    "options",
    "input",
    "target",
    "mask",
    "expected",
    "grad_input",
    "equivalent_of",
    "inputs",
    "grad_inputs",
];
/// The `loss` of the shared set's metrics file, which holds no loss cases and is skipped.
pub const METRICS: &str = "metrics";

/// A row-major array of the reference format, `{shape, data}`.
#[derive(Debug)]
pub struct Array {
    /// The shape.
    pub shape: Vec<usize>,
    /// The values, row-major: `null` is NaN, `"inf"` / `"-inf"` are the infinities.
    pub data: Vec<f64>,
}

/// Reads the array `v`, the field `what` of a case: `shape` a list of sizes, `data` as many
/// numbers (or `null`, `"inf"`, `"-inf"`) as the shape holds, and no other field.
pub fn array(v: &Value, what: &str) -> Result<Array, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("`{what}` is {v}, not an object {{shape, data}}"))?;
    if let Some(k) = obj.keys().find(|k| *k != "shape" && *k != "data") {
        return Err(format!(
            "`{what}` has a field `{k}` the harness does not understand (only shape and data)"
        ));
    }
    let shape = obj
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("`{what}.shape` is missing or not a list"))?
        .iter()
        .map(|s| {
            s.as_u64()
                .map(|s| s as usize)
                .ok_or_else(|| format!("`{what}.shape` holds {s}, not a size"))
        })
        .collect::<Result<Vec<usize>, String>>()?;
    let data = obj
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("`{what}.data` is missing or not a list"))?
        .iter()
        .map(|x| match x {
            Value::Null => Ok(f64::NAN),
            Value::String(s) if s == "inf" => Ok(f64::INFINITY),
            Value::String(s) if s == "-inf" => Ok(f64::NEG_INFINITY),
            Value::Number(n) => n
                .as_f64()
                .ok_or_else(|| format!("`{what}.data` holds {n}, not an f64")),
            other => Err(format!(
                "`{what}.data` holds {other}: not a number, null (NaN), \"inf\" or \"-inf\""
            )),
        })
        .collect::<Result<Vec<f64>, String>>()?;
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(format!(
            "`{what}` has shape {shape:?} ({n} values) but {} values",
            data.len()
        ));
    }
    Ok(Array { shape, data })
}

fn float<const D: usize>(a: &Array, device: &Device) -> Tensor<D> {
    let data: Vec<f32> = a.data.iter().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(data, a.shape.clone()), device)
}

fn ints<const D: usize>(a: &Array, device: &Device) -> Result<Tensor<D, Int>, String> {
    if let Some(v) = a.data.iter().find(|v| v.fract() != 0.0 || !v.is_finite()) {
        return Err(format!("label map holds {v}, not a class index"));
    }
    let data: Vec<i64> = a.data.iter().map(|&v| v as i64).collect();
    Ok(Tensor::from_data(
        TensorData::new(data, a.shape.clone()),
        device,
    ))
}

fn target(a: &Array, labels: bool, device: &Device) -> Result<Target, String> {
    macro_rules! by_rank {
        ($($r:literal),*) => {
            match a.shape.len() {
                $($r => if labels { Target::labels(ints::<$r>(a, device)?) } else { Target::dense(float::<$r>(a, device)) },)*
                r => return Err(format!("unsupported target rank {r} (shape {:?})", a.shape)),
            }
        };
    }
    Ok(by_rank!(2, 3, 4, 5, 6))
}

fn with_mask(t: Target, a: &Array, device: &Device) -> Result<Target, String> {
    Ok(match a.shape.len() {
        3 => t.with_mask(float::<3>(a, device)),
        4 => t.with_mask(float::<4>(a, device)),
        5 => t.with_mask(float::<5>(a, device)),
        r => return Err(format!("unsupported mask rank {r} (shape {:?})", a.shape)),
    })
}

/// MONAI's `reduction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// `"mean"` (MONAI's default).
    Mean,
    /// `"sum"`.
    Sum,
    /// `"none"`: the unreduced loss, in MONAI's shape.
    None,
}

impl Reduction {
    fn ours(self) -> LossReduction {
        match self {
            Reduction::Sum => LossReduction::Sum,
            // With `none` the harness calls `forward_no_reduction`; the config's value is unused.
            Reduction::Mean | Reduction::None => LossReduction::Mean,
        }
    }
}

/// A case's MONAI constructor options, read with their MONAI defaults. Every read is recorded,
/// and [`Options::finish`] fails on any option that was not read. A present option of the wrong
/// type, or a string value outside the known ones, is an error, never a default.
struct Options<'a> {
    map: &'a Map<String, Value>,
    used: RefCell<Vec<&'static str>>,
}

impl<'a> Options<'a> {
    fn get(&self, k: &'static str) -> Option<&'a Value> {
        self.used.borrow_mut().push(k);
        self.map.get(k)
    }
    fn wrong(k: &str, v: &Value, want: &str) -> String {
        format!("option `{k}` is {v}, expected {want}")
    }
    fn flag(&self, k: &'static str, default: bool) -> Result<bool, String> {
        match self.get(k) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(Self::wrong(k, v, "true or false")),
        }
    }
    fn num(&self, k: &'static str, default: f64) -> Result<f64, String> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| Self::wrong(k, v, "a number")),
        }
    }
    /// A number or a list of numbers (per class); absent or `null` is MONAI's `None`.
    fn list(&self, k: &'static str) -> Result<Option<Vec<f32>>, String> {
        let bad = |v: &Value| Self::wrong(k, v, "a number, a list of numbers or null");
        match self.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_f64().map(|x| x as f32).ok_or_else(|| bad(x)))
                .collect::<Result<Vec<f32>, String>>()
                .map(Some),
            Some(v) => v
                .as_f64()
                .map(|x| Some(vec![x as f32]))
                .ok_or_else(|| bad(v)),
        }
    }
    /// An integer; absent or `null` is MONAI's `None`.
    fn int(&self, k: &'static str) -> Result<Option<i64>, String> {
        match self.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| Self::wrong(k, v, "an integer or null")),
        }
    }
    /// A string among `allowed` (MONAI's values, case-sensitive as MONAI compares them).
    fn choice(
        &self,
        k: &'static str,
        default: &'static str,
        allowed: &[&'static str],
    ) -> Result<&'static str, String> {
        match self.get(k) {
            None => Ok(default),
            Some(Value::String(s)) => allowed
                .iter()
                .copied()
                .find(|a| a == s)
                .ok_or_else(|| format!("option `{k}` = {s:?} is not one of {allowed:?}")),
            Some(v) => Err(Self::wrong(k, v, &format!("one of {allowed:?}"))),
        }
    }
    /// MONAI's `softmax` / `sigmoid` flags; both true is refused (as MONAI does).
    fn activation(&self) -> Result<Activation, String> {
        match (self.flag("softmax", false)?, self.flag("sigmoid", false)?) {
            (true, true) => Err("options `softmax` and `sigmoid` are both true (MONAI refuses this: one activation)".into()),
            (true, false) => Ok(Activation::Softmax),
            (false, true) => Ok(Activation::Sigmoid),
            (false, false) => Ok(Activation::None),
        }
    }
    fn reduction(&self) -> Result<Reduction, String> {
        Ok(
            match self.choice("reduction", "mean", &["mean", "sum", "none"])? {
                "mean" => Reduction::Mean,
                "sum" => Reduction::Sum,
                _ => Reduction::None,
            },
        )
    }
    fn w_type(&self) -> Result<WeightType, String> {
        Ok(
            match self.choice("w_type", "square", &["square", "simple", "uniform"])? {
                "square" => WeightType::Square,
                "simple" => WeightType::Simple,
                _ => WeightType::Uniform,
            },
        )
    }
    /// Fails on any option that no read asked for.
    fn finish(&self, loss: &str) -> Result<(), String> {
        let used = self.used.borrow();
        let unknown: Vec<&String> = self
            .map
            .keys()
            .filter(|k| !used.contains(&k.as_str()))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{loss}: options not understood by the harness: {unknown:?}"
            ))
        }
    }
}

enum Loss {
    Dice(DiceLoss),
    Gdl(GeneralizedDiceLoss),
    Tversky(TverskyLoss),
    Mcc(MccLoss),
    Focal(FocalLoss),
    DiceCe(DiceCELoss),
    DiceFocal(DiceFocalLoss),
    GdlFocal(GeneralizedDiceFocalLoss),
    Wasserstein(GeneralizedWassersteinDiceLoss),
    Hausdorff(HausdorffDTLoss),
    LogHausdorff(LogHausdorffDTLoss),
    Boundary(BoundaryLoss),
    ClDice(SoftclDiceLoss),
    DiceClDice(SoftDiceclDiceLoss),
    UnifiedFocal(AsymmetricUnifiedFocalLoss),
}

/// A loss built from a case's options.
struct Built {
    loss: Loss,
    reduction: Reduction,
    /// The target is a label map (MONAI's `to_onehot_y`, or the Wasserstein loss's label map).
    labels: bool,
    /// Batch Dice (changes the unreduced shape).
    batch: bool,
}

/// The loss names the harness runs, as MONAI 1.6.1 names them.
pub const LOSSES: &[&str] = &[
    "DiceLoss",
    "MaskedDiceLoss",
    "GeneralizedDiceLoss",
    "TverskyLoss",
    "MCCLoss",
    "FocalLoss",
    "DiceCELoss",
    "DiceFocalLoss",
    "GeneralizedDiceFocalLoss",
    "GeneralizedWassersteinDiceLoss",
    DEEP_SUPERVISION,
    "HausdorffDTLoss",
    "LogHausdorffDTLoss",
    "BoundaryLoss",
    "SoftclDiceLoss",
    "SoftDiceclDiceLoss",
    "AsymmetricUnifiedFocalLoss",
];

/// MONAI's `DeepSupervisionLoss`: its cases hold lists `inputs` / `grad_inputs` (one per level,
/// full resolution first) and name the inner loss in `options.loss = {name, options}`.
pub const DEEP_SUPERVISION: &str = "DeepSupervisionLoss";

/// Builds our loss from a MONAI loss name and its options (only the options MONAI 1.6.1's
/// constructor of that loss takes, and only those the harness maps).
fn build(name: &str, o: &Options) -> Result<Built, String> {
    let cfg = |e: ConfigError| format!("segloss refuses the options: {e}");
    let built = match name {
        "DiceLoss" | "MaskedDiceLoss" => {
            let (reduction, batch) = (o.reduction()?, o.flag("batch", false)?);
            // MONAI's MaskedDiceLoss has no `ignore_index`.
            let ignore_index = if name == "DiceLoss" {
                o.int("ignore_index")?
            } else {
                None
            };
            let loss = DiceLossConfig::new(o.activation()?)
                .with_include_background(o.flag("include_background", true)?)
                .with_squared_pred(o.flag("squared_pred", false)?)
                .with_jaccard(o.flag("jaccard", false)?)
                .with_reduction(reduction.ours())
                .with_smooth_nr(o.num("smooth_nr", 1e-5)?)
                .with_smooth_dr(o.num("smooth_dr", 1e-5)?)
                .with_batch(batch)
                .with_weight(o.list("weight")?)
                .with_soft_label(o.flag("soft_label", false)?)
                .with_ignore_index(ignore_index)
                .try_init()
                .map_err(cfg)?;
            Built {
                loss: Loss::Dice(loss),
                reduction,
                labels: o.flag("to_onehot_y", false)?,
                batch,
            }
        }
        "GeneralizedDiceLoss" => {
            let (reduction, batch) = (o.reduction()?, o.flag("batch", false)?);
            let loss = GeneralizedDiceLossConfig::new(o.activation()?)
                .with_include_background(o.flag("include_background", true)?)
                .with_w_type(o.w_type()?)
                .with_reduction(reduction.ours())
                .with_smooth_nr(o.num("smooth_nr", 1e-5)?)
                .with_smooth_dr(o.num("smooth_dr", 1e-5)?)
                .with_batch(batch)
                .with_soft_label(o.flag("soft_label", false)?)
                .try_init()
                .map_err(cfg)?;
            Built {
                loss: Loss::Gdl(loss),
                reduction,
                labels: o.flag("to_onehot_y", false)?,
                batch,
            }
        }
        "TverskyLoss" => {
            let (reduction, batch) = (o.reduction()?, o.flag("batch", false)?);
            let loss = TverskyLossConfig::new(o.activation()?)
                .with_include_background(o.flag("include_background", true)?)
                .with_alpha(o.num("alpha", 0.5)?)
                .with_beta(o.num("beta", 0.5)?)
                .with_reduction(reduction.ours())
                .with_smooth_nr(o.num("smooth_nr", 1e-5)?)
                .with_smooth_dr(o.num("smooth_dr", 1e-5)?)
                .with_batch(batch)
                .with_soft_label(o.flag("soft_label", false)?)
                .with_ignore_index(o.int("ignore_index")?)
                .try_init()
                .map_err(cfg)?;
            Built {
                loss: Loss::Tversky(loss),
                reduction,
                labels: o.flag("to_onehot_y", false)?,
                batch,
            }
        }
        "MCCLoss" => {
            let (reduction, batch) = (o.reduction()?, o.flag("batch", false)?);
            let loss = MccLossConfig::new(o.activation()?)
                .with_include_background(o.flag("include_background", true)?)
                .with_reduction(reduction.ours())
                .with_smooth_nr(o.num("smooth_nr", 0.0)?)
                .with_smooth_dr(o.num("smooth_dr", 1e-5)?)
                .with_batch(batch)
                .try_init()
                .map_err(cfg)?;
            Built {
                loss: Loss::Mcc(loss),
                reduction,
                labels: o.flag("to_onehot_y", false)?,
                batch,
            }
        }
        "FocalLoss" => {
            let reduction = o.reduction()?;
            let loss = FocalLossConfig::new()
                .with_include_background(o.flag("include_background", true)?)
                .with_gamma(o.num("gamma", 2.0)?)
                .with_alpha(o.list("alpha")?)
                .with_weight(o.list("weight")?)
                .with_reduction(reduction.ours())
                .with_use_softmax(o.flag("use_softmax", false)?)
                .with_ignore_index(o.int("ignore_index")?)
                .try_init()
                .map_err(cfg)?;
            Built {
                loss: Loss::Focal(loss),
                reduction,
                labels: o.flag("to_onehot_y", false)?,
                batch: false,
            }
        }
        "DiceCELoss" => {
            let (reduction, batch) = (o.reduction()?, o.flag("batch", false)?);
            let loss = DiceCELossConfig::new(o.activation()?)
                .with_include_background(o.flag("include_background", true)?)
                .with_squared_pred(o.flag("squared_pred", false)?)
                .with_jaccard(o.flag("jaccard", false)?)
                .with_reduction(reduction.ours())
                .with_smooth_nr(o.num("smooth_nr", 1e-5)?)
                .with_smooth_dr(o.num("smooth_dr", 1e-5)?)
                .with_batch(batch)
                .with_weight(o.list("weight")?)
                .with_lambda_dice(o.num("lambda_dice", 1.0)?)
                .with_lambda_ce(o.num("lambda_ce", 1.0)?)
                .with_label_smoothing(o.num("label_smoothing", 0.0)?)
                .try_init()
                .map_err(cfg)?;
            Built {
                loss: Loss::DiceCe(loss),
                reduction,
                labels: o.flag("to_onehot_y", false)?,
                batch,
            }
        }
        "DiceFocalLoss" => {
            let (reduction, batch) = (o.reduction()?, o.flag("batch", false)?);
            let loss = DiceFocalLossConfig::new(o.activation()?)
                .with_include_background(o.flag("include_background", true)?)
                .with_squared_pred(o.flag("squared_pred", false)?)
                .with_jaccard(o.flag("jaccard", false)?)
                .with_reduction(reduction.ours())
                .with_smooth_nr(o.num("smooth_nr", 1e-5)?)
                .with_smooth_dr(o.num("smooth_dr", 1e-5)?)
                .with_batch(batch)
                .with_gamma(o.num("gamma", 2.0)?)
                .with_weight(o.list("weight")?)
                .with_alpha(o.list("alpha")?)
                .with_lambda_dice(o.num("lambda_dice", 1.0)?)
                .with_lambda_focal(o.num("lambda_focal", 1.0)?)
                .try_init()
                .map_err(cfg)?;
            Built {
                loss: Loss::DiceFocal(loss),
                reduction,
                labels: o.flag("to_onehot_y", false)?,
                batch,
            }
        }
        "GeneralizedDiceFocalLoss" => {
            let (reduction, batch) = (o.reduction()?, o.flag("batch", false)?);
            let loss = GeneralizedDiceFocalLossConfig::new(o.activation()?)
                .with_include_background(o.flag("include_background", true)?)
                .with_w_type(o.w_type()?)
                .with_reduction(reduction.ours())
                .with_smooth_nr(o.num("smooth_nr", 1e-5)?)
                .with_smooth_dr(o.num("smooth_dr", 1e-5)?)
                .with_batch(batch)
                .with_gamma(o.num("gamma", 2.0)?)
                .with_weight(o.list("weight")?)
                .with_lambda_gdl(o.num("lambda_gdl", 1.0)?)
                .with_lambda_focal(o.num("lambda_focal", 1.0)?)
                .try_init()
                .map_err(cfg)?;
            Built {
                loss: Loss::GdlFocal(loss),
                reduction,
                labels: o.flag("to_onehot_y", false)?,
                batch,
            }
        }
        "GeneralizedWassersteinDiceLoss" => {
            let reduction = o.reduction()?;
            let bad =
                |v: &Value| Options::wrong("dist_matrix", v, "a C x C list of lists of numbers");
            let m = o
                .get("dist_matrix")
                .ok_or("GeneralizedWassersteinDiceLoss needs the option `dist_matrix`")?;
            let m = m
                .as_array()
                .ok_or_else(|| bad(m))?
                .iter()
                .map(|r| {
                    r.as_array()
                        .ok_or_else(|| bad(m))?
                        .iter()
                        .map(|v| v.as_f64().map(|v| v as f32).ok_or_else(|| bad(m)))
                        .collect::<Result<Vec<f32>, String>>()
                })
                .collect::<Result<Vec<Vec<f32>>, String>>()?;
            let mode = match o.choice("weighting_mode", "default", &["default", "GDL"])? {
                "default" => WassersteinWeighting::Default,
                _ => WassersteinWeighting::Gdl,
            };
            let loss = GeneralizedWassersteinDiceLossConfig::new(m)
                .with_weighting_mode(mode)
                .with_reduction(reduction.ours())
                .with_smooth_nr(o.num("smooth_nr", 1e-5)?)
                .with_smooth_dr(o.num("smooth_dr", 1e-5)?)
                .try_init()
                .map_err(cfg)?;
            // MONAI's Wasserstein loss takes a label map without channel axis.
            Built {
                loss: Loss::Wasserstein(loss),
                reduction,
                labels: true,
                batch: false,
            }
        }
        "HausdorffDTLoss" | "LogHausdorffDTLoss" => {
            // MONAI's `other_act` (a Python callable) has no JSON form: present, it is an
            // option not understood and fails the case in `finish`.
            let (reduction, batch) = (o.reduction()?, o.flag("batch", false)?);
            let (activation, alpha) = (o.activation()?, o.num("alpha", 2.0)?);
            // MONAI's default for these two losses is to leave the background out.
            let include_background = o.flag("include_background", false)?;
            let loss = if name == "HausdorffDTLoss" {
                Loss::Hausdorff(
                    HausdorffDTLossConfig::new(activation)
                        .with_alpha(alpha)
                        .with_include_background(include_background)
                        .with_reduction(reduction.ours())
                        .with_batch(batch)
                        .try_init()
                        .map_err(cfg)?,
                )
            } else {
                Loss::LogHausdorff(
                    LogHausdorffDTLossConfig::new(activation)
                        .with_alpha(alpha)
                        .with_include_background(include_background)
                        .with_reduction(reduction.ours())
                        .with_batch(batch)
                        .try_init()
                        .map_err(cfg)?,
                )
            };
            Built {
                loss,
                reduction,
                labels: o.flag("to_onehot_y", false)?,
                batch,
            }
        }
        "BoundaryLoss" => {
            let (reduction, batch) = (o.reduction()?, o.flag("batch", false)?);
            let loss = BoundaryLossConfig::new(o.activation()?)
                .with_include_background(o.flag("include_background", true)?)
                .with_reduction(reduction.ours())
                .with_batch(batch)
                .try_init()
                .map_err(cfg)?;
            Built {
                loss: Loss::Boundary(loss),
                reduction,
                labels: o.flag("to_onehot_y", false)?,
                batch,
            }
        }
        "SoftclDiceLoss" | "SoftDiceclDiceLoss" => {
            // MONAI's `other_act` has no JSON form (an option not understood, see above).
            let reduction = o.reduction()?;
            let iterations = match o.int("iter_")? {
                None => 3,
                Some(i) => usize::try_from(i)
                    .map_err(|_| format!("option `iter_` = {i} is negative (MONAI refuses it)"))?,
            };
            let activation = o.activation()?;
            let (smooth_nr, smooth_dr) = (o.num("smooth_nr", 1.0)?, o.num("smooth_dr", 1.0)?);
            let smooth = o.num("smooth", 1e-4)?;
            let include_background = o.flag("include_background", true)?;
            let loss = if name == "SoftclDiceLoss" {
                Loss::ClDice(
                    SoftclDiceLossConfig::new(activation)
                        .with_iterations(iterations)
                        .with_smooth_nr(smooth_nr)
                        .with_smooth_dr(smooth_dr)
                        .with_smooth(smooth)
                        .with_include_background(include_background)
                        .with_reduction(reduction.ours())
                        .try_init()
                        .map_err(cfg)?,
                )
            } else {
                if reduction == Reduction::None {
                    return Err("reduction \"none\" is not supported for SoftDiceclDiceLoss: MONAI 1.6.1 \
                                broadcasts its Dice term [B, C', 1...] against its clDice term [B], and \
                                segloss's has no unreduced form"
                        .into());
                }
                Loss::DiceClDice(
                    SoftDiceclDiceLossConfig::new(activation)
                        .with_iterations(iterations)
                        .with_alpha(o.num("alpha", 0.5)?)
                        .with_smooth_nr(smooth_nr)
                        .with_smooth_dr(smooth_dr)
                        .with_smooth(smooth)
                        .with_include_background(include_background)
                        .with_reduction(reduction.ours())
                        .try_init()
                        .map_err(cfg)?,
                )
            };
            Built {
                loss,
                reduction,
                labels: o.flag("to_onehot_y", false)?,
                batch: false,
            }
        }
        "AsymmetricUnifiedFocalLoss" => {
            // MONAI's loss takes two classes only (`num_classes` must be 2) and returns the mean
            // whatever its `reduction`: every reduction is compared with segloss's mean.
            let classes = o.int("num_classes")?.unwrap_or(2);
            if classes != 2 {
                return Err(format!(
                    "option `num_classes` = {classes}: MONAI 1.6.1's AsymmetricUnifiedFocalLoss supports 2 classes only"
                ));
            }
            o.reduction()?;
            let loss = AsymmetricUnifiedFocalLossConfig::new(Activation::None)
                .with_weight(o.num("weight", 0.5)?)
                .with_gamma(o.num("gamma", 0.5)?)
                .with_delta(o.num("delta", 0.7)?)
                .with_ignore_index(o.int("ignore_index")?)
                .try_init()
                .map_err(cfg)?;
            Built {
                loss: Loss::UnifiedFocal(loss),
                reduction: Reduction::Mean,
                labels: o.flag("to_onehot_y", false)?,
                batch: false,
            }
        }
        other => {
            return Err(format!(
                "unknown loss {other:?} (the harness runs {LOSSES:?})"
            ));
        }
    };
    o.finish(name)?;
    if built.reduction == Reduction::None && matches!(built.loss, Loss::DiceCe(_)) {
        return Err("reduction \"none\" is not supported: MONAI 1.6.1's DiceCELoss refuses it (only \"mean\" \
                    and \"sum\"), and segloss's DiceCELoss has no unreduced form (its two terms have no common \
                    shape)"
            .into());
    }
    Ok(built)
}

/// The shape MONAI 1.6.1 gives a loss value, from the shape segloss gives it (`input_rank`: the
/// prediction's rank). Reduced: MONAI a 0-d tensor `[]`, segloss `[1]`. Unreduced: Dice
/// `[B, C', 1...]` (`[C', 1...]` with `batch`) against segloss's `[B, C']` (`[1, C']`); the
/// Generalized Dice losses `[B, 1, 1...]` (`[1, 1...]`) against `[B, 1]` (`[1, 1]`); Tversky
/// `[B, C']` (`[C']`) against `[B, C']` (`[1, C']`), and so does the boundary loss; the Hausdorff
/// DT losses `[B, C', 1...]` (`[1, C', 1...]`: the batch axis kept) against `[B, C']` (`[1, C']`);
/// focal the same shape; the Wasserstein loss
/// `[B]` against `[B, 1]`; the Dice-focal compounds `[B, C', spatial...]` in both. A shape that
/// does not fit the convention is returned unchanged, so that it differs from MONAI's.
fn monai_value_shape(b: &Built, ours: &[usize], input_rank: usize) -> Vec<usize> {
    if b.reduction != Reduction::None {
        return if ours == [1] {
            Vec::new()
        } else {
            ours.to_vec()
        };
    }
    let unbatched = |s: &[usize]| {
        if b.batch && s.len() == 2 && s[0] == 1 {
            s[1..].to_vec()
        } else {
            s.to_vec()
        }
    };
    let spatial_ones = vec![1; input_rank.saturating_sub(2)];
    match b.loss {
        Loss::Dice(_) | Loss::Gdl(_) if ours.len() == 2 => [unbatched(ours), spatial_ones].concat(),
        // MONAI keeps the batch axis of these two (`[1, C', 1...]` with `batch`).
        Loss::Hausdorff(_) | Loss::LogHausdorff(_) if ours.len() == 2 => {
            [ours, &spatial_ones[..]].concat()
        }
        Loss::Tversky(_) | Loss::Mcc(_) | Loss::Boundary(_) => unbatched(ours),
        Loss::Wasserstein(_) if ours.len() == 2 && ours[1] == 1 => vec![ours[0]],
        _ => ours.to_vec(),
    }
}

/// What one run of a case gives: the loss and the input gradient, each with its shape.
struct Output {
    value_shape: Vec<usize>,
    value: Vec<f64>,
    grad_shape: Vec<usize>,
    grad: Vec<f64>,
}

fn flat<const R: usize>(t: Tensor<R>) -> (Tensor<1>, Vec<usize>) {
    let shape = t.dims().to_vec();
    (t.reshape([-1]), shape)
}

/// Runs a case on a rank-D prediction.
fn run<const D: usize>(b: &Built, x: &Array, t: Target, device: &Device) -> Output {
    let input: Tensor<D> = float::<D>(x, device).require_grad();
    let i = input.clone();
    let none = b.reduction == Reduction::None;
    let (out, value_shape) = match (&b.loss, none) {
        (Loss::Dice(l), true) => flat(l.forward_no_reduction(i, t)),
        (Loss::Dice(l), false) => flat(l.forward(i, t)),
        (Loss::Gdl(l), true) => flat(l.forward_no_reduction(i, t)),
        (Loss::Gdl(l), false) => flat(l.forward(i, t)),
        (Loss::Tversky(l), true) => flat(l.forward_no_reduction(i, t)),
        (Loss::Tversky(l), false) => flat(l.forward(i, t)),
        (Loss::Mcc(l), true) => flat(l.forward_no_reduction(i, t)),
        (Loss::Mcc(l), false) => flat(l.forward(i, t)),
        (Loss::Focal(l), true) => flat(l.forward_no_reduction(i, t)),
        (Loss::Focal(l), false) => flat(l.forward(i, t)),
        (Loss::Wasserstein(l), true) => flat(l.forward_no_reduction(i, t)),
        (Loss::Wasserstein(l), false) => flat(l.forward(i, t)),
        (Loss::DiceCe(l), false) => flat(l.forward(i, t)),
        (Loss::DiceFocal(l), true) => flat(l.forward_no_reduction(i, t)),
        (Loss::DiceFocal(l), false) => flat(l.forward(i, t)),
        (Loss::GdlFocal(l), true) => flat(l.forward_no_reduction(i, t)),
        (Loss::GdlFocal(l), false) => flat(l.forward(i, t)),
        (Loss::Hausdorff(l), true) => flat(l.forward_no_reduction(i, t)),
        (Loss::Hausdorff(l), false) => flat(l.forward(i, t)),
        (Loss::LogHausdorff(l), true) => flat(l.forward_no_reduction(i, t)),
        (Loss::LogHausdorff(l), false) => flat(l.forward(i, t)),
        (Loss::Boundary(l), true) => flat(l.forward_no_reduction(i, t)),
        (Loss::Boundary(l), false) => flat(l.forward(i, t)),
        (Loss::ClDice(l), true) => flat(l.forward_no_reduction(i, t)),
        (Loss::ClDice(l), false) => flat(l.forward(i, t)),
        (Loss::DiceClDice(l), false) => flat(l.forward(i, t)),
        (Loss::UnifiedFocal(l), true) => flat(l.forward_no_reduction(i, t)),
        (Loss::UnifiedFocal(l), false) => flat(l.forward(i, t)),
        (Loss::DiceClDice(_), true) => {
            unreachable!("`build` refuses reduction none for SoftDiceclDiceLoss")
        }
        (Loss::DiceCe(_), true) => {
            unreachable!("`build` refuses reduction none for DiceCELoss")
        }
    };
    let grads = out.clone().sum().backward();
    let grad = input.grad(&grads).expect("the input is tracked");
    let grad_shape = grad.dims().to_vec();
    let to_vec = |t: TensorData| t.iter::<f64>().collect::<Vec<f64>>();
    Output {
        value_shape,
        value: to_vec(out.into_data()),
        grad_shape,
        grad: to_vec(grad.into_data()),
    }
}

/// The reduced loss (`forward`, shape `[1]`) of a built loss.
fn reduced<const D: usize>(b: &Built, p: Tensor<D>, t: Target) -> Tensor<1> {
    match &b.loss {
        Loss::Dice(l) => l.forward(p, t),
        Loss::Gdl(l) => l.forward(p, t),
        Loss::Tversky(l) => l.forward(p, t),
        Loss::Mcc(l) => l.forward(p, t),
        Loss::Focal(l) => l.forward(p, t),
        Loss::DiceCe(l) => l.forward(p, t),
        Loss::DiceFocal(l) => l.forward(p, t),
        Loss::GdlFocal(l) => l.forward(p, t),
        Loss::Wasserstein(l) => l.forward(p, t),
        Loss::Hausdorff(l) => l.forward(p, t),
        Loss::LogHausdorff(l) => l.forward(p, t),
        Loss::Boundary(l) => l.forward(p, t),
        Loss::ClDice(l) => l.forward(p, t),
        Loss::DiceClDice(l) => l.forward(p, t),
        Loss::UnifiedFocal(l) => l.forward(p, t),
    }
}

/// A `DeepSupervisionLoss` case's options: `weight_mode`, `weights` and the inner loss
/// `loss = {"name": MONAI class, "options": {...}}`, built as [`build`] builds any loss (its
/// options strictly read). The inner loss must reduce (MONAI sums its values over the levels).
fn build_deep_supervision(o: &Options) -> Result<(DeepSupervisionLoss, Built), String> {
    let mode = match o.choice("weight_mode", "exp", &["exp", "same", "two"])? {
        "exp" => DeepSupervisionWeighting::Exp,
        "same" => DeepSupervisionWeighting::Same,
        _ => DeepSupervisionWeighting::Two,
    };
    let ds = DeepSupervisionLossConfig::new()
        .with_weight_mode(mode)
        .with_weights(o.list("weights")?)
        .try_init()
        .map_err(|e| format!("segloss refuses the options: {e}"))?;
    let inner = o
        .get("loss")
        .ok_or("DeepSupervisionLoss needs the option `loss` = {name, options} (the inner loss)")?;
    let inner = inner
        .as_object()
        .ok_or_else(|| Options::wrong("loss", inner, "an object {name, options}"))?;
    if let Some(k) = inner.keys().find(|k| *k != "name" && *k != "options") {
        return Err(format!(
            "option `loss` has a field `{k}` the harness does not understand (only name and options)"
        ));
    }
    let name = inner
        .get("name")
        .and_then(Value::as_str)
        .ok_or("option `loss.name` is missing or not a loss name")?;
    if name == DEEP_SUPERVISION {
        return Err("option `loss.name` is DeepSupervisionLoss itself".into());
    }
    let empty = Map::new();
    let inner_map = match inner.get("options") {
        None => &empty,
        Some(Value::Object(m)) => m,
        Some(v) => return Err(Options::wrong("loss.options", v, "an object")),
    };
    let inner_opts = Options {
        map: inner_map,
        used: Default::default(),
    };
    let built = build(name, &inner_opts).map_err(|e| format!("inner loss {name}: {e}"))?;
    if built.reduction == Reduction::None {
        return Err(format!(
            "inner loss {name} with reduction \"none\": DeepSupervisionLoss adds the levels' reduced values"
        ));
    }
    o.finish(DEEP_SUPERVISION)?;
    Ok((ds, built))
}

/// Runs a `DeepSupervisionLoss` case: the value and the gradient of every level, compared with
/// MONAI's (the gradients concatenated level after level in the returned values).
fn run_deep_supervision_case(
    case: &Value,
    reference: &Value,
    kernel: Kernel,
    device: &Device,
) -> Result<(f64, Vec<f64>, Vec<f64>), String> {
    let opts = Options {
        map: case["options"].as_object().expect("checked"),
        used: Default::default(),
    };
    let (ds, built) = build_deep_supervision(&opts)?;
    let list = |v: &Value, what: &str| -> Result<Vec<Array>, String> {
        let items = v
            .as_array()
            .ok_or_else(|| format!("`{what}` is {}, not a list of arrays", short(v)))?;
        if items.is_empty() {
            return Err(format!("`{what}` is an empty list"));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, a)| array(a, &format!("{what}[{i}]")))
            .collect()
    };
    let xs = list(&case["inputs"], "inputs")?;
    let expected_grads = list(&reference["grad_inputs"], "grad_inputs")?;
    if expected_grads.len() != xs.len() {
        return Err(format!(
            "{} inputs but {} gradients",
            xs.len(),
            expected_grads.len()
        ));
    }
    let rank = xs[0].shape.len();
    if let Some(x) = xs.iter().find(|x| x.shape.len() != rank) {
        return Err(format!(
            "inputs of different ranks: {:?} and {:?}",
            xs[0].shape, x.shape
        ));
    }
    let t = target(&array(&case["target"], "target")?, built.labels, device)?;
    let expected = array(&reference["expected"], "expected")?;
    /// One level's gradient: its shape and its values.
    type LevelGrad = (Vec<usize>, Vec<f64>);
    fn levels<const D: usize>(
        ds: &DeepSupervisionLoss,
        built: &Built,
        xs: &[Array],
        t: Target,
        device: &Device,
    ) -> (Vec<f64>, Vec<LevelGrad>) {
        let inputs: Vec<Tensor<D>> = xs
            .iter()
            .map(|x| float::<D>(x, device).require_grad())
            .collect();
        let loss = ds.forward(inputs.clone(), t, |p, t| reduced(built, p, t));
        let grads = loss.clone().backward();
        let to_vec = |t: TensorData| t.iter::<f64>().collect::<Vec<f64>>();
        let g = inputs
            .iter()
            .map(|i| match i.grad(&grads) {
                Some(g) => (g.dims().to_vec(), to_vec(g.into_data())),
                // A level of weight 0 is not computed: its gradient is 0.
                None => (i.dims().to_vec(), vec![0.0; i.dims().iter().product()]),
            })
            .collect();
        (to_vec(loss.into_data()), g)
    }
    let (value, grads) = with_kernel(kernel, || match rank {
        3 => Ok(levels::<3>(&ds, &built, &xs, t, device)),
        4 => Ok(levels::<4>(&ds, &built, &xs, t, device)),
        5 => Ok(levels::<5>(&ds, &built, &xs, t, device)),
        r => Err(format!(
            "unsupported input rank {r} (shape {:?})",
            xs[0].shape
        )),
    })?;
    if !expected.shape.is_empty() {
        return Err(format!(
            "value shape: ours [] (reduced), MONAI {:?}",
            expected.shape
        ));
    }
    let mut worst = compare(&value, &expected.data).map_err(|e| format!("value: {e}"))?;
    let mut all = Vec::new();
    for (l, ((shape, g), want)) in grads.into_iter().zip(&expected_grads).enumerate() {
        if shape != want.shape {
            return Err(format!(
                "gradient of level {l}: shape ours {shape:?}, MONAI {:?}",
                want.shape
            ));
        }
        worst =
            worst.max(compare(&g, &want.data).map_err(|e| format!("gradient of level {l}: {e}"))?);
        all.extend(g);
    }
    Ok((worst, value, all))
}

/// Compares `ours` with MONAI's `expected`, element by element: NaN matches only NaN, an
/// infinity only the same infinity, and finite values within `ATOL + RTOL |MONAI|`. Returns the
/// largest absolute error of the finite values, or (on failure) the element with the largest
/// error relative to its tolerance.
pub fn compare(ours: &[f64], expected: &[f64]) -> Result<f64, String> {
    if ours.len() != expected.len() {
        return Err(format!(
            "{} values, MONAI has {}",
            ours.len(),
            expected.len()
        ));
    }
    let mut worst_abs = 0.0f64;
    let mut worst: Option<(f64, usize)> = None; // (error / tolerance, index)
    for (i, (&a, &e)) in ours.iter().zip(expected).enumerate() {
        let ratio = if e.is_nan() || a.is_nan() {
            if e.is_nan() && a.is_nan() {
                0.0
            } else {
                f64::INFINITY
            }
        } else if e.is_infinite() || a.is_infinite() {
            if a == e { 0.0 } else { f64::INFINITY }
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

/// Largest difference between the fused and composed paths, relative to `max(1, |composed|)`,
/// unless the fused path is the closer of the two to MONAI (see [`check_case`]).
pub const FUSED_VS_COMPOSED: f64 = 1e-5;

/// Runs `case` on the fused kernel on `fused_device` and on the composed path on Flex, compares
/// each with `reference` (the case itself, or the MONAI equivalent of a documented difference),
/// and the two with each other. Returns the largest error against MONAI and the largest
/// fused-composed difference.
pub fn check_case(
    loss_name: &str,
    case: &Value,
    reference: &Value,
    fused_device: &Device,
) -> Result<(f64, f64), String> {
    let flex = Device::flex().autodiff();
    let fused = run_case(loss_name, case, reference, Kernel::Auto, fused_device)
        .map_err(|e| format!("fused path: {e}"))?;
    let composed = run_case(loss_name, case, reference, Kernel::Composed, &flex)
        .map_err(|e| format!("composed path: {e}"))?;
    let mut diff = 0.0f64;
    for (a, b) in fused
        .1
        .iter()
        .chain(&fused.2)
        .zip(composed.1.iter().chain(&composed.2))
    {
        // Equal non-finite values (the same infinity, or NaN on both) agree.
        if a == b || (a.is_nan() && b.is_nan()) {
            continue;
        }
        let d = (a - b).abs() / b.abs().max(1.0);
        // Past the limit the fused path must be the closer one to MONAI: on the kernel-scale
        // cases the composed path's f32 sums (Burn's, over thousands of voxels) round more
        // than the kernel's f64 block sums, and that is not a kernel error.
        if d.is_nan() || (d > FUSED_VS_COMPOSED && fused.0 > composed.0) {
            return Err(format!(
                "fused {a} vs composed {b} (difference {d:.2e}; largest error against MONAI: fused {:.2e}, composed {:.2e})",
                fused.0, composed.0
            ));
        }
        diff = diff.max(d);
    }
    Ok((fused.0.max(composed.0), diff))
}

/// Checks that `case` has only the fields of [`CASE_FIELDS`], of the right kinds, and a `mask`
/// only for `MaskedDiceLoss`.
pub fn check_case_fields(loss_name: &str, case: &Value) -> Result<(), String> {
    let obj = case
        .as_object()
        .ok_or_else(|| format!("a case is {case}, not an object"))?;
    if let Some(k) = obj.keys().find(|k| !CASE_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "case field `{k}` not understood by the harness (known: {CASE_FIELDS:?})"
        ));
    }
    let (input, grad) = if loss_name == DEEP_SUPERVISION {
        ("inputs", "grad_inputs")
    } else {
        ("input", "grad_input")
    };
    for k in ["name", "options", input, "target", "expected", grad] {
        if !obj.contains_key(k) {
            return Err(format!("the case has no `{k}`"));
        }
    }
    let (other_input, other_grad) = if loss_name == DEEP_SUPERVISION {
        ("input", "grad_input")
    } else {
        ("inputs", "grad_inputs")
    };
    if let Some(k) = [other_input, other_grad]
        .iter()
        .find(|k| obj.contains_key(**k))
    {
        return Err(format!(
            "a `{k}`, which {loss_name} cases do not have (lists `inputs` / `grad_inputs` are for {DEEP_SUPERVISION} only)"
        ));
    }
    if !obj["name"].is_string() {
        return Err(format!("case `name` is {}, not a string", obj["name"]));
    }
    if !obj["options"].is_object() {
        return Err(format!(
            "case `options` is {}, not an object",
            obj["options"]
        ));
    }
    if let Some(v) = obj.get("equivalent_of").filter(|v| !v.is_string()) {
        return Err(format!("case `equivalent_of` is {v}, not a case name"));
    }
    if obj.contains_key("mask") && loss_name != "MaskedDiceLoss" {
        return Err(format!(
            "a `mask`, which MONAI's {loss_name} does not take (only MaskedDiceLoss)"
        ));
    }
    Ok(())
}

/// Runs one case on one kernel: (largest error against MONAI, values, gradient). Every case and
/// option field is checked first ([`check_case_fields`], the option reading of the loss), and
/// the value's and the gradient's shapes are compared with MONAI's before their values.
pub fn run_case(
    loss_name: &str,
    case: &Value,
    reference: &Value,
    kernel: Kernel,
    device: &Device,
) -> Result<(f64, Vec<f64>, Vec<f64>), String> {
    check_case_fields(loss_name, case)?;
    if !std::ptr::eq(case, reference) {
        check_case_fields(loss_name, reference).map_err(|e| format!("equivalent case: {e}"))?;
    }
    if loss_name == DEEP_SUPERVISION {
        return run_deep_supervision_case(case, reference, kernel, device);
    }
    let opts = Options {
        map: case["options"].as_object().expect("checked"),
        used: Default::default(),
    };
    let built = build(loss_name, &opts)?;
    let x = array(&case["input"], "input")?;
    let mut t = target(&array(&case["target"], "target")?, built.labels, device)?;
    if let Some(m) = case.get("mask") {
        t = with_mask(t, &array(m, "mask")?, device)?;
    }
    let expected = array(&reference["expected"], "expected")?;
    let expected_grad = array(&reference["grad_input"], "grad_input")?;
    let out = with_kernel(kernel, || match x.shape.len() {
        3 => Ok(run::<3>(&built, &x, t, device)),
        4 => Ok(run::<4>(&built, &x, t, device)),
        5 => Ok(run::<5>(&built, &x, t, device)),
        r => Err(format!("unsupported input rank {r} (shape {:?})", x.shape)),
    })?;
    let value_shape = monai_value_shape(&built, &out.value_shape, x.shape.len());
    if value_shape != expected.shape {
        return Err(format!(
            "value shape: ours {:?} (in MONAI's convention {value_shape:?}), MONAI {:?}",
            out.value_shape, expected.shape
        ));
    }
    if out.grad_shape != expected_grad.shape {
        return Err(format!(
            "gradient shape: ours {:?}, MONAI {:?}",
            out.grad_shape, expected_grad.shape
        ));
    }
    let v = compare(&out.value, &expected.data).map_err(|e| format!("value: {e}"))?;
    let g = compare(&out.grad, &expected_grad.data).map_err(|e| format!("gradient: {e}"))?;
    Ok((v.max(g), out.value, out.grad))
}

/// Reads a reference file's fields: its loss name and cases, or `None` for the shared set's
/// metrics file ([`METRICS`]). A missing or ill-typed `loss` or `cases`, an ill-typed
/// `generator` or `seed` is an error. Other file fields are metadata and ignored (the shared
/// format lets a file carry them, e.g. the smp / nnU-Net sets' `library`: "ignore fields you do
/// not know"); what a case computes is checked strictly ([`CASE_FIELDS`], its options). (An
/// unknown loss name fails each of its cases, naming it.)
pub fn loss_set(json: &Value) -> Result<Option<(&str, &[Value])>, String> {
    let obj = json.as_object().ok_or("the file is not a JSON object")?;
    let loss = match obj.get("loss") {
        Some(Value::String(s)) => s.as_str(),
        Some(v) => return Err(format!("file field `loss` is {v}, not a loss name")),
        None => return Err("the file has no `loss` field (the loss its cases are for)".into()),
    };
    if loss == METRICS {
        return Ok(None);
    }
    if let Some(v) = obj.get("generator").filter(|v| !v.is_string()) {
        return Err(format!("file field `generator` is {v}, not a string"));
    }
    if let Some(v) = obj.get("seed").filter(|v| !v.is_u64() && !v.is_i64()) {
        return Err(format!("file field `seed` is {v}, not an integer"));
    }
    match obj.get("cases") {
        Some(Value::Array(cases)) => Ok(Some((loss, cases.as_slice()))),
        Some(v) => Err(format!("file field `cases` is {}, not a list", short(v))),
        None => Err("the file has no `cases` field".into()),
    }
}

/// At most 80 characters of `v`, for messages.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// The outcome of running every reference case.
pub struct Summary {
    /// Number of cases.
    pub total: usize,
    /// `loss case: message` of each failing case, and `file: message` of each file whose fields
    /// the harness could not read (see [`loss_set`]).
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
            let fixtures =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../segloss/tests/fixtures");
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
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(".json") || n.ends_with(".json.gz"))
            })
            .collect();
        in_dir.sort();
        files.extend(in_dir);
    }
    let mut s = Summary {
        total: 0,
        failed: Vec::new(),
        differences: Vec::new(),
        worst: 0.0,
        worst_kernel_diff: 0.0,
    };
    let mut sets = Vec::new();
    for path in files {
        let text = read_reference_file(&path);
        let json: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match loss_set(&json) {
            Ok(Some(_)) => sets.push(json),
            Ok(None) => {}
            Err(e) => s.failed.push(format!("{}: {e}", path.display())),
        }
    }
    let sets: Vec<(&str, &[Value])> = sets
        .iter()
        .filter_map(|json| loss_set(json).ok().flatten())
        .collect();
    // Documented differences from MONAI: a case `equivalent_of: X` holds MONAI's result on the
    // input that segloss's semantics make X equivalent to; X is checked against it instead.
    let mut equivalents = std::collections::HashMap::new();
    for &(loss_name, cases) in &sets {
        for case in cases {
            if let Some(of) = case.get("equivalent_of").and_then(|v| v.as_str()) {
                equivalents.insert((loss_name.to_string(), of.to_string()), case);
            }
        }
    }
    for (loss_name, of) in equivalents.keys() {
        let found = sets.iter().any(|(l, cases)| {
            l == loss_name
                && cases
                    .iter()
                    .any(|c| c.get("name").and_then(|n| n.as_str()) == Some(of))
        });
        if !found {
            s.failed.push(format!(
                "{loss_name}: a case is `equivalent_of` {of:?}, which names no {loss_name} case"
            ));
        }
    }
    for &(loss_name, cases) in &sets {
        for case in cases {
            s.total += 1;
            let name = case
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or("(no name)")
                .to_string();
            let reference = match equivalents.get(&(loss_name.to_string(), name.clone())) {
                Some(eq) => {
                    s.differences.push(format!(
                        "{loss_name} {name} (checked against {})",
                        eq["name"].as_str().unwrap_or("(no name)")
                    ));
                    *eq
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
                Err(p) => s.failed.push(format!(
                    "{loss_name} {name}: panicked: {}",
                    panic_message(&*p)
                )),
            }
        }
    }
    s
}

/// The text of a caught panic.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
