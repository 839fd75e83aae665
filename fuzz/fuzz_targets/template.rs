#![no_main]
//! See `adclick_fuzz::template` for the properties checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| adclick_fuzz::template(data));
