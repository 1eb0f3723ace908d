//! The 8x8 digits data (scikit-learn's copy of the UCI set; see data/NOTICE.md) and its fixed
//! train/validation split.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{Context as _, bail, ensure};
use candle_core::{Device, Tensor};

use crate::rng::SplitMix64;

pub const PIXELS: usize = 64;
pub const CLASSES: usize = 10;
/// Pixel values count set pixels in a 4x4 block, so 0..=16.
const MAX_PIXEL: u32 = 16;
/// The split is the same for every trial and seed, so trials are compared on the same
/// validation images.
const SPLIT_SEED: u64 = 0x0D16_175E;

/// Images as rows of 64 values in [0, 1], and labels 0..9.
pub struct Digits {
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
}

impl Digits {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Reads the gzipped CSV: no header, 65 integers a row, the label last.
    pub fn load(path: &Path) -> anyhow::Result<Digits> {
        let file = std::fs::File::open(path).with_context(|| {
            let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
            format!("cannot open the digits data {} (working directory {cwd}); run from examples/digits or set DIGITS_DATA", path.display())
        })?;
        Digits::parse(flate2::read::GzDecoder::new(file)).with_context(|| format!("reading {}", path.display()))
    }

    pub fn parse(reader: impl Read) -> anyhow::Result<Digits> {
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for (index, line) in BufReader::new(reader).lines().enumerate() {
            let line = line.context("decompressing")?;
            let line_no = index + 1;
            if line.trim().is_empty() {
                continue;
            }
            let values = line
                .split(',')
                .map(|field| field.trim().parse::<u32>())
                .collect::<Result<Vec<u32>, _>>()
                .with_context(|| format!("line {line_no}: not a list of integers"))?;
            ensure!(values.len() == PIXELS + 1, "line {line_no}: {} values, expected {}", values.len(), PIXELS + 1);
            let (image, label) = values.split_at(PIXELS);
            if let Some(bad) = image.iter().find(|&&p| p > MAX_PIXEL) {
                bail!("line {line_no}: pixel value {bad} is above {MAX_PIXEL}");
            }
            ensure!((label[0] as usize) < CLASSES, "line {line_no}: label {} is not a digit", label[0]);
            pixels.extend(image.iter().map(|&p| p as f32 / MAX_PIXEL as f32));
            labels.push(label[0]);
        }
        ensure!(!labels.is_empty(), "no rows");
        Ok(Digits { pixels, labels })
    }

    /// A fixed 80/20 split (by a constant seed), as tensors on `device`.
    pub fn split(&self, device: &Device) -> anyhow::Result<Split> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        SplitMix64::new(SPLIT_SEED).shuffle(&mut order);
        let validation_len = self.len().div_ceil(5);
        let (validation, train) = order.split_at(validation_len);
        Ok(Split { train: self.subset(train, device)?, validation: self.subset(validation, device)? })
    }

    fn subset(&self, indices: &[usize], device: &Device) -> anyhow::Result<Examples> {
        let mut pixels = Vec::with_capacity(indices.len() * PIXELS);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            pixels.extend_from_slice(&self.pixels[i * PIXELS..(i + 1) * PIXELS]);
            labels.push(self.labels[i]);
        }
        Ok(Examples {
            x: Tensor::from_vec(pixels, (indices.len(), PIXELS), device)?,
            y: Tensor::from_vec(labels, indices.len(), device)?,
            len: indices.len(),
        })
    }
}

pub struct Examples {
    /// (n, 64) f32
    pub x: Tensor,
    /// (n,) u32
    pub y: Tensor,
    pub len: usize,
}

pub struct Split {
    pub train: Examples,
    pub validation: Examples,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: u32, fill: u32) -> String {
        let mut fields: Vec<String> = (0..PIXELS).map(|_| fill.to_string()).collect();
        fields.push(label.to_string());
        fields.join(",")
    }

    #[test]
    fn parses_rows_and_scales_pixels() {
        let text = format!("{}\n{}\n", row(3, 16), row(9, 8));
        let digits = Digits::parse(text.as_bytes()).unwrap();
        assert_eq!(digits.labels, [3, 9]);
        assert_eq!(digits.pixels.len(), 2 * PIXELS);
        assert_eq!(digits.pixels[0], 1.0);
        assert_eq!(digits.pixels[PIXELS], 0.5);
    }

    #[test]
    fn bad_rows_are_named_by_line() {
        let short = "1,2,3\n";
        let err = Digits::parse(short.as_bytes()).err().unwrap();
        assert!(format!("{err:#}").contains("line 1: 3 values, expected 65"), "{err:#}");
        let text = format!("{}\n{}\n", row(1, 0), row(12, 0));
        let err = Digits::parse(text.as_bytes()).err().unwrap();
        assert!(format!("{err:#}").contains("line 2: label 12"), "{err:#}");
        let text = row(1, 17);
        assert!(Digits::parse(text.as_bytes()).is_err());
    }

    #[test]
    fn the_shipped_file_has_1797_balanced_images_and_splits_1437_360() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv.gz");
        let digits = Digits::load(&path).unwrap();
        assert_eq!(digits.len(), 1797);
        for class in 0..CLASSES as u32 {
            let count = digits.labels.iter().filter(|&&l| l == class).count();
            assert!((170..=185).contains(&count), "class {class}: {count}");
        }
        let split = digits.split(&Device::Cpu).unwrap();
        assert_eq!((split.train.len, split.validation.len), (1437, 360));
        let again = digits.split(&Device::Cpu).unwrap();
        let labels = |s: &Split| s.validation.y.to_vec1::<u32>().unwrap();
        assert_eq!(labels(&split), labels(&again), "the split is fixed");
    }
}
