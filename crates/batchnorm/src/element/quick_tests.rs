//! bf16's quick evaluation in `f32` ([`Element::round_step`]) gives the exact path's bits: every
//! bf16 input, a step at a time, through many normalising and dx maps.

use crate::backward::{GatedGradMap, GradMap};
use crate::element::bf16;
use crate::forward::{AddRelu, ChannelMap, NormMap, Relu};
use crate::gate::ReluGate;
use crate::plan::{Apply, Coefficients, QUICK_LEN};
use crate::simd::MAP_CHUNK;

/// SplitMix64: deterministic values in [0, 1).
fn uniform(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed;
    move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A value of either sign whose magnitude is spread over `decades` decades from `10^low`.
fn spread(u: &mut impl FnMut() -> f64, low: f64, decades: f64) -> f64 {
    (u() - 0.5) * 2.0 * 10f64.powf(low + u() * decades)
}

/// Every bf16 value, and the same values in reverse (a second input, side by side).
fn every_bf16() -> (Vec<bf16>, Vec<bf16>) {
    let xs: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
    let rs = xs.iter().rev().copied().collect();
    (xs, rs)
}

/// The same bits, or both NaN: which NaN a sum of two NaNs gives depends on the order the
/// compiler puts the operands in, so the payload may differ where the kernels are inlined.
fn same(a: [bf16; MAP_CHUNK], b: [bf16; MAP_CHUNK]) -> bool {
    a.iter()
        .zip(&b)
        .all(|(a, b)| a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan())
}

/// Maps over many scales: means from 0 to far off, spreads from tiny to huge, weights of both
/// signs, shifts that cancel the mapped values or dwarf them, and the extremes.
#[test]
fn normalising_steps_are_the_exact_bits() {
    let mut u = uniform(7);
    let mut maps = vec![
        ChannelMap::new(0.0, 1.0, 1.0, 0.0),
        ChannelMap::new(1e30, 1e-30, -3.0, 1e-20),
        ChannelMap::new(-2.5e-38, 4e37, 1.0, 0.0),
        ChannelMap::new(0.0, 1.0, 3e38, 1e38),
        ChannelMap::new(0.1, 1e-3, 1.0, -1e-40),
        ChannelMap::new(f64::NAN, 1.0, 1.0, 0.0),
        ChannelMap::new(0.0, 1.0, 0.0, 0.75),
        ChannelMap::new(1.0, f64::INFINITY, 1.0, 0.0),
        ChannelMap::new(1e30, 1e-50, 1.0, 0.0),
        ChannelMap::new(1e-40, 1e40, 1.0, 1e-45),
        ChannelMap::new(3e38, 1e-38, 2.0, -1e38),
    ];
    for _ in 0..300 {
        let (mean, invstd) = (spread(&mut u, -4.0, 12.0), spread(&mut u, -4.0, 8.0).abs());
        let (weight, bias) = (spread(&mut u, -1.0, 2.0), spread(&mut u, -3.0, 6.0));
        maps.push(ChannelMap::new(mean, invstd, weight, bias));
    }
    let (xs, rs) = every_bf16();
    let (steps, _) = xs.as_chunks::<MAP_CHUNK>();
    let (rsteps, _) = rs.as_chunks::<MAP_CHUNK>();
    for (i, &map) in maps.iter().enumerate() {
        let exact = map.coefficients().map(|c| [c; MAP_CHUNK]);
        let relu = Relu::<NormMap<bf16>>::from_coefficients(map.coefficients());
        let add_relu = AddRelu::<NormMap<bf16>>::from_coefficients(map.coefficients());
        // Channels-last steps: lane `l` with map `i + l`.
        let (q, c) = lanes(&maps, i);
        for (x, r) in steps.iter().zip(rsteps) {
            let want = NormMap::<bf16>::apply_lanes(exact, x);
            assert!(same(map.apply_step(x), want), "{map:?} at {x:?}");
            let want = Relu::<NormMap<bf16>>::apply_lanes(exact, x);
            assert!(same(relu.apply_step(x), want), "relu {map:?} at {x:?}");
            let want = AddRelu::<NormMap<bf16>>::apply_lanes(exact, (x, r));
            let got = add_relu.apply_step((x, r));
            assert!(same(got, want), "add relu {map:?} at {x:?} + {r:?}");
            let want = NormMap::<bf16>::apply_lanes(c, x);
            let got = NormMap::<bf16>::apply_quick_lanes(|l| q[l], || c, x);
            assert!(same(got, want), "maps from {i} at {x:?}");
        }
    }
}

/// The quick and exact coefficients of the maps `first..first + MAP_CHUNK` (cyclically), lane
/// by lane, as a channels-last step reads them.
fn lanes<V: Copy, M: Coefficients<V, K>, const K: usize>(
    maps: &[M],
    first: usize,
) -> ([[f32; QUICK_LEN]; MAP_CHUNK], [[V; MAP_CHUNK]; K]) {
    let map = |l: usize| maps[(first + l) % maps.len()];
    let q = std::array::from_fn(|l| map(l).quick());
    let c = std::array::from_fn(|k| std::array::from_fn(|l| map(l).coefficients()[k]));
    (q, c)
}

/// dx maps over the same scales, plain and behind ReLU gates of both directions: every bf16 x
/// beside every bf16 dy.
#[test]
fn dx_steps_are_the_exact_bits() {
    let mut u = uniform(11);
    let mut maps = vec![
        GradMap::new(0.0, 1.0, 0.0, 0.0),
        GradMap::new(1e30, 1e-30, 1e-3, 1e-31),
        GradMap::new(0.5, 2.0, 0.25, 1.0 - 1e-9),
        GradMap::new(f64::NAN, 1.0, 0.0, 0.0),
        GradMap::new(0.0, 3e38, 1e30, 1e-30),
        GradMap::new(-3e30, 1e-45, 1e-40, 1e-10),
        GradMap::new(1e-41, 1e10, 1e-20, 1e-50),
    ];
    for _ in 0..150 {
        let (mean, k) = (spread(&mut u, -4.0, 12.0), spread(&mut u, -4.0, 8.0));
        let (a, b) = (spread(&mut u, -6.0, 8.0), spread(&mut u, -6.0, 8.0));
        maps.push(GradMap::new(mean, k, a, b));
    }
    let (xs, dys) = every_bf16();
    let (steps, _) = xs.as_chunks::<MAP_CHUNK>();
    let (dsteps, _) = dys.as_chunks::<MAP_CHUNK>();
    let gated: Vec<GatedGradMap> = maps
        .iter()
        .map(|&map| {
            let [mean, p, ..] = map.coefficients();
            let bound = bf16::from_f64(mean).to_f64();
            GatedGradMap::new(
                map,
                ReluGate {
                    sign: 1f64.copysign(p),
                    bound: bound * 1f64.copysign(p),
                },
            )
        })
        .collect();
    for i in 0..maps.len() {
        // Channels-last steps: lane `l` with map `i + l`.
        let (q, c) = lanes(&maps, i);
        let (gq, gc) = lanes(&gated, i);
        for (x, dy) in steps.iter().zip(dsteps) {
            let want = GradMap::apply_lanes(c, (x, dy));
            let got = GradMap::apply_quick_lanes(|l| q[l], || c, (x, dy));
            assert!(same(got, want), "maps from {i} at {x:?}, {dy:?}");
            let want = GatedGradMap::apply_lanes(gc, (x, dy));
            let got = GatedGradMap::apply_quick_lanes(|l| gq[l], || gc, (x, dy));
            assert!(same(got, want), "gated maps from {i} at {x:?}, {dy:?}");
        }
    }
    for map in maps {
        let [mean, p, ..] = map.coefficients();
        // A rising gate at the mean, and a falling one just above it.
        let bound = bf16::from_f64(mean).to_f64();
        let gates = [(1.0, bound), (-1.0, -bound - 1.0)].map(|(sign, bound)| {
            GatedGradMap::new(
                map,
                ReluGate {
                    sign: sign * 1f64.copysign(p),
                    bound,
                },
            )
        });
        let exact = map.coefficients().map(|c| [c; MAP_CHUNK]);
        for (x, dy) in steps.iter().zip(dsteps) {
            let want = GradMap::apply_lanes(exact, (x, dy));
            assert!(
                same(map.apply_step((x, dy)), want),
                "{map:?} at {x:?}, {dy:?}"
            );
            for gated in gates {
                let exact = gated.coefficients().map(|c| [c; MAP_CHUNK]);
                let want = GatedGradMap::apply_lanes(exact, (x, dy));
                let got = gated.apply_step((x, dy));
                assert!(same(got, want), "{gated:?} at {x:?}, {dy:?}");
            }
        }
    }
}
