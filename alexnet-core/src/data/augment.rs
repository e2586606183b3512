//! Training-view augmentation (scale and colour jitter) and test-time augmentation (fixed crops
//! averaged at evaluation).

use super::View;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Augmentation of the random training views, on top of the random crop and flip.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Augment {
    /// Strength `s` of torchvision's `ColorJitter(brightness=s, contrast=s, saturation=s)`:
    /// each factor is drawn from U[1 − s, 1 + s] per view, applied in that order; 0 is off.
    pub color_jitter: f32,
    /// Smallest share of the resized image's area a training view covers, as torchvision's
    /// `RandomResizedCrop(scale=(s, 1))`; 0 is off (a plain crop at a random position).
    /// Omitted when off, so configurations and cache keys written before it existed read the same.
    #[serde(default, skip_serializing_if = "crate::backend::is_zero")]
    pub crop_scale: f32,
}

impl Augment {
    /// Neither scale nor colour jitter (what caches written before they existed hold).
    pub fn is_off(&self) -> bool {
        self.color_jitter == 0.0 && self.crop_scale == 0.0
    }

    /// The random training view drawn from `seed` with this augmentation.
    pub fn view(&self, seed: u64) -> View {
        View::Augmented { seed, color: self.color_jitter, scale: self.crop_scale }
    }
}

/// Aspect ratios (width / height) a resized crop may take, as torchvision's default.
const RATIO: [f32; 2] = [3.0 / 4.0, 4.0 / 3.0];

/// torchvision's `RandomResizedCrop.get_params`: a box `(x, y, width, height)` in a `w × h` image
/// covering a share in `[min_scale, 1]` of its area with an aspect ratio log-uniform in 3/4–4/3;
/// after ten boxes that do not fit, the centred box of the whole image with the ratio clamped.
pub fn resized_crop_box(rng: &mut impl Rng, w: u32, h: u32, min_scale: f32) -> (u32, u32, u32, u32) {
    let area = (w as f32) * (h as f32);
    let (lo, hi) = (RATIO[0].ln(), RATIO[1].ln());
    for _ in 0..10 {
        let target = area * rng.random_range(min_scale..=1.0);
        let ratio = rng.random_range(lo..=hi).exp();
        let (cw, ch) = ((target * ratio).sqrt().round() as u32, (target / ratio).sqrt().round() as u32);
        if (1..=w).contains(&cw) && (1..=h).contains(&ch) {
            return (rng.random_range(0..=w - cw), rng.random_range(0..=h - ch), cw, ch);
        }
    }
    let ratio = w as f32 / h as f32;
    let (cw, ch) = if ratio < RATIO[0] {
        (w, ((w as f32 / RATIO[0]).round() as u32).clamp(1, h))
    } else if ratio > RATIO[1] {
        (((h as f32 * RATIO[1]).round() as u32).clamp(1, w), h)
    } else {
        (w, h)
    };
    ((w - cw) / 2, (h - ch) / 2, cw, ch)
}

/// Where a fixed crop sits in the resized image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Anchor {
    Center,
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
}

impl Anchor {
    /// Top-left corner of a `c`-square crop anchored here in a `w × h` image.
    pub fn origin(self, w: u32, h: u32, c: u32) -> (u32, u32) {
        let centre = |n: u32| ((n - c) as f32 / 2.0).round() as u32;
        match self {
            Anchor::Center => (centre(w), centre(h)),
            Anchor::TopLeft => (0, 0),
            Anchor::TopRight => (w - c, 0),
            Anchor::BottomLeft => (0, h - c),
            Anchor::BottomRight => (w - c, h - c),
        }
    }
}

/// Test-time augmentation: the views whose softmax outputs are averaged for each evaluated image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tta {
    /// The centre crop alone.
    #[default]
    None,
    /// The centre crop and its mirror image.
    Flip,
    /// The centre and four corner crops, each also mirrored (AlexNet paper's ten views).
    TenCrop,
}

/// The ten fixed views, ordered so that each [`Tta`]'s views are a prefix (and share cache entries).
const TEN: [View; 10] = [
    View::Center,
    View::Fixed { at: Anchor::Center, flip: true },
    View::Fixed { at: Anchor::TopLeft, flip: false },
    View::Fixed { at: Anchor::TopLeft, flip: true },
    View::Fixed { at: Anchor::TopRight, flip: false },
    View::Fixed { at: Anchor::TopRight, flip: true },
    View::Fixed { at: Anchor::BottomLeft, flip: false },
    View::Fixed { at: Anchor::BottomLeft, flip: true },
    View::Fixed { at: Anchor::BottomRight, flip: false },
    View::Fixed { at: Anchor::BottomRight, flip: true },
];

/// Cache view indices from here on are fixed test-time views (`TTA_VIEW_BASE + k` is the k-th of
/// the ten); training views are numbered below it (0 is the centre crop, shared by both).
pub const TTA_VIEW_BASE: u32 = 1 << 30;

impl Tta {
    /// Its views, the centre crop first.
    pub fn views(self) -> &'static [View] {
        &TEN[..self.len()]
    }

    /// The centre crop alone (no test-time augmentation).
    pub fn is_centre_only(&self) -> bool {
        *self == Tta::None
    }

    /// Number of views averaged.
    pub fn len(self) -> usize {
        match self {
            Tta::None => 1,
            Tta::Flip => 2,
            Tta::TenCrop => 10,
        }
    }

    /// Never empty: the centre crop is always one of the views.
    pub fn is_empty(self) -> bool {
        false
    }

    /// The feature cache's view indices of its views.
    pub fn cache_indices(self) -> Vec<u32> {
        (0..self.len() as u32).map(|k| if k == 0 { 0 } else { TTA_VIEW_BASE + k }).collect()
    }

    /// The fixed view behind cache index `v ≥ TTA_VIEW_BASE`, if it is one.
    pub fn view_of_index(v: u32) -> Option<View> {
        v.checked_sub(TTA_VIEW_BASE).and_then(|k| TEN.get(k as usize)).copied()
    }

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Tta::None => "none",
            Tta::Flip => "flip",
            Tta::TenCrop => "ten-crop",
        }
    }
}

impl std::fmt::Display for Tta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Luma weights torchvision's `rgb_to_grayscale` uses.
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// Applies brightness, contrast and saturation factors to planar RGB values in [0, 1] (`plane`
/// values per channel), clamping after each as torchvision does. Contrast blends with the mean
/// luma of the crop (torchvision: of the whole image; the crop is what the network sees).
pub fn jitter_planes(rgb: &mut [f32], plane: usize, [brightness, contrast, saturation]: [f32; 3]) {
    for v in rgb.iter_mut() {
        *v = (*v * brightness).clamp(0.0, 1.0);
    }
    let luma = |rgb: &[f32], i: usize| LUMA[0] * rgb[i] + LUMA[1] * rgb[plane + i] + LUMA[2] * rgb[2 * plane + i];
    let mean = (0..plane).map(|i| luma(rgb, i) as f64).sum::<f64>() as f32 / plane.max(1) as f32;
    for v in rgb.iter_mut() {
        *v = (contrast * *v + (1.0 - contrast) * mean).clamp(0.0, 1.0);
    }
    for i in 0..plane {
        let g = luma(rgb, i);
        for k in 0..3 {
            let v = &mut rgb[k * plane + i];
            *v = (saturation * *v + (1.0 - saturation) * g).clamp(0.0, 1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_crop_boxes_fit_and_cover_the_asked_share() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (w, h) = (341, 256);
        let mut shares = Vec::new();
        for _ in 0..500 {
            let (x, y, cw, ch) = resized_crop_box(&mut rng, w, h, 0.35);
            assert!(cw >= 1 && ch >= 1 && x + cw <= w && y + ch <= h, "{x} {y} {cw} {ch}");
            let ratio = cw as f32 / ch as f32;
            assert!((0.74..=1.35).contains(&ratio), "ratio {ratio}");
            shares.push((cw * ch) as f32 / (w * h) as f32);
        }
        assert!(shares.iter().all(|s| (0.34..=1.0).contains(s)), "{shares:?}");
        assert!(shares.iter().any(|s| *s < 0.45) && shares.iter().any(|s| *s > 0.8));
        // The whole image at any aspect ratio is too much for the box: the fallback is centred.
        assert_eq!(resized_crop_box(&mut rng, 100, 10, 1.0), (43, 0, 13, 10));
        assert_eq!(resized_crop_box(&mut rng, 10, 100, 1.0), (0, 43, 10, 13));
    }

    #[test]
    fn tta_views_are_prefixes_with_distinct_cache_indices() {
        assert_eq!(Tta::None.views(), &[View::Center]);
        assert_eq!(Tta::Flip.views()[..], TEN[..2]);
        assert_eq!(Tta::TenCrop.cache_indices().len(), 10);
        for (k, v) in Tta::TenCrop.cache_indices().into_iter().enumerate().skip(1) {
            assert_eq!(Tta::view_of_index(v), Some(TEN[k]));
        }
        assert_eq!(Tta::view_of_index(3), None);
        assert_eq!(Tta::view_of_index(TTA_VIEW_BASE + 10), None);
    }

    #[test]
    fn jitter_factors_of_one_change_nothing_and_saturation_zero_is_grey() {
        let plane = 4;
        let rgb: Vec<f32> = (0..12).map(|i| i as f32 / 12.0).collect();
        let mut same = rgb.clone();
        jitter_planes(&mut same, plane, [1.0, 1.0, 1.0]);
        assert!(same.iter().zip(&rgb).all(|(a, b)| (a - b).abs() < 1e-6));
        let mut grey = rgb.clone();
        jitter_planes(&mut grey, plane, [1.0, 1.0, 0.0]);
        for i in 0..plane {
            assert!((grey[i] - grey[plane + i]).abs() < 1e-6 && (grey[i] - grey[2 * plane + i]).abs() < 1e-6);
        }
        let mut dark = rgb.clone();
        jitter_planes(&mut dark, plane, [0.5, 1.0, 1.0]);
        assert!(dark.iter().zip(&rgb).all(|(a, b)| (a - b * 0.5).abs() < 1e-6));
        let mut flat = rgb;
        jitter_planes(&mut flat, plane, [1.0, 0.0, 1.0]);
        assert!(flat.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-6), "contrast 0 leaves the mean grey");
    }
}
