// softmax.wgsl — softmax over the last axis of a tensor seen as (rows, len), with the input scaled first (attention's
// 1 / sqrt(head_dim)), forward and backward.
//
//   softmax_rows_forward   y = exp(s * x - max) / sum of exp(s * x - max) over the row (max subtracted for range).
//   softmax_rows_backward  dx (+)= s * y * (dy - sum over the row of dy * y), y the forward OUTPUT; flags & 1 accumulates.
// One invocation per row (rows are short: attention's are the token count). Dispatch: 256 per workgroup on a 2-D
// grid (x, y), row = (wg.y * num_workgroups.x + wg.x) * 256 + local index.

struct SoftmaxParams {
    rows: u32,
    len: u32,
    flags: u32,
    scale: f32,
}

const FLAG_ACCUMULATE: u32 = 1u;

@group(0) @binding(0) var<uniform> p: SoftmaxParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (rows, len): the input, or y in backward
@group(0) @binding(2) var<storage, read> dy: array<f32>;         // (rows, len), backward
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // (rows, len): y, or dx

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
    var m = p.scale * x[base];
    for (var j = 1u; j < p.len; j++) {
        m = max(m, p.scale * x[base + j]);
    }
    var s = 0.0;
    for (var j = 0u; j < p.len; j++) {
        s += exp(p.scale * x[base + j] - m);
    }
    let inv = 1.0 / s;
    for (var j = 0u; j < p.len; j++) {
        out[base + j] = exp(p.scale * x[base + j] - m) * inv;
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
        dot += dy[base + j] * x[base + j];
    }
    for (var j = 0u; j < p.len; j++) {
        let v = p.scale * x[base + j] * (dy[base + j] - dot);
        if (p.flags & FLAG_ACCUMULATE) != 0u {
            out[base + j] += v;
        } else {
            out[base + j] = v;
        }
    }
}
