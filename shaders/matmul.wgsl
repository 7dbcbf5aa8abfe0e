// matmul.wgsl — batched matrix product C[b] = op(A)[b] · op(B)[b] (+ bias) (+ C[b] when accumulating).
//
// Layout: op(A) is (batch, M, K) and op(B) is (batch, K, N), each addressed through element strides, so a
// transposed operand is just swapped row/column strides (dA = dC·Bᵀ and dB = Aᵀ·dC need no copies); a batch
// stride of 0 shares one matrix across the batch. C is contiguous row-major (batch, M, N).
// flags & 1: add bias (N) to every row. flags & 4: add bias (M) to every column instead (a 1x1 convolution's
// per-channel bias). flags & 2: accumulate (C += product) instead of overwriting, for gradients of tensors that
// are used twice.
//
// Kernels:
//   matmul        the library kernel, register-blocked: each invocation computes a 16 x 8 block of C, held in
//                 a struct of 32 vec4 accumulators (16 rows x two groups of 4 columns).
//                 - The 16 rows are the same for all 64 invocations of a workgroup, so every A read has a
//                   workgroup-uniform address: one load broadcast to all invocations.
//                 - Invocation i owns columns 512 * wg.x + i + 64 * j (j = 0..7): at each j, neighbouring invocations
//                   read neighbouring B elements (coalesced on GPUs; on lavapipe the better of the two layouts
//                   measured, see BENCHMARKS.md).
//                 - The block is written out, never indexed in a loop: lavapipe keeps arrays indexed inside
//                   loops in memory, which measured 3-5x slower than registers.
//                 No workgroup memory and no barriers (barriers are expensive on the software driver); reuse
//                 of B across the 16 rows happens in registers, reuse of A through the uniform broadcast.
//                 A workgroup covers 16 rows x 512 columns. Dispatch: (ceil(N / 512), ceil(M / 16), batch).
//   matmul_shared the workgroup-memory GEMM with its tile as pipeline constants (below, at the kernel).
//   matmul_staged the workgroup-memory GEMM with a fixed 128 x 128 tile and named registers (below).
//   matmul_naive  one output per invocation, 16x16 workgroups; kept only as the benchmark baseline.
//                 Dispatch: (ceil(N / 16), ceil(M / 16), batch).
//
// Storage types: A is `lhs`, B `rhs` and C `res` (src/gpu/kernels.rs makes the variants): f32 throughout; f16
// throughout (attention's products of activations); A and B f16 with C f32 (a weight gradient); or one operand an
// f32 parameter with the other operand and C f16 (a linear layer or 1x1 convolution with f16 activations: the
// master weights are read as they are, never rounded to f16). Products and sums are f32 inside; C is rounded once
// when stored. The bias is an f32 parameter in every variant.

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    // element strides of op(A): batch, row (along M), column (along K)
    a_batch: u32,
    a_row: u32,
    a_col: u32,
    // element strides of op(B): batch, row (along K), column (along N)
    b_batch: u32,
    b_row: u32,
    b_col: u32,
    flags: u32,
    _pad: u32,
}

const FLAG_BIAS: u32 = 1u;
const FLAG_ACCUMULATE: u32 = 2u;
const FLAG_ROW_BIAS: u32 = 4u;

alias act = f32;
alias lhs = f32;
alias rhs = f32;
alias res = f32;

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<lhs>;          // op(A): (batch, M, K) via strides
@group(0) @binding(2) var<storage, read> b: array<rhs>;          // op(B): (batch, K, N) via strides
@group(0) @binding(3) var<storage, read> bias: array<f32>;       // (N) with FLAG_BIAS, (M) with FLAG_ROW_BIAS
@group(0) @binding(4) var<storage, read_write> c: array<res>;    // (batch, M, N)

fn a_at(i: u32) -> f32 {
    return f32(a[i]);
}

fn b_at(i: u32) -> f32 {
    return f32(b[i]);
}

// The epilogue's flags fixed per pipeline (the register-blocked `matmul`: its 128 inlined stores then compile
// without the flag branches, which took 2.9 s of lavapipe's first-dispatch compile against 0.45 s); the default,
// RUNTIME_FLAGS, reads p.flags.
const RUNTIME_FLAGS: u32 = 255u;
override EPILOGUE: u32 = RUNTIME_FLAGS;

fn epilogue_flags() -> u32 {
    return select(EPILOGUE, p.flags, EPILOGUE == RUNTIME_FLAGS);
}

fn finish(acc: f32, row: u32, col: u32, batch: u32) {
    let flags = epilogue_flags();
    var v = acc;
    if (flags & FLAG_BIAS) != 0u {
        v += bias[col];
    }
    if (flags & FLAG_ROW_BIAS) != 0u {
        v += bias[row];
    }
    let idx = (batch * p.m + row) * p.n + col;
    if (flags & FLAG_ACCUMULATE) != 0u {
        v += f32(c[idx]);
    }
    c[idx] = res(v);
}

// The 16 x 8 register block of one invocation: row r holds columns 0-3 in r<r>_0 and 4-7 in r<r>_1. Only ever
// accessed by name, so every compiler keeps it in registers.
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

// acc += a ⊗ (b0, b1): one step of the outer-product formulation, a holding one value per row.
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

// Store one row's 4 columns, skipping what lies past the edge of C.
fn store4(v: vec4<f32>, row: u32, cols: vec4<u32>, batch: u32) {
    if row < p.m {
        if cols.x < p.n { finish(v.x, row, cols.x, batch); }
        if cols.y < p.n { finish(v.y, row, cols.y, batch); }
        if cols.z < p.n { finish(v.z, row, cols.z, batch); }
        if cols.w < p.n { finish(v.w, row, cols.w, batch); }
    }
}

const TM: u32 = 16u; // rows per workgroup (and per invocation)
const TN: u32 = 8u;  // columns per invocation
const WG: u32 = 64u; // invocations per workgroup

@compute @workgroup_size(64, 1, 1)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let batch = wg.z;
    let row0 = wg.y * TM;
    let a_base = batch * p.a_batch;
    let b_base = batch * p.b_batch;
    // Rows and columns past the edge are clamped for loading (always in bounds, no divergent branches in the
    // inner loop) and skipped when storing.
    let last_row = p.m - 1u;
    let ar0 = a_base + min(row0 + 0u, last_row) * p.a_row;
    let ar1 = a_base + min(row0 + 1u, last_row) * p.a_row;
    let ar2 = a_base + min(row0 + 2u, last_row) * p.a_row;
    let ar3 = a_base + min(row0 + 3u, last_row) * p.a_row;
    let ar4 = a_base + min(row0 + 4u, last_row) * p.a_row;
    let ar5 = a_base + min(row0 + 5u, last_row) * p.a_row;
    let ar6 = a_base + min(row0 + 6u, last_row) * p.a_row;
    let ar7 = a_base + min(row0 + 7u, last_row) * p.a_row;
    let ar8 = a_base + min(row0 + 8u, last_row) * p.a_row;
    let ar9 = a_base + min(row0 + 9u, last_row) * p.a_row;
    let ar10 = a_base + min(row0 + 10u, last_row) * p.a_row;
    let ar11 = a_base + min(row0 + 11u, last_row) * p.a_row;
    let ar12 = a_base + min(row0 + 12u, last_row) * p.a_row;
    let ar13 = a_base + min(row0 + 13u, last_row) * p.a_row;
    let ar14 = a_base + min(row0 + 14u, last_row) * p.a_row;
    let ar15 = a_base + min(row0 + 15u, last_row) * p.a_row;
    let col0 = wg.x * WG * TN + lid.x;
    // An invocation whose first column is past the edge has no column to compute (no barrier follows: leaving
    // early is safe); a narrow problem (a small batch's last layers) would otherwise run whole masked blocks.
    if (col0 >= p.n) {
        return;
    }
    let c0 = vec4<u32>(col0) + vec4<u32>(0u, 1u, 2u, 3u) * WG;
    let c1 = vec4<u32>(col0) + vec4<u32>(4u, 5u, 6u, 7u) * WG;
    let last_col = vec4<u32>(p.n - 1u);
    let bc0 = min(c0, last_col) * p.b_col + vec4<u32>(b_base);
    let bc1 = min(c1, last_col) * p.b_col + vec4<u32>(b_base);
    var acc: Block;
    for (var kk = 0u; kk < p.k; kk++) {
        let b_off = kk * p.b_row;
        let a_off = kk * p.a_col;
        let b0 = vec4<f32>(b_at(bc0.x + b_off), b_at(bc0.y + b_off), b_at(bc0.z + b_off), b_at(bc0.w + b_off));
        let b1 = vec4<f32>(b_at(bc1.x + b_off), b_at(bc1.y + b_off), b_at(bc1.z + b_off), b_at(bc1.w + b_off));
        let av = array<f32, 16>(
            a_at(ar0 + a_off),
            a_at(ar1 + a_off),
            a_at(ar2 + a_off),
            a_at(ar3 + a_off),
            a_at(ar4 + a_off),
            a_at(ar5 + a_off),
            a_at(ar6 + a_off),
            a_at(ar7 + a_off),
            a_at(ar8 + a_off),
            a_at(ar9 + a_off),
            a_at(ar10 + a_off),
            a_at(ar11 + a_off),
            a_at(ar12 + a_off),
            a_at(ar13 + a_off),
            a_at(ar14 + a_off),
            a_at(ar15 + a_off),
        );
        rank1_update(&acc, av, b0, b1);
    }
    store4(acc.r0_0, row0 + 0u, c0, batch);
    store4(acc.r0_1, row0 + 0u, c1, batch);
    store4(acc.r1_0, row0 + 1u, c0, batch);
    store4(acc.r1_1, row0 + 1u, c1, batch);
    store4(acc.r2_0, row0 + 2u, c0, batch);
    store4(acc.r2_1, row0 + 2u, c1, batch);
    store4(acc.r3_0, row0 + 3u, c0, batch);
    store4(acc.r3_1, row0 + 3u, c1, batch);
    store4(acc.r4_0, row0 + 4u, c0, batch);
    store4(acc.r4_1, row0 + 4u, c1, batch);
    store4(acc.r5_0, row0 + 5u, c0, batch);
    store4(acc.r5_1, row0 + 5u, c1, batch);
    store4(acc.r6_0, row0 + 6u, c0, batch);
    store4(acc.r6_1, row0 + 6u, c1, batch);
    store4(acc.r7_0, row0 + 7u, c0, batch);
    store4(acc.r7_1, row0 + 7u, c1, batch);
    store4(acc.r8_0, row0 + 8u, c0, batch);
    store4(acc.r8_1, row0 + 8u, c1, batch);
    store4(acc.r9_0, row0 + 9u, c0, batch);
    store4(acc.r9_1, row0 + 9u, c1, batch);
    store4(acc.r10_0, row0 + 10u, c0, batch);
    store4(acc.r10_1, row0 + 10u, c1, batch);
    store4(acc.r11_0, row0 + 11u, c0, batch);
    store4(acc.r11_1, row0 + 11u, c1, batch);
    store4(acc.r12_0, row0 + 12u, c0, batch);
    store4(acc.r12_1, row0 + 12u, c1, batch);
    store4(acc.r13_0, row0 + 13u, c0, batch);
    store4(acc.r13_1, row0 + 13u, c1, batch);
    store4(acc.r14_0, row0 + 14u, c0, batch);
    store4(acc.r14_1, row0 + 14u, c1, batch);
    store4(acc.r15_0, row0 + 15u, c0, batch);
    store4(acc.r15_1, row0 + 15u, c1, batch);
}

@compute @workgroup_size(16, 16, 1)
fn matmul_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let row = gid.y;
    let batch = gid.z;
    if row >= p.m || col >= p.n {
        return;
    }
    var acc = 0.0;
    let a_base = batch * p.a_batch + row * p.a_row;
    let b_base = batch * p.b_batch + col * p.b_col;
    for (var kk = 0u; kk < p.k; kk++) {
        acc = fma(a_at(a_base + kk * p.a_col), b_at(b_base + kk * p.b_row), acc);
    }
    finish(acc, row, col, batch);
}

// matmul_shared: the workgroup-memory GEMM, its tile set by pipeline constants (one pipeline per configuration;
// src/ops/matmul.rs lists them and the autotuner picks one per problem). A workgroup of SH_WX x SH_WY invocations
// computes a BM x BN tile of C, BM = SH_WY * SH_TM and BN = SH_WX * SH_TN, walking K in steps of SH_BK:
//   1. the invocations copy the BM x SH_BK slab of A and the SH_BK x BN slab of B into workgroup memory together
//      (consecutive invocations read consecutive addresses along whichever of A's / B's dimensions is contiguous;
//      elements past the edge are zeros), A transposed and its rows padded by one against bank conflicts, B as
//      vec4s;
//   2. each invocation accumulates its SH_TM x SH_TN block (rows ty * SH_TM + i; column quads tx + SH_WX * j, so
//      a quarter-warp reads consecutive vec4s) in registers, every value of A and B in workgroup memory read by
//      SH_WX or SH_WY invocations instead of each from global memory.
// Limits of the arrays below: SH_TM <= 8, SH_TN in {4, 8}, SH_BK * (BM + 1) <= 1040, SH_BK * BN / 4 <= 256 (8 KiB
// of workgroup memory in all, half of WebGPU's default 16 KiB). The loop bounds are pipeline constants, so drivers
// unroll them and keep the block in registers (lavapipe does not: there the register-blocked `matmul` wins, which
// is what the autotuner finds).
override SH_WX: u32 = 16u;
override SH_WY: u32 = 16u;
override SH_TM: u32 = 4u;
override SH_TN: u32 = 4u;
override SH_BK: u32 = 16u;

var<workgroup> tile_a: array<f32, 1040>;      // SH_BK x (BM + 1): tile_a[kk * (BM + 1) + row]
var<workgroup> tile_b: array<vec4<f32>, 256>; // SH_BK x BN / 4: tile_b[kk * BN / 4 + quad]

@compute @workgroup_size(SH_WX, SH_WY, 1)
fn matmul_shared(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let bm = SH_WY * SH_TM;
    let bn = SH_WX * SH_TN;
    let a_stride = bm + 1u;
    let quads = bn / 4u;
    let tn4 = SH_TN / 4u;
    let threads = SH_WX * SH_WY;
    let t = lid.y * SH_WX + lid.x;
    let batch = wg.z;
    let row0 = wg.y * bm;
    let col0 = wg.x * bn;
    let a_base = batch * p.a_batch;
    let b_base = batch * p.b_batch;
    // Copy order: along K first where A's rows are contiguous in K (the usual layout), along M where A is stored
    // transposed; the same for B along N or K.
    let a_k_fast = p.a_col == 1u;
    let b_n_fast = p.b_col == 1u || p.b_row != 1u;
    var acc: array<vec4<f32>, 16>;
    for (var k0 = 0u; k0 < p.k; k0 += SH_BK) {
        for (var e = t; e < bm * SH_BK; e += threads) {
            var r: u32;
            var kk: u32;
            if a_k_fast {
                r = e / SH_BK;
                kk = e % SH_BK;
            } else {
                r = e % bm;
                kk = e / bm;
            }
            let row = row0 + r;
            let k = k0 + kk;
            let inside = row < p.m && k < p.k;
            let idx = a_base + min(row, p.m - 1u) * p.a_row + min(k, p.k - 1u) * p.a_col;
            tile_a[kk * a_stride + r] = select(0.0, a_at(idx), inside);
        }
        for (var e = t; e < quads * SH_BK; e += threads) {
            var q: u32;
            var kk: u32;
            if b_n_fast {
                q = e % quads;
                kk = e / quads;
            } else {
                q = e / SH_BK;
                kk = e % SH_BK;
            }
            let k = k0 + kk;
            let k_at = b_base + min(k, p.k - 1u) * p.b_row;
            var v = vec4<f32>(0.0);
            for (var j = 0u; j < 4u; j++) {
                let col = col0 + q * 4u + j;
                if k < p.k && col < p.n {
                    v[j] = b_at(k_at + col * p.b_col);
                }
            }
            tile_b[kk * quads + q] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < SH_BK; kk++) {
            var av: array<f32, 8>;
            for (var i = 0u; i < SH_TM; i++) {
                av[i] = tile_a[kk * a_stride + lid.y * SH_TM + i];
            }
            var bv: array<vec4<f32>, 2>;
            for (var j = 0u; j < tn4; j++) {
                bv[j] = tile_b[kk * quads + lid.x + SH_WX * j];
            }
            for (var i = 0u; i < SH_TM; i++) {
                for (var j = 0u; j < tn4; j++) {
                    acc[i * 2u + j] = fma(vec4<f32>(av[i]), bv[j], acc[i * 2u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < SH_TM; i++) {
        let row = row0 + lid.y * SH_TM + i;
        for (var j = 0u; j < tn4; j++) {
            let c4 = col0 + (lid.x + SH_WX * j) * 4u;
            store4(acc[i * 2u + j], row, vec4<u32>(c4) + vec4<u32>(0u, 1u, 2u, 3u), batch);
        }
    }
}

// matmul_staged: the workgroup-memory GEMM written for GPU compilers the way `matmul` is written for lavapipe:
// nothing that must live in registers is an indexed array. 256 invocations (16 x 16) compute a 128 x 128 tile of
// C, walking K in slabs of 8:
//   - Staging: the 128 x 8 slab of A and the 8 x 128 slab of B are 1,024 values each, four per invocation, read
//     so that consecutive invocations touch consecutive addresses of whichever dimension is contiguous (K or M for
//     A, N or K for B), out-of-range values as zeros. They wait in eight named registers while the products of the
//     current slab run (the loads overlap the arithmetic), then go to workgroup memory K-major, each K row padded
//     from 32 to 33 vec4s so that neither copy order makes two invocations of a warp hit one bank.
//   - Products: invocation (tx, ty) owns rows ty * 4 + i and 64 + ty * 4 + i, columns tx * 4 + j and
//     64 + tx * 4 + j (i, j < 4): an 8 x 8 block in the 16 named vec4 accumulators of `Block8`. Per K step it reads
//     two vec4s of A (the same for 16 invocations: a broadcast) and two of B (16 consecutive vec4s across the
//     warp: no bank conflict) for 64 fused multiply-adds.
//   - Two barriers per slab: after the staging store (the slab is complete) and after the products (nobody still
//     reads it when the next one is stored). No invocation returns early; every loop bound is uniform.
// 8.25 KiB of workgroup memory. The epilogue flags are a pipeline constant as for `matmul`.
// Dispatch: (ceil(N / 128), ceil(M / 128), batch).
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

// Where invocation t's four staged values of a slab sit: element e = t + 256 * i (i < 4) of the slab, laid out
// along the contiguous dimension. `fast_k`: the slab is read along K (8 values per row or column of C), else along
// the 128 rows (A) or columns (B). Returns (row or column in the tile, K in the slab) for each of the four.
fn staged_slots(t: u32, fast_k: bool) -> array<vec4<u32>, 2> {
    let e = vec4<u32>(t) + vec4<u32>(0u, 256u, 512u, 768u);
    let along = select(e & vec4<u32>(ST_TILE - 1u), e >> vec4<u32>(3u), fast_k);
    let kk = select(e >> vec4<u32>(7u), e & vec4<u32>(ST_BK - 1u), fast_k);
    return array<vec4<u32>, 2>(along, kk);
}

// A's value at (row, k), zero outside the matrix (the address is clamped, so the read itself is in bounds).
fn staged_a_at(a_base: u32, row: u32, k: u32) -> f32 {
    let idx = a_base + min(row, p.m - 1u) * p.a_row + min(k, p.k - 1u) * p.a_col;
    return select(0.0, a_at(idx), row < p.m && k < p.k);
}

// B's value at (k, col), zero outside the matrix.
fn staged_b_at(b_base: u32, k: u32, col: u32) -> f32 {
    let idx = b_base + min(k, p.k - 1u) * p.b_row + min(col, p.n - 1u) * p.b_col;
    return select(0.0, b_at(idx), k < p.k && col < p.n);
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

@compute @workgroup_size(16, 16, 1)
fn matmul_staged(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.y * 16u + lid.x;
    let batch = wg.z;
    let row0 = wg.y * ST_TILE;
    let col0 = wg.x * ST_TILE;
    let a_base = batch * p.a_batch;
    let b_base = batch * p.b_batch;
    let sa = staged_slots(t, p.a_col == 1u);
    let sb = staged_slots(t, p.b_col != 1u);
    let a_rows = vec4<u32>(row0) + sa[0];
    let b_cols = vec4<u32>(col0) + sb[0];
    // The first slab (none when K = 0: then A and B may be empty buffers).
    var na: vec4<f32>;
    var nb: vec4<f32>;
    if p.k > 0u {
        na = vec4<f32>(
            staged_a_at(a_base, a_rows.x, sa[1].x),
            staged_a_at(a_base, a_rows.y, sa[1].y),
            staged_a_at(a_base, a_rows.z, sa[1].z),
            staged_a_at(a_base, a_rows.w, sa[1].w),
        );
        nb = vec4<f32>(
            staged_b_at(b_base, sb[1].x, b_cols.x),
            staged_b_at(b_base, sb[1].y, b_cols.y),
            staged_b_at(b_base, sb[1].z, b_cols.z),
            staged_b_at(b_base, sb[1].w, b_cols.w),
        );
    }
    var acc: Block8;
    let slabs = (p.k + ST_BK - 1u) / ST_BK;
    for (var s = 0u; s < slabs; s++) {
        stage_a(sa[0].x, sa[1].x, na.x);
        stage_a(sa[0].y, sa[1].y, na.y);
        stage_a(sa[0].z, sa[1].z, na.z);
        stage_a(sa[0].w, sa[1].w, na.w);
        stage_b(sb[0].x, sb[1].x, nb.x);
        stage_b(sb[0].y, sb[1].y, nb.y);
        stage_b(sb[0].z, sb[1].z, nb.z);
        stage_b(sb[0].w, sb[1].w, nb.w);
        workgroupBarrier();
        // The next slab's loads, in flight during the products (past K they read zeros and are never used).
        let k_next = vec4<u32>((s + 1u) * ST_BK);
        let ka = k_next + sa[1];
        let kb = k_next + sb[1];
        na = vec4<f32>(
            staged_a_at(a_base, a_rows.x, ka.x),
            staged_a_at(a_base, a_rows.y, ka.y),
            staged_a_at(a_base, a_rows.z, ka.z),
            staged_a_at(a_base, a_rows.w, ka.w),
        );
        nb = vec4<f32>(
            staged_b_at(b_base, kb.x, b_cols.x),
            staged_b_at(b_base, kb.y, b_cols.y),
            staged_b_at(b_base, kb.z, b_cols.z),
            staged_b_at(b_base, kb.w, b_cols.w),
        );
        staged_products(&acc, lid.x, lid.y);
        workgroupBarrier();
    }
    let r0 = row0 + lid.y * 4u;
    let r1 = r0 + 64u;
    let c0 = vec4<u32>(col0 + lid.x * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
    let c1 = c0 + vec4<u32>(64u);
    store4(acc.r0_0, r0, c0, batch);
    store4(acc.r0_1, r0, c1, batch);
    store4(acc.r1_0, r0 + 1u, c0, batch);
    store4(acc.r1_1, r0 + 1u, c1, batch);
    store4(acc.r2_0, r0 + 2u, c0, batch);
    store4(acc.r2_1, r0 + 2u, c1, batch);
    store4(acc.r3_0, r0 + 3u, c0, batch);
    store4(acc.r3_1, r0 + 3u, c1, batch);
    store4(acc.r4_0, r1, c0, batch);
    store4(acc.r4_1, r1, c1, batch);
    store4(acc.r5_0, r1 + 1u, c0, batch);
    store4(acc.r5_1, r1 + 1u, c1, batch);
    store4(acc.r6_0, r1 + 2u, c0, batch);
    store4(acc.r6_1, r1 + 2u, c1, batch);
    store4(acc.r7_0, r1 + 3u, c0, batch);
    store4(acc.r7_1, r1 + 3u, c1, batch);
}
