//! batchnorm (placeholder).
