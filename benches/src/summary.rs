//! The cross-backend table printed at the end of a bench run: criterion's saved estimates
//! (`<criterion dir>/<group>/<bench>/new/{benchmark,estimates,sample}.json`) read back after the
//! groups finish, as throughput per backend and bench.

use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// criterion's output directory, found as criterion finds it (`CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`, else the target directory from `cargo metadata`), except that a
/// relative `CARGO_TARGET_DIR` (relative to where cargo was started, not to the bench's working
/// directory, the crate) is found from this executable's path instead. The benches hand it to
/// criterion, so both agree.
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        if dir.is_absolute() {
            return dir.join("criterion");
        }
    } else if let Some(dir) = metadata_target_dir() {
        return dir.join("criterion");
    }
    // target/release/deps/backends-<hash>: the first ancestor cargo tagged as its target dir.
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().find(|d| d.join("CACHEDIR.TAG").is_file()).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
        .join("criterion")
}

fn metadata_target_dir() -> Option<PathBuf> {
    let cargo = std::env::var_os("CARGO")?;
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get("target_directory")?.as_str().map(PathBuf::from)
}

/// One bench's saved result.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Median time per iteration and its confidence interval (ns).
    pub median_ns: f64,
    pub lower_ns: f64,
    pub upper_ns: f64,
    pub confidence_level: f64,
    /// Median absolute deviation of the per-iteration times (ns).
    pub mad_ns: f64,
    /// Elements per iteration (criterion's throughput), if set.
    pub elements: Option<u64>,
    /// Samples taken.
    pub samples: usize,
}

impl Estimate {
    /// Elements per second at the median.
    pub fn throughput(&self) -> Option<f64> {
        self.elements.map(|e| e as f64 * 1e9 / self.median_ns)
    }

    /// Half the confidence interval's width relative to the median (the same for throughput,
    /// to first order).
    pub fn ci_half_width(&self) -> f64 {
        (self.upper_ns - self.lower_ns) / 2.0 / self.median_ns
    }

    /// MAD relative to the median.
    pub fn relative_mad(&self) -> f64 {
        self.mad_ns / self.median_ns
    }
}

/// Every bench under `dir` whose estimates were written at or after `since`, by full id
/// (`alexnet/extract/candle/b64`).
pub fn collect(dir: &Path, since: SystemTime) -> HashMap<String, Estimate> {
    let mut out = HashMap::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if p.file_name().is_some_and(|n| n == "new") {
                if let Some((id, est)) = read_one(&p, since) {
                    out.insert(id, est);
                }
            } else if depth < 4 && p.file_name().is_some_and(|n| n != "report") {
                stack.push((p, depth + 1));
            }
        }
    }
    out
}

fn read_json(p: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

fn read_one(new: &Path, since: SystemTime) -> Option<(String, Estimate)> {
    let est_path = new.join("estimates.json");
    if std::fs::metadata(&est_path).and_then(|m| m.modified()).ok()? < since {
        return None;
    }
    let bench = read_json(&new.join("benchmark.json"))?;
    let est = read_json(&est_path)?;
    let f = |v: &Value, path: &[&str]| path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_f64);
    let id = bench.get("full_id")?.as_str()?.to_string();
    let elements = bench.get("throughput").and_then(|t| t.get("Elements").or_else(|| t.get("ElementsAndBytes")));
    let elements = elements.and_then(|e| e.as_u64().or_else(|| e.get("elements")?.as_u64()));
    let samples = read_json(&new.join("sample.json")).and_then(|s| s.get("iters").and_then(Value::as_array).map(Vec::len)).unwrap_or(0);
    Some((
        id,
        Estimate {
            median_ns: f(&est, &["median", "point_estimate"])?,
            lower_ns: f(&est, &["median", "confidence_interval", "lower_bound"])?,
            upper_ns: f(&est, &["median", "confidence_interval", "upper_bound"])?,
            confidence_level: f(&est, &["median", "confidence_interval", "confidence_level"]).unwrap_or(0.95),
            mad_ns: f(&est, &["median_abs_dev", "point_estimate"]).unwrap_or(f64::NAN),
            elements,
            samples,
        },
    ))
}

/// A table row: a backend on a device that ran, or one that did not and what enables it.
#[derive(Debug, Clone)]
pub enum Row {
    Ran { label: String },
    Skipped { label: String, reason: String },
}

/// What the table is made of.
pub struct Table<'a> {
    /// Title line (date, machine).
    pub title: String,
    /// Lines under the title (settings, notes).
    pub notes: Vec<String>,
    pub rows: &'a [Row],
    /// Column names (benches).
    pub columns: &'a [&'a str],
    /// The full bench id for a column and row label (`alexnet/extract/candle/b64`).
    pub id: &'a dyn Fn(&str, &str) -> String,
    /// Backend-independent benches listed under the table (name, full id).
    pub extra: &'a [(&'a str, String)],
    /// What the throughput counts (`samples/s`).
    pub unit: &'a str,
}

fn cell(e: Option<&Estimate>) -> String {
    match e.and_then(|e| Some((e, e.throughput()?))) {
        Some((e, t)) => format!("{} ±{:.1}% (n={})", fmt_rate(t), 100.0 * e.ci_half_width(), e.samples),
        None => "not run".to_string(),
    }
}

fn fmt_rate(t: f64) -> String {
    if t >= 1000.0 {
        format!("{t:.0}")
    } else if t >= 10.0 {
        format!("{t:.1}")
    } else {
        format!("{t:.2}")
    }
}

/// The table as Markdown (it also reads well as plain text).
pub fn render(t: &Table<'_>, results: &HashMap<String, Estimate>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## {}\n", t.title);
    for n in &t.notes {
        let _ = writeln!(s, "{n}");
    }
    if !t.notes.is_empty() {
        s.push('\n');
    }
    let _ = write!(s, "| backend |");
    for c in t.columns {
        let _ = write!(s, " {c} |");
    }
    let _ = write!(s, "\n|---|");
    for _ in t.columns {
        s.push_str("---|");
    }
    s.push('\n');
    for r in t.rows {
        match r {
            Row::Ran { label } => {
                let _ = write!(s, "| {label} |");
                for c in t.columns {
                    let _ = write!(s, " {} |", cell(results.get(&(t.id)(c, label))));
                }
            }
            Row::Skipped { label, reason } => {
                let _ = write!(s, "| {label} | skipped: {reason} |");
                for _ in 1..t.columns.len() {
                    s.push_str(" |");
                }
            }
        }
        s.push('\n');
    }
    if !t.extra.is_empty() {
        s.push('\n');
    }
    for (name, id) in t.extra {
        let _ = writeln!(s, "- {name}: {}", cell(results.get(id)));
    }
    let cl = results.values().next().map_or(0.95, |e| e.confidence_level);
    let _ = writeln!(
        s,
        "\nThroughput in {} at criterion's median; ± is half the width of its {:.0}% confidence \
         interval of the median, relative to the median; n is the sample count. \"not run\": \
         filtered out, or no estimate saved by this run.",
        t.unit,
        cl * 100.0
    );
    s
}

/// UTC `YYYY-MM-DD HH:MM` for `t` (no date crate needed).
pub fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

/// `N × CPU model` from /proc/cpuinfo where there is one.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, m)| m.trim().to_string()));
    match model {
        Some(m) => format!("{cores} cores, {m}"),
        None => format!("{cores} cores"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamp() {
        assert_eq!(utc_stamp(SystemTime::UNIX_EPOCH), "1970-01-01 00:00 UTC");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_859_100); // 2026-11-28 09:45
        assert_eq!(utc_stamp(t), "2026-11-28 09:45 UTC");
    }

    #[test]
    fn reads_criterion_files_and_renders() {
        let dir = std::env::temp_dir().join(format!("alexnet-benches-summary-{}", std::process::id()));
        let new = dir.join("alexnet/extract_candle_b64/new");
        std::fs::create_dir_all(&new).unwrap();
        let since = SystemTime::now() - Duration::from_secs(5);
        std::fs::write(
            new.join("benchmark.json"),
            r#"{"group_id":"alexnet","function_id":"extract/candle/b64","value_str":null,
               "throughput":{"Elements":64},"full_id":"alexnet/extract/candle/b64",
               "directory_name":"alexnet/extract_candle_b64","title":"alexnet/extract/candle/b64"}"#,
        )
        .unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":0.99e9,
               "upper_bound":1.03e9},"point_estimate":1.0e9,"standard_error":1e7},
               "median_abs_dev":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1e7,
               "upper_bound":3e7},"point_estimate":2e7,"standard_error":1e6}}"#,
        )
        .unwrap();
        std::fs::write(new.join("sample.json"), r#"{"sampling_mode":"Flat","iters":[1,1,1],"times":[1,2,3]}"#).unwrap();
        let r = collect(&dir, since);
        let e = &r["alexnet/extract/candle/b64"];
        assert_eq!(e.samples, 3);
        assert!((e.throughput().unwrap() - 64.0).abs() < 1e-9);
        assert!((e.ci_half_width() - 0.02).abs() < 1e-9);
        assert!((e.relative_mad() - 0.02).abs() < 1e-9);
        // Older than `since`: not this run's.
        assert!(collect(&dir, SystemTime::now() + Duration::from_secs(60)).is_empty());

        let rows = [Row::Ran { label: "candle".into() }, Row::Skipped { label: "tch".into(), reason: "`--features tch`".into() }];
        let t = Table {
            title: "t".into(),
            notes: vec![],
            rows: &rows,
            columns: &["extract", "head_step"],
            id: &|c, l| format!("alexnet/{c}/{l}/b64"),
            extra: &[("pipeline", "pipeline/x".into())],
            unit: "samples/s",
        };
        let md = render(&t, &r);
        assert!(md.contains("| candle | 64.0 ±2.0% (n=3) | not run |"), "{md}");
        assert!(md.contains("| tch | skipped: `--features tch` | |"), "{md}");
        assert!(md.contains("- pipeline: not run"), "{md}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
