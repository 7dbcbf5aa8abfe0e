// norm.wgsl — batch normalization over channels, forward and backward, training and eval modes.
//
// x is seen as (N, C, HW): HW = H*W for 4-D activations, HW = 1 for 2-D (N, C) features. M = N * HW values per
// channel. With mean/var the statistics in use (the batch's in training, the running ones in eval):
//   xhat = (x - mean[c]) / sqrt(var[c] + eps),   y = gamma[c] * xhat + beta[c]
//
// Two schedules for training (src/ops/norm.rs, NormSchedule, chooses per device and shape):
//
// Split, the statistics/sums by channel and the elementwise passes over the flat tensor (4 dispatches a layer):
//   batch_norm_statistics     per channel: batch mean and biased variance (two passes, for accuracy) into
//                             save_mean / save_var, and the running statistics updated with momentum m:
//                             running = (1 - m) * running + m * batch   (the variance unbiased: * M / (M - 1)).
//                             Dispatch (C, 1, 1): one workgroup per channel.
//   batch_norm_statistics_rows, batch_norm_backward_reduce_rows  the same per-channel sums for short channels
//                             (N * HW < 1024): one invocation per channel and plain loops (a workgroup and its
//                             barriers per handful of values costs far more). Dispatch (ceil(C / 256), 1, 1).
//   batch_norm_forward        y from x, mean, var, gamma, beta (also eval's whole forward). One invocation per
//                             element over the flat tensor (planes can be as small as 1x1, so no grid by plane):
//                             256 per workgroup on a 2-D grid, element = (wg.y * num_workgroups.x + wg.x) * 256 +
//                             local index.
//   batch_norm_backward_reduce  dbeta[c] = sum dy, dgamma[c] = sum dy * xhat. Dispatch (C, 1, 1).
//   batch_norm_backward_data  training: dx = gamma * invstd / M * (M * dy - dbeta - xhat * dgamma)
//                             (the batch statistics depend on x);
//                             eval (flags & 2): dx = gamma * invstd * dy (the statistics are constants).
//                             flags & 1: accumulate into dx. Dispatch as batch_norm_forward.
//
// Chunked, Split with each per-channel reduction in two stages, for long channels on big GPUs (one workgroup per
// channel leaves most of such a GPU idle: 32 channels of 64 x 112 x 112 values are 32 workgroups):
//   batch_norm_statistics_chunks  workgroup (j, c) takes chunk j of channel c, elements t = n * HW + i in
//                             [j * L, (j + 1) * L) (L = p.chunk_len): its mean and its sum of squared deviations
//                             from that mean (two passes over the chunk, the second from cache) into
//                             partials[(c * chunks + j) * 2 + {0, 1}]. Dispatch (C, chunks, 1).
//   batch_norm_statistics_combine  per channel, one invocation: the chunks combined in order by Chan et al.'s
//                             pairwise update (n = na + nb, d = mb - ma, mean = ma + d * nb / n,
//                             M2 = M2a + M2b + d^2 * na * nb / n): the mean and biased variance, stored with the
//                             running update as batch_norm_statistics does. Dispatch (ceil(C / 256), 1, 1).
//   batch_norm_backward_reduce_chunks  the chunk's (sum dy * xhat, sum dy) (dy masked in place) into partials.
//   batch_norm_backward_combine  per channel, the chunks' sums added in order: dgamma, dbeta.
// then batch_norm_forward / batch_norm_backward_data as in Split: 3 dispatches each way. Every sum is f32; a
// chunk's variance is two-pass and the combination exact in real arithmetic, so the error stays that of the
// per-channel two-pass sums (the tests hold both schedules to one tolerance).
//
// Single, a layer's forward and its backward each one dispatch (2 a layer): the workgroup (or, for short channels,
// the invocation: `_rows`) that sums a channel goes on to write the channel's y or dx, so nothing waits on a
// barrier between dispatches. The same values, bytes and sums as Split, with C workgroups for the elementwise
// part (fine while channels are many or short; Split spreads long, few channels over the whole GPU).
//   batch_norm_forward_single(_rows)   batch_norm_statistics, then batch_norm_forward of the channel.
//   batch_norm_backward_single(_rows)  batch_norm_backward_reduce, then batch_norm_backward_data of the channel
//                             (training or eval); each invocation reads back the dy elements it masked.
// Each binds 9 storage buffers: used only where the device allows 9 in a shader stage.
//   batch_norm_backward_single_residual(_rows)  with a fused residual: also writes the residual's gradient (dy,
//                             or added to it with flags & 32), each invocation over its own elements: 10 storage
//                             buffers.
//
// Fused ops (the executor's graph rewrite; timm's BatchNormAct2d, and a residual add), one or the other:
//   flags & 16: forward adds residual[k] to the normalized value (y = bn(x) + r, a block's skip connection);
//   flags & 4 (ReLU), flags & 8 (ReLU6): forward stores the activation of the normalized value, never the value.
//   Backward then gets dy of the activation's output: the backward reduces mask it by the activation's
//   derivative (0 at the kinks, as PyTorch), recomputing the normalized value from x, the statistics, gamma and
//   beta, and write the masked dy back in place (dy is the output's gradient, which nothing reads after this
//   layer), so backward_data reads it as it is. A residual's gradient is dy: written by the _residual entry
//   points, else copied outside this file.
// No separate pass for the add or the activation either way, and no buffers for the intermediate values or their
// gradients. Split's entry points bind at most 8 storage buffers (WebGPU's default limit).
//
// Storage: `act` (x, dy, y, dx) is f32 here and f16 in the f16 variant (src/gpu/kernels.rs, Precision::F16);
// statistics, parameters and their gradients are f32 in both, as is every sum.

struct NormParams {
    batch: u32,
    channels: u32,
    hw: u32,
    flags: u32,
    eps: f32,
    momentum: f32,
    chunk_len: u32, // Chunked: elements of a channel per chunk
    _pad1: u32,
}

const FLAG_ACCUMULATE: u32 = 1u;
const FLAG_EVAL: u32 = 2u;
const FLAG_RELU: u32 = 4u;
const FLAG_RELU6: u32 = 8u;
const FLAG_RESIDUAL: u32 = 16u;
const FLAG_ACCUMULATE_RESIDUAL: u32 = 32u;

@group(0) @binding(0) var<uniform> p: NormParams;
alias act = f32;

@group(0) @binding(1) var<storage, read> x: array<act>;               // (N, C, HW)
@group(0) @binding(2) var<storage, read_write> dy: array<act>;        // (N, C, HW); masked in place (above)
@group(0) @binding(3) var<storage, read> mean: array<f32>;            // (C) statistics in use
@group(0) @binding(4) var<storage, read> variance: array<f32>;        // (C) biased variance in use
@group(0) @binding(5) var<storage, read> gamma: array<f32>;           // (C)
@group(0) @binding(6) var<storage, read> beta: array<f32>;            // (C)
@group(0) @binding(7) var<storage, read> dgamma_in: array<f32>;       // (C), backward_data
@group(0) @binding(8) var<storage, read> dbeta_in: array<f32>;        // (C), backward_data
@group(0) @binding(9) var<storage, read_write> out: array<act>;       // y or dx (N, C, HW)
@group(0) @binding(10) var<storage, read_write> stat_a: array<f32>;   // (C) save_mean, or dgamma
@group(0) @binding(11) var<storage, read_write> stat_b: array<f32>;   // (C) save_var, or dbeta
@group(0) @binding(12) var<storage, read_write> running_mean: array<f32>; // (C)
@group(0) @binding(13) var<storage, read_write> running_var: array<f32>;  // (C)
@group(0) @binding(14) var<storage, read> residual: array<act>;       // (N, C, HW), forward with flags & 16
@group(0) @binding(15) var<storage, read_write> residual_grad: array<act>; // (N, C, HW), the _residual backward
@group(0) @binding(16) var<storage, read_write> partials: array<f32>;  // (C, chunks, 2), Chunked

var<workgroup> partial: array<f32, 256>;
var<workgroup> partial2: array<f32, 256>;

// x[i] and dy[i] widened to f32: statistics, sums and the normalization are f32 at either storage precision.
fn xv(i: u32) -> f32 {
    return f32(x[i]);
}

fn dyv(i: u32) -> f32 {
    return f32(dy[i]);
}

// The fused activation of a value.
fn activate(v: f32) -> f32 {
    if (p.flags & FLAG_RELU) != 0u {
        return max(v, 0.0);
    }
    if (p.flags & FLAG_RELU6) != 0u {
        return clamp(v, 0.0, 6.0);
    }
    return v;
}

// The normalized value (before the fused activation or residual), the same expression in forward and backward
// so that backward's mask sees exactly the value forward activated.
fn normalized(k: u32, c: u32, mu: f32, invstd: f32) -> f32 {
    return gamma[c] * (xv(k) - mu) * invstd + beta[c];
}

// dy[k] through the fused activation: the gradient of the normalized value.
fn dy_gated(k: u32, c: u32, mu: f32, invstd: f32) -> f32 {
    let g = dyv(k);
    if (p.flags & (FLAG_RELU | FLAG_RELU6)) == 0u {
        return g;
    }
    let v = normalized(k, c, mu, invstd);
    let live = v > 0.0 && ((p.flags & FLAG_RELU6) == 0u || v < 6.0);
    return select(0.0, g, live);
}

// dy_gated, also stored back into dy[k] where the activation passed nothing (the backward reduces call it once per
// element; backward_data, or the single kernel's dx loop, then reads dy as it is).
fn dy_masked(k: u32, c: u32, invstd: f32) -> f32 {
    let g = dy_gated(k, c, mean[c], invstd);
    if (p.flags & (FLAG_RELU | FLAG_RELU6)) != 0u && g == 0.0 {
        dy[k] = act(0.0);
    }
    return g;
}

// y[k] from the statistics: the normalized value, plus the residual or through the activation.
fn forward_value(k: u32, c: u32, mu: f32, invstd: f32) -> act {
    var v = normalized(k, c, mu, invstd);
    if (p.flags & FLAG_RESIDUAL) != 0u {
        v += f32(residual[k]);
    }
    return act(activate(v));
}

// dx[k] from the gated dy value d and the channel's sums sg = dgamma, sb = dbeta; stored, or added (flags & 1).
fn store_dx(k: u32, c: u32, d: f32, mu: f32, invstd: f32, sg: f32, sb: f32) {
    var g: f32;
    if (p.flags & FLAG_EVAL) != 0u {
        g = gamma[c] * invstd * d;
    } else {
        let m = f32(p.batch * p.hw);
        let xhat = (xv(k) - mu) * invstd;
        g = gamma[c] * invstd / m * (m * d - sb - xhat * sg);
    }
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        out[k] = act(f32(out[k]) + g);
    } else {
        out[k] = act(g);
    }
}

// The workgroup sums, two ways with the same names: a tree in workgroup memory (every adapter), and subgroup sums
// where the adapter has subgroups (src/gpu/kernels.rs, with_subgroups, swaps the blocks).
// The reducing entry points take their invocation index through `Lane` and call `enter` first.
// [workgroup tree]
struct Lane {
    @builtin(local_invocation_index) index: u32,
}

fn enter(lane: Lane) -> u32 {
    return lane.index;
}

// Sum partial (and partial2) over the workgroup into element 0 (eight halvings). Every invocation must call it,
// after storing its values at its own index.
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

// One level: (a, b) summed over each subgroup into slot `subgroup` of partial (partial2), by its first lane.
fn subgroup_store(a: f32, b: f32) {
    let sa = subgroupAdd(a);
    let sb = subgroupAdd(b);
    workgroupBarrier(); // every slot read before any is written
    if lane_in_subgroup == 0u {
        partial[lane_subgroup] = sa;
        partial2[lane_subgroup] = sb;
    }
    workgroupBarrier();
}

// Slots [0, count) summed by subgroups into slots [0, ceil(count / size)): slot k read by the lane with
// subgroup * size + in_subgroup == k.
fn subgroup_level(count: u32) {
    let k = min(lane_subgroup * lane_size + lane_in_subgroup, 255u);
    let live = lane_subgroup * lane_size + lane_in_subgroup < count;
    subgroup_store(select(0.0, partial[k], live), select(0.0, partial2[k], live));
}

// Sum partial (and partial2) over the workgroup into element 0: each lane's own values summed by its subgroup,
// then the subgroups' sums twice more, which leaves one value for subgroups of 8 lanes or more (256 -> 32 -> 4 ->
// 1; the host enables this variant only there). Every invocation must call it, after storing its values at its
// own index.
fn workgroup_sums(lid: u32) {
    subgroup_store(partial[lid], partial2[lid]);
    subgroup_level(lane_subgroups);
    subgroup_level((lane_subgroups + lane_size - 1u) / lane_size);
}
[end subgroups] */

// Invocation lid of a channel's workgroup visits the channel's elements t = lid, lid + 256, ... of the
// (N, HW) plane stack (or of a chunk of it: begin + lid, ...). Its position is kept as (n, i), found once by
// cursor_at and advanced by the decomposition of 256 with carries, so the loops divide nothing (vector division is
// slow on software drivers).
fn cursor_at(t: u32) -> vec2<u32> {
    return vec2<u32>(t / p.hw, t % p.hw);
}

fn cursor_next(cur: vec2<u32>) -> vec2<u32> {
    let step_n = 256u / p.hw;
    var i = cur.y + (256u - step_n * p.hw);
    var n = cur.x + step_n;
    if i >= p.hw {
        i -= p.hw;
        n += 1u;
    }
    return vec2<u32>(n, i);
}

fn cursor_index(c: u32, cur: vec2<u32>) -> u32 {
    return (cur.x * p.channels + c) * p.hw + cur.y;
}

// The mean of channel c's elements t in [begin, end) and the sum of their squared deviations from it (two passes
// over x), by the channel's workgroup; every invocation gets them. Every invocation must call it.
fn range_moments(c: u32, lid: u32, begin: u32, end: u32) -> vec2<f32> {
    var s = 0.0;
    var cur = cursor_at(begin + lid);
    for (var t = begin + lid; t < end; t += 256u) {
        s += xv(cursor_index(c, cur));
        cur = cursor_next(cur);
    }
    partial[lid] = s;
    partial2[lid] = 0.0;
    workgroup_sums(lid);
    let mu = partial[0] / f32(end - begin);
    workgroupBarrier();
    var q = 0.0;
    cur = cursor_at(begin + lid);
    for (var t = begin + lid; t < end; t += 256u) {
        let d = xv(cursor_index(c, cur)) - mu;
        q += d * d;
        cur = cursor_next(cur);
    }
    partial[lid] = q;
    workgroup_sums(lid);
    return vec2<f32>(mu, partial[0]);
}

// A channel's batch mean and biased variance by its workgroup; every invocation gets them, and invocation 0 stores
// them with the running update. Every invocation must call it.
fn channel_statistics(c: u32, lid: u32) -> vec2<f32> {
    let m = p.batch * p.hw;
    let moments = range_moments(c, lid, 0u, m);
    let v = moments.y / f32(m);
    if lid == 0u {
        finish_statistics(c, moments.x, v);
    }
    return vec2<f32>(moments.x, v);
}

@compute @workgroup_size(256)
fn batch_norm_statistics(@builtin(workgroup_id) wg: vec3<u32>, lane: Lane) {
    let lid = enter(lane);
    channel_statistics(wg.x, lid);
}

// Training forward in one dispatch: a channel's statistics, then its y, by the channel's workgroup.
@compute @workgroup_size(256)
fn batch_norm_forward_single(@builtin(workgroup_id) wg: vec3<u32>, lane: Lane) {
    let lid = enter(lane);
    let c = wg.x;
    let s = channel_statistics(c, lid);
    let invstd = inverseSqrt(s.y + p.eps);
    for (var cur = cursor_at(lid); cur.x < p.batch; cur = cursor_next(cur)) {
        let k = cursor_index(c, cur);
        out[k] = forward_value(k, c, s.x, invstd);
    }
}

@compute @workgroup_size(256)
fn batch_norm_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let k = (wg.y * nwg.x + wg.x) * 256u + lid;
    if k >= p.batch * p.channels * p.hw {
        return;
    }
    let c = (k / p.hw) % p.channels;
    out[k] = forward_value(k, c, mean[c], inverseSqrt(variance[c] + p.eps));
}

// The sums (sum of dy * xhat, sum of dy) over channel c's elements t in [begin, end), dy masked through the fused
// activation and stored back, by the channel's workgroup; every invocation gets them. Every invocation must call it.
fn range_sums(c: u32, lid: u32, begin: u32, end: u32, mu: f32, invstd: f32) -> vec2<f32> {
    var sg = 0.0;
    var sb = 0.0;
    var cur = cursor_at(begin + lid);
    for (var t = begin + lid; t < end; t += 256u) {
        let k = cursor_index(c, cur);
        let g = dy_masked(k, c, invstd);
        sb += g;
        sg += g * (xv(k) - mu) * invstd;
        cur = cursor_next(cur);
    }
    partial[lid] = sg;
    partial2[lid] = sb;
    workgroup_sums(lid);
    return vec2<f32>(partial[0], partial2[0]);
}

// A channel's (dgamma, dbeta) by its workgroup, stored by invocation 0 and returned to every invocation; the
// masked dy stored back. Every invocation must call it.
fn channel_sums(c: u32, lid: u32, mu: f32, invstd: f32) -> vec2<f32> {
    let sums = range_sums(c, lid, 0u, p.batch * p.hw, mu, invstd);
    if lid == 0u {
        stat_a[c] = sums.x;
        stat_b[c] = sums.y;
    }
    return sums;
}

@compute @workgroup_size(256)
fn batch_norm_backward_reduce(@builtin(workgroup_id) wg: vec3<u32>, lane: Lane) {
    let lid = enter(lane);
    let c = wg.x;
    channel_sums(c, lid, mean[c], inverseSqrt(variance[c] + p.eps));
}

@compute @workgroup_size(256)
fn batch_norm_backward_data(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let k = (wg.y * nwg.x + wg.x) * 256u + lid;
    if k >= p.batch * p.channels * p.hw {
        return;
    }
    let c = (k / p.hw) % p.channels;
    store_dx(k, c, dyv(k), mean[c], inverseSqrt(variance[c] + p.eps), dgamma_in[c], dbeta_in[c]);
}

// Backward in one dispatch: a channel's sums (dgamma, dbeta), masking dy in place, then its dx, by the channel's
// workgroup.
// A channel's whole backward by its workgroup: the sums (masking dy in place), then dx. Every invocation must call
// it.
fn channel_backward(c: u32, lid: u32) {
    let mu = mean[c];
    let invstd = inverseSqrt(variance[c] + p.eps);
    let sums = channel_sums(c, lid, mu, invstd);
    for (var cur = cursor_at(lid); cur.x < p.batch; cur = cursor_next(cur)) {
        let k = cursor_index(c, cur);
        store_dx(k, c, dyv(k), mu, invstd, sums.x, sums.y);
    }
}

@compute @workgroup_size(256)
fn batch_norm_backward_single(@builtin(workgroup_id) wg: vec3<u32>, lane: Lane) {
    let lid = enter(lane);
    channel_backward(wg.x, lid);
}

// The residual's gradient at k: dy (the add passes it through), stored, or added with flags & 32.
fn store_residual_grad(k: u32) {
    if (p.flags & FLAG_ACCUMULATE_RESIDUAL) != 0u {
        residual_grad[k] = act(f32(residual_grad[k]) + dyv(k));
    } else {
        residual_grad[k] = dy[k];
    }
}

// batch_norm_backward_single for a fused residual add, then the residual's gradient over the same elements (10
// storage buffers, where the device allows them; elsewhere a copy of dy after the single or split backward).
@compute @workgroup_size(256)
fn batch_norm_backward_single_residual(@builtin(workgroup_id) wg: vec3<u32>, lane: Lane) {
    let lid = enter(lane);
    let c = wg.x;
    channel_backward(c, lid);
    for (var cur = cursor_at(lid); cur.x < p.batch; cur = cursor_next(cur)) {
        store_residual_grad(cursor_index(c, cur));
    }
}

// Per-channel mean and biased variance, and the running update, written by one invocation.
fn finish_statistics(c: u32, mu: f32, v: f32) {
    let m = p.batch * p.hw;
    stat_a[c] = mu;
    stat_b[c] = v;
    let unbiased = select(v, v * f32(m) / f32(m - 1u), m > 1u);
    running_mean[c] = (1.0 - p.momentum) * running_mean[c] + p.momentum * mu;
    running_var[c] = (1.0 - p.momentum) * running_var[c] + p.momentum * unbiased;
}

// A short channel's batch mean and biased variance (two passes over x) by one invocation, stored with the
// running update.
fn row_statistics(c: u32) -> vec2<f32> {
    var s = 0.0;
    for (var n = 0u; n < p.batch; n++) {
        let base = (n * p.channels + c) * p.hw;
        for (var i = 0u; i < p.hw; i++) {
            s += xv(base + i);
        }
    }
    let mu = s / f32(p.batch * p.hw);
    var q = 0.0;
    for (var n = 0u; n < p.batch; n++) {
        let base = (n * p.channels + c) * p.hw;
        for (var i = 0u; i < p.hw; i++) {
            let d = xv(base + i) - mu;
            q += d * d;
        }
    }
    let v = q / f32(p.batch * p.hw);
    finish_statistics(c, mu, v);
    return vec2<f32>(mu, v);
}

// A short channel's (dgamma, dbeta) by one invocation, the masked dy stored back.
fn row_sums(c: u32, mu: f32, invstd: f32) -> vec2<f32> {
    var sg = 0.0;
    var sb = 0.0;
    for (var n = 0u; n < p.batch; n++) {
        let base = (n * p.channels + c) * p.hw;
        for (var i = 0u; i < p.hw; i++) {
            let g = dy_masked(base + i, c, invstd);
            sb += g;
            sg += g * (xv(base + i) - mu) * invstd;
        }
    }
    stat_a[c] = sg;
    stat_b[c] = sb;
    return vec2<f32>(sg, sb);
}

@compute @workgroup_size(256)
fn batch_norm_statistics_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c < p.channels {
        row_statistics(c);
    }
}

@compute @workgroup_size(256)
fn batch_norm_backward_reduce_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c < p.channels {
        row_sums(c, mean[c], inverseSqrt(variance[c] + p.eps));
    }
}

// The single-dispatch forward and backward for short channels: an invocation per channel, plain loops.
@compute @workgroup_size(256)
fn batch_norm_forward_single_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c >= p.channels {
        return;
    }
    let s = row_statistics(c);
    let invstd = inverseSqrt(s.y + p.eps);
    for (var n = 0u; n < p.batch; n++) {
        let base = (n * p.channels + c) * p.hw;
        for (var i = 0u; i < p.hw; i++) {
            out[base + i] = forward_value(base + i, c, s.x, invstd);
        }
    }
}

// A short channel's whole backward by one invocation: the sums (masking dy in place), then dx.
fn row_backward(c: u32) {
    let mu = mean[c];
    let invstd = inverseSqrt(variance[c] + p.eps);
    let sums = row_sums(c, mu, invstd);
    for (var n = 0u; n < p.batch; n++) {
        let base = (n * p.channels + c) * p.hw;
        for (var i = 0u; i < p.hw; i++) {
            store_dx(base + i, c, dyv(base + i), mu, invstd, sums.x, sums.y);
        }
    }
}

@compute @workgroup_size(256)
fn batch_norm_backward_single_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x < p.channels {
        row_backward(gid.x);
    }
}

@compute @workgroup_size(256)
fn batch_norm_backward_single_residual_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c >= p.channels {
        return;
    }
    row_backward(c);
    for (var n = 0u; n < p.batch; n++) {
        let base = (n * p.channels + c) * p.hw;
        for (var i = 0u; i < p.hw; i++) {
            store_residual_grad(base + i);
        }
    }
}

// Chunked (see the header): chunk j of a channel is its elements t = n * HW + i in [j * L, min(M, (j + 1) * L)).
fn chunk_count() -> u32 {
    return (p.batch * p.hw + p.chunk_len - 1u) / p.chunk_len;
}

fn chunk_end(j: u32) -> u32 {
    return min(p.batch * p.hw, (j + 1u) * p.chunk_len);
}

// The chunk of workgroup wg: channel c = wg.x, chunk j = wg.y, its elements [begin, end). The grid is exactly
// (C, chunks); the indices are clamped for loading and the store guarded (`owns`) all the same, and no invocation
// leaves early: every one reaches every barrier (a return before a barrier, even a workgroup-uniform one, broke
// the barriers on NVIDIA's Vulkan driver: sums missed values).
struct Chunk {
    c: u32,
    j: u32,
    begin: u32,
    end: u32,
    owns: bool,
}

fn chunk_of(wg: vec3<u32>) -> Chunk {
    let j = min(wg.y, chunk_count() - 1u);
    let owns = wg.x < p.channels && wg.y < chunk_count();
    return Chunk(min(wg.x, p.channels - 1u), j, j * p.chunk_len, chunk_end(j), owns);
}

// A chunk's two partial values into partials (C, chunks, 2), by invocation 0.
fn store_chunk(ch: Chunk, lid: u32, v: vec2<f32>) {
    if lid == 0u && ch.owns {
        let at = (ch.c * chunk_count() + ch.j) * 2u;
        partials[at] = v.x;
        partials[at + 1u] = v.y;
    }
}

@compute @workgroup_size(256)
fn batch_norm_statistics_chunks(@builtin(workgroup_id) wg: vec3<u32>, lane: Lane) {
    let lid = enter(lane);
    let ch = chunk_of(wg);
    store_chunk(ch, lid, range_moments(ch.c, lid, ch.begin, ch.end));
}

@compute @workgroup_size(256)
fn batch_norm_statistics_combine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c >= p.channels {
        return;
    }
    let chunks = chunk_count();
    var n = 0.0;
    var mu = 0.0;
    var m2 = 0.0;
    for (var j = 0u; j < chunks; j++) {
        let at = (c * chunks + j) * 2u;
        let nb = f32(chunk_end(j) - j * p.chunk_len);
        let total = n + nb;
        let d = partials[at] - mu;
        mu += d * (nb / total);
        m2 += partials[at + 1u] + d * d * (n * nb / total);
        n = total;
    }
    finish_statistics(c, mu, m2 / n);
}

@compute @workgroup_size(256)
fn batch_norm_backward_reduce_chunks(@builtin(workgroup_id) wg: vec3<u32>, lane: Lane) {
    let lid = enter(lane);
    let ch = chunk_of(wg);
    let invstd = inverseSqrt(variance[ch.c] + p.eps);
    store_chunk(ch, lid, range_sums(ch.c, lid, ch.begin, ch.end, mean[ch.c], invstd));
}

@compute @workgroup_size(256)
fn batch_norm_backward_combine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c >= p.channels {
        return;
    }
    let chunks = chunk_count();
    var sg = 0.0;
    var sb = 0.0;
    for (var j = 0u; j < chunks; j++) {
        let at = (c * chunks + j) * 2u;
        sg += partials[at];
        sb += partials[at + 1u];
    }
    stat_a[c] = sg;
    stat_b[c] = sb;
}
