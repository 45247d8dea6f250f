//! The IDX reader: facts of the real MNIST files (see `data/mnist/README.md`), and malformed
//! inputs, each of which must give an error rather than a panic or a huge allocation.

use std::io::Write;
use std::path::{Path, PathBuf};

use batchnorm_nn::data::{decode_idx, read_idx, IdxError, Mnist, Split};
use batchnorm_nn::NnError;
use flate2::{write::GzEncoder, Compression};

fn mnist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")
}

fn counts(labels: &[u8]) -> [usize; 10] {
    let mut c = [0; 10];
    for &l in labels {
        c[usize::from(l)] += 1;
    }
    c
}

#[test]
fn real_mnist_known_facts() {
    let m = Mnist::load(&mnist_dir()).unwrap();
    assert_eq!(
        (m.train.len(), m.train.rows, m.train.cols),
        (60_000, 28, 28)
    );
    assert_eq!((m.test.len(), m.test.rows, m.test.cols), (10_000, 28, 28));
    assert_eq!(m.train.images.len(), 60_000 * 784);
    assert_eq!(m.train.labels[..10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert_eq!(m.test.labels[..10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    assert_eq!(
        counts(&m.train.labels),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        counts(&m.test.labels),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    // The first training image (a 5) has ink in its middle and blank corners.
    let first = &m.train.images[..784];
    assert_eq!(first[0], 0);
    assert!(first.iter().filter(|&&p| p > 128).count() > 50);

    let mut out = vec![0.0f32; 2 * 784];
    let mut labels = [0u8; 2];
    m.train.gather(&[1, 0], &mut out, &mut labels).unwrap();
    assert_eq!(labels, [0, 5]);
    assert!(out.iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert_eq!(out[784 + 200], f32::from(first[200]) / 255.0);
    assert!(m
        .train
        .gather(&[60_000], &mut out[..784], &mut labels[..1])
        .is_err());
}

/// An IDX byte array with the given magic and dims, and `data_len` data bytes.
fn idx(magic: u32, dims: &[u32], data_len: usize) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend((0..data_len).map(|i| (i % 10) as u8));
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn valid_small_files_plain_and_gzipped() {
    let images = idx(2051, &[3, 2, 2], 12);
    let labels = idx(2049, &[3], 3);
    for (i, l) in [(images.clone(), labels.clone()), (gz(&images), gz(&labels))] {
        let s = Split::decode(&i, &l).unwrap();
        assert_eq!((s.len(), s.rows, s.cols), (3, 2, 2));
        assert_eq!(s.labels, [0, 1, 2]);
    }
    let a = decode_idx(&idx(0x0803, &[1, 1, 5], 5)).unwrap();
    assert_eq!(a.dims, [1, 1, 5]);
}

#[test]
fn malformed_headers_are_errors() {
    let e = |b: &[u8]| decode_idx(b).unwrap_err();
    assert!(matches!(e(&[]), IdxError::Truncated { what: "header", .. }));
    assert!(matches!(
        e(&[0, 0, 8]),
        IdxError::Truncated { what: "header", .. }
    ));
    assert!(matches!(
        e(&idx(0x0100_0801, &[3], 3)),
        IdxError::BadMagic { .. }
    ));
    assert!(matches!(
        e(&idx(0x0000_0D01, &[3], 3)),
        IdxError::UnsupportedType { code: 0x0D }
    ));
    // Rank 3 but only two dims present.
    assert!(matches!(
        e(&idx(2051, &[3, 28], 0)),
        IdxError::Truncated { what: "header", .. }
    ));
    // Dims whose product overflows usize.
    assert!(matches!(
        e(&idx(0x0804, &[u32::MAX; 4], 0)),
        IdxError::TooLarge { .. }
    ));
}

#[test]
fn huge_claims_do_not_allocate() {
    // 4 billion x 28 x 28 bytes claimed, 10 present: must fail fast with Truncated, not try to
    // reserve ~3 TB (which would abort the process).
    let bytes = idx(2051, &[4_000_000_000, 28, 28], 10);
    assert!(matches!(
        decode_idx(&bytes),
        Err(IdxError::Truncated {
            what: "data",
            got: 10,
            ..
        })
    ));
    assert!(matches!(
        decode_idx(&gz(&bytes)),
        Err(IdxError::Truncated {
            what: "data",
            got: 10,
            ..
        })
    ));
}

#[test]
fn truncated_and_padded_data_are_errors() {
    let full = idx(2051, &[3, 2, 2], 12);
    assert!(matches!(
        decode_idx(&full[..full.len() - 1]),
        Err(IdxError::Truncated {
            expected: 12,
            got: 11,
            ..
        })
    ));
    let mut padded = full.clone();
    padded.push(0);
    assert!(matches!(
        decode_idx(&padded),
        Err(IdxError::TrailingBytes { .. })
    ));
    assert!(matches!(
        decode_idx(&gz(&padded)),
        Err(IdxError::TrailingBytes { .. })
    ));
}

#[test]
fn corrupt_gzip_is_an_error() {
    let z = gz(&idx(2051, &[50, 28, 28], 50 * 784));
    // Cut off the trailer (CRC-32 and length) and part of the deflate stream.
    for cut in [z.len() - 4, z.len() / 2, 12] {
        assert!(decode_idx(&z[..cut]).is_err(), "cut at {cut}");
    }
    // Flip a byte of the CRC-32 in the trailer: the data decode fine, the check must fail.
    let mut bad_crc = z.clone();
    let at = bad_crc.len() - 6;
    bad_crc[at] ^= 0xFF;
    assert!(matches!(decode_idx(&bad_crc), Err(IdxError::Gzip { .. })));
    // Garbage after a valid gzip header.
    let mut garbage = z[..10].to_vec();
    garbage.extend([0xFF; 64]);
    assert!(decode_idx(&garbage).is_err());
}

#[test]
fn split_level_checks() {
    let images = idx(2051, &[3, 2, 2], 12);
    let labels = idx(2049, &[3], 3);
    assert!(matches!(
        Split::decode(&labels, &labels),
        Err(IdxError::WrongKind { expected: 2051, .. })
    ));
    assert!(matches!(
        Split::decode(&images, &images),
        Err(IdxError::WrongKind { expected: 2049, .. })
    ));
    assert!(matches!(
        Split::decode(&images, &idx(2049, &[4], 4)),
        Err(IdxError::CountMismatch {
            images: 3,
            labels: 4
        })
    ));
    let mut bad_label = labels.clone();
    *bad_label.last_mut().unwrap() = 10;
    assert!(matches!(
        Split::decode(&images, &bad_label),
        Err(IdxError::BadLabel {
            index: 2,
            label: 10
        })
    ));
}

#[test]
fn file_errors_name_the_path() {
    let dir = std::env::temp_dir().join(format!("bn-idx-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("broken-idx1-ubyte");
    std::fs::write(&p, [0u8, 0, 8, 1, 0, 0]).unwrap();
    let err = read_idx(&p).unwrap_err();
    assert!(matches!(err, NnError::Idx { ref path, .. } if path == &p));
    assert!(err.to_string().contains("broken-idx1-ubyte"));
    assert!(matches!(
        read_idx(&dir.join("missing")),
        Err(NnError::Io { .. })
    ));
    let err = Mnist::load(&dir).unwrap_err();
    assert!(
        matches!(err, NnError::MissingData { ref name, .. } if name == "train-images-idx3-ubyte"),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("neither train-images-idx3-ubyte.gz nor train-images-idx3-ubyte"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes the four MNIST files into a fresh folder: tiny valid splits, with `train_labels`
/// in place of the training labels.
fn tiny_mnist(name: &str, train_labels: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bn-idx-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let images = idx(2051, &[3, 2, 2], 12);
    for (file, bytes) in [
        ("train-images-idx3-ubyte", &images[..]),
        ("train-labels-idx1-ubyte", train_labels),
        ("t10k-images-idx3-ubyte", &images[..]),
        ("t10k-labels-idx1-ubyte", &idx(2049, &[3], 3)[..]),
    ] {
        std::fs::write(dir.join(file), bytes).unwrap();
    }
    dir
}

#[test]
fn split_errors_name_the_file_that_is_wrong() {
    let dir = tiny_mnist("ok", &idx(2049, &[3], 3));
    assert_eq!(Mnist::load(&dir).unwrap().train.len(), 3);
    std::fs::remove_dir_all(&dir).unwrap();

    let mut bad_label = idx(2049, &[3], 3);
    *bad_label.last_mut().unwrap() = 10;
    let wrong_count = idx(2049, &[2], 2);
    for (name, labels) in [("label", bad_label), ("count", wrong_count)] {
        let dir = tiny_mnist(name, &labels);
        let err = Mnist::load(&dir).unwrap_err();
        assert!(
            matches!(err, NnError::Idx { ref path, .. }
                if path == &dir.join("train-labels-idx1-ubyte")),
            "{name}: {err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
