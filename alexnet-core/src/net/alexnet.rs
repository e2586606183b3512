//! torchvision's AlexNet as a graph, with torchvision's parameter names (`features.0` …
//! `classifier.6`) and every layer boundary a cut.

use super::graph::{Graph, GraphBuilder, InputSpec, Pool};
use crate::Result;
use crate::arch::AlexNetSpec;
use crate::data::preprocess::{IMAGENET_MEAN, IMAGENET_STD};

/// AlexNet for `spec` (classes, crop). Cuts are named as [`crate::FreezePolicy::cut_name`] names
/// them: `pool1`, `pool2`, `conv3`, `conv4`, `pool5` (flattened to 9216), `fc6`, `fc7`.
/// Dropout is folded into the training step by backends, so the graph has none.
pub fn alexnet(spec: &AlexNetSpec) -> Result<Graph> {
    spec.validate()?;
    let mut b = GraphBuilder::new("alexnet", InputSpec { channels: 3, size: spec.crop_size, mean: IMAGENET_MEAN, std: IMAGENET_STD });
    let pool = Pool::new(3, 2);
    let x = b.conv("features.0", 0, 64, (11, 11), 4, (2, 2), true, true)?;
    let x = b.max_pool("features.2", x, pool)?;
    b.cut("pool1", x);
    let x = b.conv("features.3", x, 192, (5, 5), 1, (2, 2), true, true)?;
    let x = b.max_pool("features.5", x, pool)?;
    b.cut("pool2", x);
    let x = b.conv("features.6", x, 384, (3, 3), 1, (1, 1), true, true)?;
    b.cut("conv3", x);
    let x = b.conv("features.8", x, 256, (3, 3), 1, (1, 1), true, true)?;
    b.cut("conv4", x);
    let x = b.conv("features.10", x, 256, (3, 3), 1, (1, 1), true, true)?;
    let x = b.max_pool("features.12", x, pool)?;
    // The adaptive 6×6 average pool is the identity: spec.validate() admits only crops whose
    // pool5 is already 6×6.
    let x = b.flatten("pool5", x);
    b.cut("pool5", x);
    let x = b.linear("classifier.1", x, 4096, true)?;
    b.cut("fc6", x);
    let x = b.linear("classifier.4", x, 4096, true)?;
    b.cut("fc7", x);
    b.linear("classifier.6", x, spec.num_classes, false)?;
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FreezePolicy, LayerId};

    #[test]
    fn the_graph_agrees_with_the_layer_table() {
        let spec = AlexNetSpec::new(5);
        let g = alexnet(&spec).unwrap();
        let names: Vec<(String, Vec<usize>)> = g.params().into_iter().map(|p| (p.name, p.shape)).collect();
        assert_eq!(names, spec.param_shapes());
        for l in LayerId::ALL.into_iter().skip(1) {
            let cut = g.cut(FreezePolicy::from_layer(l).cut_name()).unwrap();
            assert_eq!(g.shape(cut.value), spec.input_shape(l), "{l}");
        }
        let flops: u64 = spec.layers().iter().map(|l| l.flops).sum();
        assert_eq!(g.flops_upto(g.nodes.len() - 1), flops);
    }
}
