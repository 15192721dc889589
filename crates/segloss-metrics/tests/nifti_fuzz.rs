//! Fuzz-style test of the NIfTI reader: mutated headers, truncated files, bit-flipped and cut
//! gzip streams and random bytes must give an error or a volume, never a panic, and never make
//! the reader allocate more than a small multiple of the bytes the file really holds (a header
//! claiming 65535^3 voxels must not reserve them).
//!
//! The default run tries `DEFAULT_CASES` inputs per strategy; `SEGLOSS_FUZZ_CASES=N` raises it
//! (e.g. `SEGLOSS_FUZZ_CASES=20000 cargo test --workspace --release --test nifti_fuzz`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::path::Path;

use nifti::NiftiHeader;
use nifti::writer::WriterOptions;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use segloss_metrics::nifti::{read_image, read_label_image};

/// Counts the bytes allocated by the current thread (thread-local, so tests running beside
/// this one do not disturb it): live bytes now and their peak since the last reset.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grow(n: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + n;
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn shrink(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(n)));
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(layout.size());
        // SAFETY: `ptr` came from this allocator (i.e. `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The old and the new block both exist during the copy.
        grow(new_size);
        // SAFETY: as for `dealloc` and `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        shrink(layout.size());
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Inputs per strategy in the default test run.
const DEFAULT_CASES: u32 = 200;

fn cases() -> u32 {
    match std::env::var("SEGLOSS_FUZZ_CASES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("SEGLOSS_FUZZ_CASES={v:?} is not a count")),
        Err(_) => DEFAULT_CASES,
    }
}

/// Valid files to mutate: a uint8 label map (qform, data at 352), an int16 one with an sform,
/// a float32 image with a scaling, as `.nii` bytes written by the `nifti` crate.
fn seeds() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    let write = |name: &str, header: &NiftiHeader, f: &dyn Fn(&Path, &NiftiHeader)| {
        let p = dir.path().join(name);
        f(&p, header);
        std::fs::read(&p).unwrap()
    };
    let labels: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 3 % 7) as u8).collect();
    let h = NiftiHeader {
        pixdim: [1.0, 0.5, 0.75, 2.0, 1.0, 1.0, 1.0, 1.0],
        qform_code: 1,
        quatern_b: 0.1,
        ..NiftiHeader::default()
    };
    out.push(write("u8.nii", &h, &|p, h| {
        let a = ndarray::Array::from_shape_vec((3, 4, 5), labels.clone()).unwrap();
        WriterOptions::new(p)
            .reference_header(h)
            .write_nifti(&a.reversed_axes())
            .unwrap();
    }));
    let h = NiftiHeader {
        sform_code: 2,
        srow_x: [0.0, 0.0, -1.5, 10.0],
        srow_y: [0.0, 0.9, 0.0, -3.0],
        srow_z: [2.0, 0.0, 0.0, 7.0],
        ..NiftiHeader::default()
    };
    out.push(write("i16.nii", &h, &|p, h| {
        let v: Vec<i16> = labels.iter().map(|&l| i16::from(l) * 3).collect();
        let a = ndarray::Array::from_shape_vec((3, 4, 5), v).unwrap();
        WriterOptions::new(p)
            .reference_header(h)
            .write_nifti(&a.reversed_axes())
            .unwrap();
    }));
    let h = NiftiHeader {
        scl_slope: 2.0,
        scl_inter: 1.0,
        ..NiftiHeader::default()
    };
    out.push(write("f32.nii", &h, &|p, h| {
        let v: Vec<f32> = (0..6 * 5).map(|i| i as f32 * 0.25 - 3.0).collect();
        let a = ndarray::Array::from_shape_vec((5, 6), v).unwrap();
        WriterOptions::new(p)
            .reference_header(h)
            .write_nifti(&a.reversed_axes())
            .unwrap();
    }));
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The bytes the file really holds: its length, or for gzip what its stream decompresses to up
/// to the first error (capped: the inputs here are small).
fn content_len(bytes: &[u8]) -> usize {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut d = flate2::read::MultiGzDecoder::new(bytes).take(64 << 20);
        let mut n = 0;
        let mut buf = [0u8; 8192];
        while let Ok(k) = d.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k;
        }
        n.max(bytes.len())
    } else {
        bytes.len()
    }
}

/// Reads `bytes` as a label image and as an intensity image from a file named `name`: each
/// read must return (not panic) and stay within the allocation bound.
fn check(bytes: &[u8], name: &str) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let bound = 16 * content_len(bytes) + (1 << 20);
    for what in ["label", "image"] {
        let base = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(base));
        let outcome = std::panic::catch_unwind(|| match what {
            "label" => read_label_image(&path).map(|img| {
                let n: usize = img.geometry.dims.iter().product();
                assert_eq!(img.volume.labels().len(), n, "labels fill the dims");
            }),
            _ => read_image(&path).map(|img| {
                let n: usize = img.geometry.dims.iter().product();
                assert_eq!(img.data.len(), n, "values fill the dims");
                assert!(img.data.iter().all(|v| v.is_finite()));
            }),
        });
        let peak = PEAK.with(Cell::get) - base;
        match outcome {
            Err(_) => {
                return Err(TestCaseError::fail(format!(
                    "{what} reader panicked on {} bytes ({name})",
                    bytes.len()
                )));
            }
            Ok(Err(e)) => {
                let msg = format!("{e:#}");
                prop_assert!(
                    !msg.contains("Custom {") && !msg.contains("kind:"),
                    "debug dump in the message: {msg}"
                );
            }
            Ok(Ok(())) => {}
        }
        prop_assert!(
            peak <= bound,
            "{what} reader allocated {peak} bytes for a file of {} bytes ({} content)",
            bytes.len(),
            content_len(bytes)
        );
    }
    Ok(())
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Header fields at their NIfTI-1 byte offsets and values that stress them.
fn field_mutation() -> impl Strategy<Value = (usize, Vec<u8>)> {
    let i16s = prop::sample::select(vec![0i16, -1, 1, 2, 7, 8, 255, 32767, -32768]);
    let f32s = prop::sample::select(vec![
        0.0f32,
        -1.0,
        1.0,
        351.0,
        352.5,
        1e9,
        f32::NAN,
        f32::INFINITY,
        -0.0,
        1e-30,
        65535.0,
    ]);
    prop_oneof![
        // dim[0..8], datatype, bitpix, qform/sform codes
        (
            prop::sample::select(vec![40usize, 42, 44, 46, 48, 70, 72, 252, 254]),
            i16s
        )
            .prop_map(|(o, v)| (o, v.to_le_bytes().to_vec())),
        // pixdim, vox_offset, scl_slope, scl_inter, quaternion, srow
        (
            prop::sample::select(vec![
                76usize, 80, 84, 88, 108, 112, 116, 256, 260, 264, 268, 272, 276, 280, 284, 288,
                296, 300, 320, 328, 332
            ]),
            f32s
        )
            .prop_map(|(o, v)| (o, v.to_le_bytes().to_vec())),
        // sizeof_hdr and magic
        Just((0usize, 540i32.to_le_bytes().to_vec())),
        Just((0usize, 348i32.to_be_bytes().to_vec())),
        Just((344usize, b"ni1\0".to_vec())),
        Just((344usize, b"n+2\0".to_vec())),
    ]
}

#[test]
fn mutated_headers_never_panic_or_overallocate() {
    let seeds = seeds();
    let strategy = (
        0..seeds.len(),
        prop::collection::vec(field_mutation(), 1..4),
        prop::collection::vec((0usize..352, any::<u8>()), 0..4),
        any::<bool>(),
    );
    runner()
        .run(&strategy, |(seed, fields, bytes, compress)| {
            let mut f = seeds[seed].clone();
            for (at, v) in fields {
                f[at..at + v.len()].copy_from_slice(&v);
            }
            for (at, b) in bytes {
                f[at] = b;
            }
            if compress {
                check(&gzip(&f), "case.nii.gz")
            } else {
                check(&f, "case.nii")
            }
        })
        .unwrap();
}

#[test]
fn truncated_and_bit_flipped_files_never_panic() {
    let seeds = seeds();
    let strategy = (
        0..seeds.len(),
        any::<bool>(),
        prop::option::of(any::<prop::sample::Index>()),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 0..6),
    );
    runner()
        .run(&strategy, |(seed, compress, cut, flips)| {
            let mut f = if compress {
                gzip(&seeds[seed])
            } else {
                seeds[seed].clone()
            };
            for (at, bit) in flips {
                let i = at.index(f.len());
                f[i] ^= 1 << bit;
            }
            if let Some(cut) = cut {
                f.truncate(cut.index(f.len()));
            }
            check(&f, if compress { "case.nii.gz" } else { "case.nii" })
        })
        .unwrap();
}

#[test]
fn random_bytes_never_panic() {
    let strategy = (
        prop::collection::vec(any::<u8>(), 0..1200),
        prop::sample::select(vec![None, Some(0usize), Some(1), Some(2)]),
    );
    runner()
        .run(&strategy, |(mut f, prefix)| {
            // Random bytes behind a valid start: gzip magic, or a NIfTI-1 / NIfTI-2 size field.
            match prefix {
                Some(0) => f.splice(0..0, [0x1f, 0x8b, 8, 0]).for_each(drop),
                Some(1) => f.splice(0..0, 348i32.to_le_bytes()).for_each(drop),
                Some(2) => f.splice(0..0, 540i32.to_le_bytes()).for_each(drop),
                _ => {}
            }
            check(&f, "case.nii")
        })
        .unwrap();
}

#[test]
fn a_header_claiming_a_huge_volume_allocates_nothing_of_its_size() {
    // dim = 65535^3 of float64: 2.2 PB claimed by a 352-byte file.
    let mut f = seeds()[0].clone();
    for (i, v) in [3i16, 32767, 32767, 32767].iter().enumerate() {
        f[40 + 2 * i..42 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    f[70..72].copy_from_slice(&64i16.to_le_bytes());
    f[72..74].copy_from_slice(&64i16.to_le_bytes());
    check(&f, "huge.nii").unwrap();
}

#[test]
fn the_allocation_count_sees_the_reader() {
    // The bound above means something only if the counter sees the reader's buffers: reading a
    // valid file allocates at least its voxels.
    let f = seeds()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.nii");
    std::fs::write(&path, &f).unwrap();
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let img = read_label_image(&path).unwrap();
    let peak = PEAK.with(Cell::get) - base;
    assert!(peak >= 2 * 60, "peak {peak} bytes for 60 u16 labels");
    assert_eq!(img.volume.labels().len(), 60);
    check(&f, "seed.nii").unwrap();
}
