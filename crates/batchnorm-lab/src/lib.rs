//! `bnlab`: reproduces the Batch Normalization paper's experiments on MNIST.
//!
//! The binary (`src/main.rs`) only parses arguments; each experiment lives in
//! [`experiments`], figures are drawn by [`plot`].

pub mod atomic_write;
pub mod bench;
pub mod experiments;
pub mod huge_pages;
pub mod percentile;
pub mod plot;
mod progress;
