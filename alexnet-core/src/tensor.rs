//! A plain host-side f32 tensor: the currency between the core and every backend.

use crate::{Error, Result};

/// A dense, row-major f32 tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Wraps `data`, checking that it has `shape`'s element count.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Config(format!("tensor of shape {shape:?} needs {n} values, got {}", data.len())));
        }
        Ok(Self { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self { shape, data: vec![0.0; n] }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Size of the first dimension (the batch).
    pub fn batch(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Elements per item of the first dimension.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Item `i` of the first dimension, as a slice.
    pub fn row(&self, i: usize) -> &[f32] {
        let r = self.row_len();
        &self.data[i * r..(i + 1) * r]
    }

    /// Stacks rows (each of shape `item_shape`) into a batch.
    pub fn stack(item_shape: &[usize], rows: &[&[f32]]) -> Self {
        let mut shape = vec![rows.len()];
        shape.extend_from_slice(item_shape);
        let mut data = Vec::with_capacity(rows.len() * item_shape.iter().product::<usize>());
        for r in rows {
            data.extend_from_slice(r);
        }
        Self { shape, data }
    }
}
