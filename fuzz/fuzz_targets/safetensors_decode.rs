//! The safetensors reader on arbitrary bytes: it must return `Ok` or `Err`, never panic or
//! allocate beyond the input's size (run with `-malloc_limit_mb`); whatever it accepts must
//! survive encode + decode unchanged and load (non-strictly) into a model without panicking.
#![no_main]

use batchnorm::{BatchNorm, BatchNormConfig};
use batchnorm_nn::state_dict::{load_batch_norm, StateDict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sd) = StateDict::from_bytes(data) else {
        return;
    };
    let again = StateDict::from_bytes(&sd.to_bytes().expect("decoded names are never reserved"))
        .expect("re-encoded file decodes");
    assert_eq!(again, sd);
    let mut bn = BatchNorm::<f32>::new(2, BatchNormConfig::default()).expect("valid module");
    let _ = load_batch_norm(&mut bn, &sd, "", false);
    let _ = load_batch_norm(&mut bn, &sd, "1", true);
});
