//! An output slice that parallel tasks write in disjoint parts that are not contiguous.

use std::marker::PhantomData;
use std::ops::Range;

/// A mutable slice that parallel tasks write in disjoint parts which are not contiguous (one
/// channel of channels-first data), so `chunks_mut` cannot hand them out.
pub(crate) struct Disjoint<'a, T> {
    ptr: *mut T,
    len: usize,
    _slice: PhantomData<&'a mut [T]>,
}

// SAFETY: a `Disjoint` is a `&mut [T]` whose parts are borrowed by at most one thread each (the
// contract of `slice`), which is sound to share between threads when `T` can be sent.
unsafe impl<T: Send> Send for Disjoint<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}

impl<'a, T> Disjoint<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        Self {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _slice: PhantomData,
        }
    }

    /// The elements at `range`. Panics if it is out of bounds.
    ///
    /// # Safety
    /// No other borrow of an overlapping range may be alive at the same time.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, range: Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (checked above) of the slice this was made from, which outlives
        // `'a`; exclusive by the caller's guarantee.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }

    /// The elements at `range`, to read. Panics if it is out of bounds.
    ///
    /// # Safety
    /// No mutable borrow of an overlapping range may be alive at the same time.
    pub unsafe fn get(&self, range: Range<usize>) -> &[T] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds, as in `slice`; shared by the caller's guarantee.
        unsafe { std::slice::from_raw_parts(self.ptr.add(range.start), range.len()) }
    }
}
