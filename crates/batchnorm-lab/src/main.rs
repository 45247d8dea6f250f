//! bnlab (placeholder).
fn main() {}
