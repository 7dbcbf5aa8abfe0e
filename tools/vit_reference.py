#!/usr/bin/env python3
"""An independent numpy forward pass of timm's VisionTransformer (deit_tiny_patch16_224 and vit_small_patch16_224
built for 64 px inputs: 16 patches and the class token; eval mode, timm's head on the class token) with seeded
random weights in timm's state-dict layout, used to make wgtune's test fixtures. No weights are stored: both sides
draw them from the same generator.

    pip install numpy
    python3 tools/vit_reference.py tests/fixtures/vit [--timm]

Weights: for every parameter, in order of name (timm's names), values come from one SplitMix64 stream (seed 2026)
as f32: tensors of 2-D and up (the class token and position embedding included) uniform in +-sqrt(6 / fan_in),
fan_in the product of all but the first dimension; LayerNorm weights in [0.5, 1.5); every other 1-D tensor in
[-0.1, 0.1). The input (1, 3, 64, 64) comes from seed 7, uniform in [-1, 1). Writes NAME.logits.f32 (1000
little-endian f32). With --timm (timm and torch installed), also runs timm's model (img_size=64) on the same weights
and prints the largest difference, and writes the position-embedding resampling fixtures: pos_embed_G.f32 (1, 1 +
G*G, 3) and pos_embed_G_to_H.f32, resampled as timm's resample_abs_pos_embed does (PyTorch's bicubic interpolation
with antialiasing; the class token's row kept).
"""
import os
import sys
from math import erf, sqrt

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convnext_reference import seeded  # noqa: E402  (the weight draws the Rust tests share)
from resnet_reference import SplitMix  # noqa: E402

CONFIGS = {"deit_tiny_patch16_224": (192, 3), "vit_small_patch16_224": (384, 6)}
DEPTH, PATCH, SIZE, EPS = 12, 16, 64, 1e-6


def shapes(name):
    d, _ = CONFIGS[name]
    t = (SIZE // PATCH) ** 2 + 1
    out = {"cls_token": (1, 1, d), "pos_embed": (1, t, d), "patch_embed.proj.weight": (d, 3, PATCH, PATCH),
           "patch_embed.proj.bias": (d,), "norm.weight": (d,), "norm.bias": (d,), "head.weight": (1000, d),
           "head.bias": (1000,)}
    for i in range(DEPTH):
        b = f"blocks.{i}"
        for n in ("norm1", "norm2"):
            out[f"{b}.{n}.weight"] = (d,)
            out[f"{b}.{n}.bias"] = (d,)
        for n, (o, k) in {"attn.qkv": (3 * d, d), "attn.proj": (d, d), "mlp.fc1": (4 * d, d),
                          "mlp.fc2": (d, 4 * d)}.items():
            out[f"{b}.{n}.weight"] = (o, k)
            out[f"{b}.{n}.bias"] = (o,)
    return out


def weights(name):
    return seeded(shapes(name), 2026, lambda k: k.endswith(("norm.weight", "norm1.weight", "norm2.weight")))


def layer_norm(x, g, b):
    m = x.mean(axis=-1, keepdims=True)
    v = ((x - m) ** 2).mean(axis=-1, keepdims=True)
    return (x - m) / np.sqrt(v + EPS) * g + b


GELU = np.vectorize(lambda t: 0.5 * t * (1.0 + erf(t / sqrt(2.0))))


def forward(name, p, x):
    d, heads = CONFIGS[name]
    hd = d // heads
    g = SIZE // PATCH
    w = p["patch_embed.proj.weight"].reshape(d, -1)
    patches = x.reshape(3, g, PATCH, g, PATCH).transpose(1, 3, 0, 2, 4).reshape(g * g, -1)  # row-major patches
    tokens = patches @ w.T + p["patch_embed.proj.bias"]
    h = np.concatenate([p["cls_token"][0], tokens]) + p["pos_embed"][0]
    t = h.shape[0]
    for i in range(DEPTH):
        b = f"blocks.{i}"
        y = layer_norm(h, p[f"{b}.norm1.weight"], p[f"{b}.norm1.bias"])
        qkv = (y @ p[f"{b}.attn.qkv.weight"].T + p[f"{b}.attn.qkv.bias"]).reshape(t, 3, heads, hd)
        q, k, v = (qkv[:, j].transpose(1, 0, 2) for j in range(3))  # (heads, t, hd)
        s = q @ k.transpose(0, 2, 1) / sqrt(hd)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        a = s / s.sum(axis=-1, keepdims=True)
        o = (a @ v).transpose(1, 0, 2).reshape(t, d)
        h = h + o @ p[f"{b}.attn.proj.weight"].T + p[f"{b}.attn.proj.bias"]
        y = layer_norm(h, p[f"{b}.norm2.weight"], p[f"{b}.norm2.bias"])
        y = GELU(y @ p[f"{b}.mlp.fc1.weight"].T + p[f"{b}.mlp.fc1.bias"])
        h = h + y @ p[f"{b}.mlp.fc2.weight"].T + p[f"{b}.mlp.fc2.bias"]
    h = layer_norm(h, p["norm.weight"], p["norm.bias"])
    return p["head.weight"] @ h[0] + p["head.bias"]


def against_timm(name, p, x, logits):
    import timm
    import torch
    model = timm.create_model(name, pretrained=False, img_size=SIZE).double().eval()
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in p.items()})
    with torch.no_grad():
        theirs = model(torch.from_numpy(x[None]))[0].numpy()
    print(f"{name}: timm {timm.__version__} float64 against this reference: max |diff| "
          f"{abs(theirs - logits).max():.2e} (max |logit| {abs(theirs).max():.3f})")


def pos_embed_fixtures(out_dir):
    import torch
    import torch.nn.functional as F
    torch.manual_seed(0)
    for g0, g1 in [(14, 4), (4, 6), (5, 3)]:
        pe = torch.randn(1, 1 + g0 * g0, 3).double()  # values that f32 holds exactly
        grid = pe[:, 1:].reshape(1, g0, g0, 3).permute(0, 3, 1, 2)
        out = F.interpolate(grid, size=(g1, g1), mode="bicubic", antialias=True, align_corners=False)
        res = torch.cat([pe[:, :1], out.permute(0, 2, 3, 1).reshape(1, g1 * g1, 3)], 1)
        pe.numpy().astype("<f4").tofile(os.path.join(out_dir, f"pos_embed_{g0}.f32"))
        res.numpy().astype("<f4").tofile(os.path.join(out_dir, f"pos_embed_{g0}_to_{g1}.f32"))


def main():
    args = [a for a in sys.argv[1:] if a != "--timm"]
    if len(args) != 1:
        sys.exit(__doc__)
    out_dir = args[0]
    os.makedirs(out_dir, exist_ok=True)
    x = SplitMix(7).uniform(-1.0, 1.0, 3 * SIZE * SIZE).reshape(3, SIZE, SIZE).astype(np.float64)
    for name in CONFIGS:
        p = {k: v.astype(np.float64) for k, v in weights(name).items()}
        logits = forward(name, p, x)
        logits.astype("<f4").tofile(os.path.join(out_dir, f"{name}.logits.f32"))
        print(f"{name}: logits[:4] {logits[:4].round(4).tolist()}, max |logit| {abs(logits).max():.3f}")
        if "--timm" in sys.argv:
            against_timm(name, p, x, logits)
    if "--timm" in sys.argv:
        pos_embed_fixtures(out_dir)


if __name__ == "__main__":
    main()
