// reduce.wgsl — sums over axes.
//
//   sum_reduce   out[m] = sum over o < outer, i < inner of x[(o * mid + m) * inner + i]
//                x seen as (outer, mid, inner) keeps its middle axis: (R, N) -> (N) with outer = R, inner = 1
//                (a linear layer's bias gradient), (N, C, H*W) -> (C) (a conv bias gradient), everything -> (1)
//                with mid = 1. flags & 1: accumulate (out[m] += sum).
//
// Dispatch: one workgroup of 256 invocations per output element m, on a 2-D grid (x, y) with x <= 65535:
// m = wg.y * num_workgroups.x + wg.x. Each invocation sums a strided share, then a tree reduction in workgroup
// memory; the summation order is fixed, so results are deterministic.
//   sum_reduce_rows  the same sum for short reductions (outer * inner < 1024): one invocation per m and a plain
//                    loop, 256 per workgroup on the same 2-D grid (m = (wg.y * num_workgroups.x + wg.x) * 256 +
//                    local index) — a workgroup and its barriers per handful of terms would cost far more.

struct ReduceParams {
    outer: u32,
    mid: u32,
    inner: u32,
    flags: u32,
}

const FLAG_ACCUMULATE: u32 = 1u;

@group(0) @binding(0) var<uniform> p: ReduceParams;
// x is an activation gradient: f16 in the f16 variant (src/gpu/kernels.rs, Precision::F16); the sums and `out`
// (parameter gradients: biases, class token, position embedding) are f32 in both.
alias act = f32;

@group(0) @binding(1) var<storage, read> x: array<act>;          // (outer, mid, inner)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // (mid)

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn sum_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let m = wg.y * nwg.x + wg.x;
    // m is uniform across the workgroup, so every invocation reaches the barriers below.
    let in_range = m < p.mid;
    var acc = 0.0;
    if in_range {
        let total = p.outer * p.inner;
        for (var t = lid; t < total; t += 256u) {
            let o = t / p.inner;
            let i = t - o * p.inner;
            acc += f32(x[(o * p.mid + m) * p.inner + i]);
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    if lid == 0u && in_range {
        if (p.flags & FLAG_ACCUMULATE) != 0u {
            out[m] += partial[0];
        } else {
            out[m] = partial[0];
        }
    }
}

@compute @workgroup_size(256)
fn sum_reduce_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let m = (wg.y * nwg.x + wg.x) * 256u + lid;
    if m >= p.mid {
        return;
    }
    var acc = 0.0;
    for (var o = 0u; o < p.outer; o++) {
        let base = (o * p.mid + m) * p.inner;
        for (var i = 0u; i < p.inner; i++) {
            acc += f32(x[base + i]);
        }
    }
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        out[m] += acc;
    } else {
        out[m] = acc;
    }
}
