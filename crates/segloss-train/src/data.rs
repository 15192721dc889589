//! The built-in procedural dataset.
//!
//! Each volume is a cube of `size^3` voxels with a label map of `classes` classes:
//!
//! | class | structure | typical size at `size = 32` |
//! |---|---|---|
//! | 0 | background | most of the volume |
//! | 1 | one large ellipsoid blob | ~4,000 voxels |
//! | 2 | two medium ellipsoids | ~150 voxels each |
//! | 3 | three to five small spheres (radius 1.5-2.5 voxels) | ~10-65 voxels each |
//!
//! (with more classes, further classes are smaller spheres again). With `tube`, the last class is
//! instead a thin curved tube (radius about 1 voxel, a quadratic Bezier curve across the volume:
//! a vessel-like structure whose connectivity clDice-type losses care about; ~2% of the volume at
//! `size = 32`). The image is a per-class mean
//! intensity plus Gaussian noise, so the task needs context but is learnable. Everything derives
//! from `(seed, split, index)` through ChaCha8, so a dataset is identical on every machine.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Settings of the procedural dataset.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyntheticConfig {
    /// Edge length of the cubic volumes, in voxels (`>= 8`).
    pub size: usize,
    /// Number of classes including the background (`2..=8`).
    pub classes: usize,
    /// Standard deviation of the Gaussian intensity noise.
    pub noise: f32,
    /// Seed of everything.
    pub seed: u64,
    /// Radius range `[min, max)` of the small spheres, in voxels.
    pub sphere_radius: [f32; 2],
    /// Make the last class a thin curved tube instead of small spheres (`classes >= 3`).
    /// Absent in descriptions written before it existed: `false`.
    #[serde(default)]
    pub tube: bool,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            size: 32,
            classes: 4,
            noise: 0.5,
            seed: 42,
            sphere_radius: [1.5, 2.5],
            tube: false,
        }
    }
}

/// Which split a volume belongs to (they never share a volume: the split is part of the seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training volumes.
    Train,
    /// Validation volumes.
    Valid,
}

/// One volume: an image `[size^3]` (one channel) and its label map, both in `z, y, x` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Edge length.
    pub size: usize,
    /// Intensities, `size^3` values.
    pub image: Vec<f32>,
    /// Class indices, `size^3` values in `[0, classes)`.
    pub labels: Vec<u8>,
}

impl SyntheticConfig {
    /// The smallest `size` these settings accept: 8, and 4 times the largest sphere radius
    /// (rounded up), so that the small spheres fit in the volume.
    pub fn min_size(&self) -> usize {
        ((4.0 * self.sphere_radius[1]).ceil() as usize).max(8)
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.size < 8 {
            return Err(format!(
                "synthetic data: `size` must be at least 8, got {}",
                self.size
            ));
        }
        if !(2..=8).contains(&self.classes) {
            return Err(format!(
                "synthetic data: `classes` must be in 2..=8, got {}",
                self.classes
            ));
        }
        if self.tube && self.classes < 3 {
            return Err(format!(
                "synthetic data: a `tube` class needs `classes` >= 3 (background, the large blob, the tube), got {}",
                self.classes
            ));
        }
        let [lo, hi] = self.sphere_radius;
        if !(lo.is_finite()
            && hi.is_finite()
            && 0.5 <= lo
            && lo < hi
            && hi <= self.size as f32 / 4.0)
        {
            return Err(format!(
                "synthetic data: `sphere_radius` must be a range [min, max) with 0.5 <= min < max <= size / 4, got [{lo}, {hi})"
            ));
        }
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            return Err(format!(
                "synthetic data: `noise` must be finite and >= 0, got {}",
                self.noise
            ));
        }
        Ok(())
    }

    /// A short name of class `class` for reports: `background`, `large blob`, `medium
    /// ellipsoids`, `small spheres` (numbered from class 4 on: `small spheres 2`, ...), and
    /// `thin tube` for the last class with `tube`.
    pub fn class_name(&self, class: usize) -> String {
        if self.tube && class + 1 == self.classes {
            return "thin tube".into();
        }
        match class {
            0 => "background".into(),
            1 => "large blob".into(),
            2 => "medium ellipsoids".into(),
            3 => "small spheres".into(),
            c => format!("small spheres {}", c - 2),
        }
    }

    /// The volume number `index` of `split`.
    ///
    /// # Panics
    /// If the settings are invalid (see [`validate`](Self::validate)).
    pub fn volume(&self, split: Split, index: usize) -> Volume {
        self.validate().unwrap_or_else(|e| panic!("{e}"));
        let stream = match split {
            Split::Train => 0u64,
            Split::Valid => 1u64,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ (stream << 62) ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let s = self.size as f32;
        let n = self.size;
        let mut labels = vec![0u8; n * n * n];
        let paint = |labels: &mut Vec<u8>, class: u8, centre: [f32; 3], radii: [f32; 3]| {
            let lo = |c: f32, r: f32| ((c - r).floor().max(0.0)) as usize;
            let hi = |c: f32, r: f32| ((c + r).ceil().min(s - 1.0)) as usize;
            for z in lo(centre[0], radii[0])..=hi(centre[0], radii[0]) {
                for y in lo(centre[1], radii[1])..=hi(centre[1], radii[1]) {
                    for x in lo(centre[2], radii[2])..=hi(centre[2], radii[2]) {
                        let d = [
                            (z as f32 - centre[0]) / radii[0],
                            (y as f32 - centre[1]) / radii[1],
                            (x as f32 - centre[2]) / radii[2],
                        ];
                        if d.iter().map(|v| v * v).sum::<f32>() <= 1.0 {
                            labels[(z * n + y) * n + x] = class;
                        }
                    }
                }
            }
        };
        // Class 1: a large blob near the centre.
        let centre = [0; 3].map(|_| s * rng.random_range(0.4..0.6));
        let radii = [0; 3].map(|_| s * rng.random_range(0.22..0.32));
        paint(&mut labels, 1, centre, radii);
        let tube_class = self.tube.then(|| self.classes - 1);
        let spheres_end = tube_class.unwrap_or(self.classes);
        // Class 2: two medium ellipsoids anywhere.
        if spheres_end > 2 {
            for _ in 0..2 {
                let centre = [0; 3].map(|_| s * rng.random_range(0.15..0.85));
                let radii = [0; 3].map(|_| s * rng.random_range(0.08..0.12));
                paint(&mut labels, 2, centre, radii);
            }
        }
        // Classes 3..: small spheres of a few voxels.
        for class in 3..spheres_end {
            let count = rng.random_range(3..=5);
            for _ in 0..count {
                let centre = [0; 3].map(|_| s * rng.random_range(0.1..0.9));
                let r = rng.random_range(self.sphere_radius[0]..self.sphere_radius[1]);
                paint(&mut labels, class as u8, centre, [r; 3]);
            }
        }
        // The tube: balls of one radius along a quadratic Bezier curve from near one face to
        // near the opposite one, bent through a random control point, in steps of a quarter
        // voxel so that it has no gaps. Painted last: nothing cuts it.
        if let Some(class) = tube_class {
            let axis = rng.random_range(0..3);
            let mut p0 = [0; 3].map(|_| s * rng.random_range(0.25..0.75));
            let mut p2 = [0; 3].map(|_| s * rng.random_range(0.25..0.75));
            p0[axis] = s * 0.08;
            p2[axis] = s * 0.92;
            let p1 = [0; 3].map(|_| s * rng.random_range(0.1..0.9));
            let r = rng.random_range(0.9..1.2);
            let length: f32 = (0..3).map(|i| (p1[i] - p0[i]).powi(2)).sum::<f32>().sqrt()
                + (0..3).map(|i| (p2[i] - p1[i]).powi(2)).sum::<f32>().sqrt();
            let steps = (length * 4.0).ceil() as usize;
            for k in 0..=steps {
                let t = k as f32 / steps as f32;
                let point = [0, 1, 2].map(|i| {
                    (1.0 - t) * (1.0 - t) * p0[i] + 2.0 * (1.0 - t) * t * p1[i] + t * t * p2[i]
                });
                paint(&mut labels, class as u8, point, [r; 3]);
            }
        }
        let means = [0.0f32, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 4.0];
        let image = labels
            .iter()
            .map(|&l| {
                // Box-Muller from two uniforms.
                let (u1, u2): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
                let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos();
                means[l as usize] + self.noise * normal
            })
            .collect();
        Volume {
            size: n,
            image,
            labels,
        }
    }

    /// A batch of volumes `indices` of `split`: images `[B, 1, S, S, S]` and labels `[B, 1, S, S, S]`.
    pub fn batch(
        &self,
        split: Split,
        indices: &[usize],
        device: &Device,
    ) -> (Tensor<5>, Tensor<5, Int>) {
        let n = self.size;
        let b = indices.len();
        let mut images = Vec::with_capacity(b * n * n * n);
        let mut labels = Vec::with_capacity(b * n * n * n);
        for &i in indices {
            let v = self.volume(split, i);
            images.extend_from_slice(&v.image);
            labels.extend(v.labels.iter().map(|&l| l as i64));
        }
        (
            Tensor::from_data(TensorData::new(images, [b, 1, n, n, n]), device),
            Tensor::from_data(TensorData::new(labels, [b, 1, n, n, n]), device),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_deterministic_and_splits_differ() {
        let cfg = SyntheticConfig::default();
        assert_eq!(cfg.volume(Split::Train, 3), cfg.volume(Split::Train, 3));
        assert_ne!(
            cfg.volume(Split::Train, 3).labels,
            cfg.volume(Split::Train, 4).labels
        );
        assert_ne!(
            cfg.volume(Split::Train, 0).labels,
            cfg.volume(Split::Valid, 0).labels
        );
        let other_seed = SyntheticConfig {
            seed: 7,
            ..cfg.clone()
        };
        assert_ne!(
            cfg.volume(Split::Train, 0).labels,
            other_seed.volume(Split::Train, 0).labels
        );
    }

    #[test]
    fn classes_have_very_different_sizes() {
        let cfg = SyntheticConfig::default();
        let mut counts = [0usize; 4];
        for i in 0..8 {
            for &l in &cfg.volume(Split::Train, i).labels {
                counts[l as usize] += 1;
            }
        }
        // Every class is present, and each is much smaller than the one before.
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
        assert!(
            counts[1] > 5 * counts[2] && counts[2] > counts[3] && counts[0] > 5 * counts[1],
            "{counts:?}"
        );
        // The small spheres are well under 1% of the volume.
        assert!(
            (counts[3] as f64) < 0.01 * counts.iter().sum::<usize>() as f64,
            "{counts:?}"
        );
    }

    #[test]
    fn the_tube_is_one_thin_connected_class() {
        let cfg = SyntheticConfig {
            classes: 5,
            tube: true,
            ..Default::default()
        };
        assert_eq!(cfg.class_name(4), "thin tube");
        assert_eq!(cfg.class_name(3), "small spheres");
        let n = cfg.size;
        for index in 0..6 {
            let v = cfg.volume(Split::Train, index);
            let tube: Vec<usize> = (0..v.labels.len()).filter(|&i| v.labels[i] == 4).collect();
            // Thin: between 0.2% and 4% of the volume (a 1-voxel-radius tube across it is
            // ~300-900 voxels at 32^3), and no voxel has its whole 5x5x5 neighbourhood inside.
            let frac = tube.len() as f64 / v.labels.len() as f64;
            assert!(
                (0.002..0.04).contains(&frac),
                "volume {index}: tube fraction {frac}"
            );
            let at = |z: isize, y: isize, x: isize| -> bool {
                let ok = |c: isize| (0..n as isize).contains(&c);
                ok(z)
                    && ok(y)
                    && ok(x)
                    && v.labels[((z as usize * n) + y as usize) * n + x as usize] == 4
            };
            for &i in &tube {
                let (z, y, x) = (
                    (i / (n * n)) as isize,
                    (i / n % n) as isize,
                    (i % n) as isize,
                );
                let filled = (-2..=2)
                    .all(|dz| (-2..=2).all(|dy| (-2..=2).all(|dx| at(z + dz, y + dy, x + dx))));
                assert!(
                    !filled,
                    "volume {index}: the tube is thicker than 2 voxels at {i}"
                );
            }
            // Connected (26-neighbourhood): one flood fill reaches every tube voxel.
            let mut seen = vec![false; v.labels.len()];
            let mut stack = vec![tube[0]];
            seen[tube[0]] = true;
            let mut reached = 0;
            while let Some(i) = stack.pop() {
                reached += 1;
                let (z, y, x) = (
                    (i / (n * n)) as isize,
                    (i / n % n) as isize,
                    (i % n) as isize,
                );
                for dz in -1..=1 {
                    for dy in -1..=1 {
                        for dx in -1..=1 {
                            let (a, b, c) = (z + dz, y + dy, x + dx);
                            if at(a, b, c) {
                                let j = ((a as usize * n) + b as usize) * n + c as usize;
                                if !seen[j] {
                                    seen[j] = true;
                                    stack.push(j);
                                }
                            }
                        }
                    }
                }
            }
            assert_eq!(reached, tube.len(), "volume {index}: the tube is broken");
        }
        // Without `tube`, the same settings have no tube class name.
        let plain = SyntheticConfig {
            tube: false,
            ..cfg.clone()
        };
        assert_eq!(plain.class_name(4), "small spheres 2");
        let e = SyntheticConfig {
            classes: 2,
            tube: true,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("`tube` class needs `classes` >= 3"), "{e}");
    }

    #[test]
    fn bad_settings_are_refused() {
        let e = SyntheticConfig {
            size: 4,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e, "synthetic data: `size` must be at least 8, got 4");
        let e = SyntheticConfig {
            classes: 9,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("`classes` must be in 2..=8"), "{e}");
        let e = SyntheticConfig {
            sphere_radius: [2.0, 1.0],
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("`sphere_radius` must be a range"), "{e}");
    }
}
