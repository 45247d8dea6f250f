//! Training batches in a seeded random order.

use batchnorm_nn::Rng;

/// The seed of the batch order for the run seeded by `seed`: a stream independent of the
/// initial weights' (the same in every experiment, so runs with one seed see one order).
pub(crate) fn order_seed(seed: u64) -> u64 {
    seed ^ 0x6261_7463_685f_6f72 // "batch_or"
}

/// Batches in a seeded random order: each epoch is a fresh permutation of the training set,
/// cut into consecutive batches; a last partial batch is dropped.
#[derive(Debug)]
pub(crate) struct Sampler {
    rng: Rng,
    order: Vec<usize>,
    pos: usize,
    batch: usize,
}

impl Sampler {
    /// Batches of `batch` indices into `0..len`, in an order fixed by `seed`.
    pub(crate) fn new(seed: u64, len: usize, batch: usize) -> Self {
        let mut rng = Rng::new(seed);
        let mut order: Vec<usize> = (0..len).collect();
        rng.shuffle(&mut order);
        Sampler {
            rng,
            order,
            pos: 0,
            batch,
        }
    }

    /// Moves to the next batch, reshuffling when the epoch has no full batch left.
    pub(crate) fn advance(&mut self) {
        if self.pos + self.batch > self.order.len() {
            self.rng.shuffle(&mut self.order);
            self.pos = 0;
        }
        self.pos += self.batch;
    }

    /// The batch `advance` moved to.
    pub(crate) fn current(&self) -> &[usize] {
        &self.order[self.pos - self.batch..self.pos]
    }

    /// The batch after the current one, when it is in the same epoch (else not yet known).
    pub(crate) fn upcoming(&self) -> Option<&[usize]> {
        self.order.get(self.pos..self.pos + self.batch)
    }

    /// Indices per epoch (the training set's size).
    pub(crate) fn epoch_len(&self) -> usize {
        self.order.len()
    }

    /// Everything that fixes the batches to come (for checkpoints).
    pub(crate) fn state(&self) -> SamplerState {
        SamplerState {
            rng: self.rng.state(),
            order: self.order.clone(),
            pos: self.pos,
        }
    }

    /// The sampler that continues from `state` with batches of `batch` indices into
    /// `0..len`, exactly as the one `state` was taken from.
    ///
    /// # Errors
    /// A message if `state` cannot come from such a sampler: the order is not a permutation of
    /// `0..len`, the position is past its end, or the generator state is all zeros.
    pub(crate) fn from_state(
        state: SamplerState,
        len: usize,
        batch: usize,
    ) -> Result<Self, String> {
        let SamplerState { rng, order, pos } = state;
        if order.len() != len {
            return Err(format!(
                "order of {} indices, the training set has {len}",
                order.len()
            ));
        }
        let mut seen = vec![false; len];
        for &i in &order {
            match seen.get_mut(i) {
                Some(s) if !*s => *s = true,
                _ => {
                    return Err(format!(
                        "order is not a permutation of 0..{len} (index {i})"
                    ))
                }
            }
        }
        if pos > len {
            return Err(format!("position {pos} past the end of {len} indices"));
        }
        let rng = Rng::from_state(rng.0, rng.1).ok_or("generator state is all zeros")?;
        Ok(Sampler {
            rng,
            order,
            pos,
            batch,
        })
    }
}

/// A [`Sampler`]'s state: its generator ([`Rng::state`]), the current epoch's order and the
/// position after the current batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SamplerState {
    /// The generator's words and spare normal deviate.
    pub(crate) rng: ([u64; 4], Option<f64>),
    /// The current epoch's permutation of the training set.
    pub(crate) order: Vec<usize>,
    /// Index after the current batch in `order`.
    pub(crate) pos: usize,
}

#[cfg(test)]
mod tests {
    use super::Sampler;

    #[test]
    fn each_epoch_is_a_permutation_and_the_order_depends_only_on_the_seed() {
        let (mut a, mut b) = (Sampler::new(7, 10, 3), Sampler::new(7, 10, 3));
        let mut epoch = Vec::new();
        for _ in 0..3 {
            a.advance();
            b.advance();
            assert_eq!(a.current(), b.current());
            epoch.extend_from_slice(a.current());
        }
        epoch.sort_unstable();
        epoch.dedup();
        assert_eq!(epoch.len(), 9, "3 batches of 3 distinct indices");
        assert!(a.upcoming().is_none(), "the 4th batch would be partial");
        a.advance(); // reshuffles
        assert_eq!(a.current().len(), 3);
    }

    #[test]
    fn a_restored_sampler_continues_with_the_same_batches() {
        let mut a = Sampler::new(5, 10, 3);
        for _ in 0..4 {
            a.advance(); // the 4th reshuffles: the generator state has moved on
        }
        let mut b = Sampler::from_state(a.state(), 10, 3).unwrap();
        for _ in 0..10 {
            a.advance();
            b.advance();
            assert_eq!(a.current(), b.current());
        }
    }

    #[test]
    fn impossible_states_are_refused() {
        let good = Sampler::new(5, 4, 2).state();
        let mut dup = good.clone();
        dup.order[0] = dup.order[1];
        let mut short = good.clone();
        short.order.pop();
        let mut far = good.clone();
        far.pos = 5;
        let mut zero = good.clone();
        zero.rng = ([0; 4], None);
        for bad in [dup, short, far, zero] {
            assert!(Sampler::from_state(bad, 4, 2).is_err());
        }
        assert!(Sampler::from_state(good, 4, 2).is_ok());
    }
}
