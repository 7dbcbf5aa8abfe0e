//! timm's VisionTransformer (ViT and DeiT, patch 16, class token) built from graph ops: patch embedding, class
//! token, position embedding, pre-norm blocks of multi-head self-attention and an MLP, final LayerNorm, and the
//! class token as the features. Parameter names are timm's (`patch_embed.proj`, `cls_token`, `pos_embed`,
//! `blocks.N.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2`, `norm`, `head`).

use crate::error::{Error, Result};
use crate::graph::{Graph, TensorId};
use crate::ops::conv::{Conv2dConfig, Padding};

/// A ViT's width, depth and heads (timm's `vit_*_patch16_224` and `deit_*_patch16_224` definitions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VitConfig {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub patch: usize,
}

/// timm's LayerNorm epsilon for ViTs.
pub const VIT_LN_EPS: f32 = 1e-6;

/// Tokens per image at `size` px: (size / patch)^2 patches plus the class token.
pub fn tokens(cfg: VitConfig, size: usize) -> usize {
    (size / cfg.patch).pow(2) + 1
}

/// The body up to timm's pre-logits: the class token after the final LayerNorm, (N, dim). `drop_path` is timm's
/// `drop_path_rate` (rising linearly over the blocks). The input's sides must be multiples of the patch size.
pub fn vit_body(g: &mut Graph, x: TensorId, cfg: VitConfig, drop_path: f64) -> Result<TensorId> {
    let [n, _, h, w] = *g.shape(x) else {
        return Err(Error::shape("vit", format!("input {:?} must be (N, 3, H, W)", g.shape(x))));
    };
    let p = cfg.patch;
    if h % p != 0 || w % p != 0 || h == 0 || w == 0 {
        return Err(Error::Invalid(format!(
            "a ViT with {p}x{p} patches needs an input size that is a multiple of {p}, not {h}x{w}"
        )));
    }
    let (d, t) = (cfg.dim, (h / p) * (w / p) + 1);
    g.set_group(0);
    let conv = Conv2dConfig { stride: (p, p), padding: Padding::symmetric(0), dilation: (1, 1), groups: 1 };
    let e = g.conv2d("patch_embed.proj", x, d, (p, p), conv, true)?;
    let e = g.view("patch_embed.flatten", e, &[n, d, t - 1])?;
    let e = g.permute("patch_embed.tokens", e, &[0, 2, 1])?;
    // timm: cls_token ~ Normal(0, 1e-6), pos_embed ~ trunc_normal(0.02).
    let cls = g.normal_param("cls_token", &[1, 1, d], 1e-6);
    let cls = g.expand("cls_token.expand", cls, n)?;
    let tokens = g.concat("tokens", &[cls, e])?;
    let pos = g.normal_param("pos_embed", &[1, t, d], 0.02);
    let pos = g.expand("pos_embed.expand", pos, n)?;
    let mut h = g.add("pos_embed.add", tokens, pos)?;
    for i in 0..cfg.depth {
        let b = format!("blocks.{i}");
        let rate = if cfg.depth > 1 { drop_path * i as f64 / (cfg.depth - 1) as f64 } else { 0.0 };
        let y = g.layer_norm(&format!("{b}.norm1"), h, true, VIT_LN_EPS)?;
        let y = attention(g, &format!("{b}.attn"), y, cfg)?;
        let y = g.drop_path(&format!("{b}.drop_path1"), y, rate)?;
        h = g.add(&format!("{b}.residual1"), y, h)?;
        let y = g.layer_norm(&format!("{b}.norm2"), h, true, VIT_LN_EPS)?;
        let y = g.view(&format!("{b}.mlp.rows"), y, &[n * t, d])?;
        let y = g.linear(&format!("{b}.mlp.fc1"), y, 4 * d, true)?;
        let y = g.gelu(&format!("{b}.mlp.act"), y, false)?;
        let y = g.linear(&format!("{b}.mlp.fc2"), y, d, true)?;
        let y = g.view(&format!("{b}.mlp.tokens"), y, &[n, t, d])?;
        let y = g.drop_path(&format!("{b}.drop_path2"), y, rate)?;
        h = g.add(&format!("{b}.residual2"), y, h)?;
    }
    let h = g.layer_norm("norm", h, true, VIT_LN_EPS)?;
    let cls = g.slice("cls_token.out", h, 0, 1)?;
    g.view("pre_logits", cls, &[n, d])
}

/// timm's Attention on tokens (N, T, D): qkv projection, heads split, softmax(q·kᵀ / sqrt(head_dim))·v, heads
/// merged, output projection.
fn attention(g: &mut Graph, name: &str, x: TensorId, cfg: VitConfig) -> Result<TensorId> {
    let [n, t, d] = *g.shape(x) else { unreachable!("tokens are (N, T, D)") };
    let (heads, hd) = (cfg.heads, cfg.dim / cfg.heads);
    let rows = g.view(&format!("{name}.rows"), x, &[n * t, d])?;
    let qkv = g.linear(&format!("{name}.qkv"), rows, 3 * d, true)?;
    let qkv = g.view(&format!("{name}.qkv.split"), qkv, &[n, t, 3, heads, hd])?;
    let qkv = g.permute(&format!("{name}.qkv.heads"), qkv, &[2, 0, 3, 1, 4])?;
    let qkv = g.view(&format!("{name}.qkv.parts"), qkv, &[1, 3, n * heads * t * hd])?;
    let mut parts = Vec::new();
    for (i, part) in ["q", "k", "v"].into_iter().enumerate() {
        let p = g.slice(&format!("{name}.{part}"), qkv, i, 1)?;
        parts.push(g.view(&format!("{name}.{part}.batched"), p, &[n * heads, t, hd])?);
    }
    let scores = g.matmul(&format!("{name}.scores"), parts[0], parts[1], true)?;
    let weights = g.softmax(&format!("{name}.softmax"), scores, 1.0 / (hd as f32).sqrt())?;
    let o = g.matmul(&format!("{name}.weighted"), weights, parts[2], false)?;
    let o = g.view(&format!("{name}.heads"), o, &[n, heads, t, hd])?;
    let o = g.permute(&format!("{name}.merge"), o, &[0, 2, 1, 3])?;
    let o = g.view(&format!("{name}.merged"), o, &[n * t, d])?;
    let o = g.linear(&format!("{name}.proj"), o, d, true)?;
    g.view(&format!("{name}.out"), o, &[n, t, d])
}

/// The side of a square grid of `patches` tokens, if it is one.
fn grid_side(patches: usize) -> Option<usize> {
    let side = (patches as f64).sqrt().round() as usize;
    (side * side == patches && side > 0).then_some(side)
}

/// A position embedding (1, 1 + G*G, D) of a class token and a G x G patch grid, resampled to `tokens` = 1 +
/// G'*G' as timm's `resample_abs_pos_embed` does (PyTorch's bicubic interpolation with antialiasing, align_corners
/// false; the class token's row kept). None when the shapes are not such embeddings.
pub fn resample_pos_embed(values: &[f32], from: &[usize], to: &[usize]) -> Option<Vec<f32>> {
    let (&[1, t0, d], &[1, t1, d1]) = (from, to) else { return None };
    if d != d1 || values.len() != t0 * d {
        return None;
    }
    let (g0, g1) = (grid_side(t0.checked_sub(1)?)?, grid_side(t1.checked_sub(1)?)?);
    let taps = antialiased_bicubic(g0, g1);
    let grid = |r: usize, c: usize, k: usize| values[(1 + r * g0 + c) * d + k] as f64;
    let mut out = values[..d].to_vec();
    for r in 0..g1 {
        for c in 0..g1 {
            for k in 0..d {
                let mut v = 0.0;
                for &(sr, wr) in &taps[r] {
                    for &(sc, wc) in &taps[c] {
                        v += wr * wc * grid(sr, sc, k);
                    }
                }
                out.push(v as f32);
            }
        }
    }
    Some(out)
}

/// PyTorch's antialiased bicubic resampling weights from `input` to `output` samples (its `_upsample_bicubic2d_aa`,
/// PIL's filter: a = -0.5, the support widened by the scale when shrinking, weights normalized): for each output
/// sample, (input index, weight) pairs.
fn antialiased_bicubic(input: usize, output: usize) -> Vec<Vec<(usize, f64)>> {
    let cubic = |x: f64| {
        let (a, x) = (-0.5, x.abs());
        if x < 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * a
        } else {
            0.0
        }
    };
    let scale = input as f64 / output as f64;
    let (support, invscale) = if scale >= 1.0 { (2.0 * scale, 1.0 / scale) } else { (2.0, 1.0) };
    (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let taps: Vec<(usize, f64)> = (lo..hi).map(|j| (j, cubic((j as f64 - center + 0.5) * invscale))).collect();
            let total: f64 = taps.iter().map(|t| t.1).sum();
            taps.into_iter().map(|(j, w)| (j, if total != 0.0 { w / total } else { 0.0 })).collect()
        })
        .collect()
}
