//! Label volumes: the input type of every metric.

use super::error::MetricsError;

/// The largest ratio between a volume's largest and smallest spacing (1e15): beyond it the
/// squared distances along the finest axis leave the range of the `f32` distance grid.
pub const MAX_ANISOTROPY: f64 = 1e15;

/// A 2D or 3D volume of integer class labels with its voxel spacing.
///
/// Voxels are stored row-major (the last axis varies fastest), in the axis order the caller uses;
/// `spacing[i]` is the physical size of a voxel along axis `i` (for NIfTI files read by the
/// `segloss` CLI: axes `[z, y, x]`, spacing from the header). Labels are `u16`: 0 is background by
/// convention, but every label value, 0 included, can be evaluated.
///
/// A 2D volume of shape `[h, w]` is held as `[1, h, w]` with only the last two axes active, so
/// that boundaries and distances stay two-dimensional.
///
/// ```
/// use segloss_metrics::LabelVolume;
/// let v = LabelVolume::new(vec![0, 1, 1, 0, 2, 2], &[2, 3], &[1.0, 0.5])?;
/// assert_eq!(v.shape(), &[2, 3]);
/// assert_eq!(v.spacing(), &[1.0, 0.5]);
/// # Ok::<(), segloss_metrics::MetricsError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LabelVolume {
    labels: Vec<u16>,
    shape: Vec<usize>,
    spacing: Vec<f64>,
}

impl LabelVolume {
    /// Wraps `labels` (row-major, `shape.iter().product()` entries) with its `spacing`.
    ///
    /// # Errors
    /// [`MetricsError::Shape`] when `shape` has not 2 or 3 axes, has a zero-sized axis, or does not
    /// match the number of labels; [`MetricsError::Spacing`] when `spacing` has another length than
    /// `shape`, holds a value that is not finite and > 0, or its largest value is more than
    /// [`MAX_ANISOTROPY`] times its smallest (over the axes longer than 1). Any scale is accepted (metres, ångströms: distances
    /// are computed exactly scaled).
    pub fn new(labels: Vec<u16>, shape: &[usize], spacing: &[f64]) -> Result<Self, MetricsError> {
        if !(2..=3).contains(&shape.len()) {
            return Err(MetricsError::Shape(format!(
                "a label volume must be 2D or 3D, got shape {shape:?}"
            )));
        }
        if shape.contains(&0) {
            return Err(MetricsError::Shape(format!(
                "shape {shape:?} has an empty axis"
            )));
        }
        let n: usize = shape.iter().product();
        if n != labels.len() {
            return Err(MetricsError::Shape(format!(
                "shape {shape:?} holds {n} voxels but {} labels were given",
                labels.len()
            )));
        }
        if spacing.len() != shape.len() {
            return Err(MetricsError::Spacing(format!(
                "spacing {spacing:?} has {} entries but the volume has {} axes",
                spacing.len(),
                shape.len()
            )));
        }
        if let Some(s) = spacing.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(MetricsError::Spacing(format!(
                "every spacing must be finite and > 0, got {s} in {spacing:?}"
            )));
        }
        // The distance grid holds squared distances in f32 scaled to the largest spacing (see
        // `edt::in_units`): the smallest spacing squared must stay a normal f32 there.
        // Axes of length 1 carry no distance, so their spacing does not count.
        let (lo, hi) = spacing
            .iter()
            .zip(shape)
            .filter(|(_, n)| **n > 1)
            .fold((f64::INFINITY, 0f64), |(lo, hi), (&s, _)| {
                (lo.min(s), hi.max(s))
            });
        if hi > 0.0 && hi / lo > MAX_ANISOTROPY {
            return Err(MetricsError::Spacing(format!(
                "the largest spacing is {:.3e} times the smallest in {spacing:?}, more than the {MAX_ANISOTROPY:e} the distance transform represents",
                hi / lo
            )));
        }
        Ok(Self {
            labels,
            shape: shape.to_vec(),
            spacing: spacing.to_vec(),
        })
    }

    /// Like [`LabelVolume::new`] from signed 64-bit labels (the element type of Burn's `Int`
    /// tensors and of most label arrays).
    ///
    /// # Errors
    /// As [`LabelVolume::new`], and [`MetricsError::Label`] for a label outside `0..=65535`.
    pub fn from_i64(
        labels: &[i64],
        shape: &[usize],
        spacing: &[f64],
    ) -> Result<Self, MetricsError> {
        let labels = labels
            .iter()
            .map(|&l| {
                u16::try_from(l)
                    .map_err(|_| MetricsError::Label(format!("label {l} is outside 0..=65535")))
            })
            .collect::<Result<Vec<u16>, _>>()?;
        Self::new(labels, shape, spacing)
    }

    /// Reads a Burn integer tensor of shape `[H, W]` or `[D, H, W]` (class indices, e.g. an argmax
    /// over the channel axis) into a label volume. The tensor is copied to the host. Needs the
    /// feature `burn` (on in `segloss`, whose `segloss::metrics` shows an example: making a
    /// tensor needs a Burn backend, which this crate does not depend on).
    ///
    /// # Errors
    /// As [`LabelVolume::from_i64`]; [`MetricsError::Shape`] for a tensor of another rank.
    #[cfg(feature = "burn")]
    pub fn from_tensor<const D: usize>(
        tensor: burn::tensor::Tensor<D, burn::tensor::Int>,
        spacing: &[f64],
    ) -> Result<Self, MetricsError> {
        let shape: Vec<usize> = tensor.dims().to_vec();
        let data = tensor.into_data().convert::<i64>();
        let values = data
            .as_slice::<i64>()
            .map_err(|e| MetricsError::Label(format!("cannot read the tensor's labels: {e:?}")))?;
        Self::from_i64(values, &shape, spacing)
    }

    /// The same labels with another spacing (e.g. the reference's, when the caller accepts a
    /// spacing mismatch).
    ///
    /// # Errors
    /// As [`LabelVolume::new`] for the spacing.
    pub fn with_spacing(self, spacing: &[f64]) -> Result<Self, MetricsError> {
        Self::new(self.labels, &self.shape, spacing)
    }

    /// The labels, row-major.
    pub fn labels(&self) -> &[u16] {
        &self.labels
    }

    /// The shape as given (2 or 3 axes).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The spacing as given, one value per axis.
    pub fn spacing(&self) -> &[f64] {
        &self.spacing
    }

    /// Number of axes, 2 or 3.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// The shape as three axes, `[1, h, w]` for a 2D volume.
    pub(crate) fn dims3(&self) -> [usize; 3] {
        match self.shape[..] {
            [h, w] => [1, h, w],
            [d, h, w] => [d, h, w],
            _ => unreachable!("checked in new"),
        }
    }

    /// The spacing as three axes, 1 on the inactive first axis of a 2D volume.
    pub(crate) fn spacing3(&self) -> [f64; 3] {
        match self.spacing[..] {
            [h, w] => [1.0, h, w],
            [d, h, w] => [d, h, w],
            _ => unreachable!("checked in new"),
        }
    }

    /// The length of the volume's diagonal in spacing units (the worst possible distance).
    pub fn diagonal(&self) -> f64 {
        self.shape
            .iter()
            .zip(&self.spacing)
            .map(|(&n, &s)| (n as f64 * s).powi(2))
            .sum::<f64>()
            .sqrt()
    }
}
