//! SGD with momentum and Adam, exactly as `torch.optim` defines them (L2 weight decay added to
//! the gradient). On CPU the updates are fused, in-place and parallel (one or two passes over
//! memory instead of seven); elsewhere they are plain candle tensor ops.

use alexnet_core::{Optimizer, OptimizerConfig};
use candle_core::{CpuStorage, Layout, Result, Tensor, Var};
use rayon::prelude::*;

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
    /// The buffers (momentum or first moment, second moment) and the step count.
    pub fn parts(&self) -> ([Option<&Tensor>; 2], i32) {
        ([self.m.as_ref(), self.v.as_ref()], self.steps)
    }

    /// State restored from saved buffers (fresh storage: the CPU updates work in place).
    pub fn restore(m: Option<Tensor>, v: Option<Tensor>, steps: i32) -> Self {
        Self { m, v, steps }
    }

    /// Applies one update to `var` given its gradient `g`, with learning rate `lr`.
    pub fn update(&mut self, cfg: &OptimizerConfig, var: &Var, g: &Tensor, lr: f64) -> Result<()> {
        self.steps += 1;
        let wd = cfg.weight_decay;
        let p = var.as_detached_tensor();
        let g = g.detach().contiguous()?;
        if p.device().is_cpu() {
            return self.update_cpu(cfg, &p, &g, lr as f32);
        }
        // Detached tensors: optimiser arithmetic must not record a graph.
        let g = if wd > 0.0 { (g + (&p * wd as f64)?)? } else { g };
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
                let (bc1, bc2) = (1.0 - b1.powi(self.steps), 1.0 - b2.powi(self.steps));
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

    fn update_cpu(&mut self, cfg: &OptimizerConfig, p: &Tensor, g: &Tensor, lr: f32) -> Result<()> {
        let wd = cfg.weight_decay;
        match cfg.optimizer {
            Optimizer::Sgd { momentum } => {
                let buf = match &self.m {
                    Some(m) if momentum > 0.0 => {
                        m.inplace_op3(g, p, &Fused::Momentum { momentum, wd })?;
                        m.clone()
                    }
                    _ => {
                        // First step: buf = g + wd·p (torch initialises the buffer with it).
                        let b = g.copy()?;
                        b.inplace_op3(g, p, &Fused::Momentum { momentum: 0.0, wd })?;
                        b
                    }
                };
                p.inplace_op2(&buf, &Fused::Descend { lr })?;
                if momentum > 0.0 {
                    self.m = Some(buf);
                }
            }
            Optimizer::Adam { beta1, beta2, eps } => {
                let m = self.m.get_or_insert_with(|| g.zeros_like().expect("zeros")).clone();
                let v = self.v.get_or_insert_with(|| g.zeros_like().expect("zeros")).clone();
                m.inplace_op3(g, p, &Fused::Moment { beta: beta1, wd, square: false })?;
                v.inplace_op3(g, p, &Fused::Moment { beta: beta2, wd, square: true })?;
                let bc1 = 1.0 - (beta1 as f64).powi(self.steps);
                let bc2 = 1.0 - (beta2 as f64).powi(self.steps);
                p.inplace_op3(&m, &v, &Fused::AdamStep { lr: (lr as f64 / bc1) as f32, bc2_sqrt: bc2.sqrt() as f32, eps })?;
            }
        }
        Ok(())
    }
}

/// The fused element-wise updates (CPU).
enum Fused {
    /// dst = momentum·dst + (g + wd·p)
    Momentum { momentum: f32, wd: f32 },
    /// dst -= lr·src
    Descend { lr: f32 },
    /// dst = β·dst + (1−β)·h, h = g + wd·p, squared when `square`
    Moment { beta: f32, wd: f32, square: bool },
    /// dst -= lr · m / (sqrt(v)/bc2_sqrt + eps)
    AdamStep { lr: f32, bc2_sqrt: f32, eps: f32 },
}

const CHUNK: usize = 1 << 16;

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("optimizer: non-contiguous tensor".into()))?;
    Ok(&s.as_slice::<f32>()?[a..b])
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("optimizer: non-contiguous tensor".into()))?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        _ => Err(candle_core::Error::Msg("optimizer: f32 parameters only".into())),
    }
}

impl candle_core::InplaceOp2 for Fused {
    fn name(&self) -> &'static str {
        "fused-optimizer"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (dst, src) = (slice_mut(s1, l1)?, slice(s2, l2)?);
        let Fused::Descend { lr } = *self else { candle_core::bail!("binary fused op expected") };
        dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| {
            for (d, s) in d.iter_mut().zip(s) {
                *d -= lr * s;
            }
        });
        Ok(())
    }
}

impl candle_core::InplaceOp3 for Fused {
    fn name(&self) -> &'static str {
        "fused-optimizer"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<()> {
        let (dst, a, b) = (slice_mut(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let it = dst.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK));
        match *self {
            Fused::Momentum { momentum, wd } => it.for_each(|((d, g), p)| {
                for ((d, g), p) in d.iter_mut().zip(g).zip(p) {
                    *d = momentum * *d + (g + wd * p);
                }
            }),
            Fused::Moment { beta, wd, square } => it.for_each(|((d, g), p)| {
                for ((d, g), p) in d.iter_mut().zip(g).zip(p) {
                    let h = g + wd * p;
                    *d = beta * *d + (1.0 - beta) * if square { h * h } else { h };
                }
            }),
            Fused::AdamStep { lr, bc2_sqrt, eps } => it.for_each(|((d, m), v)| {
                for ((d, m), v) in d.iter_mut().zip(m).zip(v) {
                    *d -= lr * m / (v.sqrt() / bc2_sqrt + eps);
                }
            }),
            Fused::Descend { .. } => candle_core::bail!("ternary fused op expected"),
        }
        Ok(())
    }
}
