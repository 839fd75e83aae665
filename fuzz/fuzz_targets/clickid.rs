#![no_main]
//! See `adclick_fuzz::clickid` for the properties checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| adclick_fuzz::clickid(data));
