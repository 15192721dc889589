//! Inference: the label map a trained network predicts for a whole volume.
//!
//! Output files are written whole through [`write_atomically`] (never half a file after an
//! interrupt or a full disk).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use nifti::NiftiHeader;

use crate::data::Split;
use crate::dataset::zscore;
use crate::model::ModelCard;
use crate::unet::UNet3d;
use segloss_metrics::files::write_atomically;
use segloss_metrics::nifti::{read_image, write_label_map};

/// The hard prediction (argmax over the classes) of `model` for one image `[1, 1, D, H, W]`
/// of any size, as labels in row-major `[D, H, W]` order.
///
/// The network needs sizes divisible by `2^(depth - 1)`: the image is padded at the far end of
/// each axis with zeros (the mean of a normalised image) to the next multiple, and the
/// prediction cropped back. The whole volume goes through the network at once, so memory grows
/// with the volume (about `12 x width x voxels x 4` bytes at the first level).
///
/// # Panics
/// If `image` is not `[1, 1, D, H, W]` or the network has more than 256 classes.
pub fn predict_labels(model: &UNet3d, image: Tensor<5>) -> Vec<u8> {
    labels_of(model, image, false).expect("not checked")
}

/// [`predict_labels`], or `None` when the network's outputs are not all finite (a diverged
/// model: the arg-max of NaN logits would be read as some label).
///
/// # Panics
/// As [`predict_labels`].
pub fn predict_labels_checked(model: &UNet3d, image: Tensor<5>) -> Option<Vec<u8>> {
    labels_of(model, image, true)
}

fn labels_of(model: &UNet3d, image: Tensor<5>, check: bool) -> Option<Vec<u8>> {
    let [b, c, d, h, w] = image.dims();
    assert!(
        b == 1 && c == 1,
        "predict_labels: expected an image [1, 1, D, H, W], got {:?}",
        image.dims()
    );
    let f = model.size_factor();
    let up = |n: usize| n.div_ceil(f) * f;
    let (pd, ph, pw) = (up(d), up(h), up(w));
    let device = image.device();
    let padded = if (pd, ph, pw) == (d, h, w) {
        image
    } else {
        Tensor::zeros([1, 1, pd, ph, pw], &device)
            .slice_assign([0..1, 0..1, 0..d, 0..h, 0..w], image)
    };
    let logits = model.forward(padded);
    if check && !logits.clone().is_finite().all().into_scalar::<bool>() {
        return None;
    }
    let labels = logits.argmax(1).slice([0..1, 0..1, 0..d, 0..h, 0..w]);
    Some(
        labels
            .into_data()
            .iter::<i64>()
            .map(|l| u8::try_from(l).expect("at most 256 classes"))
            .collect(),
    )
}

/// [`predict_labels`] for an image given as row-major `[D, H, W]` values.
///
/// # Panics
/// If `values.len() != D * H * W`.
pub fn predict_array(
    model: &UNet3d,
    values: Vec<f32>,
    shape: [usize; 3],
    device: &Device,
) -> Vec<u8> {
    let [d, h, w] = shape;
    assert_eq!(
        values.len(),
        d * h * w,
        "predict_array: {} values for shape {shape:?}",
        values.len()
    );
    predict_labels(
        model,
        Tensor::from_data(TensorData::new(values, [1, 1, d, h, w]), device),
    )
}

/// Predicts the label map of the NIfTI image `input` and writes it to `output` (a `uint8`
/// NIfTI file with the input's geometry), preparing the image as the model was trained
/// (`card.normalization`).
///
/// # Errors
/// An unreadable input, an unknown normalisation, a model whose outputs are not finite, or an
/// unwritable output (named).
pub fn predict_file(
    model: &UNet3d,
    card: &ModelCard,
    input: &Path,
    output: &Path,
    device: &Device,
) -> Result<()> {
    let image = read_image(input)?;
    let shape = image.shape_zyx();
    let values = match card.normalization.as_str() {
        "none" => image.data,
        "zscore" => zscore(&image.data),
        other => bail!("model.json: unknown normalization `{other}` (expected none or zscore)"),
    };
    let [d, h, w] = shape;
    let tensor = Tensor::from_data(TensorData::new(values, [1, 1, d, h, w]), device);
    let Some(labels) = predict_labels_checked(model, tensor) else {
        bail!(
            "{}: the model's outputs are not finite (NaN or infinite): its training diverged, \
             use an earlier checkpoint (--weights)",
            input.display()
        );
    };
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_atomically(output, |temp| write_label_map(temp, &labels, &image.header))
}

/// The header of a built-in volume written as NIfTI: `size^3` voxels of 1 mm, identity
/// orientation at the origin.
pub fn synthetic_header(size: usize, datatype: nifti::NiftiType) -> NiftiHeader {
    let n = size as u16;
    NiftiHeader {
        dim: [3, n, n, n, 1, 1, 1, 1],
        pixdim: [1.0; 8],
        datatype: datatype as i16,
        bitpix: (datatype.size_of() * 8) as i16,
        sform_code: 1,
        srow_x: [1.0, 0.0, 0.0, 0.0],
        srow_y: [0.0, 1.0, 0.0, 0.0],
        srow_z: [0.0, 0.0, 1.0, 0.0],
        ..NiftiHeader::default()
    }
}

/// What [`predict_builtin_valid`] wrote.
#[derive(Debug, Clone)]
pub struct BuiltinPredictions {
    /// `images/valid-NNN.nii.gz`: the input volumes.
    pub images: PathBuf,
    /// `predictions/valid-NNN.nii.gz`: the model's label maps.
    pub predictions: PathBuf,
    /// `references/valid-NNN.nii.gz`: the true label maps.
    pub references: PathBuf,
    /// Number of volumes written (all of them unless stopped).
    pub volumes: usize,
    /// Number of validation volumes of the model's data.
    pub planned: usize,
}

/// Predicts the built-in validation volumes the model was trained against (regenerated from
/// `card.synthetic`) and writes images, predictions and references as NIfTI files under `out`,
/// ready for `segloss eval --pred-dir out/predictions --ref-dir out/references`.
///
/// `after_volume` is called with the number of volumes written after each one; returning
/// [`ControlFlow::Break`] stops there (the volumes written so far are complete).
///
/// # Errors
/// A model not trained on the built-in data, or files that cannot be written.
pub fn predict_builtin_valid(
    model: &UNet3d,
    card: &ModelCard,
    out: &Path,
    device: &Device,
    mut after_volume: impl FnMut(usize) -> ControlFlow<()>,
) -> Result<BuiltinPredictions> {
    let Some((data, volumes)) = &card.synthetic else {
        bail!(
            "this model was trained on NIfTI data, not the built-in data: give the images to predict"
        );
    };
    let mut result = BuiltinPredictions {
        images: out.join("images"),
        predictions: out.join("predictions"),
        references: out.join("references"),
        volumes: 0,
        planned: *volumes,
    };
    for dir in [&result.images, &result.predictions, &result.references] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let labels_header = synthetic_header(data.size, nifti::NiftiType::Uint8);
    let image_header = synthetic_header(data.size, nifti::NiftiType::Float32);
    for i in 0..*volumes {
        let v = data.volume(Split::Valid, i);
        let name = format!("valid-{i:03}.nii.gz");
        let n = v.size;
        write_image(
            &result.images.join(&name),
            &v.image,
            [n, n, n],
            &image_header,
        )?;
        write_atomically(&result.references.join(&name), |temp| {
            write_label_map(temp, &v.labels, &labels_header)
        })?;
        let pred = predict_array(model, v.image, [n, n, n], device);
        write_atomically(&result.predictions.join(&name), |temp| {
            write_label_map(temp, &pred, &labels_header)
        })?;
        result.volumes += 1;
        if after_volume(result.volumes).is_break() {
            break;
        }
    }
    Ok(result)
}

/// Writes a float image (row-major `[z, y, x]`) with `header`'s geometry, whole.
fn write_image(path: &Path, values: &[f32], shape: [usize; 3], header: &NiftiHeader) -> Result<()> {
    let [z, y, x] = shape;
    let array = ndarray::Array::from_shape_vec((z, y, x), values.to_vec())
        .context("image shape")?
        .reversed_axes();
    write_atomically(path, |temp| {
        nifti::writer::WriterOptions::new(temp)
            .reference_header(header)
            .write_nifti(&array)
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::UNet3dConfig;
    use burn::tensor::Distribution;

    #[test]
    fn odd_sizes_are_padded_and_cropped_back_consistently() {
        let device = Device::flex();
        device.seed(5);
        let net = UNet3dConfig::new(3)
            .with_base_width(2)
            .with_depth(3)
            .init(&device);
        let x = Tensor::<5>::random([1, 1, 8, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        // A size the network takes as is: same as argmax of the logits.
        let direct: Vec<u8> = net
            .forward(x.clone())
            .argmax(1)
            .into_data()
            .iter::<i64>()
            .map(|l| l as u8)
            .collect();
        assert_eq!(predict_labels(&net, x.clone()), direct);
        // 5 x 7 x 3 is padded to 8 x 8 x 4 and cropped back: one label per voxel.
        let y = x.slice([0..1, 0..1, 0..5, 0..7, 0..3]);
        let labels = predict_labels(&net, y);
        assert_eq!(labels.len(), 5 * 7 * 3);
        assert!(labels.iter().all(|&l| l < 3));
    }
}
