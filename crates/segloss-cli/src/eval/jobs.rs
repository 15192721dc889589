//! `--jobs`: how many cases to evaluate at once, capped by the cores and by the memory the
//! cases need.
//!
//! Each case already uses every core (labels in parallel), so more jobs than cores only adds
//! memory. The memory of one case is estimated from the header of its largest image as the
//! larger of its two phases, per voxel: reading, both images decoded at once (the stored bytes
//! and the 2-byte label volume of each: `2 x (bytes + 2)`); evaluating, the two label volumes
//! (4 bytes) plus, with distance metrics, 6 bytes (two boundary masks and an `f32` distance
//! grid over at most the whole image; see docs/metrics.md). The jobs are capped so that their
//! estimates fit in the memory available (`MemAvailable` of /proc/meminfo, where it exists).

use std::io::Read;
use std::path::Path;

use super::cases::{CaseSpec, Side};

/// The jobs to run: `requested` capped by `cores` and by `available / per_case` bytes (at
/// least 1), with the reason when the cap lowered the request.
pub fn cap(
    requested: usize,
    cores: usize,
    available: Option<u64>,
    per_case: Option<u64>,
) -> (usize, Option<String>) {
    let mut jobs = requested.max(1);
    let mut why = Vec::new();
    if jobs > cores.max(1) {
        jobs = cores.max(1);
        why.push(format!("{cores} core(s)"));
    }
    if let (Some(avail), Some(per)) = (available, per_case.filter(|&p| p > 0)) {
        let fit = usize::try_from(avail / per).unwrap_or(usize::MAX).max(1);
        if jobs > fit {
            jobs = fit;
            why.push(format!(
                "{} MiB available, about {} MiB per case",
                avail >> 20,
                per.div_ceil(1 << 20)
            ));
        }
    }
    let reason = (jobs < requested)
        .then(|| format!("--jobs {requested} lowered to {jobs} ({})", why.join("; ")));
    (jobs, reason)
}

/// `MemAvailable` of /proc/meminfo in bytes, `None` where there is no such file.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Voxels and bytes per voxel of a NIfTI-1 or NIfTI-2 file from its header (gzip or not);
/// `None` when the header cannot be read (the case will say why when it is evaluated).
fn header_size(path: &Path) -> Option<(u64, u64)> {
    let file = std::fs::File::open(path).ok()?;
    let mut buffered = std::io::BufReader::new(file);
    let gzip = std::io::BufRead::fill_buf(&mut buffered)
        .ok()?
        .starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    // A NIfTI-2 header is 540 bytes; a small NIfTI-1 file may hold fewer.
    let mut h = Vec::with_capacity(540);
    reader.take(540).read_to_end(&mut h).ok()?;
    if h.len() < 348 {
        return None;
    }
    let le = i32::from_le_bytes(h[..4].try_into().ok()?);
    let be = i32::from_be_bytes(h[..4].try_into().ok()?);
    let little = le == 348 || le == 540;
    if !(little || be == 348 || be == 540) {
        return None;
    }
    let i16_at = |o: usize| {
        let b = [h[o], h[o + 1]];
        i64::from(if little {
            i16::from_le_bytes(b)
        } else {
            i16::from_be_bytes(b)
        })
    };
    let i64_at = |o: usize| {
        let b: [u8; 8] = h[o..o + 8].try_into().expect("8 bytes");
        if little {
            i64::from_le_bytes(b)
        } else {
            i64::from_be_bytes(b)
        }
    };
    let (dims, bitpix): (Vec<i64>, i64) = if le == 348 || be == 348 {
        ((0..8).map(|k| i16_at(40 + 2 * k)).collect(), i16_at(72))
    } else if h.len() == 540 {
        ((0..8).map(|k| i64_at(16 + 8 * k)).collect(), i16_at(14))
    } else {
        return None;
    };
    let n = usize::try_from(dims[0])
        .ok()
        .filter(|n| (1..=7).contains(n))?;
    let voxels = dims[1..=n]
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::try_from(d).ok()?))?;
    Some((voxels, u64::try_from(bitpix / 8).ok()?.max(1)))
}

/// The estimated peak memory of the largest case, in bytes; `None` when no header could be read.
pub fn per_case_memory(cases: &[&CaseSpec], distances: bool) -> Option<u64> {
    cases
        .iter()
        .flat_map(|c| [&c.prediction, &c.reference])
        .filter_map(|s| match s {
            Side::File(p) => header_size(p),
            _ => None,
        })
        .map(|(voxels, bytes)| voxels * (2 * (bytes + 2)).max(if distances { 10 } else { 4 }))
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_capped_by_cores_then_memory() {
        assert_eq!(cap(1, 2, None, None), (1, None));
        let (jobs, why) = cap(6, 2, None, None);
        assert_eq!(jobs, 2);
        assert_eq!(why.unwrap(), "--jobs 6 lowered to 2 (2 core(s))");
        // 6 jobs of ~1 GiB each with 2.5 GiB free: 2.
        let (jobs, why) = cap(6, 16, Some(5 << 29), Some(1 << 30));
        assert_eq!(jobs, 2);
        assert!(
            why.unwrap()
                .contains("2560 MiB available, about 1024 MiB per case")
        );
        // Never below one job, even when one case does not fit.
        assert_eq!(cap(4, 16, Some(1 << 20), Some(1 << 30)).0, 1);
        assert_eq!(cap(4, 16, Some(8 << 30), Some(1 << 30)), (4, None));
    }

    #[test]
    fn the_header_gives_voxels_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.nii");
        let mut h = vec![0u8; 352];
        h[..4].copy_from_slice(&348i32.to_le_bytes());
        for (k, d) in [3i16, 10, 20, 30, 1, 1, 1, 1].iter().enumerate() {
            h[40 + 2 * k..42 + 2 * k].copy_from_slice(&d.to_le_bytes());
        }
        h[72..74].copy_from_slice(&16i16.to_le_bytes());
        h[344..348].copy_from_slice(b"n+1\0");
        std::fs::write(&path, &h).unwrap();
        assert_eq!(header_size(&path), Some((6000, 2)));
        std::fs::write(&path, b"not a header").unwrap();
        assert_eq!(header_size(&path), None);
    }
}
