//! A small, deterministic pseudo-random generator: xoshiro256++ seeded through SplitMix64.
//!
//! Self-contained so that results depend only on the seed, never on a dependency's version.
//! Reference: Blackman and Vigna, "Scrambled linear pseudorandom number generators" (2021).

/// xoshiro256++ (period 2^256 - 1), seeded from a `u64` with SplitMix64 as its authors advise.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
    /// The second normal deviate of the last Box-Muller pair, if unused.
    spare_normal: Option<f64>,
}

/// One step of SplitMix64: advances `state` and returns the next output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose whole stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        // SplitMix64 is a bijection of its counter, so four consecutive outputs are never all 0.
        Rng {
            s,
            spare_normal: None,
        }
    }

    /// The generator's whole state: the four xoshiro256++ words and the unused second
    /// Box-Muller deviate, if any. [`Rng::from_state`] continues the stream exactly from here
    /// (checkpoints store this).
    pub fn state(&self) -> ([u64; 4], Option<f64>) {
        (self.s, self.spare_normal)
    }

    /// The generator whose state is `words` and `spare_normal`, as [`Rng::state`] returned
    /// them. `None` when all four words are 0: xoshiro's fixed point, which [`Rng::new`] never
    /// reaches and which would output zeros forever.
    ///
    /// ```
    /// use batchnorm_nn::Rng;
    /// let mut a = Rng::new(5);
    /// a.normal();
    /// let (words, spare) = a.state();
    /// let mut b = Rng::from_state(words, spare).unwrap();
    /// assert_eq!((a.normal(), a.next_u64()), (b.normal(), b.next_u64()));
    /// assert!(Rng::from_state([0; 4], None).is_none());
    /// ```
    pub fn from_state(words: [u64; 4], spare_normal: Option<f64>) -> Option<Self> {
        if words == [0; 4] {
            return None;
        }
        Some(Rng {
            s: words,
            spare_normal,
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform on [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (Lemire's multiply-shift with rejection: exactly uniform).
    /// Returns 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let n = n as u64;
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as usize;
            }
        }
    }

    /// A standard normal deviate, by the Box-Muller transform:
    /// `r = sqrt(-2 ln u1)`, `(r cos 2 pi u2, r sin 2 pi u2)` for `u1` in (0, 1], `u2` in [0, 1).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln never sees 0
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare_normal = Some(r * s);
        r * c
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers from the authors' reference code: `xoshiro256plusplus.c` from state
    /// (1, 2, 3, 4) (the vector rand_xoshiro's `reference` test also checks), and
    /// `splitmix64.c` from seed 0, which seeds `Rng::new(0)`.
    #[test]
    fn known_answers_of_the_reference_implementations() {
        let mut rng = Rng::from_state([1, 2, 3, 4], None).unwrap();
        let want: [u64; 10] = [
            41_943_041,
            58_720_359,
            3_588_806_011_781_223,
            3_591_011_842_654_386,
            9_228_616_714_210_784_205,
            9_973_669_472_204_895_162,
            14_011_001_112_246_962_877,
            12_406_186_145_184_390_807,
            15_849_039_046_786_891_736,
            10_450_023_813_501_588_000,
        ];
        for w in want {
            assert_eq!(rng.next_u64(), w);
        }
        assert_eq!(
            Rng::new(0).state().0,
            [
                0xe220_a839_7b1d_cdaf,
                0x6e78_9e6a_a1b9_65f4,
                0x06c4_5d18_8009_454f,
                0xf88b_b8a8_724c_81ec
            ]
        );
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 from state 0 (Vigna's reference implementation).
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let (mut a, mut b, mut c) = (Rng::new(7), Rng::new(7), Rng::new(8));
        let va: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let vb: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let vc: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
    }

    #[test]
    fn state_round_trip_continues_the_stream() {
        let mut a = Rng::new(11);
        let mut order: Vec<usize> = (0..100).collect();
        a.shuffle(&mut order);
        let _ = a.normal(); // leaves a spare deviate in the state
        let (words, spare) = a.state();
        assert!(spare.is_some());
        let mut b = Rng::from_state(words, spare).unwrap();
        for _ in 0..5 {
            assert_eq!(a.normal().to_bits(), b.normal().to_bits());
            assert_eq!(a.next_u64(), b.next_u64());
        }
        // A changed word is another stream.
        let mut c = Rng::from_state([words[0] ^ 1, words[1], words[2], words[3]], None).unwrap();
        let mut d = Rng::from_state(words, None).unwrap();
        assert_ne!(c.next_u64(), d.next_u64());
    }

    #[test]
    fn normal_moments() {
        let mut r = Rng::new(1);
        let n = 200_000;
        let (mut s1, mut s2) = (0.0, 0.0);
        for _ in 0..n {
            let z = r.normal();
            s1 += z;
            s2 += z * z;
        }
        let mean = s1 / n as f64;
        let var = s2 / n as f64 - mean * mean;
        // Standard errors: mean 1/sqrt(n) = 0.0022, variance sqrt(2/n) = 0.0032; allow ~5 sigma.
        assert!(mean.abs() < 0.012, "mean {mean}");
        assert!((var - 1.0).abs() < 0.016, "var {var}");
    }

    #[test]
    fn shuffle_is_a_permutation_and_below_is_in_range() {
        let mut r = Rng::new(3);
        let mut v: Vec<usize> = (0..1000).collect();
        r.shuffle(&mut v);
        assert_ne!(v, (0..1000).collect::<Vec<_>>());
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert!((0..10_000).all(|_| r.below(7) < 7));
        assert_eq!(r.below(0), 0);
    }
}
