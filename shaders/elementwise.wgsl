// elementwise.wgsl — element-wise ops over flat f32 tensors of p.len elements, forward and backward. Each entry
// point is one row of the table in src/ops/elementwise.rs (with its CPU reference in src/reference/).
//
//   add             out = x + y                      (residual connections; backward: dx = dy, dy = dy)
//   scale           out = alpha * x                  (its own backward with the same alpha)
//   relu_forward    out = max(x, 0)
//   relu_backward   out = dy * (x > 0)               x is the forward INPUT
//   relu6_forward   out = min(max(x, 0), 6)
//   relu6_backward  out = dy * (0 < x < 6)           x is the forward INPUT
//   leaky_relu_forward   out = x > 0 ? x : alpha * x       (alpha: the negative slope)
//   leaky_relu_backward  out = dy * (x > 0 ? 1 : alpha)    x is the forward INPUT
//   gelu_forward    out = x * Phi(x)                 Phi the standard normal CDF (PyTorch's exact GELU); erfc from
//                                                    Numerical Recipes' Chebyshev fit (relative error < 1.2e-7)
//   gelu_backward   out = dy * (Phi(x) + x * phi(x)) phi the normal density; x is the forward INPUT
//   gelu_tanh_forward    out = x / 2 * (1 + tanh(u)),  u = sqrt(2 / pi) * (x + 0.044715 x^3)  (approximate="tanh")
//   gelu_tanh_backward   out = dy * ((1 + tanh(u)) / 2 + x / 2 * (1 - tanh(u)^2) * du/dx)
// flags & 1: accumulate (out += result) instead of overwrite, for gradients that sum over several uses.
//
// Storage: `act` is f32 here; the f16 variant (src/gpu/kernels.rs, Precision::F16) is this file with the alias line
// made f16. Values are widened to f32 on load, computed in f32, rounded once on store (an accumulating store adds
// in f32, then rounds). In f16, results beyond +-65504 become +-inf, as in PyTorch's half tensors.
//
// Layout: every binding is a flat array of p.len elements (any shape, row-major).
// Dispatch: 256 invocations per workgroup, one element each, on a 2-D grid (x, y) with x <= 65535:
// element = (wg.y * num_workgroups.x + wg.x) * 256 + local index.

struct EltParams {
    len: u32,
    flags: u32,
    alpha: f32,
    _pad: u32,
}

const FLAG_ACCUMULATE: u32 = 1u;

alias act = f32;

@group(0) @binding(0) var<uniform> p: EltParams;
@group(0) @binding(1) var<storage, read> x: array<act>;          // (len)
@group(0) @binding(2) var<storage, read> y: array<act>;          // (len): second operand, or dy in backward
@group(0) @binding(3) var<storage, read_write> out: array<act>;  // (len)

// Unary kernels (scale, *_forward) bind only x and out.

fn index(wg: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wg.y * nwg.x + wg.x) * 256u + lid.x;
}

fn xv(i: u32) -> f32 {
    return f32(x[i]);
}

fn yv(i: u32) -> f32 {
    return f32(y[i]);
}

fn store(i: u32, v: f32) {
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        out[i] = act(f32(out[i]) + v);
    } else {
        out[i] = act(v);
    }
}

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wg, nwg, lid);
    if i < p.len {
        store(i, xv(i) + yv(i));
    }
}

@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wg, nwg, lid);
    if i < p.len {
        store(i, p.alpha * xv(i));
    }
}

@compute @workgroup_size(256)
fn relu_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wg, nwg, lid);
    if i < p.len {
        store(i, max(xv(i), 0.0));
    }
}

@compute @workgroup_size(256)
fn relu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wg, nwg, lid);
    if i < p.len {
        store(i, select(0.0, yv(i), xv(i) > 0.0));
    }
}

@compute @workgroup_size(256)
fn relu6_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wg, nwg, lid);
    if i < p.len {
        store(i, clamp(xv(i), 0.0, 6.0));
    }
}

@compute @workgroup_size(256)
fn relu6_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wg, nwg, lid);
    if i < p.len {
        let v = xv(i);
        store(i, select(0.0, yv(i), v > 0.0 && v < 6.0));
    }
}

@compute @workgroup_size(256)
fn leaky_relu_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wg, nwg, lid);
    if i < p.len {
        let v = xv(i);
        store(i, select(p.alpha * v, v, v > 0.0));
    }
}

@compute @workgroup_size(256)
fn leaky_relu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wg, nwg, lid);
    if i < p.len {
        store(i, select(p.alpha * yv(i), yv(i), xv(i) > 0.0));
    }
}

// erfc(z) for z >= 0 (Numerical Recipes' erfcc: fractional error below 1.2e-7 everywhere).
fn erfc_positive(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    return t * exp(-z * z + poly);
}

// Phi(x) = erfc(-x / sqrt 2) / 2, computed from the tail on the side where it is small (no cancellation).
fn normal_cdf(v: f32) -> f32 {
    let tail = 0.5 * erfc_positive(abs(v) * 0.70710678118654752);
    return select(tail, 1.0 - tail, v >= 0.0);
}

// u(x) = sqrt(2 / pi) * (x + 0.044715 x^3), clamped where tanh is 1 in f32 (a large argument can give NaN in a
// tanh built from exponentials).
fn gelu_tanh_u(v: f32) -> f32 {
    return clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
}

@compute @workgroup_size(256)
fn gelu_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wg, nwg, lid);
    if i < p.len {
        let v = xv(i);
        store(i, v * normal_cdf(v));
    }
}

@compute @workgroup_size(256)
fn gelu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wg, nwg, lid);
    if i < p.len {
        let v = xv(i);
        let density = 0.3989422804014327 * exp(-0.5 * v * v);
        store(i, yv(i) * (normal_cdf(v) + v * density));
    }
}

@compute @workgroup_size(256)
fn gelu_tanh_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wg, nwg, lid);
    if i < p.len {
        let v = xv(i);
        store(i, 0.5 * v * (1.0 + tanh(gelu_tanh_u(v))));
    }
}

@compute @workgroup_size(256)
fn gelu_tanh_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wg, nwg, lid);
    if i < p.len {
        let v = xv(i);
        let t = tanh(gelu_tanh_u(v));
        let du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * v * v);
        store(i, yv(i) * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du));
    }
}
