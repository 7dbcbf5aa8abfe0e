//! Pooling (max, average, global max/avg) and channel concat against the reference. Max pooling and copies are
//! exact (atol 0); averages divide a sum of at most a few dozen terms: atol 1e-6, rtol 1e-6.

use wgtune::gpu::DType;
use wgtune::ops::concat::{concat_backward, concat_forward};
use wgtune::ops::conv::Padding;
use wgtune::ops::pool::*;
use wgtune::reference::{self, widen, SplitMix};

use crate::common::*;

fn check_window(x_shape: [usize; 4], cfg: PoolConfig, seed: u64) {
    check_window_at(x_shape, cfg, seed, false);
}

/// The window kernels on f32 tensors, or with `half` on f16 tensors (the f16 variant, issue 14): then the
/// reference takes the f16-rounded inputs, and sums (max backward, averages) get one f16 rounding of tolerance
/// (2^-11 relative; 2^-14 absolute, f16's smallest normal, as drivers may flush subnormals). Max forward stays exact.
fn check_window_at(x_shape: [usize; 4], cfg: PoolConfig, seed: u64, half: bool) {
    let g = gpu();
    let s = PoolShape::new(&x_shape, cfg).expect("geometry");
    let mut rng = SplitMix(seed);
    let mut x_data = rng.vec_f32(x_shape.iter().product(), -1.0, 1.0);
    let mut dy_data = rng.vec_f32(s.y_shape().iter().product(), -1.0, 1.0);
    let (up, get) = io(half);
    let x = up(&x_shape, &x_data, "x");
    let dy = up(&s.y_shape(), &dy_data, "dy");
    if half {
        (x_data, dy_data) = (to_f16(&x_data), to_f16(&dy_data));
    }
    let nan = |shape: &[usize], label: &str| up(shape, &vec![f32::NAN; shape.iter().product()], label);
    let y_max = nan(&s.y_shape(), "y max");
    let y_avg = nan(&s.y_shape(), "y avg");
    let idx = g.upload_u32(&s.y_shape(), &vec![u32::MAX; s.y_shape().iter().product()], "indices").expect("idx");
    let dx_max = nan(&x_shape, "dx max");
    let dx_avg = nan(&x_shape, "dx avg");
    let steps = [
        max_pool_forward(g, &s, &x, &y_max, &idx, "max fwd").expect("max fwd"),
        max_pool_backward(g, &s, &dy, &idx, &dx_max, false, "max bwd").expect("max bwd"),
        avg_pool_forward(g, &s, &x, &y_avg, "avg fwd").expect("avg fwd"),
        avg_pool_backward(g, &s, &dy, &dx_avg, false, "avg bwd").expect("avg bwd"),
    ];
    g.run("pool test", &steps.iter().collect::<Vec<_>>()).expect("run");
    let (xd, dyd) = (widen(&x_data), widen(&dy_data));
    let what = format!("x {x_shape:?} {cfg:?} f16={half}");
    let (atol, rtol) = if half { (2f64.powi(-14), 2f64.powi(-11) + 1e-6) } else { (1e-6, 1e-6) };
    let (want_y, want_idx) = reference::max_pool_forward(&s, &xd);
    assert_close(&get(&y_max), &want_y, 0.0, 0.0, &format!("max forward {what}"));
    assert_eq!(g.read_u32(&idx).expect("read"), want_idx, "max indices {what}");
    assert_close(
        &get(&dx_max),
        &reference::max_pool_backward(&s, &dyd, &want_idx),
        atol,
        rtol,
        &format!("max backward {what}"),
    );
    assert_close(&get(&y_avg), &reference::avg_pool_forward(&s, &xd), atol, rtol, &format!("avg forward {what}"));
    assert_close(&get(&dx_avg), &reference::avg_pool_backward(&s, &dyd), atol, rtol, &format!("avg backward {what}"));
}

/// The window kernels' f16 variant on the awkward shapes of the f32 tests.
#[test]
fn window_pools_in_f16() {
    check_window_at([2, 3, 7, 7], PoolConfig::square(3, 2, 1), 101, true);
    check_window_at([1, 2, 6, 5], PoolConfig::square(2, 2, 0), 102, true);
    check_window_at([3, 5, 13, 11], PoolConfig::square(3, 1, 1), 103, true);
}

#[test]
fn resnet_stem_max_pool_3x3_stride2_pad1_odd_size() {
    check_window([2, 3, 7, 7], PoolConfig::square(3, 2, 1), 1);
}

#[test]
fn pool_2x2_stride2_batch1() {
    check_window([1, 2, 6, 5], PoolConfig::square(2, 2, 0), 2);
}

#[test]
fn pool_rectangular_asymmetric_padding_both_divisors() {
    let cfg = PoolConfig {
        kernel: (2, 3),
        stride: (1, 2),
        padding: Padding { top: 1, bottom: 0, left: 0, right: 1 },
        count_include_pad: true,
    };
    check_window([2, 1, 9, 4], cfg, 3);
    check_window([2, 1, 9, 4], PoolConfig { count_include_pad: false, ..cfg }, 4);
}

#[test]
fn pool_plane_larger_than_a_workgroup() {
    check_window([1, 2, 20, 20], PoolConfig::square(3, 1, 1), 5);
}

/// fastai's concat pool: max into channels [0, C), mean into [C, 2C) of one (N, 2C) tensor; backward adds both
/// into one dx (the second with accumulate).
fn check_concat_pool(x_shape: [usize; 4], seed: u64) {
    check_concat_pool_at(x_shape, seed, false);
}

/// fastai's concat pool (global max and mean into two halves, backward accumulating both) on f32 tensors, or with
/// `half` on f16 ones against the reference on the f16-rounded inputs: the mean is rounded once, dx twice (the max
/// part is stored, then the mean part added), so 2^-10 relative there.
fn check_concat_pool_at(x_shape: [usize; 4], seed: u64, half: bool) {
    let g = gpu();
    let [n, c, h, w] = x_shape;
    let hw = h * w;
    let mut rng = SplitMix(seed);
    let mut x_data = rng.vec_f32(n * c * hw, -1.0, 1.0);
    let mut dy_data = rng.vec_f32(n * 2 * c, -1.0, 1.0);
    let (up, get) = io(half);
    let x = up(&x_shape, &x_data, "x");
    let y = up(&[n, 2 * c], &vec![f32::NAN; n * 2 * c], "pooled");
    let dy = up(&[n, 2 * c], &dy_data, "dpooled");
    let dx = up(&x_shape, &vec![f32::NAN; n * c * hw], "dx");
    if half {
        (x_data, dy_data) = (to_f16(&x_data), to_f16(&dy_data));
    }
    let idx = g.tensor(&[n, c], DType::U32, "argmax").expect("idx");
    let steps = [
        global_pool_forward(g, GlobalPool::Max, &x, &y, 0, &idx, "max").expect("max"),
        global_pool_forward(g, GlobalPool::Avg, &x, &y, c, &idx, "avg").expect("avg"),
        global_pool_backward(g, GlobalPool::Max, &dy, 0, &idx, &dx, false, "max bwd").expect("max bwd"),
        global_pool_backward(g, GlobalPool::Avg, &dy, c, &idx, &dx, true, "avg bwd").expect("avg bwd"),
    ];
    g.run("concat pool", &steps.iter().collect::<Vec<_>>()).expect("run");
    let xd = widen(&x_data);
    let (maxv, argmax) = reference::global_max_pool_forward(&xd, hw);
    let avg = reference::global_avg_pool_forward(&xd, hw);
    let mut want_y = vec![0.0; n * 2 * c];
    let mut want_dx = vec![0.0; n * c * hw];
    for b in 0..n {
        for ch in 0..c {
            let plane = b * c + ch;
            want_y[b * 2 * c + ch] = maxv[plane];
            want_y[b * 2 * c + c + ch] = avg[plane];
            for i in 0..hw {
                let from_max = if argmax[plane] as usize == i { dy_data[b * 2 * c + ch] as f64 } else { 0.0 };
                want_dx[plane * hw + i] = from_max + dy_data[b * 2 * c + c + ch] as f64 / hw as f64;
            }
        }
    }
    let (atol, rtol) = if half { (2f64.powi(-14), 2f64.powi(-11) + 1e-6) } else { (1e-6, 1e-6) };
    assert_close(&get(&y), &want_y, atol, rtol, &format!("concat pool forward {x_shape:?} f16={half}"));
    assert_eq!(g.read_u32(&idx).expect("read"), argmax, "argmax {x_shape:?}");
    assert_close(&get(&dx), &want_dx, 2.0 * atol, 2.0 * rtol, &format!("concat pool backward {x_shape:?} f16={half}"));
}

/// The global pools' f16 variant: small planes (one invocation per plane), a plane larger than a workgroup, 1x1.
#[test]
fn concat_pool_in_f16() {
    check_concat_pool_at([3, 5, 7, 9], 106, true);
    check_concat_pool_at([2, 2, 33, 35], 110, true);
    check_concat_pool_at([4, 6, 1, 1], 108, true);
}

#[test]
fn concat_pool_small_planes() {
    check_concat_pool([3, 5, 7, 9], 6);
}

#[test]
fn concat_pool_planes_larger_than_a_workgroup_and_1x1() {
    check_concat_pool([2, 3, 17, 19], 7);
    check_concat_pool([2, 2, 33, 35], 10); // 1155 pixels: one workgroup per plane
    check_concat_pool([2, 300, 2, 2], 11); // 600 planes: more than one workgroup of rows
    check_concat_pool([4, 6, 1, 1], 8);
}

#[test]
fn concat_forward_and_backward_copy_channel_slices() {
    let g = gpu();
    let mut rng = SplitMix(9);
    let a_data = rng.vec_f32(2 * 3 * 20, -1.0, 1.0);
    let b_data = rng.vec_f32(2 * 2 * 20, -1.0, 1.0);
    let a = upload(&[2, 3, 4, 5], &a_data, "a");
    let b = upload(&[2, 2, 4, 5], &b_data, "b");
    let out = poisoned(&[2, 5, 4, 5], "out");
    let da = poisoned(&[2, 3, 4, 5], "da");
    let db = poisoned(&[2, 2, 4, 5], "db");
    let steps = [
        concat_forward(g, &a, &out, 0, "cat a").expect("a"),
        concat_forward(g, &b, &out, 3, "cat b").expect("b"),
        concat_backward(g, &out, 0, &da, false, "d a").expect("da"),
        concat_backward(g, &out, 3, &db, false, "d b").expect("db"),
    ];
    g.run("concat", &steps.iter().collect::<Vec<_>>()).expect("run");
    let mut want = Vec::new();
    for n in 0..2 {
        want.extend_from_slice(&a_data[n * 60..(n + 1) * 60]);
        want.extend_from_slice(&b_data[n * 40..(n + 1) * 40]);
    }
    assert_close(&read(&out), &widen(&want), 0.0, 0.0, "concat forward");
    assert_close(&read(&da), &widen(&a_data), 0.0, 0.0, "concat backward a");
    assert_close(&read(&db), &widen(&b_data), 0.0, 0.0, "concat backward b");
    let err = concat_forward(g, &a, &out, 3, "overflow").err().expect("3 + 3 > 5 channels").to_string();
    assert!(err.contains("[2, 3, 4, 5]") && err.contains("[2, 5, 4, 5]"), "{err}");
}
