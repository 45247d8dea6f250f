//! Training stack (placeholder).
