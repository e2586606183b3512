//! Cross-backend benchmarks. Quick profile (a few minutes on 2 cores):
//! `cargo bench -p alexnet-benches -- --sample-size 10 --warm-up-time 1 --measurement-time 5`

use alexnet_benches::{backends, config, label, labels, random, weights};
use alexnet_core::data::{Preprocess, View};
use alexnet_core::{AlexNetSpec, LayerId, Stage};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::path::PathBuf;

const BATCH: usize = 64;

/// The image pipeline: read + decode + resize + centre crop + normalise.
fn pipeline(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/flower_photos/daisy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e} (benches read ../shared/data/flower_photos)", root.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.truncate(32);
    let pre = Preprocess::default();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(files.len() as u64));
    g.bench_function("decode_resize_crop/1thread", |b| {
        b.iter(|| files.iter().map(|f| pre.views(f, &[View::Center]).unwrap().1.len()).sum::<usize>())
    });
    g.finish();
}

fn models(c: &mut Criterion) {
    // As the CLI does: large freed buffers are reused, not unmapped.
    alexnet_core::retain_freed_memory();
    let w = weights();
    let spec = AlexNetSpec::new(5);
    let images = random(vec![BATCH, 3, 224, 224], 1);
    let pool5 = random(vec![BATCH, 9216], 2);
    let conv4 = random(vec![BATCH, 256, 13, 13], 3).data.iter().map(|v| v.max(0.0)).collect::<Vec<_>>();
    let conv4 = alexnet_core::HostTensor::new(vec![BATCH, 256, 13, 13], conv4).unwrap();
    assert_eq!(spec.input_shape(LayerId::Conv5), vec![256, 13, 13]);
    let y = labels(BATCH);
    for b in backends() {
        let name = label(b.as_ref());
        let mut g = c.benchmark_group("alexnet");
        g.throughput(Throughput::Elements(BATCH as u64));

        let mut m = b.build(&w, &config("fc6")).unwrap();
        g.bench_function(format!("extract/{name}/b{BATCH}"), |bch| {
            bch.iter(|| {
                let f = m.extract(&images).unwrap();
                m.synchronize().unwrap();
                f
            })
        });
        g.bench_function(format!("head_step/{name}/b{BATCH}"), |bch| {
            bch.iter(|| m.train_step(&pool5, Stage::Cut, &y, 1e-4).unwrap())
        });
        g.bench_function(format!("full_step/{name}/b{BATCH}"), |bch| {
            bch.iter(|| m.train_step(&images, Stage::Image, &y, 1e-4).unwrap())
        });
        let mut m5 = b.build(&w, &config("conv5")).unwrap();
        g.bench_function(format!("conv5_step/{name}/b{BATCH}"), |bch| {
            bch.iter(|| m5.train_step(&conv4, Stage::Cut, &y, 1e-4).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, pipeline, models);
criterion_main!(benches);
