//! A 3D U-Net (Ronneberger et al. 2015; Çiçek et al. 2016) in the nnU-Net style: two 3x3x3
//! convolutions with instance norm and leaky ReLU per level, strided convolutions to go down,
//! transposed convolutions to go up, skip connections by concatenation.
//!
//! The layers run through [`segloss_nn`]: on Flex (the CPU) its fused convolutions and fused
//! instance norm + leaky ReLU with hand-written backward passes, elsewhere Burn's operations.
//! The parameters are Burn's modules', so saved weights are the same either way.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig, ConvTranspose3d, ConvTranspose3dConfig};
use burn::nn::{InstanceNorm, InstanceNormConfig, LeakyRelu, LeakyReluConfig, PaddingConfig3d};
use burn::tensor::{Device, Tensor};
use segloss_nn::{conv_transpose3d_layer, conv3d_layer, instance_norm_leaky_relu_layer};

/// Configuration of a [`UNet3d`].
#[derive(Config, Debug)]
pub struct UNet3dConfig {
    /// Input channels (1 for a single image modality).
    #[config(default = 1)]
    pub in_channels: usize,
    /// Output channels: the number of classes, background included.
    pub num_classes: usize,
    /// Feature channels of the first level; each level down doubles them.
    #[config(default = 8)]
    pub base_width: usize,
    /// Number of resolution levels (`>= 1`); spatial sizes must be divisible by `2^(depth - 1)`.
    #[config(default = 3)]
    pub depth: usize,
    /// Add a 1x1x1 head to every decoder level below the full resolution, so that
    /// [`UNet3d::forward_levels`] returns logits at each (deep supervision).
    #[config(default = false)]
    pub deep_supervision: bool,
}

/// Conv-norm-activation twice; the first convolution may downsample with stride 2.
#[derive(Module, Debug)]
struct ConvBlock {
    conv1: Conv3d,
    norm1: InstanceNorm,
    conv2: Conv3d,
    norm2: InstanceNorm,
    act: LeakyRelu,
}

impl ConvBlock {
    fn new(input: usize, output: usize, stride: usize, device: &Device) -> Self {
        Self {
            conv1: Conv3dConfig::new([input, output], [3, 3, 3])
                .with_stride([stride; 3])
                .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
                .init(device),
            norm1: InstanceNormConfig::new(output)
                .with_affine(true)
                .init(device),
            conv2: Conv3dConfig::new([output, output], [3, 3, 3])
                .with_padding(PaddingConfig3d::Same)
                .init(device),
            norm2: InstanceNormConfig::new(output)
                .with_affine(true)
                .init(device),
            act: LeakyReluConfig::new().init(),
        }
    }

    fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let x = conv3d_layer(&self.conv1, x);
        let x = instance_norm_leaky_relu_layer(&self.norm1, &self.act, x);
        let x = conv3d_layer(&self.conv2, x);
        instance_norm_leaky_relu_layer(&self.norm2, &self.act, x)
    }
}

/// One decoder level: upsample by 2, concatenate the skip connection, convolve.
#[derive(Module, Debug)]
struct UpBlock {
    up: ConvTranspose3d,
    block: ConvBlock,
}

/// A 3D U-Net: input `[B, in_channels, D, H, W]`, output logits `[B, num_classes, D, H, W]`.
#[derive(Module, Debug)]
pub struct UNet3d {
    encoders: Vec<ConvBlock>,
    decoders: Vec<UpBlock>,
    head: Conv3d,
    /// With deep supervision: the heads of the decoder levels below the full resolution,
    /// deepest first (empty otherwise).
    ds_heads: Vec<Conv3d>,
}

impl UNet3dConfig {
    /// Builds the network on `device`.
    ///
    /// # Panics
    /// If `depth`, `base_width`, `in_channels` or `num_classes` is 0.
    pub fn init(&self, device: &Device) -> UNet3d {
        assert!(
            self.depth >= 1,
            "UNet3d: `depth` must be >= 1, got {}",
            self.depth
        );
        assert!(
            self.base_width >= 1 && self.in_channels >= 1 && self.num_classes >= 1,
            "UNet3d: widths and channel counts must be >= 1"
        );
        let widths: Vec<usize> = (0..self.depth).map(|l| self.base_width << l).collect();
        let mut encoders = Vec::new();
        let mut input = self.in_channels;
        for (level, &w) in widths.iter().enumerate() {
            encoders.push(ConvBlock::new(
                input,
                w,
                if level == 0 { 1 } else { 2 },
                device,
            ));
            input = w;
        }
        let mut decoders = Vec::new();
        for level in (0..self.depth - 1).rev() {
            let (from, to) = (widths[level + 1], widths[level]);
            decoders.push(UpBlock {
                up: ConvTranspose3dConfig::new([from, to], [2, 2, 2])
                    .with_stride([2, 2, 2])
                    .init(device),
                block: ConvBlock::new(2 * to, to, 1, device),
            });
        }
        let head = Conv3dConfig::new([widths[0], self.num_classes], [1, 1, 1]).init(device);
        // Decoder level i (deepest first) works at widths[depth - 2 - i]; the last one is the
        // full resolution, whose head is `head`.
        let ds_heads = if self.deep_supervision {
            (1..self.depth.saturating_sub(1))
                .rev()
                .map(|level| {
                    Conv3dConfig::new([widths[level], self.num_classes], [1, 1, 1]).init(device)
                })
                .collect()
        } else {
            Vec::new()
        };
        UNet3d {
            encoders,
            decoders,
            head,
            ds_heads,
        }
    }
}

impl UNet3d {
    /// Spatial sizes must be multiples of this: `2^(depth - 1)`.
    pub fn size_factor(&self) -> usize {
        1usize << (self.encoders.len() - 1)
    }

    /// Logits `[B, num_classes, D, H, W]` of images `[B, in_channels, D, H, W]`.
    ///
    /// # Panics
    /// If a spatial size is not divisible by `2^(depth - 1)`.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        self.run(x, false).remove(0)
    }

    /// Logits at every decoder level, full resolution first, each next one half the size
    /// (deep supervision): as many as the decoder has levels (`depth - 1`, at least one) when
    /// built with `deep_supervision`, else only the full resolution's.
    ///
    /// # Panics
    /// If a spatial size is not divisible by `2^(depth - 1)`.
    pub fn forward_levels(&self, x: Tensor<5>) -> Vec<Tensor<5>> {
        self.run(x, true)
    }

    /// Whether the network has deep-supervision heads.
    pub fn has_deep_supervision(&self) -> bool {
        !self.ds_heads.is_empty()
    }

    /// The weights of the deep-supervision heads (deepest first), flattened: for tests and
    /// inspection.
    pub fn ds_head_weights(&self) -> Vec<Vec<f32>> {
        self.ds_heads
            .iter()
            .map(|h| {
                h.weight
                    .val()
                    .into_data()
                    .try_to_vec::<f32>()
                    .expect("f32 weights")
            })
            .collect()
    }

    fn run(&self, x: Tensor<5>, levels: bool) -> Vec<Tensor<5>> {
        let factor = self.size_factor();
        let dims = x.dims();
        assert!(
            dims[2..].iter().all(|d| d % factor == 0),
            "UNet3d: spatial size {:?} must be divisible by {factor} (2^(depth - 1))",
            &dims[2..]
        );
        let mut skips = Vec::new();
        let mut x = x;
        for enc in &self.encoders {
            x = enc.forward(x);
            skips.push(x.clone());
        }
        skips.pop();
        let mut out = Vec::new();
        for (i, dec) in self.decoders.iter().enumerate() {
            let skip = skips.pop().expect("one skip per decoder");
            let up = conv_transpose3d_layer(&dec.up, x);
            x = dec.block.forward(Tensor::cat(vec![up, skip], 1));
            if let Some(head) = self.ds_heads.get(i).filter(|_| levels) {
                out.push(conv3d_layer(head, x.clone()));
            }
        }
        out.push(conv3d_layer(&self.head, x));
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn output_has_the_input_resolution_and_one_channel_per_class() {
        let device = Device::flex();
        for depth in 1..=3 {
            let net = UNet3dConfig::new(4)
                .with_depth(depth)
                .with_base_width(4)
                .init(&device);
            let x = Tensor::<5>::random([2, 1, 8, 8, 8], Distribution::Normal(0.0, 1.0), &device);
            assert_eq!(net.forward(x).dims(), [2, 4, 8, 8, 8]);
        }
    }

    #[test]
    fn deep_supervision_gives_one_output_per_decoder_level() {
        let device = Device::flex();
        let x = Tensor::<5>::random([2, 1, 16, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        for (depth, sizes) in [
            (1, vec![[16, 8, 8]]),
            (2, vec![[16, 8, 8]]),
            (3, vec![[16, 8, 8], [8, 4, 4]]),
            (4, vec![[16, 8, 8], [8, 4, 4], [4, 2, 2]]),
        ] {
            let cfg = UNet3dConfig::new(3).with_depth(depth).with_base_width(2);
            let net = cfg.clone().with_deep_supervision(true).init(&device);
            let levels = net.forward_levels(x.clone());
            let got: Vec<[usize; 3]> = levels
                .iter()
                .map(|l| {
                    let d = l.dims();
                    assert_eq!(d[..2], [2, 3]);
                    [d[2], d[3], d[4]]
                })
                .collect();
            assert_eq!(got, sizes, "depth {depth}");
            assert_eq!(net.has_deep_supervision(), depth > 2);
            // The full-resolution output is `forward`'s.
            let full: Vec<f32> = net.forward(x.clone()).into_data().try_to_vec().unwrap();
            let first: Vec<f32> = levels[0].clone().into_data().try_to_vec().unwrap();
            assert_eq!(full, first);
            // Without deep supervision, one level.
            assert_eq!(cfg.init(&device).forward_levels(x.clone()).len(), 1);
        }
    }

    #[test]
    #[should_panic(expected = "must be divisible by 4")]
    fn indivisible_sizes_are_refused() {
        let device = Device::flex();
        let net = UNet3dConfig::new(2).with_depth(3).init(&device);
        net.forward(Tensor::<5>::zeros([1, 1, 8, 8, 6], &device));
    }
}
