//! `alexnet experiment`: the reference article's freeze-depth comparison in one command.

use crate::args::{BackboneArg, DataArgs, ExperimentArgs};
use crate::commands::{bars, check_data, resolve_weights};
use crate::plots::{LineChart, Series, both};
use alexnet_core::backbone::Backbone;
use alexnet_core::experiment::{ExperimentConfig, ExperimentReport, run_experiment_reusing};
use alexnet_core::{AlexNetSpec, Backend, WeightSet};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub fn run(backends: &[Box<dyn Backend>], args: ExperimentArgs) -> Result<()> {
    if args.replot {
        let json = args.out.join("experiment.json");
        let rep: ExperimentReport = serde_json::from_slice(&std::fs::read(&json).with_context(|| json.display().to_string())?)
            .with_context(|| format!("{}: not an experiment.json written by alexnet experiment", json.display()))?;
        return finish(&args.out, &rep);
    }
    let classes = check_data(&args.data)?.classes.len();
    // `--vary`: one configuration per value, each checked before anything runs.
    let variants = crate::args::vary(&args).map_err(|e| anyhow::anyhow!("{e}"))?;
    let configs: Vec<ExperimentConfig> = if variants.is_empty() {
        vec![config(&args, classes)?]
    } else {
        // Variants with the same settings (`tta=ten-crop` and `label-smoothing=0` are both the
        // defaults) run once, under both names.
        let mut configs: Vec<(String, ExperimentConfig)> = Vec::new();
        for (label, a) in &variants {
            let cfg = config(a, classes)?;
            let json = serde_json::to_string(&cfg)?;
            match configs.iter_mut().find(|(j, _)| *j == json) {
                Some((_, same)) => same.recipe = Some(format!("{} = {label}", same.recipe.take().unwrap_or_default())),
                None => configs.push((json, ExperimentConfig { recipe: Some(label.clone()), ..cfg })),
            }
        }
        if configs.len() < 2 {
            anyhow::bail!(
                "--vary: every variant has the same settings ({}); nothing to compare",
                variants.iter().map(|v| v.0.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        let mut configs: Vec<ExperimentConfig> = configs.into_iter().map(|(_, c)| c).collect();
        // The cached/uncached timing does not depend on the variant: once is enough.
        for c in configs.iter_mut().skip(1) {
            c.no_cache_policy = None;
        }
        configs
    };
    let cfg = &configs[0];
    let out = args.out.clone();
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    let names: Vec<&str> = backends.iter().map(|b| b.name()).collect();
    let mut policies: Vec<String> = if cfg.alexnet { cfg.policies.iter().map(|p| format!("alexnet {p}")).collect() } else { vec![] };
    policies.extend(cfg.backbone_jobs.iter().map(|j| format!("{} head", j.backbone)));
    let runs = match (cfg.folds, cfg.repeats) {
        (0, 1) => String::new(),
        (0, r) => format!(" · {r} repeats each"),
        (k, 1) => format!(" · {k} test folds each"),
        (k, r) => format!(" · {k} test folds × {r} repeats each"),
    };
    let recipes = if variants.is_empty() {
        String::new()
    } else {
        format!(" · variants {}", variants.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>().join(", "))
    };
    eprintln!(
        "alexnet experiment · backends {} · depths {} · {} steps each, evaluated every {}{runs}{recipes} · writing {}",
        names.join(", "),
        policies.join(", "),
        cfg.steps,
        cfg.eval_every,
        out.display()
    );
    let refs: Vec<&dyn Backend> = backends.iter().map(|b| b.as_ref()).collect();
    let obs = bars();
    let mut save_err = None;
    let mut done: Option<ExperimentReport> = None;
    // Runs already in --out's experiment.json with exactly the same settings (an interrupted
    // experiment, or one with other variants) are taken from it, not trained again; so are
    // those kept in experiment.previous.json from experiments before it.
    let json = out.join("experiment.json");
    let previous = out.join("experiment.previous.json");
    let read = |path: &Path| -> Option<ExperimentReport> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice::<ExperimentReport>(&bytes)
            .map_err(|e| eprintln!("warning: {}: not readable as an experiment.json ({e}); its runs are not reused", path.display()))
            .ok()
    };
    let (own, kept) = (read(&json), read(&previous));
    let runs = |r: &Option<ExperimentReport>| r.as_ref().map(|r| r.runs.clone()).unwrap_or_default();
    let earlier = alexnet_core::experiment::union_of_runs(&runs(&own), &runs(&kept));
    if let Some(mut all) = own.or(kept) {
        // This experiment's file will hold its own runs only: every earlier run, from either
        // file, is kept beside it, so nothing measured is lost however many experiments share
        // the folder.
        all.runs = earlier.clone();
        alexnet_core::write_atomic(&previous, &serde_json::to_vec_pretty(&all)?).with_context(|| previous.display().to_string())?;
    }
    for cfg in &configs {
        // Results are written after every run, so an interrupted experiment keeps what it measured.
        let rep = run_experiment_reusing(&refs, cfg, &earlier, &obs, &mut |r| {
            if let Err(e) = write(&out, &combined(done.as_ref(), r)) {
                save_err.get_or_insert(e);
            }
        })?;
        done = Some(combined(done.as_ref(), &rep));
    }
    if let Some(e) = save_err {
        return Err(e);
    }
    finish(&out, &done.expect("at least one configuration"))
}

/// The runs so far of earlier variants followed by `rep`'s.
fn combined(done: Option<&ExperimentReport>, rep: &ExperimentReport) -> ExperimentReport {
    match done {
        None => rep.clone(),
        Some(d) => {
            let mut all = d.clone();
            all.runs.extend(rep.runs.iter().cloned());
            all.cache_speedups.extend(rep.cache_speedups.iter().cloned());
            all
        }
    }
}

/// The experiment configuration `args` describe (for a data folder of `classes` classes).
fn config(args: &ExperimentArgs, classes: usize) -> Result<ExperimentConfig> {
    // `--backbone X` alone compares X; `--backbones` lists them. AlexNet's depths run on `alex`.
    let backbones: Vec<Backbone> =
        if args.backbones.is_empty() { vec![args.data.backbone.core()] } else { args.backbones.iter().map(|b| b.core()).collect() };
    let alex = DataArgs { backbone: BackboneArg::Alexnet, head_hidden: 0, ..args.data.clone() };
    let weights_path = if backbones.contains(&Backbone::AlexNet) { resolve_weights(&alex)? } else { None };
    let mut base = alex.job_config(weights_path.clone());
    args.optim.apply(&mut base, args.steps);
    base.ensemble = args.ensemble;
    base.head_first = args.head_first;
    // The default depths depend on which layers the weights file really has; every run loads the
    // weights itself, so read them here only when the depths are not given.
    let weights = match weights_path.as_ref().filter(|_| args.policies.is_empty()) {
        Some(p) => {
            let spec = AlexNetSpec::new(classes).with_crop_size(alex.preprocess().crop as usize);
            Some(WeightSet::load_pretrained(p, &spec, args.data.seed)?)
        }
        None => None,
    };
    let mut cfg = ExperimentConfig::new(base, weights.as_ref(), args.steps);
    if !args.policies.is_empty() {
        cfg.policies = args.policies.clone();
    }
    if let Some(k) = args.eval_every {
        cfg.eval_every = k;
    }
    cfg.folds = args.folds.unwrap_or(0);
    cfg.repeats = args.repeats;
    cfg.no_cache_policy = args.speedup_policy.0;
    cfg.no_cache_steps = args.no_cache_steps;
    // Other backbones: the same data, split, seed and budget; their own weights, preprocessing,
    // head and head learning rate.
    cfg.alexnet = backbones.contains(&Backbone::AlexNet);
    for b in backbones.into_iter().filter(|b| *b != Backbone::AlexNet) {
        let data = DataArgs { backbone: BackboneArg::from_core(b), ..args.data.clone() };
        let mut job = data.job_config(resolve_weights(&data)?);
        job.model.policy = Backbone::head_policy(data.head_hidden);
        args.optim.apply(&mut job, args.steps);
        job.ensemble = args.ensemble;
        cfg.backbone_jobs.push(job);
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Writes everything and prints the table.
fn finish(out: &Path, rep: &ExperimentReport) -> Result<()> {
    let written = write(out, rep)?;
    println!();
    print!("{}", rep.markdown());
    println!();
    println!("wrote: {}", written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    Ok(())
}

/// Writes the JSON, the markdown table and both plots; returns the paths.
fn write(out: &Path, rep: &ExperimentReport) -> Result<Vec<PathBuf>> {
    let json = out.join("experiment.json");
    alexnet_core::write_atomic(&json, &serde_json::to_vec_pretty(rep)?)?;
    let md = out.join("experiment.md");
    alexnet_core::write_atomic(&md, rep.markdown().as_bytes())?;
    let mut written = vec![json, md];
    if rep.runs.is_empty() {
        return Ok(written);
    }
    let several = rep.runs.iter().any(|r| r.backend != rep.runs[0].backend);
    let backbones = rep.runs.iter().any(|r| r.backbone != rep.runs[0].backbone);
    let groups = rep.groups();
    // Test accuracy along the curves; validation when no run has it (an ensemble's members are
    // scored on test only once they are finished).
    let on_test = rep.runs.iter().any(|r| r.curve.iter().any(|p| p.test_accuracy.is_some()));
    let metric = move |p: &alexnet_core::report::CurvePoint| if on_test { p.test_accuracy } else { p.val_accuracy };
    let metric_name = if on_test { "test accuracy" } else { "validation accuracy" };
    // One curve per setting: the mean over its folds/repeats at each evaluation step, shaded
    // from the lowest to the highest run (a single run is its own curve).
    let series = |x: &dyn Fn(&alexnet_core::report::RunReport, &alexnet_core::report::CurvePoint) -> f64| -> Vec<Series> {
        groups
            .iter()
            .map(|g| {
                let what = if backbones { format!("{} {}", g.backbone, g.policy) } else { g.policy.clone() };
                let what = match g.head_first {
                    Some(h) => format!("{what} · head first {h}"),
                    None => what,
                };
                let what = match &g.recipe {
                    Some(r) => format!("{what} · {r}"),
                    None => what,
                };
                let n = g.runs.len();
                let name = if several { format!("{} · {what}", g.backend) } else { what };
                let name = if n > 1 { format!("{name} (mean of {n}, range shaded)") } else { name };
                let steps = g.runs.iter().map(|r| r.curve.len()).min().unwrap_or(0);
                let (mut points, mut band) = (vec![], vec![]);
                for i in 0..steps {
                    let at: Vec<(f64, f64)> = g.runs.iter().filter_map(|r| metric(&r.curve[i]).map(|a| (x(r, &r.curve[i]), a))).collect();
                    if at.len() < n {
                        continue;
                    }
                    let xm = at.iter().map(|p| p.0).sum::<f64>() / n as f64;
                    let acc = at.iter().map(|p| p.1);
                    points.push((xm, acc.clone().sum::<f64>() / n as f64));
                    band.push((xm, acc.clone().fold(1.0, f64::min), acc.fold(0.0, f64::max)));
                }
                Series { name, points, band: if n > 1 { band } else { vec![] } }
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let what = match (several, backbones) {
        (true, true) => "backend, backbone and depth",
        (true, false) => "backend and fine-tune depth",
        (false, true) => "backbone and depth",
        (false, false) => "fine-tune depth",
    };
    let what = if rep.runs.iter().any(|r| r.recipe.is_some()) { format!("{what} and variant") } else { what.to_string() };
    // Other backbones' heads train with their own batch size.
    let batch = if backbones { String::new() } else { format!(" · batch {}", rep.batch_size) };
    let title = format!("{metric_name} by {what} · {}{batch}", rep.runs[0].device);
    // From a tenth below the lowest point to 1, so close curves stay apart.
    let lowest = rep.runs.iter().flat_map(|r| r.curve.iter().filter_map(metric)).fold(1.0f64, f64::min);
    let y_range = Some((((lowest - 0.05) * 10.0).floor().max(0.0) / 10.0, 1.0));
    let by_step = series(&|_, p| p.step as f64);
    written.extend(both(
        &out.join("accuracy_vs_step"),
        (1000, 620),
        &LineChart { title: &title, x_label: "training step", y_label: metric_name, series: &by_step, y_range, x_counts: false },
    )?);
    // The cache fill is part of what a run costs: each curve starts after its extraction.
    let by_time = series(&|r, p| r.timings.extract_seconds + p.train_seconds);
    written.extend(both(
        &out.join("accuracy_vs_time"),
        (1000, 620),
        &LineChart {
            title: &title,
            x_label: "wall-clock seconds: cache fill (extraction) + training, excl. evaluation",
            y_label: metric_name,
            series: &by_time,
            y_range,
            x_counts: false,
        },
    )?);
    // Paired differences to the best setting on validation, with their intervals.
    let paired = rep.paired();
    if !paired.is_empty() {
        let title = format!("paired differences over {} · {}", rep.spread_over(), rep.runs[0].device);
        written.extend(crate::plots::paired(&paired, &title, &out.join("paired"))?);
    }
    // Ensembles: accuracy against the number of members, per setting.
    let ensembles: Vec<Series> = groups
        .iter()
        .filter(|g| g.runs.iter().all(|r| !r.members.is_empty()))
        .flat_map(|g| crate::plots::ensemble_series(&g.runs, &format!("{}: ", g.label(several))))
        .collect();
    if !ensembles.is_empty() {
        let title = format!("ensembles of the first k members · {}", rep.runs[0].device);
        written.extend(crate::plots::ensemble_chart(&ensembles, &title, &out.join("ensemble"))?);
    }
    Ok(written)
}
