//! Logical shapes, memory layouts, and the one reduction geometry every kernel runs on.

use crate::error::{BatchNormError, Result};

/// The order of the dimensions in memory.
///
/// Shapes are always given in logical order (N, C, spatial...); the layout says how they are
/// stored. For 2-D input (N, C) both layouts are the same memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// Channels before spatial dims: NC, NCL, NCHW, NCDHW (PyTorch's default, "contiguous").
    #[default]
    ChannelsFirst,
    /// Channels innermost: NC, NLC, NHWC, NDHWC (PyTorch's `channels_last`).
    ChannelsLast,
}

/// The most dimensions a shape can have: N, C and three spatial dims.
pub const MAX_RANK: usize = 5;

/// A validated logical shape (N, C, spatial...) with its memory layout.
///
/// ```
/// use batchnorm::{Layout, Shape};
/// let s = Shape::new(&[4, 1, 3, 3], Layout::ChannelsFirst)?;
/// assert_eq!(s.channels(), 1);
/// assert_eq!(s.per_channel(), 36); // N * H * W values per channel
/// # Ok::<(), batchnorm::BatchNormError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: usize,
    layout: Layout,
}

impl Shape {
    /// Validates `dims` (logical order: N, C, spatial...) for a tensor stored in `layout`.
    ///
    /// # Errors
    /// [`BatchNormError::Rank`] unless 2 <= rank <= 5, [`BatchNormError::ZeroChannels`] for C = 0,
    /// [`BatchNormError::ZeroDim`] for a spatial dimension of size 0, [`BatchNormError::TooLarge`]
    /// if the element count overflows `usize`.
    ///
    /// N = 0 is valid: an empty slice of a batch split over processes (a rank of SyncBatchNorm
    /// may hold no sample). Its statistics are empty [`Moments`](crate::Moments); training on it
    /// alone is refused by [`BatchNorm`](crate::BatchNorm) (fewer than 2 values per channel),
    /// evaluation writes nothing.
    pub fn new(dims: &[usize], layout: Layout) -> Result<Self> {
        if !(2..=MAX_RANK).contains(&dims.len()) {
            return Err(BatchNormError::Rank {
                got: dims.len(),
                dims: dims.to_vec(),
            });
        }
        if dims[1] == 0 {
            return Err(BatchNormError::ZeroChannels);
        }
        if let Some(axis) = dims.iter().skip(2).position(|&d| d == 0) {
            let axis = axis + 2;
            return Err(BatchNormError::ZeroDim {
                axis,
                dims: dims.to_vec(),
            });
        }
        dims.iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| BatchNormError::TooLarge {
                dims: dims.to_vec(),
            })?;
        let mut stored = [1; MAX_RANK];
        stored[..dims.len()].copy_from_slice(dims);
        Ok(Self {
            dims: stored,
            rank: dims.len(),
            layout,
        })
    }

    /// The logical dimensions (N, C, spatial...).
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank]
    }

    /// The memory layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// N.
    pub fn batch(&self) -> usize {
        self.dims[0]
    }

    /// C.
    pub fn channels(&self) -> usize {
        self.dims[1]
    }

    /// The product of the spatial dimensions (1 for 2-D input).
    pub fn spatial(&self) -> usize {
        self.dims[2..self.rank].iter().product()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.batch() * self.channels() * self.spatial()
    }

    /// Whether the batch is empty (N = 0): the only dimension that may be 0.
    pub fn is_empty(&self) -> bool {
        self.batch() == 0
    }

    /// m = N * prod(spatial): the number of values each channel's statistics run over.
    pub fn per_channel(&self) -> usize {
        self.batch() * self.spatial()
    }

    /// The reduction geometry of this shape's memory.
    pub fn geometry(&self) -> Geometry {
        match self.layout {
            Layout::ChannelsFirst => Geometry {
                outer: self.batch(),
                channels: self.channels(),
                inner: self.spatial(),
            },
            Layout::ChannelsLast => Geometry {
                outer: self.per_channel(),
                channels: self.channels(),
                inner: 1,
            },
        }
    }
}

/// Memory seen as `outer x channels x inner`: element (o, c, i) lives at `(o * channels + c) *
/// inner + i`. Every layout reduces to this once, up front; the kernels only know this.
///
/// - channels-first (N, C, S...): outer = N, inner = prod(S); each (o, c) is a contiguous run.
/// - channels-last (N, S..., C): outer = N * prod(S), inner = 1; each o is a row of C channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Number of outer blocks.
    pub outer: usize,
    /// Number of channels.
    pub channels: usize,
    /// Contiguous elements of one channel inside an outer block.
    pub inner: usize,
}

impl Geometry {
    /// The number of elements.
    pub fn len(&self) -> usize {
        self.outer * self.channels * self.inner
    }

    /// Whether there is no value (the geometry of an empty batch).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per channel.
    pub fn per_channel(&self) -> usize {
        self.outer * self.inner
    }

    /// True when channels are innermost (each row holds one value of every channel).
    pub fn is_rows(&self) -> bool {
        self.inner == 1
    }
}
