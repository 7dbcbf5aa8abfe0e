// conv2d.wgsl — dense and grouped 2-D convolution, NCHW, forward and both backward passes, as implicit GEMM.
//
// Shapes: x (N, Cin, H, W), w (Cout, Cin/groups, KH, KW), y (N, Cout, OH, OW), with
//   OH = (H + pad_top + pad_bottom - dilation_h * (KH - 1) - 1) / stride_h + 1   (the host computes OH and OW; only
//   the top/left padding is needed here, so asymmetric TensorFlow "SAME" padding is just pad_bottom != pad_top).
//   y[n, co, oh, ow] = bias[co] + sum_{ci, kh, kw} w[co, ci, kh, kw] * x[n, g*Cin_g + ci, oh*s - pt + kh*d, ow*s - pl + kw*d]
// with co in group g and out-of-bounds x reading as 0.
//
// Each pass is one GEMM whose operands are gathered on the fly from the NCHW tensors (no im2col buffer):
//   pass             rows (M)          columns (N)          reduction (K)        gemm_a   gemm_b
//   forward          Cout_g            N * OH * OW          Cin_g * KH * KW      w        x
//   backward_data    Cin_g             N * H * W            Cout_g * KH * KW     w        dy
//   backward_weight  Cout_g            Cin_g * KH * KW      N * OH * OW          dy       x
// The register blocking is matmul.wgsl's: an invocation owns a 16 x 8 block, the 16 rows are shared by the 64
// invocations of a workgroup (gemm_a is read with workgroup-uniform addresses) and invocation i owns columns
// 512 * wg.x + i + 64 * j, j = 0..7. The reduction loops over (kh, kw) outside and channels inside, so the bounds
// test of a gathered x / dy element is computed once per (kh, kw) and column, not once per channel.
//
// flags & 1: add bias (forward). flags & 2: accumulate into the output instead of overwriting.
// backward_weight may split its reduction (split-K): the reduction runs over rows (n, oh), N * OH of them, each of OW
// columns; workgroup z = g * splits + s sums rows [s * split_len, (s+1) * split_len) into its own (Cout, Cin_g, KH,
// KW) slice of the output, which then holds (splits, Cout, Cin_g, KH, KW) partial sums that the host reduces in a
// fixed order (deterministic); with one split it writes dw directly.
//
// Storage types: gemm_a is `lhs`, gemm_b `act`, the output `res`: f32 throughout; with f16 activations, the f32
// master weight as gemm_a and gemm_b and the output f16 (forward and backward_data: weights are never rounded to
// f16), or both operands f16 and the output f32 (backward_weight). Sums are f32 inside and rounded once when
// stored; the bias is an f32 parameter in every variant.
//
// conv2d_forward_staged (below) is the forward pass on matmul.wgsl's staged 128 x 128 tile instead, for GPUs: the
// autotuner picks between the two per layer.
//
// Dispatch (x, y, z): forward (ceil(N*OH*OW / 512), ceil(Cout_g / 16), groups); backward_data
// (ceil(N * ceil(H / stride_h) * ceil(W / stride_w) / 512), ceil(Cin_g / 16), groups * stride_h * stride_w: the
// largest stride phase's pixels, see the kernel); backward_weight (ceil(Cin_g*KH*KW / (8 * WG)), ceil(Cout_g / 16),
// groups * splits).

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
const TM: u32 = 16u; // rows per workgroup (and per invocation)
const TN: u32 = 8u;  // columns per invocation
// Invocations per workgroup: 64; 8 for the narrow variant of backward_weight (a workgroup then covers 64
// columns instead of 512, for weight gradients with few columns, such as a 1x1 conv's Cin).
override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: ConvParams;
alias act = f32;
alias lhs = f32;
alias res = f32;

@group(0) @binding(1) var<storage, read> gemm_a: array<lhs>;     // forward, backward_data: w; backward_weight: dy
@group(0) @binding(2) var<storage, read> gemm_b: array<act>;     // forward, backward_weight: x; backward_data: dy
@group(0) @binding(3) var<storage, read> bias: array<f32>;       // (Cout), forward only
@group(0) @binding(4) var<storage, read_write> out: array<res>;  // y, dx, or dw (see the header)

fn a_at(i: u32) -> f32 {
    return f32(gemm_a[i]);
}

// The 16 x 8 register block of one invocation, as in matmul.wgsl: row r holds columns 0-3 in r<r>_0 and 4-7 in
// r<r>_1, only ever accessed by name so that it stays in registers.
struct Block {
    r0_0: vec4<f32>,
    r0_1: vec4<f32>,
    r1_0: vec4<f32>,
    r1_1: vec4<f32>,
    r2_0: vec4<f32>,
    r2_1: vec4<f32>,
    r3_0: vec4<f32>,
    r3_1: vec4<f32>,
    r4_0: vec4<f32>,
    r4_1: vec4<f32>,
    r5_0: vec4<f32>,
    r5_1: vec4<f32>,
    r6_0: vec4<f32>,
    r6_1: vec4<f32>,
    r7_0: vec4<f32>,
    r7_1: vec4<f32>,
    r8_0: vec4<f32>,
    r8_1: vec4<f32>,
    r9_0: vec4<f32>,
    r9_1: vec4<f32>,
    r10_0: vec4<f32>,
    r10_1: vec4<f32>,
    r11_0: vec4<f32>,
    r11_1: vec4<f32>,
    r12_0: vec4<f32>,
    r12_1: vec4<f32>,
    r13_0: vec4<f32>,
    r13_1: vec4<f32>,
    r14_0: vec4<f32>,
    r14_1: vec4<f32>,
    r15_0: vec4<f32>,
    r15_1: vec4<f32>,
}

// acc += a ⊗ (b0, b1)
fn rank1_update(acc: ptr<function, Block>, a: array<f32, 16>, b0: vec4<f32>, b1: vec4<f32>) {
    (*acc).r0_0 = fma(vec4<f32>(a[0]), b0, (*acc).r0_0);
    (*acc).r0_1 = fma(vec4<f32>(a[0]), b1, (*acc).r0_1);
    (*acc).r1_0 = fma(vec4<f32>(a[1]), b0, (*acc).r1_0);
    (*acc).r1_1 = fma(vec4<f32>(a[1]), b1, (*acc).r1_1);
    (*acc).r2_0 = fma(vec4<f32>(a[2]), b0, (*acc).r2_0);
    (*acc).r2_1 = fma(vec4<f32>(a[2]), b1, (*acc).r2_1);
    (*acc).r3_0 = fma(vec4<f32>(a[3]), b0, (*acc).r3_0);
    (*acc).r3_1 = fma(vec4<f32>(a[3]), b1, (*acc).r3_1);
    (*acc).r4_0 = fma(vec4<f32>(a[4]), b0, (*acc).r4_0);
    (*acc).r4_1 = fma(vec4<f32>(a[4]), b1, (*acc).r4_1);
    (*acc).r5_0 = fma(vec4<f32>(a[5]), b0, (*acc).r5_0);
    (*acc).r5_1 = fma(vec4<f32>(a[5]), b1, (*acc).r5_1);
    (*acc).r6_0 = fma(vec4<f32>(a[6]), b0, (*acc).r6_0);
    (*acc).r6_1 = fma(vec4<f32>(a[6]), b1, (*acc).r6_1);
    (*acc).r7_0 = fma(vec4<f32>(a[7]), b0, (*acc).r7_0);
    (*acc).r7_1 = fma(vec4<f32>(a[7]), b1, (*acc).r7_1);
    (*acc).r8_0 = fma(vec4<f32>(a[8]), b0, (*acc).r8_0);
    (*acc).r8_1 = fma(vec4<f32>(a[8]), b1, (*acc).r8_1);
    (*acc).r9_0 = fma(vec4<f32>(a[9]), b0, (*acc).r9_0);
    (*acc).r9_1 = fma(vec4<f32>(a[9]), b1, (*acc).r9_1);
    (*acc).r10_0 = fma(vec4<f32>(a[10]), b0, (*acc).r10_0);
    (*acc).r10_1 = fma(vec4<f32>(a[10]), b1, (*acc).r10_1);
    (*acc).r11_0 = fma(vec4<f32>(a[11]), b0, (*acc).r11_0);
    (*acc).r11_1 = fma(vec4<f32>(a[11]), b1, (*acc).r11_1);
    (*acc).r12_0 = fma(vec4<f32>(a[12]), b0, (*acc).r12_0);
    (*acc).r12_1 = fma(vec4<f32>(a[12]), b1, (*acc).r12_1);
    (*acc).r13_0 = fma(vec4<f32>(a[13]), b0, (*acc).r13_0);
    (*acc).r13_1 = fma(vec4<f32>(a[13]), b1, (*acc).r13_1);
    (*acc).r14_0 = fma(vec4<f32>(a[14]), b0, (*acc).r14_0);
    (*acc).r14_1 = fma(vec4<f32>(a[14]), b1, (*acc).r14_1);
    (*acc).r15_0 = fma(vec4<f32>(a[15]), b0, (*acc).r15_0);
    (*acc).r15_1 = fma(vec4<f32>(a[15]), b1, (*acc).r15_1);
}

// The epilogue's flags fixed per pipeline, as in matmul.wgsl (each kernel here inlines its store 128 times; with
// the flags constant those stores compile without the flag branches); the default, RUNTIME_FLAGS, reads p.flags.
const RUNTIME_FLAGS: u32 = 255u;
override EPILOGUE: u32 = RUNTIME_FLAGS;

fn epilogue_flags() -> u32 {
    return select(EPILOGUE, p.flags, EPILOGUE == RUNTIME_FLAGS);
}

fn put(idx: u32, v: f32) {
    if (epilogue_flags() & FLAG_ACCUMULATE) != 0u {
        out[idx] = res(f32(out[idx]) + v);
    } else {
        out[idx] = res(v);
    }
}

// The columns (as vec4 groups) that exist: index < count.
fn live(cols: vec4<u32>, count: u32) -> vec4<bool> {
    return cols < vec4<u32>(count);
}

// Whether (ih, iw) lies inside the H x W image.
fn inside(ih: vec4<i32>, iw: vec4<i32>, h: u32, w: u32) -> vec4<bool> {
    return (ih >= vec4<i32>(0)) & (ih < vec4<i32>(i32(h))) & (iw >= vec4<i32>(0)) & (iw < vec4<i32>(i32(w)));
}

// Gather 4 elements of gemm_b at off + shift where ok, 0 elsewhere (off is in bounds either way).
fn gather_b(off: vec4<u32>, shift: u32, ok: vec4<bool>) -> vec4<f32> {
    let v = vec4<f32>(vec4<act>(gemm_b[off.x + shift], gemm_b[off.y + shift], gemm_b[off.z + shift], gemm_b[off.w + shift]));
    return select(vec4<f32>(0.0), v, ok);
}

// Where the 8 columns of an invocation go: whether each exists, and its output index before the row offset.
struct Cols {
    live0: vec4<bool>,
    live1: vec4<bool>,
    base0: vec4<u32>,
    base1: vec4<u32>,
}

fn store4(v: vec4<f32>, ok: vec4<bool>, base: vec4<u32>, row_off: u32) {
    if ok.x { put(base.x + row_off, v.x); }
    if ok.y { put(base.y + row_off, v.y); }
    if ok.z { put(base.z + row_off, v.z); }
    if ok.w { put(base.w + row_off, v.w); }
}

// Store one row of the block (its 8 columns), plus a per-row constant b (the bias in forward).
fn store_row(v0: vec4<f32>, v1: vec4<f32>, cols: Cols, row_ok: bool, row_off: u32, b: f32) {
    if row_ok {
        store4(v0 + vec4<f32>(b), cols.live0, cols.base0, row_off);
        store4(v1 + vec4<f32>(b), cols.live1, cols.base1, row_off);
    }
}

fn bias_at(co: u32) -> f32 {
    if (epilogue_flags() & FLAG_BIAS) != 0u {
        return bias[min(co, p.out_c - 1u)];
    }
    return 0.0;
}

@compute @workgroup_size(WG, 1, 1)
fn conv2d_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = wg.z;
    let cin_g = p.in_c / p.groups;
    let cout_g = p.out_c / p.groups;
    let khw = p.kernel_h * p.kernel_w;
    let in_hw = p.in_h * p.in_w;
    let out_hw = p.out_h * p.out_w;
    let ncols = p.batch * out_hw;
    // Rows: output channels co_base + r0 + r (clamped for loading). gemm_a = w, row r at wr<r>.
    let r0 = wg.y * TM;
    let co_base = g * cout_g;
    let wr0 = (co_base + min(r0 + 0u, cout_g - 1u)) * cin_g * khw;
    let wr1 = (co_base + min(r0 + 1u, cout_g - 1u)) * cin_g * khw;
    let wr2 = (co_base + min(r0 + 2u, cout_g - 1u)) * cin_g * khw;
    let wr3 = (co_base + min(r0 + 3u, cout_g - 1u)) * cin_g * khw;
    let wr4 = (co_base + min(r0 + 4u, cout_g - 1u)) * cin_g * khw;
    let wr5 = (co_base + min(r0 + 5u, cout_g - 1u)) * cin_g * khw;
    let wr6 = (co_base + min(r0 + 6u, cout_g - 1u)) * cin_g * khw;
    let wr7 = (co_base + min(r0 + 7u, cout_g - 1u)) * cin_g * khw;
    let wr8 = (co_base + min(r0 + 8u, cout_g - 1u)) * cin_g * khw;
    let wr9 = (co_base + min(r0 + 9u, cout_g - 1u)) * cin_g * khw;
    let wr10 = (co_base + min(r0 + 10u, cout_g - 1u)) * cin_g * khw;
    let wr11 = (co_base + min(r0 + 11u, cout_g - 1u)) * cin_g * khw;
    let wr12 = (co_base + min(r0 + 12u, cout_g - 1u)) * cin_g * khw;
    let wr13 = (co_base + min(r0 + 13u, cout_g - 1u)) * cin_g * khw;
    let wr14 = (co_base + min(r0 + 14u, cout_g - 1u)) * cin_g * khw;
    let wr15 = (co_base + min(r0 + 15u, cout_g - 1u)) * cin_g * khw;
    // Columns: output pixels (n, oh, ow) (clamped for loading). gemm_b = x.
    let col0 = wg.x * WG * TN + lid.x;
    // An invocation whose first column is past the edge has no column to compute (no barrier follows: leaving
    // early is safe); a narrow problem (a small batch's last layers) would otherwise run whole masked blocks.
    if (col0 >= ncols) {
        return;
    }
    let c0 = vec4<u32>(col0) + vec4<u32>(0u, 1u, 2u, 3u) * WG;
    let c1 = vec4<u32>(col0) + vec4<u32>(4u, 5u, 6u, 7u) * WG;
    let k0 = min(c0, vec4<u32>(ncols - 1u));
    let k1 = min(c1, vec4<u32>(ncols - 1u));
    let n0 = k0 / out_hw;
    let n1 = k1 / out_hw;
    let pix0 = k0 - n0 * out_hw;
    let pix1 = k1 - n1 * out_hw;
    let ih_origin0 = vec4<i32>((pix0 / p.out_w) * p.stride_h) - vec4<i32>(i32(p.pad_top));
    let ih_origin1 = vec4<i32>((pix1 / p.out_w) * p.stride_h) - vec4<i32>(i32(p.pad_top));
    let iw_origin0 = vec4<i32>((pix0 % p.out_w) * p.stride_w) - vec4<i32>(i32(p.pad_left));
    let iw_origin1 = vec4<i32>((pix1 % p.out_w) * p.stride_w) - vec4<i32>(i32(p.pad_left));
    let x_base0 = (n0 * p.in_c + g * cin_g) * in_hw;
    let x_base1 = (n1 * p.in_c + g * cin_g) * in_hw;

    var acc: Block;
    for (var kh = 0u; kh < p.kernel_h; kh++) {
        let ih0 = ih_origin0 + vec4<i32>(i32(kh * p.dilation_h));
        let ih1 = ih_origin1 + vec4<i32>(i32(kh * p.dilation_h));
        for (var kw = 0u; kw < p.kernel_w; kw++) {
            let iw0 = iw_origin0 + vec4<i32>(i32(kw * p.dilation_w));
            let iw1 = iw_origin1 + vec4<i32>(i32(kw * p.dilation_w));
            let ok0 = inside(ih0, iw0, p.in_h, p.in_w);
            let ok1 = inside(ih1, iw1, p.in_h, p.in_w);
            let off0 = select(vec4<u32>(0u), x_base0 + vec4<u32>(ih0) * p.in_w + vec4<u32>(iw0), ok0);
            let off1 = select(vec4<u32>(0u), x_base1 + vec4<u32>(ih1) * p.in_w + vec4<u32>(iw1), ok1);
            let tap = kh * p.kernel_w + kw;
            for (var ci = 0u; ci < cin_g; ci++) {
                let b0 = gather_b(off0, ci * in_hw, ok0);
                let b1 = gather_b(off1, ci * in_hw, ok1);
                let k_off = ci * khw + tap;
        let av = array<f32, 16>(
            a_at(wr0 + k_off),
            a_at(wr1 + k_off),
            a_at(wr2 + k_off),
            a_at(wr3 + k_off),
            a_at(wr4 + k_off),
            a_at(wr5 + k_off),
            a_at(wr6 + k_off),
            a_at(wr7 + k_off),
            a_at(wr8 + k_off),
            a_at(wr9 + k_off),
            a_at(wr10 + k_off),
            a_at(wr11 + k_off),
            a_at(wr12 + k_off),
            a_at(wr13 + k_off),
            a_at(wr14 + k_off),
            a_at(wr15 + k_off),
        );
                rank1_update(&acc, av, b0, b1);
            }
        }
    }

    // y[n, co, oh, ow] at (n * Cout + co) * OH*OW + pix.
    let cols = Cols(live(c0, ncols), live(c1, ncols), n0 * p.out_c * out_hw + pix0, n1 * p.out_c * out_hw + pix1);
    store_row(acc.r0_0, acc.r0_1, cols, r0 + 0u < cout_g, (co_base + r0 + 0u) * out_hw, bias_at(co_base + r0 + 0u));
    store_row(acc.r1_0, acc.r1_1, cols, r0 + 1u < cout_g, (co_base + r0 + 1u) * out_hw, bias_at(co_base + r0 + 1u));
    store_row(acc.r2_0, acc.r2_1, cols, r0 + 2u < cout_g, (co_base + r0 + 2u) * out_hw, bias_at(co_base + r0 + 2u));
    store_row(acc.r3_0, acc.r3_1, cols, r0 + 3u < cout_g, (co_base + r0 + 3u) * out_hw, bias_at(co_base + r0 + 3u));
    store_row(acc.r4_0, acc.r4_1, cols, r0 + 4u < cout_g, (co_base + r0 + 4u) * out_hw, bias_at(co_base + r0 + 4u));
    store_row(acc.r5_0, acc.r5_1, cols, r0 + 5u < cout_g, (co_base + r0 + 5u) * out_hw, bias_at(co_base + r0 + 5u));
    store_row(acc.r6_0, acc.r6_1, cols, r0 + 6u < cout_g, (co_base + r0 + 6u) * out_hw, bias_at(co_base + r0 + 6u));
    store_row(acc.r7_0, acc.r7_1, cols, r0 + 7u < cout_g, (co_base + r0 + 7u) * out_hw, bias_at(co_base + r0 + 7u));
    store_row(acc.r8_0, acc.r8_1, cols, r0 + 8u < cout_g, (co_base + r0 + 8u) * out_hw, bias_at(co_base + r0 + 8u));
    store_row(acc.r9_0, acc.r9_1, cols, r0 + 9u < cout_g, (co_base + r0 + 9u) * out_hw, bias_at(co_base + r0 + 9u));
    store_row(acc.r10_0, acc.r10_1, cols, r0 + 10u < cout_g, (co_base + r0 + 10u) * out_hw, bias_at(co_base + r0 + 10u));
    store_row(acc.r11_0, acc.r11_1, cols, r0 + 11u < cout_g, (co_base + r0 + 11u) * out_hw, bias_at(co_base + r0 + 11u));
    store_row(acc.r12_0, acc.r12_1, cols, r0 + 12u < cout_g, (co_base + r0 + 12u) * out_hw, bias_at(co_base + r0 + 12u));
    store_row(acc.r13_0, acc.r13_1, cols, r0 + 13u < cout_g, (co_base + r0 + 13u) * out_hw, bias_at(co_base + r0 + 13u));
    store_row(acc.r14_0, acc.r14_1, cols, r0 + 14u < cout_g, (co_base + r0 + 14u) * out_hw, bias_at(co_base + r0 + 14u));
    store_row(acc.r15_0, acc.r15_1, cols, r0 + 15u < cout_g, (co_base + r0 + 15u) * out_hw, bias_at(co_base + r0 + 15u));
}

// conv2d_forward_staged: the forward pass on matmul.wgsl's staged tile (see `matmul_staged` there): 256
// invocations compute 128 output channels x 128 output pixels of one group, the reduction (K = Cin_g * KH * KW,
// ordered tap-major: k = (kh * KW + kw) * Cin_g + ci, as `conv2d_forward` walks it) in slabs of 8 staged through
// workgroup memory, the next slab's gathers in flight during the products.
//   - Staging w (128 x 8): invocation t reads rows t / 8 + 32 * i (i < 4) at the slab's k = t % 8.
//   - Staging x (8 x 128, the implicit im2col): invocation t always reads pixel column t % 128 (its image and
//     origin computed once) at the slab's k = t / 128 + 2 * i: neighbouring invocations read neighbouring pixels.
//   - Each staged k is a position (ci, kh, kw) advanced by 8 per slab with carries, so no division runs in the
//     loop (a layer with fewer than 8 channels per group carries more than once).
// Dispatch: (ceil(N * OH * OW / 128), ceil(Cout_g / 128), groups).
const ST_TILE: u32 = 128u;
const ST_BK: u32 = 8u;
const ST_PITCH: u32 = 33u; // vec4s per K row of a staged slab: 32 and one of padding

var<workgroup> staged_a: array<vec4<f32>, 264>; // ST_BK x ST_PITCH: staged_a[kk * 33 + row / 4][row % 4]
var<workgroup> staged_b: array<vec4<f32>, 264>; // ST_BK x ST_PITCH: staged_b[kk * 33 + col / 4][col % 4]

// The 8 x 8 block of one staged invocation (`matmul_staged`, `conv2d_forward_staged`): row r holds its column
// quads in r<r>_0 and r<r>_1.
struct Block8 {
    r0_0: vec4<f32>,
    r0_1: vec4<f32>,
    r1_0: vec4<f32>,
    r1_1: vec4<f32>,
    r2_0: vec4<f32>,
    r2_1: vec4<f32>,
    r3_0: vec4<f32>,
    r3_1: vec4<f32>,
    r4_0: vec4<f32>,
    r4_1: vec4<f32>,
    r5_0: vec4<f32>,
    r5_1: vec4<f32>,
    r6_0: vec4<f32>,
    r6_1: vec4<f32>,
    r7_0: vec4<f32>,
    r7_1: vec4<f32>,
}

// acc += (a0, a1) ⊗ (b0, b1): rows 0-3 take a0's components, rows 4-7 a1's.
fn rank1_update8(acc: ptr<function, Block8>, a0: vec4<f32>, a1: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>) {
    (*acc).r0_0 = fma(vec4<f32>(a0.x), b0, (*acc).r0_0);
    (*acc).r0_1 = fma(vec4<f32>(a0.x), b1, (*acc).r0_1);
    (*acc).r1_0 = fma(vec4<f32>(a0.y), b0, (*acc).r1_0);
    (*acc).r1_1 = fma(vec4<f32>(a0.y), b1, (*acc).r1_1);
    (*acc).r2_0 = fma(vec4<f32>(a0.z), b0, (*acc).r2_0);
    (*acc).r2_1 = fma(vec4<f32>(a0.z), b1, (*acc).r2_1);
    (*acc).r3_0 = fma(vec4<f32>(a0.w), b0, (*acc).r3_0);
    (*acc).r3_1 = fma(vec4<f32>(a0.w), b1, (*acc).r3_1);
    (*acc).r4_0 = fma(vec4<f32>(a1.x), b0, (*acc).r4_0);
    (*acc).r4_1 = fma(vec4<f32>(a1.x), b1, (*acc).r4_1);
    (*acc).r5_0 = fma(vec4<f32>(a1.y), b0, (*acc).r5_0);
    (*acc).r5_1 = fma(vec4<f32>(a1.y), b1, (*acc).r5_1);
    (*acc).r6_0 = fma(vec4<f32>(a1.z), b0, (*acc).r6_0);
    (*acc).r6_1 = fma(vec4<f32>(a1.z), b1, (*acc).r6_1);
    (*acc).r7_0 = fma(vec4<f32>(a1.w), b0, (*acc).r7_0);
    (*acc).r7_1 = fma(vec4<f32>(a1.w), b1, (*acc).r7_1);
}

// A reduction index k as the position it stands for, kept current by `kpos_advance`: k itself (past K when the
// slab runs over the end), the channel within the group and the tap.
struct KPos {
    k: u32,
    ci: u32,
    kh: u32,
    kw: u32,
}

fn kpos_of(k: u32, cin_g: u32) -> KPos {
    let tap = k / cin_g;
    return KPos(k, k % cin_g, tap / p.kernel_w, tap % p.kernel_w);
}

// kp moved on by `by` reduction steps: the channel carries into the tap, the tap's column into its row.
fn kpos_advance(kp: KPos, by: u32, cin_g: u32) -> KPos {
    var r = kp;
    r.k += by;
    r.ci += by;
    while r.ci >= cin_g {
        r.ci -= cin_g;
        r.kw += 1u;
        if r.kw == p.kernel_w {
            r.kw = 0u;
            r.kh += 1u;
        }
    }
    return r;
}

// w's value at (output channel co of the group, reduction position kp), zero outside.
fn staged_w(w_row: u32, row_ok: bool, kp: KPos, k_total: u32, khw: u32) -> f32 {
    let ok = row_ok && kp.k < k_total;
    let idx = select(0u, w_row + kp.ci * khw + kp.kh * p.kernel_w + kp.kw, ok);
    return select(0.0, a_at(idx), ok);
}

// The pixel column of one staging invocation: its image's base in x and the window's origin.
struct PixelCol {
    ok: bool,
    x_base: u32,
    ih: i32,
    iw: i32,
}

// x's value at (reduction position kp, the column's pixel), zero in the padding and outside.
fn staged_x(col: PixelCol, kp: KPos, k_total: u32) -> f32 {
    let ih = col.ih + i32(kp.kh * p.dilation_h);
    let iw = col.iw + i32(kp.kw * p.dilation_w);
    let ok = col.ok && kp.k < k_total && ih >= 0 && ih < i32(p.in_h) && iw >= 0 && iw < i32(p.in_w);
    let idx = select(0u, col.x_base + kp.ci * p.in_h * p.in_w + u32(ih) * p.in_w + u32(iw), ok);
    return select(0.0, f32(gemm_b[idx]), ok);
}

// The current slab's products: eight rank-1 updates of invocation (tx, ty)'s block, its rows' two quads of A (the
// same for the 16 invocations of a row: a broadcast) against its columns' two quads of B.
fn staged_products(acc: ptr<function, Block8>, tx: u32, ty: u32) {
    for (var kk = 0u; kk < ST_BK; kk++) {
        let at = kk * ST_PITCH;
        rank1_update8(acc, staged_a[at + ty], staged_a[at + 16u + ty], staged_b[at + tx], staged_b[at + 16u + tx]);
    }
}

// Put a staged value of A (tile row, slab offset kk) or of B (tile column, kk) in its slab.
fn stage_a(row: u32, kk: u32, v: f32) {
    staged_a[kk * ST_PITCH + (row >> 2u)][row & 3u] = v;
}

fn stage_b(col: u32, kk: u32, v: f32) {
    staged_b[kk * ST_PITCH + (col >> 2u)][col & 3u] = v;
}

// Store one row of the block: its 8 columns (two quads) where they exist, plus the row's bias.
fn store_staged_row(v0: vec4<f32>, v1: vec4<f32>, co: u32, row_ok: bool, cols: Cols, out_hw: u32) {
    store_row(v0, v1, cols, row_ok, co * out_hw, bias_at(co));
}

@compute @workgroup_size(16, 16, 1)
fn conv2d_forward_staged(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.y * 16u + lid.x;
    let g = wg.z;
    let cin_g = p.in_c / p.groups;
    let cout_g = p.out_c / p.groups;
    let khw = p.kernel_h * p.kernel_w;
    let k_total = cin_g * khw;
    let in_hw = p.in_h * p.in_w;
    let out_hw = p.out_h * p.out_w;
    let ncols = p.batch * out_hw;
    let r0 = wg.y * ST_TILE;
    let col0 = wg.x * ST_TILE;
    let co_base = g * cout_g;
    // Staging w: rows t / 8 + 32 * i at slab offset t % 8.
    let a_rows = vec4<u32>(t >> 3u) + vec4<u32>(0u, 32u, 64u, 96u);
    let a_kk = t & 7u;
    let rows_ok = (vec4<u32>(r0) + a_rows) < vec4<u32>(cout_g);
    let w_rows = (vec4<u32>(co_base) + min(vec4<u32>(r0) + a_rows, vec4<u32>(cout_g - 1u))) * k_total;
    var ka = kpos_of(a_kk, cin_g);
    // Staging x: column t % 128 at slab offsets t / 128 + 2 * i.
    let b_col = t & 127u;
    let b_kk = t >> 7u;
    let pixel = col0 + b_col;
    let pc = min(pixel, ncols - 1u);
    let n = pc / out_hw;
    let pix = pc - n * out_hw;
    let col = PixelCol(
        pixel < ncols,
        (n * p.in_c + g * cin_g) * in_hw,
        i32((pix / p.out_w) * p.stride_h) - i32(p.pad_top),
        i32((pix % p.out_w) * p.stride_w) - i32(p.pad_left),
    );
    var kb0 = kpos_of(b_kk, cin_g);
    var kb1 = kpos_of(b_kk + 2u, cin_g);
    var kb2 = kpos_of(b_kk + 4u, cin_g);
    var kb3 = kpos_of(b_kk + 6u, cin_g);
    // The first slab (k past K reads zeros).
    var na = vec4<f32>(
        staged_w(w_rows.x, rows_ok.x, ka, k_total, khw),
        staged_w(w_rows.y, rows_ok.y, ka, k_total, khw),
        staged_w(w_rows.z, rows_ok.z, ka, k_total, khw),
        staged_w(w_rows.w, rows_ok.w, ka, k_total, khw),
    );
    var nb = vec4<f32>(staged_x(col, kb0, k_total), staged_x(col, kb1, k_total), staged_x(col, kb2, k_total),
        staged_x(col, kb3, k_total));
    var acc: Block8;
    let slabs = (k_total + ST_BK - 1u) / ST_BK;
    for (var s = 0u; s < slabs; s++) {
        stage_a(a_rows.x, a_kk, na.x);
        stage_a(a_rows.y, a_kk, na.y);
        stage_a(a_rows.z, a_kk, na.z);
        stage_a(a_rows.w, a_kk, na.w);
        stage_b(b_col, b_kk, nb.x);
        stage_b(b_col, b_kk + 2u, nb.y);
        stage_b(b_col, b_kk + 4u, nb.z);
        stage_b(b_col, b_kk + 6u, nb.w);
        workgroupBarrier();
        // The next slab's reads, in flight during the products.
        ka = kpos_advance(ka, ST_BK, cin_g);
        kb0 = kpos_advance(kb0, ST_BK, cin_g);
        kb1 = kpos_advance(kb1, ST_BK, cin_g);
        kb2 = kpos_advance(kb2, ST_BK, cin_g);
        kb3 = kpos_advance(kb3, ST_BK, cin_g);
        na = vec4<f32>(
            staged_w(w_rows.x, rows_ok.x, ka, k_total, khw),
            staged_w(w_rows.y, rows_ok.y, ka, k_total, khw),
            staged_w(w_rows.z, rows_ok.z, ka, k_total, khw),
            staged_w(w_rows.w, rows_ok.w, ka, k_total, khw),
        );
        nb = vec4<f32>(staged_x(col, kb0, k_total), staged_x(col, kb1, k_total), staged_x(col, kb2, k_total),
            staged_x(col, kb3, k_total));
        staged_products(&acc, lid.x, lid.y);
        workgroupBarrier();
    }
    // y[n, co, oh, ow] at (n * Cout + co) * OH*OW + pix; this invocation's columns col0 + tx * 4 + j and
    // col0 + 64 + tx * 4 + j.
    let c0 = vec4<u32>(col0 + lid.x * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
    let c1 = c0 + vec4<u32>(64u);
    let k0 = min(c0, vec4<u32>(ncols - 1u));
    let k1 = min(c1, vec4<u32>(ncols - 1u));
    let n0 = k0 / out_hw;
    let n1 = k1 / out_hw;
    let cols = Cols(
        live(c0, ncols),
        live(c1, ncols),
        n0 * p.out_c * out_hw + (k0 - n0 * out_hw),
        n1 * p.out_c * out_hw + (k1 - n1 * out_hw),
    );
    let ra = r0 + lid.y * 4u;
    let rb = ra + 64u;
    store_staged_row(acc.r0_0, acc.r0_1, co_base + ra, ra < cout_g, cols, out_hw);
    store_staged_row(acc.r1_0, acc.r1_1, co_base + ra + 1u, ra + 1u < cout_g, cols, out_hw);
    store_staged_row(acc.r2_0, acc.r2_1, co_base + ra + 2u, ra + 2u < cout_g, cols, out_hw);
    store_staged_row(acc.r3_0, acc.r3_1, co_base + ra + 3u, ra + 3u < cout_g, cols, out_hw);
    store_staged_row(acc.r4_0, acc.r4_1, co_base + rb, rb < cout_g, cols, out_hw);
    store_staged_row(acc.r5_0, acc.r5_1, co_base + rb + 1u, rb + 1u < cout_g, cols, out_hw);
    store_staged_row(acc.r6_0, acc.r6_1, co_base + rb + 2u, rb + 2u < cout_g, cols, out_hw);
    store_staged_row(acc.r7_0, acc.r7_1, co_base + rb + 3u, rb + 3u < cout_g, cols, out_hw);
}

// dx[n, ci, ih, iw] = sum_{co, kh, kw} w[co, ci, kh, kw] * dy[n, co, oh, ow] over the (oh, ow) with
// oh * stride_h = ih + pad_top - kh * dilation_h (and the same along W) that exist.
// By stride phase: workgroup z = g * phases + phase covers the input pixels with ih % stride_h == ph and
// iw % stride_w == pw (phase = ph * stride_w + pw). For those, whether tap kh reaches an output row at all,
// (ph + pad_top - kh * dilation_h) % stride_h == 0, is the same for every column of the workgroup, and where it does
// oh = ih / stride_h + drow with drow = (ph + pad_top - kh * dilation_h) / stride_h exactly: the taps that reach
// nothing are skipped whole (a stride-2 3x3 layer does 9 taps' work over its 4 phases, not 36) and there is no
// division in the loop. Stride 1 is one phase.
@compute @workgroup_size(WG, 1, 1)
fn conv2d_backward_data(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let phases = p.stride_h * p.stride_w;
    let g = wg.z / phases;
    let phase = wg.z - g * phases;
    let ph = phase / p.stride_w;
    let pw = phase - ph * p.stride_w;
    let cin_g = p.in_c / p.groups;
    let cout_g = p.out_c / p.groups;
    let khw = p.kernel_h * p.kernel_w;
    let in_hw = p.in_h * p.in_w;
    let out_hw = p.out_h * p.out_w;
    // The phase's pixels: ih = ph + stride_h * i for i < rows, iw = pw + stride_w * j for j < cols (none when the
    // image is smaller than the phase's offset; the divisors below are then kept nonzero and no column is live).
    let rows = (p.in_h + p.stride_h - 1u - ph) / p.stride_h;
    let cols_w = (p.in_w + p.stride_w - 1u - pw) / p.stride_w;
    let phase_hw = max(rows * cols_w, 1u);
    let ncols = p.batch * rows * cols_w;
    // Rows: input channels g * cin_g + r0 + r (clamped for loading). gemm_a = w, read as wᵀ.
    let r0 = wg.y * TM;
    let co_base = g * cout_g;
    let wr0 = min(r0 + 0u, cin_g - 1u) * khw;
    let wr1 = min(r0 + 1u, cin_g - 1u) * khw;
    let wr2 = min(r0 + 2u, cin_g - 1u) * khw;
    let wr3 = min(r0 + 3u, cin_g - 1u) * khw;
    let wr4 = min(r0 + 4u, cin_g - 1u) * khw;
    let wr5 = min(r0 + 5u, cin_g - 1u) * khw;
    let wr6 = min(r0 + 6u, cin_g - 1u) * khw;
    let wr7 = min(r0 + 7u, cin_g - 1u) * khw;
    let wr8 = min(r0 + 8u, cin_g - 1u) * khw;
    let wr9 = min(r0 + 9u, cin_g - 1u) * khw;
    let wr10 = min(r0 + 10u, cin_g - 1u) * khw;
    let wr11 = min(r0 + 11u, cin_g - 1u) * khw;
    let wr12 = min(r0 + 12u, cin_g - 1u) * khw;
    let wr13 = min(r0 + 13u, cin_g - 1u) * khw;
    let wr14 = min(r0 + 14u, cin_g - 1u) * khw;
    let wr15 = min(r0 + 15u, cin_g - 1u) * khw;
    // Columns: the phase's pixels (n, i, j) (clamped for loading). gemm_b = dy.
    let col0 = wg.x * WG * TN + lid.x;
    // An invocation whose first column is past the edge has no column to compute (no barrier follows: leaving
    // early is safe); a narrow problem (a small batch's last layers) would otherwise run whole masked blocks.
    if (col0 >= ncols) {
        return;
    }
    let c0 = vec4<u32>(col0) + vec4<u32>(0u, 1u, 2u, 3u) * WG;
    let c1 = vec4<u32>(col0) + vec4<u32>(4u, 5u, 6u, 7u) * WG;
    let k0 = min(c0, vec4<u32>(max(ncols, 1u) - 1u));
    let k1 = min(c1, vec4<u32>(max(ncols, 1u) - 1u));
    let n0 = k0 / phase_hw;
    let n1 = k1 / phase_hw;
    let q0 = k0 - n0 * phase_hw;
    let q1 = k1 - n1 * phase_hw;
    let i0 = q0 / max(cols_w, 1u);
    let i1 = q1 / max(cols_w, 1u);
    let j0 = q0 - i0 * max(cols_w, 1u);
    let j1 = q1 - i1 * max(cols_w, 1u);
    let dy_base0 = (n0 * p.out_c + co_base) * out_hw;
    let dy_base1 = (n1 * p.out_c + co_base) * out_hw;
    let sh = i32(p.stride_h);
    let sw = i32(p.stride_w);

    var acc: Block;
    for (var kh = 0u; kh < p.kernel_h; kh++) {
        let num_h = i32(ph + p.pad_top) - i32(kh * p.dilation_h);
        let drow = num_h / sh;
        if drow * sh != num_h {
            continue; // this tap reaches no output row from this phase
        }
        let oh0 = vec4<i32>(i0) + vec4<i32>(drow);
        let oh1 = vec4<i32>(i1) + vec4<i32>(drow);
        for (var kw = 0u; kw < p.kernel_w; kw++) {
            let num_w = i32(pw + p.pad_left) - i32(kw * p.dilation_w);
            let dcol = num_w / sw;
            if dcol * sw != num_w {
                continue;
            }
            let ow0 = vec4<i32>(j0) + vec4<i32>(dcol);
            let ow1 = vec4<i32>(j1) + vec4<i32>(dcol);
            let ok0 = inside(oh0, ow0, p.out_h, p.out_w);
            let ok1 = inside(oh1, ow1, p.out_h, p.out_w);
            let off0 = select(vec4<u32>(0u), dy_base0 + vec4<u32>(oh0) * p.out_w + vec4<u32>(ow0), ok0);
            let off1 = select(vec4<u32>(0u), dy_base1 + vec4<u32>(oh1) * p.out_w + vec4<u32>(ow1), ok1);
            let tap = kh * p.kernel_w + kw;
            for (var co = 0u; co < cout_g; co++) {
                let b0 = gather_b(off0, co * out_hw, ok0);
                let b1 = gather_b(off1, co * out_hw, ok1);
                let k_off = (co_base + co) * cin_g * khw + tap;
        let av = array<f32, 16>(
            a_at(wr0 + k_off),
            a_at(wr1 + k_off),
            a_at(wr2 + k_off),
            a_at(wr3 + k_off),
            a_at(wr4 + k_off),
            a_at(wr5 + k_off),
            a_at(wr6 + k_off),
            a_at(wr7 + k_off),
            a_at(wr8 + k_off),
            a_at(wr9 + k_off),
            a_at(wr10 + k_off),
            a_at(wr11 + k_off),
            a_at(wr12 + k_off),
            a_at(wr13 + k_off),
            a_at(wr14 + k_off),
            a_at(wr15 + k_off),
        );
                rank1_update(&acc, av, b0, b1);
            }
        }
    }

    // dx[n, ci, ih, iw] at (n * Cin + ci) * H*W + ih * W + iw.
    let pix0 = (vec4<u32>(ph) + i0 * p.stride_h) * p.in_w + vec4<u32>(pw) + j0 * p.stride_w;
    let pix1 = (vec4<u32>(ph) + i1 * p.stride_h) * p.in_w + vec4<u32>(pw) + j1 * p.stride_w;
    let cols = Cols(live(c0, ncols), live(c1, ncols), n0 * p.in_c * in_hw + pix0, n1 * p.in_c * in_hw + pix1);
    let ci_base = g * cin_g;
    store_row(acc.r0_0, acc.r0_1, cols, r0 + 0u < cin_g, (ci_base + r0 + 0u) * in_hw, 0.0);
    store_row(acc.r1_0, acc.r1_1, cols, r0 + 1u < cin_g, (ci_base + r0 + 1u) * in_hw, 0.0);
    store_row(acc.r2_0, acc.r2_1, cols, r0 + 2u < cin_g, (ci_base + r0 + 2u) * in_hw, 0.0);
    store_row(acc.r3_0, acc.r3_1, cols, r0 + 3u < cin_g, (ci_base + r0 + 3u) * in_hw, 0.0);
    store_row(acc.r4_0, acc.r4_1, cols, r0 + 4u < cin_g, (ci_base + r0 + 4u) * in_hw, 0.0);
    store_row(acc.r5_0, acc.r5_1, cols, r0 + 5u < cin_g, (ci_base + r0 + 5u) * in_hw, 0.0);
    store_row(acc.r6_0, acc.r6_1, cols, r0 + 6u < cin_g, (ci_base + r0 + 6u) * in_hw, 0.0);
    store_row(acc.r7_0, acc.r7_1, cols, r0 + 7u < cin_g, (ci_base + r0 + 7u) * in_hw, 0.0);
    store_row(acc.r8_0, acc.r8_1, cols, r0 + 8u < cin_g, (ci_base + r0 + 8u) * in_hw, 0.0);
    store_row(acc.r9_0, acc.r9_1, cols, r0 + 9u < cin_g, (ci_base + r0 + 9u) * in_hw, 0.0);
    store_row(acc.r10_0, acc.r10_1, cols, r0 + 10u < cin_g, (ci_base + r0 + 10u) * in_hw, 0.0);
    store_row(acc.r11_0, acc.r11_1, cols, r0 + 11u < cin_g, (ci_base + r0 + 11u) * in_hw, 0.0);
    store_row(acc.r12_0, acc.r12_1, cols, r0 + 12u < cin_g, (ci_base + r0 + 12u) * in_hw, 0.0);
    store_row(acc.r13_0, acc.r13_1, cols, r0 + 13u < cin_g, (ci_base + r0 + 13u) * in_hw, 0.0);
    store_row(acc.r14_0, acc.r14_1, cols, r0 + 14u < cin_g, (ci_base + r0 + 14u) * in_hw, 0.0);
    store_row(acc.r15_0, acc.r15_1, cols, r0 + 15u < cin_g, (ci_base + r0 + 15u) * in_hw, 0.0);
}

// dw[co, ci, kh, kw] = sum_{n, oh, ow} dy[n, co, oh, ow] * x[n, ci, oh * stride_h - pad_top + kh * dilation_h, ...]
@compute @workgroup_size(WG, 1, 1)
fn conv2d_backward_weight(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let rows = p.batch * p.out_h;
    let splits = (rows + p.split_len - 1u) / p.split_len;
    let g = wg.z / splits;
    let split = wg.z - g * splits;
    let cin_g = p.in_c / p.groups;
    let cout_g = p.out_c / p.groups;
    let khw = p.kernel_h * p.kernel_w;
    let in_hw = p.in_h * p.in_w;
    let out_hw = p.out_h * p.out_w;
    let ncols = cin_g * khw;
    // Rows: output channels co_base + r0 + r (clamped for loading). gemm_a = dy.
    let r0 = wg.y * TM;
    let co_base = g * cout_g;
    let dr0 = (co_base + min(r0 + 0u, cout_g - 1u)) * out_hw;
    let dr1 = (co_base + min(r0 + 1u, cout_g - 1u)) * out_hw;
    let dr2 = (co_base + min(r0 + 2u, cout_g - 1u)) * out_hw;
    let dr3 = (co_base + min(r0 + 3u, cout_g - 1u)) * out_hw;
    let dr4 = (co_base + min(r0 + 4u, cout_g - 1u)) * out_hw;
    let dr5 = (co_base + min(r0 + 5u, cout_g - 1u)) * out_hw;
    let dr6 = (co_base + min(r0 + 6u, cout_g - 1u)) * out_hw;
    let dr7 = (co_base + min(r0 + 7u, cout_g - 1u)) * out_hw;
    let dr8 = (co_base + min(r0 + 8u, cout_g - 1u)) * out_hw;
    let dr9 = (co_base + min(r0 + 9u, cout_g - 1u)) * out_hw;
    let dr10 = (co_base + min(r0 + 10u, cout_g - 1u)) * out_hw;
    let dr11 = (co_base + min(r0 + 11u, cout_g - 1u)) * out_hw;
    let dr12 = (co_base + min(r0 + 12u, cout_g - 1u)) * out_hw;
    let dr13 = (co_base + min(r0 + 13u, cout_g - 1u)) * out_hw;
    let dr14 = (co_base + min(r0 + 14u, cout_g - 1u)) * out_hw;
    let dr15 = (co_base + min(r0 + 15u, cout_g - 1u)) * out_hw;
    // Columns: weight taps (ci, kh, kw) (clamped for loading). gemm_b = x.
    let col0 = wg.x * WG * TN + lid.x;
    let c0 = vec4<u32>(col0) + vec4<u32>(0u, 1u, 2u, 3u) * WG;
    let c1 = vec4<u32>(col0) + vec4<u32>(4u, 5u, 6u, 7u) * WG;
    let k0 = min(c0, vec4<u32>(ncols - 1u));
    let k1 = min(c1, vec4<u32>(ncols - 1u));
    let ci0 = k0 / khw;
    let ci1 = k1 / khw;
    let t0 = k0 - ci0 * khw;
    let t1 = k1 - ci1 * khw;
    let dh0 = vec4<i32>((t0 / p.kernel_w) * p.dilation_h) - vec4<i32>(i32(p.pad_top));
    let dh1 = vec4<i32>((t1 / p.kernel_w) * p.dilation_h) - vec4<i32>(i32(p.pad_top));
    let dw0 = vec4<i32>((t0 % p.kernel_w) * p.dilation_w) - vec4<i32>(i32(p.pad_left));
    let dw1 = vec4<i32>((t1 % p.kernel_w) * p.dilation_w) - vec4<i32>(i32(p.pad_left));
    let x_col0 = (g * cin_g + ci0) * in_hw;
    let x_col1 = (g * cin_g + ci1) * in_hw;

    var acc: Block;
    // This split's rows (n, oh), walked with n and oh kept incrementally (no division in the loop).
    let row_begin = split * p.split_len;
    let row_end = min(rows, row_begin + p.split_len);
    var n = row_begin / p.out_h;
    var oh = row_begin - n * p.out_h;
    for (var row = row_begin; row < row_end; row++) {
        let x_n = n * p.in_c * in_hw;
        let dy_n = n * p.out_c * out_hw;
        {
            let ih0 = vec4<i32>(i32(oh * p.stride_h)) + dh0;
            let ih1 = vec4<i32>(i32(oh * p.stride_h)) + dh1;
            for (var ow = 0u; ow < p.out_w; ow++) {
                let iw0 = vec4<i32>(i32(ow * p.stride_w)) + dw0;
                let iw1 = vec4<i32>(i32(ow * p.stride_w)) + dw1;
                let ok0 = inside(ih0, iw0, p.in_h, p.in_w);
                let ok1 = inside(ih1, iw1, p.in_h, p.in_w);
                let off0 = select(vec4<u32>(0u), x_col0 + vec4<u32>(ih0) * p.in_w + vec4<u32>(iw0), ok0);
                let off1 = select(vec4<u32>(0u), x_col1 + vec4<u32>(ih1) * p.in_w + vec4<u32>(iw1), ok1);
                let b0 = gather_b(off0, x_n, ok0);
                let b1 = gather_b(off1, x_n, ok1);
                let k_off = dy_n + oh * p.out_w + ow;
        let av = array<f32, 16>(
            a_at(dr0 + k_off),
            a_at(dr1 + k_off),
            a_at(dr2 + k_off),
            a_at(dr3 + k_off),
            a_at(dr4 + k_off),
            a_at(dr5 + k_off),
            a_at(dr6 + k_off),
            a_at(dr7 + k_off),
            a_at(dr8 + k_off),
            a_at(dr9 + k_off),
            a_at(dr10 + k_off),
            a_at(dr11 + k_off),
            a_at(dr12 + k_off),
            a_at(dr13 + k_off),
            a_at(dr14 + k_off),
            a_at(dr15 + k_off),
        );
                rank1_update(&acc, av, b0, b1);
            }
        }
        oh++;
        if oh == p.out_h {
            oh = 0u;
            n++;
        }
    }

    // dw (split, co, ci, kh, kw) at split * Cout * ncols + co * ncols + column.
    let cols = Cols(live(c0, ncols), live(c1, ncols), split * p.out_c * ncols + k0, split * p.out_c * ncols + k1);
    store_row(acc.r0_0, acc.r0_1, cols, r0 + 0u < cout_g, (co_base + r0 + 0u) * ncols, 0.0);
    store_row(acc.r1_0, acc.r1_1, cols, r0 + 1u < cout_g, (co_base + r0 + 1u) * ncols, 0.0);
    store_row(acc.r2_0, acc.r2_1, cols, r0 + 2u < cout_g, (co_base + r0 + 2u) * ncols, 0.0);
    store_row(acc.r3_0, acc.r3_1, cols, r0 + 3u < cout_g, (co_base + r0 + 3u) * ncols, 0.0);
    store_row(acc.r4_0, acc.r4_1, cols, r0 + 4u < cout_g, (co_base + r0 + 4u) * ncols, 0.0);
    store_row(acc.r5_0, acc.r5_1, cols, r0 + 5u < cout_g, (co_base + r0 + 5u) * ncols, 0.0);
    store_row(acc.r6_0, acc.r6_1, cols, r0 + 6u < cout_g, (co_base + r0 + 6u) * ncols, 0.0);
    store_row(acc.r7_0, acc.r7_1, cols, r0 + 7u < cout_g, (co_base + r0 + 7u) * ncols, 0.0);
    store_row(acc.r8_0, acc.r8_1, cols, r0 + 8u < cout_g, (co_base + r0 + 8u) * ncols, 0.0);
    store_row(acc.r9_0, acc.r9_1, cols, r0 + 9u < cout_g, (co_base + r0 + 9u) * ncols, 0.0);
    store_row(acc.r10_0, acc.r10_1, cols, r0 + 10u < cout_g, (co_base + r0 + 10u) * ncols, 0.0);
    store_row(acc.r11_0, acc.r11_1, cols, r0 + 11u < cout_g, (co_base + r0 + 11u) * ncols, 0.0);
    store_row(acc.r12_0, acc.r12_1, cols, r0 + 12u < cout_g, (co_base + r0 + 12u) * ncols, 0.0);
    store_row(acc.r13_0, acc.r13_1, cols, r0 + 13u < cout_g, (co_base + r0 + 13u) * ncols, 0.0);
    store_row(acc.r14_0, acc.r14_1, cols, r0 + 14u < cout_g, (co_base + r0 + 14u) * ncols, 0.0);
    store_row(acc.r15_0, acc.r15_1, cols, r0 + 15u < cout_g, (co_base + r0 + 15u) * ncols, 0.0);
}
