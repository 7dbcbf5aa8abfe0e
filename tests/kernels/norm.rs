//! Batch norm forward/backward, training and eval, 4-D and 2-D, against the reference. Means and variances are
//! f32 sums of up to ~2000 terms: atol 2e-5, rtol 1e-4.

use wgtune::ops::norm::{batch_norm_backward, batch_norm_forward, BatchNormConfig, BatchNormState, NormAct};
use wgtune::reference::{self, widen, SplitMix};

use crate::common::*;

const ATOL: f64 = 2e-5;
const RTOL: f64 = 1e-4;

fn check(shape: &[usize], cfg: BatchNormConfig, seed: u64) {
    check_at(shape, cfg, seed, false);
}

/// Training and eval forward/backward on f32 activations, or with `half` on f16 ones (the f16 variant, issue 14:
/// x, dy, y, dx in f16; statistics, parameters and their gradients f32): the reference then takes the f16-rounded
/// inputs, and y and dx one f16 rounding more of tolerance (2^-11 relative, 2^-14 absolute).
fn check_at(shape: &[usize], cfg: BatchNormConfig, seed: u64, half: bool) {
    let g = gpu();
    let (n, c) = (shape[0], shape[1]);
    let hw: usize = shape[2..].iter().product();
    let mut rng = SplitMix(seed);
    let mut x_data = rng.vec_f32(n * c * hw, -1.0, 3.0);
    let mut dy_data = rng.vec_f32(n * c * hw, -1.0, 1.0);
    // With a fused activation, a wider scale and a shift put normalized values beyond both of ReLU6's kinks.
    let (gamma_data, beta_data) = if cfg.act == NormAct::None {
        (rng.vec_f32(c, 0.5, 1.5), rng.vec_f32(c, -0.5, 0.5))
    } else {
        (rng.vec_f32(c, 2.0, 5.0), rng.vec_f32(c, 0.5, 2.5))
    };
    let rm_data = rng.vec_f32(c, -0.2, 0.2);
    let rv_data = rng.vec_f32(c, 0.5, 1.5);
    let (up, get) = io(half);
    let x = up(shape, &x_data, "x");
    // With a fused activation backward masks dy in place: each pass gets its own copy, and the masked one is checked.
    let dy = up(shape, &dy_data, "dy");
    let dy2 = up(shape, &dy_data, "dy eval");
    if half {
        (x_data, dy_data) = (to_f16(&x_data), to_f16(&dy_data));
    }
    let nan = |label: &str| up(shape, &vec![f32::NAN; n * c * hw], label);
    // y and dx: the f32 tolerances plus one f16 rounding.
    let (out_atol, out_rtol) = if half { (2f64.powi(-14), 2f64.powi(-11)) } else { (0.0, 0.0) };
    let gamma = upload(&[c], &gamma_data, "gamma");
    let beta = upload(&[c], &beta_data, "beta");
    let running_mean = upload(&[c], &rm_data, "running_mean");
    let running_var = upload(&[c], &rv_data, "running_var");
    let state = BatchNormState { gamma: &gamma, beta: &beta, running_mean: &running_mean, running_var: &running_var };
    let (save_mean, save_var) = (poisoned(&[c], "save_mean"), poisoned(&[c], "save_var"));
    let (y, dx) = (nan("y"), nan("dx"));
    let (dgamma, dbeta) = (poisoned(&[c], "dgamma"), poisoned(&[c], "dbeta"));
    let what = format!("{shape:?} {cfg:?} f16={half}");

    // Training: batch statistics, running update, backward through the statistics.
    let mut steps = batch_norm_forward(g, &x, &state, Some((&save_mean, &save_var)), &y, cfg, "bn").expect("fwd");
    steps.extend(
        batch_norm_backward(
            g,
            &dy,
            &x,
            (&gamma, &beta),
            (&save_mean, &save_var),
            false,
            (&dgamma, &dbeta, &dx),
            cfg,
            false,
            "bn",
        )
        .expect("bwd"),
    );
    g.run("bn train", &steps.iter().collect::<Vec<_>>()).expect("run");
    let (xd, dyd, gd, bd) = (widen(&x_data), widen(&dy_data), widen(&gamma_data), widen(&beta_data));
    let eps = cfg.eps as f64;
    let (mean, var) = reference::batch_norm_statistics(&xd, n, c, hw);
    assert_close(&read(&save_mean), &mean, ATOL, RTOL, &format!("batch mean {what}"));
    assert_close(&read(&save_var), &var, ATOL, RTOL, &format!("batch var {what}"));
    let m = (n * hw) as f64;
    let mom = cfg.momentum as f64;
    let want_rm: Vec<f64> = (0..c).map(|i| (1.0 - mom) * rm_data[i] as f64 + mom * mean[i]).collect();
    let unbias = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
    let want_rv: Vec<f64> = (0..c).map(|i| (1.0 - mom) * rv_data[i] as f64 + mom * var[i] * unbias).collect();
    assert_close(&read(&running_mean), &want_rm, ATOL, RTOL, &format!("running mean {what}"));
    assert_close(&read(&running_var), &want_rv, ATOL, RTOL, &format!("running var {what}"));
    let (want_y, dyd_train) =
        through_act(cfg.act, reference::batch_norm_forward(&xd, c, hw, (&mean, &var), &gd, &bd, eps), &dyd);
    assert_close(&get(&y), &want_y, ATOL + out_atol, RTOL + out_rtol, &format!("train forward {what}"));
    let (want_dx, want_dg, want_db) =
        reference::batch_norm_backward(&dyd_train, &xd, (n, c, hw), &gd, (&mean, &var), eps, false);
    assert_close(&read(&dgamma), &want_dg, ATOL * m, RTOL, &format!("train dgamma {what}"));
    assert_close(&read(&dbeta), &want_db, ATOL * m, RTOL, &format!("train dbeta {what}"));
    assert_close(&get(&dx), &want_dx, ATOL + out_atol, 1e-3 + out_rtol, &format!("train dx {what}"));
    assert_close(&get(&dy), &dyd_train, 0.0, 0.0, &format!("dy masked in place {what}"));

    // Eval: the (now updated) running statistics are used and stay as they are.
    let (rm_now, rv_now) = (read(&running_mean), read(&running_var));
    let (y2, dx2) = (nan("y eval"), nan("dx eval"));
    let mut steps = batch_norm_forward(g, &x, &state, None, &y2, cfg, "bn eval").expect("fwd");
    steps.extend(
        batch_norm_backward(
            g,
            &dy2,
            &x,
            (&gamma, &beta),
            (&running_mean, &running_var),
            true,
            (&dgamma, &dbeta, &dx2),
            cfg,
            false,
            "bn eval",
        )
        .expect("bwd"),
    );
    g.run("bn eval", &steps.iter().collect::<Vec<_>>()).expect("run");
    let (rm, rv) = (widen(&rm_now), widen(&rv_now));
    assert_eq!(read(&running_mean), rm_now, "eval must not touch the running mean");
    let (want_y, dyd_eval) =
        through_act(cfg.act, reference::batch_norm_forward(&xd, c, hw, (&rm, &rv), &gd, &bd, eps), &dyd);
    assert_close(&get(&y2), &want_y, ATOL + out_atol, RTOL + out_rtol, &format!("eval forward {what}"));
    let (want_dx, want_dg, want_db) =
        reference::batch_norm_backward(&dyd_eval, &xd, (n, c, hw), &gd, (&rm, &rv), eps, true);
    assert_close(&get(&dx2), &want_dx, ATOL + out_atol, RTOL + out_rtol, &format!("eval dx {what}"));
    assert_close(&read(&dgamma), &want_dg, ATOL * m, RTOL, &format!("eval dgamma {what}"));
    assert_close(&read(&dbeta), &want_db, ATOL * m, RTOL, &format!("eval dbeta {what}"));
}

/// The reference through a fused activation: y = act(normalized) and dy masked by act' at the normalized values
/// (asserting that the case reaches both sides of every kink the activation has).
fn through_act(act: NormAct, normalized: Vec<f64>, dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    if act != NormAct::None {
        let below = normalized.iter().filter(|&&v| v <= 0.0).count();
        let above = normalized.iter().filter(|&&v| v >= 6.0).count();
        let n = normalized.len();
        assert!(below > 0 && below < n, "the case must have normalized values on both sides of 0: {below} of {n}");
        assert!(act != NormAct::Relu6 || above > 0, "the case must have normalized values above 6");
    }
    let masked = dy.iter().zip(&normalized).map(|(&g, &v)| if act.passes(v) { g } else { 0.0 }).collect();
    (normalized.into_iter().map(|v| act.apply(v)).collect(), masked)
}

#[test]
fn batch_norm_4d_torchvision_eps() {
    check(&[4, 3, 5, 7], BatchNormConfig::default(), 1);
}

#[test]
fn batch_norm_4d_efficientnet_eps_and_momentum() {
    check(&[2, 5, 3, 3], BatchNormConfig { eps: 1e-3, momentum: 0.01, ..Default::default() }, 2);
}

#[test]
fn batch_norm_2d_features() {
    check(&[6, 10], BatchNormConfig::default(), 3);
}

#[test]
fn batch_norm_batch_1_and_large_planes() {
    check(&[1, 4, 3, 3], BatchNormConfig::default(), 4);
    check(&[2, 2, 30, 30], BatchNormConfig::default(), 5);
}

/// Batch norm's f16 variant: 4-D (statistics by workgroup, and by rows for short channels) and 2-D features.
#[test]
fn batch_norm_in_f16() {
    check_at(&[2, 3, 17, 19], BatchNormConfig::default(), 201, true);
    check_at(&[3, 5, 2, 3], BatchNormConfig::default(), 202, true);
    check_at(&[7, 11], BatchNormConfig::default(), 203, true);
}

/// A fused ReLU or ReLU6 (the executor's BN+activation): forward stores the activation of the normalized value,
/// backward masks dy by its derivative, in training and eval, f32 and f16, by workgroup and by rows.
#[test]
fn batch_norm_with_a_fused_activation() {
    for (i, act) in [NormAct::Relu, NormAct::Relu6].into_iter().enumerate() {
        let cfg = BatchNormConfig { act, ..Default::default() };
        let seed = 300 + 10 * i as u64;
        check_at(&[2, 3, 17, 19], cfg, seed, false);
        check_at(&[3, 5, 2, 3], cfg, seed + 1, false);
        check_at(&[13, 7], cfg, seed + 2, false);
        check_at(&[2, 3, 17, 19], cfg, seed + 3, true);
        check_at(&[3, 5, 2, 3], cfg, seed + 4, true);
    }
}
