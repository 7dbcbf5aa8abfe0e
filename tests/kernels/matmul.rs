//! matmul and matmul_naive against reference::matmul.
//!
//! Tolerance: inputs are uniform in [-1, 1]; an f32 dot product of length K has a rounding error of a few ulps
//! times sqrt(K) * |typical term|, so atol = 2e-6 * K + 1e-6 with rtol 1e-5 leaves a wide margin and still catches
//! any wrong element (those are off by O(1)).
//!
//! In f16 (issue 14): A and B are f16 (activations), or one of them an f32 weight (a linear layer's or a 1x1
//! convolution's master weight, read as it is); C is f16 (an activation: one more rounding, `F16_STORE`) or f32 (a
//! weight gradient from two f16 operands: the f32 tolerance), against the f64 reference on the same inputs (the
//! f16 ones rounded).

use wgtune::ops::matmul::{matmul, MatmulKernel, MatmulOptions};
use wgtune::reference::{self, widen, MatmulShape, SplitMix};

use crate::common::*;

struct Case {
    s: MatmulShape,
    bias: bool,
    accumulate: bool,
    /// The bias has one value per row (M) instead of per column (N).
    row_bias: bool,
}

fn run_case(kernel: MatmulKernel, case: &Case, seed: usize) {
    run_case_at(kernel, case, seed, (false, false, false));
}

/// `half` = (A in f16, B in f16, C in f16).
fn run_case_at(kernel: MatmulKernel, case: &Case, seed: usize, half: (bool, bool, bool)) {
    let s = &case.s;
    let g = gpu();
    let mut rng = SplitMix(seed as u64);
    let (a_up, _) = io(half.0);
    let (b_up, _) = io(half.1);
    let (c_up, c_read) = io(half.2);
    let round = |v: Vec<f32>, r: bool| if r { to_f16(&v) } else { v };
    let a_batch = if s.a_batched { s.batch } else { 1 };
    let b_batch = if s.b_batched { s.batch } else { 1 };
    let a_dims = if s.trans_a { [a_batch, s.k, s.m] } else { [a_batch, s.m, s.k] };
    let b_dims = if s.trans_b { [b_batch, s.n, s.k] } else { [b_batch, s.k, s.n] };
    let a_data = round(rng.vec_f32(a_dims.iter().product(), -1.0, 1.0), half.0);
    let b_data = round(rng.vec_f32(b_dims.iter().product(), -1.0, 1.0), half.1);
    let bias_len = if case.row_bias { s.m } else { s.n };
    let bias_data = rng.vec_f32(bias_len, -1.0, 1.0);
    let c0_data = round(rng.vec_f32(s.batch * s.m * s.n, -1.0, 1.0), half.2);
    // 2-D tensors when there is one matrix, to exercise the shared-operand path.
    let dims = |d: [usize; 3], batched: bool| if batched { d.to_vec() } else { d[1..].to_vec() };
    let a = a_up(&dims(a_dims, s.a_batched), &a_data, "A");
    let b = b_up(&dims(b_dims, s.b_batched), &b_data, "B");
    let bias = upload(&[bias_len], &bias_data, "bias");
    let c_start = if case.accumulate { c0_data.clone() } else { vec![f32::NAN; s.batch * s.m * s.n] };
    let c = c_up(&[s.batch, s.m, s.n], &c_start, "C");
    let opts = MatmulOptions {
        trans_a: s.trans_a,
        trans_b: s.trans_b,
        accumulate: case.accumulate,
        bias_per_row: case.row_bias,
    };
    let d = matmul(g, kernel, &a, &b, case.bias.then_some(&bias), &c, opts, "matmul test").expect("dispatch");
    g.run("matmul test", &[&d]).expect("run");
    let column_bias = (case.bias && !case.row_bias).then(|| widen(&bias_data));
    let mut want = reference::matmul(
        s,
        &widen(&a_data),
        &widen(&b_data),
        column_bias.as_deref(),
        case.accumulate.then(|| widen(&c0_data)).as_deref(),
    );
    if case.bias && case.row_bias {
        want.iter_mut().enumerate().for_each(|(i, w)| *w += bias_data[(i / s.n) % s.m] as f64);
    }
    let what = format!(
        "{} {:?} bias={} row_bias={} acc={} f16 (A, B, C)={half:?}",
        kernel.name(),
        s,
        case.bias,
        case.row_bias,
        case.accumulate
    );
    let (store_atol, store_rtol) = if half.2 { F16_STORE } else { (0.0, 0.0) };
    assert_close(&c_read(&c), &want, 2e-6 * s.k as f64 + 1e-6 + store_atol, 1e-5 + store_rtol, &what);
}

fn plain(m: usize, n: usize, k: usize) -> Case {
    Case { s: MatmulShape::new(1, m, n, k), bias: false, accumulate: false, row_bias: false }
}

/// One test per awkward size, each run through every kernel: 1, primes, an exact tile (16 x 512), one past a
/// tile, many workgroups along N, many along M, a long K, past the 128 x 128 tiles both ways.
macro_rules! size_tests {
    ($($name:ident: ($m:expr, $n:expr, $k:expr),)*) => {$(
        #[test]
        fn $name() {
            for kernel in MatmulKernel::ALL {
                run_case(kernel, &plain($m, $n, $k), $m * 1000 + $n + $k);
            }
        }
    )*};
}

size_tests! {
    size_1x1x1: (1, 1, 1),
    size_1x7x3: (1, 7, 3),
    size_5x1x9: (5, 1, 9),
    size_17x13x11: (17, 13, 11),
    size_exact_tile_16x512x8: (16, 512, 8),
    size_one_past_tile_33x515x31: (33, 515, 31),
    size_wide_3x1031x2: (3, 1031, 2),
    size_tall_131x37x64: (131, 37, 64),
    size_long_k_2x3x1000: (2, 3, 1000),
    size_past_big_tiles_131x259x37: (131, 259, 37),
}

/// The three transposed forms backward needs: dA = dC·Bᵀ (trans_b), dB = Aᵀ·dC (trans_a), and both.
#[test]
fn transposed_operands_match_reference() {
    for kernel in MatmulKernel::ALL {
        for (ta, tb) in [(true, false), (false, true), (true, true)] {
            let s = MatmulShape { trans_a: ta, trans_b: tb, ..MatmulShape::new(1, 23, 29, 19) };
            run_case(kernel, &Case { s, bias: false, accumulate: false, row_bias: false }, 300);
            // Past a 128 x 128 tile in both directions, K past two slabs of 8.
            let s = MatmulShape { trans_a: ta, trans_b: tb, ..MatmulShape::new(1, 130, 133, 17) };
            run_case(kernel, &Case { s, bias: false, accumulate: false, row_bias: false }, 301);
        }
    }
}

#[test]
fn bias_and_accumulate_match_reference() {
    for kernel in MatmulKernel::ALL {
        for (bias, accumulate, row_bias) in
            [(true, false, false), (false, true, false), (true, true, false), (true, false, true)]
        {
            run_case(kernel, &Case { s: MatmulShape::new(2, 19, 530, 7), bias, accumulate, row_bias }, 400);
        }
    }
}

/// Batched products, with A or B shared across the batch (a linear layer applied to a batch of matrices).
#[test]
fn batched_and_shared_operands_match_reference() {
    for kernel in MatmulKernel::ALL {
        for (a_batched, b_batched) in [(true, true), (true, false), (false, true)] {
            let s = MatmulShape { a_batched, b_batched, ..MatmulShape::new(3, 18, 21, 5) };
            run_case(kernel, &Case { s, bias: true, accumulate: false, row_bias: false }, 500);
        }
    }
}

/// The f16 variants (activations in f16; f16 operands with an f32 weight-gradient result; an f32 weight as A, as a
/// 1x1 convolution reads it, or as B, as a linear layer does, with f16 activations) on awkward sizes, transposed,
/// batched and shared operands, bias and accumulation.
#[test]
fn f16_variants_match_reference() {
    for kernel in MatmulKernel::ALL {
        for half in [(true, true, true), (true, true, false), (false, true, true), (true, false, true)] {
            for (i, (m, n, k)) in [(1, 1, 1), (17, 13, 11), (33, 515, 31), (2, 3, 1000)].into_iter().enumerate() {
                run_case_at(kernel, &plain(m, n, k), 600 + i, half);
            }
            for (ta, tb) in [(true, false), (false, true), (true, true)] {
                let s = MatmulShape { trans_a: ta, trans_b: tb, ..MatmulShape::new(1, 23, 29, 19) };
                run_case_at(kernel, &Case { s, bias: false, accumulate: false, row_bias: false }, 610, half);
            }
            for (bias, accumulate, row_bias) in [(true, true, false), (true, false, true)] {
                let s = MatmulShape::new(2, 19, 530, 7);
                run_case_at(kernel, &Case { s, bias, accumulate, row_bias }, 620, half);
            }
            let s = MatmulShape { a_batched: false, ..MatmulShape::new(3, 18, 21, 5) };
            run_case_at(kernel, &Case { s, bias: true, accumulate: false, row_bias: false }, 630, half);
        }
    }
}

#[test]
fn shape_errors_name_both_shapes() {
    let a = upload(&[3, 4], &[0.5; 12], "A");
    let b = upload(&[5, 2], &[0.5; 10], "B");
    let c = poisoned(&[3, 2], "C");
    let err = matmul(gpu(), MatmulKernel::Tiled, &a, &b, None, &c, MatmulOptions::default(), "bad")
        .err()
        .expect("4 != 5 must be refused")
        .to_string();
    assert!(err.contains("[3, 4]") && err.contains("[5, 2]") && err.contains("4 vs 5"), "{err}");
}

/// Split-K (a weight gradient's product on a big GPU; see `split_k`): every kernel, every transposed form, split
/// counts from 1 part to one row of K per part, overwriting and accumulating, f32 and f16 operands (C f32), the
/// partial sums poisoned; K = 30 and 105 (splits 2, 3, 5, 6, 15, 30 and 7, 21, 105). A split that does not divide K,
/// partial sums of the wrong shape and a batched product are refused.
#[test]
fn split_k_matches_reference() {
    use wgtune::ops::matmul::{matmul_split_k, split_k, split_k_scratch};
    let g = gpu();
    let mut rng = SplitMix(77);
    for (m, n, k, splits) in [(7, 13, 30, &[1, 2, 3, 5, 6, 15, 30][..]), (17, 520, 105, &[7, 21, 105][..])] {
        for (trans_a, trans_b) in [(true, false), (false, false), (false, true), (true, true)] {
            for half in [false, true] {
                let (up, _) = io(half);
                let a_dims = if trans_a { [k, m] } else { [m, k] };
                let b_dims = if trans_b { [n, k] } else { [k, n] };
                let round = |v: Vec<f32>| if half { to_f16(&v) } else { v };
                let a_data = round(rng.vec_f32(m * k, -1.0, 1.0));
                let b_data = round(rng.vec_f32(k * n, -1.0, 1.0));
                let (a, b) = (up(&a_dims, &a_data, "A"), up(&b_dims, &b_data, "B"));
                let s = MatmulShape { trans_a, trans_b, ..MatmulShape::new(1, m, n, k) };
                for &parts in splits {
                    for accumulate in [false, true] {
                        let kernel = [MatmulKernel::Tiled, MatmulKernel::Shared32, MatmulKernel::Shared128][parts % 3];
                        let c0 = rng.vec_f32(m * n, -1.0, 1.0);
                        let start = if accumulate { c0.clone() } else { vec![f32::NAN; m * n] };
                        let c = upload(&[m, n], &start, "C");
                        let partials = (parts > 1).then(|| poisoned(&[parts, m, n], "partials"));
                        let opts = MatmulOptions { trans_a, trans_b, accumulate, ..Default::default() };
                        let steps =
                            matmul_split_k(g, kernel, &a, &b, &c, opts, partials.as_ref(), "split-K").expect("split-K");
                        assert_eq!(steps.len(), if parts > 1 { 2 } else { 1 });
                        g.run("split-K test", &steps.iter().collect::<Vec<_>>()).expect("run");
                        let c0 = accumulate.then(|| widen(&c0));
                        let want = reference::matmul(&s, &widen(&a_data), &widen(&b_data), None, c0.as_deref());
                        let what = format!("{} {s:?} splits {parts} acc={accumulate} f16={half}", kernel.name());
                        assert_close(&read(&c), &want, 2e-6 * k as f64 + 1e-6, 1e-5, &what);
                    }
                }
            }
        }
    }
    let (a, b, c) =
        (upload(&[30, 7], &[0.5; 210], "A"), upload(&[30, 13], &[0.5; 390], "B"), upload(&[7, 13], &[0.0; 91], "C"));
    let opts = MatmulOptions { trans_a: true, ..Default::default() };
    for (bad, why) in
        [(poisoned(&[4, 7, 13], "p4"), "dividing K = 30"), (poisoned(&[3, 13, 7], "p3"), "(splits, 7, 13)")]
    {
        let e = matmul_split_k(g, MatmulKernel::Tiled, &a, &b, &c, opts, Some(&bad), "dw").err().expect("refused");
        assert!(e.to_string().contains(why) && e.to_string().contains("'dw'"), "{e}");
    }
    let (ab, cb) = (upload(&[2, 30, 7], &[0.5; 420], "A2"), upload(&[2, 7, 13], &[0.0; 182], "C2"));
    let e = matmul_split_k(g, MatmulKernel::Tiled, &ab, &b, &cb, opts, Some(&poisoned(&[3, 7, 13], "p")), "dw");
    assert!(e.err().expect("refused").to_string().contains("unbatched"));
    // This adapter's own choice: none on a software adapter, ViT-S's count on a GPU; never for a batched product or
    // one with a bias.
    let own = if g.is_software() { 1 } else { 16 };
    assert_eq!(split_k(g, 384, 1536, 6304, 1, false), own);
    assert_eq!(split_k_scratch(g, 384, 1536, 6304), (own > 1).then(|| vec![own, 384, 1536]));
    assert_eq!(split_k(g, 384, 1536, 6304, 2, false), 1);
    assert_eq!(split_k(g, 384, 1536, 6304, 1, true), 1);
}
