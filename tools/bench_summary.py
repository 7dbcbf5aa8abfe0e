#!/usr/bin/env python3
"""Summarize a scripts/gpu-bench.sh results folder as Markdown: wgtune next to PyTorch, with ratios.

    python3 tools/bench_summary.py RESULTS_DIR > RESULTS_DIR/summary.md

Standard library only. Ratios are wgtune / PyTorch (above 1: wgtune is faster or, for memory, uses more). On CUDA
PyTorch is measured twice, strict float32 (TF32 off, what WGSL can match) and with TF32 on (its default for
convolutions): both columns are shown; a CPU run has only the first.
"""
import json
import os
import sys


def lines(path):
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


def by_tf32(torch, bench, key):
    """PyTorch's records of `bench` as {key(record): (strict f32, TF32 on)}; a run without TF32 counts as strict."""
    out = {}
    for t in torch:
        if t["bench"] != bench:
            continue
        pair = out.setdefault(key(t), [{}, {}])
        pair[1 if t.get("tf32") else 0] = t
    return out


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = sys.argv[1]
    info = (lines(os.path.join(d, "info.json")) or [{}])[0]
    torch = lines(os.path.join(d, "torch.jsonl"))
    machine = open(os.path.join(d, "machine.txt")).read().strip().splitlines() if os.path.exists(
        os.path.join(d, "machine.txt")) else []
    adapter = info.get("adapter", {})
    print(f"# wgtune benchmarks, {machine[0] if machine else 'date unknown'}\n")
    print(f"- adapter: {adapter.get('name', '?')} ({adapter.get('backend', '?')}, {adapter.get('driver_info', '')})")
    for m in machine[1:]:
        print(f"- {m}")
    tdev = {t.get("device") for t in torch}
    print(f"- PyTorch: {torch[0]['framework']} on {', '.join(sorted(tdev))}" if torch else "- PyTorch: not run")

    print("\n## matmul (f32, n x n x n)\n\n| n | kernel | wgtune GFLOP/s | PyTorch GFLOP/s TF32 off / on | "
          "ratio off / on |\n|---|---|---|---|---|")
    tm = by_tf32(torch, "matmul", lambda t: t["n"])
    for r in lines(os.path.join(d, "matmul.jsonl")):
        if r.get("kernel") == "naive":
            continue
        off, on = tm.get(r["n"], ({}, {}))
        kernel = f"auto -> {r['tuned']}" if r.get("tuned") else r["kernel"]
        print(f"| {r['n']} | {kernel} | {r['gflops']:.1f} | {off.get('gflops', 0):.1f} / {on.get('gflops', 0):.1f} | "
              f"{ratio(r['gflops'], off.get('gflops'))} / {ratio(r['gflops'], on.get('gflops'))} |")

    print("\n## convolution, ResNet 3x3 [8,64,56,56] (stride 1; stride 2 to 128 channels)\n\n| layer | pass | "
          "wgtune GFLOP/s | PyTorch GFLOP/s TF32 off / on | ratio off / on |\n|---|---|---|---|---|")
    renamed = {"resnet_3x3": "resnet_3x3_64"}  # the layer's name in records from before 2026-12-04
    tc = by_tf32(torch, "conv", lambda t: (renamed.get(t["layer"], t["layer"]), t["pass"]))
    for r in lines(os.path.join(d, "conv.jsonl")):
        if not r.get("layer", "").startswith("resnet_"):
            continue
        off, on = tc.get((r["layer"], r["pass"]), ({}, {}))
        print(f"| {r['layer']} | {r['pass']} | {r['gflops']:.2f} | {off.get('gflops', 0):.1f} / "
              f"{on.get('gflops', 0):.1f} | {ratio(r['gflops'], off.get('gflops'))} / "
              f"{ratio(r['gflops'], on.get('gflops'))} |")

    print("\n## training step (fastai head, Adam, all parameters)\n")
    print("| model | batch | size | wgtune images/s | PyTorch images/s TF32 off / on | ratio off / on | "
          "wgtune planned GPU MiB | PyTorch memory MiB | encode us/step |\n|---|---|---|---|---|---|---|---|---|")
    tt = by_tf32(torch, "train", lambda t: (t["model"], t["batch"], t["size"]))
    trains = lines(os.path.join(d, "train.jsonl"))
    for r in trains:
        off, on = tt.get((r["model"], r["batch"], r["size"]), ({}, {}))
        mem = off.get("peak_memory_bytes", 0) / 2**20
        kind = f" ({off['memory_kind']})" if off else ""
        ips = r["images_per_s"]
        print(f"| {r['model']} | {r['batch']} | {r['size']} | {ips:.2f} | "
              f"{off.get('images_per_s', 0):.2f} / {on.get('images_per_s', 0):.2f} | "
              f"{ratio(ips, off.get('images_per_s'))} / {ratio(ips, on.get('images_per_s'))} | "
              f"{r['planned_bytes'] / 2**20:.0f} | {mem:.0f}{kind} | {r['encode_us']:.0f} |")

    for r in trains:
        p = r.get("profile")
        if not p:
            continue
        print(f"\n### where the GPU time goes: {r['model']} (batch {r['batch']}, {r['size']} px)\n")
        if p["clock"] != "gpu_timestamps":
            print(f"whole step {p['wall_ms']:.1f} ms (no timestamp queries on this adapter)")
            continue
        print(f"{p['dispatches']} dispatches, {p['gpu_ms']:.1f} ms of GPU time\n")
        print("| op type | calls | ms | share | GFLOP/s | GB/s |\n|---|---|---|---|---|---|")
        for row in p["by_op"][:10]:
            g = f"{row['gflops']:.1f}" if row.get("gflops") is not None else "-"
            print(f"| {row['name']} | {row['calls']} | {row['ms']:.2f} | {row['share'] * 100:.1f}% | {g} | "
                  f"{row['gbps']:.1f} |")

    tunes = lines(os.path.join(d, "tune.jsonl"))
    if tunes:
        print("\n## the autotuner's choices (per model: problems won by each kernel; ms summed over them, chosen "
              "kernel against the tiled one)\n")
        print("| model | family | kernels chosen | ms chosen / tiled |\n|---|---|---|---|")
        for r in tunes:
            families = {}
            for key, c in sorted(r.get("choices", {}).items()):
                family = " ".join(w for w in key.split()[:2] if not w[0].isdigit())
                f = families.setdefault(family, {"won": {}, "chosen": 0.0, "tiled": 0.0, "unfinished": 0})
                if c.get("pending"):
                    # The budget cut this problem short: its default runs, nothing was chosen yet.
                    f["unfinished"] += 1
                    continue
                f["won"][c["kernel"]] = f["won"].get(c["kernel"], 0) + 1
                ms = c.get("measured_ms", {})
                if c["kernel"] in ms and "tiled" in ms:
                    f["chosen"] += ms[c["kernel"]]
                    f["tiled"] += ms["tiled"]
            for family, f in families.items():
                won = ", ".join(f"{k} {n}" for k, n in sorted(f["won"].items()))
                if f["unfinished"]:
                    won += f" ({f['unfinished']} not yet timed in full)"
                times = f"{f['chosen']:.2f} / {f['tiled']:.2f}" if f["tiled"] else "-"
                print(f"| {r.get('model', '?')} | {family} | {won} | {times} |")


if __name__ == "__main__":
    main()
