//! Cross-backend benchmarks: `cargo bench` at the workspace root (about 30 s of sampling per
//! bench, sized from one timed iteration), then one throughput table across backends on stdout
//! and in `target/criterion/alexnet-summary.md`. criterion's flags still apply and win over the
//! sizing: `cargo bench -- --sample-size 10 --warm-up-time 1 --measurement-time 3`.

use alexnet_benches::settings::{Args, DEFAULT_MEASUREMENT_S, DEFAULT_WARM_UP_S, Mode};
use alexnet_benches::summary::{self, Row, Table};
use alexnet_benches::{backends, config, label, labels, random, weights};
use alexnet_core::data::{Preprocess, View};
use alexnet_core::{AlexNetSpec, LayerId, Stage};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

/// The AlexNet benches' batch: `ALEXNET_BENCH_BATCH` (default 64; e.g. 256 on a GPU).
fn batch() -> usize {
    static B: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *B.get_or_init(|| match std::env::var("ALEXNET_BENCH_BATCH") {
        Ok(v) => v.parse().ok().filter(|b| *b > 0).unwrap_or_else(|| panic!("ALEXNET_BENCH_BATCH={v}: expected a whole number ≥ 1")),
        Err(_) => 64,
    })
}

/// Inception-v3's batch: a quarter of AlexNet's (its images cost ~8× as much at 299×299).
fn inception_batch() -> usize {
    (batch() / 4).max(1)
}
const PIPELINE: &str = "decode_resize_crop/1thread";
/// The model benches: (name in ids, table column).
const MODEL_BENCHES: [&str; 4] = ["extract", "head_step", "full_step", "conv5_step"];
/// The described networks' frozen prefixes on the core's runner: AlexNet to pool5 (the same work
/// as `extract`, through the primitive ops) and Inception-v3 to its 2048-d bottleneck, with
/// their batch sizes.
fn backbone_benches() -> [(&'static str, &'static str, usize); 2] {
    [("alexnet_graph_extract", "alexnet", batch()), ("inception_extract", "inception-v3", inception_batch())]
}
/// Table columns: the model benches, then the backbone benches.
const COLUMNS: [&str; 6] = ["extract", "head_step", "full_step", "conv5_step", "alexnet_graph_extract", "inception_extract"];
/// Seconds per bench beyond warm-up and sampling in the up-front estimate: the probe iteration,
/// building models, analysis, and the 10 × 2 iterations of second-long benches exceeding the
/// budget (a 2-core EPYC ran the 9 CPU benches in 6.3 min under load from other builds).
const OVERHEAD_S: f64 = 8.0;

fn model_id(bench: &str, label: &str) -> String {
    format!("{bench}/{label}/b{}", batch())
}

/// A bench's full id: `alexnet/<bench>/<label>/b64` or `backbone/<net>/extract/<label>/b<N>`.
fn full_id(bench: &str, label: &str) -> String {
    match backbone_benches().iter().find(|b| b.0 == bench) {
        Some((_, net, batch)) => format!("backbone/{net}/extract/{label}/b{batch}"),
        None => format!("alexnet/{}", model_id(bench, label)),
    }
}

/// Sizes each bench from one timed iteration (when criterion will sample it) and reports progress.
struct Runner {
    args: Args,
    total: usize,
    done: usize,
    start: Instant,
}

impl Runner {
    fn bench<R>(&mut self, g: &mut BenchmarkGroup<'_, WallTime>, group: &str, name: &str, mut f: impl FnMut() -> R) {
        let id = format!("{group}/{name}");
        if self.args.mode() == Mode::Benchmark && self.args.selects(&id) {
            let t0 = Instant::now();
            black_box(f());
            let t = t0.elapsed().as_secs_f64();
            let s = self.args.sizing(t);
            g.sample_size(s.sample_size).warm_up_time(s.warm_up).measurement_time(s.measurement);
            g.sampling_mode(if s.flat { SamplingMode::Flat } else { SamplingMode::Linear });
            self.done += 1;
            let el = self.start.elapsed().as_secs();
            let shape = if s.flat {
                format!("{} samples × {} iterations", s.sample_size, s.iters_per_sample)
            } else {
                format!("{} samples (linear)", s.sample_size)
            };
            eprintln!(
                "[{}/{}] {id}: one iteration {t:.3} s → {shape}, about {:.0} s ({}:{:02} elapsed)",
                self.done,
                self.total,
                s.expected_s(t),
                el / 60,
                el % 60
            );
        }
        g.bench_function(name, |b| b.iter(&mut f));
    }
}

/// The image pipeline: read + decode + resize + centre crop + normalise.
fn pipeline(c: &mut Criterion, r: &mut Runner) {
    if !r.args.selects(&format!("pipeline/{PIPELINE}")) {
        return;
    }
    // ALEXNET_BENCH_PHOTOS: a folder of photos where ../shared is not beside the build (a bundle).
    let root = std::env::var_os("ALEXNET_BENCH_PHOTOS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/flower_photos/daisy"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e} (benches read ../shared/data/flower_photos)", root.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.truncate(32);
    let pre = Preprocess::default();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(files.len() as u64));
    r.bench(&mut g, "pipeline", PIPELINE, || files.iter().map(|f| pre.views(f, &[View::Center]).unwrap().1.len()).sum::<usize>());
    g.finish();
}

fn models(c: &mut Criterion, r: &mut Runner, run: &[Box<dyn alexnet_core::Backend>]) {
    // Only the backends with a bench criterion will run get models.
    let wanted: Vec<&dyn alexnet_core::Backend> = run
        .iter()
        .map(|b| b.as_ref())
        .filter(|b| MODEL_BENCHES.iter().any(|n| r.args.selects(&format!("alexnet/{}", model_id(n, &label(*b))))))
        .collect();
    if wanted.is_empty() {
        return;
    }
    // As the CLI does: large freed buffers are reused, not unmapped.
    alexnet_core::retain_freed_memory();
    let w = weights();
    let spec = AlexNetSpec::new(5);
    let batch = batch();
    let images = random(vec![batch, 3, 224, 224], 1);
    let pool5 = random(vec![batch, 9216], 2);
    let conv4 = random(vec![batch, 256, 13, 13], 3).data.iter().map(|v| v.max(0.0)).collect::<Vec<_>>();
    let conv4 = alexnet_core::HostTensor::new(vec![batch, 256, 13, 13], conv4).unwrap();
    assert_eq!(spec.input_shape(LayerId::Conv5), vec![256, 13, 13]);
    let y = labels(batch);
    let mut g = c.benchmark_group("alexnet");
    g.throughput(Throughput::Elements(batch as u64));
    for b in wanted {
        let name = label(b);
        let mut m = b.build(&w, &config("fc6")).unwrap();
        r.bench(&mut g, "alexnet", &model_id("extract", &name), || {
            let f = m.extract(&images).unwrap();
            m.synchronize().unwrap();
            f
        });
        r.bench(&mut g, "alexnet", &model_id("head_step", &name), || m.train_step(&pool5, Stage::Cut, &y, 1e-4).unwrap());
        r.bench(&mut g, "alexnet", &model_id("full_step", &name), || m.train_step(&images, Stage::Image, &y, 1e-4).unwrap());
        drop(m);
        let mut m5 = b.build(&w, &config("conv5")).unwrap();
        r.bench(&mut g, "alexnet", &model_id("conv5_step", &name), || m5.train_step(&conv4, Stage::Cut, &y, 1e-4).unwrap());
    }
    g.finish();
}

/// The described backbones' frozen prefixes (seeded weights: speed does not depend on values),
/// images per second with the device synchronised inside the timed region.
fn backbones(c: &mut Criterion, r: &mut Runner, run: &[Box<dyn alexnet_core::Backend>]) {
    for (bench, net, batch) in backbone_benches() {
        let wanted: Vec<&dyn alexnet_core::Backend> =
            run.iter().map(|b| b.as_ref()).filter(|b| r.args.selects(&full_id(bench, &label(*b)))).collect();
        if wanted.is_empty() {
            continue;
        }
        let (graph, cut) = match net {
            "alexnet" => (alexnet_core::net::alexnet(&AlexNetSpec::new(5)).unwrap(), "pool5"),
            _ => (alexnet_core::net::inception_v3(alexnet_core::net::INCEPTION_CROP).unwrap(), "pool3"),
        };
        let params = graph.seeded_params(0);
        let side = graph.input.size;
        let images = random(vec![batch, 3, side, side], 1);
        let mut g = c.benchmark_group(format!("backbone/{net}/extract"));
        g.throughput(Throughput::Elements(batch as u64));
        for b in wanted {
            let mut e = b.extractor(&graph, cut, &params).unwrap();
            let id = full_id(bench, &label(b));
            let name = id.strip_prefix(&format!("backbone/{net}/extract/")).unwrap().to_string();
            r.bench(&mut g, &format!("backbone/{net}/extract"), &name, || {
                let f = e.extract(&images).unwrap();
                e.synchronize().unwrap();
                f
            });
        }
        g.finish();
    }
}

fn main() {
    let started = SystemTime::now();
    let args = Args::from_env();
    let dir = summary::criterion_dir();
    let mut c = Criterion::default().output_directory(&dir).configure_from_args();
    let be = backends();
    let labels: Vec<String> = be.run.iter().map(|b| label(b.as_ref())).collect();
    let mut ids = vec![format!("pipeline/{PIPELINE}")];
    ids.extend(labels.iter().flat_map(|l| COLUMNS.map(|n| full_id(n, l))));
    let total = ids.iter().filter(|id| args.selects(id)).count();
    let mode = args.mode();
    if mode == Mode::Benchmark {
        let skipped: Vec<String> = be.skipped.iter().map(|(l, why)| format!("{l}: {why}")).collect();
        let estimate = match (args.sample_size, args.measurement_s) {
            (None, m) => format!(
                ", about {:.0} min",
                total as f64 * (m.unwrap_or(DEFAULT_MEASUREMENT_S) + args.warm_up_s.unwrap_or(DEFAULT_WARM_UP_S) + OVERHEAD_S) / 60.0
            ),
            _ => String::new(),
        };
        eprintln!(
            "alexnet-benches: {total} benches on {}{estimate}; each is sized from one timed \
             iteration to ~{:.0} s of sampling (--measurement-time/--sample-size/--warm-up-time \
             override). Not run: {}.",
            labels.join(", "),
            args.measurement_s.unwrap_or(DEFAULT_MEASUREMENT_S),
            if skipped.is_empty() { "none".to_string() } else { skipped.join("; ") }
        );
    }
    let mut r = Runner { args, total, done: 0, start: Instant::now() };
    pipeline(&mut c, &mut r);
    models(&mut c, &mut r, &be.run);
    backbones(&mut c, &mut r, &be.run);
    c.final_summary();
    if mode == Mode::Benchmark {
        write_summary(&r.args, &dir, started, &labels, &be.skipped);
    }
}

/// The cross-backend table from the estimates criterion saved in this run.
fn write_summary(args: &Args, dir: &std::path::Path, started: SystemTime, ran: &[String], skipped: &[(String, String)]) {
    if args.no_saved_results {
        eprintln!("alexnet-benches: criterion saves no estimates with --discard-baseline/--load-baseline; no summary");
        return;
    }
    let results = summary::collect(dir, started);
    let mut rows: Vec<Row> = ran.iter().map(|l| Row::Ran { label: l.clone() }).collect();
    rows.extend(skipped.iter().map(|(l, why)| Row::Skipped { label: l.clone(), reason: why.clone() }));
    let flags: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let features: Vec<&str> = [("tch", cfg!(feature = "tch")), ("cuda", cfg!(feature = "cuda")), ("vulkan", cfg!(feature = "vulkan"))]
        .iter()
        .filter(|f| f.1)
        .map(|f| f.0)
        .collect();
    let table = Table {
        title: format!("alexnet-benches: {}, {}", summary::utc_stamp(started), summary::machine()),
        notes: vec![format!(
            "Batch {batch} (Inception-v3: {inception} at 299×299), random inputs and, for the backbone columns, seeded weights; \
             `alexnet_graph_extract` is `extract`'s work through the core's graph runner and primitive ops. Features: {}. Arguments: {}.",
            if features.is_empty() { "none".to_string() } else { features.join(", ") },
            if flags.is_empty() { "none (sized per bench)".to_string() } else { format!("`{}`", flags.join(" ")) },
            batch = batch(),
            inception = inception_batch(),
        )],
        rows: &rows,
        columns: &COLUMNS,
        id: &|bench, label| full_id(bench, label),
        extra: &[("pipeline/decode_resize_crop/1thread (32 flower JPEGs on one core; backend-independent)", format!("pipeline/{PIPELINE}"))],
        unit: "samples (images) per second",
    };
    let md = summary::render(&table, &results);
    println!("\n{md}");
    let path = dir.join("alexnet-summary.md");
    match std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, &md)) {
        Ok(()) => eprintln!("alexnet-benches: summary written to {}", path.display()),
        Err(e) => eprintln!("alexnet-benches: could not write {}: {e}", path.display()),
    }
}
