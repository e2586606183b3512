#!/usr/bin/env python3
"""The PyTorch baseline: the same work as `alexnet experiment`, in PyTorch, on the same machine.

Same data scan (sorted class folders, .jpg/.jpeg/.png), same split (xxh3-64 of each image's
relative path, 10,000 buckets), same preprocessing (shorter side to 256 with an antialiased
bilinear filter, truncated; centre crop 224 rounded; random crop + flip for the extra cached
views; ImageNet normalisation), same weights file (the conv1-conv5 safetensors written by
`alexnet weights fetch`; fc6-fc8 from torchvision's default U(+-1/sqrt(fan_in)) initialisation),
same policy, optimiser and schedule (SGD momentum 0.9, L2 weight decay 5e-4, lr 0.01 (0.005 before 2026-12-01) with cosine
decay to 0, conv layers at 0.1x the rate, dropout 0.5, batch 64), same evaluation (val and test
every K steps; the reported test accuracy is the one at the best validation point).

What cannot be identical: random streams (initialisation, shuffling, view choice, dropout masks)
and JPEG decoding/resampling (PIL against the Rust `image` crate), so accuracies agree within
noise, not bit for bit. Speed figures are measured the same way: samples/s counts training
steps only (no evaluation), extraction crops/s includes decoding.

Run it with the project's venv (scripts/pytorch-baseline.sh installs torch's full dependencies):
  .venv/bin/python scripts/pytorch_baseline.py --data ../shared/data/flower_photos \
      [--policies fc6,conv5] [--steps 300] [--rust runs/experiment/experiment.json ...]
With --rust, the table puts each Rust backend beside PyTorch, with ratios.
"""

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import xxhash
from PIL import Image

EXTS = {"jpg", "jpeg", "png"}
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
# torchvision module index of each layer, and the features index its block ends at.
DEV = torch.device("cpu")  # --device


def sync():
    """Waits for the device, so a timed region contains its work (CUDA runs asynchronously)."""
    if DEV.type == "cuda":
        torch.cuda.synchronize()


MODULE = ["features.0", "features.3", "features.6", "features.8", "features.10", "classifier.1", "classifier.4", "classifier.6"]


def scan(root):
    classes = sorted(d.name for d in Path(root).iterdir() if d.is_dir() and not d.name.startswith("."))
    samples = []
    for label, c in enumerate(classes):
        for f in sorted((Path(root) / c).iterdir()):
            if f.name.startswith(".") or f.is_dir() or f.suffix[1:].lower() not in EXTS:
                continue
            samples.append((f, f"{c}/{f.name}", label))
    return classes, samples


def split_of(rel, val_percent=10.0, test_percent=10.0):
    bucket = (xxhash.xxh3_64_intdigest(rel.encode()) % 10_000) / 100.0
    if bucket < test_percent:
        return "test"
    return "val" if bucket < test_percent + val_percent else "train"


def load_resized(path, resize=256):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    nw, nh = (resize, resize * h // w) if w <= h else (resize * w // h, resize)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)  # antialiased on downscale, like the Triangle filter
    return np.asarray(img, dtype=np.uint8)


def crop(arr, view_rng, crop_size=224):
    h, w, _ = arr.shape
    if view_rng is None:
        x0, y0, flip = round((w - crop_size) / 2), round((h - crop_size) / 2), False
    else:
        x0, y0, flip = view_rng.randint(0, w - crop_size), view_rng.randint(0, h - crop_size), view_rng.random() < 0.5
    c = arr[y0 : y0 + crop_size, x0 : x0 + crop_size]
    if flip:
        c = c[:, ::-1]
    c = (c.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(c.transpose(2, 0, 1))


class AlexNet(nn.Module):
    """torchvision's AlexNet layout, so the state-dict names match the weights file."""

    def __init__(self, classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(9216, 4096), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, classes),
        )

    def blocks(self):
        """(layer name, module list) in forward order; dropout belongs to the linear block after it."""
        f, c = self.features, self.classifier
        return [
            ("conv1", [f[0], f[1], f[2]]), ("conv2", [f[3], f[4], f[5]]), ("conv3", [f[6], f[7]]),
            ("conv4", [f[8], f[9]]), ("conv5", [f[10], f[11], f[12], nn.Flatten(1)]),
            ("fc6", [c[0], c[1], c[2]]), ("fc7", [c[3], c[4], c[5]]), ("fc8", [c[6]]),
        ]

    def split(self, first_trainable):
        i = LAYERS.index(first_trainable)
        b = self.blocks()
        prefix = nn.Sequential(*[m for _, ms in b[:i] for m in ms])
        head = nn.Sequential(*[m for _, ms in b[i:] for m in ms])
        return prefix, head


def load_weights(model, path):
    from safetensors.torch import load_file

    sd = load_file(str(path))
    own = model.state_dict()
    loaded = []
    for k, v in sd.items():
        if k.startswith("classifier.6."):
            continue  # fc8 is always new, sized to the classes
        if k not in own or own[k].shape != v.shape:
            sys.exit(f"{path}: tensor {k} {tuple(v.shape)} does not fit torchvision's AlexNet")
        own[k] = v.float()
        loaded.append(k.rsplit(".", 1)[0])
    model.load_state_dict(own)
    return sorted(set(loaded))


def cut_name(policy):
    i = LAYERS.index(policy)
    return "image" if i == 0 else ("pool5" if LAYERS[i - 1] == "conv5" else LAYERS[i - 1])


def extract(prefix, samples, views_per, batch, seed):
    """Runs each image's views through the frozen prefix once; returns per-sample lists of features."""
    feats = [[] for _ in samples]
    jobs = []
    for i, (path, rel, _) in enumerate(samples):
        for v in range(views_per[i]):
            jobs.append((i, v))
    t0 = time.perf_counter()
    cache_arr = {}
    with torch.no_grad():
        for s in range(0, len(jobs), batch):
            chunk = jobs[s : s + batch]
            xs = []
            for i, v in chunk:
                if i not in cache_arr:
                    cache_arr.clear()
                    cache_arr[i] = load_resized(samples[i][0])
                rng = None if v == 0 else random.Random(xxhash.xxh3_64_intdigest(f"{seed}/{samples[i][1]}/{v}".encode()))
                xs.append(crop(cache_arr[i], rng))
            out = prefix(torch.from_numpy(np.stack(xs)).to(DEV))
            for (i, _), f in zip(chunk, out):
                feats[i].append(f.clone())
    sync()
    return feats, len(jobs) / (time.perf_counter() - t0), len(jobs)


def evaluate(prefix, head, inputs, cached, batch):
    head.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(inputs), batch):
            chunk = inputs[s : s + batch]
            if cached:
                x = torch.stack([f[0] for f, _ in chunk])
            else:
                x = prefix(torch.from_numpy(np.stack([crop(load_resized(p), None) for p, _ in chunk])).to(DEV))
            y = torch.tensor([l for _, l in chunk], device=DEV)
            correct += (head(x).argmax(1) == y).sum().item()
    head.train()
    return correct / max(1, len(inputs))


def run_policy(args, classes, parts, policy, cached, steps, eval_every):
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model = AlexNet(len(classes))
    loaded = load_weights(model, args.weights)
    model.to(DEV)
    prefix, head = model.split(policy)
    prefix.eval()
    for p in prefix.parameters():
        p.requires_grad_(False)
    cached = cached and policy != "conv1"
    ex_rate, ex_views = None, 0
    if cached:
        tr, va, te = parts["train"], parts["val"], parts["test"]
        ftr, ex_rate, n1 = extract(prefix, tr, [args.cache_views] * len(tr), args.batch_size, args.seed)
        fva, _, n2 = extract(prefix, va, [1] * len(va), args.batch_size, args.seed)
        fte, _, n3 = extract(prefix, te, [1] * len(te), args.batch_size, args.seed)
        ex_views = n1 + n2 + n3
        train_in = list(zip(ftr, [l for _, _, l in tr]))
        val_in = list(zip(fva, [l for _, _, l in va]))
        test_in = list(zip(fte, [l for _, _, l in te]))
    else:
        train_in = [(p, l) for p, _, l in parts["train"]]
        val_in = [(p, l) for p, _, l in parts["val"]]
        test_in = [(p, l) for p, _, l in parts["test"]]
    conv = [p for m in head.modules() if isinstance(m, nn.Conv2d) for p in m.parameters()]
    fc = [p for m in head.modules() if isinstance(m, nn.Linear) for p in m.parameters()]
    opt = torch.optim.SGD(
        [{"params": fc, "lr": args.lr}, {"params": conv, "lr": args.lr * args.conv_lr_mult}],
        momentum=0.9, weight_decay=5e-4,
    )
    base = [g["lr"] for g in opt.param_groups]
    rng = random.Random(args.seed)
    step, train_s, samples = 0, 0.0, 0
    curve, best = [], (-1.0, 0, None)
    head.train()
    while step < steps:
        order = list(range(len(train_in)))
        rng.shuffle(order)
        for s in range(0, len(order), args.batch_size):
            t0 = time.perf_counter()
            idx = order[s : s + args.batch_size]
            if cached:
                x = torch.stack([train_in[i][0][rng.randrange(len(train_in[i][0]))] for i in idx])
            else:
                x = torch.from_numpy(np.stack([crop(load_resized(train_in[i][0]), rng) for i in idx])).to(DEV)
                with torch.no_grad():
                    x = prefix(x)
            y = torch.tensor([train_in[i][1] for i in idx], device=DEV)
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss = F.cross_entropy(head(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()
            train_s += time.perf_counter() - t0
            step += 1
            samples += len(idx)
            if step % eval_every == 0 or step == steps:
                v = evaluate(prefix, head, val_in, cached, args.batch_size)
                t = evaluate(prefix, head, test_in, cached, args.batch_size)
                curve.append({"step": step, "val_accuracy": v, "test_accuracy": t, "train_seconds": train_s})
                print(f"  {policy} step {step:5d} loss {loss.item():.4f} val {100*v:.1f}% test {100*t:.1f}% ({train_s:.0f}s)", flush=True)
                if v > best[0]:
                    best = (v, step, t)
            if step >= steps:
                break
    return {
        "framework": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(DEV),
        "policy": policy,
        "cut": cut_name(policy),
        "cached": cached,
        "pretrained": [l for l, m in zip(LAYERS, MODULE) if m in loaded],
        "steps": step,
        "test_accuracy": best[2],
        "best_step": best[1],
        "best_test_seen": max(p["test_accuracy"] for p in curve),
        "train_seconds": train_s,
        "samples_per_second": samples / train_s,
        "extract_views_per_second": ex_rate,
        "extracted_views": ex_views,
        "curve": curve,
    }


def table(py, rust):
    rows = ["| policy | framework | test acc. (best val) | samples/s | ratio to PyTorch | extraction crops/s | ratio |", "|---|---|---|---|---|---|---|"]
    for p in py:
        if not p["cached"] and p.get("timing_only"):
            continue
        rows.append(
            f"| {p['policy']} | PyTorch {p['torch']} | {100*p['test_accuracy']:.2f}% | {p['samples_per_second']:.1f} | 1.00 | "
            f"{p['extract_views_per_second'] or 0:.1f} | 1.00 |"
        )
        for r in rust.get("runs", []):
            if r["policy"] != p["policy"]:
                continue
            t = r["timings"]
            ex = t.get("extract_views_per_second")
            ex_ratio = f"{ex / p['extract_views_per_second']:.2f}" if ex and p["extract_views_per_second"] else "–"
            rows.append(
                f"| {r['policy']} | {r['backend']} ({r['device']}) | {100*r['test']['accuracy']:.2f}% | "
                f"{t['train_samples_per_second']:.1f} | {t['train_samples_per_second'] / p['samples_per_second']:.2f} | "
                f"{f'{ex:.1f}' if ex else '– (cache reused)'} | {ex_ratio} |"
            )
    speed = [p for p in py if p.get("timing_only")]
    if speed:
        rows += ["", "| framework | policy | uncached samples/s | ratio to PyTorch |", "|---|---|---|---|"]
        for p in speed:
            rows.append(f"| PyTorch | {p['policy']} | {p['samples_per_second']:.1f} | 1.00 |")
            for c in rust.get("cache_speedups", []):
                if c["policy"] == p["policy"]:
                    rows.append(f"| {c['backend']} | {c['policy']} | {c['uncached_samples_per_second']:.1f} | {c['uncached_samples_per_second'] / p['samples_per_second']:.2f} |")
    return "\n".join(rows)


def load_rust(files):
    """Runs and cache timings of several experiment.json files, one run per (backend, device, policy)."""
    rust = {"runs": [], "cache_speedups": []}
    seen = set()
    for f in files:
        r = json.loads(Path(f).read_text())
        for run in r.get("runs", []):
            key = (run["backend"], run["device"], run["policy"])
            if key not in seen:
                seen.add(key)
                rust["runs"].append(run)
        rust["cache_speedups"] += r.get("cache_speedups", [])
    return rust


def inception(args):
    """Inception-v3 extraction to the 2048-d bottleneck, the work of `alexnet --backbone inception-v3
    extract` and of the bench `backbone/inception-v3/extract`: the FID TorchScript archive that
    `alexnet weights fetch --backbone inception-v3` keeps, run by PyTorch on (a) random 299x299
    batches of 16 (the bench) and (b) the first N photos, decoded and resized by PIL (shorter side
    to 299, centre crop), normalised to (x-128)/128, in batches of 16."""
    home = Path(os.environ.get("ALEXNET_HOME", Path.home() / ".cache" / "alexnet-rs"))
    pt = home / "weights" / "inception-v3-fid.pt"
    if not pt.exists():
        sys.exit(f"{pt}: missing; run `alexnet weights fetch --backbone inception-v3` first")
    net = torch.jit.load(str(pt)).eval()
    batch = 16
    with torch.no_grad():
        x = torch.rand(batch, 3, 299, 299) * 2 - 1
        net(x)  # warm-up
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 20 or reps < 3:
            net(x)
            reps += 1
        synthetic = reps * batch / (time.perf_counter() - t0)
        _, samples = scan(args.data)
        files = [s[0] for s in samples][: args.inception]
        t0 = time.perf_counter()
        for i in range(0, len(files), batch):
            rows = []
            for f in files[i : i + batch]:
                a = load_resized(f, 299)
                h, w, _ = a.shape
                y0, x0 = round((h - 299) / 2), round((w - 299) / 2)
                c = (a[y0 : y0 + 299, x0 : x0 + 299].astype(np.float32) - 128.0) / 128.0
                rows.append(c.transpose(2, 0, 1))
            net(torch.from_numpy(np.ascontiguousarray(np.stack(rows))))
        photos = len(files) / (time.perf_counter() - t0)
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads · inception-v3 to pool3: "
          f"{synthetic:.2f} images/s on random batches of {batch}; {photos:.2f} images/s from {len(files)} JPEGs incl. decoding", flush=True)


def synthetic(args):
    """The benches' work on random inputs, as `cargo bench` times it (batch from --synthetic):
    extraction to pool5 (images/s), the cached fc6-fc8 SGD step on pool5 features and the
    uncached fc6 step from images (samples/s), the device synchronised inside each timed region."""
    rows = []
    for batch in [int(b) for b in args.synthetic.split(",")]:
        torch.manual_seed(0)
        model = AlexNet(5).to(DEV)
        prefix, head = model.split("fc6")
        prefix.eval()
        for p in prefix.parameters():
            p.requires_grad_(False)
        opt = torch.optim.SGD(head.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
        images = torch.rand(batch, 3, 224, 224, device=DEV) * 2 - 1
        pool5 = torch.rand(batch, 9216, device=DEV) * 2 - 1
        y = torch.arange(batch, device=DEV) % 5

        def step(x):
            loss = F.cross_entropy(head(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def extract():
            with torch.no_grad():
                return prefix(images)

        def full():
            with torch.no_grad():
                x = prefix(images)
            step(x)

        row = {"batch": batch, "device": str(DEV), "torch": torch.__version__}
        for name, f in [("extract", extract), ("head_step", lambda: step(pool5)), ("full_step", full)]:
            for _ in range(3):
                f()
            sync()
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.synthetic_seconds or reps < 3:
                f()
                sync()
                reps += 1
            row[name] = reps * batch / (time.perf_counter() - t0)
        rows.append(row)
        print(f"PyTorch {torch.__version__} on {DEV}, batch {batch}: extract {row['extract']:.1f} images/s, "
              f"head step {row['head_step']:.1f} samples/s, uncached step {row['full_step']:.1f} samples/s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


def main():
    home = Path(os.environ.get("ALEXNET_HOME", Path.home() / ".cache" / "alexnet-rs"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/flower_photos")
    ap.add_argument("--weights", default=os.environ.get("ALEXNET_WEIGHTS", home / "weights" / "alexnet-imagenet-conv.safetensors"))
    ap.add_argument("--policies", default="fc6")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--no-cache-steps", type=int, default=20, help="steps of the uncached fc6 timing run (0 skips it)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.01)  # the tool's default since 2026-12-01 (0.005 before)
    ap.add_argument("--conv-lr-mult", type=float, default=0.1)
    ap.add_argument("--cache-views", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--rust", action="append", default=[], help="experiment.json from `alexnet experiment` to compare against (repeatable)")
    ap.add_argument("--out", default="runs/pytorch-baseline.json")
    ap.add_argument("--table-only", action="store_true", help="print the comparison from --out's saved PyTorch results without training")
    ap.add_argument("--inception", type=int, default=0, metavar="N",
                    help="instead: time Inception-v3 extraction (TorchScript) on random batches and on the first N photos")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--synthetic", default=None, metavar="B1,B2",
                    help="instead: time extraction, the cached head step and the uncached step on random inputs at these batch sizes")
    ap.add_argument("--synthetic-seconds", type=float, default=3.0, help="timed seconds per --synthetic measurement")
    args = ap.parse_args()
    global DEV
    DEV = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.synthetic:
        synthetic(args)
        return
    if args.inception:
        inception(args)
        return
    if not Path(args.weights).exists():
        sys.exit(f"{args.weights}: no weights file; run `cargo run --release -p alexnet-cli -- weights fetch` first")
    if args.table_only:
        print(table(json.loads(Path(args.out).read_text()), load_rust(args.rust)))
        return
    classes, samples = scan(args.data)
    parts = {"train": [], "val": [], "test": []}
    for s in samples:
        parts[split_of(s[1])].append(s)
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads · {len(classes)} classes · "
          f"split {len(parts['train'])}/{len(parts['val'])}/{len(parts['test'])}", flush=True)
    eval_every = args.eval_every or max(1, args.steps // 10)
    results = []
    for policy in args.policies.split(","):
        policy = "conv1" if policy == "all" else policy
        r = run_policy(args, classes, parts, policy, True, args.steps, eval_every)
        r["policy"] = "all" if policy == "conv1" else policy
        results.append(r)
        print(f"{r['policy']}: test {100*r['test_accuracy']:.2f}% · {r['samples_per_second']:.1f} samples/s · "
              f"extraction {r['extract_views_per_second'] or 0:.1f} crops/s", flush=True)
    if args.no_cache_steps > 0:
        r = run_policy(args, classes, parts, "fc6", False, args.no_cache_steps, args.no_cache_steps)
        r["timing_only"] = True
        results.append(r)
        print(f"fc6 without cache: {r['samples_per_second']:.1f} samples/s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    rust = load_rust(args.rust)
    print()
    print(table(results, rust))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
