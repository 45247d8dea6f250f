//! From a candle tensor of logical shape (N, C, spatial...) to the memory the kernels read.
//!
//! - Contiguous: channels-first memory (NCHW...), read as it is.
//! - A channels-last view (an (N, spatial..., C) tensor permuted to logical (N, C, spatial...)):
//!   permuted back to its memory order, which is contiguous, and read as channels-last.
//! - Any other strides (a transposed batch, a strided slice): copied to a contiguous tensor once.
//!
//! A start offset (a tensor narrowed along N) is no obstacle: the kernels read from it.

use batchnorm::Layout;
use candle_core::{Result, Tensor};

/// A tensor in the order of its memory, with the layout the kernels read it in.
#[derive(Debug)]
pub(crate) struct MemoryOrder {
    /// Contiguous, in memory order: (N, C, spatial...) or (N, spatial..., C).
    pub tensor: Tensor,
    /// How `tensor` holds the logical dims.
    pub layout: Layout,
}

impl MemoryOrder {
    /// `x` seen in memory order, copied only when its strides are neither layout's.
    pub fn of(x: &Tensor) -> Result<Self> {
        if x.is_contiguous() {
            return Ok(Self {
                tensor: x.clone(),
                layout: Layout::ChannelsFirst,
            });
        }
        let rank = x.rank();
        if rank > 2 {
            let stored = x.permute(to_channels_last(rank))?;
            if stored.is_contiguous() {
                return Ok(Self {
                    tensor: stored,
                    layout: Layout::ChannelsLast,
                });
            }
        }
        Ok(Self {
            tensor: x.contiguous()?,
            layout: Layout::ChannelsFirst,
        })
    }

    /// A tensor of this memory order seen in logical order (N, C, spatial...) again: the output
    /// of a channels-last input is a channels-last view, like the input.
    pub fn logical(&self, y: Tensor) -> Result<Tensor> {
        match self.layout {
            Layout::ChannelsFirst => Ok(y),
            Layout::ChannelsLast => y.permute(to_channels_first(y.rank())),
        }
    }
}

/// The permutation taking logical (N, C, S1.., Sk) to (N, S1.., Sk, C).
fn to_channels_last(rank: usize) -> Vec<usize> {
    let mut dims = vec![0];
    dims.extend(2..rank);
    dims.push(1);
    dims
}

/// The inverse: (N, S1.., Sk, C) to (N, C, S1.., Sk).
fn to_channels_first(rank: usize) -> Vec<usize> {
    let mut dims = vec![0, rank - 1];
    dims.extend(1..rank - 1);
    dims
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Storage};

    /// Where a tensor's f32 storage starts: equal for tensors sharing memory.
    fn storage_ptr(t: &Tensor) -> Result<*const f32> {
        let (storage, _) = t.storage_and_layout();
        match &*storage {
            Storage::Cpu(cpu) => Ok(cpu.as_slice::<f32>()?.as_ptr()),
            _ => candle_core::bail!("not on the CPU"),
        }
    }

    #[test]
    fn the_permutations_are_inverse() {
        for rank in 3..=5 {
            let (there, back) = (to_channels_last(rank), to_channels_first(rank));
            let round_trip: Vec<usize> = back.iter().map(|&i| there[i]).collect();
            assert_eq!(round_trip, (0..rank).collect::<Vec<_>>(), "rank {rank}");
        }
        assert_eq!(to_channels_last(4), [0, 2, 3, 1]);
        assert_eq!(to_channels_first(4), [0, 3, 1, 2]);
    }

    #[test]
    fn views_are_classified_without_copies() -> Result<()> {
        let dev = Device::Cpu;
        let nhwc = Tensor::arange(0f32, 2. * 3. * 4. * 5., &dev)?.reshape((2, 4, 5, 3))?;
        let nchw_view = nhwc.permute((0, 3, 1, 2))?;
        let seen = MemoryOrder::of(&nchw_view)?;
        assert_eq!(seen.layout, Layout::ChannelsLast);
        assert_eq!(
            storage_ptr(&seen.tensor)?,
            storage_ptr(&nhwc)?,
            "a view is not copied"
        );
        assert_eq!(seen.logical(seen.tensor.clone())?.dims(), [2, 3, 4, 5]);

        let nchw = nchw_view.contiguous()?;
        let seen = MemoryOrder::of(&nchw)?;
        assert_eq!(seen.layout, Layout::ChannelsFirst);
        assert_eq!(storage_ptr(&seen.tensor)?, storage_ptr(&nchw)?);

        // Batch and channel swapped: neither layout, copied once.
        let odd = nchw.transpose(0, 1)?;
        let seen = MemoryOrder::of(&odd)?;
        assert_eq!(seen.layout, Layout::ChannelsFirst);
        assert_ne!(storage_ptr(&seen.tensor)?, storage_ptr(&odd)?);
        let values = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        assert_eq!(values(&seen.tensor)?, values(&odd)?);
        Ok(())
    }
}
