// scaler.wgsl — dynamic loss scaling for f16 training (PyTorch's GradScaler, fastai's MixedPrecision), on the GPU.
//
// The scaler's state is four u32 words: [0] the scale (f32 bits), [1] clean steps since it last changed, [2] steps
// skipped so far, [3] the found-non-finite flag of the current optimizer step. Per training step the loss's
// backward multiplies the logits' gradient by the scale before storing it (loss.wgsl, *_backward_scaled), so every
// activation gradient upstream is scaled (small ones stay above f16's subnormal range); then:
//   unscale_check  g[i] = g[i] / scale; a non-finite    each trainable bucket's f32 weight gradients, after the
//                  g[i] (checked on the bits: WGSL may   backward pass; the optimizer skips its update while the
//                  assume floats are finite) sets [3]    flag is set
//   update_scale   flag set: scale / 2, clean = 0,      one invocation, after the optimizer: the scale backs off
//                  skipped + 1; else clean + 1, and      on an overflow and grows after `interval` clean steps
//                  after `interval` clean steps scale * 2
//                  and clean = 0; the flag is cleared
// Layout: flat (len) arrays. Dispatch: unscale_check 256 per workgroup on a 2-D grid (x, y), as
// elementwise.wgsl; update_scale (1, 1, 1).

struct ScalerParams {
    len: u32,
    interval: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: ScalerParams;
@group(0) @binding(2) var<storage, read_write> grads: array<f32>;      // unscale_check: (len)
@group(0) @binding(3) var<storage, read_write> state: array<atomic<u32>, 4>;

const SCALE: u32 = 0u;
const CLEAN: u32 = 1u;
const SKIPPED: u32 = 2u;
const FOUND: u32 = 3u;

fn scale() -> f32 {
    return bitcast<f32>(atomicLoad(&state[SCALE]));
}

@compute @workgroup_size(256)
fn unscale_check(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * 256u + lid;
    if i < p.len {
        let g = grads[i];
        // Exponent all ones: inf or NaN.
        if (bitcast<u32>(g) & 0x7f800000u) == 0x7f800000u {
            atomicMax(&state[FOUND], 1u);
        }
        grads[i] = g * (1.0 / scale());
    }
}

@compute @workgroup_size(1)
fn update_scale() {
    var s = scale();
    var clean = atomicLoad(&state[CLEAN]);
    if atomicLoad(&state[FOUND]) != 0u {
        s = s * 0.5;
        clean = 0u;
        atomicAdd(&state[SKIPPED], 1u);
    } else {
        clean = clean + 1u;
        if clean >= p.interval {
            s = s * 2.0;
            clean = 0u;
        }
    }
    atomicStore(&state[SCALE], bitcast<u32>(s));
    atomicStore(&state[CLEAN], clean);
    atomicStore(&state[FOUND], 0u);
}
