//! Decode → resize shorter side → crop → (flip) → ImageNet normalisation, as torchvision does.

use super::augment::{Anchor, jitter_planes, resized_crop_box};
use crate::{Error, Result};
use image::RgbImage;
use image::imageops::FilterType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// ImageNet channel means (RGB), as used to train the pretrained weights.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Preprocessing settings. They are part of the feature cache's key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// The shorter side is resized to this (bilinear, antialiased).
    pub resize: u32,
    /// Square crop fed to the network.
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Preprocess {
    fn default() -> Self {
        Self { resize: 256, crop: 224, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }
}

/// Which crop of an image to take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum View {
    /// Centre crop, no flip: evaluation.
    Center,
    /// A fixed crop, optionally mirrored: test-time augmentation ([`Tta`](super::Tta)).
    Fixed { at: Anchor, flip: bool },
    /// Random crop position and horizontal flip (p = 0.5), then colour jitter of strength
    /// `color` (0: none), all drawn from `seed`: training. With `scale` > 0 the crop is a
    /// random-resized one ([`Augment::crop_scale`](super::Augment::crop_scale)).
    Augmented { seed: u64, color: f32, scale: f32 },
}

/// A decoded, resized image with the hash of its file's bytes.
#[derive(Debug)]
pub struct DecodedImage {
    pub rgb: RgbImage,
    /// xxh3-128 of the file's bytes: identifies the image in the feature cache.
    pub content_hash: u128,
}

impl Preprocess {
    /// Checks that the crop fits the resize and that the normalisation is usable (finite, std > 0).
    pub fn validate(&self) -> Result<()> {
        if self.crop == 0 || self.crop > self.resize {
            return Err(Error::Config(format!(
                "crop (--crop) {} must be at least 1 and no larger than resize (--resize) {}",
                self.crop, self.resize
            )));
        }
        if !(self.mean.iter().all(|m| m.is_finite()) && self.std.iter().all(|s| s.is_finite() && *s > 0.0)) {
            return Err(Error::Config(format!("normalisation mean {:?} and std {:?} must be finite, with every std > 0", self.mean, self.std)));
        }
        Ok(())
    }

    /// Floats per preprocessed image (3 × crop × crop).
    pub fn image_len(&self) -> usize {
        3 * (self.crop as usize).pow(2)
    }

    /// Reads, hashes and decodes `path`, then resizes its shorter side to `self.resize`.
    pub fn load(&self, path: &Path) -> Result<DecodedImage> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let content_hash = xxhash_rust::xxh3::xxh3_128(&bytes);
        // Empty, not an image, or truncated (the JPEG decoder would fill the rest with grey).
        crate::data::check::check_bytes(&bytes).map_err(|msg| Error::Image { path: path.to_path_buf(), msg })?;
        let img = image::load_from_memory(&bytes).map_err(|e| Error::Image { path: path.to_path_buf(), msg: e.to_string() })?.to_rgb8();
        let (w, h) = img.dimensions();
        if w.min(h) == 0 {
            return Err(Error::Image { path: path.to_path_buf(), msg: "image has no pixels".into() });
        }
        // torchvision Resize(int): shorter side → resize, longer side scaled and truncated.
        let (nw, nh) = if w <= h {
            (self.resize, (self.resize as u64 * h as u64 / w as u64) as u32)
        } else {
            ((self.resize as u64 * w as u64 / h as u64) as u32, self.resize)
        };
        let rgb = if (nw, nh) == (w, h) { img } else { image::imageops::resize(&img, nw, nh, FilterType::Triangle) };
        Ok(DecodedImage { rgb, content_hash })
    }

    /// Crops `view` out of a resized image into `out` (CHW, normalised; `image_len()` floats).
    pub fn crop_into(&self, img: &RgbImage, view: View, out: &mut [f32]) {
        let c = self.crop;
        let mut img = std::borrow::Cow::Borrowed(img);
        let (w, h) = img.dimensions();
        let mut jitter = None;
        let (x0, y0, flip) = match view {
            View::Center => {
                let (x, y) = Anchor::Center.origin(w, h, c);
                (x, y, false)
            }
            View::Fixed { at, flip } => {
                let (x, y) = at.origin(w, h, c);
                (x, y, flip)
            }
            View::Augmented { seed, color, scale } => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let pos = if scale > 0.0 {
                    // The box is resampled to the crop size (bilinear, antialiased when it
                    // shrinks), from the resized image rather than the file's full resolution.
                    let (x, y, cw, ch) = resized_crop_box(&mut rng, w, h, scale);
                    let boxed = image::imageops::crop_imm(&*img, x, y, cw, ch).to_image();
                    img = std::borrow::Cow::Owned(image::imageops::resize(&boxed, c, c, FilterType::Triangle));
                    (0, 0, rng.random_bool(0.5))
                } else {
                    (rng.random_range(0..=w - c), rng.random_range(0..=h - c), rng.random_bool(0.5))
                };
                // Drawn after the crop, so a view's crop is the same with or without jitter.
                if color > 0.0 {
                    jitter = Some(std::array::from_fn(|_| rng.random_range(1.0 - color..=1.0 + color).max(0.0)));
                }
                pos
            }
        };
        let plane = (c * c) as usize;
        let w = img.width();
        let raw = img.as_raw();
        let each_pixel = |f: &mut dyn FnMut(usize, &[u8])| {
            for y in 0..c {
                let row = ((y0 + y) * w) as usize * 3;
                for x in 0..c {
                    let sx = if flip { x0 + c - 1 - x } else { x0 + x } as usize;
                    f((y * c + x) as usize, &raw[row + sx * 3..row + sx * 3 + 3]);
                }
            }
        };
        match jitter {
            None => {
                let scale: [f32; 3] = std::array::from_fn(|k| 1.0 / (255.0 * self.std[k]));
                let shift: [f32; 3] = std::array::from_fn(|k| self.mean[k] / self.std[k]);
                each_pixel(&mut |o, px| {
                    for k in 0..3 {
                        out[k * plane + o] = px[k] as f32 * scale[k] - shift[k];
                    }
                });
            }
            Some(factors) => {
                // Jitter works on [0, 1] values, as torchvision's does on a float image.
                each_pixel(&mut |o, px| {
                    for k in 0..3 {
                        out[k * plane + o] = px[k] as f32 / 255.0;
                    }
                });
                jitter_planes(&mut out[..3 * plane], plane, factors);
                for k in 0..3 {
                    for v in &mut out[k * plane..(k + 1) * plane] {
                        *v = (*v - self.mean[k]) / self.std[k];
                    }
                }
            }
        }
    }

    /// Loads `path` and returns one preprocessed crop per view, with the file's content hash.
    pub fn views(&self, path: &Path, views: &[View]) -> Result<(u128, Vec<Vec<f32>>)> {
        let img = self.load(path)?;
        let out = views
            .iter()
            .map(|v| {
                let mut buf = vec![0f32; self.image_len()];
                self.crop_into(&img.rgb, *v, &mut buf);
                buf
            })
            .collect();
        Ok((img.content_hash, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]))
    }

    #[test]
    fn resize_keeps_aspect_and_center_crop_normalises() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.png");
        gradient(500, 300).save(&p).unwrap();
        let pre = Preprocess::default();
        let img = pre.load(&p).unwrap();
        assert_eq!(img.rgb.dimensions(), (426, 256));
        let mut out = vec![0f32; pre.image_len()];
        pre.crop_into(&img.rgb, View::Center, &mut out);
        // Blue channel is constant 128 everywhere: (128/255 - 0.406) / 0.225.
        let want = (128.0 / 255.0 - 0.406) / 0.225;
        assert!(out[2 * 224 * 224..].iter().all(|v| (v - want).abs() < 1e-5));
    }

    /// `view` of `img` as `crop_into` writes it.
    fn crop_of(pre: &Preprocess, img: &RgbImage, view: View) -> Vec<f32> {
        let mut o = vec![0f32; pre.image_len()];
        pre.crop_into(img, view, &mut o);
        o
    }

    #[test]
    fn augmented_views_are_seeded_and_flip() {
        let pre = Preprocess { resize: 8, crop: 4, ..Default::default() };
        let img = gradient(8, 8);
        let crop = |v| crop_of(&pre, &img, v);
        let aug = |seed| View::Augmented { seed, color: 0.0, scale: 0.0 };
        assert_eq!(crop(aug(3)), crop(aug(3)));
        let distinct: std::collections::HashSet<Vec<u32>> = (0..32).map(|s| crop(aug(s)).iter().map(|v| v.to_bits()).collect()).collect();
        assert!(distinct.len() > 8, "only {} distinct views", distinct.len());
        // Some view is flipped: red (= x) decreases along a row.
        assert!((0..32).any(|s| {
            let o = crop(aug(s));
            o[0] > o[1]
        }));
        // The mirrored centre is the centre crop reversed along each row.
        let (centre, mirror) = (crop(View::Center), crop(View::Fixed { at: Anchor::Center, flip: true }));
        for row in 0..12 {
            let r = row * 4..row * 4 + 4;
            assert!(centre[r.clone()].iter().rev().eq(mirror[r].iter()));
        }
        // Corners differ from the centre and from each other.
        let corners: std::collections::HashSet<Vec<u32>> = [Anchor::TopLeft, Anchor::TopRight, Anchor::BottomLeft, Anchor::BottomRight]
            .map(|at| crop(View::Fixed { at, flip: false }).iter().map(|v| v.to_bits()).collect())
            .into_iter()
            .collect();
        assert_eq!(corners.len(), 4);
        // Colour jitter keeps the crop (same seed) but changes the colours, differently per seed.
        let jittered = |seed| View::Augmented { seed, color: 0.4, scale: 0.0 };
        assert_eq!(crop(jittered(5)), crop(jittered(5)));
        assert_ne!(crop(jittered(5)), crop(aug(5)));
        assert_ne!(crop(jittered(5)), crop(jittered(6)));
    }

    #[test]
    fn resized_crops_are_seeded_and_zoom() {
        let pre = Preprocess { resize: 64, crop: 16, ..Default::default() };
        let img = gradient(96, 64);
        let crop = |v| crop_of(&pre, &img, v);
        let scaled = |seed| View::Augmented { seed, color: 0.0, scale: 0.35 };
        assert_eq!(crop(scaled(3)), crop(scaled(3)));
        assert_ne!(crop(scaled(3)), crop(scaled(4)));
        // Red is x: a plain 16-pixel crop spans 15 levels of it, a resized box 40–96 pixels wide
        // spans more (its mirror image reverses the row, the span stays).
        let span = |o: &[f32]| (o[15] - o[0]).abs() * 255.0 * 0.229;
        let plain = span(&crop(View::Augmented { seed: 3, color: 0.0, scale: 0.0 }));
        assert!((plain - 15.0).abs() < 0.01, "{plain}");
        for s in 0..16 {
            assert!(span(&crop(scaled(s))) > 20.0, "seed {s}: {}", span(&crop(scaled(s))));
        }
    }

    #[test]
    fn validate_names_the_bad_setting() {
        Preprocess::default().validate().unwrap();
        let crop = Preprocess { resize: 224, crop: 227, ..Default::default() }.validate().unwrap_err().to_string();
        assert!(crop.contains("--crop") && crop.contains("--resize") && crop.contains("227"), "{crop}");
        assert!(Preprocess { crop: 0, ..Default::default() }.validate().is_err());
        let std = Preprocess { std: [0.2, 0.0, 0.2], ..Default::default() }.validate().unwrap_err().to_string();
        assert!(std.contains("std"), "{std}");
        assert!(Preprocess { mean: [f32::NAN, 0.0, 0.0], ..Default::default() }.validate().is_err());
    }

    #[test]
    fn corrupt_file_error_names_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("broken.jpg");
        std::fs::write(&p, b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
        let e = Preprocess::default().load(&p).unwrap_err().to_string();
        assert!(e.contains("broken.jpg") && e.contains("cannot decode"), "{e}");
        // A truncated JPEG is refused too, not decoded as a partly grey picture.
        let full = d.path().join("full.jpg");
        gradient(300, 200).save(&full).unwrap();
        Preprocess::default().load(&full).unwrap();
        let bytes = std::fs::read(&full).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = Preprocess::default().load(&p).unwrap_err().to_string();
        assert!(e.contains("broken.jpg") && e.contains("truncated JPEG"), "{e}");
    }
}
