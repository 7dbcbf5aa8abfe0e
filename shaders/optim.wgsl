// optim.wgsl — optimizer updates, in place, one invocation per parameter element.
//
// sgd_step (fastai's SGD):
//   weight decay: decoupled p *= 1 - lr * wd   (flags & 1), or L2 g += wd * p  (otherwise)
//   momentum:     buf = mom * buf + g             (no dampening; buf starts at zero)
//   update:       p -= lr * buf
// adam_step (fastai's Adam; debias1 = 1 - mom^t and debias2 = 1 - sqr_mom^t, t the updates applied so far plus
// this one: computed on the CPU for the step count it knows, recomputed here where skipped steps make t smaller):
//   weight decay as above
//   grad_avg = mom * grad_avg + (1 - mom) * g
//   sqr_avg  = sqr_mom * sqr_avg + (1 - sqr_mom) * g^2
//   p -= lr / debias1 * grad_avg / (sqrt(sqr_avg / debias2) + eps)
// Both skip the whole update while the loss scaler's found-non-finite flag is set (word 3 of `scaler`, see
// scaler.wgsl): a step whose f16 gradients overflowed leaves weights and state as they were. Without f16 the flag
// stays clear. A skipped step does not count for Adam's debiasing either (PyTorch's GradScaler does not call the
// optimizer's step then): `counts` holds two words per bucket, the updates applied so far, read from word
// (step & 1) and written, one more unless skipped, to the other word by invocation 0 (no invocation reads the word
// being written), `step` being the CPU's count of this bucket's steps, skipped ones included.
// Hyper-parameters live in the uniform, rewritten every step, so schedules never rebuild a pipeline.
//
// Layout: every tensor is a flat (len) array. Dispatch: 256 per workgroup on a 2-D grid, as elementwise.wgsl.

// One parameter struct for both kernels; sgd_step reads lr, mom (its momentum) and wd.
struct OptimParams {
    len: u32,
    flags: u32,
    lr: f32,
    mom: f32,
    sqr_mom: f32,
    eps: f32,
    wd: f32,
    debias1: f32,
    debias2: f32,
    bucket: u32,     // adam_step: this bucket's pair of words in `counts`
    step: u32,       // adam_step: the CPU's 1-based step count of the bucket, the t of debias1 and debias2
    _pad0: u32,
}

const FLAG_DECOUPLED_WD: u32 = 1u;

@group(0) @binding(0) var<uniform> p: OptimParams;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;     // (len)
@group(0) @binding(2) var<storage, read> grad: array<f32>;            // (len)
@group(0) @binding(3) var<storage, read_write> grad_avg: array<f32>;  // (len): momentum buffer / first moment
@group(0) @binding(4) var<storage, read_write> sqr_avg: array<f32>;   // (len): second moment (Adam only)
@group(0) @binding(5) var<storage, read> scaler: array<u32, 4>;       // the loss scaler's state
@group(0) @binding(6) var<storage, read_write> counts: array<u32>;    // (2 * buckets): Adam's applied updates

fn index(wg: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wg.y * nwg.x + wg.x) * 256u + lid.x;
}

// (weight, gradient) of element i after weight decay: decoupled shrinks the weight, L2 adds to the gradient.
fn decayed(i: u32) -> vec2<f32> {
    let w = param[i];
    if (p.flags & FLAG_DECOUPLED_WD) != 0u {
        return vec2<f32>(w * (1.0 - p.lr * p.wd), grad[i]);
    }
    return vec2<f32>(w, grad[i] + p.wd * w);
}

// 1 - beta^t (1 for beta 0: pow is undefined there).
fn debias(beta: f32, t: u32) -> f32 {
    return select(1.0 - pow(beta, f32(t)), 1.0, beta <= 0.0);
}

@compute @workgroup_size(256)
fn sgd_step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wg, nwg, lid);
    if i >= p.len || scaler[3] != 0u {
        return;
    }
    let decay = decayed(i);
    let w = decay.x;
    let g = decay.y;
    let buf = p.mom * grad_avg[i] + g;
    grad_avg[i] = buf;
    param[i] = w - p.lr * buf;
}

@compute @workgroup_size(256)
fn adam_step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wg, nwg, lid);
    let skip = scaler[3] != 0u;
    let slot = 2u * p.bucket + (p.step & 1u);
    let applied = counts[slot];
    if i == 0u {
        counts[slot ^ 1u] = applied + select(1u, 0u, skip);
    }
    if i >= p.len || skip {
        return;
    }
    var debias1 = p.debias1;
    var debias2 = p.debias2;
    let t = applied + 1u;
    if t != p.step {
        debias1 = debias(p.mom, t);
        debias2 = debias(p.sqr_mom, t);
    }
    let decay = decayed(i);
    let w = decay.x;
    let g = decay.y;
    let m = p.mom * grad_avg[i] + (1.0 - p.mom) * g;
    let v = p.sqr_mom * sqr_avg[i] + (1.0 - p.sqr_mom) * g * g;
    grad_avg[i] = m;
    sqr_avg[i] = v;
    param[i] = w - p.lr / debias1 * m / (sqrt(v / debias2) + p.eps);
}
