//! Networks as data: a network is a list of primitive ops in topological order, with its
//! parameter names and shapes, input size and normalisation, and named cut points. Backends
//! implement the primitive ops ([`Kernels`]); one runner in the core ([`Plan`]) walks any
//! network's frozen prefix on any backend. A new backbone is a description file plus its weight
//! import (see the crate README).

mod alexnet;
mod graph;
mod inception;
#[cfg(any(test, feature = "conformance"))]
pub mod reference;
mod run;

pub use alexnet::alexnet;
pub use graph::{Conv2d, Cut, Graph, GraphBuilder, InputSpec, Node, Op, ParamSpec, Pool, ValueId};
pub use inception::{INCEPTION_BOTTLENECK, INCEPTION_CROP, INCEPTION_CUT, INCEPTION_MEAN_STD, inception_v3};
pub use run::{Extractor, GraphExtractor, Kernels, Plan};
