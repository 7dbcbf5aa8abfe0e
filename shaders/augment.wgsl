// augment.wgsl — the per-batch data augmentation and normalization: u8 pixels in, model input out, one dispatch.
//
// For output pixel (x, y) of image n, with normalized coordinates u = (x + 0.5) / S * 2 - 1, v likewise (in -1..1):
//   source point  (sx, sy) = (m0 * u + m1 * v + m2,  m3 * u + m4 * v + m5)          in -1..1 of the input square
//   sampled       bilinear at pixel coordinates ((sx + 1) / 2 * P - 0.5, (sy + 1) / 2 * P - 0.5), with reflection
//                 padding (coordinates outside the image mirror back in), per channel, / 255
//   lighting      fastai's, in logit space: p = sigmoid(logit(p) * contrast + brightness_logit)
//   mixed         p = w * p + (1 - w) * p',  p' the same pixel of partner image n' sampled through n''s own transform,
//                 w = 0 inside the cut box [x0, x1) x [y0, y1) (CutMix), pixel_lam outside it (MixUp; 1 unmixed)
//   normalized    out = p * 255 * scale[c] + shift[c]
// The affine matrix composes random resized crop, flip, rotation and zoom (src/data/augment.rs draws them); the
// identity matrix with no lighting is the validation transform (the input is already the centre crop).
//
// Layout: pixels (N, P, P, 3) u8 packed four to a u32 (little-endian); params (N, 16) f32 = m0..m5, contrast,
// brightness_logit, partner row n', pixel_lam, x0, y0, x1, y1, 2 unused; out (N, 3, S, S) f32.
// Dispatch: (ceil(S*S / 256), N, 1); one invocation per output pixel (all 3 channels).

struct AugmentParams {
    batch: u32,
    in_size: u32,
    out_size: u32,
    flags: u32,
    scale: vec4<f32>,
    shift: vec4<f32>,
}

const FLAG_LIGHTING: u32 = 1u;
const PARAMS: u32 = 16u;

@group(0) @binding(0) var<uniform> p: AugmentParams;
// The images are the model's first activation: f16 in the f16 variant (src/gpu/kernels.rs, Precision::F16), computed
// in f32 and rounded once.
alias act = f32;

@group(0) @binding(1) var<storage, read> pixels: array<u32>;      // (N, P, P, 3) bytes, packed
@group(0) @binding(2) var<storage, read> image_params: array<f32>; // (N, 16)
@group(0) @binding(3) var<storage, read_write> out: array<act>;    // (N, 3, S, S)

fn byte_at(i: u32) -> f32 {
    return f32((pixels[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu);
}

// Mirror a pixel coordinate into [0, size - 1] (reflection about the pixel centres at the edges).
fn reflect(c: f32, size: u32) -> f32 {
    let last = f32(size - 1u);
    if last <= 0.0 {
        return 0.0;
    }
    let period = 2.0 * last;
    var t = abs(c) % period;
    if t > last {
        t = period - t;
    }
    return t;
}

fn logit(x: f32) -> f32 {
    let q = clamp(x, 1e-6, 1.0 - 1e-6);
    return log(q / (1.0 - q));
}

// Channel c of output pixel (x, y) of image n, in 0..1: the affine sample, then the lighting.
fn sample(n: u32, x: u32, y: u32, c: u32) -> f32 {
    let s = p.out_size;
    let base = n * PARAMS;
    let u = (f32(x) + 0.5) / f32(s) * 2.0 - 1.0;
    let v = (f32(y) + 0.5) / f32(s) * 2.0 - 1.0;
    let sx = image_params[base] * u + image_params[base + 1u] * v + image_params[base + 2u];
    let sy = image_params[base + 3u] * u + image_params[base + 4u] * v + image_params[base + 5u];
    let size = f32(p.in_size);
    let px = reflect((sx + 1.0) * 0.5 * size - 0.5, p.in_size);
    let py = reflect((sy + 1.0) * 0.5 * size - 0.5, p.in_size);
    let x0 = u32(floor(px));
    let y0 = u32(floor(py));
    let x1 = min(x0 + 1u, p.in_size - 1u);
    let y1 = min(y0 + 1u, p.in_size - 1u);
    let fx = px - f32(x0);
    let fy = py - f32(y0);
    let img = n * p.in_size * p.in_size;
    let v00 = byte_at((img + y0 * p.in_size + x0) * 3u + c);
    let v01 = byte_at((img + y0 * p.in_size + x1) * 3u + c);
    let v10 = byte_at((img + y1 * p.in_size + x0) * 3u + c);
    let v11 = byte_at((img + y1 * p.in_size + x1) * 3u + c);
    let top = v00 + (v01 - v00) * fx;
    let bottom = v10 + (v11 - v10) * fx;
    var q = (top + (bottom - top) * fy) / 255.0;
    if (p.flags & FLAG_LIGHTING) != 0u {
        q = 1.0 / (1.0 + exp(-(logit(q) * image_params[base + 6u] + image_params[base + 7u])));
    }
    return q;
}

@compute @workgroup_size(256)
fn augment(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = wg.y;
    let pix = wg.x * 256u + lid;
    let s = p.out_size;
    if pix >= s * s {
        return;
    }
    let y = pix / s;
    let x = pix - y * s;
    let base = n * PARAMS;
    let partner = min(u32(image_params[base + 8u]), p.batch - 1u);
    let fx = f32(x);
    let fy = f32(y);
    let inside = fx >= image_params[base + 10u] && fx < image_params[base + 12u] && fy >= image_params[base + 11u]
        && fy < image_params[base + 13u];
    let w = select(image_params[base + 9u], 0.0, inside);
    for (var c = 0u; c < 3u; c++) {
        var q = sample(n, x, y, c);
        if w < 1.0 {
            q = w * q + (1.0 - w) * sample(partner, x, y, c);
        }
        out[((n * 3u + c) * s + y) * s + x] = act(q * 255.0 * p.scale[c] + p.shift[c]);
    }
}
