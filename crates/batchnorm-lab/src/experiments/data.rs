//! Loading MNIST for an experiment.

use std::path::{Path, PathBuf};
use std::time::Instant;

use batchnorm_nn::data::{Mnist, Split};
use batchnorm_nn::Rng;

use super::LabError;

/// MNIST from `dir` (see [`resolve_data_dir`]) and the seconds loading took.
///
/// # Errors
/// [`LabError::Nn`] when a file is missing or invalid.
pub(crate) fn load_mnist(dir: &Path) -> Result<(Mnist, f64), LabError> {
    let start = Instant::now();
    let data = Mnist::load(&resolve_data_dir(dir))?;
    Ok((data, start.elapsed().as_secs_f64()))
}

/// `dir` as given if it exists; otherwise, for a relative path, the same path under the
/// workspace root this binary was built from (so `cargo run` works from any folder).
pub(crate) fn resolve_data_dir(dir: &Path) -> PathBuf {
    if dir.exists() || dir.is_absolute() {
        return dir.to_path_buf();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let alt = root.join(dir);
    if alt.exists() {
        alt
    } else {
        dir.to_path_buf()
    }
}

/// The seed of the fixed probe batch's choice for the run seeded by `seed` (fig1 and depth).
pub(crate) fn probe_seed(seed: u64) -> u64 {
    seed ^ 0x7072_6f62_655f_6261 // "probe_ba"
}

/// `size` training images (at most the split's length) chosen by `seed`, as pixels scaled to
/// [0, 1] (`n * 784` values), with their labels.
///
/// # Errors
/// Only on an internal length mismatch.
pub(crate) fn fixed_batch(
    split: &Split,
    seed: u64,
    size: usize,
) -> Result<(Vec<f32>, Vec<u8>), LabError> {
    let mut pick: Vec<usize> = (0..split.len()).collect();
    Rng::new(seed).shuffle(&mut pick);
    let n = size.min(split.len());
    let mut images = vec![0.0f32; n * split.pixels()];
    let mut labels = vec![0u8; n];
    split.gather(&pick[..n], &mut images, &mut labels)?;
    Ok((images, labels))
}
