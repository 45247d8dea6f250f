//! The IDX format of MNIST, plain or gzipped, and the MNIST data set built on it.
//!
//! An IDX file is a big-endian header, `0x00 0x00 <type> <rank>` then `rank` u32 dimensions,
//! followed by the values in row-major order. MNIST uses type `0x08` (unsigned byte): images
//! `[count, 28, 28]` (magic 2051) and labels `[count]` (magic 2049).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{NnError, Result};
use crate::scalar::Scalar;

/// Why bytes are not a valid IDX file (or MNIST pair of files).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdxError {
    /// The first two bytes must be zero.
    #[error("bad magic number 0x{magic:08x}: not an IDX file")]
    BadMagic {
        /// The first four bytes, big-endian.
        magic: u32,
    },
    /// Only unsigned bytes (type 0x08) are supported.
    #[error("element type 0x{code:02x} is not supported (only 0x08, unsigned byte)")]
    UnsupportedType {
        /// The type byte.
        code: u8,
    },
    /// The file's rank or magic is not the one expected.
    #[error("expected magic {expected} ({what}), got {got}")]
    WrongKind {
        /// What was expected.
        what: &'static str,
        /// The expected magic number.
        expected: u32,
        /// The magic number found.
        got: u32,
    },
    /// A dimension differs from the expected one (e.g. images not 28 x 28).
    #[error("dimensions {got:?} do not match the expected {expected:?} (0 = any)")]
    Dims {
        /// The expected dimensions (0 means any).
        expected: Vec<usize>,
        /// The dimensions in the header.
        got: Vec<usize>,
    },
    /// The product of the dimensions overflows.
    #[error("dimensions {dims:?} describe more bytes than fit in memory")]
    TooLarge {
        /// The dimensions in the header.
        dims: Vec<usize>,
    },
    /// Fewer bytes than the header or the dimensions require.
    #[error("truncated: {what} needs {expected} bytes, only {got} present")]
    Truncated {
        /// Header or data.
        what: &'static str,
        /// Bytes required.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// Bytes after the data the header describes.
    #[error("{extra}+ unexpected bytes after the {expected} data bytes")]
    TrailingBytes {
        /// The data size from the header.
        expected: usize,
        /// At least this many extra bytes.
        extra: usize,
    },
    /// Bytes after the end of the gzip stream (junk, or a second member).
    #[error("{extra} unexpected bytes after the {stream}-byte gzip stream")]
    AfterGzip {
        /// Length of the gzip stream.
        stream: usize,
        /// Bytes after it.
        extra: usize,
    },
    /// The gzip stream is corrupt (bad header, bad deflate data, CRC or length mismatch).
    #[error("corrupt gzip stream: {source}")]
    Gzip {
        /// The decoder's error.
        source: std::io::Error,
    },
    /// A label is not a digit 0-9.
    #[error("label {label} at index {index} is not a digit")]
    BadLabel {
        /// Its position.
        index: usize,
        /// Its value.
        label: u8,
    },
    /// The image and label files of a split hold different counts.
    #[error("{images} images but {labels} labels")]
    CountMismatch {
        /// Images in the image file.
        images: usize,
        /// Labels in the label file.
        labels: usize,
    },
}

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The magic number (`0x0000_08_rank` for unsigned bytes).
    pub magic: u32,
    /// The dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major; `dims.iter().product()` bytes.
    pub data: Vec<u8>,
}

/// The largest ratio of decompressed to compressed size DEFLATE can reach (about 1032:1);
/// a decoded stream can never be longer, so this bounds the allocation for a gzipped file.
const MAX_DEFLATE_RATIO: usize = 1032;

/// Decodes an IDX file held in memory, gzipped (detected by the gzip magic `1f 8b`) or plain.
///
/// Nothing is allocated from the header's claims alone: the data buffer's size is capped by what
/// the bytes given can actually hold.
///
/// # Errors
/// Any [`IdxError`]: bad magic, unsupported type, overflowing dimensions, truncation, trailing
/// bytes, or a corrupt gzip stream.
pub fn decode_idx(bytes: &[u8]) -> std::result::Result<IdxArray, IdxError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let bound = bytes.len().saturating_mul(MAX_DEFLATE_RATIO);
        // The buffered decoder reads the slice only as far as the gzip member goes, so what
        // is left after it is known: a second member or junk is refused like bytes after the
        // data of a plain file.
        let mut gz = flate2::bufread::GzDecoder::new(bytes);
        let array = decode_stream(&mut gz, bound, true)?;
        let rest = gz.get_ref().len();
        if rest > 0 {
            return Err(IdxError::AfterGzip {
                stream: bytes.len() - rest,
                extra: rest,
            });
        }
        Ok(array)
    } else {
        decode_stream(bytes, bytes.len(), false)
    }
}

/// Reads the header and data from `r`, whose content is at most `bound` bytes.
fn decode_stream<R: Read>(
    mut r: R,
    bound: usize,
    gz: bool,
) -> std::result::Result<IdxArray, IdxError> {
    let io_err = |source: std::io::Error| IdxError::Gzip { source };
    let mut head = [0u8; 4];
    let got = read_full(&mut r, &mut head).map_err(io_err)?;
    if got < 4 {
        return Err(IdxError::Truncated {
            what: "header",
            expected: 4,
            got,
        });
    }
    let magic = u32::from_be_bytes(head);
    if head[0] != 0 || head[1] != 0 {
        return Err(IdxError::BadMagic { magic });
    }
    if head[2] != 0x08 {
        return Err(IdxError::UnsupportedType { code: head[2] });
    }
    let rank = usize::from(head[3]);
    let mut dim_bytes = vec![0u8; 4 * rank]; // at most 1020 bytes
    let got = read_full(&mut r, &mut dim_bytes).map_err(io_err)?;
    if got < dim_bytes.len() {
        return Err(IdxError::Truncated {
            what: "header",
            expected: 4 + dim_bytes.len(),
            got: 4 + got,
        });
    }
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| IdxError::TooLarge { dims: dims.clone() })?;
    let want = len
        .checked_add(1)
        .ok_or_else(|| IdxError::TooLarge { dims: dims.clone() })?;
    // The buffer grows only as real bytes arrive; the initial reservation is capped by `bound`.
    let mut data = Vec::with_capacity(len.min(bound));
    r.by_ref()
        .take(want as u64)
        .read_to_end(&mut data)
        .map_err(io_err)?;
    if data.len() < len {
        return Err(IdxError::Truncated {
            what: "data",
            expected: len,
            got: data.len(),
        });
    }
    if data.len() > len {
        return Err(IdxError::TrailingBytes {
            expected: len,
            extra: data.len() - len,
        });
    }
    if gz {
        // Drain the stream to its end so the decoder checks the CRC-32 and length trailer.
        let mut rest = [0u8; 1];
        let n = r.read(&mut rest).map_err(io_err)?;
        if n > 0 {
            return Err(IdxError::TrailingBytes {
                expected: len,
                extra: n,
            });
        }
    }
    Ok(IdxArray { magic, dims, data })
}

/// Fills `buf` as far as the stream allows; returns how many bytes were read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads and decodes an IDX file, gzipped or plain.
///
/// # Errors
/// [`NnError::Io`] if the file cannot be read, [`NnError::Idx`] if it is not valid IDX.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let bytes = std::fs::read(path).map_err(|source| NnError::Io {
        path: path.to_owned(),
        source,
    })?;
    decode_idx(&bytes).map_err(|source| NnError::Idx {
        path: path.to_owned(),
        source,
    })
}

/// One split of MNIST: `len` images of `rows x cols` bytes and their labels.
#[derive(Debug, Clone)]
pub struct Split {
    /// Pixels, `len * rows * cols` bytes, image after image, row-major.
    pub images: Vec<u8>,
    /// Labels 0-9, `len` bytes.
    pub labels: Vec<u8>,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image.
    pub fn pixels(&self) -> usize {
        self.rows * self.cols
    }

    /// Decodes an image file and a label file (in memory, gzipped or plain) into a split,
    /// checking magic numbers (2051, 2049), ranks, equal counts and that labels are digits.
    ///
    /// # Errors
    /// [`IdxError`] for any violation.
    pub fn decode(images: &[u8], labels: &[u8]) -> std::result::Result<Self, IdxError> {
        let im = decode_idx(images)?;
        let lb = decode_idx(labels)?;
        Self::from_arrays(im, lb)
    }

    fn from_arrays(im: IdxArray, lb: IdxArray) -> std::result::Result<Self, IdxError> {
        const IMAGES: u32 = 2051;
        const LABELS: u32 = 2049;
        if im.magic != IMAGES {
            return Err(IdxError::WrongKind {
                what: "images",
                expected: IMAGES,
                got: im.magic,
            });
        }
        if lb.magic != LABELS {
            return Err(IdxError::WrongKind {
                what: "labels",
                expected: LABELS,
                got: lb.magic,
            });
        }
        if im.dims[1] == 0 || im.dims[2] == 0 {
            return Err(IdxError::Dims {
                expected: vec![0, 1, 1],
                got: im.dims,
            });
        }
        if im.dims[0] != lb.dims[0] {
            return Err(IdxError::CountMismatch {
                images: im.dims[0],
                labels: lb.dims[0],
            });
        }
        if let Some(index) = lb.data.iter().position(|&l| l > 9) {
            return Err(IdxError::BadLabel {
                index,
                label: lb.data[index],
            });
        }
        Ok(Split {
            rows: im.dims[1],
            cols: im.dims[2],
            images: im.data,
            labels: lb.data,
        })
    }

    /// Asks the processor to start loading the images at `indices` into its caches, so that a
    /// later [`Split::gather`] of them does not wait on memory. A hint only: results never depend
    /// on it; out-of-range indices are skipped; does nothing off x86-64.
    pub fn prefetch(&self, indices: &[usize]) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let p = self.pixels();
            for &i in indices {
                let Some(image) = self.images.get(i * p..(i + 1) * p) else {
                    continue;
                };
                for line in image.chunks(64) {
                    // SAFETY: `_mm_prefetch` only hints the cache and never faults; SSE is part of
                    // the x86-64 baseline; the pointer is inside `self.images` anyway. (Newer
                    // compilers consider the call safe, hence the allow.)
                    #[allow(unused_unsafe)]
                    unsafe {
                        _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
                    }
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = indices;
    }

    /// Writes the images at `indices` into `out` (`indices.len() * pixels` values), each pixel
    /// scaled to [0, 1] as `p / 255`, and their labels into `labels`.
    ///
    /// # Errors
    /// A length mismatch, or an index past the end (as [`NnError::BatchSize`]).
    pub fn gather<T: Scalar>(
        &self,
        indices: &[usize],
        out: &mut [T],
        labels: &mut [u8],
    ) -> Result<()> {
        let p = self.pixels();
        crate::error::check_len("gather output", out.len(), indices.len() * p)?;
        crate::error::check_len("gather labels", labels.len(), indices.len())?;
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(NnError::BatchSize {
                capacity: self.len(),
                got: bad + 1,
            });
        }
        let scale = 1.0f32 / 255.0;
        for ((&i, dst), l) in indices
            .iter()
            .zip(out.chunks_exact_mut(p))
            .zip(labels.iter_mut())
        {
            for (d, &s) in dst.iter_mut().zip(&self.images[i * p..(i + 1) * p]) {
                *d = T::from_f32(f32::from(s) * scale);
            }
            *l = self.labels[i];
        }
        Ok(())
    }
}

/// MNIST's training (60,000) and test (10,000) splits.
#[derive(Debug, Clone)]
pub struct Mnist {
    /// The training split.
    pub train: Split,
    /// The test split.
    pub test: Split,
}

impl Mnist {
    /// Loads the four standard files from `dir`, each as `NAME.gz` or, failing that, `NAME`
    /// (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
    /// `t10k-labels-idx1-ubyte`).
    ///
    /// # Errors
    /// [`NnError::MissingData`] if a file is missing, [`NnError::Io`] if one is unreadable,
    /// [`NnError::Idx`] naming the file that is invalid.
    pub fn load(dir: &Path) -> Result<Self> {
        let split = |images: &str, labels: &str| -> Result<Split> {
            let ip = find(dir, images)?;
            let lp = find(dir, labels)?;
            let im = read_idx(&ip)?;
            let lb = read_idx(&lp)?;
            Split::from_arrays(im, lb).map_err(|source| {
                // Each error is reported against the file that holds the wrong bytes; a count
                // mismatch, which takes both, against the labels (the file that disagrees with
                // the images it describes).
                let path = match source {
                    IdxError::WrongKind { what: "images", .. } | IdxError::Dims { .. } => ip,
                    _ => lp,
                };
                NnError::Idx { path, source }
            })
        };
        Ok(Mnist {
            train: split("train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
            test: split("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
        })
    }
}

/// `dir/name.gz` if it exists, else `dir/name`.
///
/// # Errors
/// [`NnError::MissingData`] naming both when neither exists.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{name}.gz"));
    let plain = dir.join(name);
    if gz.exists() {
        Ok(gz)
    } else if plain.exists() {
        Ok(plain)
    } else {
        Err(NnError::MissingData {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
        })
    }
}
