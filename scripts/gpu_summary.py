#!/usr/bin/env python3
"""Tables from the outputs of scripts/gpu-run.sh: gpu-run.md and gpu-run.json in OUT.

Usage: gpu_summary.py OUT DEVICE
Reads selfcheck-<backend>.json, train-<backend>[-nocache]/report.json, bench-b<N>/**/new/*.json
(criterion's estimates), pytorch-synthetic.json and pytorch-fc6.json. Anything missing shows as
"—" with the reason in the notes, so a partial run still gives its table.
"""

import json
import platform
import subprocess
import sys
from pathlib import Path

BACKENDS = ["candle", "tch", "burn"]


def load(p):
    try:
        return json.loads(Path(p).read_text())
    except (OSError, ValueError):
        return None


def fmt(v, spec=".1f", unit=""):
    return "—" if v is None else f"{v:{spec}}{unit}"


def ratio(a, b):
    return None if a is None or not b else a / b


def selfchecks(out):
    rows = {}
    for b in BACKENDS:
        r = load(out / f"selfcheck-{b}.json")
        if not r:
            continue
        r = r[0]
        m = [c["measured"] for c in r["checks"] if c.get("measured")]
        failed = [f"{c['check']}: {(c.get('detail') or '').splitlines()[0] if c.get('detail') else ''}" for c in r["checks"] if c["status"] == "fail"]
        rows[b] = {
            "device": r["device"],
            "passed": r["passed"],
            "failed": r["failed"],
            "skipped": r["skipped"],
            "worst_ratio": max((x["worst_ratio"] for x in m), default=None),
            "max_relative": max((x["max_relative"] for x in m), default=None),
            "failures": failed,
        }
    return rows


def trains(out):
    rows = {}
    for b in BACKENDS:
        c, u = load(out / f"train-{b}" / "report.json"), load(out / f"train-{b}-nocache" / "report.json")
        if not c and not u:
            continue
        row = {}
        if c:
            t = c["timings"]
            row.update(
                device=c["device"],
                test_accuracy=c["test"]["accuracy"],
                val_accuracy=c["val"]["accuracy"],
                test_images=c["data"]["test"],
                best_step=c["best_step"],
                extract_images_per_second=t.get("extract_images_per_second"),
                cached_samples_per_second=t["train_samples_per_second"],
            )
        if u:
            row["uncached_samples_per_second"] = u["timings"]["train_samples_per_second"]
        row["cache_speedup"] = ratio(row.get("cached_samples_per_second"), row.get("uncached_samples_per_second"))
        rows[b] = row
    return rows


def benches(out):
    """{(backend label, batch): {bench: elements/s}} from criterion's saved estimates."""
    res = {}
    for d in sorted(out.glob("bench-b*")):
        if not d.is_dir():
            continue
        for bj in d.rglob("new/benchmark.json"):
            meta, est = load(bj), load(bj.parent / "estimates.json")
            if not meta or not est:
                continue
            parts = meta["full_id"].split("/")  # alexnet/<bench>/<label>/b<N>
            if len(parts) != 4:
                continue
            n = (meta.get("throughput") or {}).get("Elements")
            if not n:
                continue
            rate = n / (est["mean"]["point_estimate"] * 1e-9)
            res.setdefault((parts[2], int(parts[3][1:])), {})[parts[1]] = rate
    return res


def main():
    out, device = Path(sys.argv[1]), sys.argv[2]
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip() if device == "cuda" else ""
    sc, tr, be = selfchecks(out), trains(out), benches(out)
    pt_syn = {r["batch"]: r for r in (load(out / "pytorch-synthetic.json") or [])}
    pt_fc6 = load(out / "pytorch-fc6.json") or []
    pt_cached = next((r for r in pt_fc6 if r.get("cached")), None)
    pt_uncached = next((r for r in pt_fc6 if r.get("timing_only")), None)
    notes = []
    md = [f"# GPU run ({device})", "", f"Machine: {gpu or platform.processor() or platform.machine()}; {len(__import__('os').sched_getaffinity(0))} CPU cores.", ""]

    md += ["## selfcheck (the conformance suite against the f64 reference)", "",
           "| backend | device | passed | failed | skipped | worst \\|Δ\\|/bound | max relative error |", "|---|---|---|---|---|---|---|"]
    for b in BACKENDS:
        r = sc.get(b)
        if not r:
            md.append(f"| {b} | — | — | — | — | — | — |")
            notes.append(f"selfcheck {b}: no result (see log.txt)")
            continue
        md.append(f"| {b} | {r['device']} | {r['passed']} | {r['failed']} | {r['skipped']} | {fmt(r['worst_ratio'], '.3f')} | {fmt(r['max_relative'], '.1e')} |")
        notes += [f"selfcheck {b} failed {f}" for f in r["failures"]]

    md += ["", "## fc6–fc8 on the photo subset (train with the cache, and `--no-cache`)", "",
           "| backend | test acc. (images) | extraction from JPEGs, images/s | cached step, samples/s | uncached step, samples/s | cache speed-up |",
           "|---|---|---|---|---|---|"]
    for b in BACKENDS:
        r = tr.get(b, {})
        acc = fmt(100 * r["test_accuracy"], ".2f", "%") + f" ({r['test_images']})" if "test_accuracy" in r else "—"
        md.append(f"| {b} | {acc} | {fmt(r.get('extract_images_per_second'))} | {fmt(r.get('cached_samples_per_second'))} | "
                  f"{fmt(r.get('uncached_samples_per_second'))} | {fmt(r.get('cache_speedup'), '.1f', '×')} |")
    if pt_cached:
        # PyTorch's extraction rate counts crops (views), the train report's images: per view here.
        md.append(f"| PyTorch {pt_cached['torch']} | {100 * pt_cached['test_accuracy']:.2f}% | {fmt(pt_cached.get('extract_views_per_second'))} (crops/s) | "
                  f"{fmt(pt_cached.get('samples_per_second'))} | {fmt(pt_uncached and pt_uncached.get('samples_per_second'))} | "
                  f"{fmt(ratio(pt_cached.get('samples_per_second'), pt_uncached and pt_uncached.get('samples_per_second')), '.1f', '×')} |")

    md += ["", "## benches (random inputs, device synchronised in the timed region)", "",
           "| backend | batch | extract, images/s | ÷ PyTorch | cached head step, samples/s | ÷ PyTorch | uncached step, samples/s | ÷ PyTorch |",
           "|---|---|---|---|---|---|---|---|"]
    for (label, batch), r in sorted(be.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        p = pt_syn.get(batch, {})
        cells = []
        for k in ["extract", "head_step", "full_step"]:
            cells += [fmt(r.get(k)), fmt(ratio(r.get(k), p.get(k)), ".2f", "×")]
        md.append(f"| {label} | {batch} | " + " | ".join(cells) + " |")
    for batch, p in sorted(pt_syn.items()):
        md.append(f"| PyTorch {p['torch']} ({p['device']}) | {batch} | {p['extract']:.1f} | 1 | {p['head_step']:.1f} | 1 | {p['full_step']:.1f} | 1 |")
    if not be:
        notes.append("benches: no estimates (see log.txt)")
    if notes:
        md += ["", "Notes:"] + [f"- {n}" for n in notes]
    (out / "gpu-run.md").write_text("\n".join(md) + "\n")
    (out / "gpu-run.json").write_text(json.dumps({
        "device": device, "gpu": gpu, "selfcheck": sc, "train": tr,
        "benches": [{"backend": l, "batch": b, **r} for (l, b), r in sorted(be.items())],
        "pytorch": {"synthetic": list(pt_syn.values()), "fc6": pt_fc6}, "notes": notes,
    }, indent=2))


if __name__ == "__main__":
    main()
