//! The IDX reader on arbitrary bytes, plain or gzipped (the decoder detects `1f 8b`): it must
//! return `Ok` or `Err`, never panic or allocate beyond what the input can justify (run with
//! `-malloc_limit_mb`). The first byte splits the rest into an image and a label file for the
//! MNIST pairing checks.
#![no_main]

use batchnorm_nn::data::{decode_idx, Split};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = decode_idx(data) {
        let len = a.dims.iter().try_fold(1usize, |p, &d| p.checked_mul(d));
        assert_eq!(len, Some(a.data.len()));
    }
    if let Some((&cut, rest)) = data.split_first() {
        let (images, labels) = rest.split_at(usize::from(cut).min(rest.len()));
        if let Ok(s) = Split::decode(images, labels) {
            assert_eq!(s.images.len(), s.len() * s.pixels());
        }
    }
});
