// pool.wgsl — pooling over NCHW tensors, forward and backward.
//
//   max_pool_forward          y[n,c,oh,ow] = max over the window of x (padding never wins), indices[n,c,oh,ow] =
//                             ih * W + iw of the first maximum in scan order (kept for backward).
//   max_pool_backward         dx[n,c,ih,iw] = sum of dy over the windows whose recorded maximum is (ih, iw).
//   avg_pool_forward          y = mean over the window; flags & 2: divide by the full window (PyTorch's
//                             count_include_pad=True), else by the in-bounds part.
//   avg_pool_backward         dx[n,c,ih,iw] = sum over the windows containing it of dy / divisor.
//   global_pool_forward       y[n, off + c] = max (flags & 4) or mean over H x W of x[n, c]; y is (N, C_total), so
//                             fastai's concat pool writes max and mean into two halves of one tensor, no copy.
//                             indices[n, c] = position of the maximum (max only).
//   global_pool_forward_rows  the same for small planes: one invocation per (n, c) plane, a plain loop (a
//                             workgroup per plane would leave most of its 256 invocations idle).
//   global_avg_pool_backward  dx[n,c,h,w] = dy[n, off + c] / (H*W)
//   global_max_pool_backward  dx[n,c,h,w] = dy[n, off + c] where h*W + w == indices[n, c], else 0
// flags & 1: accumulate into the output (the two halves of a concat pool add into one dx).
// Storage: `act` (x, y, dy, dx) is f32 here and f16 in the f16 variant (src/gpu/kernels.rs, Precision::F16); sums,
// maxima and divisors are f32, each stored element rounded once. Indices are u32 in both.
//
// Window geometry: OH = (H + pad_top + pad_bottom - KH) / stride_h + 1 (the host computes it; top/left padding
// is needed, except for the divisor with count_include_pad). Bindings: src (1) = x or dy, dst (2) = y or dx, indices (3) = argmax positions.
// Dispatch: window kernels: (ceil(plane / 256), C, N), one invocation per output (forward) or input (backward)
// element of a plane; global backward: ceil(N*C*H*W / 256) workgroups on a 2-D grid, one invocation per element of
// dx; global_pool_forward: (C, N), one workgroup per plane;
// global_pool_forward_rows: (ceil(N*C / 256), 1, 1).

struct PoolParams {
    batch: u32,
    channels: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_top: u32,
    pad_left: u32,
    pad_bottom: u32,
    pad_right: u32,
    flags: u32,
    out_c_total: u32,
    out_c_offset: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const FLAG_ACCUMULATE: u32 = 1u;
const FLAG_COUNT_PAD: u32 = 2u;
const FLAG_MAX: u32 = 4u;
// The lowest finite f32, spelled exactly: browsers' WGSL compiler (Tint) rejects the rounded decimal -3.4028235e38
// as out of f32's range.
const NEG_INF: f32 = -0x1.fffffep+127f;

@group(0) @binding(0) var<uniform> p: PoolParams;
alias act = f32;

@group(0) @binding(1) var<storage, read> src: array<act>;          // x (N, C, H, W) or dy
@group(0) @binding(2) var<storage, read_write> dst: array<act>;    // y or dx
@group(0) @binding(3) var<storage, read_write> indices: array<u32>; // (N, C, OH, OW) or (N, C): argmax in the plane

var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

fn put(i: u32, v: f32) {
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        dst[i] = act(f32(dst[i]) + v);
    } else {
        dst[i] = act(v);
    }
}

// src[i] widened to f32 (every sum and comparison is in f32).
fn sv(i: u32) -> f32 {
    return f32(src[i]);
}

// Window start (may be negative) of output (oh, ow).
fn window_origin(oh: u32, ow: u32) -> vec2<i32> {
    return vec2<i32>(i32(oh * p.stride_h) - i32(p.pad_top), i32(ow * p.stride_w) - i32(p.pad_left));
}

// The output row (or column) whose window puts kernel offset k on input position i: o * stride - pad + k == i.
// -1 when there is none (not a multiple of the stride, or outside the output).
fn window_at(i: u32, k: u32, pad: u32, stride: u32, out_size: u32) -> i32 {
    let num = i32(i + pad) - i32(k);
    if num < 0 || num % i32(stride) != 0 || u32(num) / stride >= out_size {
        return -1;
    }
    return num / i32(stride);
}

@compute @workgroup_size(256)
fn max_pool_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let plane = wg.z * p.channels + wg.y;
    let pix = wg.x * 256u + lid;
    if pix >= p.out_h * p.out_w {
        return;
    }
    let oh = pix / p.out_w;
    let o = window_origin(oh, pix - oh * p.out_w);
    let x_plane = plane * p.in_h * p.in_w;
    var best = NEG_INF;
    var best_pos = 0u;
    var found = false;
    for (var kh = 0u; kh < p.kernel_h; kh++) {
        let ih = o.x + i32(kh);
        if ih < 0 || ih >= i32(p.in_h) {
            continue;
        }
        for (var kw = 0u; kw < p.kernel_w; kw++) {
            let iw = o.y + i32(kw);
            if iw < 0 || iw >= i32(p.in_w) {
                continue;
            }
            let pos = u32(ih) * p.in_w + u32(iw);
            let v = sv(x_plane + pos);
            if !found || v > best {
                best = v;
                best_pos = pos;
                found = true;
            }
        }
    }
    let out_i = plane * p.out_h * p.out_w + pix;
    put(out_i, best);
    indices[out_i] = best_pos;
}

@compute @workgroup_size(256)
fn max_pool_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let plane = wg.z * p.channels + wg.y;
    let pos = wg.x * 256u + lid;
    if pos >= p.in_h * p.in_w {
        return;
    }
    let ih = pos / p.in_w;
    let iw = pos - ih * p.in_w;
    let out_plane = plane * p.out_h * p.out_w;
    var acc = 0.0;
    for (var kh = 0u; kh < p.kernel_h; kh++) {
        let oh = window_at(ih, kh, p.pad_top, p.stride_h, p.out_h);
        for (var kw = 0u; kw < p.kernel_w; kw++) {
            let ow = window_at(iw, kw, p.pad_left, p.stride_w, p.out_w);
            if oh >= 0 && ow >= 0 {
                let o = out_plane + u32(oh) * p.out_w + u32(ow);
                if indices[o] == pos {
                    acc += sv(o);
                }
            }
        }
    }
    put(plane * p.in_h * p.in_w + pos, acc);
}

// Divisor of output (oh, ow) for average pooling.
fn avg_divisor(o: vec2<i32>) -> f32 {
    if (p.flags & FLAG_COUNT_PAD) != 0u {
        // PyTorch counts padding but not the part of the window past the padded edge.
        let h_end = min(o.x + i32(p.kernel_h), i32(p.in_h + p.pad_bottom));
        let w_end = min(o.y + i32(p.kernel_w), i32(p.in_w + p.pad_right));
        return f32((h_end - o.x) * (w_end - o.y));
    }
    let h = min(o.x + i32(p.kernel_h), i32(p.in_h)) - max(o.x, 0);
    let w = min(o.y + i32(p.kernel_w), i32(p.in_w)) - max(o.y, 0);
    return f32(max(h, 1) * max(w, 1));
}

@compute @workgroup_size(256)
fn avg_pool_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let plane = wg.z * p.channels + wg.y;
    let pix = wg.x * 256u + lid;
    if pix >= p.out_h * p.out_w {
        return;
    }
    let oh = pix / p.out_w;
    let o = window_origin(oh, pix - oh * p.out_w);
    let x_plane = plane * p.in_h * p.in_w;
    var acc = 0.0;
    for (var kh = 0u; kh < p.kernel_h; kh++) {
        let ih = o.x + i32(kh);
        for (var kw = 0u; kw < p.kernel_w; kw++) {
            let iw = o.y + i32(kw);
            if ih >= 0 && ih < i32(p.in_h) && iw >= 0 && iw < i32(p.in_w) {
                acc += sv(x_plane + u32(ih) * p.in_w + u32(iw));
            }
        }
    }
    put(plane * p.out_h * p.out_w + pix, acc / avg_divisor(o));
}

@compute @workgroup_size(256)
fn avg_pool_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let plane = wg.z * p.channels + wg.y;
    let pos = wg.x * 256u + lid;
    if pos >= p.in_h * p.in_w {
        return;
    }
    let ih = pos / p.in_w;
    let iw = pos - ih * p.in_w;
    let out_plane = plane * p.out_h * p.out_w;
    var acc = 0.0;
    for (var kh = 0u; kh < p.kernel_h; kh++) {
        let oh = window_at(ih, kh, p.pad_top, p.stride_h, p.out_h);
        for (var kw = 0u; kw < p.kernel_w; kw++) {
            let ow = window_at(iw, kw, p.pad_left, p.stride_w, p.out_w);
            if oh >= 0 && ow >= 0 {
                let o = out_plane + u32(oh) * p.out_w + u32(ow);
                acc += sv(o) / avg_divisor(window_origin(u32(oh), u32(ow)));
            }
        }
    }
    put(plane * p.in_h * p.in_w + pos, acc);
}

@compute @workgroup_size(256)
fn global_pool_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wg.x;
    let n = wg.y;
    let hw = p.in_h * p.in_w;
    let x_plane = (n * p.channels + c) * hw;
    let is_max = (p.flags & FLAG_MAX) != 0u;
    // Per invocation: the running max (with its first position) or the running sum of a strided share.
    var v = select(0.0, NEG_INF, is_max);
    var pos = 0xffffffffu;
    for (var i = lid; i < hw; i += 256u) {
        let x = sv(x_plane + i);
        if is_max {
            if pos == 0xffffffffu || x > v {
                v = x;
                pos = i;
            }
        } else {
            v += x;
        }
    }
    best_v[lid] = v;
    best_i[lid] = pos;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            let ov = best_v[lid + stride];
            let oi = best_i[lid + stride];
            if is_max {
                // Keep the larger value; on a tie the smaller position (the first in scan order).
                if oi != 0xffffffffu && (best_i[lid] == 0xffffffffu || ov > best_v[lid]
                        || (ov == best_v[lid] && oi < best_i[lid])) {
                    best_v[lid] = ov;
                    best_i[lid] = oi;
                }
            } else {
                best_v[lid] += ov;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u {
        let out_i = n * p.out_c_total + p.out_c_offset + c;
        if is_max {
            put(out_i, best_v[0]);
            indices[n * p.channels + c] = best_i[0];
        } else {
            put(out_i, best_v[0] / f32(hw));
        }
    }
}

// One invocation per dx element, flat over N*C*H*W on a 2-D grid (no idle invocations on tiny planes such as
// EfficientNet's 2x2 at 64 px, where a workgroup per plane left 252 of 256 idle).
fn global_backward_position(wg: vec3<u32>, groups: vec3<u32>, lid: u32) -> vec4<u32> {
    let hw = p.in_h * p.in_w;
    let i = (wg.y * groups.x + wg.x) * 256u + lid;
    let plane = i / hw;
    let n = plane / p.channels;
    return vec4<u32>(i, n, plane - n * p.channels, i - plane * hw);
}

@compute @workgroup_size(256)
fn global_avg_pool_backward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let at = global_backward_position(wg, groups, lid);
    if at.y >= p.batch {
        return;
    }
    put(at.x, sv(at.y * p.out_c_total + p.out_c_offset + at.z) / f32(p.in_h * p.in_w));
}

@compute @workgroup_size(256)
fn global_max_pool_backward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let at = global_backward_position(wg, groups, lid);
    if at.y >= p.batch {
        return;
    }
    let plane = at.y * p.channels + at.z;
    put(at.x, select(0.0, sv(at.y * p.out_c_total + p.out_c_offset + at.z), indices[plane] == at.w));
}

@compute @workgroup_size(256)
fn global_pool_forward_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let plane = gid.x;
    if plane >= p.batch * p.channels {
        return;
    }
    let n = plane / p.channels;
    let c = plane - n * p.channels;
    let hw = p.in_h * p.in_w;
    let is_max = (p.flags & FLAG_MAX) != 0u;
    var v = sv(plane * hw);
    var pos = 0u;
    var sum = v;
    for (var i = 1u; i < hw; i++) {
        let x = sv(plane * hw + i);
        sum += x;
        if x > v {
            v = x;
            pos = i;
        }
    }
    let out_i = n * p.out_c_total + p.out_c_offset + c;
    if is_max {
        put(out_i, v);
        indices[plane] = pos;
    } else {
        put(out_i, sum / f32(hw));
    }
}
