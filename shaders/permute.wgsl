// permute.wgsl — a tensor's axes reordered (PyTorch's permute followed by contiguous()), forward and backward.
//
//   permute   out[i] (+)= x[src(i)]: i is decomposed into coordinates over the output dims (last axis fastest), and
//             src(i) = sum over axes d of coordinate[d] * strides[d], strides[d] the input's element stride of the
//             axis that becomes output axis d. Backward is the same kernel with the inverse permutation.
//             flags & 1: accumulate into out.
// Rank at most 8: dims and strides are two vec4 each (uniform arrays need 16-byte elements).
// Layout: flat arrays of p.len elements. Dispatch: 256 per workgroup on a 2-D grid (x, y),
// element = (wg.y * num_workgroups.x + wg.x) * 256 + local index.
// Storage: `act` is f32 here and f16 in the f16 variant (src/gpu/kernels.rs, Precision::F16); values are widened to
// f32 where they are computed with or added to, and each stored element is rounded once.

struct PermuteParams {
    len: u32,
    rank: u32,
    flags: u32,
    _pad: u32,
    dims: array<vec4<u32>, 2>,
    strides: array<vec4<u32>, 2>,
}

const FLAG_ACCUMULATE: u32 = 1u;

@group(0) @binding(0) var<uniform> p: PermuteParams;
alias act = f32;

@group(0) @binding(1) var<storage, read> x: array<act>;          // (len), the input's layout
@group(0) @binding(2) var<storage, read_write> out: array<act>;  // (len), the permuted layout

@compute @workgroup_size(256)
fn permute(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * 256u + lid;
    if i >= p.len {
        return;
    }
    var rest = i;
    var src = 0u;
    for (var d = i32(p.rank) - 1; d >= 0; d--) {
        let dim = p.dims[d / 4][d % 4];
        src += (rest % dim) * p.strides[d / 4][d % 4];
        rest /= dim;
    }
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        out[i] = act(f32(out[i]) + f32(x[src]));
    } else {
        out[i] = x[src];
    }
}
