//! The core's primitive ops ([`Kernels`]) on burn tensors: what any network described in
//! `alexnet_core::net` needs to run its frozen prefix on burn. Values are kept 4-d (`[N, F, 1, 1]`
//! after flatten) so one tensor type serves every op; download reports the logical shape.

use crate::err;
use alexnet_core::net::{Conv2d, Kernels, Pool};
use alexnet_core::{HostTensor, Result};
use burn::tensor::activation::relu;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};

/// burn's kernels on one device.
pub struct BurnKernels {
    device: Device,
}

impl BurnKernels {
    pub fn new(device: &Device) -> Self {
        Self { device: device.clone() }
    }
}

/// A value: feature maps, or rows after flatten.
pub enum BurnValue {
    Map(Tensor<4>),
    Flat(Tensor<2>),
}

fn pair(p: (usize, usize)) -> [usize; 2] {
    [p.0, p.1]
}

impl BurnValue {
    fn map(&self) -> Result<Tensor<4>> {
        match self {
            BurnValue::Map(t) => Ok(t.clone()),
            BurnValue::Flat(_) => Err(err("expected feature maps, got flat features")),
        }
    }

    fn flat(&self) -> Result<Tensor<2>> {
        match self {
            BurnValue::Flat(t) => Ok(t.clone()),
            BurnValue::Map(_) => Err(err("expected flat features, got feature maps")),
        }
    }
}

impl Kernels for BurnKernels {
    type Tensor = BurnValue;

    fn name(&self) -> &'static str {
        "burn"
    }

    fn upload(&self, t: &HostTensor) -> Result<BurnValue> {
        let data = TensorData::new(t.data.clone(), t.shape.clone());
        match t.shape.len() {
            4 => Ok(BurnValue::Map(Tensor::from_data(data, &self.device))),
            2 => Ok(BurnValue::Flat(Tensor::from_data(data, &self.device))),
            // Biases: kept as [1, F] rows and reshaped where used.
            1 => Ok(BurnValue::Flat(Tensor::<1>::from_data(data, &self.device).reshape([1, t.shape[0]]))),
            _ => Err(err(format!("unsupported tensor shape {:?}", t.shape))),
        }
    }

    fn download(&self, t: &BurnValue) -> Result<HostTensor> {
        let (shape, data) = match t {
            BurnValue::Map(t) => (t.dims().to_vec(), t.clone().into_data()),
            BurnValue::Flat(t) => (t.dims().to_vec(), t.clone().into_data()),
        };
        let data = data.convert::<f32>().try_to_vec::<f32>().map_err(|e| err(format!("{e:?}")))?;
        HostTensor::new(shape, data)
    }

    fn conv2d(&self, x: &BurnValue, w: &BurnValue, b: Option<&BurnValue>, c: &Conv2d) -> Result<BurnValue> {
        let b = b.map(|b| b.flat().map(|t| t.reshape([c.out_channels]))).transpose()?;
        let opts = ConvOptions::new(pair(c.stride), pair(c.padding), [1, 1], c.groups);
        let y = conv2d(x.map()?, w.map()?, b, opts);
        Ok(BurnValue::Map(if c.relu { relu(y) } else { y }))
    }

    fn max_pool2d(&self, x: &BurnValue, p: &Pool) -> Result<BurnValue> {
        let opts = MaxPoolOptions::new(pair(p.kernel)).with_stride(pair(p.stride)).with_padding(pair(p.padding)).with_ceil_mode(p.ceil_mode);
        Ok(BurnValue::Map(max_pool2d(x.map()?, opts)))
    }

    fn avg_pool2d(&self, x: &BurnValue, p: &Pool) -> Result<BurnValue> {
        let opts = AvgPoolOptions::new(pair(p.kernel))
            .with_stride(pair(p.stride))
            .with_padding(pair(p.padding))
            .with_count_include_pad(p.count_include_pad)
            .with_ceil_mode(p.ceil_mode);
        Ok(BurnValue::Map(avg_pool2d(x.map()?, opts)))
    }

    fn concat(&self, xs: &[&BurnValue]) -> Result<BurnValue> {
        let maps: Vec<Tensor<4>> = xs.iter().map(|x| x.map()).collect::<Result<_>>()?;
        Ok(BurnValue::Map(Tensor::cat(maps, 1)))
    }

    fn relu(&self, x: &BurnValue) -> Result<BurnValue> {
        Ok(match x {
            BurnValue::Map(t) => BurnValue::Map(relu(t.clone())),
            BurnValue::Flat(t) => BurnValue::Flat(relu(t.clone())),
        })
    }

    fn flatten(&self, x: &BurnValue) -> Result<BurnValue> {
        Ok(match x {
            BurnValue::Map(t) => {
                let [n, c, h, w] = t.dims();
                BurnValue::Flat(t.clone().reshape([n, c * h * w]))
            }
            BurnValue::Flat(t) => BurnValue::Flat(t.clone()),
        })
    }

    fn linear(&self, x: &BurnValue, w: &BurnValue, b: &BurnValue, relu_after: bool) -> Result<BurnValue> {
        let y = x.flat()?.matmul(w.flat()?.transpose()) + b.flat()?;
        Ok(BurnValue::Flat(if relu_after { relu(y) } else { y }))
    }

    fn synchronize(&self) -> Result<()> {
        self.device.sync().map_err(|e| err(format!("{e:?}")))
    }
}
