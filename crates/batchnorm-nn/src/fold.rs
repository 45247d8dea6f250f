//! Folding evaluation-mode batch normalization into the preceding Linear or Conv2d layer.
//!
//! In evaluation, batch normalization is a fixed per-channel affine map. With the running mean
//! `mu`, running variance `sigma^2`, `eps`, scale `gamma` and shift `beta`, and the factor
//! `s = gamma / sqrt(sigma^2 + eps)` of each output channel, `BN(W x + b) = W' x + b'` with
//!
//! `W'[o, ..] = s[o] W[o, ..]`,   `b'[o] = (b[o] - mu[o]) s[o] + beta[o]`
//!
//! (`b = 0` for a convolution without bias). Both are computed in `f64` from the stored values
//! and rounded once to the element type. The folded network computes what the original one does
//! in [`Mode::Eval`](crate::layers::Mode::Eval), in any mode, with one pass over the data less.
//!
//! ```
//! use batchnorm::BatchNormConfig;
//! use batchnorm_nn::layers::{BatchNorm, Layer, Linear, Mode, Relu};
//! use batchnorm_nn::{fold::fold_batch_norm, Rng, Sequential};
//! let mut rng = Rng::new(0);
//! let layers: Vec<Box<dyn Layer<f64>>> = vec![
//!     Box::new(Linear::gaussian(4, 3, 0.5, &mut rng)?),
//!     Box::new(BatchNorm::new(&[3], BatchNormConfig::default())?),
//!     Box::new(Relu::new(3)?),
//! ];
//! let mut model = Sequential::new(layers, 8)?;
//! let mut folded = fold_batch_norm(&model)?;
//! assert_eq!(folded.layers().len(), 2);
//! let x = [0.5, -1.0, 2.0, 0.25];
//! let a = model.forward_from(&x, 1, Mode::Eval)?.to_vec();
//! let b = folded.forward_from(&x, 1, Mode::Eval)?.to_vec();
//! assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-12));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::error::NnError;
use crate::layers::{BatchNorm, Conv2d, Layer, Linear};
use crate::model::Sequential;
use crate::scalar::Scalar;

/// Why a batch normalization cannot be folded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FoldError {
    /// The batch normalization is the first layer, or follows a layer that is not an affine map
    /// with per-output-channel rows (one whose [`Layer::fold_batch_norm`] gives `None`).
    #[error(
        "layer {index} (batch_norm) follows {previous}; only a linear or conv2d layer can absorb it"
    )]
    NotAfterAffine {
        /// Index of the batch normalization in the model.
        index: usize,
        /// Name of the layer before it (`"input"` for the first layer).
        previous: &'static str,
    },
    /// The batch normalization keeps no running statistics (`track_running_stats = false`), so
    /// it normalises with batch statistics even in evaluation: not a fixed map.
    #[error("the batch normalization has no running statistics (track_running_stats = false)")]
    NoRunningStats,
    /// The batch normalization's channels do not match the preceding layer's outputs.
    #[error(
        "the batch normalization has {bn_channels} channels over {bn_len} values per sample; the preceding layer gives {channels} channels over {len}"
    )]
    ChannelMismatch {
        /// Channels of the batch normalization.
        bn_channels: usize,
        /// Values per sample it normalises.
        bn_len: usize,
        /// Output channels (Conv2d) or outputs (Linear) of the preceding layer.
        channels: usize,
        /// Values per sample of the preceding layer's output.
        len: usize,
    },
    /// `running_var + eps` is not a positive finite number, so `1 / sqrt(var + eps)` is not one.
    #[error("channel {channel}: running variance {var} + eps {eps} is not positive and finite")]
    BadVariance {
        /// The channel.
        channel: usize,
        /// Its running variance.
        var: f64,
        /// The module's eps.
        eps: f64,
    },
    /// A folding error at one layer of a model.
    #[error("layer {index}: {source}")]
    AtLayer {
        /// Index of the batch normalization in the model.
        index: usize,
        /// What went wrong there.
        source: Box<FoldError>,
    },
    /// A layer that cannot be copied into the folded model ([`Layer::boxed_clone`] gives `None`).
    #[error("layer {index} ({name}) cannot be copied (Layer::boxed_clone)")]
    UnsupportedLayer {
        /// Its index.
        index: usize,
        /// Its name.
        name: &'static str,
    },
    /// Building the folded model failed.
    #[error(transparent)]
    Nn(#[from] NnError),
}

/// The per-channel `(s, t)` of an evaluation-mode batch normalization, `BN(z) = s z + t`, in
/// `f64`: `s = gamma / sqrt(var + eps)`, `t = beta - mu s`.
fn channel_maps<T: Scalar>(bn: &BatchNorm<T>) -> Result<Vec<(f64, f64)>, FoldError> {
    let inner = &bn.inner;
    if inner.running_mean.is_empty() || inner.running_var.is_empty() {
        return Err(FoldError::NoRunningStats);
    }
    let eps = inner.config().eps;
    (0..inner.channels())
        .map(|c| {
            let var = inner.running_var[c].to_f64();
            let denom = var + eps;
            if !(denom > 0.0 && denom.is_finite()) {
                return Err(FoldError::BadVariance {
                    channel: c,
                    var,
                    eps,
                });
            }
            let gamma = inner.weight.get(c).map_or(1.0, |g| g.to_f64());
            let beta = inner.bias.get(c).map_or(0.0, |b| b.to_f64());
            let s = gamma / denom.sqrt();
            Ok((s, beta - inner.running_mean[c].to_f64() * s))
        })
        .collect()
}

/// Checks that `bn` normalises `channels` channels over `len` values per sample.
fn check_channels<T: Scalar>(
    bn: &BatchNorm<T>,
    channels: usize,
    len: usize,
) -> Result<(), FoldError> {
    let (bn_channels, bn_len) = (bn.inner.channels(), bn.in_len());
    if bn_channels != channels || bn_len != len {
        return Err(FoldError::ChannelMismatch {
            bn_channels,
            bn_len,
            channels,
            len,
        });
    }
    Ok(())
}

/// Scales the rows of `weight` (one row per output channel) and maps `bias` (`None`: zero) by
/// `maps`, in `f64`, rounding once: `W'[o, ..] = s_o W[o, ..]`, `b'_o = s_o b_o + t_o`.
fn fold_rows<T: Scalar>(weight: &mut [T], bias: Option<&[T]>, maps: &[(f64, f64)]) -> Vec<T> {
    let row = weight.len() / maps.len();
    for (w_row, &(s, _)) in weight.chunks_exact_mut(row).zip(maps) {
        for w in w_row {
            *w = T::from_f64(w.to_f64() * s);
        }
    }
    maps.iter()
        .enumerate()
        .map(|(o, &(s, t))| {
            let b = bias.map_or(0.0, |b| b[o].to_f64());
            T::from_f64(b * s + t)
        })
        .collect()
}

/// `linear` followed by the evaluation-mode `bn`, as one Linear layer (gradients zeroed).
///
/// # Errors
/// [`FoldError::NoRunningStats`], [`FoldError::ChannelMismatch`] unless `bn` has one channel
/// per output, [`FoldError::BadVariance`].
pub fn fold_into_linear<T: Scalar>(
    linear: &Linear<T>,
    bn: &BatchNorm<T>,
) -> Result<Linear<T>, FoldError> {
    let out = Layer::<T>::out_len(linear);
    check_channels(bn, out, out)?;
    let maps = channel_maps(bn)?;
    let mut folded = Linear::new(Layer::<T>::in_len(linear), out)?;
    folded.weight.copy_from_slice(&linear.weight);
    folded.bias = fold_rows(&mut folded.weight, Some(&linear.bias), &maps);
    Ok(folded)
}

/// `conv` followed by the evaluation-mode `bn` (BatchNorm2d over its output), as one Conv2d
/// layer, which always has a bias (gradients zeroed).
///
/// # Errors
/// [`FoldError::NoRunningStats`], [`FoldError::ChannelMismatch`] unless `bn` normalises the
/// convolution's output channels and shape, [`FoldError::BadVariance`].
pub fn fold_into_conv2d<T: Scalar>(
    conv: &Conv2d<T>,
    bn: &BatchNorm<T>,
) -> Result<Conv2d<T>, FoldError> {
    let cfg = *conv.config();
    check_channels(bn, cfg.out_channels, Layer::<T>::out_len(conv))?;
    let maps = channel_maps(bn)?;
    let mut folded = Conv2d::new(crate::layers::Conv2dConfig { bias: true, ..cfg })?;
    folded.weight.copy_from_slice(&conv.weight);
    let bias = (!conv.bias.is_empty()).then_some(conv.bias.as_slice());
    folded.bias = fold_rows(&mut folded.weight, bias, &maps);
    Ok(folded)
}

/// A copy of `model` (same capacity) with every batch normalization folded into the Linear or
/// Conv2d layer before it (any layer whose [`Layer::fold_batch_norm`] folds one) and those
/// inside residual blocks folded in place ([`Layer::fold_own_batch_norms`]); the other
/// layers are copied unchanged ([`Layer::boxed_clone`]). The folded model's output in
/// any mode equals `model`'s in [`Mode::Eval`](crate::layers::Mode::Eval), up to rounding.
///
/// # Errors
/// [`FoldError::NotAfterAffine`] for a batch normalization first, or after anything but
/// Linear/Conv2d (including another batch normalization); [`FoldError::AtLayer`] around
/// [`FoldError::NoRunningStats`], [`FoldError::ChannelMismatch`] or [`FoldError::BadVariance`];
/// [`FoldError::UnsupportedLayer`] for a layer type it cannot copy. `model` is never modified.
pub fn fold_batch_norm<T: Scalar>(model: &Sequential<T>) -> Result<Sequential<T>, FoldError> {
    let layers = model.layers();
    let mut out: Vec<Box<dyn Layer<T>>> = Vec::with_capacity(layers.len());
    for (index, layer) in layers.iter().enumerate() {
        let layer = layer.as_ref();
        let Some(bn) = layer.as_batch_norm() else {
            let copy = match layer.fold_own_batch_norms() {
                Some(folded) => folded.map_err(|source| FoldError::AtLayer {
                    index,
                    source: Box::new(source),
                })?,
                None => layer.boxed_clone().ok_or(FoldError::UnsupportedLayer {
                    index,
                    name: layer.name(),
                })?,
            };
            out.push(copy);
            continue;
        };
        let prev = index.checked_sub(1).map(|i| layers[i].as_ref());
        let not_after_affine = || FoldError::NotAfterAffine {
            index,
            previous: prev.map_or("input", |p| p.name()),
        };
        let folded = prev
            .and_then(|p| p.fold_batch_norm(bn))
            .ok_or_else(not_after_affine)?
            .map_err(|source| FoldError::AtLayer {
                index,
                source: Box::new(source),
            })?;
        // The previous layer was copied by the iteration before; its folded form replaces it.
        out.pop();
        out.push(folded);
    }
    Ok(Sequential::new(out, model.capacity())?)
}
