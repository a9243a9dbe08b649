//! Parity of the CUDA optimizer methods with the CPU optimizers: AdamW with f32 and 8-bit
//! state (bit-identical: the kernels avoid FMA contraction), the global gradient norm (f64
//! partial sums, 1e-9 relative) and the paged AdamW staging state through pinned memory
//! (bit-identical to direct updates). Tolerances and the no-device skip: see
//! `tests/cuda_parity/ops.rs` and `tests/cuda_support/mod.rs`.

use edgetune::optim::adamw::{AdamWConfig, AdamWStep, adamw_update_f32};
use edgetune::optim::clip::global_norm;
use edgetune::optim::state8bit::{DynamicMaps, adamw_update_8bit, n_blocks};

use crate::common::{gaussian, rng};
use crate::cuda_support::{device, download, upload};

#[test]
#[ignore = "needs a CUDA device"]
fn adamw_f32_and_8bit_match_the_cpu() {
    let cuda = device("adamw");
    let mut r = rng(9);
    let k = AdamWStep::new(&AdamWConfig::default(), 1e-3, 0.01, 5);
    let n = 5000;
    let (p0, g) = (gaussian(&mut r, n, 1.0), gaussian(&mut r, n, 0.1));
    let m0 = gaussian(&mut r, n, 0.01);
    let v0: Vec<f32> = gaussian(&mut r, n, 0.01).iter().map(|x| x * x).collect();
    // f32 state.
    let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
    adamw_update_f32(&mut p, &g, &mut m, &mut v, &k);
    let (mut pb, gb, mut mb, mut vb) = (
        upload(&cuda, &p0),
        upload(&cuda, &g),
        upload(&cuda, &m0),
        upload(&cuda, &v0),
    );
    cuda.adamw_f32(pb.view_mut(), gb.view(), mb.view_mut(), vb.view_mut(), &k)
        .unwrap();
    assert_eq!(download(&cuda, &pb), p, "adamw f32 params");
    assert_eq!(download(&cuda, &mb), m, "adamw f32 m");
    assert_eq!(download(&cuda, &vb), v, "adamw f32 v");
    // 8-bit state: run two steps from a fresh state.
    let maps = DynamicMaps::new();
    let nb = n_blocks(n);
    let (mut absmax, mut qm, mut qv) = (
        vec![0.0f32; 2 * nb],
        vec![maps.signed_zero; n],
        vec![0u8; n],
    );
    let dmaps = cuda.dynamic_maps(&maps).unwrap();
    let mut state = cuda.upload_8bit_state(&absmax, &qm, &qv).unwrap();
    let mut p = p0.clone();
    let mut pb = upload(&cuda, &p0);
    for _ in 0..2 {
        adamw_update_8bit(&mut p, &g, &mut absmax, &mut qm, &mut qv, &k, &maps);
        cuda.adamw_8bit(pb.view_mut(), gb.view(), &mut state, &dmaps, &k)
            .unwrap();
    }
    let (mut a2, mut m2, mut v2) = (vec![0.0f32; 2 * nb], vec![0u8; n], vec![0u8; n]);
    cuda.download_8bit_state(&state, &mut a2, &mut m2, &mut v2)
        .unwrap();
    assert_eq!(a2, absmax, "8-bit absmax");
    assert_eq!(m2, qm, "8-bit m codes");
    assert_eq!(v2, qv, "8-bit v codes");
    assert_eq!(download(&cuda, &pb), p, "8-bit params");
}

#[test]
#[ignore = "needs a CUDA device"]
fn global_norm_and_paged_adamw() {
    let cuda = device("grad_norm");
    let mut r = rng(10);
    let sizes = [1usize, 3000, 5_000_000, 0, 17];
    let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| gaussian(&mut r, n, 1.0)).collect();
    let want = global_norm(&grads.iter().map(|g| g.as_slice()).collect::<Vec<_>>());
    let bufs: Vec<_> = grads.iter().map(|g| upload(&cuda, g)).collect();
    let got = cuda
        .global_norm(&bufs.iter().map(|b| b.view()).collect::<Vec<_>>())
        .unwrap();
    assert!(((got - want) / want).abs() < 1e-9, "norm {got} vs {want}");
    assert_eq!(cuda.global_norm(&[]).unwrap(), 0.0);

    // Paged AdamW over tensors of several sizes, 2 slots: equal to the direct CPU updates.
    use edgetune::backend::cuda::pages::PagedAdamW;
    let sizes = [4096usize, 100, 7000, 1];
    let k = AdamWStep::new(&AdamWConfig::default(), 1e-3, 0.0, 2);
    let params: Vec<Vec<f32>> = sizes.iter().map(|&n| gaussian(&mut r, n, 1.0)).collect();
    let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| gaussian(&mut r, n, 0.1)).collect();
    let mut states: Vec<(Vec<f32>, Vec<f32>)> = sizes
        .iter()
        .map(|&n| {
            (
                gaussian(&mut r, n, 0.01),
                gaussian(&mut r, n, 0.01).iter().map(|x| x * x).collect(),
            )
        })
        .collect();
    let (mut p_want, mut s_want) = (params.clone(), states.clone());
    for i in 0..sizes.len() {
        let (m, v) = &mut s_want[i];
        adamw_update_f32(&mut p_want[i], &grads[i], m, v, &k);
    }
    let mut pbufs: Vec<_> = params.iter().map(|p| upload(&cuda, p)).collect();
    let gbufs: Vec<_> = grads.iter().map(|g| upload(&cuda, g)).collect();
    let mut pager = PagedAdamW::new(&cuda, 7000, 2).unwrap();
    {
        let mut pv: Vec<_> = pbufs.iter_mut().map(|b| b.view_mut()).collect();
        let gv: Vec<_> = gbufs.iter().map(|b| b.view()).collect();
        let mut sv: Vec<(&mut [f32], &mut [f32])> = states
            .iter_mut()
            .map(|(m, v)| (&mut m[..], &mut v[..]))
            .collect();
        pager
            .step(&cuda, &mut pv, &gv, &mut sv, &vec![k; sizes.len()])
            .unwrap();
    }
    for i in 0..sizes.len() {
        assert_eq!(download(&cuda, &pbufs[i]), p_want[i], "paged params {i}");
        assert_eq!(states[i], s_want[i], "paged state {i}");
    }
}
