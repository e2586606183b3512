//! The core's primitive ops ([`Kernels`]) on candle tensors: what any network described in
//! `alexnet_core::net` needs to run its frozen prefix on candle.

use crate::err;
use alexnet_core::net::{Conv2d, Kernels, Pool};
use alexnet_core::{HostTensor, Result};
use candle_core::{DType, Device, Tensor};

/// candle's kernels on one device.
pub struct CandleKernels {
    device: Device,
}

impl CandleKernels {
    pub fn new(device: &Device) -> Self {
        Self { device: device.clone() }
    }

    /// Pads the last two dimensions with `value` (candle pads only with zeros or edge values).
    fn pad(&self, x: &Tensor, (top, bottom, left, right): (usize, usize, usize, usize), value: f32) -> candle_core::Result<Tensor> {
        if value == 0.0 {
            return x.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right);
        }
        let (n, c, h, w) = x.dims4()?;
        let fill = |rows: usize, cols: usize| Tensor::full(value, (n, c, rows, cols), &self.device);
        let mut parts = vec![];
        if left > 0 {
            parts.push(fill(h, left)?);
        }
        parts.push(x.clone());
        if right > 0 {
            parts.push(fill(h, right)?);
        }
        let x = Tensor::cat(&parts, 3)?;
        let w = w + left + right;
        let mut parts = vec![];
        if top > 0 {
            parts.push(fill(top, w)?);
        }
        parts.push(x);
        if bottom > 0 {
            parts.push(fill(bottom, w)?);
        }
        Tensor::cat(&parts, 2)
    }

    fn padded_for(&self, x: &Tensor, p: &Pool, value: f32) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let pads = p.explicit_padding(h, w).ok_or_else(|| candle_core::Error::Msg(format!("pool window {:?} larger than {h}×{w}", p.kernel)))?;
        if pads == (0, 0, 0, 0) { Ok(x.clone()) } else { self.pad(x, pads, value) }
    }
}

impl Kernels for CandleKernels {
    type Tensor = Tensor;

    fn name(&self) -> &'static str {
        "candle"
    }

    fn upload(&self, t: &HostTensor) -> Result<Tensor> {
        Tensor::from_slice(&t.data, t.shape.as_slice(), &self.device).map_err(err)
    }

    fn download(&self, t: &Tensor) -> Result<HostTensor> {
        let data = t.flatten_all().and_then(|f| f.to_dtype(DType::F32)).and_then(|f| f.to_vec1::<f32>()).map_err(err)?;
        HostTensor::new(t.dims().to_vec(), data)
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, c: &Conv2d) -> Result<Tensor> {
        let f = || -> candle_core::Result<Tensor> {
            // candle's conv2d takes one padding and one stride for both axes.
            let (x, pad) = if c.padding.0 == c.padding.1 {
                (x.clone(), c.padding.0)
            } else {
                (x.pad_with_zeros(2, c.padding.0, c.padding.0)?.pad_with_zeros(3, c.padding.1, c.padding.1)?, 0)
            };
            let mut y = if c.stride.0 == c.stride.1 {
                x.conv2d(w, pad, c.stride.0, 1, c.groups)?
            } else {
                return Err(candle_core::Error::Msg(format!("conv stride {:?}: candle needs equal strides", c.stride)));
            };
            if let Some(b) = b {
                y = y.broadcast_add(&b.reshape((1, c.out_channels, 1, 1))?)?;
            }
            if c.relu { y.relu() } else { Ok(y) }
        };
        f().map_err(err)
    }

    fn max_pool2d(&self, x: &Tensor, p: &Pool) -> Result<Tensor> {
        let f = || self.padded_for(x, p, f32::NEG_INFINITY)?.max_pool2d_with_stride(p.kernel, p.stride);
        f().map_err(err)
    }

    fn avg_pool2d(&self, x: &Tensor, p: &Pool) -> Result<Tensor> {
        let f = || -> candle_core::Result<Tensor> {
            let (_, _, h, w) = x.dims4()?;
            let y = self.padded_for(x, p, 0.0)?.avg_pool2d_with_stride(p.kernel, p.stride)?;
            let window = (p.kernel.0 * p.kernel.1) as f32;
            let div = p.divisors(h, w).unwrap_or_default();
            if div.iter().all(|d| *d == window) {
                return Ok(y);
            }
            // candle divides by the whole window; rescale to PyTorch's divisor per position.
            let (oh, ow) = (y.dim(2)?, y.dim(3)?);
            let scale: Vec<f32> = div.iter().map(|d| window / d).collect();
            y.broadcast_mul(&Tensor::from_vec(scale, (1, 1, oh, ow), &self.device)?)
        };
        f().map_err(err)
    }

    fn concat(&self, xs: &[&Tensor]) -> Result<Tensor> {
        Tensor::cat(xs, 1).map_err(err)
    }

    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        x.relu().map_err(err)
    }

    fn flatten(&self, x: &Tensor) -> Result<Tensor> {
        x.flatten_from(1).map_err(err)
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
        let y = x.matmul(&w.t().map_err(err)?).and_then(|y| y.broadcast_add(b)).map_err(err)?;
        if relu { y.relu().map_err(err) } else { Ok(y) }
    }

    fn synchronize(&self) -> Result<()> {
        self.device.synchronize().map_err(err)
    }
}
