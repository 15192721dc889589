//! NIfTI-1 input and output (`.nii`, `.nii.gz`): label volumes with their geometry (for
//! evaluation and training), intensity images (for training and prediction), and writing a
//! predicted label map with the geometry of the image it was predicted from.
//!
//! Arrays are row-major `[z, y, x]` (x fastest, the order on disk); header lists (`dims`,
//! `spacing`) are in header order `[x, y, z]`.
//!
//! Reading is done here rather than by the `nifti` crate's object reader, which starts the
//! voxels right after the header's 4-byte extender whatever `vox_offset` says: a valid file
//! whose data starts later (padding, or extensions shorter than the gap) would be read shifted.
//! [`read_volume`] honours `vox_offset` and checks it against the file.
//!
//! # Geometry
//! Spacing, origin and direction come from one source, in the standard's order of precedence:
//! the sform when `sform_code > 0` (spacing = the lengths of its columns), else the qform when
//! `qform_code > 0` (spacing = `|pixdim|`), else `pixdim` with the axes along the world axes.
//! Two files with the same world geometry therefore agree, whichever of the two transforms
//! they carry.
//!
//! # Scaling
//! `scl_slope` / `scl_inter` are applied as the standard says: not at all when the slope is 0
//! (unset), else `value * slope + inter`. Intensity images get the scaled values; a label image's
//! scaled values must be whole numbers in `0..=65535` (a label file with a scaling that makes
//! fractions is refused, naming the voxel's value). Written label maps carry no scaling.

use std::io::Read;
use std::path::Path;

use crate::volume::LabelVolume;
use anyhow::{Context, Result, bail};
use nifti::writer::WriterOptions;
use nifti::{Endianness, InMemNiftiVolume, IntoNdArray, NiftiHeader, NiftiType};

/// Where the voxels of an image are in space, from its NIfTI header.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    /// Voxels per axis, header order `[x, y, z]` (2 or 3 axes).
    pub dims: Vec<usize>,
    /// Voxel size per axis, header order: the lengths of the sform's columns when the header has
    /// an sform, else `pixdim[1..]` (see the module's "Geometry").
    pub spacing: Vec<f64>,
    /// World position of voxel 0 (the sform or qform offset; 0 without either).
    pub origin: [f64; 3],
    /// Unit direction of each voxel axis in world space (columns of the sform/qform rotation).
    pub direction: [[f64; 3]; 3],
}

/// A label volume read from a file, axes reversed to `[z, y, x]` (row-major, x fastest, as
/// stored on disk) so that the spacing of axis `i` is `spacing[i]` of the volume.
pub struct LabelImage {
    /// The labels with spacing from the header.
    pub volume: LabelVolume,
    /// The header geometry.
    pub geometry: Geometry,
    /// The file's header.
    pub header: NiftiHeader,
}

/// Reads a label image. Integer and float data types are accepted; every value must be an
/// integer in `0..=65535` after the header's scaling.
///
/// # Errors
/// When the file cannot be read or parsed, has not 2 or 3 spatial axes (a 4th axis of length 1
/// is allowed), has a spacing that is not > 0, or holds a value that is not a valid label.
pub fn read_label_image(path: &Path) -> Result<LabelImage> {
    let (header, vol) = read_volume(path)?;
    let geometry = geometry(&header, spatial_dims(&header, path)?, path)?;
    let labels = read_labels(vol, &header)
        .with_context(|| format!("cannot read the labels of {}", path.display()))?;
    // Disk order is x fastest: as a row-major array the axes are [z, y, x].
    let shape: Vec<usize> = geometry.dims.iter().rev().copied().collect();
    let rspacing: Vec<f64> = geometry.spacing.iter().rev().copied().collect();
    let volume = LabelVolume::new(labels, &shape, &rspacing)
        .with_context(|| format!("invalid label image {}", path.display()))?;
    Ok(LabelImage {
        volume,
        geometry,
        header,
    })
}

/// The spatial axes (2 or 3, header order); a 4th and later axes of length 1 are dropped.
fn spatial_dims(header: &NiftiHeader, path: &Path) -> Result<Vec<usize>> {
    let ndim = usize::from(header.dim[0]);
    if !(1..=7).contains(&ndim) {
        bail!(
            "{}: invalid number of dimensions {ndim} in the header",
            path.display()
        );
    }
    let mut dims: Vec<usize> = header.dim[1..=ndim]
        .iter()
        .map(|&d| usize::from(d))
        .collect();
    while dims.len() > 3 && dims.last() == Some(&1) {
        dims.pop();
    }
    if !(2..=3).contains(&dims.len()) {
        bail!(
            "{}: an image must have 2 or 3 spatial axes, the header says {:?}",
            path.display(),
            &header.dim[1..=ndim]
        );
    }
    Ok(dims)
}

/// Where the header places the voxels: spacing, origin and direction all from one source, the
/// NIfTI standard's order of precedence (nibabel's and ITK's too):
/// 1. the sform (`sform_code > 0`): spacing = the lengths of its columns, direction = its
///    columns normalised, origin = its translation (`pixdim` is not used);
/// 2. else the qform (`qform_code > 0`): spacing = `|pixdim[1..]|`, direction = the quaternion's
///    rotation with `qfac` (sign of `pixdim[0]`), origin = the quaternion offsets;
/// 3. else (method 1): spacing = `pixdim[1..]`, axes along the world axes, origin 0.
///
/// Taking the spacing from one source and the direction from another made an sform-only file
/// with `pixdim` 1 "differ in spacing" from a file of identical world geometry.
fn geometry(header: &NiftiHeader, dims: Vec<usize>, path: &Path) -> Result<Geometry> {
    let n = dims.len();
    let (spacing, origin, direction) = if header.sform_code > 0 {
        let rows = [header.srow_x, header.srow_y, header.srow_z];
        let mut direction = [[0.0; 3]; 3];
        let mut spacing = Vec::with_capacity(n);
        for j in 0..3 {
            let col: [f64; 3] = [0, 1, 2].map(|i| f64::from(rows[i][j]));
            let len = col.iter().map(|x| x * x).sum::<f64>().sqrt();
            if j < n && !(len.is_finite() && len > 0.0) {
                bail!(
                    "{}: the sform's column {j} is {col:?}, which gives voxel axis {j} no length (sform_code {})",
                    path.display(),
                    header.sform_code
                );
            }
            for (i, row) in direction.iter_mut().enumerate() {
                row[j] = if len > 0.0 { col[i] / len } else { 0.0 };
            }
            if j < n {
                spacing.push(len);
            }
        }
        let origin = [header.srow_x[3], header.srow_y[3], header.srow_z[3]].map(f64::from);
        (spacing, origin, direction)
    } else {
        let pixdim: Vec<f64> = header.pixdim[1..=n].iter().map(|&s| f64::from(s)).collect();
        let spacing: Vec<f64> = if header.qform_code > 0 {
            pixdim.iter().map(|s| s.abs()).collect()
        } else {
            pixdim.clone()
        };
        if let Some(s) = spacing.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            bail!(
                "{}: the voxel spacing must be > 0, the header's pixdim says {s} ({pixdim:?}; no sform to take it from)",
                path.display()
            );
        }
        if header.qform_code > 0 {
            let origin = [header.quatern_x, header.quatern_y, header.quatern_z].map(f64::from);
            (spacing, origin, qform_direction(header))
        } else {
            let mut identity = [[0.0; 3]; 3];
            for (i, row) in identity.iter_mut().enumerate() {
                row[i] = 1.0;
            }
            (spacing, [0.0; 3], identity)
        }
    };
    if let Some(v) = origin.iter().find(|v| !v.is_finite()) {
        bail!("{}: the header's origin holds {v}", path.display());
    }
    Ok(Geometry {
        dims,
        spacing,
        origin,
        direction,
    })
}

/// An intensity image read from a file: values as `f32` after the header's scaling, row-major
/// `[z, y, x]` (x fastest).
pub struct Image {
    /// Voxel values, `dims` product of them.
    pub data: Vec<f32>,
    /// The header geometry.
    pub geometry: Geometry,
    /// The file's header, kept so that a label map predicted from this image can be written
    /// with the same geometry ([`write_label_map`]).
    pub header: NiftiHeader,
}

impl Image {
    /// The array shape `[z, y, x]` (a 2D image has `z = 1`).
    pub fn shape_zyx(&self) -> [usize; 3] {
        zyx(&self.geometry.dims)
    }
}

/// `[z, y, x]` of header-order dims (2D images get `z = 1`).
fn zyx(dims: &[usize]) -> [usize; 3] {
    match *dims {
        [x, y] => [1, y, x],
        [x, y, z] => [z, y, x],
        _ => unreachable!("2 or 3 spatial axes are checked when reading"),
    }
}

impl LabelImage {
    /// The array shape `[z, y, x]` (a 2D image has `z = 1`).
    pub fn shape_zyx(&self) -> [usize; 3] {
        zyx(&self.geometry.dims)
    }
}

/// Reads an intensity image (any numeric data type; the header's scaling is applied).
///
/// # Errors
/// When the file cannot be read or parsed, has not 2 or 3 spatial axes (further axes of length
/// 1 are allowed: one channel only), has a spacing that is not > 0, or holds a non-finite value.
pub fn read_image(path: &Path) -> Result<Image> {
    let (header, vol) = read_volume(path)?;
    let geometry = geometry(&header, spatial_dims(&header, path)?, path)?;
    let a = vol
        .into_ndarray::<f32>()
        .with_context(|| format!("cannot read the voxels of {}", path.display()))?
        .reversed_axes();
    let data: Vec<f32> = a.iter().copied().collect();
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: voxel {i} (in z, y, x order) is {}, not a finite intensity",
            path.display(),
            data[i]
        );
    }
    Ok(Image {
        data,
        geometry,
        header,
    })
}

/// Writes a label map (row-major `[z, y, x]`, one value per voxel of `like`) as a `uint8`
/// NIfTI file (`.nii` or `.nii.gz` by the name) with the geometry of `like`'s header: same
/// dimensions, spacing, qform and sform, so that `segloss eval` compares it with the
/// reference without geometry complaints. The scaling is reset to none.
///
/// # Errors
/// A length that does not match the header's dimensions, or a file that cannot be written.
pub fn write_label_map(path: &Path, labels: &[u8], like: &NiftiHeader) -> Result<()> {
    let dims = spatial_dims(like, path)?;
    let [z, y, x] = zyx(&dims);
    if labels.len() != z * y * x {
        bail!(
            "{}: {} labels do not fill a {dims:?} image",
            path.display(),
            labels.len()
        );
    }
    let mut header = like.clone();
    header.scl_slope = 1.0;
    header.scl_inter = 0.0;
    header.cal_min = 0.0;
    header.cal_max = labels.iter().copied().max().unwrap_or(0) as f32;
    let array = ndarray::Array::from_shape_vec((z, y, x), labels.to_vec())
        .expect("length checked")
        .reversed_axes();
    let write = |array: ndarray::ArrayViewD<'_, u8>| {
        WriterOptions::new(path)
            .reference_header(&header)
            .write_nifti(&array)
            .with_context(|| format!("cannot write {}", path.display()))
    };
    if dims.len() == 2 {
        write(array.index_axis(ndarray::Axis(2), 0).into_dyn())
    } else {
        write(array.view().into_dyn())
    }
}

fn read_labels(vol: nifti::InMemNiftiVolume, header: &NiftiHeader) -> Result<Vec<u16>> {
    let scaled = header.scl_slope != 0.0 && (header.scl_slope != 1.0 || header.scl_inter != 0.0);
    let dtype = header
        .data_type()
        .context("unknown data type in the header")?;
    let little = header.endianness == nifti::Endianness::Little;
    let out_of_range = |v: i128| anyhow::anyhow!("value {v} is not a label in 0..=65535");
    // Unscaled integers: straight from the raw bytes (disk order, x fastest), which avoids the
    // per-element conversion of the generic path; `N` bytes per value.
    fn ints<const N: usize>(
        raw: &[u8],
        little: bool,
        decode: impl Fn([u8; N]) -> i128,
        bad: impl Fn(i128) -> anyhow::Error,
    ) -> Result<Vec<u16>> {
        raw.chunks_exact(N)
            .map(|c| {
                let mut b: [u8; N] = c.try_into().expect("chunks of N bytes");
                if !little {
                    b.reverse();
                }
                let v = decode(b);
                u16::try_from(v).map_err(|_| bad(v))
            })
            .collect()
    }
    if !scaled {
        match dtype {
            NiftiType::Uint8 => {
                return Ok(vol.into_raw_data().into_iter().map(u16::from).collect());
            }
            NiftiType::Int8 => {
                return ints::<1>(
                    vol.raw_data(),
                    little,
                    |b| i128::from(b[0] as i8),
                    out_of_range,
                );
            }
            NiftiType::Uint16 => {
                return ints::<2>(
                    vol.raw_data(),
                    little,
                    |b| i128::from(u16::from_le_bytes(b)),
                    out_of_range,
                );
            }
            NiftiType::Int16 => {
                return ints::<2>(
                    vol.raw_data(),
                    little,
                    |b| i128::from(i16::from_le_bytes(b)),
                    out_of_range,
                );
            }
            NiftiType::Uint32 => {
                return ints::<4>(
                    vol.raw_data(),
                    little,
                    |b| i128::from(u32::from_le_bytes(b)),
                    out_of_range,
                );
            }
            NiftiType::Int32 => {
                return ints::<4>(
                    vol.raw_data(),
                    little,
                    |b| i128::from(i32::from_le_bytes(b)),
                    out_of_range,
                );
            }
            NiftiType::Uint64 => {
                return ints::<8>(
                    vol.raw_data(),
                    little,
                    |b| i128::from(u64::from_le_bytes(b)),
                    out_of_range,
                );
            }
            NiftiType::Int64 => {
                return ints::<8>(
                    vol.raw_data(),
                    little,
                    |b| i128::from(i64::from_le_bytes(b)),
                    out_of_range,
                );
            }
            _ => {}
        }
    }
    // Floats, or scaled values: through nifti's conversion (which applies the scaling), as f64.
    let check_float = |v: f64| {
        if v.fract() == 0.0 && (0.0..=65535.0).contains(&v) {
            Ok(v as u16)
        } else {
            Err(anyhow::anyhow!(
                "value {v} is not a label (an integer in 0..=65535)"
            ))
        }
    };
    match dtype {
        NiftiType::Uint8
        | NiftiType::Uint16
        | NiftiType::Int8
        | NiftiType::Int16
        | NiftiType::Int32
        | NiftiType::Uint32
        | NiftiType::Int64
        | NiftiType::Uint64
        | NiftiType::Float32
        | NiftiType::Float64 => {
            let a = vol.into_ndarray::<f64>()?.reversed_axes();
            a.iter().map(|&v| check_float(v)).collect()
        }
        other => bail!("data type {other:?} cannot hold labels"),
    }
}

/// The qform's rotation: quaternion `b, c, d` (`a` from the unit norm), the third column
/// multiplied by `qfac` (the sign of `pixdim[0]`, 1 when 0), as the NIfTI standard defines it.
fn qform_direction(h: &NiftiHeader) -> [[f64; 3]; 3] {
    let (b, c, d) = (
        f64::from(h.quatern_b),
        f64::from(h.quatern_c),
        f64::from(h.quatern_d),
    );
    let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
    let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let mut m = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    for row in &mut m {
        row[2] *= qfac;
    }
    m
}

/// Bytes of a NIfTI-1 header; the voxels of a single file start at `vox_offset >= 352`.
const NIFTI1_HEADER: usize = 348;
/// Bytes of a NIfTI-2 header; the voxels of a single file start at `vox_offset >= 544`.
const NIFTI2_HEADER: usize = 540;
/// The header is followed by a 4-byte extender (whether extensions follow).
const EXTENDER: usize = 4;

/// Reads a single-file NIfTI-1 or NIfTI-2 image (`.nii`, gzip-compressed or not, recognised by
/// its first bytes rather than its name): the header, converted to the NIfTI-1 form of the
/// `nifti` crate, and the voxels that start at the header's `vox_offset`. Extensions between
/// the header and `vox_offset` are skipped.
///
/// # Errors
/// In words, naming the file: not a NIfTI file (header size neither 348 nor 540, or a wrong
/// magic), a `.hdr`/`.img` pair's header, a `vox_offset` that is not a whole number, lies inside
/// the header or beyond the end of the file, an unknown data type, an axis of length 0 or
/// larger than 65535, a file that ends before the voxels the header's dimensions need, or a
/// corrupt gzip stream. Memory is allocated as bytes arrive, never from the header's claims
/// alone.
pub fn read_volume(path: &Path) -> Result<(NiftiHeader, InMemNiftiVolume)> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buffered = std::io::BufReader::new(file);
    let gzip = {
        let head = std::io::BufRead::fill_buf(&mut buffered)
            .with_context(|| format!("cannot read {}", path.display()))?;
        head.starts_with(&[0x1f, 0x8b])
    };
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    read_volume_from(reader).with_context(|| format!("cannot read NIfTI file {}", path.display()))
}

/// [`read_volume`] on a stream that starts with the header.
fn read_volume_from(mut r: impl Read) -> Result<(NiftiHeader, InMemNiftiVolume)> {
    let mut raw = [0u8; NIFTI2_HEADER];
    fill(&mut r, &mut raw[..4], "its header")?;
    let size_le = i32::from_le_bytes(raw[..4].try_into().expect("4 bytes"));
    let size_be = i32::from_be_bytes(raw[..4].try_into().expect("4 bytes"));
    let (header, vox_offset, header_len) = if size_le == NIFTI1_HEADER as i32
        || size_be == NIFTI1_HEADER as i32
    {
        fill(
            &mut r,
            &mut raw[4..NIFTI1_HEADER],
            "its 348-byte NIfTI-1 header",
        )?;
        if &raw[344..348] == b"ni1\0" {
            bail!(
                "this is the header of a .hdr/.img pair (magic \"ni1\"); give a single-file .nii or .nii.gz image"
            );
        }
        if &raw[344..348] != b"n+1\0" {
            bail!(
                "not a NIfTI-1 file: the magic is {:?}, not \"n+1\"",
                String::from_utf8_lossy(&raw[344..347])
            );
        }
        let header = NiftiHeader::from_reader(&raw[..NIFTI1_HEADER])
            .map_err(|e| anyhow::anyhow!("invalid NIfTI-1 header: {e}"))?;
        let offset = f64::from(header.vox_offset);
        (header, offset, NIFTI1_HEADER)
    } else if size_le == NIFTI2_HEADER as i32 || size_be == NIFTI2_HEADER as i32 {
        fill(
            &mut r,
            &mut raw[4..NIFTI2_HEADER],
            "its 540-byte NIfTI-2 header",
        )?;
        let (header, offset) = nifti2_header(&raw, size_le == NIFTI2_HEADER as i32)?;
        (header, offset, NIFTI2_HEADER)
    } else {
        bail!(
            "not a NIfTI file: its first 4 bytes give a header size of {size_le} (NIfTI-1 headers have 348, NIfTI-2 headers 540)"
        );
    };
    let min_offset = header_len + EXTENDER;
    if !(offset_is_whole(vox_offset) && vox_offset >= min_offset as f64) {
        bail!(
            "vox_offset {vox_offset} in the header is not a whole number of bytes >= {min_offset} (where the voxels of a single-file image can start)"
        );
    }
    let datatype = header
        .data_type()
        .map_err(|_| anyhow::anyhow!("unknown data type code {} in the header", header.datatype))?;
    let ndim = usize::from(header.dim[0]);
    if !(1..=7).contains(&ndim) {
        bail!("dim[0] is {ndim} in the header: the number of axes must be 1 to 7");
    }
    if let Some(i) = (1..=ndim).find(|&i| header.dim[i] == 0) {
        bail!("dim[{i}] is 0 in the header: every one of the {ndim} axes needs at least one voxel");
    }
    let dims = &header.dim[1..=ndim];
    let nbytes = dims
        .iter()
        .try_fold(datatype.size_of(), |acc, &d| {
            acc.checked_mul(usize::from(d))
        })
        .ok_or_else(|| {
            anyhow::anyhow!("the header's dimensions {dims:?} are too large for this machine")
        })?;
    // Skip the extender and any extensions or padding up to vox_offset.
    let skip = vox_offset as u64 - header_len as u64;
    let skipped = std::io::copy(&mut (&mut r).take(skip), &mut std::io::sink())
        .context("cannot read the bytes before the voxels")?;
    if skipped < skip {
        bail!(
            "vox_offset {vox_offset} in the header is beyond the end of the file ({} bytes)",
            header_len as u64 + skipped
        );
    }
    let mut data = Vec::new();
    let got = (&mut r)
        .take(nbytes as u64)
        .read_to_end(&mut data)
        .context("cannot read the voxels")?;
    if got < nbytes {
        bail!(
            "the file ends {got} bytes after vox_offset {vox_offset}, but the header's dimensions {dims:?} of {datatype:?} need {nbytes} bytes"
        );
    }
    let volume = InMemNiftiVolume::from_raw_fields(
        header.dim,
        datatype,
        header.scl_slope,
        header.scl_inter,
        data,
        header.endianness,
    )
    .map_err(|e| anyhow::anyhow!("invalid volume: {e}"))?;
    Ok((header, volume))
}

/// Whether a header's byte offset is a finite whole number.
fn offset_is_whole(v: f64) -> bool {
    v.is_finite() && v.fract() == 0.0
}

/// Reads exactly `buf.len()` bytes or fails naming `what` was cut short.
fn fill(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => bail!("the file ends after {got} bytes, inside {what}"),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot read {what}"))),
        }
    }
    Ok(())
}

/// A NIfTI-2 header (540 bytes, 64-bit dimensions and offsets, double-precision geometry)
/// in the `nifti` crate's NIfTI-1 form, and its `vox_offset`. Dimensions must fit NIfTI-1's
/// 16 bits (65535 voxels per axis); the geometry is rounded to `f32`.
fn nifti2_header(raw: &[u8; NIFTI2_HEADER], little: bool) -> Result<(NiftiHeader, f64)> {
    let bytes = |at: usize, n: usize| -> Vec<u8> {
        let mut b = raw[at..at + n].to_vec();
        if little != cfg!(target_endian = "little") {
            b.reverse();
        }
        b
    };
    let i16_at = |at| i16::from_ne_bytes(bytes(at, 2).try_into().expect("2 bytes"));
    let i32_at = |at| i32::from_ne_bytes(bytes(at, 4).try_into().expect("4 bytes"));
    let i64_at = |at| i64::from_ne_bytes(bytes(at, 8).try_into().expect("8 bytes"));
    let f64_at = |at| f64::from_ne_bytes(bytes(at, 8).try_into().expect("8 bytes"));
    let f32_at = |at| f64_at(at) as f32;
    if &raw[4..8] != b"n+2\0" {
        if &raw[4..8] == b"ni2\0" {
            bail!(
                "this is the header of a NIfTI-2 .hdr/.img pair (magic \"ni2\"); give a single-file .nii or .nii.gz image"
            );
        }
        bail!(
            "not a NIfTI-2 file: the magic is {:?}, not \"n+2\"",
            String::from_utf8_lossy(&raw[4..7])
        );
    }
    let mut h = NiftiHeader {
        sizeof_hdr: NIFTI1_HEADER as i32,
        magic: *b"n+1\0",
        endianness: if little {
            Endianness::Little
        } else {
            Endianness::Big
        },
        datatype: i16_at(12),
        bitpix: i16_at(14),
        ..NiftiHeader::default()
    };
    for i in 0..8 {
        let d = i64_at(16 + 8 * i);
        h.dim[i] = u16::try_from(d).map_err(|_| {
            anyhow::anyhow!(
                "dim[{i}] is {d} in the NIfTI-2 header: axes of 0 to 65535 voxels are supported"
            )
        })?;
        h.pixdim[i] = f32_at(104 + 8 * i);
    }
    h.intent_p1 = f32_at(80);
    h.intent_p2 = f32_at(88);
    h.intent_p3 = f32_at(96);
    let vox_offset = i64_at(168) as f64;
    h.vox_offset = vox_offset as f32;
    h.scl_slope = f32_at(176);
    h.scl_inter = f32_at(184);
    h.cal_max = f32_at(192);
    h.cal_min = f32_at(200);
    h.slice_duration = f32_at(208);
    h.toffset = f32_at(216);
    h.descrip = raw[240..320].to_vec();
    h.aux_file.copy_from_slice(&raw[320..344]);
    h.qform_code = i16::try_from(i32_at(344)).unwrap_or(0);
    h.sform_code = i16::try_from(i32_at(348)).unwrap_or(0);
    h.quatern_b = f32_at(352);
    h.quatern_c = f32_at(360);
    h.quatern_d = f32_at(368);
    h.quatern_x = f32_at(376);
    h.quatern_y = f32_at(384);
    h.quatern_z = f32_at(392);
    for j in 0..4 {
        h.srow_x[j] = f32_at(400 + 8 * j);
        h.srow_y[j] = f32_at(432 + 8 * j);
        h.srow_z[j] = f32_at(464 + 8 * j);
    }
    h.slice_code = u8::try_from(i32_at(496)).unwrap_or(0);
    h.xyzt_units = u8::try_from(i32_at(500)).unwrap_or(0);
    h.intent_code = i16::try_from(i32_at(504)).unwrap_or(0);
    h.intent_name.copy_from_slice(&raw[508..524]);
    h.dim_info = raw[524];
    Ok((h, vox_offset))
}

/// Which geometry differences are accepted between prediction and reference.
#[derive(Debug, Clone, Copy, Default)]
pub struct GeometryTolerance {
    /// Accept a different spacing (the reference's is used).
    pub ignore_spacing: bool,
    /// Accept a different origin and orientation.
    pub ignore_position: bool,
}

/// Checks that two images cover the same grid. Shapes must always agree; spacing, origin and
/// direction must agree (relative 1e-4, header values are float32) unless ignored.
///
/// # Errors
/// A message naming what differs and both values.
pub fn check_geometry(pred: &Geometry, reference: &Geometry, tol: GeometryTolerance) -> Result<()> {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1.0);
    if pred.dims != reference.dims {
        bail!(
            "shape differs: prediction {:?}, reference {:?}",
            pred.dims,
            reference.dims
        );
    }
    if !tol.ignore_spacing
        && !pred
            .spacing
            .iter()
            .zip(&reference.spacing)
            .all(|(a, b)| close(*a, *b))
    {
        bail!(
            "spacing differs: prediction {:?}, reference {:?} (use --ignore-spacing to evaluate with the reference's)",
            pred.spacing,
            reference.spacing
        );
    }
    if !tol.ignore_position {
        if !pred
            .origin
            .iter()
            .zip(&reference.origin)
            .all(|(a, b)| close(*a, *b))
        {
            bail!(
                "origin differs: prediction {:?}, reference {:?} (use --ignore-position to accept)",
                pred.origin,
                reference.origin
            );
        }
        let same_dir = pred
            .direction
            .iter()
            .flatten()
            .zip(reference.direction.iter().flatten())
            .all(|(a, b)| (a - b).abs() <= 1e-4);
        if !same_dir {
            bail!(
                "orientation differs: prediction {:?}, reference {:?} (use --ignore-position to accept)",
                pred.direction,
                reference.direction
            );
        }
    }
    Ok(())
}
