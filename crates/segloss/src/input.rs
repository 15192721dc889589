//! Inputs shared by every loss: the activation applied to the prediction, the target (a label map
//! or a dense per-class target, with an optional voxel mask), and their validation.
//!
//! Every loss takes a prediction `[B, C, spatial...]` (any number of spatial axes: 2D, 3D, ...) and
//! a [`Target`]. Internally both are flattened to `[B, C, N]` with `N` the number of voxels.

use burn::config::Config;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};

/// The activation a loss applies to the raw prediction before comparing it with the target.
///
/// | variant | use it for | probabilities |
/// |---|---|---|
/// | [`Softmax`](Activation::Softmax) | mutually exclusive classes (multi-class) | `p_c = exp(x_c) / sum_k exp(x_k)` over the channel axis |
/// | [`Sigmoid`](Activation::Sigmoid) | overlapping channels (multi-label) and single-channel binary | `p_c = 1 / (1 + exp(-x_c))` per channel |
/// | [`None`](Activation::None) | predictions that already are probabilities in `[0, 1]` | `p = x` |
///
/// MONAI's `softmax=True` / `sigmoid=True` / neither. Softmax over a single channel is constant 1
/// and is refused (MONAI warns and silently uses the raw input instead).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Softmax across the channel axis (multi-class).
    Softmax,
    /// Element-wise sigmoid (multi-label or binary).
    Sigmoid,
    /// No activation: the prediction already holds probabilities.
    None,
}

impl Activation {
    /// [`code`](Activation::code) of [`Softmax`](Activation::Softmax).
    pub const SOFTMAX_CODE: u8 = 0;
    /// [`code`](Activation::code) of [`Sigmoid`](Activation::Sigmoid).
    pub const SIGMOID_CODE: u8 = 1;
    /// [`code`](Activation::code) of [`None`](Activation::None).
    pub const NONE_CODE: u8 = 2;

    /// The activation as a byte, the form the kernels take it in as a const generic parameter
    /// and the form it crosses a GPU kernel's launch in.
    pub const fn code(self) -> u8 {
        match self {
            Activation::Softmax => Self::SOFTMAX_CODE,
            Activation::Sigmoid => Self::SIGMOID_CODE,
            Activation::None => Self::NONE_CODE,
        }
    }

    /// The inverse of [`code`](Activation::code).
    ///
    /// # Panics
    /// For any other value: a wrong code must not silently become "no activation".
    pub fn from_code(code: u8) -> Self {
        match code {
            Self::SOFTMAX_CODE => Activation::Softmax,
            Self::SIGMOID_CODE => Activation::Sigmoid,
            Self::NONE_CODE => Activation::None,
            other => panic!(
                "segloss: unknown activation code {other} ({} softmax, {} sigmoid, {} none)",
                Self::SOFTMAX_CODE,
                Self::SIGMOID_CODE,
                Self::NONE_CODE
            ),
        }
    }

    /// Applies the activation to `[B, C, ...]` along the channel axis 1.
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Softmax => burn::tensor::activation::softmax(x, 1),
            Activation::Sigmoid => burn::tensor::activation::sigmoid(x),
            Activation::None => x,
        }
    }
}

/// A target in whatever form a layer holds it: a label map `L` of class indices or a dense
/// per-class target `D`. The one vocabulary for "label map or dense" from the user's [`Target`]
/// down to the kernels' slices:
///
/// | layer | `L` | `D` |
/// |---|---|---|
/// | [`Target`], as given (flattened to `[B, rest]`) | `Tensor<2, Int>` | `Tensor<2>` |
/// | [`FlatTarget`]: validated, what the fused operations take | `Tensor<2, Int>` `[B, N]` | `Tensor<3>` `[B, C, N]` |
/// | a backend's primitives (saved for a backward) | `IntTensor<B>` | `FloatTensor<B>` |
/// | the CPU kernel | `&[i64]` or `&[i32]` | `&[f32]` |
#[derive(Debug, Clone, Copy)]
pub enum TargetOf<L, D> {
    /// Class indices (0/1 values with a single-channel prediction).
    Labels(L),
    /// Per-class values in `[0, 1]`, the prediction's shape.
    Dense(D),
}

impl<L, D> TargetOf<L, D> {
    /// Whether this is a label map.
    pub fn is_labels(&self) -> bool {
        matches!(self, TargetOf::Labels(_))
    }
}

/// A validated target flattened to label maps `[B, N]` or dense values `[B, C, N]` (f32).
pub type FlatTarget = TargetOf<Tensor<2, Int>, Tensor<3>>;

/// What a prediction is compared with: a label map of class indices, or a dense per-class target,
/// plus an optional voxel mask.
///
/// - **Label map** ([`Target::labels`], or `Tensor<D, Int>` through `From`): shape `[B, 1,
///   spatial...]` or `[B, spatial...]`, values in `[0, C)` (or the loss's `ignore_index`). With a
///   single-channel prediction (`C = 1`) the values must be 0 or 1 and are the binary target.
///   The one-hot target is built inside the loss (MONAI's `to_onehot_y=True`).
/// - **Dense** ([`Target::dense`], or `Tensor<D>` through `From`): shape `[B, C, spatial...]`,
///   the same as the prediction: one-hot, multi-label (overlapping binary channels) or soft
///   probabilities in `[0, 1]`.
/// - **Voxel mask** ([`Target::with_mask`]): `[B, 1, spatial...]`, `[B, spatial...]`,
///   `[1, 1, spatial...]` or `[1, spatial...]` (shared by the batch), values in `[0, 1]`. The
///   loss multiplies the probabilities (after the activation) and the target by it, so a voxel
///   with mask 0 counts for nothing: MONAI 1.6.1's `MaskedDiceLoss` semantics.
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use segloss::Target;
///
/// let device = Device::flex();
/// let labels = Tensor::<3, Int>::from_data([[[0, 1], [2, 1]]], &device); // [B=1, 2, 2]
/// let mask = Tensor::<3>::from_data([[[1.0, 1.0], [0.0, 1.0]]], &device);
/// let target = Target::labels(labels).with_mask(mask);
/// assert!(target.is_label_map());
/// ```
#[derive(Debug, Clone)]
pub struct Target {
    kind: TargetOf<Tensor<2, Int>, Tensor<2>>,
    shape: Vec<usize>,
    mask: Option<(Tensor<2>, Vec<usize>)>,
}

/// `[B, rest]` of a shape `[B, ...]`, the product taken explicitly: an inferred `-1` divides by
/// the batch size, which panics inside Burn for a batch of 0 before the losses can name it.
fn flat_shape(shape: &[usize]) -> [usize; 2] {
    [shape[0], shape[1..].iter().product()]
}

impl Target {
    /// A label map `[B, 1, spatial...]` or `[B, spatial...]` of class indices.
    pub fn labels<const E: usize>(labels: Tensor<E, Int>) -> Self {
        let shape = labels.dims().to_vec();
        let flat = labels.reshape(flat_shape(&shape));
        Self {
            kind: TargetOf::Labels(flat),
            shape,
            mask: None,
        }
    }

    /// A dense target `[B, C, spatial...]`: one-hot, multi-label or soft, values in `[0, 1]`.
    pub fn dense<const E: usize>(target: Tensor<E>) -> Self {
        let shape = target.dims().to_vec();
        let flat = target.reshape(flat_shape(&shape));
        Self {
            kind: TargetOf::Dense(flat),
            shape,
            mask: None,
        }
    }

    /// Adds a voxel mask (see the type's docs for its shapes): voxels with mask 0 count for nothing.
    pub fn with_mask<const E: usize>(mut self, mask: Tensor<E>) -> Self {
        let shape = mask.dims().to_vec();
        let flat = mask.reshape(flat_shape(&shape));
        self.mask = Some((flat, shape));
        self
    }

    /// Whether this target is a label map (class indices) rather than a dense target.
    pub fn is_label_map(&self) -> bool {
        self.kind.is_labels()
    }

    /// The target's shape as given.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The target (and its voxel mask) resampled to the spatial shape `spatial` (its last
    /// `spatial.len()` axes) by nearest-neighbour sampling as PyTorch's
    /// `interpolate(mode="nearest-exact")` does it, which MONAI's `DeepSupervisionLoss` uses:
    /// output index `i` of an axis of `n` voxels taken from `m` reads input index
    /// `min(floor((i + 0.5) * m / n), m - 1)` (at `m = 2n`, voxel `2i + 1`). Label values and
    /// dense values are copied, never blended.
    ///
    /// # Panics
    /// If `spatial` has more axes than the target has after its batch axis, 0 or more than 3
    /// axes, or a size of 0.
    pub fn resized_nearest(&self, spatial: &[usize]) -> Target {
        let resize_shape = |shape: &[usize], what: &str| -> Vec<usize> {
            let k = spatial.len();
            assert!(
                (1..=3).contains(&k) && shape.len() > k && spatial.iter().all(|&s| s > 0),
                "Target::resized_nearest: cannot resample the {what} of shape {shape:?} to the spatial shape {spatial:?} (1 to 3 axes of at least one voxel, after the batch axis)"
            );
            [&shape[..shape.len() - k], spatial].concat()
        };
        let shape = resize_shape(&self.shape, "target");
        let kind = match &self.kind {
            TargetOf::Labels(l) => TargetOf::Labels(resample(l.clone(), &self.shape, spatial)),
            TargetOf::Dense(d) => TargetOf::Dense(resample(d.clone(), &self.shape, spatial)),
        };
        let mask = self.mask.as_ref().map(|(m, mshape)| {
            (
                resample(m.clone(), mshape, spatial),
                resize_shape(mshape, "mask"),
            )
        });
        Target { kind, shape, mask }
    }
}

/// `flat` `[B, rest]` (of the full shape `shape`) with its last `spatial.len()` axes resampled
/// to `spatial` by `nearest-exact` sampling (see [`Target::resized_nearest`]), flattened again.
fn resample<K: burn::tensor::kind::Basic>(
    flat: Tensor<2, K>,
    shape: &[usize],
    spatial: &[usize],
) -> Tensor<2, K> {
    let k = spatial.len();
    let lead: usize = shape[1..shape.len() - k].iter().product();
    // Rank 5 whatever the number of spatial axes: [B, lead, 1.., spatial...].
    let mut full = [shape[0], lead, 1, 1, 1];
    full[5 - k..].copy_from_slice(&shape[shape.len() - k..]);
    let mut t = flat.reshape(full);
    let device = t.device();
    for (axis, &n) in spatial.iter().enumerate() {
        let dim = 5 - k + axis;
        let m = full[dim];
        if m == n {
            continue;
        }
        let scale = m as f32 / n as f32;
        let index: Vec<i64> = (0..n)
            .map(|i| (((i as f32 + 0.5) * scale).floor() as usize).min(m - 1) as i64)
            .collect();
        t = t.select(dim, Tensor::<1, Int>::from_data(index.as_slice(), &device));
    }
    t.reshape([shape[0], lead * spatial.iter().product::<usize>()])
}

impl<const E: usize> From<Tensor<E, Int>> for Target {
    fn from(labels: Tensor<E, Int>) -> Self {
        Target::labels(labels)
    }
}

impl<const E: usize> From<Tensor<E>> for Target {
    fn from(target: Tensor<E>) -> Self {
        Target::dense(target)
    }
}

/// Options of [`prepare`] that come from the loss's config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PrepareOptions {
    pub ignore_index: Option<i64>,
    pub validate_labels: bool,
}

/// A prediction and its target, validated and flattened.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// The raw prediction `[B, C, N]`, in f32.
    pub logits: Tensor<3>,
    /// The target: label maps `[B, N]` with ignored voxels set to class 0 (they are masked
    /// out), or dense values `[B, C, N]`.
    pub target: FlatTarget,
    /// Voxel weights `[B, N]`: the user mask times the ignore mask; `None` when every voxel counts.
    pub mask: Option<Tensor<2>>,
    pub batch: usize,
    pub channels: usize,
    pub voxels: usize,
    /// The prediction's spatial shape.
    pub spatial: Vec<usize>,
}

impl Prepared {
    /// The target as per-class values `[B, C, N]` in f32, masked voxels included (not yet
    /// multiplied by the mask). A label map becomes one-hot; with `C = 1` the label values are the
    /// target.
    pub fn dense_target(&self) -> Tensor<3> {
        let dtype = DType::F32;
        let labels = match &self.target {
            TargetOf::Dense(d) => return d.clone(),
            TargetOf::Labels(l) => l.clone(),
        };
        let [b, c, n] = [self.batch, self.channels, self.voxels];
        if c == 1 {
            return in_dtype(labels.float().reshape([b, 1, n]), dtype);
        }
        let device = labels.device();
        let classes = Tensor::<1, Int>::arange(0..c as i64, &device)
            .reshape([1, c, 1])
            .expand([b, c, n]);
        let labels = labels.reshape([b, 1, n]).expand([b, c, n]);
        in_dtype(labels.equal(classes).float(), dtype)
    }

    /// The prediction's shape `[B, C, spatial...]`.
    pub fn prediction_shape(&self) -> Vec<usize> {
        let mut s = vec![self.batch, self.channels];
        s.extend_from_slice(&self.spatial);
        s
    }
}

/// `t` in the float type `dtype` (no copy when it already is).
fn in_dtype<const D: usize>(t: Tensor<D>, dtype: DType) -> Tensor<D> {
    if t.dtype() == dtype { t } else { t.cast(dtype) }
}

/// Validates `prediction` against `target` and flattens both to `[B, C, N]`.
///
/// # Panics
/// On a shape mismatch (naming both shapes), a prediction of rank < 3, an empty tensor, or (when
/// `validate_labels`) label values outside `[0, C)` that are not the ignore index.
pub(crate) fn prepare<const D: usize>(
    loss: &str,
    prediction: Tensor<D>,
    target: Target,
    opts: PrepareOptions,
) -> Prepared {
    let pshape = prediction.dims().to_vec();
    assert!(
        D >= 3,
        "{loss}: the prediction must be [batch, classes, spatial...] with at least one spatial axis, got shape {pshape:?}"
    );
    assert!(
        pshape.iter().all(|&d| d > 0),
        "{loss}: the prediction has an empty axis: shape {pshape:?}"
    );
    let (b, c) = (pshape[0], pshape[1]);
    let spatial = pshape[2..].to_vec();
    let n: usize = spatial.iter().product();
    // Every loss computes in f32 whatever the prediction's float type (f16 and bf16 sums would
    // overflow or lose mass; f64 gains nothing at these tolerances); the gradient flows back
    // through the cast in the prediction's own type.
    let logits = in_dtype(prediction, DType::F32).reshape([b, c, n]);
    let tshape = target.shape.clone();

    let (flat_target, ignore_mask) = match target.kind {
        TargetOf::Labels(flat) => {
            let with_channel =
                tshape.len() == D && tshape[0] == b && tshape[1] == 1 && tshape[2..] == spatial[..];
            let without_channel =
                tshape.len() == D - 1 && tshape[0] == b && tshape[1..] == spatial[..];
            assert!(
                with_channel || without_channel,
                "{loss}: the label map must have shape [B, 1, spatial...] = {:?} or [B, spatial...] = {:?} to match the prediction {pshape:?}, got {tshape:?}{}",
                [&[b, 1][..], &spatial[..]].concat(),
                [&[b][..], &spatial[..]].concat(),
                if tshape.len() == D && tshape[1] == c && c > 1 {
                    " (a one-hot or multi-label target must be a float tensor: use Target::dense)"
                } else {
                    ""
                }
            );
            let ignored = opts.ignore_index.map(|ii| flat.clone().equal_elem(ii));
            if opts.validate_labels {
                check_label_range(loss, &flat, ignored.clone(), c, opts.ignore_index);
            }
            match ignored {
                Some(ignored) => {
                    let clean = flat.mask_fill(ignored.clone(), 0);
                    (TargetOf::Labels(clean), Some(ignored.bool_not().float()))
                }
                None => (TargetOf::Labels(flat), None),
            }
        }
        TargetOf::Dense(flat) => {
            assert!(
                tshape == pshape,
                "{loss}: the dense target must have the prediction's shape {pshape:?}, got {tshape:?}{}",
                if tshape.len() + 1 == D
                    || (tshape.len() == D && tshape.get(1) == Some(&1) && c > 1)
                {
                    " (a label map of class indices must be an Int tensor: use Target::labels)"
                } else {
                    ""
                }
            );
            let dense = in_dtype(flat, DType::F32).reshape([b, c, n]);
            // MONAI's `create_ignore_mask` for one-hot targets: an index inside [0, C) excludes the
            // voxels of that class; any other value excludes voxels whose channels are all zero.
            let ignore_mask = opts.ignore_index.map(|ii| {
                if c > 1 && ii >= 0 && (ii as usize) < c {
                    dense
                        .clone()
                        .narrow(1, ii as usize, 1)
                        .reshape([b, n])
                        .neg()
                        .add_scalar(1.0)
                } else {
                    dense
                        .clone()
                        .sum_dim(1)
                        .reshape([b, n])
                        .greater_elem(0.0)
                        .float()
                }
            });
            (TargetOf::Dense(dense), ignore_mask)
        }
    };

    let user_mask = target.mask.map(|(flat, mshape)| {
        let ok_batch = mshape[0] == b || mshape[0] == 1;
        let ok_rest = (mshape.len() == D && mshape[1] == 1 && mshape[2..] == spatial[..])
            || (mshape.len() + 1 == D && mshape[1..] == spatial[..]);
        assert!(
            ok_batch && ok_rest,
            "{loss}: the voxel mask must have shape [B or 1, 1, spatial...] or [B or 1, spatial...] with B = {b} and spatial = {spatial:?} (prediction {pshape:?}), got {mshape:?}"
        );
        if mshape[0] == 1 && b > 1 { flat.expand([b, n]) } else { flat }
    });

    let mask = match (user_mask, ignore_mask) {
        (Some(u), Some(i)) => Some(u * i),
        (Some(u), None) => Some(u),
        (None, Some(i)) => Some(i),
        (None, None) => None,
    };

    let mask = mask.map(|m| in_dtype(m, DType::F32));
    Prepared {
        logits,
        target: flat_target,
        mask,
        batch: b,
        channels: c,
        voxels: n,
        spatial,
    }
}

/// Rows of the first stage of [`label_min_max`].
const RANGE_ROW: usize = 1024;

/// `[min, max]` of a label map. With `two_stage`, in two stages: the flattened map as rows of
/// [`RANGE_ROW`] labels (the minimum and maximum of each row, all rows in parallel), then the few
/// row results and the tail that does not fill a row; else a plain `min()` / `max()`.
///
/// The check takes the two-stage form on Burn's CubeCL backends (wgpu, CUDA), whose full
/// reduction of `[B, N]` runs axis by axis, smallest first, so that its last pass is one row of
/// `N` labels walked nearly sequentially (`examples/label_range_timing.rs`: 3x faster on Mesa's
/// software Vulkan at 2 x 128^3 labels, 70x on an H200). Flex reduces the whole map in one
/// parallel pass, which the two stages would make several times slower, so it keeps the plain form.
fn label_min_max(labels: Tensor<2, Int>, two_stage: bool) -> Tensor<1, Int> {
    let len = labels.shape().num_elements();
    let flat = labels.reshape([len]);
    let rows = len / RANGE_ROW;
    if !two_stage || rows < 2 {
        return Tensor::cat(vec![flat.clone().min(), flat.max()], 0);
    }
    let body = flat
        .clone()
        .slice(0..rows * RANGE_ROW)
        .reshape([rows, RANGE_ROW]);
    let mut lows = vec![body.clone().min_dim(1).reshape([rows])];
    let mut highs = vec![body.max_dim(1).reshape([rows])];
    if rows * RANGE_ROW < len {
        let tail = flat.slice(rows * RANGE_ROW..len);
        lows.push(tail.clone());
        highs.push(tail);
    }
    Tensor::cat(
        vec![Tensor::cat(lows, 0).min(), Tensor::cat(highs, 0).max()],
        0,
    )
}

/// Checks that every label (other than the ignore index) is a class index in `[0, C)` (`{0, 1}`
/// when `C = 1`). Costs one pass over the label map ([`label_min_max`]) and one device
/// synchronisation.
fn check_label_range(
    loss: &str,
    labels: &Tensor<2, Int>,
    ignored: Option<Tensor<2, Bool>>,
    c: usize,
    ignore: Option<i64>,
) {
    let upper = c.max(2) as i64;
    let l = match ignored {
        Some(m) => labels.clone().mask_fill(m, 0),
        None => labels.clone(),
    };
    let two_stage = crate::backend::is_cube(&l.device());
    let data: TensorData = label_min_max(l, two_stage).into_data();
    let v: Vec<i64> = data.iter::<i64>().collect();
    let (lo, hi) = (v[0], v[1]);
    if lo < 0 || hi >= upper {
        let bad = if lo < 0 { lo } else { hi };
        panic!(
            "{loss}: label value {bad} is outside the class range [0, {upper}) of a prediction with {c} channel{} (labels found span [{lo}, {hi}]; ignore_index: {}). Labels must be class indices{}, or set `ignore_index` for unlabelled voxels.",
            if c == 1 { "" } else { "s" },
            ignore.map_or("none".to_string(), |i| i.to_string()),
            if c == 1 {
                " (0 or 1 for a single-channel prediction)"
            } else {
                ""
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Int, Tensor, TensorData};

    use super::{Activation, RANGE_ROW, label_min_max};

    #[test]
    fn activation_codes_round_trip() {
        for act in [Activation::Softmax, Activation::Sigmoid, Activation::None] {
            assert_eq!(Activation::from_code(act.code()), act);
        }
    }

    #[test]
    #[should_panic(expected = "unknown activation code 3")]
    fn an_unknown_activation_code_panics() {
        Activation::from_code(3);
    }

    /// Both forms of the range find the extreme labels wherever they sit: in the first row, in a
    /// later row, in the tail that does not fill a row, and with no tail at all.
    #[test]
    fn label_min_max_finds_extremes_in_rows_and_tail() {
        let device = Device::flex();
        for (b, n) in [
            (1, 7),
            (2, RANGE_ROW),
            (2, 1500),
            (3, 4 * RANGE_ROW),
            (1, 2 * RANGE_ROW + 1),
        ] {
            let len = b * n;
            for (lo_at, hi_at) in [
                (0, len - 1),
                (len - 1, 0),
                (len / 2, len / 3),
                (RANGE_ROW.min(len - 1), len - 2),
            ] {
                let mut v: Vec<i64> = (0..len).map(|i| (i % 5) as i64).collect();
                v[lo_at] = -7;
                v[hi_at] = 42;
                let labels = Tensor::<2, Int>::from_data(TensorData::new(v, [b, n]), &device);
                for two_stage in [false, true] {
                    let got: Vec<i64> = label_min_max(labels.clone(), two_stage)
                        .into_data()
                        .iter::<i64>()
                        .collect();
                    assert_eq!(
                        got,
                        vec![-7, 42],
                        "shape [{b}, {n}], min at {lo_at}, max at {hi_at}, two stages: {two_stage}"
                    );
                }
            }
        }
    }
}
