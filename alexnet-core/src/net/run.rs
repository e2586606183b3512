//! The primitive ops a backend implements, and the one runner that walks a graph with them.

use super::graph::{Conv2d, Graph, Op, Pool, ValueId};
use crate::tensor::HostTensor;
use crate::{Error, Result};
use std::collections::BTreeMap;

/// The primitive operations of [`Op`] on one device, for inference (frozen parts of a network).
/// Tensors are `[N, C, H, W]` (or `[N, F]` after flatten), row-major, f32.
pub trait Kernels: Send {
    /// The backend's tensor on its device.
    type Tensor: Send;
    /// Short name of the backend (`candle`, `tch`, `burn`, `reference`).
    fn name(&self) -> &'static str;
    fn upload(&self, t: &HostTensor) -> Result<Self::Tensor>;
    fn download(&self, t: &Self::Tensor) -> Result<HostTensor>;
    /// Convolution (+ bias, + ReLU when `c.relu`).
    fn conv2d(&self, x: &Self::Tensor, w: &Self::Tensor, b: Option<&Self::Tensor>, c: &Conv2d) -> Result<Self::Tensor>;
    /// Max-pooling; padding is −∞.
    fn max_pool2d(&self, x: &Self::Tensor, p: &Pool) -> Result<Self::Tensor>;
    /// Average pooling, dividing by the window's size or (without `count_include_pad`) by its
    /// in-bounds part.
    fn avg_pool2d(&self, x: &Self::Tensor, p: &Pool) -> Result<Self::Tensor>;
    /// Concatenation along channels (dimension 1).
    fn concat(&self, xs: &[&Self::Tensor]) -> Result<Self::Tensor>;
    fn relu(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// `[N, ...]` → `[N, prod(...)]`.
    fn flatten(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// `x·Wᵀ + b` (+ ReLU).
    fn linear(&self, x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor, relu: bool) -> Result<Self::Tensor>;
    /// Waits for queued device work (a no-op on CPU).
    fn synchronize(&self) -> Result<()>;
}

/// A graph's prefix up to a cut, ready to run: evaluation order, when each value can be dropped,
/// and the parameters it needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub graph: Graph,
    /// The value the plan computes.
    pub output: ValueId,
    /// `drop_after[i]`: values whose last reader is node `i`.
    pub drop_after: Vec<Vec<ValueId>>,
}

impl Plan {
    /// The prefix of `graph` that computes cut `cut`.
    pub fn new(graph: &Graph, cut: &str) -> Result<Self> {
        let output = graph.cut(cut)?.value;
        let mut last = vec![None; output + 1];
        for (i, n) in graph.nodes[..=output].iter().enumerate() {
            for x in &n.inputs {
                last[*x] = Some(i);
            }
        }
        let mut drop_after = vec![vec![]; output + 1];
        for (v, l) in last.iter().enumerate() {
            if let Some(l) = l {
                drop_after[*l].push(v);
            }
        }
        Ok(Self { graph: graph.clone(), output, drop_after })
    }

    /// Per-sample shape of the output.
    pub fn output_shape(&self) -> &[usize] {
        self.graph.shape(self.output)
    }

    /// Checks `weights` holds every parameter the plan needs with the right shape.
    pub fn check_weights(&self, weights: &BTreeMap<String, HostTensor>) -> Result<()> {
        for p in self.graph.params_upto(self.output) {
            match weights.get(&p.name) {
                None => return Err(Error::WeightSet(format!("{} needs {} {:?}, which the weights lack", self.graph.name, p.name, p.shape))),
                Some(t) if t.shape != p.shape => {
                    return Err(Error::WeightSet(format!(
                        "{}: {} has shape {:?}, the network needs {:?}",
                        self.graph.name, p.name, t.shape, p.shape
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Runs the plan on `x` with `k`, whose parameters are `params` (uploaded once).
    pub fn run<K: Kernels>(&self, k: &K, params: &BTreeMap<String, K::Tensor>, x: K::Tensor) -> Result<K::Tensor> {
        let mut values: Vec<Option<K::Tensor>> = (0..=self.output).map(|_| None).collect();
        values[0] = Some(x);
        for (i, n) in self.graph.nodes[..=self.output].iter().enumerate().skip(1) {
            let arg = |j: usize| {
                values[n.inputs[j]].as_ref().ok_or_else(|| Error::Config(format!("{}: {} runs before its input", self.graph.name, n.name)))
            };
            let param = |s: &str| params.get(&format!("{}.{s}", n.name)).ok_or_else(|| Error::WeightSet(format!("missing {}.{s}", n.name)));
            let y = match n.op {
                Op::Input => return Err(Error::Config(format!("{}: a second input node {}", self.graph.name, n.name))),
                Op::Conv2d(c) => {
                    let b = if c.bias { Some(param("bias")?) } else { None };
                    k.conv2d(arg(0)?, param("weight")?, b, &c)?
                }
                Op::MaxPool(p) => k.max_pool2d(arg(0)?, &p)?,
                Op::AvgPool(p) => k.avg_pool2d(arg(0)?, &p)?,
                Op::Concat => {
                    let xs: Vec<&K::Tensor> = (0..n.inputs.len()).map(arg).collect::<Result<_>>()?;
                    k.concat(&xs)?
                }
                Op::Relu => k.relu(arg(0)?)?,
                Op::Flatten => k.flatten(arg(0)?)?,
                Op::Linear { relu, .. } => k.linear(arg(0)?, param("weight")?, param("bias")?, relu)?,
            };
            values[i] = Some(y);
            for v in &self.drop_after[i] {
                if *v != self.output {
                    values[*v] = None;
                }
            }
        }
        values[self.output].take().ok_or_else(|| Error::Config(format!("{}: output not computed", self.graph.name)))
    }
}

/// A frozen feature extractor on a device: images in, features at a cut out.
pub trait Extractor: Send {
    /// Preprocessed images `[N, 3, size, size]` → features `[N, ...]` at the cut (flattened).
    fn extract(&mut self, images: &HostTensor) -> Result<HostTensor>;
    /// Per-sample shape of the features.
    fn feature_shape(&self) -> Vec<usize>;
    /// Waits for queued device work.
    fn synchronize(&self) -> Result<()>;
}

/// A [`Plan`] on one backend's [`Kernels`], its parameters uploaded once.
pub struct GraphExtractor<K: Kernels> {
    kernels: K,
    plan: Plan,
    params: BTreeMap<String, K::Tensor>,
}

impl<K: Kernels> GraphExtractor<K> {
    /// The prefix of `graph` up to `cut`, with `weights` (checked against the graph first).
    pub fn new(kernels: K, graph: &Graph, cut: &str, weights: &BTreeMap<String, HostTensor>) -> Result<Self> {
        let plan = Plan::new(graph, cut)?;
        plan.check_weights(weights)?;
        let params = plan
            .graph
            .params_upto(plan.output)
            .into_iter()
            .map(|p| Ok((p.name.clone(), kernels.upload(&weights[&p.name])?)))
            .collect::<Result<_>>()?;
        Ok(Self { kernels, plan, params })
    }

    /// The plan it runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
}

impl<K: Kernels> Extractor for GraphExtractor<K> {
    fn extract(&mut self, images: &HostTensor) -> Result<HostTensor> {
        let input = self.plan.graph.shape(0);
        if images.shape.len() != 4 || images.shape[1..] != *input {
            return Err(Error::Config(format!("{} expects images [N, {input:?}], got {:?}", self.plan.graph.name, images.shape)));
        }
        let x = self.kernels.upload(images)?;
        let y = self.plan.run(&self.kernels, &self.params, x)?;
        let mut out = self.kernels.download(&y)?;
        let n = out.batch();
        out.shape = vec![n, out.row_len()];
        Ok(out)
    }

    fn feature_shape(&self) -> Vec<usize> {
        vec![self.plan.output_shape().iter().product()]
    }

    fn synchronize(&self) -> Result<()> {
        self.kernels.synchronize()
    }
}
