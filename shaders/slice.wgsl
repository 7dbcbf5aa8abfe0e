// slice.wgsl — a channel range of a tensor seen as (outer, C, inner), and a batch-of-one tensor repeated over a
// batch: the token ops of a vision transformer (the class token taken out, q/k/v split, class token and position
// embedding broadcast over the batch).
//
//   slice_forward   y[o, c, i] = x[o, start + c, i] for c < len               y (outer, len, inner)
//   slice_backward  dx[o, c, i] (+)= dy[o, c - start, i] inside the range, 0 outside: every element of dx is
//                   written, so a first gradient needs no zeroed buffer; flags & 1 accumulates.
//   expand_forward  y[n, j] = x[j] for every n < outer (inner = the elements of one x).
//                   (expand's backward is a sum over the batch: reduce.wgsl's sum_reduce.)
// One invocation per output element, 256 per workgroup on a 2-D grid (x, y):
// element = (wg.y * num_workgroups.x + wg.x) * 256 + local index.
// Storage: `act` is f32 here and f16 in the f16 variant (src/gpu/kernels.rs, Precision::F16); src is `rhs`, the
// same as `act` except in the variant where it stays f32 (expanding an f32 parameter, the class token or position
// embedding, into f16 activations). Values are widened to f32 where they are computed with or added to, and each
// stored element is rounded once.

struct SliceParams {
    outer: u32,
    channels: u32,
    inner: u32,
    flags: u32,
    start: u32,
    len: u32,
    _pad0: u32,
    _pad1: u32,
}

const FLAG_ACCUMULATE: u32 = 1u;

@group(0) @binding(0) var<uniform> p: SliceParams;
alias act = f32;
alias rhs = f32;

@group(0) @binding(1) var<storage, read> src: array<rhs>;        // x, or dy (outer, len, inner) in backward
@group(0) @binding(2) var<storage, read_write> dst: array<act>;  // y, or dx (outer, channels, inner)

fn element(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 256u + lid;
}

@compute @workgroup_size(256)
fn slice_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let k = element(wg, nwg, lid);
    if k >= p.outer * p.len * p.inner {
        return;
    }
    let i = k % p.inner;
    let c = (k / p.inner) % p.len;
    let o = k / (p.inner * p.len);
    dst[k] = act(src[(o * p.channels + p.start + c) * p.inner + i]);
}

@compute @workgroup_size(256)
fn slice_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let k = element(wg, nwg, lid);
    if k >= p.outer * p.channels * p.inner {
        return;
    }
    let i = k % p.inner;
    let c = (k / p.inner) % p.channels;
    let o = k / (p.inner * p.channels);
    let inside = c >= p.start && c < p.start + p.len;
    let source = (o * p.len + min(c - p.start, p.len - 1u)) * p.inner + i;
    let v = select(0.0, f32(src[source]), inside);
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        dst[k] = act(f32(dst[k]) + v);
    } else {
        dst[k] = act(v);
    }
}

@compute @workgroup_size(256)
fn expand_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let k = element(wg, nwg, lid);
    if k >= p.outer * p.inner {
        return;
    }
    dst[k] = act(src[k % p.inner]);
}
