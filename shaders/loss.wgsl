// loss.wgsl — the classification losses and their counts: softmax cross-entropy (one label per row, optional label
// smoothing) and sigmoid binary cross-entropy with logits (several labels per row), both on mixed targets.
//
// Targets. Row r holds two label sets and a weight: its own labels a, its MixUp/CutMix partner's labels b, and lam
// (f32 bits). A label set is one class index (softmax) or a bitmask of `words` u32 (sigmoid; bit c of word c / 32 is
// class c). Without mixing b = a and lam = 1. Every loss is linear in its target, so the mixed loss
// lam * L(x, a) + (1 - lam) * L(x, b) (fastai's MixUp/CutMix loss) is L against the target t = lam * a + (1 - lam) * b.
//
// Softmax cross-entropy, p = softmax(x), q = (1 - eps) * t + eps / C:
//   loss_row = -sum_c q_c log p_c = (1 - eps) * (lse - sum_c t_c x_c) + eps * (lse - mean_c x_c),  lse = logsumexp(x)
//   loss     = mean over rows                                   (softmax_cross_entropy_forward, one scalar)
//   dlogits  = scale * (p - q) / batch                          (softmax_cross_entropy_backward; scale = dL/dloss)
//              scale * S * (p - q) / batch                      (..._scaled: S the dynamic loss scale, f16 training)
//   correct  = rows whose argmax (first maximum) is label a     (correct_count, one scalar)
//   probs    = softmax(x), row by row                           (softmax_forward, inference)
// Sigmoid binary cross-entropy with logits, s = sigmoid(x), over every (row, class):
//   loss_e   = max(x, 0) - x * t + log(1 + exp(-|x|))          (PyTorch's stable form)
//   loss     = mean over batch * C elements                     (sigmoid_bce_forward)
//   dlogits  = scale * (s - t) / (batch * C)                    (sigmoid_bce_backward; ..._scaled: times S)
//   correct  = elements with (s > threshold) == a_c             (multi_label_correct: fastai's accuracy_multi * N * C)
//   probs    = s                                                (sigmoid_forward)
// The _scaled backwards read S from the loss scaler's state (scaler.wgsl) and multiply before the store, as
// PyTorch's GradScaler scales the loss before backward: in f16 a gradient below 2^-14 (p / batch of a class the
// model already rules out) would otherwise be stored as a subnormal, with its precision, or flushed to zero on a
// device that flushes f16 subnormals, before any scale could save it.
// Class indices >= C are a caller error (checked on the CPU); here they are clamped so nothing reads out of bounds.
//
// Layout: logits (batch, C) row-major; targets (batch, 2 * words + 1) u32.
// Storage types: logits are `act` and out is `res`. With f16 logits the losses, counts and probabilities are
// written in f32 (res = f32) and the logit gradients in f16 (res = f16); everything is computed in f32.
// Dispatch: the forwards and counts: ONE workgroup of 256 (rows strided over invocations, then a tree reduction, so
// the sum order is fixed); backwards and probabilities: one invocation per row, (ceil(batch / 64), 1, 1).

struct LossParams {
    batch: u32,
    classes: u32,
    smoothing: f32,
    scale: f32,
    words: u32,
    threshold: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: LossParams;
alias act = f32;
alias res = f32;

@group(0) @binding(1) var<storage, read> logits: array<act>;     // (batch, C)
@group(0) @binding(2) var<storage, read> targets: array<u32>;    // (batch, 2 * words + 1)
@group(0) @binding(3) var<storage, read_write> out: array<res>;  // forward/count: (1); backward/probs: (batch, C)
@group(0) @binding(4) var<storage, read> scaler: array<u32>;     // *_backward_scaled: the loss scaler's state (4)

// The dynamic loss scale (word 0 of scaler.wgsl's state, f32 bits).
fn loss_scale() -> f32 {
    return bitcast<f32>(scaler[0]);
}

var<workgroup> partial: array<f32, 256>;

fn row_max(base: u32) -> f32 {
    var m = f32(logits[base]);
    for (var c = 1u; c < p.classes; c++) {
        m = max(m, f32(logits[base + c]));
    }
    return m;
}

// sum_c exp(logits[base + c] - m): the softmax denominator, shifted by the row maximum m for stability.
fn row_sum_exp(base: u32, m: f32) -> f32 {
    var s = 0.0;
    for (var c = 0u; c < p.classes; c++) {
        s += exp(f32(logits[base + c]) - m);
    }
    return s;
}

fn target_base(row: u32) -> u32 {
    return row * (2u * p.words + 1u);
}

// The softmax loss's own label (set 0) or partner label (set 1) of a row.
fn class_of(row: u32, which: u32) -> u32 {
    return min(targets[target_base(row) + which * p.words], p.classes - 1u);
}

fn lam_of(row: u32) -> f32 {
    return bitcast<f32>(targets[target_base(row) + 2u * p.words]);
}

// Bit c of a row's label set (sigmoid loss), as 0 or 1.
fn bit_of(row: u32, which: u32, c: u32) -> f32 {
    let word = targets[target_base(row) + which * p.words + c / 32u];
    return f32((word >> (c % 32u)) & 1u);
}

// The sigmoid loss's mixed target of (row, c).
fn multi_target(row: u32, c: u32, lam: f32) -> f32 {
    return lam * bit_of(row, 0u, c) + (1.0 - lam) * bit_of(row, 1u, c);
}

fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
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
            let v = f32(logits[base + c]);
            sum_exp += exp(v - m);
            sum_x += v;
        }
        let lse = m + log(sum_exp);
        let lam = lam_of(row);
        let own = f32(logits[base + class_of(row, 0u)]);
        let partner = f32(logits[base + class_of(row, 1u)]);
        let nll = lse - (lam * own + (1.0 - lam) * partner);
        let uniform_nll = lse - sum_x / f32(p.classes);
        acc += (1.0 - p.smoothing) * nll + p.smoothing * uniform_nll;
    }
    partial[lid] = acc;
    workgroup_sum(lid);
    if lid == 0u {
        out[0] = res(partial[0] / f32(p.batch));
    }
}

fn softmax_cross_entropy_backward_row(row: u32, k: f32) {
    if row >= p.batch {
        return;
    }
    let base = row * p.classes;
    let m = row_max(base);
    let sum_exp = row_sum_exp(base, m);
    let a = class_of(row, 0u);
    let b = class_of(row, 1u);
    let lam = lam_of(row);
    let off_target = p.smoothing / f32(p.classes);
    for (var c = 0u; c < p.classes; c++) {
        let prob = exp(f32(logits[base + c]) - m) / sum_exp;
        let t = select(0.0, lam, c == a) + select(0.0, 1.0 - lam, c == b);
        out[base + c] = res(k * (prob - ((1.0 - p.smoothing) * t + off_target)));
    }
}

@compute @workgroup_size(64)
fn softmax_cross_entropy_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    softmax_cross_entropy_backward_row(gid.x, p.scale / f32(p.batch));
}

@compute @workgroup_size(64)
fn softmax_cross_entropy_backward_scaled(@builtin(global_invocation_id) gid: vec3<u32>) {
    softmax_cross_entropy_backward_row(gid.x, p.scale * loss_scale() / f32(p.batch));
}

@compute @workgroup_size(256)
fn correct_count(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var row = lid; row < p.batch; row += 256u) {
        let base = row * p.classes;
        var best = 0u;
        var best_v = f32(logits[base]);
        for (var c = 1u; c < p.classes; c++) {
            let v = f32(logits[base + c]);
            if v > best_v {
                best_v = v;
                best = c;
            }
        }
        acc += select(0.0, 1.0, best == targets[target_base(row)]);
    }
    partial[lid] = acc;
    workgroup_sum(lid);
    if lid == 0u {
        out[0] = res(partial[0]);
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
        out[base + c] = res(exp(f32(logits[base + c]) - m) / sum_exp);
    }
}

@compute @workgroup_size(256)
fn sigmoid_bce_forward(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var row = lid; row < p.batch; row += 256u) {
        let base = row * p.classes;
        let lam = lam_of(row);
        for (var c = 0u; c < p.classes; c++) {
            let x = f32(logits[base + c]);
            acc += max(x, 0.0) - x * multi_target(row, c, lam) + log(1.0 + exp(-abs(x)));
        }
    }
    partial[lid] = acc;
    workgroup_sum(lid);
    if lid == 0u {
        out[0] = res(partial[0] / (f32(p.batch) * f32(p.classes)));
    }
}

fn sigmoid_bce_backward_row(row: u32, k: f32) {
    if row >= p.batch {
        return;
    }
    let base = row * p.classes;
    let lam = lam_of(row);
    for (var c = 0u; c < p.classes; c++) {
        out[base + c] = res(k * (sigmoid(f32(logits[base + c])) - multi_target(row, c, lam)));
    }
}

@compute @workgroup_size(64)
fn sigmoid_bce_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    sigmoid_bce_backward_row(gid.x, p.scale / (f32(p.batch) * f32(p.classes)));
}

@compute @workgroup_size(64)
fn sigmoid_bce_backward_scaled(@builtin(global_invocation_id) gid: vec3<u32>) {
    sigmoid_bce_backward_row(gid.x, p.scale * loss_scale() / (f32(p.batch) * f32(p.classes)));
}

@compute @workgroup_size(256)
fn multi_label_correct(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var row = lid; row < p.batch; row += 256u) {
        let base = row * p.classes;
        for (var c = 0u; c < p.classes; c++) {
            let predicted = sigmoid(f32(logits[base + c])) > p.threshold;
            acc += select(0.0, 1.0, predicted == (bit_of(row, 0u, c) > 0.5));
        }
    }
    partial[lid] = acc;
    workgroup_sum(lid);
    if lid == 0u {
        out[0] = res(partial[0]);
    }
}

@compute @workgroup_size(64)
fn sigmoid_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if row >= p.batch {
        return;
    }
    let base = row * p.classes;
    for (var c = 0u; c < p.classes; c++) {
        out[base + c] = res(sigmoid(f32(logits[base + c])));
    }
}
