// depthwise.wgsl — depthwise 2-D convolution (groups == Cin == Cout), NCHW, forward and both backward passes.
//
// Shapes: x (N, C, H, W), w (C, 1, KH, KW), bias (C), y (N, C, OH, OW);
//   y[n, c, oh, ow] = bias[c] + sum_{kh, kw} w[c, kh, kw] * x[n, c, oh*s - pt + kh*d, ow*s - pl + kw*d]
// with out-of-bounds x reading as 0 (padding, symmetric or TensorFlow "SAME"-style asymmetric: only the top/left
// amounts are needed here). Depthwise convs do KH*KW multiply-adds per output: memory-bound, so they get these
// direct kernels instead of the implicit GEMM of conv2d.wgsl, whose 16-row blocks would sit 15/16 idle.
//
//   depthwise_conv2d_forward          one invocation per output element over the flat (N, C, OH, OW) tensor
//                                     (late EfficientNet planes are 2x2: a workgroup per plane would idle).
//   depthwise_conv2d_forward_rows4    undilated 3x3, 5x5 and 7x7 kernels at stride 1 or 2: four neighbouring outputs
//                                     per invocation (kernel size and stride as pipeline constants), one of the
//                                     variants the autotuner chooses from; with flags & 4 (the kernel turned) it
//                                     computes stride-1 backward_data too. Dispatch as below over
//                                     N * C * OH * ceil(OW / 4).
//   depthwise_conv2d_backward_data    one invocation per input element, gathering the outputs it fed.
//                                     Both: 256 per workgroup on a 2-D grid, element =
//                                     (wg.y * num_workgroups.x + wg.x) * 256 + local index.
//   depthwise_conv2d_backward_weight  one workgroup per (tap, c): a strided sum over (n, oh, ow) and a tree
//                                     reduction in workgroup memory. Dispatch (KH*KW, C, 1).
//   depthwise_conv2d_backward_weight_taps  undilated 3x3, 5x5 and 7x7: one workgroup per channel summing every tap at
//                                     once (kernel size as pipeline constants KH, KW), over the images
//                                     [wg.y * split_len, (wg.y + 1) * split_len): with one split (split_len = N) it
//                                     writes dw; with several, split s writes its partial dw at s * C * KH * KW and
//                                     the host sums the splits in order. Dispatch (C, splits, 1).
//   depthwise_conv2d_backward_weight_rows  the same for short sums (N*OH*OW < 1024): one invocation per
//                                     (c, tap) and a plain loop. Dispatch 256 per workgroup over C*KH*KW on a 2-D
//                                     grid, index = (wg.y * num_workgroups.x + wg.x) * 256 + local index.
// flags & 1: add bias (forward). flags & 2: accumulate into the output instead of overwriting. flags & 4: see
// FLAG_FLIP.

struct ConvParams {
    batch: u32,
    in_c: u32,
    in_h: u32,
    in_w: u32,
    out_c: u32,
    out_h: u32,
    out_w: u32,
    groups: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_top: u32,
    pad_left: u32,
    dilation_h: u32,
    dilation_w: u32,
    flags: u32,
    split_len: u32,
    _pad0: u32,
    _pad1: u32,
}

const FLAG_BIAS: u32 = 1u;
const FLAG_ACCUMULATE: u32 = 2u;
// depthwise_conv2d_forward_rows4 only: the kernel turned by 180 degrees, so that the forward kernel computes a
// stride-1 backward_data (dx is dy convolved with the turned kernel, padded by K - 1 - pad).
const FLAG_FLIP: u32 = 4u;

@group(0) @binding(0) var<uniform> p: ConvParams;
// Storage types: src is `act`, src2 `rhs`, out `res`: f32 throughout; with f16 activations, src and out f16 with
// the f32 master weight as src2 (forward and backward_data: weights are never rounded to f16), or f16 operands
// with an f32 weight gradient (backward_weight). Sums are f32 inside; the bias is an f32 parameter in every
// variant.
alias act = f32;
alias rhs = f32;
alias res = f32;

@group(0) @binding(1) var<storage, read> src: array<act>;        // forward: x; backward_data: dy; backward_weight: dy
@group(0) @binding(2) var<storage, read> src2: array<rhs>;       // forward, backward_data: w (C, KH*KW); backward_weight: x
@group(0) @binding(3) var<storage, read> bias: array<f32>;       // (C), forward only
@group(0) @binding(4) var<storage, read_write> out: array<res>;  // y (N, C, OH, OW), dx (N, C, H, W) or dw (C, KH*KW)

var<workgroup> partial: array<f32, 256>;

fn put(idx: u32, v: f32) {
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        out[idx] = res(f32(out[idx]) + v);
    } else {
        out[idx] = res(v);
    }
}

@compute @workgroup_size(256)
fn depthwise_conv2d_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let out_hw = p.out_h * p.out_w;
    let k = (wg.y * nwg.x + wg.x) * 256u + lid;
    if k >= p.batch * p.out_c * out_hw {
        return;
    }
    let plane = k / out_hw;
    let pix = k - plane * out_hw;
    let n = plane / p.out_c;
    let c = plane - n * p.out_c;
    let oh = pix / p.out_w;
    let ow = pix - oh * p.out_w;
    let x_plane = (n * p.in_c + c) * p.in_h * p.in_w;
    let w_base = c * p.kernel_h * p.kernel_w;
    var acc = 0.0;
    if p.dilation_h == 1u && p.dilation_w == 1u {
        // Undilated: the taps inside the image form one rectangle, walked without per-tap bounds checks.
        let top = i32(oh * p.stride_h) - i32(p.pad_top);
        let left = i32(ow * p.stride_w) - i32(p.pad_left);
        let kh_lo = max(0, -top);
        let kh_hi = min(i32(p.kernel_h), i32(p.in_h) - top);
        let kw_lo = max(0, -left);
        let kw_hi = min(i32(p.kernel_w), i32(p.in_w) - left);
        for (var kh = kh_lo; kh < kh_hi; kh++) {
            let x_row = x_plane + u32(top + kh) * p.in_w;
            let w_row = w_base + u32(kh) * p.kernel_w;
            for (var kw = kw_lo; kw < kw_hi; kw++) {
                acc = fma(f32(src2[w_row + u32(kw)]), f32(src[x_row + u32(left + kw)]), acc);
            }
        }
    } else {
        for (var kh = 0u; kh < p.kernel_h; kh++) {
            let ih = i32(oh * p.stride_h + kh * p.dilation_h) - i32(p.pad_top);
            if ih < 0 || ih >= i32(p.in_h) {
                continue;
            }
            for (var kw = 0u; kw < p.kernel_w; kw++) {
                let iw = i32(ow * p.stride_w + kw * p.dilation_w) - i32(p.pad_left);
                if iw >= 0 && iw < i32(p.in_w) {
                    acc = fma(f32(src2[w_base + kh * p.kernel_w + kw]), f32(src[x_plane + u32(ih) * p.in_w + u32(iw)]), acc);
                }
            }
        }
    }
    if (p.flags & FLAG_BIAS) != 0u {
        acc += bias[c];
    }
    put((n * p.out_c + c) * out_hw + pix, acc);
}

// Kernel size (square) and stride of depthwise_conv2d_forward_rows4, fixed per pipeline: 3, 5 or 7 and 1 or 2.
override DW_K: u32 = 3u;
override DW_S: u32 = 1u;
// Outputs per invocation, neighbours along a row.
const DW_OUT: u32 = 4u;

// The forward pass of undilated square kernels, DW_OUT outputs of one output row per invocation: each kernel row's
// (DW_OUT - 1) * DW_S + DW_K input values are read once into registers and used by all DW_OUT outputs (instead of
// DW_K reads per output), the channel's weights once per invocation; the tap loops have constant bounds, so
// compilers unroll them, with no division inside. Out-of-image inputs read a clamped address and count zero.
// With FLAG_FLIP it computes a stride-1 backward_data: src = dy, out = dx, the params' input and output sizes
// swapped and the padding K - 1 - pad.
// Dispatch: 256 per workgroup over N * C * OH * ceil(OW / DW_OUT) on a 2-D grid.
@compute @workgroup_size(256)
fn depthwise_conv2d_forward_rows4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                  @builtin(local_invocation_index) lid: u32) {
    let quads = (p.out_w + DW_OUT - 1u) / DW_OUT;
    let k = (wg.y * nwg.x + wg.x) * 256u + lid;
    if k >= p.batch * p.out_c * p.out_h * quads {
        return;
    }
    let row = k / quads;
    let ow0 = (k - row * quads) * DW_OUT;
    let plane = row / p.out_h;
    let oh = row - plane * p.out_h;
    let c = plane % p.out_c;
    let x_plane = plane * p.in_h * p.in_w;
    let w_base = c * DW_K * DW_K;
    let top = i32(oh * DW_S) - i32(p.pad_top);
    let left = i32(ow0 * DW_S) - i32(p.pad_left);
    let last_w = i32(p.in_w) - 1;
    let flip = (p.flags & FLAG_FLIP) != 0u;
    var acc = array<f32, DW_OUT>();
    for (var kh = 0u; kh < DW_K; kh++) {
        let ih = top + i32(kh);
        if ih < 0 || ih >= i32(p.in_h) {
            continue;
        }
        let x_row = x_plane + u32(ih) * p.in_w;
        var xs: array<f32, 13>; // (DW_OUT - 1) * DW_S + DW_K <= 3 * 2 + 7
        for (var i = 0u; i < (DW_OUT - 1u) * DW_S + DW_K; i++) {
            let iw = left + i32(i);
            let v = f32(src[x_row + u32(clamp(iw, 0, last_w))]);
            xs[i] = select(0.0, v, iw >= 0 && iw <= last_w);
        }
        for (var kw = 0u; kw < DW_K; kw++) {
            let tap = select(kh * DW_K + kw, (DW_K - 1u - kh) * DW_K + DW_K - 1u - kw, flip);
            let wv = f32(src2[w_base + tap]);
            for (var j = 0u; j < DW_OUT; j++) {
                acc[j] = fma(wv, xs[j * DW_S + kw], acc[j]);
            }
        }
    }
    var b = 0.0;
    if (p.flags & FLAG_BIAS) != 0u {
        b = bias[c];
    }
    let y_row = row * p.out_w;
    for (var j = 0u; j < DW_OUT; j++) {
        if ow0 + j < p.out_w {
            put(y_row + ow0 + j, acc[j] + b);
        }
    }
}

// The first tap index k >= 0 with k = t (mod s) whose output o = (t - k) / s is below `out` (k >= t - s*(out-1)).
fn first_tap(t: i32, s: i32, out: i32) -> i32 {
    var k = t % s;
    let lo = t - s * (out - 1);
    if k < lo {
        k += ((lo - k + s - 1) / s) * s;
    }
    return k;
}

// dx[n, c, ih, iw] = sum_{kh, kw} w[c, kh, kw] * dy[n, c, oh, ow] over the (oh, ow) with
// oh * stride_h = ih + pad_top - kh * dilation_h (and the same along W) that exist.
@compute @workgroup_size(256)
fn depthwise_conv2d_backward_data(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                  @builtin(local_invocation_index) lid: u32) {
    let in_hw = p.in_h * p.in_w;
    let k = (wg.y * nwg.x + wg.x) * 256u + lid;
    if k >= p.batch * p.in_c * in_hw {
        return;
    }
    let plane = k / in_hw;
    let pix = k - plane * in_hw;
    let n = plane / p.in_c;
    let c = plane - n * p.in_c;
    let ih = pix / p.in_w;
    let iw = pix - ih * p.in_w;
    let dy_plane = (n * p.out_c + c) * p.out_h * p.out_w;
    let w_base = c * p.kernel_h * p.kernel_w;
    var acc = 0.0;
    if p.dilation_h == 1u && p.dilation_w == 1u {
        // Undilated (every EfficientNet layer): the taps that fed this input are kh = th - s*oh for the oh in range,
        // i.e. kh = first, first + s, ... with oh stepping down by one: one division per axis per invocation
        // instead of a modulo and a division per tap.
        let th = i32(ih + p.pad_top);
        let sh = i32(p.stride_h);
        let kh_first = first_tap(th, sh, i32(p.out_h));
        let kh_last = min(i32(p.kernel_h) - 1, th);
        let tw = i32(iw + p.pad_left);
        let sw = i32(p.stride_w);
        let kw_first = first_tap(tw, sw, i32(p.out_w));
        let kw_last = min(i32(p.kernel_w) - 1, tw);
        var oh = (th - kh_first) / sh;
        for (var kh = kh_first; kh <= kh_last; kh += sh) {
            let w_row = w_base + u32(kh) * p.kernel_w;
            let dy_row = dy_plane + u32(oh) * p.out_w;
            var ow = (tw - kw_first) / sw;
            for (var kw = kw_first; kw <= kw_last; kw += sw) {
                acc = fma(f32(src2[w_row + u32(kw)]), f32(src[dy_row + u32(ow)]), acc);
                ow -= 1;
            }
            oh -= 1;
        }
    } else {
        for (var kh = 0u; kh < p.kernel_h; kh++) {
            let nh = i32(ih + p.pad_top) - i32(kh * p.dilation_h);
            if nh < 0 || nh % i32(p.stride_h) != 0 {
                continue;
            }
            let oh = u32(nh) / p.stride_h;
            if oh >= p.out_h {
                continue;
            }
            for (var kw = 0u; kw < p.kernel_w; kw++) {
                let nw = i32(iw + p.pad_left) - i32(kw * p.dilation_w);
                if nw < 0 || nw % i32(p.stride_w) != 0 {
                    continue;
                }
                let ow = u32(nw) / p.stride_w;
                if ow < p.out_w {
                    acc = fma(f32(src2[w_base + kh * p.kernel_w + kw]), f32(src[dy_plane + oh * p.out_w + ow]), acc);
                }
            }
        }
    }
    put((n * p.in_c + c) * in_hw + pix, acc);
}

// Where invocation `lid` starts in the (n, oh, ow) space of a strided sum, and the stride of 256 positions split
// into (n, oh, ow) steps, so positions advance with carries instead of a division each (slow on lavapipe). The
// kernels advance with the carries inline: the same steps behind a function taking a pointer to the position ran
// 1.7x slower on lavapipe (the position no longer stayed in registers).
struct Walk {
    n: u32,
    oh: u32,
    ow: u32,
    step_n: u32,
    step_oh: u32,
    step_ow: u32,
}

fn walk_start(lid: u32) -> Walk {
    let out_hw = p.out_h * p.out_w;
    let step_n = 256u / out_hw;
    let step_rest = 256u - step_n * out_hw;
    let step_oh = step_rest / p.out_w;
    let n = lid / out_hw;
    let oh = (lid - n * out_hw) / p.out_w;
    return Walk(n, oh, lid - n * out_hw - oh * p.out_w, step_n, step_oh, step_rest - step_oh * p.out_w);
}

// The workgroup sum, two ways with the same names: a tree in workgroup memory (every adapter), and subgroup sums
// where the adapter has subgroups (src/gpu/kernels.rs, with_subgroups, swaps the blocks).
// The reducing entry points take their invocation index through `Lane` and call `enter` first.
// [workgroup tree]
struct Lane {
    @builtin(local_invocation_index) index: u32,
}

fn enter(lane: Lane) -> u32 {
    return lane.index;
}

// The sum of `v` over the workgroup's 256 invocations (eight halvings); call in uniform control flow.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}
// [end workgroup tree]
/* [subgroups]
struct Lane {
    @builtin(local_invocation_index) index: u32,
    @builtin(subgroup_invocation_id) in_subgroup: u32,
    @builtin(subgroup_size) size: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
}

var<private> lane_in_subgroup: u32;
var<private> lane_size: u32;
var<private> lane_subgroup: u32;
var<private> lane_subgroups: u32;

fn enter(lane: Lane) -> u32 {
    lane_in_subgroup = lane.in_subgroup;
    lane_size = lane.size;
    lane_subgroup = lane.subgroup;
    lane_subgroups = lane.subgroups;
    return lane.index;
}

// Slots [0, count) of partial summed by subgroups into slots [0, ceil(count / size)) (slot k read by the lane with
// subgroup * size + in_subgroup == k).
fn subgroup_level(count: u32) {
    let k = lane_subgroup * lane_size + lane_in_subgroup;
    let s = subgroupAdd(select(0.0, partial[min(k, 255u)], k < count));
    workgroupBarrier(); // every slot read before any is written
    if lane_in_subgroup == 0u {
        partial[lane_subgroup] = s;
    }
    workgroupBarrier();
}

// The sum of `v` over the workgroup's 256 invocations: summed by each subgroup, then the subgroups' sums twice
// more (256 -> 32 -> 4 -> 1 for subgroups of 8 lanes or more; the host enables this variant only there); call in
// uniform control flow.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    let s = subgroupAdd(v);
    if lane_in_subgroup == 0u {
        partial[lane_subgroup] = s;
    }
    workgroupBarrier();
    subgroup_level(lane_subgroups);
    subgroup_level((lane_subgroups + lane_size - 1u) / lane_size);
    let total = partial[0];
    workgroupBarrier();
    return total;
}
[end subgroups] */

// dw[c, kh, kw] = sum_{n, oh, ow} dy[n, c, oh, ow] * x[n, c, oh*s - pt + kh*d, ow*s - pl + kw*d]
// Invocation i visits positions t = i, i + 256, ... of the (n, oh, ow) space; its (n, oh, ow) advances by the
// decomposition of 256 with carries instead of dividing t each time (vector division is slow on lavapipe), and
// out-of-bounds taps read a clamped address and add zero instead of branching around the load.
@compute @workgroup_size(256)
fn depthwise_conv2d_backward_weight(@builtin(workgroup_id) wg: vec3<u32>, lane: Lane) {
    let lid = enter(lane);
    let tap = wg.x;
    let c = wg.y;
    let kh = tap / p.kernel_w;
    let kw = tap - kh * p.kernel_w;
    let out_hw = p.out_h * p.out_w;
    let dh = i32(kh * p.dilation_h) - i32(p.pad_top);
    let dw = i32(kw * p.dilation_w) - i32(p.pad_left);
    let start = walk_start(lid);
    var n = start.n;
    var oh = start.oh;
    var ow = start.ow;
    var acc = 0.0;
    while n < p.batch {
        let ih = i32(oh * p.stride_h) + dh;
        let iw = i32(ow * p.stride_w) + dw;
        let ok = ih >= 0 && ih < i32(p.in_h) && iw >= 0 && iw < i32(p.in_w);
        let ihc = u32(clamp(ih, 0, i32(p.in_h) - 1));
        let iwc = u32(clamp(iw, 0, i32(p.in_w) - 1));
        let x = f32(src2[((n * p.in_c + c) * p.in_h + ihc) * p.in_w + iwc]);
        let g = f32(src[(n * p.out_c + c) * out_hw + oh * p.out_w + ow]);
        acc += select(0.0, g * x, ok);
        ow += start.step_ow;
        let carry_w = ow >= p.out_w;
        ow = select(ow, ow - p.out_w, carry_w);
        oh += start.step_oh + select(0u, 1u, carry_w);
        let carry_h = oh >= p.out_h;
        oh = select(oh, oh - p.out_h, carry_h);
        n += start.step_n + select(0u, 1u, carry_h);
    }
    let total = workgroup_sum(lid, acc);
    if lid == 0u {
        put(c * p.kernel_h * p.kernel_w + tap, total);
    }
}

// Kernel size of depthwise_conv2d_backward_weight_taps, fixed per pipeline so the tap loops unroll and the
// per-tap sums stay in registers (at most 49 taps: 3x3, 5x5 and ConvNeXt's 7x7).
override KH: u32 = 3u;
override KW: u32 = 3u;

// The same sums for every tap of channel c = workgroup x at once (undilated kernels of up to 25 taps): each visit
// of (n, oh, ow) reads dy once and the KH x KW window of x, instead of one workgroup per tap re-reading dy per tap
// (kernels of up to 49 taps).
// Then one tree reduction per tap. Dispatch (C, 1, 1).
@compute @workgroup_size(256)
fn depthwise_conv2d_backward_weight_taps(@builtin(workgroup_id) wg: vec3<u32>, lane: Lane) {
    let lid = enter(lane);
    let c = wg.x;
    let out_hw = p.out_h * p.out_w;
    let start = walk_start(lid);
    let n_begin = wg.y * p.split_len;
    let n_end = min(p.batch, n_begin + p.split_len);
    var n = n_begin + start.n;
    var oh = start.oh;
    var ow = start.ow;
    var acc: array<f32, 49>;
    while n < n_end {
        let g = f32(src[(n * p.out_c + c) * out_hw + oh * p.out_w + ow]);
        let x_plane = (n * p.in_c + c) * p.in_h * p.in_w;
        let top = i32(oh * p.stride_h) - i32(p.pad_top);
        let left = i32(ow * p.stride_w) - i32(p.pad_left);
        for (var kh = 0u; kh < KH; kh++) {
            let ih = top + i32(kh);
            let row_ok = ih >= 0 && ih < i32(p.in_h);
            let x_row = x_plane + u32(clamp(ih, 0, i32(p.in_h) - 1)) * p.in_w;
            for (var kw = 0u; kw < KW; kw++) {
                let iw = left + i32(kw);
                let ok = row_ok && iw >= 0 && iw < i32(p.in_w);
                let x = f32(src2[x_row + u32(clamp(iw, 0, i32(p.in_w) - 1))]);
                acc[kh * KW + kw] += select(0.0, g * x, ok);
            }
        }
        ow += start.step_ow;
        let carry_w = ow >= p.out_w;
        ow = select(ow, ow - p.out_w, carry_w);
        oh += start.step_oh + select(0u, 1u, carry_w);
        let carry_h = oh >= p.out_h;
        oh = select(oh, oh - p.out_h, carry_h);
        n += start.step_n + select(0u, 1u, carry_h);
    }
    for (var tap = 0u; tap < KH * KW; tap++) {
        let total = workgroup_sum(lid, acc[tap]);
        if lid == 0u {
            put((wg.y * p.out_c + c) * KH * KW + tap, total);
        }
    }
}

@compute @workgroup_size(256)
fn depthwise_conv2d_backward_weight_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                         @builtin(local_invocation_index) lid: u32) {
    let taps = p.kernel_h * p.kernel_w;
    let j = (wg.y * nwg.x + wg.x) * 256u + lid;
    if j >= p.in_c * taps {
        return;
    }
    let c = j / taps;
    let tap = j - c * taps;
    let kh = tap / p.kernel_w;
    let kw = tap - kh * p.kernel_w;
    let out_hw = p.out_h * p.out_w;
    var acc = 0.0;
    for (var n = 0u; n < p.batch; n++) {
        let x_plane = (n * p.in_c + c) * p.in_h * p.in_w;
        let dy_plane = (n * p.out_c + c) * out_hw;
        for (var oh = 0u; oh < p.out_h; oh++) {
            let ih = i32(oh * p.stride_h + kh * p.dilation_h) - i32(p.pad_top);
            if ih < 0 || ih >= i32(p.in_h) {
                continue;
            }
            for (var ow = 0u; ow < p.out_w; ow++) {
                let iw = i32(ow * p.stride_w + kw * p.dilation_w) - i32(p.pad_left);
                if iw >= 0 && iw < i32(p.in_w) {
                    acc = fma(f32(src[dy_plane + oh * p.out_w + ow]), f32(src2[x_plane + u32(ih) * p.in_w + u32(iw)]), acc);
                }
            }
        }
    }
    put(j, acc);
}
