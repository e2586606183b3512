//! Progress reporting hooks, so front ends (progress bars, logs) stay out of the core.

use crate::report::CurvePoint;

/// Receives progress from long-running work. Every method has a no-op default.
pub trait Observer: Send + Sync {
    /// A phase with `total` units of work begins (`"extract"`, `"train"`, `"eval"`).
    fn begin(&self, _phase: &str, _total: u64) {}
    /// `n` more units of the current phase are done.
    fn advance(&self, _n: u64) {}
    /// The current phase is over.
    fn end(&self) {}
    /// A line worth telling the user (warnings, decisions).
    fn message(&self, _msg: &str) {}
    /// A training step finished with this mean loss.
    fn step(&self, _step: usize, _loss: f32) {}
    /// An evaluation point was recorded.
    fn eval(&self, _point: &CurvePoint) {}
}

/// Ignores everything.
pub struct Silent;
impl Observer for Silent {}
