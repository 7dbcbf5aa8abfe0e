#!/usr/bin/env python3
"""Check and time ONNX files written by `wgtune export`, with onnx and onnxruntime (CPU).

  compare MODEL.onnx PREDICTIONS.jsonl [--batches 1 7] [--tolerance 1e-4]
      onnx.checker (full check) on the file, then onnxruntime on the images that `wgtune predict --json --logits`
      classified (PREDICTIONS.jsonl, one line per image; the images must already be the model's input size, so
      both sides see the same pixels). Runs the first B images for each B in --batches and compares the logits with
      wgtune's: the worst |difference| over an image's logits divided by that image's largest |logit| must be at
      most --tolerance. Reads the input name and normalization from the file's metadata. Prints one JSON object;
      exits 1 when a check fails.
  bench MODEL.onnx [--batch 32] [--threads 2] [--seconds 20]
      images/s of onnxruntime's CPU provider on random input (the deployment yardstick next to
      `wgtune bench predict`). Prints one JSON object.
"""

import argparse
import json
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image


def metadata(model):
    return {p.key: p.value for p in model.metadata_props}


def normalization(meta):
    """wgtune's normalization as (scale, shift) per channel on 0..255 values, in float32 as wgtune computes it."""
    kind = meta["wgtune.normalization"]
    if kind == "(x - 127) / 128":
        scale = np.full(3, 1 / 128, np.float32)
        shift = np.full(3, -127 / 128, np.float32)
    elif kind == "imagenet mean/std":
        mean = np.array([0.485, 0.456, 0.406], np.float32)
        std = np.array([0.229, 0.224, 0.225], np.float32)
        scale = (np.float32(1) / (np.float32(255) * std)).astype(np.float32)
        shift = (-mean / std).astype(np.float32)
    else:
        raise SystemExit(f"unknown normalization '{kind}' in the model's metadata")
    return scale.reshape(1, 3, 1, 1), shift.reshape(1, 3, 1, 1)


def session(path, threads=None):
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def compare(args):
    model = onnx.load(args.model)
    onnx.checker.check_model(model, full_check=True)
    meta = metadata(model)
    size = int(meta["wgtune.input_size"])
    rows = [json.loads(line) for line in open(args.predictions) if line.strip()]
    pixels = []
    for row in rows:
        img = np.asarray(Image.open(row["file"]).convert("RGB"), np.float32)
        # predict's evaluation crop: resize the short side to the presize, cut the centre square. Images saved at
        # the presize need no resampling, so the cut is exact here.
        presize = size + 2 * int(size / 14 + 0.5)
        if img.shape[:2] != (presize, presize):
            raise SystemExit(f"{row['file']} is {img.shape[1]}x{img.shape[0]}: give {presize}x{presize} images "
                             f"(the presize of a {size}x{size} model)")
        off = (presize - size) // 2
        pixels.append(img[off:off + size, off:off + size].transpose(2, 0, 1))
    pixels = np.stack(pixels)
    sess = session(args.model)
    (inp,) = sess.get_inputs()
    if meta["wgtune.normalization_in_graph"] == "true":
        x = pixels
    else:
        scale, shift = normalization(meta)
        x = (pixels * scale + shift).astype(np.float32)
    wanted = np.array([row["logits"] for row in rows], np.float64)
    report = {
        "model": args.model,
        "opset": model.opset_import[0].version,
        "ir_version": model.ir_version,
        "input": {"name": inp.name, "shape": inp.shape},
        "outputs": [o.name for o in sess.get_outputs()],
        "batches": [],
    }
    ok = True
    for b in args.batches:
        if b > len(rows):
            raise SystemExit(f"--batches {b}: only {len(rows)} images")
        outs = dict(zip(report["outputs"], sess.run(None, {inp.name: x[:b]})))
        logits = outs["logits"].astype(np.float64)
        rel = np.abs(logits - wanted[:b]).max(axis=1) / np.abs(wanted[:b]).max(axis=1)
        entry = {"batch": b, "max_rel_diff": float(rel.max()), "top1_equal": bool(
            (logits.argmax(1) == wanted[:b].argmax(1)).all())}
        if "probabilities" in outs:
            p = outs["probabilities"].astype(np.float64)
            z = np.exp(wanted[:b] - wanted[:b].max(axis=1, keepdims=True))
            entry["max_prob_diff"] = float(np.abs(p - z / z.sum(axis=1, keepdims=True)).max())
            ok &= entry["max_prob_diff"] <= args.tolerance
        ok &= entry["max_rel_diff"] <= args.tolerance and entry["top1_equal"]
        report["batches"].append(entry)
    report["ok"] = bool(ok)
    print(json.dumps(report))
    return 0 if ok else 1


def bench(args):
    model = onnx.load(args.model)
    size = int(metadata(model)["wgtune.input_size"])
    sess = session(args.model, args.threads)
    (inp,) = sess.get_inputs()
    x = np.random.default_rng(0).uniform(-1, 1, (args.batch, 3, size, size)).astype(np.float32)
    sess.run(None, {inp.name: x})  # warm-up
    runs, start = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - start < args.seconds:
        sess.run(None, {inp.name: x})
        runs += 1
    elapsed = time.perf_counter() - start
    print(json.dumps({
        "model": args.model, "runtime": f"onnxruntime {ort.__version__} CPU", "threads": args.threads,
        "batch": args.batch, "size": size, "runs": runs, "ms_per_batch": 1e3 * elapsed / runs,
        "images_per_s": args.batch * runs / elapsed,
    }))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare")
    c.add_argument("model")
    c.add_argument("predictions")
    c.add_argument("--batches", type=int, nargs="+", default=[1, 7])
    c.add_argument("--tolerance", type=float, default=1e-4)
    b = sub.add_parser("bench")
    b.add_argument("model")
    b.add_argument("--batch", type=int, default=32)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    return compare(args) if args.command == "compare" else bench(args)


if __name__ == "__main__":
    sys.exit(main())
