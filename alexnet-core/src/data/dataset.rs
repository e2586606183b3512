//! Scanning a folder-per-class image tree.

use crate::{Error, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// File extensions decoded as images (by the `image` crate's jpeg and png decoders).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];
/// Classes with fewer images than this get a warning: too few to learn or to measure.
pub const FEW_IMAGES: usize = 20;

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Full path to the file.
    pub path: PathBuf,
    /// Path relative to the data root with `/` separators (`daisy/123.jpg`): the split key.
    pub rel: String,
    /// Index into [`Dataset::classes`].
    pub label: usize,
}

/// A folder-per-class image set: sorted class names are the labels.
#[derive(Debug, Clone, Serialize)]
pub struct Dataset {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
    /// Human-readable warnings (few images, skipped non-image files).
    pub warnings: Vec<String>,
}

impl Dataset {
    /// Scans `root`: each visible sub-folder is a class, each `.jpg`/`.jpeg`/`.png` in it an image
    /// (sub-folders of classes are not searched). Other files are skipped with a warning.
    /// Errors on a missing root, fewer than two classes, or an empty class folder.
    pub fn scan(root: &Path) -> Result<Self> {
        let err = |msg: String| Error::Dataset { path: root.to_path_buf(), msg };
        let meta = std::fs::metadata(root).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => err("does not exist; expected a folder with one sub-folder of images per class".into()),
            _ => Error::io(root, e),
        })?;
        if !meta.is_dir() {
            return Err(err("is not a folder; expected one sub-folder per class".into()));
        }
        let mut class_dirs: Vec<(String, PathBuf)> = read_dir_sorted(root)?
            .into_iter()
            .filter(|p| p.is_dir())
            .filter_map(|p| Some((p.file_name()?.to_string_lossy().into_owned(), p)))
            .filter(|(n, _)| !n.starts_with('.'))
            .collect();
        class_dirs.sort();
        if class_dirs.len() < 2 {
            return Err(err(format!(
                "found {} class folder(s); expected at least two sub-folders, one per class, each holding that class's images",
                class_dirs.len()
            )));
        }
        let mut samples = Vec::new();
        let mut warnings = Vec::new();
        let mut classes = Vec::new();
        for (label, (name, dir)) in class_dirs.into_iter().enumerate() {
            let mut count = 0;
            let mut skipped = 0;
            for p in read_dir_sorted(&dir)? {
                let file_name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if file_name.starts_with('.') || p.is_dir() {
                    continue;
                }
                let is_image = p.extension().map(|e| IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str())).unwrap_or(false);
                if !is_image {
                    skipped += 1;
                    warnings.push(format!("skipping {}: not a .jpg/.jpeg/.png file", p.display()));
                    continue;
                }
                samples.push(Sample { rel: format!("{name}/{file_name}"), path: p, label });
                count += 1;
            }
            if count == 0 {
                return Err(Error::Dataset {
                    path: dir.clone(),
                    msg: format!("class folder has no images ({skipped} other files); add .jpg/.png images or remove the folder"),
                });
            }
            if count < FEW_IMAGES {
                warnings.push(format!("class {name:?} has only {count} images (fewer than {FEW_IMAGES}); its accuracy will be unreliable"));
            }
            classes.push(name);
        }
        Ok(Self { root: root.to_path_buf(), classes, samples, warnings })
    }

    /// Number of images per class, in label order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes.len()];
        for s in &self.samples {
            c[s.label] += 1;
        }
        c
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e))).collect::<Result<_>>()?;
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(p: &Path) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"x").unwrap();
    }

    #[test]
    fn scans_sorted_classes_and_warns() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("tulips/b.jpg"));
        touch(&d.path().join("tulips/a.JPG"));
        touch(&d.path().join("daisy/x.png"));
        touch(&d.path().join("daisy/notes.txt"));
        touch(&d.path().join("LICENSE.txt"));
        let ds = Dataset::scan(d.path()).unwrap();
        assert_eq!(ds.classes, vec!["daisy", "tulips"]);
        let rels: Vec<_> = ds.samples.iter().map(|s| (s.rel.as_str(), s.label)).collect();
        assert_eq!(rels, vec![("daisy/x.png", 0), ("tulips/a.JPG", 1), ("tulips/b.jpg", 1)]);
        assert_eq!(ds.class_counts(), vec![1, 2]);
        assert!(ds.warnings.iter().any(|w| w.contains("notes.txt")));
        assert!(ds.warnings.iter().any(|w| w.contains("only 1 images")));
    }

    #[test]
    fn clear_errors_for_bad_trees() {
        let d = tempfile::tempdir().unwrap();
        let missing = Dataset::scan(&d.path().join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope") && missing.contains("does not exist"), "{missing}");
        touch(&d.path().join("file.jpg"));
        let file = Dataset::scan(&d.path().join("file.jpg")).unwrap_err().to_string();
        assert!(file.contains("is not a folder"), "{file}");
        let none = Dataset::scan(d.path()).unwrap_err().to_string();
        assert!(none.contains("found 0 class folder(s)"), "{none}");
        touch(&d.path().join("only/a.jpg"));
        let one = Dataset::scan(d.path()).unwrap_err().to_string();
        assert!(one.contains("found 1 class folder(s)") && one.contains("at least two"), "{one}");
        fs::create_dir_all(d.path().join("empty")).unwrap();
        let e = Dataset::scan(d.path()).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains("no images"), "{e}");
    }
}
