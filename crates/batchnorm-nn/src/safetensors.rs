//! The safetensors file format, read and written without trusting a single byte of the input.
//!
//! A file is `8-byte little-endian header length n`, then `n` bytes of UTF-8 JSON, then the data:
//!
//! ```text
//! {"__metadata__": {"k": "v"},
//!  "0.weight": {"dtype": "F32", "shape": [100, 784], "data_offsets": [0, 313600]}, ...}
//! ```
//!
//! `data_offsets` are `[begin, end)` byte ranges relative to the start of the data; the ranges of
//! all tensors tile the data exactly (no gap, no overlap, nothing after the last one), and each
//! holds `prod(shape) * size(dtype)` bytes, little-endian, row-major. This is the rule of the
//! reference implementation (`safetensors`, `validate`); the header may end in spaces (writers pad
//! it so the data starts 8-byte aligned).
//!
//! [`decode`] checks everything before it copies anything: the header length against the file
//! (and [`MAX_HEADER_LEN`]), UTF-8, JSON, duplicate keys, dtypes, shape products (overflow),
//! every range against the data and against its neighbours. Each allocation is bounded by the
//! input's length.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeStruct, Serializer};
use serde_json::Value;

use crate::error::{NnError, Result};

/// The largest header accepted, in bytes (the reference implementation's limit). Real headers
/// are about 100 bytes a tensor.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// The key of the free-form string-to-string metadata in the header.
const METADATA_KEY: &str = "__metadata__";

/// An element type of the safetensors format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Dtype {
    /// Boolean, one byte.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float, 5 exponent bits.
    F8E5M2,
    /// 8-bit float, 4 exponent bits.
    F8E4M3,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integer (PyTorch's `torch.long`, the type of `num_batches_tracked`).
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl Dtype {
    const ALL: [Dtype; 15] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E5M2,
        Dtype::F8E4M3,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }

    /// The name in the header (`"F32"`, `"I64"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// The dtype named `name` in a header, if it is one this reader knows.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes are not a valid safetensors file. Every variant about a tensor names its key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SafetensorsError {
    /// The file ends before the header length, the header, or the data it declares.
    #[error("truncated: {what} needs {expected} bytes, the file has {got}")]
    Truncated {
        /// What is cut off.
        what: &'static str,
        /// Bytes required.
        expected: u64,
        /// Bytes present.
        got: u64,
    },
    /// The header length is above [`MAX_HEADER_LEN`].
    #[error("header length {len} is above the limit of {MAX_HEADER_LEN} bytes")]
    HeaderTooLarge {
        /// The declared length.
        len: u64,
    },
    /// The header is not UTF-8.
    #[error("header is not UTF-8 (invalid byte at offset {offset} of the header)")]
    HeaderNotUtf8 {
        /// Offset of the first invalid byte within the header.
        offset: usize,
    },
    /// The header is not a JSON object.
    #[error("header is not a JSON object: {source}")]
    HeaderJson {
        /// The parser's error (with line and column).
        source: serde_json::Error,
    },
    /// A key appears twice in the header.
    #[error("key `{key}` appears twice in the header")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// `__metadata__` is not an object of strings.
    #[error("`__metadata__` must map strings to strings: {problem}")]
    BadMetadata {
        /// What is wrong.
        problem: String,
    },
    /// A tensor's entry lacks a field or has one of the wrong JSON type.
    #[error("tensor `{key}`: {problem}")]
    BadEntry {
        /// The tensor.
        key: String,
        /// What is wrong (`"shape must be an array of non-negative integers"`, ...).
        problem: &'static str,
    },
    /// A dtype this reader does not know.
    #[error("tensor `{key}`: unknown dtype `{dtype}`")]
    UnknownDtype {
        /// The tensor.
        key: String,
        /// The dtype string in the header.
        dtype: String,
    },
    /// The shape's element count (or byte count) does not fit in `usize`.
    #[error("tensor `{key}`: shape {shape:?} of {dtype} describes more bytes than fit in memory")]
    ShapeOverflow {
        /// The tensor.
        key: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Its dtype.
        dtype: Dtype,
    },
    /// `data_offsets` do not span exactly the bytes the shape and dtype need.
    #[error(
        "tensor `{key}`: data_offsets [{begin}, {end}] do not span the {expected} bytes of \
         shape {shape:?} {dtype}"
    )]
    SizeMismatch {
        /// The tensor.
        key: String,
        /// Start offset.
        begin: u64,
        /// End offset.
        end: u64,
        /// Its shape.
        shape: Vec<usize>,
        /// Its dtype.
        dtype: Dtype,
        /// Bytes the shape and dtype need.
        expected: usize,
    },
    /// `data_offsets` point past the end of the file.
    #[error(
        "tensor `{key}`: data_offsets [{begin}, {end}] reach past the end of the {data_len} \
         bytes of data"
    )]
    OutOfBounds {
        /// The tensor.
        key: String,
        /// Start offset.
        begin: u64,
        /// End offset.
        end: u64,
        /// Bytes of data in the file.
        data_len: u64,
    },
    /// Two tensors share bytes.
    #[error("tensor `{key}` starts at byte {begin} of the data, inside `{previous}` (which ends at {previous_end})")]
    Overlap {
        /// The tensor.
        key: String,
        /// Its start offset.
        begin: u64,
        /// The tensor it overlaps.
        previous: String,
        /// Where that one ends.
        previous_end: u64,
    },
    /// A tensor named `__metadata__` (writing only): the name is reserved for the metadata.
    #[error("a tensor cannot be named `__metadata__` (reserved for the metadata)")]
    ReservedKey,
    /// Bytes of the data no tensor claims.
    #[error("data bytes {begin}..{end} belong to no tensor (tensors must tile the data)")]
    Gap {
        /// First unclaimed byte.
        begin: u64,
        /// End of the unclaimed run.
        end: u64,
    },
}

/// A tensor held in memory: dtype, shape and its little-endian bytes, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// The 8 bytes of a `chunks_exact(8)` chunk.
fn eight(c: &[u8]) -> [u8; 8] {
    let mut b = [0; 8];
    b.copy_from_slice(c);
    b
}

/// Number of elements of `shape`, or `None` on overflow.
fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl Tensor {
    /// A tensor from raw little-endian bytes.
    ///
    /// # Errors
    /// [`NnError::LengthMismatch`] unless `data` holds exactly `prod(shape) * dtype.size()` bytes.
    pub fn new(dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Result<Self> {
        let expected = element_count(&shape)
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or(NnError::Empty {
                what: "tensor (shape too large)",
            })?;
        crate::error::check_len("tensor bytes", data.len(), expected)?;
        Ok(Tensor { dtype, shape, data })
    }

    /// An `F32` tensor.
    ///
    /// # Errors
    /// [`NnError::LengthMismatch`] unless `values.len() == prod(shape)`.
    pub fn from_f32(shape: &[usize], values: &[f32]) -> Result<Self> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::new(Dtype::F32, shape.to_vec(), data)
    }

    /// An `F64` tensor.
    ///
    /// # Errors
    /// [`NnError::LengthMismatch`] unless `values.len() == prod(shape)`.
    pub fn from_f64(shape: &[usize], values: &[f64]) -> Result<Self> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::new(Dtype::F64, shape.to_vec(), data)
    }

    /// An `I64` tensor.
    ///
    /// # Errors
    /// [`NnError::LengthMismatch`] unless `values.len() == prod(shape)`.
    pub fn from_i64(shape: &[usize], values: &[i64]) -> Result<Self> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::new(Dtype::I64, shape.to_vec(), data)
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The dimensions, outermost first (`[]` for a scalar).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The raw little-endian bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The values as `f64` if the dtype is `F32` (widened exactly) or `F64`; `None` otherwise.
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        match self.dtype {
            Dtype::F32 => Some(
                self.data
                    .chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
            ),
            Dtype::F64 => Some(
                self.data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(eight(c)))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The values if the dtype is `I64`; `None` otherwise.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        (self.dtype == Dtype::I64).then(|| {
            self.data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(eight(c)))
                .collect()
        })
    }
}

/// The tensors (by key) and the metadata of a file.
pub type Decoded = (BTreeMap<String, Tensor>, BTreeMap<String, String>);

/// The header's top-level object, keys in file order, duplicates kept (so they can be refused).
struct HeaderEntries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for HeaderEntries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = HeaderEntries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<HeaderEntries, A::Error> {
                // No size hint is trusted: the vector grows with the entries actually parsed.
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(HeaderEntries(entries))
            }
        }
        d.deserialize_map(EntriesVisitor)
    }
}

/// A tensor's validated header entry.
struct Entry {
    key: String,
    dtype: Dtype,
    shape: Vec<usize>,
    begin: usize,
    end: usize,
}

/// Decodes a safetensors file held in memory.
///
/// # Errors
/// Any [`SafetensorsError`]; nothing is allocated before the header length has been checked
/// against `bytes.len()`.
pub fn decode(bytes: &[u8]) -> std::result::Result<Decoded, SafetensorsError> {
    let file_len = bytes.len() as u64;
    let Some((len_bytes, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(SafetensorsError::Truncated {
            what: "the header length",
            expected: 8,
            got: file_len,
        });
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    if header_len > MAX_HEADER_LEN {
        return Err(SafetensorsError::HeaderTooLarge { len: header_len });
    }
    if header_len > rest.len() as u64 {
        return Err(SafetensorsError::Truncated {
            what: "the header",
            expected: 8 + header_len,
            got: file_len,
        });
    }
    // `header_len <= rest.len()`, so it fits in usize.
    let (header, data) = rest.split_at(header_len as usize);
    let header = std::str::from_utf8(header).map_err(|e| SafetensorsError::HeaderNotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let HeaderEntries(raw) =
        serde_json::from_str(header).map_err(|source| SafetensorsError::HeaderJson { source })?;

    let mut seen = std::collections::BTreeSet::new();
    let mut metadata = BTreeMap::new();
    let mut entries = Vec::with_capacity(raw.len());
    for (key, value) in raw {
        if !seen.insert(key.clone()) {
            return Err(SafetensorsError::DuplicateKey { key });
        }
        if key == METADATA_KEY {
            metadata = parse_metadata(value)?;
        } else {
            entries.push(parse_entry(key, &value, data.len())?);
        }
    }

    // The ranges must tile the data: sorted by start, each begins where the previous ended.
    entries.sort_by_key(|e| (e.begin, e.end));
    let mut pos = 0usize;
    let mut previous: Option<&Entry> = None;
    for e in &entries {
        if e.begin > pos {
            return Err(SafetensorsError::Gap {
                begin: pos as u64,
                end: e.begin as u64,
            });
        }
        if e.begin < pos {
            // `pos > 0`, so some tensor came before.
            let (previous, previous_end) = previous
                .map(|p| (p.key.clone(), p.end as u64))
                .unwrap_or_default();
            return Err(SafetensorsError::Overlap {
                key: e.key.clone(),
                begin: e.begin as u64,
                previous,
                previous_end,
            });
        }
        pos = e.end;
        previous = Some(e);
    }
    if pos != data.len() {
        return Err(SafetensorsError::Gap {
            begin: pos as u64,
            end: data.len() as u64,
        });
    }

    let tensors = entries
        .into_iter()
        .map(|e| {
            let t = Tensor {
                dtype: e.dtype,
                shape: e.shape,
                data: data[e.begin..e.end].to_vec(),
            };
            (e.key, t)
        })
        .collect();
    Ok((tensors, metadata))
}

fn parse_metadata(value: Value) -> std::result::Result<BTreeMap<String, String>, SafetensorsError> {
    let Value::Object(map) = value else {
        return Err(SafetensorsError::BadMetadata {
            problem: "not an object".into(),
        });
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            _ => Err(SafetensorsError::BadMetadata {
                problem: format!("the value of `{k}` is not a string"),
            }),
        })
        .collect()
}

fn parse_entry(
    key: String,
    value: &Value,
    data_len: usize,
) -> std::result::Result<Entry, SafetensorsError> {
    let bad = |key: String, problem| SafetensorsError::BadEntry { key, problem };
    let Value::Object(obj) = value else {
        return Err(bad(key, "entry is not an object"));
    };
    let Some(Value::String(dtype_name)) = obj.get("dtype") else {
        return Err(bad(key, "`dtype` missing or not a string"));
    };
    let Some(dtype) = Dtype::from_name(dtype_name) else {
        return Err(SafetensorsError::UnknownDtype {
            key,
            dtype: dtype_name.clone(),
        });
    };
    let Some(Value::Array(dims)) = obj.get("shape") else {
        return Err(bad(key, "`shape` missing or not an array"));
    };
    let mut shape = Vec::with_capacity(dims.len());
    for d in dims {
        match d.as_u64().and_then(|d| usize::try_from(d).ok()) {
            Some(d) => shape.push(d),
            None => {
                return Err(bad(
                    key,
                    "`shape` must hold non-negative integers that fit in usize",
                ))
            }
        }
    }
    let offsets = match obj.get("data_offsets") {
        Some(Value::Array(o)) if o.len() == 2 => o,
        _ => return Err(bad(key, "`data_offsets` missing or not a pair")),
    };
    let (Some(begin), Some(end)) = (offsets[0].as_u64(), offsets[1].as_u64()) else {
        return Err(bad(key, "`data_offsets` must be non-negative integers"));
    };
    if begin > end {
        return Err(bad(key, "`data_offsets` end before they begin"));
    }
    if end > data_len as u64 {
        return Err(SafetensorsError::OutOfBounds {
            key,
            begin,
            end,
            data_len: data_len as u64,
        });
    }
    let Some(expected) = element_count(&shape).and_then(|n| n.checked_mul(dtype.size())) else {
        return Err(SafetensorsError::ShapeOverflow { key, shape, dtype });
    };
    // `begin <= end <= data_len`, so both fit in usize.
    let (begin, end) = (begin as usize, end as usize);
    if end - begin != expected {
        return Err(SafetensorsError::SizeMismatch {
            key,
            begin: begin as u64,
            end: end as u64,
            shape,
            dtype,
            expected,
        });
    }
    Ok(Entry {
        key,
        dtype,
        shape,
        begin,
        end,
    })
}

/// The header of a file being written: `__metadata__` (when not empty), then each tensor's
/// entry in key order, its data following the previous tensor's.
struct HeaderOut<'a> {
    tensors: &'a BTreeMap<String, Tensor>,
    metadata: &'a BTreeMap<String, String>,
}

/// One tensor's header entry.
struct EntryOut<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    data_offsets: [usize; 2],
}

impl Serialize for HeaderOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if !self.metadata.is_empty() {
            map.serialize_entry(METADATA_KEY, self.metadata)?;
        }
        let mut offset = 0;
        for (key, t) in self.tensors {
            let end = offset + t.data.len();
            let entry = EntryOut {
                dtype: t.dtype,
                shape: &t.shape,
                data_offsets: [offset, end],
            };
            map.serialize_entry(key, &entry)?;
            offset = end;
        }
        map.end()
    }
}

impl Serialize for EntryOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut e = s.serialize_struct("Entry", 3)?;
        e.serialize_field("dtype", self.dtype.name())?;
        e.serialize_field("shape", self.shape)?;
        e.serialize_field("data_offsets", &self.data_offsets)?;
        e.end()
    }
}

/// Encodes tensors and metadata as a safetensors file: the header lists `__metadata__` (when
/// not empty) and the tensors in key order, padded with spaces so the data starts 8-byte aligned;
/// the data follow in the same order.
///
/// # Errors
/// [`SafetensorsError::ReservedKey`] for a tensor named `__metadata__`, which readers would take
/// for the metadata.
pub fn encode(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> std::result::Result<Vec<u8>, SafetensorsError> {
    if tensors.contains_key(METADATA_KEY) {
        return Err(SafetensorsError::ReservedKey);
    }
    // Cannot fail (string keys; strings and integers as values); mapped rather than unwrapped.
    let mut header = serde_json::to_string(&HeaderOut { tensors, metadata })
        .map_err(|source| SafetensorsError::HeaderJson { source })?;
    let offset: usize = tensors.values().map(|t| t.data.len()).sum();
    while (8 + header.len()) % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for t in tensors.values() {
        out.extend_from_slice(&t.data);
    }
    Ok(out)
}
