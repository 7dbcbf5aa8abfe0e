// softmax.wgsl — softmax over the last axis of a tensor seen as (rows, len), with the input scaled first (attention's
// 1 / sqrt(head_dim)), forward and backward.
//
//   softmax_rows_forward   y = exp(s * x - max) / sum of exp(s * x - max) over the row (max subtracted for range).
//   softmax_rows_backward  dx (+)= s * y * (dy - sum over the row of dy * y), y the forward OUTPUT; flags & 1 accumulates.
// One invocation per row (rows are short: attention's are the token count). Dispatch: 256 per workgroup on a 2-D
// grid (x, y), row = (wg.y * num_workgroups.x + wg.x) * 256 + local index.
// Storage: `act` (the activations and their gradients) is f32 here and f16 in the f16 variant (src/gpu/kernels.rs,
// Precision::F16); parameters, saved statistics, parameter gradients and every computation are f32.

struct SoftmaxParams {
    rows: u32,
    len: u32,
    flags: u32,
    scale: f32,
}

const FLAG_ACCUMULATE: u32 = 1u;

@group(0) @binding(0) var<uniform> p: SoftmaxParams;
alias act = f32;

@group(0) @binding(1) var<storage, read> x: array<act>;          // (rows, len): the input, or y in backward
@group(0) @binding(2) var<storage, read> dy: array<act>;         // (rows, len), backward
@group(0) @binding(3) var<storage, read_write> out: array<act>;  // (rows, len): y, or dx

// Activations widened to f32 on load (every computation is f32).
fn xv(i: u32) -> f32 {
    return f32(x[i]);
}

fn dyv(i: u32) -> f32 {
    return f32(dy[i]);
}

fn row_of(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 256u + lid;
}

@compute @workgroup_size(256)
fn softmax_rows_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wg, nwg, lid);
    if r >= p.rows {
        return;
    }
    let base = r * p.len;
    var m = p.scale * xv(base);
    for (var j = 1u; j < p.len; j++) {
        m = max(m, p.scale * xv(base + j));
    }
    var s = 0.0;
    for (var j = 0u; j < p.len; j++) {
        s += exp(p.scale * xv(base + j) - m);
    }
    let inv = 1.0 / s;
    for (var j = 0u; j < p.len; j++) {
        out[base + j] = act(exp(p.scale * xv(base + j) - m) * inv);
    }
}

@compute @workgroup_size(256)
fn softmax_rows_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wg, nwg, lid);
    if r >= p.rows {
        return;
    }
    let base = r * p.len;
    var dot = 0.0;
    for (var j = 0u; j < p.len; j++) {
        dot += dyv(base + j) * xv(base + j);
    }
    for (var j = 0u; j < p.len; j++) {
        let v = p.scale * xv(base + j) * (dyv(base + j) - dot);
        if (p.flags & FLAG_ACCUMULATE) != 0u {
            out[base + j] = act(f32(out[base + j]) + v);
        } else {
            out[base + j] = act(v);
        }
    }
}
