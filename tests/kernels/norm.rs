//! Batch norm forward/backward, training and eval, 4-D and 2-D, against the reference. Means and variances are
//! f32 sums of up to ~2000 terms: atol 2e-5, rtol 1e-4.

use wgtune::ops::norm::{
    batch_norm_backward, batch_norm_forward, BatchNormConfig, BatchNormGrads, BatchNormState, NormAct, NormSchedule,
};
use wgtune::reference::{self, widen, SplitMix};

use crate::common::*;

const ATOL: f64 = 2e-5;
const RTOL: f64 = 1e-4;

fn check(shape: &[usize], cfg: BatchNormConfig, seed: u64) {
    check_at(shape, cfg, seed, false, false);
}

/// Training and eval forward/backward on f32 activations, or with `half` on f16 ones (the f16 variant, issue 14:
/// x, dy, y, dx in f16; statistics, parameters and their gradients f32): the reference then takes the f16-rounded
/// inputs, and y and dx one f16 rounding more of tolerance (2^-11 relative, 2^-14 absolute). With `residual`, a
/// fused skip connection: y = act(bn(x) + r), and r's gradient (overwritten in training, added to ones in eval).
/// Every training schedule (single-dispatch and split, each by workgroup or by rows as the shape has it; lavapipe
/// binds 9 storage buffers; chunked with chunks of 7 values (fewer than a workgroup's invocations, so most chunks of
/// a channel start inside a plane) and of 1000 (several strides of a workgroup, and a shorter last chunk)).
fn check_at(shape: &[usize], cfg: BatchNormConfig, seed: u64, half: bool, residual: bool) {
    let chunked = [NormSchedule::Chunked { len: 7 }, NormSchedule::Chunked { len: 1000 }];
    for schedule in [NormSchedule::Single, NormSchedule::Split].into_iter().chain(chunked) {
        check_schedule(shape, BatchNormConfig { schedule, ..cfg }, seed, half, residual);
    }
}

fn check_schedule(shape: &[usize], cfg: BatchNormConfig, seed: u64, half: bool, residual: bool) {
    let g = gpu();
    let (n, c) = (shape[0], shape[1]);
    let hw: usize = shape[2..].iter().product();
    let len = n * c * hw;
    let mut rng = SplitMix(seed);
    let mut x_data = rng.vec_f32(len, -1.0, 3.0);
    let mut dy_data = rng.vec_f32(len, -1.0, 1.0);
    // With a fused activation, a wider scale and a shift put normalized values beyond both of ReLU6's kinks.
    let (gamma_data, beta_data) = if cfg.act == NormAct::None {
        (rng.vec_f32(c, 0.5, 1.5), rng.vec_f32(c, -0.5, 0.5))
    } else {
        (rng.vec_f32(c, 2.0, 5.0), rng.vec_f32(c, 0.5, 2.5))
    };
    let rm_data = rng.vec_f32(c, -0.2, 0.2);
    let rv_data = rng.vec_f32(c, 0.5, 1.5);
    let mut r_data = if residual { rng.vec_f32(len, -1.0, 1.0) } else { Vec::new() };
    let (up, get) = io(half);
    let x = up(shape, &x_data, "x");
    // With a fused activation backward masks dy in place: each pass gets its own copy, and the masked one is checked.
    let dy = up(shape, &dy_data, "dy");
    let dy2 = up(shape, &dy_data, "dy eval");
    let r = residual.then(|| up(shape, &r_data, "residual"));
    if half {
        (x_data, dy_data, r_data) = (to_f16(&x_data), to_f16(&dy_data), to_f16(&r_data));
    }
    let nan = |label: &str| up(shape, &vec![f32::NAN; len], label);
    // y and dx: the f32 tolerances plus one f16 rounding.
    let (out_atol, out_rtol) = if half { (2f64.powi(-14), 2f64.powi(-11)) } else { (0.0, 0.0) };
    let gamma = upload(&[c], &gamma_data, "gamma");
    let beta = upload(&[c], &beta_data, "beta");
    let running_mean = upload(&[c], &rm_data, "running_mean");
    let running_var = upload(&[c], &rv_data, "running_var");
    // The chunked schedule's partial sums, poisoned.
    let partials = cfg.schedule.scratch(g, c, n * hw).expect("schedule").map(|s| poisoned(&s, "partials"));
    let partials = partials.as_ref();
    let state =
        BatchNormState { gamma: &gamma, beta: &beta, running_mean: &running_mean, running_var: &running_var, partials };
    let (save_mean, save_var) = (poisoned(&[c], "save_mean"), poisoned(&[c], "save_var"));
    let (y, dx) = (nan("y"), nan("dx"));
    let (dgamma, dbeta) = (poisoned(&[c], "dgamma"), poisoned(&[c], "dbeta"));
    let (dr, dr2) = (nan("dr"), up(shape, &vec![1.0; len], "dr eval"));
    let what = format!("{shape:?} {cfg:?} f16={half} residual={residual}");
    let grads = |dx, dr, accumulate| BatchNormGrads {
        dgamma: &dgamma,
        dbeta: &dbeta,
        dx,
        accumulate_dx: false,
        residual: residual.then_some((dr, accumulate)),
        partials,
    };

    // Training: batch statistics, running update, backward through the statistics.
    let save = Some((&save_mean, &save_var));
    let mut steps = batch_norm_forward(g, &x, &state, save, r.as_ref(), &y, cfg, "bn").expect("fwd");
    let stats = (&save_mean, &save_var);
    let params = (&gamma, &beta);
    steps.extend(
        batch_norm_backward(g, &dy, &x, params, stats, false, &grads(&dx, &dr, false), cfg, "bn").expect("bwd"),
    );
    g.run("bn train", &steps.iter().collect::<Vec<_>>()).expect("run");
    let (xd, dyd, gd, bd, rd) =
        (widen(&x_data), widen(&dy_data), widen(&gamma_data), widen(&beta_data), widen(&r_data));
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
    let normalized = reference::batch_norm_forward(&xd, c, hw, (&mean, &var), &gd, &bd, eps);
    let (want_y, dyd_train) = through(cfg.act, normalized, &rd, &dyd);
    assert_close(&get(&y), &want_y, ATOL + out_atol, RTOL + out_rtol, &format!("train forward {what}"));
    let (want_dx, want_dg, want_db) =
        reference::batch_norm_backward(&dyd_train, &xd, (n, c, hw), &gd, (&mean, &var), eps, false);
    assert_close(&read(&dgamma), &want_dg, ATOL * m, RTOL, &format!("train dgamma {what}"));
    assert_close(&read(&dbeta), &want_db, ATOL * m, RTOL, &format!("train dbeta {what}"));
    assert_close(&get(&dx), &want_dx, ATOL + out_atol, 1e-3 + out_rtol, &format!("train dx {what}"));
    assert_close(&get(&dy), &dyd_train, 0.0, 0.0, &format!("dy masked in place {what}"));
    if residual {
        assert_close(&get(&dr), &dyd_train, 0.0, 0.0, &format!("train residual gradient {what}"));
    }

    // Eval: the (now updated) running statistics are used and stay as they are.
    let (rm_now, rv_now) = (read(&running_mean), read(&running_var));
    let (y2, dx2) = (nan("y eval"), nan("dx eval"));
    let mut steps = batch_norm_forward(g, &x, &state, None, r.as_ref(), &y2, cfg, "bn eval").expect("fwd");
    let stats = (&running_mean, &running_var);
    steps.extend(
        batch_norm_backward(g, &dy2, &x, params, stats, true, &grads(&dx2, &dr2, true), cfg, "bn eval").expect("bwd"),
    );
    g.run("bn eval", &steps.iter().collect::<Vec<_>>()).expect("run");
    let (rm, rv) = (widen(&rm_now), widen(&rv_now));
    assert_eq!(read(&running_mean), rm_now, "eval must not touch the running mean");
    let normalized = reference::batch_norm_forward(&xd, c, hw, (&rm, &rv), &gd, &bd, eps);
    let (want_y, dyd_eval) = through(cfg.act, normalized, &rd, &dyd);
    assert_close(&get(&y2), &want_y, ATOL + out_atol, RTOL + out_rtol, &format!("eval forward {what}"));
    let (want_dx, want_dg, want_db) =
        reference::batch_norm_backward(&dyd_eval, &xd, (n, c, hw), &gd, (&rm, &rv), eps, true);
    assert_close(&get(&dx2), &want_dx, ATOL + out_atol, RTOL + out_rtol, &format!("eval dx {what}"));
    assert_close(&read(&dgamma), &want_dg, ATOL * m, RTOL, &format!("eval dgamma {what}"));
    assert_close(&read(&dbeta), &want_db, ATOL * m, RTOL, &format!("eval dbeta {what}"));
    if residual {
        let want: Vec<f64> = dyd_eval.iter().map(|g| 1.0 + g).collect();
        // One rounding of the sum: f32 (2^-24 relative) or f16.
        assert_close(
            &get(&dr2),
            &want,
            0.0,
            2f64.powi(-24) + out_rtol,
            &format!("eval residual gradient added {what}"),
        );
    }
}

/// The reference of the fused ops: y = act(normalized) + residual (one or the other; no residual when it is
/// empty), and dy masked by act' at the normalized values. Asserts that the case reaches both sides of every kink
/// the activation has.
fn through(act: NormAct, normalized: Vec<f64>, residual: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let v: Vec<f64> =
        if residual.is_empty() { normalized } else { normalized.iter().zip(residual).map(|(v, r)| v + r).collect() };
    if act != NormAct::None {
        let below = v.iter().filter(|&&v| v <= 0.0).count();
        let above = v.iter().filter(|&&v| v >= 6.0).count();
        let n = v.len();
        assert!(below > 0 && below < n, "the case must have values on both sides of 0: {below} of {n}");
        assert!(act != NormAct::Relu6 || above > 0, "the case must have values above 6");
    }
    let masked = dy.iter().zip(&v).map(|(&g, &v)| if act.passes(v) { g } else { 0.0 }).collect();
    (v.into_iter().map(|v| act.apply(v)).collect(), masked)
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
    check_at(&[2, 3, 17, 19], BatchNormConfig::default(), 201, true, false);
    check_at(&[3, 5, 2, 3], BatchNormConfig::default(), 202, true, false);
    check_at(&[7, 11], BatchNormConfig::default(), 203, true, false);
}

/// Fused ops (the executor's graph rewrite): a ReLU or ReLU6 (forward stores the activation, backward masks dy by
/// its derivative) or a residual add (its gradient dy), in training and eval, f32 and f16, by workgroup and by
/// rows; both at once is refused.
#[test]
fn batch_norm_with_a_fused_residual_or_activation() {
    let mut seed = 300;
    for (act, residual) in [(NormAct::Relu, false), (NormAct::Relu6, false), (NormAct::None, true)] {
        let cfg = BatchNormConfig { act, ..Default::default() };
        // By workgroup (N * HW >= 1024, not a multiple of 256) and by rows.
        let f32_cases = [(&[3, 4, 19, 23][..], false), (&[3, 5, 2, 3], false), (&[13, 7], false)];
        for (shape, half) in f32_cases.into_iter().chain([(&[3, 4, 19, 23][..], true), (&[3, 5, 2, 3], true)]) {
            seed += 1;
            check_at(shape, cfg, seed, half, residual);
        }
    }
}

#[test]
fn batch_norm_refuses_a_fused_residual_with_an_activation() {
    let g = gpu();
    let shape = [2, 3, 4, 4];
    let t = |label: &str| upload(&shape, &vec![0.5; 96], label);
    let c = |label: &str| upload(&[3], &[1.0; 3], label);
    let (x, r, y, dy, dx, dr) = (t("x"), t("r"), t("y"), t("dy"), t("dx"), t("dr"));
    let (gamma, beta, mean, var, dgamma, dbeta) = (c("g"), c("b"), c("m"), c("v"), c("dg"), c("db"));
    let state = BatchNormState { gamma: &gamma, beta: &beta, running_mean: &mean, running_var: &var, partials: None };
    let cfg = BatchNormConfig { act: NormAct::Relu, ..Default::default() };
    let err = batch_norm_forward(g, &x, &state, None, Some(&r), &y, cfg, "bn3").err().expect("refused");
    assert!(err.to_string().contains("'bn3'") && err.to_string().contains("not both"), "{err}");
    let grads = BatchNormGrads {
        dgamma: &dgamma,
        dbeta: &dbeta,
        dx: &dx,
        accumulate_dx: false,
        residual: Some((&dr, false)),
        partials: None,
    };
    let err = batch_norm_backward(g, &dy, &x, (&gamma, &beta), (&mean, &var), true, &grads, cfg, "bn3")
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not both"), "{err}");
}

/// The chunked schedule needs its scratch tensor of (C, chunks, 2) and chunks of at least one value: a missing or
/// misshapen scratch and a zero length are refused, naming the layer and the shape wanted.
#[test]
fn chunked_batch_norm_needs_its_scratch() {
    let g = gpu();
    let shape = [2, 3, 4, 4];
    let t = |label: &str| upload(&shape, &vec![0.5; 96], label);
    let c = |label: &str| upload(&[3], &[1.0; 3], label);
    let (x, y) = (t("x"), t("y"));
    let (gamma, beta, mean, var, sm, sv) = (c("g"), c("b"), c("m"), c("v"), c("sm"), c("sv"));
    let wrong = poisoned(&[3, 2, 2], "partials");
    for (partials, len, want) in [(None, 5, "[3, 7, 2]"), (Some(&wrong), 5, "[3, 7, 2]"), (None, 0, "at least 1")] {
        let state = BatchNormState { gamma: &gamma, beta: &beta, running_mean: &mean, running_var: &var, partials };
        let cfg = BatchNormConfig { schedule: NormSchedule::Chunked { len }, ..Default::default() };
        let err = batch_norm_forward(g, &x, &state, Some((&sm, &sv)), None, &y, cfg, "bn4").err().expect("refused");
        assert!(err.to_string().contains("bn4") && err.to_string().contains(want), "{err}");
    }
    // Chunks longer than a channel are one chunk.
    let cfg = NormSchedule::Chunked { len: 1000 };
    assert_eq!(cfg.scratch(g, 3, 32).expect("schedule"), Some(vec![3, 1, 2]));
}
