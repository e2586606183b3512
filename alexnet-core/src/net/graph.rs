//! The graph: primitive ops, shape inference and cut points.

use crate::{Error, Result};
use serde::Serialize;

/// A value of the graph: the output of the node with this index (node 0 is the input).
pub type ValueId = usize;

/// A 2-d convolution; its parameters are `<node>.weight` `[out, in/groups, kh, kw]` and, with
/// `bias`, `<node>.bias` `[out]`. Batch-norm is folded into weight and bias at import time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Conv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    /// Zero padding (rows, columns), on both sides.
    pub padding: (usize, usize),
    pub groups: usize,
    pub bias: bool,
    /// ReLU fused after the convolution.
    pub relu: bool,
}

/// A 2-d pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pool {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    /// Padding on both sides: −∞ for max-pool; for average pooling it counts toward the divisor
    /// only with `count_include_pad`.
    pub padding: (usize, usize),
    /// Output size rounded up (Caffe) instead of down (PyTorch's default).
    pub ceil_mode: bool,
    pub count_include_pad: bool,
}

impl Pool {
    /// A `k`×`k` window with stride `s`, no padding, floor mode.
    pub fn new(k: usize, s: usize) -> Self {
        Self { kernel: (k, k), stride: (s, s), padding: (0, 0), ceil_mode: false, count_include_pad: true }
    }

    /// Sets the padding on both sides of both axes.
    pub fn with_padding(mut self, p: usize) -> Self {
        self.padding = (p, p);
        self
    }

    /// Average pooling divides by the window's in-bounds elements only (padding excluded).
    pub fn excluding_pad(mut self) -> Self {
        self.count_include_pad = false;
        self
    }

    /// Output side along one axis (PyTorch's rule: in ceil mode the last window must start inside
    /// the input or its left padding). `None` when the window does not fit.
    pub fn out_side(&self, side: usize, axis: usize) -> Option<usize> {
        let (k, s, p) = if axis == 0 { (self.kernel.0, self.stride.0, self.padding.0) } else { (self.kernel.1, self.stride.1, self.padding.1) };
        let span = (side + 2 * p).checked_sub(k)?;
        let mut out = if self.ceil_mode { span.div_ceil(s) + 1 } else { span / s + 1 };
        if self.ceil_mode && (out - 1) * s >= side + p {
            out -= 1;
        }
        Some(out)
    }

    /// For backends whose pools take no padding: zero rows/columns to add (top, bottom, left,
    /// right) so that a plain floor-mode pool of the padded input has exactly this pool's windows
    /// (the bottom/right extra covers ceil mode's last window). `None` when the window does not fit.
    pub fn explicit_padding(&self, h: usize, w: usize) -> Option<(usize, usize, usize, usize)> {
        let (oh, ow) = (self.out_side(h, 0)?, self.out_side(w, 1)?);
        let need = |o: usize, k: usize, s: usize, side: usize, p: usize| ((o - 1) * s + k).saturating_sub(side + p);
        Some((
            self.padding.0,
            need(oh, self.kernel.0, self.stride.0, h, self.padding.0),
            self.padding.1,
            need(ow, self.kernel.1, self.stride.1, w, self.padding.1),
        ))
    }

    /// PyTorch's average-pool divisor of every output position (row-major `[oh, ow]`): the window
    /// clipped to the padded input with `count_include_pad`, else to the input itself.
    pub fn divisors(&self, h: usize, w: usize) -> Option<Vec<f32>> {
        let (oh, ow) = (self.out_side(h, 0)?, self.out_side(w, 1)?);
        let span = |o: usize, k: usize, s: usize, p: usize, side: usize| {
            let start = (o * s) as isize - p as isize;
            let end = (start + k as isize).min((side + p) as isize);
            if self.count_include_pad { end - start } else { end.min(side as isize) - start.max(0) }
        };
        let mut out = Vec::with_capacity(oh * ow);
        for y in 0..oh {
            for x in 0..ow {
                out.push(
                    (span(y, self.kernel.0, self.stride.0, self.padding.0, h) * span(x, self.kernel.1, self.stride.1, self.padding.1, w)) as f32,
                );
            }
        }
        Some(out)
    }
}

/// A primitive operation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Op {
    /// The network's input `[N, C, H, W]`.
    Input,
    Conv2d(Conv2d),
    MaxPool(Pool),
    AvgPool(Pool),
    /// Concatenation of the inputs along channels (parallel branches).
    Concat,
    Relu,
    /// `[N, ...]` → `[N, prod(...)]`.
    Flatten,
    /// `y = x·Wᵀ + b` on `[N, in]`, parameters `<node>.weight` `[out, in]` and `<node>.bias`.
    Linear {
        in_features: usize,
        out_features: usize,
        relu: bool,
    },
}

/// One node: a named op on earlier values, with its inferred per-sample output shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// Unique name; parameters are `<name>.weight` / `<name>.bias` (the source files' names).
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    /// Per-sample output shape (`[C, H, W]` or `[F]`).
    pub shape: Vec<usize>,
}

/// A parameter of the network: name and shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// The input a network expects: an RGB crop, and how pixels are normalised
/// (`(x/255 − mean)/std`, per channel).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct InputSpec {
    pub channels: usize,
    pub size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// A named cut point: a value that every input→output path passes through, so everything before
/// it can be frozen and its output cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cut {
    pub name: String,
    pub value: ValueId,
}

/// A network: nodes in topological order (node 0 is the input), the last node is the output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graph {
    pub name: String,
    pub input: InputSpec,
    pub nodes: Vec<Node>,
    pub cuts: Vec<Cut>,
}

impl Graph {
    /// Every parameter, in node order.
    pub fn params(&self) -> Vec<ParamSpec> {
        self.nodes.iter().flat_map(node_params).collect()
    }

    /// The parameters of the nodes up to and including `value`.
    pub fn params_upto(&self, value: ValueId) -> Vec<ParamSpec> {
        self.nodes[..=value].iter().flat_map(node_params).collect()
    }

    /// Seeded parameters for tests and benches: weights He-uniform (variance 2/fan_in, so
    /// activations keep their scale through ReLUs), biases U(±0.1).
    pub fn seeded_params(&self, seed: u64) -> std::collections::BTreeMap<String, crate::HostTensor> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        self.params()
            .into_iter()
            .map(|p| {
                let n: usize = p.shape.iter().product();
                let a = if p.shape.len() > 1 { (6.0 / p.shape[1..].iter().product::<usize>() as f32).sqrt() } else { 0.1 };
                let data = (0..n).map(|_| rng.random_range(-a..a)).collect();
                (p.name, crate::HostTensor { shape: p.shape, data })
            })
            .collect()
    }

    /// A cut by name, or an error listing the known ones.
    pub fn cut(&self, name: &str) -> Result<&Cut> {
        self.cuts.iter().find(|c| c.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.cuts.iter().map(|c| c.name.as_str()).collect();
            Error::Config(format!("{} has no cut point {name:?}; it has {}", self.name, known.join(", ")))
        })
    }

    /// Per-sample output shape of `value`.
    pub fn shape(&self, value: ValueId) -> &[usize] {
        &self.nodes[value].shape
    }

    /// Multiply-adds ×2 per sample of the nodes up to and including `value`.
    pub fn flops_upto(&self, value: ValueId) -> u64 {
        self.nodes[..=value]
            .iter()
            .map(|n| match n.op {
                Op::Conv2d(c) => {
                    let (h, w) = (n.shape[1], n.shape[2]);
                    2 * (c.out_channels * (c.in_channels / c.groups) * c.kernel.0 * c.kernel.1 * h * w) as u64
                }
                Op::Linear { in_features, out_features, .. } => 2 * (in_features * out_features) as u64,
                _ => 0,
            })
            .sum()
    }

    /// Checks that `value` is a cut: no node after it reads a value before it. In a topological
    /// order with one input and one output that is exactly "every path passes through it".
    pub fn check_cut(&self, value: ValueId) -> Result<()> {
        for n in &self.nodes[value + 1..] {
            if let Some(i) = n.inputs.iter().find(|i| **i < value) {
                return Err(Error::Config(format!(
                    "{}: {} is not a cut point: {} after it reads {} before it",
                    self.name, self.nodes[value].name, n.name, self.nodes[*i].name
                )));
            }
        }
        Ok(())
    }
}

fn node_params(n: &Node) -> Vec<ParamSpec> {
    let p = |suffix: &str, shape: Vec<usize>| ParamSpec { name: format!("{}.{suffix}", n.name), shape };
    match n.op {
        Op::Conv2d(c) => {
            let mut v = vec![p("weight", vec![c.out_channels, c.in_channels / c.groups, c.kernel.0, c.kernel.1])];
            if c.bias {
                v.push(p("bias", vec![c.out_channels]));
            }
            v
        }
        Op::Linear { in_features, out_features, .. } => vec![p("weight", vec![out_features, in_features]), p("bias", vec![out_features])],
        _ => vec![],
    }
}

/// Builds a [`Graph`] node by node, inferring shapes; a shape that does not fit is an error
/// naming the node.
pub struct GraphBuilder {
    g: Graph,
}

impl GraphBuilder {
    /// A graph called `name` on `input` (node 0, value 0).
    pub fn new(name: &str, input: InputSpec) -> Self {
        let node = Node { name: "input".into(), op: Op::Input, inputs: vec![], shape: vec![input.channels, input.size, input.size] };
        Self { g: Graph { name: name.into(), input, nodes: vec![node], cuts: vec![] } }
    }

    fn push(&mut self, name: &str, op: Op, inputs: Vec<ValueId>, shape: Vec<usize>) -> ValueId {
        self.g.nodes.push(Node { name: name.into(), op, inputs, shape });
        self.g.nodes.len() - 1
    }

    /// Per-sample shape of a value built so far.
    pub fn shape(&self, x: ValueId) -> &[usize] {
        &self.g.nodes[x].shape
    }

    fn chw(&self, x: ValueId, name: &str) -> Result<(usize, usize, usize)> {
        match self.g.nodes[x].shape[..] {
            [c, h, w] => Ok((c, h, w)),
            ref s => Err(Error::Config(format!("{}: {name} needs a [C, H, W] input, got {s:?}", self.g.name))),
        }
    }

    fn too_small(&self, name: &str, h: usize, w: usize) -> Error {
        Error::Config(format!("{}: the input is too small: {name} gets {h}×{w}, smaller than its window", self.g.name))
    }

    /// A convolution with `out` channels, kernel `k`, stride `s`, padding `p`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        name: &str,
        x: ValueId,
        out: usize,
        k: (usize, usize),
        s: usize,
        p: (usize, usize),
        bias: bool,
        relu: bool,
    ) -> Result<ValueId> {
        self.conv_grouped(name, x, out, k, s, p, 1, bias, relu)
    }

    /// A convolution in `groups` groups (Caffe's AlexNet).
    #[allow(clippy::too_many_arguments)]
    pub fn conv_grouped(
        &mut self,
        name: &str,
        x: ValueId,
        out: usize,
        k: (usize, usize),
        s: usize,
        p: (usize, usize),
        groups: usize,
        bias: bool,
        relu: bool,
    ) -> Result<ValueId> {
        let (c, h, w) = self.chw(x, name)?;
        if groups == 0 || c % groups != 0 || out % groups != 0 {
            return Err(Error::Config(format!("{}: {name}: {c} → {out} channels do not split into {groups} groups", self.g.name)));
        }
        let (oh, ow) = match ((h + 2 * p.0).checked_sub(k.0), (w + 2 * p.1).checked_sub(k.1)) {
            (Some(a), Some(b)) => (a / s + 1, b / s + 1),
            _ => return Err(self.too_small(name, h, w)),
        };
        let op = Conv2d { in_channels: c, out_channels: out, kernel: k, stride: (s, s), padding: p, groups, bias, relu };
        Ok(self.push(name, Op::Conv2d(op), vec![x], vec![out, oh, ow]))
    }

    fn pool(&mut self, name: &str, x: ValueId, pool: Pool, max: bool) -> Result<ValueId> {
        let (c, h, w) = self.chw(x, name)?;
        let (Some(oh), Some(ow)) = (pool.out_side(h, 0), pool.out_side(w, 1)) else { return Err(self.too_small(name, h, w)) };
        Ok(self.push(name, if max { Op::MaxPool(pool) } else { Op::AvgPool(pool) }, vec![x], vec![c, oh, ow]))
    }

    /// Max-pooling.
    pub fn max_pool(&mut self, name: &str, x: ValueId, pool: Pool) -> Result<ValueId> {
        self.pool(name, x, pool, true)
    }

    /// Average pooling.
    pub fn avg_pool(&mut self, name: &str, x: ValueId, pool: Pool) -> Result<ValueId> {
        self.pool(name, x, pool, false)
    }

    /// Channel concatenation of same-sized branches.
    pub fn concat(&mut self, name: &str, xs: &[ValueId]) -> Result<ValueId> {
        let (_, h, w) = self.chw(xs[0], name)?;
        let mut c = 0;
        for x in xs {
            let (ci, hi, wi) = self.chw(*x, name)?;
            if (hi, wi) != (h, w) {
                return Err(Error::Config(format!("{}: {name}: branches of {h}×{w} and {hi}×{wi} cannot be concatenated", self.g.name)));
            }
            c += ci;
        }
        Ok(self.push(name, Op::Concat, xs.to_vec(), vec![c, h, w]))
    }

    /// Flattens to `[N, features]`.
    pub fn flatten(&mut self, name: &str, x: ValueId) -> ValueId {
        let n = self.g.nodes[x].shape.iter().product();
        self.push(name, Op::Flatten, vec![x], vec![n])
    }

    /// A fully connected layer to `out` features.
    pub fn linear(&mut self, name: &str, x: ValueId, out: usize, relu: bool) -> Result<ValueId> {
        let in_features = match self.g.nodes[x].shape[..] {
            [f] => f,
            ref s => return Err(Error::Config(format!("{}: {name} needs a flat input, got {s:?}", self.g.name))),
        };
        Ok(self.push(name, Op::Linear { in_features, out_features: out, relu }, vec![x], vec![out]))
    }

    /// Declares `value` a cut point called `name`, checked when the graph is finished.
    pub fn cut(&mut self, name: &str, value: ValueId) {
        self.g.cuts.push(Cut { name: name.into(), value });
    }

    /// The finished graph; every declared cut is checked.
    pub fn finish(self) -> Result<Graph> {
        for c in &self.g.cuts {
            self.g.check_cut(c.value)?;
        }
        Ok(self.g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_sides_follow_pytorch() {
        // floor and ceil mode, with and without padding (torch.nn.MaxPool2d's documented formula).
        assert_eq!(Pool::new(3, 2).out_side(55, 0), Some(27));
        assert_eq!(Pool { ceil_mode: true, ..Pool::new(3, 2) }.out_side(56, 0), Some(28));
        assert_eq!(Pool::new(3, 2).out_side(56, 0), Some(27));
        assert_eq!(Pool::new(3, 1).with_padding(1).out_side(35, 0), Some(35));
        assert_eq!(Pool::new(8, 8).out_side(7, 0), None);
    }

    #[test]
    fn a_branch_that_skips_a_node_makes_it_no_cut() {
        let input = InputSpec { channels: 3, size: 8, mean: [0.0; 3], std: [1.0; 3] };
        let mut b = GraphBuilder::new("t", input);
        let a = b.conv("a", 0, 4, (3, 3), 1, (1, 1), true, true).unwrap();
        let c = b.conv("c", a, 4, (1, 1), 1, (0, 0), true, true).unwrap();
        let d = b.conv("d", a, 4, (1, 1), 1, (0, 0), true, true).unwrap();
        let e = b.concat("e", &[c, d]).unwrap();
        b.cut("a", a);
        b.cut("c", c); // d reads a, which is before c
        let err = b.finish().unwrap_err().to_string();
        assert!(err.contains("c is not a cut point") && err.contains("d after it reads a"), "{err}");
        let _ = e;
    }
}
