//! The NIfTI reader against files built byte by byte: data after padding (`vox_offset` past the
//! header), NIfTI-2 headers in both byte orders, gzip, and invalid offsets and truncations that
//! must fail with a message, never a shifted volume.

use std::io::Write;
use std::path::{Path, PathBuf};

use nifti::NiftiHeader;
use nifti::writer::WriterOptions;
use segloss_metrics::nifti::{read_image, read_label_image};

/// A fresh directory for one test.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "segloss-nifti-reader-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Labels of a 5 x 4 x 3 (x, y, z) volume in disk order (x fastest), every value distinct mod 7.
fn labels() -> Vec<u8> {
    (0..60).map(|i| (i * 3 % 7) as u8).collect()
}

/// A plain `.nii` of [`labels`] written by the `nifti` crate (data at byte 352), as bytes.
fn plain_nifti1(d: &Path) -> Vec<u8> {
    let path = d.join("plain.nii");
    let header = NiftiHeader {
        pixdim: [1.0, 0.5, 0.75, 2.0, 1.0, 1.0, 1.0, 1.0],
        ..NiftiHeader::default()
    };
    let data = ndarray::Array::from_shape_vec((3, 4, 5), labels())
        .unwrap()
        .reversed_axes();
    WriterOptions::new(&path)
        .reference_header(&header)
        .write_nifti(&data)
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        f32::from_le_bytes(bytes[108..112].try_into().unwrap()),
        352.0,
        "the crate writes data at 352"
    );
    bytes
}

/// `bytes` (a plain NIfTI-1 file) with its voxels moved to `offset`, the gap filled with 0xFF
/// (which would read as label 255 if the offset were ignored).
fn with_offset(bytes: &[u8], offset: f32) -> Vec<u8> {
    let mut out = bytes[..352].to_vec();
    out[108..112].copy_from_slice(&offset.to_le_bytes());
    out.resize(offset as usize, 0xFF);
    out.extend_from_slice(&bytes[352..]);
    out
}

fn read_back(path: &Path) -> Vec<u16> {
    let img = read_label_image(path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    assert_eq!(img.geometry.dims, vec![5, 4, 3]);
    img.volume.labels().to_vec()
}

fn expected() -> Vec<u16> {
    labels().into_iter().map(u16::from).collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn voxels_start_at_vox_offset() {
    let d = dir("offset");
    let plain = plain_nifti1(&d);
    assert_eq!(read_back(&d.join("plain.nii")), expected());
    for offset in [352.0, 368.0, 1024.0, 4099.0] {
        let p = d.join(format!("at{offset}.nii"));
        std::fs::write(&p, with_offset(&plain, offset)).unwrap();
        assert_eq!(read_back(&p), expected(), "vox_offset {offset}");
        let gz = d.join(format!("at{offset}.nii.gz"));
        std::fs::write(&gz, gzip(&with_offset(&plain, offset))).unwrap();
        assert_eq!(read_back(&gz), expected(), "vox_offset {offset}, gzip");
    }
    // An intensity image takes the same path.
    let p = d.join("image.nii");
    std::fs::write(&p, with_offset(&plain, 1024.0)).unwrap();
    let img = read_image(&p).unwrap();
    assert_eq!(
        img.data,
        labels().into_iter().map(f32::from).collect::<Vec<_>>()
    );
}

#[test]
fn bad_offsets_and_truncations_are_errors_in_words() {
    let d = dir("bad");
    let plain = plain_nifti1(&d);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "nan",
            {
                let mut b = plain.clone();
                b[108..112].copy_from_slice(&f32::NAN.to_le_bytes());
                b
            },
            "vox_offset NaN",
        ),
        (
            "fraction",
            {
                let mut b = plain.clone();
                b[108..112].copy_from_slice(&400.5f32.to_le_bytes());
                b
            },
            "vox_offset 400.5",
        ),
        (
            "inside-header",
            {
                let mut b = plain.clone();
                b[108..112].copy_from_slice(&100f32.to_le_bytes());
                b
            },
            "vox_offset 100",
        ),
        (
            "zero",
            {
                let mut b = plain.clone();
                b[108..112].copy_from_slice(&0f32.to_le_bytes());
                b
            },
            "vox_offset 0",
        ),
        (
            "beyond",
            {
                let mut b = plain.clone();
                b[108..112].copy_from_slice(&1e9f32.to_le_bytes());
                b
            },
            "beyond the end of the file",
        ),
        (
            "truncated",
            plain[..352 + 30].to_vec(),
            "the file ends 30 bytes after vox_offset 352",
        ),
        (
            "header-cut",
            plain[..200].to_vec(),
            "inside its 348-byte NIfTI-1 header",
        ),
        ("empty", Vec::new(), "the file ends after 0 bytes"),
        (
            "random",
            (0..2000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            "not a NIfTI file",
        ),
        (
            "dim-zero",
            {
                let mut b = plain.clone();
                b[42..44].copy_from_slice(&0u16.to_le_bytes());
                b
            },
            "dim[1] is 0",
        ),
        (
            "pair",
            {
                let mut b = plain.clone();
                b[344..348].copy_from_slice(b"ni1\0");
                b
            },
            ".hdr/.img pair",
        ),
        (
            "datatype",
            {
                let mut b = plain.clone();
                b[70..72].copy_from_slice(&77i16.to_le_bytes());
                b
            },
            "unknown data type code 77",
        ),
    ];
    for (name, bytes, message) in cases {
        let p = d.join(format!("{name}.nii"));
        std::fs::write(&p, &bytes).unwrap();
        let err = format!(
            "{:#}",
            read_label_image(&p)
                .err()
                .unwrap_or_else(|| panic!("{name}: read without error"))
        );
        assert!(err.contains(message), "{name}: {err}");
        assert!(
            err.contains(&p.display().to_string()),
            "{name}: the message names the file: {err}"
        );
        assert!(
            !err.contains("Custom {") && !err.contains("kind:"),
            "{name}: a debug dump: {err}"
        );
    }
    // A gzip stream cut in the middle is an error too.
    let p = d.join("cut.nii.gz");
    let gz = gzip(&with_offset(&plain, 1024.0));
    std::fs::write(&p, &gz[..gz.len() / 2]).unwrap();
    assert!(read_label_image(&p).is_err());
}

/// A NIfTI-2 file of [`labels`] (uint8), spacing (0.5, 0.75, 2), sform with an origin, data at
/// `offset`, in the given byte order.
fn nifti2(little: bool, offset: i64) -> Vec<u8> {
    let mut h = vec![0u8; 540];
    let put = |h: &mut Vec<u8>, at: usize, b: &[u8]| {
        let mut b = b.to_vec();
        if !little {
            b.reverse();
        }
        h[at..at + b.len()].copy_from_slice(&b);
    };
    put(&mut h, 0, &540i32.to_le_bytes());
    h[4..12].copy_from_slice(b"n+2\0\r\n\x1a\n");
    put(&mut h, 12, &2i16.to_le_bytes()); // uint8
    put(&mut h, 14, &8i16.to_le_bytes());
    for (i, d) in [3i64, 5, 4, 3, 1, 1, 1, 1].iter().enumerate() {
        put(&mut h, 16 + 8 * i, &d.to_le_bytes());
    }
    for (i, p) in [1.0f64, 0.5, 0.75, 2.0, 1.0, 1.0, 1.0, 1.0]
        .iter()
        .enumerate()
    {
        put(&mut h, 104 + 8 * i, &p.to_le_bytes());
    }
    put(&mut h, 168, &offset.to_le_bytes());
    put(&mut h, 176, &1.0f64.to_le_bytes());
    put(&mut h, 348, &1i32.to_le_bytes()); // sform_code
    let srow = [
        [0.5, 0.0, 0.0, -10.0],
        [0.0, 0.75, 0.0, 20.0],
        [0.0, 0.0, 2.0, 5.0],
    ];
    for (r, row) in srow.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            put(&mut h, 400 + 32 * r + 8 * j, &f64::to_le_bytes(*v));
        }
    }
    h.resize(offset as usize, 0xFF);
    h[540..544].fill(0);
    h.extend(labels());
    h
}

#[test]
fn nifti2_in_both_byte_orders() {
    let d = dir("nifti2");
    for little in [true, false] {
        for offset in [544, 2048] {
            let p = d.join(format!("n2-{little}-{offset}.nii"));
            std::fs::write(&p, nifti2(little, offset)).unwrap();
            let img = read_label_image(&p).unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(
                img.volume.labels(),
                &expected()[..],
                "little endian {little}, offset {offset}"
            );
            assert_eq!(img.geometry.spacing, vec![0.5, 0.75, 2.0]);
            assert_eq!(img.geometry.origin, [-10.0, 20.0, 5.0]);
        }
    }
    let mut bad = nifti2(true, 544);
    bad[168..176].copy_from_slice(&100i64.to_le_bytes());
    let p = d.join("n2-bad.nii");
    std::fs::write(&p, bad).unwrap();
    let err = format!("{:#}", read_label_image(&p).err().unwrap());
    assert!(err.contains("vox_offset 100"), "{err}");
}

#[test]
fn spacing_and_orientation_come_from_the_same_transform() {
    // An sform-only file whose pixdim says 1 and a qform file with the real pixdim describe the
    // same grid: both read spacing (0.5, 0.75, 2) and agree (the spacing came from pixdim and
    // the orientation from the sform: "spacing differs").
    use segloss_metrics::nifti::{GeometryTolerance, check_geometry};
    let d = dir("geometry");
    let write = |name: &str, header: NiftiHeader| {
        let path = d.join(name);
        let data = ndarray::Array::from_shape_vec((3, 4, 5), labels())
            .unwrap()
            .reversed_axes();
        WriterOptions::new(&path)
            .reference_header(&header)
            .write_nifti(&data)
            .unwrap();
        read_label_image(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"))
    };
    let sform = write(
        "sform.nii",
        NiftiHeader {
            pixdim: [1.0; 8],
            sform_code: 1,
            qform_code: 0,
            srow_x: [0.5, 0.0, 0.0, -10.0],
            srow_y: [0.0, 0.75, 0.0, 4.0],
            srow_z: [0.0, 0.0, 2.0, 1.5],
            ..NiftiHeader::default()
        },
    );
    let qform = write(
        "qform.nii",
        NiftiHeader {
            pixdim: [1.0, 0.5, 0.75, 2.0, 1.0, 1.0, 1.0, 1.0],
            sform_code: 0,
            qform_code: 1,
            quatern_x: -10.0,
            quatern_y: 4.0,
            quatern_z: 1.5,
            ..NiftiHeader::default()
        },
    );
    assert_eq!(sform.geometry.spacing, vec![0.5, 0.75, 2.0]);
    assert_eq!(qform.geometry.spacing, vec![0.5, 0.75, 2.0]);
    // The volume's spacing ([z, y, x]) is the same one, reversed.
    assert_eq!(sform.volume.spacing(), &[2.0, 0.75, 0.5]);
    check_geometry(
        &sform.geometry,
        &qform.geometry,
        GeometryTolerance::default(),
    )
    .unwrap();
    // A rotated sform: spacing = its column lengths, direction = the unit columns.
    let rotated = write(
        "rotated.nii",
        NiftiHeader {
            pixdim: [1.0; 8],
            sform_code: 2,
            srow_x: [0.0, 0.0, -1.5, 10.0],
            srow_y: [0.0, 0.9, 0.0, -3.0],
            srow_z: [2.0, 0.0, 0.0, 7.0],
            ..NiftiHeader::default()
        },
    );
    assert_eq!(rotated.geometry.spacing, vec![2.0, 0.9f32 as f64, 1.5]);
    assert_eq!(rotated.geometry.direction[2][0], 1.0);
    assert_eq!(rotated.geometry.direction[0][2], -1.0);
    assert_eq!(rotated.geometry.origin, [10.0, -3.0, 7.0]);
    // An sform column of length 0 is an error naming it.
    let path = d.join("flat.nii");
    let data = ndarray::Array::from_shape_vec((3, 4, 5), labels())
        .unwrap()
        .reversed_axes();
    WriterOptions::new(&path)
        .reference_header(&NiftiHeader {
            sform_code: 1,
            srow_x: [1.0, 0.0, 0.0, 0.0],
            srow_y: [0.0, 0.0, 0.0, 0.0],
            srow_z: [0.0, 0.0, 1.0, 0.0],
            ..NiftiHeader::default()
        })
        .write_nifti(&data)
        .unwrap();
    let e = format!("{:#}", read_label_image(&path).err().expect("refused"));
    assert!(e.contains("sform's column 1"), "{e}");
}

#[test]
fn an_image_with_a_fourth_axis_is_not_called_a_label_image() {
    // train and predict read intensity images: their errors must not say "label image".
    let d = dir("four-axes");
    let path = d.join("t2.nii");
    let data = ndarray::Array::from_shape_vec((2, 3, 4, 5), (0..120).map(|v| v as f32).collect())
        .unwrap()
        .reversed_axes();
    WriterOptions::new(&path).write_nifti(&data).unwrap();
    let e = format!("{:#}", read_image(&path).err().expect("refused"));
    assert!(
        e.contains("an image must have 2 or 3 spatial axes") && !e.contains("label image"),
        "{e}"
    );
    assert!(e.contains("t2.nii"), "{e}");
}
