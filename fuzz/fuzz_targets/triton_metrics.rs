#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trident_fuzz::triton_metrics(data));
