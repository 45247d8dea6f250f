//! The experiments `bnlab` runs, one module each.

pub mod fig1;
