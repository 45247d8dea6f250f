//! Hostile files for both readers (safetensors and IDX): truncated at every length, bit-flipped,
//! and with edited headers. Each must give an error (or, for a flip that keeps the file valid, a
//! consistent result), never a panic, and never an allocation the input's size cannot justify:
//! a peak-tracking allocator (this test binary only) records the largest single allocation made
//! by each decode.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;
use std::io::Write;

use batchnorm::{BatchNorm as CoreBn, BatchNormConfig};
use batchnorm_nn::data::{decode_idx, read_idx, IdxError};
use batchnorm_nn::safetensors::{SafetensorsError, Tensor, MAX_HEADER_LEN};
use batchnorm_nn::state_dict::StateDict;
use batchnorm_nn::NnError;
use flate2::{write::GzEncoder, Compression};
use proptest::prelude::*;

struct PeakTracking;

thread_local! {
    /// The largest allocation (or reallocation) made by this thread since the last reset.
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations during thread teardown, after the slot is gone, are not tracked.
    let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
}

// SAFETY: defers every call to the system allocator unchanged; only records sizes in a
// thread-local `Cell` (const-initialised, no destructor: touching it never allocates).
unsafe impl GlobalAlloc for PeakTracking {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: `ptr` came from `System` with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: PeakTracking = PeakTracking;

/// Runs `f` and returns its result with the largest single allocation it made.
fn peak<R>(f: impl FnOnce() -> R) -> (R, usize) {
    PEAK.with(|p| p.set(0));
    let r = f();
    (r, PEAK.with(Cell::get))
}

/// What a safetensors file of `len` bytes can justify: the copied data (at most `len`), and the
/// parsed header, whose JSON values take at most ~32 bytes (a `serde_json::Value`) per 2 bytes
/// of text (`0,`), doubled by vector growth. Plus a constant for small buffers.
fn safetensors_budget(len: usize) -> usize {
    32 * len + 4096
}

/// What an IDX file of `len` bytes can justify: its data, at most `len` bytes plain; gzipped,
/// at most the DEFLATE ratio bound (1032:1) that the reader caps its reservation at, plus the
/// decoder's own tables (~64 KiB).
fn idx_budget(len: usize) -> usize {
    1032 * len + (1 << 17)
}

// ---------------------------------------------------------------------------------------------
// safetensors

/// A valid file: two prefixed batch normalizations (one F64 tensor among F32) and metadata.
fn sample_safetensors() -> Vec<u8> {
    let mut sd = StateDict::new();
    let mut bn = CoreBn::<f32>::new(3, BatchNormConfig::default()).unwrap();
    bn.running_mean = vec![0.5, -1.0, 2.0];
    bn.num_batches_tracked = 3;
    sd.insert_batch_norm("1", &bn).unwrap();
    sd.insert_batch_norm("4", &bn).unwrap();
    sd.tensors.insert(
        "4.running_var".into(),
        Tensor::from_f64(&[3], &[1.0, 2.0, 3.0]).unwrap(),
    );
    sd.metadata.insert("format".into(), "pt".into());
    sd.to_bytes().unwrap()
}

/// Decodes, checking the allocation budget; a file that decodes must also re-encode to one
/// that decodes to the same state dict.
fn decode_checked(bytes: &[u8]) -> Result<StateDict, SafetensorsError> {
    let (r, most) = peak(|| StateDict::from_bytes(bytes));
    assert!(
        most <= safetensors_budget(bytes.len()),
        "{most} bytes allocated at once for a {}-byte file",
        bytes.len()
    );
    if let Ok(sd) = &r {
        assert_eq!(&StateDict::from_bytes(&sd.to_bytes().unwrap()).unwrap(), sd);
    }
    r
}

/// A file with the given header text (padded) and `data_len` zero bytes of data.
fn with_header(header: &str, data_len: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.resize(v.len() + data_len, 0);
    v
}

#[test]
fn the_tracker_sees_allocations() {
    // Otherwise every budget check below would pass vacuously.
    let (v, most) = peak(|| vec![0u8; 1 << 20]);
    assert!(most >= 1 << 20 && v.len() == 1 << 20);
    let (_, most) = peak(|| ());
    assert_eq!(most, 0);
}

#[test]
fn safetensors_every_truncation_is_an_error() {
    let full = sample_safetensors();
    decode_checked(&full).unwrap();
    for len in 0..full.len() {
        let e = decode_checked(&full[..len]).unwrap_err();
        // Tensors tile the data exactly, so a cut is always noticed, by the length field, the
        // header, or the data.
        assert!(
            matches!(
                e,
                SafetensorsError::Truncated { .. }
                    | SafetensorsError::HeaderJson { .. }
                    | SafetensorsError::HeaderNotUtf8 { .. }
                    | SafetensorsError::OutOfBounds { .. }
                    | SafetensorsError::Gap { .. }
            ),
            "cut at {len}: {e}"
        );
    }
}

#[test]
fn safetensors_header_length_claims() {
    let full = sample_safetensors();
    let data_start = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    for claim in [
        u64::MAX,
        1 << 63,
        MAX_HEADER_LEN + 1,
        MAX_HEADER_LEN,
        full.len() as u64,
        (full.len() - 7) as u64,
    ] {
        let mut b = full.clone();
        b[..8].copy_from_slice(&claim.to_le_bytes());
        let e = decode_checked(&b).unwrap_err();
        let msg = e.to_string();
        if claim > MAX_HEADER_LEN {
            assert!(matches!(e, SafetensorsError::HeaderTooLarge { len } if len == claim));
        } else {
            assert!(
                matches!(e, SafetensorsError::Truncated { expected, .. } if expected == 8 + claim),
                "{msg}"
            );
        }
    }
    // A shorter claim cuts the JSON; a longer one still inside the file swallows data bytes.
    for claim in [0, 1, (data_start - 9) as u64, (data_start - 7) as u64] {
        let mut b = full.clone();
        b[..8].copy_from_slice(&claim.to_le_bytes());
        assert!(decode_checked(&b).is_err(), "claim {claim}");
    }
}

#[test]
fn safetensors_header_edits_name_the_problem() {
    let f32x3 = r#""dtype":"F32","shape":[3]"#;
    let cases: Vec<(String, usize, &str)> = vec![
        // Garbage and wrong JSON types.
        ("".into(), 0, "not a JSON object"),
        ("[1, 2]".into(), 0, "not a JSON object"),
        ("{\"a\": ".into(), 0, "not a JSON object"),
        ("nul".into(), 0, "not a JSON object"),
        (
            format!("{}1{}", "[".repeat(200), "]".repeat(200)),
            0,
            "not a JSON object",
        ),
        (
            format!("{{\"a\":{}1{}}}", "[".repeat(5000), "]".repeat(5000)),
            0,
            "not a JSON object",
        ),
        ("{\"a\": 1}".into(), 0, "tensor `a`: entry is not an object"),
        (
            r#"{"a":{"shape":[3],"data_offsets":[0,12]}}"#.into(),
            12,
            "tensor `a`: `dtype`",
        ),
        (
            r#"{"a":{"dtype":"F32","data_offsets":[0,12]}}"#.into(),
            12,
            "tensor `a`: `shape`",
        ),
        (
            format!(r#"{{"a":{{{f32x3}}}}}"#),
            12,
            "tensor `a`: `data_offsets`",
        ),
        (
            format!(r#"{{"a":{{{f32x3},"data_offsets":[0]}}}}"#),
            12,
            "`data_offsets` missing or not a pair",
        ),
        (
            format!(r#"{{"a":{{{f32x3},"data_offsets":[0,-12]}}}}"#),
            12,
            "non-negative",
        ),
        (
            format!(r#"{{"a":{{{f32x3},"data_offsets":[0,1.2e1]}}}}"#),
            12,
            "non-negative",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[-3],"data_offsets":[0,12]}}"#.into(),
            12,
            "`shape` must hold",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[3.5],"data_offsets":[0,12]}}"#.into(),
            12,
            "`shape` must hold",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":["3"],"data_offsets":[0,12]}}"#.into(),
            12,
            "`shape` must hold",
        ),
        // Dtypes and sizes.
        (
            r#"{"a":{"dtype":"F33","shape":[3],"data_offsets":[0,12]}}"#.into(),
            12,
            "tensor `a`: unknown dtype `F33`",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,12]}}"#.into(),
            12,
            "tensor `a`: shape",
        ),
        (
            r#"{"a":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,12]}}"#.into(),
            12,
            "more bytes than fit",
        ),
        (
            format!(r#"{{"a":{{{f32x3},"data_offsets":[0,8]}}}}"#),
            8,
            "do not span the 12 bytes",
        ),
        // Offsets: past the end, reversed, overlapping, gaps, trailing data.
        (
            format!(r#"{{"a":{{{f32x3},"data_offsets":[0,12]}}}}"#),
            11,
            "reach past the end",
        ),
        (
            format!(r#"{{"a":{{{f32x3},"data_offsets":[0,18446744073709551615]}}}}"#),
            12,
            "reach past the end",
        ),
        (
            format!(r#"{{"a":{{{f32x3},"data_offsets":[12,0]}}}}"#),
            12,
            "end before they begin",
        ),
        (
            format!(
                r#"{{"a":{{{f32x3},"data_offsets":[0,12]}},"b":{{{f32x3},"data_offsets":[8,20]}}}}"#
            ),
            20,
            "`b` starts at byte 8 of the data, inside `a`",
        ),
        (
            format!(
                r#"{{"a":{{{f32x3},"data_offsets":[0,12]}},"b":{{{f32x3},"data_offsets":[0,12]}}}}"#
            ),
            12,
            "inside `a`",
        ),
        (
            format!(r#"{{"a":{{{f32x3},"data_offsets":[4,16]}}}}"#),
            16,
            "data bytes 0..4 belong to no tensor",
        ),
        (
            format!(r#"{{"a":{{{f32x3},"data_offsets":[0,12]}}}}"#),
            13,
            "data bytes 12..13 belong to no tensor",
        ),
        // Keys and metadata.
        (
            format!(
                r#"{{"a":{{{f32x3},"data_offsets":[0,12]}},"a":{{{f32x3},"data_offsets":[12,24]}}}}"#
            ),
            24,
            "key `a` appears twice",
        ),
        (
            r#"{"__metadata__":{"k":1}}"#.into(),
            0,
            "the value of `k` is not a string",
        ),
        (
            r#"{"__metadata__":[]}"#.into(),
            0,
            "must map strings to strings",
        ),
        (
            r#"{"__metadata__":{},"__metadata__":{}}"#.into(),
            0,
            "appears twice",
        ),
    ];
    for (header, data_len, want) in cases {
        let bytes = with_header(&header, data_len);
        let e = decode_checked(&bytes).unwrap_err().to_string();
        let shown: String = header.chars().take(80).collect();
        assert!(e.contains(want), "header {shown}: got `{e}`, want `{want}`");
    }
    // Not UTF-8.
    let mut bytes = with_header(
        r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#,
        0,
    );
    bytes[10] = 0xFF;
    let e = decode_checked(&bytes).unwrap_err();
    assert!(
        matches!(e, SafetensorsError::HeaderNotUtf8 { offset: 2 }),
        "{e}"
    );
}

#[test]
fn safetensors_valid_oddities_are_accepted() {
    // Offsets out of key order, zero-size tensors, a scalar, unknown extra fields, whitespace
    // and no padding: all valid per the format.
    let h = r#" {"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":true},
        "a":{"dtype":"I64","shape":[],"data_offsets":[4,12]},
        "e":{"dtype":"BF16","shape":[0,7],"data_offsets":[12,12]},
        "__metadata__":{"note":"\u00e9\n"}}"#;
    let sd = decode_checked(&with_header(h, 12)).unwrap();
    assert_eq!(sd.tensors["a"].to_i64_vec().unwrap(), [0]);
    assert_eq!(sd.tensors["b"].shape(), [1]);
    assert!(sd.tensors["e"].is_empty());
    assert_eq!(sd.metadata["note"], "\u{e9}\n");
    // The reference implementation agrees on what it accepts.
    assert!(safetensors::SafeTensors::deserialize(&sd.to_bytes().unwrap()).is_ok());
}

#[test]
fn safetensors_file_errors_name_file_and_problem() {
    let dir = std::env::temp_dir().join(format!("bn-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("cut.safetensors");
    let full = sample_safetensors();
    std::fs::write(&p, &full[..full.len() - 1]).unwrap();
    let e = StateDict::read(&p).unwrap_err();
    assert!(matches!(&e, NnError::Safetensors { path, .. } if path == &p));
    let msg = e.to_string();
    assert!(
        msg.contains("cut.safetensors") && msg.contains("belong to no tensor")
            || msg.contains("reach past the end"),
        "{msg}"
    );
    assert!(matches!(
        StateDict::read(&dir.join("absent.safetensors")),
        Err(NnError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `file` with the first occurrence of `from` in its header replaced by `to` (the header length
/// updated, the data unchanged).
fn edit_header(file: &[u8], from: &str, to: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&file[8..8 + n]).unwrap();
    assert!(header.contains(from));
    let mut out = with_header(&header.replacen(from, to, 1), 0);
    out.extend_from_slice(&file[8 + n..]);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random bit flips anywhere: an error or a consistent state dict, within budget.
    #[test]
    fn safetensors_bit_flips(flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6)) {
        let mut b = sample_safetensors();
        for (at, bit) in flips {
            let i = at.index(b.len());
            b[i] ^= 1 << bit;
        }
        let _ = decode_checked(&b);
    }

    /// Flips confined to the header, where the structure lives.
    #[test]
    fn safetensors_header_bit_flips(flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4)) {
        let mut b = sample_safetensors();
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        for (at, bit) in flips {
            let i = 8 + at.index(n);
            b[i] ^= 1 << bit;
        }
        let _ = decode_checked(&b);
    }

    /// Any number substituted for an offset or a dimension.
    #[test]
    fn safetensors_number_edits(which in 0usize..4, value in prop_oneof![
        0u64..64, Just(u64::MAX), Just(u64::from(u32::MAX) + 1), Just(1u64 << 61)
    ]) {
        let b = sample_safetensors();
        let (from, to) = match which {
            0 => ("\"data_offsets\":[0,", format!("\"data_offsets\":[{value},")),
            1 => (",12]", format!(",{value}]")),
            2 => ("\"shape\":[3]", format!("\"shape\":[{value}]")),
            _ => ("\"shape\":[3]", format!("\"shape\":[3,{value}]")),
        };
        let edited = edit_header(&b, from, &to);
        if let Ok(sd) = decode_checked(&edited) {
            // Only edits that leave every tensor's byte count and the tiling intact may pass.
            prop_assert_eq!(sd.tensors.values().map(|t| t.data().len()).sum::<usize>(),
                            StateDict::from_bytes(&b).unwrap().tensors.values().map(|t| t.data().len()).sum::<usize>());
        }
    }

    /// Truncating a real PyTorch file anywhere.
    #[test]
    fn pytorch_file_truncated_anywhere(cut in any::<prop::sample::Index>()) {
        let full = pytorch_file();
        let len = cut.index(full.len());
        prop_assert!(decode_checked(&full[..len]).is_err());
    }
}

fn pytorch_file() -> &'static [u8] {
    static FILE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/cnn_bn.safetensors"),
        )
        .unwrap()
    })
}

// ---------------------------------------------------------------------------------------------
// IDX

/// An IDX image file, `count` images of 3 x 2.
fn sample_idx(count: u32) -> Vec<u8> {
    let mut v = 2051u32.to_be_bytes().to_vec();
    for d in [count, 3, 2] {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend((0..count * 6).map(|i| (i * 7 % 256) as u8));
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Decodes within the allocation budget; a success must be self-consistent.
fn decode_idx_checked(bytes: &[u8]) -> Result<(), IdxError> {
    let (r, most) = peak(|| decode_idx(bytes));
    assert!(
        most <= idx_budget(bytes.len()),
        "{most} bytes allocated at once for a {}-byte IDX file",
        bytes.len()
    );
    let a = r?;
    let len = a.dims.iter().try_fold(1usize, |p, &d| p.checked_mul(d));
    assert_eq!(len, Some(a.data.len()));
    Ok(())
}

#[test]
fn idx_every_truncation_is_an_error() {
    for file in [sample_idx(5), gz(&sample_idx(40))] {
        decode_idx_checked(&file).unwrap();
        for len in 0..file.len() {
            assert!(decode_idx_checked(&file[..len]).is_err(), "cut at {len}");
        }
    }
}

#[test]
fn idx_huge_claims_stay_within_budget() {
    // Dims claiming up to 2^32^3 bytes, or overflowing, with a few bytes present, plain and
    // gzipped: errors, with allocations bounded by the file's size.
    for dims in [
        [u32::MAX, u32::MAX, u32::MAX],
        [4_000_000_000, 28, 28],
        [1 << 31, 1 << 31, 4],
        [60_000, 28, 28],
    ] {
        let mut v = 2051u32.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(&[1, 2, 3]);
        assert!(decode_idx_checked(&v).is_err());
        assert!(decode_idx_checked(&gz(&v)).is_err());
    }
    // Rank 255 of large dims: the product overflows.
    let mut v = vec![0, 0, 8, 255];
    v.extend(std::iter::repeat_n(0xFF, 4 * 255));
    assert!(matches!(decode_idx(&v), Err(IdxError::TooLarge { .. })));
}

#[test]
fn idx_bytes_after_the_gzip_stream_are_an_error() {
    // As bytes after the data of a plain file are: a second gzip member or junk after the
    // first would otherwise be silently ignored.
    let plain = sample_idx(4);
    let z = gz(&plain);
    for extra in [&b"\0"[..], b"junk", &z] {
        let mut b = z.clone();
        b.extend_from_slice(extra);
        let extra_len = extra.len();
        assert!(
            matches!(decode_idx(&b), Err(IdxError::AfterGzip { stream, extra }) if stream == z.len() && extra == extra_len),
            "{} bytes appended",
            extra.len()
        );
    }
}

#[test]
fn idx_file_errors_name_file_and_problem() {
    let dir = std::env::temp_dir().join(format!("bn-hostile-idx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("t10k-images-idx3-ubyte.gz");
    let z = gz(&sample_idx(3));
    std::fs::write(&p, &z[..z.len() - 3]).unwrap();
    let msg = read_idx(&p).unwrap_err().to_string();
    assert!(
        msg.contains("t10k-images-idx3-ubyte.gz") && msg.contains("gzip"),
        "{msg}"
    );
    let mut bad = sample_idx(3);
    bad[0] = 0x42;
    std::fs::write(&p, &bad).unwrap();
    let msg = read_idx(&p).unwrap_err().to_string();
    assert!(
        msg.contains("t10k-images-idx3-ubyte.gz") && msg.contains("bad magic"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random bit flips in plain and gzipped files.
    #[test]
    fn idx_bit_flips(gzipped: bool, flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6)) {
        let mut b = if gzipped { gz(&sample_idx(20)) } else { sample_idx(20) };
        for (at, bit) in flips {
            let i = at.index(b.len());
            b[i] ^= 1 << bit;
        }
        let _ = decode_idx_checked(&b);
    }

    /// Any header: magic, type, rank and dims, with a few data bytes, plain and gzipped.
    #[test]
    fn idx_arbitrary_headers(head in any::<[u8; 4]>(), dims in proptest::collection::vec(any::<u32>(), 0..6), data in proptest::collection::vec(any::<u8>(), 0..64), gzipped: bool) {
        let mut b = head.to_vec();
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(&data);
        let b = if gzipped { gz(&b) } else { b };
        let _ = decode_idx_checked(&b);
    }
}
