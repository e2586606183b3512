//! Reading every image file once before training: its content hash (the feature cache's key and
//! the duplicate check's), the checks that need no decoding (unreadable, empty, not a JPEG/PNG,
//! truncated) and, optionally, a full decode. Every bad file is found in one pass, so a user
//! fixes them all at once. Byte-identical files are grouped: they must share a split, and one
//! filed under two classes is a labelling conflict.

use crate::data::Sample;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

/// A file that cannot be used, and why (the reason names no command-line flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFile {
    /// Index into the samples checked.
    pub index: usize,
    pub path: PathBuf,
    pub reason: String,
}

/// What [`check_files`] found.
#[derive(Debug, Clone, Default)]
pub struct FileCheck {
    /// xxh3-128 of each sample's bytes (as the feature cache keys images); `None` for a bad file.
    pub hashes: Vec<Option<u128>>,
    /// Bad files, in sample order.
    pub bad: Vec<BadFile>,
    /// Whether every file was fully decoded (not only its structure checked).
    pub decoded: bool,
    pub seconds: f64,
}

/// Reads every sample in parallel: hash, [`check_bytes`], and with `decode` a full decode.
/// Never stops at a bad file: all of them are listed.
pub fn check_files(samples: &[Sample], decode: bool) -> FileCheck {
    let start = Instant::now();
    let results: Vec<Result<u128, String>> = samples
        .par_iter()
        .map(|s| {
            let bytes = std::fs::read(&s.path).map_err(|e| format!("cannot read: {e}"))?;
            check_bytes(&bytes)?;
            if decode {
                decode_check(&bytes)?;
            }
            Ok(xxhash_rust::xxh3::xxh3_128(&bytes))
        })
        .collect();
    let mut out = FileCheck { decoded: decode, ..Default::default() };
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(h) => out.hashes.push(Some(h)),
            Err(reason) => {
                out.hashes.push(None);
                out.bad.push(BadFile { index: i, path: samples[i].path.clone(), reason });
            }
        }
    }
    out.seconds = start.elapsed().as_secs_f64();
    out
}

/// The checks that need no decoding: not empty, a JPEG or PNG by its signature, and complete
/// (a JPEG reaches its end-of-image marker FF D9, a PNG its IEND chunk). The image crate's JPEG
/// decoder (zune-jpeg, non-strict) decodes a truncated file as a partly grey picture without a
/// word, so truncation is checked here.
pub fn check_bytes(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".into());
    }
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Jpeg) => jpeg_complete(bytes),
        Ok(image::ImageFormat::Png) => png_complete(bytes),
        Ok(f) => Err(format!("{f:?} image: only JPEG and PNG are read")),
        Err(_) => Err(format!("not a JPEG or PNG image (unknown content, {} bytes)", bytes.len())),
    }
}

/// Decodes the whole image, as training will.
pub fn decode_check(bytes: &[u8]) -> Result<(), String> {
    let img = image::load_from_memory(bytes).map_err(|e| format!("cannot decode: {e}"))?;
    if img.width().min(img.height()) == 0 {
        return Err("image has no pixels".into());
    }
    Ok(())
}

/// Walks the JPEG's segments (by their lengths, so thumbnails inside APP segments are skipped)
/// and entropy-coded data (where FF is stuffed as FF 00) until the end-of-image marker; anything
/// after it (padding, appended data) is allowed.
fn jpeg_complete(b: &[u8]) -> Result<(), String> {
    let truncated = |what: &str| Err(format!("truncated JPEG: the file ends {what}, before the end-of-image marker (FF D9)"));
    let mut i = 2; // after SOI (FF D8)
    loop {
        // The next marker: FF followed by a byte that is not 00 (stuffing), FF (fill) or D0–D7
        // (restart markers, which carry no length).
        let m = loop {
            let Some(p) = b.get(i..).and_then(|r| r.iter().position(|x| *x == 0xFF)) else {
                return truncated("inside the image data");
            };
            i += p + 1;
            match b.get(i) {
                None => return truncated("inside the image data"),
                Some(0x00 | 0xFF | 0xD0..=0xD7 | 0x01) => {}
                Some(m) => break *m,
            }
        };
        i += 1;
        match m {
            0xD9 => return Ok(()),
            0xD8 => {} // a second SOI: no length
            _ => {
                let Some(len) = b.get(i..i + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else {
                    return truncated("inside a segment header");
                };
                i += len;
                if i > b.len() {
                    return truncated("inside a segment");
                }
            }
        }
    }
}

/// Walks the PNG's chunks (length, type, data, CRC) until IEND.
fn png_complete(b: &[u8]) -> Result<(), String> {
    let mut i = 8; // after the signature
    loop {
        let Some(h) = b.get(i..i + 8) else {
            return Err("truncated PNG: the file ends before its IEND chunk".into());
        };
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        i += 12 + len;
        if i > b.len() {
            return Err("truncated PNG: the file ends inside a chunk, before its IEND chunk".into());
        }
        if &h[4..8] == b"IEND" {
            return Ok(());
        }
    }
}

/// What to do with an image filed under two or more classes (byte-identical copies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    /// Leave out every copy (its label is ambiguous), with a warning listing them.
    #[default]
    Skip,
    /// Keep every labelled copy (all in one split).
    Keep,
}

/// Groups of byte-identical files (two or more each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Duplicates {
    /// Sample indices of each group, in sample order (so by relative path); groups ordered by
    /// their first member.
    pub groups: Vec<Vec<usize>>,
}

impl Duplicates {
    /// Groups the samples whose hashes are equal (`None`: a bad file, never grouped).
    pub fn find(hashes: &[Option<u128>]) -> Self {
        let mut by_hash: HashMap<u128, Vec<usize>> = HashMap::new();
        for (i, h) in hashes.iter().enumerate() {
            if let Some(h) = h {
                by_hash.entry(*h).or_default().push(i);
            }
        }
        let mut groups: Vec<Vec<usize>> = by_hash.into_values().filter(|g| g.len() > 1).collect();
        groups.sort();
        Self { groups }
    }

    /// Files in groups (every copy counted).
    pub fn files(&self) -> usize {
        self.groups.iter().map(|g| g.len()).sum()
    }

    /// The groups whose copies are filed under more than one class.
    pub fn conflicts<'a>(&'a self, samples: &'a [Sample]) -> impl Iterator<Item = &'a Vec<usize>> + 'a {
        self.groups.iter().filter(|g| g.iter().any(|i| samples[*i].label != samples[g[0]].label))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 % 256) as u8, (y * 13 % 256) as u8, ((x ^ y) % 256) as u8]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn the_decoder_accepts_a_truncated_jpeg_so_the_check_must_catch_it() {
        let full = jpeg(256, 256);
        let half = &full[..full.len() / 2];
        // What the image crate does with it: no error, a partly grey picture.
        assert!(decode_check(half).is_ok(), "the decoder now rejects truncated JPEGs; the marker walk could go");
        let e = check_bytes(half).unwrap_err();
        assert!(e.contains("truncated JPEG") && e.contains("FF D9"), "{e}");
        check_bytes(&full).unwrap();
        decode_check(&full).unwrap();
        // Padding or appended data after the end-of-image marker is fine.
        let mut padded = full.clone();
        padded.extend_from_slice(&[0; 100]);
        check_bytes(&padded).unwrap();
        // Cut anywhere before the end: truncated (every cut of the last quarter, and a few more).
        for cut in (2..full.len() - 1).rev().take(full.len() / 4).chain([2, 3, 20, 100]) {
            assert!(check_bytes(&full[..cut]).is_err(), "cut at {cut} of {}", full.len());
        }
    }

    #[test]
    fn png_needs_its_iend_chunk() {
        let full = png(64, 48);
        check_bytes(&full).unwrap();
        for cut in [full.len() - 1, full.len() - 12, full.len() / 2, 9] {
            let e = check_bytes(&full[..cut]).unwrap_err();
            assert!(e.contains("truncated PNG"), "{cut}: {e}");
        }
        // Complete but corrupt (a flipped byte in the image data): only decoding finds it.
        let mut corrupt = full.clone();
        let idat = corrupt.windows(4).position(|w| w == b"IDAT").unwrap();
        corrupt[idat + 6] ^= 0x55;
        check_bytes(&corrupt).unwrap();
        let e = decode_check(&corrupt).unwrap_err();
        assert!(e.starts_with("cannot decode"), "{e}");
    }

    #[test]
    fn empty_text_and_other_formats_are_named() {
        assert_eq!(check_bytes(b"").unwrap_err(), "empty file (0 bytes)");
        let e = check_bytes(b"hello, I am a text file\n").unwrap_err();
        assert!(e.contains("not a JPEG or PNG"), "{e}");
        let e = check_bytes(b"GIF89a\x01\x00\x01\x00").unwrap_err();
        assert!(e.contains("Gif") && e.contains("only JPEG and PNG"), "{e}");
        // A JPEG header with garbage after it: structurally incomplete.
        assert!(check_bytes(b"\xff\xd8\xff\xe0 not really a jpeg").is_err());
    }

    #[test]
    fn check_files_lists_every_bad_file_and_hashes_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let good = jpeg(40, 30);
        let files: Vec<(&str, Vec<u8>)> = vec![
            ("a/1.jpg", good.clone()),
            ("a/2.jpg", vec![]),
            ("a/3.jpg", b"text".to_vec()),
            ("b/1.jpg", good[..good.len() / 2].to_vec()),
            ("b/2.png", png(8, 8)),
            ("b/3.jpg", good.clone()),
        ];
        let mut samples = vec![];
        for (rel, bytes) in &files {
            let p = d.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            samples.push(Sample { path: p, rel: rel.to_string(), label: usize::from(rel.starts_with('b')) });
        }
        samples.push(Sample { path: d.path().join("a/missing.jpg"), rel: "a/missing.jpg".into(), label: 0 });
        for decode in [false, true] {
            let c = check_files(&samples, decode);
            let bad: Vec<usize> = c.bad.iter().map(|b| b.index).collect();
            assert_eq!(bad, vec![1, 2, 3, 6], "{:?}", c.bad);
            assert!(c.bad[3].reason.contains("cannot read"), "{:?}", c.bad[3]);
            assert_eq!(c.hashes[0], Some(xxhash_rust::xxh3::xxh3_128(&good)));
            let dups = Duplicates::find(&c.hashes);
            assert_eq!(dups.groups, vec![vec![0, 5]]);
            assert_eq!(dups.files(), 2);
            assert_eq!(dups.conflicts(&samples).count(), 1);
        }
    }
}
