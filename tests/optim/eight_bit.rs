//! 8-bit blockwise AdamW (docs/METHODS.md#8-bit-adamw-state) against f32 AdamW: one step is the f32
//! update of the dequantized state followed by a requantization within half a map gap; a 100-step
//! run stays within an error bound propagated from the maps' resolution; the state is ~25 % of
//! f32's.

use edgetune::optim::adamw::{AdamWStep, adamw_update_f32};
use edgetune::optim::state8bit::{BLOCK, MIN_8BIT_NUMEL, SIGNED_HALF_GAP, UNSIGNED_HALF_GAP};
use edgetune::optim::{AdamW, AdamWConfig, ParamGroup, ParamSpec, StateBits, StateStorage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn build(bits: StateBits, numels: &[usize], wd: f32) -> AdamW {
    let specs: Vec<ParamSpec> = numels
        .iter()
        .map(|&numel| ParamSpec { numel, group: 0 })
        .collect();
    AdamW::new(
        AdamWConfig::default(),
        &[ParamGroup::new(wd)],
        &specs,
        bits,
        &StateStorage::Ram,
    )
    .unwrap()
}

fn block_absmax(x: &[f32]) -> Vec<f64> {
    x.chunks(BLOCK)
        .map(|b| b.iter().fold(0.0f64, |a, v| a.max(v.abs() as f64)))
        .collect()
}

#[test]
fn one_step_is_the_f32_update_of_the_dequantized_state() {
    // 4096 + 300 elements: 17 full blocks and a partial one.
    let n = MIN_8BIT_NUMEL + 300;
    let (lr, wd) = (2e-3f32, 0.01f32);
    let mut opt = build(StateBits::Eight, &[n], wd);
    assert!(opt.is_8bit(0));
    let mut rng = StdRng::seed_from_u64(7);
    let mut p: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut g = vec![0.0f32; n];
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    for t in 1..=20u64 {
        for x in g.iter_mut() {
            *x = rng.random_range(-1.0f32..1.0) * 10f32.powi(rng.random_range(-3..1));
        }
        // Reference: the f32 AdamW update applied to the dequantized state.
        opt.moments(0, &mut m, &mut v).unwrap();
        let mut p_ref = p.clone();
        let k = AdamWStep::new(&AdamWConfig::default(), lr as f64, wd as f64, t);
        adamw_update_f32(&mut p_ref, &g, &mut m, &mut v, &k);
        opt.step(&mut [&mut p], &[&g], lr).unwrap();
        // The parameter moves by the new unquantized moments: same f32 arithmetic, same bits.
        assert_eq!(p, p_ref, "step {t}");
        // The stored moments are the nearest levels: within half the widest gap times absmax.
        let (mut m8, mut v8) = (vec![0.0f32; n], vec![0.0f32; n]);
        opt.moments(0, &mut m8, &mut v8).unwrap();
        let (am, av) = (block_absmax(&m), block_absmax(&v));
        for i in 0..n {
            let b = i / BLOCK;
            let em = (m8[i] as f64 - m[i] as f64).abs();
            let ev = (v8[i] as f64 - v[i] as f64).abs();
            // f32 rounding of level·absmax adds at most one ulp of absmax.
            assert!(
                em <= (SIGNED_HALF_GAP + 1e-7) * am[b],
                "m[{i}] step {t}: {em} vs absmax {}",
                am[b]
            );
            assert!(
                ev <= (UNSIGNED_HALF_GAP + 1e-7) * av[b],
                "v[{i}] step {t}: {ev} vs absmax {}",
                av[b]
            );
        }
    }
}

/// `u(m, v) = (m / bc1) / (sqrt(v / bc2) + ε)`, the Adam direction, in f64.
fn direction(m: f64, v: f64, bc1: f64, bc2: f64) -> f64 {
    (m / bc1) / ((v.max(0.0) / bc2).sqrt() + 1e-8)
}

/// Over 100 steps, bound `|p8 − p32|` per element by propagating the quantization error:
///
/// * Let `μ_t` be the 8-bit optimizer's unquantized `m` after step `t` and `r_t` its rounding
///   error when stored; `|r_t| ≤ h_s · A_t` with `h_s = SIGNED_HALF_GAP` (0.9/128) and `A_t` the
///   block's max `|μ_t|`. Since both optimizers see the same gradients,
///   `μ_t − m_t = β1 (μ_{t−1} − m_{t−1} + r_{t−1})`, so `E_t = β1 (E_{t−1} + h_s Â_{t−1})`
///   bounds it, with `Â = max_block(|m| + E) ≥ A`. Likewise for `v` with β2 and
///   `h_u = UNSIGNED_HALF_GAP` (0.9/256).
/// * The update direction `u(m, v)` is monotone in `m` and in `v`, so its largest deviation
///   over the box `[m ± E_m] × [v ± E_v]` is at a corner: `U_t`.
/// * Both parameters decay by the same factor `1 − lr·wd ≤ 1`, so
///   `|p8_T − p32_T| ≤ Σ_t lr·U_t`, plus f32 rounding slack.
#[test]
fn hundred_steps_track_f32_adamw_within_the_propagated_bound() {
    let n = 32 * BLOCK;
    let (lr, wd) = (1e-3f32, 0.01f32);
    let (b1, b2) = (0.9f64, 0.999f64);
    let steps = 100;
    let mut opt8 = build(StateBits::Eight, &[n], wd);
    let mut opt32 = build(StateBits::F32, &[n], wd);
    let mut rng = StdRng::seed_from_u64(11);
    let p0: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let (mut p8, mut p32) = (p0.clone(), p0.clone());
    // Each element has a drift direction; each block its own scale, from 1e-3 to 1. The
    // magnitudes within a block stay within a factor 1.5, so `v` is well inside its block's range.
    let sign: Vec<f32> = (0..n)
        .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
        .collect();
    let scale: Vec<f32> = (0..n / BLOCK)
        .map(|b| 10f32.powf(-3.0 + 3.0 * b as f32 / 31.0))
        .collect();
    let mut g = vec![0.0f32; n];
    // Exact f64 moments of the f32 optimizer, and the error bounds.
    let (mut m, mut v) = (vec![0.0f64; n], vec![0.0f64; n]);
    let (mut em, mut ev) = (vec![0.0f64; n], vec![0.0f64; n]);
    let mut bound = vec![0.0f64; n];
    let mut slack = 0.0f64;
    for t in 1..=steps {
        for i in 0..n {
            // One step in ten flips the sign, so m passes through zero now and then.
            let flip = if rng.random::<f32>() < 0.1 { -1.0 } else { 1.0 };
            g[i] = flip * sign[i] * scale[i / BLOCK] * (1.0 + 0.5 * rng.random::<f32>());
        }
        // Bounds on the 8-bit moments' deviation at this step (from the previous step's state).
        let hat_m: Vec<f64> = (0..n).map(|i| m[i].abs() + em[i]).collect();
        let hat_v: Vec<f64> = (0..n).map(|i| v[i] + ev[i]).collect();
        let (am, av) = (block_absmax_f64(&hat_m), block_absmax_f64(&hat_v));
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        for i in 0..n {
            let blk = i / BLOCK;
            let gi = g[i] as f64;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            // f32 arithmetic of both optimizers vs these f64 moments: a few ulps per step.
            em[i] = b1 * (em[i] + SIGNED_HALF_GAP * am[blk]) + 1e-6 * m[i].abs();
            ev[i] = b2 * (ev[i] + UNSIGNED_HALF_GAP * av[blk]) + 1e-6 * v[i];
            let u = direction(m[i], v[i], bc1, bc2);
            let mut worst = 0.0f64;
            for mm in [m[i] - em[i], m[i] + em[i]] {
                for vv in [v[i] - ev[i], v[i] + ev[i]] {
                    worst = worst.max((direction(mm, vv, bc1, bc2) - u).abs());
                }
            }
            bound[i] += lr as f64 * worst;
        }
        opt8.step(&mut [&mut p8], &[&g], lr).unwrap();
        opt32.step(&mut [&mut p32], &[&g], lr).unwrap();
        // Rounding of p in both runs: a couple of ulps of |p| per step.
        let pmax = p32.iter().fold(0.0f64, |a, x| a.max(x.abs() as f64));
        slack += 4.0 * f32::EPSILON as f64 * pmax;
    }
    let mut worst_ratio = 0.0f64;
    let (mut sum_dev, mut sum_bound, mut sum_move) = (0.0f64, 0.0f64, 0.0f64);
    for i in 0..n {
        let dev = (p8[i] as f64 - p32[i] as f64).abs();
        assert!(
            dev <= bound[i] + slack,
            "element {i}: |p8 − p32| = {dev} > bound {} + {slack}",
            bound[i]
        );
        worst_ratio = worst_ratio.max(dev / (bound[i] + slack));
        sum_dev += dev;
        sum_bound += bound[i];
        sum_move += (p32[i] as f64 - p0[i] as f64).abs();
    }
    // The bound must say something: well below how far the parameters moved.
    assert!(
        sum_bound < 0.5 * sum_move,
        "bound {sum_bound} vs movement {sum_move}"
    );
    eprintln!(
        "8-bit vs f32 AdamW over {steps} steps: mean |Δp| = {:.3e}, mean bound = {:.3e}, mean movement = {:.3e}, worst dev/bound = {worst_ratio:.3}",
        sum_dev / n as f64,
        sum_bound / n as f64,
        sum_move / n as f64
    );
}

fn block_absmax_f64(x: &[f64]) -> Vec<f64> {
    x.chunks(BLOCK)
        .map(|b| b.iter().fold(0.0f64, |a, v| a.max(v.abs())))
        .collect()
}

#[test]
fn small_tensors_keep_f32_state_and_match_exactly() {
    let numels = [MIN_8BIT_NUMEL - 1, 64];
    let mut opt8 = build(StateBits::Eight, &numels, 0.01);
    let mut opt32 = build(StateBits::F32, &numels, 0.01);
    assert!(!opt8.is_8bit(0) && !opt8.is_8bit(1));
    let mut rng = StdRng::seed_from_u64(3);
    let mut a8: Vec<f32> = (0..numels[0])
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let mut b8: Vec<f32> = (0..numels[1])
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let (mut a32, mut b32) = (a8.clone(), b8.clone());
    for _ in 0..5 {
        let ga: Vec<f32> = (0..numels[0])
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let gb: Vec<f32> = (0..numels[1])
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        opt8.step(&mut [&mut a8, &mut b8], &[&ga, &gb], 1e-2)
            .unwrap();
        opt32
            .step(&mut [&mut a32, &mut b32], &[&ga, &gb], 1e-2)
            .unwrap();
    }
    assert_eq!((a8, b8), (a32, b32));
    assert_eq!(opt8.state_bytes(), opt32.state_bytes());
}

#[test]
fn state_is_a_quarter_of_f32() {
    // 2 bytes per element + 2 absmax f32 per 256-element block, vs 8 bytes per element.
    let numels = [4096usize, 65_536, 262_144 + 100];
    let opt8 = build(StateBits::Eight, &numels, 0.0);
    let opt32 = build(StateBits::F32, &numels, 0.0);
    let total: usize = numels.iter().sum();
    let blocks: usize = numels.iter().map(|n| n.div_ceil(256)).sum();
    assert_eq!(opt32.state_bytes(), 8 * total);
    assert_eq!(opt8.state_bytes(), 2 * total + 8 * blocks);
    let ratio = opt8.state_bytes() as f64 / opt32.state_bytes() as f64;
    assert!((0.25..0.255).contains(&ratio), "ratio {ratio}");
}
