//! `alexnet selfcheck`: the conformance suite at run time, as a table (or JSON) per backend.

use crate::args::SelfcheckArgs;
use alexnet_core::Backend;
use alexnet_core::backbone::Backbone;
use alexnet_core::conformance::selfcheck::{self, Files, Outcome, Status};
use anyhow::{Result, bail};
use std::io::Write;

fn number(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.2e}"))
}

fn row(o: &Outcome) -> String {
    let status = match o.status {
        Status::Pass => "pass",
        Status::Fail => "FAIL",
        Status::Skip => "skip",
    };
    let (ratio, rel) = match (o.status, o.measured) {
        (Status::Skip, _) => ("—".to_string(), "—".to_string()),
        (_, m) => (number(m.map(|m| m.worst_ratio)), number(m.map(|m| m.max_relative))),
    };
    let mut line = format!("{:<46} {status:<5} {ratio:>10} {rel:>10} {:>7.1}s", o.what, o.seconds);
    if let Some(d) = &o.detail {
        // A failure's first line is its message; the rest (long lists) stays in --json.
        line += &format!("\n    {}", d.lines().next().unwrap_or(""));
    }
    line
}

pub fn run(backends: &[Box<dyn Backend>], backbone: Backbone, args: SelfcheckArgs) -> Result<()> {
    if let Some(d) = &args.data {
        if !d.is_dir() {
            bail!("--data {}: not a folder (a folder of class sub-folders with photos)", d.display());
        }
    }
    if let Some(w) = &args.weights {
        if !w.is_file() {
            bail!("--weights {}: no such file", w.display());
        }
    }
    let weights = |b: Backbone| args.weights.clone().filter(|_| backbone == b).unwrap_or_else(|| b.default_weights());
    let files = Files { alexnet_weights: weights(Backbone::AlexNet), inception_weights: weights(Backbone::InceptionV3), photos: args.data.clone() };
    let checks = selfcheck::checks(backbone);
    let mut failed = 0;
    let mut reports = Vec::new();
    for b in backends {
        if !args.json {
            println!("\nalexnet selfcheck · backend {} · device {} · {backbone} · against the f64 reference", b.name(), b.device_name());
            println!("{:<46} {:<5} {:>10} {:>10} {:>8}", "check", "", "|Δ|/bound", "rel. err", "time");
        }
        let outcomes = selfcheck::run(b.as_ref(), &checks, &files, &mut |o| {
            if !args.json {
                println!("{}", row(o));
                let _ = std::io::stdout().flush();
            }
        });
        let count = |s| outcomes.iter().filter(|o| o.status == s).count();
        let (pass, fail, skip) = (count(Status::Pass), count(Status::Fail), count(Status::Skip));
        failed += fail;
        if args.json {
            reports.push(serde_json::json!({
                "backend": b.name(), "device": b.device_name(), "backbone": backbone.to_string(),
                "passed": pass, "failed": fail, "skipped": skip, "checks": outcomes,
            }));
        } else {
            let worst = outcomes.iter().filter_map(|o| o.measured).fold(0f64, |m, x| m.max(x.worst_ratio));
            println!(
                "{pass} passed, {fail} failed, {skip} skipped; worst |Δ|/bound {worst:.3} (a check passes when every element is \
                 within its f32 rounding bound of the exact result, |Δ|/bound ≤ 1; — marks checks of bit-identical results)"
            );
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    if failed > 0 {
        bail!("{failed} check(s) failed: this backend/device does not compute what the reference does");
    }
    Ok(())
}
