//! Data sets.

mod mnist_idx;

pub use mnist_idx::{decode_idx, read_idx, IdxArray, IdxError, Mnist, Split};
