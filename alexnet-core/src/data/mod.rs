//! Data: folder-per-class scanning, deterministic split, preprocessing and parallel loading.

pub mod augment;
pub mod check;
pub mod dataset;
pub mod loader;
pub mod preprocess;
pub mod split;

pub use augment::{Anchor, Augment, TTA_VIEW_BASE, Tta};
pub use check::{Duplicates, FileCheck, OnConflict, check_files};
pub use dataset::{Dataset, Sample};
pub use loader::Prefetcher;
pub use preprocess::{DecodedImage, Preprocess, View};
pub use split::{Fold, Shard, Split, SplitConfig, group_keys};
