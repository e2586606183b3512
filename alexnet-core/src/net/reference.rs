//! The primitive ops in f64, each value with a bound on how far an f32 implementation may deviate
//! from it (the rounding model of [`crate::reference`]): the oracle the conformance suite checks
//! every backend's [`Kernels`] against, on single ops and on whole networks.

use super::graph::{Conv2d, Pool};
use super::run::Kernels;
use crate::reference::gamma;
use crate::tensor::HostTensor;
use crate::{Error, Result};
use rayon::prelude::*;

/// A tensor of f64 values with per-element bounds.
#[derive(Debug, Clone)]
pub struct RefTensor {
    pub shape: Vec<usize>,
    pub value: Vec<f64>,
    pub bound: Vec<f64>,
}

impl RefTensor {
    fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self { shape, value: vec![0.0; n], bound: vec![0.0; n] }
    }

    fn dims4(&self) -> Result<(usize, usize, usize, usize)> {
        match self.shape[..] {
            [n, c, h, w] => Ok((n, c, h, w)),
            ref s => Err(Error::Config(format!("reference: expected [N, C, H, W], got {s:?}"))),
        }
    }
}

/// The f64 reference "backend".
#[derive(Debug, Clone, Copy, Default)]
pub struct Reference;

/// ReLU is 1-Lipschitz: the bound passes through (as in [`crate::reference`]).
fn relu(v: &mut f64, _b: &mut f64) {
    *v = v.max(0.0);
}

/// The bound of an f32 affine output `s` (a `k`-term sum whose squared terms sum to `sq`, plus the
/// bias), with `prop` = Σ w²e² from the inputs' bounds: as `crate::reference`'s affine maps.
fn affine_bound(k: usize, s: f64, sq: f64, bias: f64, prop: f64) -> f64 {
    let round = gamma(k) * ((sq + bias * bias).sqrt() + s.abs());
    (prop + round * round).sqrt() + crate::reference::U * s.abs()
}

impl Kernels for Reference {
    type Tensor = RefTensor;

    fn name(&self) -> &'static str {
        "reference"
    }

    fn upload(&self, t: &HostTensor) -> Result<RefTensor> {
        Ok(RefTensor { shape: t.shape.clone(), value: t.data.iter().map(|v| *v as f64).collect(), bound: vec![0.0; t.data.len()] })
    }

    fn download(&self, t: &RefTensor) -> Result<HostTensor> {
        Ok(HostTensor { shape: t.shape.clone(), data: t.value.iter().map(|v| *v as f32).collect() })
    }

    fn conv2d(&self, x: &RefTensor, w: &RefTensor, b: Option<&RefTensor>, c: &Conv2d) -> Result<RefTensor> {
        let (n, ci, h, wd) = x.dims4()?;
        let (co, cig, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
        if ci != cig * c.groups || co != c.out_channels {
            return Err(Error::Config(format!("reference conv: input {:?}, weight {:?}, {} groups", x.shape, w.shape, c.groups)));
        }
        let ((sh, sw), (ph, pw)) = (c.stride, c.padding);
        let (oh, ow) = ((h + 2 * ph - kh) / sh + 1, (wd + 2 * pw - kw) / sw + 1);
        let mut y = RefTensor::zeros(vec![n, co, oh, ow]);
        let k = cig * kh * kw;
        let cog = co / c.groups;
        let plane = oh * ow;
        // One output plane per task, in the same order of accumulation as a serial loop.
        y.value.par_chunks_mut(plane).zip(y.bound.par_chunks_mut(plane)).enumerate().for_each(|(idx, (yv, yb))| {
            let (ni, o) = (idx / co, idx % co);
            let (mut sum, mut sq, mut prop) = (vec![0.0; plane], vec![0.0; plane], vec![0.0; plane]);
            let grp = o / cog;
            for cl in 0..cig {
                let cin = grp * cig + cl;
                let xoff = (ni * ci + cin) * h * wd;
                for ky in 0..kh {
                    for kx in 0..kw {
                        let wv = w.value[((o * cig + cl) * kh + ky) * kw + kx];
                        for oy in 0..oh {
                            let iy = (oy * sh + ky) as isize - ph as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            let row = xoff + iy as usize * wd;
                            for ox in 0..ow {
                                let ix = (ox * sw + kx) as isize - pw as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                let (xv, xe) = (x.value[row + ix as usize], x.bound[row + ix as usize]);
                                let t = wv * xv;
                                let p = oy * ow + ox;
                                sum[p] += t;
                                sq[p] += t * t;
                                prop[p] += wv * wv * xe * xe;
                            }
                        }
                    }
                }
            }
            let bias = b.map_or(0.0, |b| b.value[o]);
            for p in 0..plane {
                let s = sum[p] + bias;
                let (mut v, mut e) = (s, affine_bound(k, s, sq[p], bias, prop[p]));
                if c.relu {
                    relu(&mut v, &mut e);
                }
                yv[p] = v;
                yb[p] = e;
            }
        });
        Ok(y)
    }

    fn max_pool2d(&self, x: &RefTensor, p: &Pool) -> Result<RefTensor> {
        pool(x, p, true)
    }

    fn avg_pool2d(&self, x: &RefTensor, p: &Pool) -> Result<RefTensor> {
        pool(x, p, false)
    }

    fn concat(&self, xs: &[&RefTensor]) -> Result<RefTensor> {
        let (n, _, h, w) = xs[0].dims4()?;
        let c: usize = xs.iter().map(|x| x.shape[1]).sum();
        let mut y = RefTensor { shape: vec![n, c, h, w], value: Vec::with_capacity(n * c * h * w), bound: Vec::with_capacity(n * c * h * w) };
        for ni in 0..n {
            for x in xs {
                let len = x.shape[1] * h * w;
                y.value.extend_from_slice(&x.value[ni * len..(ni + 1) * len]);
                y.bound.extend_from_slice(&x.bound[ni * len..(ni + 1) * len]);
            }
        }
        Ok(y)
    }

    fn relu(&self, x: &RefTensor) -> Result<RefTensor> {
        let mut y = x.clone();
        for (v, b) in y.value.iter_mut().zip(y.bound.iter_mut()) {
            relu(v, b);
        }
        Ok(y)
    }

    fn flatten(&self, x: &RefTensor) -> Result<RefTensor> {
        let mut y = x.clone();
        y.shape = vec![x.shape[0], x.shape[1..].iter().product()];
        Ok(y)
    }

    fn linear(&self, x: &RefTensor, w: &RefTensor, b: &RefTensor, relu_after: bool) -> Result<RefTensor> {
        let (n, fin, fout) = (x.shape[0], x.shape[1], w.shape[0]);
        let mut y = RefTensor::zeros(vec![n, fout]);
        for ni in 0..n {
            let xr = &x.value[ni * fin..(ni + 1) * fin];
            let xe = &x.bound[ni * fin..(ni + 1) * fin];
            for o in 0..fout {
                let wr = &w.value[o * fin..(o + 1) * fin];
                let (mut s, mut sq, mut prop) = (b.value[o], 0.0, 0.0);
                for i in 0..fin {
                    let t = wr[i] * xr[i];
                    s += t;
                    sq += t * t;
                    prop += wr[i] * wr[i] * xe[i] * xe[i];
                }
                let (mut v, mut e) = (s, affine_bound(fin, s, sq, b.value[o], prop));
                if relu_after {
                    relu(&mut v, &mut e);
                }
                y.value[ni * fout + o] = v;
                y.bound[ni * fout + o] = e;
            }
        }
        Ok(y)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

/// Max or average pooling. Max passes the window's largest bound through (1-Lipschitz); the
/// average adds the rounding of a k-term sum and a division to the mean of the input bounds.
fn pool(x: &RefTensor, p: &Pool, max: bool) -> Result<RefTensor> {
    let (n, c, h, w) = x.dims4()?;
    let (Some(oh), Some(ow)) = (p.out_side(h, 0), p.out_side(w, 1)) else {
        return Err(Error::Config(format!("reference pool: window {:?} larger than {h}×{w}", p.kernel)));
    };
    let ((kh, kw), (sh, sw), (ph, pw)) = (p.kernel, p.stride, p.padding);
    let mut y = RefTensor::zeros(vec![n, c, oh, ow]);
    for plane in 0..n * c {
        let off = plane * h * w;
        for oy in 0..oh {
            for ox in 0..ow {
                let (y0, x0) = ((oy * sh) as isize - ph as isize, (ox * sw) as isize - pw as isize);
                let (mut best, mut best_b, mut sum, mut asum, mut bsum, mut count) = (f64::NEG_INFINITY, 0.0f64, 0.0, 0.0, 0.0, 0usize);
                for iy in y0.max(0)..(y0 + kh as isize).min(h as isize) {
                    for ix in x0.max(0)..(x0 + kw as isize).min(w as isize) {
                        let i = off + iy as usize * w + ix as usize;
                        let (v, e) = (x.value[i], x.bound[i]);
                        if v > best {
                            best = v;
                        }
                        best_b = best_b.max(e);
                        sum += v;
                        asum += v.abs();
                        bsum += e;
                        count += 1;
                    }
                }
                let o = plane * oh * ow + oy * ow + ox;
                if max {
                    y.value[o] = best;
                    y.bound[o] = best_b;
                } else {
                    // PyTorch's divisor: the window clipped to the padded input, or to the input.
                    let div = if p.count_include_pad {
                        let ye = (y0 + kh as isize).min((h + ph) as isize) - y0;
                        let xe = (x0 + kw as isize).min((w + pw) as isize) - x0;
                        (ye * xe) as f64
                    } else {
                        count as f64
                    };
                    let mean = sum / div;
                    y.value[o] = mean;
                    // A k-term sum's rounding is at most γ(k)·(‖terms‖₂ + |sum|) ≤ 2γ(k)·Σ|v|; one more u for the division.
                    y.bound[o] = bsum / div + (2.0 * gamma(count) + crate::reference::U) * asum / div;
                }
            }
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{GraphExtractor, Plan, alexnet};
    use crate::{AlexNetSpec, WeightSet};
    use rand::{Rng, SeedableRng};

    fn images(n: usize, side: usize, seed: u64) -> HostTensor {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        HostTensor { shape: vec![n, 3, side, side], data: (0..n * 3 * side * side).map(|_| r.random_range(-2.0..2.0)).collect() }
    }

    #[test]
    fn the_graph_runner_reproduces_the_layer_table_reference() {
        // Two independent f64 AlexNets, the layer-table one and the graph walked by the runner,
        // must agree value for value and bound for bound at every cut.
        let spec = AlexNetSpec::new(3);
        let w = WeightSet::initialised(&spec, 7);
        let g = alexnet(&spec).unwrap();
        let x = images(1, 224, 1);
        let params: std::collections::BTreeMap<String, RefTensor> =
            w.tensors().iter().map(|(k, t)| (k.clone(), Reference.upload(t).unwrap())).collect();
        for (cut, layers) in [("pool2", 2), ("conv4", 4), ("pool5", 5), ("fc7", 7)] {
            let plan = Plan::new(&g, cut).unwrap();
            let y = plan.run(&Reference, &params, Reference.upload(&x).unwrap()).unwrap();
            let want = crate::reference::forward_bounded(&crate::reference::Bounded::exact(&x), &w, 0, layers);
            assert_eq!(y.shape, want.value.shape, "{cut}");
            let dv = y.value.iter().zip(&want.value.data).map(|(a, b)| (a - b).abs() / b.abs().max(1e-6)).fold(0.0, f64::max);
            let db = y.bound.iter().zip(&want.bound.data).map(|(a, b)| (a - b).abs() / b.abs().max(1e-30)).fold(0.0, f64::max);
            assert!(dv < 1e-9, "{cut}: values differ by {dv}");
            assert!(db < 0.5, "{cut}: bounds differ by a factor {db}");
        }
        let mut e = GraphExtractor::new(Reference, &g, "pool5", w.tensors()).unwrap();
        assert_eq!(e.extract(&x).unwrap().shape, vec![1, 9216]);
        use crate::net::Extractor;
        assert!(e.extract(&images(1, 225, 1)).unwrap_err().to_string().contains("expects images"));
    }

    #[test]
    fn pools_follow_pytorchs_padding_rules() {
        // 1×1×3×3 input 1..9; 3×3 stride-1 windows, padding 1.
        let x = HostTensor { shape: vec![1, 1, 3, 3], data: (1..=9).map(|v| v as f32).collect() };
        let x = Reference.upload(&x).unwrap();
        let p = crate::net::Pool::new(3, 1).with_padding(1);
        let corner_excl = Reference.avg_pool2d(&x, &p.excluding_pad()).unwrap().value[0];
        let corner_incl = Reference.avg_pool2d(&x, &p).unwrap().value[0];
        assert_eq!(corner_excl, (1.0 + 2.0 + 4.0 + 5.0) / 4.0); // torch: count_include_pad=False
        assert_eq!(corner_incl, (1.0 + 2.0 + 4.0 + 5.0) / 9.0);
        let neg = RefTensor { value: x.value.iter().map(|v| -v).collect(), ..x.clone() };
        // Max-pool pads with −∞: the corner of an all-negative input is its own neighbourhood's max.
        assert_eq!(Reference.max_pool2d(&neg, &p).unwrap().value[0], -1.0);
    }
}
