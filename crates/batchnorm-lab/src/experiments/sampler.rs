//! Training batches in a seeded random order.

use batchnorm_nn::Rng;

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
}
