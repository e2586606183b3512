//! What each subcommand does.

use crate::args::{Cli, Command, DataArgs, EvalArgs, ExtractArgs, LrFindArgs, PredictArgs, SplitArg, TrainArgs, WeightsCommand};
use crate::progress::Bars;
use crate::{backends, experiment, plots, rundir, weights_cmd};
use alexnet_core::data::{Dataset, Split};
use alexnet_core::metrics::argmax_rows;
use alexnet_core::report::RunReport;
use alexnet_core::train::{Inputs, evaluate};
use alexnet_core::{Backend, FreezePolicy, HostTensor, LayerId, ModelConfig, Stage};
use anyhow::{Context, Result, bail};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Weights(w) => match w {
            WeightsCommand::Fetch { out } => weights_cmd::fetch_backbone(cli.backbone, out),
            WeightsCommand::Import { src, out } => weights_cmd::import(&src, &out),
            WeightsCommand::Inspect { path } => weights_cmd::inspect(&path),
        },
        Command::Train(args) => train(&*backends::make(cli.backend.name(), cli.device)?, args),
        Command::Experiment(args) => experiment::run(&backends::make_many(cli.backend.name(), cli.device)?, args),
        Command::Extract(args) => extract(&*backends::make(cli.backend.name(), cli.device)?, args),
        Command::LrFind(args) => lr_find(&*backends::make(cli.backend.name(), cli.device)?, args),
        Command::Eval(args) => eval(&*backends::make(cli.backend.name(), cli.device)?, args),
        Command::Predict(args) => predict(&*backends::make(cli.backend.name(), cli.device)?, args),
        Command::Selfcheck(args) => crate::selfcheck::run(&backends::make_many(cli.backend.name(), cli.device)?, cli.backbone.core(), args),
    }
}

pub(crate) fn bars() -> Bars {
    Bars::new(!std::io::stderr().is_terminal())
}

/// Scans `--data` once before anything slow (a weights fetch, a cache fill), so a missing
/// folder, a single class or an empty class folder fails at once. The job scans it again.
pub(crate) fn check_data(job: &DataArgs) -> Result<Dataset> {
    Ok(Dataset::scan(&job.data)?)
}

/// The weights file to use: explicit, none, or the default one (fetched on first use).
pub(crate) fn resolve_weights(job: &DataArgs) -> Result<Option<PathBuf>> {
    if job.no_pretrained {
        return Ok(None);
    }
    if let Some(p) = &job.weights {
        if !p.is_file() {
            bail!("--weights {}: no such file", p.display());
        }
        return Ok(Some(p.clone()));
    }
    let backbone = job.backbone.core();
    let p = backbone.default_weights();
    if !p.exists() {
        eprintln!("no pretrained {backbone} weights at {} yet: fetching them once", p.display());
        match backbone {
            alexnet_core::backbone::Backbone::AlexNet => weights_cmd::fetch(&p),
            _ => weights_cmd::fetch_inception(&p),
        }
        .context("fetching the default pretrained weights (or pass --weights FILE / --no-pretrained)")?;
    }
    Ok(Some(p))
}

fn train(backend: &dyn Backend, args: TrainArgs) -> Result<()> {
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out {}: exists and is not a folder", args.out.display());
    }
    check_data(&args.job.data)?;
    let mut cfg = args.job.job_config(resolve_weights(&args.job.data)?);
    args.apply(&mut cfg);
    let obs = bars();
    let (cut, cacheable) = match cfg.backbone {
        alexnet_core::backbone::Backbone::AlexNet => (cfg.model.policy.cut_name().to_string(), cfg.model.policy.has_frozen_prefix()),
        b => (format!("{b}'s bottleneck"), true),
    };
    eprintln!(
        "alexnet train · {} · backend {} · device {} · fine-tune {} (cut at {cut}{})",
        cfg.backbone,
        backend.name(),
        backend.device_name(),
        cfg.model.policy,
        if cfg.cache.enabled && cacheable { ", cached" } else { ", no cache" }
    );
    let out = &args.out;
    // Checkpoints go into the run folder (created with the first one); an interrupted run
    // continues from its last one.
    let checkpoint = out.join(rundir::CHECKPOINT);
    // Every member's checkpoint an ensemble (of any size) may have left.
    let checkpoints: Vec<PathBuf> = every_checkpoint(&checkpoint).into_iter().filter(|p| p.exists()).collect();
    if !checkpoints.is_empty() {
        if args.restart {
            for c in &checkpoints {
                std::fs::remove_file(c).with_context(|| c.display().to_string())?;
                eprintln!("--restart: discarded the checkpoint {}", c.display());
            }
        } else {
            eprintln!("{} holds the checkpoint of an interrupted run: continuing it (--restart starts afresh)", out.display());
        }
    }
    cfg.checkpoint = Some(checkpoint.clone());
    let (report, best) = alexnet_core::job::run(backend, &cfg, &obs)?;
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let info = rundir::ModelInfo {
        classes: report.data.classes.clone(),
        preprocess: cfg.preprocess,
        policy: report.policy.clone(),
        backend: report.backend.clone(),
        split: cfg.split,
        backbone: cfg.backbone,
        backbone_weights: (cfg.backbone != alexnet_core::backbone::Backbone::AlexNet).then(|| cfg.weights.clone()).flatten(),
        tta: cfg.tta,
        ensemble: cfg.ensemble,
    };
    let mut written = rundir::save(out, &best, &info)?;
    alexnet_core::write_atomic(&out.join("report.json"), &serde_json::to_vec_pretty(&report)?)?;
    written.push(out.join("report.json"));
    written.extend(plots::learning_curve(&report, &out.join("curve"))?);
    let title = format!("test confusion · {:.1}% · fine-tune {}", 100.0 * report.test.accuracy, report.policy);
    written.extend(plots::confusion(&report.test.confusion, &report.data.classes, &title, &out.join("confusion"))?);
    if !report.members.is_empty() {
        written.extend(plots::ensemble_members(&report, &out.join("ensemble"))?);
    }
    // The model and report are safely written: the run is complete.
    for c in every_checkpoint(&checkpoint) {
        match std::fs::remove_file(&c) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| c.display().to_string()),
            _ => {}
        }
    }
    print_summary(&report);
    println!("wrote: {}", written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    Ok(())
}

/// Every checkpoint a run may leave: each ensemble member's (of any size) and a head stage's.
fn every_checkpoint(checkpoint: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = (0..=alexnet_core::ensemble::MAX_MEMBERS).map(|m| alexnet_core::ensemble::member_file(checkpoint, m)).collect();
    all.push(alexnet_core::head_first::checkpoint_file(checkpoint));
    all
}

fn print_summary(r: &RunReport) {
    let t = &r.timings;
    println!();
    println!("{:<28} {} / {}", "backend / device", r.backend, r.device);
    println!("{:<28} {} (trains {}; input cut: {})", "fine-tune", r.policy, trained_layers(r), r.cut);
    println!("{:<28} {} train / {} val / {} test, {} classes", "images", r.data.train, r.data.val, r.data.test, r.data.classes.len());
    if let Some(c) = &r.cache {
        println!(
            "{:<28} {} entries reused, {} written ({} views/train image) in {}",
            "feature cache", c.loaded_entries, c.written_entries, c.views, c.dir
        );
    }
    if t.extracted_images > 0 {
        println!(
            "{:<28} {} images, {} crops in {:.1}s ({:.1} images/s, {:.1} crops/s incl. decoding)",
            "extraction",
            t.extracted_images,
            t.extracted_views,
            t.extract_seconds,
            t.extract_images_per_second.unwrap_or(0.0),
            t.extract_views_per_second.unwrap_or(0.0)
        );
    }
    if let Some(h) = &r.head_first {
        println!(
            "{:<28} {} steps of {} alone ({:.1}s): val {:.2}%, test {:.2}%; then {}",
            "head first",
            h.steps,
            h.policy.parse::<FreezePolicy>().unwrap_or_default().trained_span(),
            h.train_seconds,
            100.0 * h.val_accuracy,
            100.0 * h.test_accuracy,
            trained_layers(r)
        );
    }
    println!("{:<28} {:.1}s ({:.1}s/epoch, {:.1} samples/s)", "training", t.train_seconds, t.seconds_per_epoch, t.train_samples_per_second);
    let last = r.kept_last();
    let kept = if last { "kept step (the last)" } else { "kept step (best validation)" };
    if r.members.is_empty() {
        println!("{:<28} {}", kept, r.best_step);
    }
    for m in &r.members {
        println!(
            "{:<28} step {}, val {:.2}%, test {:.2}% (members 0–{} together: val {:.2}%, test {:.2}%)",
            format!("member {} (seeds +{})", m.member, m.seed_offset),
            m.best_step,
            100.0 * m.val_accuracy,
            100.0 * m.test_accuracy,
            m.member,
            100.0 * m.ensemble_val_accuracy,
            100.0 * m.ensemble_test_accuracy
        );
    }
    match r.val_crossfit {
        _ if r.val_accuracy().is_none() => println!("{:<28} none (--val-percent 0: validation photos trained too)", "validation accuracy"),
        Some(_) if last => {
            println!("{:<28} {:.2}% (at the last step: chosen on nothing, so unbiased)", "validation accuracy", 100.0 * r.val.accuracy)
        }
        Some(c) => println!(
            "{:<28} {:.2}% at the chosen step(s); {:.2}% with each step chosen on the other half of validation (free of the choice's upward bias)",
            "validation accuracy",
            100.0 * r.val.accuracy,
            100.0 * c
        ),
        None => println!("{:<28} {:.2}%", "validation accuracy", 100.0 * r.val.accuracy),
    }
    let (lo, hi) = r.test.interval95();
    println!(
        "{:<28} {:.2}% (95% interval {:.1}–{:.1}%, {} images)",
        "test accuracy",
        100.0 * r.test.accuracy,
        100.0 * lo,
        100.0 * hi,
        r.test.samples
    );
    for (c, a) in r.data.classes.iter().zip(&r.test.per_class_accuracy) {
        println!("  {:<26} {}", c, a.map(|a| format!("{:.1}%", 100.0 * a)).unwrap_or_else(|| "-".into()));
    }
    let pretrained: Vec<_> =
        r.layers.iter().filter(|(_, s)| matches!(s, alexnet_core::LayerSource::Pretrained { .. })).map(|(l, _)| l.name()).collect();
    match r.backbone {
        alexnet_core::backbone::Backbone::AlexNet => {
            println!("{:<28} pretrained: {}", "weights", if pretrained.is_empty() { "none".to_string() } else { pretrained.join(", ") })
        }
        b => println!("{:<28} {b} pretrained and frozen ({}); the head is new", "weights", r.weights_file.as_deref().unwrap_or("?")),
    }
}

fn trained_layers(r: &RunReport) -> String {
    r.policy.parse::<FreezePolicy>().unwrap_or_default().trained_span()
}

fn lr_find(backend: &dyn Backend, args: LrFindArgs) -> Result<()> {
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out {}: exists and is not a folder", args.out.display());
    }
    check_data(&args.job.data)?;
    let mut cfg = args.job.job_config(resolve_weights(&args.job.data)?);
    args.optim.apply(&mut cfg, args.steps);
    // The range itself was checked with the other flags (args::validate).
    let test = args.range().with_batch_size(cfg.train.batch_size).with_seed(cfg.train.seed).with_mixup(cfg.train.mixup);
    eprintln!(
        "alexnet lr-find · {} · backend {} · fine-tune {} · {} steps from {:.0e} to {:.0e}",
        cfg.backbone,
        backend.name(),
        cfg.model.policy,
        test.steps,
        test.start,
        test.end
    );
    let obs = bars();
    let mut p = alexnet_core::job::prepare(backend, &cfg, &obs)?;
    let rep = alexnet_core::lr_find::lr_find(p.model.as_mut(), &p.train, &test, &obs)?;
    std::fs::create_dir_all(&args.out).with_context(|| args.out.display().to_string())?;
    let json = args.out.join("lr_find.json");
    alexnet_core::write_atomic(&json, &serde_json::to_vec_pretty(&serde_json::json!({"config": cfg, "lr_find": rep}))?)?;
    let title = format!("learning-rate range test · {} · fine-tune {} · batch {}", backend.name(), cfg.model.policy, test.batch_size);
    let mut written = vec![json];
    written.extend(plots::lr_find(&rep, &title, &args.out.join("lr_find"))?);
    let show = |v: Option<f32>| v.map_or("none (the loss never fell)".to_string(), |v| format!("{v:.2e}"));
    if rep.stopped_early {
        println!("stopped at lr {:.2e} after {} steps: the loss diverged", rep.points.last().map_or(0.0, |p| p.lr), rep.points.len());
    }
    println!("steepest descent: lr {}", show(rep.steepest));
    println!("minimum / 10:     lr {}", show(rep.min_over_10));
    println!("wrote: {}", written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    Ok(())
}

fn extract(backend: &dyn Backend, args: ExtractArgs) -> Result<()> {
    // --no-cache and --finetune all were refused by args::validate.
    check_data(&args.job.data)?;
    let mut cfg = args.job.job_config(resolve_weights(&args.job.data)?);
    cfg.shard = args.shard;
    let obs = bars();
    let p = alexnet_core::job::prepare(backend, &cfg, &obs)?;
    let (c, f) = (p.cache.expect("cache enabled"), p.fill.expect("filled"));
    println!("cache: {}", c.dir);
    if let Some(s) = args.shard {
        let d = &p.data;
        println!("shard {s}: {} of {} images ({} train, {} val, {} test)", d.train + d.val + d.test, p.dataset.samples.len(), d.train, d.val, d.test);
    }
    println!("entries reused: {}, written: {}", c.loaded_entries, c.written_entries);
    if f.extracted_images > 0 {
        println!(
            "extracted {} images ({} views) in {:.1}s: {:.1} images/s",
            f.extracted_images,
            f.extracted_views,
            f.seconds,
            f.extracted_images as f64 / f.seconds
        );
    }
    for s in &p.data.skipped {
        println!("skipped: {}: {}", s.path, s.reason);
    }
    Ok(())
}

/// Builds the trained model for inference (every layer frozen but fc8; policy is irrelevant
/// here), or an ensemble's members as one model.
fn inference_model(backend: &dyn Backend, run: &rundir::RunDir) -> Result<Box<dyn alexnet_core::Model>> {
    if run.info.ensemble > 1 {
        return inference_ensemble(backend, run);
    }
    let weights = run.weights()?;
    let info = &run.info;
    // AlexNet: everything frozen but fc8 (images run the backend's own prefix). A head on a
    // described backbone: all of it, so the backbone's features enter its first layer.
    let first = match info.backbone {
        alexnet_core::backbone::Backbone::AlexNet => LayerId::Fc8,
        _ => weights.spec().layer_ids()[0],
    };
    let head = backend.build(&weights, &ModelConfig::new(FreezePolicy::from_layer(first)))?;
    match (info.backbone, &info.backbone_weights) {
        (alexnet_core::backbone::Backbone::AlexNet, _) => Ok(head),
        (b, Some(file)) => {
            let frozen = alexnet_core::backbone::FrozenBackbone::load(b, info.preprocess.crop as usize, file)?.context("a described backbone")?;
            Ok(frozen.model(backend, head)?)
        }
        (b, None) => bail!("{}: a {b} model needs backbone_weights", run.dir.join(rundir::INFO).display()),
    }
}

/// An ensemble for inference. Built with the training policy, so the members' frozen prefix
/// (the same pretrained layers, checked by content hash) runs once per batch and each member's
/// trained layers continue from it; a frozen described backbone likewise runs once in front of
/// all the heads.
fn inference_ensemble(backend: &dyn Backend, run: &rundir::RunDir) -> Result<Box<dyn alexnet_core::Model>> {
    use alexnet_core::backbone::Backbone;
    use alexnet_core::ensemble::Ensemble;
    let info = &run.info;
    let members = run.members()?;
    let policy: FreezePolicy = match info.backbone {
        Backbone::AlexNet => info.policy.parse()?,
        _ => FreezePolicy::from_layer(members[0].spec().layer_ids()[0]),
    };
    let frozen = policy.frozen();
    let shared = members.iter().all(|w| w.content_hash(&frozen) == members[0].content_hash(&frozen));
    let heads = members.iter().map(|w| backend.build(w, &ModelConfig::new(policy))).collect::<alexnet_core::Result<Vec<_>>>()?;
    match (info.backbone, &info.backbone_weights) {
        (Backbone::AlexNet, _) => Ok(Box::new(Ensemble::new(heads, shared)?)),
        (b, Some(file)) => {
            let frozen = alexnet_core::backbone::FrozenBackbone::load(b, info.preprocess.crop as usize, file)?.context("a described backbone")?;
            Ok(frozen.model(backend, Box::new(Ensemble::new(heads, true)?))?)
        }
        (b, None) => bail!("{}: a {b} model needs backbone_weights", run.dir.join(rundir::INFO).display()),
    }
}

fn eval(backend: &dyn Backend, args: EvalArgs) -> Result<()> {
    // Cheap checks first (model.json, the data folder), then the weights.
    let run = rundir::RunDir::open(&args.model)?;
    let info = &run.info;
    let ds = Dataset::scan(&args.data)?;
    for w in &ds.warnings {
        eprintln!("warning: {w}");
    }
    // Labels by class name, so a folder with the classes in another order (or a subset) works.
    let map: Vec<u32> = ds
        .classes
        .iter()
        .map(|c| {
            info.classes
                .iter()
                .position(|m| m == c)
                .map(|i| i as u32)
                .with_context(|| format!("class folder {c:?} is not one of the model's classes {:?}", info.classes))
        })
        .collect::<Result<_>>()?;
    let split = args.split.map(|s| match s {
        SplitArg::Train => Split::Train,
        SplitArg::Val => Split::Val,
        SplitArg::Test => Split::Test,
    });
    // As training split it: byte-identical files together (by content hash).
    let assigned = split.map(|_| info.split.assign_samples(&ds.samples, &alexnet_core::data::check_files(&ds.samples, false).hashes));
    let picked: Vec<_> = ds
        .samples
        .iter()
        .enumerate()
        .filter(|(i, _)| split.is_none_or(|sp| assigned.as_ref().is_some_and(|a| a[*i] == sp)))
        .map(|(_, s)| s)
        .collect();
    if picked.is_empty() {
        bail!("{}: no images to evaluate", args.data.display());
    }
    let mut model = inference_model(backend, &run)?;
    let inputs = Inputs::Images {
        pre: info.preprocess,
        paths: picked.iter().map(|s| s.path.clone()).collect(),
        labels: picked.iter().map(|s| map[s.label]).collect(),
        augment: Default::default(),
        tta: args.tta.map_or(info.tta, |t| t.core()),
    };
    let m = evaluate(model.as_mut(), &inputs, info.classes.len(), args.batch_size)?;
    if args.json {
        let per_class: serde_json::Map<String, serde_json::Value> =
            info.classes.iter().zip(&m.per_class_accuracy).map(|(c, a)| (c.clone(), serde_json::json!(a))).collect();
        let out = serde_json::json!({
            "accuracy": m.accuracy,
            "samples": m.samples,
            "classes": info.classes,
            "per_class_accuracy": per_class,
            "confusion": m.confusion.counts,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("accuracy: {:.4}", m.accuracy);
        println!("samples: {}", m.samples);
    }
    Ok(())
}

fn predict(backend: &dyn Backend, args: PredictArgs) -> Result<()> {
    if let Some(p) = args.images.iter().find(|p| !p.is_file()) {
        bail!("{}: no such image file", p.display());
    }
    let run = rundir::RunDir::open(&args.model)?;
    let info = &run.info;
    let mut model = inference_model(backend, &run)?;
    let tta = args.tta.map_or(info.tta, |t| t.core());
    for path in &args.images {
        let (_, crops) = info.preprocess.views(path, tta.views())?;
        let c = info.preprocess.crop as usize;
        let x = HostTensor::new(vec![tta.len(), 3, c, c], crops.concat())?;
        // The softmax, averaged over the test-time views.
        let probs = alexnet_core::train::mean_softmax(&model.logits(&x, Stage::Image)?, tta.len());
        let mut ranked: Vec<(usize, f32)> = probs.row(0).iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(args.top_k);
        debug_assert_eq!(ranked[0].0 as u32, argmax_rows(&probs)[0]);
        if args.json {
            let top: Vec<_> = ranked.iter().map(|(i, p)| serde_json::json!({"class": info.classes[*i], "probability": p})).collect();
            println!("{}", serde_json::json!({"image": path.display().to_string(), "top": top}));
        } else {
            let top: Vec<_> = ranked.iter().map(|(i, p)| format!("{} {:.1}%", info.classes[*i], 100.0 * p)).collect();
            println!("{}: {}", path.display(), top.join(", "));
        }
    }
    Ok(())
}
