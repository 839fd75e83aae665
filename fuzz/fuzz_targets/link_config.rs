#![no_main]
//! See `adclick_fuzz::link_config` for the properties checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| adclick_fuzz::link_config(data));
