// dropout.wgsl — inverted dropout with a counter-based random mask, forward and backward; drop path (stochastic
// depth) is the same kernel with one draw per sample.
//
//   keep(i)          = hash(seed, step, i / per) >= threshold   threshold = round(p * 2^32), p the drop probability;
//                                                               per = 1 (dropout) or a sample's elements (drop path)
//   dropout_forward  out[i] = x[i] * keep(i) * scale             scale = 1 / (1 - p)
//   dropout_backward dx[i] (+)= dy[i] * keep(i) * scale          (flags & 1 accumulates)
// The mask depends only on (seed, step, i): backward regenerates exactly the forward mask, nothing is stored, and a
// run is reproducible. The hash is PCG's output permutation applied three times (seed, then step, then element);
// src/reference.rs computes the same bits on the CPU.
// Layout: flat (len) arrays. Dispatch: 256 per workgroup on a 2-D grid (x, y), as elementwise.wgsl.
// Storage: `act` is f32 here and f16 in the f16 variant (src/gpu/kernels.rs, Precision::F16); values are widened to
// f32 where they are computed with or added to, and each stored element is rounded once.

struct DropoutParams {
    len: u32,
    seed: u32,
    step: u32,
    threshold: u32,
    scale: f32,
    flags: u32,
    per: u32,
    _pad0: u32,
}

const FLAG_ACCUMULATE: u32 = 1u;

@group(0) @binding(0) var<uniform> p: DropoutParams;
alias act = f32;

@group(0) @binding(1) var<storage, read> src: array<act>;        // x or dy (len)
@group(0) @binding(2) var<storage, read_write> dst: array<act>;  // out or dx (len)

fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn apply(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * 256u + lid;
    if i >= p.len {
        return;
    }
    let key = pcg(p.step ^ pcg(p.seed));
    let keep = pcg((i / p.per) ^ key) >= p.threshold;
    let v = select(0.0, f32(src[i]) * p.scale, keep);
    if (p.flags & FLAG_ACCUMULATE) != 0u {
        dst[i] = act(f32(dst[i]) + v);
    } else {
        dst[i] = act(v);
    }
}

@compute @workgroup_size(256)
fn dropout_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    apply(wg, nwg, lid);
}

@compute @workgroup_size(256)
fn dropout_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    apply(wg, nwg, lid);
}
