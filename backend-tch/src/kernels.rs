//! The core's primitive ops ([`Kernels`]) on libtorch tensors: what any network described in
//! `alexnet_core::net` needs to run its frozen prefix on tch.

use crate::err;
use alexnet_core::net::{Conv2d, Kernels, Pool};
use alexnet_core::{HostTensor, Result};
use tch::{Device, Kind, Tensor};

/// libtorch's kernels on one device. Parameters never require gradients, so nothing is recorded.
pub struct TchKernels {
    device: Device,
}

impl TchKernels {
    pub fn new(device: Device) -> Self {
        Self { device }
    }
}

fn pair(p: (usize, usize)) -> [i64; 2] {
    [p.0 as i64, p.1 as i64]
}

impl Kernels for TchKernels {
    type Tensor = Tensor;

    fn name(&self) -> &'static str {
        "tch"
    }

    fn upload(&self, t: &HostTensor) -> Result<Tensor> {
        let shape: Vec<i64> = t.shape.iter().map(|d| *d as i64).collect();
        Tensor::f_from_slice(&t.data).and_then(|x| x.f_view(shape.as_slice())).and_then(|x| x.f_to_device(self.device)).map_err(err)
    }

    fn download(&self, t: &Tensor) -> Result<HostTensor> {
        let shape: Vec<usize> = t.size().iter().map(|d| *d as usize).collect();
        let flat = t.f_to_device(Device::Cpu).and_then(|x| x.f_to_kind(Kind::Float)).and_then(|x| x.f_contiguous()).map_err(err)?;
        HostTensor::new(shape, Vec::<f32>::try_from(flat.flatten(0, -1)).map_err(err)?)
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, c: &Conv2d) -> Result<Tensor> {
        let mut y = x.f_conv2d(w, b, pair(c.stride), pair(c.padding), [1, 1], c.groups as i64).map_err(err)?;
        if c.relu { y.f_relu_().map_err(err) } else { Ok(y) }
    }

    fn max_pool2d(&self, x: &Tensor, p: &Pool) -> Result<Tensor> {
        x.f_max_pool2d(pair(p.kernel), pair(p.stride), pair(p.padding), [1, 1], p.ceil_mode).map_err(err)
    }

    fn avg_pool2d(&self, x: &Tensor, p: &Pool) -> Result<Tensor> {
        x.f_avg_pool2d(pair(p.kernel), pair(p.stride), pair(p.padding), p.ceil_mode, p.count_include_pad, None::<i64>).map_err(err)
    }

    fn concat(&self, xs: &[&Tensor]) -> Result<Tensor> {
        Tensor::f_cat(xs, 1).map_err(err)
    }

    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        x.f_relu().map_err(err)
    }

    fn flatten(&self, x: &Tensor) -> Result<Tensor> {
        x.f_flatten(1, -1).map_err(err)
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
        let mut y = x.f_linear(w, Some(b)).map_err(err)?;
        if relu { y.f_relu_().map_err(err) } else { Ok(y) }
    }

    fn synchronize(&self) -> Result<()> {
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
        Ok(())
    }
}
