//! indicatif progress bars behind the core's `Observer`.

use alexnet_core::observer::Observer;
use alexnet_core::report::CurvePoint;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Mutex;

/// Shows one bar per phase on stderr, and evaluation points as lines above it.
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
    quiet: bool,
    /// Without a terminal: (phase, total, last reported tenth), for plain progress lines.
    plain: Mutex<(String, u64, u64)>,
    /// Whether an evaluation line was printed during the previous tenth of training (or training
    /// just began): a plain progress line is printed only when none was (sparse `--eval-every`).
    /// The evaluation at a step comes after its `advance`, so the previous tenth is what tells.
    evaluated: std::sync::atomic::AtomicBool,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Self { bar: Mutex::new(None), quiet, plain: Mutex::new((String::new(), 0, 0)), evaluated: false.into() }
    }

    fn println(&self, line: &str) {
        match self.bar.lock().unwrap().as_ref() {
            // A hidden bar swallows println: write plain lines when not on a terminal.
            Some(b) if !self.quiet => b.println(line),
            _ => eprintln!("{line}"),
        }
    }
}

impl Observer for Bars {
    fn begin(&self, phase: &str, total: u64) {
        let bar = if self.quiet { ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden()) } else { ProgressBar::new(total) };
        let unit = if phase == "train" { "steps" } else { "images" };
        bar.set_style(
            ProgressStyle::with_template(&format!("{{prefix:>8}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}} {{msg}}"))
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(phase.to_string());
        *self.bar.lock().unwrap() = Some(bar);
        *self.plain.lock().unwrap() = (phase.to_string(), total, 0);
        self.evaluated.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn advance(&self, n: u64) {
        if let Some(b) = self.bar.lock().unwrap().as_ref() {
            b.inc(n);
            let mut p = self.plain.lock().unwrap();
            // Without a terminal: a plain line each tenth of extraction, and each tenth of
            // training that printed no evaluation line of its own.
            let tenth = b.position() * 10 / p.1.max(1);
            if self.quiet && tenth > p.2 && (p.0 == "extract" || p.0 == "train") {
                p.2 = tenth;
                let evaluated = self.evaluated.swap(false, std::sync::atomic::Ordering::Relaxed);
                if p.0 == "extract" {
                    eprintln!("{}: {}/{} ({:.1}/s)", p.0, b.position(), p.1, b.per_sec());
                } else if !evaluated {
                    eprintln!("{}: step {}/{} ({:.2} steps/s, {})", p.0, b.position(), p.1, b.per_sec(), b.message());
                }
            }
        }
    }

    fn end(&self) {
        if let Some(b) = self.bar.lock().unwrap().take() {
            b.finish_and_clear();
        }
    }

    fn message(&self, msg: &str) {
        self.println(msg);
    }

    fn step(&self, _step: usize, loss: f32) {
        if let Some(b) = self.bar.lock().unwrap().as_ref() {
            b.set_message(format!("loss {loss:.3}"));
        }
    }

    fn eval(&self, p: &CurvePoint) {
        self.evaluated.store(true, std::sync::atomic::Ordering::Relaxed);
        let pct = |v: Option<f64>| v.map(|v| format!("{:.1}%", 100.0 * v)).unwrap_or_else(|| "-".into());
        self.println(&format!(
            "step {:>5}  epoch {:>5.2}  lr {:.2e}  loss {:.4}  train {:.1}%  val {}  test {}  ({:.0}s training)",
            p.step,
            p.epoch,
            p.lr,
            p.train_loss,
            100.0 * p.train_accuracy,
            pct(p.val_accuracy),
            pct(p.test_accuracy),
            p.train_seconds
        ));
    }
}
