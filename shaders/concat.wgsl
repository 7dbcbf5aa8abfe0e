// concat.wgsl — channel concatenation of NCHW tensors, forward and backward, as copies of channel slices.
//
//   concat_forward   out[n, dst_offset + c, i] = x[n, c, i]        x (N, C, HW) into out (N, C_dst, HW)
//   concat_backward  dx[n, c, i] = dout[n, src_offset + c, i]      the matching slice of the output gradient
// Both are the same copy of a (N, C, HW) slice between two tensors whose channel counts (src_c_total, dst_c_total)
// and channel offsets differ. flags & 1: accumulate into the destination.
// Dispatch: (ceil(HW / 256), C, N); one invocation per element.
// Storage: `act` is f32 here and f16 in the f16 variant (src/gpu/kernels.rs, Precision::F16); values are widened to
// f32 where they are computed with or added to, and each stored element is rounded once.

struct ConcatParams {
    batch: u32,
    channels: u32,
    hw: u32,
    flags: u32,
    src_c_total: u32,
    src_c_offset: u32,
    dst_c_total: u32,
    dst_c_offset: u32,
}

const FLAG_ACCUMULATE: u32 = 1u;

@group(0) @binding(0) var<uniform> p: ConcatParams;
alias act = f32;

@group(0) @binding(1) var<storage, read> src: array<act>;        // (N, src_c_total, HW)
@group(0) @binding(2) var<storage, read_write> dst: array<act>;  // (N, dst_c_total, HW)

fn copy_slice(wg: vec3<u32>, lid: u32) {
    let c = wg.y;
    let n = wg.z;
    let i = wg.x * 256u + lid;
    if i >= p.hw {
        return;
    }
    let v = f32(src[(n * p.src_c_total + p.src_c_offset + c) * p.hw + i]);
    let d = (n * p.dst_c_total + p.dst_c_offset + c) * p.hw + i;
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        dst[d] = act(f32(dst[d]) + v);
    } else {
        dst[d] = act(v);
    }
}

@compute @workgroup_size(256)
fn concat_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    copy_slice(wg, lid);
}

@compute @workgroup_size(256)
fn concat_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    copy_slice(wg, lid);
}
