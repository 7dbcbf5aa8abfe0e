// accumulate.wgsl — gradient accumulation (fastai's GradientAccumulation): the gradients of K micro-batches
// summed into one optimizer step, each scaled by `scale` (1 / K, so the step sees the mean over the whole batch, as
// one batch of K times the size would give). In place, one invocation per parameter element:
//   mode 0 (the cycle's first micro-batch):  sum  = grad * scale
//   mode 1 (a middle one):                   sum += grad * scale
//   mode 2 (the last one):                   grad = sum + grad * scale   (the optimizer then reads grad)
// `mode` and `scale` live in the uniform, rewritten every step: one pipeline serves the whole cycle.
//
// Layout: grad and sum are flat (len) arrays. Dispatch: 256 per workgroup on a 2-D grid, as elementwise.wgsl.

struct AccumulateParams {
    len: u32,
    mode: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: AccumulateParams;
@group(0) @binding(1) var<storage, read_write> grad: array<f32>;  // (len)
@group(0) @binding(2) var<storage, read_write> sum: array<f32>;   // (len)

@compute @workgroup_size(256)
fn accumulate_gradients(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wg.y * nwg.x + wg.x) * 256u + lid.x;
    if i >= p.len {
        return;
    }
    let g = grad[i] * p.scale;
    switch p.mode {
        case 0u: {
            sum[i] = g;
        }
        case 1u: {
            sum[i] = sum[i] + g;
        }
        default: {
            grad[i] = sum[i] + g;
        }
    }
}
