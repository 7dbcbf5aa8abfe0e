#!/usr/bin/env python3
"""An independent numpy forward pass of EfficientNet-Lite0 (eval mode), used to make wgtune's test fixtures.

    pip install numpy safetensors pillow
    python3 tools/effnet_reference.py assets/efficientnet_lite0.safetensors tests/fixtures/effnet_lite0 \
        tests/fixtures/images/chelsea.png tests/fixtures/images/coffee.png

For each image it writes NAME.crop.u8 (the 224x224 RGB centre crop, HWC bytes: resize the short side to 224 with
Pillow's bilinear filter, centre crop) and NAME.logits.f32 (the 1000 logits, little-endian f32). wgtune's tests feed
the same crop through the GPU and compare logits; preprocessing is compared separately.

Architecture (from the weights' names and shapes): stem 3x3 stride-2 conv to 32, 16 MBConv blocks
(expand, kernel, stride, in, out, repeats) = (1,3,1,32,16,1) (6,3,2,16,24,2) (6,5,2,24,40,2) (6,3,2,40,80,3)
(6,5,1,80,112,3) (6,5,2,112,192,4) (6,3,1,192,320,1), head 1x1 conv to 1280, global average pool, linear to 1000;
ReLU6 after every batch norm except the projection's; batch-norm eps 1e-3; TensorFlow "SAME" padding (the extra
pixel of an odd total goes bottom/right); residual add when stride is 1 and in == out.
"""
import os
import sys

import numpy as np
from PIL import Image
from safetensors.numpy import load_file

BLOCKS = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]
EPS = 1e-3


def same_pad(x, k, s):
    """Zero-pad (C, H, W) for a k x k stride-s window the TensorFlow way."""
    _, h, w = x.shape
    def total(n):
        out = -(-n // s)
        return max((out - 1) * s + k - n, 0)
    th, tw = total(h), total(w)
    return np.pad(x, ((0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2)))


def conv(x, w, s):
    """Dense conv of (C, H, W) with w (O, C, k, k), SAME padding, as a sum over taps of shifted slices."""
    o, c, k, _ = w.shape
    xp = same_pad(x, k, s)
    oh = -(-x.shape[1] // s)
    ow = -(-x.shape[2] // s)
    out = np.zeros((o, oh, ow))
    for i in range(k):
        for j in range(k):
            patch = xp[:, i:i + s * oh:s, j:j + s * ow:s].reshape(c, -1)
            out += (w[:, :, i, j] @ patch).reshape(o, oh, ow)
    return out


def depthwise(x, w, s):
    """Depthwise conv of (C, H, W) with w (C, 1, k, k), SAME padding."""
    c, _, k, _ = w.shape
    xp = same_pad(x, k, s)
    oh = -(-x.shape[1] // s)
    ow = -(-x.shape[2] // s)
    out = np.zeros((c, oh, ow))
    for i in range(k):
        for j in range(k):
            out += w[:, 0, i, j][:, None, None] * xp[:, i:i + s * oh:s, j:j + s * ow:s]
    return out


def bn(x, p, name):
    g, b = p[f"{name}.weight"], p[f"{name}.bias"]
    m, v = p[f"{name}.running_mean"], p[f"{name}.running_var"]
    return ((x - m[:, None, None]) / np.sqrt(v[:, None, None] + EPS)) * g[:, None, None] + b[:, None, None]


def relu6(x):
    return np.clip(x, 0.0, 6.0)


def forward(p, x):
    """x: (3, 224, 224) float64 already normalized. Returns 1000 logits."""
    x = relu6(bn(conv(x, p["_conv_stem.weight"], 2), p, "_bn0"))
    i = 0
    for expand, k, stride, cin, cout, repeats in BLOCKS:
        for r in range(repeats):
            s = stride if r == 0 else 1
            inp = x
            pre = f"_blocks.{i}"
            if expand != 1:
                x = relu6(bn(conv(x, p[f"{pre}._expand_conv.weight"], 1), p, f"{pre}._bn0"))
            x = relu6(bn(depthwise(x, p[f"{pre}._depthwise_conv.weight"], s), p, f"{pre}._bn1"))
            x = bn(conv(x, p[f"{pre}._project_conv.weight"], 1), p, f"{pre}._bn2")
            if s == 1 and (cin if r == 0 else cout) == cout:
                x = x + inp
            i += 1
    x = relu6(bn(conv(x, p["_conv_head.weight"], 1), p, "_bn1"))
    pooled = x.mean(axis=(1, 2))
    return p["_fc.weight"] @ pooled + p["_fc.bias"]


def crop(path):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = 224 / min(w, h)
    img = img.resize((max(224, round(w * scale)), max(224, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    return np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.uint8)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    weights, out_dir, images = sys.argv[1], sys.argv[2], sys.argv[3:]
    p = {k: v.astype(np.float64) for k, v in load_file(weights).items()}
    os.makedirs(out_dir, exist_ok=True)
    for path in images:
        name = os.path.splitext(os.path.basename(path))[0]
        c = crop(path)
        x = (c.astype(np.float64).transpose(2, 0, 1) - 127.0) / 128.0
        logits = forward(p, x)
        c.tofile(os.path.join(out_dir, f"{name}.crop.u8"))
        logits.astype("<f4").tofile(os.path.join(out_dir, f"{name}.logits.f32"))
        top = np.argsort(-logits)[:5]
        print(f"{name}: top-5 classes {top.tolist()}, logits {logits[top].round(3).tolist()}")


if __name__ == "__main__":
    main()
