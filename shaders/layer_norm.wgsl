// layer_norm.wgsl — ops over the channel axis of a tensor seen as (outer, C, inner): layer norm and layer scale,
// forward and backward. Element (o, c, i) sits at (o * C + c) * inner + i; a position is (o, i), numbered
// o * inner + i. ConvNeXt's LayerNorm2d on NCHW is outer = N, inner = H*W; a transformer's LayerNorm over the last
// dimension of (N, T, D) is outer = N*T, C = D, inner = 1.
//
//   layer_norm_forward        per position: mean and rstd = 1 / sqrt(biased variance + eps) over C (two passes,
//                             for accuracy) into mean / rstd, and y = gamma[c] * (x - mean) * rstd + beta[c].
//                             One invocation per position: 256 per workgroup on a 2-D grid (x, y),
//                             position = (wg.y * num_workgroups.x + wg.x) * 256 + local index.
//   layer_norm_backward_data  per position, with g = dy * gamma[c] and xhat = (x - mean) * rstd:
//                             dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)); flags & 1 accumulates into dx.
//                             Dispatch as layer_norm_forward.
//   layer_norm_forward_rows, layer_norm_backward_data_rows  the same for contiguous channels (inner = 1, a
//                             transformer's rows): 64 invocations per row, 4 rows per workgroup, each invocation
//                             taking channels lane, lane + 64, ... and the row's sums a tree over its 64 lanes in
//                             workgroup memory (neighbouring invocations read neighbouring channels; one invocation
//                             per row read addresses C apart: 74 GB/s on an H200 for ViT-S's 384 channels).
//                             Dispatch as the others over 64 * positions invocations; row = index / 64.
//   layer_norm_backward_params  per channel: dgamma[c] = sum of dy * xhat, dbeta[c] = sum of dy over every
//                             position. Dispatch (C, 1, 1): one workgroup per channel, a tree sum of 256 partials.
//   layer_scale_forward       y = gamma[c] * x. One invocation per element (grid as layer_norm_forward).
//   layer_scale_backward_data dx = gamma[c] * dy; flags & 1 accumulates. One invocation per element.
//   layer_scale_backward_weight  dgamma[c] = sum of dy * x over the channel. Dispatch (C, 1, 1).
// Storage: `act` (the activations and their gradients) is f32 here and f16 in the f16 variant (src/gpu/kernels.rs,
// Precision::F16); parameters, saved statistics, parameter gradients and every computation are f32.

struct LayerNormParams {
    outer: u32,
    channels: u32,
    inner: u32,
    flags: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const FLAG_ACCUMULATE: u32 = 1u;

@group(0) @binding(0) var<uniform> p: LayerNormParams;
alias act = f32;

@group(0) @binding(1) var<storage, read> x: array<act>;              // (outer, C, inner)
@group(0) @binding(2) var<storage, read> dy: array<act>;             // (outer, C, inner)
@group(0) @binding(3) var<storage, read> gamma: array<f32>;          // (C)
@group(0) @binding(4) var<storage, read> beta: array<f32>;           // (C)
@group(0) @binding(5) var<storage, read_write> mean: array<f32>;     // (outer * inner), saved by forward
@group(0) @binding(6) var<storage, read_write> rstd: array<f32>;     // (outer * inner), saved by forward
@group(0) @binding(7) var<storage, read_write> out: array<act>;      // y or dx (outer, C, inner)
@group(0) @binding(8) var<storage, read_write> dgamma: array<f32>;   // (C)
@group(0) @binding(9) var<storage, read_write> dbeta: array<f32>;    // (C)

var<workgroup> partial: array<f32, 256>;
var<workgroup> partial2: array<f32, 256>;

// Activations widened to f32 on load (every computation is f32).
fn xv(i: u32) -> f32 {
    return f32(x[i]);
}

fn dyv(i: u32) -> f32 {
    return f32(dy[i]);
}

fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 256u + lid;
}

// Index of channel 0 at position `pos`; channel c is `c * p.inner` further.
fn position_base(pos: u32) -> u32 {
    let o = pos / p.inner;
    return o * p.channels * p.inner + (pos - o * p.inner);
}

fn store(k: u32, v: f32) {
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        out[k] = act(f32(out[k]) + v);
    } else {
        out[k] = act(v);
    }
}

// Sum partial and partial2 over the workgroup into element 0. Every invocation must call it.
fn workgroup_sums(lid: u32) {
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            partial[lid] += partial[lid + stride];
            partial2[lid] += partial2[lid + stride];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn layer_norm_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let pos = flat_index(wg, nwg, lid);
    if pos >= p.outer * p.inner {
        return;
    }
    let base = position_base(pos);
    var s = 0.0;
    for (var c = 0u; c < p.channels; c++) {
        s += xv(base + c * p.inner);
    }
    let mu = s / f32(p.channels);
    var q = 0.0;
    for (var c = 0u; c < p.channels; c++) {
        let d = xv(base + c * p.inner) - mu;
        q += d * d;
    }
    let r = inverseSqrt(q / f32(p.channels) + p.eps);
    mean[pos] = mu;
    rstd[pos] = r;
    for (var c = 0u; c < p.channels; c++) {
        let k = base + c * p.inner;
        out[k] = act(gamma[c] * (xv(k) - mu) * r + beta[c]);
    }
}

@compute @workgroup_size(256)
fn layer_norm_backward_data(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let pos = flat_index(wg, nwg, lid);
    if pos >= p.outer * p.inner {
        return;
    }
    let base = position_base(pos);
    let mu = mean[pos];
    let r = rstd[pos];
    var sg = 0.0;
    var sgx = 0.0;
    for (var c = 0u; c < p.channels; c++) {
        let k = base + c * p.inner;
        let g = dyv(k) * gamma[c];
        sg += g;
        sgx += g * (xv(k) - mu) * r;
    }
    let mg = sg / f32(p.channels);
    let mgx = sgx / f32(p.channels);
    for (var c = 0u; c < p.channels; c++) {
        let k = base + c * p.inner;
        let xhat = (xv(k) - mu) * r;
        store(k, r * (dyv(k) * gamma[c] - mg - xhat * mgx));
    }
}

@compute @workgroup_size(256)
fn layer_norm_backward_params(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wg.x;
    var sg = 0.0;
    var sb = 0.0;
    for (var pos = lid; pos < p.outer * p.inner; pos += 256u) {
        let k = position_base(pos) + c * p.inner;
        sg += dyv(k) * (xv(k) - mean[pos]) * rstd[pos];
        sb += dyv(k);
    }
    partial[lid] = sg;
    partial2[lid] = sb;
    workgroup_sums(lid);
    if lid == 0u {
        dgamma[c] = partial[0];
        dbeta[c] = partial2[0];
    }
}

@compute @workgroup_size(256)
fn layer_scale_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let k = flat_index(wg, nwg, lid);
    if k >= p.outer * p.channels * p.inner {
        return;
    }
    out[k] = act(gamma[(k / p.inner) % p.channels] * xv(k));
}

@compute @workgroup_size(256)
fn layer_scale_backward_data(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let k = flat_index(wg, nwg, lid);
    if k >= p.outer * p.channels * p.inner {
        return;
    }
    store(k, gamma[(k / p.inner) % p.channels] * dyv(k));
}

@compute @workgroup_size(256)
fn layer_scale_backward_weight(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wg.x;
    var s = 0.0;
    for (var pos = lid; pos < p.outer * p.inner; pos += 256u) {
        let k = position_base(pos) + c * p.inner;
        s += dyv(k) * xv(k);
    }
    partial[lid] = s;
    partial2[lid] = 0.0;
    workgroup_sums(lid);
    if lid == 0u {
        dgamma[c] = partial[0];
    }
}

// Invocations per row in the _rows kernels.
const ROW_LANES: u32 = 64u;

// The sums of a (and b) over the 64 lanes of a row's segment [seg, seg + 64) of the workgroup; every invocation of
// the workgroup must call it (no return before it: see CONTRIBUTING.md).
fn row_sums(seg: u32, lane: u32, a: f32, b: f32) -> vec2<f32> {
    partial[seg + lane] = a;
    partial2[seg + lane] = b;
    workgroupBarrier();
    for (var stride = ROW_LANES / 2u; stride > 0u; stride >>= 1u) {
        if lane < stride {
            partial[seg + lane] += partial[seg + lane + stride];
            partial2[seg + lane] += partial2[seg + lane + stride];
        }
        workgroupBarrier();
    }
    let total = vec2<f32>(partial[seg], partial2[seg]);
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn layer_norm_forward_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = flat_index(wg, nwg, lid) / ROW_LANES;
    let live = row < p.outer;
    let base = min(row, p.outer - 1u) * p.channels;
    let lane = lid % ROW_LANES;
    let seg = lid - lane;
    var s = 0.0;
    for (var c = lane; c < p.channels; c += ROW_LANES) {
        s += xv(base + c);
    }
    let mu = row_sums(seg, lane, s, 0.0).x / f32(p.channels);
    var q = 0.0;
    for (var c = lane; c < p.channels; c += ROW_LANES) {
        let d = xv(base + c) - mu;
        q += d * d;
    }
    let r = inverseSqrt(row_sums(seg, lane, q, 0.0).x / f32(p.channels) + p.eps);
    if live {
        if lane == 0u {
            mean[row] = mu;
            rstd[row] = r;
        }
        for (var c = lane; c < p.channels; c += ROW_LANES) {
            out[base + c] = act(gamma[c] * (xv(base + c) - mu) * r + beta[c]);
        }
    }
}

@compute @workgroup_size(256)
fn layer_norm_backward_data_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = flat_index(wg, nwg, lid) / ROW_LANES;
    let live = row < p.outer;
    let at = min(row, p.outer - 1u);
    let base = at * p.channels;
    let lane = lid % ROW_LANES;
    let seg = lid - lane;
    let mu = mean[at];
    let r = rstd[at];
    var sg = 0.0;
    var sgx = 0.0;
    for (var c = lane; c < p.channels; c += ROW_LANES) {
        let g = dyv(base + c) * gamma[c];
        sg += g;
        sgx += g * (xv(base + c) - mu) * r;
    }
    let sums = row_sums(seg, lane, sg, sgx) / f32(p.channels);
    if live {
        for (var c = lane; c < p.channels; c += ROW_LANES) {
            let xhat = (xv(base + c) - mu) * r;
            store(base + c, r * (dyv(base + c) * gamma[c] - sums.x - xhat * sums.y));
        }
    }
}
