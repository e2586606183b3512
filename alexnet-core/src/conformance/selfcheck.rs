//! The conformance suite at run time (`alexnet selfcheck`): the same checks the backends' test
//! suites instantiate, run on any backend and device against the f64 reference, each reported
//! as pass, fail (with its message) or skipped (with what it needs), with the worst `|Δ|/bound`
//! and the largest relative error it measured. Answers "does this machine compute correctly?"
//! where no test binary runs (a GPU machine without a Rust toolchain).

use super::Measured;
use crate::Backend;
use crate::backbone::Backbone;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Files the checks on real weights and photos read.
#[derive(Debug, Clone)]
pub struct Files {
    pub alexnet_weights: PathBuf,
    pub inception_weights: PathBuf,
    /// A folder of class sub-folders; `None` skips the checks on real photos.
    pub photos: Option<PathBuf>,
}

/// One check of the suite.
pub struct Check {
    /// Short name, as in the test suite (`sgd_steps_match_reference`).
    pub name: &'static str,
    /// What it shows, for the table.
    pub what: &'static str,
    run: fn(&dyn Backend, &Files),
    /// Why it cannot run with these files (`None`: it can).
    needs: fn(&Files) -> Option<String>,
}

fn nothing(_: &Files) -> Option<String> {
    None
}

fn missing(p: &Path, how: &str) -> Option<String> {
    (!p.is_file()).then(|| format!("{} missing: {how}", p.display()))
}

fn alexnet_files(f: &Files) -> Option<String> {
    missing(&f.alexnet_weights, "run `alexnet weights fetch`").or_else(|| f.photos.is_none().then(|| "needs photos: --data DIR".into()))
}

fn inception_files(f: &Files) -> Option<String> {
    missing(&f.inception_weights, "run `alexnet --backbone inception-v3 weights fetch`")
        .or_else(|| f.photos.is_none().then(|| "needs photos: --data DIR".into()))
}

macro_rules! check {
    ($name:ident, $what:expr) => {
        Check { name: stringify!($name), what: $what, run: |b, _| super::$name(b), needs: nothing }
    };
}

/// The checks for `backbone`: AlexNet's (features, logits, optimiser steps, gradients, state and
/// checkpoints, freezing, the graph runner, real weights on real photos), or for Inception-v3 its
/// network on the primitive ops, seeded and with the real weights.
pub fn checks(backbone: Backbone) -> Vec<Check> {
    let ops = Check {
        name: "ops_match_reference",
        what: "primitive ops (conv, pools, concat, linear)",
        run: |b, _| super::net::ops_match_reference(b),
        needs: nothing,
    };
    match backbone {
        Backbone::AlexNet => vec![
            check!(extract_matches_reference, "features at every cut (pool1 … pool5)"),
            check!(logits_match_reference, "logits from images and from pool5"),
            check!(sgd_steps_match_reference, "SGD steps, fc6–fc8 (loss, updates)"),
            check!(label_smoothing_steps_match_reference, "SGD steps with label smoothing 0.1"),
            check!(mixup_steps_match_reference, "SGD steps on mixed targets (mixup)"),
            check!(adam_steps_match_reference, "Adam steps, fc7–fc8"),
            check!(restore_resets_the_optimizer, "restoring weights resets the optimiser"),
            check!(train_state_round_trips, "optimiser state round trip, bit-identical"),
            check!(wrong_update_rules_fail, "wrong update rules fail these bounds"),
            check!(conv_step_follows_the_gradient, "conv5 step against finite differences"),
            check!(checkpoint_round_trips, "checkpoint round trip, bit-identical logits"),
            check!(every_policy_trains, "every freeze policy, frozen layers unchanged"),
            ops,
            Check {
                name: "alexnet_graph_matches_reference",
                what: "AlexNet graph on the primitive ops, pool5",
                run: |b, _| super::net::alexnet_graph_matches_reference(b),
                needs: nothing,
            },
            Check {
                name: "real_weights_and_photos",
                what: "pretrained conv weights on real photos, pool5",
                run: |b, f| super::real_weights_and_photos(b, &f.alexnet_weights, f.photos.as_deref().expect("checked")),
                needs: alexnet_files,
            },
        ],
        Backbone::InceptionV3 => vec![
            ops,
            Check {
                name: "inception_matches_reference",
                what: "Inception-v3 to pool3, seeded weights",
                run: |b, _| super::net::inception_matches_reference(b),
                needs: nothing,
            },
            Check {
                name: "inception_real_weights",
                what: "Inception-v3 to pool3, real weights and photos",
                run: |b, f| super::net::inception_real_weights(b, &f.inception_weights, f.photos.as_deref().expect("checked")),
                needs: inception_files,
            },
        ],
    }
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub check: &'static str,
    pub what: &'static str,
    pub status: Status,
    /// `None` for checks of exact equality (state, checkpoints, freezing) and skipped ones.
    pub measured: Option<Measured>,
    pub seconds: f64,
    /// The failure message, or why it was skipped.
    pub detail: Option<String>,
}

/// Runs `checks` on `b` one after another, calling `done` after each. A failing check's panic is
/// caught and reported (the default panic message is silenced meanwhile); the others still run.
pub fn run(b: &dyn Backend, checks: &[Check], files: &Files, done: &mut dyn FnMut(&Outcome)) -> Vec<Outcome> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let quiet = super::QUIET.swap(true, std::sync::atomic::Ordering::Relaxed);
    let mut out = Vec::new();
    for c in checks {
        let start = Instant::now();
        super::take_measured();
        let (status, detail) = match (c.needs)(files) {
            Some(why) => (Status::Skip, Some(why)),
            None => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (c.run)(b, files))) {
                Ok(()) => (Status::Pass, None),
                Err(p) => {
                    let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                    (Status::Fail, Some(msg.unwrap_or_else(|| "panicked".into())))
                }
            },
        };
        let measured = if status == Status::Skip { None } else { super::take_measured() };
        let o = Outcome { check: c.name, what: c.what, status, measured, seconds: start.elapsed().as_secs_f64(), detail };
        done(&o);
        out.push(o);
    }
    std::panic::set_hook(hook);
    super::QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_say_what_they_need_and_names_match_the_suite() {
        let f = Files { alexnet_weights: "/nonexistent/a.safetensors".into(), inception_weights: "/nonexistent/i.safetensors".into(), photos: None };
        let c = checks(Backbone::AlexNet);
        assert!(alexnet_files(&f).unwrap().contains("alexnet weights fetch"));
        assert!(inception_files(&f).unwrap().contains("--backbone inception-v3 weights fetch"));
        // Every test the macro instantiates is here under its own name (the two Inception ones
        // under inception-v3), so the run-time suite is the test suite.
        let src = include_str!("../conformance.rs");
        let macro_body = &src[src.find("macro_rules! conformance_tests").unwrap()..];
        let inc = checks(Backbone::InceptionV3);
        for name in macro_body.lines().filter_map(|l| l.trim().strip_prefix("fn ").and_then(|r| r.strip_suffix("() {"))) {
            assert!(c.iter().chain(&inc).any(|k| k.name == name), "conformance test {name} has no selfcheck entry");
        }
        assert_eq!(c.len() + inc.len() - 1, macro_body.matches("#[test]").count());
    }

    /// A backend that cannot build anything.
    struct Broken;

    impl Backend for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }
        fn device_name(&self) -> String {
            "nowhere".into()
        }
        fn build(&self, _: &crate::WeightSet, _: &crate::ModelConfig) -> crate::Result<Box<dyn crate::Model>> {
            Err(crate::Error::Config("this backend builds nothing".into()))
        }
        fn extractor(
            &self,
            _: &crate::net::Graph,
            _: &str,
            _: &std::collections::BTreeMap<String, crate::HostTensor>,
        ) -> crate::Result<Box<dyn crate::net::Extractor>> {
            Err(crate::Error::Config("this backend runs no graph".into()))
        }
    }

    #[test]
    fn failures_are_reported_and_the_rest_still_runs() {
        let f = Files { alexnet_weights: "/nonexistent/a.safetensors".into(), inception_weights: "/nonexistent/i.safetensors".into(), photos: None };
        let wanted = ["checkpoint_round_trips", "ops_match_reference", "real_weights_and_photos"];
        let c: Vec<Check> = checks(Backbone::AlexNet).into_iter().filter(|c| wanted.contains(&c.name)).collect();
        let mut seen = 0;
        let out = run(&Broken, &c, &f, &mut |_| seen += 1);
        assert_eq!(seen, 3);
        let status: Vec<Status> = out.iter().map(|o| o.status).collect();
        assert_eq!(status, [Status::Fail, Status::Fail, Status::Skip]);
        assert!(out[0].detail.as_deref().unwrap().contains("builds nothing"), "{:?}", out[0].detail);
        assert!(out[1].detail.as_deref().unwrap().contains("runs no graph"), "{:?}", out[1].detail);
        assert!(out[2].detail.as_deref().unwrap().contains("missing"), "{:?}", out[2].detail);
        assert!(!super::super::QUIET.load(std::sync::atomic::Ordering::Relaxed), "notes left silenced");
    }
}
