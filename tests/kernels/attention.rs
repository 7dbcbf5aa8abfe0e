//! Permute and softmax of scaled rows (attention's pieces) against the reference, forward and backward, with
//! accumulation. Permute copies exactly; softmax is exp, a sum and a division per element: atol 1e-6, rtol 1e-5.

use wgtune::ops::permute::{inverse, permute, permuted_shape};
use wgtune::ops::softmax::{softmax_rows_backward, softmax_rows_forward};
use wgtune::reference::{self, widen, SplitMix};

use crate::common::*;

#[test]
fn permute_matches_the_reference() {
    let g = gpu();
    let cases: &[(&[usize], &[usize])] = &[
        (&[1], &[0]),
        (&[7, 3], &[1, 0]),
        (&[2, 13, 3, 3, 5], &[2, 0, 3, 1, 4]), // ViT's qkv: (N, T, 3, H, hd) -> (3, N, H, T, hd)
        (&[3, 5, 257], &[0, 2, 1]),            // patch embedding: (N, D, T) -> (N, T, D)
        (&[2, 1, 3, 1, 2, 3, 1, 2], &[7, 6, 5, 4, 3, 2, 1, 0]),
    ];
    for (k, &(shape, perm)) in cases.iter().enumerate() {
        let n: usize = shape.iter().product();
        let mut rng = SplitMix(80 + k as u64);
        let x_data = rng.vec_f32(n, -1.0, 1.0);
        let acc0 = rng.vec_f32(n, -1.0, 1.0);
        let out_shape = permuted_shape(shape, perm).unwrap();
        let x = upload(shape, &x_data, "x");
        let y = poisoned(&out_shape, "y");
        let back = upload(shape, &acc0, "back");
        let steps = [
            permute(g, &x, perm, &y, false, "permute").unwrap(),
            permute(g, &y, &inverse(perm), &back, true, "permute back").unwrap(),
        ];
        g.run("permute", &steps.iter().collect::<Vec<_>>()).expect("run");
        let want = reference::permute(&widen(&x_data), shape, perm);
        assert_close(&read(&y), &want, 0.0, 0.0, &format!("permute {shape:?} by {perm:?}"));
        let restored: Vec<f64> = x_data.iter().zip(&acc0).map(|(&a, &b)| a as f64 + b as f64).collect();
        assert_close(&read(&back), &restored, 1e-6, 1e-6, &format!("inverse permute accumulated {shape:?}"));
    }
    let x = upload(&[2, 3], &[0.0; 6], "x");
    let e = permute(g, &x, &[0, 0], &poisoned(&[2, 2], "y"), false, "bad").err().unwrap().to_string();
    assert!(e.contains("[0, 0] is not a permutation"), "{e}");
}

#[test]
fn softmax_matches_the_reference() {
    let g = gpu();
    // (rows, len, scale, input range): one element, one row, attention's rows of 197 tokens scaled by 1/8, more
    // rows than a workgroup, and scores big enough to overflow exp without the row maximum subtracted.
    for (k, &(rows, len, scale, range)) in
        [(1, 1, 1.0, 1.0), (1, 7, 1.0, 3.0), (6, 197, 0.125, 8.0), (300, 5, 0.5, 2.0), (3, 9, 1.0, 100.0)]
            .iter()
            .enumerate()
    {
        let n = rows * len;
        let mut rng = SplitMix(90 + k as u64);
        let x_data = rng.vec_f32(n, -range, range);
        let dy_data = rng.vec_f32(n, -1.0, 1.0);
        let dx0 = rng.vec_f32(n, -1.0, 1.0);
        let shape = [rows, len];
        let (x, dy) = (upload(&shape, &x_data, "x"), upload(&shape, &dy_data, "dy"));
        let (y, dx) = (poisoned(&shape, "y"), poisoned(&shape, "dx"));
        let dx_acc = upload(&shape, &dx0, "dx accumulated");
        let steps = [
            softmax_rows_forward(g, &x, &y, scale, "softmax").unwrap(),
            softmax_rows_backward(g, &y, &dy, &dx, scale, false, "softmax").unwrap(),
            softmax_rows_backward(g, &y, &dy, &dx_acc, scale, true, "softmax").unwrap(),
        ];
        g.run("softmax", &steps.iter().collect::<Vec<_>>()).expect("run");
        let what = format!("{rows} x {len}, scale {scale}, inputs within {range}");
        let want_y = reference::softmax_rows(&widen(&x_data), len, scale as f64);
        assert_close(&read(&y), &want_y, 1e-6, 1e-5, &format!("softmax {what}"));
        let want_dx = reference::softmax_rows_backward(&want_y, &widen(&dy_data), len, scale as f64);
        assert_close(&read(&dx), &want_dx, 1e-6, 1e-5, &format!("softmax backward {what}"));
        let acc: Vec<f64> = want_dx.iter().zip(&dx0).map(|(w, &o)| w + o as f64).collect();
        assert_close(&read(&dx_acc), &acc, 1e-6, 1e-5, &format!("softmax backward accumulated {what}"));
    }
}

/// Slice (forward, backward writing zeros outside the range, accumulating) and expand against the reference.
#[test]
fn slice_and_expand_match_the_reference() {
    use wgtune::ops::slice::{expand_forward, slice_backward, slice_forward};
    let g = gpu();
    // (shape, start, len): ViT's class token out of (N, T, D), q/k/v out of (1, 3, M), a channel range of NCHW.
    let cases: &[(&[usize], usize, usize)] =
        &[(&[2, 17, 5], 0, 1), (&[1, 3, 301], 1, 1), (&[3, 7, 2, 3], 2, 4), (&[1, 1], 0, 1)];
    for (k, &(shape, start, len)) in cases.iter().enumerate() {
        let (outer, c, inner) = (shape[0], shape[1], shape[2..].iter().product::<usize>());
        let mut part = shape.to_vec();
        part[1] = len;
        let mut rng = SplitMix(100 + k as u64);
        let x_data = rng.vec_f32(outer * c * inner, -1.0, 1.0);
        let dy_data = rng.vec_f32(outer * len * inner, -1.0, 1.0);
        let dx0 = rng.vec_f32(outer * c * inner, -1.0, 1.0);
        let (x, dy) = (upload(shape, &x_data, "x"), upload(&part, &dy_data, "dy"));
        let (y, dx, dx_acc) = (poisoned(&part, "y"), poisoned(shape, "dx"), upload(shape, &dx0, "dx accumulated"));
        let steps = [
            slice_forward(g, &x, &y, start, "slice").unwrap(),
            slice_backward(g, &dy, &dx, start, false, "slice").unwrap(),
            slice_backward(g, &dy, &dx_acc, start, true, "slice").unwrap(),
        ];
        g.run("slice", &steps.iter().collect::<Vec<_>>()).expect("run");
        let what = format!("{shape:?} channels {start}..{}", start + len);
        assert_close(&read(&y), &reference::slice(&widen(&x_data), (outer, c, inner), start, len), 0.0, 0.0, &what);
        let want = reference::slice_backward(&widen(&dy_data), (outer, c, inner), start);
        assert_close(&read(&dx), &want, 0.0, 0.0, &format!("backward {what}"));
        let acc: Vec<f64> = want.iter().zip(&dx0).map(|(w, &o)| w + o as f64).collect();
        assert_close(&read(&dx_acc), &acc, 1e-6, 1e-6, &format!("backward accumulated {what}"));
    }
    for (shape, n) in [(&[1, 1, 7][..], 3), (&[1, 197, 5][..], 2), (&[1][..], 1)] {
        let per: usize = shape.iter().product();
        let x_data = SplitMix(110).vec_f32(per, -1.0, 1.0);
        let mut out_shape = shape.to_vec();
        out_shape[0] = n;
        let (x, y) = (upload(shape, &x_data, "x"), poisoned(&out_shape, "y"));
        g.run("expand", &[&expand_forward(g, &x, &y, "expand").unwrap()]).expect("run");
        assert_close(&read(&y), &reference::expand(&widen(&x_data), n), 0.0, 0.0, &format!("expand {shape:?} x {n}"));
    }
    let e = slice_forward(g, &upload(&[2, 3], &[0.0; 6], "x"), &poisoned(&[2, 2], "y2"), 2, "bad").err().unwrap();
    assert!(e.to_string().contains("'y2' [2, 2] is not channels 2..4"), "{e}");
}
