// cast.wgsl — f32 parameters into the activations' storage type: dst[i] = act(src[i]).
//
// With f16 activations (issue 14) the GEMMs read an f16 copy of each weight: the master weights stay f32 (the
// optimizer updates them), and once per step, before the forward pass, every parameter bucket is cast into its
// f16 copy (round to nearest; beyond f16's range an element becomes ±inf, far outside any trained weight). The f32
// variant is a plain copy.
//
// Dispatch: one invocation per element, 256 per workgroup, on a 2-D grid (x, y) with x <= 65535.

struct CastParams {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

alias act = f32;

@group(0) @binding(0) var<uniform> p: CastParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;        // (len)
@group(0) @binding(2) var<storage, read_write> dst: array<act>;  // (len)

@compute @workgroup_size(256)
fn cast_to_act(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * 256u + lid;
    if i < p.len {
        dst[i] = act(src[i]);
    }
}
