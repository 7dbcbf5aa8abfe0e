#!/usr/bin/env python3
"""An independent numpy forward pass of timm's ConvNeXt (atto and tiny; eval mode, timm's classifier head) with
seeded random weights in timm's state-dict layout, used to make wgtune's test fixtures. No weights are stored:
both sides draw them from the same generator.

    pip install numpy
    python3 tools/convnext_reference.py tests/fixtures/convnext [--timm]

Weights: for every parameter, in order of name (timm's state-dict names), values come from one SplitMix64 stream
(seed 2025) as f32: conv and linear weights (2-D and up) uniform in +-sqrt(6 / fan_in), LayerNorm weights in
[0.5, 1.5), every other 1-D tensor (biases, layer-scale gammas) in [-0.1, 0.1). The MLP of convnext_atto is
timm's ConvMlp (fc1/fc2 weights (out, in, 1, 1)); convnext_tiny's is a Linear Mlp ((out, in)): the same draws
either way. The input (1, 3, 64, 64) comes from seed 7, uniform in [-1, 1). Writes NAME.logits.f32 (1000
little-endian f32) for each model. With --timm (timm and torch installed), also runs timm's own model on the same
weights and prints the largest difference.
"""
import os
import sys
from math import erf, sqrt

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resnet_reference import SplitMix  # noqa: E402  (the generator the Rust tests share)

CONFIGS = {
    "convnext_atto": ([2, 2, 6, 2], [40, 80, 160, 320], True),
    "convnext_tiny": ([3, 3, 9, 3], [96, 192, 384, 768], False),
}
EPS = 1e-6


def shapes(name):
    """timm's state-dict names and shapes."""
    depths, dims, conv_mlp = CONFIGS[name]
    out = {"stem.0.weight": (dims[0], 3, 4, 4), "stem.0.bias": (dims[0],),
           "stem.1.weight": (dims[0],), "stem.1.bias": (dims[0],)}
    for s, (depth, dim) in enumerate(zip(depths, dims)):
        if s > 0:
            out[f"stages.{s}.downsample.0.weight"] = (dims[s - 1],)
            out[f"stages.{s}.downsample.0.bias"] = (dims[s - 1],)
            out[f"stages.{s}.downsample.1.weight"] = (dim, dims[s - 1], 2, 2)
            out[f"stages.{s}.downsample.1.bias"] = (dim,)
        for b in range(depth):
            p = f"stages.{s}.blocks.{b}"
            out[f"{p}.gamma"] = (dim,)
            out[f"{p}.conv_dw.weight"] = (dim, 1, 7, 7)
            out[f"{p}.conv_dw.bias"] = (dim,)
            out[f"{p}.norm.weight"] = (dim,)
            out[f"{p}.norm.bias"] = (dim,)
            out[f"{p}.mlp.fc1.weight"] = (4 * dim, dim, 1, 1) if conv_mlp else (4 * dim, dim)
            out[f"{p}.mlp.fc1.bias"] = (4 * dim,)
            out[f"{p}.mlp.fc2.weight"] = (dim, 4 * dim, 1, 1) if conv_mlp else (dim, 4 * dim)
            out[f"{p}.mlp.fc2.bias"] = (dim,)
    out["head.norm.weight"] = (dims[3],)
    out["head.norm.bias"] = (dims[3],)
    out["head.fc.weight"] = (1000, dims[3])
    out["head.fc.bias"] = (1000,)
    return out


def is_norm_weight(key):
    return key.endswith("norm.weight") or key in ("stem.1.weight",) or key.endswith("downsample.0.weight")


def seeded(table, seed, is_norm):
    """Values for every tensor of `table` (name -> shape), in order of name, from SplitMix64(seed): 2-D and up
    uniform in +-sqrt(6 / fan_in), norm weights (`is_norm(name)`) in [0.5, 1.5), other 1-D in [-0.1, 0.1)."""
    rng = SplitMix(seed)
    p = {}
    for key in sorted(table):
        shape = table[key]
        n = int(np.prod(shape))
        if len(shape) >= 2:
            a = np.sqrt(6.0 / int(np.prod(shape[1:])))
            v = rng.uniform(-a, a, n)
        elif is_norm(key):
            v = rng.uniform(0.5, 1.5, n)
        else:
            v = rng.uniform(-0.1, 0.1, n)
        p[key] = v.reshape(shape)
    return p


def weights(name):
    return seeded(shapes(name), 2025, is_norm_weight)


def conv(x, w, b, stride, pad, groups=1):
    """(C, H, W) convolution with w (O, C / groups, k, k), symmetric zero padding, then the bias."""
    o, cg, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    oh = (x.shape[1] + 2 * pad - k) // stride + 1
    ow = (x.shape[2] + 2 * pad - k) // stride + 1
    out = np.zeros((o, oh, ow))
    for i in range(k):
        for j in range(k):
            patch = xp[:, i:i + stride * oh:stride, j:j + stride * ow:stride]
            if groups == 1:
                out += (w[:, :, i, j] @ patch.reshape(cg, -1)).reshape(o, oh, ow)
            else:  # depthwise: groups == channels
                out += w[:, 0, i, j][:, None, None] * patch
    return out + b[:, None, None]


def layer_norm_channels(x, g, b):
    """LayerNorm2d: over the channels of (C, H, W) at each pixel, biased variance."""
    m = x.mean(axis=0, keepdims=True)
    v = ((x - m) ** 2).mean(axis=0, keepdims=True)
    return (x - m) / np.sqrt(v + EPS) * g[:, None, None] + b[:, None, None]


GELU = np.vectorize(lambda t: 0.5 * t * (1.0 + erf(t / sqrt(2.0))))


def forward(name, p, x):
    depths, dims, _ = CONFIGS[name]
    x = conv(x, p["stem.0.weight"], p["stem.0.bias"], 4, 0)
    x = layer_norm_channels(x, p["stem.1.weight"], p["stem.1.bias"])
    for s, depth in enumerate(depths):
        if s > 0:
            d = f"stages.{s}.downsample"
            x = layer_norm_channels(x, p[f"{d}.0.weight"], p[f"{d}.0.bias"])
            x = conv(x, p[f"{d}.1.weight"], p[f"{d}.1.bias"], 2, 0)
        for b in range(depth):
            q = f"stages.{s}.blocks.{b}"
            y = conv(x, p[f"{q}.conv_dw.weight"], p[f"{q}.conv_dw.bias"], 1, 3, groups=x.shape[0])
            y = layer_norm_channels(y, p[f"{q}.norm.weight"], p[f"{q}.norm.bias"])
            c, h, w = y.shape
            w1 = p[f"{q}.mlp.fc1.weight"].reshape(4 * c, c)
            w2 = p[f"{q}.mlp.fc2.weight"].reshape(c, 4 * c)
            y = GELU(w1 @ y.reshape(c, -1) + p[f"{q}.mlp.fc1.bias"][:, None])
            y = (w2 @ y + p[f"{q}.mlp.fc2.bias"][:, None]).reshape(c, h, w)
            x = x + p[f"{q}.gamma"][:, None, None] * y
    pooled = x.mean(axis=(1, 2))
    m, v = pooled.mean(), pooled.var()
    normed = (pooled - m) / np.sqrt(v + EPS) * p["head.norm.weight"] + p["head.norm.bias"]
    return p["head.fc.weight"] @ normed + p["head.fc.bias"]


def against_timm(name, p, x, logits):
    import timm
    import torch
    model = timm.create_model(name, pretrained=False).double().eval()
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in p.items()})
    with torch.no_grad():
        theirs = model(torch.from_numpy(x[None]))[0].numpy()
    print(f"{name}: timm {timm.__version__} float64 against this reference: max |diff| "
          f"{abs(theirs - logits).max():.2e} (max |logit| {abs(theirs).max():.3f})")


def main():
    args = [a for a in sys.argv[1:] if a != "--timm"]
    if len(args) != 1:
        sys.exit(__doc__)
    out_dir = args[0]
    os.makedirs(out_dir, exist_ok=True)
    x = SplitMix(7).uniform(-1.0, 1.0, 3 * 64 * 64).reshape(3, 64, 64).astype(np.float64)
    for name in CONFIGS:
        p = {k: v.astype(np.float64) for k, v in weights(name).items()}
        logits = forward(name, p, x)
        logits.astype("<f4").tofile(os.path.join(out_dir, f"{name}.logits.f32"))
        print(f"{name}: logits[:4] {logits[:4].round(4).tolist()}, max |logit| {abs(logits).max():.3f}")
        if "--timm" in sys.argv:
            against_timm(name, p, x, logits)


if __name__ == "__main__":
    main()
