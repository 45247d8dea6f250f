//! Reads the PyTorch reference cases in `tests/fixtures/*.safetensors` (see the README there).

use std::collections::HashMap;
use std::path::PathBuf;

use batchnorm::{bf16, f16, Layout};
use safetensors::{Dtype, SafeTensors};

pub struct Fixture {
    pub name: String,
    pub meta: HashMap<String, String>,
    tensors: HashMap<String, (Dtype, Vec<u8>)>,
}

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

impl Fixture {
    pub fn load(name: &str) -> Self {
        let bytes = std::fs::read(dir().join(format!("{name}.safetensors"))).unwrap();
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = metadata.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, (v.dtype(), v.data().to_vec())))
            .collect();
        Self {
            name: name.to_string(),
            meta,
            tensors,
        }
    }

    pub fn meta(&self, key: &str) -> &str {
        self.meta
            .get(key)
            .unwrap_or_else(|| panic!("{}: no metadata `{key}`", self.name))
    }

    pub fn flag(&self, key: &str) -> bool {
        self.meta(key) == "true"
    }

    pub fn dims(&self) -> Vec<usize> {
        let s = self.meta("dims").trim_matches(|c| c == '[' || c == ']');
        s.split(',').map(|d| d.trim().parse().unwrap()).collect()
    }

    pub fn layout(&self) -> Layout {
        match self.meta("layout") {
            "channels_first" => Layout::ChannelsFirst,
            "channels_last" => Layout::ChannelsLast,
            other => panic!("{}: unknown layout {other}", self.name),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// A tensor widened to f64 (exact for every dtype stored).
    pub fn get(&self, key: &str) -> Vec<f64> {
        let (dtype, data) = self
            .tensors
            .get(key)
            .unwrap_or_else(|| panic!("{}: no tensor `{key}`", self.name));
        match dtype {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::BF16 => half_bits(data)
                .map(|h| bf16::from_bits(h).to_f64())
                .collect(),
            Dtype::F16 => half_bits(data)
                .map(|h| f16::from_bits(h).to_f64())
                .collect(),
            other => panic!("{}: `{key}` has unsupported dtype {other:?}", self.name),
        }
    }

    /// The storage type of a tensor (`"f32"`, `"bf16"`, ...).
    pub fn dtype(&self, key: &str) -> String {
        format!("{:?}", self.tensors[key].0).to_lowercase()
    }

    /// All case names in the fixture folder (single-BatchNorm cases only).
    pub fn all_names() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir())
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".safetensors").map(str::to_string)
            })
            .collect();
        names.sort();
        names
    }
}

fn half_bits(data: &[u8]) -> impl Iterator<Item = u16> + '_ {
    data.chunks_exact(2)
        .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
}
