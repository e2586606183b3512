//! SGD with momentum and Adam, exactly as `torch.optim` defines them (L2 weight decay added to
//! the gradient), as candle tensor ops so they run on any device.

use alexnet_core::{Optimizer, OptimizerConfig};
use candle_core::{Result, Tensor, Var};

/// Per-parameter optimiser state.
#[derive(Default)]
pub struct ParamState {
    /// SGD momentum buffer, or Adam's first moment.
    m: Option<Tensor>,
    /// Adam's second moment.
    v: Option<Tensor>,
    steps: i32,
}

impl ParamState {
    /// Applies one update to `p` given its gradient `g`, with learning rate `lr`.
    pub fn update(&mut self, cfg: &OptimizerConfig, var: &Var, g: &Tensor, lr: f64) -> Result<()> {
        // Detached: optimiser arithmetic must not record a graph, or every step's graph would
        // stay alive through the momentum buffers.
        let p = var.as_detached_tensor();
        let g = g.detach();
        let g = if cfg.weight_decay > 0.0 { (g + (&p * cfg.weight_decay as f64)?)? } else { g };
        self.steps += 1;
        let new = match cfg.optimizer {
            Optimizer::Sgd { momentum } => {
                let buf = match (&self.m, momentum > 0.0) {
                    (Some(m), true) => ((m * momentum as f64)? + &g)?,
                    _ => g,
                };
                let new = (&p - (&buf * lr)?)?;
                if momentum > 0.0 {
                    self.m = Some(buf);
                }
                new
            }
            Optimizer::Adam { beta1, beta2, eps } => {
                let (b1, b2) = (beta1 as f64, beta2 as f64);
                let m = match &self.m {
                    Some(m) => ((m * b1)? + (&g * (1.0 - b1))?)?,
                    None => (&g * (1.0 - b1))?,
                };
                let v = match &self.v {
                    Some(v) => ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                    None => (g.sqr()? * (1.0 - b2))?,
                };
                let bc1 = 1.0 - b1.powi(self.steps);
                let bc2 = 1.0 - b2.powi(self.steps);
                // torch: p -= lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps)
                let denom = ((v.sqrt()? / bc2.sqrt())? + eps as f64)?;
                let new = (&p - ((&m / &denom)? * (lr / bc1))?)?;
                self.m = Some(m);
                self.v = Some(v);
                new
            }
        };
        var.set(&new)
    }
}
