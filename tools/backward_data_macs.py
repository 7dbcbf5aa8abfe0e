"""Multiply-adds conv2d_backward_data (shaders/conv2d.wgsl, the implicit-GEMM kernel) evaluates over a ResNet at
224 px, per image: before stride phases (every tap for every input pixel, the unreachable ones masked) and after
(each stride phase only its own taps), for every conv that takes this kernel (not the stem, whose input needs no
gradient, nor the 1x1 stride-1 convs on planes of 512 pixels or more, which take the matmul path).
BENCHMARKS.md, "Stride phases in backward_data".

    python3 tools/backward_data_macs.py
"""


def phase_taps(k, s, pad, ph):
    """Taps of a k-tap axis that reach an output from input positions with index % s == ph."""
    return sum(1 for t in range(k) if (ph + pad - t) % s == 0)


def conv(h, cin, cout, k, s, pad):
    """(before, after, the conv's own) multiply-adds of one square layer's backward_data."""
    old = h*h*cin*cout*k*k
    new = 0
    for ph in range(s):
        for pw in range(s):
            rows, cols = len(range(ph, h, s)), len(range(pw, h, s))
            new += rows*cols*cin*cout*phase_taps(k, s, pad, ph)*phase_taps(k, s, pad, pw)
    oh = (h + 2*pad - k)//s + 1
    true = oh*oh*cin*cout*k*k
    return old, new, true


def resnet(blocks, bottleneck):
    """The layers (input size, Cin, Cout, kernel, stride, padding) whose backward_data takes the GEMM kernel."""
    layers = []
    h, c = 56, 64  # after stem + maxpool (the stem's dx is not needed)
    for i, n in enumerate(blocks):
        width = 64 * 2**i
        out = width * (4 if bottleneck else 1)
        for b in range(n):
            s = 2 if (b == 0 and i > 0) else 1
            if bottleneck:
                # 1x1 (stride 1: matmul path when h*h >= 512), 3x3 stride s, 1x1
                if h*h < 512: layers.append((h, c, width, 1, 1, 0))
                layers.append((h, width, width, 3, s, 1))
                h2 = (h - 1)//s + 1
                if h2*h2 < 512: layers.append((h2, width, out, 1, 1, 0))
            else:
                layers.append((h, c, width, 3, s, 1))
                h2 = (h - 1)//s + 1
                layers.append((h2, width, width, 3, 1, 1))
            if b == 0 and (s != 1 or c != out):
                if s != 1 or h*h < 512: layers.append((h, c, out, 1, s, 0))
            h = (h - 1)//s + 1; c = out
    return layers


for name, blocks, bn in [("resnet18", [2,2,2,2], False), ("resnet50", [3,4,6,3], True)]:
    L = resnet(blocks, bn)
    o = n = t = 0; so = sn = 0
    for l in L:
        a, b, c = conv(*l); o += a; n += b; t += c
        if l[4] > 1: so += a; sn += b
    print(f"{name}: GEMM-kernel backward_data MACs per image: before {o/1e9:.3f} G, after {n/1e9:.3f} G (useful {t/1e9:.3f} G); "
          f"ratio {n/o:.3f}; strided layers {so/1e9:.3f} -> {sn/1e9:.3f} G ({sn/so:.3f})")
