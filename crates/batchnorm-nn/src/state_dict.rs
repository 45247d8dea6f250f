//! State dicts with PyTorch's names, stored as safetensors: save a model here and
//! `load_state_dict(strict=True)` it in PyTorch, or the other way round.
//!
//! Names follow `torch.nn.Module.state_dict()`:
//!
//! - a batch normalization at prefix `p` has `p.weight`, `p.bias` (shape `[C]`, only when
//!   affine), `p.running_mean`, `p.running_var` (`[C]`) and `p.num_batches_tracked` (a 0-dim
//!   int64 tensor), the last three only when tracking running statistics;
//! - a linear layer has `p.weight` (`[out, in]`) and `p.bias` (`[out]`);
//! - a [`Sequential`] names layer `i`'s tensors `i.weight`, `i.bias`, ... as
//!   `torch.nn.Sequential` does; layers without state (activations, pooling, flatten) take an
//!   index but have no entries.
//!
//! Floats are saved in the model's own type (`F32` for `f32`, `F64` for `f64`); loading accepts
//! `F32` or `F64` for every float tensor (converting, as PyTorch's `copy_` does) and only `I64`
//! for `num_batches_tracked`. Loading checks every key, dtype and shape before it changes
//! anything: a failed load leaves the model as it was.
//!
//! ```
//! use batchnorm::{BatchNorm, BatchNormConfig};
//! use batchnorm_nn::state_dict::{load_batch_norm, StateDict};
//! let mut bn = BatchNorm::<f32>::new(3, BatchNormConfig::default())?;
//! bn.running_mean = vec![0.5, -1.0, 2.0];
//! bn.num_batches_tracked = 7;
//! let mut sd = StateDict::new();
//! sd.insert_batch_norm("features.1", &bn)?;
//! assert!(sd.tensors.contains_key("features.1.num_batches_tracked"));
//! let bytes = sd.to_bytes()?;
//!
//! let mut fresh = BatchNorm::<f32>::new(3, BatchNormConfig::default())?;
//! let report = load_batch_norm(&mut fresh, &StateDict::from_bytes(&bytes)?, "features.1", true)?;
//! assert!(report.missing_keys.is_empty() && report.unexpected_keys.is_empty());
//! assert_eq!((fresh.running_mean[2], fresh.num_batches_tracked), (2.0, 7));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use batchnorm::Float;

use crate::error::{NnError, Result};
use crate::layers::{Layer, StateEntry, StateValue};
use crate::safetensors::{self, Dtype, SafetensorsError, Tensor};
use crate::scalar::Scalar;
use crate::Sequential;

/// Named tensors and string metadata, as in a safetensors file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    /// The tensors by key.
    pub tensors: BTreeMap<String, Tensor>,
    /// Free-form metadata (the header's `__metadata__`).
    pub metadata: BTreeMap<String, String>,
}

/// Keys that did not match, as PyTorch's `load_state_dict` returns them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Keys the model has and the state dict lacks (left unchanged).
    pub missing_keys: Vec<String>,
    /// Keys (within the loaded prefix) the state dict has and the model does not (ignored).
    pub unexpected_keys: Vec<String>,
}

/// Why a state dict does not fit a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateDictError {
    /// A tensor's shape differs from the model's.
    #[error("`{key}`: shape {got:?} in the state dict, the model has {expected:?}")]
    ShapeMismatch {
        /// The key.
        key: String,
        /// The model's shape.
        expected: Vec<usize>,
        /// The state dict's shape.
        got: Vec<usize>,
    },
    /// A tensor's dtype cannot be loaded into its slot.
    #[error("`{key}`: dtype {got} in the state dict, expected {expected}")]
    WrongDtype {
        /// The key.
        key: String,
        /// What is accepted (`"F32 or F64"`, `"I64"`).
        expected: &'static str,
        /// What the state dict holds.
        got: Dtype,
    },
    /// A negative `num_batches_tracked`.
    #[error("`{key}`: counter value {value} is negative")]
    NegativeCount {
        /// The key.
        key: String,
        /// The value.
        value: i64,
    },
    /// Missing or unexpected keys in a strict load.
    #[error("state dict does not match the model: missing keys {missing:?}, unexpected keys {unexpected:?}")]
    KeyMismatch {
        /// Keys the model has and the state dict lacks.
        missing: Vec<String>,
        /// Keys the state dict has and the model does not.
        unexpected: Vec<String>,
    },
    /// A layer has parameters but lists no state-dict entries ([`Layer::visit_state`]): saving
    /// it would silently drop them.
    #[error("layer {index} ({name}) has parameter `{param}` but no state-dict entries (Layer::visit_state)")]
    UnsupportedLayer {
        /// Index of the layer.
        index: usize,
        /// Its name.
        name: &'static str,
        /// The parameter.
        param: &'static str,
    },
}

/// The safetensors dtype of `T`.
fn dtype_of<T: Float>() -> Dtype {
    if T::NAME == "f32" {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

/// `prefix.name`, or `name` for an empty prefix.
fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Calls `f` on the state entries of a core batch-normalization module, in PyTorch's order:
/// `weight`, `bias` (when affine), `running_mean`, `running_var`, `num_batches_tracked` (when
/// tracking). Shapes are `[C]` and `[]`; a public vector resized away from C values is reported
/// by the length checks of saving and loading.
pub(crate) fn visit_batch_norm_state<T: Float>(
    bn: &mut batchnorm::BatchNorm<T>,
    f: &mut dyn FnMut(StateEntry<'_, T>),
) {
    let (c, cfg) = (bn.channels(), *bn.config());
    let vectors = [
        &mut bn.weight,
        &mut bn.bias,
        &mut bn.running_mean,
        &mut bn.running_var,
    ];
    visit_norm_state(c, cfg, vectors, &mut bn.num_batches_tracked, f);
}

/// [`visit_batch_norm_state`] for a synchronised batch normalization: the same entries.
pub(crate) fn visit_sync_batch_norm_state<T: Float>(
    bn: &mut batchnorm_dist::SyncBatchNorm<T>,
    f: &mut dyn FnMut(StateEntry<'_, T>),
) {
    let (c, cfg) = (bn.channels(), *bn.config());
    let vectors = [
        &mut bn.weight,
        &mut bn.bias,
        &mut bn.running_mean,
        &mut bn.running_var,
    ];
    visit_norm_state(c, cfg, vectors, &mut bn.num_batches_tracked, f);
}

/// The state entries of a batch normalization of `c` channels configured by `cfg`, from its
/// `[weight, bias, running_mean, running_var]` and counter.
fn visit_norm_state<T: Float>(
    c: usize,
    cfg: batchnorm::BatchNormConfig,
    [weight, bias, running_mean, running_var]: [&mut Vec<T>; 4],
    num_batches_tracked: &mut u64,
    f: &mut dyn FnMut(StateEntry<'_, T>),
) {
    let vectors: [(&'static str, bool, &mut Vec<T>); 4] = [
        ("weight", cfg.affine, weight),
        ("bias", cfg.affine, bias),
        ("running_mean", cfg.track_running_stats, running_mean),
        ("running_var", cfg.track_running_stats, running_var),
    ];
    for (name, present, v) in vectors {
        if present {
            f(StateEntry {
                name,
                shape: vec![c],
                value: StateValue::Float(v),
            });
        }
    }
    if cfg.track_running_stats {
        f(StateEntry {
            name: "num_batches_tracked",
            shape: Vec::new(),
            value: StateValue::Count(num_batches_tracked),
        });
    }
}

/// The tensor holding an entry's values.
fn to_tensor<T: Float>(entry: &StateEntry<'_, T>) -> Result<Tensor> {
    match &entry.value {
        StateValue::Float(v) => {
            let len: usize = entry.shape.iter().product();
            crate::error::check_len(entry.name, v.len(), len)?;
            match dtype_of::<T>() {
                // Exact: `T` is `f32` here, so the round trip through f64 changes nothing.
                Dtype::F32 => Tensor::from_f32(
                    &entry.shape,
                    &v.iter().map(|x| x.to_f64() as f32).collect::<Vec<_>>(),
                ),
                _ => Tensor::from_f64(
                    &entry.shape,
                    &v.iter().map(|x| x.to_f64()).collect::<Vec<_>>(),
                ),
            }
        }
        // PyTorch's counter is an int64; a u64 above i64::MAX saturates.
        StateValue::Count(n) => Tensor::from_i64(&[], &[i64::try_from(**n).unwrap_or(i64::MAX)]),
    }
}

impl StateDict {
    /// An empty state dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes safetensors bytes.
    ///
    /// # Errors
    /// Any [`SafetensorsError`].
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, SafetensorsError> {
        let (tensors, metadata) = safetensors::decode(bytes)?;
        Ok(StateDict { tensors, metadata })
    }

    /// Encodes as safetensors bytes.
    ///
    /// # Errors
    /// [`SafetensorsError::ReservedKey`] for a tensor named `__metadata__`.
    pub fn to_bytes(&self) -> std::result::Result<Vec<u8>, SafetensorsError> {
        safetensors::encode(&self.tensors, &self.metadata)
    }

    /// Reads a safetensors file.
    ///
    /// # Errors
    /// [`NnError::Io`] if it cannot be read, [`NnError::Safetensors`] (naming the file) if it is
    /// not valid.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| NnError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(&bytes).map_err(|source| NnError::Safetensors {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes a safetensors file (replacing it).
    ///
    /// # Errors
    /// [`NnError::Io`]; [`NnError::Safetensors`] for a tensor named `__metadata__`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes().map_err(|source| NnError::Safetensors {
            path: path.to_owned(),
            source,
        })?;
        std::fs::write(path, bytes).map_err(|source| NnError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Adds the entries of a core batch-normalization module under `prefix` (`""` for none).
    ///
    /// # Errors
    /// [`NnError::LengthMismatch`] if a public vector no longer has one value per channel.
    pub fn insert_batch_norm<T: Float>(
        &mut self,
        prefix: &str,
        bn: &batchnorm::BatchNorm<T>,
    ) -> Result<()> {
        // Visiting needs `&mut`; the clone is four vectors of C values.
        let mut bn = bn.clone();
        let mut out = Vec::new();
        visit_batch_norm_state(&mut bn, &mut |e| {
            out.push(to_tensor(&e).map(|t| (join(prefix, e.name), t)));
        });
        for kt in out {
            let (k, t) = kt?;
            self.tensors.insert(k, t);
        }
        Ok(())
    }
}

/// A value checked against the state dict, waiting to be written.
enum Staged<T> {
    Float(Vec<T>),
    Count(u64),
    /// Nothing to write (missing key).
    Keep,
}

/// Checks one entry against the state dict.
fn stage<T: Float>(
    key: &str,
    entry: &StateEntry<'_, T>,
    sd: &StateDict,
    missing: &mut Vec<String>,
) -> Result<Staged<T>> {
    let Some(t) = sd.tensors.get(key) else {
        // PyTorch's BatchNorm fills a missing counter with its current value instead of
        // reporting it (state dicts from before version 2, which had none; safetensors files
        // carry no version): the counter is kept.
        if entry.name != "num_batches_tracked" {
            missing.push(key.to_owned());
        }
        return Ok(Staged::Keep);
    };
    if t.shape() != entry.shape.as_slice() {
        return Err(StateDictError::ShapeMismatch {
            key: key.to_owned(),
            expected: entry.shape.clone(),
            got: t.shape().to_vec(),
        }
        .into());
    }
    match &entry.value {
        StateValue::Float(v) => {
            let values = t.to_f64_vec().ok_or_else(|| StateDictError::WrongDtype {
                key: key.to_owned(),
                expected: "F32 or F64",
                got: t.dtype(),
            })?;
            crate::error::check_len(entry.name, v.len(), values.len())?;
            Ok(Staged::Float(values.into_iter().map(T::from_f64).collect()))
        }
        StateValue::Count(_) => {
            let values = t.to_i64_vec().ok_or_else(|| StateDictError::WrongDtype {
                key: key.to_owned(),
                expected: "I64",
                got: t.dtype(),
            })?;
            // The shape is `[]`, so there is exactly one value.
            let value = values.first().copied().unwrap_or(0);
            let n = u64::try_from(value).map_err(|_| StateDictError::NegativeCount {
                key: key.to_owned(),
                value,
            })?;
            Ok(Staged::Count(n))
        }
    }
}

/// The keyed entries of a module, visited twice (check, then write) in the same order.
type KeyedVisit<'v, T> = dyn FnMut(&mut dyn FnMut(String, StateEntry<'_, T>)) -> Result<()> + 'v;

/// Loads `sd` into the entries `visit` yields; `scope` is the key prefix (ending in `.`) within
/// which unexpected keys are reported (`""`: all keys).
fn load_keyed<T: Float>(
    visit: &mut KeyedVisit<'_, T>,
    sd: &StateDict,
    scope: &str,
    strict: bool,
) -> Result<LoadReport> {
    let mut staged = Vec::new();
    let mut first_error = None;
    let mut expected = BTreeSet::new();
    let mut missing = Vec::new();
    visit(&mut |key, entry| {
        if first_error.is_some() {
            return;
        }
        match stage(&key, &entry, sd, &mut missing) {
            Ok(s) => staged.push(s),
            Err(e) => first_error = Some(e),
        }
        expected.insert(key);
    })?;
    if let Some(e) = first_error {
        return Err(e);
    }
    let unexpected: Vec<String> = sd
        .tensors
        .keys()
        .filter(|k| k.starts_with(scope) && !expected.contains(*k))
        .cloned()
        .collect();
    if strict && !(missing.is_empty() && unexpected.is_empty()) {
        return Err(StateDictError::KeyMismatch {
            missing,
            unexpected,
        }
        .into());
    }
    let mut staged = staged.into_iter();
    visit(&mut |_, entry| match (staged.next(), entry.value) {
        (Some(Staged::Float(new)), StateValue::Float(v)) => v.copy_from_slice(&new),
        (Some(Staged::Count(new)), StateValue::Count(n)) => *n = new,
        // `Keep`; the same visit order makes every other pairing impossible.
        _ => {}
    })?;
    Ok(LoadReport {
        missing_keys: missing,
        unexpected_keys: unexpected,
    })
}

/// Loads the entries under `prefix` (`""` for none) of `sd` into a core batch-normalization
/// module, as PyTorch's `bn.load_state_dict(sd, strict)` (with `prefix` selecting the
/// submodule). Without `strict`, missing keys keep their values and unexpected keys are
/// ignored; both are reported. A missing `num_batches_tracked` keeps its value without being
/// reported, as in PyTorch.
///
/// # Errors
/// [`StateDictError`] (as [`NnError::StateDict`]) for a wrong shape or dtype, a negative
/// counter, or (when `strict`) missing or unexpected keys; the module is then unchanged.
pub fn load_batch_norm<T: Float>(
    bn: &mut batchnorm::BatchNorm<T>,
    sd: &StateDict,
    prefix: &str,
    strict: bool,
) -> Result<LoadReport> {
    let scope = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}.")
    };
    load_keyed(
        &mut |f| {
            visit_batch_norm_state(bn, &mut |e| f(join(prefix, e.name), e));
            Ok(())
        },
        sd,
        &scope,
        strict,
    )
}

/// Calls `f` on a layer's state entries ([`Layer::visit_state`]); a layer with parameters but
/// no state entries is refused, so that saving it never drops them.
fn visit_layer_state<T: Scalar>(
    index: usize,
    layer: &mut dyn Layer<T>,
    f: &mut dyn FnMut(StateEntry<'_, T>),
) -> Result<()> {
    let mut entries = 0;
    layer.visit_state(&mut |e| {
        entries += 1;
        f(e);
    });
    if entries == 0 {
        let mut param = None;
        layer.visit_params(&mut |p| {
            param = param.or(Some(p.name));
        });
        if let Some(param) = param {
            return Err(StateDictError::UnsupportedLayer {
                index,
                name: layer.name(),
                param,
            }
            .into());
        }
    }
    Ok(())
}

/// Every layer's entries, keyed `i.name`.
fn visit_model<T: Scalar>(
    layers: &mut [Box<dyn Layer<T>>],
    f: &mut dyn FnMut(String, StateEntry<'_, T>),
) -> Result<()> {
    for (i, layer) in layers.iter_mut().enumerate() {
        visit_layer_state(i, layer.as_mut(), &mut |e| f(format!("{i}.{}", e.name), e))?;
    }
    Ok(())
}

impl<T: Scalar> Sequential<T> {
    /// The model's state dict, keyed as `torch.nn.Sequential` keys it (layer `i`'s tensors are
    /// `i.weight`, `i.bias`, `i.running_mean`, ...), floats in the model's type. (`&mut` only
    /// because layers expose their state through one mutable visitor.)
    ///
    /// # Errors
    /// [`StateDictError::UnsupportedLayer`] if a layer has parameters it does not list in its
    /// state; [`NnError::LengthMismatch`] for a corrupted layer.
    pub fn state_dict(&mut self) -> Result<StateDict> {
        let mut out = Vec::new();
        visit_model(self.layers_mut(), &mut |key, e| {
            out.push(to_tensor(&e).map(|t| (key, t)));
        })?;
        let mut sd = StateDict::new();
        for kt in out {
            let (k, t) = kt?;
            sd.tensors.insert(k, t);
        }
        Ok(sd)
    }

    /// Loads a state dict keyed as `torch.nn.Sequential` keys it, as PyTorch's
    /// `model.load_state_dict(sd, strict)`: without `strict`, missing keys keep their values and
    /// unexpected keys are ignored (both are reported).
    ///
    /// # Errors
    /// [`StateDictError`] for a wrong shape or dtype, a negative counter, (when `strict`)
    /// missing or unexpected keys, or a layer whose parameters are not in its state; the model
    /// is then unchanged.
    pub fn load_state_dict(&mut self, sd: &StateDict, strict: bool) -> Result<LoadReport> {
        let layers = self.layers_mut();
        load_keyed(&mut |f| visit_model(layers, f), sd, "", strict)
    }
}
