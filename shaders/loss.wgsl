// loss.wgsl — softmax cross-entropy with optional label smoothing, and the accuracy count.
//
// With target distribution q = (1 - eps) * onehot(label) + eps / C and p = softmax(logits):
//   loss_row = -sum_c q_c log p_c = (1 - eps) * (lse - x_label) + eps * (lse - mean_c x_c),  lse = logsumexp(x)
//   loss     = mean over rows                          (softmax_cross_entropy_forward, one scalar)
//   dlogits  = scale * (p - q) / batch                 (softmax_cross_entropy_backward; scale = dL/dloss)
//   correct  = number of rows whose argmax (first maximum) equals the label   (correct_count, one scalar)
//   probs    = softmax(logits), row by row                                   (softmax_forward, inference)
// Labels >= C are a caller error (checked on the CPU); here they are clamped so nothing reads out of bounds.
//
// Layout: logits (batch, C) row-major, labels (batch) u32.
// Dispatch: forward and correct_count: ONE workgroup of 256 (rows strided over invocations, then a tree
// reduction, so the sum order is fixed); backward and softmax_forward: one invocation per row,
// (ceil(batch / 64), 1, 1).

struct LossParams {
    batch: u32,
    classes: u32,
    smoothing: f32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: LossParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;     // (batch, C)
@group(0) @binding(2) var<storage, read> labels: array<u32>;     // (batch)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // forward/count: (1); backward: (batch, C)

var<workgroup> partial: array<f32, 256>;

fn row_max(base: u32) -> f32 {
    var m = logits[base];
    for (var c = 1u; c < p.classes; c++) {
        m = max(m, logits[base + c]);
    }
    return m;
}

// sum_c exp(logits[base + c] - m): the softmax denominator, shifted by the row maximum m for stability.
fn row_sum_exp(base: u32, m: f32) -> f32 {
    var s = 0.0;
    for (var c = 0u; c < p.classes; c++) {
        s += exp(logits[base + c] - m);
    }
    return s;
}

fn label_of(row: u32) -> u32 {
    return min(labels[row], p.classes - 1u);
}

// Sum `partial` over the workgroup into partial[0]. Every invocation must call it.
fn workgroup_sum(lid: u32) {
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn softmax_cross_entropy_forward(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var row = lid; row < p.batch; row += 256u) {
        let base = row * p.classes;
        let m = row_max(base);
        var sum_exp = 0.0;
        var sum_x = 0.0;
        for (var c = 0u; c < p.classes; c++) {
            let v = logits[base + c];
            sum_exp += exp(v - m);
            sum_x += v;
        }
        let lse = m + log(sum_exp);
        let nll = lse - logits[base + label_of(row)];
        let uniform_nll = lse - sum_x / f32(p.classes);
        acc += (1.0 - p.smoothing) * nll + p.smoothing * uniform_nll;
    }
    partial[lid] = acc;
    workgroup_sum(lid);
    if lid == 0u {
        out[0] = partial[0] / f32(p.batch);
    }
}

@compute @workgroup_size(64)
fn softmax_cross_entropy_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if row >= p.batch {
        return;
    }
    let base = row * p.classes;
    let m = row_max(base);
    let sum_exp = row_sum_exp(base, m);
    let label = label_of(row);
    let k = p.scale / f32(p.batch);
    let off_target = p.smoothing / f32(p.classes);
    for (var c = 0u; c < p.classes; c++) {
        let prob = exp(logits[base + c] - m) / sum_exp;
        let wanted = select(off_target, 1.0 - p.smoothing + off_target, c == label);
        out[base + c] = k * (prob - wanted);
    }
}

@compute @workgroup_size(256)
fn correct_count(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var row = lid; row < p.batch; row += 256u) {
        let base = row * p.classes;
        var best = 0u;
        var best_v = logits[base];
        for (var c = 1u; c < p.classes; c++) {
            let v = logits[base + c];
            if v > best_v {
                best_v = v;
                best = c;
            }
        }
        acc += select(0.0, 1.0, best == labels[row]);
    }
    partial[lid] = acc;
    workgroup_sum(lid);
    if lid == 0u {
        out[0] = partial[0];
    }
}

@compute @workgroup_size(64)
fn softmax_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if row >= p.batch {
        return;
    }
    let base = row * p.classes;
    let m = row_max(base);
    let sum_exp = row_sum_exp(base, m);
    for (var c = 0u; c < p.classes; c++) {
        out[base + c] = exp(logits[base + c] - m) / sum_exp;
    }
}
