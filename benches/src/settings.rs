//! What the bench binary was asked to do (criterion's command line, read the way criterion reads
//! it) and the per-bench sample size and times sized from one timed iteration.
//!
//! criterion 0.8 applies `--sample-size`, `--warm-up-time` and `--measurement-time` to its global
//! config, and a group's own settings override that config (`PartialBenchmarkConfig::to_complete`).
//! So the benches set every group setting themselves and take each one from the command line when
//! it was given there: the user's flags win.

use regex::Regex;
use std::time::Duration;

/// Measurement time per bench when `--measurement-time` is not given (seconds).
pub const DEFAULT_MEASUREMENT_S: f64 = 30.0;
/// Warm-up per bench when `--warm-up-time` is not given (seconds). One untimed iteration has
/// already run (the probe), so one more second is enough even for second-long iterations.
pub const DEFAULT_WARM_UP_S: f64 = 1.0;
/// Bounds on the sample count chosen from the budget (criterion needs at least 10).
pub const MIN_SAMPLES: usize = 10;
pub const MAX_SAMPLES: usize = 100;
/// With `--sample-size N` alone, the measurement time is N iterations, but at least this long.
pub const MIN_MEASUREMENT_S: f64 = 3.0;

/// What criterion will do with this command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sampling, analysis and saved estimates (`cargo bench`).
    Benchmark,
    /// Each bench once (`cargo bench -- --test`, `cargo test --benches`).
    Test,
    /// `--list`.
    List,
    /// `--profile-time`.
    Profile,
}

/// criterion's options that take a value (long names, then short letters).
const VALUE_LONG: &[&str] = &[
    "color",
    "colour",
    "save-baseline",
    "baseline",
    "baseline-lenient",
    "format",
    "profile-time",
    "load-baseline",
    "sample-size",
    "warm-up-time",
    "measurement-time",
    "nresamples",
    "noise-threshold",
    "confidence-level",
    "significance-level",
    "plotting-backend",
    "output-format",
];
const VALUE_SHORT: &[char] = &['c', 's', 'b'];

/// The parts of criterion's command line the benches need.
#[derive(Debug, Clone, Default)]
pub struct Args {
    pub sample_size: Option<usize>,
    pub warm_up_s: Option<f64>,
    pub measurement_s: Option<f64>,
    filter: Option<String>,
    exact: bool,
    ignored: bool,
    bench: bool,
    test: bool,
    list: bool,
    profile: bool,
    /// `--load-baseline` / `--discard-baseline`: criterion samples nothing new or saves nothing.
    pub no_saved_results: bool,
}

impl Args {
    /// This process's arguments.
    pub fn from_env() -> Self {
        Self::parse(std::env::args().skip(1))
    }

    /// Parses criterion's options (without the program name). Unknown options are ignored:
    /// criterion itself rejects them.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Self {
        let mut a = Args::default();
        let mut it = args.into_iter();
        let mut positional_only = false;
        while let Some(arg) = it.next() {
            if positional_only || arg == "-" || !arg.starts_with('-') {
                if a.filter.is_none() {
                    a.filter = Some(arg);
                }
                continue;
            }
            if arg == "--" {
                positional_only = true;
                continue;
            }
            if let Some(long) = arg.strip_prefix("--") {
                let (name, inline) = match long.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (long, None),
                };
                let value = if VALUE_LONG.contains(&name) { inline.or_else(|| it.next()) } else { None };
                a.set(name, value);
            } else {
                // A cluster of short flags; c, s and b take the rest of the cluster or the next arg.
                let cluster: Vec<char> = arg[1..].chars().collect();
                for (i, ch) in cluster.iter().enumerate() {
                    if VALUE_SHORT.contains(ch) {
                        let rest: String = cluster[i + 1..].iter().collect();
                        let rest = rest.strip_prefix('=').map(str::to_string).unwrap_or(rest);
                        let value = if rest.is_empty() { it.next() } else { Some(rest) };
                        let name = match ch {
                            'c' => "color",
                            's' => "save-baseline",
                            _ => "baseline",
                        };
                        a.set(name, value);
                        break;
                    }
                }
            }
        }
        a
    }

    fn set(&mut self, name: &str, value: Option<String>) {
        let secs = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<f64>().ok()).filter(|s| *s > 0.0);
        match name {
            "sample-size" => self.sample_size = value.and_then(|s| s.parse().ok()),
            "warm-up-time" => self.warm_up_s = secs(&value),
            "measurement-time" => self.measurement_s = secs(&value),
            "exact" => self.exact = true,
            "ignored" => self.ignored = true,
            "bench" => self.bench = true,
            "test" => self.test = true,
            "list" => self.list = true,
            "profile-time" => self.profile = true,
            "load-baseline" | "discard-baseline" => self.no_saved_results = true,
            _ => {}
        }
    }

    /// criterion's mode for this command line (`configure_from_args`).
    pub fn mode(&self) -> Mode {
        if self.list {
            Mode::List
        } else if !self.bench || self.test {
            Mode::Test
        } else if self.profile {
            Mode::Profile
        } else {
            Mode::Benchmark
        }
    }

    /// Whether criterion will run the bench `id` (`group/function`): its FILTER is a regex
    /// searched in the id, or the whole id with `--exact`; `--ignored` runs nothing.
    pub fn selects(&self, id: &str) -> bool {
        if self.ignored {
            return false;
        }
        match &self.filter {
            None => true,
            Some(f) if self.exact => f == id,
            // criterion panics on a bad regex; let it, and run everything here.
            Some(f) => Regex::new(f).map(|r| r.is_match(id)).unwrap_or(true),
        }
    }

    /// Sample size, warm-up and measurement time for a bench whose one iteration took `iter_s`.
    ///
    /// Without flags: about [`DEFAULT_MEASUREMENT_S`] of sampling, at least 10 samples of at least
    /// 2 iterations each. Slow benches use flat sampling (every sample the same iteration count
    /// `k`); criterion picks `k = ceil(measurement / samples / warm-up mean)`, so the measurement
    /// time is set to `samples × (k − ½) × iter_s`, which gives `k` whether the warm iterations
    /// run up to a third faster or half again slower than the probe. (With `k = 1` criterion
    /// always prints "Unable to complete N samples": it happens only when the flags ask for it.)
    pub fn sizing(&self, iter_s: f64) -> Sizing {
        let t = iter_s.max(1e-9);
        let budget = self.measurement_s.unwrap_or(DEFAULT_MEASUREMENT_S);
        let n = self.sample_size.unwrap_or_else(|| ((budget / (2.0 * t)).floor() as usize).clamp(MIN_SAMPLES, MAX_SAMPLES));
        let warm_up = Duration::from_secs_f64(self.warm_up_s.unwrap_or(DEFAULT_WARM_UP_S));
        // Linear sampling runs 1 + 2 + … + n iterations at least (times d ≥ 1).
        let linear_runs = (n * (n + 1) / 2) as f64;
        let target = if self.sample_size.is_some() && self.measurement_s.is_none() { MIN_MEASUREMENT_S } else { budget };
        if linear_runs * t * 2.0 <= target {
            let measurement = Duration::from_secs_f64(self.measurement_s.unwrap_or(target));
            return Sizing { sample_size: n, warm_up, measurement, flat: false, iters_per_sample: 0 };
        }
        let min_k = if self.sample_size.is_some() { 1 } else { 2 };
        let k = ((target / (n as f64 * t)).round() as u64).max(min_k);
        let measurement = self.measurement_s.unwrap_or(n as f64 * (k as f64 - 0.5) * t);
        // What criterion will pick from that (the probe standing in for the warm-up mean).
        let k = ((measurement / n as f64 / t).ceil() as u64).max(1);
        Sizing { sample_size: n, warm_up, measurement: Duration::from_secs_f64(measurement), flat: true, iters_per_sample: k }
    }
}

/// One bench's criterion settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizing {
    pub sample_size: usize,
    pub warm_up: Duration,
    pub measurement: Duration,
    pub flat: bool,
    /// Flat sampling: iterations per sample expected (0 for linear sampling).
    pub iters_per_sample: u64,
}

impl Sizing {
    /// Expected seconds for warm-up plus sampling.
    pub fn expected_s(&self, iter_s: f64) -> f64 {
        let sampling = if self.flat { (self.sample_size as u64 * self.iters_per_sample) as f64 * iter_s } else { self.measurement.as_secs_f64() };
        self.warm_up.as_secs_f64().max(iter_s) + sampling
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Args {
        Args::parse(s.split_whitespace().map(str::to_string))
    }

    #[test]
    fn modes() {
        assert_eq!(parse("--bench").mode(), Mode::Benchmark);
        assert_eq!(parse("--bench --test").mode(), Mode::Test);
        assert_eq!(parse("").mode(), Mode::Test);
        assert_eq!(parse("--bench --list").mode(), Mode::List);
        assert_eq!(parse("--bench --profile-time 5").mode(), Mode::Profile);
    }

    #[test]
    fn values_and_filter() {
        let a = parse("--bench --sample-size 10 --warm-up-time=1 -c never --measurement-time 3 extract");
        assert_eq!(a.sample_size, Some(10));
        assert_eq!(a.warm_up_s, Some(1.0));
        assert_eq!(a.measurement_s, Some(3.0));
        assert!(a.selects("alexnet/extract/candle/b64"));
        assert!(!a.selects("pipeline/decode_resize_crop/1thread"));
        // A value is not a filter.
        let a = parse("--bench -s mybase --baseline-lenient x");
        assert!(a.selects("pipeline/decode_resize_crop/1thread"));
        let a = parse("--bench --exact alexnet/head_step/burn/b64");
        assert!(a.selects("alexnet/head_step/burn/b64"));
        assert!(!a.selects("alexnet/head_step/burn/b640"));
        assert!(!parse("--bench --ignored").selects("pipeline/x"));
        assert!(parse("--bench --discard-baseline").no_saved_results);
    }

    #[test]
    fn sizing_defaults_fit_the_budget() {
        let a = parse("--bench");
        for t in [0.146, 0.32, 0.53, 1.1, 1.3, 1.8] {
            let s = a.sizing(t);
            assert!(s.flat && s.iters_per_sample >= 2 && s.sample_size >= MIN_SAMPLES, "{t}: {s:?}");
            let e = s.expected_s(t) - 1.0;
            assert!(e > 0.7 * DEFAULT_MEASUREMENT_S && e < 1.25 * DEFAULT_MEASUREMENT_S, "{t}: {e}");
            // criterion's k = ceil(M / n / met) stays put for warm-up means 0.75–1.5 × the probe.
            for met in [0.76 * t, 1.49 * t] {
                let k = (s.measurement.as_secs_f64() / s.sample_size as f64 / met).ceil() as u64;
                assert_eq!(k, s.iters_per_sample, "{t} {met}");
            }
        }
        let slow = a.sizing(1.8);
        assert_eq!((slow.sample_size, slow.iters_per_sample), (MIN_SAMPLES, 2));
        let fast = a.sizing(0.001);
        assert_eq!(fast.sample_size, MAX_SAMPLES);
        assert!(!fast.flat);
        assert_eq!(fast.measurement.as_secs_f64(), DEFAULT_MEASUREMENT_S);
    }

    #[test]
    fn command_line_wins() {
        let a = parse("--bench --sample-size 10 --warm-up-time 2 --measurement-time 3");
        let s = a.sizing(1.8);
        assert_eq!(s.sample_size, 10);
        assert_eq!(s.warm_up, Duration::from_secs(2));
        assert_eq!(s.measurement, Duration::from_secs(3));
        // --sample-size alone: one iteration per sample for slow benches.
        let s = parse("--bench --sample-size 10").sizing(1.8);
        assert_eq!((s.sample_size, s.iters_per_sample), (10, 1));
        assert!((s.expected_s(1.8) - 19.8).abs() < 1e-9);
        // --measurement-time alone scales the sample count.
        let s = parse("--bench --measurement-time 120").sizing(1.0);
        assert_eq!(s.sample_size, 60);
        assert_eq!(s.measurement, Duration::from_secs(120));
    }
}
