#!/usr/bin/env python3
"""An independent numpy forward pass of torchvision's ResNet-18/34/50 (eval mode) with seeded random weights,
used to make wgtune's test fixtures. No weights are stored: both sides draw them from the same generator.

    pip install numpy
    python3 tools/resnet_reference.py tests/fixtures/resnet

Weights: for every parameter and batch-norm statistic, in order of name (torchvision's state-dict names), values
come from one SplitMix64 stream (seed 2024) as f32: conv and linear weights uniform in +-sqrt(6 / fan_in), batch-norm
weights and running variances in [0.5, 1.5), biases and running means in [-0.1, 0.1). The input (1, 3, 64, 64)
comes from seed 7, uniform in [-1, 1). Writes NAME.logits.f32 (1000 little-endian f32) for each model.
"""
import os
import sys

import numpy as np

MASK = (1 << 64) - 1


class SplitMix:
    def __init__(self, seed):
        self.x = seed

    def next(self):
        self.x = (self.x + 0x9E3779B97F4A7C15) & MASK
        z = self.x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def uniform(self, lo, hi, n):
        return np.array([lo + (hi - lo) * ((self.next() >> 11) / float(1 << 53)) for _ in range(n)], dtype=np.float32)


CONFIGS = {"resnet18": ([2, 2, 2, 2], False), "resnet34": ([3, 4, 6, 3], False), "resnet50": ([3, 4, 6, 3], True)}


def shapes(name):
    """torchvision state-dict names and shapes (without num_batches_tracked)."""
    layers, bottleneck = CONFIGS[name]
    out = {"conv1.weight": (64, 3, 7, 7)}
    def bn(p, c):
        for s in ("weight", "bias", "running_mean", "running_var"):
            out[f"{p}.{s}"] = (c,)
    bn("bn1", 64)
    cin, exp = 64, (4 if bottleneck else 1)
    for li, (blocks, width) in enumerate(zip(layers, [64, 128, 256, 512])):
        for b in range(blocks):
            p = f"layer{li + 1}.{b}"
            stride = 2 if b == 0 and li > 0 else 1
            cout = width * exp
            if bottleneck:
                out[f"{p}.conv1.weight"] = (width, cin, 1, 1); bn(f"{p}.bn1", width)
                out[f"{p}.conv2.weight"] = (width, width, 3, 3); bn(f"{p}.bn2", width)
                out[f"{p}.conv3.weight"] = (cout, width, 1, 1); bn(f"{p}.bn3", cout)
            else:
                out[f"{p}.conv1.weight"] = (width, cin, 3, 3); bn(f"{p}.bn1", width)
                out[f"{p}.conv2.weight"] = (width, width, 3, 3); bn(f"{p}.bn2", width)
            if stride != 1 or cin != cout:
                out[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1); bn(f"{p}.downsample.1", cout)
            cin = cout
    out["fc.weight"] = (1000, cin)
    out["fc.bias"] = (1000,)
    return out


def weights(name):
    rng = SplitMix(2024)
    p = {}
    for key in sorted(shapes(name)):
        shape = shapes(name)[key]
        n = int(np.prod(shape))
        if len(shape) >= 2:
            a = np.sqrt(6.0 / int(np.prod(shape[1:])))
            v = rng.uniform(-a, a, n)
        elif key.endswith("running_var") or key.endswith(".weight"):
            v = rng.uniform(0.5, 1.5, n)
        else:
            v = rng.uniform(-0.1, 0.1, n)
        p[key] = v.reshape(shape).astype(np.float64)
    return p


def conv(x, w, stride, pad):
    """(C, H, W) conv with w (O, C, k, k), symmetric zero padding."""
    o, c, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    oh = (x.shape[1] + 2 * pad - k) // stride + 1
    ow = (x.shape[2] + 2 * pad - k) // stride + 1
    out = np.zeros((o, oh, ow))
    for i in range(k):
        for j in range(k):
            patch = xp[:, i:i + stride * oh:stride, j:j + stride * ow:stride].reshape(c, -1)
            out += (w[:, :, i, j] @ patch).reshape(o, oh, ow)
    return out


def bn(x, p, name):
    g, b, m, v = (p[f"{name}.{s}"] for s in ("weight", "bias", "running_mean", "running_var"))
    return (x - m[:, None, None]) / np.sqrt(v[:, None, None] + 1e-5) * g[:, None, None] + b[:, None, None]


def maxpool(x):
    """3x3, stride 2, padding 1 (padding never wins)."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    oh = (x.shape[1] + 2 - 3) // 2 + 1
    ow = (x.shape[2] + 2 - 3) // 2 + 1
    out = np.full((x.shape[0], oh, ow), -np.inf)
    for i in range(3):
        for j in range(3):
            out = np.maximum(out, xp[:, i:i + 2 * oh:2, j:j + 2 * ow:2])
    return out


def forward(name, p, x):
    layers, bottleneck = CONFIGS[name]
    relu = lambda t: np.maximum(t, 0)
    x = maxpool(relu(bn(conv(x, p["conv1.weight"], 2, 3), p, "bn1")))
    for li, blocks in enumerate(layers):
        for b in range(blocks):
            pre = f"layer{li + 1}.{b}"
            stride = 2 if b == 0 and li > 0 else 1
            if bottleneck:
                y = relu(bn(conv(x, p[f"{pre}.conv1.weight"], 1, 0), p, f"{pre}.bn1"))
                y = relu(bn(conv(y, p[f"{pre}.conv2.weight"], stride, 1), p, f"{pre}.bn2"))
                y = bn(conv(y, p[f"{pre}.conv3.weight"], 1, 0), p, f"{pre}.bn3")
            else:
                y = relu(bn(conv(x, p[f"{pre}.conv1.weight"], stride, 1), p, f"{pre}.bn1"))
                y = bn(conv(y, p[f"{pre}.conv2.weight"], 1, 1), p, f"{pre}.bn2")
            if f"{pre}.downsample.0.weight" in p:
                x = bn(conv(x, p[f"{pre}.downsample.0.weight"], stride, 0), p, f"{pre}.downsample.1")
            x = relu(y + x)
    return p["fc.weight"] @ x.mean(axis=(1, 2)) + p["fc.bias"]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    x = SplitMix(7).uniform(-1.0, 1.0, 3 * 64 * 64).reshape(3, 64, 64).astype(np.float64)
    for name in CONFIGS:
        logits = forward(name, weights(name), x)
        logits.astype("<f4").tofile(os.path.join(out_dir, f"{name}.logits.f32"))
        print(f"{name}: logits[:4] {logits[:4].round(4).tolist()}, max |logit| {abs(logits).max():.3f}")


if __name__ == "__main__":
    main()
